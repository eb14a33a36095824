"""The ``sglang.srt.plugins`` entry point: the registry's MoE runner for SGLang 0.5.23, and a per-layer
report of what SGLang ran against what the registry would run.

Two hooks, both through SGLang's own plugin API:

1. **Config time, one runner for the whole model.** A resolution hook wraps
   ``handle_moe_kernel_config`` (``arg_groups/resolution_hooks.py``; the step that validates the MoE
   runner). When the user left ``--moe-runner-backend`` on ``auto``, the registry plans every MoE
   layer for this device and layout and declares one runner, which SGLang's own step then validates.
   One, because SGLang's runner choice is process-global and has global side effects (gate/up order,
   round-up sizes, shared-expert fusion, dispatcher): a per-layer switch could load weights wrongly
   without failing. An explicit ``--moe-runner-backend`` is never touched, and only names SGLang has
   a branch for are declared (:data:`.names.BRANCHES`; sglang#36569, #27951).
2. **Per layer, observe only.** An AROUND hook on ``FusedMoE.__init__`` (HookRegistry) records the
   runner SGLang built for each MoE layer and the registry's verdict, and logs one table per model.

If SGLang's internals moved (a hook target is gone), the plugin logs one warning naming it and SGLang
runs as if the plugin were absent; nothing here raises into SGLang. ``MOE_REGISTRY_SGLANG=observe``
keeps the report and leaves the runner to SGLang.
"""

from __future__ import annotations

import logging
import os
import pkgutil
import time
from dataclasses import dataclass, field
from typing import Any

from .names import SGLANG_VERSION, has_branch

logger = logging.getLogger("moe_registry.sglang")

RESOLUTION_STEP = "handle_moe_kernel_config"
LAYER_TARGET = "sglang.srt.layers.moe.fused_moe_triton.layer.FusedMoE.__init__"
SOURCE = "moe_registry"  # the declaration's source in SGLang's resolution record


@dataclass
class Choice:
    """The registry's config-time answer for one model."""

    runner: str | None  # None: leave SGLang's choice
    why: str
    per_group: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # (layers, our backend, its flag)


@dataclass
class Report:
    """What the per-layer hook saw for one model: one row per MoE layer."""

    model: str
    choice: Choice | None
    rows: list[tuple[int, str, str, str, str | None, str]] = field(default_factory=list)
    # (layer id, name, SGLang runner, quant method, our backend, verdict)
    expected: int | None = None
    printed: bool = False


REPORTS: list[Report] = []  # every model reported in this process, for tests and callers
_STATE: dict[str, Any] = {"plan": None, "key": None, "choice": None, "warned": set(), "added_s": 0.0}


def _warn_once(text: str) -> None:
    if text not in _STATE["warned"]:
        _STATE["warned"].add(text)
        logger.warning("moe-registry: %s", text)


# --- the registry's plan for SGLang's view of the launch ----------------------------------------


def _plan_for(model_path: str, tp: int, ep: int) -> Any:
    """The registry's plan for this launch, planned once per (model, TP, EP) in a process."""
    from ...planner import plan_model
    from ...schemas.device import get_device
    from ...schemas.layer import ParallelConfig
    from sglang.srt.runtime_context import get_platform

    key = (model_path, tp, ep)
    if _STATE["key"] != key:
        device = get_device(f"sm{get_platform().device_sm}")
        _STATE["plan"], _STATE["key"] = plan_model(model_path, device, ParallelConfig(tp=tp, ep=ep)), key
    return _STATE["plan"]


def reset() -> None:
    """Forget this process's plan, choice and reports (a process that builds another model)."""
    REPORTS.clear()
    _STATE.update(plan=None, key=None, choice=None, added_s=0.0)


def _flag_with_branch(declaration: Any, kind: Any) -> str | None:
    flag = declaration.engines.sglang_flag(kind)
    return flag if has_branch(flag, kind) else None


