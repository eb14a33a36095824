"""oai-triton-kernels on the CPU: the probe, the declaration in selection, and what of triton_kernels runs
in Triton's interpreter.

What cannot run here: ``matmul_ogs`` itself. triton_kernels specializes its GEMM kernels by rewriting
their ``JITFunction`` source (``specialize.py`` asserts ``isinstance(fn, triton.runtime.jit.JITFunction)``),
and in interpreter mode kernels are ``InterpretedFunction``s; it also asks the active GPU driver for the
target. The GEMMs, the fused swigluoai and the scatter-sum are verified on the GPU
(tests/gpu/test_oai_triton_gpu.py). Here: vLLM's ``pack_bitmatrix`` and triton_kernels'
``routing_from_bitmatrix`` (interpreter), our weight conversion (pure torch) against triton_kernels' own
unswizzle, and the row interleave. Those tests need triton_kernels (vLLM's vendored copy or the
upstream package) and skip without it.
"""

from __future__ import annotations

import os
import sys

import pytest

# triton reads TRITON_INTERPRET when it is imported and when it decorates: both must happen after this.
_LATE = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
os.environ.setdefault("TRITON_INTERPRET", "1")

from moe_registry.backends import oai_triton  # noqa: E402
from moe_registry.backends.oai_triton import DECLARATION, locate, triton_kernels_available  # noqa: E402
from moe_registry.planner import plan_model, single_layer  # noqa: E402
from moe_registry.schemas.device import get_device  # noqa: E402
from moe_registry.schemas.quant import QuantFamily  # noqa: E402
from moe_registry.selection import select_backend  # noqa: E402


def _fake_package(root, name: str, files=oai_triton.GENERATION_FILES) -> None:
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for f in files:
        (pkg / f).write_text("")


def test_probe_finds_a_top_level_package_first(tmp_path, monkeypatch):
    _fake_package(tmp_path, "triton_kernels")
    _fake_package(tmp_path / "vllm" / "third_party", "triton_kernels")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "triton_kernels", raising=False)
    name, path, _ = locate()
    assert name == "triton_kernels" and path == str(tmp_path / "triton_kernels")
    assert "vllm" not in sys.modules or hasattr(sys.modules["vllm"], "__path__")  # nothing imported


def test_probe_falls_back_to_vllms_vendored_copy_without_importing_vllm(tmp_path, monkeypatch):
    _fake_package(tmp_path / "vllm" / "third_party", "triton_kernels")
    (tmp_path / "vllm" / "__init__.py").write_text("raise RuntimeError('vllm imported by the probe')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("vllm", "triton_kernels"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    if oai_triton._package_dir("triton_kernels") is not None:
        pytest.skip("a real top-level triton_kernels is installed here")
    ok, detail = triton_kernels_available()
    assert ok, detail
    assert detail.startswith("vllm.third_party.triton_kernels at ")


def test_probe_refuses_another_api_generation(tmp_path, monkeypatch):
    _fake_package(tmp_path, "triton_kernels", files=("matmul.py", "tensor.py"))  # 3.8: matmul, no matmul_ogs
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "triton_kernels", raising=False)
    if oai_triton._package_dir("vllm.third_party.triton_kernels") is not None:
        pytest.skip("vLLM's vendored copy is installed here")
    ok, detail = triton_kernels_available()
    assert not ok
    assert "lacks matmul_ogs.py, routing.py, swiglu.py (another API generation)" in detail


def test_gpt_oss_on_hopper_ranks_it_after_the_measured_faster_humming_and_ahead_of_flashinfer():
    # vLLM's order (TRITON, then FlashInfer CUTLASS), except that Humming measured faster on the H100
    # (benchmarks/results/decode-h100/) and leads on SM90
    plan = plan_model("gpt-oss-120b", device="h100")
    s = plan.layers[0].selection
    assert [c.backend for c in s.eligible][:3] == ["humming", "oai-triton-kernels", "flashinfer-cutlass"]
    # elsewhere vLLM's order holds (SM100 without TRT-LLM-gen's FP4 is not a preset; sm103 has it)
    sm110 = select_backend(plan_model("gpt-oss-120b", select=False).layers[0].layer, get_device("sm110"))
    assert sm110.eligible[0].backend == "oai-triton-kernels"
    # Consumer Blackwell: vLLM moves TRITON after (batched) Marlin.
    rtx = plan_model("gpt-oss-20b", device="sm120").layers[0].selection
    order = [c.backend for c in rtx.eligible]
    assert order.index("oai-triton-kernels") > order.index("marlin")


