"""The probe's grid: shape classes, the scheme each quant kind takes at a shape, the feature axes,
and the combinations of one backend with what its declaration says about each (pure: declarations
only, through ``selection.judge``; no torch, no subprocess)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

from pydantic import BaseModel, ConfigDict

from ..schemas.activation import Activation, SiluClampParams
from ..schemas.capability import BackendCapability, Condition
from ..schemas.device import DeviceSpec
from ..schemas.layer import LayerSpec
from ..schemas.quant import QuantKind, QuantScheme, quant_info
from ..schemas.selection import ReasonCode
from .oracle import tolerance_for

if TYPE_CHECKING:
    from ..environment import Environment


# --- Shape classes --------------------------------------------------------------------------------


class ShapeClass(BaseModel):
    """One layer shape the probe runs (per rank: TP1, EP1), with its token count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    tokens: int
    note: str = ""


def shape_classes(*, quick: bool = False, cpu: bool = False) -> tuple[ShapeClass, ...]:
    """aligned; unaligned intermediate 704 / 1856 (Gemma 4, Nemotron-H) and hidden = intermediate =
    2880 (gpt-oss) with few experts; tiny T (1) and large T (2048; 256 on CPU) on the aligned shape.
    ``quick``: aligned, I=704 and tiny T."""
    large_t = 256 if cpu else 2048
    shapes = (
        ShapeClass(name="aligned", num_experts=8, top_k=2, hidden_size=512, intermediate_size=512, tokens=16,
                   note="every size a multiple of 128"),
        ShapeClass(name="tiny-T", num_experts=8, top_k=2, hidden_size=512, intermediate_size=512, tokens=1,
                   note="one token"),
        ShapeClass(name="large-T", num_experts=8, top_k=2, hidden_size=512, intermediate_size=512, tokens=large_t,
                   note=f"{large_t} tokens"),
        ShapeClass(name="I=704", num_experts=4, top_k=2, hidden_size=512, intermediate_size=704, tokens=16,
                   note="Gemma 4 intermediate (704 = 5.5 x 128)"),
        ShapeClass(name="I=1856", num_experts=4, top_k=2, hidden_size=512, intermediate_size=1856, tokens=16,
                   note="Nemotron-H intermediate (1856 = 14.5 x 128)"),
        ShapeClass(name="H=I=2880", num_experts=4, top_k=2, hidden_size=2880, intermediate_size=2880, tokens=16,
                   note="gpt-oss (2880 = 22.5 x 128)"),
    )
    if quick:
        return tuple(s for s in shapes if s.name in ("aligned", "I=704", "tiny-T"))
    return shapes


def default_scheme(kind: QuantKind, shape: ShapeClass) -> QuantScheme:
    """``QuantScheme(kind=kind)``, except that a scheme whose group size a checkpoint chooses (int4)
    takes the largest of 128 / 64 / 32 that divides both GEMMs' K (hidden and intermediate), so the
    weights can exist at unaligned shapes (704 = 11 x 64, 2880 = 45 x 64); per channel otherwise."""
    scheme = QuantScheme(kind=kind)
    if scheme.group_size is None or quant_info(kind).fixed_group is not None:
        return scheme  # no group, or one fixed by the format
    for group in (scheme.group_size, 64, 32):
        if shape.hidden_size % group == 0 and shape.intermediate_size % group == 0:
            return QuantScheme(kind=kind, group_size=group)
    return QuantScheme(kind=kind, group_size=-1)


# The feature axes: (feature, the activations it is probed with). Biases with gpt-oss's swigluoai and with
# silu; router weight on the input with silu and top-1 routing (Llama 4, the model that uses it).
FEATURE_COMBOS: tuple[tuple[str, tuple[Activation, ...]], ...] = (
    ("bias", (Activation.SILU, Activation.SWIGLUOAI)),
    ("router_weight_on_input", (Activation.SILU,)),
)


def layer_for(shape: ShapeClass, activation: Activation, scheme: QuantScheme, *, bias: bool = False,
              router_weight_on_input: bool = False) -> LayerSpec:
    """The layer of one combination. Router weight on the input is probed with top-1 routing."""
    # fp16 is a kind of its own (unquantized fp16 weights): its hidden states are fp16 as well.
    dtype: Literal["bf16", "fp16"] = "fp16" if scheme.kind is QuantKind.FP16 else "bf16"
    # silu_clamp has no default limit; a small one so the clamp binds on the probe's random data.
    params = SiluClampParams(limit=1.0) if activation is Activation.SILU_CLAMP else None
    return LayerSpec(num_experts=shape.num_experts, top_k=1 if router_weight_on_input else shape.top_k,
                     hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size, activation=activation,
                     quant=scheme, dtype=dtype, bias=bias, apply_router_weight_on_input=router_weight_on_input,
                     activation_params=params)



