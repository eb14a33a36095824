"""Selection latency: cold and cached `select_backend`, and planning a 94-layer model.

Targets (issue 2): cached select < 20 us; planning Qwen3-235B-A22B's 94 MoE layers < 5 ms on the
development CPU. Run: `python benchmarks/bench_select.py --out benchmarks/results/select-cpu.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from _host import cpu_name  # benchmarks/ is sys.path[0] when run as a script

from moe_registry import LayerSpec, plan_model, select_backend
from moe_registry.selection import _resolve

GEMMA4 = LayerSpec(name="model.language_model.layers.0.experts", index=0, num_experts=128, top_k=8,
                   hidden_size=2816, intermediate_size=704, activation="gelu_tanh", quant="nvfp4")


def _median_us(fn, repeats: int, setup=None) -> float:
    times = []
    for _ in range(repeats):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", help="write the results as JSON")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    select_backend(GEMMA4, "b200")  # import and registry construction out of the numbers
    cold = _median_us(lambda: select_backend(GEMMA4, "b200"), args.repeats, setup=_resolve.cache_clear)
    cached = _median_us(lambda: select_backend(GEMMA4, "b200"), args.repeats * 50)
    cached_unnamed = _median_us(lambda: select_backend(GEMMA4.shape_key(), "b200"), args.repeats * 50)
    plan_cold = _median_us(lambda: plan_model("qwen3-235b-a22b", device="b200"), args.repeats // 4,
                           setup=_resolve.cache_clear)
    plan_warm = _median_us(lambda: plan_model("qwen3-235b-a22b", device="b200"), args.repeats // 4)
    layers = len(plan_model("qwen3-235b-a22b", device="b200").layers)

    results = {
        "date": datetime.date.today().isoformat(), "machine": cpu_name(platform.processor() or platform.machine()),
        "python": sys.version.split()[0],
        "select_cold_us": round(cold, 1), "select_cached_us": round(cached, 2),
        "select_cached_unnamed_us": round(cached_unnamed, 2),
        "plan_layers": layers, "plan_cold_ms": round(plan_cold / 1e3, 3), "plan_warm_ms": round(plan_warm / 1e3, 3),
        "targets": {"select_cached_us": 20, "plan_94_layers_ms": 5},
    }
    results["meets_targets"] = cached < 20 and plan_cold / 1e3 < 5
    print(f"select_backend cold:   {cold:8.1f} us")
    print(f"select_backend cached: {cached:8.2f} us (unnamed layer {cached_unnamed:.2f} us)   target < 20 us")
    print(f"plan {layers} layers:       {plan_cold / 1e3:8.3f} ms cold selection, {plan_warm / 1e3:.3f} ms warm"
          "   target < 5 ms")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
