"""A torch-free model of vLLM 0.34.0's *default* fused-MoE experts choice (``--moe-backend auto``).

Held equal to vLLM 0.34.0's own selection code, executed, on every row of the committed record
(docs/parity/vllm-0.34.0.json, ``tests/test_parity_vllm.py``); it answers without vLLM installed, for
the ``model`` source of :func:`~moe_registry.engines.answer.engine_answers`. Rules cite vLLM 0.33.0's
line numbers where 0.34.0 kept the rule, and 0.34.0's (marked so) where 0.34.0 changed it.

vLLM picks an experts kernel per MoE layer in one "oracle" per quantization family
(``model_executor/layers/fused_moe/oracle/*.py``): a priority list, moved around by platform and
model rules, then the first backend whose experts class passes ``is_supported_config``
(``modular_kernel.py`` L580-633: device, no-act-and-mul, activation, quant scheme, parallel
config, ..., routing method, hidden shape, activation format) plus each class's own additions.
This module restates those facts as data: every experts class is a tuple of :class:`Rule` s in the
order vLLM evaluates them, every oracle an ordered backend list with named order :class:`Move` s,
each with its upstream source. :func:`vllm_default` walks them like vLLM does and returns the
winner with a trace of why each earlier candidate lost.

What is modelled, and how (the assumptions a deployment could change are in :data:`ASSUMPTIONS`):
- vLLM's default install (its wheel's Requires-Dist and vendored ``vllm/third_party``):
  FlashInfer 0.7.2.post1 (TRT-LLM-gen, CUTLASS, CuteDSL MoE), humming-kernels 0.1.19, DeepGEMM and
  triton_kernels (both vendored) are present; b12x and hpc are not.
- No environment overrides (``VLLM_USE_DEEP_GEMM`` etc. unset), no LoRA, no EPLB, no sequence or
  context parallelism, batch invariance off, the default all2all backend
  (``allgather_reducescatter``), router logits in bf16/fp32, no hash routing.
- NVIDIA devices only (ROCm / XPU / CPU / TPU classes are listed where they sit in a priority list,
  and fail their device rule).

Paths in sources are relative to ``vllm/model_executor/layers/`` unless they start with ``vllm/``.
Line numbers are 0.33.0's unless a source says 0.34.0.

This file is longer than the ~500 lines the other modules keep to: it is data, one rule table per
vLLM experts class and one ordered list per oracle, each beside its source line, and it reads top to
bottom the way vLLM's oracle files do; split, a class's rules would sit apart from the oracle that
orders them.
"""

# No `from __future__ import annotations`: string annotations cost a compile() each when pydantic or
# NamedTuple reads them at import, which explain's start-up counts (issue 20).

from math import gcd
from typing import Callable, NamedTuple

from ...schemas.device import DeviceSpec
from ...schemas.layer import LayerSpec, RoutingMethod
from ...schemas.quant import QuantKind

VLLM_VERSION = "0.34.0"

ASSUMPTIONS = (
    "default install: flashinfer-python 0.7.2.post1, humming-kernels 0.1.19 (vllm-0.33.0 METADATA "
    "Requires-Dist), vendored vllm/third_party/deep_gemm and triton_kernels (has_deep_gemm / "
    "has_triton_kernels, vllm/utils/import_utils.py L512-567); b12x and hpc not installed",
    "no environment overrides: VLLM_USE_DEEP_GEMM=1 and VLLM_MOE_USE_DEEP_GEMM=1 by default but unset "
    "(vllm/envs.py L1600-1604; fused_moe/oracle/fp8.py L484 tests is_set), VLLM_USE_FLASHINFER_MOE_INT4=0 "
    "(vllm/envs.py L1685), VLLM_HUMMING_MOE_GEMM_TYPE unset",
    "no LoRA, no EPLB, no SP/PCP, VLLM_BATCH_INVARIANT off, no hash routing, router logits bf16/fp32",
    "no model-level swiglu_limit/alpha/beta in FusedMoEConfig (they would drop batched CuteDSL from the NvFP4 list, "
    "fused_moe/oracle/nvfp4.py L215-230, and constrain TRT-LLM FP8, fused_moe/experts/trtllm_fp8_moe.py L85-106)",
    "all2all backend allgather_reducescatter (vllm/config/parallel.py L220); EP = --enable-expert-parallel "
    "(fused_moe/config.py L1198-1244: ep_size = tp*dp, tp_size = 1)",
    "FP8 per-tensor checkpoints through Fp8MoEMethod with dynamic activations unless ModelOpt (static); "
    "allow_vllm_cutlass=False (quantization/fp8.py L502-527, modelopt.py L503)",
)


# --- The layer as vLLM's oracles see it ----------------------------------------------------------


# The records below are NamedTuples, not frozen dataclasses: ~4x cheaper to define, and explain's
# start-up counts (issue 20). Nothing here treats them as tuples.
class VllmLayer(NamedTuple):
    """The ``FusedMoEConfig`` fields and quant keys the oracles read, derived from a LayerSpec."""

    oracle: str  # unquantized | fp8 | nvfp4 | mxfp4 | wna16 | w4a8
    sm: int  # compute capability as vLLM's DeviceCapability.to_int(): 90, 100, ...
    activation: str  # MoEActivation value (ours use the same strings)
    weight_key: str | None  # quant_utils.py key names, e.g. "kFp8Static128BlockSym"
    activation_key: str | None
    routing: str  # RoutingMethodType name
    num_experts: int
    hidden: int
    intermediate_per_partition: int
    dtype: str
    has_bias: bool
    use_ep: bool
    ep_size: int
    dp_size: int
    group_size: int | None = None
    symmetric: bool = True
    act_order: bool = False
    quant_method: str | None = None  # checkpoint quant_method: gptq, awq, compressed-tensors, modelopt, fp8, mxfp4
    model_type: str | None = None

    @property
    def gated(self) -> bool:  # MoEActivation.is_gated (activation.py L48) == FusedMoEConfig.is_act_and_mul
        return not self.activation.endswith("_no_mul")

    @property
    def all2all(self) -> bool:  # FusedMoEParallelConfig.use_all2all_kernels (fused_moe/config.py L1035)
        return self.use_ep and self.dp_size > 1

    @property
    def family(self) -> int:  # is_device_capability_family (vllm/platforms/interface.py L577-588)
        return self.sm // 10