@pytest.mark.parametrize("kwargs, code", [
    (dict(activation="silu"), "activation_unsupported"),
    (dict(quant="nvfp4"), "quant_unsupported"),
    (dict(dtype="fp16"), "dtype_unsupported"),
    (dict(intermediate=2880 + 32), "shape_unaligned"),
])
def test_refusals(kwargs, code):
    spec = dict(experts=128, top_k=4, hidden=2880, intermediate=2880, activation="swigluoai", quant="mxfp4")
    spec.update(kwargs)
    s = select_backend(single_layer(**spec), get_device("h100"))
    rejection = s.rejection("oai-triton-kernels")
    assert rejection is not None and code in {c.value for c in rejection.codes()}


def test_declaration_facts():
    assert DECLARATION.features.cuda_graphs and DECLARATION.features.bias
    assert not DECLARATION.features.swigluoai_params  # vLLM passes the gpt-oss constants
    assert DECLARATION.engines.vllm == "triton"
    assert DECLARATION.priority_for(QuantFamily.MXFP4, get_device("h100")) > 80  # above FlashInfer


# --- triton_kernels in the interpreter (needs the package) ------------------------------------------


@pytest.fixture(scope="module")
def tk():
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    if oai_triton.locate()[0] is None:
        pytest.skip("triton_kernels is not installed (vLLM's vendored copy or the upstream package)")
    if _LATE:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 (run this file in its own process)")
    from moe_registry.backends.oai_triton import kernel

    kernel.load_triton_kernels()
    return torch, kernel


def test_routing_from_bitmatrix_in_the_interpreter(tk):
    torch, kernel = tk
    from moe_registry.execution.patterns import routing_pattern

    class Stub:
        bm_cols, num_experts = 2, 40  # two 32-bit words of experts

    T, k = 9, 4
    weights, ids = routing_pattern(T, 40, k, device="cpu", kind="imbalanced", generator=torch.Generator().manual_seed(3))
    routing, gather, scatter = kernel.OaiTritonExperts.routing(Stub(), weights, ids)  # type: ignore[arg-type]
    flat = ids.reshape(-1).long()
    assert torch.equal(routing.expt_hist.long()[:40], torch.bincount(flat, minlength=40))
    # gather.src_indx lists the (token, slot) pairs expert by expert; the gates follow them
    order = gather.src_indx.long()
    assert torch.equal(flat[order], torch.sort(flat, stable=True).values)
    assert torch.equal(routing.gate_scal.float(), weights.reshape(-1)[order].to(torch.bfloat16).float())
    assert torch.equal(scatter.src_indx.long()[order], torch.arange(T * k))


def test_weight_conversion_round_trips(tk):
    torch, kernel = tk
    from moe_registry.formats import quantize
    from moe_registry.schemas.quant import QuantScheme

    w = quantize(torch.randn(3, 64, 96), QuantScheme.parse("mxfp4"))
    value, _, scales = kernel.swizzle_mxfp4(w.data, w.scale, torch.device("cpu"))
    # K on dim 1, as matmul_ogs reads it; the layout's own inverse gives our tensors back
    assert tuple(value.shape) == (3, 96, 64) and tuple(scales.shape) == (3, 96 // 32, 64)
    back = value.storage.layout.unswizzle_data(value.storage.data)
    assert torch.equal(back.transpose(-2, -1), w.data)
    assert torch.equal(scales.storage.layout.unswizzle_data(scales.storage.data).transpose(-2, -1), w.scale)


def test_interleave_index_puts_gate_and_up_rows_in_pairs(tk):
    torch, kernel = tk
    assert kernel.interleave_index(3).tolist() == [0, 3, 1, 4, 2, 5]
