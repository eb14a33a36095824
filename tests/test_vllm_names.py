"""Our vocabulary <-> vLLM's (moe_registry/engines/vllm/names.py, layer.py, answers.vllm_layout):
decision code, so every mapping is pinned here with the vLLM fact that fixes it (no vLLM needed)."""

from __future__ import annotations

import pytest

from moe_registry.engines.vllm import names
from moe_registry.engines.vllm.answers import vllm_layout
from moe_registry.engines.vllm.layer import LayerFacts, layer_spec
from moe_registry.schemas.activation import Activation, SiluClampParams, SwigluOAIParams
from moe_registry.schemas.layer import ParallelConfig, RoutingMethod
from moe_registry.schemas.quant import QuantKind


@pytest.mark.parametrize("key, family", [
    ("flashinfer_trtllm", "flashinfer-trtllm"), ("flashinfer_cutlass", "flashinfer-cutlass"),
    ("flashinfer_cutedsl", "flashinfer-cutedsl"), ("triton", "triton"), ("triton_unfused", "oai-triton-kernels"),
    ("marlin", "marlin"), ("humming", "humming"), ("deep_gemm", "deep-gemm"), ("cutlass", "vllm-cutlass"),
    ("emulation", "emulation"), ("aiter", None), ("b12x", None), (None, None), ("", None)])
def test_family_of_a_moe_backend_key(key, family):
    assert names.family_of_name(key) == family


@pytest.mark.parametrize("cls, family", [
    ("TrtLlmNvFp4ExpertsModular", "flashinfer-trtllm"), ("TrtLlmMxfp4Mxfp8ExpertsModular", "flashinfer-trtllm"),
    ("FlashInferExperts", "flashinfer-cutlass"), ("TritonExperts", "triton"), ("TritonWNA16Experts", "triton"),
    ("OAITritonMxfp4ExpertsMonolithic", "oai-triton-kernels"), ("MarlinExperts", "marlin"),
    ("HummingIndexedExperts", "humming"), ("TritonOrDeepGemmExperts", "deep-gemm"),
    ("TritonOrCutlassExperts", "vllm-cutlass"), ("CutlassExpertsFp4", "vllm-cutlass"),
    ("OCP_MXQuantizationEmulationTritonExperts", "emulation"), ("AiterExperts", None), ("XPUExperts", None),
    (None, None)])
def test_family_of_a_vllm_experts_class(cls, family):
    assert names.family_of_class(cls) == family


def test_every_class_has_one_family():
    seen: dict[str, str] = {}
    for family, classes in names._FAMILY_CLASSES.items():
        for cls in classes:
            assert cls not in seen, (cls, seen.get(cls), family)
            seen[cls] = family
    assert seen == names.CLASS_FAMILY


def test_a_pin_counts_only_where_vllm_runs_our_kernel_with_it():
    # In vLLM's MXFP4 oracle "triton" forces OpenAI's triton_kernels, not TritonExperts (oracle/mxfp4.py map).
    assert names.pin_runs_family("triton", "TritonExperts")
    assert not names.pin_runs_family("triton", "OAITritonMxfp4ExpertsMonolithic")
    assert names.pin_runs_family("flashinfer_cutlass", "FlashInferExperts")
    assert not names.pin_runs_family("flashinfer_cutlass", None)  # vLLM rejected the key
    assert not names.pin_runs_family("aiter", "AiterExperts")  # no family of ours: never pinned


@pytest.mark.parametrize("vllm, ours", [
    ("Default", RoutingMethod.SOFTMAX_TOPK), ("Renormalize", RoutingMethod.TOPK_SOFTMAX),
    ("RenormalizeNaive", RoutingMethod.SOFTMAX_TOPK_RENORM), ("DeepSeekV3", RoutingMethod.DEEPSEEK_V3),
    ("Llama4", RoutingMethod.LLAMA4), ("SigmoidRenorm", RoutingMethod.SIGMOID_RENORM),
    ("Sigmoid", RoutingMethod.SIGMOID), ("MiniMax2", RoutingMethod.MINIMAX2), ("Custom", RoutingMethod.CUSTOM),
    ("Unspecified", None), ("TopK", None), ("DeepseekV4", None), ("Simulated", None)])
def test_routing(vllm, ours):
    assert names.routing(vllm) is ours


