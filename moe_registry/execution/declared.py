"""Adapter guards derived from the declaration: one fact in one place.

An adapter must refuse exactly what its backend's declaration says the kernel does not run, and
nothing else. Restating allow-lists, alignments and arch lists in the adapter is how vLLM's #41050
happened (the GELU allow-list and two asserts said the same thing; only one was edited). So an
adapter calls :func:`check_declared`, which runs selection's own rule evaluation
(``moe_registry.selection.evaluate``) on that one declaration, and :func:`declared_padding` for
the sizes the declaration's pad rules give. Kernel enum values come from
``ActivationImpl.kernel_value``.

Importing this module imports no torch; :func:`device_spec_of` imports it when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..environment import Environment, device_for_gpu
from ..registry import default_registry
from ..schemas.device import PRESETS, DeviceSpec
from ..schemas.selection import PadDimension
from ..selection import DeclaredPriority, evaluate
from ..selection.padding import _paddings
from ..selection.rules import _Verdict

if TYPE_CHECKING:
    from ..registry import Registry
    from ..schemas.capability import BackendCapability, DeviceRule
    from ..schemas.layer import LayerSpec

__all__ = ["DEVICE_FIELDS", "check_declared", "declared_padding", "device_spec_of"]

#: Reason fields that depend on the device only: ignored when checking without one (device=None).
DEVICE_FIELDS = frozenset({"device", "quant.device", "dtype.device"})
#: Reason fields judged on the sizes the kernel sees (the padded ones).
_SHAPE_FIELDS = frozenset({"hidden", "intermediate"})

# An adapter runs on this machine, so requirement rules must not be assumed met as when planning
# (planning=False); with no requirement states recorded they abstain (the adapter loads its own
# kernels and says why when it cannot). adapter_implemented=False schemes still reject.
_ENV = Environment(planning=False)
_POLICY = DeclaredPriority()


def _declaration(backend_id: str, registry: "Registry | None") -> "BackendCapability":
    return (registry or default_registry()).get(backend_id)


def _devices_of(rule: "DeviceRule") -> list[DeviceSpec]:
    """Devices that satisfy one device rule (one per listed or bounding SM)."""
    if rule.vendor == "nvidia":
        sms = set(rule.sm or ()) | {s for s in (rule.min_sm, rule.max_sm) if s is not None}
        return [DeviceSpec(name=f"sm{sm}", vendor="nvidia", sm=sm) for sm in sorted(sms or {90})]
    if rule.vendor == "any":
        return [PRESETS["cpu"]]
    return [DeviceSpec(name=rule.vendor, vendor=rule.vendor)]


def _evaluate(decl: "BackendCapability", layer: "LayerSpec", device: DeviceSpec | None,
              declarations: tuple["BackendCapability", ...]) -> tuple[_Verdict, DeviceSpec]:
    """The verdict on ``device``; with no device, the verdict on a device the declaration (and its
    scheme for the layer's quant kind) runs on, preferring one where every non-device rule passes,
    so that device-independent reasons (e.g. a scheme's dtypes) are still judged."""
    if device is not None:
        return evaluate(decl, layer, device, _ENV, _POLICY, declarations), device
    rules = [*decl.devices, *(r for s in decl.quant_support(layer.quant.kind) for r in (s.devices or ()))]
    candidates: dict[DeviceSpec, None] = {}
    for rule in rules:
        candidates.update(dict.fromkeys(_devices_of(rule)))
    best: tuple[tuple[bool, int], _Verdict, DeviceSpec] | None = None
    for candidate in candidates or (PRESETS["cpu"],):
        v = evaluate(decl, layer, candidate, _ENV, _POLICY, declarations)
        key = (any(r.field in DEVICE_FIELDS for r in v.reasons), len(v.reasons))
        if best is None or key < best[0]:
            best = (key, v, candidate)
    assert best is not None
    return best[1], best[2]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def check_declared(backend_id: str, layer: "LayerSpec", device: DeviceSpec | None, *, hidden_padded: int,
                   intermediate_padded: int, registry: "Registry | None" = None) -> "BackendCapability":
    """Raise ``ValueError("<backend>: <reason 1>; <reason 2>; ...")`` with every reason the
    declaration of ``backend_id`` gives against running ``layer`` on ``device`` with the kernel
    seeing ``hidden_padded`` / ``intermediate_padded`` (per rank); return the declaration.

    ``device=None`` checks the layer only: reasons about the device (fields ``device`` and
    ``quant.device``) are left out. Alignment rules are judged on the padded sizes; every other
    rule on the layer as given, exactly as selection judges it. A pad rule the padded sizes do not
    meet is reported with the size to pad to ("pad intermediate to 768").
    """
    reg = registry or default_registry()
    decl = reg.get(backend_id)
    declarations = reg.declarations()
    H, I = layer.hidden_size, layer.local_intermediate_size
    problems: list[str] = []
    for name, padded, size in (("hidden", hidden_padded, H), ("intermediate", intermediate_padded, I)):
        if padded < size:
            problems.append(f"padded {name} size {padded} is smaller than the layer's {size}")
    if problems:
        raise ValueError(f"{decl.id}: " + "; ".join(problems))
    v, target = _evaluate(decl, layer, device, declarations)
    reasons = [r for r in v.reasons if device is not None or r.field not in DEVICE_FIELDS]
    padding = v.padding
    if (hidden_padded, intermediate_padded) != (H, I):
        padded_layer = layer.replace(hidden_size=hidden_padded,
                                     intermediate_size=intermediate_padded * layer.parallel.tp)
        vp = evaluate(decl, padded_layer, target, _ENV, _POLICY, declarations)
        reasons = [r for r in reasons if r.field not in _SHAPE_FIELDS] + [r for r in vp.reasons
                                                                          if r.field in _SHAPE_FIELDS]
        padding = vp.padding
    problems = [r.render() for r in reasons]
    dims: tuple[tuple[PadDimension, int], ...] = (("hidden", hidden_padded), ("intermediate", intermediate_padded))
    for name, padded in dims:
        multiple = padding.get(name)
        if multiple is not None and padded % multiple:
            problems.append(f"{decl.name} needs per-rank {name} to be a multiple of {multiple}; the kernel would "
                            f"see {padded} (pad {name} to {_round_up(padded, multiple)})")
    if problems:
        raise ValueError(f"{decl.id}: " + "; ".join(p.replace("\n", " ") for p in problems))
    return decl


def declared_padding(backend_id: str, layer: "LayerSpec", registry: "Registry | None" = None) -> tuple[int, int]:
    """(hidden, intermediate) per-rank sizes the declaration's pad rules ask for: what selection
    would put in ``Selection.padding`` for this backend (the layer's own sizes where no rule pads)."""
    decl = _declaration(backend_id, registry)
    v = evaluate(decl, layer, PRESETS["cpu"], _ENV, _POLICY)  # shape rules do not depend on the device
    sizes = {"hidden": layer.hidden_size, "intermediate": layer.local_intermediate_size}
    for p in _paddings(layer, v.padding):
        sizes[p.dimension] = p.padded
    return sizes["hidden"], sizes["intermediate"]


def device_spec_of(device: Any) -> DeviceSpec:
    """The DeviceSpec of a torch device (``torch.device``, or anything ``torch.device()`` takes):
    a CUDA GPU by its compute capability and product name (a preset when the name matches one),
    the CPU as the ``cpu`` preset. ValueError for other device types."""
    import torch

    dev = device if isinstance(device, torch.device) else torch.device(device)
    if dev.type == "cpu":
        return PRESETS["cpu"]
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        if getattr(torch.version, "hip", None):
            return DeviceSpec(name=props.name, vendor="amd")
        major, minor = torch.cuda.get_device_capability(dev)
        return device_for_gpu(props.name, major * 10 + minor, round(props.total_memory / 2**30, 1))
    raise ValueError(f"no DeviceSpec for torch device type {dev.type!r} (cuda and cpu only)")
