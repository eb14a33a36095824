"""One rank's share of canonical expert weights: experts for EP, intermediate lanes for TP.

TP splits every expert's intermediate width: rows of ``w13`` (each half of a gated ``[gate; up]``
on its own, row pairs of gpt-oss's interleaved layout, plain rows when non-gated), the matching
entries of ``w13_bias`` and columns of ``w2``. ``w2_bias`` is added once per token, so only TP
rank 0 keeps it (the others hold zeros): the TP all-reduce then adds it exactly once.

Quantized weights are sliced in their packed form (data and scales together); a slice that would
cut through a packed byte or a scale group raises ``ValueError`` with the sizes, never a silently
wrong shard.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..execution.weights import ExpertWeights
from ..formats import QuantizedTensor
from ..schemas.layer import LayerSpec
from .layout import RankLayout


def _narrow_plain(t: torch.Tensor, axis: int, start: int, stop: int, quantum: int, full: int, what: str) -> torch.Tensor:
    if start % quantum or (stop % quantum and stop != full):
        raise ValueError(f"{what}: slice [{start}, {stop}) of {full} cuts through its packing or scale groups "
                         f"of {quantum}; choose a TP size whose per-rank width is a multiple of {quantum}")
    lo, hi = start // quantum, -(-stop // quantum)
    return t.narrow(axis, lo, hi - lo).contiguous()


def _narrow_format(w: Any, which: str, start: int, stop: int) -> Any:
    """Slice a formats object along its logical N (``which="n"``) or K (``"k"``) axis."""
    name = type(w).__name__
    table = getattr(w, "slice_axes", None)  # each format class says how its fields follow N and K
    if not table:
        known = sorted(cls.__name__ for cls in QuantizedTensor.__args__ if cls.slice_axes)
        raise ValueError(f"cannot shard {name} weights for tensor parallelism yet (known formats: "
                         f"{', '.join(known)}); use expert parallelism instead")
    full = w.shape[-2] if which == "n" else w.shape[-1]
    if getattr(w, "g_idx", None) is not None and which == "k":
        raise ValueError(f"{name} with act_order (g_idx) cannot be split along K: its groups follow a permutation")
    changes = {}
    for field, (n_axis, n_q, k_axis, k_q) in table.items():
        t = getattr(w, field)
        if t is None:
            continue
        axis, quantum = (n_axis, n_q) if which == "n" else (k_axis, k_q)
        if axis is None:
            continue
        if quantum == "group":
            if w.group_size == -1:  # one scale per output channel: every K slice keeps it whole
                continue
            quantum = w.group_size
        changes[field] = _narrow_plain(t, axis, start, stop, int(quantum), full, f"{name}.{field}")
    return dataclasses.replace(w, **changes)


def _rows(w: Any, ranges: list[tuple[int, int]]) -> Any:
    """Rows (logical N) ``ranges`` of a weight or bias, concatenated in order."""
    if isinstance(w, torch.Tensor):
        axis = -2 if w.dim() == 3 else -1  # w13 [E, N, K] or w13_bias [E, N]
        return torch.cat([w.narrow(axis, a, b - a) for a, b in ranges], dim=axis).contiguous()
    parts = [_narrow_format(w, "n", a, b) for a, b in ranges]
    if len(parts) == 1:
        return parts[0]
    table = w.slice_axes
    merged = {}
    for field, (n_axis, *_rest) in table.items():
        if n_axis is not None and getattr(parts[0], field) is not None:
            merged[field] = torch.cat([getattr(p, field) for p in parts], dim=n_axis).contiguous()
    return dataclasses.replace(parts[0], **merged)


def _experts(w: Any, experts: range, num_experts: int) -> Any:
    """The leading (expert) axis of every tensor that has one."""
    if w is None:
        return None
    if isinstance(w, torch.Tensor):
        return w[experts.start:experts.stop].contiguous()
    changes = {}
    for field in dataclasses.fields(w):
        t = getattr(w, field.name)
        # g_idx [K] is shared by every expert; only a per-expert g_idx [E, K] is split.
        if not isinstance(t, torch.Tensor) or (field.name == "g_idx" and t.dim() < 2):
            continue
        if t.dim() >= 1 and t.shape[0] == num_experts:
            changes[field.name] = t[experts.start:experts.stop].contiguous()
    return dataclasses.replace(w, **changes)


def shard_weights(weights: ExpertWeights, layer: LayerSpec, layout: RankLayout) -> ExpertWeights:
    """This rank's canonical weights from the full layer's (``layer`` has the full sizes).

    The result has the per-rank shapes ``layer.local_*`` of the same layer under
    ``ParallelConfig(tp=layout.tp, ep=layout.ep)``: what ``build_experts`` of a per-rank selection takes.
    """
    E, I, H = layer.num_experts, layer.intermediate_size, layer.hidden_size
    if (weights.num_experts, weights.intermediate_size, weights.hidden_size) != (E, I, H):
        raise ValueError(f"shard_weights takes the full layer's weights (E={E}, I={I}, H={H}); got E="
                         f"{weights.num_experts}, I={weights.intermediate_size}, H={weights.hidden_size}")
    experts = layout.experts(E)
    lanes = layout.intermediate(I)
    a, b = lanes.start, lanes.stop
    gated = layer.activation.is_gated
    interleaved = bool(layer.swigluoai and layer.swigluoai.interleaved)
    if not gated:
        row_ranges = [(a, b)]
    elif interleaved:
        row_ranges = [(2 * a, 2 * b)]  # g0, u0, g1, u1, ...: lane j owns rows 2j and 2j+1
    else:
        row_ranges = [(a, b), (I + a, I + b)]  # [gate; up]: the same lanes of each half

    def w13_part(w: Any) -> Any:
        w = _experts(w, experts, E)
        return w if layout.tp == 1 else _rows(w, row_ranges)

    w2 = _experts(weights.w2, experts, E)
    if layout.tp > 1:
        w2 = w2[..., a:b].contiguous() if isinstance(w2, torch.Tensor) else _narrow_format(w2, "k", a, b)
    w2_bias = _experts(weights.w2_bias, experts, E)
    if w2_bias is not None and layout.tp_rank != 0:
        w2_bias = torch.zeros_like(w2_bias)
    return ExpertWeights(w13=w13_part(weights.w13), w2=w2,
                         w13_bias=None if weights.w13_bias is None else w13_part(weights.w13_bias),
                         w2_bias=w2_bias)
