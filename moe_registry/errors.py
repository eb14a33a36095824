"""Typed errors. Each renders as one readable message; the structured data stays attached."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

    from .schemas.layer import LayerSpec
    from .schemas.selection import Reason, Rejection


class MoeRegistryError(Exception):
    """Base class of the library's own errors."""


class InvalidArgument(MoeRegistryError, TypeError):
    """A library function called with an argument of the wrong type (named in the message)."""


class InvalidDevice(MoeRegistryError, ValueError):
    """A device argument that names no target selection can plan or run for."""


class UnusablePath(MoeRegistryError, ValueError):
    """A path that cannot be used as given: not a regular file (a FIFO, a device, a directory),
    over a size limit, or an output whose directory cannot hold a new file."""


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


# --- Exceptions as one line (the CLI, plugin isolation, the probe's worker, bench) ----------------


def one_line(exc: BaseException, *, limit: int | None = None, typed: bool = True) -> str:
    """``exc`` as ``Type: message`` on one line (whitespace collapsed; ``typed=False``: the message
    alone); the type name alone when the message is empty. Cut to ``limit`` characters, ending in
    "...", when given."""
    text = " ".join(str(exc).split())
    if typed:
        line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    else:
        line = text or type(exc).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


def validation_one_line(exc: "ValidationError", *, first_only: bool = False, whole: str | None = None) -> str:
    """A pydantic ``ValidationError`` on one line: each error as ``field.path: message`` (pydantic's
    "Value error, " prefix dropped), joined with "; " (``first_only``: the first error alone). An
    error of the whole model (no field) is labelled ``whole``, or is the bare message when None."""
    parts = []
    for err in exc.errors()[:1] if first_only else exc.errors():  # ErrorDetails always carry msg, loc
        msg = err["msg"].removeprefix("Value error, ")
        loc = ".".join(str(p) for p in err["loc"]) or whole
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


# --- A CUDA context that is no longer usable -------------------------------------------------------

# Texts (matched case-insensitively) of errors after which every later CUDA call in the process
# fails too: the CUDA context is poisoned and only a new process recovers. Erring towards "broken"
# costs a worker restart (probe) or the rest of a run (bench); erring the other way would blame
# later combinations or backends for this one's error.
CUDA_CONTEXT_BROKEN_MARKERS = (
    "illegal memory access",           # cudaErrorIllegalAddress: sticky, the context must be destroyed
    "device-side assert",              # cudaErrorAssert (e.g. the id-range guard): sticky
    "unspecified launch failure",      # cudaErrorLaunchFailure: a kernel died; sticky
    "misaligned address",              # cudaErrorMisalignedAddress: sticky
    "illegal instruction",             # cudaErrorIllegalInstruction: sticky
    "cuda error",                      # torch's prefix of any CUDA runtime error: the wording of a
                                       # sticky one varies by library, so a fresh context is safer
    "cublas_status_execution_failed",  # cuBLAS reporting a kernel that failed on a broken context
)


def cuda_context_broken(error: BaseException | str) -> bool:
    """Whether ``error`` (an exception or its text) means this process's CUDA context is poisoned
    (``CUDA_CONTEXT_BROKEN_MARKERS``)."""
    text = str(error).lower()
    return any(marker in text for marker in CUDA_CONTEXT_BROKEN_MARKERS)
