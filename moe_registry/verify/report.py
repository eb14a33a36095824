"""The probe's output and the ``moe-registry probe`` command: grouped drift, format findings and the
per-backend summary table (rich), or the record as JSON; exit 0 without drift, 1 with drift."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ..schemas.activation import Activation
from ..schemas.selection import ReasonCode
from .record import DRIFT_HINTS, ProbeRecord, grouped_drift, span

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_DRIFT = 0, 1


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
                    dict.fromkeys(DRIFT_HINTS.get(ReasonCode(c), "") for c in g["reasons"])))
            table.add_row(kind, g["backend"], g["quant"], span(g["activations"], acts),
                          span(list(dict.fromkeys(g["shapes"])), shapes), why)
        console.print(table)
    if record.format_findings:
        groups = grouped_drift(record.format_findings)
        console.print(f"format findings ({len(record.format_findings)} combinations): undeclared for every backend "
                      "by selection's scale-group rule, yet they ran correctly:", markup=False, highlight=False)
        for g in groups:
            console.print(f"  {g['backend']} {g['quant']} on {span(list(dict.fromkeys(g['shapes'])), shapes)}",
                          markup=False, highlight=False)
    for b in record.backends:
        if b.status == "skipped" or b.reason:
            console.print(f"{b.backend}: {b.status}: {b.reason}", markup=False, highlight=False)

    # The summary: plain text wrapped to the terminal (headers wrap, backend ids never do).
    from ..render.terminal import table as text_table
    from ..render.terminal import width

    rows = []
    totals = [0] * 6
    for b in record.backends:
        if b.status == "skipped" and not b.combinations:
            rows.append([b.backend, "-", "-", "-", "-", "-", "-", "skipped"])
            continue
        s = record.summary.get(b.backend, {})
        row = [s.get("declared_passed", 0), s.get("declared_wrong", 0) + s.get("declared_raised", 0),
               s.get("undeclared_passed", 0), s.get("undeclared_wrong", 0) + s.get("undeclared_raised", 0),
               s.get("declared_skipped", 0) + s.get("undeclared_skipped", 0),
               sum(1 for d in record.drift if d.backend == b.backend)]
        totals = [t + v for t, v in zip(totals, row)]
        restarts = f", {b.worker_restarts} restarts" if b.worker_restarts else ""
        rows.append([b.backend, *map(str, row), f"{b.seconds:.0f} s{restarts}"])
    rows.append(["total", *map(str, totals), ""])
    console.print(f"probe on {record.card} ({record.device_tag}), {record.date}{' (quick)' if record.quick else ''}",
                  markup=False, highlight=False)
    headers = ["backend", "declared ok", "declared failing", "undeclared ok", "undeclared failing", "skipped",
               "drift", "time"]
    for line in text_table(headers, rows, width(), fixed=(0,)):
        console.print(line, markup=False, highlight=False)
    failing = len(record.declared_but_failing())
    working = len(record.undeclared_but_working())
    line = (f"drift: {failing} declared-but-failing, {working} undeclared-but-working"
            + (f"; {len(record.format_findings)} format findings" if record.format_findings else ""))
    if out:
        line += f"; record written to {out}"
    console.print(line, markup=False, highlight=False)


def main(args: Any) -> int:
    """The `moe-registry probe` command: exit 0 without drift, 1 with drift."""
    from ..render import safe_console  # escapes plugin strings; a closed pipe is a normal end
    from .probe import run_probe  # the supervisor and the grid: only when probing

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
