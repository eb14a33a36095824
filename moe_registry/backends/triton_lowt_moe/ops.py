"""Load-time packing of canonical weights for the low-T kernels, the launch configs, and the launches.

Packing (``pack_weight``, once per layer; its cost is a copy of each weight at most):
- bf16 / fp16: the canonical ``[E, N, K]`` tensor as is;
- NvFP4 / MXFP4: the canonical ``uint8 [E, N, K/2]`` data (element ``2i`` in the low nibble of byte
  ``i``: the kernels' byte layout) and scale bytes as they are, no copy; NvFP4's per-expert
  ``2^10 / global_scale`` (see ``kernels``);
- int4 (GPTQ layout ``qweight [E, K/8, N]``, ``scales`` / ``zeros [E, K/g, N]``): transposed to
  ``[E, N, K/8]`` / ``[E, N, K/g]`` and the words read as bytes ``[E, N, K/2]`` (little-endian: the same
  byte layout); one copy of each, done once at load; zero points as uint8.

Everything in a forward is asynchronous and shaped by metadata only (capturable in a CUDA graph).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import triton

from ...formats.int4 import Int4GroupTensor
from ...formats.mxfp4 import MXFP4_BLOCK, MxFp4Tensor
from ...formats.nvfp4 import NVFP4_BLOCK, NvFp4Tensor
from ..triton_fused_moe.ops import Epilogue, align, next_pow2
from . import codes as F
from . import gemv as GV
from . import kernels as KN
from . import slots as SL

ONE_GROUP = 1 << 30  # the group size given to the kernels for per-channel int4 (one scale over all K)
NVFP4_FOLD = 1024.0  # 2^10: the tile holds value * scale * 2^-10 (kernels module doc)


@dataclass(frozen=True)
class PackedWeight:
    """One expert weight ``[E, N, K]`` as the kernels read it."""

    fmt: int
    w: torch.Tensor  # 16-bit [E, N, K] or uint8 [E, N, K/2] in half-split blocks of ``block`` elements
    block: int  # the kernels' K step (4-bit: the packing block; a launch must use it)
    scale: torch.Tensor | None = None  # int4 [E, N, K/g] (16-bit); NvFP4 / MXFP4 bytes [E, N, K/16] / [E, N, K/32]
    zeros: torch.Tensor | None = None  # int4 zero points, uint8 [E, N, K/g]
    global_mult: torch.Tensor | None = None  # NvFP4: float32 [E], 2^10 / global_scale
    group: int = ONE_GROUP  # K elements per scale

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.w, self.scale, self.zeros, self.global_mult)
                   if t is not None)


def split_half_blocks(codes: torch.Tensor, block: int) -> torch.Tensor:
    """4-bit codes ``uint8 [..., K]`` (0..15) -> bytes ``[..., K/2]``: in each block of L elements (``block``,
    the last one possibly shorter) byte i holds element i (low nibble) and element L/2 + i (high)."""
    K = codes.shape[-1]
    full = K // block * block
    out = torch.empty((*codes.shape[:-1], K // 2), dtype=torch.uint8, device=codes.device)
    if full:
        c = codes[..., :full].unflatten(-1, (full // block, 2, block // 2))
        out[..., :full // 2] = (c[..., 0, :] | (c[..., 1, :] << 4)).flatten(-2)
    if K > full:
        h = (K - full) // 2
        out[..., full // 2:] = codes[..., full:full + h] | (codes[..., full + h:] << 4)
    return out


def _repack_bytes(data: torch.Tensor, block: int) -> torch.Tensor:
    """Canonical nibble bytes ``[E, N, K/2]`` (element 2i low, 2i + 1 high) -> half-split blocks,
    one expert at a time (the codes are a byte per element)."""
    out = torch.empty_like(data)
    for e in range(data.shape[0]):
        codes = torch.stack((data[e] & 0xF, data[e] >> 4), dim=-1).flatten(-2)
        out[e] = split_half_blocks(codes, block)
    return out


def pack_weight(weight: Any, dtype: torch.dtype, *, block: int, backend: str) -> PackedWeight:
    """A canonical weight (tensor or formats object) -> ``PackedWeight`` with K steps of ``block``."""
    if isinstance(weight, torch.Tensor):
        return PackedWeight(F.FMT_16BIT, weight.to(dtype).contiguous(), block)
    if isinstance(weight, NvFp4Tensor):
        return PackedWeight(F.FMT_NVFP4, _repack_bytes(weight.data, block), block,
                            scale=weight.scale.contiguous().view(torch.uint8),
                            global_mult=(NVFP4_FOLD / weight.global_scale.float()).contiguous(), group=NVFP4_BLOCK)
    if isinstance(weight, MxFp4Tensor):
        return PackedWeight(F.FMT_MXFP4, _repack_bytes(weight.data, block), block, scale=weight.scale.contiguous(),
                            group=MXFP4_BLOCK)
    if isinstance(weight, Int4GroupTensor):
        if weight.g_idx is not None:
            raise ValueError(f"{backend}: act-order int4 (g_idx) is not supported")
        K = int(weight.shape[-1])
        g = weight.group_size
        group = ONE_GROUP if g in (-1, K) else g
        # GPTQ words [E, K/8, N] -> [E, N, K/8]; little-endian bytes are then canonical nibble bytes.
        data = weight.qweight.transpose(-1, -2).contiguous().view(torch.uint8)
        zeros = None if weight.zeros is None else weight.zeros.transpose(-1, -2).to(torch.uint8).contiguous()
        return PackedWeight(F.FMT_INT4, _repack_bytes(data, block), block,
                            scale=weight.scales.transpose(-1, -2).contiguous(), zeros=zeros, group=group)
    raise ValueError(f"{backend}: no packing for a {type(weight).__name__} weight")


# --- Launch configs ---------------------------------------------------------------------------------

SORT_ABOVE = 64  # tokens: above this the pairs are sorted into expert blocks first (the prefill path)
GEMM2_MODES = ("token", "expert", "sorted")


@dataclass(frozen=True)
class Config:
    """Tiles for one token count. ``bn1`` / ``bn2``: weight rows per program in GEMM1 / GEMM2 (the dot's
    M side: 16 per warp keeps each warp on its own rows, so no unpacking is repeated); ``bm``: pairs per
    program (the dot's N side; ``bm_token`` for GEMM2 per token, whose one real column is the pair);
    ``warps`` / ``warps2``: per program of GEMM1 / GEMM2; ``stages``: Triton's software pipelining depth;
    ``gemm2``: ``"token"`` (per token, two launches in all), ``"expert"`` (per expert slot; partial sums
    finished by the last program of each tile: two launches, reproducible) or ``"sorted"`` (align first,
    blocks of ``bm`` pairs, float32 atomics and a cast; the prefill path).
    ``split1`` / ``split2``: programs sharing the K steps of one GEMM1 / GEMM2 tile (not for ``"sorted"``;
    GEMM2's only with ``"expert"``); 0: as many as bring the grid to ``fill`` programs, at most one per K
    step. Default 1: on the H100 every split tried was slower at every T (benchmarks/results/lowt-h100-split:
    one K step per program, and the split to 1024 programs; lowt-notes.md says by how much).
    ``gemv``: the GEMV kernels (``gemv.py``; GEMM2 ``"expert"``: per pair, finished by each row tile's last
    program, or ``"token"``: per token over its k experts), ``unroll`` / ``unroll2`` K steps in flight per
    program of GEMM1 / GEMM2 (per token); ``pdl``: GEMM2 launched as a programmatic dependent of GEMM1
    (Hopper on; ignored by the CPU interpreter); ``pairs``: the products of each loop iteration chained in
    16-bit pairs (one ``fma.rn.bf16x2`` per two weights instead of two conversions and an FFMA per weight),
    added to the float32 sums once per iteration; GEMM2 per token then reads a 16-bit intermediate; ``slots``:
    GEMM1 per (expert slot, row tile) over the expert's pairs, ``bm`` (1, 2 or 4) at a time, each weight
    unpacked once per pass (``slots.py``; with gemm2 "token" and pairs); ``whole``: each GEMV program's K steps
    as straight-line code, no loop (the step count a compile-time constant, where K has at most ``WHOLE_MAX``
    steps), so every step's loads may be in flight at once: one round trip to memory per program, not one per
    ``unroll`` steps (per pair GEMM2 and GEMM1, not ``slots``); ``maxnreg`` / ``maxnreg2``: registers per thread
    at most in the GEMV GEMM1 / GEMM2 (0: the compiler's choice), so that a grid fits the GPU in one wave (Gemma 4's
    T = 1 GEMM2, 2816 programs of 2 warps, needs <= 40: registers go per warp in units of 256, so at 48 an SM holds 21
    programs, 2772 in all; the compiler takes 72 with ``whole``). On the H100 (343abfb
    run, lowt-notes.md) GEMV GEMM2 per token was 40-60 % slower than per pair at T = 1-2 (too few programs in flight),
    slots slower everywhere, pairs 2-20 % faster with 2.4x the error: none of them is a default."""

    bn1: int = 32
    bn2: int = 32
    bm: int = 16
    bm_token: int = 8
    warps: int = 2
    warps2: int = 2
    stages: int = 3
    gemm2: str = "expert"
    split1: int = 1
    split2: int = 1
    fill: int = 1024
    gemv: bool = False
    unroll: int = 2
    unroll2: int = 4
    pdl: bool = False
    pairs: bool = False
    slots: bool = False
    whole: bool = False
    maxnreg: int = 0
    maxnreg2: int = 0

    def __post_init__(self) -> None:
        if self.gemm2 not in GEMM2_MODES:
            raise ValueError(f"Config.gemm2 must be one of {', '.join(GEMM2_MODES)}, got {self.gemm2!r}")
        if self.gemv and self.gemm2 == "sorted":
            raise ValueError("Config.gemm2 'sorted' is the dot kernels' prefill path, not a GEMV kernel")
        if self.slots and not (self.gemv and self.gemm2 == "token" and self.pairs and self.bm in (1, 2, 4)):
            raise ValueError("Config.slots needs gemv, gemm2 'token', pairs and bm of 1, 2 or 4 (pairs per pass)")
        if (self.whole or self.maxnreg or self.maxnreg2) and not self.gemv:
            raise ValueError("Config.whole and maxnreg / maxnreg2 are GEMV kernels' options (gemv=True)")
        if any(r and not 24 <= r <= 255 for r in (self.maxnreg, self.maxnreg2)):
            raise ValueError(f"Config.maxnreg / maxnreg2 must be 0 or 24..255, got {self.maxnreg}, {self.maxnreg2}")
        if min(self.split1, self.split2) < 0 or self.fill < 1:
            raise ValueError(f"Config splits must be >= 0 and fill >= 1, got {self.split1}, {self.split2}, {self.fill}")

    def label(self) -> str:
        if self.gemv:
            # GEMM2 per pair ("expert") unnamed: the label benchmark records since 40b0593 carry
            return (f"gemv rows{self.bn1}/{self.bn2} w{self.warps}/{self.warps2} u{self.unroll} s{self.stages}"
                    f"{f' token u{self.unroll2}' if self.gemm2 == 'token' else ''}{' pdl' if self.pdl else ''}"
                    f"{' pairs' if self.pairs else ''}{f' slots bm{self.bm}' if self.slots else ''}"
                    f"{' whole' if self.whole else ''}"
                    f"{''.join(f' r{n}={r}' for n, r in ((1, self.maxnreg), (2, self.maxnreg2)) if r)}")
        return (f"bn{self.bn1}/{self.bn2} bm{self.bm}/{self.bm_token} w{self.warps}/{self.warps2} s{self.stages} "
                f"{self.gemm2} k{self.split1 or 'auto'}/{self.split2 or 'auto'}")


WHOLE_MAX = 16  # K steps: above this ``Config.whole`` keeps the loop (Mixtral's 56: code size, compile time)


def whole_steps(cfg: Config, K: int, block: int) -> int:
    """The GEMV kernels' STEPS for a K of ``K``: its whole steps with ``cfg.whole`` where there are at most
    WHOLE_MAX, else 0 (the loop over steps)."""
    return K // block if cfg.whole and K // block <= WHOLE_MAX else 0


GEMV_FOR = "4-bit weights while T x top_k <= num_experts / 2; 16-bit weights at T = 1"


def default_config(T: int, top_k: int, num_experts: int, *, quantized: bool) -> Config:
    """The GEMV kernels where a batch's pairs mostly hit distinct experts (``GEMV_FOR``; measured on the H100,
    benchmarks/results/lowt-h100-gemv: 4-bit 1.3-2.0x the dot kernels up to 16 tokens on 128 experts, slower
    from 4 tokens on Mixtral's 8, where pairs share experts and each pair reads its own; 16-bit only at T = 1,
    the dot kernels being near the HBM floor from T = 2), in that run's fastest tiling (``gemv8`` at T = 1,
    ``gemv16`` above). Otherwise tiles by the expected pairs per expert: the token side covers them in one pass
    where it can."""
    if (T * top_k * 2 <= num_experts) if quantized else T == 1:
        if T == 1:
            return Config(gemv=True, bn1=8, bn2=8, warps=2, warps2=2, unroll=4)
        return Config(gemv=True, bn1=16, bn2=16, warps=4, warps2=4, unroll=2)
    if T > SORT_ABOVE:
        return Config(bn1=64, bn2=64, bm=64, warps=4, warps2=4, stages=3, gemm2="sorted")
    per_expert = -(-T * top_k // num_experts)
    bm = min(64, max(8, next_pow2(2 * per_expert)))
    return Config(bm=bm)


def splits_for(requested: int, tiles: int, steps: int, fill: int) -> int:
    """Programs per tile sharing its ``steps`` K steps: ``requested`` (0: enough to reach ``fill`` programs
    over ``tiles``), at most ``steps``, rounded so that every split has a step."""
    want = requested or -(-fill // max(1, tiles))
    per = -(-steps // max(1, min(want, steps)))
    return -(-steps // per)


def resolved(cfg: Config, T: int, top_k: int, num_experts: int, hidden: int, intermediate: int, block: int) -> Config:
    """``cfg`` with the splits a forward of T tokens launches (``block``: the K step of both weights)."""
    if cfg.gemm2 == "sorted" or cfg.gemv:
        return dataclasses.replace(cfg, split1=1, split2=1)
    slots = min(num_experts, T * top_k)
    split1 = splits_for(cfg.split1, slots * triton.cdiv(intermediate, cfg.bn1), triton.cdiv(hidden, block), cfg.fill)
    split2 = splits_for(cfg.split2, slots * triton.cdiv(hidden, cfg.bn2), triton.cdiv(intermediate, block), cfg.fill)
    return dataclasses.replace(cfg, split1=split1, split2=1 if cfg.gemm2 == "token" else split2)


# --- Launches ------------------------------------------------------------------------------------------

def _args(pw: PackedWeight, dummy: torch.Tensor) -> tuple[Any, ...]:
    s = pw.scale if pw.scale is not None else dummy
    z = pw.zeros if pw.zeros is not None else dummy
    g = pw.global_mult if pw.global_mult is not None else dummy
    return pw.w, s, z, g


def _strides(pw: PackedWeight) -> tuple[int, int, int, int]:
    s_se, s_sn = (pw.scale.stride(0), pw.scale.stride(1)) if pw.scale is not None else (0, 0)
    return pw.w.stride(0), pw.w.stride(1), s_se, s_sn


def _gemm1_counters(T: int, top_k: int, num_experts: int, intermediate: int, cfg: Config) -> int:
    """GEMM1's counters, one per (expert slot, N tile), at the start of ``counters``; GEMM2's (one per N
    tile) follow them. The GEMV kernels count GEMM2's tiles only (per pair), none per token."""
    return 0 if cfg.gemv else min(num_experts, T * top_k) * triton.cdiv(intermediate, cfg.bn1)


