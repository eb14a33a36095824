"""Rules: every rule of one declaration against one layer, each failure with a hint (``evaluate``,
``judge``). Pure: no torch, no I/O."""

# No `from __future__ import annotations`: string annotations cost a compile() each when pydantic or
# NamedTuple reads them at import, which explain's start-up counts (issue 20).

import math
from typing import NamedTuple, Sequence

from ..environment import Environment
from ..schemas.activation import Activation, SwigluOAIParams
from ..schemas.capability import BackendCapability, Dimension, QuantSupport, dimension_value
from ..schemas.device import PRESETS, DeviceSpec
from ..schemas.layer import LayerSpec
from ..schemas.selection import Note, Padding, Reason, ReasonCode
from .padding import _pad_multiples, _padded_sizes, _paddings, _round_up, _tp_split_group
from .policy import DeclaredPriority, Policy


def _targets_satisfying(predicate) -> str:
    names = [d.name for d in PRESETS.values() if d.vendor != "cpu" and not d.name.startswith("sm") and predicate(d)]
    return ", ".join(names)


def _device_rule_hint(rules) -> str:
    where = _targets_satisfying(lambda d: any(r.matches(d) for r in rules))
    needs = " or ".join(r.describe() for r in rules)
    return f"would be eligible on {needs}" + (f" (e.g. {where})" if where else "")


class _Verdict:
    """What the rules found so far about one declaration for one layer (filled in place). A plain
    class, not a dataclass: a dataclass costs an exec() per generated method at import, which
    explain's start-up counts (issue 20)."""

    __slots__ = ("reasons", "notes", "padding", "sizes", "support")

    def __init__(self) -> None:
        self.reasons: list[Reason] = []
        self.notes: list[Note] = []
        self.padding: dict[Dimension, int] = {}  # dimension -> multiple
        self.sizes: dict[Dimension, int] = {}  # per-rank sizes the kernel sees
        self.support: QuantSupport | None = None  # the scheme support that runs the layer, if any

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


def _check_dtype_device(d: BackendCapability, layer: LayerSpec, device: DeviceSpec, v: _Verdict) -> None:
    """A dtype the backend runs on only some of its devices (DTypeRule); silent on a device the
    backend does not run on at all (that is the device rule's reason)."""
    if not any(rule.matches(device) for rule in d.devices):
        return
    for rule in d.dtype_devices:
        if rule.dtype != layer.dtype or any(r.matches(device) for r in rule.devices):
            continue
        needs = " or ".join(r.describe() for r in rule.devices)
        here = [t for t in d.dtypes if t != layer.dtype and all(
            any(r.matches(device) for r in other.devices) for other in d.dtype_devices if other.dtype == t)]
        hint = "; ".join(filter(None, [f"{' or '.join(here)} hidden states run on {device.label()}" if here else "",
                                       _device_rule_hint(rule.devices)]))
        v.reject(ReasonCode.DTYPE_UNSUPPORTED, "dtype.device", f"{layer.dtype} on {needs}",
                 f"{layer.dtype} on {device.label()}",
                 f"{d.name} runs {layer.dtype} hidden states only on {needs}; {device.label()} is not", hint,
                 rule.source)


