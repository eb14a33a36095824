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

DECLARATION = BackendCapability(
    id="reference",
    name="PyTorch reference",
    provider="moe-registry",
    description="fp32 per-expert loop: dequantized weights, exact activations, fp32 accumulation.",
    kernel="moe_registry.backends.reference.kernel.ReferenceExperts",
    adapter="moe_registry.backends.reference.kernel:ReferenceExperts",
    devices=(DeviceRule(vendor="any", source=_SELF),),
    dtypes=("bf16", "fp16", "fp32"),
    # silu_clamp was added after the H100 probe (docs/verification/h100-probe.json): not verified there yet.
    activations={act: ActivationImpl(kernel_name="torch fp32", source=_SELF,
                                     verified_on=() if act is Activation.SILU_CLAMP else ("sm90",))
                 for act in Activation},
    quant=tuple(QuantSupport(kind=kind, zero_point=True, act_order=True, source=f"{_SELF}: dequantizes to fp32",
                             verified_on=("sm90",))
                for kind in QuantKind),
    routing=RoutingSupport(precomputed=True, source=_SELF),
    features=FeatureSupport(bias=True, apply_router_weight_on_input=True, swigluoai_params=True, source=_SELF),
    requirements=(Requirement(kind="package", name="torch", package="torch", import_name="torch",
                              hint="pip install torch", source=_SELF),),
    priority={family: 0 for family in QuantFamily},
    hardware=(HardwareStatus(devices="sm90", status="verified", record="docs/verification/h100-probe.json", note=(
        "probe 2026-11-28 on NVIDIA H100 80GB HBM3 against a float64 oracle: 480 declared combinations passed")),),
)


@hookimpl
def moe_registry_backends() -> list[BackendCapability]:
    return [DECLARATION]
