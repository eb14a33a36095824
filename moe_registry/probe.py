"""`moe-registry probe`: check every declaration against the real kernels on this machine.

For each backend available here (a device rule matches and its requirements are met), every
combination of activation x quantization scheme x shape class is run, the declared ones *and* the
undeclared ones, and compared with an oracle; then the feature axes, expert biases and router
weight on the input (``FEATURE_COMBOS``), for every scheme on the first shape class and gpt-oss's
H=I=2880 (the case that would have caught Marlin declaring no biases while running them). Whether a combination is declared is decided by the
declarations alone, through ``selection.evaluate`` (no reasons = declared): the probe restates no
support fact. What it reports:

- per combination: ``passed`` (relative error), ``wrong`` (error vs tolerance, or NaN/inf),
  ``raised`` (exception type and one line), ``skipped`` (why);
- drift: *declared but failing* (declared, and wrong or raised) and *undeclared but working*
  (undeclared, and passed; with the reason codes that made it undeclared);
- format findings: undeclared only because of selection's format-wide scale-group rule (not a
  backend's declaration), yet working.

Isolation: each backend runs in a subprocess worker (``moe_registry.probe_worker``) that streams one
JSON line per result. A worker that dies (segfault, abort, a poisoned CUDA context) costs only the
combination in flight, recorded as "raised: worker crashed (...)"; a fresh worker continues at the
next one. ``isolate=False`` (``--in-process``) runs everything here, for debugging.

The record (``--out``) is a ``ProbeRecord``: the machine (card, smNN, driver, versions; no host
name), the registry digest, every result with its declared flag and reason codes, and the drift.
``verification_summary`` / ``apply_verification`` turn a committed record into provenance for the
declarations (``Sourced.verified_on``, ``BackendCapability.hardware``).

This module imports no torch (the worker does), so its helpers can be used by rendering code.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterable, Literal, Sequence

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from .schemas.activation import Activation, SiluClampParams
from .schemas.capability import BackendCapability, Condition, HardwareStatus
from .schemas.device import DeviceSpec
from .schemas.layer import LayerSpec
from .schemas.quant import QuantKind, QuantScheme
from .schemas.selection import ReasonCode

if TYPE_CHECKING:
    from rich.console import Console

    from .environment import Environment
    from .registry import Registry

RECORD_SCHEMA_VERSION = 1
EXIT_OK, EXIT_DRIFT = 0, 1

# --- Tolerances ---------------------------------------------------------------------------------
# Metric: ||out - ref|| / ||ref|| over the whole [T, H] output, in float32 (max |out - ref| is kept
# too). The oracle runs on the *same* (dequantized) weights, so weight quantization error cancels;
# what is left is the arithmetic the backend does differently.
#
# 16-bit activations: bf16 output rounding (relative 2^-9 per element) plus a bf16 round of the
# activation between the GEMMs (another ~2^-9 relative, amplified by at most the GEMM2 fan-in's
# cancellation) gives ~5e-3 in practice; 2e-2 leaves 4x headroom and still rejects a wrong
# activation family (silu for gelu), swapped gate/up halves, a dropped expert or a lost router
# weight, all O(1) relative. It cannot tell gelu from gelu_tanh (|difference| <= 4.7e-4, ~1e-4
# relative at the layer output): no bf16 bound can, which is why declarations state fidelity.
TOL_16BIT = 2e-2
# W8A8 (fp8 e4m3 activations, 3 mantissa bits: ~2^-4 relative per element before accumulation
# averages it down) and MXFP8 activations (e4m3 values with power-of-two block scales): ~3-6e-2.
TOL_FP8 = 1e-1
# NvFP4 W4A4: activations in e2m1 with e4m3 block scales; FlashInfer's test_moe_nvfp4 accepts 2e-1.
TOL_FP4 = 2e-1
_SIXTEEN_BIT = {"bf16", "fp16", "16-bit"}

Status = Literal["passed", "wrong", "raised", "skipped"]
DriftKind = Literal["declared_but_failing", "undeclared_but_working"]

# What an undeclared-but-working result suggests, per reason code.
_DRIFT_HINTS = {
    ReasonCode.ACTIVATION_UNSUPPORTED: "the kernel runs this activation: add it to the declaration's activations",
    ReasonCode.ACTIVATION_APPROXIMATE: "the declared approximation may be exact",
    ReasonCode.QUANT_UNSUPPORTED: "the adapter runs this scheme: declare it (dequantized_at_load if it dequantizes)",
    ReasonCode.QUANT_OPTION_UNSUPPORTED: "the declared quant options may be too narrow",
    ReasonCode.DTYPE_UNSUPPORTED: "the adapter accepts this dtype: declare it",
    ReasonCode.SHAPE_UNALIGNED: "the declared alignment may be too strict",
    ReasonCode.SHAPE_OUT_OF_RANGE: "the declared size limit may be too strict",
    ReasonCode.KNOWN_LIMITATION: "the known limitation did not reproduce here",
    ReasonCode.FEATURE_UNSUPPORTED: "the adapter supports this feature: declare it",
    ReasonCode.ADAPTER_MISSING: "adapter_implemented=False, but the adapter ran it",
    ReasonCode.PARALLEL_UNSUPPORTED: "the declared parallel limits may be too strict",
    ReasonCode.ROUTING_UNSUPPORTED: "the declared routing limits may be too strict",
}


# --- Shape classes --------------------------------------------------------------------------------


class ShapeClass(BaseModel):
    """One layer shape the probe runs (per rank: TP1, EP1), with its token count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    tokens: int
    note: str = ""


