"""Choosing by measured speed: a cost table written by `moe-registry bench`, and a policy that ranks
eligible backends by their measured time for the layer's token count.

Where a backend has no measurement for the layer on this device, declared priority decides: the
measured policy only reorders what it has evidence for, and says so in the Selection's notes.

Decode is measured as engines run it: at T up to the largest CUDA-graph bucket (:data:`DECODE_BUCKETS`)
a cost table holds graph-replay times (``mode="graph"``) beside the eager ones, and the policy ranks by
the graphed time wherever a backend has one (a backend without one runs eagerly at decode, and is
ranked by that). With every T measured on both sides of the bucket limit, the policy also names the
backend that serves decode and the one that serves prefill (:class:`~moe_registry.schemas.selection.PhaseChoice`),
the latter among the eligible backends that hold the same weights as the decode one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ._files import read_regular_file

from .schemas.device import DeviceSpec
from .schemas.layer import LayerSpec
from .schemas.selection import Candidate, DecidedBy, Note, PhaseChoice
from .selection import DeclaredPriority

# 2: entries carry ``mode`` (tables of version 1 are all eager and load as such).
COST_SCHEMA_VERSION = 2

#: Token buckets that run from CUDA graphs at decode (vLLM's capture sizes up to 64); above the last one a
#: forward runs eagerly. The one home of this fact: execution.graphs and measure.bench read it.
DECODE_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)
Mode = Literal["eager", "graph"]


# A time above this (11.6 days) is not a measurement; finite bounds keep sums and --json finite.
MAX_US = 1e12
MAX_COST_TABLE_BYTES = 8 * 2**20


class CostEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    backend: str
    layer: LayerSpec  # shape key: name and index are dropped
    tokens: int = Field(gt=0)
    mode: Mode = "eager"  # "graph": replays of the forward captured in a CUDA graph (decode, T <= 64)
    median_us: float = Field(gt=0, le=MAX_US)
    p10_us: float | None = Field(default=None, ge=0, le=MAX_US)
    p90_us: float | None = Field(default=None, ge=0, le=MAX_US)


class CostTable(BaseModel):
    """Measured forward times per (backend, layer shape, token count) on one device."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: int = COST_SCHEMA_VERSION
    device: DeviceSpec
    card: str = ""  # the card's own name, e.g. "NVIDIA H100 80GB HBM3"
    date: str = ""
    versions: dict[str, str] = {}
    entries: tuple[CostEntry, ...] = ()

    @classmethod
    def load(cls, path: str | Path) -> "CostTable":
        """Read a cost table; ValueError (one line) for a missing or malformed file."""
        try:  # a regular file only (a FIFO must not block), size-checked before reading
            raw = read_regular_file(path, limit=MAX_COST_TABLE_BYTES, what="cost table")
        except OSError as exc:
            raise ValueError(f"cannot read cost table {path}: {exc.strerror or exc}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"cost table {path} is not UTF-8 text") from None
        try:
            return cls.model_validate_json(text)
        except ValueError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{path} is not a moe-registry cost table: {first}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.model_dump(mode="json"), indent=1) + "\n")

    def points(self, backend: str, layer: LayerSpec, mode: Mode = "eager") -> list[tuple[int, float]]:
        key = layer.shape_key()
        # shape_key() on both sides: an entry written with a layer name still matches its shape.
        return sorted((e.tokens, e.median_us) for e in self.entries
                      if e.backend == backend and e.mode == mode and e.layer.shape_key() == key)

    def estimate_us(self, backend: str, layer: LayerSpec, tokens: int, mode: Mode = "eager") -> float | None:
        """Interpolated time (log-log between the nearest measured token counts; the nearest
        measurement outside the measured range). None when the pair was never measured."""
        pts = self.points(backend, layer, mode)
        if not pts:
            return None
        if tokens <= pts[0][0]:
            return pts[0][1]
        if tokens >= pts[-1][0]:
            return pts[-1][1]
        for (t0, y0), (t1, y1) in zip(pts, pts[1:]):
            if t0 <= tokens <= t1:
                f = (math.log(tokens) - math.log(t0)) / (math.log(t1) - math.log(t0))
                return math.exp(math.log(y0) + f * (math.log(y1) - math.log(y0)))
        return None  # unreachable: the points are sorted

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True, eq=False)
class MeasuredPolicy:
    """Rank eligible backends by measured time for ``num_tokens`` tokens per forward (or, when
    None, by the total over every measured token count: the same weight to decode and prefill).
    Unmeasured candidates follow, in declared-priority order."""

    costs: CostTable
    num_tokens: int | None = None
    fallback: DeclaredPriority = DeclaredPriority()
    graph_tokens: int = DECODE_BUCKETS[-1]  # decode: T up to here runs from CUDA graphs where measured so

    def __post_init__(self) -> None:
        if self.num_tokens is not None and (isinstance(self.num_tokens, bool) or self.num_tokens < 1):
            raise ValueError(f"the measured policy needs a positive token count, got {self.num_tokens}")

    @property
    def exact_activations(self) -> bool:
        return self.fallback.exact_activations

    @property
    def allow_padding(self) -> bool:
        return self.fallback.allow_padding

    def key(self) -> str:
        return f"measured({self.costs.digest()},T={self.num_tokens},graphs<={self.graph_tokens},{self.fallback.key()})"

    def run_us(self, backend: str, layer: LayerSpec, tokens: int) -> tuple[float | None, Mode]:
        """The time of one forward as an engine runs it: from a CUDA graph at decode (T up to
        ``graph_tokens``) where the table has graph times for the backend, else eager."""
        if tokens <= self.graph_tokens and self.costs.points(backend, layer, "graph"):
            return self.costs.estimate_us(backend, layer, tokens, "graph"), "graph"
        return self.costs.estimate_us(backend, layer, tokens), "eager"

    def _costs(self, backends: Sequence[str], layer: LayerSpec) -> tuple[dict[str, float | None], str]:
        """Cost per backend (None: unmeasured) and the token counts it stands for."""
        if self.num_tokens is not None:
            return {b: self.run_us(b, layer, self.num_tokens)[0] for b in backends}, f"T={self.num_tokens}"
        # Summed over the token counts every measured candidate has, so a backend that lacks a
        # (costly) point, e.g. one that failed at large T, is not favoured by the gap. Without a
        # common count: interpolated (clamped) estimates over the union.
        measured = {b: {t for t, _ in self.costs.points(b, layer)} for b in backends}
        measured = {b: ts for b, ts in measured.items() if ts}
        grid = sorted(set.intersection(*measured.values())) if measured else []
        if not grid:
            grid = sorted(set().union(*measured.values())) if measured else []
        costs: dict[str, float | None] = {b: None for b in backends}
        for b in measured:
            costs[b] = sum(self.run_us(b, layer, t)[0] or 0.0 for t in grid)
        return costs, "summed over T=" + ",".join(map(str, grid))

    def phases(self, candidates: Sequence[Candidate], layer: LayerSpec,
               device: DeviceSpec) -> tuple[tuple[PhaseChoice, ...], tuple[Note, ...]]:
        """The backend that serves decode (T <= ``graph_tokens``, graphed where measured so) and the one
        that serves prefill (larger T, eager), each the fastest summed over the token counts every
        measured candidate has on its side; prefill only among the candidates that hold the same
        weights as the decode one. Empty without measurements on both sides (or from another card)."""
        if (self.costs.device.name, self.costs.device.sm) != (device.name, device.sm):
            return (), ()
        measured = {c.backend: {t for t, _ in self.costs.points(c.backend, layer)} for c in candidates}
        measured = {b: ts for b, ts in measured.items() if ts}
        if not measured:
            return (), ()
        common = set.intersection(*measured.values())
        decode = sorted(t for t in common if t <= self.graph_tokens)
        prefill = sorted(t for t in common if t > self.graph_tokens)
        if not decode or not prefill:
            return (), ()

        def fastest(pool: Sequence[Candidate], grid: list[int]) -> tuple[Candidate, float]:
            # candidates arrive in declared-priority order: the first of equal sums wins
            timed = [(sum(self.run_us(c.backend, layer, t)[0] or 0.0 for t in grid), i, c)
                     for i, c in enumerate(pool) if c.backend in measured]
            cost, _, best = min(timed)  # (cost, position): positions are distinct, candidates never compared
            return best, cost

        by_priority, _, _ = self.fallback.order(candidates, layer, device)
        dec, dec_us = fastest(by_priority, decode)
        same = [c for c in by_priority if c.weights_held == dec.weights_held]
        pre, pre_us = fastest(same, prefill)
        mode: Mode = "graph" if self.costs.points(dec.backend, layer, "graph") else "eager"
        choices = (
            PhaseChoice(phase="decode", tokens=f"T <= {self.graph_tokens}", backend=dec.backend, mode=mode,
                        estimated_us=round(dec_us, 3), expert_weight_bytes=dec.expert_weight_bytes),
            PhaseChoice(phase="prefill", tokens=f"T > {self.graph_tokens}", backend=pre.backend, mode="eager",
                        estimated_us=round(pre_us, 3), expert_weight_bytes=pre.expert_weight_bytes),
        )
        text = (f"decode ({choices[0].tokens}, {mode}): {dec.backend} {dec_us:g} us summed over T="
                f"{','.join(map(str, decode))}; prefill ({choices[1].tokens}, eager): {pre.backend} {pre_us:g} us summed "
                f"over T={','.join(map(str, prefill))}, among backends holding {dec.weights_held or 'the same weights'}")
        if pre.backend != dec.backend:
            text += f"; {pre.backend} keeps its own copy of the expert weights (counted in the memory fit)"
        return choices, (Note(kind="measured", message=text),)

    def order(self, candidates: Sequence[Candidate], layer: LayerSpec,
              device: DeviceSpec) -> tuple[list[Candidate], DecidedBy, tuple[Note, ...]]:
        by_priority, _, _ = self.fallback.order(candidates, layer, device)
        # The same card, not just the same architecture: an H100 table would misplace an H200's
        # crossovers (3.35 vs 4.8 TB/s of memory bandwidth).
        if (self.costs.device.name, self.costs.device.sm) != (device.name, device.sm):
            note = Note(kind="measured", message=(
                f"cost table measured on {self.costs.device.label()}, not {device.label()}: declared priority decides"))
            return by_priority, "priority", (note,)
        costs, where = self._costs([c.backend for c in by_priority], layer)
        timed = [(c, costs[c.backend]) for c in by_priority]
        measured = sorted(((t, i, c) for i, (c, t) in enumerate(timed) if t is not None), key=lambda x: (x[0], x[1]))
        if not measured:
            note = Note(kind="measured", message="no measurement for this layer shape: declared priority decides")
            return by_priority, "priority", (note,)
        ordered = [c.model_copy(update={"estimated_us": round(t, 3)}) for t, _, c in measured]
        ordered += [c for c, t in timed if t is None]
        text = ", ".join(f"{c.backend} {c.estimated_us:g} us" for c in ordered if c.estimated_us is not None)
        missing = [c.backend for c, t in timed if t is None]
        note = Note(kind="measured", message=(
            f"measured on {self.costs.card or self.costs.device.label()} ({where}): {text}"
            + (f"; unmeasured, ranked by priority: {', '.join(missing)}" if missing else "")))
        return ordered, "measured", (note,)
