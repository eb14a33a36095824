"""The ``vllm.general_plugins`` entry point: vLLM consults the registry for every MoE layer it builds.

Turn it on with ``MOE_REGISTRY_VLLM`` (``observe``, the default once set to anything true, or
``enforce``); unset or ``off``, :func:`register` returns at once.

- observe: for every MoE layer, vLLM's candidates with its own rejection reasons, its pick, and the
  registry's choice for the same layer (built from vLLM's ``FusedMoEConfig`` and quant keys through
  ``select_backend``) are printed as one table per model after vLLM built it (rank 0), and written as
  JSON to ``MOE_REGISTRY_VLLM_JSON`` (docs/cli-json.md) if set.
- enforce: where ``--moe-backend`` is ``auto``, a layer runs the registry's kernel when our choice has a
  vLLM name and vLLM's own explicit path accepts that name for the layer and runs our kernel with it
  (:meth:`~.observe.Hooks._enforced`); an explicit ``--moe-backend`` is never overridden. Every rank
  logs one fingerprint line of what it pinned, so ranks can be compared.

The target device for our choice is this machine's GPU, or ``MOE_REGISTRY_DEVICE`` (a preset name).
Registration imports no vLLM module (so no CUDA): hooks go in when vLLM imports the modules they
patch (a post-import hook). Any other vLLM version, or a missing hook, gets one warning line and vLLM
runs as if the plugin were absent. Nothing here raises into vLLM.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
from typing import Any, Callable

log = logging.getLogger("vllm.moe_registry")

ENV_MODE = "MOE_REGISTRY_VLLM"
ENV_JSON = "MOE_REGISTRY_VLLM_JSON"
SUPPORTED = ("0.34.", "0.33.")
_ON = {"1", "on", "true", "yes", "observe"}
_OFF = {"", "0", "off", "false", "no"}

_ROUTED = "vllm.model_executor.layers.fused_moe.routed_experts"
_ORACLE_BASE = "vllm.model_executor.layers.fused_moe.oracle.base"
_MODULAR = "vllm.model_executor.layers.fused_moe.modular_kernel"
_LOADER = "vllm.model_executor.model_loader.base_loader"


class _State:
    registered = False
    mode: str | None = None
    version = ""
    disabled: str | None = None
    finder: "_PostImport | None" = None


STATE = _State()


def register() -> None:
    """vLLM calls this in every process (API server, engine core, workers); idempotent, never raises."""
    try:
        _register()
    except Exception as exc:  # noqa: BLE001 - the plugin must never stop vLLM
        _disable(f"moe-registry: plugin off ({type(exc).__name__}: {exc}); vLLM runs without it")


def _register() -> None:
    if STATE.registered:
        return
    STATE.registered = True
    raw = os.environ.get(ENV_MODE, "").strip().lower()
    if raw in _OFF:
        return
    mode = "observe" if raw in _ON else raw
    if mode not in ("observe", "enforce"):
        log.warning("moe-registry: %s=%r is not observe or enforce; vLLM runs without the plugin", ENV_MODE, raw)
        return
    from importlib import metadata

    version = metadata.version("vllm")
    if not version.startswith(SUPPORTED):
        log.warning("moe-registry: vLLM %s is not a version this plugin knows (0.33.x, 0.34.x); vLLM runs without it",
                    version)
        return
    STATE.mode, STATE.version = mode, version
    judge = _MODULAR if version.startswith("0.33.") else _ORACLE_BASE
    STATE.finder = _PostImport({_ROUTED: _patch_routed, judge: _patch_judge, _LOADER: _patch_loader})
    sys.meta_path.insert(0, STATE.finder)


def _disable(message: str) -> None:
    """Back to vLLM as if the plugin were absent: hooks out, one warning."""
    if STATE.disabled is not None:
        return
    STATE.disabled = message
    try:
        from .observe import HOOKS

        HOOKS.uninstall()
        HOOKS.decide = None
    finally:
        if STATE.finder is not None and STATE.finder in sys.meta_path:
            sys.meta_path.remove(STATE.finder)
        log.warning("%s", message)


# --- Post-import hooks ------------------------------------------------------------------------------


class _PostImport(importlib.abc.MetaPathFinder):
    """Runs a callback right after vLLM imports a module (already imported: at once)."""

    def __init__(self, callbacks: dict[str, Callable[[Any], None]]):
        self.callbacks = dict(callbacks)
        for name in list(self.callbacks):
            if name in sys.modules:
                self._fire(name, sys.modules[name])

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in self.callbacks:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, lambda module: self._fire(name, module))
        return spec

    def _fire(self, name: str, module: Any) -> None:
        callback = self.callbacks.pop(name, None)
        if callback is None or STATE.disabled is not None:
            return
        try:
            callback(module)
        except Exception as exc:  # noqa: BLE001
            _disable(f"moe-registry: cannot hook {name} ({type(exc).__name__}: {exc}); vLLM runs without the plugin")
        if not self.callbacks and self in sys.meta_path:
            sys.meta_path.remove(self)


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, after: Callable[[Any], None]):
        self.loader, self.after = loader, after

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        self.after(module)


def _patch_routed(module: Any) -> None:
    from .observe import HOOKS

    missing = HOOKS.install_get_quant_method(module)
    if missing:
        _disable(f"moe-registry: vLLM {STATE.version} has no {missing}; vLLM runs without the plugin")
        return
    if STATE.mode == "enforce":
        HOOKS.decide = _decide


def _patch_judge(module: Any) -> None:
    from .observe import HOOKS

    missing = HOOKS.install_judge(module)
    if missing:
        _disable(f"moe-registry: vLLM {STATE.version} has no {missing}; vLLM runs without the plugin")


def _patch_loader(module: Any) -> None:
    loader = getattr(module, "BaseModelLoader", None)
    create = getattr(loader, "create_model", None)
    if loader is None or create is None:
        _disable(f"moe-registry: vLLM {STATE.version} has no BaseModelLoader.create_model; vLLM runs without the plugin")
        return

    def create_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        model = create(self, *args, **kwargs)
        try:
            report(getattr(kwargs.get("model_config"), "model", None) or type(model).__name__)
        except Exception as exc:  # noqa: BLE001
            log.warning("moe-registry: no report (%s: %s)", type(exc).__name__, exc)
        return model

    loader.create_model = create_model


# --- The registry's side ---------------------------------------------------------------------------


def _decide(record: Any) -> "tuple[str | None, str | None]":
    from .verdict import pin_for, verdict

    if record.facts is None:
        return None, record.note or "the layer could not be read"
    return pin_for(verdict(record.facts), record.experts_class)


def report(model: str) -> None:
    """The table for the layers vLLM built since the last report (rank 0), the fingerprint (every
    rank), the JSON file when asked."""
    from .observe import HOOKS
    from .verdict import fingerprint, layer_rows

    records = HOOKS.take_new()
    if not records:
        return
    rows = layer_rows(records, STATE.version)
    rank = _rank()
    if STATE.mode == "enforce":
        pinned = sum(1 for r in records if r.pinned)
        log.info("moe-registry: enforce fingerprint %s (rank %d, %d of %d MoE layers pinned)", fingerprint(records),
                 rank, pinned, len(records))
    if rank != 0:
        return
    from ...render.engine import plugin_json, plugin_text

    log.info("%s", plugin_text(model, STATE.mode or "observe", STATE.version, rows))
    path = os.environ.get(ENV_JSON)
    if path:
        _write_json(path, plugin_json(model, STATE.mode or "observe", STATE.version, rows))


def _rank() -> int:
    try:
        from vllm.distributed import parallel_state

        group = getattr(parallel_state, "_WORLD", None)
        return int(group.rank) if group is not None else 0
    except Exception:  # noqa: BLE001
        return 0


def _write_json(path: str, document: dict[str, Any]) -> None:
    import json

    try:
        existing = json.loads(open(path, encoding="utf-8").read()) if os.path.exists(path) else None
        models = existing.get("models", []) if isinstance(existing, dict) else []
        document = {**document, "models": models + document["models"]}
        with open(path, "w", encoding="utf-8") as sink:
            sink.write(json.dumps(document, indent=2) + "\n")
    except (OSError, ValueError) as exc:
        log.warning("moe-registry: cannot write %s: %s", path, exc)
