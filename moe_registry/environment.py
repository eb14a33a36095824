"""What is installed and built on the machine that will run the kernels, which GPU it has, and the
process's overrides: the impure input to selection, taken as a frozen snapshot so that selection
itself stays a pure function. All of this machine's probing lives here (``nvidia-smi``, CUDA via
an already-imported torch, ``$MOE_REGISTRY_DEVICE`` / ``$MOE_REGISTRY_BACKEND``, and the
declarations' requirement probes, which may run ``nvcc`` or ``ninja -n``); ``select_backend``
handed an ``Environment`` does no I/O.

Planning for a named device uses ``Environment.planning_target()``: packages are assumed
installable (and noted), because the target is not this machine. Software presence is kept apart
from hardware support so "not installed" never reads as "device unsupported" (vLLM #50925, #31085).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict

from .schemas.device import MAX_DEVICE_MEMORY_GB, PRESETS, DeviceSpec, get_device

# A preset name used instead of detecting this machine's accelerator.
ENV_DEVICE = "MOE_REGISTRY_DEVICE"
# A backend id that pins selection (as ``force=``), for every layer.
ENV_FORCE = "MOE_REGISTRY_BACKEND"

if TYPE_CHECKING:
    from .schemas.capability import BackendCapability, Requirement


class RequirementState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str
    name: str
    satisfied: bool
    detail: str


class Environment(BaseModel):
    """One machine as selection sees it. ``planning=True``: the target is not this machine, so
    requirements are assumed met (and noted). ``device``: the accelerator kernels will run on
    (the CPU preset when there is none); selection uses it when no device is named. None in a
    planning environment, whose target is always named. ``backend_override``: the backend that
    pins selection when the caller forces none (``$MOE_REGISTRY_BACKEND`` when detected)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    planning: bool
    requirements: tuple[RequirementState, ...] = ()
    versions: tuple[tuple[str, str], ...] = ()  # distributions relevant to the fingerprint
    device: DeviceSpec | None = None
    backend_override: str | None = None

    @classmethod
    def planning_target(cls, *, backend_override: str | None = None) -> "Environment":
        return cls(planning=True, backend_override=backend_override)

    def state(self, backend: str, name: str) -> RequirementState | None:
        for entry in self.requirements:
            if entry.backend == backend and entry.name == name:
                return entry
        return None


# --- This machine's accelerator ------------------------------------------------------------------

_NAME_TO_PRESET = (("H200", "h200"), ("H100", "h100"), ("GB200", "gb200"), ("B300", "b300"),
                   ("B200", "b200"), ("A100", "a100"), ("L40S", "l40s"), ("RTX PRO 6000", "rtx-pro-6000"))


def device_for_gpu(product: str, sm: int, memory_gb: float | None) -> DeviceSpec:
    """The preset for a GPU by its product name and SM (its memory as measured), else a bare spec."""
    for marker, preset in _NAME_TO_PRESET:
        if marker in product.upper() and PRESETS[preset].sm == sm:
            return PRESETS[preset].model_copy(update={"memory_gb": memory_gb or PRESETS[preset].memory_gb})
    return DeviceSpec(name=product.strip() or f"sm{sm}", vendor="nvidia", sm=sm, memory_gb=memory_gb)


def _detect_with_torch() -> DeviceSpec | None:
    torch = sys.modules["torch"]
    if not torch.cuda.is_available() or torch.version.cuda is None:
        return None
    major, minor = torch.cuda.get_device_capability()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    # the driver's answer, validated as nvidia-smi's is
    return _parse_gpu_line(f"{props.name}, {major}.{minor}, {props.total_memory / 2**20}")


def _detect_with_nvidia_smi() -> DeviceSpec | None:
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return _parse_gpu_line(out)


def _parse_gpu_line(out: str) -> DeviceSpec | None:
    """nvidia-smi's "name, compute_cap, memory.total (MiB)" for the first GPU, validated like user
    input: a name of printable characters, an SM that exists, a finite memory size of at most a
    petabyte (an unknown or absurd size becomes None, the preset's size); None if unusable."""
    import math

    first = out.strip().splitlines()[0] if out.strip() else ""
    fields = [f.strip() for f in first.split(",")]
    if len(fields) < 2 or len(fields[0]) > 200 or not fields[0].isprintable():
        return None
    try:
        major, minor = fields[1].split(".")
        sm = int(major) * 10 + int(minor)
        memory = float(fields[2]) / 1024 if len(fields) > 2 else None
    except ValueError:
        return None
    if not (0 <= int(minor) < 10 and 10 <= sm <= 200):
        return None
    if memory is not None and not (math.isfinite(memory) and 0 < memory <= MAX_DEVICE_MEMORY_GB):
        memory = None
    return device_for_gpu(fields[0], sm, None if memory is None else round(memory, 1) or None)


