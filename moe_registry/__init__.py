"""moe-registry: declared capabilities of fused-MoE experts backends, per-layer selection with
every reason, and the real kernels behind the choice.

Importing this package never imports torch; the execution entry points load it on first use.
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
    "build_experts": "moe_registry.execution",
    "run_layer": "moe_registry.execution",
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
    from .errors import BackendNotEligible, NoEligibleBackend, UnknownBackend
    from .execution import build_experts, run_layer
    from .planner import plan_model
    from .registry import Registry, default_registry, hookimpl
    from .schemas.activation import Activation, SwigluOAIParams
    from .schemas.capability import BackendCapability
    from .schemas.device import DeviceSpec, get_device
    from .schemas.layer import LayerSpec, ParallelConfig, RoutingMethod
    from .schemas.quant import QuantKind, QuantScheme
    from .schemas.selection import Reason, ReasonCode, Selection
    from .selection import DeclaredPriority, select_backend
