"""Rendering for the CLI: rich tables for people, Markdown for bug reports, JSON for tools.

Everything here is derived from Selections, ModelPlans and declarations; nothing is decided here.
The JSON shapes are documented in docs/cli-json.md (``schema_version`` changes on any break).
"""

from __future__ import annotations

import functools
import os
import re
import sys
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


def console() -> "Console":
    """The console every command prints to. Pipes and NO_COLOR get plain text (rich honours both).
    The width is the terminal's, else COLUMNS, else 80 (rich reads COLUMNS too); text is wrapped to
    it, never cut. Control characters in plugin- and config-supplied strings are escaped and a
    closed pipe ends quietly (:func:`safe_console`)."""
    return safe_console(width=_width(), soft_wrap=False, highlight=False)


def _width() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return max(columns, 40)
    if sys.stdout.isatty():
        return max(os.get_terminal_size(sys.stdout.fileno()).columns, 40)
    return 80

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


def weights_text(selection: Selection) -> str:
    """Per-rank expert weights of one layer as the chosen backend holds them."""
    from .memory import gb

    chosen = selection.eligible[0]
    if chosen.expert_weight_bytes is None:
        return "unknown"
    return f"{gb(chosen.expert_weight_bytes)} per layer per GPU ({chosen.weights_held})"


def _selection_lines(selection: Selection) -> list[str]:
    lines = [f"decided by: {selection.decided_by}", f"padding: {padding_text(selection)}",
             f"expert weights: {weights_text(selection)}",
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
    rejections = list(rejections)
    if rejections:
        _reasons_table(console, "rejected", rejections)


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
            per_layer = group.selection.eligible[0].expert_weight_bytes
            if per_layer is not None:
                entry["expert_weight_bytes"] = {"per_layer": per_layer, "total": per_layer * group.count,
                                                "held": group.selection.eligible[0].weights_held}
            entry["verified_on_hardware"] = verified_cell(group.selection) == "yes"
            entry["faster_rejected"] = [r.backend for r in faster_rejections(group.selection)]
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
        "memory": plan.memory.model_dump(mode="json") if plan.memory else None,
        "layers": [{"index": lp.layer.index, "name": lp.layer.name,
                    "backend": lp.selection.backend if lp.selection else None} for lp in plan.layers],
    }


def plan_markdown(plan: "ModelPlan") -> str:
    out = [f"## MoE backend plan: {_plan_header(plan)}", "", "Generated by `moe-registry explain`."]
    out += [f"- note: {_md(n)}" for n in plan.notes]
    if plan.memory is not None:
        out.append(f"- {_md(plan.memory.describe())}")
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


def compact_shape(layer) -> str:
    """``E128 k8 H2816 I704`` (under TP/EP a second line ``rank E16 I88``): short, never cut."""
    text = f"E{layer.num_experts} k{layer.top_k} H{layer.hidden_size} I{layer.intermediate_size}"
    if layer.parallel.tp > 1 or layer.parallel.ep > 1:
        text += f"\nrank E{layer.local_num_experts} I{layer.local_intermediate_size}"
    return text


def compact_range(group) -> str:
    """``0-29 (30)``, ``5``, ``1-51 (23)`` (a non-contiguous set: first-last and how many)."""
    return str(group.first) if group.count == 1 else f"{group.first}-{group.last} ({group.count})"


def _engine_cell(selection: Selection, vllm_only: bool) -> str:
    """The flag that picks this backend: vLLM's when every group has one (the column says so),
    else the first engine that has it, named."""
    e = selection.engines
    for engine, flag in (("vllm", "--moe-backend"), ("sglang", "--moe-runner-backend"), ("trtllm", "backend=")):
        if engine in e:
            if vllm_only:  # the column header names the flag; the cell is its value
                return e[engine]
            value = f"{flag}{'' if flag.endswith('=') else ' '}{e[engine]}"
            return f"{ {'vllm': 'vLLM', 'sglang': 'SGLang', 'trtllm': 'TRT-LLM'}[engine]} {value}"
    return "-"


def _padding_cell(selection: Selection) -> str:
    """e.g. ``H2880->2944 I2880->2944 +4.49%``: the percentage is the cost of all padding together
    (every Padding entry carries the same combined figure)."""
    if not selection.padding:
        return "none"
    dims = " ".join(f"{p.dimension[0].upper()}{p.original}->{p.padded}" for p in selection.padding)
    return f"{dims} +{selection.padding[0].extra_weight_memory_pct:g}%"


