"""Hooks inside vLLM that record, for every MoE layer vLLM builds, the candidates its oracle tried
with vLLM's own rejection reasons, the kernel it picked, and (enforce) pin the registry's choice where
vLLM's own code accepts it.

Two hooks, feature-detected (each ``install_*`` returns the missing hook's name instead of raising):

- ``RoutedExperts._get_quant_method`` (``fused_moe/routed_experts.py`` L268 in 0.34.0, L227 in 0.33.0):
  one call per layer, with the layer's prefix and ``FusedMoEConfig``, before weights exist. The wrapper
  opens a per-layer scope, calls vLLM, and keeps what vLLM chose (``quant_method.experts_cls``).
- where the candidates are judged: vLLM 0.34's ``MoEKernelOracle.try_backend`` (``oracle/base.py``
  L179), one method on the base class of every migrated oracle, returning every ``(class, reason)``
  it rejected; in 0.33 (no ``try_backend``) the generic gate ``FusedMoEExperts.is_supported_config``
  (``modular_kernel.py``), which gives each class's verdict but not the oracle's backend name, and
  misses rejections a class decides before the generic gate.

Nothing here raises into vLLM: a failure of ours is recorded as a note, vLLM's own exceptions pass
through unchanged.
"""

from __future__ import annotations

import contextvars
import copy
import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from .layer import LayerFacts, facts_from_vllm

log = logging.getLogger("vllm.moe_registry")


@dataclass
class Tried:
    """One candidate vLLM's oracle judged for the layer, in order."""

    backend: str  # the oracle's backend enum name ("FLASHINFER_TRTLLM"); "" where the hook cannot see it (0.33)
    experts_class: str
    reason: str | None  # vLLM's words; None: accepted

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "experts_class": self.experts_class, "reason": self.reason}


