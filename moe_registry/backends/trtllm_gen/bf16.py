"""Declaration of FlashInfer's TRT-LLM-gen BF16 MoE (``trtllm_bf16_routed_moe``). Torch-free."""

from __future__ import annotations

from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import BackendCapability, FeatureSupport, QuantSupport, ShapeRule
from moe_registry.schemas.quant import QuantFamily, QuantKind

from . import _facts as f

_VLLM = f"{f.VLLM}/experts/trtllm_bf16_moe.py"

DECLARATION = BackendCapability(
    id="trtllm-bf16",
    name="FlashInfer TRT-LLM-gen BF16 MoE",
    description="Unquantized bf16 MoE from TensorRT-LLM's trtllm-gen cubins (BlockMajorK shuffled weights); routes "
                "in-kernel or takes precomputed top-k (the *_routed_moe entry).",
    kernel="flashinfer.fused_moe.trtllm_bf16_routed_moe",
    adapter="moe_registry.backends.trtllm_gen.bf16_kernel:TrtllmBf16Experts",
    activations={
        Activation.SILU: f.swiglu(f"{_VLLM} _supports_activation"),
        Activation.SWIGLUOAI: f.swigluoai(
            "bf16 launcher L1849-1858 accepts gemm1_alpha/beta/clamp_limit with Swiglu (vLLM's unquantized oracle "
            "demotes SWIGLUOAI because it does not plumb them: oracle/unquantized.py L88-94)"),
        Activation.RELU2_NO_MUL: f.relu2(f"{_VLLM} _supports_activation (RELU2_NO_MUL)"),
    },
    quant=(QuantSupport(kind=QuantKind.BF16, source=f"{f.CORE} trtllm_bf16_moe: hidden_states 'Must be bfloat16'; "
                                                     f"{_VLLM} _supports_quant_scheme (unquantized only)"),),
    shape_rules=(
        ShapeRule(dimension="intermediate", multiple_of=128, pad=True, source=(
            f"{f.LAUNCHER} L1861 'the second dimension of weights must be a multiple of 128' "
            "(intermediate_size % 128); "
            f"{f.VLLM}/oracle/unquantized.py L391-392 rounds intermediate up to 128 for FLASHINFER_TRTLLM")),
        ShapeRule(dimension="hidden", multiple_of=64, pad=True, source=(
            f"BlockMajorK blocks K by 128 bytes = 64 bf16 ({f.PREPARE} prepare_trtllm_bf16_weights block_k=128 on the "
            f"uint8 view; {_VLLM} view_as_block_major_k block_k = 128 // element_size)")),
    ),
    routing=f.routing("DeepSeekV3, Llama4, Renormalize, RenormalizeNaive, SigmoidRenorm, MiniMax2, Sigmoid "
                      f"({_VLLM} TrtLlmBf16ExpertsMonolithic._supports_routing_method)"),
    features=FeatureSupport(bias=False, apply_router_weight_on_input=False, swigluoai_params=True, source=(
        f"{f.CORE} trtllm_bf16_routed_moe takes no bias and no routing-scales-on-input argument; gemm1_alpha/beta/"
        "clamp_limit per expert")),
    priority={QuantFamily.UNQUANTIZED: 100},
    **f.shared_fields(),
)
