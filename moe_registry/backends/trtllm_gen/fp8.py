"""Declarations of FlashInfer's three TRT-LLM-gen FP8 MoE kernels: per-tensor scales
(``trtllm_fp8_per_tensor_scale_routed_moe``), per-channel weight / per-token activation scales
(``trtllm_fp8_per_channel_scale_routed_moe``) and DeepSeek 128-block scales
(``trtllm_fp8_block_scale_routed_moe``). One declaration per entry: their activations, features
and alignments differ. Torch-free."""

from __future__ import annotations

from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    BackendCapability, Condition, FeatureSupport, QuantSupport, RoutingLimit, ShapeRule,
)
from moe_registry.schemas.layer import RoutingMethod
from moe_registry.schemas.quant import QuantFamily, QuantKind

from . import _facts as f

_VLLM = f"{f.VLLM}/experts/trtllm_fp8_moe.py"
_VLLM_PREP = f"{f.VLLM_FI_UTILS} prepare_fp8_moe_layer_for_fi"
_ENGINE_PATH = ("moe-registry's adapter calls the *_routed_moe entry with precomputed top-k")


PER_TENSOR = BackendCapability(
    id="trtllm-fp8",
    name="FlashInfer TRT-LLM-gen FP8 per-tensor MoE",
    description="W8A8 FP8 MoE with per-tensor (per-expert) scales from TensorRT-LLM's trtllm-gen cubins; routes "
                "in-kernel or takes precomputed top-k.",
    kernel="flashinfer.fused_moe.trtllm_fp8_per_tensor_scale_routed_moe",
    adapter="moe_registry.backends.trtllm_gen.fp8_kernel:TrtllmFp8Experts",
    activations={
        Activation.SILU: f.swiglu(f"{_VLLM} _apply_per_tensor (SILU)"),
        Activation.GELU: f.geglu(f"{f.CORE} trtllm_fp8_per_tensor_scale_moe docstring: '4 Geglu' (vLLM does not "
                                 "enable it for FP8)"),
        Activation.GELU_TANH: f.geglu_for_tanh(f"{f.CORE} trtllm_fp8_per_tensor_scale_moe docstring lists Geglu"),
        Activation.RELU2_NO_MUL: f.relu2(f"{_VLLM} _apply_per_tensor (RELU2_NO_MUL)"),
    },
    quant=(QuantSupport(kind=QuantKind.FP8, source=(
        f"{_VLLM} TrtLlmFp8ExpertsMonolithic._supports_quant_scheme (kFp8StaticTensorSym, kFp8StaticTensorSym); "
        f"{f.PREPARE} prepare_trtllm_fp8_per_tensor_weights (per-expert weight multipliers, static activation "
        "scales)")),),
    shape_rules=(
        ShapeRule(dimension="hidden", multiple_of=128, pad=True, source=(
            f"{f.LAUNCHER} L2467 hidden_size % 128 (Fp8PerTensorStagedMoeLauncher); padding is exact")),
        ShapeRule(dimension="intermediate", multiple_of=128, pad=True, source=(
            f"{f.LAUNCHER} L2469 intermediate_size % 128 (Fp8PerTensorStagedMoeLauncher); vLLM pads only to 16 "
            f"(gated) / 128 (non-gated) ({_VLLM_PREP} L611-620)")),
    ),
    routing=f.routing(f"DeepSeekV3, Llama4, Renormalize, RenormalizeNaive, SigmoidRenorm, Sigmoid, MiniMax2 ({_VLLM} "
                      "_supports_routing_method, per-tensor)"),
    features=FeatureSupport(bias=False, apply_router_weight_on_input=True, swigluoai_params=False, source=(
        f"{f.CORE} trtllm_fp8_per_tensor_scale_routed_moe: use_routing_scales_on_input (Llama 4; {_VLLM} "
        "_apply_per_tensor asserts it for Llama4 routing), no bias argument, gemm1_clamp_limit only for SwigluStep "
        f"({f.LAUNCHER} L3689)")),
    priority={QuantFamily.FP8: 100},
    **f.shared_fields(),
)

