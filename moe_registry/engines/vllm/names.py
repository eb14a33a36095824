"""Our vocabulary <-> vLLM's, for the MoE layers vLLM builds (decision code: mutation-tested).

- a kernel *family* names what runs, across both sides: our declaration's ``engines.vllm`` (the
  ``--moe-backend`` key that forces the kernel) maps through :data:`NAME_FAMILY`, a vLLM experts
  class through :data:`CLASS_FAMILY`. The key alone is not enough: in vLLM's MXFP4 oracle
  ``triton`` forces OpenAI's triton_kernels (``OAITritonExperts``), elsewhere ``TritonExperts``;
  so a pin is checked by the class vLLM then runs (:func:`pin_runs_family`).
- :func:`quant_scheme`, :func:`routing`, :func:`activation`: what vLLM's ``FusedMoEConfig`` and the
  oracle's quant keys say about a layer, in our :class:`~moe_registry.schemas.layer.LayerSpec` terms.

Class and key names are vLLM 0.34.0's (``model_executor/layers/fused_moe/experts/*.py``,
``quantization/utils/quant_utils.py`` L197-310); 0.33.0 has the same ones but
``TrtLlmMxfp4Mxfp8ExpertsModular``, ``ZentorchExpertsWNA16`` (0.33: ``ZentorchExpertsInt4``) and the LUT-B classes.
"""

from __future__ import annotations

from ...schemas.activation import Activation, SiluClampParams, SwigluOAIParams
from ...schemas.layer import RoutingMethod
from ...schemas.capability import BackendCapability
from ...schemas.quant import QuantFamily, QuantKind, QuantScheme, family_of

# --- Kernel families -----------------------------------------------------------------------------

# A declaration's engines.vllm (vLLM's MoEBackend literal, config/kernel.py L122-147) -> family.
NAME_FAMILY: dict[str, str] = {
    "flashinfer_trtllm": "flashinfer-trtllm",
    "flashinfer_cutlass": "flashinfer-cutlass",
    "flashinfer_cutedsl": "flashinfer-cutedsl",
    "triton": "triton",
    "triton_unfused": "oai-triton-kernels",
    "marlin": "marlin",
    "humming": "humming",
    "deep_gemm": "deep-gemm",
    "cutlass": "vllm-cutlass",
    "emulation": "emulation",
}

_FAMILY_CLASSES: dict[str, tuple[str, ...]] = {
    "flashinfer-trtllm": ("TrtLlmBf16ExpertsMonolithic", "TrtLlmBf16ExpertsModular", "TrtLlmBf16LoRAExperts",
                          "TrtLlmFp8ExpertsMonolithic", "TrtLlmFp8ExpertsModular", "TrtLlmNvFp4ExpertsMonolithic",
                          "TrtLlmNvFp4ExpertsModular", "TrtLlmMxfp4ExpertsMonolithic", "TrtLlmMxfp4ExpertsModular",
                          "TrtLlmMxfp4Mxfp8ExpertsModular", "TrtLlmMxfp4LoRAExperts", "TrtLlmMxint4ExpertsMonolithic"),
    "flashinfer-cutlass": ("FlashInferExperts",),
    "flashinfer-cutedsl": ("FlashInferCuteDSLExperts", "FlashInferCuteDSLBatchedExperts"),
    "flashinfer-b12x": ("FlashInferB12xExperts",),
    "flashinfer-moe-ep": ("FlashInferMoeEpExperts",),
    "triton": ("TritonExperts", "BatchedTritonExperts", "TritonWNA16Experts", "NaiveBatchedExperts"),
    "oai-triton-kernels": ("OAITritonExperts", "OAITritonMxfp4ExpertsMonolithic", "UnfusedOAITritonExperts"),
    "marlin": ("MarlinExperts", "BatchedMarlinExperts"),
    "humming": ("HummingIndexedExperts", "HummingGroupedExperts", "BatchedHummingGroupedExperts"),
    # TritonOrDeepGemmExperts runs DeepGEMM where its shape checks pass and Triton otherwise (experts/fallback.py).
    "deep-gemm": ("TritonOrDeepGemmExperts", "DeepGemmExperts", "DeepGemmFP4Experts", "BatchedDeepGemmExperts"),
    "vllm-cutlass": ("TritonOrCutlassExperts", "CutlassExpertsFp8", "CutlassBatchedExpertsFp8", "CutlassExpertsFp4",
                     "CutlassExpertsW4A8Fp8", "CutlassExpertsMxfp4"),
    "emulation": ("Nvfp4QuantizationEmulationTritonExperts", "Int4EmulationTritonExperts", "Mxfp8EmulationTritonExperts",
                  "OCP_MXQuantizationEmulationTritonExperts", "LutBEmulationTritonExperts"),
    "lut-b": ("LutBSm107Experts",),
    "mxfp8-triton": ("Mxfp8NativeTritonExperts",),
    "moonep": ("MoonEPExperts",),
}

