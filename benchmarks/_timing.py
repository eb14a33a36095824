"""What the benchmark scripts record around their timings: the card's two ceilings (copy
bandwidth, matmul rate, measured in the same run) and the machine (card, driver, versions, commit).

The timer itself is the package's one timer, :mod:`moe_registry.measure.timing` (CUDA events on
GPU, perf_counter on CPU, warm-up, rotated input sets, median / p10 / p90; CUDA-graph replays).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from typing import Any

import torch

from moe_registry.environment import nvidia_smi
from moe_registry.measure.timing import time_calls


def measure_ceilings(device: torch.device, *, quick: bool = False) -> dict[str, float]:
    """Copy bandwidth (bytes read + written per second) and dense bf16 matmul rate on ``device``.

    GPU: a 1 GiB device-to-device copy and an 8192^3 bf16 matmul (random data, never zeros).
    CPU (``quick`` or not): small sizes, only to keep the arithmetic testable.
    """
    cuda = device.type == "cuda"
    n_bytes = (1 << 30) if cuda and not quick else (64 << 20)
    src = torch.randn(n_bytes // 2, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy = time_calls(lambda dst=dst, src=src: dst.copy_(src), [()], device, warmup=3, min_reps=5, max_reps=30, budget_s=0.2)
    bw = 2 * n_bytes / (copy.median_us * 1e-6)
    del src, dst
    n = 8192 if cuda and not quick else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm = time_calls(lambda a=a, b=b: torch.mm(a, b), [()], device, warmup=3, min_reps=5, max_reps=50, budget_s=0.3)
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
        info["driver"] = nvidia_smi("driver_version")
        info["clocks_sm_max_mhz"] = nvidia_smi("clocks.max.sm")
    else:
        info.update(card="cpu", compute_capability=None, driver=None)
    info["git_commit"] = _git_commit()
    return info


def _git_commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=here)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
