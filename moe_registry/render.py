"""Rendering for the CLI: rich tables for people, Markdown for bug reports, JSON for tools.

Everything here is derived from Selections, ModelPlans and declarations; nothing is decided here.
The JSON shapes are documented in docs/cli-json.md (``schema_version`` changes on any break).
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, Iterable

from .schemas.activation import Activation
from .schemas.capability import BackendCapability
from .schemas.device import PRESETS, DeviceSpec
from .schemas.quant import QuantKind
from .schemas.selection import Selection

if TYPE_CHECKING:
    from rich.console import Console

    from .planner import ModelPlan

JSON_SCHEMA_VERSION = 1

# --- Escaping plugin- and config-supplied text -------------------------------------------------

# C0 (but \t, \n), DEL, C1, Unicode line separators and bidi overrides: a plugin name or a config
# string must never move the cursor, clear the screen, set the window title or reorder a line.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_OR_NEWLINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape_char(match: "re.Match[str]") -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters written as visible escapes (``\\x1b``); newlines and tabs
    kept only with ``keep_newlines`` (multi-line Markdown), so one-line messages stay one line."""
    return (_CONTROL if keep_newlines else _CONTROL_OR_NEWLINE).sub(_escape_char, text)


@functools.lru_cache(maxsize=1)
def _safe_console_class():
    from rich.console import Console

    class SafeConsole(Console):
        """Every string rich renders (print arguments, table cells and titles) goes through
        ``render_str``: escape control characters there, before rich adds its own styling codes."""

        def render_str(self, text: str, **kwargs: Any):
            return super().render_str(escape_control(text, keep_newlines=True), **kwargs)

        def on_broken_pipe(self) -> None:
            # rich would raise SystemExit(1); the CLI treats a closed pipe as a normal end.
            self.quiet = True
            raise BrokenPipeError

    return SafeConsole


def safe_console(**kwargs: Any) -> "Console":
    return _safe_console_class()(**kwargs)

# --- Shared text pieces ------------------------------------------------------------------------


def engine_flags(selection: Selection) -> str:
    e = selection.engines
    parts = []
    if "vllm" in e:
        parts.append(f"vLLM --moe-backend {e['vllm']}")
    if "sglang" in e:
        parts.append(f"SGLang --moe-runner-backend {e['sglang']}")
    if "trtllm" in e:
        parts.append(f"TRT-LLM moe_config.backend={e['trtllm']}")
    return "; ".join(parts) or "no engine equivalent"


def padding_text(selection: Selection) -> str:
    return ", ".join(f"{p.dimension} {p.original}->{p.padded} (+{p.extra_weight_memory_pct:g}% memory/FLOPs)"
                     for p in selection.padding) or "none"


def shape_text(selection: Selection) -> str:
    l = selection.layer
    text = f"E={l.num_experts} top-{l.top_k} H={l.hidden_size} I={l.intermediate_size}"
    if l.parallel.tp > 1 or l.parallel.ep > 1:
        text += f" (per rank: E={l.local_num_experts} I={l.local_intermediate_size})"
    return text


def layer_range(indices: list[int]) -> str:
    if not indices:
        return "-"
    indices = list(indices)
    if indices == list(range(indices[0], indices[-1] + 1)):
        span = str(indices[0]) if len(indices) == 1 else f"{indices[0]}-{indices[-1]}"
    else:
        span = ",".join(map(str, indices[:6])) + (",..." if len(indices) > 6 else "")
    return f"{span} ({len(indices)})"


# --- Selections ----------------------------------------------------------------------------------


def selection_json(selection: Selection) -> dict[str, Any]:
    data = selection.model_dump(mode="json")
    data["schema_version"] = JSON_SCHEMA_VERSION
    return data


def _selection_lines(selection: Selection) -> list[str]:
    lines = [f"decided by: {selection.decided_by}", f"padding: {padding_text(selection)}",
             f"engines: {engine_flags(selection)}", f"fingerprint: {selection.fingerprint}"]
    lines += [f"note ({n.kind}): {n.message}" for n in selection.notes]
    return lines