@functools.lru_cache(maxsize=1)
def detect_device() -> DeviceSpec:
    """This machine's first accelerator, without importing torch.

    ``MOE_REGISTRY_DEVICE`` names a preset to use instead. If torch is already imported, CUDA's
    answer is used (it is what kernels will see); otherwise ``nvidia-smi``; otherwise the CPU.
    """
    override = os.environ.get(ENV_DEVICE)
    if override:
        return get_device(override)
    if "torch" in sys.modules:
        found = _detect_with_torch()
        if found is not None:
            return found
        return PRESETS["cpu"]
    return _detect_with_nvidia_smi() or PRESETS["cpu"]


def backend_override() -> str | None:
    """``$MOE_REGISTRY_BACKEND`` (stripped), read now; None when unset or empty."""
    value = os.environ.get(ENV_FORCE)
    return value.strip() if value else None


def this_machine(software: Environment) -> Environment:
    """``software`` (a :func:`probe_environment` snapshot) completed with this machine's
    accelerator and ``$MOE_REGISTRY_BACKEND``, both read now (the device is detected once)."""
    return software.model_copy(update={"device": detect_device(), "backend_override": backend_override()})


# --- Installed software ------------------------------------------------------------------------


def _distribution_version(name: str) -> str | None:
    from importlib import metadata  # ~15 ms of imports (email.*): only when a version is read

    try:
        version = metadata.version(name)
    except (metadata.PackageNotFoundError, ValueError):
        return None
    return _machine_text(version if isinstance(version, str) else None, limit=100)


def find_module_spec(name: str) -> "importlib.machinery.ModuleSpec | None":
    """The spec of module ``name`` found without importing it or any package above it: for
    ``pkg.sub``, ``importlib.util.find_spec`` would run ``pkg/__init__.py`` (plugin code, which may
    exit, hang or print); here each level is looked up on the path of the one above."""
    import importlib.machinery

    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name: no package code runs
        for depth in range(1, len(parts)):
            locations = None if spec is None else spec.submodule_search_locations
            if locations is None:
                return None
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: depth + 1]), list(locations))
    except (ImportError, ValueError, OSError):
        return None
    return spec


def _importable(module: str) -> bool:
    return find_module_spec(module) is not None


def _torch_op_registered(qualified: str) -> bool:
    # Only look when torch is already loaded: selection must not import torch.
    if "torch" not in sys.modules:
        return False
    namespace, _, op = qualified.partition("::")
    try:
        return hasattr(getattr(sys.modules["torch"].ops, namespace), op)
    except (AttributeError, RuntimeError):
        return False


def _call_probe(reference: str) -> tuple[bool, str]:
    module_name, _, attr = reference.partition(":")
    built, detail = getattr(importlib.import_module(module_name), attr)()
    return bool(built), str(detail)


def _run_probe(reference: str, failures: list[tuple[str, str]] | None = None,
               backend: str = "") -> tuple[bool, str]:
    # A built-in probe, guarded all the same (SystemExit, output, time limit) so that it cannot
    # break selection for the other backends or the CLI's output. Plugins' probes run out of
    # process (_probes_outside).
    from ._isolation import guarded_call, quote_output

    outcome = guarded_call(lambda: _call_probe(reference))
    who = f"{backend} requirement probe {reference}"
    if outcome.output.strip() and failures is not None:
        failures.append((who, f"wrote to stdout/stderr (captured): {quote_output(outcome.output)}"))
    if outcome.error is not None:
        if failures is not None:
            failures.append((who, outcome.error))
        return False, f"probe {reference} failed: {outcome.error}"
    return outcome.value


def _probe_answer(value: object) -> tuple[bool, str] | None:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], bool) and isinstance(value[1], str):
        return value[0], value[1][:500]
    return None


def _probes_outside(groups: dict[str, list[tuple[str, str]]],
                    failures: list[tuple[str, str]] | None) -> dict[tuple[str, str], tuple[bool, str]]:
    """Run each plugin's requirement probes (``{plugin: [(backend, "module:function"), ...]}``) in
    a child process of its own, all of one plugin's probes under one time budget, the plugins in
    parallel. -> ``{(backend, reference): (satisfied, detail)}``."""
    from ._isolation import quote_output, run_children

    names = list(groups)
    outcomes = run_children("moe_registry.environment",
                            [{"probes": [ref for _, ref in groups[name]]} for name in names])
    found: dict[tuple[str, str], tuple[bool, str]] = {}
    for name, outcome in zip(names, outcomes):
        answers = {m["probe"]: m for m in outcome.messages if isinstance(m, dict) and isinstance(m.get("probe"), int)}
        if outcome.output.strip() and failures is not None:
            failures.append((f"{name} requirement probes", f"wrote to stdout/stderr (captured): "
                                                           f"{quote_output(outcome.output)}"))
        for effect in outcome.side_effects:
            if failures is not None:
                failures.append((f"{name} requirement probes", effect))
        for index, (backend, reference) in enumerate(groups[name]):
            answer = answers.get(index, {})
            value = _probe_answer(answer.get("value"))
            if value is None:
                given = answer.get("error")
                error = given if isinstance(given, str) else (outcome.error or "returned something other than (bool, str)")
                if failures is not None:
                    failures.append((f"{backend} requirement probe {reference}", error))
                value = (False, f"probe {reference} failed: {error}")
            found[(backend, reference)] = value
    return found


