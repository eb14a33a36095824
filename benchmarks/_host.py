"""The host's CPU name, recorded with the CPU benchmarks' results. Torch-free, unlike ``_timing``:
bench_cli.py and bench_select.py measure torch-free code paths and must not import torch themselves."""

from __future__ import annotations

from pathlib import Path


def cpu_name(default: str = "unknown") -> str:
    """The first ``model name`` of /proc/cpuinfo, or ``default`` where there is none (not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default
