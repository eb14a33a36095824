"""Declaration of FlashInfer's TRT-LLM-gen MXINT4 MoE (``trtllm_mxint4_block_scale_routed_moe``).

FlashInfer's "MXINT4" is signed int4 weights with one bf16 scale per 32 K-elements and bf16
activations: vLLM's ``kInt4Static32`` (symmetric int4, group 32), i.e. moe-registry's
``int4_w4a16`` at group 32 without zero points. Torch-free.
"""

from __future__ import annotations

from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import BackendCapability, FeatureSupport, QuantSupport, ShapeRule
from moe_registry.schemas.quant import QuantFamily, QuantKind

from . import _facts as f

_VLLM = f"{f.VLLM}/experts/trtllm_mxint4_moe.py"
_VLLM_PREP = "vLLM 0.33.0 model_executor/layers/quantization/utils/flashinfer_mxint4_moe.py"

DECLARATION = BackendCapability(
    id="trtllm-mxint4",
    name="FlashInfer TRT-LLM-gen MXINT4 MoE",
    description="W4A16 MoE: signed int4 weights with bf16 scales per 32 (BlockMajorK shuffled) from TensorRT-LLM's "
                "trtllm-gen cubins; routes in-kernel or takes precomputed top-k. Opt-in in vLLM "
                "(VLLM_USE_FLASHINFER_MOE_INT4=1).",
    kernel="flashinfer.fused_moe.trtllm_mxint4_block_scale_routed_moe",
    adapter="moe_registry.backends.trtllm_gen.mxint4_kernel:TrtllmMxInt4Experts",
    activations={
        Activation.SILU: f.swiglu(f"{f.LAUNCHER} L4777 MxInt4BlockScaleLauncher hardwires ActivationType::Swiglu; "
                                  f"{_VLLM} _supports_activation"),
        Activation.SWIGLUOAI: f.swigluoai(f"{_VLLM} _supports_activation (SWIGLUOAI); {f.CORE} "
                                          "trtllm_mxint4_block_scale_routed_moe gemm1_alpha/beta/clamp_limit"),
    },
    quant=(QuantSupport(kind=QuantKind.INT4_W4A16, group_sizes=(32,), zero_point=False, source=(
        f"{_VLLM} _supports_quant_scheme (kInt4Static32, None); {f.CORE} trtllm_mxint4_block_scale_moe: packed int4 "
        f"[.., K/2] uint8 with bf16 scales [.., K/32]; {_VLLM_PREP} converts uint4b8 to signed int4")),),
    shape_rules=(
        ShapeRule(dimension="hidden", multiple_of=256, source=(
            f"{f.PREPARE} prepare_trtllm_mxint4_weights L1192-1195 'TRTLLM MxInt4 requires hidden_size and "
            "intermediate_size divisible by 256'")),
        ShapeRule(dimension="intermediate", multiple_of=256, source=(
            f"{f.PREPARE} prepare_trtllm_mxint4_weights L1192-1195 (int4 group weights are not padded by the "
            "adapter)")),
    ),
    routing=f.routing(f"Renormalize, RenormalizeNaive, DeepSeekV3, Llama4 ({_VLLM} _supports_routing_method)"),
    features=FeatureSupport(bias=False, apply_router_weight_on_input=False, swigluoai_params=True, source=(
        f"{f.CORE} trtllm_mxint4_block_scale_routed_moe: no bias or routing-scales-on-input argument; "
        "gemm1_alpha/beta/clamp_limit per expert")),
    # Below Marlin: vLLM uses this kernel only with VLLM_USE_FLASHINFER_MOE_INT4=1 (vllm/envs.py L221,
    # default False; quantization/utils/flashinfer_mxint4_moe.py is_flashinfer_mxint4_moe_available).
    priority={QuantFamily.INT4: 50},
    **f.shared_fields(),
)
