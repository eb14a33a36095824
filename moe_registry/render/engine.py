"""An engine's own pick beside ours: `explain MODEL --engine vllm|sglang` (any engine's
:class:`~moe_registry.engines.answer.EngineAnswer`) and the vLLM plugin's per-model table.

Derived only: the answers come from the engine (executed) or its model, the comparison from
:func:`~moe_registry.engines.answer.compare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .selection import JSON_SCHEMA_VERSION

if TYPE_CHECKING:
    from rich.console import Console

    from ..engines.answer import Comparison, EngineAnswer
    from ..engines.vllm.verdict import LayerRow
    from ..planner.results import ModelPlan


@dataclass(frozen=True)
class EngineGroup:
    """Consecutive layers with the same pick on both sides."""

    label: str
    indices: tuple[int, ...]
    ours: str | None
    answer: EngineAnswer | None
    comparison: Comparison | None
    pinned: str | None = None


def plan_groups(plan: "ModelPlan", answers: Sequence["EngineAnswer | None"]) -> list[EngineGroup]:
    from ..engines.answer import compare
    from ..registry import default_registry

    declarations = tuple(default_registry().declarations())
    out = []
    for group, answer in zip(plan.groups(), answers):
        ours = group.selection.backend if group.selection else None
        rejections = group.selection.rejections if group.selection else group.rejections
        comparison = compare(answer, ours, rejections, declarations) if answer is not None else None
        out.append(EngineGroup(group.label(), group.indices, ours, answer, comparison))
    return out


def _pick(answer: "EngineAnswer | None") -> str:
    if answer is None:
        return "-"
    if answer.error:
        return f"refuses: {answer.error}"
    return f"{answer.flag or '-'}: {answer.kernel}"


def _agree(group: EngineGroup) -> str:
    c = group.comparison
    return "-" if c is None else "yes" if c.agree else "no"


def print_engine(console: "Console", plan: "ModelPlan", groups: list[EngineGroup], engine: str) -> None:
    from rich.table import Table

    from .plan import compact_range

    versions = sorted({g.answer.version for g in groups if g.answer})
    sources = sorted({g.answer.source for g in groups if g.answer})
    where = plan.device.label() if plan.device else "this machine"
    console.print(f"{plan.model} on {where}, {plan.parallel.label()}: {engine} {', '.join(versions) or '?'} "
                  f"({'/'.join(sources) or 'no answer'}) beside moe-registry", markup=False, highlight=False)
    table = Table(box=None, show_edge=False, pad_edge=False)
    for col in ("layers", "ours", f"{engine} (flag: kernel)", "agree", "why not / fix"):
        table.add_column(col)
    for g, group in zip(groups, plan.groups()):
        why = "" if g.comparison is None or g.comparison.agree else g.comparison.why + (
            f" -> {g.comparison.fix}" if g.comparison.fix else "")
        table.add_row(compact_range(group), g.ours or "none", _pick(g.answer), _agree(g), why)
    console.print(table)
    for g in groups:
        if g.answer and g.answer.rejected:
            console.print(f"{engine} rejected for {g.label}:", markup=False, highlight=False)
            for r in g.answer.rejected:
                console.print(f"  {r.candidate}: {r.reason}", markup=False, highlight=False)
    notes = sorted({a for g in groups if g.answer for a in g.answer.assumptions})
    for note in notes:
        console.print(f"note: {note}", markup=False, highlight=False, style="dim")


def engine_markdown(plan: "ModelPlan", groups: list[EngineGroup], engine: str) -> str:
    lines = [f"## {plan.model}: {engine} beside moe-registry", "",
             f"| layers | ours | {engine} | agree | why not | fix |", "|---|---|---|---|---|---|"]
    for g in groups:
        c = g.comparison
        lines.append(f"| {g.label} | {g.ours or 'none'} | {_pick(g.answer)} | {_agree(g)} | "
                     f"{'' if c is None or c.agree else c.why} | {'' if c is None or c.agree else c.fix} |")
    for g in groups:
        if g.answer and g.answer.rejected:
            lines += ["", f"{engine} rejected for {g.label}:", ""]
            lines += [f"- `{r.candidate}`: {r.reason}" for r in g.answer.rejected]
    return "\n".join(lines) + "\n"


def _group_json(g: EngineGroup) -> dict[str, Any]:
    return {"range": g.label, "layers": list(g.indices), "ours": g.ours,
            "engine": g.answer.model_dump(mode="json") if g.answer else None,
            "agree": g.comparison.agree if g.comparison else None,
            "why": g.comparison.why if g.comparison else "", "fix": g.comparison.fix if g.comparison else "",
            **({"pinned": g.pinned} if g.pinned is not None else {})}


def engine_json(plan: "ModelPlan", groups: list[EngineGroup], engine: str) -> dict[str, Any]:
    return {"schema_version": JSON_SCHEMA_VERSION, "model": plan.model, "engine": engine,
            "device": plan.device.model_dump(mode="json") if plan.device else None,
            "parallel": plan.parallel.model_dump(mode="json"), "groups": [_group_json(g) for g in groups]}


# --- The vLLM plugin's report ----------------------------------------------------------------------


def row_groups(rows: Sequence["LayerRow"]) -> list[EngineGroup]:
    """Consecutive layers with the same answer, ours, comparison and pin, as one range."""
    out: list[EngineGroup] = []
    run: list[LayerRow] = []

    def key(row: "LayerRow") -> tuple[Any, ...]:
        return (row.answer.model_dump_json(), row.ours, row.ours_error, row.comparison, row.pinned)

    def close() -> None:
        if run:
            indices = tuple(r.index for r in run if r.index is not None)
            label = _label(indices) if len(indices) == len(run) else run[0].prefix
            out.append(EngineGroup(label, indices, run[0].ours, run[0].answer, run[0].comparison, run[0].pinned))
            run.clear()

    for row in rows:
        if run and key(row) != key(run[0]):
            close()
        run.append(row)
    close()
    return out


def _label(indices: tuple[int, ...]) -> str:
    if len(indices) == 1:
        return f"layer {indices[0]}"
    contiguous = indices[-1] - indices[0] + 1 == len(indices)
    return f"layers {indices[0]}-{indices[-1]} ({len(indices)}{'' if contiguous else ' of them'})"


def plugin_text(model: str, mode: str, version: str, rows: Sequence["LayerRow"]) -> str:
    """The table the plugin logs once per model: one line per layer range, then vLLM's rejections."""
    groups = row_groups(rows)
    agree = sum(len(g.indices) or 1 for g in groups if g.comparison and g.comparison.agree)
    head = [f"moe-registry ({mode}) for {model} on vLLM {version}: {len(rows)} MoE layers, {agree} agree"]
    cells = [("layers", "vLLM", "ours", "agree", "pinned", "why not / fix")]
    for g in groups:
        c = g.comparison
        why = "" if c is None or c.agree else c.why + (f" -> {c.fix}" if c.fix else "")
        cells.append((g.label, _pick(g.answer), g.ours or "none", _agree(g), g.pinned or "-", why))
    widths = [max(len(row[i]) for row in cells) for i in range(5)]
    lines = head + ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5]
                    for row in cells]
    for g in groups:
        if g.answer and g.answer.rejected:
            lines.append(f"vLLM rejected for {g.label}:")
            lines += [f"  {r.candidate}: {r.reason}" for r in g.answer.rejected]
    return "\n".join(line.rstrip() for line in lines)


def plugin_json(model: str, mode: str, version: str, rows: Sequence["LayerRow"]) -> dict[str, Any]:
    return {"schema_version": JSON_SCHEMA_VERSION, "plugin": "moe-registry", "mode": mode, "vllm": version,
            "models": [{"model": model, "groups": [_group_json(g) for g in row_groups(rows)],
                        "layers": [{"index": r.index, "prefix": r.prefix, "ours": r.ours, "pinned": r.pinned,
                                    "note": r.note} for r in rows]}]}
