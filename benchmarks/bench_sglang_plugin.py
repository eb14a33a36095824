"""What the SGLang plugin adds to SGLang's start-up: the same launches with and without it, in one run.

    python benchmarks/bench_sglang_plugin.py   # needs sglang==0.5.23 here; writes benchmarks/results/sglang_plugin_startup.md

SGLang's side (server-argument resolution, MoE blocks built on the meta device, GPU faked as in
engines/sglang/_worker.py) is timed per launch in each worker; the plugin's own time is summed inside
it (its config-time plan and choice, and each per-layer observation, excluding SGLang's code it wraps).
"""

from __future__ import annotations

import datetime
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe_registry.engines.sglang.executed import case_for_plan, run_cases  # noqa: E402
from moe_registry.planner import plan_model  # noqa: E402
from moe_registry.schemas.device import get_device  # noqa: E402
from moe_registry.schemas.layer import ParallelConfig  # noqa: E402

MODELS = (("qwen3-30b-a3b", ParallelConfig()), ("gemma-4-26b-a4b-nvfp4", ParallelConfig()),
          ("gpt-oss-120b", ParallelConfig()), ("deepseek-v3", ParallelConfig(tp=8)))
OUT = ROOT / "benchmarks" / "results" / "sglang_plugin_startup.md"


def main() -> None:
    device = get_device("h100")
    plans = [plan_model(m, device, p) for m, p in MODELS]
    cases = [case_for_plan(p, key=p.model) for p in plans]
    runs = {flag: run_cases(device, cases, load_plugins=flag)[0] for flag in (False, True)}
    lines = [f"# SGLang plugin start-up cost ({datetime.date.today().isoformat()})", "",
             f"`python benchmarks/bench_sglang_plugin.py` on {platform.processor() or platform.machine()} "
             "(the shared 2-core CPU machine; SGLang 0.5.23, GPU faked as H100: engines/sglang/_worker.py). Seconds of "
             "wall time per launch; `plugin` is the time spent in the plugin's own code (config-time plan + choice, "
             "per-layer observation), measured inside the same process.", "",
             "| model | MoE layers | SGLang resolve, no plugin | SGLang build MoE layers, no plugin | with plugin: resolve "
             "| build | plugin's own time | plugin / (resolve + build) |", "|---|---|---|---|---|---|---|---|"]
    for plan, off, on in zip(plans, runs[False], runs[True]):
        added = on.plugin["added_s"] if on.plugin else float("nan")
        total = on.seconds.get("resolve", 0) + on.seconds.get("layers", 0)
        lines.append(f"| {plan.model} {plan.parallel.label()} | {len(plan.layers)} | {off.seconds.get('resolve', 0):.2f} "
                     f"| {off.seconds.get('layers', 0):.2f} | {on.seconds.get('resolve', 0):.2f} "
                     f"| {on.seconds.get('layers', 0):.2f} | {added:.3f} | {added / total:.1%} |")
    lines += ["", "Not counted in either column: importing SGLang (~25 s here) and loading weights, which the plugin "
              "does not touch; a real server's start-up is far longer than these steps, so the plugin's share of it "
              "is smaller still."]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
