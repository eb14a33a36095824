"""Planning one loaded source: its MoE layers as LayerSpecs (:func:`_plan`), each layer's
quantization scheme, and one backend selection per distinct layer with the whole-model memory fit
(:func:`_select`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from ..environment import Environment, detect_device
from ..errors import one_line, validation_one_line
from ..memory import MemoryFit
from ..quant_config import (
    PlanError,
    QuantConfig,
    QuantConfigError,
    override_quant,
    unquantized_scheme,
)
from ..schemas.device import DeviceSpec, get_device
from ..schemas.layer import MAX_LAYERS, LayerSpec, ParallelConfig
from ..schemas.quant import QuantScheme
from ..schemas.selection import Note, Selection
from .reading import (
    _EXPERT_KEYS,
    _FAMILIES,
    _REFUSED_KEYS,
    _TOPK_KEYS,
    _WIDTH_KEYS,
    _activation,
    _dbrx_view,
    _dtype,
    _expert_dtype,
    _heads,
    _moe_indices,
    _name_template,
    _pick_text_config,
    _quant_of,
    _Reader,
    _routing,
)
from .results import (
    InvalidLayer,
    LayerPlan,
    MalformedConfig,
    ModelPlan,
    NotAMoEModel,
    ParallelismError,
    SelectionUnavailable,
)
from .sources import _Source

_PACKAGE = __package__.rpartition(".")[0]  # moe_registry: _select imports ..selection lazily


def _plan(src: _Source, *, device: DeviceSpec | str | None, parallel: ParallelConfig,
          quant: QuantScheme | str | None, select: bool, select_kwargs: dict[str, Any], memory_mode: str) -> ModelPlan:
    _check_arguments(device, parallel, quant)
    return _read(src, device, quant)(parallel, select, select_kwargs, memory_mode)


def _check_arguments(device: object, parallel: object, quant: object) -> None:
    if not isinstance(parallel, ParallelConfig):
        raise PlanError(f"parallel must be a ParallelConfig, got {type(parallel).__name__}")
    if quant is not None and not isinstance(quant, (QuantScheme, str)):
        raise PlanError(f"quant must be a QuantScheme or a string such as 'nvfp4', got {type(quant).__name__}")
    if device is not None and not isinstance(device, (DeviceSpec, str)):
        raise PlanError(f"device must be a preset name or a DeviceSpec, got {type(device).__name__}")


_Layout = Callable[[ParallelConfig, bool, dict[str, Any], str], ModelPlan]  # see _read


def _read(src: _Source, device: DeviceSpec | str | None, quant: QuantScheme | str | None) -> _Layout:
    """Read a source (its config, its quantization config): the function that plans it on a layout
    (``parallel, select, select_kwargs, memory_mode``). It reads nothing again, and resolves each
    layer's quantization scheme once for all the layouts it plans (``explain``'s suggestions)."""
    config = src.config
    text, wrapper = _pick_text_config(config)
    where = src.source if text is config else f"{src.source} text_config"
    model_type = str(text.get("model_type") or config.get("model_type") or "").lower()
    if model_type == "dbrx":
        text = _dbrx_view(text, where)
    r = _Reader(text, where)
    notes: list[str] = []

    for key, refuse in _REFUSED_KEYS.items():
        reason = refuse(text.get(key))
        if reason:
            raise MalformedConfig(f"{where}: {reason}")
    if r.first(_EXPERT_KEYS) is None:
        kind = model_type or "unknown model_type"
        raise NotAMoEModel(f"{where} ({kind}) declares no routed experts "
                           f"(none of {', '.join(_EXPERT_KEYS)}); not a MoE model")
    num_layers = r.required_int(("num_hidden_layers",))
    if num_layers > MAX_LAYERS:
        raise MalformedConfig(f"{where}: num_hidden_layers {num_layers} is above the limit of {MAX_LAYERS}")
    expert_key, experts = r.per_layer(_EXPERT_KEYS, num_layers, minimum=0)
    if not any(experts):
        raise NotAMoEModel(f"{where}: {expert_key} is 0; not a MoE model")
    _, top_ks = r.per_layer(_TOPK_KEYS, num_layers)
    _, widths = r.per_layer(_WIDTH_KEYS, num_layers)
    hidden = r.required_int(("hidden_size",))
    latent = r.cfg.get("moe_latent_size")
    if latent is not None:
        # Nemotron 3 Super LatentMoE: fc1_latent_proj (hidden -> latent) runs before the experts and
        # fc2_latent_proj after, so the expert GEMMs see the latent width (vLLM nemotron_h.py NemotronHMoE).
        latent = r.integer("moe_latent_size", latent, minimum=1)
        notes.append(f"moe_latent_size {latent}: experts take the {latent}-wide latent, not hidden_size {hidden} "
                     "(the latent projections run outside the experts)")
        hidden = latent

    family = _FAMILIES.get(model_type, "generic")
    if family == "generic":
        notes.append(f"model_type {model_type or '(none)'!r} is not a known MoE family: routing is unknown "
                     "(rules that need it abstain) and layer names assume model.layers.N.mlp.experts")

    indices, rule = _moe_indices(r, num_layers)
    indices = [i for i in indices if experts[i] > 1]  # Jamba-style lists give dense layers 1 expert
    if not indices:
        raise NotAMoEModel(f"{where}: no layer is a MoE layer ({rule})")
    notes.append(f"{len(indices)} of {num_layers} layers are MoE ({rule})")
    if isinstance(text.get("num_hash_layers"), int) and text["num_hash_layers"] > 0:
        notes.append(f"the first {text['num_hash_layers']} MoE layers route by a token-id hash table (custom routing)")
    if isinstance(device, str):
        try:
            device = get_device(device)
        except ValueError as exc:
            raise PlanError(str(exc)) from None

    activation, act_params, bias = _activation(family, model_type, r, notes)
    routing, weight_on_input = _routing(family, text)
    dtype = _dtype(text, config)
    no_bf16 = device is not None and device.vendor == "nvidia" and device.sm is not None and device.sm < 80
    if device is not None and dtype == "bf16" and no_bf16:
        # vLLM 0.33.0 config/model.py _resolve_auto_dtype + platforms/cuda.py supported_dtypes: no bf16 below SM80
        notes.append(f"{device.label()} has no bf16: planned in fp16, as engines run it (vLLM --dtype auto)")
        dtype = "fp16"

    # Quantization
    if quant is not None:
        qconf: QuantConfig | None = override_quant(quant)
        expert_scheme = None
    else:
        qconf = _quant_of(src, config, text, dtype, len(indices))
        expert_scheme = _expert_dtype(r, qconf, notes)
    unquantized = unquantized_scheme(dtype)
    attention_heads, kv_heads = _heads(r)

    # Layers
    template = _name_template(model_type, family, wrapper)
    target: DeviceSpec | None = device
    schemes: dict[str, QuantScheme] = {}  # per layer name: the same on every layout

    def layout(parallel: ParallelConfig, select: bool, select_kwargs: dict[str, Any],
               memory_mode: str = "prefer") -> ModelPlan:
        specs: list[LayerSpec] = []
        keys: list[LayerSpec] = []  # each layer's shape key (LayerSpec.shape_key): what selection depends on
        shapes: dict[tuple, LayerSpec] = {}
        for i in indices:
            name = template.format(i=i)
            scheme = schemes.get(name)
            if scheme is None:
                scheme = _scheme_for(qconf, name, unquantized)
                if expert_scheme is not None and scheme != unquantized:
                    scheme = expert_scheme
                schemes[name] = scheme
            # The config's values are validated once per distinct layer, as its shape key; the layer
            # adds only its own name and index (a string we format, an index below MAX_LAYERS).
            shape = (experts[i], top_ks[i], widths[i], scheme)
            key = shapes.get(shape)
            if key is None:
                try:
                    key = shapes[shape] = LayerSpec(
                        num_experts=experts[i], top_k=top_ks[i], hidden_size=hidden, intermediate_size=widths[i],
                        activation=activation, activation_params=act_params, quant=scheme, dtype=dtype,
                        routing=routing, bias=bias, apply_router_weight_on_input=weight_on_input, parallel=parallel,
                        attention_heads=attention_heads, kv_heads=kv_heads)
                except ValidationError as exc:
                    cls = ParallelismError if (widths[i] % parallel.tp or experts[i] % parallel.ep) else InvalidLayer
                    raise cls(f"{name} (layer {i}): {validation_one_line(exc, first_only=True)}") from None
            keys.append(key)
            specs.append(key.model_copy(update={"name": name, "index": i}))

        _check_attention_tp(parallel, attention_heads, kv_heads, where)
        summary = qconf.summary if qconf else unquantized.label()
        if expert_scheme is not None:
            summary += f"; routed experts {expert_scheme.label()} (expert_dtype fp4)"
        memory = None
        if select:
            layers, memory = _select(specs, keys, target, select_kwargs, memory_mode)
        else:
            layers = tuple(LayerPlan(layer=s) for s in specs)
        return ModelPlan(model=src.model, model_id=src.model_id, source=src.source, provenance=src.provenance,
                         device=target, parallel=parallel, quantization=summary,
                         model_type=model_type or None, quant_method=qconf.method if qconf else None,
                         # only an FP8 config has it (its parser module is imported when a checkpoint needs it)
                         fp8_static_activations=bool(getattr(qconf, "static_activations", False)),
                         num_hidden_layers=num_layers, layers=layers, notes=tuple(notes), memory=memory)

    return layout


def _not_for_deployment(target: DeviceSpec, kwargs: dict[str, Any]) -> tuple:
    """For a GPU target, a ``known_limitation`` reason for every declaration that is not a deployment
    kernel (``BackendCapability.not_for_deployment``: the fp32 reference), so a plan for a GPU never
    rests on it: its layers have no backend (exit 3) with every real backend's reasons instead."""
    if target.vendor == "cpu":
        return ()
    from ..registry import default_registry
    from ..schemas.selection import Reason, ReasonCode

    registry = kwargs.get("registry") or default_registry()
    return tuple((d.id, Reason(code=ReasonCode.KNOWN_LIMITATION, field="backend", required="a deployment kernel",
                               actual="test oracle", message=f"{d.id}: {d.not_for_deployment}",
                               hint="plan for a CPU (--device cpu) to run it"))
                 for d in registry.declarations() if d.not_for_deployment)


