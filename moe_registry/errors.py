"""Typed errors. Each renders as one readable message; the structured data stays attached."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .schemas.layer import LayerSpec
    from .schemas.selection import Reason, Rejection


class MoeRegistryError(Exception):
    """Base class of the library's own errors."""


class InvalidArgument(MoeRegistryError, TypeError):
    """A library function called with an argument of the wrong type (named in the message)."""


class InvalidDevice(MoeRegistryError, ValueError):
    """A device argument that names no target selection can plan or run for."""


class UnknownBackend(MoeRegistryError, ValueError):
    """A backend id that no declaration in the registry has."""

    def __init__(self, backend: str, known: list[str]):
        self.backend = backend
        self.known = known
        super().__init__(f"unknown backend {backend!r}; known backends: {', '.join(known)}")


def _layer_label(layer: "LayerSpec") -> str:
    return layer.name or layer.describe()


class BackendNotEligible(MoeRegistryError):
    """A forced backend cannot run the layer. Never falls back silently."""

    def __init__(self, backend: str, layer: "LayerSpec", reasons: "tuple[Reason, ...]", *, origin: str = "forced"):
        self.backend = backend
        self.layer = layer
        self.reasons = reasons
        self.origin = origin
        details = "; ".join(r.render() for r in reasons)
        super().__init__(f"{origin} backend {backend!r} cannot run {_layer_label(layer)}: {details}")


class NoEligibleBackend(MoeRegistryError):
    """No backend can run the layer; carries every rejection."""

    def __init__(self, layer: "LayerSpec", rejections: "tuple[Rejection, ...]"):
        self.layer = layer
        self.rejections = rejections
        details = " | ".join(f"{r.backend}: " + "; ".join(x.render() for x in r.reasons) for r in rejections)
        super().__init__(f"no backend can run {_layer_label(layer)}: {details}")


class SelectionMismatch(MoeRegistryError):
    """Distributed ranks resolved one MoE layer to different backends (or fingerprints); every rank
    raises this with every rank's choice instead of hanging in a collective."""

    def __init__(self, layer_label: str, choices: "list[tuple[int, str, str, str]]"):
        self.layer_label = layer_label
        self.choices = choices  # (rank, backend, fingerprint, decided_by)
        per_rank = "; ".join(f"rank {r}: {b} (fingerprint {f}, {d})" for r, b, f, d in choices)
        super().__init__(f"ranks disagree on the backend of {layer_label}: {per_rank}")