def choose(plan: Any) -> Choice:
    """One runner for the whole model: per layer group, the registry's first eligible backend that
    SGLang can run (its declared flag has a branch in the layer's quant method), then the runner that
    serves the most layers, provided every group's quant method has a branch for it."""
    from ...registry import default_registry

    registry = default_registry()
    votes: dict[str, int] = {}
    per_group = []
    kinds = set()
    for group in plan.groups():
        kinds.add(group.layer.quant.kind)
        if group.selection is None:
            return Choice(None, f"no backend of the registry can run {group.label()}: left to SGLang")
        pick = next(((c.backend, f) for c in group.selection.eligible
                     if (f := _flag_with_branch(registry.get(c.backend), group.layer.quant.kind))), (None, None))
        per_group.append((group.label(), pick[0], pick[1]))
        if pick[1] is not None:
            votes[pick[1]] = votes.get(pick[1], 0) + group.count
    for runner, _ in sorted(votes.items(), key=lambda kv: -kv[1]):
        if all(has_branch(runner, k) for k in kinds):
            return Choice(runner, f"registry's choice over {len(plan.layers)} MoE layers; one runner for the whole model, "
                                  "because SGLang's runner and its side effects are process-global", per_group)
    return Choice(None, "no runner SGLang has a branch for serves every layer: left to SGLang", per_group)


# --- hook 1: config time -------------------------------------------------------------------------