def test_activation_ids_and_constants():
    assert names.activation("silu") == (Activation.SILU, None)
    assert names.activation("gelu_tanh") == (Activation.GELU_TANH, None)
    assert names.activation("relu2_no_mul") == (Activation.RELU2_NO_MUL, None)
    # gpt-oss passes no constants: vLLM's swigluoai hard-codes alpha 1.702 and limit 7 (our defaults)
    assert names.activation("swigluoai") == (Activation.SWIGLUOAI, None)
    act, params = names.activation("swigluoai", swiglu_limit=10.0, swiglu_alpha=1.5, swiglu_beta=0.5)
    assert act is Activation.SWIGLUOAI and params == SwigluOAIParams(alpha=1.5, limit=10.0, up_offset=0.5)
    assert names.activation("swigluoai", swiglu_limit=3.0) == (Activation.SWIGLUOAI, SwigluOAIParams(limit=3.0))
    assert names.activation("silu", swiglu_limit=10.0) == (Activation.SILU_CLAMP, SiluClampParams(limit=10.0))
    # one constant given: the others keep gpt-oss's (alpha 1.702, limit 7, +1 on up)
    assert names.activation("swigluoai", swiglu_alpha=1.5)[1] == SwigluOAIParams(alpha=1.5, limit=7.0, up_offset=1.0)
    assert names.activation("swigluoai", swiglu_beta=0.0)[1] == SwigluOAIParams(alpha=1.702, limit=7.0, up_offset=0.0)
    assert names.activation("gelu", swiglu_limit=10.0) == (Activation.GELU, None)
    for unknown in ("swiglustep", "situ", "swigluoai_uninterleave", "relu2"):
        with pytest.raises(ValueError, match=f"vLLM activation '{unknown}' has no activation id here"):
            names.activation(unknown)


@pytest.mark.parametrize("wkey, akey, dtype, kind", [
    (None, None, "bfloat16", QuantKind.BF16), (None, None, "float16", QuantKind.FP16),
    ("kFp8StaticTensorSym", "kFp8StaticTensorSym", "bfloat16", QuantKind.FP8),
    ("kFp8StaticTensorSym", "kFp8DynamicTensorSym", "bfloat16", QuantKind.FP8),
    ("kFp8StaticTensorSym", "kFp8DynamicTokenSym", "bfloat16", QuantKind.FP8),
    ("kFp8Static128BlockSym", "kFp8Dynamic128Sym", "bfloat16", QuantKind.FP8_BLOCK),
    ("kFp8Static128BlockE8M0Sym", "kFp8Dynamic128Sym", "bfloat16", QuantKind.FP8_BLOCK),
    ("QuantKey(f8e4m3fn,scale(f32,static,GroupShape(row=64, col=64)),symmetric)",
     "QuantKey(f8e4m3fn,scale(f32,dynamic,GroupShape(row=1, col=64)),symmetric)", "bfloat16", QuantKind.FP8_BLOCK),
    ("kFp8StaticChannelSym", "kFp8DynamicTokenSym", "bfloat16", QuantKind.FP8_CHANNEL),
    ("kNvfp4Static", "kNvfp4Dynamic", "bfloat16", QuantKind.NVFP4),
    ("kNvfp4Static", "kNvfp4DynamicToken", "bfloat16", QuantKind.NVFP4),
    ("kNvfp4Static", None, "bfloat16", QuantKind.NVFP4_W4A16),
    ("kMxfp4Static", None, "bfloat16", QuantKind.MXFP4),
    ("kMxfp4Static", "kMxfp8Dynamic", "bfloat16", QuantKind.MXFP4_MXFP8),
    ("kMxfp4Static", "kFp8StaticTensorSym", "bfloat16", QuantKind.MXFP4_FP8),
    ("kMxfp8Static", None, "bfloat16", QuantKind.MXFP8_W8A16),
    ("kMxfp8Static", "kMxfp8Dynamic", "bfloat16", QuantKind.MXFP8),
    ("kInt8Static", None, "float16", QuantKind.INT8_W8A16),
    ("kInt4Static", "kFp8DynamicTokenSym", "bfloat16", QuantKind.INT4_FP8),
])
def test_quant_keys(wkey, akey, dtype, kind):
    assert names.quant_scheme(wkey, akey, dtype).kind is kind


def test_int4_keys_carry_group_zero_point_and_act_order():
    s = names.quant_scheme("kInt4Static", None, "float16", group_size=128, act_order=True)
    assert (s.kind, s.group_size, s.zero_point, s.act_order) == (QuantKind.INT4_W4A16, 128, False, True)
    s = names.quant_scheme("kInt4StaticAsym", None, "bfloat16", group_size=128)
    assert (s.group_size, s.zero_point, s.act_order) == (128, True, False)
    s = names.quant_scheme("kInt4Static32", None, "bfloat16", group_size=None)  # the key fixes group 32
    assert (s.group_size, s.zero_point) == (32, False)
    s = names.quant_scheme("kInt4Static32Asym", None, "bfloat16", group_size=128)
    assert (s.group_size, s.zero_point) == (32, True)