def selection_markdown(selection: Selection, *, heading: str = "###") -> str:
    out = [f"{heading} {selection.layer.name or 'Layer'} -> `{selection.backend}`", "",
           f"- device: {selection.device.label()}{' (planning)' if selection.planning else ''}",
           f"- layer: {shape_text(selection)}, {selection.layer.activation.value}, {selection.layer.quant.label()}, "
           f"{selection.layer.dtype}, {selection.layer.parallel.label()}"]
    out += [f"- {line}" for line in _selection_lines(selection)]
    if len(selection.eligible) > 1:
        out.append("- also eligible: " + ", ".join(f"`{c.backend}`" for c in selection.eligible[1:]))
    out += ["", rejections_markdown(selection.rejections)]
    return "\n".join(out)


def rejections_markdown(rejections: Iterable) -> str:
    rejections = list(rejections)
    if not rejections:
        return "No backend was rejected."
    rows = ["| rejected backend | code | reason | hint |", "|---|---|---|---|"]
    for rejection in rejections:
        for reason in rejection.reasons:
            rows.append(f"| `{rejection.backend}` | {reason.code.value} | {_md(reason.message)} | {_md(reason.hint)} |")
    return "\n".join(rows)


def _md(text: str) -> str:
    return escape_control(text.replace("|", "\\|").replace("\n", " "))


def print_selection(console: "Console", selection: Selection) -> None:
    console.print(f"[bold]{selection.layer.name or 'layer'}[/bold] on {selection.device.label()}"
                  f"{' (planning)' if selection.planning else ''}: [bold green]{selection.backend}[/bold green]")
    console.print(f"  {shape_text(selection)}, {selection.layer.activation.value}, {selection.layer.quant.label()}, "
                  f"{selection.layer.dtype}, {selection.layer.parallel.label()}")
    for line in _selection_lines(selection):
        console.print(f"  {line}", highlight=False, markup=False)
    if len(selection.eligible) > 1:
        console.print("  also eligible: " + ", ".join(c.backend for c in selection.eligible[1:]), markup=False)
    print_rejections(console, selection.rejections)


def print_rejections(console: "Console", rejections: Iterable) -> None:
    from rich.table import Table

    rejections = list(rejections)
    if not rejections:
        return
    table = Table(title="rejected", title_justify="left", show_lines=True, expand=False)
    table.add_column("backend", no_wrap=True)
    table.add_column("code", no_wrap=True)
    table.add_column("reason")
    table.add_column("hint")
    for rejection in rejections:
        for i, reason in enumerate(rejection.reasons):
            table.add_row(rejection.backend if i == 0 else "", reason.code.value, reason.message, reason.hint)
    console.print(table)


# --- Model plans ---------------------------------------------------------------------------------


def _plan_header(plan: "ModelPlan") -> str:
    device = plan.device.label() if plan.device else "this machine"
    model = plan.model + (f" ({plan.model_id})" if plan.model_id and plan.model_id != plan.model else "")
    return (f"{model} on {device}, {plan.parallel.label()}: {len(plan.layers)} MoE layers of "
            f"{plan.num_hidden_layers}; quantization: {plan.quantization}")


def plan_json(plan: "ModelPlan") -> dict[str, Any]:
    groups = []
    for group in plan.groups():
        entry: dict[str, Any] = {
            "layers": list(group.indices), "range": group.label(),
            "layer": group.layer.shape_key().model_dump(mode="json"),
        }
        if group.selection is not None:
            entry["selection"] = group.selection.model_dump(mode="json", exclude={"layer"})
        if group.error is not None:
            entry["error"] = group.error
            entry["rejections"] = [r.model_dump(mode="json") for r in group.rejections]
        groups.append(entry)
    return {
        "schema_version": JSON_SCHEMA_VERSION, "model": plan.model, "model_id": plan.model_id,
        "source": plan.source, "quantization": plan.quantization, "num_hidden_layers": plan.num_hidden_layers,
        "notes": list(plan.notes),
        "device": plan.device.model_dump(mode="json") if plan.device else None,
        "parallel": plan.parallel.model_dump(mode="json"),
        "moe_layers": len(plan.layers), "groups": groups,
        "layers": [{"index": lp.layer.index, "name": lp.layer.name,
                    "backend": lp.selection.backend if lp.selection else None} for lp in plan.layers],
    }


