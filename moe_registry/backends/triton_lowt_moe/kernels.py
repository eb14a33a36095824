"""The Triton kernels of ``triton-lowt-moe``: fused MoE for decode-sized batches (T up to ~64), written
for this project. Weight-only: bf16/fp16 weights, or 4-bit weights (int4 with group scales and
optional zero points, NvFP4, MXFP4) dequantized in registers next to the tensor-core dot
(``unpack.py``).

A few tokens run on the GEMV kernels instead (``gemv.py``, ``ops.GEMV_FOR``). Here, work is a batched GEMV
over the experts the batch uses, with no sort and no host sync:

- a program owns one (expert slot, N tile). Slot ``s`` is the s-th expert (in id order) that some
  pair routes to: every program histograms the ``T*k`` ids itself (``_expert_of_slot``) and gathers
  the pairs of its expert (``_pairs_of``), so each selected expert's weight tile is read once for all
  of its tokens, and programs of unused slots return at once (``min(E, T*k)`` slots);
- GEMM1 (``lowt_moe_kernel`` STAGE 1) reads the gate and up rows of its N tile, applies the
  activation (a run-time code: one compiled kernel serves every activation) and writes the activated
  intermediate ``[T*k, I]``; it also zeroes GEMM2's float32 accumulator when there is one;
- GEMM2 either per token (``lowt_token_kernel``: a program owns one token's N tile and loops over
  its k experts, so the router-weighted top-k sum is a register sum and the output is written once:
  two launches in all) or per expert slot (STAGE 2: router-weighted float32 atomics, then
  ``cast_kernel``);
- large batches (prefill) sort the pairs into expert blocks first (``triton_fused_moe.ops.align``,
  SORTED): the same tiles, BM pairs of one expert per program.

Tiles are computed swapped (``W x^T``): the weight rows fill the dot's M side and the few tokens its N
side. A K step reads one packed block: for 4-bit weights the low and high nibbles of its bytes are two
tiles that meet two contiguous halves of the activations (``ops.split_half_blocks``). The last, partial
step is masked; whole steps load unmasked so that the loads pipeline.

Exactness of the dequantization (before the dot's float32 accumulation):
- int4, a scale group holding each half-step: the dot takes ``q + 128`` (bf16, exact) and the step adds
  ``s * (dot - (z + 128) * sum(x))`` in float32, i.e. ``(q - z) * s`` exactly;
- int4, smaller groups (and the partial step): ``(q - z) * s`` rounded once to the layer dtype (as
  Marlin's dequantization does);
- NvFP4: ``e2m1 * e4m3 * 2^-10`` in bf16 is exact (6 significant bits); the float32 accumulator is
  multiplied by ``2^10 / global_scale`` at the end;
- MXFP4: ``e2m1 * 2^(e - 127)`` in bf16 is exact unless it under- or overflows bf16.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..triton_fused_moe import codes as A
from ..triton_fused_moe.kernels import _activate, _sigmoid
from . import codes as F
from .unpack import _half_multipliers, _unpack

FMT_16BIT = tl.constexpr(F.FMT_16BIT)
FMT_INT4 = tl.constexpr(F.FMT_INT4)
FMT_NVFP4 = tl.constexpr(F.FMT_NVFP4)
ACT_SILU = tl.constexpr(A.ACT_SILU)
ACT_GELU = tl.constexpr(A.ACT_GELU)
ACT_GELU_TANH = tl.constexpr(A.ACT_GELU_TANH)
ACT_SWIGLUOAI = tl.constexpr(A.ACT_SWIGLUOAI)
ACT_RELU2 = tl.constexpr(A.ACT_RELU2)
ACT_SILU_NO_MUL = tl.constexpr(A.ACT_SILU_NO_MUL)
ACT_GELU_NO_MUL = tl.constexpr(A.ACT_GELU_NO_MUL)
ACT_GELU_TANH_NO_MUL = tl.constexpr(A.ACT_GELU_TANH_NO_MUL)

# --- Routing without a sort ---------------------------------------------------------------------


@triton.jit
def _expert_of_slot(ids_ptr, P, E, slot, E_P2: tl.constexpr, PCHUNK: tl.constexpr):
    """(expert, pairs routed to it, any id outside [0, E), experts used) of the ``slot``-th used expert
    in id order; 0 pairs when fewer experts are used. Out-of-range ids count for no expert."""
    counts = tl.zeros([E_P2], dtype=tl.int32)
    bad = tl.zeros([PCHUNK], dtype=tl.int32)
    for p0 in range(0, P, PCHUNK):
        offs = p0 + tl.arange(0, PCHUNK)
        m = offs < P
        e = tl.load(ids_ptr + offs, mask=m, other=0).to(tl.int32)
        valid = m & (e >= 0) & (e < E)
        bad += (m & ~valid).to(tl.int32)
        counts += tl.histogram(tl.where(valid, e, 0), E_P2, mask=valid).to(tl.int32)
    used = (counts > 0).to(tl.int32)
    hit = (used > 0) & ((tl.cumsum(used, 0) - 1) == slot)
    expert = tl.sum(tl.where(hit, tl.arange(0, E_P2), 0), 0)
    n_pairs = tl.sum(tl.where(hit, counts, 0), 0)
    return expert, n_pairs, tl.sum(bad, 0) > 0, tl.sum(used, 0)


@triton.jit
def _pairs_of(ids_ptr, P, expert, first, BM: tl.constexpr, PCHUNK: tl.constexpr):
    """Pair indices ``[BM]`` of the expert's pairs number ``first .. first + BM - 1`` (ascending pair
    order), and which of them exist."""
    want = first + tl.arange(0, BM)
    sel = tl.zeros([BM], dtype=tl.int32)
    found = tl.zeros([BM], dtype=tl.int32)
    base = 0
    for p0 in range(0, P, PCHUNK):
        offs = p0 + tl.arange(0, PCHUNK)
        m = offs < P
        mine = (tl.load(ids_ptr + offs, mask=m, other=-1).to(tl.int32) == expert) & m
        mine_i = mine.to(tl.int32)
        pos = base + tl.cumsum(mine_i, 0) - 1
        match = mine[None, :] & (pos[None, :] == want[:, None])
        sel += tl.sum(tl.where(match, offs[None, :], 0), 1)
        found += tl.sum(match.to(tl.int32), 1)
        base += tl.sum(mine_i, 0)
    return sel, found > 0


TRAP_ASM = tl.constexpr("{\n.reg .pred p;\nsetp.ne.s32 p, $1, 0;\n@p trap;\nmov.b32 $0, 0;\n}")


@triton.jit
def _trap_if(bad):
    """Stop the kernel with a device error when ``bad`` (int32 [1]) is non-zero: an out-of-range expert
    id fails the stream, as a device-side assert does, without another launch or a host sync."""
    tl.inline_asm_elementwise(TRAP_ASM, "=r,r", [bad], dtype=tl.int32, is_pure=False, pack=1)


# --- One K step ------------------------------------------------------------------------------------


@triton.jit
def _tile(a_ptr, a_rows, a_ok, s_am, w_ptr_e, s_wn, rows, s_ptr_e, z_ptr_e, s_sn, k0, klen, xlo, xhi, xsum_lo,
          xsum_hi, FMT: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
          BM: tl.constexpr, ASM: tl.constexpr, DOT_F32: tl.constexpr, MASKED: tl.constexpr):
    """``[BN, BM]`` float32: one 4-bit weight block (K step at ``k0``, ``klen`` elements) of ``rows``
    times the activation halves ``xlo`` / ``xhi`` ``[BKB, BM]`` (already loaded)."""
    ADT: tl.constexpr = a_ptr.dtype.element_ty
    BKB: tl.constexpr = BK // 2
    half = klen // 2
    i = tl.arange(0, BKB)
    ptrs = w_ptr_e + rows[:, None] * s_wn + (k0 // 2 + i)[None, :]
    if MASKED:
        w = tl.load(ptrs, mask=(i < half)[None, :], other=0)
    else:
        w = tl.load(ptrs)
    # int4 whose groups hold each half-block whole: exact codes; scale and zero point per half (below).
    POST: tl.constexpr = (FMT == FMT_INT4) and (GROUP % BKB == 0) and not MASKED
    PRESCALE: tl.constexpr = (FMT == FMT_INT4) and not POST
    if POST:
        m_lo = tl.zeros((BN, BKB), dtype=ADT)
        m_hi = m_lo
        z_lo = m_lo
        z_hi = m_lo
    else:
        m_lo, z_lo = _half_multipliers(s_ptr_e, z_ptr_e, rows, s_sn, k0, half, FMT, GROUP, HAS_ZP, ADT, ASM, BN, BKB,
                                       MASKED)
        m_hi, z_hi = _half_multipliers(s_ptr_e, z_ptr_e, rows, s_sn, k0 + half, half, FMT, GROUP, HAS_ZP, ADT, ASM,
                                       BN, BKB, MASKED)
    lo, hi = _unpack(w, m_lo, m_hi, z_lo, z_hi, FMT, PRESCALE, ADT, ASM)
    if DOT_F32:
        lo = lo.to(tl.float32)
        hi = hi.to(tl.float32)
    if POST:
        ZMAGIC: tl.constexpr = 1024.0 if ADT == tl.float16 else 128.0
        g_lo = k0 // GROUP
        g_hi = (k0 + half) // GROUP
        s_lo = tl.load(s_ptr_e + rows * s_sn + g_lo).to(tl.float32)
        s_hi = tl.load(s_ptr_e + rows * s_sn + g_hi).to(tl.float32)
        if HAS_ZP:
            zc_lo = tl.load(z_ptr_e + rows * s_sn + g_lo).to(tl.float32) + ZMAGIC
            zc_hi = tl.load(z_ptr_e + rows * s_sn + g_hi).to(tl.float32) + ZMAGIC
        else:
            zc_lo = tl.zeros_like(s_lo) + (ZMAGIC + 8.0)
            zc_hi = zc_lo
        r = (tl.dot(lo, xlo) - zc_lo[:, None] * xsum_lo[None, :]) * s_lo[:, None]
        r += (tl.dot(hi, xhi) - zc_hi[:, None] * xsum_hi[None, :]) * s_hi[:, None]
    else:
        r = tl.dot(hi, xhi, tl.dot(lo, xlo))
    return r


@triton.jit
def _kstep(a_ptr, a_rows, a_ok, s_am, w_ptr_e, s_wn, g_rows, u_rows, s_ptr_e, z_ptr_e, s_sn, k0, klen,
           FMT: tl.constexpr, GATED: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr,
           BN: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr, ASM: tl.constexpr, DOT_F32: tl.constexpr,
           MASKED: tl.constexpr):
    """``(tmp_g, tmp_u) [BN, BM]`` float32: the K step at ``k0`` (``klen`` elements; ``MASKED`` only for a
    last, partial step) of weight rows ``g_rows`` / ``u_rows`` (dequantized) times the activation rows
    ``a_rows`` (the result's columns). ``u_rows`` is read only when GATED."""
    tmp_u = tl.zeros((BN, BM), dtype=tl.float32)
    if FMT == FMT_16BIT:
        k = k0 + tl.arange(0, BK)
        if MASKED:
            k_ok = k < k0 + klen
            xt = tl.load(a_ptr + a_rows[None, :] * s_am + k[:, None], mask=k_ok[:, None] & a_ok[None, :], other=0.0)
            wg = tl.load(w_ptr_e + g_rows[:, None] * s_wn + k[None, :], mask=k_ok[None, :], other=0.0)
        else:
            xt = tl.load(a_ptr + a_rows[None, :] * s_am + k[:, None], mask=a_ok[None, :], other=0.0)
            wg = tl.load(w_ptr_e + g_rows[:, None] * s_wn + k[None, :])
        if DOT_F32:
            xt = xt.to(tl.float32)
            wg = wg.to(tl.float32)
        tmp_g = tl.dot(wg, xt)
        if GATED:
            if MASKED:
                wu = tl.load(w_ptr_e + u_rows[:, None] * s_wn + k[None, :], mask=k_ok[None, :], other=0.0)
            else:
                wu = tl.load(w_ptr_e + u_rows[:, None] * s_wn + k[None, :])
            if DOT_F32:
                wu = wu.to(tl.float32)
            tmp_u = tl.dot(wu, xt)
    else:
        BKB: tl.constexpr = BK // 2
        half = klen // 2
        i = tl.arange(0, BKB)
        x_ptrs = a_ptr + a_rows[None, :] * s_am + (k0 + i)[:, None]
        if MASKED:
            x_ok = (i < half)[:, None] & a_ok[None, :]
            xlo = tl.load(x_ptrs, mask=x_ok, other=0.0)  # [BKB, BM], contiguous along K
            xhi = tl.load(x_ptrs + half, mask=x_ok, other=0.0)
        else:
            xlo = tl.load(x_ptrs, mask=a_ok[None, :], other=0.0)
            xhi = tl.load(x_ptrs + BKB, mask=a_ok[None, :], other=0.0)
        xsum_lo = tl.sum(xlo.to(tl.float32), 0)
        xsum_hi = tl.sum(xhi.to(tl.float32), 0)
        if DOT_F32:
            xlo = xlo.to(tl.float32)
            xhi = xhi.to(tl.float32)
        tmp_g = _tile(a_ptr, a_rows, a_ok, s_am, w_ptr_e, s_wn, g_rows, s_ptr_e, z_ptr_e, s_sn, k0, klen, xlo, xhi,
                      xsum_lo, xsum_hi, FMT, HAS_ZP, GROUP, BN, BK, BM, ASM, DOT_F32, MASKED)
        if GATED:
            tmp_u = _tile(a_ptr, a_rows, a_ok, s_am, w_ptr_e, s_wn, u_rows, s_ptr_e, z_ptr_e, s_sn, k0, klen, xlo,
                          xhi, xsum_lo, xsum_hi, FMT, HAS_ZP, GROUP, BN, BK, BM, ASM, DOT_F32, MASKED)
    return tmp_g, tmp_u


@triton.jit
def _activation(g, u, act, alpha, limit, up_add, GATED: tl.constexpr):
    """The activation by run-time code (one compiled kernel for all of them), float32."""
    if GATED:
        if act == ACT_SWIGLUOAI:  # also silu_clamp: alpha 1, up_add 0
            gg = tl.minimum(g, limit)
            uu = tl.minimum(tl.maximum(u, -limit), limit)
            r = (uu + up_add) * (gg * _sigmoid(alpha * gg))
        elif act == ACT_GELU:
            r = _activate(g, ACT_GELU) * u
        elif act == ACT_GELU_TANH:
            r = _activate(g, ACT_GELU_TANH) * u
        else:
            r = _activate(g, ACT_SILU) * u
    else:
        if act == ACT_RELU2:
            r = _activate(g, ACT_RELU2)
        elif act == ACT_GELU_NO_MUL:
            r = _activate(g, ACT_GELU_NO_MUL)
        elif act == ACT_GELU_TANH_NO_MUL:
            r = _activate(g, ACT_GELU_TANH_NO_MUL)
        else:
            r = _activate(g, ACT_SILU_NO_MUL)
    return r


# --- Kernels ------------------------------------------------------------------------------------------


@triton.jit
def _gemm1_out(acc_g, acc_u, pairs, p_ok, offs_n, n_ok, g_rows, u_rows, e64, bias_ptr, s_be, c_ptr, s_cm, act, alpha,
               limit, up_add, GATED: tl.constexpr, HAS_BIAS: tl.constexpr):
    """GEMM1's epilogue on whole sums ``[BN, BM]``: bias, activation, the intermediate in the layer dtype."""
    if HAS_BIAS:
        acc_g += tl.load(bias_ptr + e64 * s_be + g_rows)[:, None]
        if GATED:
            acc_u += tl.load(bias_ptr + e64 * s_be + u_rows)[:, None]
    out = _activation(acc_g, acc_u, act, alpha, limit, up_add, GATED)
    ptrs = c_ptr + pairs[None, :].to(tl.int64) * s_cm + offs_n[:, None]
    tl.store(ptrs, out.to(c_ptr.dtype.element_ty), mask=n_ok[:, None] & p_ok[None, :])


@triton.jit
def _expert_ptrs(expert, w_ptr, s_ptr, z_ptr, s_we, s_se):
    """(the expert id in int64, where its weights, scales and zero points start)."""
    e64 = expert.to(tl.int64)
    return e64, w_ptr + e64 * s_we, s_ptr + e64 * s_se, z_ptr + e64 * s_se


@triton.jit
def _row_tile(N_OUT, BN: tl.constexpr):
    """This program's (item, row offsets ``[BN]``, which exist, the offsets clamped into range) for a grid of
    (item, tile of BN output rows), the tiles of one item adjacent."""
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N_OUT, BN)
    offs_n = pid % n_tiles * BN + tl.arange(0, BN)
    n_ok = offs_n < N_OUT
    return pid // n_tiles, offs_n, n_ok, tl.where(n_ok, offs_n, 0)


