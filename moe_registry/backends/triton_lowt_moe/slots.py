"""GEMM1 over an expert's pairs for the GEMV path (``ops.Config(slots=True)``). From ~16 tokens on, pairs
share experts, and the per-pair GEMV (``gemv.py``) unpacks a shared expert's weights once per pair. Here a
program owns (expert slot, row tile), found with the dot kernels' routing (``kernels._expert_of_slot`` /
``_pairs_of``). It loads and unpacks each weight once per pass and multiplies it into up to four pairs' 16-bit
chains, their activations per weight row from L1 as in ``gemv.py``. GEMM2 then runs per token
(``gemv.gemv_token_kernel``)."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

from .gemv import _gemm1_out, _lane
from .steps import _gemv_acc, _pairs_dtype, _products, _w_tile, _w_values, _x_tiles
from .kernels import _expert_of_slot, _expert_ptrs, _pairs_of, _row_tile, _trap_if


@triton.jit
def _slot_products(hg, hu, x_ptr, live, lo_g, hi_g, lo_u, hi_u, k0, klen, FMT: tl.constexpr, GATED: tl.constexpr,
                   BR: tl.constexpr, BK: tl.constexpr, ASM: tl.constexpr, MASKED: tl.constexpr, PAIRS: tl.constexpr):
    """One pair's products of one K step with the unpacked gate (and up) rows."""
    xlo, xhi = _x_tiles(x_ptr, live, k0, klen, FMT, BR, BK, MASKED)
    hg = _products(hg, lo_g, hi_g, xlo, xhi, FMT, PAIRS, ASM)
    if GATED:
        hu = _products(hu, lo_u, hi_u, xlo, xhi, FMT, PAIRS, ASM)
    return hg, hu


@triton.jit
def _slot_step(g0, u0, g1, u1, g2, u2, g3, u3, x0, x1, x2, x3, ok0, ok1, ok2, ok3, w_ptr_e, s_wn, g_rows, u_rows,
               s_ptr_e, z_ptr_e, s_sn, k0, klen, live, FMT: tl.constexpr, GATED: tl.constexpr, HAS_ZP: tl.constexpr,
               GROUP: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, ASM: tl.constexpr, MASKED: tl.constexpr,
               PAIRS: tl.constexpr, BM: tl.constexpr):
    """One K step for up to four pairs: ``g*`` / ``u*`` their gate / up accumulators, ``x*`` their activation
    rows, ``ok*`` which exist; the weights loaded and unpacked once."""
    wg = _w_tile(live, w_ptr_e, s_wn, g_rows, k0, klen, FMT, BR, BK, MASKED)
    lo_g, hi_g = _w_values(wg, s_ptr_e, z_ptr_e, g_rows, s_sn, k0, klen, FMT, HAS_ZP, GROUP, BR, BK, ASM, MASKED)
    lo_u, hi_u = lo_g, hi_g
    if GATED:
        wu = _w_tile(live, w_ptr_e, s_wn, u_rows, k0, klen, FMT, BR, BK, MASKED)
        lo_u, hi_u = _w_values(wu, s_ptr_e, z_ptr_e, u_rows, s_sn, k0, klen, FMT, HAS_ZP, GROUP, BR, BK, ASM, MASKED)
    g0, u0 = _slot_products(g0, u0, x0, live & ok0, lo_g, hi_g, lo_u, hi_u, k0, klen, FMT, GATED, BR, BK, ASM, MASKED,
                            PAIRS)
    if BM > 1:
        g1, u1 = _slot_products(g1, u1, x1, live & ok1, lo_g, hi_g, lo_u, hi_u, k0, klen, FMT, GATED, BR, BK, ASM,
                                MASKED, PAIRS)
    if BM > 2:
        g2, u2 = _slot_products(g2, u2, x2, live & ok2, lo_g, hi_g, lo_u, hi_u, k0, klen, FMT, GATED, BR, BK, ASM,
                                MASKED, PAIRS)
        g3, u3 = _slot_products(g3, u3, x3, live & ok3, lo_g, hi_g, lo_u, hi_u, k0, klen, FMT, GATED, BR, BK, ASM,
                                MASKED, PAIRS)
    return g0, u0, g1, u1, g2, u2, g3, u3


@triton.jit
def _rows_of(n_ok, present):
    """``n_ok`` where the scalar ``present`` holds (spelled as a vector: Triton's interpreter cannot store under
    a vector mask and-ed with a scalar)."""
    return n_ok & ((n_ok.to(tl.int32) * 0 + present.to(tl.int32)) > 0)


@triton.jit
def _add_row_sums(a0, a1, a2, a3, a4, a5, a6, a7, h0, h1, h2, h3, h4, h5, h6, h7, BM: tl.constexpr):
    """The float32 sums ``a*`` of the first BM pairs' (gate, up) rows plus the row sums of their chains ``h*``."""
    a0 += tl.sum(h0.to(tl.float32), 1)
    a1 += tl.sum(h1.to(tl.float32), 1)
    if BM > 1:
        a2 += tl.sum(h2.to(tl.float32), 1)
        a3 += tl.sum(h3.to(tl.float32), 1)
    if BM > 2:
        a4 += tl.sum(h4.to(tl.float32), 1)
        a5 += tl.sum(h5.to(tl.float32), 1)
        a6 += tl.sum(h6.to(tl.float32), 1)
        a7 += tl.sum(h7.to(tl.float32), 1)
    return a0, a1, a2, a3, a4, a5, a6, a7


