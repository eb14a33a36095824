"""Provenance of declarations: what was verified on hardware, and by which record.

``apply_verification`` writes a probe record (``moe_registry.verify.record.ProbeRecord``) into a
declaration as provenance (``Sourced.verified_on`` tags, a ``BackendCapability.hardware`` entry);
``verification_lines`` reads it back per device family for ``moe-registry backends``. Imports only
the schemas: rendering a declaration loads neither torch nor the probe's subprocess supervisor
(tests/test_provenance.py checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from .schemas.activation import Activation
from .schemas.capability import BackendCapability, HardwareStatus
from .schemas.quant import QuantKind

if TYPE_CHECKING:
    from .verify.record import ProbeRecord


def apply_verification(decl: BackendCapability, record: ProbeRecord, record_path: str) -> BackendCapability:
    """A copy of ``decl`` with the record as provenance: the record's device tag added to
    ``verified_on`` of every verified activation and quant support, and a ``hardware`` entry for the
    tag (verified only when no declared combination failed). Unchanged if the record did not probe it."""
    from .verify.record import verification_summary  # the record's own reading; pydantic only

    summary = verification_summary(record)["backends"].get(decl.id)
    if not summary or summary.get("status") == "not run":
        return decl
    tag = record.device_tag
    data = decl.model_dump()
    for act, impl in data["activations"].items():
        if Activation(act).value in summary["activations"]["verified"] and tag not in impl["verified_on"]:
            impl["verified_on"] = (*impl["verified_on"], tag)
    for support in data["quant"]:
        if QuantKind(support["kind"]).value in summary["quant"]["verified"] and tag not in support["verified_on"]:
            support["verified_on"] = (*support["verified_on"], tag)
    # Features: tagged once every feature the declaration claims was verified (a claimed one not run: no tag).
    claimed = [name for name, on in (("bias", decl.features.bias),
                                     ("router_weight_on_input", decl.features.apply_router_weight_on_input)) if on]
    features = data["features"]
    if claimed and all(name in summary["features"]["verified"] for name in claimed) \
            and tag not in features["verified_on"]:
        features["verified_on"] = (*features["verified_on"], tag)
    counts = summary["declared"]
    note = (f"moe-registry probe {record.date[:10]} on {record.card}: {counts['passed']} declared combinations "
            f"passed, {counts['wrong'] + counts['raised']} failed")
    status: Literal["verified", "not verified on hardware"] = (
        "verified" if summary["status"] == "verified" else "not verified on hardware")
    hardware = [h for h in data["hardware"] if h["devices"] != tag]
    hardware.append(HardwareStatus(devices=tag, status=status, record=record_path, note=note).model_dump())
    data["hardware"] = hardware
    return BackendCapability.model_validate(data)


def verification_by_family(decl: BackendCapability) -> dict[str, dict[str, list[str]]]:
    """Per device family named in the declaration's provenance (``hardware`` entries and
    ``verified_on`` tags): which capabilities are verified on hardware there, and which of those the
    backend declares for that family are only cited from upstream source."""
    from .schemas.device import get_device

    tags = list(dict.fromkeys([h.devices for h in decl.hardware]
                              + [t for impl in decl.activations.values() for t in impl.verified_on]
                              + [t for s in decl.quant for t in s.verified_on]))
    out: dict[str, dict[str, list[str]]] = {}
    for tag in tags:
        try:
            device = get_device(tag)
        except ValueError:
            device = None
        verified: list[str] = []
        cited: list[str] = []
        for act, impl in decl.activations.items():
            (verified if tag in impl.verified_on else cited).append(f"activation {act.value}")
        for s in decl.quant:
            on_family = device is None or s.devices is None or any(r.matches(device) for r in s.devices)
            if tag in s.verified_on:
                verified.append(f"quant {s.kind.value}")
            elif on_family and s.adapter_implemented:
                cited.append(f"quant {s.kind.value}")
        out[tag] = {"verified": verified, "cited": cited}
    return out


def verification_lines(decl: BackendCapability) -> list[str]:
    """One line per device family: hardware status (with the record), what was verified there and
    what is only cited; "cited from upstream source only" when nothing was run anywhere."""
    by_family = verification_by_family(decl)
    status = {h.devices: h for h in decl.hardware}
    lines = []
    for tag, facts in by_family.items():
        h = status.get(tag)
        parts = []
        if h is not None:
            head = f"{tag}: {h.status}" + (f" ({h.record})" if h.record else "")
            parts.append(head + (f": {h.note}" if h.note and not facts["verified"] else ""))
        if facts["verified"]:
            if h is None:
                parts.append(f"{tag}: facts verified on hardware")
            parts.append("verified " + _compact(facts["verified"]))
            if facts["cited"]:
                parts.append("only cited " + _compact(facts["cited"]))
        lines.append("; ".join(parts))
    return lines or ["cited from upstream source only"]


def _compact(items: list[str]) -> str:
    """["activation silu", "activation gelu", "quant bf16"] -> "activations silu, gelu; quant bf16"."""
    acts = [i.split(" ", 1)[1] for i in items if i.startswith("activation ")]
    quants = [i.split(" ", 1)[1] for i in items if i.startswith("quant ")]
    parts = []
    if acts:
        parts.append(("activations " if len(acts) > 1 else "activation ") + ", ".join(acts))
    if quants:
        parts.append("quant " + ", ".join(quants))
    return "; ".join(parts)