def counters_needed(T: int, top_k: int, num_experts: int, hidden: int, intermediate: int, cfg: Config) -> int:
    """int32 counters a forward with ``cfg`` uses (``fused_experts``'s ``counters``)."""
    if cfg.gemv and cfg.gemm2 == "token":
        return 0
    return _gemm1_counters(T, top_k, num_experts, intermediate, cfg) + triton.cdiv(hidden, cfg.bn2)


def _counters(counters: torch.Tensor | None, need: int, dev: torch.device) -> torch.Tensor:
    """The caller's arrival counters if they hold ``need`` int32 zeros' room, fresh zeros when it gave none."""
    if counters is None:
        return torch.zeros(need, dtype=torch.int32, device=dev)
    if counters.numel() < need or counters.dtype != torch.int32:
        raise ValueError(f"counters: int32 [>= {need}] needed, got {counters.dtype} [{counters.numel()}]")
    return counters


def fused_experts(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, w13: PackedWeight,
                  w2: PackedWeight, num_experts: int, intermediate: int, ep: Epilogue, cfg: Config, *,
                  w13_bias: torch.Tensor | None = None, w2_bias: torch.Tensor | None = None,
                  ok: torch.Tensor, asm: bool, counters: torch.Tensor | None = None) -> torch.Tensor:
    """The whole forward without guards: ``x [T, H]`` -> ``[T, H]`` in x's dtype. ``ok`` (int32 [1],
    1 on entry) is cleared when an id is outside [0, E), and with ``asm`` (the GPU) the kernel then
    stops with a device error. Biases float32. ``counters``: int32 zeros of at least ``counters_needed``
    (the kernels leave them 0; an adapter keeps one, None: a fresh one per call)."""
    T, H = x.shape
    k = topk_ids.shape[1]
    P = T * k
    dev = x.device
    ids = topk_ids.reshape(-1)
    tw = topk_weights.reshape(-1)
    inter = torch.empty((P, intermediate), dtype=x.dtype, device=dev)
    out = torch.empty((T, H), dtype=x.dtype, device=dev)
    sorted_ = cfg.gemm2 == "sorted"
    dummy = tw
    interp = not asm  # the interpreter (no PTX) multiplies in float32
    if w13.block != w2.block:
        raise ValueError(f"both weights must be packed for one K step, got {w13.block} and {w2.block}")
    if cfg.gemv:
        return _gemv_experts(x, tw, ids, w13, w2, num_experts, intermediate, ep, cfg, w13_bias, w2_bias, ok, asm,
                             counters)
    launch = resolved(cfg, T, k, num_experts, H, intermediate, w13.block)
    split1, split2 = launch.split1, launch.split2
    if sorted_:
        al = align(topk_ids, num_experts, cfg.bm, ok)
        srt, blk, tot, programs = al.sorted_pairs, al.block_expert, al.total, al.max_blocks
    else:
        srt = blk = tot = ids
        programs = min(num_experts, P)
    finish2 = cfg.gemm2 == "expert"
    if split1 > 1 or finish2:
        counters = _counters(counters, counters_needed(T, k, num_experts, H, intermediate, cfg), dev)
    else:
        counters = dummy
    cnt1 = counters
    cnt2 = counters[_gemm1_counters(T, k, num_experts, intermediate, cfg):] if finish2 else dummy
    # Partial sums (float32, written before they are read: no zeroing); offsets stay within int32.
    ws1 = torch.empty((split1, P, 2, intermediate), dtype=torch.float32, device=dev) if split1 > 1 else dummy
    ws2 = torch.empty((split2, P, H), dtype=torch.float32, device=dev) if finish2 else dummy
    if max(ws1.numel(), ws2.numel()) >= 2**31:
        raise ValueError(f"{T} tokens x {k} experts: partial sums beyond int32 offsets; use fewer splits")
    acc = torch.empty((T, H), dtype=torch.float32, device=dev) if sorted_ else tw
    common = dict(E_P2=max(16, next_pow2(num_experts)), PCHUNK=16 if P <= 16 else 128, ASM=asm, DOT_F32=interp,
                  num_stages=cfg.stages, SORTED=sorted_, ZERO_BLOCK=1024, BT=16)
    limit = float(ep.limit) if ep.limit is not None else float("inf")

    w, s, z, g = _args(w13, dummy)
    s_we, s_wn, s_se, s_sn = _strides(w13)
    KN.lowt_moe_kernel[(programs * triton.cdiv(intermediate, cfg.bn1) * split1,)](
        x, ids, tw, w, s, z, g, w13_bias if w13_bias is not None else dummy, inter, acc, ok, srt, blk, tot, ws1, cnt1,
        P, num_experts, intermediate, H, k, T * H if sorted_ else 0,
        x.stride(0), s_we, s_wn, s_se, s_sn, inter.stride(0), w13_bias.stride(0) if w13_bias is not None else 0,
        ep.row_stride, ep.up_offset, ep.act, float(ep.alpha), limit, float(ep.up_add),
        STAGE=1, FMT=w13.fmt, GATED=ep.gated, HAS_BIAS=w13_bias is not None, HAS_ZP=w13.zeros is not None,
        GROUP=w13.group, ROUTED_ON_INPUT=ep.routed_on_input, BN=cfg.bn1, BK=w13.block, BM=cfg.bm,
        TAIL=H % w13.block != 0, SPLIT=split1, num_warps=cfg.warps, **common)

    w, s, z, g = _args(w2, dummy)
    s_we, s_wn, s_se, s_sn = _strides(w2)
    b2 = w2_bias if w2_bias is not None else dummy
    s_b2 = w2_bias.stride(0) if w2_bias is not None else 0
    if cfg.gemm2 == "token":
        KN.lowt_token_kernel[(T * triton.cdiv(H, cfg.bn2),)](
            inter, ids, tw, w, s, z, g, b2, out,
            num_experts, H, intermediate, k,
            inter.stride(0), s_we, s_wn, s_se, s_sn, out.stride(0), s_b2,
            FMT=w2.fmt, HAS_BIAS=w2_bias is not None, HAS_ZP=w2.zeros is not None, GROUP=w2.group,
            ROUTED_ON_INPUT=ep.routed_on_input, BN=cfg.bn2, BK=w2.block, BM=cfg.bm_token, ASM=asm, DOT_F32=interp,
            TAIL=intermediate % w2.block != 0, num_warps=cfg.warps2, num_stages=cfg.stages)
        return out
    c = acc if sorted_ else out
    KN.lowt_moe_kernel[(programs * triton.cdiv(H, cfg.bn2) * split2,)](
        inter, ids, tw, w, s, z, g, b2, c, acc, ok, srt, blk, tot, ws2, cnt2,
        P, num_experts, H, intermediate, k, 0,
        inter.stride(0), s_we, s_wn, s_se, s_sn, c.stride(0), s_b2,
        1, 0, 0, 1.0, limit, 0.0,
        STAGE=2, FMT=w2.fmt, GATED=False, HAS_BIAS=w2_bias is not None, HAS_ZP=w2.zeros is not None,
        GROUP=w2.group, ROUTED_ON_INPUT=ep.routed_on_input, BN=cfg.bn2, BK=w2.block, BM=cfg.bm,
        TAIL=intermediate % w2.block != 0, SPLIT=split2, num_warps=cfg.warps2, **common)
    if sorted_:
        n = T * H
        KN.cast_kernel[(triton.cdiv(n, 1024),)](acc, out, n, BLOCK=1024, num_warps=4)
    return out