def shape_classes(*, quick: bool = False, cpu: bool = False) -> tuple[ShapeClass, ...]:
    """aligned; unaligned intermediate 704 / 1856 (Gemma 4, Nemotron-H) and hidden = intermediate =
    2880 (gpt-oss) with few experts; tiny T (1) and large T (2048; 256 on CPU) on the aligned shape.
    ``quick``: aligned, I=704 and tiny T."""
    large_t = 256 if cpu else 2048
    shapes = (
        ShapeClass(name="aligned", num_experts=8, top_k=2, hidden_size=512, intermediate_size=512, tokens=16,
                   note="every size a multiple of 128"),
        ShapeClass(name="tiny-T", num_experts=8, top_k=2, hidden_size=512, intermediate_size=512, tokens=1,
                   note="one token"),
        ShapeClass(name="large-T", num_experts=8, top_k=2, hidden_size=512, intermediate_size=512, tokens=large_t,
                   note=f"{large_t} tokens"),
        ShapeClass(name="I=704", num_experts=4, top_k=2, hidden_size=512, intermediate_size=704, tokens=16,
                   note="Gemma 4 intermediate (704 = 5.5 x 128)"),
        ShapeClass(name="I=1856", num_experts=4, top_k=2, hidden_size=512, intermediate_size=1856, tokens=16,
                   note="Nemotron-H intermediate (1856 = 14.5 x 128)"),
        ShapeClass(name="H=I=2880", num_experts=4, top_k=2, hidden_size=2880, intermediate_size=2880, tokens=16,
                   note="gpt-oss (2880 = 22.5 x 128)"),
    )
    if quick:
        return tuple(s for s in shapes if s.name in ("aligned", "I=704", "tiny-T"))
    return shapes


def default_scheme(kind: QuantKind, shape: ShapeClass) -> QuantScheme:
    """``QuantScheme(kind=kind)``, except that a scheme whose group size a checkpoint chooses (int4)
    takes the largest of 128 / 64 / 32 that divides both GEMMs' K (hidden and intermediate), so the
    weights can exist at unaligned shapes (704 = 11 x 64, 2880 = 45 x 64); per channel otherwise."""
    scheme = QuantScheme(kind=kind)
    # TODO(issue 11, merge): use quant_info(kind).fixed_group (adds the 3 planning-only mx kinds, which have no format).
    if scheme.group_size is None or kind in (QuantKind.NVFP4, QuantKind.NVFP4_W4A16, QuantKind.MXFP4,
                                             QuantKind.MXFP4_MXFP8, QuantKind.FP8_BLOCK):
        return scheme  # no group, or one fixed by the format
    for group in (scheme.group_size, 64, 32):
        if shape.hidden_size % group == 0 and shape.intermediate_size % group == 0:
            return QuantScheme(kind=kind, group_size=group)
    return QuantScheme(kind=kind, group_size=-1)


# The feature axes: (feature, the activations it is probed with). Biases with gpt-oss's swigluoai and with
# silu; router weight on the input with silu and top-1 routing (Llama 4, the model that uses it).
FEATURE_COMBOS: tuple[tuple[str, tuple[Activation, ...]], ...] = (
    ("bias", (Activation.SILU, Activation.SWIGLUOAI)),
    ("router_weight_on_input", (Activation.SILU,)),
)


def layer_for(shape: ShapeClass, activation: Activation, scheme: QuantScheme, *, bias: bool = False,
              router_weight_on_input: bool = False) -> LayerSpec:
    """The layer of one combination. Router weight on the input is probed with top-1 routing."""
    # fp16 is a kind of its own (unquantized fp16 weights): its hidden states are fp16 as well.
    dtype = "fp16" if scheme.kind is QuantKind.FP16 else "bf16"
    # silu_clamp has no default limit; a small one so the clamp binds on the probe's random data.
    params = SiluClampParams(limit=1.0) if activation is Activation.SILU_CLAMP else None
    return LayerSpec(num_experts=shape.num_experts, top_k=1 if router_weight_on_input else shape.top_k,
                     hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size, activation=activation,
                     quant=scheme, dtype=dtype, bias=bias, apply_router_weight_on_input=router_weight_on_input,
                     activation_params=params)


def tolerance_for(decl: BackendCapability, layer: LayerSpec) -> tuple[float, str]:
    """The bound for (backend, scheme), from the declaration: a scheme the backend runs with 16-bit
    activations (weight-only, or a QuantSupport dequantized at load) gets the tight bound; otherwise
    the bound of the scheme's activation format (an undeclared scheme may quantize activations)."""
    scheme = layer.quant
    fmt = scheme.activation_format
    if fmt in _SIXTEEN_BIT:
        return TOL_16BIT, "16-bit activations"
    if any(s.dequantized_at_load for s in decl.quant_support(scheme.kind)):
        return TOL_16BIT, "dequantized at load: 16-bit activations"
    if fmt == "nvfp4":
        return TOL_FP4, "NvFP4 activations (W4A4)"
    return TOL_FP8, f"{fmt} activations"