def _memory_cell(group) -> str:
    """Per-GPU expert weights of the group's layers as the chosen backend holds them (the planner's
    memory fit counts the same bytes), in GB of 10^9 bytes like the device presets; '-' if unknown."""
    s = group.selection
    per_layer = s.eligible[0].expert_weight_bytes if s is not None and s.eligible else None
    return "-" if per_layer is None else f"{per_layer * group.count / 1e9:.1f} GB"


def _family_tags(device: DeviceSpec, tags) -> list[str]:
    out = []
    for tag in tags:
        try:
            other = PRESETS.get(tag) or _device_from_tag(tag)
        except ValueError:
            continue
        if other.vendor == device.vendor and other.family == device.family:
            out.append(tag)
    return out


def _device_from_tag(tag: str) -> DeviceSpec:
    from .schemas.device import get_device

    return get_device(tag)


def verified_cell(selection: Selection) -> str:
    """Whether the chosen backend ran this layer's activation and quant kind on this device family
    (a probe record's ``verified_on``), or only cites upstream for it."""
    from .registry import default_registry

    try:
        decl = default_registry().get(selection.backend)
    except Exception:  # a backend that is no longer registered: say nothing rather than guess
        return "?"
    layer, device = selection.layer, selection.device
    impl = decl.activations.get(layer.activation)
    quant = [q for q in decl.quant_support(layer.quant.kind)]
    act_tags = set(_family_tags(device, impl.verified_on)) if impl else set()
    quant_tags = set(_family_tags(device, [t for q in quant for t in q.verified_on]))
    both = sorted(act_tags & quant_tags)
    return "yes" if both else "no"


def faster_rejections(selection: Selection) -> list:
    """Rejected backends that rank above the chosen one for this layer's quant family (they would
    have won had they been eligible), best first."""
    from .registry import default_registry

    registry = default_registry()
    family = selection.layer.quant.family

    def priority(backend: str) -> int:
        try:
            return registry.get(backend).priority_for(family, selection.device)
        except Exception:
            return 0

    chosen = priority(selection.backend)
    faster = [r for r in selection.rejections if priority(r.backend) > chosen]
    return sorted(faster, key=lambda r: -priority(r.backend))


def _reason_text(reason, hints: bool = True) -> str:
    return f"{reason.code.value}: {reason.message}" + (f" (hint: {reason.hint})" if hints and reason.hint else "")


def _reasons_table(console: "Console", title: str, rejections: Iterable, *, hints: bool = True) -> None:
    """One row per backend. A reason every listed backend shares (a quantization format's scale
    groups, say) is printed once above the table instead of in every row."""
    from rich import box
    from rich.table import Table

    rejections = list(rejections)
    shared = set.intersection(*({r.message for r in rej.reasons} for rej in rejections)) \
        if len(rejections) > 1 else set()
    if title:
        console.print(title, markup=False, highlight=False)
    for reason in rejections[0].reasons if shared else ():
        if reason.message in shared:
            console.print(f"all of them: {_reason_text(reason, hints)}", markup=False, highlight=False)
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False, expand=False, show_edge=False)
    table.add_column("backend", no_wrap=True)
    table.add_column("why not", overflow="fold")
    for rejection in rejections:
        lines = [_reason_text(r, hints) for r in rejection.reasons if r.message not in shared]
        table.add_row(rejection.backend, "\n".join(lines) or "(only the shared reasons above)")
    console.print(table)


_SHOWN_NOTE_KINDS = ("approximation", "assumed", "padding", "hint", "memory")


