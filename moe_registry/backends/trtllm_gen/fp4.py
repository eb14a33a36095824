"""Declaration of FlashInfer's TRT-LLM-gen FP4 block-scale MoE (``trtllm_fp4_block_scale_routed_moe``):
NvFP4 x NvFP4, MXFP4 weights x bf16 activations, MXFP4 x MXFP8. Torch-free.

The seed case: Gemma 4's gated GELU runs here (the kernel's Geglu gate), but vLLM gated it out with
an allow-list and two asserts (vLLM PR #41050). Here the fact lives once, in ``activations``.

relu2 at I = 704 (the seed's other case): vLLM's test (tests/kernels/moe/test_trtllm_nvfp4_moe.py @
0307fc6c) skips RELU2_NO_MUL at (64, 704, 4096) with "no valid tile config". That test builds the
experts class directly with the unpadded I = 704, so GEMM1 has 704 rows, not a multiple of
epilogue_tile_m = 128 (FlashInfer prepare.py prepare_trtllm_fp4_weights raises for exactly that), the
rule the non-gated intermediate pad rule below states; FlashInfer's own tests run NvFP4 + Relu2 at
I = 2688 (not a multiple of 256). So there is no separate limitation: 704 is padded to 768.
"""

from __future__ import annotations

from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    BackendCapability, Condition, FeatureSupport, QuantSupport, ShapeRule,
)
from moe_registry.schemas.quant import QuantFamily, QuantKind, ScaleLayout

from . import _facts as f

_NVFP4 = f"{f.VLLM}/experts/trtllm_nvfp4_moe.py"
_MXFP4 = f"{f.VLLM}/experts/trtllm_mxfp4_moe.py"
_VLLM_FP4_PREP = "vLLM 0.33.0 model_executor/layers/quantization/utils/flashinfer_fp4_moe.py"
_MX = (QuantKind.MXFP4, QuantKind.MXFP4_MXFP8)
_RELU2_ROWS = (
    f"{f.PREPARE} prepare_trtllm_fp4_weights L553-567: GEMM1 rows % epilogue_tile_m (128) ('intermediate_size=64 is "
    "fine for SwiGLU (128 rows) and short for ReLU2 (64)'). This is the rule behind vLLM's skip of RELU2_NO_MUL at "
    "I=704 ('no valid tile config', tests/kernels/moe/test_trtllm_nvfp4_moe.py @0307fc6c builds the experts with "
    "the unpadded 704 = 5.5 x 128 GEMM1 rows); FlashInfer's tests run NvFP4 + Relu2 at I=2688 (not a multiple of 256)")

