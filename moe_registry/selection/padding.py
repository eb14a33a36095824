"""Padding: the per-rank sizes a backend's adapter pads the layer to, and what that costs."""

from __future__ import annotations

import math

from ..schemas.capability import BackendCapability, Dimension
from ..schemas.layer import LayerSpec
from ..schemas.selection import PadDimension, Padding
from .policy import Policy


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _tp_split_group(layer: LayerSpec) -> int | None:
    """The scale group TP cuts through along the intermediate, when the unsharded checkpoint holds
    whole groups (so ranks can hold whole groups if their shards are cut on the group grid)."""
    group = layer.quant.scale_group_k
    local = layer.local_intermediate_size
    if group is None or layer.parallel.tp == 1 or local % group == 0 or layer.intermediate_size % group:
        return None
    return group


def _pad_multiples(d: BackendCapability, layer: LayerSpec, policy: Policy) -> dict[Dimension, int]:
    """Dimension -> multiple the backend's adapter pads to: the lcm of its pad rules that apply, and
    where TP cuts through scale groups, the group too (the adapter pads whole groups, see
    _check_format_groups). Rule conditions are judged at the padded sizes; the set only grows, so
    this reaches a fixpoint within one pass per rule."""
    if not policy.allow_padding:
        return {}
    multiples: dict[Dimension, int] = {}
    group = _tp_split_group(layer)
    while True:
        sizes = _padded_sizes(layer, multiples)
        grown = dict(multiples)
        for rule in d.shape_rules:
            if rule.pad and rule.multiple_of is not None and rule.when.matches(layer, sizes):
                grown[rule.dimension] = math.lcm(grown.get(rule.dimension, 1), rule.multiple_of)
        if group is not None and "intermediate" in grown:
            grown["intermediate"] = math.lcm(grown["intermediate"], group)
        if grown == multiples:
            return multiples
        multiples = grown


def _padded_sizes(layer: LayerSpec, multiples: dict[Dimension, int]) -> dict[Dimension, int]:
    """Per-rank hidden / intermediate the kernel sees after padding to ``multiples``."""
    return {"hidden": _round_up(layer.hidden_size, multiples.get("hidden", 1)),
            "intermediate": _round_up(layer.local_intermediate_size, multiples.get("intermediate", 1))}


def _paddings(layer: LayerSpec, multiples: dict[Dimension, int]) -> tuple[Padding, ...]:
    h, i = layer.hidden_size, layer.local_intermediate_size
    padded: dict[Dimension, int] = {"hidden": h, "intermediate": i}
    for dimension, m in multiples.items():
        padded[dimension] = -(-padded[dimension] // m) * m
    if padded == {"hidden": h, "intermediate": i}:
        return ()
    # Expert weights and GEMM FLOPs both scale with H * I (w13 is 2I x H or I x H, w2 is H x I).
    extra = 100.0 * (padded["hidden"] * padded["intermediate"] / (h * i) - 1)
    dims: tuple[tuple[PadDimension, int], ...] = (("hidden", h), ("intermediate", i))
    return tuple(
        Padding(dimension=dim, original=orig, padded=padded[dim], multiple_of=multiples[dim],
                extra_weight_memory_pct=round(extra, 2), extra_flops_pct=round(extra, 2))
        for dim, orig in dims if padded[dim] != orig)
