"""CUTLASS / TRT-LLM 128x4 block-scale interleave (FlashInfer ``block_scale_interleave``).

The scale matrix ``[rows, cols]`` is zero-padded to ``[round_up(rows, 128), round_up(cols, 4)]``
and element (r, c) goes to the flat offset (flashinfer-moe-api.md section 4 item 6)::

    ((r // 128) * ceil(cols / 4) + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4

i.e. ``reshape(R/128, 4, 32, C/4, 4).permute(0, 3, 2, 1, 4)``, the same reshape/permute as
vLLM ``quantization/utils/nvfp4_utils.py::swizzle_blockscale`` (L13-50) and the inverse of
FlashInfer ``trace/templates/gemm.py::_unswizzle_batched_sf_128x4`` (L142-158). FlashInfer's own
``block_scale_interleave`` is a CUDA kernel (``cpp/kernels/quantization.cu``) that refuses CPU
tensors in 0.7.2.post1.
"""

from __future__ import annotations

import torch


def _padded(rows: int, cols: int) -> tuple[int, int]:
    return -(-rows // 128) * 128, -(-cols // 4) * 4


def _swap_axes(lead: int) -> tuple[int, ...]:
    # [..., R/128, 4, 32, C/4, 4] <-> [..., R/128, C/4, 32, 4, 4]: swapping axes 1 and 3 is its
    # own inverse, so swizzle and unswizzle use the same permutation.
    return (*range(lead), lead, lead + 3, lead + 2, lead + 1, lead + 4)


def swizzle_128x4(scale: torch.Tensor) -> torch.Tensor:
    """Linear scales ``[..., rows, cols]`` -> swizzled ``[..., R*C]`` (R, C padded to 128, 4).

    A 2-D input gives the flat 1-D buffer ``block_scale_interleave`` returns; leading (expert)
    dims are kept, one flat buffer per expert (``.reshape(-1)`` gives FlashInfer's 3-D output).
    Any dtype (float8_e4m3fn, uint8 e8m0, bf16); padding is zero.
    """
    if not isinstance(scale, torch.Tensor) or scale.dim() < 2:
        raise ValueError("swizzle_128x4: expected a scale tensor [..., rows, cols]")
    *lead, rows, cols = scale.shape
    r, c = _padded(rows, cols)
    src = scale.view(torch.uint8) if scale.element_size() == 1 else scale  # float8 pads as bytes
    padded = src.new_zeros((*lead, r, c))
    padded[..., :rows, :cols] = src
    out = padded.reshape(*lead, r // 128, 4, 32, c // 4, 4).permute(_swap_axes(len(lead)))
    return out.reshape(*lead, r * c).view(scale.dtype)


def unswizzle_128x4(flat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of ``swizzle_128x4``: ``[..., R*C]`` -> linear ``[..., rows, cols]``."""
    r, c = _padded(rows, cols)
    if not isinstance(flat, torch.Tensor) or flat.dim() < 1 or flat.shape[-1] != r * c:
        got = tuple(flat.shape) if isinstance(flat, torch.Tensor) else type(flat).__name__
        raise ValueError(f"unswizzle_128x4: last dim must be {r}*{c} = {r * c} for [{rows}, {cols}], got {got}")
    *lead, _ = flat.shape
    src = flat.view(torch.uint8) if flat.element_size() == 1 else flat
    out = src.reshape(*lead, r // 128, c // 4, 32, 4, 4).permute(_swap_axes(len(lead)))
    return out.reshape(*lead, r, c)[..., :rows, :cols].contiguous().view(flat.dtype)
