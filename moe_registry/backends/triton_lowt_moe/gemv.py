"""The GEMV kernels of ``triton-lowt-moe`` (``ops.Config(gemv=True)``, the default for a few tokens:
``ops.GEMV_FOR``). At T = 1-4 a weight row meets one or two activation rows: the dot kernels (``kernels.py``)
waste most of their token side and hold the unpacked operands in the MMA layout (255 registers per thread,
<= 8 warps per SM, so the weight loads of too few warps are in flight). These kernels multiply on the CUDA
cores instead: one program per (pair, row tile), products accumulated elementwise in float32 and summed once
at the end, few registers, so ~20 warps per SM keep the HBM busy. Same packing, unpacking (``unpack.py``),
epilogues and bad-id handling as the dot kernels.

GEMM2 comes in two forms (``ops.Config.gemm2``): ``"expert"`` (``gemv2_kernel``: a program per (pair, row tile),
the token's k pairs summed in pair order by the tile's last program) and ``"token"`` (``gemv_token_kernel``: a
program per (token, row tile) walking its k experts' K steps as one loop, so loads of several experts are in
flight together; GEMM1 then writes its output already times the router weight and GEMM2's NvFP4 factor, in
float32, or in the layer dtype with ``pairs``). ``PDL``: programmatic dependent launch (Hopper on): GEMM1 lets
GEMM2 launch at once and GEMM2 waits for GEMM1's results (``griddepcontrol.wait``) only where it reads them, so its
start overlaps GEMM1's tail."""

from __future__ import annotations

import triton
import triton.language as tl

from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .kernels import FMT_NVFP4, _activation, _arrive, _expert_ptrs, _row_tile, _trap_if
from .steps import _gemv_acc, _gemv_step, _pairs_dtype, _step_entries, _step_from, _w_tile, _with_entries


@triton.jit
def _lane(v, j, BM: tl.constexpr):
    """Element ``j`` of the ``[BM]`` vector ``v`` as a scalar (0 for ``j`` outside it)."""
    return tl.sum(tl.where(tl.arange(0, BM) == j, v, 0), 0)


@triton.jit
def _gemv_gate_up(acc_g, acc_u, x_ptr, live, w_ptr_e, s_wn, g_rows, u_rows, s_ptr_e, z_ptr_e, s_sn, k0, klen,
                  FMT: tl.constexpr, GATED: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr, BR: tl.constexpr,
                  BK: tl.constexpr, ASM: tl.constexpr, MASKED: tl.constexpr, PAIRS: tl.constexpr):
    """One K step of the gate rows and (GATED) the up rows."""
    acc_g = _gemv_step(acc_g, x_ptr, live, w_ptr_e, s_wn, g_rows, s_ptr_e, z_ptr_e, s_sn, k0, klen, FMT, HAS_ZP, GROUP,
                       BR, BK, ASM, MASKED, PAIRS)
    if GATED:
        acc_u = _gemv_step(acc_u, x_ptr, live, w_ptr_e, s_wn, u_rows, s_ptr_e, z_ptr_e, s_sn, k0, klen, FMT, HAS_ZP,
                           GROUP, BR, BK, ASM, MASKED, PAIRS)
    return acc_g, acc_u


@triton.jit
def _gemv_paired(acc_g, acc_u, x_ptr, step, full, w_ptr_e, s_wn, g_rows, u_rows, s_ptr_e, z_ptr_e, s_sn,
                 FMT: tl.constexpr, GATED: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr, BR: tl.constexpr,
                 BK: tl.constexpr, ASM: tl.constexpr, UNROLL: tl.constexpr, LAST: tl.constexpr):
    """UNROLL whole K steps from ``step``, their products chained in 16-bit pairs (``_madd``), then added to the
    float32 sums. LAST: steps at or past ``full`` are predicated off and address the last whole step (their
    scale loads, unmasked, stay inside the tensor)."""
    DT: tl.constexpr = _pairs_dtype(w_ptr_e, s_ptr_e, FMT, ASM).dtype
    h_g = _gemv_acc(FMT, BR, BK, DT)
    h_u = _gemv_acc(FMT, BR, BK, DT)
    for j in tl.static_range(UNROLL):
        if LAST:
            live = step + j < full
            k0 = tl.minimum(step + j, full - 1) * BK
        else:
            live = True
            k0 = (step + j) * BK
        h_g, h_u = _gemv_gate_up(h_g, h_u, x_ptr, live, w_ptr_e, s_wn, g_rows, u_rows, s_ptr_e, z_ptr_e, s_sn, k0, BK,
                                 FMT, GATED, HAS_ZP, GROUP, BR, BK, ASM, False, True)
    return acc_g + h_g.to(tl.float32), acc_u + h_u.to(tl.float32)


