"""INT4 group-quantized weights in the GPTQ layout (W4A16 and W4A8 kernels read this).

Citations are to the vLLM 0.33.0 wheel.

Layout (GPTQ, ``[K, N]`` = [in, out], the transpose of nn.Linear): ``qweight`` int32
``[..., K/8, N]`` holds 8 consecutive-in-K nibbles per int32, element ``k = 8i + j`` in bits
``4j..4j+3`` (low nibble first) — vLLM ``quantization/utils/quant_utils.py::pack_rows`` (L819-840):
``q_res |= q_w[i::pack_factor, :] << num_bits * i``, which ``gptq_pack`` and the Marlin test
helpers (``marlin_utils_test.py::marlin_quantize`` -> ``gptq_quantize_weights``) use.
``scales`` ``[..., K/g, N]`` in the model dtype; ``zeros`` ``[..., K/g, N]`` int32 (true zero
points, unpacked; GPTQ-v1 checkpoints store ``zero - 1`` packed, converting is the loader's job) or
None for symmetric weights (vLLM's ``uint4b8``: zero point 8). ``g_idx`` ``[..., K]``: the group
of each k (GPTQ act-order / desc_act); None means ``k // g``.

Dequant: ``w[n, k] = (q[k, n] - zero[group(k), n]) * scale[group(k), n]``.

Quantization is vLLM's round-to-nearest ``quant_utils.py::quantize_weights`` (L701-793):

- symmetric (``uint4b8``, whose min/max after bias are -8/7):
  ``s = max(|max_g / 7|, |min_g / -8|)``, ``q = clamp(round(w / s), -8, 7) + 8``. (Not
  ``2*amax/15``: the asymmetric int range -8..7 lets the negative side use -8.)
- asymmetric (``uint4``): ``s = clamp(max_g - min_g, min=1e-5) / 15``,
  ``zero = clamp(round(|min_g / s|), 0, 15)``, ``q = clamp(round(w / s) + zero, 0, 15)``.

Deviations, each invisible on ordinary weights: the scale is computed in fp32, rounded to
``scale_dtype`` and that rounded scale is what divides ``w`` (vLLM divides in the weight dtype),
so ``q`` is consistent with the stored scale; an all-zero symmetric group (s = 0, where vLLM
divides 0/0) stores q = 8; for the zero point the group range is widened to include 0 (as
GPTQ's ``Quantizer.find_params`` does), which equals vLLM whenever a group has values of both
signs and avoids its ``|min/s|`` sign slip for all-positive groups.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from moe_registry.schemas.quant import QuantKind, QuantScheme

from ._common import TensorFormat, check_weight, fail

PACK = 8  # int4 values per int32
SYMMETRIC_ZERO = 8  # uint4b8 bias
_SCALE_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True, eq=False)
class Int4GroupTensor(TensorFormat):
    """GPTQ-layout int4: ``qweight`` int32 [..., K/8, N], ``scales`` [..., K/g, N],
    ``zeros`` int32 [..., K/g, N] or None (symmetric, zero 8), ``group_size`` g or -1
    (one group over all K), ``g_idx`` int32 [..., K] or None."""

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    group_size: int
    g_idx: torch.Tensor | None = None
    scheme: QuantScheme | None = None

    # [..., K/8, N] and [..., K/g, N]: N is the last axis, K the one before.
    slice_axes = {"qweight": (-1, 1, -2, PACK), "scales": (-1, 1, -2, "group"), "zeros": (-1, 1, -2, "group")}

    def __post_init__(self) -> None:
        q, s = self.qweight, self.scales
        if q.dtype != torch.int32 or q.dim() < 2 or not s.is_floating_point():
            fail("Int4GroupTensor", f"qweight must be int32 [..., K/8, N] and scales floating, got "
                 f"{q.dtype} {tuple(q.shape)} / {s.dtype}")
        k = q.shape[-2] * PACK
        if not (self.group_size == -1 or (self.group_size > 0 and k % self.group_size == 0)):
            fail("Int4GroupTensor", f"group_size {self.group_size} must be -1 or divide K = {k}")
        groups = 1 if self.group_size == -1 else k // self.group_size
        if s.shape != (*q.shape[:-2], groups, q.shape[-1]):
            fail("Int4GroupTensor", f"scales shape {tuple(s.shape)} != {(*q.shape[:-2], groups, q.shape[-1])}")
        if self.zeros is not None and (self.zeros.dtype != torch.int32 or self.zeros.shape != s.shape):
            fail("Int4GroupTensor", f"zeros must be int32 shaped like scales {tuple(s.shape)}, got "
                 f"{self.zeros.dtype} {tuple(self.zeros.shape)}")
        if self.g_idx is not None:
            g = self.g_idx
            if g.dtype != torch.int32 or g.shape[-1:] != (k,) or g.dim() > q.dim() - 1:
                fail("Int4GroupTensor", f"g_idx must be int32 [..., K={k}], got {g.dtype} {tuple(g.shape)}")
            if g.numel() and (int(g.min()) < 0 or int(g.max()) >= groups):
                fail("Int4GroupTensor", f"g_idx values must lie in [0, {groups})")

    @classmethod
    def from_weight(cls, w: torch.Tensor, scheme: QuantScheme) -> Int4GroupTensor:
        """``w [..., N, K]`` quantized with this format's recipe (``formats.quantize`` calls this)."""
        if scheme.group_size is None:  # QuantScheme fills int4's default group; a bare None is a bug
            raise ValueError(f"int4: scheme {scheme.label()} has no group size")
        return quantize_int4(w, group_size=scheme.group_size, zero_point=scheme.zero_point,
                             act_order=scheme.act_order)

    @property
    def kind(self) -> QuantKind:
        return QuantKind.INT4_W4A16

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.qweight.shape[:-2], self.qweight.shape[-1], self.qweight.shape[-2] * PACK))

    def unpack(self) -> torch.Tensor:
        """int32 codes [..., K, N] in 0..15 (the inverse of ``pack_int4``)."""
        return unpack_int4(self.qweight)

    def group_index(self) -> torch.Tensor:
        """int64 [..., K]: the group of each k (``g_idx``, else ``k // g``)."""
        lead, k = self.qweight.shape[:-2], self.qweight.shape[-2] * PACK
        if self.g_idx is not None:
            return self.g_idx.long().expand(*lead, k)
        g = k if self.group_size == -1 else self.group_size
        return (torch.arange(k, device=self.qweight.device) // g).expand(*lead, k)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n = self.qweight.shape[-1]
        group = self.group_index()
        idx = group.unsqueeze(-1).expand(*group.shape, n)  # [..., K, N]
        scale = self.scales.float().gather(-2, idx)
        zero = SYMMETRIC_ZERO if self.zeros is None else self.zeros.gather(-2, idx)
        w_kn = (self.unpack() - zero).float() * scale
        return w_kn.transpose(-1, -2).to(dtype).contiguous()


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes [..., K, N] in 0..15 -> int32 [..., K/8, N]; k = 8i + j goes to bits 4j..4j+3 of row i
    (vLLM ``pack_rows``)."""
    q = q.to(torch.int64).unflatten(-2, (-1, PACK))  # [..., K/8, 8, N]
    shifts = torch.arange(0, 4 * PACK, 4, device=q.device).view(PACK, 1)
    packed = (q << shifts).sum(dim=-2)  # disjoint bits, so the sum is an OR; < 2^32
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)  # uint32 bits as int32


def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """int32 [..., K/8, N] -> int32 codes [..., K, N] (inverse of ``pack_int4``)."""
    shifts = torch.arange(0, 4 * PACK, 4, dtype=torch.int32, device=qweight.device).view(PACK, 1)
    return ((qweight.unsqueeze(-2) >> shifts) & 0xF).flatten(-3, -2)


def desc_act_g_idx(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """An act-order ``g_idx`` int32 [..., K] for ``w [..., N, K]``: k sorted by decreasing
    ``sum_n w[n, k]^2`` and grouped in that order (``g_idx[order[r]] = r // g``). GPTQ's desc_act
    sorts by the Hessian diagonal of calibration activations; RTN has none, so the weight's
    column energy stands in for it."""
    k = w.shape[-1]
    energy = w.float().square().sum(dim=-2)
    order = torch.argsort(energy, dim=-1, descending=True, stable=True)
    ranks = (torch.arange(k, device=w.device) // group_size).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ranks).to(torch.int32)


def quantize_int4(
    w: torch.Tensor,
    group_size: int = 128,
    zero_point: bool = False,
    scale_dtype: torch.dtype | None = None,
    *,
    g_idx: torch.Tensor | None = None,
    act_order: bool = False,
) -> Int4GroupTensor:
    """RTN int4 of ``w [..., N, K]`` (K % 8 == 0, K % group_size == 0) with vLLM's recipe.

    ``scale_dtype``: fp16 or bf16 (default: ``w.dtype`` if 16-bit, else bf16). ``g_idx``: group
    of each k (each group must hold exactly ``group_size`` ks); ``act_order=True`` builds one
    with ``desc_act_g_idx``.
    """
    check_weight(w, "int4", PACK)
    k = w.shape[-1]
    if not (group_size == -1 or (group_size > 0 and k % group_size == 0)):
        raise ValueError(f"int4: group_size {group_size} must be -1 or divide K = {k}")
    g = k if group_size == -1 else group_size
    if scale_dtype is None:
        scale_dtype = w.dtype if w.dtype in _SCALE_DTYPES else torch.bfloat16
    if scale_dtype not in _SCALE_DTYPES:
        raise ValueError(f"int4: scale_dtype must be float16 or bfloat16, got {scale_dtype}")
    if act_order:
        if g_idx is not None:
            raise ValueError("int4: pass either g_idx or act_order=True, not both")
        g_idx = desc_act_g_idx(w, g)

    x = w.float().transpose(-1, -2)  # GPTQ orientation [..., K, N]
    lead, n = x.shape[:-2], x.shape[-1]
    perm = None
    if g_idx is not None:
        if not isinstance(g_idx, torch.Tensor) or g_idx.is_floating_point() or g_idx.shape[-1:] != (k,):
            raise ValueError(f"int4: g_idx must be an integer tensor [..., K={k}]")
        try:
            g_idx = g_idx.to(device=x.device, dtype=torch.int32).expand(*lead, k).contiguous()
        except RuntimeError:
            raise ValueError(f"int4: g_idx {tuple(g_idx.shape)} does not broadcast to {(*lead, k)}") from None
        sorted_g, perm = torch.sort(g_idx.long(), dim=-1, stable=True)
        if not torch.equal(sorted_g, (torch.arange(k, device=x.device) // g).expand_as(sorted_g)):
            raise ValueError(f"int4: g_idx must put exactly group_size={g} ks in each of the {k // g} groups")
        x = x.gather(-2, perm.unsqueeze(-1).expand(*lead, k, n))  # group members made contiguous

    groups = x.unflatten(-2, (-1, g))  # [..., G, g, N]
    max_v, min_v = groups.amax(dim=-2), groups.amin(dim=-2)
    if zero_point:
        max_v, min_v = max_v.clamp(min=0), min_v.clamp(max=0)
        scale = ((max_v - min_v).clamp(min=1e-5) / 15).to(scale_dtype)
        s = scale.float()
        zeros = torch.round(-min_v / s).clamp(0, 15)
        q = (torch.round(groups / s.unsqueeze(-2)) + zeros.unsqueeze(-2)).clamp(0, 15)
        zeros = zeros.to(torch.int32)
    else:
        scale = torch.maximum((max_v / 7).abs(), (min_v / -8).abs()).to(scale_dtype)
        s = torch.where(scale > 0, scale.float(), 1.0)  # all-zero group: q = 8, dequant 0
        q = torch.round(groups / s.unsqueeze(-2)).clamp(-8, 7) + SYMMETRIC_ZERO
        zeros = None
    q = q.flatten(-3, -2).to(torch.int64)  # [..., K, N]
    if perm is not None:
        q = torch.empty_like(q).scatter_(-2, perm.unsqueeze(-1).expand(*lead, k, n), q)
    return Int4GroupTensor(qweight=pack_int4(q), scales=scale, zeros=zeros, group_size=group_size, g_idx=g_idx)


def scales_in_dtype(scales: torch.Tensor, dtype: torch.dtype, *, backend: str, why: str) -> torch.Tensor:
    """Group scales cast to the activation dtype a kernel takes them in; warns when the cast rounds
    (fp16 scales into a bf16 layer, say), naming the backend and ``why`` it needs that dtype."""
    if scales.dtype == dtype:
        return scales
    cast = scales.to(dtype)
    if not torch.equal(cast.to(scales.dtype), scales):
        warnings.warn(f"{backend}: int4 scales stored as {scales.dtype} are rounded to the layer dtype {dtype} "
                      f"({why})", stacklevel=4)
    return cast