def print_plan(console: "Console", plan: "ModelPlan", *, verbose: bool = False) -> None:
    """Decision first (one table), then why each faster backend lost, then notes; ``verbose`` adds
    every rejection, per-selection notes and fingerprints."""
    from rich import box
    from rich.measure import Measurement
    from rich.table import Table

    console.print(_plan_header(plan), markup=False, highlight=False)
    groups = plan.groups()
    chosen = [g.selection for g in groups if g.selection is not None]
    vllm_only = bool(chosen) and all("vllm" in s.engines for s in chosen)
    # Per-GPU memory is one line under the table (the whole model's figure is what must fit), not a
    # column: a sixth column does not fit 80 columns next to a TP shape and a padded size.
    columns = ["layers", "backend", "shape", "pad", "on hw", "vLLM --moe-backend" if vllm_only else "engine flag"]
    flags = [_engine_cell(s, vllm_only) for s in chosen]
    longest_word = max((len(w) for f in flags for w in f.split()), default=1)
    # One space between columns, so the table fits 80 columns with the longest backend id and a TP
    # shape; the flag wraps between words only (its width is at least its longest word).
    rows = [[compact_range(g), g.selection.backend if g.selection else "NONE", compact_shape(g.layer),
             _padding_cell(g.selection) if g.selection else "-", verified_cell(g.selection) if g.selection else "-",
             _engine_cell(g.selection, vllm_only) if g.selection else "-"] for g in groups]

    def build(caps: dict[str, int]) -> "Table":
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False, show_edge=False, expand=False)
        for column in columns:
            table.add_column(column, no_wrap=column in ("layers", "backend", "on hw"), overflow="fold",
                             min_width=longest_word if column.endswith(("flag", "--moe-backend")) else None,
                             max_width=caps.get(column))
        for row in rows:
            table.add_row(*row)
        return table

    table = build({})
    # Rich shrinks every column alike when a table is too wide, which would cut the flag; when it
    # does not fit, cap the two columns that wrap well at spaces instead ("E128 k8" / "H2816 I704").
    if Measurement.get(console, console.options.update_width(10_000), table).maximum > console.width:
        table = build({"shape": 11, "pad": 12})
    console.print(table)
    if plan.memory is not None and all(g.selection is not None for g in groups):
        per_group = [f"{compact_range(g)}: {_memory_cell(g)}" for g in groups] if len(groups) > 1 else []
        console.print(plan.memory.describe() + (f" ({'; '.join(per_group)})" if per_group else ""),
                      markup=False, highlight=False)
    if any(verified_cell(s) == "no" for s in chosen):
        family = f"SM{chosen[0].device.family * 10}-family" if chosen[0].device.family else "this device's"
        console.print(f"on hw: probed on {family} hardware (no: cited from upstream only)",
                      markup=False, highlight=False)
    layer_text = {group.first: f"{group.layer.activation.value}, {group.layer.quant.label()}, {group.layer.dtype}"
                  for group in groups}
    if len(set(layer_text.values())) == 1:
        console.print(f"all layers: {next(iter(layer_text.values()))}", markup=False, highlight=False)

    many = len(groups) > 1
    for group in groups:
        where = f" (layers {compact_range(group)})" if many else ""
        s = group.selection
        if s is None:
            console.print("")
            _reasons_table(console, f"no backend can run layers {compact_range(group)}:", group.rejections)
            continue
        shown = list(s.rejections) if verbose else faster_rejections(s)
        if shown:
            title = "every rejected backend" if verbose else "faster backends rejected"
            console.print("")
            _reasons_table(console, f"{title}{where}", shown)
        others = [c.backend for c in s.eligible[1:]]
        if others:
            console.print(f"also eligible{where}, in order: {', '.join(others)}", markup=False, highlight=False)
        if verbose:
            console.print(f"decided by {s.decided_by}; fingerprint {s.fingerprint}", markup=False, highlight=False)
            for note in s.notes:
                console.print(f"  note ({note.kind}): {note.message}", markup=False, highlight=False)
    # What the user must know about the chosen backends even without -v: how they run the layer
    # (approximations, activation formats, padding, hints); not the routine "planning assumes package X".
    chosen_notes = [] if verbose else list(dict.fromkeys(
        n.message for s in chosen for n in s.notes
        if n.kind in _SHOWN_NOTE_KINDS and (" assumes " not in n.message or "first build" in n.message)))
    if plan.notes or chosen_notes:
        console.print("\nnotes:", markup=False, highlight=False)
        for note in (*plan.notes, *chosen_notes):
            console.print(f"- {note}", markup=False, highlight=False)
    if not verbose:
        console.print("(-v: every rejection, selection notes and fingerprints)", markup=False, highlight=False)


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
    if not any(s.adapter_implemented for s in supports):
        marks.append("no adapter")
    elif not all(s.adapter_implemented for s in supports):
        marks.append("native path: no adapter")
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
           "- priority: " + ", ".join(f"{f.value} {p}" for f, p in d.priority.items())
           + "".join(f"; {o.family.value} {o.priority} on {' or '.join(r.describe() for r in o.devices)}"
                     for o in d.priority_overrides)]
    for rule in d.dtype_devices:
        out.append(f"- {rule.dtype} hidden states only on {' or '.join(r.describe() for r in rule.devices)} "
                   f"(source: {rule.source})")
    f = d.features
    out.append(f"- features: expert biases {'yes' if f.bias else 'no'}, router weight on input "
               f"{'yes' if f.apply_router_weight_on_input else 'no'}, custom swigluoai constants "
               f"{'yes' if f.swigluoai_params else 'no'} (source: {f.source})")
    for act, impl in d.activations.items():
        if impl.fidelity == "approximate":
            out.append(f"- {act.value} is approximate: {impl.note} (source: {impl.source})")
    for rule in d.shape_rules:
        when = "" if rule.when == rule.when.__class__() else f" when {rule.when.describe()}"
        out.append(f"- shape: {rule.dimension} multiple of {rule.multiple_of}{when}"
                   f"{' (padded by the adapter)' if rule.pad else ''} (source: {rule.source})")
    for lim in d.limitations:
        out.append(f"- known limitation: {lim.reason} (source: {lim.source})")
    r = d.routing
    if r.in_kernel:
        out.append("- in-kernel routing: " + ", ".join(m.value for m in r.in_kernel)
                   + ("; precomputed top-k" if r.precomputed else ""))
    for limit in r.limits:
        path = ", ".join(m.value for m in limit.methods) or "precomputed top-k"
        out.append(f"- routing bound ({path}): {limit.describe()} (source: {limit.source})")
    for req in d.requirements:
        cost = f"; first build {req.build_cost}" if req.build_cost else ""
        out.append(f"- requires {req.kind} `{req.name}`{cost}")
    out.append("- hardware verification: " + verification_text(d))
    return out + [""]


