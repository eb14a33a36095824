"""What is installed and built on the machine that will run the kernels: the impure input to
selection, taken once as a frozen snapshot so that selection itself stays a pure function.

Planning for a named device uses ``Environment.planning()``: packages are assumed installable
(and noted), because the target is not this machine. Software presence is kept apart from
hardware support so "not installed" never reads as "device unsupported" (vLLM #50925, #31085).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Iterable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from .schemas.capability import BackendCapability, Requirement


class RequirementState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str
    name: str
    satisfied: bool
    detail: str


class Environment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    planning: bool
    requirements: tuple[RequirementState, ...] = ()
    versions: tuple[tuple[str, str], ...] = ()  # distributions relevant to the fingerprint

    @classmethod
    def planning_target(cls) -> "Environment":
        return cls(planning=True)

    def state(self, backend: str, name: str) -> RequirementState | None:
        for entry in self.requirements:
            if entry.backend == backend and entry.name == name:
                return entry
        return None


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


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
    # A probe is plugin code: guarded (SystemExit, output, time limit) so that it cannot break
    # selection for the other backends or the CLI's output.
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


def check_requirement(backend: str, req: "Requirement",
                      failures: list[tuple[str, str]] | None = None) -> RequirementState:
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
    else:
        ok, detail = _run_probe(req.probe, failures, backend) if req.probe else (False, "no probe declared")
    return RequirementState(backend=backend, name=req.name, satisfied=ok, detail=detail)


def probe_environment(declarations: Iterable["BackendCapability"],
                      failures: list[tuple[str, str]] | None = None) -> Environment:
    """Snapshot this machine's software for the given declarations. The registry caches the
    result; call ``Registry.refresh_environment()`` after installing or loading something.
    Probes that fail, time out or print are appended to ``failures`` as (who, what)."""
    declarations = tuple(declarations)
    states = [check_requirement(d.id, req, failures) for d in declarations for req in d.requirements]
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
    return out.splitlines()[0].strip() if out else None


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