@dataclass
class LayerRecord:
    """vLLM's choice for one layer, and what enforce did."""

    prefix: str
    oracle: str | None = None  # the oracle's name ("Fp8", "NvFp4", ...)
    facts: LayerFacts | None = None
    tried: list[Tried] = field(default_factory=list)
    backend: str | None = None  # the backend enum vLLM settled on
    experts_class: str | None = None
    flag: str | None = None  # the --moe-backend key that forces it (vLLM's own map_*_backend, inverted)
    error: str | None = None  # vLLM refused the layer: its message
    pinned: str | None = None  # enforce: the --moe-backend key set on this layer
    note: str | None = None  # why enforce did not pin, or what could not be observed

    @property
    def rejected(self) -> list[Tried]:
        return [t for t in self.tried if t.reason is not None]

    def to_json(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "oracle": self.oracle, "backend": self.backend,
                "experts_class": self.experts_class, "flag": self.flag, "error": self.error, "pinned": self.pinned,
                "note": self.note,
                "tried": [t.to_json() for t in self.tried], "facts": self.facts.to_json() if self.facts else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LayerRecord":
        facts = LayerFacts.from_json(data["facts"]) if data.get("facts") else None
        return cls(prefix=data["prefix"], oracle=data.get("oracle"), facts=facts,
                   tried=[Tried(t["backend"], t["experts_class"], t["reason"]) for t in data.get("tried", [])],
                   backend=data.get("backend"), experts_class=data.get("experts_class"), flag=data.get("flag"),
                   error=data.get("error"),
                   pinned=data.get("pinned"), note=data.get("note"))


# decide(vLLM's auto record of the layer) -> (the --moe-backend key to pin or None, why not): enforce's policy.
Decide = Callable[["LayerRecord"], "tuple[str | None, str | None]"]


class _Scope:
    def __init__(self, prefix: str):
        self.record = LayerRecord(prefix)
        self.weight_key: Any = None
        self.activation_key: Any = None
        self.keys_seen = False
        self.oracle_module: str | None = None

    def oracle_called(self, oracle: Any, weight_key: Any, activation_key: Any) -> None:
        if not self.keys_seen:
            self.record.oracle = getattr(oracle, "name", None) if oracle is not None else None
            self.oracle_module = type(oracle).__module__ if oracle is not None else None
            self.weight_key, self.activation_key, self.keys_seen = weight_key, activation_key, True


_current: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("moe_registry_layer", default=None)


class Hooks:
    """The installed hooks' state for this process (one per process: :data:`HOOKS`)."""

    def __init__(self) -> None:
        self.records: list[LayerRecord] = []
        self.reported = 0  # records[:reported] were handed out by take_new()
        self.decide: Decide | None = None  # set: enforce
        self.installed: list[str] = []
        self._originals: dict[str, tuple[Any, str, Any]] = {}

    def take_new(self) -> list[LayerRecord]:
        """The records since the last call (the plugin reports once per model vLLM builds)."""
        new = self.records[self.reported:]
        self.reported = len(self.records)
        return new

    def reset(self) -> None:
        self.records.clear()
        self.reported = 0

    # --- installing -----------------------------------------------------------------------------

    def install_all(self, version: str) -> list[str]:
        """Import vLLM's modules and install every hook now (the executed child); return what is missing."""
        import importlib

        missing = []
        routed = importlib.import_module("vllm.model_executor.layers.fused_moe.routed_experts")
        judge = importlib.import_module("vllm.model_executor.layers.fused_moe." +
                                        ("modular_kernel" if version.startswith("0.33.") else "oracle.base"))
        for problem in (self.install_get_quant_method(routed), self.install_judge(judge)):
            if problem:
                missing.append(problem)
        return missing

    def install_get_quant_method(self, routed_experts_module: Any) -> str | None:
        """Wrap ``RoutedExperts._get_quant_method``; the missing hook's name if vLLM has none."""
        owner = getattr(routed_experts_module, "RoutedExperts", None)
        if owner is None or not callable(owner.__dict__.get("_get_quant_method")):
            return "RoutedExperts._get_quant_method"
        self._wrap("get_quant_method", owner, "_get_quant_method", self._get_quant_method_wrapper)
        return None

    def install_judge(self, module: Any) -> str | None:
        """Wrap where candidates are judged: ``MoEKernelOracle.try_backend`` (0.34, ``oracle/base.py``) or
        the generic gate ``FusedMoEExperts.is_supported_config`` (0.33, ``modular_kernel.py``)."""
        oracle = getattr(module, "MoEKernelOracle", None)
        if oracle is not None and callable(oracle.__dict__.get("try_backend")):
            self._wrap("judge", oracle, "try_backend", self._try_backend_wrapper)
            return None
        experts = getattr(module, "FusedMoEExperts", None)
        if experts is not None and isinstance(experts.__dict__.get("is_supported_config"), staticmethod):
            self._wrap("judge", experts, "is_supported_config", self._is_supported_wrapper)
            return None
        return f"{module.__name__}: MoEKernelOracle.try_backend / FusedMoEExperts.is_supported_config"

    def uninstall(self) -> None:
        for owner, name, original in self._originals.values():
            setattr(owner, name, original)
        self._originals.clear()
        self.installed.clear()

    def _wrap(self, key: str, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        if key in self._originals:
            return
        original = owner.__dict__[name]
        self._originals[key] = (owner, name, original)
        setattr(owner, name, make(original))
        self.installed.append(f"{owner.__name__}.{name}")

    # --- the wrappers -------------------------------------------------------------------------

    def _try_backend_wrapper(self, original: Any) -> Any:
        def try_backend(oracle: Any, backend: Any, *args: Any, **kwargs: Any) -> Any:
            accepted, rejected = original(oracle, backend, *args, **kwargs)
            scope = _current.get()
            if scope is not None:
                try:
                    scope.oracle_called(oracle, oracle.weight_key, oracle.activation_key)
                    name = backend.name if isinstance(backend, Enum) else str(backend)
                    scope.record.tried += [Tried(name, cls.__name__, str(reason)) for cls, reason in rejected]
                    if accepted is not None:
                        scope.record.tried.append(Tried(name, accepted.__name__, None))
                except Exception as exc:  # noqa: BLE001
                    scope.record.note = f"moe-registry could not record a candidate: {type(exc).__name__}"
            return accepted, rejected
        return try_backend

    def _is_supported_wrapper(self, original: Any) -> Any:
        inner = original.__func__

        def is_supported_config(cls: Any, moe_config: Any, weight_key: Any, activation_key: Any,
                                *args: Any, **kwargs: Any) -> Any:
            supported, reason = inner(cls, moe_config, weight_key, activation_key, *args, **kwargs)
            scope = _current.get()
            if scope is not None:
                scope.oracle_called(None, weight_key, activation_key)
                scope.record.tried.append(Tried("", cls.__name__, None if supported else str(reason)))
            return supported, reason
        return staticmethod(is_supported_config)

    def _get_quant_method_wrapper(self, original: Any) -> Any:
        hooks = self

        def _get_quant_method(layer: Any, prefix: str, quant_config: Any, moe_config: Any) -> Any:
            if hooks.decide is not None and moe_config.moe_backend == "auto":
                return hooks._enforced(original, layer, prefix, quant_config, moe_config)
            method, record = hooks._observed(original, layer, prefix, quant_config, moe_config)
            if hooks.decide is not None:
                record.note = f"--moe-backend {moe_config.moe_backend} given: left alone"
            return method
        return _get_quant_method

    # --- one layer -----------------------------------------------------------------------------

    def _observed(self, original: Any, layer: Any, prefix: str, quant_config: Any, moe_config: Any,
                  keep: bool = True) -> tuple[Any, LayerRecord]:
        """Run vLLM's own resolution for the layer inside a scope; vLLM's exceptions propagate."""
        scope = _Scope(prefix)
        token = _current.set(scope)
        # Quant methods read the config from the layer too (Fp8MoEMethod(quant_config, layer)): a probe's
        # copy stands in for the layer's own while it runs.
        own = getattr(layer, "moe_config", moe_config)
        layer.moe_config = moe_config
        try:
            method = original(layer, prefix, quant_config, moe_config)
        except Exception as exc:
            scope.record.error = f"{type(exc).__name__}: {exc}"
            self._finish(scope, layer, moe_config, None)
            if keep:
                self.records.append(scope.record)
            raise
        finally:
            _current.reset(token)
            layer.moe_config = own
        self._finish(scope, layer, moe_config, method)
        if keep:
            self.records.append(scope.record)
        return method, scope.record

    def _finish(self, scope: _Scope, layer: Any, moe_config: Any, method: Any) -> None:
        record = scope.record
        try:
            if method is not None:
                experts = getattr(method, "experts_cls", None)
                record.experts_class = getattr(experts, "__name__", None)
                record.backend = _backend_of(method)
                if not scope.keys_seen and record.note is None:
                    record.note = f"{type(method).__name__} picked its kernel outside vLLM's oracles"
            record.facts = facts_from_vllm(record.prefix, layer, moe_config, scope.weight_key, scope.activation_key,
                                           method)
        except Exception as exc:  # noqa: BLE001
            record.note = f"moe-registry could not read the layer: {type(exc).__name__}: {exc}"
        try:
            record.flag = _flag_for(scope.oracle_module, record.backend)
        except Exception:  # noqa: BLE001 - the key is a convenience; answers fall back to the family's key
            record.flag = None

    def _enforced(self, original: Any, layer: Any, prefix: str, quant_config: Any, moe_config: Any) -> Any:
        """Enforce: vLLM's auto choice on a copy of the config, our key checked by vLLM's own explicit
        path on another copy, then the layer built for real (pinned only if both passed)."""
        assert self.decide is not None
        key, note = None, None
        try:
            _, probe = self._observed(original, layer, prefix, quant_config, copy.copy(moe_config), keep=False)
            key, note = self.decide(probe)
            if key is not None:
                pinned = copy.copy(moe_config)
                pinned.moe_backend = key
                method, check = self._observed(original, layer, prefix, quant_config, pinned, keep=False)
                from .names import pin_runs_family
                if not pin_runs_family(key, check.experts_class):
                    key, note = None, f"vLLM runs {check.experts_class} for --moe-backend {key}, not our kernel"
        except Exception as exc:  # noqa: BLE001 - vLLM refused the key (or auto): build as vLLM would
            key, note = None, f"vLLM refuses --moe-backend {key} here: {type(exc).__name__}: {exc}" if key else (
                f"{type(exc).__name__}: {exc}")
        if key is not None:
            moe_config.moe_backend = key
            try:
                method, record = self._observed(original, layer, prefix, quant_config, moe_config)
                record.pinned = key
                return method
            except Exception as exc:  # noqa: BLE001 - never leave a layer broken by our pin
                self.records.pop()
                moe_config.moe_backend = "auto"
                note = f"pinning {key} failed: {type(exc).__name__}: {exc}"
        method, record = self._observed(original, layer, prefix, quant_config, moe_config)
        record.note = record.note or note
        return method


def _backend_of(method: Any) -> str | None:
    """The backend enum a vLLM quant method stored next to ``experts_cls`` (``fp8_backend``, ...)."""
    for name, value in vars(method).items():
        if name.endswith("backend") and isinstance(value, Enum):
            return value.name
    return None


_FLAGS: dict[tuple[str, str], str | None] = {}


def _flag_for(oracle_module: str | None, backend: str | None) -> str | None:
    """Invert the oracle's own ``map_<family>_backend``: the --moe-backend key that selects ``backend``."""
    if oracle_module is None or backend is None:
        return None
    if (oracle_module, backend) not in _FLAGS:
        import sys
        from typing import get_args

        from vllm.config.kernel import MoEBackend

        module = sys.modules.get(oracle_module)
        mapper = next((getattr(module, n) for n in dir(module) if n.startswith("map_") and n.endswith("_backend")), None)
        found = None
        for key in get_args(MoEBackend):
            if key == "auto" or mapper is None:
                continue
            try:
                mapped = mapper(key)
            except Exception:  # noqa: BLE001 - a key this oracle does not take
                continue
            if any(getattr(m, "name", None) == backend for m in (mapped if isinstance(mapped, list) else [mapped])):
                found = key
                break
        _FLAGS[(oracle_module, backend)] = found
    return _FLAGS[(oracle_module, backend)]


HOOKS = Hooks()
