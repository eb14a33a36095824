"""Facts every FlashInfer TRT-LLM-gen MoE kernel shares, stated once with their sources.

The six entries (``trtllm_{bf16,fp8_per_tensor_scale,fp8_per_channel_scale,fp8_block_scale,
fp4_block_scale,mxint4_block_scale}_routed_moe``) go through one launcher file
(``data/csrc/trtllm_fused_moe_kernel_launcher.cu``), one routing runner and one cubin manifest, so
their devices, routing methods and bounds, activation ids, requirement, engine names and hardware
status live here; each kernel module adds what is its own (quant, shapes, features, priority).
Torch-free. Line numbers are FlashInfer 0.7.2.post1 / vLLM 0.33.0.
"""

from __future__ import annotations

from typing import Any

from moe_registry.schemas.activation import GELU_TANH_MAX_ABS_DIFF
from moe_registry.schemas.capability import (
    ActivationImpl, DeviceRule, EngineNames, HardwareStatus, Requirement, RoutingLimit, RoutingSupport,
)
from moe_registry.schemas.layer import RoutingMethod
from moe_registry.schemas.quant import QuantKind

FI = "flashinfer 0.7.2.post1"
CORE = f"{FI} fused_moe/core.py"
LAUNCHER = f"{FI} data/csrc/trtllm_fused_moe_kernel_launcher.cu"
RUNNER = f"{FI} data/csrc/trtllm_fused_moe_runner.cu"
ROUTING = f"{FI} data/csrc/fused_moe/trtllm_backend/trtllm_fused_moe_routing_runner.cu"
POLICY = f"{FI} data/include/flashinfer/trtllm/fused_moe/RoutingCustomPolicy.cuh"
PREPARE = f"{FI} fused_moe/prepare.py"
VLLM = "vLLM 0.33.0 model_executor/layers/fused_moe"
VLLM_FI_UTILS = "vLLM 0.33.0 model_executor/layers/quantization/utils/flashinfer_utils.py"

DEVICES = (DeviceRule(sm=(100, 103, 107), source=(
    f"{FI} fused_moe/api.py L506 _TRTLLM_ROUTED_ARCHS = (100, 103, 107): the cubin manifest ships these "
    "('SM110/120/121 need upstream cubins first'); the launcher itself (trtllm_fused_moe_kernel_launcher.cu L1697 "
    "TVM_FFI_ICHECK(major == 10 || major == 12)) admits SM12x too, so the bound is the cubins'; vLLM "
    "experts/trtllm_*_moe.py _supports_current_device: is_device_capability_family(100)")),)

# --- Activations: FlashInfer ActivationType values (tllm_enums.py L68-83) through the runner's
# activationTypeToGatedActType / EltwiseActType (trtllm_fused_moe_runner.cu L114-143).
_ENUM = f"{FI} tllm_enums.py ActivationType"


def swiglu(source: str) -> ActivationImpl:
    return ActivationImpl(kernel_name="Swiglu", kernel_value=3,
                          source=f"{RUNNER} L116 Swiglu -> SwiGlu; {_ENUM}; {source}")


def geglu(source: str) -> ActivationImpl:
    return ActivationImpl(kernel_name="Geglu", kernel_value=4,
                          source=f"{RUNNER} L120 Geglu -> GeGlu; {_ENUM}; {source}",
                          note="the GeGlu gate's phi is inside closed cubins; FlashInfer's own test reference "
                               "emulates it with erf GELU")


def geglu_for_tanh(source: str) -> ActivationImpl:
    return ActivationImpl(
        kernel_name="Geglu", kernel_value=4, fidelity="approximate", max_abs_error=GELU_TANH_MAX_ABS_DIFF,
        note="TRT-LLM-gen has no GegluTanh (the runner's gated switch handles Swiglu, SwigluStep, Geglu, Situ and "
             "fails on 8), so the tanh form runs through the Geglu gate",
        source=f"{RUNNER} L114-129 activationTypeToGatedActType; {VLLM_FI_UTILS} L48-49 maps GELU_TANH to Geglu; "
               f"{source}")


def relu2(source: str) -> ActivationImpl:
    return ActivationImpl(kernel_name="Relu2", kernel_value=6, source=f"{RUNNER} L134 Relu2 -> EltwiseActType::Relu2; "
                                                                      f"{_ENUM}; {source}")


