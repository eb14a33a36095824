"""FlashInfer's TRT-LLM-gen NvFP4 fused MoE (Blackwell SM100 family only).

The seed case: Gemma 4's gated GELU runs here (the kernel's Geglu gate), but vLLM gated it out
with an allow-list and two asserts (vLLM PR #41050). Here the fact lives once, in ``activations``.
Not verified on hardware: TRT-LLM-gen needs SM100 and the project's GPU machines are SM90.
"""

from __future__ import annotations

from moe_registry.registry import hookimpl
from moe_registry.schemas.activation import GELU_TANH_MAX_ABS_DIFF, Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, Condition, DeviceRule, DimTest, EngineNames, FeatureSupport, HardwareStatus,
    KnownLimitation, QuantSupport, Requirement, RoutingSupport, ShapeRule,
)
from moe_registry.schemas.layer import RoutingMethod
from moe_registry.schemas.quant import QuantFamily, QuantKind, ScaleLayout

_VLLM = "vLLM 0.33.0 model_executor/layers/fused_moe/experts/trtllm_nvfp4_moe.py"
_LAUNCHER = ("flashinfer 0.7.2.post1 data/csrc/trtllm_fused_moe_runner.cu activationTypeToGatedActType / "
             "EltwiseActType; kernel_value: tllm_enums.py ActivationType")

DECLARATION = BackendCapability(
    id="trtllm-nvfp4",
    name="FlashInfer TRT-LLM-gen NvFP4 MoE",
    provider="FlashInfer 0.7.2.post1 (trtllm-gen cubins)",
    description="Fused NvFP4 W4A4 MoE from TensorRT-LLM's trtllm-gen cubins; routes in-kernel or takes "
                "precomputed top-k (the *_routed_moe entry).",
    kernel="flashinfer.fused_moe.trtllm_fp4_block_scale_routed_moe",
    adapter="moe_registry.backends.trtllm_nvfp4.kernel:TrtllmNvFp4Experts",
    gemm1_order="up_gate",
    devices=(DeviceRule(sm=(100, 103, 107), source=(
        "flashinfer fused_moe/api.py L506 _TRTLLM_ROUTED_ARCHS = (100, 103, 107) (cubin manifest); launcher "
        "FusedMoeLauncher::init_common requires SM 10.x; vLLM trtllm_nvfp4_moe.py L204 (family 100)")),),
    dtypes=("bf16",),
    activations={
        Activation.SILU: ActivationImpl(kernel_name="Swiglu", kernel_value=3,
                                        source=f"{_LAUNCHER}; {_VLLM} _supports_activation"),
        Activation.GELU: ActivationImpl(kernel_name="Geglu", kernel_value=4, source=(
            f"{_LAUNCHER} (Geglu -> ActType::GeGlu); vLLM PR #41050 (GELU enabled, Gemma 4); vLLM "
            "quantization/utils/flashinfer_utils.py L31 maps GELU to Geglu"), note=(
            "the GeGlu gate's phi is inside closed cubins; KernelRunner.h documents the tanh form only for the "
            "element-wise Gelu")),
        Activation.GELU_TANH: ActivationImpl(
            kernel_name="Geglu", kernel_value=4, fidelity="approximate", max_abs_error=GELU_TANH_MAX_ABS_DIFF,
            note="TRT-LLM-gen has no GegluTanh (the launcher accepts 3, 4, 6, 7, 9, 10), so the tanh form runs "
                 "through the Geglu gate",
            source="flashinfer-moe-api.md 2.1 (activation_type values accepted); vLLM flashinfer_utils.py L31 maps "
                   "GELU_TANH to Geglu; kernel_value: tllm_enums.py ActivationType.Geglu"),
        Activation.RELU2_NO_MUL: ActivationImpl(kernel_name="Relu2", kernel_value=6, source=f"{_LAUNCHER}; {_VLLM}"),
    },
    quant=(QuantSupport(
        kind=QuantKind.NVFP4, activation_scale_layout=ScaleLayout.LINEAR,
        source="vLLM oracle/nvfp4.py L597 (is_scale_swizzled=False for TRTLLM); flashinfer core.py "
               "trtllm_fp4_block_scale_moe: hidden_states_scale must be linear, swizzled raises NotImplementedError"),),
    shape_rules=(
        ShapeRule(dimension="hidden", multiple_of=256, pad=True, source=(
            "vLLM flashinfer_fp4_moe.py L400-425: weight prep pads hidden to 256")),
        ShapeRule(dimension="intermediate", multiple_of=64, pad=True, when=Condition(gated=True), source=(
            "vLLM flashinfer_fp4_moe.py L400-425: gated intermediate padded to 64 (GEMM1 rows 2I % 128, "
            "flashinfer prepare.py prepare_trtllm_fp4_weights)")),
        ShapeRule(dimension="intermediate", multiple_of=128, pad=True, when=Condition(gated=False), source=(
            "vLLM flashinfer_fp4_moe.py L400-425: non-gated intermediate padded to 128")),
    ),
    max_top_k=32,
    limitations=(KnownLimitation(
        when=Condition(activations=(Activation.RELU2_NO_MUL,),
                       dims=(DimTest(dimension="intermediate", not_multiple_of=256),)),
        reason="non-gated relu2_no_mul with an intermediate size that is not a multiple of 256 has no tile "
               "configuration (seen at 704)",
        hint="gated activations at the same size run; a per-rank intermediate that is a multiple of 256 avoids it",
        source="vLLM tests/kernels/moe/test_trtllm_nvfp4_moe.py (commit 0307fc6c) skips RELU2_NO_MUL at I=704: "
               "'no valid tile config ... Tracked upstream'; the multiple-of-256 bound generalises that one point "
               "and is unverified"),),
    routing=RoutingSupport(
        in_kernel=(RoutingMethod.DEEPSEEK_V3, RoutingMethod.TOPK_SOFTMAX, RoutingMethod.SOFTMAX_TOPK_RENORM,
                   RoutingMethod.LLAMA4, RoutingMethod.SIGMOID_RENORM, RoutingMethod.SIGMOID, RoutingMethod.MINIMAX2),
        precomputed=True,
        source=f"{_VLLM} Monolithic routing list (L477-L486); *_routed_moe takes precomputed top-k "
               "(flashinfer-moe-api.md 2.1)"),
    features=FeatureSupport(bias=False, apply_router_weight_on_input=False, source=(
        "TensorRT-LLM create_moe: apply_router_weight_on_input not with TRTLLMGen; bias plumbing not in the adapter")),
    requirements=(Requirement(
        kind="package", name="flashinfer-python", package="flashinfer-python", import_name="flashinfer",
        hint="pip install flashinfer-python (cubins download on first use, or install flashinfer-cubin)",
        source="flashinfer-moe-api.md 2.4 (cubin sources)"),),
    priority={QuantFamily.NVFP4: 100},
    engines=EngineNames(vllm="flashinfer_trtllm", sglang="flashinfer_trtllm", trtllm="TRTLLM",
                        source="vLLM config/kernel.py MoEBackend; SGLang MoeRunnerBackend; TRT-LLM MoeConfig.backend"),
    hardware=(HardwareStatus(devices="sm100", status="not verified on hardware",
                             note="TRT-LLM-gen needs SM100; the project's GPU machines are SM90 (H100/H200)"),),
)


@hookimpl
def moe_registry_backends() -> list[BackendCapability]:
    return [DECLARATION]
