"""Selection: which backend runs one MoE layer on one device, and every reason the others lost.

Pure and deterministic over (declarations, LayerSpec, DeviceSpec, Environment, policy, force,
prefer, forbid): every rule of every declaration is evaluated and every failure is kept, each
with a hint of what would make the backend eligible. Results are cached. No torch import.

One module per job: ``policy`` (the Policy protocol, DeclaredPriority), ``padding`` (the sizes a
backend pads to and what that costs), ``rules`` (every rule of one declaration: ``evaluate``,
``judge``); this one resolves a selection (``select_backend``). Patch a function in the module
that uses it, not here.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Iterable

from ..environment import Environment, backend_override
from ..errors import BackendNotEligible, InvalidArgument, InvalidDevice, NoEligibleBackend
from ..registry import Registry, default_registry
from ..schemas.capability import Dimension, QuantSupport
from ..schemas.device import PRESETS, DeviceSpec, get_device
from ..schemas.layer import LayerSpec
from ..schemas.selection import Candidate, DecidedBy, Note, PhaseChoice, Reason, ReasonCode, Rejection, Selection
from .padding import _paddings
from .policy import DeclaredPriority, Policy
from .rules import Judgement, _Verdict, evaluate, judge

__all__ = ["DEFAULT_POLICY", "DeclaredPriority", "Judgement", "Policy", "evaluate", "judge", "select_backend"]


def _held(layer: LayerSpec, support: QuantSupport | None, sizes: dict[Dimension, int]) -> tuple[int | None, str]:
    """(per-rank expert weight bytes of the layer as the backend holds them, what it holds)."""
    if support is None:
        return None, ""
    if not support.dequantized_at_load:
        return layer.expert_weight_bytes(sizes["hidden"], sizes["intermediate"]), layer.quant.label()
    bits = support.dequantized_bits
    held = "fp32" if bits == 32 else layer.dtype if layer.dtype in ("bf16", "fp16") else "bf16"
    return (layer.expert_weight_bytes(sizes["hidden"], sizes["intermediate"], held_bits=bits),
            f"{held} (dequantized from {layer.quant.label()})")


def _fingerprint(registry: Registry, layer: LayerSpec, device: DeviceSpec, env: Environment, policy: Policy,
                 force: str | None, prefer: tuple[str, ...], forbid: tuple[str, ...],
                 extra: tuple[tuple[str, Reason], ...] = ()) -> str:
    # The environment's device and override are already in (device, force): left out, so that
    # fingerprints are the same whether the environment was passed or detected.
    text = "\n".join((registry.digest, layer.shape_key().model_dump_json(), device.model_dump_json(),
                      env.model_dump_json(exclude={"device", "backend_override"}), policy.key(), repr((force, prefer, forbid)),
                      *(f"{b}:{r.model_dump_json()}" for b, r in extra)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4096)
def _resolve(registry: Registry, layer: LayerSpec, device: DeviceSpec, env: Environment, policy: Policy,
             force: str | None, force_origin: str, prefer: tuple[str, ...], forbid: tuple[str, ...],
             extra: tuple[tuple[str, Reason], ...] = ()) -> Selection:
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
        v.reasons += [reason for backend, reason in extra if backend == d.id]
        verdicts[d.id] = v
        if v.reasons:
            rejections.append(Rejection(backend=d.id, reasons=tuple(v.reasons), notes=tuple(v.notes)))
        else:
            held_bytes, held = _held(layer, v.support, v.sizes)
            candidates.append(Candidate(backend=d.id, priority=d.priority_for(layer.quant.family, device, layer),
                                        padding=_paddings(layer, v.padding), notes=tuple(v.notes),
                                        expert_weight_bytes=held_bytes, weights_held=held))
    if force is not None:
        if verdicts[force].reasons:
            raise BackendNotEligible(force, layer, tuple(verdicts[force].reasons), origin=force_origin)
        chosen = next(c for c in candidates if c.backend == force)
        ordered = [chosen] + [c for c in candidates if c.backend != force]
        decided_by: DecidedBy = "env" if force_origin == "env" else "forced"
        policy_notes: tuple[Note, ...] = ()
        phases: tuple[PhaseChoice, ...] = ()
    else:
        if not candidates:
            raise NoEligibleBackend(layer, tuple(rejections))
        ordered, decided_by, policy_notes = policy.order(candidates, layer, device)
        # A policy that can tell decode from prefill (the measured one) names a backend for each.
        by_phase = getattr(policy, "phases", None)
        phases, phase_notes = by_phase(candidates, layer, device) if callable(by_phase) else ((), ())
        policy_notes += phase_notes
        preferred = next((c for p in prefer for c in ordered if c.backend == p), None)
        if preferred is not None:
            ordered = [preferred] + [c for c in ordered if c is not preferred]
            decided_by = "preferred"
    chosen = ordered[0]
    engines = registry.get(chosen.backend).engines
    return Selection(
        layer=layer, device=device, planning=env.planning, backend=chosen.backend, decided_by=decided_by,
        padding=chosen.padding, notes=chosen.notes + policy_notes, eligible=tuple(ordered),
        rejections=tuple(rejections), phases=phases,
        engines={k: v for k, v in (("vllm", engines.vllm), ("sglang", engines.sglang_flag(layer.quant.kind)),
                                    ("trtllm", engines.trtllm)) if v},
        fingerprint=_fingerprint(registry, layer, device, env, policy, force, prefer, forbid, extra))


def select_backend(layer_spec: LayerSpec, device: DeviceSpec | str | None = None, *, force: str | None = None,
                   prefer: Iterable[str] = (), forbid: Iterable[str] = (), policy: Policy | None = None,
                   registry: Registry | None = None, extra_reasons: Iterable[tuple[str, Reason]] = (),
                   environment: Environment | None = None) -> Selection:
    """Pick the backend for one layer.

    ``device=None`` selects for this machine: it is detected, and installed packages and built
    kernels are checked. A named device (a preset name or DeviceSpec) plans for that target:
    packages are assumed installable and the assumption is noted.
    ``force`` (or the ``MOE_REGISTRY_BACKEND`` environment variable) pins a backend and raises
    BackendNotEligible with every reason if it cannot run the layer; ``prefer`` puts eligible
    backends first in the given order; ``forbid`` rejects backends. ``extra_reasons`` are
    (backend, Reason) pairs decided outside this one layer (the planner's whole-model memory fit),
    kept like any other reason. With no eligible backend, NoEligibleBackend carries every rejection.

    ``environment`` is the machine the kernels will run on (installed packages, built kernels,
    accelerator, ``$MOE_REGISTRY_BACKEND``); given, selection does no I/O (beyond the default
    registry loading its plugins on first use): ``device=None`` and a CUDA torch device mean
    ``environment.device``, and a named device is checked against the environment's software as
    given. Left out, this machine is detected (``Registry.detect_environment()``) for
    ``device=None`` or a torch device, and a named device is planned for
    (``Environment.planning_target()``).
    """
    if registry is not None and not isinstance(registry, Registry):
        raise InvalidArgument(f"registry must be a Registry, got {type(registry).__name__}")
    registry = default_registry() if registry is None else registry
    if not isinstance(layer_spec, LayerSpec):
        raise InvalidArgument(f"select_backend needs a LayerSpec, got {type(layer_spec).__name__}")
    prefer, forbid = _backend_ids("prefer", prefer), _backend_ids("forbid", forbid)
    if force is not None and not isinstance(force, str):
        raise InvalidArgument(f"force must be a backend id (str) or None, got {type(force).__name__}")
    if policy is not None and not all(hasattr(policy, a) for a in ("order", "key", "allow_padding", "exact_activations")):
        raise InvalidArgument(f"policy must be a Policy (DeclaredPriority, MeasuredPolicy, ...), got {type(policy).__name__}")
    if environment is not None and not isinstance(environment, Environment):
        raise InvalidArgument(f"environment must be an Environment, got {type(environment).__name__}")
    if device is None:  # the machine kernels will run on: packages checked
        env = environment if environment is not None else registry.detect_environment()
        if env.device is None:
            raise InvalidDevice("this environment names no device (a planning environment): pass device=")
        target = env.device
    elif _is_torch_device(device):
        env = environment if environment is not None else registry.detect_environment()
        target = _torch_target(device, env)
    elif isinstance(device, (str, DeviceSpec)):
        target = get_device(device) if isinstance(device, str) else device
        env = environment if environment is not None else Environment.planning_target(
            backend_override=backend_override())
    else:
        raise InvalidDevice(f"device must be a preset name, a DeviceSpec, a torch.device or None, "
                            f"got {type(device).__name__}")
    origin = "forced"
    if force is None and env.backend_override is not None:
        force, origin = env.backend_override, "env"
    selection = _resolve(registry, layer_spec.shape_key(), target, env, policy or DEFAULT_POLICY,
                         force, origin, tuple(prefer), tuple(forbid), _extra_reasons(extra_reasons))
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


def _extra_reasons(pairs: object) -> tuple[tuple[str, Reason], ...]:
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise InvalidArgument(f"extra_reasons must be (backend id, Reason) pairs, got {type(pairs).__name__}")
    found = tuple(pairs)
    for pair in found:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], Reason)):
            raise InvalidArgument(f"extra_reasons must be (backend id, Reason) pairs, got {type(pair).__name__}")
    return found


def _is_torch_device(device: object) -> bool:
    return type(device).__module__ == "torch" and type(device).__name__ == "device"  # no torch import


def _torch_target(device, env: Environment) -> DeviceSpec:
    if device.type == "cpu":
        return PRESETS["cpu"]
    if device.type == "cuda":
        found = env.device
        if found is not None and found.vendor != "cpu":
            return found
        raise InvalidDevice(f"{device} requested but this machine has no CUDA device")
    raise InvalidDevice(f"torch device type {device.type!r} has no fused-MoE backends (cpu or cuda)")
