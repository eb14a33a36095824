"""``run_probe``: probe the available backends on this machine (see the package docstring): which
backends can run here, the planned grid per backend, running it through the supervisor, drift
(declared but failing, undeclared but working) and the record with the machine's facts."""

from __future__ import annotations

import datetime
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ..environment import nvidia_smi, package_versions
from ..schemas.activation import Activation
from ..schemas.capability import BackendCapability
from ..schemas.quant import QuantKind
from .grid import Combo, ShapeClass, availability, plan_combinations, shape_classes
from .record import DRIFT_HINTS, BackendProbe, ComboResult, DriftItem, ProbeRecord
from .supervisor import run_in_process, run_isolated

if TYPE_CHECKING:
    from rich.console import Console

    from ..environment import Environment
    from ..registry import Registry


# --- Machine facts ---------------------------------------------------------------------------------

# A record's ``versions``: label -> distribution (with python; cuda from the worker)
RECORDED_PACKAGES = {"torch": "torch", "flashinfer": "flashinfer-python", "vllm": "vllm", "pydantic": "pydantic"}


def _prepare_environment(registry: "Registry") -> "Environment":
    """Make ops that a library registers on load visible to the environment check: vLLM's _moe_C
    (marlin) comes from ``$MOE_REGISTRY_VLLM_MOE_C`` when vLLM itself is not installed."""
    env = registry.environment()
    unmet_ops = [s for s in env.requirements if not s.satisfied
                 and any(r.kind == "torch_op" and r.name == s.name for d in registry for r in d.requirements)]
    if unmet_ops and os.environ.get("MOE_REGISTRY_VLLM_MOE_C"):
        try:
            from ..backends.marlin.ops import load_moe_c

            load_moe_c()
        except Exception:  # reported by the requirement's own detail (not registered)
            pass
        registry.refresh_environment()
        env = registry.environment()
    return env

# --- The probe -------------------------------------------------------------------------------------


def _drift(results: Sequence[ComboResult]) -> tuple[tuple[DriftItem, ...], tuple[DriftItem, ...]]:
    drift: list[DriftItem] = []
    findings: list[DriftItem] = []
    for r in results:
        common: dict[str, Any] = dict(backend=r.backend, shape=r.shape, activation=r.activation, quant=r.quant,
                                      status=r.status, bias=r.bias,
                                      apply_router_weight_on_input=r.apply_router_weight_on_input)
        if r.declared and r.status in ("wrong", "raised"):
            detail = r.message or (f"relative error {r.rel_error:.3g}" if r.rel_error is not None else "")
            drift.append(DriftItem(kind="declared_but_failing", detail=detail, **common))
        elif not r.declared and r.status == "passed":
            err = f"relative error {r.rel_error:.3g} <= {r.tolerance:g}" if r.rel_error is not None else "passed"
            if r.format_rule_only:
                findings.append(DriftItem(kind="undeclared_but_working", reasons=r.reasons, detail=(
                    f"only the format-wide scale-group rule rejects it, yet it works ({err}): {r.reason_text}"),
                    **common))
                continue
            codes = ", ".join(c.value.upper() for c in r.reasons)
            hints = "; ".join(dict.fromkeys(DRIFT_HINTS.get(c, "") for c in r.reasons if c in DRIFT_HINTS))
            drift.append(DriftItem(kind="undeclared_but_working", reasons=r.reasons, detail=(
                f"{codes} but works ({err})" + (f": {hints}" if hints else "") + f" [{r.reason_text}]"), **common))
    return tuple(drift), tuple(findings)


