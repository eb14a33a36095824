"""triton-lowt-moe's kernels as the GPU compiles them: every launch of its forward, for every weight format and
config option, compiled for sm_90 on this CPU (``tests/sm90_compile.py``, in a process of its own: the interpreter
tests decorate the kernels for the interpreter in this one). The interpreter runs the kernels' Python only; a
kernel the compiler rejects passed every CPU test once (a 16-bit branch's early return that Triton 3.6 refuses,
2026-12-08).

CI compiles with the Triton installed here; ``MOE_REGISTRY_SM90_PYTHON`` names a Python whose Triton is the GPU
machine's (3.6.0, ../shared/reference/gpu-machine-notes.md) for the same check with that compiler.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Only whether they are installed: importing triton here, while the suite is collected, would come before the
# interpreter tests set TRITON_INTERPRET, and they would all skip (tests/test_triton_lowt_moe_cpu.py _LATE).
if importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None:
    pytest.skip("torch and triton are needed", allow_module_level=True)

SCRIPT = Path(__file__).with_name("sm90_compile.py")


def _run(python: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([python, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, f"{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_the_check_reports_a_kernel_the_compiler_rejects():
    assert "rejected: _rejected [N=3]" in _run(sys.executable, "--self-check")


def _all_compiled(out: str) -> None:
    m = re.search(r"^(\d+) of (\d+) compiled", out, re.M)
    # six layers x eleven configs: well over a hundred distinct launches (a recorder that saw none would pass)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) >= 100, out[-3000:]


def test_every_lowt_launch_compiles_for_sm90():
    _all_compiled(_run(sys.executable))


def test_every_lowt_launch_compiles_with_the_gpu_machines_triton():
    python = os.environ.get("MOE_REGISTRY_SM90_PYTHON")
    if not python:
        pytest.skip("MOE_REGISTRY_SM90_PYTHON is unset (a Python with the GPU machine's Triton, 3.6.0)")
    _all_compiled(_run(python))
