"""Selection: which backend runs one MoE layer on one device, and every reason the others lost.

Pure and deterministic over (declarations, LayerSpec, DeviceSpec, Environment, policy, force,
prefer, forbid): every rule of every declaration is evaluated and every failure is kept, each
with a hint of what would make the backend eligible. Results are cached. No torch import.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from typing import Iterable, Protocol, Sequence

from .environment import Environment
from .errors import BackendNotEligible, InvalidArgument, InvalidDevice, NoEligibleBackend
from .registry import Registry, default_registry
from .schemas.activation import Activation, SwigluOAIParams
from .schemas.capability import BackendCapability, QuantSupport, dimension_value
from .schemas.device import PRESETS, DeviceSpec, detect, get_device
from .schemas.layer import LayerSpec
from .schemas.selection import Candidate, DecidedBy, Note, Padding, Reason, ReasonCode, Rejection, Selection

ENV_FORCE = "MOE_REGISTRY_BACKEND"

# --- Policies ----------------------------------------------------------------------------------


class Policy(Protocol):
    """Orders eligible candidates. ``order`` returns the ranked list, the rule that decided, and notes."""

    exact_activations: bool
    allow_padding: bool

    def order(self, candidates: Sequence[Candidate], layer: LayerSpec,
              device: DeviceSpec) -> tuple[list[Candidate], DecidedBy, tuple[Note, ...]]: ...

    def key(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class DeclaredPriority:
    """The default: declared priority for the layer's quant family, highest first; among equals,
    no padding before padding, then the backend id (so the order never depends on dict order).

    ``exact_activations``: reject backends that would run an approximation of the activation
    (e.g. exact-erf GeGLU for gelu_tanh) instead of accepting it with a note.
    ``allow_padding``: when False, a rule that needs padding rejects instead.
    """

    exact_activations: bool = False
    allow_padding: bool = True

    def order(self, candidates: Sequence[Candidate], layer: LayerSpec,
              device: DeviceSpec) -> tuple[list[Candidate], DecidedBy, tuple[Note, ...]]:
        ranked = sorted(candidates, key=lambda c: (-c.priority, bool(c.padding), c.backend))
        return ranked, "priority", ()

    def key(self) -> str:
        return f"declared(exact={self.exact_activations},pad={self.allow_padding})"


# --- Rules -------------------------------------------------------------------------------------


def _targets_satisfying(predicate) -> str:
    names = [d.name for d in PRESETS.values() if d.vendor != "cpu" and not d.name.startswith("sm") and predicate(d)]
    return ", ".join(names)


def _device_rule_hint(rules) -> str:
    where = _targets_satisfying(lambda d: any(r.matches(d) for r in rules))
    needs = " or ".join(r.describe() for r in rules)
    return f"would be eligible on {needs}" + (f" (e.g. {where})" if where else "")


@dataclasses.dataclass
class _Verdict:
    reasons: list[Reason] = dataclasses.field(default_factory=list)
    notes: list[Note] = dataclasses.field(default_factory=list)
    padding: dict[str, int] = dataclasses.field(default_factory=dict)  # dimension -> multiple

    def reject(self, code: ReasonCode, field: str, required: str, actual: str, message: str,
               hint: str = "", source: str = "") -> None:
        self.reasons.append(Reason(code=code, field=field, required=required, actual=actual,
                                   message=message, hint=hint, source=source))


def _check_device(d: BackendCapability, device: DeviceSpec, v: _Verdict) -> None:
    if not any(rule.matches(device) for rule in d.devices):
        required = " or ".join(r.describe() for r in d.devices)
        v.reject(ReasonCode.DEVICE_UNSUPPORTED, "device", required, device.label(),
                 f"{d.name} needs {required}; {device.label()} is not", _device_rule_hint(d.devices),
                 "; ".join(r.source for r in d.devices))


def _check_activation(d: BackendCapability, layer: LayerSpec, policy: Policy,
                      others: Sequence[BackendCapability], v: _Verdict) -> None:
    act = layer.activation
    impl = d.activations.get(act)
    if impl is None:
        runs_it = [o.id for o in others if act in o.activations and o.id != d.id]
        hint = f"backends that run {act.value}: {', '.join(runs_it)}" if runs_it else ""
        hint += ("; " if hint else "") + ("if this kernel does run it, adding it to the declaration's activations "
                                          f"is the only change needed (verify with `moe-registry probe --backend {d.id}`)")
        supported = ", ".join(a.value for a in d.activations)
        v.reject(ReasonCode.ACTIVATION_UNSUPPORTED, "activation", supported, act.value,
                 f"{d.name} does not run activation {act.value}", hint)
        return
    if impl.fidelity == "approximate":
        if policy.exact_activations:
            v.reject(ReasonCode.ACTIVATION_APPROXIMATE, "activation", f"exact {act.value}",
                     f"{impl.kernel_name} ({impl.note})",
                     f"{d.name} would run {act.value} approximately: {impl.note}",
                     "allow approximate activations (drop exact_activations / --exact)", impl.source)
        else:
            bound = f" (|difference| <= {impl.max_abs_error:g})" if impl.max_abs_error is not None else ""
            v.notes.append(Note(kind="approximation",
                                message=f"{d.id} runs {act.value} as {impl.kernel_name}: {impl.note}{bound}"))
    params = layer.activation_params
    # Interleaving is a weight layout the adapters undo at load; only other constants need support.
    custom = params is not None and params.model_copy(update={"interleaved": False}) != SwigluOAIParams()
    if act is Activation.SWIGLUOAI and custom and not d.features.swigluoai_params:
        v.reject(ReasonCode.FEATURE_UNSUPPORTED, "activation_params", "gpt-oss defaults",
                 str(layer.activation_params), f"{d.name} runs swigluoai only with the gpt-oss constants",
                 source=d.features.source)


def _quant_options_fail(support: QuantSupport, layer: LayerSpec) -> list[tuple[str, str, str, str]]:
    """(field, required, actual, what) for each option of the layer's scheme this support lacks."""
    q = layer.quant
    fails = []
    if support.group_sizes is not None and q.group_size not in support.group_sizes:
        allowed = " or ".join(map(str, support.group_sizes))
        fails.append(("quant.group_size", allowed, str(q.group_size), f"group size {q.group_size} (runs {allowed})"))
    if q.zero_point and not support.zero_point:
        fails.append(("quant.zero_point", "symmetric", "zero points", "zero points (asymmetric)"))
    if q.act_order and not support.act_order:
        fails.append(("quant.act_order", "no act_order", "act_order", "act_order (GPTQ desc_act)"))
    if (q.activation_scale_layout is not None and support.activation_scale_layout is not None
            and q.activation_scale_layout is not support.activation_scale_layout):
        fails.append(("quant.activation_scale_layout", support.activation_scale_layout.value,
                      q.activation_scale_layout.value, f"{q.activation_scale_layout.value} activation scales "
                      f"(consumes {support.activation_scale_layout.value})"))
    if support.dtypes is not None and layer.dtype not in support.dtypes:
        allowed = " or ".join(support.dtypes)
        fails.append(("dtype", allowed, layer.dtype, f"{layer.dtype} hidden states (takes {allowed})"))
    return fails


