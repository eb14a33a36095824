"""Launch wrappers around ``kernels.py``: alignment, dynamic FP8 quantization, the two GEMMs.

Everything here is asynchronous: shapes come from tensor metadata, never from tensor values, so a
forward can be captured in a CUDA graph (the padded length used by the GEMMs is read on the
device; the grid covers the worst case and surplus programs return at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton

from . import codes as C
from . import kernels as K

FP8_DTYPE = torch.float8_e4m3fn


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclass
class Alignment:
    sorted_pairs: torch.Tensor  # int32 [max_blocks * BLOCK_M]
    block_expert: torch.Tensor  # int32 [max_blocks]
    total: torch.Tensor  # int32 [1]: padded rows in use
    ok: torch.Tensor  # int32 [1]: cleared when an id was outside [0, E)
    max_blocks: int
    block_m: int
    naive: bool = False  # block m is pair m; block_expert is the flattened topk_ids


def use_naive(num_pairs: int, num_experts: int) -> bool:
    """vLLM's rule (fused_moe.py _prepare_expert_assignment): when T*k*4 <= E nearly every pair has
    its own expert, so each pair is its own block and the alignment pass is skipped."""
    return num_pairs * 4 <= num_experts


def max_padded_rows(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Worst-case padded length: each non-empty expert (at most min(E, M)) wastes < BLOCK_M rows."""
    return num_pairs + min(num_experts, num_pairs) * (block_m - 1)


