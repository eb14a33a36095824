"""``triton-fused-moe``: this project's Triton fused-MoE kernels (the design of vLLM's
``TritonExperts``: tokens aligned into expert blocks, GEMM1 with the activation in its epilogue,
GEMM2 with the router weight in its epilogue, one top-k sum).

Every fact below is a property of our own kernels (``kernels.py``, ``ops.py``), cited by function;
``verified_on`` names what the probe and the GPU tests confirmed on hardware.
"""

from __future__ import annotations

from moe_registry.registry import hookimpl
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, Condition, DeviceRule, EngineNames, FeatureSupport, HardwareStatus,
    PriorityOverride, QuantSupport, Requirement, RoutingSupport,
)
from moe_registry.schemas.quant import QuantFamily, QuantKind

from . import codes as C

_K = "moe_registry/backends/triton_fused_moe/kernels.py"
_OPS = "moe_registry/backends/triton_fused_moe/ops.py"
_EPI = f"{_K} moe_gemm_kernel epilogue (GEMM1 accumulators in float32)"
_PROBE = "docs/verification/h200-triton-fused-moe-probe.json"  # moe-registry probe --quick, NVIDIA H200, 2026-11-29
_VERIFIED = ("sm90",)  # every declared activation x scheme passed in _PROBE (0 drift) and in tests/gpu

_ACT = {
    Activation.SILU: (C.ACT_SILU, "silu(gate) * up, silu = x * sigmoid(x)"),
    Activation.GELU: (C.ACT_GELU, "gelu(gate) * up with exact erf (tl.erf)"),
    Activation.GELU_TANH: (C.ACT_GELU_TANH, "gelu_tanh(gate) * up: the tanh formula, tanh(u) = 2 sigmoid(2u) - 1"),
    Activation.SWIGLUOAI: (C.ACT_SWIGLUOAI, "(clamp(up) + up_offset) * g * sigmoid(alpha g), g = min(gate, limit); "
                                            "interleaved or [gate; up] rows"),
    Activation.RELU2_NO_MUL: (C.ACT_RELU2, "relu(h)^2, non-gated"),
    Activation.SILU_NO_MUL: (C.ACT_SILU_NO_MUL, "silu(h), non-gated"),
    Activation.GELU_NO_MUL: (C.ACT_GELU_NO_MUL, "gelu(h) exact erf, non-gated"),
    Activation.GELU_TANH_NO_MUL: (C.ACT_GELU_TANH_NO_MUL, "gelu_tanh(h), non-gated"),
}

_HOPPER_FP8 = ("vLLM 0.33.0 model_executor/layers/fused_moe/oracle/fp8.py L122-132 (unchanged in 0.34.0): 'On Hopper "
               "for Block Fp8, prefer Triton for TP and FI CUTLASS for EP' (_move_to_front TRITON when "
               "is_device_capability(90) and ep_size == 1, for kFp8Static128BlockSym x kFp8Dynamic128Sym only); per-tensor "
               "FP8 keeps vLLM's base order, FLASHINFER_CUTLASS before TRITON (executed: docs/parity/vllm-0.34.0.json, "
               "Mixtral-8x7B-Instruct-FP8 on h100)")

