"""Row-wise layout changes of ``[..., N, K]`` weights that keep them exact: zero padding, and
swapping the gated GEMM1 halves ``[gate; up]`` -> ``[up; gate]`` (FlashInfer's ``w31``).

Plain tensors are handled here; a formats object does it itself (``TensorFormat.padded`` /
``.gate_up_swapped``), since only the format knows how its scales follow its rows.
"""

from __future__ import annotations

import torch


def pad_rows_cols(t: torch.Tensor, segments: list[tuple[int, int]] | None, cols_to: int | None,
                  fill: float = 0.0) -> torch.Tensor:
    """Pad the last two dims of ``t``: rows split into consecutive ``(rows, rows_to)`` segments,
    each padded at its end; columns padded at the end to ``cols_to``. Pads with ``fill``."""

    def pad(x: torch.Tensor, dim: int, to: int) -> torch.Tensor:
        extra = to - x.shape[dim]
        if extra <= 0:
            return x
        shape = list(x.shape)
        shape[dim] = extra
        if x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            filler = torch.full(shape, fill, dtype=torch.float32, device=x.device).to(x.dtype)
        else:
            filler = torch.full(shape, fill, dtype=x.dtype, device=x.device)
        return torch.cat([x, filler], dim=dim)

    if segments is not None and any(r != r_to for r, r_to in segments):
        if sum(r for r, _ in segments) != t.shape[-2]:
            raise ValueError(f"row segments {segments} do not cover {t.shape[-2]} rows")
        parts, start = [], 0
        for rows, rows_to in segments:
            parts.append(pad(t[..., start:start + rows, :], -2, rows_to))
            start += rows
        t = torch.cat(parts, dim=-2)
    if cols_to is not None:
        t = pad(t, -1, cols_to)
    return t.contiguous()


def select_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of ``t [..., N, K]``, contiguous."""
    return t.index_select(-2, index.to(t.device)).contiguous()


def gate_up_index(intermediate: int, *, interleaved: bool) -> torch.Tensor:
    """The row order that turns ``[gate; up]`` (or interleaved g0, u0, g1, u1, ...) into ``[up; gate]``."""
    I = intermediate
    if interleaved:
        return torch.cat([torch.arange(1, 2 * I, 2), torch.arange(0, 2 * I, 2)])
    return torch.cat([torch.arange(I, 2 * I), torch.arange(0, I)])


def pad_weight(w, segments: list[tuple[int, int]], k_to: int):
    """Zero-pad a ``[E, N, K]`` weight (plain tensor or formats object) so that it dequantizes to
    the zero-padded weight exactly. ``segments`` are ``(rows, rows_to)`` consecutive row ranges
    (gated ``[gate; up]`` pads each half). ValueError for a format that cannot pad exactly."""
    K = int(w.shape[-1])
    if k_to == K and all(r == r_to for r, r_to in segments):
        return w
    if isinstance(w, torch.Tensor):
        return pad_rows_cols(w, segments, k_to)
    return w.padded(segments, k_to)


def gate_up_to_up_gate(w, intermediate: int, *, interleaved: bool = False):
    """Canonical gated GEMM1 rows ``[gate; up]`` (or gpt-oss interleaved g0, u0, g1, u1, ...) ->
    FlashInfer's ``[up; gate]`` (flashinfer-moe-api.md 1.4: ``w31 = cat([w3, w1])``). Works on
    plain tensors ``[..., 2I, K]``, on formats objects (row-wise data and scales), and on biases
    given as ``[..., 2I, 1]``."""
    rows = int(w.shape[-2])
    if rows != 2 * intermediate:
        raise ValueError(f"gated GEMM1 weight has {rows} rows; expected 2*I = {2 * intermediate}")
    if isinstance(w, torch.Tensor):
        return select_rows(w, gate_up_index(intermediate, interleaved=interleaved))
    return w.gate_up_swapped(intermediate, interleaved=interleaved)