# --- Records --------------------------------------------------------------------------------------

_FROZEN = ConfigDict(frozen=True, extra="forbid")

# A scheme written as its label in records ("int4_w4a16:g64"), read back from either form.
Scheme = Annotated[QuantScheme, BeforeValidator(lambda v: QuantScheme.parse(v) if isinstance(v, str) else v),
                   PlainSerializer(lambda q: q.label(), return_type=str)]


class ComboResult(BaseModel):
    """One combination on one backend, and what happened."""

    model_config = _FROZEN

    backend: str
    shape: str  # ShapeClass.name
    activation: Activation
    quant: Scheme
    dtype: str
    tokens: int
    bias: bool = False  # the feature axes (left out of the JSON when False)
    apply_router_weight_on_input: bool = False
    declared: bool
    reasons: tuple[ReasonCode, ...] = ()  # every code that made it undeclared
    reason_text: str = ""  # the rejection messages, one line (kept for undeclared results that passed)
    format_rule_only: bool = False  # undeclared only by the format-wide scale-group rule
    pad_hidden_to: int | None = None
    pad_intermediate_to: int | None = None
    status: Status
    rel_error: float | None = None
    max_abs_error: float | None = None
    tolerance: float | None = None
    message: str = ""  # raised: "Type: text"; skipped: why; wrong: what
    seconds: float | None = None
    worker: int | None = None  # which worker process ran it (0, 1, ... after restarts); None in-process

    def label(self) -> str:
        return (f"{self.backend} {self.shape} {self.activation.value} {self.quant.label()}"
                + _feature_suffix(self.bias, self.apply_router_weight_on_input))

    def layer(self, record: "ProbeRecord") -> LayerSpec:
        shape = record.shape(self.shape)
        return layer_for(shape, self.activation, self.quant, bias=self.bias,
                         router_weight_on_input=self.apply_router_weight_on_input)


def _feature_suffix(bias: bool, router_weight_on_input: bool) -> str:
    return (" +bias" if bias else "") + (" +router-weight-on-input" if router_weight_on_input else "")


class DriftItem(BaseModel):
    model_config = _FROZEN

    kind: DriftKind
    backend: str
    shape: str
    activation: Activation
    quant: Scheme
    bias: bool = False
    apply_router_weight_on_input: bool = False
    status: Status
    reasons: tuple[ReasonCode, ...] = ()
    detail: str = ""

    def describe(self) -> str:
        where = (f"{self.backend} {self.shape} {self.activation.value} {self.quant.label()}"
                 + _feature_suffix(self.bias, self.apply_router_weight_on_input))
        if self.kind == "declared_but_failing":
            return f"declared but {self.status}: {where}: {self.detail}"
        return f"undeclared but works: {where}: {self.detail}"


class BackendProbe(BaseModel):
    model_config = _FROZEN

    backend: str
    status: Literal["probed", "skipped"]
    reason: str = ""  # why skipped, or what went wrong for the whole backend
    adapter: str | None = None
    combinations: int = 0
    seconds: float = 0.0
    worker_restarts: int = 0


class ProbeRecord(BaseModel):
    """A verification record: what ran where, with which result. Validates when read back."""

    model_config = _FROZEN

    schema_version: int = RECORD_SCHEMA_VERSION
    tool: str = "moe-registry probe"
    moe_registry_version: str
    registry_digest: str
    date: str  # UTC, ISO 8601
    card: str
    device: DeviceSpec
    compute_capability: str | None = None  # "sm90"
    driver: str | None = None
    versions: dict[str, str] = {}
    quick: bool = False
    isolated: bool = True
    shapes: tuple[ShapeClass, ...]
    backends: tuple[BackendProbe, ...]
    results: tuple[ComboResult, ...] = ()
    drift: tuple[DriftItem, ...] = ()
    format_findings: tuple[DriftItem, ...] = ()
    summary: dict[str, dict[str, int]] = Field(default_factory=dict)

    def shape(self, name: str) -> ShapeClass:
        return next(s for s in self.shapes if s.name == name)

    def results_for(self, backend: str) -> tuple[ComboResult, ...]:
        return tuple(r for r in self.results if r.backend == backend)

    def declared_but_failing(self) -> tuple[DriftItem, ...]:
        return tuple(d for d in self.drift if d.kind == "declared_but_failing")

    def undeclared_but_working(self) -> tuple[DriftItem, ...]:
        return tuple(d for d in self.drift if d.kind == "undeclared_but_working")

    @property
    def device_tag(self) -> str:
        return self.compute_capability or self.device.name

    def to_json(self) -> str:
        """The record as JSON: header fields indented, one line per result / drift item (fields at
        their defaults left out), so a committed record diffs line by line."""
        data = self.model_dump(mode="json")
        rows = {"results": self.results, "drift": self.drift, "format_findings": self.format_findings}
        parts = []
        for key, value in data.items():
            if key in rows and value:
                lines = [json.dumps(item.model_dump(mode="json", exclude_defaults=True)) for item in rows[key]]
                parts.append(f' "{key}": [\n  ' + ",\n  ".join(lines) + "\n ]")
            else:
                parts.append(f" {json.dumps(key)}: " + json.dumps(value, indent=1).replace("\n", "\n "))
        return "{\n" + ",\n".join(parts) + "\n}\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ProbeRecord":
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


