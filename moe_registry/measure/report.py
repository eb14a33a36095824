"""Showing cost tables: one rich table per layer shape (:func:`print_report`) and a log-log plot of
time vs tokens (:func:`plot`, matplotlib, the ``plot`` extra). Torch-free."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..measured import CostTable, Mode
from ..schemas.layer import LayerSpec, ParallelConfig
from .analysis import backends_of, layers_of, winner_changes, winners

__all__ = ["print_report", "plot"]


def _short(layer: LayerSpec) -> str:
    text = (f"E={layer.num_experts} top{layer.top_k} H={layer.hidden_size} I={layer.intermediate_size} "
            f"{layer.activation.value} {layer.quant.label()}")
    return text + (f" {layer.parallel.label()}" if layer.parallel != ParallelConfig() else "")


def print_report(console: Any, table: CostTable, *, skipped: Sequence[Mapping[str, Any]] = (),
                 labels: Mapping[LayerSpec, str] | None = None, title: str | None = None) -> None:
    """One rich table per layer shape: median us per backend and token count, fastest marked *."""
    from rich.table import Table

    labels = labels or {}
    head = title or f"cost table: {table.card or table.device.label()}, {table.date}"
    console.print(head, markup=False)
    for layer in layers_of(table):
        tokens = sorted({e.tokens for e in table.entries if e.layer.shape_key() == layer})
        best = winners(table, layer)
        name = labels.get(layer)
        t = Table(title=(f"{name}: " if name else "") + layer.describe(), title_justify="left")
        t.add_column("backend", no_wrap=True)
        for T in tokens:
            t.add_column(f"T={T}", justify="right")
        graph_best = winners(table, layer, "graph")
        for backend in backends_of(table, layer):
            rows: tuple[tuple[Mode, dict[int, str]], ...] = (("eager", best), ("graph", graph_best))
            for mode, fastest in rows:  # graphed decode: its own row
                pts = dict(table.points(backend, layer, mode))
                if not pts:
                    continue
                cells = []
                for T in tokens:
                    if T not in pts:
                        cells.append("-")
                    elif fastest.get(T) == backend:
                        cells.append(f"[bold]{pts[T]:,.1f}*[/bold]")
                    else:
                        cells.append(f"{pts[T]:,.1f}")
                t.add_row(backend + (" (graph)" if mode == "graph" else ""), *cells)
        console.print(t)
        changes = winner_changes(table, layer)
        if changes:
            console.print("  winner changes: " + "; ".join(f"{a} -> {b} at T={x}" for a, b, x in changes), markup=False)
    console.print("  times: median microseconds per forward; * fastest at that T (eager and graph rows apart)",
                  markup=False)
    from .timing import noise_warning, noisy

    loud = [e for e in table.entries if e.p10_us is not None and e.p90_us is not None and noisy(e.p10_us, e.p90_us)]
    if loud:
        console.print("  " + noise_warning(len(loud), len(table.entries)), markup=False)
    for s in skipped:
        where = f" T={s['tokens']}" if s.get("tokens") else ""
        console.print(f"  not timed: {s['backend']} ({s['stage']}{where}) on {s['layer']}: {s['reason']}",
                      markup=False)


def plot(table: CostTable, path: str | os.PathLike[str], *, labels: Mapping[LayerSpec, str] | None = None,
         overlay: CostTable | None = None, title: str | None = None,
         marks: Mapping[LayerSpec, Sequence[tuple[int, str]]] | None = None,
         floors: Mapping[LayerSpec, Mapping[int, float]] | None = None) -> Path:
    """Time vs tokens (log-log), one line per backend (p10-p90 band), one panel per layer shape.

    ``overlay``: a second table (e.g. the policy table) drawn as hollow markers. ``marks``: extra
    vertical lines per layer (token count, label); winner changes of ``table`` are marked anyway.
    ``floors``: per layer, a lower bound per token count (e.g. the HBM floor), drawn dotted."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install 'moe-registry[plot]')") from None
    labels, marks = labels or {}, marks or {}
    layers = layers_of(table) or (layers_of(overlay) if overlay else [])
    n = max(1, len(layers))
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.6 * rows), squeeze=False)
    colors: dict[str, Any] = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    for ax, layer in zip(axes.flat, layers):
        for backend in backends_of(table, layer):
            color = colors.setdefault(backend, cycle[len(colors) % len(cycle)])
            key = layer.shape_key()
            for mode, style in (("eager", "-"), ("graph", "--")):  # graphed decode dashed, same colour
                es = sorted((e for e in table.entries if e.backend == backend and e.mode == mode
                             and e.layer.shape_key() == key), key=lambda e: e.tokens)
                if not es:
                    continue
                xs = [e.tokens for e in es]
                ax.plot(xs, [e.median_us for e in es], marker="o", ms=3.5, color=color, ls=style,
                        label=backend + (" (graph)" if mode == "graph" else ""))
                if all(e.p10_us is not None and e.p90_us is not None for e in es):
                    ax.fill_between(xs, [e.p10_us for e in es], [e.p90_us for e in es], color=color, alpha=0.15, lw=0)
        if overlay is not None:
            for backend in backends_of(overlay, layer):
                color = colors.setdefault(backend, cycle[len(colors) % len(cycle)])
                pts = overlay.points(backend, layer)
                ax.plot([t for t, _ in pts], [u for _, u in pts], ls="none", marker="s", ms=7, mfc="none",
                        color=color, label=f"{backend} (policy table)")
        span = [e.tokens for e in table.entries if e.layer.shape_key() == layer.shape_key()]
        for a, b, x in winner_changes(table, layer):
            ax.axvline(x, color="grey", ls="--", lw=0.9)
            right = bool(span) and math.log(x) > (math.log(min(span)) + math.log(max(span))) / 2
            ax.annotate(f"{a}\u2192{b}\nT={x}", (x, 0.97), xycoords=("data", "axes fraction"), fontsize=7,
                        ha="right" if right else "left", va="top", color="dimgrey")
        floor = (floors or {}).get(layer.shape_key())
        if floor:
            ax.plot(sorted(floor), [floor[t] for t in sorted(floor)], color="black", ls=":", lw=1.2, label="HBM floor")
        for x, text in marks.get(layer.shape_key(), ()):
            ax.axvline(x, color="black", ls=":", lw=0.9)
            ax.annotate(text, (x, 0.03), xycoords=("data", "axes fraction"), fontsize=7, ha="left", va="bottom")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted({e.tokens for e in table.entries if e.layer.shape_key() == layer.shape_key()})
        if 1 < len(ticks) <= 12:
            ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("tokens per forward")
        ax.set_ylabel("median \u00b5s per forward")
        name = labels.get(layer.shape_key())
        ax.set_title((f"{name}\n" if name else "") + _short(layer), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(layers):]:
        ax.set_visible(False)
    fig.suptitle(title or f"{table.card or table.device.label()} \u2014 {table.date}", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
