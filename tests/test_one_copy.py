"""Small helpers exist once (issue 11): the exception formatter and the CUDA-context markers in
``errors``, the nvidia-smi / version queries in ``environment``, the routing inputs in
``execution.patterns``, the adapter loader in ``execution``. The source is read with ast, so a
re-introduced copy fails here whatever it is called in its own module; the rest checks that the
one copy gives what each former copy gave."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from moe_registry import errors
from moe_registry.errors import CUDA_CONTEXT_BROKEN_MARKERS, cuda_context_broken, one_line, validation_one_line

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "moe_registry").rglob("*.py"), *(REPO / "benchmarks").glob("*.py")])

# Function names that were copies, and the one module each may be defined in.
HOMES = {
    r"_?one_line": "moe_registry/errors.py",
    r"_?validation_one_line": "moe_registry/errors.py",
    r"_?(is_sticky_cuda_error|poisons_cuda|cuda_context_broken)": "moe_registry/errors.py",
    r"_?nvidia_smi": "moe_registry/environment.py",
    r"_?(versions|package_versions)": "moe_registry/environment.py",
    r"_?(load_adapter)": "moe_registry/execution/__init__.py",
    r"_?(routing_pattern|make_routing)": "moe_registry/execution/patterns.py",
}


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _trees() -> list[tuple[str, ast.Module]]:
    return [(_rel(p), ast.parse(p.read_text(), str(p))) for p in SOURCES]


def test_each_helper_is_defined_in_its_home_only():
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for pattern, home in HOMES.items():
                if re.fullmatch(pattern, node.name) and path != home:
                    found.append(f"{path}:{node.lineno} def {node.name} (its home is {home})")
    assert not found, "copies of shared helpers:\n" + "\n".join(found)


def test_random_routing_is_drawn_in_patterns_only():
    # The idiom of a routing generator: top-k of a softmax (torch.topk(torch.softmax(x)) or
    # x.softmax(-1).topk(k)). route() is the real router of the layers' routing methods.
    homes = ("moe_registry/execution/patterns.py", "moe_registry/execution/routing.py")

    def is_call(node: ast.AST, name: str) -> bool:
        return isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == name

    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if is_call(node, "topk") and path not in homes:
                assert isinstance(node, ast.Call)
                inner = node.args[0] if node.args else getattr(node.func, "value", None)
                if inner is not None and is_call(inner, "softmax"):
                    found.append(f"{path}:{node.lineno}")
    assert not found, "routing drawn outside execution.patterns: " + ", ".join(found)


def test_cuda_markers_and_nvidia_smi_queries_are_written_once():
    # A string constant holding a marker (in any case) or starting an nvidia-smi query, outside its home.
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            text = node.value.lower()
            if path != "moe_registry/errors.py" and any(text == m for m in CUDA_CONTEXT_BROKEN_MARKERS):
                found.append(f"{path}:{node.lineno} marker {node.value!r}")
            # schemas/device.py detects the device with its own query: the schemas sit below environment.
            if (text.startswith("--query-gpu") and path not in ("moe_registry/environment.py",
                                                                 "moe_registry/schemas/device.py")):
                found.append(f"{path}:{node.lineno} nvidia-smi query {node.value!r}")
    assert not found, "\n".join(found)


def test_format_slicing_is_no_class_name_table():
    # distributed.shard reads the format classes' slice_axes, not a table keyed by class name.
    tree = ast.parse((REPO / "moe_registry/distributed/shard.py").read_text())
    names = {"NvFp4Tensor", "MxFp4Tensor", "Fp8Tensor", "Fp8BlockTensor", "Int4GroupTensor"}
    keys = [k.value for node in ast.walk(tree) if isinstance(node, ast.Dict)
            for k in node.keys if isinstance(k, ast.Constant)]
    assert not names & set(keys)


# --- The one copies behave as the copies did ------------------------------------------------------


def test_one_line_forms():
    exc = ValueError("bad\n   value\tthere")
    assert one_line(exc) == "ValueError: bad value there"  # _isolation / worker / bench
    assert one_line(exc, typed=False) == "bad value there"  # cli, planner's JSON errors
    assert one_line(KeyError()) == "KeyError" and one_line(RuntimeError(""), typed=False) == "RuntimeError"
    long = RuntimeError("x" * 1000)
    assert one_line(long, limit=400) == ("RuntimeError: " + "x" * 1000)[:397] + "..."
    assert len(one_line(long, limit=500)) == 500
    assert one_line(RuntimeError("short"), limit=20) == "RuntimeError: short"


def test_validation_one_line_forms():
    from pydantic import ValidationError

    from moe_registry.schemas.layer import LayerSpec

    base = dict(num_experts=8, top_k=2, hidden_size=512, intermediate_size=512)
    with pytest.raises(ValidationError) as two:
        LayerSpec.model_validate({**base, "top_k": 0, "hidden_size": "x"})
    every = validation_one_line(two.value)  # the CLI's form: every error
    assert every.count("; ") == 1 and "top_k: Input should be greater than 0" in every
    assert validation_one_line(two.value, first_only=True) == every.split("; ")[0]  # the planner's
    with pytest.raises(ValidationError) as whole:
        LayerSpec.model_validate({**base, "top_k": 9})
    assert validation_one_line(whole.value) == "top_k (9) exceeds num_experts (8)"
    assert validation_one_line(whole.value, whole="input") == "input: top_k (9) exceeds num_experts (8)"


@pytest.mark.parametrize("text,broken", [
    ("CUDA error: an illegal memory access was encountered", True),  # torch
    ("Triton Error [CUDA]: an illegal memory access was encountered", True),  # bench's list only
    ("CUDA error: device-side assert triggered", True),
    ("CUDA error: unspecified launch failure", True),  # bench's list only
    ("CUDA error: misaligned address", True),
    ("an illegal instruction was encountered", True),
    ("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx", True),  # the worker's list only
    ("CUDA error: invalid argument", True),  # the worker's generic marker
    ("CUDA out of memory. Tried to allocate 2.00 GiB", False),  # torch frees and goes on
    ("expected a bf16 tensor", False),
])
def test_cuda_context_broken(text, broken):
    assert cuda_context_broken(RuntimeError(text)) is broken
    assert cuda_context_broken(text) is broken


def test_markers_are_lower_case():
    # They are matched against the lower-cased text.
    assert all(m == m.lower() for m in errors.CUDA_CONTEXT_BROKEN_MARKERS)


def test_package_versions_and_nvidia_smi(monkeypatch):
    import platform
    import shutil

    from moe_registry import environment

    got = environment.package_versions({"pydantic": "pydantic", "nope": "no-such-distribution-xyz"})
    assert list(got) == ["python", "pydantic"] and got["python"] == platform.python_version()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert environment.nvidia_smi("driver_version") is None


def test_nvidia_smi_reads_the_first_line(monkeypatch, tmp_path):
    import shutil

    from moe_registry import environment

    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\necho "$1 $2"\necho second\n')
    fake.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name: str(fake))
    assert environment.nvidia_smi("clocks.max.sm") == "--query-gpu=clocks.max.sm --format=csv,noheader"
    assert environment.nvidia_smi("clocks.max.sm", units=False).endswith("--format=csv,noheader,nounits")
    fake.write_text("#!/bin/sh\nexit 3\n")
    assert environment.nvidia_smi("name") is None


def test_routing_pattern_empty_experts():
    torch = pytest.importorskip("torch")
    from moe_registry.execution.patterns import routing_pattern

    w, ids = routing_pattern(40, 5, 3, device="cpu", kind="imbalanced", empty=(2,),
                             generator=torch.Generator().manual_seed(0))
    assert ids.dtype == torch.int32 and not bool((ids == 2).any())
    torch.testing.assert_close(w.sum(-1), torch.ones(40))
    _, ids = routing_pattern(16, 6, 2, device="cpu", kind="empty")
    assert set(ids.unique().tolist()) <= {1, 2, 4}  # 0, every third and the last get no tokens
    with pytest.raises(ValueError, match=r"routing with experts \[0, 1, 2\] empty needs at least 2 experts left of 4"):
        routing_pattern(4, 4, 2, device="cpu", empty=(0, 1, 2))
    with pytest.raises(ValueError, match="'empty' routing needs at least 3 experts left of 4"):
        routing_pattern(4, 4, 3, device="cpu", kind="empty")


def test_the_probe_worker_loads_adapters_like_build_experts():
    pytest.importorskip("torch")
    from moe_registry.verify.worker import run_job

    events = []
    assert run_job({"backend": "acme", "adapter": "acme_gone_module:Experts", "device": "cpu", "combos": []},
                   0, events.append) == 0
    assert events == [{"event": "hello", "error": "AdapterUnavailable: backend 'acme': cannot import its adapter "
                                                  "module 'acme_gone_module': No module named 'acme_gone_module'"}]
    events.clear()
    run_job({"backend": "acme", "adapter": "moe_registry.errors:one_line", "device": "cpu", "combos": []},
            0, events.append)
    assert events[0]["error"] == ("TypeError: backend 'acme': adapter 'moe_registry.errors:one_line' is not an "
                                  "Experts subclass")
