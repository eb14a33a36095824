"""The reference backend: plain PyTorch in fp32 on any device, every activation and scheme.

It defines the semantics every other backend is tested against, and it is the last resort:
lowest priority for every quant family, so it only runs when nothing faster can.
"""

from __future__ import annotations

from moe_registry.registry import hookimpl
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, DeviceRule, FeatureSupport, HardwareStatus, QuantSupport, Requirement,
    RoutingSupport,
)
from moe_registry.schemas.quant import QuantFamily, QuantKind

_SELF = "moe_registry.backends.reference.kernel (the project's definition)"
_PROBE = "docs/verification/h100-probe.json"  # moe-registry probe vs a float64 oracle, NVIDIA H100, 2026-11-28

# The schemes moe_registry.formats can build and dequantize: the reference runs exactly these. A kind
# with no format (int8_w8a16, mxfp8_w8a16, mxfp8, mxfp4_fp8) is not claimed; a new kind is not either
# until it is added here, after its format exists.
_RUNS = (QuantKind.BF16, QuantKind.FP16, QuantKind.FP8, QuantKind.FP8_BLOCK, QuantKind.NVFP4, QuantKind.NVFP4_W4A16,
         QuantKind.MXFP4, QuantKind.MXFP4_MXFP8, QuantKind.INT4_W4A16, QuantKind.INT4_FP8, QuantKind.FP8_CHANNEL)
# Tags only from the record's passing rows (tests/test_verification_records.py checks them), per member, so a
# new activation or kind starts unverified: the H100 probe passed every activation and every kind above.
_PROBED_ACTIVATIONS = (Activation.SILU, Activation.GELU, Activation.GELU_TANH, Activation.SWIGLUOAI,
                       Activation.RELU2_NO_MUL, Activation.SILU_NO_MUL, Activation.GELU_NO_MUL,
                       Activation.GELU_TANH_NO_MUL)
# fp8_channel came after the H100 probe: not verified until a record shows it.
_PROBED_KINDS = tuple(k for k in _RUNS if k is not QuantKind.FP8_CHANNEL)

DECLARATION = BackendCapability(
    id="reference",
    name="PyTorch reference",
    provider="moe-registry",
    description="fp32 per-expert loop: dequantized weights, exact activations, fp32 accumulation.",
    kernel="moe_registry.backends.reference.kernel.ReferenceExperts",
    adapter="moe_registry.backends.reference.kernel:ReferenceExperts",
    devices=(DeviceRule(vendor="any", source=_SELF),),
    dtypes=("bf16", "fp16", "fp32"),
    activations={act: ActivationImpl(kernel_name="torch fp32", source=_SELF,
                                     verified_on=("sm90",) if act in _PROBED_ACTIVATIONS else ())
                 for act in Activation},
    # ReferenceExperts.__init__ holds weights.dequantized(torch.float32): every scheme, bf16 included,
    # is held as fp32 (what the planner's memory fit counts).
    quant=tuple(QuantSupport(kind=kind, zero_point=True, act_order=True, dequantized_at_load=True, dequantized_bits=32,
                             source=f"{_SELF}: ReferenceExperts.__init__ dequantizes to fp32 at build",
                             verified_on=("sm90",) if kind in _PROBED_KINDS else ())
                for kind in _RUNS),
    routing=RoutingSupport(precomputed=True, source=_SELF),
    features=FeatureSupport(bias=True, apply_router_weight_on_input=True, swigluoai_params=True, source=_SELF),
    requirements=(Requirement(kind="package", name="torch", package="torch", import_name="torch",
                              hint="pip install torch", source=_SELF),),
    priority={family: 0 for family in QuantFamily},
    not_for_deployment=("the fp32 reference is moe-registry's test oracle (every weight held in fp32, a per-expert "
                        "loop), not a kernel an engine deploys"),
    hardware=(HardwareStatus(devices="sm90", status="verified", record=_PROBE, note=(
        "probe 2026-11-28 on NVIDIA H100 80GB HBM3 against a float64 oracle: 480 declared combinations passed")),),
)


@hookimpl
def moe_registry_backends() -> list[BackendCapability]:
    return [DECLARATION]
