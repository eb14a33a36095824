"""MXFP4 (OCP MX): e2m1 values, one e8m0 (power-of-two) scale per 32 along K.

Recipe: FlashInfer 0.7.2.post1 ``flashinfer/fused_moe/prepare.py::_quantize_mxfp4_linear``
(L1824-1871), the SM90-safe torch quantizer behind ``prepare_cutlass_w4a16_weights`` (FlashInfer's
CUDA ``fp4_quantize`` returns garbage below SM100):

- ``exponent = ceil(log2(amax_32 / 6))`` clamped to [-127, 127]; all-zero blocks use -127
  (byte 0); byte = exponent + 127. Rounding the scale *up* keeps every value within +-6.
- ``q = bucketize(|x / 2^exponent|, [.25, .75, 1.25, 1.75, 2.5, 3.5, 5], right=False)``: nearest
  e2m1 magnitude, ties to the lower one (not round-half-even), saturating at 6; sign bit 3 set
  for ``x / 2^exponent < 0`` (so ``-0.0`` encodes as +0).
- nibble packing: element 2j low, 2j+1 high. Dequant ``e2m1 * 2^(byte - 127)``.

The SM100 CUDA path (``quantization_utils.cuh::cvt_warp_fp16_to_fp4``, UE8M0 branch) also rounds
the scale up (``__nv_cvt_float_to_e8m0(vmax * rcp(6), cudaRoundPosInf)``) but then rounds the
values half-to-even, so its codes can differ from this quantizer at exact midpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from moe_registry.schemas.quant import QuantKind, QuantScheme

from ._common import TensorFormat, check_weight, e2m1_decode, e2m1_magnitude_code, fail, pack_nibbles
from .rows import gate_up_index, pad_rows_cols, select_rows

MXFP4_BLOCK = 32


def e8m0_to_float(byte: torch.Tensor) -> torch.Tensor:
    """uint8 e8m0 -> fp32 ``2^(byte - 127)`` exactly (byte 0 is the subnormal 2^-127, 255 NaN)."""
    e = byte.to(torch.int32)
    value = (e << 23).view(torch.float32)  # exponent field only: exactly 2^(e-127) for e in 1..254
    value = torch.where(e == 0, torch.tensor(2.0**-127, device=byte.device), value)
    return torch.where(e == 255, torch.tensor(float("nan"), device=byte.device), value)


@dataclass(frozen=True, eq=False)
class MxFp4Tensor(TensorFormat):
    """``data`` uint8 [..., N, K/2] (e2m1, element 2j low nibble), ``scale`` uint8 e8m0 [..., N, K/32]."""

    data: torch.Tensor
    scale: torch.Tensor
    scheme: QuantScheme | None = None

    slice_axes = {"data": (-2, 1, -1, 2), "scale": (-2, 1, -1, MXFP4_BLOCK)}

    def __post_init__(self) -> None:
        d, s = self.data, self.scale
        if d.dtype != torch.uint8 or s.dtype != torch.uint8:
            fail("MxFp4Tensor", f"data and scale must be uint8, got {d.dtype}/{s.dtype}")
        if d.dim() < 2 or s.shape != (*d.shape[:-1], d.shape[-1] * 2 // MXFP4_BLOCK):
            fail("MxFp4Tensor", f"inconsistent shapes data {tuple(d.shape)}, scale {tuple(s.shape)}")

    @classmethod
    def from_weight(cls, w: torch.Tensor, scheme: QuantScheme) -> MxFp4Tensor:
        """``w [..., N, K]`` quantized with this format's recipe (``formats.quantize`` calls this)."""
        return quantize_mxfp4(w)

    @property
    def kind(self) -> QuantKind:
        return QuantKind.MXFP4

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.data.shape[:-1], self.data.shape[-1] * 2))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        values = e2m1_decode(self.data).unflatten(-1, (-1, MXFP4_BLOCK))
        return (values * e8m0_to_float(self.scale).unsqueeze(-1)).flatten(-2).to(dtype)

    def padded(self, segments: list[tuple[int, int]], k_to: int) -> MxFp4Tensor:
        K = int(self.shape[-1])
        if (k_to - K) % MXFP4_BLOCK:
            raise ValueError(f"MxFp4Tensor: cannot pad K {K} -> {k_to} exactly (not a multiple of the 32-group)")
        return dataclasses.replace(self, data=pad_rows_cols(self.data, segments, k_to // 2),
                                   scale=pad_rows_cols(self.scale, segments, k_to // MXFP4_BLOCK))

    def gate_up_swapped(self, intermediate: int, *, interleaved: bool = False) -> MxFp4Tensor:
        index = gate_up_index(intermediate, interleaved=interleaved)
        return dataclasses.replace(self, data=select_rows(self.data, index), scale=select_rows(self.scale, index))


def quantize_mxfp4(w: torch.Tensor) -> MxFp4Tensor:
    """Quantize ``w [..., N, K]`` (K % 32 == 0) exactly as FlashInfer's ``_quantize_mxfp4_linear``."""
    check_weight(w, "mxfp4", MXFP4_BLOCK)
    blocks = w.float().unflatten(-1, (-1, MXFP4_BLOCK))  # [..., N, K/32, 32]
    block_scale = blocks.abs().amax(dim=-1) / 6.0
    nonzero = block_scale > 0
    safe = torch.where(nonzero, block_scale, torch.ones_like(block_scale))
    exponent = torch.ceil(torch.log2(safe)).to(torch.int32).clamp(-127, 127)
    exponent = torch.where(nonzero, exponent, -127)
    scaled = blocks / torch.exp2(exponent.float()).unsqueeze(-1)
    codes = e2m1_magnitude_code(scaled.abs(), ties_even=False) | ((scaled < 0).to(torch.uint8) << 3)
    return MxFp4Tensor(data=pack_nibbles(codes.flatten(-2)), scale=(exponent + 127).to(torch.uint8))