@triton.jit
def _arrive(cnt_ptr, last):
    """Count this program in at ``cnt_ptr`` after its partial sums are stored; True for the ``last``-th
    (0-based) arrival, whose caller then finishes the tile and sets the counter back to 0 for the next
    forward. The barrier puts every thread's stores before the release; acquire makes the others' visible."""
    tl.debug_barrier()
    old = tl.atomic_add(cnt_ptr, 1, sem="acq_rel", scope="gpu")
    return old == last


@triton.jit
def lowt_moe_kernel(
    a_ptr, ids_ptr, tw_ptr, w_ptr, s_ptr, z_ptr, gsc_ptr, bias_ptr, c_ptr, zero_ptr, ok_ptr,
    sorted_ptr, block_expert_ptr, total_ptr, ws_ptr, cnt_ptr,
    P, E, N_OUT, K, TOPK, zero_n,
    s_am, s_we, s_wn, s_se, s_sn, s_cm, s_be,
    row_stride, up_offset, act, alpha, limit, up_add,
    STAGE: tl.constexpr, FMT: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ZP: tl.constexpr,
    GROUP: tl.constexpr, ROUTED_ON_INPUT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr,
    PCHUNK: tl.constexpr, E_P2: tl.constexpr, ASM: tl.constexpr, DOT_F32: tl.constexpr, ZERO_BLOCK: tl.constexpr,
    TAIL: tl.constexpr, SORTED: tl.constexpr, SPLIT: tl.constexpr, BT: tl.constexpr,
):
    """One (expert slot, N tile, K split) program.

    STAGE 1 (GEMM1): ``c [P, N_OUT] = act(W13[e] x^T)`` per pair (gate rows ``n * row_stride``, up rows
    ``+ up_offset``). With SPLIT > 1 each program sums its share of the K steps into ``ws [SPLIT, P, 2,
    N_OUT]`` (float32, plain stores) and the last of the tile's SPLIT programs to arrive (``cnt_ptr``, one
    counter per slot and tile) adds the shares in split order and applies the activation.
    STAGE 2 (GEMM2 by expert slot): each program stores ``w * (W2[e] a^T + b)`` over its K share into
    ``ws [SPLIT, P, N_OUT]``; the last of the tile's (experts used x SPLIT) programs (one counter per tile)
    writes ``c [T, N_OUT] = sum over the token's k pairs and the splits``, in that fixed order, in the
    layer dtype: no atomics on data, no cast launch, the same bits at every run.
    Counters are 0 on entry and left 0.
    SORTED (large batches): a program owns one block of BM pairs of one expert from
    ``triton_fused_moe.ops.align`` instead of a slot (the pairs were sorted by expert beforehand); GEMM2
    then adds into a float32 ``c`` with atomics (zeroed by GEMM1: ``zero_ptr[:zero_n]``), cast later."""
    G1: tl.constexpr = GATED and (STAGE == 1)
    FINISH: tl.constexpr = (not SORTED) and (STAGE == 2 or SPLIT > 1)  # partial sums + last arrival
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N_OUT, BN)
    split = pid % SPLIT
    slot = pid // SPLIT // n_tiles
    tile = pid // SPLIT % n_tiles
    if STAGE == 1 and zero_n > 0:  # GEMM2's accumulator, zeroed here so that no launch is spent on it
        per = tl.cdiv(tl.cdiv(zero_n, tl.num_programs(0)), ZERO_BLOCK) * ZERO_BLOCK
        for z0 in range(pid * per, pid * per + per, ZERO_BLOCK):
            zo = z0 + tl.arange(0, ZERO_BLOCK)
            tl.store(zero_ptr + zo, tl.zeros([ZERO_BLOCK], dtype=tl.float32), mask=zo < zero_n)
    n_used = 0
    if SORTED:
        if STAGE == 1 and ASM:
            _trap_if(1 - tl.load(ok_ptr + tl.arange(0, 1)))  # align cleared it: an id outside [0, E)
        if slot * BM >= tl.load(total_ptr):
            return
        expert = tl.load(block_expert_ptr + slot)
        if expert < 0:
            return
        n_pairs = BM
    else:
        expert, n_pairs, bad, n_used = _expert_of_slot(ids_ptr, P, E, slot, E_P2, PCHUNK)
        if bad:
            tl.store(ok_ptr, 0)  # sticky: tests on the CPU read it
            if ASM:
                _trap_if(tl.full([1], 1, tl.int32))
        if n_pairs == 0:
            return
    offs_n = tile * BN + tl.arange(0, BN)
    n_ok = offs_n < N_OUT
    n_safe = tl.where(n_ok, offs_n, 0)
    g_rows = n_safe * row_stride
    u_rows = g_rows + up_offset
    e64, w_ptr_e, s_ptr_e, z_ptr_e = _expert_ptrs(expert, w_ptr, s_ptr, z_ptr, s_we, s_se)
    full = K // BK
    per_split = tl.cdiv(tl.cdiv(K, BK), SPLIT)  # K steps per split; the last split may have fewer
    k_first = split * per_split
    k_stop = tl.minimum(k_first + per_split, full)
    for first in range(0, n_pairs, BM):
        if SORTED:
            pairs = tl.load(sorted_ptr + slot * BM + tl.arange(0, BM))
            p_ok = pairs < P
        else:
            pairs, p_ok = _pairs_of(ids_ptr, P, expert, first, BM, PCHUNK)
        tokens = pairs // TOPK
        a_rows = tokens if STAGE == 1 else pairs
        a_rows = tl.where(p_ok, a_rows, 0).to(tl.int64)
        acc_g = tl.zeros((BN, BM), dtype=tl.float32)
        acc_u = tl.zeros((BN, BM), dtype=tl.float32)
        for step in range(k_first, k_stop):
            tg, tu = _kstep(a_ptr, a_rows, p_ok, s_am, w_ptr_e, s_wn, g_rows, u_rows, s_ptr_e, z_ptr_e, s_sn,
                            step * BK, BK, FMT, G1, HAS_ZP, GROUP, BN, BK, BM, ASM, DOT_F32, False)
            acc_g += tg
            acc_u += tu
        if TAIL:
            if full // per_split == split:  # the partial last step is this split's
                tg, tu = _kstep(a_ptr, a_rows, p_ok, s_am, w_ptr_e, s_wn, g_rows, u_rows, s_ptr_e, z_ptr_e, s_sn,
                                full * BK, K - full * BK, FMT, G1, HAS_ZP, GROUP, BN, BK, BM, ASM, DOT_F32, True)
                acc_g += tg
                acc_u += tu
        if FMT == FMT_NVFP4:
            gsc = tl.load(gsc_ptr + expert)
            acc_g = acc_g * gsc
            acc_u = acc_u * gsc
        tw = tl.load(tw_ptr + pairs, mask=p_ok, other=0.0)
        keep = n_ok[:, None] & p_ok[None, :]
        if STAGE == 1:
            if ROUTED_ON_INPUT:  # (w x) W^T = w (x W^T): the router weight scales GEMM1's columns
                acc_g = acc_g * tw[None, :]
                acc_u = acc_u * tw[None, :]
            if FINISH:
                ws = ws_ptr + ((split * P + pairs[None, :].to(tl.int64)) * 2) * N_OUT + offs_n[:, None]
                tl.store(ws, acc_g, mask=keep)
                if GATED:
                    tl.store(ws + N_OUT, acc_u, mask=keep)
            else:
                _gemm1_out(acc_g, acc_u, pairs, p_ok, offs_n, n_ok, g_rows, u_rows, e64, bias_ptr, s_be, c_ptr, s_cm,
                           act, alpha, limit, up_add, GATED, HAS_BIAS)
        else:
            if HAS_BIAS:
                if split == 0:
                    acc_g += tl.load(bias_ptr + e64 * s_be + n_safe)[:, None]
            if not ROUTED_ON_INPUT:
                acc_g = acc_g * tw[None, :]
            if FINISH:
                tl.store(ws_ptr + (split * P + pairs[None, :].to(tl.int64)) * N_OUT + offs_n[:, None], acc_g,
                         mask=keep)
            else:
                ptrs = c_ptr + tokens[None, :].to(tl.int64) * s_cm + offs_n[:, None]
                tl.atomic_add(ptrs, acc_g, mask=keep, sem="relaxed")
    if FINISH:
        if STAGE == 1:
            cnt = cnt_ptr + slot * n_tiles + tile
            if _arrive(cnt, SPLIT - 1):
                for first in range(0, n_pairs, BM):
                    pairs, p_ok = _pairs_of(ids_ptr, P, expert, first, BM, PCHUNK)
                    keep = n_ok[:, None] & p_ok[None, :]
                    ws = ws_ptr + (pairs[None, :].to(tl.int64) * 2) * N_OUT + offs_n[:, None]
                    acc_g = tl.zeros((BN, BM), dtype=tl.float32)
                    acc_u = tl.zeros((BN, BM), dtype=tl.float32)
                    for s in tl.static_range(SPLIT):
                        acc_g += tl.load(ws + s * P * 2 * N_OUT, mask=keep, other=0.0, cache_modifier=".cg")
                        if GATED:
                            acc_u += tl.load(ws + s * P * 2 * N_OUT + N_OUT, mask=keep, other=0.0,
                                             cache_modifier=".cg")
                    _gemm1_out(acc_g, acc_u, pairs, p_ok, offs_n, n_ok, g_rows, u_rows, e64, bias_ptr, s_be, c_ptr,
                               s_cm, act, alpha, limit, up_add, GATED, HAS_BIAS)
                tl.atomic_xchg(cnt, 0, sem="relaxed", scope="gpu")
        else:
            cnt = cnt_ptr + tile
            if _arrive(cnt, n_used * SPLIT - 1):
                for t0 in range(0, P // TOPK, BT):
                    tokens = t0 + tl.arange(0, BT)
                    t_ok = tokens < P // TOPK
                    y = tl.zeros((BN, BT), dtype=tl.float32)
                    for j in range(0, TOPK):
                        pair = tokens * TOPK + j
                        eid = tl.load(ids_ptr + pair, mask=t_ok, other=-1).to(tl.int32)
                        have = n_ok[:, None] & (t_ok & (eid >= 0) & (eid < E))[None, :]  # bad ids wrote no row
                        ws = ws_ptr + pair[None, :].to(tl.int64) * N_OUT + offs_n[:, None]
                        for s in tl.static_range(SPLIT):
                            y += tl.load(ws + s * P * N_OUT, mask=have, other=0.0, cache_modifier=".cg")
                    tl.store(c_ptr + tokens[None, :].to(tl.int64) * s_cm + offs_n[:, None],
                             y.to(c_ptr.dtype.element_ty), mask=n_ok[:, None] & t_ok[None, :])
                tl.atomic_xchg(cnt, 0, sem="relaxed", scope="gpu")


@triton.jit
def _token_step(a_ptr, ids_ptr, tw_ptr, w_ptr, s_ptr, z_ptr, gsc_ptr, t, j, k0, klen, E, TOPK, s_am, s_we, s_wn, s_se,
                s_sn, n_safe, col0, FMT: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr,
                ROUTED_ON_INPUT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr, ASM: tl.constexpr,
                DOT_F32: tl.constexpr, MASKED: tl.constexpr):
    """One K step of the token's j-th expert, times its router weight (and NvFP4's global factor)."""
    pair = t * TOPK + j
    expert = tl.load(ids_ptr + pair).to(tl.int32)
    valid = (expert >= 0) & (expert < E)
    e64 = tl.where(valid, expert, 0).to(tl.int64)
    rows = tl.zeros((BM,), dtype=tl.int64) + pair
    tg, _ = _kstep(a_ptr, rows, tl.where(valid, col0, False), s_am, w_ptr + e64 * s_we, s_wn, n_safe, n_safe,
                   s_ptr + e64 * s_se, z_ptr + e64 * s_se, s_sn, k0, klen, FMT, False, HAS_ZP, GROUP, BN, BK, BM,
                   ASM, DOT_F32, MASKED)
    f = tl.where(valid, 1.0, 0.0)
    if FMT == FMT_NVFP4:
        f = f * tl.load(gsc_ptr + e64)
    if not ROUTED_ON_INPUT:
        f = f * tl.load(tw_ptr + pair)
    return tg * f


@triton.jit
def lowt_token_kernel(
    a_ptr, ids_ptr, tw_ptr, w_ptr, s_ptr, z_ptr, gsc_ptr, bias_ptr, out_ptr,
    E, N_OUT, K, TOPK,
    s_am, s_we, s_wn, s_se, s_sn, s_om, s_be,
    FMT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr,
    ROUTED_ON_INPUT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr, ASM: tl.constexpr,
    DOT_F32: tl.constexpr, TAIL: tl.constexpr,
):
    """GEMM2 per token: ``out[t, n] = sum_j w_tj * (W2[e_tj] a_(t k + j)^T + b)`` over the token's k
    experts, summed in registers and written once in the layer dtype (no atomics, no extra launch).
    One loop over (expert, whole K step) so that loads pipeline across experts, then the partial last
    steps. Ids outside [0, E) add nothing (GEMM1 already flagged them)."""
    t, offs_n, n_ok, n_safe = _row_tile(N_OUT, BN)
    col0 = tl.arange(0, BM) == 0  # the dot's token side; column 0 is the pair
    full = K // BK
    total = tl.zeros((BN, BM), dtype=tl.float32)
    for it in range(0, TOPK * full):
        total += _token_step(a_ptr, ids_ptr, tw_ptr, w_ptr, s_ptr, z_ptr, gsc_ptr, t, it // full, (it % full) * BK, BK,
                             E, TOPK, s_am, s_we, s_wn, s_se, s_sn, n_safe, col0, FMT, HAS_ZP, GROUP, ROUTED_ON_INPUT,
                             BN, BK, BM, ASM, DOT_F32, False)
    if TAIL:
        for j in range(0, TOPK):
            total += _token_step(a_ptr, ids_ptr, tw_ptr, w_ptr, s_ptr, z_ptr, gsc_ptr, t, j, full * BK, K - full * BK,
                                 E, TOPK, s_am, s_we, s_wn, s_se, s_sn, n_safe, col0, FMT, HAS_ZP, GROUP,
                                 ROUTED_ON_INPUT, BN, BK, BM, ASM, DOT_F32, True)
    y = tl.sum(tl.where(col0[None, :], total, 0.0), 1)
    if HAS_BIAS:
        for j in range(0, TOPK):
            pair = t * TOPK + j
            expert = tl.load(ids_ptr + pair).to(tl.int32)
            valid = (expert >= 0) & (expert < E)
            b = tl.load(bias_ptr + tl.where(valid, expert, 0).to(tl.int64) * s_be + n_safe)
            if not ROUTED_ON_INPUT:
                b = b * tl.load(tw_ptr + pair)
            y += tl.where(valid, b, 0.0)
    tl.store(out_ptr + t.to(tl.int64) * s_om + offs_n, y.to(out_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def cast_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    """float32 accumulator -> the layer dtype."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=m).to(dst_ptr.dtype.element_ty), mask=m)
