"""FP8 e4m3 weights: per-tensor (per-expert), per-output-channel and DeepSeek 128x128 block scales.

Both store *dequant* scales (``w ~= data * scale``; vLLM/DeepSeek call the block one
``weight_scale_inv``).

- Per tensor: FlashInfer 0.7.2.post1 ``fused_moe/prepare.py::_quantize_fp8_per_expert``
  (L967-983): ``mult = 448 / amax`` (1 when amax == 0), ``data = e4m3(clamp(w * mult, +-448))``;
  we store ``scale = 1 / mult`` (= ``amax / 448``), as ``prepare_cutlass_fp8_per_tensor_weights``
  does for ``fc1_dequant``.
- Per output channel (vLLM "PTPC" weights, ``kFp8StaticChannelSym``): the per-tensor recipe with
  the amax taken over K only, one dequant scale ``amax_row / 448`` per output row.
- 128x128 blocks: ``prepare.py::_deepseek_fp8_quantize_weights`` (L742-757):
  ``scale = clamp(amax_block / 448, min=1e-12)``, ``data = e4m3(clamp(w / scale, +-448))``.
  FlashInfer requires N, K % 128 == 0; here partial edge tiles are zero-padded for the amax and
  the padding cropped, as DeepGEMM's ``per_block_cast_to_fp8`` does (copied in FlashInfer
  ``testing/utils.py`` L249-263; that helper also rounds scales to powers of two, which we do not).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe_registry.schemas.quant import QuantKind, QuantScheme

from ._common import FP8_E4M3_MAX, TensorFormat, check_weight, fail
from .rows import gate_up_index, pad_rows_cols, select_rows

FP8_BLOCK = 128


@dataclass(frozen=True, eq=False)
class Fp8Tensor(TensorFormat):
    """``data`` float8_e4m3fn [..., N, K], ``scale`` fp32 [...] dequant scale (``amax/448``)."""

    data: torch.Tensor
    scale: torch.Tensor
    scheme: QuantScheme | None = None

    slice_axes = {"data": (-2, 1, -1, 1), "scale": (None, 1, None, 1)}

    def __post_init__(self) -> None:
        if self.data.dtype != torch.float8_e4m3fn or self.scale.dtype != torch.float32:
            fail("Fp8Tensor", f"dtypes must be float8_e4m3fn/float32, got {self.data.dtype}/{self.scale.dtype}")
        if self.data.dim() < 2 or self.scale.shape != self.data.shape[:-2]:
            fail("Fp8Tensor", f"scale shape {tuple(self.scale.shape)} must be data's leading dims "
                 f"{tuple(self.data.shape[:-2])}")

    @classmethod
    def from_weight(cls, w: torch.Tensor, scheme: QuantScheme) -> Fp8Tensor:
        """``w [..., N, K]`` quantized with this format's recipe (``formats.quantize`` calls this)."""
        return quantize_fp8(w)

    @property
    def kind(self) -> QuantKind:
        return QuantKind.FP8

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.data.float() * self.scale[..., None, None]).to(dtype)

    def padded(self, segments: list[tuple[int, int]], k_to: int) -> Fp8Tensor:
        return dataclasses.replace(self, data=pad_rows_cols(self.data, segments, k_to))

    def gate_up_swapped(self, intermediate: int, *, interleaved: bool = False) -> Fp8Tensor:
        index = gate_up_index(intermediate, interleaved=interleaved)
        return dataclasses.replace(self, data=select_rows(self.data, index))


@dataclass(frozen=True, eq=False)
class Fp8ChannelTensor(TensorFormat):
    """``data`` float8_e4m3fn [..., N, K], ``scale`` fp32 [..., N]: one dequant scale per output row."""

    data: torch.Tensor
    scale: torch.Tensor
    scheme: QuantScheme | None = None

    def __post_init__(self) -> None:
        if self.data.dtype != torch.float8_e4m3fn or self.scale.dtype != torch.float32:
            fail("Fp8ChannelTensor", f"dtypes must be float8_e4m3fn/float32, got {self.data.dtype}/{self.scale.dtype}")
        if self.data.dim() < 2 or self.scale.shape != self.data.shape[:-1]:
            fail("Fp8ChannelTensor", f"scale shape {tuple(self.scale.shape)} must be data's shape without K "
                 f"{tuple(self.data.shape[:-1])}")

    @classmethod
    def from_weight(cls, w: torch.Tensor, scheme: QuantScheme) -> Fp8ChannelTensor:
        """``w [..., N, K]`` quantized with this format's recipe (``formats.quantize`` calls this)."""
        return quantize_fp8_channel(w)

    @property
    def kind(self) -> QuantKind:
        return QuantKind.FP8_CHANNEL

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.data.float() * self.scale[..., None]).to(dtype)

    def padded(self, segments: list[tuple[int, int]], k_to: int) -> Fp8ChannelTensor:
        # Padded rows: zero data under a unit scale.
        scale = pad_rows_cols(self.scale.unsqueeze(-1), segments, None, fill=1.0).squeeze(-1)
        return dataclasses.replace(self, data=pad_rows_cols(self.data, segments, k_to), scale=scale)

    def gate_up_swapped(self, intermediate: int, *, interleaved: bool = False) -> Fp8ChannelTensor:
        index = gate_up_index(intermediate, interleaved=interleaved)
        return dataclasses.replace(self, data=select_rows(self.data, index),
                                   scale=select_rows(self.scale.unsqueeze(-1), index).squeeze(-1))


