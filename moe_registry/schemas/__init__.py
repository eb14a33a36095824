"""The declaration vocabulary: what a backend plugin writes its ``BackendCapability`` with, and what
selection answers in. Plain pydantic data, no I/O, no torch; every other layer builds on it.

``from moe_registry.schemas import BackendCapability, QuantSupport, DeviceRule, ...``; the
submodules (``moe_registry.schemas.capability`` etc.) stay importable as before.
"""

from __future__ import annotations

from .activation import Activation, ActivationParams, SiluClampParams, SwigluOAIParams
from .capability import (
    ActivationImpl,
    BackendCapability,
    Condition,
    DeviceRule,
    Dimension,
    DimTest,
    DTypeRule,
    EngineNames,
    FeatureSupport,
    Fidelity,
    HardwareStatus,
    KnownLimitation,
    PriorityOverride,
    QuantSupport,
    Requirement,
    RoutingLimit,
    RoutingSupport,
    ShapeRule,
    Sourced,
)
from .device import PRESETS, DeviceSpec, Vendor, get_device
from .layer import DType, LayerSpec, ParallelConfig, RoutingMethod
from .quant import QuantFamily, QuantKind, QuantScheme, ScaleLayout, family_of
from .selection import Candidate, DecidedBy, Note, Padding, Reason, ReasonCode, Rejection, Selection

__all__ = [
    # declarations
    "BackendCapability", "Sourced", "DeviceRule", "DTypeRule", "ActivationImpl", "QuantSupport", "ShapeRule",
    "KnownLimitation", "RoutingSupport", "RoutingLimit", "FeatureSupport", "Requirement", "EngineNames",
    "PriorityOverride", "HardwareStatus", "Condition", "DimTest", "Dimension", "Fidelity",
    # the words they use
    "Activation", "ActivationParams", "SwigluOAIParams", "SiluClampParams",
    "QuantKind", "QuantFamily", "QuantScheme", "ScaleLayout", "family_of",
    "DeviceSpec", "Vendor", "PRESETS", "get_device",
    "LayerSpec", "ParallelConfig", "RoutingMethod", "DType",
    # selection's answer
    "Selection", "Candidate", "Rejection", "Reason", "ReasonCode", "Note", "Padding", "DecidedBy",
]