def _check_activation(d: BackendCapability, layer: LayerSpec, policy: Policy,
                      others: Sequence[BackendCapability], v: _Verdict, planning: bool = True) -> None:
    act = layer.activation
    impl = d.activations.get(act)
    if impl is not None and not impl.adapter_implemented:
        if not planning:
            v.reject(ReasonCode.ADAPTER_MISSING, "activation", f"{act.value} in the adapter", "not implemented",
                     f"{d.name} runs {act.value}, but moe-registry's adapter does not pass it yet",
                     "plan with a named --device to see what an engine would run", impl.source)
            return
        v.notes.append(Note(kind="assumed", message=(
            f"{d.id} runs {act.value} in its engine; moe-registry's adapter cannot run it yet")))
    if impl is None:
        runs_it = [o.id for o in others if act in o.activations and o.id != d.id]
        hint = f"backends that run {act.value}: {', '.join(runs_it)}" if runs_it else ""
        hint += ("; " if hint else "") + ("if this kernel does run it, declare it in its activations "
                                          f"(verify with `moe-registry probe --backend {d.id}`)")
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
                ratio = support.dequantized_bits / layer.quant.weight_bits
                v.notes.append(Note(kind="memory", message=(
                    f"{d.id} dequantizes {kind.value} weights to {support.dequantized_bits}-bit when the layer is built: "
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
    """What parallel layout would satisfy a per-rank rule on the intermediate size: only layouts
    the model can run (EP must divide the experts; a TP size must suit its attention heads)."""
    tp, ep = layer.parallel.tp, layer.parallel.ep
    if dimension != "intermediate" or tp == 1:
        return ""
    full = layer.intermediate_size
    hints = []
    if ok(full) and layer.num_experts % (tp * ep) == 0:
        hints.append(f"expert parallelism over the TP group (EP{tp * ep}: vLLM --enable-expert-parallel, SGLang "
                     f"--ep-size {tp * ep}) keeps "
                     f"intermediate {full}")
    if ep == 1:
        smaller = [t for t in range(tp - 1, 0, -1) if full % t == 0 and ok(full // t) and layer.runnable_tp(t)]
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


def _check_format_groups(layer: LayerSpec, v: _Verdict, sizes: dict[Dimension, int] | None = None,
                         backend: BackendCapability | None = None) -> None:
    """A rank must hold whole scale groups along K (hidden for GEMM1, intermediate for GEMM2):
    a fact of the quantization format, so it applies to every backend alike.

    Where TP cuts through the groups of a checkpoint that holds whole groups (Gemma 4 NvFP4 at TP8:
    704 / 8 = 88, 5.5 groups of 16), ranks still hold whole groups if their shards are cut on the
    group grid: rank r takes columns [r*S, r*S + S) with S = round_up(I/tp, group), the last ranks
    zero-filled. That is vLLM's block-aligned TP loading for FP8 blocks (vLLM 0.33
    fused_moe/oracle/fp8.py L324-352 pad_tp_shard_to_weight_blocks, "Pad the TP shard to whole
    checkpoint blocks, keeping scales rank-local"; L296-301: a shard that is not whole blocks "makes
    the checkpoint's block scales impossible to shard exactly"; routed_experts.py L391-418 slices
    the checkpoint with the padded stride). Such a shard is wider than I/tp, so only a backend that
    pads the intermediate (``sizes`` then holds its padded width, a multiple of the group) can run
    it. tests/test_tp_scale_groups.py shows it exact, and vLLM's floor-sliced NvFP4 scales not."""
    group = layer.quant.scale_group_k
    if group is None:
        return
    for dimension in ("hidden", "intermediate"):
        value = dimension_value(layer, dimension)
        # A partial last group is fine where the format allows one, unless TP cuts through it.
        unsplit = dimension == "hidden" or layer.parallel.tp == 1
        if value % group == 0 or (layer.quant.partial_last_group and unsplit):
            continue
        if (dimension == "intermediate" and sizes is not None and backend is not None
                and _tp_split_group(layer) is not None and sizes["intermediate"] % group == 0
                and sizes["intermediate"] > value):
            stride = _round_up(value, group)
            v.notes.append(Note(kind="padding", message=(
                f"{backend.id}: per-rank intermediate {value} splits {layer.quant.kind.value}'s {group}-element "
                f"scale groups, so each rank holds whole groups: the checkpoint's {layer.intermediate_size} is "
                f"sharded on the group grid ({stride} per rank, the last rank zero-filled) and padded to "
                f"{sizes['intermediate']} (a loader's job: moe-registry's adapters take the rank's shard as given)")))
            hint = _parallel_hint(layer, dimension, lambda x: x % group == 0)
            if hint:
                v.notes.append(Note(kind="hint", message=f"{backend.id}: {hint} (whole scale groups per rank)"))
            continue
        hint = _parallel_hint(layer, dimension, lambda x: x % group == 0)
        if dimension == "intermediate" and backend is not None and sizes is not None and _tp_split_group(layer) \
                and any(r.pad and r.dimension == "intermediate" and r.when.matches(layer) for r in backend.shape_rules):
            hint = "; ".join(filter(None, [hint, "allow padding (ranks then hold whole groups)"]))
        v.reject(ReasonCode.SHAPE_UNALIGNED, dimension, f"multiple of {group}", str(value),
                 f"per-rank {dimension} {value} splits {layer.quant.kind.value}'s {group}-element scale groups",
                 hint, f"{layer.quant.kind.value} format: one scale per {group} K-elements")


def _check_shapes(d: BackendCapability, layer: LayerSpec, sizes: dict[Dimension, int], v: _Verdict) -> None:
    """Every shape rule, judged at the sizes the kernel sees (padded where the backend pads)."""
    for rule in d.shape_rules:
        if not rule.when.matches(layer, sizes):
            continue
        value = dimension_value(layer, rule.dimension, sizes)
        original = dimension_value(layer, rule.dimension)
        seen = str(value) if value == original else f"{original}, padded to {value}"
        scope = "" if rule.when == rule.when.__class__() else f" when {rule.when.describe()}"
        if rule.multiple_of is not None and value % rule.multiple_of:
            padded = _round_up(value, rule.multiple_of)
            hint = _parallel_hint(layer, rule.dimension, lambda x, m=rule.multiple_of: x % m == 0)
            if rule.pad:
                hint = "; ".join(filter(None, [hint, f"allow padding to {padded}"]))
            v.reject(ReasonCode.SHAPE_UNALIGNED, rule.dimension, f"multiple of {rule.multiple_of}{scope}", str(value),
                     f"{d.name} needs per-rank {rule.dimension} to be a multiple of {rule.multiple_of}{scope}; it is {seen}",
                     hint, rule.source)
        if (rule.min is not None and value < rule.min) or (rule.max is not None and value > rule.max):
            bounds = f"{rule.min if rule.min is not None else ''}..{rule.max if rule.max is not None else ''}"
            v.reject(ReasonCode.SHAPE_OUT_OF_RANGE, rule.dimension, bounds, str(value),
                     f"{d.name} needs per-rank {rule.dimension} in {bounds}{scope}; it is {seen}", source=rule.source)
    if d.max_experts is not None and layer.local_num_experts > d.max_experts:
        need = _smallest_ep(layer.num_experts, d.max_experts)
        v.reject(ReasonCode.SHAPE_OUT_OF_RANGE, "experts", f"<= {d.max_experts} per rank", str(layer.local_num_experts),
                 f"{d.name} runs at most {d.max_experts} experts per rank; this rank has {layer.local_num_experts}",
                 f"EP{need} gives {layer.num_experts // need} experts per rank" if need else "")
    if d.max_top_k is not None and layer.top_k > d.max_top_k:
        v.reject(ReasonCode.SHAPE_OUT_OF_RANGE, "top_k", f"<= {d.max_top_k}", str(layer.top_k),
                 f"{d.name} routes at most top-{d.max_top_k}; the layer uses top-{layer.top_k}")


def _check_limitations(d: BackendCapability, layer: LayerSpec, sizes: dict[Dimension, int], v: _Verdict) -> None:
    """Known limitations, judged at the padded sizes: the kernel never sees the unpadded ones."""
    padded = {dim: n for dim, n in sizes.items() if n != dimension_value(layer, dim)}
    seen = layer.describe() + "".join(f", per-rank {dim} padded to {n}" for dim, n in padded.items())
    for lim in d.limitations:
        if lim.when.matches(layer, sizes):
            v.reject(ReasonCode.KNOWN_LIMITATION, "layer", f"not ({lim.when.describe()})", seen,
                     f"{d.name}: {lim.reason}", lim.hint, lim.source)


def _limit_failures(d: BackendCapability, method, layer: LayerSpec) -> list[tuple[str, str, str, str]] | None:
    """None if the routing path (in-kernel ``method``, or precomputed for None) does not exist;
    else (field, required, actual, source) for each of its bounds the layer exceeds."""
    r = d.routing
    if (method is None and not r.precomputed) or (method is not None and method not in r.in_kernel):
        return None
    limit = r.limit_for(method)
    return [] if limit is None else [(*f, limit.source) for f in limit.failures(layer)]


def _check_routing(d: BackendCapability, layer: LayerSpec, v: _Verdict) -> None:
    """The layer's routing method runs in-kernel within that method's bounds, or the layer is routed
    outside and the precomputed path's bounds hold (what a ``*_routed_moe`` entry runs)."""
    method = layer.routing
    pre = _limit_failures(d, None, layer)
    inside = _limit_failures(d, method, layer) if method is not None else None
    if method is not None and inside == []:
        v.notes.append(Note(kind="routing", message=f"{d.id}: {method.value} routing runs inside the kernel"))
        return
    if pre == []:
        if method is not None and inside:
            v.notes.append(Note(kind="routing", message=(
                f"{d.id}: {method.value} exceeds the kernel's in-kernel bounds ("
                + "; ".join(f"{f} {req}" for f, req, _, _ in inside) + "); routed outside, precomputed top-k")))
        elif method is None:
            v.notes.append(Note(kind="abstained", message=(
                f"{d.id}: routing unknown, so the in-kernel routing rule abstained (unknown is not false)")))
        return
    if method is None and any(_limit_failures(d, m, layer) == [] for m in d.routing.in_kernel):
        v.notes.append(Note(kind="abstained", message=(
            f"{d.id}: routing unknown; some in-kernel routing methods fit, the precomputed path does not")))
        return
    if pre is None and inside is None:
        methods = ", ".join(m.value for m in d.routing.in_kernel)
        v.reject(ReasonCode.ROUTING_UNSUPPORTED, "routing", methods, method.value if method else "unknown",
                 f"{d.name} routes only {methods} and takes no precomputed top-k", source=d.routing.source)
        return
    for path, fails in (("precomputed top-k", pre), (f"in-kernel {method.value if method else ''} routing", inside)):
        for field, required, actual, source in fails or ():
            v.reject(ReasonCode.SHAPE_OUT_OF_RANGE, field, required, actual,
                     f"{d.name} {path} needs {field} {required}; the layer has {actual}", source=source)


def _check_routing_features(d: BackendCapability, layer: LayerSpec, v: _Verdict) -> None:
    _check_routing(d, layer, v)
    f = d.features
    if layer.bias and not f.bias:
        v.reject(ReasonCode.FEATURE_UNSUPPORTED, "bias", "no bias", "expert biases",
                 f"{d.name} does not apply expert biases", source=f.source)
    if layer.apply_router_weight_on_input and not f.apply_router_weight_on_input:
        v.reject(ReasonCode.FEATURE_UNSUPPORTED, "apply_router_weight_on_input", "router weight on output",
                 "router weight on input", f"{d.name} applies router weights to expert outputs only", source=f.source)
    p = layer.parallel
    # Hints only name layouts the layer can take (EP must divide the experts, TP the width and heads).
    if p.tp > 1 and not f.tensor_parallel:
        ranks = p.tp * p.ep
        hint = (f"expert parallelism over the TP group instead (EP{ranks}: vLLM --enable-expert-parallel, SGLang "
                f"--ep-size {ranks})"
                if f.expert_parallel and layer.num_experts % ranks == 0 else "")
        v.reject(ReasonCode.PARALLEL_UNSUPPORTED, "parallel.tp", "TP1", f"TP{p.tp}",
                 f"{d.name} does not support tensor-parallel experts", hint, f.source)
    if p.ep > 1 and not f.expert_parallel:
        ranks = p.tp * p.ep
        hint = (f"TP{ranks} without expert parallelism instead" if f.tensor_parallel
                and layer.intermediate_size % ranks == 0 and layer.runnable_tp(ranks) else "")
        v.reject(ReasonCode.PARALLEL_UNSUPPORTED, "parallel.ep", "EP1", f"EP{p.ep}",
                 f"{d.name} does not support expert parallelism", hint, f.source)


def _check_requirements(d: BackendCapability, layer: LayerSpec, device: DeviceSpec, env: Environment,
                        sizes: dict[Dimension, int], v: _Verdict) -> None:
    for req in d.requirements:
        if not req.when.matches(layer, sizes):
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
    _check_dtype_device(d, layer, device, v)
    _check_activation(d, layer, policy, declarations, v, env.planning)
    v.support = _check_quant(d, layer, device, env.planning, declarations, v)
    multiples = _pad_multiples(d, layer, policy)
    sizes = _padded_sizes(layer, multiples)
    v.sizes = sizes
    v.padding = {dim: m for dim, m in multiples.items() if sizes[dim] != dimension_value(layer, dim)}
    _check_format_groups(layer, v, sizes, d)
    _check_shapes(d, layer, sizes, v)
    _check_limitations(d, layer, sizes, v)
    _check_routing_features(d, layer, v)
    _check_requirements(d, layer, device, env, sizes, v)
    _qualify_activation_hint(v)
    return v


def _qualify_activation_hint(v: _Verdict) -> None:
    """A hint must be true as written: declaring the activation suffices only when nothing else fails."""
    for n, reason in enumerate(v.reasons):
        if reason.code is not ReasonCode.ACTIVATION_UNSUPPORTED or "declare it in its activations" not in reason.hint:
            continue
        others = sorted({r.code.value for r in v.reasons if r is not reason})
        extra = ("; that alone is not enough: it also fails on " + ", ".join(others)) if others else \
            "; that is the only change needed"
        v.reasons[n] = reason.model_copy(update={"hint": reason.hint + extra})


class Judgement(NamedTuple):  # not a frozen dataclass: ~4x cheaper to define, and explain's start-up counts (issue 20)
    """What selection decides about one declaration for one layer (see :func:`judge`)."""

    reasons: tuple[Reason, ...]  # every failed rule; none: the declaration covers the layer
    paddings: tuple[Padding, ...]  # the dimensions the backend pads for this layer
    format_rule_only: bool  # rejected, but only by the format-wide scale-group rule (no backend rule)

    @property
    def declared(self) -> bool:
        return not self.reasons


def judge(d: BackendCapability, layer: LayerSpec, device: DeviceSpec, env: Environment,
          declarations: Sequence[BackendCapability] = (), policy: Policy | None = None) -> Judgement:
    """One declaration against one layer, for tools that check declarations against kernels
    (``moe-registry probe``): exactly what :func:`evaluate` decides under ``policy`` (default:
    approximations accepted, padding allowed), with the paddings it implies, and whether the only
    rejections come from the quantization format's scale-group rule (a fact of the format that
    holds for every backend alike, not of this declaration)."""
    v = evaluate(d, layer, device, env, policy if policy is not None else DeclaredPriority(), declarations)
    fmt = _Verdict()
    _check_format_groups(layer, fmt)  # the format rule alone: no backend, no padded sizes
    own = [r for r in v.reasons if r not in fmt.reasons]
    return Judgement(reasons=tuple(v.reasons), paddings=_paddings(layer, v.padding),
                     format_rule_only=bool(v.reasons) and not own)
