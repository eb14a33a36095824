"""``triton-lowt-moe``: this project's fused-MoE Triton kernels for decode-sized batches (T up to ~64),
weight-only: bf16/fp16, int4 (GPTQ / AWQ group scales, with or without zero points), NvFP4 and MXFP4
run with 16-bit activations, the 4-bit weights dequantized in registers next to the tensor-core dot.

Every fact below is a property of our own kernels (``kernels.py``, ``ops.py``), cited by function;
``verified_on`` names what the probe and the GPU tests confirmed on hardware.
"""

from __future__ import annotations

from moe_registry.registry import hookimpl
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, Condition, DeviceRule, FeatureSupport, QuantSupport, Requirement, RoutingSupport,
    ShapeRule,
)
from moe_registry.schemas.quant import QuantFamily, QuantKind

from ..triton_fused_moe import codes as C

_K = "moe_registry/backends/triton_lowt_moe/kernels.py"
_OPS = "moe_registry/backends/triton_lowt_moe/ops.py"
_EPI = f"{_K} _activation (run-time code, GEMM1 accumulators in float32; the maths of triton_fused_moe._activate)"
_VERIFIED: tuple[str, ...] = ()  # set once the probe record exists (docs/verification/)

_ACT = {
    Activation.SILU: (C.ACT_SILU, "silu(gate) * up"),
    Activation.GELU: (C.ACT_GELU, "gelu(gate) * up with exact erf"),
    Activation.GELU_TANH: (C.ACT_GELU_TANH, "gelu_tanh(gate) * up, tanh(u) = 2 sigmoid(2u) - 1"),
    Activation.SWIGLUOAI: (C.ACT_SWIGLUOAI, "(clamp(up) + up_offset) * g * sigmoid(alpha g), g = min(gate, limit); "
                                            "interleaved or [gate; up] rows"),
    Activation.SILU_CLAMP: (C.ACT_SWIGLUOAI, "the swigluoai epilogue with alpha 1, up offset 0, [gate; up] rows "
                                             "(triton_fused_moe/ops.py epilogue_for): silu(min(gate, L)) * clamp(up)"),
    Activation.RELU2_NO_MUL: (C.ACT_RELU2, "relu(h)^2, non-gated"),
    Activation.SILU_NO_MUL: (C.ACT_SILU_NO_MUL, "silu(h), non-gated"),
    Activation.GELU_NO_MUL: (C.ACT_GELU_NO_MUL, "gelu(h) exact erf, non-gated"),
    Activation.GELU_TANH_NO_MUL: (C.ACT_GELU_TANH_NO_MUL, "gelu_tanh(h), non-gated"),
}
_FOUR_BIT = (QuantKind.INT4_W4A16, QuantKind.NVFP4, QuantKind.NVFP4_W4A16, QuantKind.MXFP4)
_UNPACK = (f"{_K} _unpack (PTX: int4 codes + magic exponent, e2m1 bits times 2^-126 fixed by mul.bf16x2) and "
           f"_half_multipliers; {_OPS} pack_weight")
_A16 = "run weight-only with 16-bit activations (W4A16), as vLLM 0.33 runs NvFP4 on SM90 (Marlin, Humming)"

DECLARATION = BackendCapability(
    id="triton-lowt-moe",
    name="Triton low-T fused MoE (moe-registry)",
    provider="moe-registry (Triton >= 3.4 kernels)",
    description="Decode-sized fused MoE: each used expert's weight tile read once for all its tokens (experts "
                "found by an in-kernel histogram, no sort and no host sync), 4-bit weights dequantized in "
                "registers, the activation fused into GEMM1, the router-weighted top-k sum fused into GEMM2 "
                "(per token, or float32 atomics); large batches sort pairs into expert blocks first. "
                "Capturable in CUDA graphs.",
    kernel="moe_registry.backends.triton_lowt_moe.kernels.lowt_moe_kernel",
    adapter="moe_registry.backends.triton_lowt_moe.kernel:TritonLowTExperts",
    devices=(DeviceRule(min_sm=90, source=(
        f"{_K} _int4_asm / _e2m1_asm: PTX mul.rn.bf16x2 / sub.rn.bf16x2 need sm_90; tl.dot lowers to mma / wgmma")),),
    dtypes=("bf16", "fp16"),
    activations={act: ActivationImpl(kernel_name=f"{_K} _activation code {code}", kernel_value=code,
                                     source=f"{_EPI}: {what}", verified_on=_VERIFIED)
                 for act, (code, what) in _ACT.items()},
    quant=(
        QuantSupport(kind=QuantKind.BF16, dtypes=("bf16",), verified_on=_VERIFIED,
                     source=f"{_K} _kstep FMT_16BIT: bf16 tl.dot, float32 accumulate"),
        QuantSupport(kind=QuantKind.FP16, dtypes=("fp16",), verified_on=_VERIFIED,
                     source=f"{_K} _kstep FMT_16BIT: fp16 tl.dot, float32 accumulate"),
        QuantSupport(kind=QuantKind.INT4_W4A16, group_sizes=(-1, 16, 32, 64, 128, 256), zero_point=True,
                     verified_on=_VERIFIED, source=(
                         f"{_UNPACK}: GPTQ / AWQ layout (Int4GroupTensor), uint4 codes minus 8 or the zero point, "
                         f"group scale exact per step (groups >= 128) or in the layer dtype (smaller groups); "
                         f"act-order (g_idx) is not run: pack_weight refuses it")),
        QuantSupport(kind=QuantKind.NVFP4_W4A16, dtypes=("bf16",), verified_on=_VERIFIED, source=(
            f"{_UNPACK}: e2m1 x e4m3 per 16 (exact in bf16) x 2^10 / global scale per expert")),
        QuantSupport(kind=QuantKind.NVFP4, dtypes=("bf16",), note=_A16, verified_on=_VERIFIED, source=(
            f"{_UNPACK}: NvFp4Tensor weights; activations stay bf16")),
        QuantSupport(kind=QuantKind.MXFP4, dtypes=("bf16",), verified_on=_VERIFIED, source=(
            f"{_UNPACK}: e2m1 x e8m0 per 32 (2^(e-127) as bf16; e = 0 reads as 0)")),
    ),
    shape_rules=tuple(
        ShapeRule(dimension=dim, multiple_of=64, when=Condition(quant=_FOUR_BIT), source=(
            f"{_OPS} split_half_blocks: a K step's two halves hold whole 32-element halves, the last step too "
            f"({dim} is a GEMM's K)"))
        for dim in ("hidden", "intermediate")),
    routing=RoutingSupport(precomputed=True, source="the adapter takes topk_ids / topk_weights"),
    features=FeatureSupport(bias=True, apply_router_weight_on_input=True, swigluoai_params=True, cuda_graphs=True,
                            source=(f"{_K} lowt_moe_kernel / lowt_token_kernel HAS_BIAS / ROUTED_ON_INPUT / swigluoai "
                                    f"params; {_OPS} fused_experts: shapes from metadata only, no host sync")),
    requirements=(Requirement(kind="package", name="triton", package="triton", import_name="triton",
                              hint="pip install triton (ships with CUDA builds of torch)",
                              source=f"{_K} imports triton"),),
    priority={QuantFamily.UNQUANTIZED: 55, QuantFamily.INT4: 50, QuantFamily.NVFP4: 50, QuantFamily.MXFP4: 50},
)


@hookimpl
def moe_registry_backends() -> list[BackendCapability]:
    return [DECLARATION]
