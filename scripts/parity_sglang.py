"""Write docs/parity-sglang.md: our backend choice vs SGLang 0.5.23's own (executed) default, row by row.

    python3 scripts/parity_sglang.py --execute   # run SGLang (needs sglang==0.5.23 here), write the record, then the doc
    python3 scripts/parity_sglang.py             # regenerate the doc from the committed record
    python3 scripts/parity_sglang.py --check     # exit 1 if the doc is stale or a row is unexplained
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe_registry.engines.parity_sglang import (  # noqa: E402
    DEVICES, PROBE_PRESETS, PROBE_RUNNERS, RECORD, case_key, layouts, load_record, parity_rows, render_markdown)
from moe_registry.engines.sglang.executed import case_for_plan, run_cases  # noqa: E402
from moe_registry.planner import plan_model  # noqa: E402
from moe_registry.schemas.device import get_device  # noqa: E402
from moe_registry.schemas.layer import ParallelConfig  # noqa: E402

DOC = ROOT / "docs" / "parity-sglang.md"


def execute() -> dict:
    """Every parity case and every branch probe, one worker per device; the record to commit."""
    cases: dict[str, dict] = {}
    meta: dict = {}
    started = time.time()
    for dev in DEVICES:
        device = get_device(dev)
        batch = []
        for name, parallel in layouts():
            plan = plan_model(name, device, parallel, select=False)
            batch.append(case_for_plan(plan, key=case_key("model", dev, name, parallel)))
        for kind, name in PROBE_PRESETS.items():
            plan = plan_model(name, device, ParallelConfig(), select=False)
            first = case_for_plan(plan)
            for runner in PROBE_RUNNERS:
                batch.append(type(first)(first.files, (*first.args, "--moe-runner-backend", runner), first.layers[:1],
                                         case_key(f"probe-{kind}", dev, name, ParallelConfig(), runner)))
        outcomes, meta = run_cases(device, batch)
        for case, o in zip(batch, outcomes):
            cases[o.key] = {"args": list(case.args), "config": o.config, "layers": list(o.layers), "error": o.error,
                            "log": list(o.log)}
        print(f"{dev}: {len(batch)} cases", file=sys.stderr)
    return {"engine": "sglang", "version": meta["version"], "fakes": list(meta["fakes"]),
            "assumptions": list(meta["assumptions"]),
            "executed": f"sglang {meta['version']} wheel on a CPU machine (torch 2.13.0+cpu, Python "
                        f"{sys.version.split()[0]}), {datetime.date.today().isoformat()}, "
                        f"{time.time() - started:.0f} s for {len(cases)} cases",
            "cases": cases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execute", action="store_true", help="run SGLang and rewrite the record first")
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    args = parser.parse_args(argv)
    if args.execute:
        RECORD.write_text(json.dumps(execute(), indent=1, sort_keys=True) + "\n")
    record = load_record()
    rows = parity_rows(record)
    text = render_markdown(rows, record)
    unexplained = [r for r in rows if not r.explained]
    for r in unexplained:
        print(f"unexplained: {r.model} {r.device} {r.parallel} {r.layers}: ours {r.ours}, SGLang {r.sglang}: {r.via}",
              file=sys.stderr)
    if args.check:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run python3 scripts/parity_sglang.py", file=sys.stderr)
            return 1
        return 1 if unexplained else 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}: {len(rows)} rows, {sum(r.agree for r in rows)} agree, "
          f"{len(unexplained)} unexplained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