def _check_attention_tp(parallel: ParallelConfig, heads: int | None, kv_heads: int | None, where: str) -> None:
    """The engine's attention TP (the GPUs over the DP replicas) must divide the attention heads and
    divide or be a multiple of the KV heads (vLLM 0.33.0 config/model.py verify_with_parallel_config;
    QKVParallelLinear replicates KV heads): else the engine refuses the layout before any MoE layer."""
    from .layouts import attention_tp

    tp = attention_tp(parallel)
    probe = LayerSpec(num_experts=2, top_k=1, hidden_size=8, intermediate_size=8, attention_heads=heads,
                      kv_heads=kv_heads)
    if tp > 1 and not probe.runnable_tp(tp):
        kv = f" and {kv_heads} KV heads" if kv_heads else ""
        raise ParallelismError(f"{where}: attention TP{tp} does not suit {heads} attention heads{kv} (the engines "
                               f"refuse it); TP sizes that do: {', '.join(str(t) for t in range(1, 65) if probe.runnable_tp(t))}")


def _scheme_for(qconf: QuantConfig | None, name: str, unquantized: QuantScheme) -> QuantScheme:
    if qconf is None:
        return unquantized
    try:
        return qconf.scheme_for(name)
    except (TypeError, AttributeError, KeyError, IndexError) as exc:  # a field of an unexpected JSON type
        raise QuantConfigError(f"{qconf.source}: malformed quantization config for {name} "
                               f"({one_line(exc)})") from None