@triton.jit
def _whole_loads(w_ptr_e, s_ptr_e, z_ptr_e, s_wn, s_sn, g_rows, u_rows, K, FMT: tl.constexpr, GATED: tl.constexpr,
                 HAS_ZP: tl.constexpr, GROUP: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, TAIL: tl.constexpr,
                 STEPS: tl.constexpr):
    """What the whole K of the gate rows and (GATED) the up rows reads of the weights, issued at once (Triton
    tuples): ``(gate steps, up steps, tails)``, each step's weights and scale entries (``_step_entries``); tails
    (TAIL) the partial last step's weights of both row sets (its per-element scales load at use: preloaded, they
    took twice the registers). Nothing here reads the activations, so GEMM2 issues it before its PDL wait."""
    lg = ()
    lu = ()
    for j in tl.static_range(STEPS):
        lg = lg + (_step_entries(w_ptr_e, s_ptr_e, z_ptr_e, s_wn, s_sn, g_rows, j * BK, BK, FMT, HAS_ZP,  # type: ignore[assignment]
                                 GROUP, BR, BK, False),)
        if GATED:
            lu = lu + (_step_entries(w_ptr_e, s_ptr_e, z_ptr_e, s_wn, s_sn, u_rows, j * BK, BK, FMT,  # type: ignore[assignment]
                                     HAS_ZP, GROUP, BR, BK, False),)
    tails = ()
    if TAIL:
        tlen = K - STEPS * BK
        tg = _w_tile(True, w_ptr_e, s_wn, g_rows, STEPS * BK, tlen, FMT, BR, BK, True)
        tu = tg
        if GATED:
            tu = _w_tile(True, w_ptr_e, s_wn, u_rows, STEPS * BK, tlen, FMT, BR, BK, True)
        tails = (tg, tu)  # type: ignore[assignment]
    return lg, lu, tails


@triton.jit
def _whole_products(acc_g, acc_u, loads, x_ptr, w_ptr_e, s_ptr_e, z_ptr_e, g_rows, u_rows, s_sn, K,
                    FMT: tl.constexpr, GATED: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr, BR: tl.constexpr,
                    BK: tl.constexpr, ASM: tl.constexpr, TAIL: tl.constexpr, UNROLL: tl.constexpr, PAIRS: tl.constexpr,
                    STEPS: tl.constexpr):
    """``acc_g`` / ``acc_u`` plus the products of ``_whole_loads``' ``loads`` with the activation row at ``x_ptr``,
    as straight-line code: each UNROLL whole steps' products chained (PAIRS: in 16-bit pairs) and added to the
    float32 sums, then the partial step in float32 (``w_ptr_e``: the weights' dtype, for PAIRS)."""
    DT: tl.constexpr = _pairs_dtype(w_ptr_e, s_ptr_e, FMT, ASM).dtype if PAIRS else tl.float32
    lg, lu, tails = loads
    for s0 in tl.static_range(0, STEPS, UNROLL):
        h_g = _gemv_acc(FMT, BR, BK, DT)
        h_u = _gemv_acc(FMT, BR, BK, DT)
        for j in tl.static_range(UNROLL):
            if s0 + j < STEPS:
                h_g = _step_from(h_g, lg[s0 + j], x_ptr, s_ptr_e, (s0 + j) * BK, BK, FMT, HAS_ZP, GROUP, BR, BK, ASM,
                                 False, PAIRS)
                if GATED:
                    h_u = _step_from(h_u, lu[s0 + j], x_ptr, s_ptr_e, (s0 + j) * BK, BK, FMT, HAS_ZP, GROUP, BR, BK,
                                     ASM, False, PAIRS)
        acc_g += h_g.to(tl.float32)
        acc_u += h_u.to(tl.float32)
    if TAIL:
        k0 = STEPS * BK
        tlen = K - k0
        acc_g = _step_from(acc_g, _with_entries(tails[0], s_ptr_e, z_ptr_e, g_rows, s_sn, k0, tlen, FMT, HAS_ZP, GROUP,
                                                BK, True), x_ptr, s_ptr_e, k0, tlen, FMT, HAS_ZP, GROUP, BR, BK, ASM, True,
                           False)
        if GATED:
            acc_u = _step_from(acc_u, _with_entries(tails[1], s_ptr_e, z_ptr_e, u_rows, s_sn, k0, tlen, FMT, HAS_ZP,
                                                    GROUP, BK, True), x_ptr, s_ptr_e, k0, tlen, FMT, HAS_ZP, GROUP, BR,
                               BK, ASM, True, False)
    return acc_g, acc_u


