"""Quantized weight formats with quantize / dequantize in pure PyTorch.

Every format is a frozen dataclass of tensors for an nn.Linear-style weight ``[..., N, K]``
(leading dims, e.g. experts, are free) with ``.kind`` (its natural ``QuantKind``), ``.shape``
(logical ``[..., N, K]``), ``.dequantize(dtype=torch.float32)`` and ``.to(device)``. Each
quantizer follows a real upstream recipe, cited in its module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from moe_registry.schemas.quant import QUANT_KINDS, QuantKind, QuantScheme

from ._common import E2M1_LUT, E2M1_VALUES, TensorFormat
from .fp8 import Fp8BlockTensor, Fp8ChannelTensor, Fp8Tensor, quantize_fp8, quantize_fp8_block, quantize_fp8_channel
from .int4 import Int4GroupTensor, desc_act_g_idx, pack_int4, quantize_int4, unpack_int4
from .mxfp4 import MxFp4Tensor, e8m0_to_float, quantize_mxfp4
from .nvfp4 import NvFp4Tensor, nvfp4_global_scale, quantize_nvfp4
from .rows import gate_up_to_up_gate, pad_weight
from .swizzle import swizzle_128x4, unswizzle_128x4

QuantizedTensor = NvFp4Tensor | MxFp4Tensor | Fp8Tensor | Fp8ChannelTensor | Fp8BlockTensor | Int4GroupTensor
_CLASSES: dict[str, type[TensorFormat]] = {cls.__name__: cls for cls in QuantizedTensor.__args__}
# The kind -> class mapping is the quant-kind table's (schemas.quant.QUANT_KINDS, format_class):
# every name there is a class here, and every class here is named there.
_named = {info.format_class for info in QUANT_KINDS.values() if info.format_class is not None}
if _named != set(_CLASSES):
    raise RuntimeError(f"schemas.quant.QUANT_KINDS format classes {sorted(_named)} != formats {sorted(_CLASSES)}")
del _named


def format_class(kind: QuantKind) -> type[TensorFormat] | None:
    """The formats class that holds ``kind``'s weights; None when unquantized or when moe-registry has
    no weight format for it yet."""
    name = QUANT_KINDS[kind].format_class
    return None if name is None else _CLASSES[name]


__all__ = [
    "E2M1_LUT", "E2M1_VALUES", "Fp8BlockTensor", "Fp8ChannelTensor", "Fp8Tensor", "Int4GroupTensor", "MxFp4Tensor",
    "NvFp4Tensor", "QuantizedTensor", "desc_act_g_idx", "e8m0_to_float", "format_class", "gate_up_to_up_gate",
    "nvfp4_global_scale", "pack_int4", "pad_weight", "quantize", "quantize_fp8", "quantize_fp8_block",
    "quantize_fp8_channel", "quantize_int4", "quantize_mxfp4", "quantize_nvfp4", "swizzle_128x4", "unpack_int4",
    "unswizzle_128x4",
]


def quantize(w: torch.Tensor, scheme: QuantScheme) -> QuantizedTensor:
    """Quantize ``w [..., N, K]`` for ``scheme`` into the kind's ``format_class`` (``from_weight``);
    the result records the scheme in ``.scheme``. Int4 takes scheme.group_size, zero_point and
    act_order (scales in w's dtype if 16-bit, else bf16). Unquantized schemes raise.
    """
    kind = scheme.kind
    cls = format_class(kind)
    if cls is not None:
        out: Any = cls.from_weight(w, scheme)
    elif scheme.is_quantized:  # a kind engines run (declared planning-only) that has no format here yet
        raise ValueError(f"moe-registry has no weight format for {kind.value} yet; nothing can quantize to it")
    else:
        raise ValueError(f"{kind.value} is not a quantized scheme; nothing to quantize")
    return dataclasses.replace(out, scheme=scheme)