def _check_quant(d: BackendCapability, layer: LayerSpec, device: DeviceSpec, planning: bool,
                 others: Sequence[BackendCapability], v: _Verdict) -> QuantSupport | None:
    kind = layer.quant.kind
    supports = d.quant_support(kind)
    if not supports:
        here = sorted({s.kind.value for s in d.quant
                       if s.devices is None or any(r.matches(device) for r in s.devices)})
        runs_it = [o.id for o in others if o.id != d.id and o.quant_support(kind)]
        v.reject(ReasonCode.QUANT_UNSUPPORTED, "quant", ", ".join(here) or "none", kind.value,
                 f"{d.name} does not run {kind.value}",
                 f"backends that run {kind.value}: {', '.join(runs_it)}" if runs_it else "")
        return None
    on_device = [s for s in supports if s.devices is None or any(r.matches(device) for r in s.devices)]
    if not on_device:
        rules = tuple(r for s in supports for r in (s.devices or ()))
        needs = " or ".join(r.describe() for r in rules)
        v.reject(ReasonCode.QUANT_UNSUPPORTED, "quant.device", f"{kind.value} on {needs}", f"{kind.value} on {device.label()}",
                 f"{d.name} runs {kind.value} only on {needs}", _device_rule_hint(rules),
                 "; ".join(s.source for s in supports))
        return None
    for support in on_device:
        if not _quant_options_fail(support, layer):
            if not support.adapter_implemented:
                if not planning:
                    v.reject(ReasonCode.ADAPTER_MISSING, "quant", f"{kind.value} weight conversion", "not implemented",
                             f"{d.name} runs {kind.value}, but moe-registry cannot convert its weights yet",
                             "plan with a named --device to see what an engine would run", support.source)
                    return None
                v.notes.append(Note(kind="assumed", message=(
                    f"{d.id} runs {kind.value} in its engine; moe-registry's adapter cannot run it yet")))
            if support.dequantized_at_load:
                ratio = 16 / layer.quant.weight_bits
                v.notes.append(Note(kind="memory", message=(
                    f"{d.id} dequantizes {kind.value} weights to 16-bit when the layer is built: "
                    f"{ratio:g}x the expert weight memory of the checkpoint")))
            if support.note:
                v.notes.append(Note(kind="assumed", message=f"{d.id}: {support.note}"))
            return support
    for field, required, actual, what in _quant_options_fail(on_device[0], layer):
        code = ReasonCode.DTYPE_UNSUPPORTED if field == "dtype" else ReasonCode.QUANT_OPTION_UNSUPPORTED
        v.reject(code, field, required, actual, f"{d.name} does not run {kind.value} with {what}",
                 source=on_device[0].source)
    return None