@triton.jit
def _gemv_rows(x_ptr, w_ptr_e, s_wn, g_rows, u_rows, s_ptr_e, z_ptr_e, s_sn, K, FMT: tl.constexpr,
               GATED: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr,
               ASM: tl.constexpr, TAIL: tl.constexpr, UNROLL: tl.constexpr, PAIRS: tl.constexpr,
               STEPS: tl.constexpr = 0):
    """``([BR], [BR])`` float32: weight rows ``g_rows`` and (GATED) ``u_rows``, all K, times the activation
    row at ``x_ptr``. Both row sets advance in the same loop and ``UNROLL`` steps per iteration, so that
    their weight loads are in flight together (at T = 1 too few warps are resident to cover the HBM's
    latency with one step's loads each); whole steps unmasked, then the partial last one. PAIRS: each
    iteration's products chained in 16-bit pairs (``_gemv_paired``), every whole step among them: the remaining
    ones run as one more iteration with the steps past the end predicated off (else up to UNROLL - 1 steps would
    take the float32 path: 3 of GEMM1's 11 at Gemma 4, all of a K of 3 steps). STEPS > 0 (``Config.whole``,
    K // BK known at compile time): ``_whole_loads`` then ``_whole_products``, with no loop."""
    acc_g = _gemv_acc(FMT, BR, BK)
    acc_u = _gemv_acc(FMT, BR, BK)
    if STEPS > 0:  # the tail included
        loads = _whole_loads(w_ptr_e, s_ptr_e, z_ptr_e, s_wn, s_sn, g_rows, u_rows, K, FMT, GATED, HAS_ZP, GROUP, BR, BK,
                             TAIL, STEPS)
        acc_g, acc_u = _whole_products(acc_g, acc_u, loads, x_ptr, w_ptr_e, s_ptr_e, z_ptr_e, g_rows, u_rows, s_sn, K,
                                       FMT, GATED, HAS_ZP, GROUP, BR, BK, ASM, TAIL, UNROLL, PAIRS, STEPS)
    else:
        full = K // BK
        if PAIRS:
            whole = full - full % UNROLL
            for step in range(0, whole, UNROLL):
                acc_g, acc_u = _gemv_paired(acc_g, acc_u, x_ptr, step, full, w_ptr_e, s_wn, g_rows, u_rows, s_ptr_e,
                                            z_ptr_e, s_sn, FMT, GATED, HAS_ZP, GROUP, BR, BK, ASM, UNROLL, False)
            if whole < full:  # the remaining steps as one more iteration, the ones past the end predicated off
                acc_g, acc_u = _gemv_paired(acc_g, acc_u, x_ptr, whole, full, w_ptr_e, s_wn, g_rows, u_rows, s_ptr_e,
                                            z_ptr_e, s_sn, FMT, GATED, HAS_ZP, GROUP, BR, BK, ASM, UNROLL, True)
        else:
            for step in range(0, full - full % UNROLL, UNROLL):
                for j in tl.static_range(UNROLL):
                    acc_g, acc_u = _gemv_gate_up(acc_g, acc_u, x_ptr, True, w_ptr_e, s_wn, g_rows, u_rows, s_ptr_e,
                                                 z_ptr_e, s_sn, (step + j) * BK, BK, FMT, GATED, HAS_ZP, GROUP, BR, BK, ASM,
                                                 False, False)
            for step in range(full - full % UNROLL, full):
                acc_g, acc_u = _gemv_gate_up(acc_g, acc_u, x_ptr, True, w_ptr_e, s_wn, g_rows, u_rows, s_ptr_e, z_ptr_e,
                                             s_sn, step * BK, BK, FMT, GATED, HAS_ZP, GROUP, BR, BK, ASM, False, False)
        if TAIL:
            acc_g, acc_u = _gemv_gate_up(acc_g, acc_u, x_ptr, True, w_ptr_e, s_wn, g_rows, u_rows, s_ptr_e, z_ptr_e, s_sn,
                                         full * BK, K - full * BK, FMT, GATED, HAS_ZP, GROUP, BR, BK, ASM, True, False)
    return tl.sum(acc_g, 1), tl.sum(acc_u, 1)


