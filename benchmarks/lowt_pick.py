#!/usr/bin/env python3
"""Which of our configs should be ``ops.default_config`` at each T, from a ``bench_lowt.py`` record: the rule in
lowt-notes.md made mechanical. ``default_config`` has one config per T for every 4-bit layer, so a candidate is
judged on every 4-bit layer the record timed at that T: its speedup over the record's default there (``ours:default``
in the same run and mode), the worst and the geometric mean over the layers, and the largest relative error its
checks saw. A candidate WINS when no layer is slower by more than the noise, the mean is faster by more than the
noise, and its error is within ``--max-err``; the noise defaults to the record's own spread (the median p90 / p10
ratio of its rows, minus one), at least ``--noise``.

    python benchmarks/lowt_pick.py benchmarks/results/.../lowt-bench.json [--noise 0.05] [--max-err 0.01]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from typing import Any

DEFAULT = "ours:default"


@dataclasses.dataclass(frozen=True)
class Candidate:
    T: int
    backend: str
    speedups: dict[str, float]  # layer -> default us / candidate us
    max_err: float | None  # the largest relative error of its checks on these layers (None: none ran)
    wins: bool

    @property
    def worst(self) -> float:
        return min(self.speedups.values())

    @property
    def mean(self) -> float:
        return math.exp(statistics.fmean(math.log(s) for s in self.speedups.values()))


def record_noise(results: list[dict[str, Any]]) -> float:
    """The record's own spread: the median over its rows of p90 / p10 - 1."""
    spreads = [r["p90_us"] / r["p10_us"] - 1 for r in results if r.get("p10_us") and r.get("p90_us")]
    return statistics.median(spreads) if spreads else 0.0


def candidates(record: dict[str, Any], *, noise: float, max_err: float, layers: set[str] | None = None,
               ) -> dict[int, list[Candidate]]:
    """Per T, our configs on every layer that timed ``ours:default`` at that T (``layers``: only these), best
    mean first."""
    rows = [r for r in record["results"] if r["backend"].startswith("ours:") and (layers is None or r["layer"] in layers)]
    us = {(r["layer"], r["T"], r["backend"]): r["us"] for r in rows}
    errs: dict[tuple[str, str], float] = {}
    for c in record.get("checks", []):
        key = (c["layer"], c["backend"])
        errs[key] = max(errs.get(key, 0.0), c["rel_err"])
    out: dict[int, list[Candidate]] = {}
    for T in sorted({r["T"] for r in rows}):
        on = sorted({layer for (layer, t, b) in us if t == T and b == DEFAULT})
        found = []
        for backend in sorted({b for (_, t, b) in us if t == T and b != DEFAULT}):
            if not on or any((layer, T, backend) not in us for layer in on):
                continue  # a default must hold on every layer: a config not timed on one of them is not judged
            speedups = {layer: us[(layer, T, DEFAULT)] / us[(layer, T, backend)] for layer in on}
            seen = [errs[(layer, backend)] for layer in on if (layer, backend) in errs]
            c = Candidate(T, backend, speedups, max(seen) if seen else None, wins=False)
            wins = c.worst >= 1 - noise and c.mean > 1 + noise and c.max_err is not None and c.max_err <= max_err
            found.append(dataclasses.replace(c, wins=wins))
        out[T] = sorted(found, key=lambda c: -c.mean)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("record")
    p.add_argument("--noise", type=float, default=0.05, help="the least relative margin that counts (default 0.05)")
    p.add_argument("--max-err", type=float, default=0.01, help="largest relative error a default may have")
    p.add_argument("--layers", help="a comma list of the record's layers to judge on (default: every 4-bit one)")
    a = p.parse_args(argv)
    try:
        with open(a.record) as f:
            record = json.load(f)
        rows = record["results"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"lowt_pick: {a.record}: not a bench_lowt.py record ({e})", file=sys.stderr)
        return 2
    quant = {r["layer"]: r.get("quant") for r in rows}
    layers = set(a.layers.split(",")) if a.layers else {layer for layer, q in quant.items() if q not in ("bf16", "fp16")}
    noise = max(a.noise, record_noise([r for r in rows if r["layer"] in layers]))
    print(f"{a.record}: layers {', '.join(sorted(layers))}; noise {noise:.1%}; max error {a.max_err:g}")
    for T, found in candidates(record, noise=noise, max_err=a.max_err, layers=layers).items():
        print(f"T = {T}")
        for c in found[:6]:
            per = ", ".join(f"{layer} {s:.2f}x" for layer, s in c.speedups.items())
            err = "no check" if c.max_err is None else f"err {c.max_err:.1e}"
            print(f"  {'WIN ' if c.wins else '    '}{c.backend:18} mean {c.mean:.2f}x worst {c.worst:.2f}x {err}: {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