def swiglu_clamp(source: str) -> ActivationImpl:
    """SwiGLU on clamped inputs (silu_clamp) is the Swiglu gate with ``gemm1_alpha = 1``,
    ``gemm1_beta = 0`` and ``gemm1_clamp_limit = limit``: ``min(gate, L) * sigmoid(min(gate, L)) *
    clamp(up, -L, L)``. Declared for planning: the adapter does not pass the clamp yet."""
    return ActivationImpl(
        kernel_name="Swiglu", kernel_value=3, adapter_implemented=False,
        source=f"{CORE} gemm1_alpha/gemm1_beta/gemm1_clamp_limit docstrings; {source}",
        note="Swiglu with gemm1_alpha = 1, gemm1_beta = 0, gemm1_clamp_limit = swiglu_limit")


def swigluoai(source: str) -> ActivationImpl:
    """SwiGLU-OAI (gpt-oss) is the Swiglu gate with per-expert ``gemm1_alpha`` / ``gemm1_beta`` /
    ``gemm1_clamp_limit``: ``X2 * sigmoid(alpha * X2) * (X1 + beta)``, X1 clamped to +-limit and X2
    from above (core.py ``trtllm_bf16_moe`` docstring)."""
    return ActivationImpl(
        kernel_name="Swiglu", kernel_value=3, source=f"{CORE} gemm1_alpha/gemm1_beta/gemm1_clamp_limit docstrings; "
                                                     f"{VLLM_FI_UTILS} L45-47 SWIGLUOAI -> Swiglu; {source}",
        note="Swiglu with gemm1_alpha = alpha, gemm1_beta = 1 (the up + 1), gemm1_clamp_limit = limit")


# --- Routing: one routing runner for every entry (routing_method_type), so the in-kernel methods and
# their (experts, top-k) bounds are shared. The *_routed_moe entries skip top-k selection
# (RoutingMethodType is then unused: trtllm_fused_moe_routing_custom.cuh run() L1530-1545 ->
# runPostTopKPipeline).
IN_KERNEL = (RoutingMethod.SOFTMAX_TOPK, RoutingMethod.TOPK_SOFTMAX, RoutingMethod.SOFTMAX_TOPK_RENORM,
             RoutingMethod.DEEPSEEK_V3, RoutingMethod.LLAMA4, RoutingMethod.SIGMOID_RENORM, RoutingMethod.SIGMOID,
             RoutingMethod.MINIMAX2)

LIMITS = (
    RoutingLimit(max_top_k=32, max_experts=2048, source=(
        f"{POLICY} L727 MaxSupportedExperts = 2048, L734 MaxSupportedTopExperts = 32 (the precomputed top-k "
        f"pipeline); {VLLM}/experts/trtllm_bf16_moe.py and trtllm_fp8_moe.py is_supported_config: 'FlashInfer "
        "TRTLLM routing supports at most 2048 experts'")),
    RoutingLimit(methods=(RoutingMethod.TOPK_SOFTMAX, RoutingMethod.SOFTMAX_TOPK_RENORM), max_top_k=32,
                 max_experts=2048, source=f"{POLICY} L838-857 PolicyTraits<NoOp, Softmax> tiers up to Tier<2048, 32> "
                                          f"(Renormalize; RenormalizeNaive runs the same policy, {ROUTING} L281-285)"),
    RoutingLimit(methods=(RoutingMethod.SOFTMAX_TOPK,), max_top_k=8, max_experts=256, source=(
        f"{POLICY} L829-836 PolicyTraits<Softmax, NoOp> (Default) tiers Tier<128, 8>, Tier<256, 8> only")),
    RoutingLimit(methods=(RoutingMethod.SIGMOID_RENORM, RoutingMethod.SIGMOID), max_top_k=8, max_experts=256, source=(
        f"{POLICY} L859-866 PolicyTraits<Sigmoid, SumNormalize> tiers Tier<128, 8>, Tier<256, 8> only")),
    RoutingLimit(methods=(RoutingMethod.MINIMAX2,), max_top_k=32, max_experts=1024, source=(
        f"{POLICY} L868-879 PolicyTraits<SigmoidBias, ScaledSumNormalize> tiers up to Tier<1024, 32>")),
    RoutingLimit(methods=(RoutingMethod.DEEPSEEK_V3,), max_top_k=22, max_experts=512, source=(
        f"{ROUTING} L160 'For DeepSeek routing method, must have topK <= 22' (topkGroup <= 4); "
        f"{FI} .../trtllm_fused_moe_routing_deepseek.cu L50-55 MaxSupportedExpertCount = max(512, 384, 256)")),
    RoutingLimit(methods=(RoutingMethod.LLAMA4,), max_top_k=1, max_experts=128, source=(
        f"{ROUTING} L222 'For Llama routing method, must have topK == 1'; "
        f"{FI} .../trtllm_fused_moe_routing_llama4.cu L30 MaxSupportedExperts = 128")),
)


