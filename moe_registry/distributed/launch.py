"""Spawn ranks on this machine (gloo on CPUs, NCCL on GPUs) and run one sharded layer in them.

``launch`` is the package's own launcher, so ``moe-registry run --tp/--ep`` and the tests need no
``torchrun``; a job launched by ``torchrun`` can call ``run_rank_job`` directly instead.
"""

from __future__ import annotations

import os
import queue as queue_mod
import socket
import statistics
import threading
import time
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .._isolation import die_with_parent
from ..errors import MoeRegistryError
from ..measure.timing import usable_cpus
from ..schemas.layer import LayerSpec, ParallelConfig
from .layout import RankLayout


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _watch_parent(parent: int) -> None:
    # PR_SET_PDEATHSIG covers Linux; this covers the rest (and a parent that died before prctl).
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def _rank_main(rank: int, world: int, port: int, backend: str, results: Any, fn: Callable[..., Any],
               args: tuple, parent: int | None = None) -> None:
    # A rank dies with the process that spawned it: killing `moe-registry run` must not leave
    # ranks computing (or holding a GPU) for minutes.
    die_with_parent(parent)
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results.put((rank, "ok", fn(rank, *args)))
    except (MoeRegistryError, ValueError, TypeError, RuntimeError) as exc:
        results.put((rank, "error", f"{type(exc).__name__}: {exc}"))
    finally:
        dist.destroy_process_group()