DECLARATION = BackendCapability(
    id="trtllm-fp4",
    name="FlashInfer TRT-LLM-gen FP4 MoE",
    description="FP4 block-scaled MoE from TensorRT-LLM's trtllm-gen cubins: NvFP4 W4A4, MXFP4 weights with bf16 or "
                "MXFP8 activations; routes in-kernel or takes precomputed top-k (the *_routed_moe entry).",
    kernel="flashinfer.fused_moe.trtllm_fp4_block_scale_routed_moe",
    adapter="moe_registry.backends.trtllm_gen.fp4_kernel:TrtllmFp4Experts",
    activations={
        Activation.SILU: f.swiglu(f"{_NVFP4} / {_MXFP4} _supports_activation"),
        Activation.GELU: f.geglu(f"vLLM PR #41050 (GELU enabled, Gemma 4); {f.VLLM_FI_UTILS} L48 maps GELU to Geglu"),
        Activation.GELU_TANH: f.geglu_for_tanh(f"{f.CORE} trtllm_fp4_block_scale_moe activation_type docstring"),
        Activation.RELU2_NO_MUL: f.relu2(f"{_NVFP4} _supports_activation"),
        # DeepSeek-V4 (swiglu_limit): vLLM 0.34.0 runs it here on Blackwell (models/deepseek_v4/nvidia/model.py
        # FusedMoEFactory(swiglu_limit) -> quantization/mxfp4.py get_fused_moe_quant_config(swiglu_limit) ->
        # gemm1_clamp_limit; fused_moe/oracle/mxfp4.py select_deepseek_v4_mxfp4_moe_backend puts
        # FLASHINFER_TRTLLM_MXFP4_MXFP8 first, TrtLlmMxfp4Mxfp8ExpertsModular (routing done outside) takes the
        # DeepseekV4 routing). The adapter does not pass the clamp yet: planning-only, unverified (no SM100).
        Activation.SILU_CLAMP: f.swiglu_clamp(
            "vLLM 0.34.0 model_executor/layers/fused_moe/experts/trtllm_mxfp4_moe.py L135-141 _supports_activation "
            "(SILU), L83-90 gemm1_clamp_limit; model_executor/layers/quantization/mxfp4.py L1054-1100 "
            "(swiglu_limit -> the quant config's clamp); fused_moe/oracle/mxfp4.py L461-485, L756-819"),
        Activation.SWIGLUOAI: f.swigluoai(
            f"{_MXFP4} _supports_activation (SWIGLUOAI); {_NVFP4} L86-103, L166-195 (SwiGLU-OAI: clamp and beta "
            "divided by output1_scale_gate_scalar, alpha raw)"),
    },
    quant=(
        QuantSupport(kind=QuantKind.NVFP4, activation_scale_layout=ScaleLayout.LINEAR, source=(
            f"vLLM 0.33.0 oracle/nvfp4.py L594-603 (is_scale_swizzled=False for TRTLLM); {f.CORE} "
            "trtllm_fp4_block_scale_moe hidden_states_scale_layout: only layout_linear, swizzled raises "
            "NotImplementedError")),
        QuantSupport(kind=QuantKind.MXFP4, source=(
            f"{_MXFP4} _supports_quant_scheme (kMxfp4Static, None): bf16 hidden states; {f.VLLM}/oracle/mxfp4.py "
            f"L138-140 FLASHINFER_TRTLLM_MXFP4_BF16; {f.PREPARE} prepare_trtllm_fp4_weights (MXFP4xBF16)")),
        QuantSupport(kind=QuantKind.MXFP4_MXFP8, activation_scale_layout=ScaleLayout.LINEAR, source=(
            f"{_MXFP4} _supports_quant_scheme (kMxfp4Static, kMxfp8Dynamic); {f.PREPARE} "
            "prepare_trtllm_fp4_activations (MXFP8 hidden states, linear scales); vLLM 0.34.0 splits the modular "
            "path: TrtLlmMxfp4Mxfp8ExpertsModular takes (MXFP4, MXFP8) and TrtLlmMxfp4ExpertsModular only (MXFP4, "
            "None), tried Mono, Mxfp8-Mod, Mod (experts/trtllm_mxfp4_moe.py L488, L502; oracle/mxfp4.py "
            "backend_to_kernel_cls): the same FlashInfer entry point")),
    ),
    shape_rules=(
        ShapeRule(dimension="hidden", multiple_of=256, pad=True, source=(
            f"{_VLLM_FP4_PREP} L347, L400-406 pads hidden to trtllm_hidden_alignment = 256 (NvFP4); "
            f"{f.VLLM}/oracle/mxfp4.py L871-873 rounds hidden up to 256 for the TRTLLM MXFP4 backends (FlashInfer "
            "itself needs 16 / 128: prepare.py L533-541)")),
        ShapeRule(dimension="intermediate", multiple_of=64, pad=True,
                  when=Condition(gated=True, quant=(QuantKind.NVFP4,)), source=(
            f"{_VLLM_FP4_PREP} L412-419 min_alignment = 64 when gated (GEMM1 rows 2I % 128, {f.PREPARE} "
            "prepare_trtllm_fp4_weights L553-567)")),
        ShapeRule(dimension="intermediate", multiple_of=128, pad=True, when=Condition(gated=False), source=(
            f"{_VLLM_FP4_PREP} L412-419 min_alignment = 128 when not gated; {_RELU2_ROWS}")),
        ShapeRule(dimension="intermediate", multiple_of=128, pad=True, when=Condition(quant=_MX), source=(
            f"{f.VLLM}/oracle/mxfp4.py L871-873 rounds intermediate up to 128 for the TRTLLM MXFP4 backends; "
            f"{f.PREPARE} L533-541 requires 128 for MXFP4")),
    ),
    routing=f.routing(f"DeepSeekV3, Renormalize, RenormalizeNaive, Llama4, SigmoidRenorm, Sigmoid, MiniMax2 (NvFP4, "
                      f"{_NVFP4} L494-508); DeepSeekV3, Renormalize, RenormalizeNaive (MXFP4, {_MXFP4} L186-196)"),
    features=FeatureSupport(bias=True, apply_router_weight_on_input=False, swigluoai_params=True, source=(
        f"{f.CORE} trtllm_fp4_block_scale_routed_moe(gemm1_bias, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, "
        f"gemm2_bias): float32 biases in the weights' row layout ({f.VLLM}/oracle/mxfp4.py L1013-1143 shuffles "
        "them for gpt-oss); the FP4 launcher always runs use_routing_scales_on_input=false")),
    priority={QuantFamily.NVFP4: 100, QuantFamily.MXFP4: 100},
    **f.shared_fields(),
)