# vLLM's RoutingMethodType for our routing ids. vLLM derives it from scoring function and
# renormalisation (fused_moe/config.py L135-170 get_routing_method_type): softmax + renormalize is
# RenormalizeNaive, which is also what gpt-oss gets (models/gpt_oss.py L395 renormalize=True);
# Gemma 4 passes a custom routing function -> Custom (router/custom_routing_router.py L31-44).
_ROUTING = {
    RoutingMethod.SOFTMAX_TOPK: "Default",
    RoutingMethod.TOPK_SOFTMAX: "RenormalizeNaive",
    RoutingMethod.SOFTMAX_TOPK_RENORM: "RenormalizeNaive",
    RoutingMethod.DEEPSEEK_V3: "DeepSeekV3",
    RoutingMethod.LLAMA4: "Llama4",
    RoutingMethod.SIGMOID_RENORM: "SigmoidRenorm",
    RoutingMethod.SIGMOID: "Sigmoid",
    RoutingMethod.MINIMAX2: "MiniMax2",
    RoutingMethod.CUSTOM: "Custom",
}


def _keys(layer: LayerSpec, quant_method: str | None, fp8_static: bool = False) -> tuple[str, str | None, str | None]:
    """(oracle, weight key, activation key) as the quant method of each checkpoint format builds them."""
    q = layer.quant
    kind = q.kind
    if kind in (QuantKind.BF16, QuantKind.FP16):
        return "unquantized", None, None  # unquantized_fused_moe_method.py L54
    if kind is QuantKind.FP8_BLOCK:
        # quantization/fp8.py L493-507; a TP shard that is not 128-aligned refines the block
        # (fused_moe/oracle/fp8.py L292-321), which only Triton's arbitrary-block rule accepts.
        # (A refine below 32 makes vLLM's load fail, validate_fp8_block_shape_moe; kept as 128 here.)
        ispp = layer.local_intermediate_size
        if ispp % 128 == 0:
            return "fp8", "kFp8Static128BlockSym", "kFp8Dynamic128Sym"
        refine = gcd(128, ispp, layer.hidden_size)
        return "fp8", (f"kFp8StaticBlock{refine}Sym" if refine >= 32 else "kFp8Static128BlockSym"), "kFp8Dynamic128Sym"
    if kind is QuantKind.FP8:
        # modelopt.py L503 static; fp8.py L509-516: the checkpoint's activation_scheme, dynamic by default
        static = quant_method == "modelopt" or fp8_static
        return "fp8", "kFp8StaticTensorSym", "kFp8StaticTensorSym" if static else "kFp8DynamicTensorSym"
    if kind is QuantKind.NVFP4:
        return "nvfp4", "kNvfp4Static", "kNvfp4Dynamic"  # modelopt.py L858-877
    if kind is QuantKind.NVFP4_W4A16:
        return "nvfp4", "kNvfp4Static", None  # modelopt.py L858 use_a16
    if kind is QuantKind.MXFP4:
        return "mxfp4", "kMxfp4Static", None  # quantization/mxfp4.py L158: no activation key
    if kind is QuantKind.MXFP4_MXFP8:
        return "mxfp4", "kMxfp4Static", "kMxfp8Dynamic"
    if kind is QuantKind.INT4_W4A16:
        if quant_method == "awq":
            return "wna16", "kInt4Static", None  # auto_awq.py L538-545 passes kInt4Static even with zero points
        if quant_method == "gptq" and q.zero_point:
            # auto_gptq.py L459-470: QuantKey(uint4, group scale) keeps symmetric=True (quant_utils.py L186),
            # which is none of Marlin's / TritonWNA16's listed keys; Humming takes any int weight.
            return "wna16", "QuantKey(uint4,group,symmetric)", None
        # compressed_tensors_moe_wna16.py L80-99 (g32 key only there); auto_gptq.py L459-470
        g32 = q.group_size == 32 and quant_method == "compressed-tensors"
        base = "kInt4Static32" if g32 else "kInt4Static"
        return "wna16", base + ("Asym" if q.zero_point else ""), None
    if kind is QuantKind.INT4_FP8:
        return "w4a8", "kInt4Static", "kFp8DynamicTokenSym"  # fused_moe/oracle/w4a8.py L61
    raise ValueError(f"no vLLM oracle modelled for {kind.value}")  # pragma: no cover - enum is closed


def vllm_layer(layer: LayerSpec, device: DeviceSpec, *, quant_method: str | None = None,
               model_type: str | None = None, fp8_static: bool = False) -> VllmLayer:
    """Translate one of our layers to what vLLM's oracle reads (see module docstring for assumptions).
    ``fp8_static``: the checkpoint says ``activation_scheme: static`` (per-tensor FP8)."""
    if device.vendor != "nvidia" or device.sm is None:
        raise ValueError(f"the vLLM oracle model covers NVIDIA devices only, not {device.name}")
    oracle, wkey, akey = _keys(layer, quant_method, fp8_static)
    p = layer.parallel
    use_ep = p.ep > 1
    return VllmLayer(
        oracle=oracle, sm=device.sm, activation=layer.activation.value, weight_key=wkey, activation_key=akey,
        routing=_ROUTING.get(layer.routing, "Unspecified") if layer.routing else "Unspecified",
        num_experts=layer.num_experts, hidden=layer.hidden_size,
        intermediate_per_partition=layer.local_intermediate_size, dtype=layer.dtype, has_bias=layer.bias,
        use_ep=use_ep, ep_size=p.ep if use_ep else 1, dp_size=p.dp,
        group_size=layer.quant.group_size, symmetric=not layer.quant.zero_point, act_order=layer.quant.act_order,
        quant_method=quant_method, model_type=model_type)


# --- Rules ---------------------------------------------------------------------------------------


# Where a check sits in is_supported_config (modular_kernel.py L590-633): class overrides that run
# before the base gate, then device, no-act-and-mul, activation, quant scheme, parallel config,
# routing method, shape, activation format, then overrides that run after the base gate. vLLM
# reports only the first failure, so a class's rules are kept in this order.
PRE, DEVICE, GATED, ACTIVATION, QUANT, PARALLEL, ROUTING, SHAPE, FORMAT, POST = range(10)


class Rule(NamedTuple):
    """One check of ``is_supported_config`` (or an oracle pre-filter): passes or names why not."""

    text: str
    test: Callable[[VllmLayer], bool]
    source: str
    stage: int = POST


# Activation sets (fused_moe/activation.py L123-152).
AMA = frozenset({"silu", "gelu", "gelu_tanh", "situ", "swigluoai", "swigluoai_uninterleave", "swiglustep",
                 "silu_no_mul", "gelu_no_mul", "gelu_tanh_no_mul", "relu2_no_mul"})

def _dev(text: str, test: Callable[[int], bool], src: str) -> Rule:
    return Rule(f"device {text}", lambda l: test(l.sm), src, DEVICE)


def _acts(names: frozenset[str] | set[str], src: str) -> Rule:
    names = frozenset(names)
    label = "AMA" if names == AMA else "{" + ", ".join(sorted(names)) + "}"
    return Rule(f"activation in {label}", lambda l: l.activation in names, src, ACTIVATION)


def _gated(src: str) -> Rule:
    return Rule("gated activation (_supports_no_act_and_mul False)", lambda l: l.gated, src, GATED)


