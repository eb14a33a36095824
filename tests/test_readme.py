"""README and CI agree, and every code snippet in the README runs (issue 12, items 14-15)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.M | re.S)


def test_ci_runs_the_readme_commands_as_written():
    (first, *_) = [body for lang, body in BLOCKS if lang == "bash"]
    commands = [line for line in first.splitlines() if line.strip()]
    assert len(commands) == 2
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    # what runs in CI beyond the README's two lines only makes the machine a clean venv
    assert ci[-2:] == commands
    assert all(line.startswith(("set ", "cd ", "python3 -m venv", ". .ci-venv", "python -m pip install --quiet --upgrade pip"))
               for line in ci[:-2])


def test_the_test_extra_holds_what_the_tests_import():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=\[ ]", r, maxsplit=1)[0] for r in extras["test"]}
    assert {"pytest", "hypothesis", "numpy"} <= names


def test_python_snippets_run_on_the_cpu():
    snippets = [body for lang, body in BLOCKS if lang == "python"]
    assert len(snippets) >= 2
    if any("import torch" in s for s in snippets):
        pytest.importorskip("torch")
    namespace: dict = {}
    for snippet in snippets:  # in order: later snippets use names the earlier ones define
        exec(compile(snippet, "README.md", "exec"), namespace)
    # The README's own comment says what the snippet returns: hold it to that.
    (said,) = re.findall(r"^s\.backend\s+# '([^']+)'", README, re.M)
    assert namespace["s"].backend == said == "humming"
    assert len(namespace["plan"].layers) == 58
    assert tuple(namespace["out"].shape) == (4, 256)


def test_toml_snippet_parses():
    (toml,) = [body for lang, body in BLOCKS if lang == "toml"]
    assert tomllib.loads(toml)["project"]["entry-points"]["moe_registry"]["acme"] == "acme_moe.registry_plugin"


def test_the_cpu_test_run_asks_for_the_cpu_build_of_torch():
    """issue 20 item 8: a stock pip must not pull PyPI's CUDA torch (and its nvidia-* wheels) for the
    CPU test run: the install pins the +cpu local version, which only PyTorch's CPU index (or a
    find-links directory holding that wheel) has, so a pip that finds neither fails at once."""
    (first,) = [body for lang, body in BLOCKS if lang == "bash"][:1]
    second = [line for line in first.splitlines() if line.strip()][1]
    torch_install = second.split(" && ")[0].split()
    assert torch_install[:4] == ["python3", "-m", "pip", "install"]
    (pin,) = [w for w in torch_install if w.startswith("torch")]
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+\+cpu", pin)
    assert torch_install[torch_install.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