def align(topk_ids: torch.Tensor, num_experts: int, block_m: int, ok: torch.Tensor | None = None) -> Alignment:
    """Sort the flattened (token, expert) pairs into expert blocks of ``block_m`` rows (one program).
    ``ok`` (int32 [1], 1 on entry): cleared when an id is out of range (a fresh one if None)."""
    ids = topk_ids.reshape(-1)
    M = ids.numel()
    dev = ids.device
    max_blocks = triton.cdiv(max_padded_rows(M, num_experts, block_m), block_m)
    sorted_len = max_blocks * block_m
    sorted_pairs = torch.empty(sorted_len, dtype=torch.int32, device=dev)
    block_expert = torch.empty(max_blocks, dtype=torch.int32, device=dev)
    e_p2 = max(16, next_pow2(num_experts))
    scratch = torch.empty(e_p2 + 1, dtype=torch.int32, device=dev)  # cursors, total
    total = scratch[e_p2:]
    if ok is None:
        ok = torch.ones(1, dtype=torch.int32, device=dev)
    chunk = min(1024, max(32, next_pow2(M)))
    bchunk = max(1, min(64, 8192 // e_p2, next_pow2(max_blocks)))
    K.align_kernel[(1,)](ids, sorted_pairs, block_expert, total, scratch, ok, M, num_experts, sorted_len,
                         max_blocks, BLOCK_M=block_m, E_P2=e_p2, CHUNK=chunk, BCHUNK=bchunk,
                         num_warps=4 if M <= 4096 else 8)
    return Alignment(sorted_pairs, block_expert, total, ok, max_blocks, block_m)


def quant_fp8_groups(x: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [rows, K]`` -> (e4m3 ``[rows, K]``, fp32 scales ``[rows, ceil(K/group)]``), one scale per
    row and group of 128 columns (DeepSeek's 1x128 activation scales)."""
    rows, k = x.shape
    groups = triton.cdiv(k, group)
    q = torch.empty((rows, k), dtype=FP8_DTYPE, device=x.device)
    s = torch.empty((rows, groups), dtype=torch.float32, device=x.device)
    if rows:
        K.quant_fp8_group_kernel[(rows, groups)](x, q, s, k, x.stride(0), q.stride(0), s.stride(0), GROUP=group,
                                                 num_warps=1)
    return q, s


def quant_fp8_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` -> (e4m3 of the same shape, fp32 scale ``[1]``) with one dynamic scale ``amax / 448``."""
    x = x.contiguous()
    q = torch.empty_like(x, dtype=FP8_DTYPE)
    s = torch.empty(1, dtype=torch.float32, device=x.device)
    amax = torch.linalg.vector_norm(x.reshape(-1), float("inf"), dtype=torch.float32).reshape(1)
    n = x.numel()
    block = 1024
    K.quant_fp8_tensor_kernel[(max(1, triton.cdiv(n, block)),)](x, q, amax, s, n, BLOCK=block, num_warps=4)
    return q, s


@dataclass(frozen=True)
class Epilogue:
    act: int = C.ACT_NONE
    gated: bool = False
    row_stride: int = 1  # weight row of output column n (gate): n * row_stride
    up_offset: int = 0  # weight row of the up half: gate row + up_offset
    alpha: float = 1.0
    limit: float | None = None
    up_add: float = 0.0
    mul_routed: bool = False
    routed_on_input: bool = False


def epilogue_for(layer: Any, code: int) -> Epilogue:
    """GEMM1's epilogue for ``layer`` (a LayerSpec) with the activation's kernel code ``code`` (its
    declaration's ``kernel_value``). silu_clamp is swigluoai with alpha 1, no up offset, ``[gate; up]`` rows
    (``SiluClampParams``): a backend running it declares the swigluoai code for it."""
    from ...schemas.activation import Activation

    act = layer.activation
    I = layer.local_intermediate_size
    on_input = layer.apply_router_weight_on_input
    if act is Activation.SWIGLUOAI:
        p = layer.swigluoai
        assert p is not None
        return Epilogue(act=code, gated=True, row_stride=2 if p.interleaved else 1, up_offset=1 if p.interleaved else I,
                        alpha=p.alpha, limit=p.limit, up_add=p.up_offset, routed_on_input=on_input)
    if act is Activation.SILU_CLAMP:
        return Epilogue(act=code, gated=True, up_offset=I, alpha=1.0, limit=layer.silu_clamp_limit, up_add=0.0,
                        routed_on_input=on_input)
    return Epilogue(act=code, gated=act.is_gated, up_offset=I if act.is_gated else 0, routed_on_input=on_input)


def moe_gemm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, al: Alignment, topk_weights: torch.Tensor,
             num_pairs: int, n_out: int, a_row_div: int, cfg: dict[str, int], ep: Epilogue, *,
             quant: int = C.QUANT_NONE, a_scale: torch.Tensor | None = None, b_scale: torch.Tensor | None = None,
             bias: torch.Tensor | None = None, flag_bad: bool = False) -> torch.Tensor:
    """One grouped GEMM over the aligned blocks: ``a [rows, K]`` x ``b [E, N, K]`` -> ``out [pairs, n_out]``."""
    k_dim = a.shape[1]
    bm, bn = cfg["BLOCK_SIZE_M"], cfg["BLOCK_SIZE_N"]
    grid = (al.max_blocks * triton.cdiv(n_out, bn),)
    dummy = topk_weights
    num_experts = b.shape[0]
    if quant == C.QUANT_FP8_BLOCK:
        assert a_scale is not None and b_scale is not None
        sa = (a_scale.stride(0), a_scale.stride(1))
        sb = (b_scale.stride(0), b_scale.stride(1), b_scale.stride(2))
    elif quant == C.QUANT_FP8_TENSOR:
        assert a_scale is not None and b_scale is not None
        sa, sb = (0, 0), (b_scale.stride(0), 0, 0)
    else:
        sa, sb = (0, 0), (0, 0, 0)
    assert bm == al.block_m
    K.moe_gemm_kernel[grid](
        a, b, out, a_scale if a_scale is not None else dummy, b_scale if b_scale is not None else dummy,
        bias if bias is not None else dummy, topk_weights,
        al.sorted_pairs, al.block_expert, al.total, al.ok,
        n_out, k_dim, num_pairs, al.max_blocks, num_experts,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), b.stride(2), out.stride(0), out.stride(1),
        *sa, *sb, bias.stride(0) if bias is not None else 0,
        ep.row_stride, ep.up_offset, float(ep.alpha), float(ep.limit if ep.limit is not None else 0.0),
        float(ep.up_add),
        A_ROW_DIV=a_row_div, ACT=ep.act, GATED=ep.gated, HAS_LIMIT=ep.limit is not None,
        MUL_ROUTED=ep.mul_routed, ROUTED_ON_INPUT=ep.routed_on_input, HAS_BIAS=bias is not None, QUANT=quant,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_SIZE_K"], GROUP_M=cfg["GROUP_SIZE_M"], SCALE_BLOCK=128,
        DOT_F32=a.device.type == "cpu", SWAP_AB=bool(cfg.get("SWAP_AB", False)),
        NAIVE=al.naive, FLAG_BAD=flag_bad,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


def fused_experts(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, w13: Any, w2: Any,
                  num_experts: int, intermediate: int, cfg: dict[str, dict[str, int]], ep1: Epilogue, *,
                  quant: int = C.QUANT_NONE, w13_scale: torch.Tensor | None = None,
                  w2_scale: torch.Tensor | None = None, w13_bias: torch.Tensor | None = None,
                  w2_bias: torch.Tensor | None = None, routed_on_input: bool = False,
                  ok: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole forward without guards -> (``out [T, H]`` in x's dtype, ``ok`` int32 [1], 0 after an
    out-of-range id; pass a persistent ``ok`` holding 1 to skip allocating one).

    ``w13 [E, R, H]``, ``w2 [E, H, I]`` (canonical, K contiguous; e4m3 for the FP8 schemes with
    ``w*_scale`` per expert ``[E]`` or per tile ``[E, N/128, K/128]``), biases float32."""
    T, H = x.shape
    k = topk_ids.shape[1]
    M = T * k
    bm = cfg["gemm1"]["BLOCK_SIZE_M"]
    if use_naive(M, num_experts):
        if ok is None:
            ok = torch.ones(1, dtype=torch.int32, device=x.device)
        flat = topk_ids.reshape(-1)
        al = Alignment(flat, flat, ok, ok, max_blocks=M, block_m=bm, naive=True)
    else:
        al = align(topk_ids, num_experts, bm, ok)
    dtype = x.dtype
    w_flat = topk_weights.reshape(-1)

    if quant == C.QUANT_FP8_BLOCK:
        a1, a1_s = quant_fp8_groups(x)
    elif quant == C.QUANT_FP8_TENSOR:
        a1, a1_s = quant_fp8_tensor(x)
    else:
        a1, a1_s = x, None
    inter = torch.empty((M, intermediate), dtype=dtype, device=x.device)
    moe_gemm(a1, w13, inter, al, w_flat, M, intermediate, k, cfg["gemm1"], ep1, quant=quant, a_scale=a1_s,
             b_scale=w13_scale, bias=w13_bias, flag_bad=True)

    if quant == C.QUANT_FP8_BLOCK:
        a2, a2_s = quant_fp8_groups(inter)
    elif quant == C.QUANT_FP8_TENSOR:
        a2, a2_s = quant_fp8_tensor(inter)
    else:
        a2, a2_s = inter, None
    y = torch.empty((M, H), dtype=dtype, device=x.device)
    moe_gemm(a2, w2, y, al, w_flat, M, H, 1, cfg["gemm2"], Epilogue(mul_routed=not routed_on_input),
             quant=quant, a_scale=a2_s, b_scale=w2_scale, bias=w2_bias)
    out = y if k == 1 else y.view(T, k, H).sum(dim=1)  # bf16/fp16 sum accumulates in fp32
    return out, al.ok
