"""Input patterns and the error metric the GPU tests, the verification script and the benchmarks
share: routing that exercises the cases kernels get wrong (imbalanced load, empty experts), and the
relative error every comparison in the project reports."""

from __future__ import annotations

from typing import Iterable

import torch


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64; ``inf`` when ``out`` has a NaN or inf."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    if not bool(torch.isfinite(out64).all()):
        return float("inf")
    denom = float(ref64.norm())
    diff = float((out64 - ref64).norm())
    return diff / denom if denom > 0 else diff


def routing_pattern(T: int, E: int, k: int, *, device, kind: str = "random", generator=None,
                    ids_dtype: torch.dtype | None = None,
                    empty: Iterable[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(topk_weights fp32 [T, k], topk_ids [T, k])`` for a test routing pattern.

    ``random``: top-k of a softmax of Gaussian logits, renormalised. ``imbalanced``: logits skewed so
    a handful of experts take most tokens. ``empty``: random, but experts 0 and E-1 (first and last
    group) and every third expert get no tokens (needs enough experts left for k). ``empty=`` (any
    kind): these experts get no tokens instead.
    """
    logits = torch.randn(T, E, device=device, generator=generator)
    if kind == "imbalanced":
        logits = logits + torch.linspace(6.0, 0.0, E, device=device) ** 2 / 4
    elif kind not in ("random", "empty"):
        raise ValueError(f"unknown routing kind {kind!r}")
    if empty is not None or kind == "empty":
        banned = torch.zeros(E, dtype=torch.bool, device=device)
        if empty is None:
            banned[0::3] = True
            banned[E - 1] = True
            what = "'empty' routing"
        else:
            chosen = sorted(set(empty))
            banned[chosen] = True
            what = f"routing with experts {chosen} empty"
        if int((~banned).sum()) < k:
            raise ValueError(f"{what} needs at least {k} experts left of {E}")
        logits = logits.masked_fill(banned, float("-inf"))
    weights, ids = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.float().contiguous(), ids.to(ids_dtype or torch.int32).contiguous()
