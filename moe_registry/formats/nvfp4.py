"""NvFP4: e2m1 values, one float8_e4m3fn scale per 16 along K, one fp32 global scale per tensor.

Recipe: FlashInfer 0.7.2.post1 SM100 kernel ``cvt_warp_fp16_to_fp4`` (fast-math default branch,
``data/csrc/nv_internal/tensorrt_llm/kernels/quantization_utils.cuh`` L429-500; e2m1 conversion
``fp32_vec_to_e2m1`` L114-137), as written down in flashinfer-moe-api.md section 4 and in
FlashInfer's test reference ``tests/test_helpers/utils_fp4.py::ref_fp4_quant``:

1. ``gs = 448 * 6 / amax(tensor)`` (the *encode* global scale, one per expert).
2. per 16 values: ``sf = e4m3(gs * (vmax * rcp(6)))``, round-to-nearest-even, saturating (clamped
   to 448 before the torch cast).
3. ``out_scale = rcp(float(sf) * rcp(gs))`` (0 when ``sf == 0``);
   ``q = cvt.rn.satfinite.e2m1(x * out_scale)``: round-half-even, saturate to +-6.
4. nibble: bit 3 = sign, bits 0-2 index ``[0, .5, 1, 1.5, 2, 3, 4, 6]``; element 2j in the low
   nibble.
5. dequant ``e2m1 * float(sf) / gs``.

Everything is fp32. The kernel's ``rcp.approx.ftz`` is an approximate reciprocal (within about
an ulp); this code uses IEEE ``1/x``, so a value that lands exactly on an e2m1 midpoint (or an
e4m3 midpoint for ``sf``) can round the other way than on the GPU. bf16 weights do land on e2m1
midpoints (~0.06% of values in tests/test_formats.py), so expect rare one-step code differences.
FlashInfer's own reference has the same caveat; ``FLASHINFER_DISABLE_FP4_QUANT_FAST_MATH=1``
makes the kernel use IEEE division. Where ``sf`` underflows to 0 in a non-zero block the kernel's
``out_scale = rcp(0)`` saturates its codes to +-6; we write +-0 codes. Both dequantize to 0.
A negative value rounding to zero keeps its sign bit (code 8, -0.0), as the cvt does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from moe_registry.schemas.quant import QuantKind, QuantScheme

from ._common import FP8_E4M3_MAX, TensorFormat, check_weight, e2m1_decode, e2m1_magnitude_code, fail, pack_nibbles
from .rows import gate_up_index, pad_rows_cols, select_rows

NVFP4_BLOCK = 16
E2M1_MAX = 6.0


@dataclass(frozen=True, eq=False)
class NvFp4Tensor(TensorFormat):
    """``data`` uint8 [..., N, K/2], ``scale`` float8_e4m3fn [..., N, K/16] (linear layout),
    ``global_scale`` fp32 [...] (encode scale ``448*6/amax``; dequant divides by it)."""

    data: torch.Tensor
    scale: torch.Tensor
    global_scale: torch.Tensor
    scheme: QuantScheme | None = None  # the scheme ``quantize`` was asked for, if any

    slice_axes = {"data": (-2, 1, -1, 2), "scale": (-2, 1, -1, NVFP4_BLOCK), "global_scale": (None, 1, None, 1)}

    def __post_init__(self) -> None:
        d, s, g = self.data, self.scale, self.global_scale
        if d.dtype != torch.uint8 or s.dtype != torch.float8_e4m3fn or g.dtype != torch.float32:
            fail("NvFp4Tensor", f"dtypes must be uint8/float8_e4m3fn/float32, got {d.dtype}/{s.dtype}/{g.dtype}")
        if d.dim() < 2 or s.shape != (*d.shape[:-1], d.shape[-1] * 2 // NVFP4_BLOCK) or g.shape != d.shape[:-2]:
            fail("NvFp4Tensor", f"inconsistent shapes data {tuple(d.shape)}, scale {tuple(s.shape)}, "
                 f"global_scale {tuple(g.shape)}")

    @classmethod
    def from_weight(cls, w: torch.Tensor, scheme: QuantScheme) -> NvFp4Tensor:
        """``w [..., N, K]`` quantized with this format's recipe (``formats.quantize`` calls this)."""
        return quantize_nvfp4(w)

    @property
    def kind(self) -> QuantKind:
        return QuantKind.NVFP4

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.data.shape[:-1], self.data.shape[-1] * 2))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        values = e2m1_decode(self.data).unflatten(-1, (-1, NVFP4_BLOCK))
        sf = self.scale.float().unsqueeze(-1)
        gs = self.global_scale[..., None, None, None]
        return (values * sf / gs).flatten(-2).to(dtype)

    def padded(self, segments: list[tuple[int, int]], k_to: int) -> NvFp4Tensor:
        K = int(self.shape[-1])
        if (k_to - K) % NVFP4_BLOCK:
            raise ValueError(f"NvFp4Tensor: cannot pad K {K} -> {k_to} exactly (not a multiple of the 16-group)")
        return dataclasses.replace(self, data=pad_rows_cols(self.data, segments, k_to // 2),
                                   scale=pad_rows_cols(self.scale, segments, k_to // NVFP4_BLOCK))

    def gate_up_swapped(self, intermediate: int, *, interleaved: bool = False) -> NvFp4Tensor:
        index = gate_up_index(intermediate, interleaved=interleaved)
        return dataclasses.replace(self, data=select_rows(self.data, index), scale=select_rows(self.scale, index))


def nvfp4_global_scale(w: torch.Tensor) -> torch.Tensor:
    """Encode global scale ``448*6 / amax`` per leading index (fp32 [...]); 1.0 for an all-zero
    tensor (any value quantizes zeros to zeros)."""
    amax = w.float().abs().amax(dim=(-1, -2))
    return torch.where(amax > 0, (FP8_E4M3_MAX * E2M1_MAX) / amax, torch.ones_like(amax))


def quantize_nvfp4(w: torch.Tensor, global_scale: float | torch.Tensor | None = None) -> NvFp4Tensor:
    """Quantize ``w [..., N, K]`` (K % 16 == 0) to NvFP4 with FlashInfer's recipe (module doc).

    ``global_scale``: the encode scale (a float, or a tensor broadcastable to ``w.shape[:-2]``);
    default ``448*6/amax`` per leading index (per expert), as FlashInfer's tests compute it.
    """
    check_weight(w, "nvfp4", NVFP4_BLOCK)
    x = w.float()
    lead = x.shape[:-2]
    if global_scale is None:
        gs = nvfp4_global_scale(x)
    else:
        try:
            gs = torch.as_tensor(global_scale, dtype=torch.float32, device=x.device).expand(lead).clone()
        except RuntimeError:
            raise ValueError(f"nvfp4: global_scale must broadcast to the leading dims {tuple(lead)}") from None
    if not bool(torch.isfinite(gs).all()) or not bool((gs > 0).all()):
        raise ValueError("nvfp4: global scale must be finite and positive (weight amax too small?)")

    blocks = x.unflatten(-1, (-1, NVFP4_BLOCK))  # [..., N, K/16, 16]
    vmax = blocks.abs().amax(dim=-1)
    gs_b = gs[..., None, None]
    rcp6 = torch.tensor(1.0 / 6.0, dtype=torch.float32, device=x.device)  # fp32 rcp(6)
    # torch's e4m3 cast is RNE; clamp first so values past 448 saturate as __nv_fp8_e4m3 does on
    # every build (flashinfer-moe-api.md reports NaN at >= 480; torch 2.13 CPU happens to saturate).
    scale = (gs_b * (vmax * rcp6)).clamp(max=FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    sf = scale.float()
    nonzero = sf != 0
    # Kernel: outputScale = vecMax != 0 ? rcp(SFValue * rcp(gs)) : 0. Keying on sf != 0 also keeps
    # blocks whose sf underflowed finite (zero codes; the scale 0 zeroes them either way).
    out_scale = torch.where(nonzero, 1.0 / torch.where(nonzero, sf * (1.0 / gs_b), 1.0), 0.0)
    scaled = blocks * out_scale.unsqueeze(-1)
    codes = e2m1_magnitude_code(scaled.abs(), ties_even=True) | (torch.signbit(scaled).to(torch.uint8) << 3)
    return NvFp4Tensor(data=pack_nibbles(codes.flatten(-2)), scale=scale, global_scale=gs)