def plan_markdown(plan: "ModelPlan") -> str:
    out = [f"## MoE backend plan: {_plan_header(plan)}", "", "Generated by `moe-registry explain`."]
    out += [f"- note: {_md(n)}" for n in plan.notes]
    out += ["",
           "| layers | backend | shape | activation | quant | padding | engine flags |", "|---|---|---|---|---|---|---|"]
    for group in plan.groups():
        s = group.selection
        backend = f"`{s.backend}`" if s else "**none** (reasons below)"
        out.append(f"| {group.label()} | {backend} | {_group_shape(group)} | {group.layer.activation.value} "
                   f"| {group.layer.quant.label()} | {padding_text(s) if s else '-'} | {engine_flags(s) if s else '-'} |")
    for group in plan.groups():
        out += ["", f"### {group.label()}"]
        if group.selection is not None:
            out += [f"- chosen: `{group.selection.backend}`"] + [f"- {line}" for line in _selection_lines(group.selection)]
            out += ["", rejections_markdown(group.selection.rejections)]
        else:
            out += [f"- no backend: {_md(group.error or '')}", "", rejections_markdown(group.rejections)]
    return "\n".join(out) + "\n"


def _group_shape(group) -> str:
    l = group.layer
    text = f"E={l.num_experts} top-{l.top_k} H={l.hidden_size} I={l.intermediate_size}"
    if l.parallel.tp > 1 or l.parallel.ep > 1:
        text += f" (rank: E={l.local_num_experts} I={l.local_intermediate_size})"
    return text


def print_plan(console: "Console", plan: "ModelPlan") -> None:
    from rich.table import Table

    console.print(_plan_header(plan), markup=False)
    for note in plan.notes:
        console.print(f"note: {note}", markup=False)
    table = Table(show_lines=False)
    for column in ("layers", "backend", "shape", "activation", "quant", "padding", "engine flags"):
        table.add_column(column, no_wrap=column in ("layers", "backend"))
    for group in plan.groups():
        s = group.selection
        table.add_row(group.label(), s.backend if s else "NONE", _group_shape(group),
                      group.layer.activation.value, group.layer.quant.label(), padding_text(s) if s else "-",
                      engine_flags(s) if s else "-")
    console.print(table)
    for group in plan.groups():
        console.print(f"\n[bold]{group.label()}[/bold]", highlight=False)
        if group.selection is not None:
            console.print(f"  chosen: {group.selection.backend}", markup=False)
            for line in _selection_lines(group.selection):
                console.print(f"  {line}", markup=False, highlight=False)
            print_rejections(console, group.selection.rejections)
        else:
            console.print(f"  no backend: {group.error}", markup=False, highlight=False)
            print_rejections(console, group.rejections)


# --- Capability matrix -----------------------------------------------------------------------------

_FAMILIES = (("sm80", 80), ("sm89", 89), ("sm90", 90), ("sm100", 100), ("sm103", 103), ("sm120", 120), ("cpu", None))


def _device_for(tag: str) -> DeviceSpec:
    return PRESETS[tag]


def quant_cell(decl: BackendCapability, kind: QuantKind) -> str:
    supports = decl.quant_support(kind)
    if not supports:
        return "-"
    tags = [tag for tag, _ in _FAMILIES
            if any(rule.matches(_device_for(tag)) for rule in decl.devices)
            and any(s.devices is None or any(r.matches(_device_for(tag)) for r in s.devices) for s in supports)]
    marks = []
    if any(s.dequantized_at_load for s in supports):
        marks.append("dequant")
    if not all(s.adapter_implemented for s in supports):
        marks.append("no adapter")
    return ",".join(tags) + (f" ({', '.join(marks)})" if marks else "")


def activation_cell(decl: BackendCapability, act: Activation) -> str:
    impl = decl.activations.get(act)
    if impl is None:
        return "-"
    return "approx" if impl.fidelity == "approximate" else "yes"


def matrix_json(declarations: Iterable[BackendCapability], device: DeviceSpec | None = None) -> dict[str, Any]:
    out = []
    for d in declarations:
        entry = d.model_dump(mode="json")
        if device is not None:
            entry["runs_on_device"] = any(r.matches(device) for r in d.devices)
            entry["quant_on_device"] = sorted({s.kind.value for s in d.quant
                                               if s.devices is None or any(r.matches(device) for r in s.devices)})
        out.append(entry)
    return {"schema_version": JSON_SCHEMA_VERSION, "device": device.model_dump(mode="json") if device else None,
            "backends": out}