@dataclass(frozen=True, eq=False)
class Fp8BlockTensor(TensorFormat):
    """``data`` float8_e4m3fn [..., N, K], ``scale`` fp32 [..., ceil(N/128), ceil(K/128)]
    (``weight_scale_inv``: ``w = data * scale`` per 128x128 tile)."""

    data: torch.Tensor
    scale: torch.Tensor
    scheme: QuantScheme | None = None

    slice_axes = {"data": (-2, 1, -1, 1), "scale": (-2, FP8_BLOCK, -1, FP8_BLOCK)}

    def __post_init__(self) -> None:
        d, s = self.data, self.scale
        if d.dtype != torch.float8_e4m3fn or s.dtype != torch.float32:
            fail("Fp8BlockTensor", f"dtypes must be float8_e4m3fn/float32, got {d.dtype}/{s.dtype}")
        tiles = (-(-d.shape[-2] // FP8_BLOCK), -(-d.shape[-1] // FP8_BLOCK)) if d.dim() >= 2 else ()
        if d.dim() < 2 or s.shape != (*d.shape[:-2], *tiles):
            fail("Fp8BlockTensor", f"scale shape {tuple(s.shape)} does not tile data {tuple(d.shape)} by 128x128")

    @classmethod
    def from_weight(cls, w: torch.Tensor, scheme: QuantScheme) -> Fp8BlockTensor:
        """``w [..., N, K]`` quantized with this format's recipe (``formats.quantize`` calls this)."""
        return quantize_fp8_block(w)

    @property
    def kind(self) -> QuantKind:
        return QuantKind.FP8_BLOCK

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n, k = self.data.shape[-2:]
        scale = self.scale.repeat_interleave(FP8_BLOCK, -2).repeat_interleave(FP8_BLOCK, -1)
        return (self.data.float() * scale[..., :n, :k]).to(dtype)

    def padded(self, segments: list[tuple[int, int]], k_to: int) -> Fp8BlockTensor:
        block_segments = None
        if any(r != r_to for r, r_to in segments):
            # A segment followed by another must start and end on 128-row block boundaries, or a
            # block would mix rows of two segments (or zeros) under one scale.
            for rows, rows_to in segments[:-1]:
                if rows % FP8_BLOCK or rows_to % FP8_BLOCK:
                    raise ValueError(f"Fp8BlockTensor: cannot pad a {rows}-row segment to {rows_to} rows exactly "
                                     "(both must be multiples of 128); pad before quantizing")
            block_segments = [(-(-r // FP8_BLOCK), -(-r_to // FP8_BLOCK)) for r, r_to in segments]
        return dataclasses.replace(
            self, data=pad_rows_cols(self.data, segments, k_to),
            scale=pad_rows_cols(self.scale, block_segments, -(-k_to // FP8_BLOCK), fill=1.0))

    def gate_up_swapped(self, intermediate: int, *, interleaved: bool = False) -> Fp8BlockTensor:
        if interleaved:
            raise ValueError("Fp8BlockTensor: interleaved gate/up rows share 128x128 scale blocks; "
                             "de-interleave before quantizing")
        if intermediate % FP8_BLOCK:
            raise ValueError(f"Fp8BlockTensor: swapping the gate/up halves needs I % 128 == 0, got I = {intermediate}")
        return dataclasses.replace(self, data=select_rows(self.data, gate_up_index(intermediate, interleaved=False)),
                                   scale=select_rows(self.scale, gate_up_index(intermediate // FP8_BLOCK,
                                                                               interleaved=False)))


def quantize_fp8(w: torch.Tensor) -> Fp8Tensor:
    """Per-tensor e4m3, one scale per leading index (per expert) — FlashInfer's recipe."""
    check_weight(w, "fp8")
    x = w.float()
    amax = x.abs().amax(dim=(-1, -2))
    mult = torch.where(amax > 0, FP8_E4M3_MAX / amax, torch.ones_like(amax))
    data = (x * mult[..., None, None]).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return Fp8Tensor(data=data, scale=1.0 / mult)


def quantize_fp8_channel(w: torch.Tensor) -> Fp8ChannelTensor:
    """Per-output-channel e4m3: the per-tensor recipe with one amax per row."""
    check_weight(w, "fp8_channel")
    x = w.float()
    amax = x.abs().amax(dim=-1)
    mult = torch.where(amax > 0, FP8_E4M3_MAX / amax, torch.ones_like(amax))
    data = (x * mult[..., None]).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return Fp8ChannelTensor(data=data, scale=1.0 / mult)


def quantize_fp8_block(w: torch.Tensor) -> Fp8BlockTensor:
    """DeepSeek 128x128 block e4m3 (any N, K; edge tiles may be partial)."""
    check_weight(w, "fp8_block")
    x = w.float()
    n, k = x.shape[-2:]
    pn, pk = -n % FP8_BLOCK, -k % FP8_BLOCK
    padded = F.pad(x, (0, pk, 0, pn))  # zeros do not change a tile's amax
    tiles = padded.unflatten(-1, (-1, FP8_BLOCK)).unflatten(-3, (-1, FP8_BLOCK))  # [..., N/128, 128, K/128, 128]
    scale = (tiles.abs().amax(dim=(-3, -1)) / FP8_E4M3_MAX).clamp(min=1e-12)  # [..., N/128, K/128]
    q = (tiles / scale[..., :, None, :, None]).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    data = q.flatten(-2).flatten(-3, -2)[..., :n, :k].to(torch.float8_e4m3fn)
    return Fp8BlockTensor(data=data.contiguous(), scale=scale)
