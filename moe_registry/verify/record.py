"""The verification record (``moe-registry probe --out``): pydantic models that validate when read
back (committed records in docs/verification/ must keep loading), the JSON form that diffs line by
line, drift grouping, and the per-backend verification summary. No torch, no subprocess."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from ..schemas.activation import Activation
from ..schemas.device import DeviceSpec
from ..schemas.layer import LayerSpec
from ..schemas.quant import QuantScheme
from ..schemas.selection import ReasonCode
from .grid import ShapeClass, layer_for

RECORD_SCHEMA_VERSION = 1

Status = Literal["passed", "wrong", "raised", "skipped"]
DriftKind = Literal["declared_but_failing", "undeclared_but_working"]

# What an undeclared-but-working result suggests, per reason code.
DRIFT_HINTS = {
    ReasonCode.ACTIVATION_UNSUPPORTED: "the kernel runs this activation: add it to the declaration's activations",
    ReasonCode.ACTIVATION_APPROXIMATE: "the declared approximation may be exact",
    ReasonCode.QUANT_UNSUPPORTED: "the adapter runs this scheme: declare it (dequantized_at_load if it dequantizes)",
    ReasonCode.QUANT_OPTION_UNSUPPORTED: "the declared quant options may be too narrow",
    ReasonCode.DTYPE_UNSUPPORTED: "the adapter accepts this dtype: declare it",
    ReasonCode.SHAPE_UNALIGNED: "the declared alignment may be too strict",
    ReasonCode.SHAPE_OUT_OF_RANGE: "the declared size limit may be too strict",
    ReasonCode.KNOWN_LIMITATION: "the known limitation did not reproduce here",
    ReasonCode.FEATURE_UNSUPPORTED: "the adapter supports this feature: declare it",
    ReasonCode.ADAPTER_MISSING: "adapter_implemented=False, but the adapter ran it",
    ReasonCode.PARALLEL_UNSUPPORTED: "the declared parallel limits may be too strict",
    ReasonCode.ROUTING_UNSUPPORTED: "the declared routing limits may be too strict",
}


# --- Records --------------------------------------------------------------------------------------

_FROZEN = ConfigDict(frozen=True, extra="forbid")

# A scheme written as its label in records ("int4_w4a16:g64"), read back from either form.
Scheme = Annotated[QuantScheme, BeforeValidator(lambda v: QuantScheme.parse(v) if isinstance(v, str) else v),
                   PlainSerializer(lambda q: q.label(), return_type=str)]


class ComboResult(BaseModel):
    """One combination on one backend, and what happened."""

    model_config = _FROZEN

    backend: str
    shape: str  # ShapeClass.name
    activation: Activation
    quant: Scheme
    dtype: str
    tokens: int
    bias: bool = False  # the feature axes (left out of the JSON when False)
    apply_router_weight_on_input: bool = False
    declared: bool
    reasons: tuple[ReasonCode, ...] = ()  # every code that made it undeclared
    reason_text: str = ""  # the rejection messages, one line (kept for undeclared results that passed)
    format_rule_only: bool = False  # undeclared only by the format-wide scale-group rule
    pad_hidden_to: int | None = None
    pad_intermediate_to: int | None = None
    status: Status
    rel_error: float | None = None
    max_abs_error: float | None = None
    tolerance: float | None = None
    message: str = ""  # raised: "Type: text"; skipped: why; wrong: what
    seconds: float | None = None
    worker: int | None = None  # which worker process ran it (0, 1, ... after restarts); None in-process

    def label(self) -> str:
        return (f"{self.backend} {self.shape} {self.activation.value} {self.quant.label()}"
                + _feature_suffix(self.bias, self.apply_router_weight_on_input))

    def layer(self, record: "ProbeRecord") -> LayerSpec:
        shape = record.shape(self.shape)
        return layer_for(shape, self.activation, self.quant, bias=self.bias,
                         router_weight_on_input=self.apply_router_weight_on_input)


def _feature_suffix(bias: bool, router_weight_on_input: bool) -> str:
    return (" +bias" if bias else "") + (" +router-weight-on-input" if router_weight_on_input else "")


class DriftItem(BaseModel):
    model_config = _FROZEN

    kind: DriftKind
    backend: str
    shape: str
    activation: Activation
    quant: Scheme
    bias: bool = False
    apply_router_weight_on_input: bool = False
    status: Status
    reasons: tuple[ReasonCode, ...] = ()
    detail: str = ""

    def describe(self) -> str:
        where = (f"{self.backend} {self.shape} {self.activation.value} {self.quant.label()}"
                 + _feature_suffix(self.bias, self.apply_router_weight_on_input))
        if self.kind == "declared_but_failing":
            return f"declared but {self.status}: {where}: {self.detail}"
        return f"undeclared but works: {where}: {self.detail}"


class BackendProbe(BaseModel):
    model_config = _FROZEN

    backend: str
    status: Literal["probed", "skipped"]
    reason: str = ""  # why skipped, or what went wrong for the whole backend
    adapter: str | None = None
    combinations: int = 0
    seconds: float = 0.0
    worker_restarts: int = 0


class ProbeRecord(BaseModel):
    """A verification record: what ran where, with which result. Validates when read back."""

    model_config = _FROZEN

    schema_version: int = RECORD_SCHEMA_VERSION
    tool: str = "moe-registry probe"
    moe_registry_version: str
    registry_digest: str
    date: str  # UTC, ISO 8601
    card: str
    device: DeviceSpec
    compute_capability: str | None = None  # "sm90"
    driver: str | None = None
    versions: dict[str, str] = {}
    quick: bool = False
    isolated: bool = True
    shapes: tuple[ShapeClass, ...]
    backends: tuple[BackendProbe, ...]
    results: tuple[ComboResult, ...] = ()
    drift: tuple[DriftItem, ...] = ()
    format_findings: tuple[DriftItem, ...] = ()
    summary: dict[str, dict[str, int]] = Field(default_factory=dict)

    def shape(self, name: str) -> ShapeClass:
        return next(s for s in self.shapes if s.name == name)

    def results_for(self, backend: str) -> tuple[ComboResult, ...]:
        return tuple(r for r in self.results if r.backend == backend)

    def declared_but_failing(self) -> tuple[DriftItem, ...]:
        return tuple(d for d in self.drift if d.kind == "declared_but_failing")

    def undeclared_but_working(self) -> tuple[DriftItem, ...]:
        return tuple(d for d in self.drift if d.kind == "undeclared_but_working")

    @property
    def device_tag(self) -> str:
        return self.compute_capability or self.device.name

    def to_json(self) -> str:
        """The record as JSON: header fields indented, one line per result / drift item (fields at
        their defaults left out), so a committed record diffs line by line."""
        data = self.model_dump(mode="json")
        rows = {"results": self.results, "drift": self.drift, "format_findings": self.format_findings}
        parts = []
        for key, value in data.items():
            if key in rows and value:
                lines = [json.dumps(item.model_dump(mode="json", exclude_defaults=True)) for item in rows[key]]
                parts.append(f' "{key}": [\n  ' + ",\n  ".join(lines) + "\n ]")
            else:
                parts.append(f" {json.dumps(key)}: " + json.dumps(value, indent=1).replace("\n", "\n "))
        return "{\n" + ",\n".join(parts) + "\n}\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ProbeRecord":
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


# --- Drift, grouped ------------------------------------------------------------------------------


def span(values: Sequence[str], universe: Sequence[str]) -> str:
    """The distinct values, comma-separated, or "all" when they cover the whole (plural) universe."""
    values = list(dict.fromkeys(values))
    if len(values) == len(universe) and len(universe) > 1:
        return "all"
    return ", ".join(values)


def grouped_drift(items: Sequence[DriftItem]) -> list[dict[str, Any]]:
    """Drift items grouped by (kind, backend, quant, status, reason codes): one row per distinct
    finding, listing the activations and shapes it covers."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for d in items:
        quant = d.quant.label() + _feature_suffix(d.bias, d.apply_router_weight_on_input)
        key = (d.kind, d.backend, quant, d.status, d.reasons)
        g = groups.setdefault(key, {"kind": d.kind, "backend": d.backend, "quant": quant,
                                    "status": d.status, "reasons": [c.value for c in d.reasons],
                                    "activations": [], "shapes": [], "example": d.detail})
        g["activations"].append(d.activation.value)
        g["shapes"].append(d.shape)
    return list(groups.values())


