"""The ``humming`` backend without a GPU: its declaration and selection, and the pure-torch weight
conversion into Humming's source schemas (round-tripped through Humming's documented uint4
semantics; Humming's own dequantization runs only on CUDA, see tests/gpu/test_humming_gpu.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from moe_registry import select_backend  # noqa: E402
from moe_registry.backends.humming import DECLARATION  # noqa: E402
from moe_registry.backends.humming.kernel import (  # noqa: E402
    HummingExperts, activation_kwargs, humming_source, pack_zero_points, unpack_source_int4,
)
from moe_registry.execution.weights import random_weights  # noqa: E402
from moe_registry.formats import quantize  # noqa: E402
from moe_registry.planner import plan_model  # noqa: E402
from moe_registry.registry import default_registry  # noqa: E402
from moe_registry.schemas.activation import Activation, SwigluOAIParams  # noqa: E402
from moe_registry.schemas.layer import LayerSpec  # noqa: E402
from moe_registry.schemas.quant import QuantKind, QuantScheme  # noqa: E402

from _decl_helpers import assert_selected  # noqa: E402

# --- declaration and selection -------------------------------------------------------------------


def test_registered_as_builtin():
    assert "humming" in default_registry().ids()
    assert default_registry().get("humming") is DECLARATION


def test_gemma4_nvfp4_on_h100_runs_on_humming_with_16bit_activation_note():
    plan = plan_model("gemma-4-26b-a4b-nvfp4", device="h100")
    sel = plan.layers[0].selection
    assert_selected(sel, "humming")
    notes = [n.message for n in sel.notes]
    assert any("activations run as 16-bit" in n for n in notes)
    assert not any("cannot run it yet" in n for n in notes)
    assert any("first build: 14-22 s per layer shape" in n for n in notes)  # the first-call compile cost is stated


@pytest.mark.parametrize("device", ["h100", "h200", "sm80"])
def test_fp4_layers_prefer_humming_over_marlin_and_grouped_mm(device):
    for preset, quant in (("qwen3-30b-a3b", "nvfp4"), ("gpt-oss-120b", None)):
        layer = plan_model(preset, quant=quant, select=False).layers[0].layer
        sel = select_backend(layer, device)
        ranked = [c.backend for c in sel.eligible]
        assert ranked.index("humming") < ranked.index("marlin"), (preset, ranked)
        if "torch-grouped-mm" in ranked:  # SM9x/10x only
            assert ranked.index("marlin") < ranked.index("torch-grouped-mm"), (preset, ranked)
        # gpt-oss on SM90: vLLM 0.33's MXFP4 order is OpenAI's triton_kernels, then FlashInfer CUTLASS MXFP4_BF16,
        # ahead of Humming (oracle/mxfp4.py _get_priority_backends_for_gpt_oss L405-421); Humming measured faster
        # than triton_kernels on the H100 (benchmarks/results/decode-h100/) and leads; sm80 has neither of the two.
        assert sel.backend == "humming", (preset, device, sel.backend)
        if preset == "gpt-oss-120b" and device != "sm80":
            assert ranked[:3] == ["humming", "oai-triton-kernels", "flashinfer-cutlass"]


def test_blackwell_nvfp4_keeps_flashinfer_ahead():
    layer = plan_model("qwen3-30b-a3b", quant="nvfp4", select=False).layers[0].layer
    assert select_backend(layer, "b200").backend != "humming"


def test_act_order_and_tiny_groups_are_not_declared():
    base = dict(num_experts=8, top_k=2, hidden_size=512, intermediate_size=512, activation="silu", dtype="bf16")
    for quant in ("int4_w4a16:g128:act_order", "int4_w4a16:g8"):
        layer = LayerSpec(quant=QuantScheme.parse(quant), **base)
        sel = select_backend(layer, "h100")
        assert sel.backend != "humming"
        assert any(r.backend == "humming" for r in sel.rejections)


def test_router_weight_on_input_not_declared():
    layer = LayerSpec(num_experts=8, top_k=1, hidden_size=512, intermediate_size=512, activation="silu",
                      quant=QuantScheme.parse("int4_w4a16:g128"), dtype="bf16", apply_router_weight_on_input=True)
    rejected = {r.backend for r in select_backend(layer, "h100").rejections}
    assert "humming" in rejected


# --- weight conversion ------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", ["int4_w4a16:g128", "int4_w4a16:g32:zp", "int4_w4a16:gchannel:zp",
                                   "int4_w4a16:gchannel"])
def test_int4_round_trip_through_humming_uint4_semantics(quant):
    scheme = QuantScheme.parse(quant)
    w = torch.randn(3, 64, 256) / 16
    q = quantize(w, scheme)
    source = humming_source(q, scheme.kind, q.scales.dtype)
    t = source.tensors
    assert t["weight"].dtype == torch.int32 and t["weight"].shape == (3, 64, 256 // 8)
    groups = 1 if scheme.group_size == -1 else 256 // scheme.group_size
    assert t["weight_scale"].shape == (3, 64, groups)
    assert source.config["has_zero_point"] == scheme.zero_point
    assert source.config["weight_scale_group_size"] == (0 if scheme.group_size == -1 else scheme.group_size)
    if scheme.zero_point:
        assert t["zero_point"].dtype == torch.int32 and t["zero_point"].shape == (3, 64 // 8, groups)
    else:
        assert "zero_point" not in t
    torch.testing.assert_close(unpack_source_int4(source), q.dequantize(torch.float32), rtol=0, atol=0)


def test_int4_conversion_detects_a_swapped_layout():
    """The round trip is sensitive: transposing N and K (the classic GPTQ mistake) changes the values."""
    q = quantize(torch.randn(1, 64, 64), QuantScheme.parse("int4_w4a16:g32:zp"))
    source = humming_source(q, QuantKind.INT4_W4A16, q.scales.dtype)
    wrong = dict(source.tensors, weight=source.tensors["weight"].transpose(-1, -2).reshape(1, 64, 8).contiguous())
    bad = unpack_source_int4(type(source)(config=source.config, tensors=wrong))
    assert not torch.allclose(bad, q.dequantize(torch.float32))


def test_pack_zero_points_bit_layout():
    zeros = torch.arange(16, dtype=torch.int32).view(1, 16) % 16  # [G=1, N=16]
    packed = pack_zero_points(zeros)  # [N/8, G]
    assert packed.shape == (2, 1)
    assert int(packed[0, 0]) == 0x76543210
    assert int(packed[1, 0]) & 0xFFFFFFFF == 0xFEDCBA98
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_zero_points(torch.zeros(1, 12, dtype=torch.int32))


def test_nvfp4_source_is_modelopt_with_dequant_global_scale():
    q = quantize(torch.randn(2, 32, 64), QuantScheme.parse("nvfp4"))
    source = humming_source(q, QuantKind.NVFP4, torch.bfloat16)
    assert source.config == {"quant_method": "modelopt", "quant_algo": "nvfp4"}
    t = source.tensors
    assert t["weight"].dtype == torch.uint8 and t["weight"].shape == (2, 32, 32)
    assert t["weight_scale"].dtype == torch.float8_e4m3fn and t["weight_scale"].shape == (2, 32, 4)
    torch.testing.assert_close(t["weight_scale_2"], 1.0 / q.global_scale.float())
    # ModelOpt semantics (weight_scale_2 multiplies) reproduce our dequantization.
    from moe_registry.formats._common import e2m1_decode

    values = e2m1_decode(t["weight"]).float() * t["weight_scale"].float().repeat_interleave(16, -1)
    torch.testing.assert_close(values * t["weight_scale_2"].view(2, 1, 1), q.dequantize(torch.float32))


def test_mxfp4_source_and_bias():
    q = quantize(torch.randn(2, 32, 64), QuantScheme.parse("mxfp4"))
    bias = torch.randn(2, 32)
    source = humming_source(q, QuantKind.MXFP4, torch.bfloat16, bias)
    assert source.config == {"quant_method": "mxfp4"}
    assert source.tensors["weight_scale"].shape == (2, 32, 2)
    assert source.tensors["bias"].dtype == torch.bfloat16


def test_act_order_int4_is_refused():
    q = quantize(torch.randn(1, 32, 256), QuantScheme.parse("int4_w4a16:g128:act_order"))
    if q.g_idx is None:
        pytest.skip("quantizer produced a trivial g_idx")
    with pytest.raises(ValueError, match="act-order"):
        humming_source(q, QuantKind.INT4_W4A16, torch.bfloat16)


def test_unsupported_kind_is_refused():
    with pytest.raises(ValueError, match="not implemented"):
        humming_source(object(), QuantKind.FP8, torch.bfloat16)


# --- activations and the adapter on CPU ----------------------------------------------------------------


# Planning-only activations (adapter_implemented False: DeepSeek-V4's silu_clamp) have no expression yet.
_RUNS = [a for a, impl in DECLARATION.activations.items() if impl.adapter_implemented]


def test_planning_only_activations_are_the_ones_without_an_expression():
    assert [a for a in DECLARATION.activations if a not in _RUNS] == [Activation.SILU_CLAMP]


@pytest.mark.parametrize("act", _RUNS)
def test_every_declared_activation_has_a_fused_expression(act):
    params = {"activation_params": SwigluOAIParams(interleaved=True)} if act is Activation.SWIGLUOAI else {}
    layer = LayerSpec(num_experts=4, top_k=2, hidden_size=128, intermediate_size=128, activation=act,
                      **params, quant=QuantScheme.parse("mxfp4"), dtype="bf16")
    kw = activation_kwargs(layer)
    expected = ("binary_interleaved" if act is Activation.SWIGLUOAI else
                "binary_split" if act.is_gated else "unary")
    assert kw["activation_type"] == expected
    assert ("b" in kw["activation_impl"]) == act.is_gated


def test_adapter_without_cuda_says_why():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    layer = LayerSpec(num_experts=4, top_k=2, hidden_size=128, intermediate_size=128, activation="silu",
                      quant=QuantScheme.parse("int4_w4a16:g64"), dtype="bf16")
    with pytest.raises(RuntimeError, match="CUDA"):
        HummingExperts(layer, random_weights(layer))


def _eval_c_expression(expr: str, a: float, b: float) -> float:
    """Evaluate one of our fused activation expressions (a C float expression in ``a``, ``b``) in Python."""
    import math
    import re

    py = re.sub(r"(\d)\.f\b", r"\1.0", expr)
    py = re.sub(r"(\d(?:\.\d+)?(?:e[-+]?\d+)?)f\b", r"\1", py)
    env = {"expf": math.exp, "erff": math.erf, "tanhf": math.tanh, "fmaxf": max, "fminf": min, "a": a, "b": b}
    return float(eval(py, {"__builtins__": {}}, env))  # noqa: S307 (our own constant strings)


@pytest.mark.parametrize("act", [a for a in _RUNS if a is not Activation.SWIGLUOAI])
def test_fused_expressions_compute_the_reference_activation(act):
    """The expression strings the kernel compiles equal moe_registry.execution.activations on sample points
    (swigluoai's lambda form is checked on the GPU at the gpt-oss shape)."""
    from moe_registry.execution.activations import apply_activation

    layer = LayerSpec(num_experts=4, top_k=2, hidden_size=128, intermediate_size=4, activation=act,
                      quant=QuantScheme.parse("mxfp4"), dtype="bf16")
    kw = activation_kwargs(layer)
    gate = torch.tensor([-3.0, -0.5, 0.7, 4.2], dtype=torch.float64)
    up = torch.tensor([1.5, -2.0, 0.25, -0.8], dtype=torch.float64)
    h = torch.cat([gate, up]) if act.is_gated else gate
    expected = apply_activation(h.unsqueeze(0), layer).squeeze(0)
    got = torch.tensor([_eval_c_expression(kw["activation_impl"], float(g), float(u)) for g, u in zip(gate, up)],
                       dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
