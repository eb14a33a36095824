"""The host's CPU name, recorded with the CPU benchmarks' results, and the scripts' atomic JSON writes.
Torch-free, unlike ``_timing``: bench_cli.py and bench_select.py measure torch-free code paths and must not
import torch themselves."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON through a temporary file, so a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def cpu_name(default: str = "unknown") -> str:
    """The first ``model name`` of /proc/cpuinfo, or ``default`` where there is none (not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default