DECLARATION = BackendCapability(
    id="triton-fused-moe",
    name="Triton fused MoE (moe-registry)",
    provider="moe-registry (Triton >= 3.4 kernels)",
    description="Expert-block alignment in one Triton program, GEMM1 with the activation fused in its epilogue, "
                "GEMM2 with the router weight fused, one top-k sum; bf16/fp16 and FP8 (per-tensor, 128x128 block) "
                "with dynamic activation quantization; no host sync, CUDA-graph capturable.",
    kernel="moe_registry.backends.triton_fused_moe.kernels.moe_gemm_kernel",
    adapter="moe_registry.backends.triton_fused_moe.kernel:TritonFusedMoEExperts",
    devices=(
        DeviceRule(min_sm=80, source=(
            "Triton tl.dot on bf16/fp16 lowers to mma (SM80) / wgmma (SM90); tuned configs for the H200 in "
            "moe_registry/backends/triton_fused_moe/configs/")),
        # Not the CPU: Triton's interpreter (TRITON_INTERPRET=1) runs these kernels on CPU tensors for the
        # tests only (orders of magnitude slower); selection must never pick it for a CPU layer.
    ),
    dtypes=("bf16", "fp16"),
    activations={act: ActivationImpl(kernel_name=f"{_K} ACT code {code}", kernel_value=code,
                                     source=f"{_EPI}: {what}", verified_on=_VERIFIED)
                 for act, (code, what) in _ACT.items()},
    quant=(
        QuantSupport(kind=QuantKind.BF16, dtypes=("bf16",), verified_on=_VERIFIED,
                     source=f"{_K} moe_gemm_kernel: bf16 tl.dot, fp32 accumulate"),
        QuantSupport(kind=QuantKind.FP16, dtypes=("fp16",), verified_on=_VERIFIED,
                     source=f"{_K} moe_gemm_kernel: fp16 tl.dot, fp32 accumulate"),
        QuantSupport(kind=QuantKind.FP8, devices=(DeviceRule(min_sm=89, source=(
            "Triton: e4m3 (fp8e4nv) tl.dot needs SM89+")),), source=(
            f"{_OPS} quant_fp8_tensor (dynamic per-tensor activation scale amax/448) + {_K} moe_gemm_kernel "
            "QUANT_FP8_TENSOR (weight scale per expert, Fp8Tensor)"), verified_on=_VERIFIED),
        QuantSupport(kind=QuantKind.FP8_BLOCK, devices=(DeviceRule(min_sm=89, source=(
            "Triton: e4m3 (fp8e4nv) tl.dot needs SM89+")),), source=(
            f"{_OPS} quant_fp8_groups (dynamic 1x128 activation scales) + {_K} moe_gemm_kernel QUANT_FP8_BLOCK "
            "(128x128 weight tiles, Fp8BlockTensor; partial tiles masked)"), verified_on=_VERIFIED),
    ),
    routing=RoutingSupport(precomputed=True, source="the adapter takes topk_ids / topk_weights"),
    features=FeatureSupport(bias=True, apply_router_weight_on_input=True, swigluoai_params=True, cuda_graphs=True,
                            source=(f"{_K} moe_gemm_kernel HAS_BIAS / ROUTED_ON_INPUT / swigluoai params; "
                                    f"{_OPS}: shapes from metadata only, no host sync (capturable)")),
    requirements=(Requirement(kind="package", name="triton", package="triton", import_name="triton",
                              hint="pip install triton (ships with CUDA builds of torch)",
                              source=f"{_K} imports triton"),),
    # Measured on the H200 (benchmarks/results/bench-moe-h200.json, 2026-11-29): faster than torch-grouped-mm
    # (priority 60) at every bf16 layer and T, eager and graphed (1.3-3.3x at T <= 512, 1.14-1.54x at T = 4096), so
    # above it everywhere. Against FlashInfer (not measurable on SM90 here: its JIT build takes > 40 min) we follow
    # vLLM 0.33's order: FlashInfer CUTLASS first by default (unquantized 70 / FP8 80 over 65 / 75 here), but on
    # SM9x vLLM demotes FlashInfer's unquantized MoE (flashinfer-cutlass declares that override) and moves Triton
    # to the front for block FP8 under TP (the override below).
    priority={QuantFamily.UNQUANTIZED: 65, QuantFamily.FP8: 75},
    priority_overrides=(PriorityOverride(
        family=QuantFamily.FP8, devices=(DeviceRule(sm=(90,), source=_HOPPER_FP8),), priority=85,
        when=Condition(quant=(QuantKind.FP8_BLOCK,), expert_parallel=False), source=_HOPPER_FP8),),
    engines=EngineNames(vllm="triton", sglang="triton", source=(
        "vLLM 0.33.0 config/kernel.py MoEBackend 'triton' (TritonExperts, fused_moe.py); SGLang 0.5.23 "
        "MoeRunnerBackend.TRITON (layers/moe/fused_moe_triton/, the same design ported from vLLM; unquant.py L1193, "
        "fp8.py L2961): the same kernel family, not the same code")),
    hardware=(HardwareStatus(devices="sm90", status="verified", record=_PROBE, note=(
        "2026-11-29, NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0: probe (quick) 96 declared combinations passed "
        "(8 activations x bf16/fp16/fp8/fp8_block x 3 shapes), 144 undeclared refused, 0 drift; "
        "tests/gpu/test_triton_fused_moe_gpu.py 35 passed (docs/verification/h200-triton-fused-moe-gpu-tests.log)")),),
)


@hookimpl
def moe_registry_backends() -> list[BackendCapability]:
    return [DECLARATION]