def matrix_markdown(declarations: Iterable[BackendCapability], device: DeviceSpec | None = None) -> str:
    decls = [d for d in declarations if device is None or any(r.matches(device) for r in d.devices)]
    where = f" on {device.label()}" if device else ""
    out = [f"# Capability matrix{where}", "",
           "Generated from the backend declarations by `moe-registry backends --markdown`; do not edit by hand.",
           "`yes` exact, `approx` the kernel runs an approximation (see notes), `-` not declared. Quant cells list the",
           "device families where the scheme runs; `dequant`: weights dequantized to 16-bit at load; `no adapter`:",
           "the kernel runs it (cited) but moe-registry cannot convert its weights yet.", "",
           "## Activations", "", "| backend | " + " | ".join(a.value for a in Activation) + " |",
           "|---|" + "---|" * len(Activation)]
    for d in decls:
        out.append(f"| `{d.id}` | " + " | ".join(activation_cell(d, a) for a in Activation) + " |")
    out += ["", "## Quantization schemes", "", "| backend | " + " | ".join(k.value for k in QuantKind) + " |",
            "|---|" + "---|" * len(QuantKind)]
    for d in decls:
        out.append(f"| `{d.id}` | " + " | ".join(quant_cell(d, k) for k in QuantKind) + " |")
    out += ["", "## Backends", ""]
    for d in decls:
        out += _backend_markdown(d)
    return "\n".join(out) + "\n"


def _backend_markdown(d: BackendCapability) -> list[str]:
    out = [f"### `{d.id}`: {d.name}", "", d.description, "",
           f"- kernel: `{d.kernel}`; provider: {d.provider}",
           f"- devices: {' or '.join(r.describe() for r in d.devices)}; hidden-state dtypes: {', '.join(d.dtypes)}",
           f"- engines: vLLM `{d.engines.vllm or '-'}`, SGLang `{d.engines.sglang or '-'}`, TRT-LLM "
           f"`{d.engines.trtllm or '-'}`",
           "- priority: " + ", ".join(f"{f.value} {p}" for f, p in d.priority.items())]
    for act, impl in d.activations.items():
        if impl.fidelity == "approximate":
            out.append(f"- {act.value} is approximate: {impl.note} (source: {impl.source})")
    for rule in d.shape_rules:
        when = "" if rule.when == rule.when.__class__() else f" when {rule.when.describe()}"
        out.append(f"- shape: {rule.dimension} multiple of {rule.multiple_of}{when}"
                   f"{' (padded by the adapter)' if rule.pad else ''} (source: {rule.source})")
    for lim in d.limitations:
        out.append(f"- known limitation: {lim.reason} (source: {lim.source})")
    for req in d.requirements:
        cost = f"; first build {req.build_cost}" if req.build_cost else ""
        out.append(f"- requires {req.kind} `{req.name}`{cost}")
    out.append("- hardware verification: " + verification_text(d))
    return out + [""]


def verification_text(d: BackendCapability) -> str:
    """Per device family: verified on hardware (with the record) or only cited from upstream."""
    from .probe import verification_lines

    return " | ".join(verification_lines(d))


def print_matrix(console: "Console", declarations: Iterable[BackendCapability], device: DeviceSpec | None) -> None:
    from rich.table import Table

    decls = list(declarations)
    acts = Table(title="activations" + (f" on {device.label()}" if device else ""), title_justify="left")
    acts.add_column("backend", no_wrap=True)
    for a in Activation:
        acts.add_column(a.value)
    for d in decls:
        runs = device is None or any(r.matches(device) for r in d.devices)
        acts.add_row(d.id + ("" if runs else " (not on device)"), *(activation_cell(d, a) for a in Activation))
    console.print(acts)
    quant = Table(title="quantization schemes (device families)", title_justify="left")
    quant.add_column("backend", no_wrap=True)
    for k in QuantKind:
        quant.add_column(k.value)
    for d in decls:
        quant.add_row(d.id, *(quant_cell(d, k) for k in QuantKind))
    console.print(quant)
    verify = Table(title="hardware verification", title_justify="left")
    verify.add_column("backend", no_wrap=True)
    verify.add_column("status")
    for d in decls:
        verify.add_row(d.id, verification_text(d))
    console.print(verify)