# --- Planning (pure: declarations only) ------------------------------------------------------------


@dataclasses.dataclass
class _Combo:
    index: int
    shape: ShapeClass
    layer: LayerSpec
    declared: bool
    reasons: tuple[ReasonCode, ...]
    reason_text: str
    format_rule_only: bool
    pad_hidden_to: int | None
    pad_intermediate_to: int | None
    tolerance: float

    def job_entry(self) -> dict[str, Any]:
        return {"index": self.index, "layer": self.layer.model_dump(mode="json"), "tokens": self.shape.tokens,
                "pad_hidden_to": self.pad_hidden_to, "pad_intermediate_to": self.pad_intermediate_to,
                "tolerance": self.tolerance}


def availability(decl: BackendCapability, device: DeviceSpec, env: "Environment") -> tuple[bool, str]:
    """Whether the backend can run here: a device rule matches, it has an adapter, and every
    requirement that applies to every layer on this device is met (per ``env``)."""
    if not any(rule.matches(device) for rule in decl.devices):
        needs = " or ".join(rule.describe() for rule in decl.devices)
        return False, f"device: needs {needs}; this machine is {device.label()}"
    if not decl.adapter:
        return False, "declares no adapter"
    for req in decl.requirements:
        if req.when != Condition():
            continue  # applies to some layers only: selection rejects those (PACKAGE_MISSING)
        if req.devices is not None and not any(rule.matches(device) for rule in req.devices):
            continue
        state = env.state(decl.id, req.name)
        if state is not None and not state.satisfied:
            return False, f"requirement {req.kind} {req.name}: {state.detail}"
    return True, ""


def plan_combinations(decl: BackendCapability, device: DeviceSpec, env: "Environment",
                      declarations: Sequence[BackendCapability], shapes: Sequence[ShapeClass], *,
                      activations: Iterable[Activation] | None = None,
                      quant_kinds: Iterable[QuantKind] | None = None, features: bool = True) -> list[_Combo]:
    """Every (shape, scheme, activation) for one backend, with what the declaration says about it;
    with ``features``, also every scheme with each feature of ``FEATURE_COMBOS`` (its activations,
    where asked for) on the first shape class and on H=I=2880 when it is in ``shapes``.

    Declared-ness, reasons and padding all come from ``selection.evaluate`` under the default
    policy (approximations accepted, padding allowed): exactly what selecting would decide.
    """
    from .selection import DeclaredPriority, _check_format_groups, _paddings, _Verdict, evaluate

    policy = DeclaredPriority()
    acts = tuple(activations) if activations is not None else tuple(Activation)
    kinds = tuple(quant_kinds) if quant_kinds is not None else tuple(QuantKind)
    combos: list[_Combo] = []

    def add(shape: ShapeClass, layer: LayerSpec) -> None:
        verdict = evaluate(decl, layer, device, env, policy, declarations)
        fmt = _Verdict()
        _check_format_groups(layer, fmt)
        own = [r for r in verdict.reasons if r not in fmt.reasons]
        pads = {p.dimension: p.padded for p in _paddings(layer, verdict.padding)}
        tol, _ = tolerance_for(decl, layer)
        combos.append(_Combo(
            index=len(combos), shape=shape, layer=layer, declared=not verdict.reasons,
            reasons=tuple(dict.fromkeys(r.code for r in verdict.reasons)),
            reason_text="; ".join(r.message for r in verdict.reasons),
            format_rule_only=bool(verdict.reasons) and not own,
            pad_hidden_to=pads.get("hidden"), pad_intermediate_to=pads.get("intermediate"),
            tolerance=tol))

    # Scheme, then shape, then activation: consecutive combinations share weights (the worker
    # caches them), and aligned / tiny-T / large-T share one set.
    for kind in kinds:
        for shape in shapes:
            scheme = default_scheme(kind, shape)
            for act in acts:
                add(shape, layer_for(shape, act, scheme))
    if features and shapes:
        feature_shapes = [shapes[0], *(s for s in shapes[1:] if s.name == "H=I=2880")]
        for kind in kinds:
            for shape in feature_shapes:
                scheme = default_scheme(kind, shape)
                for feature, feature_acts in FEATURE_COMBOS:
                    for act in (a for a in feature_acts if a in acts):
                        add(shape, layer_for(shape, act, scheme, bias=feature == "bias",
                                             router_weight_on_input=feature == "router_weight_on_input"))
    return combos


# --- Running ------------------------------------------------------------------------------------

ResultCallback = Callable[[int, dict[str, Any]], None]

_SIGNALS = {getattr(signal, name): name for name in ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGILL", "SIGFPE", "SIGKILL")
            if hasattr(signal, name)}


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0 and -code in _SIGNALS:
        return f"exit code {code}, {_SIGNALS[-code]}"
    return f"exit code {code}"


