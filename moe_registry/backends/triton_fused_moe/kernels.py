"""The Triton kernels of the ``triton-fused-moe`` backend (written for this project).

The design is the one vLLM's ``fused_moe.py`` proved (vLLM 0.33.0
``model_executor/layers/fused_moe/fused_moe.py`` ``fused_moe_kernel`` and
``moe_align_block_size.py``): the ``T*k`` (token, expert) pairs are sorted into blocks of
``BLOCK_M`` rows that each belong to one expert, and each GEMM program multiplies one such block by
one tile of that expert's weight. What differs here:

- ``align_kernel`` is one Triton program (histogram, padded cumulative offsets, block -> expert
  table, scatter by per-expert atomic cursors): no host sync, no ``_moe_C`` op. Ids outside
  ``[0, E)`` are dropped (never used as an address) and clear an ``ok`` flag the adapter asserts on
  the device.
- GEMM1 keeps two accumulators (gate rows and up rows of the same output columns) and applies the
  gated activation in its epilogue, so the ``[M, 2I]`` GEMM1 output never reaches memory.
- GEMM2 multiplies by the router weight (and adds the bias) in its epilogue; the k copies of a
  token are then summed by one reduction.

Weights are read in their canonical ``[E, N, K]`` layout (K contiguous), as vLLM's kernel reads them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import codes

# Jitted code reads globals only as constexpr.
ACT_NONE = tl.constexpr(codes.ACT_NONE)
ACT_SILU = tl.constexpr(codes.ACT_SILU)
ACT_GELU = tl.constexpr(codes.ACT_GELU)
ACT_GELU_TANH = tl.constexpr(codes.ACT_GELU_TANH)
ACT_SWIGLUOAI = tl.constexpr(codes.ACT_SWIGLUOAI)
ACT_RELU2 = tl.constexpr(codes.ACT_RELU2)
ACT_SILU_NO_MUL = tl.constexpr(codes.ACT_SILU_NO_MUL)
ACT_GELU_NO_MUL = tl.constexpr(codes.ACT_GELU_NO_MUL)
ACT_GELU_TANH_NO_MUL = tl.constexpr(codes.ACT_GELU_TANH_NO_MUL)
QUANT_NONE = tl.constexpr(codes.QUANT_NONE)
QUANT_FP8_TENSOR = tl.constexpr(codes.QUANT_FP8_TENSOR)
QUANT_FP8_BLOCK = tl.constexpr(codes.QUANT_FP8_BLOCK)


@triton.jit
def align_kernel(ids_ptr, sorted_ptr, block_expert_ptr, total_ptr, cursor_ptr, ok_ptr,
                 M, E, sorted_len, max_blocks,
                 BLOCK_M: tl.constexpr, E_P2: tl.constexpr, CHUNK: tl.constexpr, BCHUNK: tl.constexpr):
    """One program. ``ids [M]`` (flattened topk_ids) -> ``sorted [sorted_len]`` pair indices grouped
    by expert, each expert's group padded to a multiple of BLOCK_M with the sentinel M;
    ``block_expert [max_blocks]`` the expert of each block (-1 past the end); ``total`` the padded
    length actually used; ``ok`` set to 0 when an id is outside ``[0, E)`` (never set back to 1)."""
    # Sentinel everywhere first: padding rows of every group stay M.
    for start in range(0, sorted_len, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        tl.store(sorted_ptr + offs, tl.full([CHUNK], 0, tl.int32) + M, mask=offs < sorted_len)
    # Histogram of the valid ids.
    counts = tl.zeros([E_P2], dtype=tl.int32)
    bad = tl.zeros([CHUNK], dtype=tl.int32)
    for start in range(0, M, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        m = offs < M
        e = tl.load(ids_ptr + offs, mask=m, other=0).to(tl.int32)
        valid = m & (e >= 0) & (e < E)
        bad += (m & ~valid).to(tl.int32)
        counts += tl.histogram(tl.where(valid, e, 0), E_P2, mask=valid).to(tl.int32)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    cum = tl.cumsum(padded, axis=0)  # end of each expert's group
    start_of = cum - padded
    tl.store(total_ptr, tl.sum(padded, axis=0))
    tl.store(cursor_ptr + tl.arange(0, E_P2), start_of)
    # block b covers rows [b*BLOCK_M, (b+1)*BLOCK_M): its expert is the number of groups ending at or before it.
    for b0 in range(0, max_blocks, BCHUNK):
        b = b0 + tl.arange(0, BCHUNK)
        row = b * BLOCK_M
        ex = tl.sum((cum[None, :] <= row[:, None]).to(tl.int32), axis=1)
        ex = tl.where(ex < E, ex, -1)
        tl.store(block_expert_ptr + b, ex, mask=b < max_blocks)
    tl.debug_barrier()  # the cursors above are visible to every thread before the atomics below
    for start in range(0, M, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        m = offs < M
        e = tl.load(ids_ptr + offs, mask=m, other=0).to(tl.int32)
        valid = m & (e >= 0) & (e < E)
        pos = tl.atomic_add(cursor_ptr + tl.where(valid, e, 0), 1, mask=valid)
        tl.store(sorted_ptr + pos, offs, mask=valid)
    if tl.sum(bad, axis=0) > 0:  # sticky: the flag is only ever cleared
        tl.store(ok_ptr, 0)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _activate(g, ACT: tl.constexpr):
    """The non-multiplied part of an activation, float32 in and out."""
    if ACT == ACT_SILU or ACT == ACT_SILU_NO_MUL:
        r = g * _sigmoid(g)
    elif ACT == ACT_GELU or ACT == ACT_GELU_NO_MUL:
        r = 0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476))
    elif ACT == ACT_GELU_TANH or ACT == ACT_GELU_TANH_NO_MUL:
        inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        r = 0.5 * g * (1.0 + (2.0 * _sigmoid(2.0 * inner) - 1.0))  # tanh(u) = 2 sigmoid(2u) - 1
    elif ACT == ACT_RELU2:
        r = tl.maximum(g, 0.0)
        r = r * r
    else:
        r = g
    return r


@triton.jit
def moe_gemm_kernel(
    a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, bias_ptr, topk_w_ptr,
    sorted_ptr, block_expert_ptr, total_ptr, ok_ptr,
    N_OUT, K, num_pairs, num_m_blocks, num_experts,
    stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk, stride_biase,
    row_stride, up_offset, alpha, limit, up_add,
    A_ROW_DIV: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr, HAS_LIMIT: tl.constexpr,
    MUL_ROUTED: tl.constexpr, ROUTED_ON_INPUT: tl.constexpr, HAS_BIAS: tl.constexpr, QUANT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SCALE_BLOCK: tl.constexpr, DOT_F32: tl.constexpr, SWAP_AB: tl.constexpr, NAIVE: tl.constexpr,
    FLAG_BAD: tl.constexpr,
):
    """``C[pair, n] = epilogue(sum_k A[row(pair), k] * B[expert, wrow(n), k])`` for the pairs of one
    BLOCK_M block and BLOCK_N output columns.

    GEMM1: A = hidden states (``row = pair // top_k`` via A_ROW_DIV), gated: ``wrow = n * row_stride``
    (gate) and ``+ up_offset`` (up), output ``act(gate) * up`` (or ``act(h)``) per pair.
    GEMM2: A = the activated intermediate (``row = pair``), output times the router weight.
    ``DOT_F32`` (the interpreter only) multiplies in float32.
    """
    pid = tl.program_id(0)
    num_n = tl.cdiv(N_OUT, BLOCK_N)
    in_group = GROUP_M * num_n
    group = pid // in_group
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m_blocks - first_m, GROUP_M)
    pid_m = first_m + ((pid % in_group) % size_m)
    pid_n = (pid % in_group) // size_m

    if NAIVE:
        # Few pairs (T*k*4 <= E, vLLM's naive block assignment): block m is pair m alone, its expert read
        # straight from topk_ids; no alignment pass. Only row 0 of the block is real.
        offs_pair_idx = tl.arange(0, BLOCK_M).to(tl.int64)
        pairs = pid_m + offs_pair_idx * 0
        pair_mask = (offs_pair_idx == 0) & (pairs < num_pairs)
        expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
        if (expert < 0) | (expert >= num_experts):
            if FLAG_BAD:
                tl.store(ok_ptr, 0)
            return
    else:
        total = tl.load(total_ptr)
        if pid_m * BLOCK_M >= total:
            return
        offs_pair_idx = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        pairs = tl.load(sorted_ptr + offs_pair_idx).to(tl.int64)
        pair_mask = pairs < num_pairs
        expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
        if expert < 0:
            return
    rows = pairs // A_ROW_DIV

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    n_mask = offs_n < N_OUT
    offs_n_safe = offs_n % N_OUT  # in-bounds addresses for the masked tail (its result is not stored)
    g_rows = offs_n_safe * row_stride
    u_rows = g_rows + up_offset
    offs_k = tl.arange(0, BLOCK_K)

    # SWAP_AB (Hopper, BLOCK_M < 64): compute the transposed tile B A^T so that the weight's BLOCK_N
    # rows fill the MMA's M side (wgmma needs 64) while few tokens sit on its N side (vLLM's swap-AB).
    if SWAP_AB:
        a_ptrs = a_ptr + rows[None, :] * stride_am + offs_k[:, None] * stride_ak  # [BK, BM]
        b_base = b_ptr + expert * stride_be + offs_k[None, :] * stride_bk
        bg_ptrs = b_base + g_rows[:, None] * stride_bn  # [BN, BK]
        bu_ptrs = b_base + u_rows[:, None] * stride_bn
        acc_g = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak  # [BM, BK]
        b_base = b_ptr + expert * stride_be + offs_k[:, None] * stride_bk
        bg_ptrs = b_base + g_rows[None, :] * stride_bn  # [BK, BN]
        bu_ptrs = b_base + u_rows[None, :] * stride_bn
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if QUANT == QUANT_FP8_BLOCK:
        as_ptrs = a_scale_ptr + rows * stride_asm
        bs_base = b_scale_ptr + expert * stride_bse
        bsg_ptrs = bs_base + (g_rows // SCALE_BLOCK) * stride_bsn
        bsu_ptrs = bs_base + (u_rows // SCALE_BLOCK) * stride_bsn

    for kk in range(0, tl.cdiv(K, BLOCK_K)):
        k_mask = offs_k < K - kk * BLOCK_K
        if SWAP_AB:
            a = tl.load(a_ptrs, mask=k_mask[:, None] & pair_mask[None, :], other=0.0)
            bg = tl.load(bg_ptrs, mask=k_mask[None, :], other=0.0)
            bu = bg
            if GATED:
                bu = tl.load(bu_ptrs, mask=k_mask[None, :], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=pair_mask[:, None] & k_mask[None, :], other=0.0)
            bg = tl.load(bg_ptrs, mask=k_mask[:, None], other=0.0)
            bu = bg
            if GATED:
                bu = tl.load(bu_ptrs, mask=k_mask[:, None], other=0.0)
        if DOT_F32:  # Triton's CPU interpreter multiplies bf16 / e4m3 bits as integers: widen first
            a = a.to(tl.float32)
            bg = bg.to(tl.float32)
            bu = bu.to(tl.float32)
        if QUANT == QUANT_FP8_BLOCK:
            ks = (kk * BLOCK_K) // SCALE_BLOCK
            a_s = tl.load(as_ptrs + ks * stride_ask, mask=pair_mask, other=0.0)
            bs_g = tl.load(bsg_ptrs + ks * stride_bsk)
            if SWAP_AB:
                acc_g += tl.dot(bg, a) * bs_g[:, None] * a_s[None, :]
            else:
                acc_g += tl.dot(a, bg) * a_s[:, None] * bs_g[None, :]
            if GATED:
                bs_u = tl.load(bsu_ptrs + ks * stride_bsk)
                if SWAP_AB:
                    acc_u += tl.dot(bu, a) * bs_u[:, None] * a_s[None, :]
                else:
                    acc_u += tl.dot(a, bu) * a_s[:, None] * bs_u[None, :]
        elif SWAP_AB:
            acc_g = tl.dot(bg, a, acc=acc_g)
            if GATED:
                acc_u = tl.dot(bu, a, acc=acc_u)
        else:
            acc_g = tl.dot(a, bg, acc=acc_g)
            if GATED:
                acc_u = tl.dot(a, bu, acc=acc_u)
        a_ptrs += BLOCK_K * stride_ak
        bg_ptrs += BLOCK_K * stride_bk
        bu_ptrs += BLOCK_K * stride_bk
    if SWAP_AB:
        acc_g = tl.trans(acc_g)
        acc_u = tl.trans(acc_u)

    if QUANT == QUANT_FP8_TENSOR:
        scale = tl.load(a_scale_ptr) * tl.load(b_scale_ptr + expert * stride_bse)
        acc_g = acc_g * scale
        if GATED:
            acc_u = acc_u * scale
    if ROUTED_ON_INPUT:  # (w x) W^T = w (x W^T): the router weight scales GEMM1's rows
        w_in = tl.load(topk_w_ptr + pairs, mask=pair_mask, other=0.0)
        acc_g = acc_g * w_in[:, None]
        if GATED:
            acc_u = acc_u * w_in[:, None]
    if HAS_BIAS:
        bias_base = bias_ptr + expert * stride_biase
        acc_g += tl.load(bias_base + g_rows)[None, :]
        if GATED:
            acc_u += tl.load(bias_base + u_rows)[None, :]

    if ACT == ACT_SWIGLUOAI:
        g = acc_g
        u = acc_u
        if HAS_LIMIT:
            g = tl.minimum(g, limit)
            u = tl.minimum(tl.maximum(u, -limit), limit)
        out = (u + up_add) * (g * _sigmoid(alpha * g))
    elif GATED:
        out = _activate(acc_g, ACT) * acc_u
    else:
        out = _activate(acc_g, ACT)
    if MUL_ROUTED:
        w = tl.load(topk_w_ptr + pairs, mask=pair_mask, other=0.0)
        out = out * w[:, None]

    c_ptrs = c_ptr + pairs[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=pair_mask[:, None] & n_mask[None, :])


@triton.jit
def quant_fp8_group_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, stride_sm,
                           GROUP: tl.constexpr):
    """Dynamic 1x128 activation quantization: one program per (row, group) of ``x [rows, K]``;
    ``s = max(amax / 448, 1e-12)``, ``q = e4m3(clamp(x / s))`` (the recipe of the weights' tiles)."""
    row = tl.program_id(0).to(tl.int64)
    grp = tl.program_id(1)
    offs = grp * GROUP + tl.arange(0, GROUP)
    m = offs < K
    x = tl.load(x_ptr + row * stride_xm + offs, mask=m, other=0.0).to(tl.float32)
    s = tl.maximum(tl.max(tl.abs(x), axis=0) / 448.0, 1e-12)
    q = tl.minimum(tl.maximum(x / s, -448.0), 448.0)
    tl.store(q_ptr + row * stride_qm + offs, q.to(q_ptr.dtype.element_ty), mask=m)
    tl.store(s_ptr + row * stride_sm + grp, s)


@triton.jit
def quant_fp8_tensor_kernel(x_ptr, q_ptr, amax_ptr, s_ptr, n, BLOCK: tl.constexpr):
    """Dynamic per-tensor quantization with a precomputed ``amax``: ``s = max(amax / 448, 1e-12)``."""
    pid = tl.program_id(0).to(tl.int64)
    s = tl.maximum(tl.load(amax_ptr).to(tl.float32) / 448.0, 1e-12)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    q = tl.minimum(tl.maximum(x / s, -448.0), 448.0)
    tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=m)
    if pid == 0:
        tl.store(s_ptr, s)