def verification_text(d: BackendCapability) -> str:
    """Per device family: verified on hardware (with the record) or only cited from upstream."""
    from .provenance import verification_lines

    return " | ".join(verification_lines(d))


def _fits(console: "Console", table) -> bool:
    """Whether a table fits the console without cutting a cell (its natural width)."""
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(10**6), table).maximum
    return natural <= console.width


def _backend_lines(console: "Console", title: str, rows: list[tuple[str, str]]) -> None:
    """The narrow-terminal form of a matrix: one wrapped line per backend, nothing cut."""
    from rich.table import Table

    console.print(title, markup=False, highlight=False)
    table = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for backend, text in rows:
        table.add_row(backend, text)
    console.print(table)


def print_matrix(console: "Console", declarations: Iterable[BackendCapability], device: DeviceSpec | None) -> None:
    from rich.table import Table

    decls = list(declarations)
    title = "activations" + (f" on {device.label()}" if device else "")
    labels = {d.id: d.id + ("" if device is None or any(r.matches(device) for r in d.devices) else " (not on device)")
              for d in decls}
    acts = Table(title=title, title_justify="left")
    acts.add_column("backend", no_wrap=True)
    for a in Activation:
        acts.add_column(a.value, no_wrap=True)
    for d in decls:
        acts.add_row(labels[d.id], *(activation_cell(d, a) for a in Activation))
    if _fits(console, acts):
        console.print(acts)
    else:
        _backend_lines(console, title, [(labels[d.id], ", ".join(
            a.value + (" (approx)" if activation_cell(d, a) == "approx" else "")
            for a in Activation if activation_cell(d, a) != "-") or "-") for d in decls])
    quant_title = "quantization schemes (device families)"
    quant = Table(title=quant_title, title_justify="left")
    quant.add_column("backend", no_wrap=True)
    for k in QuantKind:
        quant.add_column(k.value, no_wrap=True)
    for d in decls:
        quant.add_row(d.id, *(quant_cell(d, k) for k in QuantKind))
    if _fits(console, quant):
        console.print(quant)
    else:
        _backend_lines(console, quant_title, [(d.id, "; ".join(
            f"{k.value}: {quant_cell(d, k)}" for k in QuantKind if quant_cell(d, k) != "-") or "-") for d in decls])
    verify = Table(title="hardware verification", title_justify="left")
    verify.add_column("backend", no_wrap=True)
    verify.add_column("status", overflow="fold")
    for d in decls:
        verify.add_row(d.id, verification_text(d))
    console.print(verify)
