"""ruff and mypy pass on the repository (their settings: pyproject.toml), so `.ci/run` runs both.

Both tools are in the ``test`` extra. The mypy settings are strict enough to catch a policy that does not
satisfy the ``Policy`` protocol: the last test shows that on a small file.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=900, cwd=cwd)


def test_ruff_passes():
    done = _run("ruff", "check", "--output-format", "concise", ".")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_mypy_passes_on_the_package():
    done = _run("mypy")  # packages and settings from [tool.mypy]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_mypy_catches_a_policy_that_does_not_match_the_protocol(tmp_path):
    (tmp_path / "bad_policy.py").write_text(textwrap.dedent("""
        from moe_registry import LayerSpec, select_backend

        class NotAPolicy:
            allow_padding = True  # no exact_activations, no priority()

        layer = LayerSpec(num_experts=8, top_k=2, hidden_size=512, intermediate_size=512)
        select_backend(layer, "h100", policy=NotAPolicy())
        """))
    done = _run("mypy", "--config-file", str(REPO / "pyproject.toml"), str(tmp_path / "bad_policy.py"))
    assert done.returncode == 1, done.stdout
    assert 'incompatible type "NotAPolicy"; expected "Policy' in done.stdout, done.stdout