def _summary(results: Sequence[ComboResult]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in results:
        entry = out.setdefault(r.backend, {f"{d}_{s}": 0 for d in ("declared", "undeclared")
                                           for s in ("passed", "wrong", "raised", "skipped")})
        entry[f"{'declared' if r.declared else 'undeclared'}_{r.status}"] += 1
    return out


def run_probe(backends: Sequence[str] | None = None, quick: bool = False, registry: "Registry | None" = None,
              progress: bool = True, isolate: bool = True, *, activations: Iterable[Activation | str] | None = None,
              quant_kinds: Iterable[QuantKind | str] | None = None,
              shapes: Iterable[str | ShapeClass] | None = None, features: bool = True,
              timeout_s: float | None = None, startup_s: float = 180.0,
              console: "Console | None" = None) -> ProbeRecord:
    """Probe the available backends (``backends``: ids, default all) on this machine.

    ``activations`` / ``quant_kinds`` / ``shapes`` (shape class names, or ShapeClass objects of
    your own) replace the grid (for tests and focused runs); ``features=False`` leaves out the
    bias / router-weight-on-input combinations. ``progress``: a progress bar when stdout is a
    terminal. ``isolate=False`` runs in this process (a crash then ends the probe). ``timeout_s``:
    per combination (default ``$MOE_REGISTRY_PROBE_TIMEOUT`` or 180 s); ``startup_s`` more for a
    worker's first result.
    """
    from .. import __version__
    from ..registry import default_registry
    from ..environment import detect_device as detect

    registry = registry or default_registry()
    ids = list(backends) if backends else registry.ids()
    declarations = registry.declarations()
    chosen = [registry.get(b) for b in dict.fromkeys(ids)]  # UnknownBackend for a typo, before any work
    device = detect()
    env = _prepare_environment(registry)
    on_gpu = device.vendor == "nvidia"
    classes = shape_classes(quick=quick, cpu=not on_gpu)
    if shapes is not None:
        everything = {s.name: s for s in shape_classes(quick=False, cpu=not on_gpu)}
        picked = []
        for item in shapes:
            if isinstance(item, ShapeClass):
                picked.append(item)
            elif item in everything:
                picked.append(everything[item])
            else:
                raise ValueError(f"unknown shape class {item!r}; known: {', '.join(everything)}")
        classes = tuple(picked)
    acts = None if activations is None else [Activation.parse(a) if isinstance(a, str) else a for a in activations]
    kinds = None if quant_kinds is None else [QuantKind(k) for k in quant_kinds]
    if timeout_s is None:
        timeout_s = float(os.environ.get("MOE_REGISTRY_PROBE_TIMEOUT", "180"))

    plans: list[tuple[BackendCapability, list[Combo]]] = []
    probes: dict[str, BackendProbe] = {}
    for decl in chosen:
        ok, why = availability(decl, device, env)
        if not ok:
            probes[decl.id] = BackendProbe(backend=decl.id, status="skipped", reason=why, adapter=decl.adapter)
            continue
        plans.append((decl, plan_combinations(decl, device, env, declarations, classes,
                                              activations=acts, quant_kinds=kinds, features=features)))

    results: list[ComboResult] = []
    info: dict[str, Any] = {}
    total = sum(len(c) for _, c in plans)
    bar = _progress(console) if progress and sys.stdout.isatty() and total else None
    task = bar.add_task("probe", total=total) if bar is not None else None
    if bar is not None:
        bar.start()
    try:
        for decl, combos in plans:
            got: dict[int, dict[str, Any]] = {}
            if bar is not None:
                bar.update(task, description=f"probe {decl.id}")

            def on_result(index: int, data: dict[str, Any], _got: dict[int, dict[str, Any]] = got,
                          _combos: list[Combo] = combos, _backend: str = decl.id) -> None:
                _got[index] = data
                if bar is not None:
                    c = _combos[index]
                    bar.update(task, advance=1, description=(
                        f"probe {_backend}: {c.shape.name} {c.layer.quant.label()} {c.layer.activation.value}"))

            job = {"backend": decl.id, "adapter": decl.adapter, "device": "cuda" if on_gpu else "cpu",
                   "oracle": "float64" if decl.id == "reference" else "reference",
                   "combos": [c.job_entry() for c in combos]}
            t0 = time.perf_counter()
            if isolate:
                outcome = run_isolated(job, on_result, timeout_s=timeout_s, startup_s=startup_s)
            else:
                outcome = run_in_process(job, on_result)
            info = info or outcome.info
            for c in combos:
                data = got.get(c.index)
                if data is None:
                    data = {"status": "skipped", "message": outcome.failure or "not run"}
                    if bar is not None:
                        bar.update(task, advance=1)
                results.append(ComboResult(
                    backend=decl.id, shape=c.shape.name, activation=c.layer.activation, quant=c.layer.quant,
                    dtype=c.layer.dtype, tokens=c.shape.tokens, bias=c.layer.bias,
                    apply_router_weight_on_input=c.layer.apply_router_weight_on_input,
                    declared=c.declared, reasons=c.reasons,
                    reason_text=c.reason_text if data["status"] == "passed" else "",
                    format_rule_only=c.format_rule_only,
                    pad_hidden_to=c.pad_hidden_to, pad_intermediate_to=c.pad_intermediate_to,
                    status=data["status"], rel_error=data.get("rel_error"), max_abs_error=data.get("max_abs_error"),
                    tolerance=c.tolerance, message=data.get("message", ""), seconds=data.get("seconds"),
                    worker=data.get("worker")))
            probes[decl.id] = BackendProbe(
                backend=decl.id, status="skipped" if outcome.failure and not got else "probed",
                reason=outcome.failure, adapter=decl.adapter, combinations=len(combos),
                seconds=round(time.perf_counter() - t0, 2), worker_restarts=outcome.restarts)
    finally:
        if bar is not None:
            bar.stop()

    drift, findings = _drift(results)
    versions = package_versions(RECORDED_PACKAGES)
    if info.get("cuda"):
        versions["cuda"] = str(info["cuda"])
    card = info.get("card") or (nvidia_smi("name") if on_gpu else None) or device.name
    return ProbeRecord(
        moe_registry_version=__version__, registry_digest=registry.digest,
        date=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        card=card, device=device, compute_capability=f"sm{device.sm}" if device.sm is not None else None,
        driver=nvidia_smi("driver_version") if on_gpu else None, versions=versions, quick=quick,
        isolated=isolate, shapes=classes, backends=tuple(probes[d.id] for d in chosen), results=tuple(results),
        drift=drift, format_findings=findings, summary=_summary(results))


def _progress(console: "Console | None"):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)