def _registers(maxnreg: int, asm: bool) -> dict[str, int]:
    """The launch option capping registers per thread (a compile option of the GPU's; not the interpreter's)."""
    return {"maxnreg": maxnreg} if maxnreg and asm else {}


def _gemv_experts(x: torch.Tensor, tw: torch.Tensor, ids: torch.Tensor, w13: PackedWeight, w2: PackedWeight,
                  num_experts: int, intermediate: int, ep: Epilogue, cfg: Config, w13_bias: torch.Tensor | None,
                  w2_bias: torch.Tensor | None, ok: torch.Tensor, asm: bool,
                  counters: torch.Tensor | None) -> torch.Tensor:
    """``fused_experts`` on the GEMV kernels (``cfg.gemv``): GEMM1 a program per (pair, ``bn1`` rows), or
    (``slots``) per (expert slot, ``bn1`` rows) over the expert's pairs; GEMM2 per (pair, ``bn2`` rows) finished
    by each tile's last program, or (``gemm2="token"``) per (token, ``bn2`` rows) over an intermediate that GEMM1
    scaled by the router weight and GEMM2's NvFP4 factor (float32; the layer dtype with ``pairs``)."""
    T, H = x.shape
    P = ids.numel()
    k = P // T
    dev = x.device
    token = cfg.gemm2 == "token"
    pdl = cfg.pdl and asm
    inter = torch.empty((P, intermediate), dtype=torch.float32 if token and not cfg.pairs else x.dtype, device=dev)
    out = torch.empty((T, H), dtype=x.dtype, device=dev)
    dummy = tw
    limit = float(ep.limit) if ep.limit is not None else float("inf")
    w, s, z, g = _args(w13, dummy)
    s_we, s_wn, s_se, s_sn = _strides(w13)
    scale2 = token and w2.global_mult is not None
    b1 = w13_bias if w13_bias is not None else dummy
    s_b1 = w13_bias.stride(0) if w13_bias is not None else 0
    g2 = w2.global_mult if scale2 else dummy
    same = dict(FMT=w13.fmt, GATED=ep.gated, HAS_BIAS=w13_bias is not None, HAS_ZP=w13.zeros is not None,
                GROUP=w13.group, ROUTED_ON_INPUT=ep.routed_on_input, BR=cfg.bn1, BK=w13.block, ASM=asm,
                TAIL=H % w13.block != 0, UNROLL=cfg.unroll, SCALE2=scale2, PDL=pdl, num_warps=cfg.warps,
                num_stages=cfg.stages, **_registers(cfg.maxnreg, asm))
    if cfg.slots:  # a program per (expert slot, row tile) over the expert's pairs
        SL.gemv_slot1_kernel[(min(num_experts, P) * triton.cdiv(intermediate, cfg.bn1),)](
            x, ids, tw, w, s, z, g, g2, b1, inter, ok,
            P, num_experts, intermediate, H, k,
            x.stride(0), s_we, s_wn, s_se, s_sn, inter.stride(0), s_b1,
            ep.row_stride, ep.up_offset, ep.act, float(ep.alpha), limit, float(ep.up_add),
            BM=cfg.bm, E_P2=max(16, next_pow2(num_experts)), PCHUNK=16 if P <= 16 else 128, **same)
    else:
        GV.gemv1_kernel[(P * triton.cdiv(intermediate, cfg.bn1),)](
            x, ids, tw, w, s, z, g, g2, b1, inter, ok,
            num_experts, intermediate, H, k,
            x.stride(0), s_we, s_wn, s_se, s_sn, inter.stride(0), s_b1,
            ep.row_stride, ep.up_offset, ep.act, float(ep.alpha), limit, float(ep.up_add),
            TOKEN2=token, PAIRS=cfg.pairs, STEPS=whole_steps(cfg, H, w13.block), **same)
    w, s, z, g = _args(w2, dummy)
    s_we, s_wn, s_se, s_sn = _strides(w2)
    b2 = w2_bias if w2_bias is not None else dummy
    s_b2 = w2_bias.stride(0) if w2_bias is not None else 0
    launch: dict[str, Any] = {"launch_pdl": True} if pdl else {}
    launch.update(_registers(cfg.maxnreg2, asm))
    if token:
        GV.gemv_token_kernel[(T * triton.cdiv(H, cfg.bn2),)](
            inter, ids, tw, w, s, z, b2, out,
            num_experts, H, intermediate,
            inter.stride(0), s_we, s_wn, s_se, s_sn, out.stride(0), s_b2,
            FMT=w2.fmt, HAS_BIAS=w2_bias is not None, HAS_ZP=w2.zeros is not None, GROUP=w2.group,
            ROUTED_ON_INPUT=ep.routed_on_input, TOPK=k, BR=cfg.bn2, BK=w2.block, ASM=asm,
            TAIL=intermediate % w2.block != 0, UNROLL=cfg.unroll2, PDL=pdl, PAIRS=cfg.pairs,
            num_warps=cfg.warps2, num_stages=cfg.stages, **launch)
        return out
    counters = _counters(counters, counters_needed(T, k, num_experts, H, intermediate, cfg), dev)
    ws = torch.empty((P, H), dtype=torch.float32, device=dev)  # written before it is read: no zeroing
    GV.gemv2_kernel[(P * triton.cdiv(H, cfg.bn2),)](
        inter, ids, tw, w, s, z, g, b2, out, ws, counters,
        P, num_experts, H, intermediate, k,
        inter.stride(0), s_we, s_wn, s_se, s_sn, out.stride(0), s_b2,
        FMT=w2.fmt, HAS_BIAS=w2_bias is not None, HAS_ZP=w2.zeros is not None, GROUP=w2.group,
        ROUTED_ON_INPUT=ep.routed_on_input, BR=cfg.bn2, BK=w2.block, ASM=asm, TAIL=intermediate % w2.block != 0,
        UNROLL=cfg.unroll, BT=16, PDL=pdl, PAIRS=cfg.pairs, STEPS=whole_steps(cfg, intermediate, w2.block),
        num_warps=cfg.warps2, num_stages=cfg.stages, **launch)
    return out
