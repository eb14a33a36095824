"""vLLM's Marlin MoE kernel (`torch.ops._moe_C.moe_wna16_marlin_gemm`): weight-only, SM75+.

The kernel runs the two GEMMs on 4-bit (or 8-bit) weights with 16-bit activations; the
activation between them is applied by the adapter, so every activation is available.
"""

from __future__ import annotations

from moe_registry.registry import hookimpl
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, Condition, DeviceRule, EngineNames, FeatureSupport, HardwareStatus,
    QuantSupport, Requirement, RoutingSupport, ShapeRule,
)
from moe_registry.schemas.quant import QuantFamily, QuantKind

_VLLM = "vLLM 0.33.0 model_executor/layers/fused_moe/experts/marlin_moe.py"
_CHECK = "vLLM 0.33.0 quantization/utils/marlin_utils.py L356 check_moe_marlin_supports_config"
_BETWEEN = ("applied between the Marlin GEMMs by moe_registry.execution.activations, as vLLM applies "
            f"apply_moe_activation between them ({_VLLM} _supports_activation = every AMA member, L623)")

_RUN_ON_H100 = (Activation.SILU, Activation.GELU_TANH, Activation.RELU2_NO_MUL)

DECLARATION = BackendCapability(
    id="marlin",
    name="vLLM Marlin MoE",
    provider="vLLM 0.33.0 (_moe_C)",
    description="Weight-only mixed-precision grouped GEMM (4-bit weights, 16-bit activations), tokens sorted "
                "into expert blocks with moe_align_block_size.",
    kernel="torch.ops._moe_C.moe_wna16_marlin_gemm",
    adapter="moe_registry.backends.marlin.kernel:MarlinExperts",
    devices=(DeviceRule(min_sm=75, source=f"{_VLLM} L592 _supports_current_device (CUDA SM >= 7.5)"),),
    dtypes=("bf16", "fp16"),
    # Verified on the H100 with the real kernel for the three activations the GPU tests ran; the
    # others take the same torch path between the same two GEMMs but were not run there.
    activations={act: ActivationImpl(kernel_name="torch (between GEMMs)", source=_BETWEEN,
                                     verified_on=("sm90",) if act in _RUN_ON_H100 else ())
                 # silu_clamp takes the same torch path but is not declared until probed here (issue 12)
                 for act in Activation if act is not Activation.SILU_CLAMP},
    quant=(
        QuantSupport(kind=QuantKind.INT4_W4A16, group_sizes=(-1, 32, 64, 128), zero_point=True, verified_on=("sm90",),
                     source=(f"{_VLLM} L601 _supports_quant_scheme (INT4, INT4-g32, INT4-asym); {_CHECK} group in "
                             "-1/32/64/128")),
        # The FP4 conversions are written (moe_registry.backends.marlin.kernel.prepare_fp4) but not verified:
        # vLLM's wheel ships Marlin MoE as sm_80 SASS + compute_80 PTX, so an H100 JIT-compiles every kernel
        # variant on first use, and the FP4 variants did not finish compiling within the session. Until a run
        # verifies them, selection does not pick Marlin to run FP4 here (planning still reports it).
        QuantSupport(kind=QuantKind.NVFP4_W4A16, adapter_implemented=False, source=f"{_VLLM} L601 (NVFP4 weights)"),
        QuantSupport(kind=QuantKind.NVFP4, adapter_implemented=False,
                     note="runs as W4A16: the checkpoint's activation scales are dropped", source=(
                         "vLLM oracle/nvfp4.py MARLIN branch; marlin_utils_fp4.py L341 'Weight-only FP4 compression "
                         "will be used leveraging the Marlin kernel'")),
        QuantSupport(kind=QuantKind.MXFP4, adapter_implemented=False, source=f"{_VLLM} L601 (MXFP4)"),
        QuantSupport(kind=QuantKind.FP8, adapter_implemented=False, note="runs as W8A16 (fp8 weight-only)",
                     source=f"{_VLLM} L601 (FP8 tensor / channel / block128 weights)"),
    ),
    shape_rules=(
        ShapeRule(dimension="hidden", multiple_of=128, source=_CHECK),
        ShapeRule(dimension="intermediate", multiple_of=64, source=f"{_CHECK}: intermediate % max(64, group)"),
        ShapeRule(dimension="intermediate", multiple_of=128, when=Condition(group_sizes=(128,)),
                  source=f"{_CHECK}: intermediate % max(64, group)"),
        ShapeRule(dimension="intermediate", multiple_of=128, pad=True, when=Condition(gated=False), source=(
            "vLLM csrc/moe/marlin_moe_wna16 thread configs all have thread_n 128 or 256, so GEMM1's N = I "
            "(non-gated) must be a multiple of 128; stricter than check_moe_marlin_supports_config "
            "(inferred from the kernel source; the adapter zero-pads)")),
    ),
    routing=RoutingSupport(precomputed=True, source=f"{_VLLM} fused_marlin_moe takes topk_ids / topk_weights"),
    features=FeatureSupport(bias=False, apply_router_weight_on_input=False, swigluoai_params=True, source=(
        "moe_registry.backends.marlin.kernel: biases and router weight on input are not wired in the adapter")),
    requirements=(Requirement(
        kind="torch_op", name="_moe_C::moe_wna16_marlin_gemm", package="vllm",
        library_env="MOE_REGISTRY_VLLM_MOE_C",
        hint="pip install vllm (importing it registers torch.ops._moe_C), or point MOE_REGISTRY_VLLM_MOE_C at "
             "vLLM's _moe_C library",
        source="../shared/reference/gpu-machine-notes.md (vLLM 0.33.0 _moe_C_stable_libtorch.abi3.so)"),),
    priority={QuantFamily.INT4: 100, QuantFamily.NVFP4: 60, QuantFamily.MXFP4: 60, QuantFamily.FP8: 40},
    hardware=(HardwareStatus(devices="sm90", status="verified", record="docs/verification/h100-marlin-models.txt", note=(
        "2026-11-28, NVIDIA H100 80GB HBM3, vLLM 0.33.0 _moe_C: int4_w4a16 at the Gemma 4 (g64) and Mixtral (g128) "
        "shapes x silu/gelu_tanh/relu2_no_mul, T 1/7/64/512 incl. imbalanced routing and an empty expert, rel err "
        "<= 5.7e-3 vs the reference; 16 single-GEMM layouts (groups -1/32/64/128, symmetric and zero points, bf16 "
        "and fp16) passed; FP4 schemes not verified")),),
    engines=EngineNames(vllm="marlin", sglang="marlin", trtllm="MARLIN",
                        source="vLLM config/kernel.py MoEBackend; SGLang MoeRunnerBackend; TRT-LLM MoeConfig.backend"),
)


@hookimpl
def moe_registry_backends() -> list[BackendCapability]:
    return [DECLARATION]