# --- Verification summary: what a record shows per backend -------------------------------------------


def verification_summary(record: ProbeRecord) -> dict[str, Any]:
    """What a record shows, per probed backend, for updating declarations.

    A capability (an activation, a quant kind, a shape class) is ``verified`` when at least one
    declared combination with it ran (not skipped) and every declared combination with it that ran
    passed; ``failing`` when a declared one was wrong or raised; ``undeclared_working`` lists what
    ran correctly without being declared (candidates to declare). ``status`` is "verified" when
    declared combinations ran and none failed.
    """
    out: dict[str, Any] = {"device": record.device_tag, "card": record.card, "date": record.date,
                           "registry_digest": record.registry_digest,
                           "moe_registry_version": record.moe_registry_version, "quick": record.quick, "backends": {}}
    for probe in record.backends:
        if probe.status != "probed":
            out["backends"][probe.backend] = {"status": "not run", "reason": probe.reason}
            continue
        results = record.results_for(probe.backend)
        entry: dict[str, Any] = {}
        for axis, key in (("activations", lambda r: r.activation.value), ("quant", lambda r: r.quant.kind.value),
                          ("shapes", lambda r: r.shape), ("features", _feature_of)):
            ran: dict[str, list[ComboResult]] = {}
            for r in results:
                value = key(r)
                if value is not None:
                    ran.setdefault(value, []).append(r)
            verified: list[str] = []
            failing: list[str] = []
            undeclared: list[str] = []
            for name, rs in ran.items():
                declared_ran = [r for r in rs if r.declared and r.status != "skipped"]
                if any(r.status in ("wrong", "raised") for r in declared_ran):
                    failing.append(name)
                elif declared_ran:
                    verified.append(name)
                if any(not r.declared and r.status == "passed" and not r.format_rule_only for r in rs):
                    undeclared.append(name)
            entry[axis] = {"verified": verified, "failing": failing, "undeclared_working": undeclared}
        counts = {s: sum(1 for r in results if r.declared and r.status == s)
                  for s in ("passed", "wrong", "raised", "skipped")}
        entry["declared"] = counts
        entry["status"] = ("verified" if counts["passed"] and not counts["wrong"] and not counts["raised"]
                           else "failing" if counts["wrong"] or counts["raised"] else "not run")
        entry["drift"] = [
            f"{'declared but ' + g['status'] if g['kind'] == 'declared_but_failing' else 'undeclared but works'}: "
            f"{g['quant']}, activations {span(g['activations'], [a.value for a in Activation])}, shapes "
            f"{span(list(dict.fromkeys(g['shapes'])), [s.name for s in record.shapes])}"
            + (f" ({', '.join(c.upper() for c in g['reasons'])})" if g["reasons"] else f": {g['example']}")
            for g in grouped_drift([d for d in record.drift if d.backend == probe.backend])]
        out["backends"][probe.backend] = entry
    return out


def _feature_of(r: ComboResult) -> str | None:
    """The feature axis a result belongs to (None: a plain combination)."""
    if r.bias:
        return "bias"
    return "router_weight_on_input" if r.apply_router_weight_on_input else None
