"""The base of every parsed quantization config, the errors every format raises (one line each,
all ``ValueError``), and the helpers each format's parser shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from pydantic import ValidationError

from ..schemas.quant import QuantKind, QuantScheme

# --- Errors ----------------------------------------------------------------------------------


class PlanError(ValueError):
    """Base of every error the model planner raises; one line, never a traceback of a KeyError.

    Defined here so that this module needs no import of :mod:`moe_registry.planner`; import it
    from there."""


class QuantConfigError(PlanError):
    """A quantization config that cannot be turned into per-layer schemes."""


class UnknownQuantMethod(QuantConfigError):
    """A ``quant_method`` moe-registry does not parse."""


class UnsupportedQuantScheme(QuantConfigError):
    """A known format whose parameters name no :class:`QuantScheme` (or an invalid one)."""


class InconsistentMoEQuant(QuantConfigError):
    """The projections (or experts) of one fused MoE layer are quantized differently."""


def unquantized_scheme(dtype: str) -> QuantScheme:
    """The scheme of a layer left unquantized in a checkpoint whose hidden states are ``dtype``."""
    return QuantScheme(kind=QuantKind.FP16 if dtype == "fp16" else QuantKind.BF16)


def _scheme(where: str, **fields: Any) -> QuantScheme:
    try:
        return QuantScheme(**fields)
    except ValidationError as exc:
        msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise UnsupportedQuantScheme(f"{where}: {msg}") from None


def _as_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise QuantConfigError(f"{what} must be a list of strings, got {value!r}")


@overload
def _int(value: Any, what: str, default: int) -> int: ...
@overload
def _int(value: Any, what: str, default: None = None) -> int | None: ...
def _int(value: Any, what: str, default: int | None = None) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise QuantConfigError(f"{what} must be an integer, got {value!r}")
    return value


# --- The resolved config ----------------------------------------------------------------------


@dataclass(frozen=True)
class QuantConfig:
    """A parsed quantization config. ``scheme_for(name)`` is the only question it answers."""

    method: str  # "modelopt", "compressed-tensors", "gptq", "awq", "fp8", "mxfp4", "override"
    summary: str  # one line for humans: "ModelOpt NVFP4 g16 (hf_quant_config.json)"
    source: str  # which file / key it came from
    unquantized: QuantScheme = field(default_factory=QuantScheme)

    def scheme_for(self, name: str) -> QuantScheme:  # pragma: no cover - abstract
        raise NotImplementedError