def _resolution_hook(server_args: Any, previous: Any) -> None:
    """Wraps handle_moe_kernel_config: declare the registry's runner, then let SGLang validate it."""
    declared = None
    started = time.perf_counter()
    try:
        declared = _declare(server_args)
    except Exception as e:  # never raise into SGLang: it resolves as if we were absent
        _warn_once(f"config-time choice skipped ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
    _STATE["added_s"] += time.perf_counter() - started
    if declared is None:
        previous(server_args)
        return
    try:
        previous(server_args)
    except Exception as e:
        stash = server_args._resolved_overrides
        if declared in stash:
            stash.remove(declared)  # withdraw ours; SGLang's own step runs again on its own choice
        _warn_once(f"SGLang refused the registry's runner {declared[1]['moe_runner_backend']!r} "
                   f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); left to SGLang")
        previous(server_args)


def _declare(server_args: Any) -> Any:
    from sglang.srt.arg_groups.overrides import declare_resolution, resolving_view

    raw = getattr(server_args, "_raw_input", {}) or {}
    if raw.get("moe_runner_backend", "auto") != "auto":
        return None  # the user chose: never override
    if os.environ.get("MOE_REGISTRY_SGLANG", "").strip().lower() == "observe":
        return None
    view = resolving_view(server_args)
    plan = _plan_for(view.model_path, int(view.tp_size), int(view.ep_size))
    choice = choose(plan)
    _STATE["choice"] = choice
    current = str(view.moe_runner_backend)
    logger.info("moe-registry: %s -> %s (%s)", plan.model, choice.runner or f"SGLang's {current}", choice.why)
    if choice.runner is None or choice.runner == current:
        return None
    declare_resolution(server_args, SOURCE, moe_runner_backend=choice.runner)
    return server_args._resolved_overrides[-1]


# --- hook 2: per layer ---------------------------------------------------------------------------


def _around_init(original: Any, self: Any, *args: Any, **kwargs: Any) -> Any:
    result = original(self, *args, **kwargs)
    started = time.perf_counter()
    try:
        _observe(self)
    except Exception as e:  # observation only: never break model construction
        _warn_once(f"per-layer report stopped ({type(e).__name__}: {str(e)[:200]})")
    _STATE["added_s"] += time.perf_counter() - started
    return result


def _current_report() -> Report:
    from sglang.srt.runtime_context import get_parallel, get_server_args

    if REPORTS and not REPORTS[-1].printed:
        return REPORTS[-1]
    parallel = get_parallel()
    plan = _plan_for(str(get_server_args().model_path), int(parallel.tp_size), int(parallel.moe_ep_size))
    report = Report(model=plan.model, choice=_STATE["choice"], expected=len(plan.layers))
    REPORTS.append(report)
    return report


def _observe(layer: Any) -> None:
    if getattr(layer, "is_draft", False):
        return  # speculative draft layers run the draft's own runner; not the model's table
    report = _current_report()
    plan = _STATE["plan"]
    runner = getattr(layer.runner_backend, "value", str(layer.runner_backend))
    ours = next((p for p in plan.layers if p.layer.index == layer.layer_id), None)
    backend = ours.selection.backend if ours and ours.selection else None
    if ours is None:
        verdict = "not a MoE layer in the registry's plan"
    elif backend is None:
        verdict = f"registry: no backend ({ours.error or 'every backend rejected'})"
    else:
        from ...registry import default_registry

        flag = default_registry().get(backend).engines.sglang_flag(ours.layer.quant.kind)
        verdict = "agree" if flag == runner else (
            f"differ: {backend} has no SGLang runner" if flag is None else f"differ: {backend} is SGLang {flag}")
    report.rows.append((layer.layer_id, str(getattr(layer, "layer_name", "")), runner, type(layer.quant_method).__name__,
                        backend, verdict))
    if report.expected is not None and len(report.rows) >= report.expected:
        _print(report)


def render(report: Report) -> str:
    """One table: consecutive layers with the same (runner, ours, verdict) grouped as ranges."""
    lines = [f"moe-registry x SGLang {SGLANG_VERSION}: {report.model}, {len(report.rows)} MoE layers"]
    if report.choice is not None:
        lines.append(f"  config time: {report.choice.runner or 'left to SGLang'} ({report.choice.why})")
    lines.append(f"  {'layers':<14} {'SGLang runner':<34} {'registry':<20} verdict")
    runs: list[list[Any]] = []
    for lid, _name, runner, method, ours, verdict in sorted(report.rows):
        key = (f"{runner} ({method})", ours or "-", verdict)
        if runs and runs[-1][2] == key and runs[-1][1] == lid - 1:
            runs[-1][1] = lid
        else:
            runs.append([lid, lid, key])
    for first, last, (sg, ours, verdict) in runs:
        span = str(first) if first == last else f"{first}-{last} ({last - first + 1})"
        lines.append(f"  {span:<14} {sg:<34} {ours:<20} {verdict}")
    return "\n".join(lines)


def _print(report: Report) -> None:
    report.printed = True
    try:
        from sglang.srt.runtime_context import get_parallel

        if int(get_parallel().tp_rank) != 0:
            return  # one table per model, not one per rank
    except Exception:  # no rank published (tests, single process): print
        pass
    logger.warning("%s", render(report))


# --- the entry point -----------------------------------------------------------------------------


def _target_exists(target: str) -> bool:
    obj_path, attr = target.rsplit(".", 1)
    try:
        return hasattr(pkgutil.resolve_name(obj_path), attr)
    except Exception:
        return False


def register() -> None:
    """``[project.entry-points."sglang.srt.plugins"] moe_registry``: called by SGLang's load_plugins()."""
    try:
        _register()
    except Exception as e:  # SGLang logs a traceback for a plugin that raises; say it in one line instead
        _warn_once(f"not active ({type(e).__name__}: {str(e)[:200]}); SGLang runs without it")


def _register() -> None:
    from sglang.srt.arg_groups import resolution_hooks
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    if RESOLUTION_STEP in getattr(resolution_hooks, "_OVERRIDABLE_HOOKS", ()):
        if _resolution_hook not in resolution_hooks._HOOKS.get(RESOLUTION_STEP, []):
            resolution_hooks.register_resolution_hook(RESOLUTION_STEP)(_resolution_hook)
    else:
        _warn_once(f"SGLang has no resolution hook {RESOLUTION_STEP!r}: no config-time choice; SGLang picks the runner")
    if _target_exists(LAYER_TARGET):
        HookRegistry.register(LAYER_TARGET, _around_init, HookType.AROUND)
    else:
        _warn_once(f"SGLang has no {LAYER_TARGET}: no per-layer report")