# vLLM experts class name -> family.
CLASS_FAMILY: dict[str, str] = {cls: family for family, classes in _FAMILY_CLASSES.items() for cls in classes}


def family_of_name(moe_backend: str | None) -> str | None:
    """The family a ``--moe-backend`` key (our ``engines.vllm``) names; None for no key or an unknown one."""
    return NAME_FAMILY.get(moe_backend) if moe_backend else None


# The key's one collision, resolved per declaration: a declaration keyed "triton" that runs MXFP4 and
# nothing else is OpenAI's triton_kernels (the MXFP4 oracle's TRITON, fused_moe/oracle/mxfp4.py L375).
MXFP4_ONLY_FAMILY: dict[str, str] = {"triton": "oai-triton-kernels"}


def family_of_declaration(decl: BackendCapability) -> str | None:
    """The vLLM kernel family of one of our declarations: its ``engines.vllm`` key's, and its quant
    kinds' where the key is ambiguous."""
    key = decl.engines.vllm
    if key in MXFP4_ONLY_FAMILY and decl.quant and {family_of(q.kind) for q in decl.quant} == {QuantFamily.MXFP4}:
        return MXFP4_ONLY_FAMILY[key]
    return family_of_name(key)


def family_of_class(experts_class: str | None) -> str | None:
    """The family of a vLLM experts class; classes of other vendors (ROCm, XPU, CPU) are None."""
    return CLASS_FAMILY.get(experts_class) if experts_class else None


def pin_runs_family(moe_backend: str, accepted_class: str | None) -> bool:
    """Does pinning ``moe_backend`` run our declaration's family? ``accepted_class`` is the class vLLM's
    own predicates accepted for that key on this layer (None: vLLM rejects the key here)."""
    ours = family_of_name(moe_backend)
    return ours is not None and family_of_class(accepted_class) == ours


# --- What vLLM's FusedMoEConfig says, in LayerSpec terms ---------------------------------------------

# RoutingMethodType (fused_moe/config.py L113-140) -> ours. Default is softmax then top-k; Renormalize is
# top-k then softmax over the k; RenormalizeNaive softmax, top-k, renormalise. TopK, DeepseekV4 and
# Simulated have no routing of ours; Unspecified means vLLM does not know either.
_ROUTING: dict[str, RoutingMethod] = {
    "Default": RoutingMethod.SOFTMAX_TOPK,
    "Renormalize": RoutingMethod.TOPK_SOFTMAX,
    "RenormalizeNaive": RoutingMethod.SOFTMAX_TOPK_RENORM,
    "DeepSeekV3": RoutingMethod.DEEPSEEK_V3,
    "Llama4": RoutingMethod.LLAMA4,
    "SigmoidRenorm": RoutingMethod.SIGMOID_RENORM,
    "Sigmoid": RoutingMethod.SIGMOID,
    "MiniMax2": RoutingMethod.MINIMAX2,
    "Custom": RoutingMethod.CUSTOM,
}


def routing(routing_method: str) -> RoutingMethod | None:
    """Our routing for vLLM's RoutingMethodType name; None where ours has no equivalent (rules abstain)."""
    return _ROUTING.get(routing_method)


# MoEActivation values (fused_moe/activation.py L26-45) that are ours under the same id. vLLM's situ,
# swiglustep, swigluoai_uninterleave and relu2 (gated) have no id of ours.
_SAME_ACTIVATION = frozenset({"silu", "gelu", "gelu_tanh", "swigluoai", "relu2_no_mul", "silu_no_mul", "gelu_no_mul",
                              "gelu_tanh_no_mul"})