def routing(vllm_list: str, *overrides: RoutingLimit) -> RoutingSupport:
    """Every in-kernel method of the shared routing runner with its bounds; precomputed top-k through
    the ``*_routed_moe`` entry, which is what moe-registry's adapters call. ``vllm_list`` cites the
    (narrower, "conservative") list vLLM enables for this kernel; ``overrides`` replace the shared
    bounds of their methods where one launcher checks more tightly."""
    replaced = {m for o in overrides for m in o.methods}
    limits = tuple(lim for lim in LIMITS if not set(lim.methods) & replaced) + overrides
    return RoutingSupport(in_kernel=IN_KERNEL, precomputed=True, limits=limits, source=(
        f"{ROUTING} L53-352 Runner::run handles Default, Renormalize, DeepSeekV3, Llama4, RenormalizeNaive, TopK, "
        f"SigmoidRenorm, MiniMax2, Sigmoid, TopKSigmoid for every entry; vLLM enables {vllm_list}; "
        f"*_routed_moe takes (ids, weights) or packed ids ({CORE} _split_precomputed_routing)"))


REQUIREMENTS = (Requirement(
    kind="package", name="flashinfer-python", package="flashinfer-python", import_name="flashinfer",
    hint="pip install flashinfer-python==0.7.2.post1 (the TRT-LLM-gen cubins download on first use into "
         "FLASHINFER_CUBIN_DIR; PyPI's flashinfer-cubin is 0.6.13 and FlashInfer ignores a cubin wheel whose "
         "version differs from its own)",
    source=f"PyPI flashinfer-python 0.7.2.post1; {FI} jit/env.py L80-91, L112-125 (cubin wheel version check)"),)

ENGINES = EngineNames(
    vllm="flashinfer_trtllm", sglang="flashinfer_trtllm", trtllm="TRTLLM",
    # SGLang 0.5.23 names its runner per quant method: MXFP4 runs TRT-LLM-gen under flashinfer_mxfp4 on SM100
    # (Mxfp4MoEMethod, which raises for flashinfer_trtllm); per-channel FP8 has no TRT-LLM-gen path there, MXFP4 x
    # MXFP8 no runner of its own, and the MXINT4 kernel runs only inside compressed-tensors' int4 scheme, so no one
    # flag names it for int4 checkpoints (GPTQ ones load into GPTQMarlinMoEMethod).
    sglang_by_quant={QuantKind.MXFP4: "flashinfer_mxfp4", QuantKind.MXFP4_MXFP8: None, QuantKind.FP8_CHANNEL: None,
                     QuantKind.INT4_W4A16: None},
    source=(
        "vLLM 0.33.0 config/kernel.py L122-147 MoEBackend 'flashinfer_trtllm' (one flag for every TRT-LLM-gen "
        "kernel; the quant oracles pick the entry); SGLang 0.5.23 layers/moe/utils.py L194 MoeRunnerBackend, "
        "quantization/mxfp4.py L1433-1476 (flashinfer_mxfp4: trtllm_sm100), layers/moe/moe_runner/flashinfer_trtllm.py "
        "L780, L919 (FP8 per tensor and block only); executed branch probe "
        "docs/verification/sglang-0.5.23-executed.json; TRT-LLM MoeConfig.backend"))

HARDWARE = (HardwareStatus(devices="sm100", status="not verified on hardware", note=(
    "TRT-LLM-gen needs SM100; the project's GPU machines are SM90 (H100/H200). Weight preparation is "
    "CPU-tested against FlashInfer's own helpers")),)

PROVIDER = f"FlashInfer {FI.split()[-1]} (trtllm-gen cubins)"


def shared_fields() -> dict[str, Any]:
    """The ``BackendCapability`` fields every TRT-LLM-gen declaration states alike: provider, GEMM1 as
    ``[up; gate]`` (``w31``), devices, bf16 output, requirement, engine names and hardware status.
    Each declaration adds its own (``**f.shared_fields()``)."""
    return dict(provider=PROVIDER, gemm1_order="up_gate", devices=DEVICES, dtypes=("bf16",),
                requirements=REQUIREMENTS, engines=ENGINES, hardware=HARDWARE)
