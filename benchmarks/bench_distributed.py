"""Dispatch + local experts + combine of one sharded MoE layer, per rank, with the all-to-all
bandwidth achieved: ``python benchmarks/bench_distributed.py --ep 2 --out r.json`` on a host with a
GPU per rank (NCCL), or ``--cpu`` for gloo ranks (a functional run; CPU times mean little).

Each rank times (CUDA-synchronised, after a barrier) the whole forward and, separately, one
all_to_all_single round trip of the same row counts, so the bandwidth line is bytes moved / time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_registry.distributed.launch import launch  # noqa: E402
from moe_registry.distributed.moe import DistributedExperts  # noqa: E402
from moe_registry.execution import random_weights, route  # noqa: E402
from moe_registry.planner import plan_model  # noqa: E402
from moe_registry.schemas.layer import LayerSpec, ParallelConfig  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        dist.barrier()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def bench_rank(rank: int, job: dict) -> list[dict]:
    full = LayerSpec.model_validate_json(job["layer"])
    tp, ep = job["tp"], job["ep"]
    device = torch.device(f"cuda:{rank}") if job["cuda"] else torch.device("cpu")
    weights = random_weights(full, device=device, seed=0)
    layer = full.replace(parallel=ParallelConfig(tp=tp, ep=ep))
    experts = DistributedExperts(layer, weights, device=None if job["cuda"] else "cpu", force=job.get("force"))
    rows = []
    for tokens in job["tokens"]:
        gen = torch.Generator(device="cpu").manual_seed(rank)
        x = torch.randn(tokens, full.hidden_size, generator=gen).to(device, torch.bfloat16)
        w, ids = route(torch.randn(tokens, full.num_experts, generator=gen).to(device), full)
        experts(x, w, ids)  # warm-up
        forward_us = _time(lambda x=x, w=w, ids=ids: experts(x, w, ids), device, job["repeats"])
        pairs = tokens * full.top_k
        send = x.new_empty((pairs, full.hidden_size))
        recv = torch.empty_like(send)
        a2a_us = _time(lambda recv=recv, send=send: dist.all_to_all_single(recv, send, group=experts.ep_group),
                       device, job["repeats"]) \
            if experts.ep_group is not None else 0.0
        moved = 2 * pairs * full.hidden_size * 2 * (ep - 1) / ep  # there and back, bf16, off-rank share
        rows.append({"rank": rank, "tokens_per_rank": tokens, "forward_us": round(forward_us, 1),
                     "all_to_all_us": round(a2a_us, 1),
                     "all_to_all_GBps": round(moved / 2 / (a2a_us * 1e-6) / 1e9, 2) if a2a_us else None,
                     "backend": experts.selection.backend})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--ep", type=int, default=2)
    ap.add_argument("--tokens", default="1,64,512,4096")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--force")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    layer = plan_model(args.preset, select=False).layers[0].layer.replace(name=None, index=None)
    world = args.tp * args.ep
    job = {"layer": layer.model_dump_json(), "tp": args.tp, "ep": args.ep, "cuda": not args.cpu,
           "tokens": [int(t) for t in args.tokens.split(",")], "repeats": args.repeats, "force": args.force}
    results = launch(bench_rank, world, job, backend="gloo" if args.cpu else "nccl", timeout_s=580)
    report = {"preset": args.preset, "parallel": ParallelConfig(tp=args.tp, ep=args.ep).label(),
              "gpus": 0 if args.cpu else world,
              "card": "cpu" if args.cpu else torch.cuda.get_device_name(0),
              "date": time.strftime("%Y-%m-%d"), "ranks": [r for _, status, r in results if status == "ok"],
              "errors": [r for _, status, r in results if status != "ok"]}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