def _select(specs: list[LayerSpec], keys: list[LayerSpec], device: DeviceSpec | None, kwargs: dict[str, Any],
            memory_mode: str) -> tuple[tuple[LayerPlan, ...], "MemoryFit | None"]:
    """Select each layer of ``specs`` once per distinct shape key (``keys``, one per spec)."""
    try:
        from ..selection import select_backend
    except ModuleNotFoundError as exc:
        if exc.name != f"{_PACKAGE}.selection":
            raise
        raise SelectionUnavailable("backend selection is not available (moe_registry.selection is missing); "
                                   "plan with select=False") from None
    from ..errors import NoEligibleBackend
    from ..memory import MEMORY_MODES, fit, split
    if memory_mode not in MEMORY_MODES:
        raise PlanError(f"unknown memory mode {memory_mode!r}; one of {', '.join(MEMORY_MODES)}")

    counts: dict[LayerSpec, int] = {}
    for key in keys:  # identical layers are selected once, without name and index
        counts[key] = counts.get(key, 0) + 1

    results: dict[tuple[LayerSpec, tuple], Selection | NoEligibleBackend] = {}
    oracles: tuple = ()  # set below once the target is known: test oracles rejected on a GPU

    def select_key(key: LayerSpec, extra: tuple = ()) -> Selection | NoEligibleBackend:
        extra = oracles + tuple(extra)
        if (key, extra) not in results:
            try:
                more: dict[str, Any] = {"extra_reasons": extra} if extra else {}
                results[key, extra] = select_backend(key, device, **more, **kwargs)
            except NoEligibleBackend as exc:  # recorded, so the other layers are still planned
                results[key, extra] = exc
        return results[key, extra]

    # Memory fit is a function of the whole plan: it adds memory_exceeded reasons, then selection reruns.
    environment = kwargs.get("environment")
    if device is not None:
        target = device
    elif environment is None:
        target = detect_device()
    elif isinstance(environment, Environment) and environment.device is not None:
        target = environment.device
    else:
        raise PlanError("a planning environment names no device: pass device=" if isinstance(environment, Environment)
                        else f"environment must be an Environment, got {type(environment).__name__}")
    oracles = _not_for_deployment(target, kwargs)
    extras, memory = fit(counts, lambda k, e: (r if isinstance(r := select_key(k, e), Selection) else None),
                         target, memory_mode)
    done: dict[LayerSpec, LayerPlan] = {}
    for key in counts:
        result = select_key(key, extras[key])
        if isinstance(result, Selection) and memory.phases_dropped and split(result):
            result = result.model_copy(update={"phases": (), "notes": result.notes + (Note(kind="memory", message=(
                f"{result.backend} serves decode and prefill: the measured split ("
                f"{', '.join(f'{p.phase} {p.backend}' for p in result.phases)}) would hold two copies of the expert "
                "weights, over the memory budget")),)})
        if isinstance(result, Selection):
            done[key] = LayerPlan(layer=key, selection=result)
        else:
            # A NoEligibleBackend: its message starts "no backend can run ...", its rejections are all there.
            done[key] = LayerPlan(layer=key, error=str(result).splitlines()[0], rejections=result.rejections)
    return tuple(done[key].model_copy(update={"layer": spec}) for spec, key in zip(specs, keys)), memory
