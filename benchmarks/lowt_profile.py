#!/usr/bin/env python3
"""Device time of each launch of triton-lowt-moe's forward (GEMM1, GEMM2, cast), per config, on one GPU.

    python benchmarks/lowt_profile.py --out profile.json [--layers gemma4-nvfp4,qwen3-int4,gemma4-bf16]

The benchmark (bench_lowt.py) times whole graphed forwards; this says how a forward splits between its
launches, from ``torch.profiler``'s CUDA kernel records (eager calls: a kernel's device time does not
depend on how it was launched; the gaps between launches do, and the graphed totals of bench_lowt.py hold
them). Per (layer, T, config): median device microseconds of the i-th kernel of a forward over 20
forwards, with its name.

``--ncu`` (under ``ncu --profile-from-start off``, as ``lowt_profile_session.sh`` runs it with NCU=1): one
forward per config inside the profiler range, so Nsight Compute's counters (DRAM throughput, occupancy, warp
stalls) say why a launch takes the time it does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]

import torch  # noqa: E402

from bench_lowt import LAYERS, variants  # noqa: E402

REPS = 20


def kernel_times(fn, args, reps: int) -> list[tuple[str, float]]:
    """(name, median us) of each kernel of one forward, in launch order."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn(*args)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn(*args)
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type.name == "CUDA" and e.device_time > 0),
                     key=lambda e: e.time_range.start)
    per = len(kernels) // reps
    if per * reps != len(kernels):
        raise RuntimeError(f"{len(kernels)} kernels in {reps} forwards")
    return [(kernels[i].name[:40], statistics.median(kernels[r * per + i].device_time for r in range(reps)))
            for i in range(per)]


def ncu_forwards(experts, name: str, T: int, labels: list[str], args) -> None:
    """Each config's forward run untimed (compiles), then once more per config inside the profiler range."""
    cfgs = [variants(name)[label](T) for label in labels]
    for cfg in cfgs:
        experts.config = cfg
        experts.forward(*args)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for label, cfg in zip(labels, cfgs):
        experts.config = cfg
        torch.cuda.nvtx.range_push(f"{name} T={T} {label}")
        experts.forward(*args)
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"ncu: {name} T={T}: {', '.join(labels)} profiled in this order", flush=True)


def main() -> None:
    from moe_registry.backends.triton_lowt_moe.kernel import TritonLowTExperts
    from moe_registry.execution.patterns import routing_pattern
    from moe_registry.execution.weights import random_weights
    from moe_registry.schemas.layer import LayerSpec

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.devnull)
    p.add_argument("--layers", default="gemma4-nvfp4,qwen3-int4")
    p.add_argument("--tokens", default="1,4,16")
    p.add_argument("--configs", default="default,gemv16,gemv8,gemv8x,gemv8p,gemv8px,gemv4px,gemv8u8px",
                   help="comma list of bench_lowt.py's variant names")
    p.add_argument("--reps", type=int, default=REPS, help="forwards per config")
    p.add_argument("--ncu", action="store_true", help="under Nsight Compute (--profile-from-start off): every config "
                   "run untimed first, then one forward each between cudaProfilerStart / Stop, no torch.profiler")
    a = p.parse_args()
    known = variants(next(iter(LAYERS)))
    if unknown := [c for c in a.configs.split(",") if c not in known]:
        p.error(f"--configs: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    dev = torch.device("cuda")
    rec: dict[str, object] = {"card": torch.cuda.get_device_name(), "rows": []}
    for name in a.layers.split(","):
        layer = LayerSpec(name=name, **LAYERS[name])
        experts = TritonLowTExperts(layer, random_weights(layer, device=dev, dtype=torch.bfloat16, seed=7))
        for T in map(int, a.tokens.split(",")):
            gen = torch.Generator(device=dev).manual_seed(1000 + T)
            w, ids = routing_pattern(T, layer.local_num_experts, layer.top_k, device=dev, generator=gen)
            x = torch.randn(T, layer.hidden_size, device=dev, generator=gen).to(torch.bfloat16)
            if a.ncu:
                ncu_forwards(experts, name, T, a.configs.split(","), (x, w, ids))
                continue
            for label in a.configs.split(","):
                experts.config = variants(name)[label](T)
                try:
                    ks = kernel_times(experts.forward, (x, w, ids), a.reps)
                except Exception as exc:  # one config failing must not hide the others
                    print(f"ERROR {name} T={T} {label}: {type(exc).__name__}: {exc}", flush=True)
                    continue
                rec["rows"].append({"layer": name, "T": T, "config": label, "kernels": ks})  # type: ignore[attr-defined]
                print(f"{name:13} T={T:<3} {label:10} " + "  ".join(f"{n.split('_kernel')[0]} {us:7.1f}" for n, us in ks)
                      + f"  sum {sum(us for _, us in ks):7.1f} us", flush=True)
        del experts
        torch.cuda.empty_cache()
    with open(a.out, "w") as f:
        json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()
