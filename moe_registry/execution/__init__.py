"""Execution: canonical weights, activations, routing, guards, and building a selected backend.

Importing this package does not import torch (the submodules do, when first used), so it is safe
to name from torch-free code; ``import moe_registry`` never imports it at all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import MoeRegistryError

if TYPE_CHECKING:
    import torch

    from ..registry import Registry
    from ..schemas.layer import LayerSpec
    from ..schemas.selection import Selection
    from .base import Experts
    from .weights import ExpertWeights

__all__ = [
    "Experts", "ExpertWeights", "GraphedExperts", "apply_activation", "build_experts",
    "check_forward_inputs", "check_weights", "load_adapter", "pad_weights", "random_weights", "route", "run_layer",
    "torch_dtype",
]

# Lazily re-exported names -> submodule.
_LAZY = {
    "Experts": "base", "pad_weights": "base", "GraphedExperts": "graphs",
    "ExpertWeights": "weights", "random_weights": "weights", "torch_dtype": "weights",
    "apply_activation": "activations", "route": "routing",
    "check_forward_inputs": "guards", "check_weights": "guards",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class AdapterUnavailable(MoeRegistryError, ValueError):
    """A backend's declared adapter cannot be imported (typed, so the CLI exits 2 with one line)."""


def load_adapter(backend: str, spec: str | None) -> type:
    """The ``Experts`` subclass that ``spec`` (a declaration's ``adapter``, "package.module:ClassName")
    names, imported now. Raises one line: ValueError (no spec), AdapterUnavailable (import fails),
    TypeError (not an Experts subclass)."""
    from .base import Experts

    if not spec or ":" not in spec:
        raise ValueError(f"backend {backend!r} declares no adapter ('package.module:ClassName'), got {spec!r}")
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # a plugin's adapter module missing, or its package not installed
        raise AdapterUnavailable(f"backend {backend!r}: cannot import its adapter module {module_name!r}: "
                                 f"{exc}") from None
    except SystemExit as exc:  # plugin code: one typed line, never the process's exit
        raise AdapterUnavailable(f"backend {backend!r}: importing its adapter module {module_name!r} called "
                                 f"sys.exit({exc.code!r})") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Experts)):
        raise TypeError(f"backend {backend!r}: adapter {spec!r} is not an Experts subclass")
    return cls


def build_experts(selection: "Selection", weights: "ExpertWeights", *, registry: "Registry | None" = None) -> "Experts":
    """Instantiate the selected backend's adapter for ``selection.layer`` with the padding selection
    decided (the adapter validates the weights and prepares its own layout). ``registry``: the one
    selection used, if not the default."""
    from ..registry import default_registry

    capability = (registry or default_registry()).get(selection.backend)
    cls = load_adapter(selection.backend, capability.adapter)
    pads: dict[str, int] = {}
    for p in selection.padding:
        if p.dimension not in ("hidden", "intermediate"):
            raise ValueError(f"selection pads {p.dimension!r}; adapters pad hidden and intermediate only")
        pads[p.dimension] = p.padded
    try:
        return cls(selection.layer, weights, pad_hidden_to=pads.get("hidden"),
                   pad_intermediate_to=pads.get("intermediate"))
    except SystemExit as exc:  # a plugin's adapter: one typed line, never the process's exit
        raise AdapterUnavailable(f"backend {selection.backend!r}: its adapter called sys.exit({exc.code!r}) "
                                 "while being built") from None


def run_layer(layer: "LayerSpec", weights: "ExpertWeights", hidden_states: "torch.Tensor",
              router_logits: "torch.Tensor", *, device: Any = None, routing: dict[str, Any] | None = None,
              **select_kwargs: Any) -> "tuple[torch.Tensor, Selection]":
    """Select a backend for ``layer`` on ``device`` (None: this machine), build it, route, run.

    ``routing`` holds keyword arguments for ``route()`` (correction_bias, n_group, ...);
    ``select_kwargs`` go to ``select_backend`` (force, prefer, forbid, ...). One rank's view: with
    TP the output is this rank's partial sum (the caller all-reduces). EP is refused because
    ``route()`` yields global ids and this function would have to drop other ranks' experts.
    """
    from ..selection import select_backend
    from .routing import route

    if layer.parallel.ep > 1:
        raise ValueError(f"run_layer runs a whole layer on one rank; {layer.parallel.label()} needs the caller to "
                         "map route()'s global ids to this rank's experts and call Experts.forward")
    selection = select_backend(layer, device, **select_kwargs)
    experts = build_experts(selection, weights, registry=select_kwargs.get("registry"))
    topk_weights, topk_ids = route(router_logits, layer, **(routing or {}))
    return experts(hidden_states, topk_weights, topk_ids), selection