@triton.jit
def gemv_slot1_kernel(
    a_ptr, ids_ptr, tw_ptr, w_ptr, s_ptr, z_ptr, gsc_ptr, gsc2_ptr, bias_ptr, c_ptr, ok_ptr,
    P, E, N_OUT, K, TOPK,
    s_am, s_we, s_wn, s_se, s_sn, s_cm, s_be,
    row_stride, up_offset, act, alpha, limit, up_add,
    FMT: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr,
    ROUTED_ON_INPUT: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, ASM: tl.constexpr, TAIL: tl.constexpr,
    UNROLL: tl.constexpr, SCALE2: tl.constexpr, PDL: tl.constexpr, BM: tl.constexpr, E_P2: tl.constexpr,
    PCHUNK: tl.constexpr,
):
    """GEMM1 per (expert slot, tile of BR rows) over the expert's pairs, BM (1, 2 or 4) at a time: each weight
    unpacked once per BM pairs, their products chained in 16-bit pairs for UNROLL steps, then summed per row;
    output as ``gemv1_kernel`` with TOKEN2 (for GEMM2 per token). An id outside [0, E) clears ``ok`` (and stops
    the kernel on the GPU)."""
    if PDL:
        gdc_launch_dependents()
    slot, offs_n, n_ok, n_safe = _row_tile(N_OUT, BR)
    expert, n_pairs, bad, _ = _expert_of_slot(ids_ptr, P, E, slot, E_P2, PCHUNK)
    if bad:
        tl.store(ok_ptr, 0)
        if ASM:
            _trap_if(tl.full([1], 1, tl.int32))
    if n_pairs == 0:
        return
    g_rows = n_safe * row_stride
    u_rows = g_rows + up_offset
    e64, w_ptr_e, s_ptr_e, z_ptr_e = _expert_ptrs(expert, w_ptr, s_ptr, z_ptr, s_we, s_se)
    full = K // BK
    DT: tl.constexpr = _pairs_dtype(w_ptr, s_ptr, FMT, ASM).dtype
    for first in range(0, n_pairs, BM):
        pairs, p_ok = _pairs_of(ids_ptr, P, expert, first, BM, PCHUNK)
        p_ok = p_ok.to(tl.int32)
        p0 = _lane(pairs, 0, BM)  # lanes past BM read pair 0, not present
        p1 = _lane(pairs, 1, BM)
        p2 = _lane(pairs, 2, BM)
        p3 = _lane(pairs, 3, BM)
        ok0 = _lane(p_ok, 0, BM) > 0
        ok1 = _lane(p_ok, 1, BM) > 0
        ok2 = _lane(p_ok, 2, BM) > 0
        ok3 = _lane(p_ok, 3, BM) > 0
        x0 = a_ptr + (p0 // TOPK).to(tl.int64) * s_am
        x1 = a_ptr + (p1 // TOPK).to(tl.int64) * s_am
        x2 = a_ptr + (p2 // TOPK).to(tl.int64) * s_am
        x3 = a_ptr + (p3 // TOPK).to(tl.int64) * s_am
        a0 = tl.zeros((BR,), dtype=tl.float32)
        a1, a2, a3, a4, a5, a6, a7 = a0, a0, a0, a0, a0, a0, a0
        for step in range(0, full, UNROLL):
            h0 = _gemv_acc(FMT, BR, BK, DT)
            h1, h2, h3, h4, h5, h6, h7 = h0, h0, h0, h0, h0, h0, h0
            for j in tl.static_range(UNROLL):
                h0, h1, h2, h3, h4, h5, h6, h7 = _slot_step(
                    h0, h1, h2, h3, h4, h5, h6, h7, x0, x1, x2, x3, ok0, ok1, ok2, ok3, w_ptr_e, s_wn, g_rows, u_rows,
                    s_ptr_e, z_ptr_e, s_sn, tl.minimum(step + j, full - 1) * BK, BK, step + j < full, FMT, GATED,
                    HAS_ZP, GROUP, BR, BK, ASM, False, True, BM)
            a0, a1, a2, a3, a4, a5, a6, a7 = _add_row_sums(a0, a1, a2, a3, a4, a5, a6, a7, h0, h1, h2, h3, h4, h5,
                                                           h6, h7, BM)
        if TAIL:
            h0 = _gemv_acc(FMT, BR, BK)
            h1, h2, h3, h4, h5, h6, h7 = h0, h0, h0, h0, h0, h0, h0
            h0, h1, h2, h3, h4, h5, h6, h7 = _slot_step(
                h0, h1, h2, h3, h4, h5, h6, h7, x0, x1, x2, x3, ok0, ok1, ok2, ok3, w_ptr_e, s_wn, g_rows, u_rows,
                s_ptr_e, z_ptr_e, s_sn, full * BK, K - full * BK, True, FMT, GATED, HAS_ZP, GROUP, BR, BK, ASM, True,
                False, BM)
            a0, a1, a2, a3, a4, a5, a6, a7 = _add_row_sums(a0, a1, a2, a3, a4, a5, a6, a7, h0, h1, h2, h3, h4, h5,
                                                           h6, h7, BM)
        out = (e64, tw_ptr, gsc_ptr, gsc2_ptr, bias_ptr, s_be, g_rows, u_rows, c_ptr, s_cm, offs_n, act, alpha, limit,
               up_add, FMT, GATED, HAS_BIAS, ROUTED_ON_INPUT, True, SCALE2)
        _gemm1_out(a0, a1, p0, _rows_of(n_ok, ok0), *out)
        if BM > 1:
            _gemm1_out(a2, a3, p1, _rows_of(n_ok, ok1), *out)
        if BM > 2:
            _gemm1_out(a4, a5, p2, _rows_of(n_ok, ok2), *out)
            _gemm1_out(a6, a7, p3, _rows_of(n_ok, ok3), *out)