@triton.jit
def gemv1_kernel(
    a_ptr, ids_ptr, tw_ptr, w_ptr, s_ptr, z_ptr, gsc_ptr, gsc2_ptr, bias_ptr, c_ptr, ok_ptr,
    E, N_OUT, K, TOPK,
    s_am, s_we, s_wn, s_se, s_sn, s_cm, s_be,
    row_stride, up_offset, act, alpha, limit, up_add,
    FMT: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr,
    ROUTED_ON_INPUT: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, ASM: tl.constexpr, TAIL: tl.constexpr,
    UNROLL: tl.constexpr, TOKEN2: tl.constexpr, SCALE2: tl.constexpr, PDL: tl.constexpr, PAIRS: tl.constexpr,
    STEPS: tl.constexpr = 0,
):
    """GEMM1 as GEMVs: program (pair, tile of BR rows) writes ``c[pair, tile] = act(W13[e] x_t)`` (gate rows
    ``n * row_stride``, up rows ``+ up_offset``) in c's dtype: the layer dtype, or (TOKEN2, for GEMM2 per token)
    float32 already times the pair's router weight (unless it scaled the input) and, SCALE2, GEMM2's NvFP4
    factor of expert e (``gsc2``), so that GEMM2 sums plain products. An id outside [0, E) clears ``ok`` (and
    stops the kernel on the GPU, as the dot kernels do); its row is not written."""
    if PDL:
        gdc_launch_dependents()  # GEMM2 may launch now; it waits for this grid before reading c
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N_OUT, BR)
    pair = pid // n_tiles
    expert = tl.load(ids_ptr + pair).to(tl.int32)
    if (expert < 0) | (expert >= E):
        tl.store(ok_ptr, 0)
        if ASM:
            _trap_if(tl.full([1], 1, tl.int32))
        return
    offs_n = pid % n_tiles * BR + tl.arange(0, BR)  # the row tile after the id check (measured this way)
    n_ok = offs_n < N_OUT
    g_rows = tl.where(n_ok, offs_n, 0) * row_stride
    u_rows = g_rows + up_offset
    e64, w_ptr_e, s_ptr_e, z_ptr_e = _expert_ptrs(expert, w_ptr, s_ptr, z_ptr, s_we, s_se)
    x_ptr = a_ptr + (pair // TOPK).to(tl.int64) * s_am
    g, u = _gemv_rows(x_ptr, w_ptr_e, s_wn, g_rows, u_rows, s_ptr_e, z_ptr_e, s_sn, K, FMT, GATED, HAS_ZP, GROUP, BR,
                      BK, ASM, TAIL, UNROLL, PAIRS, STEPS)
    _gemm1_out(g, u, pair, n_ok, e64, tw_ptr, gsc_ptr, gsc2_ptr, bias_ptr, s_be, g_rows, u_rows, c_ptr, s_cm, offs_n,
               act, alpha, limit, up_add, FMT, GATED, HAS_BIAS, ROUTED_ON_INPUT, TOKEN2, SCALE2)


@triton.jit
def _gemm1_out(g, u, pair, ok, e64, tw_ptr, gsc_ptr, gsc2_ptr, bias_ptr, s_be, g_rows, u_rows, c_ptr, s_cm, offs_n,
               act, alpha, limit, up_add, FMT: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr,
               ROUTED_ON_INPUT: tl.constexpr, TOKEN2: tl.constexpr, SCALE2: tl.constexpr):
    """GEMM1's epilogue for one pair's rows: NvFP4 factor, router weight on the input, biases, activation,
    (TOKEN2) the router weight and GEMM2's NvFP4 factor; stored where ``ok``."""
    if FMT == FMT_NVFP4:
        gsc = tl.load(gsc_ptr + e64)
        g = g * gsc
        u = u * gsc
    if ROUTED_ON_INPUT:  # (w x) W^T = w (x W^T)
        tw = tl.load(tw_ptr + pair)
        g = g * tw
        u = u * tw
    if HAS_BIAS:
        g += tl.load(bias_ptr + e64 * s_be + g_rows)
        if GATED:
            u += tl.load(bias_ptr + e64 * s_be + u_rows)
    out = _activation(g, u, act, alpha, limit, up_add, GATED)
    if TOKEN2:
        if not ROUTED_ON_INPUT:
            out = out * tl.load(tw_ptr + pair)
        if SCALE2:
            out = out * tl.load(gsc2_ptr + e64)
    tl.store(c_ptr + pair.to(tl.int64) * s_cm + offs_n, out.to(c_ptr.dtype.element_ty), mask=ok)


@triton.jit
def gemv2_kernel(
    a_ptr, ids_ptr, tw_ptr, w_ptr, s_ptr, z_ptr, gsc_ptr, bias_ptr, c_ptr, ws_ptr, cnt_ptr,
    P, E, N_OUT, K, TOPK,
    s_am, s_we, s_wn, s_se, s_sn, s_cm, s_be,
    FMT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr,
    ROUTED_ON_INPUT: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, ASM: tl.constexpr, TAIL: tl.constexpr,
    UNROLL: tl.constexpr, BT: tl.constexpr, PDL: tl.constexpr, PAIRS: tl.constexpr, STEPS: tl.constexpr = 0,
):
    """GEMM2 as GEMVs: program (pair, tile of BR rows) stores ``w * (W2[e] a_pair + b)`` (float32) into
    ``ws [P, N_OUT]``; the tile's last program to arrive (``cnt_ptr``, one counter per tile, 0 on entry and
    left 0) writes ``c[t, tile]`` = the sum over the token's k pairs in pair order, in the layer dtype: no
    atomics on data, no cast launch, the same bits at every run. Ids outside [0, E) add nothing (GEMM1
    flagged them)."""
    pair, offs_n, n_ok, n_safe = _row_tile(N_OUT, BR)
    tile = tl.program_id(0) % tl.cdiv(N_OUT, BR)
    expert = tl.load(ids_ptr + pair).to(tl.int32)
    y = tl.zeros((BR,), dtype=tl.float32)
    if STEPS > 0:  # whole K: the weights do not depend on GEMM1, so they are in flight before the PDL wait
        e_any = tl.where((expert >= 0) & (expert < E), expert, 0).to(tl.int64)  # a bad id reads expert 0, unused
        w_e = w_ptr + e_any * s_we
        s_e = s_ptr + e_any * s_se
        z_e = z_ptr + e_any * s_se
        loads = _whole_loads(w_e, s_e, z_e, s_wn, s_sn, n_safe, n_safe, K, FMT, False, HAS_ZP, GROUP, BR, BK, TAIL,
                             STEPS)
    if PDL:
        gdc_wait()  # GEMM1's output (and the counters' last reset) visible from here
    if (expert >= 0) & (expert < E):
        e64 = expert.to(tl.int64)  # the pointers inline, not _expert_ptrs: this order compiles as verified
        if STEPS > 0:
            acc = _gemv_acc(FMT, BR, BK)
            acc, _ = _whole_products(acc, acc, loads, a_ptr + pair.to(tl.int64) * s_am, w_e, s_e, z_e, n_safe, n_safe,
                                     s_sn, K, FMT, False, HAS_ZP, GROUP, BR, BK, ASM, TAIL, UNROLL, PAIRS, STEPS)
            y = tl.sum(acc, 1)
        else:
            y, _ = _gemv_rows(a_ptr + pair.to(tl.int64) * s_am, w_ptr + e64 * s_we, s_wn, n_safe, n_safe,
                              s_ptr + e64 * s_se, z_ptr + e64 * s_se, s_sn, K, FMT, False, HAS_ZP, GROUP, BR, BK, ASM,
                              TAIL, UNROLL, PAIRS, STEPS)
        if FMT == FMT_NVFP4:
            y = y * tl.load(gsc_ptr + e64)
        if HAS_BIAS:
            y += tl.load(bias_ptr + e64 * s_be + n_safe)
        if not ROUTED_ON_INPUT:
            y = y * tl.load(tw_ptr + pair)
    tl.store(ws_ptr + pair.to(tl.int64) * N_OUT + offs_n, y, mask=n_ok)
    cnt = cnt_ptr + tile
    if _arrive(cnt, P - 1):
        T = P // TOPK
        for t0 in range(0, T, BT):
            tokens = t0 + tl.arange(0, BT)
            t_ok = tokens < T
            keep = n_ok[:, None] & t_ok[None, :]
            acc = tl.zeros((BR, BT), dtype=tl.float32)
            for j in range(0, TOPK):
                ws = ws_ptr + (tokens * TOPK + j)[None, :].to(tl.int64) * N_OUT + offs_n[:, None]
                acc += tl.load(ws, mask=keep, other=0.0, cache_modifier=".cg")
            tl.store(c_ptr + tokens[None, :].to(tl.int64) * s_cm + offs_n[:, None], acc.to(c_ptr.dtype.element_ty),
                     mask=keep)
        tl.atomic_xchg(cnt, 0, sem="relaxed", scope="gpu")


@triton.jit
def gemv_token_kernel(
    a_ptr, ids_ptr, tw_ptr, w_ptr, s_ptr, z_ptr, bias_ptr, c_ptr,
    E, N_OUT, K,
    s_am, s_we, s_wn, s_se, s_sn, s_cm, s_be,
    FMT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr,
    ROUTED_ON_INPUT: tl.constexpr, TOPK: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, ASM: tl.constexpr,
    TAIL: tl.constexpr, UNROLL: tl.constexpr, PDL: tl.constexpr, PAIRS: tl.constexpr,
):
    """GEMM2 per token: program (token t, tile of BR rows) writes ``c[t, tile] = sum_j W2[e_j] a_(t k + j)``
    (+ the router-weighted biases) in the layer dtype, ``a`` being GEMM1's output (float32, or with PAIRS the layer
    dtype; router weight and NvFP4 factor applied there, TOKEN2). The token's k experts x K steps run as one loop,
    UNROLL steps per iteration, so that loads of several experts are in flight together; then the partial last
    steps. One accumulator, written once: no partial sums, no counters, no atomics. Experts with ids outside
    [0, E) add nothing (GEMM1 flagged them)."""
    KP: tl.constexpr = triton.next_power_of_2(TOPK)
    t, offs_n, n_ok, rows = _row_tile(N_OUT, BR)
    slots = tl.arange(0, KP)
    eids = tl.load(ids_ptr + t * TOPK + slots, mask=slots < TOPK, other=-1).to(tl.int32)
    eids = tl.where((eids >= 0) & (eids < E), eids, -1)  # -1: adds nothing
    if PDL:
        gdc_wait()  # GEMM1's output visible from here
    acc = _gemv_acc(FMT, BR, BK)
    full = K // BK
    n = TOPK * full
    DT: tl.constexpr = _pairs_dtype(w_ptr, s_ptr, FMT, ASM).dtype if PAIRS else tl.float32
    for c in range(0, n, UNROLL):
        h = _gemv_acc(FMT, BR, BK, DT)
        for u in tl.static_range(UNROLL):
            it = c + u
            j = it // full
            e = _lane(eids, j, KP) - (j >= TOPK).to(tl.int32)  # -1 past the last expert
            _, w_ptr_e, s_ptr_e, z_ptr_e = _expert_ptrs(tl.maximum(e, 0), w_ptr, s_ptr, z_ptr, s_we, s_se)
            h = _gemv_step(h, a_ptr + (t * TOPK + j).to(tl.int64) * s_am, (it < n) & (e >= 0), w_ptr_e, s_wn, rows,
                           s_ptr_e, z_ptr_e, s_sn, (it - j * full) * BK, BK, FMT, HAS_ZP, GROUP, BR, BK, ASM, False,
                           PAIRS)
        acc += h.to(tl.float32)
    if TAIL:
        for j in tl.static_range(TOPK):
            e = _lane(eids, j, KP)
            _, w_ptr_e, s_ptr_e, z_ptr_e = _expert_ptrs(tl.maximum(e, 0), w_ptr, s_ptr, z_ptr, s_we, s_se)
            acc = _gemv_step(acc, a_ptr + (t * TOPK + j).to(tl.int64) * s_am, e >= 0, w_ptr_e, s_wn, rows, s_ptr_e,
                             z_ptr_e, s_sn, full * BK, K - full * BK, FMT, HAS_ZP, GROUP, BR, BK, ASM, True, False)
    y = tl.sum(acc, 1)
    if HAS_BIAS:
        for j in tl.static_range(TOPK):
            e = _lane(eids, j, KP)
            b = tl.load(bias_ptr + tl.maximum(e, 0).to(tl.int64) * s_be + rows)
            if not ROUTED_ON_INPUT:
                b = b * tl.load(tw_ptr + t * TOPK + j)
            y += tl.where(e >= 0, b, 0.0)
    tl.store(c_ptr + t.to(tl.int64) * s_cm + offs_n, y.to(c_ptr.dtype.element_ty), mask=n_ok)