def _quant(pairs: set[tuple[str | None, str | None]], src: str, when: Callable[[int], bool] | None = None,
           text: str = "") -> Rule:
    frozen = frozenset(pairs)
    label = text or " | ".join(f"{w}x{a}" for w, a in sorted(frozen, key=str))
    return Rule(f"quant {label}", lambda l: (l.weight_key, l.activation_key) in frozen and (when is None or when(l.sm)),
                src, QUANT)


def _routing(names: set[str], src: str) -> Rule:
    frozen = frozenset(names)
    return Rule("routing in {" + ", ".join(sorted(frozen)) + "}", lambda l: l.routing in frozen, src, ROUTING)


def _fam(f: int) -> Callable[[int], bool]:
    return lambda sm: sm // 10 == f // 10


STANDARD = Rule("activation format Standard (batched only with DeepEP-LL / NIXL-EP all2all)", lambda l: True,
                "fused_moe/config.py L1066 use_batched_activation_format", FORMAT)
BATCHED = Rule("activation format BatchedExperts (needs DeepEP-LL / NIXL-EP all2all)", lambda l: False,
               "fused_moe/config.py L1066 use_batched_activation_format; default all2all is AG/RS", FORMAT)


def _par(text: str, test: Callable[[VllmLayer], bool], src: str) -> Rule:
    return Rule(f"parallel: {text}", test, src, PARALLEL)


# With the default AG/RS all2all, "no all2all or AG/RS" always holds; dp<=1 and all2all itself do not.
_MONO_PAR_AGRS = "no all2all kernels or AG/RS, no EPLB"
_MONO_PAR_STRICT = "no all2all kernels, no EPLB, dp_size <= 1"


class ExpertsClass(NamedTuple):
    name: str
    file: str
    rules: tuple[Rule, ...]  # in the order is_supported_config evaluates them


def _cls(name: str, file: str, *rules: Rule) -> ExpertsClass:
    rules = tuple(r if r.source.startswith(("fused_moe", "quantization", "vllm/"))
                  else Rule(r.text, r.test, f"fused_moe/{file} {r.source}", r.stage) for r in rules)
    return ExpertsClass(name, file, tuple(sorted(rules, key=lambda r: r.stage)))  # stable: vLLM's order


_TRTLLM_BF16_DEV = _dev("CUDA SM10x + FlashInfer TRT-LLM", _fam(100), "L95-102")
_FI_TRTLLM_ROUTING = {"DeepSeekV3", "Renormalize", "RenormalizeNaive", "Llama4", "SigmoidRenorm", "Sigmoid", "MiniMax2"}