def _parallel_hint(layer: LayerSpec, dimension: str, ok) -> str:
    """What parallel layout would satisfy a per-rank rule on the intermediate size."""
    tp = layer.parallel.tp
    if dimension != "intermediate" or tp == 1:
        return ""
    full = layer.intermediate_size
    hints = []
    if ok(full):
        hints.append(f"EP{tp} instead of TP{tp} keeps intermediate {full}")
    smaller = [t for t in range(tp - 1, 0, -1) if full % t == 0 and ok(full // t)]
    if smaller:
        hints.append(f"TP{smaller[0]} gives intermediate {full // smaller[0]}")
    return "; ".join(hints)


def _smallest_ep(num_experts: int, max_per_rank: int) -> int | None:
    """The smallest EP size >= 2 that divides the experts into at most ``max_per_rank`` per rank:
    ``num_experts / d`` for the largest divisor ``d < num_experts`` with ``d <= max_per_rank``
    (divisors found in pairs up to the square root, not by counting up to ``num_experts``)."""
    best = 0
    for small in range(1, math.isqrt(num_experts) + 1):
        if num_experts % small == 0:
            for d in (small, num_experts // small):
                if d < num_experts and d <= max_per_rank:
                    best = max(best, d)
    return num_experts // best if best else None


def _check_format_groups(layer: LayerSpec, v: _Verdict) -> None:
    """A rank must hold whole scale groups along K (hidden for GEMM1, intermediate for GEMM2):
    a fact of the quantization format, so it applies to every backend alike."""
    group = layer.quant.scale_group_k
    if group is None:
        return
    for dimension in ("hidden", "intermediate"):
        value = dimension_value(layer, dimension)
        # A partial last group is fine where the format allows one, unless TP cuts through it.
        unsplit = dimension == "hidden" or layer.parallel.tp == 1
        if value % group and not (layer.quant.partial_last_group and unsplit):
            hint = _parallel_hint(layer, dimension, lambda x: x % group == 0)
            v.reject(ReasonCode.SHAPE_UNALIGNED, dimension, f"multiple of {group}", str(value),
                     f"per-rank {dimension} {value} splits {layer.quant.kind.value}'s {group}-element scale groups",
                     hint, f"{layer.quant.kind.value} format: one scale per {group} K-elements")


def _check_shapes(d: BackendCapability, layer: LayerSpec, policy: Policy, v: _Verdict) -> None:
    for rule in d.shape_rules:
        if not rule.when.matches(layer):
            continue
        value = dimension_value(layer, rule.dimension)
        scope = "" if rule.when == rule.when.__class__() else f" when {rule.when.describe()}"
        if rule.multiple_of is not None and value % rule.multiple_of:
            if rule.pad and policy.allow_padding:
                current = v.padding.get(rule.dimension, 1)
                v.padding[rule.dimension] = current * rule.multiple_of // math.gcd(current, rule.multiple_of)
                continue
            padded = -(-value // rule.multiple_of) * rule.multiple_of
            hint = _parallel_hint(layer, rule.dimension, lambda x, m=rule.multiple_of: x % m == 0)
            if rule.pad:
                hint = "; ".join(filter(None, [hint, f"allow padding to {padded}"]))
            v.reject(ReasonCode.SHAPE_UNALIGNED, rule.dimension, f"multiple of {rule.multiple_of}{scope}", str(value),
                     f"{d.name} needs per-rank {rule.dimension} to be a multiple of {rule.multiple_of}{scope}; it is {value}",
                     hint, rule.source)
        if (rule.min is not None and value < rule.min) or (rule.max is not None and value > rule.max):
            bounds = f"{rule.min if rule.min is not None else ''}..{rule.max if rule.max is not None else ''}"
            v.reject(ReasonCode.SHAPE_OUT_OF_RANGE, rule.dimension, bounds, str(value),
                     f"{d.name} needs per-rank {rule.dimension} in {bounds}{scope}; it is {value}", source=rule.source)
    if d.max_experts is not None and layer.local_num_experts > d.max_experts:
        need = _smallest_ep(layer.num_experts, d.max_experts)
        v.reject(ReasonCode.SHAPE_OUT_OF_RANGE, "experts", f"<= {d.max_experts} per rank", str(layer.local_num_experts),
                 f"{d.name} runs at most {d.max_experts} experts per rank; this rank has {layer.local_num_experts}",
                 f"EP{need} gives {layer.num_experts // need} experts per rank" if need else "")
    if d.max_top_k is not None and layer.top_k > d.max_top_k:
        v.reject(ReasonCode.SHAPE_OUT_OF_RANGE, "top_k", f"<= {d.max_top_k}", str(layer.top_k),
                 f"{d.name} routes at most top-{d.max_top_k}; the layer uses top-{layer.top_k}")


def _check_limitations(d: BackendCapability, layer: LayerSpec, v: _Verdict) -> None:
    for lim in d.limitations:
        if lim.when.matches(layer):
            v.reject(ReasonCode.KNOWN_LIMITATION, "layer", f"not ({lim.when.describe()})", layer.describe(),
                     f"{d.name}: {lim.reason}", lim.hint, lim.source)


def _check_routing_features(d: BackendCapability, layer: LayerSpec, v: _Verdict) -> None:
    if layer.routing is None:
        v.notes.append(Note(kind="abstained", message=(
            f"{d.id}: routing unknown, so the in-kernel routing rule abstained (unknown is not false)")))
    elif layer.routing in d.routing.in_kernel:
        v.notes.append(Note(kind="routing", message=f"{d.id}: {layer.routing.value} routing runs inside the kernel"))
    elif not d.routing.precomputed:
        methods = ", ".join(m.value for m in d.routing.in_kernel)
        v.reject(ReasonCode.ROUTING_UNSUPPORTED, "routing", methods, layer.routing.value,
                 f"{d.name} routes only {methods} and takes no precomputed top-k", source=d.routing.source)
    f = d.features
    if layer.bias and not f.bias:
        v.reject(ReasonCode.FEATURE_UNSUPPORTED, "bias", "no bias", "expert biases",
                 f"{d.name} does not apply expert biases", source=f.source)
    if layer.apply_router_weight_on_input and not f.apply_router_weight_on_input:
        v.reject(ReasonCode.FEATURE_UNSUPPORTED, "apply_router_weight_on_input", "router weight on output",
                 "router weight on input", f"{d.name} applies router weights to expert outputs only", source=f.source)
    p = layer.parallel
    if p.tp > 1 and not f.tensor_parallel:
        v.reject(ReasonCode.PARALLEL_UNSUPPORTED, "parallel.tp", "TP1", f"TP{p.tp}",
                 f"{d.name} does not support tensor-parallel experts", f"use EP{p.tp} instead", f.source)
    if p.ep > 1 and not f.expert_parallel:
        v.reject(ReasonCode.PARALLEL_UNSUPPORTED, "parallel.ep", "EP1", f"EP{p.ep}",
                 f"{d.name} does not support expert parallelism", f"use TP{p.ep} instead", f.source)


def _check_requirements(d: BackendCapability, layer: LayerSpec, device: DeviceSpec, env: Environment,
                        v: _Verdict) -> None:
    for req in d.requirements:
        if not req.when.matches(layer):
            continue
        if req.devices is not None and not any(r.matches(device) for r in req.devices):
            continue
        what = {"package": f"package {req.package or req.name}", "torch_op": f"op {req.name}",
                "jit_module": f"built kernel module {req.name}"}[req.kind]
        if env.planning:
            cost = f" (first build: {req.build_cost})" if req.build_cost else ""
            v.notes.append(Note(kind="assumed", message=(
                f"{d.id}: planning for {device.label()} assumes {what} is available on it{cost}")))
            continue
        state = env.state(d.id, req.name)
        if state is None or state.satisfied:
            continue
        code = ReasonCode.KERNEL_NOT_BUILT if req.kind == "jit_module" else ReasonCode.PACKAGE_MISSING
        hint = req.hint + (f"; first build costs {req.build_cost}" if req.build_cost else "")
        v.reject(code, "environment", what, state.detail, f"{d.name} needs {what}: {state.detail}", hint, req.source)


def evaluate(d: BackendCapability, layer: LayerSpec, device: DeviceSpec, env: Environment, policy: Policy,
             declarations: Sequence[BackendCapability] = ()) -> _Verdict:
    """Every rule of one declaration against the layer: all failures, not the first."""
    v = _Verdict()
    _check_device(d, device, v)
    if layer.dtype not in d.dtypes and not any(s.dtypes for s in d.quant_support(layer.quant.kind)):
        v.reject(ReasonCode.DTYPE_UNSUPPORTED, "dtype", " or ".join(d.dtypes), layer.dtype,
                 f"{d.name} takes {' or '.join(d.dtypes)} hidden states, not {layer.dtype}")
    _check_activation(d, layer, policy, declarations, v)
    _check_quant(d, layer, device, env.planning, declarations, v)
    _check_format_groups(layer, v)
    _check_shapes(d, layer, policy, v)
    _check_limitations(d, layer, v)
    _check_routing_features(d, layer, v)
    _check_requirements(d, layer, device, env, v)
    return v


def _paddings(layer: LayerSpec, multiples: dict[str, int]) -> tuple[Padding, ...]:
    h, i = layer.hidden_size, layer.local_intermediate_size
    padded = {"hidden": h, "intermediate": i}
    for dimension, m in multiples.items():
        padded[dimension] = -(-padded[dimension] // m) * m
    if padded == {"hidden": h, "intermediate": i}:
        return ()
    # Expert weights and GEMM FLOPs both scale with H * I (w13 is 2I x H or I x H, w2 is H x I).
    extra = 100.0 * (padded["hidden"] * padded["intermediate"] / (h * i) - 1)
    return tuple(
        Padding(dimension=dim, original=orig, padded=padded[dim], multiple_of=multiples[dim],
                extra_weight_memory_pct=round(extra, 2), extra_flops_pct=round(extra, 2))
        for dim, orig in (("hidden", h), ("intermediate", i)) if padded[dim] != orig)


# --- Resolution ---------------------------------------------------------------------------------


def _fingerprint(registry: Registry, layer: LayerSpec, device: DeviceSpec, env: Environment, policy: Policy,
                 force: str | None, prefer: tuple[str, ...], forbid: tuple[str, ...]) -> str:
    text = "\n".join((registry.digest, layer.shape_key().model_dump_json(), device.model_dump_json(),
                      env.model_dump_json(), policy.key(), repr((force, prefer, forbid))))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4096)
def _resolve(registry: Registry, layer: LayerSpec, device: DeviceSpec, env: Environment, policy: Policy,
             force: str | None, force_origin: str, prefer: tuple[str, ...], forbid: tuple[str, ...]) -> Selection:
    declarations = registry.declarations()
    for name in (force, *prefer, *forbid):
        if name is not None:
            registry.get(name)  # UnknownBackend for a typo, before anything else
    candidates: list[Candidate] = []
    rejections: list[Rejection] = []
    verdicts: dict[str, _Verdict] = {}
    for d in declarations:
        v = evaluate(d, layer, device, env, policy, declarations)
        if d.id in forbid:
            v.reject(ReasonCode.FORBIDDEN, "forbid", "not forbidden", "forbidden",
                     f"{d.name} is forbidden by the caller", "remove it from forbid / --forbid")
        verdicts[d.id] = v
        if v.reasons:
            rejections.append(Rejection(backend=d.id, reasons=tuple(v.reasons), notes=tuple(v.notes)))
        else:
            candidates.append(Candidate(backend=d.id, priority=d.priority.get(layer.quant.family, 0),
                                        padding=_paddings(layer, v.padding), notes=tuple(v.notes)))
    if force is not None:
        if verdicts[force].reasons:
            raise BackendNotEligible(force, layer, tuple(verdicts[force].reasons), origin=force_origin)
        chosen = next(c for c in candidates if c.backend == force)
        ordered = [chosen] + [c for c in candidates if c.backend != force]
        decided_by: DecidedBy = "env" if force_origin == "env" else "forced"
        policy_notes: tuple[Note, ...] = ()
    else:
        if not candidates:
            raise NoEligibleBackend(layer, tuple(rejections))
        ordered, decided_by, policy_notes = policy.order(candidates, layer, device)
        preferred = next((c for p in prefer for c in ordered if c.backend == p), None)
        if preferred is not None:
            ordered = [preferred] + [c for c in ordered if c is not preferred]
            decided_by = "preferred"
    chosen = ordered[0]
    engines = registry.get(chosen.backend).engines
    return Selection(
        layer=layer, device=device, planning=env.planning, backend=chosen.backend, decided_by=decided_by,
        padding=chosen.padding, notes=chosen.notes + policy_notes, eligible=tuple(ordered),
        rejections=tuple(rejections),
        engines={k: v for k, v in (("vllm", engines.vllm), ("sglang", engines.sglang), ("trtllm", engines.trtllm)) if v},
        fingerprint=_fingerprint(registry, layer, device, env, policy, force, prefer, forbid))


def select_backend(layer_spec: LayerSpec, device: DeviceSpec | str | None = None, *, force: str | None = None,
                   prefer: Iterable[str] = (), forbid: Iterable[str] = (), policy: Policy | None = None,
                   registry: Registry | None = None) -> Selection:
    """Pick the backend for one layer.

    ``device=None`` selects for this machine: it is detected, and installed packages and built
    kernels are checked. A named device (a preset name or DeviceSpec) plans for that target:
    packages are assumed installable and the assumption is noted.
    ``force`` (or the ``MOE_REGISTRY_BACKEND`` environment variable) pins a backend and raises
    BackendNotEligible with every reason if it cannot run the layer; ``prefer`` puts eligible
    backends first in the given order; ``forbid`` rejects backends. With no eligible backend,
    NoEligibleBackend carries every rejection.
    """
    registry = registry or default_registry()
    if not isinstance(layer_spec, LayerSpec):
        raise InvalidArgument(f"select_backend needs a LayerSpec, got {type(layer_spec).__name__}")
    prefer, forbid = _backend_ids("prefer", prefer), _backend_ids("forbid", forbid)
    if force is not None and not isinstance(force, str):
        raise InvalidArgument(f"force must be a backend id (str) or None, got {type(force).__name__}")
    if policy is not None and not all(hasattr(policy, a) for a in ("order", "key", "allow_padding", "exact_activations")):
        raise InvalidArgument(f"policy must be a Policy (DeclaredPriority, MeasuredPolicy, ...), got {type(policy).__name__}")
    if device is None:
        target, env = detect(), registry.environment()
    elif _is_torch_device(device):  # the device kernels will run on: this machine, packages checked
        target, env = _torch_target(device), registry.environment()
    elif isinstance(device, (str, DeviceSpec)):
        target = get_device(device) if isinstance(device, str) else device
        env = Environment.planning_target()
    else:
        raise InvalidDevice(f"device must be a preset name, a DeviceSpec, a torch.device or None, "
                            f"got {type(device).__name__}")
    origin = "forced"
    if force is None and os.environ.get(ENV_FORCE):
        force, origin = os.environ[ENV_FORCE].strip(), "env"
    selection = _resolve(registry, layer_spec.shape_key(), target, env, policy or DEFAULT_POLICY,
                         force, origin, tuple(prefer), tuple(forbid))
    if layer_spec.name is None and layer_spec.index is None:
        return selection
    return selection.model_copy(update={"layer": layer_spec})


DEFAULT_POLICY = DeclaredPriority()


def _backend_ids(what: str, ids: object) -> tuple[str, ...]:
    if isinstance(ids, str) or not isinstance(ids, Iterable):
        raise InvalidArgument(f"{what} must be a list of backend ids, got {type(ids).__name__}")
    ids = tuple(ids)
    if not all(isinstance(i, str) for i in ids):
        raise InvalidArgument(f"{what} must be a list of backend ids (str)")
    return ids


def _is_torch_device(device: object) -> bool:
    return type(device).__module__ == "torch" and type(device).__name__ == "device"  # no torch import


def _torch_target(device) -> DeviceSpec:
    if device.type == "cpu":
        return PRESETS["cpu"]
    if device.type == "cuda":
        found = detect()
        if found.vendor != "cpu":
            return found
        raise InvalidDevice(f"{device} requested but this machine has no CUDA device")
    raise InvalidDevice(f"torch device type {device.type!r} has no fused-MoE backends (cpu or cuda)")