def launch(fn: Callable[..., Any], world_size: int, *args: Any, backend: str | None = None,
           timeout_s: float = 600.0) -> list[tuple[int, str, Any]]:
    """Run ``fn(rank, *args)`` in ``world_size`` spawned processes with a process group initialised.

    Returns ``[(rank, "ok", result) | (rank, "error", message)]`` sorted by rank: an error on one
    rank is reported, not raised, so a caller sees what every rank said. ``fn`` must be importable
    (a module-level function). ``backend``: "nccl" when CUDA has a GPU per rank, else "gloo".
    """
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if world_size > 4 * usable_cpus():  # tests run EP4 on two cores; 65,536 processes would swamp any host
        raise ValueError(f"{world_size} ranks is more than 4 per usable CPU ({usable_cpus()}) here")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"NCCL needs one GPU per rank: {world_size} ranks, {torch.cuda.device_count()} GPUs here")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world_size, port, backend, results, fn, args, os.getpid()),
                         daemon=True) for r in range(world_size)]
    for p in procs:
        p.start()
    collected: dict[int, tuple[int, str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(collected) < world_size:
        try:
            item = results.get(timeout=1.0)
            collected[item[0]] = item
        except queue_mod.Empty:
            dead = [i for i, p in enumerate(procs) if not p.is_alive() and i not in collected and p.exitcode]
            if dead or time.monotonic() > deadline:
                break
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
    for r in range(world_size):
        if r not in collected:
            code = procs[r].exitcode
            collected[r] = (r, "error", f"rank {r} exited without a result (exit code {code})"
                            if code is not None else f"rank {r} timed out after {timeout_s:g} s")
    return [collected[r] for r in range(world_size)]


def check_world_size(world: int, *, cuda: bool) -> None:
    """ValueError (one line) before anything is spawned: one rank per GPU with NCCL, at most one
    per usable CPU with gloo (more only oversubscribes the machine and swaps)."""
    have = torch.cuda.device_count() if cuda else usable_cpus()
    if cuda and world > have:
        raise ValueError(f"NCCL needs one GPU per rank: {world} ranks, {have} GPUs here")
    if world > have:
        raise ValueError(f"{world} ranks (tp x ep) but this machine has {have} usable CPUs; "
                         f"at most {have} ranks run here")


def _rank_tokens(tokens: int | list[int], ep: int) -> list[int]:
    counts = [tokens] * ep if isinstance(tokens, int) else list(tokens)
    if len(counts) != ep or any(c < 0 for c in counts):
        raise ValueError(f"need one non-negative token count per EP rank ({ep}), got {counts}")
    return counts


def run_rank_job(rank: int, job: dict[str, Any]) -> dict[str, Any]:
    """One rank of a sharded-layer check: full weights from a shared seed, this rank's shard, its
    tokens, the distributed forward, and the single-process reference of the full layer on the
    same tokens (so every rank verifies its own output)."""
    from ..backends.reference.kernel import ReferenceExperts
    from ..execution import random_weights, route
    from ..execution.patterns import relative_error
    from .moe import DistributedExperts

    full = LayerSpec.model_validate_json(job["layer"])
    parallel = ParallelConfig(tp=job["tp"], ep=job["ep"])
    layout = RankLayout.of(rank, parallel)
    device = torch.device(f"cuda:{rank}") if job.get("cuda") else torch.device("cpu")
    counts = _rank_tokens(job["tokens"], parallel.ep)
    weights = random_weights(full, device=device, seed=job["seed"])
    gen = torch.Generator(device="cpu").manual_seed(job["seed"] + 1)
    hidden = torch.randn(sum(counts), full.hidden_size, generator=gen).to(device, torch.bfloat16)
    logits = torch.randn(sum(counts), full.num_experts, generator=gen).to(device)
    if job.get("skew"):  # imbalanced routing: most tokens prefer the first experts
        logits[:, : max(1, full.num_experts // 8)] += 3.0
    start = sum(counts[: layout.ep_rank])
    mine = slice(start, start + counts[layout.ep_rank])
    topk_weights, topk_ids = route(logits[mine], full, method=job.get("routing"))
    force = (job.get("force_by_rank") or {}).get(str(rank), job.get("force"))
    layer = full.replace(parallel=parallel)
    experts = DistributedExperts(layer, weights, device=job.get("target"), force=force)
    x = hidden[mine]
    out = experts(x, topk_weights, topk_ids)
    times = []
    for _ in range(job.get("repeats", 0)):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        experts(x, topk_weights, topk_ids)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e6)
    ref = ReferenceExperts(full, weights)(x, topk_weights, topk_ids) if x.shape[0] else x
    return {
        "rank": rank, "tp_rank": layout.tp_rank, "ep_rank": layout.ep_rank, "tokens": int(x.shape[0]),
        "backend": experts.selection.backend, "fingerprint": experts.selection.fingerprint,
        "rel_error_vs_reference": relative_error(out.float(), ref.float()) if x.shape[0] else 0.0,
        "median_us": round(statistics.median(times), 2) if times else None,
    }


def run_rank_jobs(rank: int, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Several ``run_rank_job`` cases in one process group (one spawn for many checks)."""
    return [run_rank_job(rank, job) for job in jobs]


def run_distributed_preset(preset: str, *, layer: int = 0, tokens: int = 64, tp: int = 1, ep: int = 1,
                           seed: int = 0, force: str | None = None, quant: str | None = None,
                           repeats: int = 10, cuda: bool | None = None) -> dict[str, Any]:
    """``moe-registry run --tp/--ep``: one preset layer sharded over TP x EP spawned ranks."""
    from ..measure.timing import check_run_size
    from ..planner import plan_model

    check_run_size(tokens, repeats)
    world = tp * ep
    if cuda is None:
        cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    check_world_size(world, cuda=cuda)  # before the plan and before any rank is spawned
    plan = plan_model(preset, quant=quant, select=False)
    by_index = {lp.layer.index: lp.layer for lp in plan.layers}
    if layer not in by_index:
        raise ValueError(f"layer {layer} of {plan.model} is not an MoE layer")
    spec = by_index[layer].replace(parallel=ParallelConfig(), name=None, index=None)
    job = {"layer": spec.model_dump_json(), "tp": tp, "ep": ep, "tokens": tokens, "seed": seed, "force": force,
           "repeats": repeats, "cuda": cuda, "target": None if cuda else "cpu"}
    results = launch(run_rank_job, world, job, backend="nccl" if cuda else "gloo")
    errors = [msg for _, status, msg in results if status == "error"]
    if errors:
        raise ValueError("; ".join(dict.fromkeys(errors)))
    ranks = [r for _, _, r in results]
    return {"model": plan.model, "layer": by_index[layer].name, "shape": spec.describe(),
            "parallel": ParallelConfig(tp=tp, ep=ep).label(), "world_size": world,
            "transport": "nccl" if cuda else "gloo", "backend": ranks[0]["backend"],
            "fingerprint": ranks[0]["fingerprint"],
            "max_rel_error_vs_reference": max(r["rel_error_vs_reference"] for r in ranks), "ranks": ranks}