def activation(name: str, *, swiglu_limit: float | None = None, swiglu_alpha: float | None = None,
               swiglu_beta: float | None = None) -> tuple[Activation, SwigluOAIParams | SiluClampParams | None]:
    """Our activation (and its constants) for vLLM's MoEActivation value and the config's swiglu
    constants; ValueError for an activation we have no id for."""
    if name not in _SAME_ACTIVATION:
        raise ValueError(f"vLLM activation {name!r} has no activation id here")
    act = Activation(name)
    if act is Activation.SWIGLUOAI:
        if swiglu_alpha is None and swiglu_limit is None and swiglu_beta is None:
            return act, None
        default = SwigluOAIParams()
        return act, SwigluOAIParams(  # vLLM's beta is the "+1" on up (gpt_oss_triton_kernels_moe.py swiglu)
            alpha=default.alpha if swiglu_alpha is None else swiglu_alpha,
            limit=default.limit if swiglu_limit is None else swiglu_limit,
            up_offset=default.up_offset if swiglu_beta is None else swiglu_beta)
    if act is Activation.SILU and swiglu_limit is not None:  # DeepSeek-V4's clamped SwiGLU
        return Activation.SILU_CLAMP, SiluClampParams(limit=swiglu_limit)
    return act, None


# vLLM's named QuantKeys (quant_utils.py L197-310) as (weight key, activation key) -> our kind.
_FP8_TENSOR_ACTS = (None, "kFp8StaticTensorSym", "kFp8DynamicTensorSym", "kFp8DynamicTokenSym")
_KINDS: dict[tuple[str, str | None], QuantKind] = {
    **{("kFp8StaticTensorSym", a): QuantKind.FP8 for a in _FP8_TENSOR_ACTS[1:]},
    ("kFp8Static128BlockSym", "kFp8Dynamic128Sym"): QuantKind.FP8_BLOCK,
    ("kFp8Static128BlockE8M0Sym", "kFp8Dynamic128Sym"): QuantKind.FP8_BLOCK,
    ("kFp8StaticChannelSym", "kFp8DynamicTokenSym"): QuantKind.FP8_CHANNEL,
    ("kNvfp4Static", "kNvfp4Dynamic"): QuantKind.NVFP4,
    ("kNvfp4Static", "kNvfp4DynamicToken"): QuantKind.NVFP4,
    ("kNvfp4Static", None): QuantKind.NVFP4_W4A16,
    ("kMxfp4Static", None): QuantKind.MXFP4,
    ("kMxfp4Static", "kMxfp8Dynamic"): QuantKind.MXFP4_MXFP8,
    ("kMxfp4Static", "kFp8StaticTensorSym"): QuantKind.MXFP4_FP8,
    ("kMxfp8Static", None): QuantKind.MXFP8_W8A16,
    ("kMxfp8Static", "kMxfp8Dynamic"): QuantKind.MXFP8,
    ("kInt8Static", None): QuantKind.INT8_W8A16,
    ("kInt4Static", "kFp8DynamicTokenSym"): QuantKind.INT4_FP8,
}
# Integer weight keys of the WNA16 oracle: (is group-32 key, has zero points).
_INT4_KEYS = {"kInt4Static": (False, False), "kInt4StaticAsym": (False, True),
              "kInt4Static32": (True, False), "kInt4Static32Asym": (True, True)}
# A TP shard that is not 128-aligned refines the 128x128 block (fused_moe/oracle/fp8.py refine_fp8_moe_block_shape):
# vLLM's key then has no name, only its str(); the checkpoint is the same FP8 block checkpoint.
_REFINED_BLOCK = "QuantKey(f8e4m3fn,scale(f32,static,GroupShape(row="
_DYNAMIC_GROUP_ACT = "QuantKey(f8e4m3fn,scale(f32,dynamic,GroupShape(row=1, col="


def quant_scheme(weight_key: str | None, activation_key: str | None, in_dtype: str, *,
                 group_size: int | None = None, act_order: bool = False) -> QuantScheme:
    """Our scheme for the oracle's (weight key, activation key) — vLLM's constant names, or ``str()``
    of an unnamed key — with the layer dtype and, for int4, the checkpoint's group size and act order.
    ValueError for a key pair we have no kind for."""
    if weight_key is None and activation_key is None:
        if in_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"unquantized experts in {in_dtype} have no quant kind here")
        return QuantScheme(kind=QuantKind.BF16 if in_dtype == "bfloat16" else QuantKind.FP16)
    if weight_key in _INT4_KEYS and activation_key is None:
        g32, zero_point = _INT4_KEYS[weight_key]
        if g32:
            group_size = 32
        return QuantScheme(kind=QuantKind.INT4_W4A16, group_size=group_size, zero_point=zero_point, act_order=act_order)
    if (weight_key or "").startswith(_REFINED_BLOCK) and (activation_key or "").startswith(_DYNAMIC_GROUP_ACT):
        return QuantScheme(kind=QuantKind.FP8_BLOCK)
    kind = _KINDS.get((weight_key or "", activation_key))
    if kind is None:
        raise ValueError(f"vLLM quant keys {weight_key} x {activation_key} have no quant kind here")
    return QuantScheme(kind=kind)
