"""docs/parity-vllm.md: our backend choice beside vLLM's own, executed, row by row.

    python3 scripts/parity_vllm.py                         # render from docs/parity/vllm-0.34.0.json
    python3 scripts/parity_vllm.py --check                 # exit 1 if the document is stale or a row unexplained
    python3 scripts/parity_vllm.py --execute --python VENV/bin/python   # re-run vLLM, rewrite the record too

--execute needs an interpreter with vLLM (and moe-registry) installed: scripts/engine_tests.sh vllm builds one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe_registry.engines.parity import parity_rows, render_markdown  # noqa: E402
from moe_registry.engines.vllm import record  # noqa: E402

DOC = ROOT / "docs" / "parity-vllm.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    parser.add_argument("--execute", action="store_true", help="run vLLM's selection again and rewrite the record")
    parser.add_argument("--python", help="the interpreter with vLLM installed (--execute; default: this one)")
    parser.add_argument("--version", default="0.34.0", help="the vLLM version whose record to render")
    parser.add_argument("--previous", default="0.33.0", help="an earlier version's record to compare with, if committed")
    args = parser.parse_args(argv)
    if args.execute:
        data = record.execute(record.deployments(), python=args.python)
        version = data["vllm"]
        if not isinstance(version, str):
            print(f"the children ran different vLLM versions: {version}", file=sys.stderr)
            return 1
        record.RECORDS.mkdir(parents=True, exist_ok=True)
        record.record_path(version).write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {record.record_path(version).relative_to(ROOT)}: {len(data['deployments'])} deployments")
        if version != args.version:  # an earlier version's record: kept for the comparison section
            return 0
    data = record.load(args.version)
    previous = record.load(args.previous) if record.record_path(args.previous).exists() else None
    rows = parity_rows(data)
    text = render_markdown(rows, data, previous)
    unexplained = [r for r in rows if not r.explained]
    for r in unexplained:
        print(f"unexplained: {r.model} {r.device} {r.parallel} {r.layers}: ours {r.ours}, vLLM "
              f"{r.vllm.kernel if r.vllm else None}: {r.via}", file=sys.stderr)
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
