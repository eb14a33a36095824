"""Analysis of cost tables (torch-free): who is fastest where, where the winner changes
(crossovers), and how much the measured policy loses against the best measured (regret).

Works on :class:`~moe_registry.measured.CostTable` data only, so a table measured on a GPU machine
can be studied anywhere; :func:`regret` and :func:`policy_sides` run the real policy
(``MeasuredPolicy`` / ``select_backend``), which are pure.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

from ..measured import CostTable, MeasuredPolicy, Mode
from ..schemas.device import DeviceSpec
from ..schemas.layer import LayerSpec
from ..schemas.selection import Candidate
from ..selection import DeclaredPriority, select_backend

__all__ = ["REGRET_TARGET", "backends_of", "crossover", "crossovers", "layers_of", "policy_sides", "regret",
           "winner_changes", "winners"]

REGRET_TARGET = 1.05  # issue 5: measured-policy regret <= 5 %


def _log_ratio(table: CostTable, layer: LayerSpec, a: str, b: str, tokens: int) -> float:
    ta, tb = table.estimate_us(a, layer, tokens), table.estimate_us(b, layer, tokens)
    assert ta is not None and tb is not None
    return math.log(ta) - math.log(tb)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def crossovers(table: CostTable, layer: LayerSpec, a: str, b: str) -> list[int]:
    """Every token count at which the faster of ``a`` and ``b`` changes, in increasing order.

    Each value is the smallest integer T at which the new winner is strictly faster (by the
    table's log-log interpolation, which is linear in log T between measured points, so the root
    of ``log(t_a / t_b)`` is exact). Only the token range both backends were measured over is
    considered (outside it the estimates are clamped, not measured). Empty if either backend
    has no measurement for the layer or the winner never changes."""
    pa, pb = table.points(a, layer), table.points(b, layer)
    if not pa or not pb or a == b:
        return []
    lo, hi = max(pa[0][0], pb[0][0]), min(pa[-1][0], pb[-1][0])
    grid = sorted({t for t, _ in pa + pb if lo <= t <= hi})
    if len(grid) < 2:
        return []
    out: list[int] = []
    last_sign = _sign(_log_ratio(table, layer, a, b, grid[0]))
    for t0, t1 in zip(grid, grid[1:]):
        d0, d1 = _log_ratio(table, layer, a, b, t0), _log_ratio(table, layer, a, b, t1)
        s1 = _sign(d1)
        if s1 == 0 or last_sign == 0 or s1 == last_sign:
            if s1 != 0:
                last_sign = s1
            continue
        # The root lies in [t0, t1): d0 has last_sign or is 0 (a tie at t0).
        if d0 == 0:
            root = float(t0)
        else:
            f = d0 / (d0 - d1)
            root = math.exp(math.log(t0) + f * (math.log(t1) - math.log(t0)))
        cand = min(max(t0, math.ceil(root)), t1)
        # Rounding of exp/log can leave the candidate one off either way: settle on the first
        # integer where the new sign holds.
        while cand > t0 and _sign(_log_ratio(table, layer, a, b, cand - 1)) == s1:
            cand -= 1
        while cand < t1 and _sign(_log_ratio(table, layer, a, b, cand)) != s1:
            cand += 1
        out.append(int(cand))
        last_sign = s1
    return out


def crossover(table: CostTable, layer: LayerSpec, a: str, b: str) -> int | None:
    """The first token count (measured or interpolated) where the faster of ``a`` and ``b``
    changes; None if it never does over the range both were measured on (see :func:`crossovers`)."""
    found = crossovers(table, layer, a, b)
    return found[0] if found else None


def layers_of(table: CostTable) -> list[LayerSpec]:
    out: list[LayerSpec] = []
    for e in table.entries:
        key = e.layer.shape_key()
        if key not in out:
            out.append(key)
    return out


def backends_of(table: CostTable, layer: LayerSpec) -> list[str]:
    key = layer.shape_key()
    out: list[str] = []
    for e in table.entries:
        if e.layer.shape_key() == key and e.backend not in out:
            out.append(e.backend)
    return out


def winners(table: CostTable, layer: LayerSpec, mode: Mode = "eager") -> dict[int, str]:
    """Measured token count -> the backend measured fastest there in ``mode`` (ties: the first listed)."""
    key = layer.shape_key()
    best: dict[int, tuple[float, str]] = {}
    for e in table.entries:
        if e.mode != mode:
            continue
        if e.layer.shape_key() == key and (e.tokens not in best or e.median_us < best[e.tokens][0]):
            best[e.tokens] = (e.median_us, e.backend)
    return {t: b for t, (_, b) in sorted(best.items())}


def _priority(backend: str, layer: LayerSpec, registry: Any) -> int:
    try:
        return registry.get(backend).priority.get(layer.quant.family, 0)
    except Exception:  # a backend this registry does not know (another machine's plugin)
        return 0


def regret(policy_table: CostTable, truth_table: CostTable, layers: Sequence[LayerSpec] | None = None,
           tokens: Sequence[int] | None = None, *, registry: Any = None,
           target: float = REGRET_TARGET) -> dict[str, Any]:
    """How much slower the measured policy's choice is than the best measured, per layer and T.

    For each layer (default: every shape in ``truth_table``) and each token count (default: every
    count measured for it in ``truth_table``), the candidates are the backends measured there in
    ``truth_table`` (they ran on that machine, so they were eligible and available), with their
    declared priority. ``MeasuredPolicy(policy_table, num_tokens=T)`` ranks them; its first is
    "chosen". ``regret = truth time of chosen / best truth time`` (1.0 = optimal). The declared-
    priority default's regret is computed the same way, for comparison. ``held_out`` rows are
    token counts the policy table did not measure for that layer (its choice was interpolated).

    Returns ``{"rows": [...], "summary": {...}, "per_layer": {...}}``; summary has ``max``,
    ``mean``, ``declared_max``, ``declared_mean``, ``held_out_max``, ``held_out_mean``, ``n``,
    ``target`` and ``meets_target`` (max <= target)."""
    if registry is None:
        from ..registry import default_registry

        registry = default_registry()
    device = truth_table.device
    layers = [l.shape_key() for l in layers] if layers is not None else layers_of(truth_table)
    rows: list[dict[str, Any]] = []
    for layer in layers:
        key = layer.shape_key()
        truth: dict[int, dict[str, float]] = {}
        for e in truth_table.entries:  # as an engine runs it: graphed where measured so, else eager
            if e.layer.shape_key() == key and (e.mode == "graph" or e.backend not in truth.get(e.tokens, {})):
                truth.setdefault(e.tokens, {})[e.backend] = e.median_us
        policy_tokens = {e.tokens for e in policy_table.entries if e.layer.shape_key() == key}
        for T in (sorted(tokens) if tokens is not None else sorted(truth)):
            measured = truth.get(T)
            if not measured:
                continue
            cands = [Candidate(backend=b, priority=_priority(b, layer, registry)) for b in measured]
            ordered, decided_by, _ = MeasuredPolicy(policy_table, num_tokens=T).order(cands, layer, device)
            declared, _, _ = DeclaredPriority().order(cands, layer, device)
            best = min(measured, key=lambda b: (measured[b], b))
            chosen, fallback = ordered[0].backend, declared[0].backend
            rows.append({
                "layer": layer.describe(), "tokens": T, "chosen": chosen, "decided_by": decided_by,
                "chosen_us": round(measured[chosen], 3), "best": best, "best_us": round(measured[best], 3),
                "regret": measured[chosen] / measured[best], "declared": fallback,
                "declared_regret": measured[fallback] / measured[best], "held_out": T not in policy_tokens,
                "candidates": {b: round(us, 3) for b, us in sorted(measured.items(), key=lambda kv: kv[1])},
            })

    def stats(values: list[float]) -> tuple[float | None, float | None]:
        return (max(values), statistics.fmean(values)) if values else (None, None)

    def summarize(selected: list[dict[str, Any]]) -> dict[str, Any]:
        mx, mean = stats([r["regret"] for r in selected])
        dmx, dmean = stats([r["declared_regret"] for r in selected])
        hmx, hmean = stats([r["regret"] for r in selected if r["held_out"]])
        return {"n": len(selected), "max": mx, "mean": mean, "declared_max": dmx, "declared_mean": dmean,
                "held_out_n": sum(r["held_out"] for r in selected), "held_out_max": hmx, "held_out_mean": hmean,
                "target": target, "meets_target": mx is not None and mx <= target}

    per_layer = {layer.describe(): summarize([r for r in rows if r["layer"] == layer.describe()]) for layer in layers}
    summary = summarize(rows)
    if (policy_table.device.sm, policy_table.device.vendor) != (device.sm, device.vendor):
        summary["note"] = (f"policy table from {policy_table.device.label()}, truth from {device.label()}: "
                           "the measured policy falls back to declared priority")
    return {"rows": rows, "summary": summary, "per_layer": per_layer}


def policy_sides(table: CostTable, layer: LayerSpec, a: str, b: str, device: DeviceSpec | str | None = None,
                 *, truth: CostTable | None = None, **select_kwargs: Any) -> dict[str, Any]:
    """Show the measured policy choosing each side of the crossover of ``a`` and ``b``.

    ``select_backend(layer, device, policy=MeasuredPolicy(table, num_tokens=T))`` at token counts
    just below and at the crossover, and at the nearest measured counts either side. ``device``
    None selects for this machine. Returns the crossover, one row per T (backend, decided_by,
    estimated times) and ``sides_differ``: both ends decided by "measured" with different backends.
    With ``truth``, each row also says which backend ``truth`` measured (or interpolated) fastest."""
    x = crossover(table, layer, a, b)
    result: dict[str, Any] = {"layer": layer.describe(), "a": a, "b": b, "crossover": x, "rows": [],
                              "sides_differ": False}
    if x is None:
        return result
    measured = sorted({t for t, _ in table.points(a, layer)} & {t for t, _ in table.points(b, layer)})
    below = [t for t in measured if t < x]
    above = [t for t in measured if t >= x]
    probe = sorted({*(below[-1:]), max(1, x - 1), x, *(above[:1])})
    for T in probe:
        sel = select_backend(layer, device, policy=MeasuredPolicy(table, num_tokens=T), **select_kwargs)
        row: dict[str, Any] = {"tokens": T, "backend": sel.backend, "decided_by": sel.decided_by,
                               "estimated_us": {c.backend: c.estimated_us for c in sel.eligible
                                                if c.estimated_us is not None},
                               "side": "below" if T < x else "at/above", "device": sel.device.label(),
                               "planning": sel.planning}
        if truth is not None:
            ta, tb = truth.estimate_us(a, layer, T), truth.estimate_us(b, layer, T)
            if ta is not None and tb is not None:
                row["truth_fastest"] = a if ta < tb else b
        result["rows"].append(row)
    lo, hi = result["rows"][0], result["rows"][-1]
    result["sides_differ"] = (lo["decided_by"] == hi["decided_by"] == "measured" and lo["backend"] != hi["backend"])
    return result


def winner_changes(table: CostTable, layer: LayerSpec) -> list[tuple[str, str, int]]:
    """(from, to, T) for each change of the fastest backend between measured token counts."""
    w = list(winners(table, layer).items())
    out = []
    for (t0, a), (t1, b) in zip(w, w[1:]):
        if a != b:
            inside = [x for x in crossovers(table, layer, a, b) if t0 < x <= t1]
            out.append((a, b, inside[-1] if inside else t1))
    return out
