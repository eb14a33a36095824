"""Shared pieces of the quantized formats: input checks, the e2m1 code table, nibble packing."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, TypeVar

import torch

_F = TypeVar("_F", bound="TensorFormat")

# How one tensor field of a format follows the logical weight [..., N, K]: (N axis, elements of N
# per index, K axis, elements of K per index); None where the field has no such axis, "group" for
# the format's own group size.
FieldAxes = tuple[int | None, int | str, int | None, int | str]

# e2m1 (FP4) magnitudes by 3-bit code; bit 3 of a nibble is the sign. Same table as FlashInfer's
# ``quantization/fp4_quantization.py::_E2M1_VALUES`` (signed, 16 entries).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_LUT = torch.tensor(list(E2M1_VALUES) + [-v for v in E2M1_VALUES], dtype=torch.float32)
# Midpoints between neighbouring magnitudes; a value above the last one saturates to 6.
E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
# Round-half-even: a tie goes to the neighbour whose code is even (mantissa bit 0), i.e. up for
# 0.75 (code 1 -> 2), 1.75 (3 -> 4) and 3.5 (5 -> 6), down for the others.
_TIE_UP_EVEN = (False, True, False, True, False, True, False)

FP8_E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


def check_weight(w: object, fmt: str, k_multiple: int = 1) -> torch.Tensor:
    """Validate a weight ``[..., N, K]`` to quantize; raise ValueError with one clear line."""
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"{fmt}: expected a torch.Tensor weight, got {type(w).__name__}")
    if not w.is_floating_point() or w.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise ValueError(f"{fmt}: weight must be fp32/fp16/bf16, got {w.dtype}")
    if w.dim() < 2:
        raise ValueError(f"{fmt}: weight must be [..., N, K] (2 dims or more), got shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise ValueError(f"{fmt}: weight is empty, shape {tuple(w.shape)}")
    if w.shape[-1] % k_multiple:
        raise ValueError(f"{fmt}: K = {w.shape[-1]} (last dim) must be a multiple of {k_multiple}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{fmt}: weight contains NaN or inf")
    return w


def e2m1_magnitude_code(a: torch.Tensor, *, ties_even: bool) -> torch.Tensor:
    """3-bit e2m1 code (uint8) of magnitudes ``a >= 0``, saturating to 6 (code 7).

    ``ties_even=True``: round-half-even (PTX ``cvt.rn.satfinite.e2m1x2.f32``).
    ``ties_even=False``: ties to the lower magnitude, i.e. ``torch.bucketize(a, midpoints,
    right=False)`` as in FlashInfer's ``_quantize_mxfp4_linear``. Counting the midpoints passed
    keeps the temporaries at one byte per element.
    """
    code = torch.zeros(a.shape, dtype=torch.uint8, device=a.device)
    for mid, tie_up in zip(E2M1_MIDPOINTS, _TIE_UP_EVEN):
        code += (a >= mid) if (ties_even and tie_up) else (a > mid)
    return code


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[..., K] 4-bit codes -> uint8 [..., K/2]; element 2j in the low nibble, 2j+1 in the high."""
    codes = codes.to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(data: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] -> uint8 codes [..., K] (inverse of ``pack_nibbles``)."""
    return torch.stack((data & 0x0F, data >> 4), dim=-1).flatten(-2)


def e2m1_decode(data: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] packed e2m1 -> fp32 [..., K]."""
    return E2M1_LUT.to(data.device)[unpack_nibbles(data).long()]


class TensorFormat:
    """Mixin of the format dataclasses: ``.to(device)`` moves every tensor field, ``.expert(e)``
    slices every tensor field; ``.padded`` / ``.gate_up_swapped`` are the exact row-wise layout
    changes (``formats.rows``) a format supports (the default refuses); ``slice_axes`` says how
    each field is sliced along N or K (``distributed.shard``; empty: the format cannot be)."""

    slice_axes: ClassVar[Mapping[str, FieldAxes]] = {}

    def _tensors(self) -> dict[str, torch.Tensor]:
        me: Any = self  # every subclass is a dataclass
        return {f.name: getattr(me, f.name) for f in dataclasses.fields(me)
                if isinstance(getattr(me, f.name), torch.Tensor)}

    def to(self: _F, device: torch.device | str) -> _F:
        me: Any = self
        return dataclasses.replace(me, **{name: t.to(device) for name, t in self._tensors().items()})

    def expert(self: _F, e: int) -> _F:
        """Expert ``e`` of an ``[E, N, K]`` weight as ``[N, K]``."""
        me: Any = self
        return dataclasses.replace(me, **{name: t[e] for name, t in self._tensors().items()})

    @classmethod
    def from_weight(cls: type[_F], w: torch.Tensor, scheme: Any) -> _F:
        """``w [..., N, K]`` quantized with the format's recipe (``formats.quantize`` calls this)."""
        raise NotImplementedError(cls.__name__)

    def padded(self: _F, segments: list[tuple[int, int]], k_to: int) -> _F:
        """Zero-padded so that it dequantizes to the zero-padded weight exactly: rows in
        consecutive ``(rows, rows_to)`` segments, K to ``k_to``."""
        raise ValueError(f"cannot pad a {type(self).__name__} weight")

    def gate_up_swapped(self: _F, intermediate: int, *, interleaved: bool = False) -> _F:
        """Gated GEMM1 rows ``[gate; up]`` (or interleaved) reordered to ``[up; gate]``, scales with them."""
        raise ValueError(f"cannot reorder a {type(self).__name__} weight")


def fail(cls: str, message: str) -> None:
    raise ValueError(f"{cls}: {message}")