# --- Planning (pure: declarations only) ------------------------------------------------------------


@dataclasses.dataclass
class Combo:
    """One planned combination: its layer, what the declaration says, and what the worker needs."""

    index: int
    shape: ShapeClass
    layer: LayerSpec
    declared: bool
    reasons: tuple[ReasonCode, ...]
    reason_text: str
    format_rule_only: bool
    pad_hidden_to: int | None
    pad_intermediate_to: int | None
    tolerance: float

    def job_entry(self) -> dict[str, Any]:
        return {"index": self.index, "layer": self.layer.model_dump(mode="json"), "tokens": self.shape.tokens,
                "pad_hidden_to": self.pad_hidden_to, "pad_intermediate_to": self.pad_intermediate_to,
                "tolerance": self.tolerance}


def availability(decl: BackendCapability, device: DeviceSpec, env: "Environment") -> tuple[bool, str]:
    """Whether the backend can run here: a device rule matches, it has an adapter, and every
    requirement that applies to every layer on this device is met (per ``env``)."""
    if not any(rule.matches(device) for rule in decl.devices):
        needs = " or ".join(rule.describe() for rule in decl.devices)
        return False, f"device: needs {needs}; this machine is {device.label()}"
    if not decl.adapter:
        return False, "declares no adapter"
    for req in decl.requirements:
        if req.when != Condition():
            continue  # applies to some layers only: selection rejects those (PACKAGE_MISSING)
        if req.devices is not None and not any(rule.matches(device) for rule in req.devices):
            continue
        state = env.state(decl.id, req.name)
        if state is not None and not state.satisfied:
            return False, f"requirement {req.kind} {req.name}: {state.detail}"
    return True, ""


def plan_combinations(decl: BackendCapability, device: DeviceSpec, env: "Environment",
                      declarations: Sequence[BackendCapability], shapes: Sequence[ShapeClass], *,
                      activations: Iterable[Activation] | None = None,
                      quant_kinds: Iterable[QuantKind] | None = None, features: bool = True) -> list[Combo]:
    """Every (shape, scheme, activation) for one backend, with what the declaration says about it;
    with ``features``, also every scheme with each feature of ``FEATURE_COMBOS`` (its activations,
    where asked for) on the first shape class and on H=I=2880 when it is in ``shapes``.

    Declared-ness, reasons and padding all come from ``selection.judge`` under the default
    policy (approximations accepted, padding allowed): exactly what selecting would decide.
    """
    from ..selection import judge  # selection loads the registry: only when planning

    acts = tuple(activations) if activations is not None else tuple(Activation)
    kinds = tuple(quant_kinds) if quant_kinds is not None else tuple(QuantKind)
    combos: list[Combo] = []

    def add(shape: ShapeClass, layer: LayerSpec) -> None:
        verdict = judge(decl, layer, device, env, declarations)
        pads = {p.dimension: p.padded for p in verdict.paddings}
        tol, _ = tolerance_for(decl, layer)
        combos.append(Combo(
            index=len(combos), shape=shape, layer=layer, declared=verdict.declared,
            reasons=tuple(dict.fromkeys(r.code for r in verdict.reasons)),
            reason_text="; ".join(r.message for r in verdict.reasons),
            format_rule_only=verdict.format_rule_only,
            pad_hidden_to=pads.get("hidden"), pad_intermediate_to=pads.get("intermediate"),
            tolerance=tol))

    # Scheme, then shape, then activation: consecutive combinations share weights (the worker
    # caches them), and aligned / tiny-T / large-T share one set.
    for kind in kinds:
        for shape in shapes:
            scheme = default_scheme(kind, shape)
            for act in acts:
                add(shape, layer_for(shape, act, scheme))
    if features and shapes:
        feature_shapes = [shapes[0], *(s for s in shapes[1:] if s.name == "H=I=2880")]
        for kind in kinds:
            for shape in feature_shapes:
                scheme = default_scheme(kind, shape)
                for feature, feature_acts in FEATURE_COMBOS:
                    for act in (a for a in feature_acts if a in acts):
                        add(shape, layer_for(shape, act, scheme, bias=feature == "bias",
                                             router_weight_on_input=feature == "router_weight_on_input"))
    return combos
