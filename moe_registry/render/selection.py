"""One layer's selection: the text pieces plans reuse, its JSON, Markdown and rich form, rejection tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from ..schemas.selection import Selection
from .terminal import escape_control

if TYPE_CHECKING:
    from rich.console import Console

# Every JSON document the CLI writes carries it (docs/cli-json.md); it changes on any break.
JSON_SCHEMA_VERSION = 1

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
    from ..memory import gb

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
