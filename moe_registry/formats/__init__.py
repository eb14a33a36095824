"""Quantized weight formats with quantize / dequantize in pure PyTorch.

Every format is a frozen dataclass of tensors for an nn.Linear-style weight ``[..., N, K]``
(leading dims, e.g. experts, are free) with ``.kind`` (its natural ``QuantKind``), ``.shape``
(logical ``[..., N, K]``), ``.dequantize(dtype=torch.float32)`` and ``.to(device)``. Each
quantizer follows a real upstream recipe, cited in its module.
"""

from __future__ import annotations

import dataclasses

import torch

from moe_registry.schemas.quant import QuantKind, QuantScheme

from ._common import E2M1_LUT, E2M1_VALUES
from .fp8 import Fp8BlockTensor, Fp8ChannelTensor, Fp8Tensor, quantize_fp8, quantize_fp8_block, quantize_fp8_channel
from .int4 import Int4GroupTensor, desc_act_g_idx, pack_int4, quantize_int4, unpack_int4
from .mxfp4 import MxFp4Tensor, e8m0_to_float, quantize_mxfp4
from .nvfp4 import NvFp4Tensor, nvfp4_global_scale, quantize_nvfp4
from .swizzle import swizzle_128x4, unswizzle_128x4

QuantizedTensor = NvFp4Tensor | MxFp4Tensor | Fp8Tensor | Fp8ChannelTensor | Fp8BlockTensor | Int4GroupTensor

__all__ = [
    "E2M1_LUT", "E2M1_VALUES", "Fp8BlockTensor", "Fp8ChannelTensor", "Fp8Tensor", "Int4GroupTensor", "MxFp4Tensor",
    "NvFp4Tensor", "QuantizedTensor", "desc_act_g_idx", "e8m0_to_float", "nvfp4_global_scale",
    "pack_int4", "quantize", "quantize_fp8", "quantize_fp8_block", "quantize_fp8_channel", "quantize_int4", "quantize_mxfp4",
    "quantize_nvfp4", "swizzle_128x4", "unpack_int4", "unswizzle_128x4",
]


def quantize(w: torch.Tensor, scheme: QuantScheme) -> QuantizedTensor:
    """Quantize ``w [..., N, K]`` for ``scheme``; the result records the scheme in ``.scheme``.

    nvfp4 / nvfp4_w4a16 -> NvFp4Tensor, mxfp4 / mxfp4_mxfp8 -> MxFp4Tensor, fp8 -> Fp8Tensor,
    fp8_channel -> Fp8ChannelTensor, fp8_block -> Fp8BlockTensor, int4_w4a16 / int4_fp8 -> Int4GroupTensor (scheme.group_size,
    zero_point, act_order; scales in w's dtype if 16-bit, else bf16). Unquantized schemes raise.
    """
    kind = scheme.kind
    if kind in (QuantKind.NVFP4, QuantKind.NVFP4_W4A16):
        out = quantize_nvfp4(w)
    elif kind in (QuantKind.MXFP4, QuantKind.MXFP4_MXFP8):
        out = quantize_mxfp4(w)
    elif kind is QuantKind.FP8:
        out = quantize_fp8(w)
    elif kind is QuantKind.FP8_CHANNEL:
        out = quantize_fp8_channel(w)
    elif kind is QuantKind.FP8_BLOCK:
        out = quantize_fp8_block(w)
    elif kind in (QuantKind.INT4_W4A16, QuantKind.INT4_FP8):
        out = quantize_int4(w, group_size=scheme.group_size, zero_point=scheme.zero_point,
                            act_order=scheme.act_order)
    elif scheme.is_quantized:  # a kind engines run (declared planning-only) that has no format here yet
        raise ValueError(f"moe-registry has no weight format for {kind.value} yet; nothing can quantize to it")
    else:
        raise ValueError(f"{kind.value} is not a quantized scheme; nothing to quantize")
    return dataclasses.replace(out, scheme=scheme)