def _last_stderr_line(path: Path) -> str:
    """The most telling last line of a worker's stderr: skips traceback frames and faulthandler's
    thread / module listings, so "Fatal Python error: Aborted" or the exception line comes back."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "no stderr"
    skip = ("Current thread", "Thread 0x", "Extension modules", "Stack (most recent", "Traceback (most recent")
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line[:1].isspace() or line.startswith(skip):
            continue
        return line if len(line) <= 300 else line[:297] + "..."
    return lines[-1].strip()[:300] if lines else "no stderr output"


def _worker_env() -> dict[str, str]:
    """This process's environment, with its sys.path in PYTHONPATH: plugins (entry points and their
    modules) found here are found by the worker too."""
    env = dict(os.environ)
    entries = [p for p in sys.path if p and os.path.isdir(p)]
    if env.get("PYTHONPATH"):
        entries.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _read_lines(stream: Any, q: "queue.Queue[str | None]") -> None:
    try:
        for line in stream:
            q.put(line)
    finally:
        q.put(None)


@dataclasses.dataclass
class _JobOutcome:
    restarts: int = 0
    failure: str = ""  # the whole backend could not run (adapter not importable, worker cannot start)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def _run_isolated(job: dict[str, Any], on_result: ResultCallback, *, timeout_s: float,
                  startup_s: float) -> _JobOutcome:
    """Run a job in subprocess workers, restarting after crashes, CUDA errors and timeouts."""
    combos = job["combos"]
    n = len(combos)
    outcome = _JobOutcome()
    start = 0
    worker = 0
    with tempfile.TemporaryDirectory(prefix="moe-registry-probe-") as tmp:
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        env = _worker_env()
        while start < n:
            stderr_path = Path(tmp) / f"stderr-{worker}.txt"
            with open(stderr_path, "w", encoding="utf-8") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "moe_registry.probe_worker", str(job_path), "--start", str(start)],
                    stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env, text=True,
                    encoding="utf-8", errors="replace")
            lines: queue.Queue[str | None] = queue.Queue()
            reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
            reader.start()
            next_index, hello, cuda_exit, timed_out = start, False, False, False
            while True:
                wait = timeout_s + (0 if hello else startup_s)
                try:
                    line = lines.get(timeout=wait)
                except queue.Empty:
                    timed_out = True
                    proc.kill()
                    break
                if line is None:
                    break
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                kind = event.get("event")
                if kind == "hello":
                    if event.get("error"):
                        outcome.failure = f"adapter not importable: {event['error']}"
                        break
                    hello = True
                    outcome.info = {k: v for k, v in event.items() if k not in ("event", "pid")}
                elif kind == "result":
                    index = int(event["index"])
                    on_result(index, {**event, "worker": worker})
                    next_index = index + 1
                elif kind == "exit":
                    cuda_exit = True
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            reader.join(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
            if outcome.failure:
                return outcome
            if next_index >= n:
                break
            if not hello and not timed_out:
                outcome.failure = f"worker failed to start ({_exit_text(code)}; {_last_stderr_line(stderr_path)})"
                return outcome
            if timed_out:
                on_result(next_index, {"status": "raised", "worker": worker, "message": (
                    f"timed out: no result after {wait:g} s (worker killed)")})
                next_index += 1
            elif not cuda_exit:
                on_result(next_index, {"status": "raised", "worker": worker, "message": (
                    f"worker crashed ({_exit_text(code)}; {_last_stderr_line(stderr_path)})")})
                next_index += 1
            start = next_index
            if start < n:
                worker += 1
                outcome.restarts += 1
    return outcome


def _run_in_process(job: dict[str, Any], on_result: ResultCallback) -> _JobOutcome:
    from .probe_worker import run_job

    outcome = _JobOutcome()

    def emit(event: dict[str, Any]) -> None:
        if event.get("event") == "hello":
            if event.get("error"):
                outcome.failure = f"adapter not importable: {event['error']}"
            else:
                outcome.info = {k: v for k, v in event.items() if k not in ("event", "pid")}
        elif event.get("event") == "result":
            on_result(int(event["index"]), {**event, "worker": None})

    run_job(job, 0, emit, stop_on_cuda_error=False)
    return outcome


# --- Machine facts ---------------------------------------------------------------------------------


def _nvidia_smi(field: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else None


def _versions() -> dict[str, str]:
    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name, dist in (("torch", "torch"), ("flashinfer", "flashinfer-python"), ("vllm", "vllm"),
                       ("pydantic", "pydantic")):
        try:
            out[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _prepare_environment(registry: "Registry") -> "Environment":
    """Make ops that a library registers on load visible to the environment check: vLLM's _moe_C
    (marlin) comes from ``$MOE_REGISTRY_VLLM_MOE_C`` when vLLM itself is not installed."""
    env = registry.environment()
    unmet_ops = [s for s in env.requirements if not s.satisfied
                 and any(r.kind == "torch_op" and r.name == s.name for d in registry for r in d.requirements)]
    if unmet_ops and os.environ.get("MOE_REGISTRY_VLLM_MOE_C"):
        try:
            from .backends.marlin.ops import load_moe_c

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
        common = dict(backend=r.backend, shape=r.shape, activation=r.activation, quant=r.quant, status=r.status,
                      bias=r.bias, apply_router_weight_on_input=r.apply_router_weight_on_input)
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
            hints = "; ".join(dict.fromkeys(_DRIFT_HINTS.get(c, "") for c in r.reasons if c in _DRIFT_HINTS))
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
    bias / router-weight-on-input combinations. ``progress``: a progress bar when stdout is a terminal. ``isolate=False``
    runs in this process (a crash then ends the probe). ``timeout_s``: per combination (default
    ``$MOE_REGISTRY_PROBE_TIMEOUT`` or 180 s); ``startup_s`` more for a worker's first result.
    """
    from . import __version__
    from .registry import default_registry
    from .schemas.device import detect

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

    plans: list[tuple[BackendCapability, list[_Combo]]] = []
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
                          _combos: list[_Combo] = combos) -> None:
                _got[index] = data
                if bar is not None:
                    c = _combos[index]
                    bar.update(task, advance=1, description=(
                        f"probe {decl.id}: {c.shape.name} {c.layer.quant.label()} {c.layer.activation.value}"))

            job = {"backend": decl.id, "adapter": decl.adapter, "device": "cuda" if on_gpu else "cpu",
                   "oracle": "float64" if decl.id == "reference" else "reference",
                   "combos": [c.job_entry() for c in combos]}
            t0 = time.perf_counter()
            if isolate:
                outcome = _run_isolated(job, on_result, timeout_s=timeout_s, startup_s=startup_s)
            else:
                outcome = _run_in_process(job, on_result)
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
    versions = _versions()
    if info.get("cuda"):
        versions["cuda"] = str(info["cuda"])
    card = info.get("card") or (_nvidia_smi("name") if on_gpu else None) or device.name
    return ProbeRecord(
        moe_registry_version=__version__, registry_digest=registry.digest,
        date=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        card=card, device=device, compute_capability=f"sm{device.sm}" if device.sm is not None else None,
        driver=_nvidia_smi("driver_version") if on_gpu else None, versions=versions, quick=quick,
        isolated=isolate, shapes=classes, backends=tuple(probes[d.id] for d in chosen), results=tuple(results),
        drift=drift, format_findings=findings, summary=_summary(results))


