"""Timing helpers shared by the benchmark scripts (CUDA events on GPU, perf_counter on CPU).

Method (see the project's measuring notes): warm up first, time each call between device events,
rotate several input sets so caches do not flatter, take the median of many repetitions, and
measure the two ceilings (copy bandwidth, matmul rate) on the card in the same run.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch


@dataclass
class Timing:
    median_us: float
    p10_us: float
    p90_us: float
    reps: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def time_calls(fn: Callable[..., Any], input_sets: Sequence[Sequence[Any]], device: torch.device, *,
               warmup: int = 5, min_reps: int = 10, max_reps: int = 200, target_s: float = 0.15) -> Timing:
    """Median time of ``fn(*input_sets[i % n])`` per call, in microseconds.

    On CUDA each call sits between two events recorded back to back on the current stream, so the
    figure includes launch gaps the host leaves (that is what an eager forward costs). The number
    of repetitions adapts to ``target_s`` of total timed work, within ``[min_reps, max_reps]``.
    """
    n = len(input_sets)
    for i in range(warmup):
        fn(*input_sets[i % n])
    _sync(device)
    # Calibrate the repetition count on one more call.
    t0 = time.perf_counter()
    fn(*input_sets[0])
    _sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(max_reps, max(min_reps, target_s / one)))
    samples: list[float] = []
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            args = input_sets[i % n]
            starts[i].record()
            fn(*args)
            ends[i].record()
        torch.cuda.synchronize(device)
        samples = [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]
    else:
        for i in range(reps):
            args = input_sets[i % n]
            t0 = time.perf_counter()
            fn(*args)
            samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    return Timing(median_us=statistics.median(samples), p10_us=_percentile(samples, 0.1),
                  p90_us=_percentile(samples, 0.9), reps=reps)


def time_graph(fn: Callable[..., Any], input_sets: Sequence[Sequence[Any]], device: torch.device, *,
               warmup: int = 3, replays: int = 100) -> Timing:
    """Capture ``fn`` once per input set in a CUDA graph and time the replays (launch gaps removed).

    Raises whatever capture raises (a host sync inside ``fn`` makes capture fail)."""
    if device.type != "cuda":
        raise RuntimeError("CUDA graphs need a CUDA device")
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for i in range(warmup):
            fn(*input_sets[i % len(input_sets)])
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    graphs = []
    for args in input_sets:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn(*args)
        graphs.append(g)
    for g in graphs:
        g.replay()
    torch.cuda.synchronize(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    for i in range(replays):
        starts[i].record()
        graphs[i % len(graphs)].replay()
        ends[i].record()
    torch.cuda.synchronize(device)
    samples = sorted(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))
    return Timing(median_us=statistics.median(samples), p10_us=_percentile(samples, 0.1),
                  p90_us=_percentile(samples, 0.9), reps=replays)


def measure_ceilings(device: torch.device, *, quick: bool = False) -> dict[str, float]:
    """Copy bandwidth (bytes read + written per second) and dense bf16 matmul rate on ``device``.

    GPU: a 1 GiB device-to-device copy and an 8192^3 bf16 matmul (random data, never zeros).
    CPU (``quick`` or not): small sizes, only to keep the arithmetic testable.
    """
    cuda = device.type == "cuda"
    n_bytes = (1 << 30) if cuda and not quick else (64 << 20)
    src = torch.randn(n_bytes // 2, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy = time_calls(lambda: dst.copy_(src), [()], device, warmup=3, min_reps=5, max_reps=30, target_s=0.2)
    bw = 2 * n_bytes / (copy.median_us * 1e-6)
    del src, dst
    n = 8192 if cuda and not quick else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm = time_calls(lambda: torch.mm(a, b), [()], device, warmup=3, min_reps=5, max_reps=50, target_s=0.3)
    peak = 2 * n**3 / (mm.median_us * 1e-6)
    del a, b
    if cuda:
        torch.cuda.empty_cache()
    return {"copy_bandwidth_gbs": bw / 1e9, "bf16_matmul_tflops": peak / 1e12,
            "copy_bytes": float(n_bytes), "matmul_n": float(n)}


def machine_info(device: torch.device) -> dict[str, Any]:
    """Card name, compute capability, driver, torch and CUDA versions, date (UTC)."""
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host_cpu": platform.processor() or platform.machine(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(card=props.name, compute_capability=f"{props.major}.{props.minor}",
                    sm_count=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1))
        info["driver"] = _nvidia_smi("driver_version")
        info["clocks_sm_max_mhz"] = _nvidia_smi("clocks.max.sm")
    else:
        info.update(card="cpu", compute_capability=None, driver=None)
    info["git_commit"] = _git_commit()
    return info


def _nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _git_commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=here)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