@pytest.mark.parametrize("wkey, akey, dtype, message", [
    (None, None, "float32", "unquantized experts in float32 have no quant kind here"),
    ("kMxfp4Static", "kMxfp4Dynamic", "bfloat16", "vLLM quant keys kMxfp4Static x kMxfp4Dynamic have no quant kind"),
    ("kInt4Static", "kInt4Static", "bfloat16", "vLLM quant keys kInt4Static x kInt4Static"),
    ("kFp8Static128BlockSym", None, "bfloat16", "kFp8Static128BlockSym x None"),
    ("QuantKey(f8e4m3fn,scale(f32,static,GroupShape(row=64, col=64)),symmetric)", None, "bfloat16", "x None"),
    (None, "kFp8DynamicTokenSym", "bfloat16", "None x kFp8DynamicTokenSym"),
])
def test_unknown_quant_keys_are_one_line_errors(wkey, akey, dtype, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        names.quant_scheme(wkey, akey, dtype)


def _facts(**changes) -> LayerFacts:
    base = dict(prefix="model.layers.7.mlp.experts", num_experts=128, top_k=8, hidden=2048, intermediate=768,
                activation="silu", in_dtype="bfloat16", routing="RenormalizeNaive", tp=1, ep=1, dp=1, use_ep=False)
    return LayerFacts(**{**base, **changes})


def test_layer_spec_from_vllm_facts():
    spec = layer_spec(_facts(tp=4, has_bias=True, apply_router_weight_on_input=True,
                             weight_key="kNvfp4Static", activation_key="kNvfp4Dynamic"))
    assert (spec.name, spec.index, spec.num_experts, spec.top_k, spec.hidden_size, spec.intermediate_size) == (
        "model.layers.7.mlp.experts", 7, 128, 8, 2048, 768)
    assert spec.local_intermediate_size == 192 and spec.parallel == ParallelConfig(tp=4)
    assert spec.quant.kind is QuantKind.NVFP4 and spec.routing is RoutingMethod.SOFTMAX_TOPK_RENORM
    assert spec.bias and spec.apply_router_weight_on_input and spec.dtype == "bf16"
    assert layer_spec(_facts(in_dtype="float16")).dtype == "fp16"


def test_expert_parallel_is_vllm_ep_over_tp_times_dp():
    # --enable-expert-parallel: vLLM's MoE TP is 1 and ep_size = tp x dp (FusedMoEParallelConfig.make)
    assert layer_spec(_facts(tp=1, ep=8, dp=1, use_ep=True)).parallel == ParallelConfig(ep=8)
    assert layer_spec(_facts(tp=1, ep=8, dp=2, use_ep=True)).parallel == ParallelConfig(ep=8, dp=2)
    # ep_size without use_ep is not EP
    assert layer_spec(_facts(tp=2, ep=2, dp=1, use_ep=False)).parallel == ParallelConfig(tp=2)


def test_layer_spec_carries_activation_constants_and_int4_details():
    spec = layer_spec(_facts(activation="swigluoai", swiglu_limit=9.0, swiglu_alpha=1.5, swiglu_beta=0.5,
                             routing="Renormalize"))
    assert spec.activation is Activation.SWIGLUOAI
    assert spec.activation_params == SwigluOAIParams(alpha=1.5, limit=9.0, up_offset=0.5)
    assert spec.routing is RoutingMethod.TOPK_SOFTMAX
    clamp = layer_spec(_facts(swiglu_limit=10.0))
    assert clamp.activation is Activation.SILU_CLAMP and clamp.activation_params == SiluClampParams(limit=10.0)
    gptq = layer_spec(_facts(weight_key="kInt4Static", group_size=64, act_order=True, in_dtype="float16"))
    assert (gptq.quant.kind, gptq.quant.group_size, gptq.quant.act_order, gptq.dtype) == (
        QuantKind.INT4_W4A16, 64, True, "fp16")
    fp32 = layer_spec(_facts(weight_key="kFp8StaticTensorSym", activation_key="kFp8StaticTensorSym", in_dtype="float32"))
    assert fp32.dtype == "fp32" and fp32.quant.kind is QuantKind.FP8


def test_layer_facts_that_have_no_equivalent_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^model.layers.7.mlp.experts: layer dtype float64 has no equivalent here$"):
        layer_spec(_facts(weight_key="kFp8StaticTensorSym", activation_key="kFp8StaticTensorSym", in_dtype="float64"))
    with pytest.raises(ValueError, match="no activation id"):
        layer_spec(_facts(activation="swiglustep"))
    with pytest.raises(ValueError, match="unquantized experts in float32"):
        layer_spec(_facts(in_dtype="float32"))


def test_layer_index_from_the_prefix():
    assert _facts(prefix="language_model.model.layers.29.experts").index == 29
    assert _facts(prefix="model.layers.0.mlp.experts").index == 0
    assert _facts(prefix="layers.3.moe").index == 3
    assert _facts(prefix="model.mtp.experts").index is None
    assert _facts(prefix="model.xlayers.3.experts").index is None
    facts = _facts(weight_key="kInt4Static", group_size=128, act_order=True)
    assert LayerFacts.from_json({**facts.to_json(), "unknown_future_field": 1}) == facts


def test_our_layouts_in_vllm_flags():
    assert vllm_layout(ParallelConfig()) == (1, 1, False)
    assert vllm_layout(ParallelConfig(tp=8)) == (8, 1, False)
    assert vllm_layout(ParallelConfig(tp=4, dp=2)) == (4, 2, False)
    assert vllm_layout(ParallelConfig(ep=8)) == (8, 1, True)
    assert vllm_layout(ParallelConfig(ep=8, dp=2)) == (4, 2, True)
    with pytest.raises(ValueError, match="vLLM has no MoE layout TP2\\+EP4"):
        vllm_layout(ParallelConfig(tp=2, ep=4))
    with pytest.raises(ValueError, match="EP4 is not a multiple of DP8"):
        vllm_layout(ParallelConfig(ep=4, dp=8))