CLASSES: dict[str, ExpertsClass] = {c.name: c for c in (
    # --- FlashInfer TRT-LLM-gen ---
    _cls("TrtLlmBf16ExpertsMonolithic", "experts/trtllm_bf16_moe.py", _TRTLLM_BF16_DEV,
         _acts({"silu", "relu2_no_mul"}, "L117-120"), _quant({(None, None)}, "L110-115"),
         _par(_MONO_PAR_AGRS, lambda l: True, "L247-255"), _routing(_FI_TRTLLM_ROUTING, "L257-271"), STANDARD,
         Rule("num_experts <= 2048", lambda l: l.num_experts <= 2048, "L63-68")),
    _cls("TrtLlmBf16ExpertsModular", "experts/trtllm_bf16_moe.py", _TRTLLM_BF16_DEV,
         _acts({"silu", "relu2_no_mul"}, "L117-120"), _quant({(None, None)}, "L110-115"),
         _par("all2all kernels (not AG/RS, not DeepEP-HT), no EPLB", lambda l: False, "L137-146"), STANDARD,
         Rule("num_experts <= 2048", lambda l: l.num_experts <= 2048, "L63-68")),
    _cls("TrtLlmFp8ExpertsMonolithic", "experts/trtllm_fp8_moe.py",
         _dev("CUDA SM10x + FlashInfer TRT-LLM", _fam(100), "L165-172"),
         _acts({"silu", "swigluoai_uninterleave", "relu2_no_mul"}, "L180-187"),
         _quant({("kFp8Static128BlockSym", "kFp8Dynamic128Sym"), ("kFp8StaticTensorSym", "kFp8StaticTensorSym"),
                 ("kMxfp8Static", "kMxfp8Dynamic")}, "L378-390"),
         _par(_MONO_PAR_AGRS + ", no SP", lambda l: True, "L188-196"),
         Rule("routing: block/MXFP8 {DeepSeekV3, Renormalize, RenormalizeNaive, SigmoidRenorm, Sigmoid, MiniMax2};"
              " per-tensor also Llama4",
              lambda l: l.routing in ({"DeepSeekV3", "Renormalize", "RenormalizeNaive", "SigmoidRenorm", "Sigmoid",
                                       "MiniMax2"} | ({"Llama4"} if l.weight_key == "kFp8StaticTensorSym" else set())),
              "L398-432", ROUTING), STANDARD,
         Rule("num_experts <= 2048", lambda l: l.num_experts <= 2048, "L107-111")),
    _cls("TrtLlmFp8ExpertsModular", "experts/trtllm_fp8_moe.py",
         _dev("CUDA SM10x + FlashInfer TRT-LLM", _fam(100), "L165-172"),
         _acts({"silu", "swigluoai_uninterleave", "relu2_no_mul"}, "L180-187"),
         _quant({("kFp8Static128BlockSym", "kFp8Dynamic128Sym"), ("kMxfp8Static", "kMxfp8Dynamic")}, "L212-222"),
         _par("no all2all or AG/RS/DeepEP-v2/FI-NVL, no EPLB", lambda l: True, "L202-210"), STANDARD,
         Rule("num_experts <= 2048", lambda l: l.num_experts <= 2048, "L107-111")),
    _cls("TrtLlmNvFp4ExpertsMonolithic", "experts/trtllm_nvfp4_moe.py",
         _dev("CUDA SM10x + FlashInfer TRT-LLM", _fam(100), "L204-211"),
         _acts({"silu", "relu2_no_mul", "gelu", "gelu_tanh", "swigluoai_uninterleave"}, "L230-240"),
         _quant({("kNvfp4Static", "kNvfp4Dynamic"), ("kNvfp4Static", "kNvfp4DynamicToken")}, "L219-227"),
         _par("no all2all kernels, no EPLB", lambda l: not l.all2all, "L486-491"),
         _routing(_FI_TRTLLM_ROUTING, "L494-508"), STANDARD),
    _cls("TrtLlmNvFp4ExpertsModular", "experts/trtllm_nvfp4_moe.py",
         _dev("CUDA SM10x + FlashInfer TRT-LLM", _fam(100), "L204-211"),
         _acts({"silu", "relu2_no_mul", "gelu", "gelu_tanh", "swigluoai_uninterleave"}, "L230-240"),
         _quant({("kNvfp4Static", "kNvfp4Dynamic"), ("kNvfp4Static", "kNvfp4DynamicToken")}, "L219-227"),
         _par("any", lambda l: True, "L296-298"), STANDARD),
    _cls("TrtLlmMxfp4ExpertsMonolithic", "experts/trtllm_mxfp4_moe.py",
         _dev("CUDA SM10x + FlashInfer", _fam(100), "L121-123"), _gated("L129-130"),
         _acts({"swigluoai", "silu"}, "L144-150"),
         _quant({("kMxfp4Static", None), ("kMxfp4Static", "kMxfp8Dynamic")}, "L133-141"),
         _par(_MONO_PAR_STRICT, lambda l: not l.all2all and l.dp_size <= 1, "L176-183"),
         _routing({"DeepSeekV3", "Renormalize", "RenormalizeNaive"}, "L186-195"), STANDARD),
    # 0.34.0 splits the modular class by activation key (experts/trtllm_mxfp4_moe.py L488-510).
    _cls("TrtLlmMxfp4Mxfp8ExpertsModular", "experts/trtllm_mxfp4_moe.py",
         _dev("CUDA SM10x + FlashInfer", _fam(100), "L121-123"), _gated("L129-130"),
         _acts({"swigluoai", "silu"}, "L144-150"),
         _quant({("kMxfp4Static", "kMxfp8Dynamic")}, "0.34.0 L502-510"),
         _par("any", lambda l: True, "L304-307"), STANDARD),
    _cls("TrtLlmMxfp4ExpertsModular", "experts/trtllm_mxfp4_moe.py",
         _dev("CUDA SM10x + FlashInfer", _fam(100), "L121-123"), _gated("L129-130"),
         _acts({"swigluoai", "silu"}, "L144-150"),
         _quant({("kMxfp4Static", None)}, "0.34.0 L488-499"),
         _par("any", lambda l: True, "L304-307"), STANDARD),
    _cls("TrtLlmMxint4ExpertsMonolithic", "experts/trtllm_mxint4_moe.py",
         _dev("CUDA SM10x + VLLM_USE_FLASHINFER_MOE_INT4=1 (default 0)", lambda sm: False,
              "L45-56; quantization/utils/flashinfer_mxint4_moe.py L24-31"),
         _acts({"silu", "swigluoai"}, "L69-73"), _quant({("kInt4Static32", None)}, "L62-66"),
         _par(_MONO_PAR_AGRS, lambda l: True, "L76-82"),
         _routing({"Renormalize", "RenormalizeNaive", "DeepSeekV3"}, "L85-96"), STANDARD),
    # --- FlashInfer CUTLASS / CuteDSL ---
    _cls("FlashInferExperts", "experts/flashinfer_cutlass_moe.py",
         _dev("CUDA SM90 / SM10x / SM12x + FlashInfer CUTLASS (SM110 excluded)",
              lambda sm: sm == 90 or sm // 10 in (10, 12), "L127-139"),
         Rule("quant: bf16 and fp8 per-tensor static on SM>=90; fp8 block and mxfp4xbf16 on SM90 only; "
              "nvfp4 and mxfp4xmxfp8 on SM>=100",
              lambda l: ((l.weight_key, l.activation_key) in {(None, None), ("kFp8StaticTensorSym", "kFp8StaticTensorSym")}
                         and l.sm >= 90)
              or ((l.weight_key, l.activation_key) in {("kMxfp4Static", None), ("kFp8Static128BlockSym", "kFp8Dynamic128Sym")}
                  and l.sm == 90)
              or ((l.weight_key, l.activation_key) in {("kMxfp4Static", "kMxfp8Dynamic"), ("kNvfp4Static", "kNvfp4Dynamic")}
                  and l.sm >= 100), "L145-181", QUANT),
         _acts({"silu", "gelu_tanh", "relu2_no_mul", "swigluoai", "swigluoai_uninterleave"}, "L183-191"),
         _par("any", lambda l: True, "L193-199"), STANDARD),
    _cls("FlashInferCuteDSLExperts", "experts/flashinfer_cutedsl_moe.py",
         _dev("CUDA SM10x + FlashInfer CuteDSL", _fam(100), "L88-94"),
         _quant({("kNvfp4Static", "kNvfp4Dynamic"), ("kNvfp4Static", "kNvfp4DynamicToken")}, "L101-109"),
         _acts({"silu", "swigluoai", "swigluoai_uninterleave", "relu2_no_mul", "situ"}, "L112-119"),
         _par("any", lambda l: True, "L122-125"), STANDARD),
    _cls("FlashInferCuteDSLBatchedExperts", "experts/flashinfer_cutedsl_batched_moe.py",
         _dev("CUDA SM10x + FlashInfer CuteDSL", _fam(100), "L65-71"), _gated("L74-75"),
         _acts({"silu"}, "L88-89"), _quant({("kNvfp4Static", "kNvfp4Dynamic")}, "L78-86"), BATCHED),
    # --- vLLM CUTLASS ---
    _cls("CutlassExpertsFp4", "experts/cutlass_moe.py",
         _dev("CUDA SM10x / SM12x (0.34.0 drops SM110: 'grouped NVFP4 kernel is sm100-only')",
              lambda sm: sm // 10 in (10, 12), "0.34.0 L722-731"),
         _quant({("kNvfp4Static", "kNvfp4Dynamic")}, "L729-734"), _acts(AMA, "L736-743"),
         _par("not FI-NVL / DeepEP-HT", lambda l: True, "L745-752"), STANDARD),
    _cls("CutlassExpertsW4A8Fp8", "experts/cutlass_moe.py",
         Rule("in_dtype bf16", lambda l: l.dtype == "bf16", "fused_moe/experts/cutlass_moe.py L1334-1345", PRE),
         _dev("SM90 exactly + CUTLASS grouped GEMM", lambda sm: sm == 90, "L1356-1360; vllm/_custom_ops.py L864-871"),
         _gated("L1362-1363"), _quant({("kInt4Static", "kFp8DynamicTokenSym")}, "L1366-1371"),
         _acts(AMA, "L1373-1375"), STANDARD),
    # --- DeepGEMM (TritonOrDeepGemmExperts needs both halves: experts/fallback.py L52-92) ---
    _cls("TritonOrDeepGemmExperts", "experts/triton_deep_gemm_moe.py",
         _dev("DeepGEMM supported: SM90 / SM10x / SM12x + VLLM_USE_DEEP_GEMM + deep_gemm (vendored)",
              lambda sm: sm == 90 or sm // 10 in (10, 12),
              "fused_moe/experts/deep_gemm_moe.py L170-171; vllm/utils/deep_gemm.py L113-118; "
              "vllm/platforms/cuda.py L691-697"),
         _gated("fused_moe/experts/deep_gemm_moe.py L174-175"),
         _quant({("kFp8Static128BlockSym", "kFp8Dynamic128Sym")}, "fused_moe/experts/deep_gemm_moe.py L178-189"),
         _acts({"silu", "swiglustep", "swigluoai_uninterleave"}, "fused_moe/experts/deep_gemm_moe.py L191-200"),
         _par("not FI-NVL", lambda l: True, "fused_moe/experts/deep_gemm_moe.py L203-208"), STANDARD),
    # --- Triton ---
    _cls("TritonExperts", "experts/triton_moe.py",
         _dev("CUDA-alike or XPU", lambda sm: True, "L120-121"),
         Rule("quant: bf16; fp8 (SM>=89): block (any block shape), channel/token, tensor/token|static|dynamic",
              lambda l: (l.weight_key, l.activation_key) == (None, None) or (l.sm >= 89 and (
                  (l.weight_key or "").startswith("kFp8StaticBlock") or (l.weight_key, l.activation_key) in {
                      ("kFp8Static128BlockSym", "kFp8Dynamic128Sym"), ("kFp8StaticChannelSym", "kFp8DynamicTokenSym"),
                      ("kFp8StaticTensorSym", "kFp8DynamicTokenSym"), ("kFp8StaticTensorSym", "kFp8StaticTensorSym"),
                      ("kFp8StaticTensorSym", "kFp8DynamicTensorSym")})),
              "L127-180; vllm/platforms/cuda.py L587-588 supports_fp8", QUANT),
         _acts(AMA, "L183-184"), _par("not FI-NVL", lambda l: True, "L187-191"), STANDARD,
         Rule("padded experts < 1024", lambda l: (l.num_experts + 31) // 32 * 32 < 1024, "L71-94")),
    _cls("TritonWNA16Experts", "experts/triton_moe.py",
         _dev("CUDA-alike or XPU", lambda sm: True, "L658-659"),
         _quant({("kInt4Static", None), ("kInt4StaticAsym", None), ("kInt4Static32", None),
                 ("kInt4Static32Asym", None)}, "L666-679"),
         _acts(AMA - {"situ"}, "L681-694"), _par("not FI-NVL", lambda l: True, "L696-700"), STANDARD,
         Rule("padded experts < 1024", lambda l: (l.num_experts + 31) // 32 * 32 < 1024, "L71-94")),
    _cls("OAITritonMxfp4ExpertsMonolithic", "experts/gpt_oss_triton_kernels_moe.py",
         _dev("CUDA (9,0) <= cap < (13,0) + triton_kernels (vendored)", lambda sm: 90 <= sm < 130, "L43-53, L1525-1526"),
         _gated("L1529-1530"), _quant({("kMxfp4Static", None)}, "L1533-1540"), _acts({"swigluoai"}, "L1543-1544"),
         _par(_MONO_PAR_STRICT, lambda l: not l.all2all and l.dp_size <= 1, "L1547-1554"),
         _routing({"Renormalize", "RenormalizeNaive"}, "L1557-1565"), STANDARD),
    _cls("OAITritonExperts", "experts/gpt_oss_triton_kernels_moe.py",
         _dev("CUDA (9,0) <= cap < (13,0) + triton_kernels (vendored)", lambda sm: 90 <= sm < 130, "L43-53, L1023-1024"),
         _gated("L1027-1028"), _quant({("kMxfp4Static", None)}, "L1031-1038"), _acts({"swigluoai"}, "L1100-1101"),
         _par("any", lambda l: True, "L1045-1046"), STANDARD),
    # --- Weight-only: Marlin, Humming ---
    _cls("MarlinExperts", "experts/marlin_moe.py",
         _dev("CUDA SM>=75", lambda sm: sm >= 75, "L592-594"),
         Rule("weight in {fp8 block/channel/tensor, mxfp4, mxfp8, nvfp4, int4 (g-any, g32, asym), int8}; "
              "activation key ignored",
              lambda l: l.weight_key in {"kFp8Static128BlockSym", "kFp8StaticChannelSym", "kFp8StaticTensorSym",
                                         "kMxfp4Static", "kMxfp8Static", "kNvfp4Static", "kInt4Static", "kInt8Static",
                                         "kInt4Static32", "kInt4StaticAsym", "kInt4Static32Asym"}, "L601-621", QUANT),
         _acts(AMA, "L623-626"), _par("not FI-NVL two-sided", lambda l: True, "L629-634"), STANDARD),
    # Batched-format classes: only reachable with DeepEP-LL / NIXL-EP all2all, never by default.
    _cls("BatchedMarlinExperts", "experts/marlin_moe.py", BATCHED),
    _cls("BatchedTritonExperts", "experts/fused_batched_moe.py", BATCHED),
    _cls("BatchedDeepGemmExperts", "experts/batched_deep_gemm_moe.py", BATCHED),
    _cls("CutlassBatchedExpertsFp8", "experts/cutlass_moe.py", BATCHED),
    # Only reachable with allow_vllm_cutlass=True (compressed-tensors FP8), removed by the FP8 oracle otherwise.
    _cls("TritonOrCutlassExperts", "experts/triton_cutlass_moe.py",
         _dev("CUDA 90 <= cap < 110 + CUTLASS grouped GEMM", lambda sm: 90 <= sm < 110,
              "fused_moe/experts/cutlass_moe.py L313-315; vllm/_custom_ops.py L864-871"),
         _gated("fused_moe/experts/cutlass_moe.py L317-318"),
         _quant({("kFp8StaticChannelSym", "kFp8DynamicTokenSym"), ("kFp8StaticTensorSym", "kFp8DynamicTensorSym"),
                 ("kFp8StaticTensorSym", "kFp8StaticTensorSym")}, "fused_moe/experts/cutlass_moe.py L321-331"),
         _acts(AMA, "fused_moe/experts/cutlass_moe.py L333-335"), STANDARD),
    _cls("BatchedHummingGroupedExperts", "experts/fused_humming_moe.py", BATCHED),
    *(
        _cls(name, "experts/fused_humming_moe.py",
             _dev("CUDA SM>=75 + humming", lambda sm: sm >= 75, "L403-409"),
             Rule("quant: ~30 listed (W, A) pairs, or any int weight with A in {None, fp8 token, int8 token}",
                  lambda l: l.weight_key is not None and (l.activation_key is None or (l.weight_key, l.activation_key) in {
                      ("kMxfp4Static", "kMxfp8Dynamic"), ("kMxfp4Static", "kFp8Dynamic128Sym"),
                      ("kFp8StaticTensorSym", "kFp8StaticTensorSym"), ("kFp8StaticTensorSym", "kFp8Dynamic128Sym"),
                      ("kFp8Static128BlockSym", "kFp8Dynamic128Sym"), ("kNvfp4Static", "kNvfp4Dynamic"),
                      ("kNvfp4Static", "kNvfp4DynamicToken"), ("kMxfp8Static", "kMxfp8Dynamic"),
                      ("kInt4Static", "kFp8DynamicTokenSym")}) and not l.weight_key.startswith("kFp8StaticBlock"),
                  "L307-400", QUANT),
             _acts(AMA, "L416-417"), _par("any", lambda l: True, "L420-421"), STANDARD,
             Rule(f"gemm type {gemm} (get_humming_moe_gemm_type: grouped_contiguous with EP, else indexed)",
                  (lambda l: l.use_ep) if gemm == "grouped_contiguous" else (lambda l: not l.use_ep),
                  "L112-126, L632-655, L686-689 / L898-901"))
        for name, gemm in (("HummingGroupedExperts", "grouped_contiguous"), ("HummingIndexedExperts", "indexed"))
    ),
    _cls("Nvfp4QuantizationEmulationTritonExperts", "experts/nvfp4_emulation_moe.py",
         Rule("no LoRA, no bias", lambda l: not l.has_bias, "L382-401", PRE),
         _dev("CUDA-alike or XPU", lambda sm: True, "fused_moe/experts/triton_moe.py L120-121"),
         _quant({("kNvfp4Static", "kNvfp4Dynamic")}, "L403-408"), _acts(AMA, "fused_moe/experts/triton_moe.py L183-184"),
         STANDARD),
    # --- Not present on an NVIDIA default install / other platforms ---
    _cls("B12xExperts", "b12x.py", _dev("SM12x + b12x installed (not a vLLM dependency)", lambda sm: False,
                                        "fused_moe/b12x.py L499")),
    _cls("HPCExperts", "hpc_moe.py", _dev("SM90 + hpc installed (not a vLLM dependency)", lambda sm: False,
                                          "fused_moe/hpc_moe.py L28")),
    _cls("AiterExperts", "experts/rocm_aiter_moe.py", _dev("ROCm AITER", lambda sm: False,
                                                           "fused_moe/experts/rocm_aiter_moe.py L513")),
    _cls("RocmOrXpuOrCpuExperts", "experts/*", _dev("ROCm / XPU / CPU", lambda sm: False,
                                                    "fused_moe/experts/rdna3_moe.py L89, xpu_moe.py L84, cpu_moe.py L205")),
    _cls("CutlassExpertsMxfp4", "experts/cutlass_moe.py",
         _dev("ops.mxfp4_experts_quant_supported(cap) (compiled op; assumed SM10x/SM12x)",
              lambda sm: sm // 10 in (10, 12), "L1034-1042"),
         _quant({("kMxfp4Static", "kMxfp4Dynamic")}, "L1048-1053"), _acts(AMA, "L1055-1056"), STANDARD),
    _cls("OCP_MXQuantizationEmulationTritonExperts", "experts/ocp_mx_emulation_moe.py",
         Rule("reached only when every other MXFP4 backend failed", lambda l: True, "fused_moe/oracle/mxfp4.py L402-436")),
    _cls("Int4EmulationTritonExperts", "experts/int4_emulation_moe.py",
         Rule("reached only when every other WNA16 backend failed", lambda l: True, "fused_moe/oracle/int_wna16.py L122-134")),
)}


# --- Oracles -------------------------------------------------------------------------------------


class Backend(NamedTuple):
    """One entry of an oracle's priority list: its enum value, the ``--moe-backend`` key that forces
    it, the kernel family (for equivalence with our declarations) and the experts classes tried."""

    name: str
    moe_backend: str | None
    family: str
    classes: tuple[str, ...]
    prefilter: tuple[Rule, ...] = ()  # checks made before the classes (WNA16 _backend_incompatibility_reason)


class Move(NamedTuple):
    """A named change to the priority list, applied in order."""

    text: str
    when: Callable[[VllmLayer], bool]
    op: str  # front | back | remove | before:<name> | after:<name>
    backend: str
    source: str


class Oracle(NamedTuple):
    name: str
    function: str  # select_* function and its source
    backends: tuple[Backend, ...]  # base priority order
    moves: tuple[Move, ...] = ()
    activation_filter: bool = False  # MXFP4: _filter_by_activation


def _humming_before_marlin(oracle: str) -> Move:
    # prioritize_humming: SM90 only, Humming moves just ahead of the first Marlin entry.
    return Move("SM90: Humming moves ahead of Marlin (prioritize_humming)", lambda l: l.sm == 90, "before:MARLIN",
                "HUMMING", f"quantization/utils/humming/priority.py L10-48; called in fused_moe/oracle/{oracle}")


_HUMMING = ("HummingGroupedExperts", "HummingIndexedExperts")
_BH = ("BatchedHummingGroupedExperts",) + _HUMMING  # order of backend_to_kernel_cls
_ROCM = ("AiterExperts",)
_OTHER = ("RocmOrXpuOrCpuExperts",)


def _gpt_oss_act_key(name: str) -> str | None:
    """_backend_activation_key (fused_moe/oracle/mxfp4.py L465-484)."""
    if name.endswith("_MXFP8"):
        return "kMxfp8Dynamic"
    if name in ("AITER_MXFP4_FP8",):
        return "kFp8StaticTensorSym"
    if name in ("AITER_MXFP4_MXFP4", "CUTLASS_MXFP4_MXFP4"):
        return "kMxfp4Dynamic"
    return None


ORACLES: dict[str, Oracle] = {o.name: o for o in (
    Oracle("unquantized", "fused_moe/oracle/unquantized.py L222-372 select_unquantized_moe_backend", (
        Backend("FLASHINFER_TRTLLM", "flashinfer_trtllm", "flashinfer-trtllm",
                ("TrtLlmBf16ExpertsMonolithic", "TrtLlmBf16ExpertsModular")),
        Backend("FLASHINFER_CUTLASS", "flashinfer_cutlass", "flashinfer-cutlass", ("FlashInferExperts",)),
        Backend("TRITON", "triton", "triton", ("TritonExperts",)),
        Backend("BATCHED_TRITON", "batched_triton", "triton", ("BatchedTritonExperts",)),
    ), (
        Move("SM9x: FlashInfer TRT-LLM to the back (\"slower than Triton\")", lambda l: l.family == 9, "back",
             "FLASHINFER_TRTLLM", "fused_moe/oracle/unquantized.py L76-79"),
        Move("SM9x: FlashInfer CUTLASS to the back", lambda l: l.family == 9, "back", "FLASHINFER_CUTLASS",
             "fused_moe/oracle/unquantized.py L76-80"),
        Move("dp > 1: FlashInfer CUTLASS to the back (Qwen3.5 DEP crash hack)", lambda l: l.dp_size > 1, "back",
             "FLASHINFER_CUTLASS", "fused_moe/oracle/unquantized.py L82-86"),
        Move("swigluoai: FlashInfer TRT-LLM to the back (aliases it to plain SwiGLU)",
             lambda l: l.activation == "swigluoai", "back", "FLASHINFER_TRTLLM", "fused_moe/oracle/unquantized.py L88-93"),
        Move("swigluoai: FlashInfer CUTLASS to the back", lambda l: l.activation == "swigluoai", "back",
             "FLASHINFER_CUTLASS", "fused_moe/oracle/unquantized.py L88-94"),
    )),
    Oracle("fp8", "fused_moe/oracle/fp8.py L398-550 select_fp8_moe_backend", (
        Backend("AITER", "aiter", "aiter", _ROCM),
        Backend("FLASHINFER_TRTLLM", "flashinfer_trtllm", "flashinfer-trtllm",
                ("TrtLlmFp8ExpertsMonolithic", "TrtLlmFp8ExpertsModular")),
        Backend("FLASHINFER_CUTLASS", "flashinfer_cutlass", "flashinfer-cutlass", ("FlashInferExperts",)),
        Backend("DEEPGEMM", "deep_gemm", "deep-gemm", ("TritonOrDeepGemmExperts",)),
        Backend("VLLM_CUTLASS", "cutlass", "vllm-cutlass", ("TritonOrCutlassExperts",)),
        Backend("TRITON", "triton", "triton", ("TritonExperts",)),
        Backend("MARLIN", "marlin", "marlin", ("MarlinExperts",)),
        Backend("HUMMING", "humming", "humming", _BH),
        Backend("BATCHED_DEEPGEMM", None, "deep-gemm", ("BatchedDeepGemmExperts",)),
        Backend("BATCHED_VLLM_CUTLASS", None, "vllm-cutlass", ("CutlassBatchedExpertsFp8",)),
        Backend("BATCHED_TRITON", None, "triton", ("BatchedTritonExperts",)),
        Backend("XPU", None, "xpu", _OTHER), Backend("CPU_W8A8", None, "cpu", _OTHER), Backend("CPU", None, "cpu", _OTHER),
        Backend("HPC", "hpc", "hpc", ("HPCExperts",)),
    ), (
        _humming_before_marlin("fp8.py L105"),
        Move("SM90 block FP8, EP > 1: FlashInfer CUTLASS to the front",
             lambda l: l.sm == 90 and l.activation_key == "kFp8Dynamic128Sym" and l.weight_key == "kFp8Static128BlockSym"
             and l.ep_size > 1, "front", "FLASHINFER_CUTLASS", "fused_moe/oracle/fp8.py L122-130"),
        Move("SM90 block FP8, no EP: Triton to the front",
             lambda l: l.sm == 90 and l.activation_key == "kFp8Dynamic128Sym" and l.weight_key == "kFp8Static128BlockSym"
             and l.ep_size <= 1, "front", "TRITON", "fused_moe/oracle/fp8.py L122-132"),
        Move("Blackwell-excluded model types (qwen3_5*, kolibri1): drop DeepGEMM",
             lambda l: l.model_type in {"qwen3_5_text", "qwen3_5_moe_text"} and l.family in (10, 12)
             or (l.model_type == "kolibri1" and l.family == 12), "remove", "DEEPGEMM",
             "fused_moe/oracle/fp8.py L497-503; vllm/utils/deep_gemm.py L28-54"),
        Move("allow_vllm_cutlass=False (Fp8MoEMethod): drop vLLM CUTLASS", lambda l: True, "remove", "VLLM_CUTLASS",
             "fused_moe/oracle/fp8.py L521-523; quantization/fp8.py L523-527"),
        Move("allow_vllm_cutlass=False: drop batched vLLM CUTLASS", lambda l: True, "remove", "BATCHED_VLLM_CUTLASS",
             "fused_moe/oracle/fp8.py L521-523"),
    )),
    Oracle("nvfp4", "fused_moe/oracle/nvfp4.py L191-321 select_nvfp4_moe_backend", (
        Backend("FLASHINFER_TRTLLM", "flashinfer_trtllm", "flashinfer-trtllm",
                ("TrtLlmNvFp4ExpertsMonolithic", "TrtLlmNvFp4ExpertsModular")),
        Backend("FLASHINFER_CUTEDSL", "flashinfer_cutedsl", "flashinfer-cutedsl", ("FlashInferCuteDSLExperts",)),
        Backend("FLASHINFER_CUTEDSL_BATCHED", None, "flashinfer-cutedsl", ("FlashInferCuteDSLBatchedExperts",)),
        Backend("FLASHINFER_CUTLASS", "flashinfer_cutlass", "flashinfer-cutlass", ("FlashInferExperts",)),
        Backend("VLLM_CUTLASS", "cutlass", "vllm-cutlass", ("CutlassExpertsFp4",)),
        Backend("MARLIN", "marlin", "marlin", ("MarlinExperts",)),
        Backend("HUMMING", "humming", "humming", _BH),
        Backend("EMULATION", "emulation", "emulation", ("Nvfp4QuantizationEmulationTritonExperts",)),
    ), (_humming_before_marlin("nvfp4.py L213"),)),
    Oracle("mxfp4", "fused_moe/oracle/mxfp4.py L650-760 select_mxfp4_moe_backend (gpt-oss list L402-435)", (
        Backend("FLASHINFER_TRTLLM_MXFP4_BF16", "flashinfer_trtllm", "flashinfer-trtllm",
                ("TrtLlmMxfp4ExpertsMonolithic", "TrtLlmMxfp4Mxfp8ExpertsModular", "TrtLlmMxfp4ExpertsModular")),
        Backend("FLASHINFER_TRTLLM_MXFP4_MXFP8", "flashinfer_trtllm", "flashinfer-trtllm",
                ("TrtLlmMxfp4ExpertsMonolithic", "TrtLlmMxfp4Mxfp8ExpertsModular", "TrtLlmMxfp4ExpertsModular")),
        Backend("AITER_MXFP4_BF16", "aiter", "aiter", _ROCM),
        Backend("AITER_TRITON_MXFP4_BF16", "aiter_triton_mxfp4_bf16", "aiter", _ROCM),
        Backend("AITER_MXFP4_FP8", None, "aiter", _ROCM),
        Backend("AITER_MXFP4_MXFP4", None, "aiter", _ROCM),
        Backend("TRITON", "triton", "oai-triton-kernels", ("OAITritonMxfp4ExpertsMonolithic", "OAITritonExperts")),
        Backend("FLASHINFER_CUTLASS_MXFP4_BF16", "flashinfer_cutlass", "flashinfer-cutlass", ("FlashInferExperts",)),
        Backend("FLASHINFER_CUTLASS_MXFP4_MXFP8", "flashinfer_cutlass", "flashinfer-cutlass", ("FlashInferExperts",)),
        Backend("CUTLASS_MXFP4_MXFP4", None, "vllm-cutlass", ("CutlassExpertsMxfp4",)),
        Backend("MARLIN", "marlin", "marlin", ("MarlinExperts",)),
        Backend("BATCHED_MARLIN", None, "marlin", ("BatchedMarlinExperts",)),
        Backend("HUMMING", "humming", "humming", _BH),
        Backend("XPU", None, "xpu", _OTHER), Backend("CPU", None, "cpu", _OTHER),
        Backend("EMULATION", "emulation", "emulation", ("OCP_MXQuantizationEmulationTritonExperts",)),
    ), (
        Move("SM110 / SM12x: OAI Triton after batched Marlin (SM110 new in 0.34.0)", lambda l: l.family in (11, 12),
             "after:BATCHED_MARLIN", "TRITON", "fused_moe/oracle/mxfp4.py L445-457 (0.34.0)"),
        _humming_before_marlin("mxfp4.py L435"),
    ), activation_filter=True),
    Oracle("wna16", "fused_moe/oracle/int_wna16.py L256-370 select_wna16_moe_backend", (
        Backend("RDNA3", "rdna3", "rdna3", _OTHER),
        Backend("FLASHINFER_TRTLLM", "flashinfer_trtllm", "flashinfer-trtllm", ("TrtLlmMxint4ExpertsMonolithic",), (
            Rule("no zero points, no bias (GPTQ/AWQ may have bias)",
                 lambda l: l.symmetric and not l.has_bias and l.quant_method not in ("gptq", "awq"),
                 "fused_moe/oracle/int_wna16.py L146-149; quantization/auto_gptq.py L472-479 may_have_bias=True"),)),
        Backend("MARLIN", "marlin", "marlin", ("MarlinExperts",), (
            Rule("check_moe_marlin_supports_config (tile padding allowed): hidden % 128, I % group, group in {-1,32,64,128}",
                 lambda l: l.hidden % 128 == 0 and (not l.group_size or l.group_size <= 0
                                                   or l.intermediate_per_partition % l.group_size == 0)
                 and (l.group_size or -1) in (-1, 32, 64, 128),
                 "fused_moe/oracle/int_wna16.py L205-222; quantization/utils/marlin_utils.py L356-387"),)),
        Backend("BATCHED_MARLIN", None, "marlin", ("BatchedMarlinExperts",)),
        Backend("TRITON", "triton", "triton", ("TritonWNA16Experts",), (
            Rule("no bias, not AutoAWQ layout, no GPTQ act-order",
                 lambda l: not l.has_bias and l.quant_method not in ("gptq", "awq") and not l.act_order,
                 "fused_moe/oracle/int_wna16.py L184-198; quantization/auto_gptq.py L472-479 may_have_bias=True"),)),
        Backend("HUMMING", "humming", "humming", _BH),
        Backend("EMULATION", "emulation", "emulation", ("Int4EmulationTritonExperts",)),
    ), (_humming_before_marlin("int_wna16.py L137"),)),
    Oracle("w4a8", "fused_moe/oracle/w4a8.py L61-110 select_w4a8_moe_backend", (
        Backend("CUTLASS", "cutlass", "vllm-cutlass", ("CutlassExpertsW4A8Fp8",)),
        Backend("HUMMING", "humming", "humming", _BH),
    )),
)}


# --- Walking an oracle ---------------------------------------------------------------------------


class Loss(NamedTuple):
    """A candidate that lost: the first failing rule, as vLLM reports only the first."""

    backend: str
    experts_class: str | None
    rule: str
    source: str


class VllmChoice(NamedTuple):
    oracle: str
    backend: str | None  # oracle enum value; None when vLLM raises "No ... MoE backend supports ..."
    experts_class: str | None
    moe_backend: str | None  # the --moe-backend key that forces it
    family: str | None
    order: tuple[str, ...]  # the priority list after every move
    moves: tuple[Move, ...]  # the moves that applied
    losses: tuple[Loss, ...]
    source: str

    def label(self) -> str:
        if self.backend is None:
            return "none"
        return f"{self.backend} ({self.experts_class})"


def _apply(order: list[str], move: Move) -> list[str]:
    if move.backend not in order:
        return order
    out = [b for b in order if b != move.backend]
    if move.op == "front":
        return [move.backend] + out
    if move.op == "back":
        return out + [move.backend]
    if move.op == "remove":
        return out
    where, anchor = move.op.split(":")
    if anchor not in out:
        return order
    i = out.index(anchor) + (1 if where == "after" else 0)
    if where == "before" and order.index(move.backend) < order.index(anchor):
        return order  # prioritize_humming only moves Humming forward
    return out[:i] + [move.backend] + out[i:]


def choose(v: VllmLayer) -> VllmChoice:
    """vLLM's auto choice for a layer already translated with :func:`vllm_layer`."""
    oracle = ORACLES[v.oracle]
    by_name = {b.name: b for b in oracle.backends}
    order = [b.name for b in oracle.backends]
    applied = []
    for move in oracle.moves:
        if move.when(v):
            new = _apply(order, move)
            if new != order:
                applied.append(move)
            order = new
    if oracle.activation_filter:
        # _filter_by_activation (fused_moe/oracle/mxfp4.py L614-631): the requested activation's variants first,
        # then BF16 ones; without a request, BF16 variants only. EMULATION counts as matching.
        bf16 = [n for n in order if _gpt_oss_act_key(n) is None]
        if v.activation_key is not None:
            match = [n for n in order if _gpt_oss_act_key(n) == v.activation_key or n == "EMULATION"]
            order = match + [n for n in bf16 if n not in match]
        else:
            order = bf16
    losses = []
    for name in order:
        backend = by_name[name]
        failed = next((r for r in backend.prefilter if not r.test(v)), None)
        if failed:
            losses.append(Loss(name, None, failed.text, failed.source))
            continue
        # MXFP4 tries each backend with its own activation key (fused_moe/oracle/mxfp4.py L713-728).
        cand = v if not oracle.activation_filter or name == "EMULATION" else _with_act(v, _gpt_oss_act_key(name))
        for cls_name in backend.classes:
            cls = CLASSES[cls_name]
            rule = next((r for r in cls.rules if not r.test(cand)), None)
            if rule is None:
                return VllmChoice(oracle.name, name, cls_name, backend.moe_backend, backend.family, tuple(order),
                                  tuple(applied), tuple(losses), oracle.function)
            losses.append(Loss(name, cls_name, rule.text, rule.source))
    return VllmChoice(oracle.name, None, None, None, None, tuple(order), tuple(applied), tuple(losses), oracle.function)


def _with_act(v: VllmLayer, key: str | None) -> VllmLayer:
    return v._replace(activation_key=key)


def vllm_default(layer: LayerSpec, device: DeviceSpec, *, quant_method: str | None = None,
                 model_type: str | None = None, fp8_static: bool = False) -> VllmChoice:
    """vLLM's default experts backend (:data:`VLLM_VERSION`) for one of our layers on a device."""
    return choose(vllm_layer(layer, device, quant_method=quant_method, model_type=model_type, fp8_static=fp8_static))
