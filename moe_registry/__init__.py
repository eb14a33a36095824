"""moe-registry: declared capabilities of fused-MoE experts backends, per-layer selection with
every reason, and the real kernels behind the choice.

Importing this package never imports torch; the execution entry points load it on first use.

Callers: ``select_backend`` (one layer), ``plan_model`` / ``plan_config`` (a whole model),
``build_experts`` / ``run_layer`` (the kernels). Plugin authors: ``BackendCapability`` here, the rest
of the declaration vocabulary in :mod:`moe_registry.schemas`, ``hookimpl`` to register, and
``Experts`` to subclass for an adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it; resolved on first attribute access (PEP 562), so that
# `import moe_registry` stays fast and torch-free.
_EXPORTS = {
    "select_backend": "moe_registry.selection",
    "DeclaredPriority": "moe_registry.selection",
    "Registry": "moe_registry.registry",
    "default_registry": "moe_registry.registry",
    "hookimpl": "moe_registry.registry",
    "BackendNotEligible": "moe_registry.errors",
    "NoEligibleBackend": "moe_registry.errors",
    "UnknownBackend": "moe_registry.errors",
    "Activation": "moe_registry.schemas.activation",
    "SwigluOAIParams": "moe_registry.schemas.activation",
    "QuantScheme": "moe_registry.schemas.quant",
    "QuantKind": "moe_registry.schemas.quant",
    "DeviceSpec": "moe_registry.schemas.device",
    "get_device": "moe_registry.schemas.device",
    "LayerSpec": "moe_registry.schemas.layer",
    "ParallelConfig": "moe_registry.schemas.layer",
    "RoutingMethod": "moe_registry.schemas.layer",
    "BackendCapability": "moe_registry.schemas.capability",
    "Selection": "moe_registry.schemas.selection",
    "Reason": "moe_registry.schemas.selection",
    "ReasonCode": "moe_registry.schemas.selection",
    "plan_model": "moe_registry.planner",
    "plan_config": "moe_registry.planner",
    "ModelPlan": "moe_registry.planner",
    "LayerPlan": "moe_registry.planner",
    "PlanError": "moe_registry.quant_config",
    "Policy": "moe_registry.selection",
    "MeasuredPolicy": "moe_registry.measured",
    "CostTable": "moe_registry.measured",
    "Environment": "moe_registry.environment",
    "MoeRegistryError": "moe_registry.errors",
    "InvalidArgument": "moe_registry.errors",
    "InvalidDevice": "moe_registry.errors",
    "build_experts": "moe_registry.execution",
    "run_layer": "moe_registry.execution",
    "Experts": "moe_registry.execution",
    "ExpertWeights": "moe_registry.execution",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'moe_registry' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .environment import Environment
    from .errors import (
        BackendNotEligible, InvalidArgument, InvalidDevice, MoeRegistryError, NoEligibleBackend, UnknownBackend,
    )
    from .execution import Experts, ExpertWeights, build_experts, run_layer
    from .measured import CostTable, MeasuredPolicy
    from .planner import LayerPlan, ModelPlan, plan_config, plan_model
    from .quant_config import PlanError
    from .registry import Registry, default_registry, hookimpl
    from .schemas.activation import Activation, SwigluOAIParams
    from .schemas.capability import BackendCapability
    from .schemas.device import DeviceSpec, get_device
    from .schemas.layer import LayerSpec, ParallelConfig, RoutingMethod
    from .schemas.quant import QuantKind, QuantScheme
    from .schemas.selection import Reason, ReasonCode, Selection
    from .selection import DeclaredPriority, Policy, select_backend