def _probe_child(request: dict[str, Any], say: Callable[[Any], None]) -> bool:
    """In the child (``python -m moe_registry.environment``): run each probe, answering as it goes."""
    from .errors import one_line

    for index, reference in enumerate(request.get("probes", [])):
        try:
            built, detail = _call_probe(str(reference))
            say({"probe": index, "value": [bool(built), str(detail)]})
        except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt from plugin code too
            say({"probe": index, "error": one_line(exc, limit=300)})
    return True


def check_requirement(backend: str, req: "Requirement", failures: list[tuple[str, str]] | None = None,
                      probed: dict[tuple[str, str], tuple[bool, str]] | None = None) -> RequirementState:
    if req.kind == "package":
        module = req.import_name or req.name
        ok = _importable(module)
        detail = f"{module} importable" if ok else f"{module} is not installed"
    elif req.kind == "torch_op":
        ok = _torch_op_registered(req.name)
        detail = f"torch.ops.{req.name.replace('::', '.')} registered"
        library = os.environ.get(req.library_env) if req.library_env else None
        if not ok and library and os.path.isfile(library):
            ok, detail = True, f"loadable from ${req.library_env} ({library})"
        elif not ok and req.package and _importable(req.package):
            # Importing the package registers the op (vLLM loads _moe_C on import).
            ok, detail = True, f"{req.package} installed (importing it registers {req.name})"
        elif not ok:
            detail = f"torch.ops.{req.name.replace('::', '.')} not registered"
    elif req.probe and probed is not None and (backend, req.probe) in probed:
        ok, detail = probed[(backend, req.probe)]
    else:
        ok, detail = _run_probe(req.probe, failures, backend) if req.probe else (False, "no probe declared")
    return RequirementState(backend=backend, name=req.name, satisfied=ok, detail=detail)


def probe_environment(declarations: Iterable["BackendCapability"],
                      failures: list[tuple[str, str]] | None = None, *,
                      outside: dict[str, str] | None = None) -> Environment:
    """Snapshot this machine's software for the given declarations. The registry caches the
    result; call ``Registry.refresh_environment()`` after installing or loading something.
    Probes that fail, time out or print are appended to ``failures`` as (who, what). The probes
    of the backends in ``outside`` (backend id -> plugin) run in a child process per plugin."""
    declarations = tuple(declarations)
    groups: dict[str, list[tuple[str, str]]] = {}
    for d in declarations:
        for req in d.requirements:
            if req.kind == "jit_module" and req.probe and outside and d.id in outside:
                groups.setdefault(outside[d.id], []).append((d.id, req.probe))
    probed = _probes_outside(groups, failures) if groups else {}
    states = [check_requirement(d.id, req, failures, probed) for d in declarations for req in d.requirements]
    names = sorted({"torch", "flashinfer-python", "vllm", *(r.package for d in declarations
                                                            for r in d.requirements if r.package)})
    versions = tuple((n, v) for n in names if (v := _distribution_version(n)) is not None)
    return Environment(planning=False, requirements=tuple(states), versions=versions)


# --- Machine facts for records (probe, bench, benchmarks/) ------------------------------------------
# Kept apart from the snapshot above: these describe the machine a record was taken on and never
# feed selection. (schemas.device.detect runs its own query: the schemas sit below this module.)


def nvidia_smi(field: str, *, units: bool = True) -> str | None:
    """``nvidia-smi --query-gpu=FIELD`` of the first GPU ("name", "driver_version", "clocks.max.sm",
    or several, comma-separated, as one CSV line), without units ("1980" for "1980 MHz") when
    ``units`` is False; None when nvidia-smi is missing or fails."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    fmt = "csv,noheader" if units else "csv,noheader,nounits"
    try:
        out = subprocess.run([exe, f"--query-gpu={field}", f"--format={fmt}"], capture_output=True,
                             text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.splitlines()[0].strip() if out else ""
    return _machine_text(first)


def _machine_text(text: str | None, limit: int = 200) -> str | None:
    """A string this machine reported (nvidia-smi, package metadata), validated like user input:
    printable, at most ``limit`` characters; None otherwise."""
    if not text or len(text) > limit or not text.isprintable():
        return None
    return text


def package_versions(distributions: dict[str, str]) -> dict[str, str]:
    """``{"python": version, label: version, ...}`` for each ``label -> distribution name`` installed
    here (the others are left out), in that order."""
    import platform

    out = {"python": platform.python_version()}
    for label, dist in distributions.items():
        version = _distribution_version(dist)
        if version is not None:
            out[label] = version
    return out


if __name__ == "__main__":  # a child running plugins' requirement probes (_probes_outside)
    from ._isolation import child_main

    child_main(_probe_child)
