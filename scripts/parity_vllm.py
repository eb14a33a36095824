"""Write docs/parity-vllm.md: our backend choice vs vLLM 0.33.0's default, row by row.

    python3 scripts/parity_vllm.py           # regenerate
    python3 scripts/parity_vllm.py --check   # exit 1 if the committed file is stale or a row is unexplained
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe_registry.engines.parity import parity_rows, render_markdown  # noqa: E402

DOC = ROOT / "docs" / "parity-vllm.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    args = parser.parse_args(argv)
    rows = parity_rows()
    text = render_markdown(rows)
    unexplained = [r for r in rows if not r.explained]
    for r in unexplained:
        print(f"unexplained: {r.model} {r.device} {r.parallel} {r.layers}: ours {r.ours}, vLLM {r.vllm.label()}",
              file=sys.stderr)
    if args.check:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run python3 scripts/parity_vllm.py", file=sys.stderr)
            return 1
        return 1 if unexplained else 0
    DOC.write_text(text)
    agree = sum(r.agree for r in rows)
    print(f"wrote {DOC.relative_to(ROOT)}: {len(rows)} rows, {agree} agree, {len(unexplained)} unexplained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