def _progress(console: "Console | None"):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


# --- Rendering ------------------------------------------------------------------------------------


def _span(values: Sequence[str], universe: Sequence[str]) -> str:
    values = list(dict.fromkeys(values))
    if len(values) == len(universe) and len(universe) > 1:
        return "all"
    return ", ".join(values)


def grouped_drift(items: Sequence[DriftItem]) -> list[dict[str, Any]]:
    """Drift items grouped by (kind, backend, quant, status, reason codes): one row per distinct
    finding, listing the activations and shapes it covers."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for d in items:
        quant = d.quant.label() + _feature_suffix(d.bias, d.apply_router_weight_on_input)
        key = (d.kind, d.backend, quant, d.status, d.reasons)
        g = groups.setdefault(key, {"kind": d.kind, "backend": d.backend, "quant": quant,
                                    "status": d.status, "reasons": [c.value for c in d.reasons],
                                    "activations": [], "shapes": [], "example": d.detail})
        g["activations"].append(d.activation.value)
        g["shapes"].append(d.shape)
    return list(groups.values())


def print_record(console: "Console", record: ProbeRecord, *, out: str | None = None) -> None:
    """Drift (grouped), format findings, then the compact per-backend summary table last."""
    from rich.table import Table

    acts = [a.value for a in Activation]
    shapes = [s.name for s in record.shapes]
    if record.drift:
        table = Table(title=f"drift ({len(record.drift)} combinations)", title_justify="left", show_lines=True)
        for column in ("drift", "backend", "quant", "activations", "shapes", "why"):
            table.add_column(column, no_wrap=column in ("drift", "backend", "quant"))
        for g in grouped_drift(record.drift):
            kind = "declared, " + g["status"] if g["kind"] == "declared_but_failing" else "undeclared, works"
            why = g["example"] if g["kind"] == "declared_but_failing" else (
                ", ".join(c.upper() for c in g["reasons"]) + ": " + "; ".join(
                    dict.fromkeys(_DRIFT_HINTS.get(ReasonCode(c), "") for c in g["reasons"])))
            table.add_row(kind, g["backend"], g["quant"], _span(g["activations"], acts),
                          _span(list(dict.fromkeys(g["shapes"])), shapes), why)
        console.print(table)
    if record.format_findings:
        groups = grouped_drift(record.format_findings)
        console.print(f"format findings ({len(record.format_findings)} combinations): undeclared for every backend "
                      "by selection's scale-group rule, yet they ran correctly:", markup=False, highlight=False)
        for g in groups:
            console.print(f"  {g['backend']} {g['quant']} on {_span(list(dict.fromkeys(g['shapes'])), shapes)}",
                          markup=False, highlight=False)
    for b in record.backends:
        if b.status == "skipped" or b.reason:
            console.print(f"{b.backend}: {b.status}: {b.reason}", markup=False, highlight=False)

    table = Table(title=f"probe on {record.card} ({record.device_tag}), {record.date}"
                        f"{' (quick)' if record.quick else ''}", title_justify="left")
    for column in ("backend", "declared ok", "declared failing", "undeclared ok", "undeclared failing",
                   "skipped", "drift", "time"):
        table.add_column(column, no_wrap=True, justify="left" if column == "backend" else "right")
    totals = [0] * 6
    for b in record.backends:
        if b.status == "skipped" and not b.combinations:
            table.add_row(b.backend, "-", "-", "-", "-", "-", "-", "skipped")
            continue
        s = record.summary.get(b.backend, {})
        row = [s.get("declared_passed", 0), s.get("declared_wrong", 0) + s.get("declared_raised", 0),
               s.get("undeclared_passed", 0), s.get("undeclared_wrong", 0) + s.get("undeclared_raised", 0),
               s.get("declared_skipped", 0) + s.get("undeclared_skipped", 0),
               sum(1 for d in record.drift if d.backend == b.backend)]
        totals = [t + v for t, v in zip(totals, row)]
        restarts = f", {b.worker_restarts} restarts" if b.worker_restarts else ""
        table.add_row(b.backend, *map(str, row), f"{b.seconds:.0f} s{restarts}")
    table.add_row("total", *map(str, totals), "", end_section=False)
    console.print(table)
    failing = len(record.declared_but_failing())
    working = len(record.undeclared_but_working())
    line = (f"drift: {failing} declared-but-failing, {working} undeclared-but-working"
            + (f"; {len(record.format_findings)} format findings" if record.format_findings else ""))
    if out:
        line += f"; record written to {out}"
    console.print(line, markup=False, highlight=False)


def main(args: Any) -> int:
    """The `moe-registry probe` command: exit 0 without drift, 1 with drift."""
    from .render import safe_console  # escapes plugin strings; a closed pipe is a normal end

    as_json = bool(getattr(args, "json", False))
    console = safe_console(stderr=as_json, width=None if sys.stdout.isatty() else 160, soft_wrap=False, highlight=False)
    record = run_probe(backends=list(getattr(args, "backend", None) or []) or None, quick=bool(args.quick),
                       progress=not as_json, isolate=not bool(getattr(args, "in_process", False)), console=console)
    out = getattr(args, "out", None)
    if out:
        record.save(out)
    if as_json:
        sys.stdout.write(record.to_json())
    else:
        print_record(console, record, out=out)
    return main_exit_code(record)


def main_exit_code(record: ProbeRecord) -> int:
    """0 without drift, 1 with any (declared-but-failing or undeclared-but-working)."""
    return EXIT_DRIFT if record.drift else EXIT_OK


# --- Verification: records as provenance for declarations ------------------------------------------


def verification_summary(record: ProbeRecord) -> dict[str, Any]:
    """What a record shows, per probed backend, for updating declarations.

    A capability (an activation, a quant kind, a shape class) is ``verified`` when at least one
    declared combination with it ran (not skipped) and every declared combination with it that ran
    passed; ``failing`` when a declared one was wrong or raised; ``undeclared_working`` lists what
    ran correctly without being declared (candidates to declare). ``status`` is "verified" when
    declared combinations ran and none failed.
    """
    out: dict[str, Any] = {"device": record.device_tag, "card": record.card, "date": record.date,
                           "registry_digest": record.registry_digest, "moe_registry_version": record.moe_registry_version,
                           "quick": record.quick, "backends": {}}
    for probe in record.backends:
        if probe.status != "probed":
            out["backends"][probe.backend] = {"status": "not run", "reason": probe.reason}
            continue
        results = record.results_for(probe.backend)
        entry: dict[str, Any] = {}
        for axis, key in (("activations", lambda r: r.activation.value), ("quant", lambda r: r.quant.kind.value),
                          ("shapes", lambda r: r.shape), ("features", _feature_of)):
            ran: dict[str, list[ComboResult]] = {}
            for r in results:
                if key(r) is not None:
                    ran.setdefault(key(r), []).append(r)
            verified, failing, undeclared = [], [], []
            for name, rs in ran.items():
                declared_ran = [r for r in rs if r.declared and r.status != "skipped"]
                if any(r.status in ("wrong", "raised") for r in declared_ran):
                    failing.append(name)
                elif declared_ran:
                    verified.append(name)
                if any(not r.declared and r.status == "passed" and not r.format_rule_only for r in rs):
                    undeclared.append(name)
            entry[axis] = {"verified": verified, "failing": failing, "undeclared_working": undeclared}
        counts = {s: sum(1 for r in results if r.declared and r.status == s)
                  for s in ("passed", "wrong", "raised", "skipped")}
        entry["declared"] = counts
        entry["status"] = ("verified" if counts["passed"] and not counts["wrong"] and not counts["raised"]
                           else "failing" if counts["wrong"] or counts["raised"] else "not run")
        entry["drift"] = [
            f"{'declared but ' + g['status'] if g['kind'] == 'declared_but_failing' else 'undeclared but works'}: "
            f"{g['quant']}, activations {_span(g['activations'], [a.value for a in Activation])}, shapes "
            f"{_span(list(dict.fromkeys(g['shapes'])), [s.name for s in record.shapes])}"
            + (f" ({', '.join(c.upper() for c in g['reasons'])})" if g["reasons"] else f": {g['example']}")
            for g in grouped_drift([d for d in record.drift if d.backend == probe.backend])]
        out["backends"][probe.backend] = entry
    return out


def _feature_of(r: ComboResult) -> str | None:
    """The feature axis a result belongs to (None: a plain combination)."""
    if r.bias:
        return "bias"
    return "router_weight_on_input" if r.apply_router_weight_on_input else None


def apply_verification(decl: BackendCapability, record: ProbeRecord, record_path: str) -> BackendCapability:
    """A copy of ``decl`` with the record as provenance: the record's device tag added to
    ``verified_on`` of every verified activation and quant support, and a ``hardware`` entry for the
    tag (verified only when no declared combination failed). Unchanged if the record did not probe it."""
    summary = verification_summary(record)["backends"].get(decl.id)
    if not summary or summary.get("status") == "not run":
        return decl
    tag = record.device_tag
    data = decl.model_dump()
    for act, impl in data["activations"].items():
        if Activation(act).value in summary["activations"]["verified"] and tag not in impl["verified_on"]:
            impl["verified_on"] = (*impl["verified_on"], tag)
    for support in data["quant"]:
        if QuantKind(support["kind"]).value in summary["quant"]["verified"] and tag not in support["verified_on"]:
            support["verified_on"] = (*support["verified_on"], tag)
    # Features: tagged once every feature the declaration claims was verified (a claimed one not run: no tag).
    claimed = [name for name, on in (("bias", decl.features.bias),
                                     ("router_weight_on_input", decl.features.apply_router_weight_on_input)) if on]
    features = data["features"]
    if claimed and all(name in summary["features"]["verified"] for name in claimed) \
            and tag not in features["verified_on"]:
        features["verified_on"] = (*features["verified_on"], tag)
    counts = summary["declared"]
    note = (f"moe-registry probe {record.date[:10]} on {record.card}: {counts['passed']} declared combinations "
            f"passed, {counts['wrong'] + counts['raised']} failed")
    status = "verified" if summary["status"] == "verified" else "not verified on hardware"
    hardware = [h for h in data["hardware"] if h["devices"] != tag]
    hardware.append(HardwareStatus(devices=tag, status=status, record=record_path, note=note).model_dump())
    data["hardware"] = hardware
    return BackendCapability.model_validate(data)


def verification_by_family(decl: BackendCapability) -> dict[str, dict[str, list[str]]]:
    """Per device family named in the declaration's provenance (``hardware`` entries and
    ``verified_on`` tags): which capabilities are verified on hardware there, and which of those the
    backend declares for that family are only cited from upstream source."""
    from .schemas.device import get_device

    tags = list(dict.fromkeys([h.devices for h in decl.hardware]
                              + [t for impl in decl.activations.values() for t in impl.verified_on]
                              + [t for s in decl.quant for t in s.verified_on]))
    out: dict[str, dict[str, list[str]]] = {}
    for tag in tags:
        try:
            device = get_device(tag)
        except ValueError:
            device = None
        verified, cited = [], []
        for act, impl in decl.activations.items():
            (verified if tag in impl.verified_on else cited).append(f"activation {act.value}")
        for s in decl.quant:
            on_family = device is None or s.devices is None or any(r.matches(device) for r in s.devices)
            if tag in s.verified_on:
                verified.append(f"quant {s.kind.value}")
            elif on_family and s.adapter_implemented:
                cited.append(f"quant {s.kind.value}")
        out[tag] = {"verified": verified, "cited": cited}
    return out


def verification_lines(decl: BackendCapability) -> list[str]:
    """One line per device family: hardware status (with the record), what was verified there and
    what is only cited; "cited from upstream source only" when nothing was run anywhere."""
    by_family = verification_by_family(decl)
    status = {h.devices: h for h in decl.hardware}
    lines = []
    for tag, facts in by_family.items():
        h = status.get(tag)
        parts = []
        if h is not None:
            head = f"{tag}: {h.status}" + (f" ({h.record})" if h.record else "")
            parts.append(head + (f": {h.note}" if h.note and not facts["verified"] else ""))
        if facts["verified"]:
            if h is None:
                parts.append(f"{tag}: facts verified on hardware")
            parts.append("verified " + _compact(facts["verified"]))
            if facts["cited"]:
                parts.append("only cited " + _compact(facts["cited"]))
        lines.append("; ".join(parts))
    return lines or ["cited from upstream source only"]


def _compact(items: list[str]) -> str:
    """["activation silu", "activation gelu", "quant bf16"] -> "activations silu, gelu; quant bf16"."""
    acts = [i.split(" ", 1)[1] for i in items if i.startswith("activation ")]
    quants = [i.split(" ", 1)[1] for i in items if i.startswith("quant ")]
    parts = []
    if acts:
        parts.append(("activations " if len(acts) > 1 else "activation ") + ", ".join(acts))
    if quants:
        parts.append("quant " + ", ".join(quants))
    return "; ".join(parts)