PER_CHANNEL = BackendCapability(
    id="trtllm-fp8-channel",
    name="FlashInfer TRT-LLM-gen FP8 per-channel MoE",
    description="W8A8 FP8 MoE with per-output-channel weight scales and per-token activation scales from "
                "TensorRT-LLM's trtllm-gen cubins. vLLM 0.33 does not call this entry.",
    kernel="flashinfer.fused_moe.trtllm_fp8_per_channel_scale_routed_moe",
    activations={Activation.SILU: f.swiglu(f"{f.CORE} trtllm_fp8_per_channel_scale_moe: activation_type default 3 "
                                           "(Swiglu), the only one its docstring names")},
    quant=(QuantSupport(kind=QuantKind.FP8_CHANNEL, adapter_implemented=False, source=(
        f"{f.CORE} L5560-5815 trtllm_fp8_per_channel_scale_moe / _routed_moe: float8_e4m3fn hidden states with "
        "[seq_len, 1] per-token scales, gemm{1,2}_per_channel_weight_scale [local_num_experts, rows] in the shuffled "
        "row order; the routed entry takes packed int32 top-k only")),),
    shape_rules=(
        ShapeRule(dimension="intermediate", multiple_of=128, pad=True, when=Condition(gated=False), source=(
            "GEMM1 rows % 128 (epilogue_tile_m, the same shuffle as the per-tensor kernel, "
            f"{f.PREPARE} prepare_trtllm_fp8_per_tensor_weights)")),
        ShapeRule(dimension="intermediate", multiple_of=64, pad=True, when=Condition(gated=True), source=(
            "GEMM1 rows 2I % 128 (epilogue_tile_m shuffle)")),
    ),
    routing=f.routing("none (vLLM 0.33 has no caller of the per-channel entry)"),
    features=FeatureSupport(bias=False, apply_router_weight_on_input=True, swigluoai_params=False, source=(
        f"{f.CORE} trtllm_fp8_per_channel_scale_routed_moe: use_routing_scales_on_input, no bias or gemm1_alpha "
        "arguments")),
    priority={QuantFamily.FP8: 100},
    **f.shared_fields(),
)

BLOCK = BackendCapability(
    id="trtllm-fp8-block",
    name="FlashInfer TRT-LLM-gen FP8 block-scale MoE",
    description="W8A8 FP8 MoE with DeepSeek 128x128 weight blocks and 1x128 activation groups from TensorRT-LLM's "
                "trtllm-gen cubins (shuffled BlockMajorK weights); routes in-kernel or takes precomputed top-k.",
    kernel="flashinfer.fused_moe.trtllm_fp8_block_scale_routed_moe",
    adapter="moe_registry.backends.trtllm_gen.fp8_kernel:TrtllmFp8BlockExperts",
    activations={
        # DeepSeekFp8 runs Swiglu only: the launcher raises NotImplementedError for any other activation
        # (L5834-5841), although vLLM's _supports_activation also lists RELU2_NO_MUL.
        Activation.SILU: f.swiglu(f"{_VLLM} _supports_activation; {f.LAUNCHER} L5834-5841 (DeepSeekFp8: Swiglu only)"),
        Activation.SWIGLUOAI: f.swigluoai(
            f"{f.CORE} trtllm_fp8_block_scale_routed_moe: gemm1_alpha/beta/clamp_limit 'Supported for ... DeepSeekFp8 "
            f"with ActivationType.Swiglu'; {_VLLM} is_supported_config allows them for kFp8Static128BlockSym"),
    },
    quant=(QuantSupport(kind=QuantKind.FP8_BLOCK, source=(
        f"{_VLLM} _supports_quant_scheme (kFp8Static128BlockSym, kFp8Dynamic128Sym); {f.CORE} "
        "trtllm_fp8_block_scale_routed_moe fp8_quantization_type=DeepSeekFp8: hidden_states_scale [H/128, T]")),),
    shape_rules=(
        ShapeRule(dimension="hidden", multiple_of=128, pad=True, source=(
            f"{f.LAUNCHER} L2577 hidden_size % 128; {f.PREPARE} prepare_trtllm_fp8_block_weights ('DeepSeek FP8 "
            "requires hidden_size divisible by 128'); zero columns under the last block's scale are exact")),
        ShapeRule(dimension="intermediate", multiple_of=128, source=(
            f"{f.LAUNCHER} L4373, L4431 'intermediate_size must be a multiple of 128' (DeepSeekFp8). Not padded: a "
            "gated w13 whose I is not a multiple of 128 shares 128-row scale blocks between gate and up rows")),
    ),
    routing=f.routing(
        f"DeepSeekV3, Renormalize, RenormalizeNaive, SigmoidRenorm, Sigmoid, MiniMax2 ({_VLLM} "
        "_supports_routing_method, block scale)",
        # The block-scale launcher checks DeepSeekV3 more tightly than the routing runner: top-k <= 8 up to
        # 384 experts, <= 22 above. One bound per method, so the stricter one is declared; a layer beyond
        # it is routed outside the kernel (precomputed top-k), which every adapter does anyway.
        RoutingLimit(methods=(RoutingMethod.DEEPSEEK_V3,), max_top_k=8, max_experts=512, source=(
            f"{f.LAUNCHER} L4240-4259 Fp8BlockScaleLauncher: max_supported_top_k = num_experts <= 384 ? 8 : 22, "
            "topk_group <= 4; routing_deepseek.cu L50-55 MaxSupportedExpertCount 512 (top-k <= 22 above 384 "
            "experts is not declared)"))),
    features=FeatureSupport(bias=False, apply_router_weight_on_input=False, swigluoai_params=True, source=(
        f"{f.CORE} trtllm_fp8_block_scale_routed_moe passes gemm1_bias=None / gemm2_bias=None ('routed FP8 uses "
        "gemm1_lora_delta for MN bias'; only the logits entry takes float32 biases) and no routing-scales-on-input; "
        "gemm1_alpha/beta/clamp_limit per expert")),
    priority={QuantFamily.FP8: 100},
    **f.shared_fields(),
)

DECLARATIONS = (PER_TENSOR, PER_CHANNEL, BLOCK)
