"""CPU tests of the ``marlin`` adapter: the pure-torch Marlin repack, scale / zero-point / bias
permutations, token alignment, config checks, the missing-op error, and the whole forward pipeline
run through a CPU stand-in of ``moe_wna16_marlin_gemm``.

The oracle for the layout is a *separate numpy transcription* of vLLM 0.33.0's Python reference
(``marlin_utils_test.py::get_weight_perm / marlin_permute_weights / marlin_weights``,
``marlin_utils.py::get_scale_perms / marlin_permute_scales / marlin_zero_points /
marlin_permute_bias``, ``quant_utils.py::pack_rows / pack_cols``), written here in numpy style
and sharing no code with ``moe_registry.backends.marlin.repack``. vLLM's own
``test_gptq_marlin_repack`` asserts ``marlin_weights(q) == gptq_marlin_repack(pack_rows(q))``, so
matching the reference means matching the CUDA repack.

The stand-in GEMM decodes the Marlin operands with the inverse of the numpy transcription,
validates the arguments as vLLM's ``ops.cu`` does, and computes the MoE GEMM with the kernel's
indexing (row ``sorted_id // top_k`` of ``a`` -> row ``sorted_id`` of ``c``, router weight
``topk_weights.flatten()[sorted_id]``). It is registered with the exact 0.33.0 schema string, so
the schema-driven call is exercised as well. What only the GPU can confirm is listed in
``tests/gpu/test_marlin_gpu.py``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from moe_registry.backends.marlin import ops, repack
from moe_registry.backends.marlin.kernel import MarlinExperts, check_marlin_config
from moe_registry.backends.reference.kernel import ReferenceExperts
from moe_registry.execution.patterns import routing_pattern
from moe_registry.execution.weights import ExpertWeights, random_weights
from moe_registry.formats import Int4GroupTensor, quantize_int4
from moe_registry.schemas.activation import SwigluOAIParams

from _factories import make_layer

# =============================================================================================
# Independent numpy transcription of vLLM 0.33.0's Python reference
# =============================================================================================


def np_get_weight_perm_4bit() -> np.ndarray:
    perm_list = []
    for i in range(32):
        perm1 = []
        col = i // 4
        for block in [0, 1]:
            for row in [2 * (i % 4), 2 * (i % 4) + 1, 2 * (i % 4 + 4), 2 * (i % 4 + 4) + 1]:
                perm1.append(16 * row + col + 8 * block)
        for j in range(4):
            perm_list.extend([p + 256 * j for p in perm1])
    perm = np.array(perm_list)
    interleave = np.array([0, 2, 4, 6, 1, 3, 5, 7])
    return perm.reshape((-1, len(interleave)))[:, interleave].ravel()


def np_marlin_permute(q_w: np.ndarray, size_k: int, size_n: int, perm: np.ndarray, tile: int = 16) -> np.ndarray:
    """marlin_permute_weights, on any integer array (values or indices)."""
    q_w = q_w.reshape((size_k // tile, tile, size_n // tile, tile))
    q_w = q_w.transpose((0, 2, 1, 3))
    q_w = q_w.reshape((size_k // tile, size_n * tile))
    return q_w.reshape((-1, perm.size))[:, perm].reshape(q_w.shape)


def np_pack_cols(q_w: np.ndarray, num_bits: int = 4) -> np.ndarray:
    pack_factor = 32 // num_bits
    q_w = q_w.astype(np.uint32)
    q_packed = np.zeros((q_w.shape[0], q_w.shape[1] // pack_factor), dtype=np.uint32)
    for i in range(pack_factor):
        q_packed |= q_w[:, i::pack_factor] << num_bits * i
    return q_packed.astype(np.int32)


def np_unpack_cols(packed: np.ndarray, num_bits: int = 4) -> np.ndarray:
    pack_factor = 32 // num_bits
    p = packed.astype(np.uint32)
    out = np.zeros((p.shape[0], p.shape[1] * pack_factor), dtype=np.int64)
    for i in range(pack_factor):
        out[:, i::pack_factor] = (p >> (num_bits * i)) & ((1 << num_bits) - 1)
    return out


def np_marlin_weights(q_w: np.ndarray, size_k: int, size_n: int) -> np.ndarray:
    return np_pack_cols(np_marlin_permute(q_w, size_k, size_n, np_get_weight_perm_4bit()))


def np_pack_rows(q_w: np.ndarray, num_bits: int = 4) -> np.ndarray:
    pack_factor = 32 // num_bits
    q_w = q_w.astype(np.uint32)
    q_res = np.zeros((q_w.shape[0] // pack_factor, q_w.shape[1]), dtype=np.uint32)
    for i in range(pack_factor):
        q_res |= q_w[i::pack_factor, :] << num_bits * i
    return q_res.astype(np.int32)


def np_get_scale_perms() -> tuple[np.ndarray, np.ndarray]:
    scale_perm = []
    for i in range(8):
        scale_perm.extend([i + 8 * j for j in range(8)])
    scale_perm_single = []
    for i in range(4):
        scale_perm_single.extend([2 * i + j for j in [0, 1, 8, 9, 16, 17, 24, 25]])
    return np.array(scale_perm), np.array(scale_perm_single)


def np_marlin_permute_scales(s: np.ndarray, size_k: int, size_n: int, group_size: int) -> np.ndarray:
    scale_perm, scale_perm_single = np_get_scale_perms()
    if group_size < size_k and group_size != -1:
        s = s.reshape((-1, len(scale_perm)))[:, scale_perm]
    else:
        s = s.reshape((-1, len(scale_perm_single)))[:, scale_perm_single]
    return s.reshape((-1, size_n))


def np_marlin_zero_points(zp: np.ndarray, size_k: int, size_n: int) -> np.ndarray:
    scale_perm, _ = np_get_scale_perms()
    zp = zp.reshape((-1, len(scale_perm)))[:, scale_perm]
    interleave = np.array([0, 2, 4, 6, 1, 3, 5, 7])
    zp = zp.reshape((-1, len(interleave)))[:, interleave].ravel()
    zp = zp.reshape((-1, size_n))
    return np_pack_cols(zp)


def np_marlin_permute_bias(b: np.ndarray) -> np.ndarray:
    _, scale_perm_single = np_get_scale_perms()
    return b.reshape((-1, len(scale_perm_single)))[:, scale_perm_single].reshape(b.shape)


def np_nvfp4_compute_scale_factor(scales: np.ndarray, half_activations: bool) -> float:
    if half_activations:
        return 1.0
    ws = scales.astype(np.float32) * (2**7)
    nz = ws > 0
    if nz.any():
        m = ws[nz].max()
        if m < 448 * (2**7):
            return float(2.0 ** np.floor(np.log2(448 * (2**7) / m)))
    return 1.0


def np_nvfp4_marlin_process_scales(marlin_scales: np.ndarray, scale_factor: float) -> np.ndarray:
    """-> uint8 bytes of the float8_e4m3fn result."""
    s = marlin_scales.astype(np.float16)
    s = s.reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(s.shape[0], -1)
    if scale_factor > 1.0:
        s = (s.astype(np.float32) * scale_factor).astype(np.float16)
    s = s * np.float16(2**7)
    s[s < 2] = 0
    b = (s.view(np.int16) << 1).view(np.uint8)  # little-endian: [lo, hi] per element
    return b[:, 1::2]


def np_nvfp4_marlin_process_global_scale(gs: np.ndarray, half_activations: bool) -> np.ndarray:
    target_exponent = 5 if half_activations else 8
    exponent_bias = 2 ** (target_exponent - 1) - 2 ** (2 - 1)
    return gs * (2.0 ** (exponent_bias - 7))


E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


# --- Inverses (for the stand-in kernel) --------------------------------------------------------

def np_unmarlin_weights(packed: np.ndarray, size_k: int, size_n: int) -> np.ndarray:
    """Marlin int32 [K/16, 2N] -> codes [K, N], by permuting an index array forward."""
    index = np.arange(size_k * size_n).reshape(size_k, size_n)
    where = np_marlin_permute(index, size_k, size_n, np_get_weight_perm_4bit())  # source of each slot
    codes = np_unpack_cols(packed)  # [K/16, N*16]
    out = np.empty(size_k * size_n, dtype=np.int64)
    out[where.ravel()] = codes.ravel()
    return out.reshape(size_k, size_n)


def np_unpermute(x: np.ndarray, perm: np.ndarray) -> np.ndarray:
    shape = x.shape
    return x.reshape(-1, perm.size)[:, np.argsort(perm)].reshape(shape)


def np_unmarlin_zero_points(packed: np.ndarray, size_n: int) -> np.ndarray:
    scale_perm, _ = np_get_scale_perms()
    zp = np_unpack_cols(packed)  # [G, N]
    zp = np_unpermute(zp, np.array([0, 2, 4, 6, 1, 3, 5, 7]))
    return np_unpermute(zp, scale_perm).reshape(-1, size_n)


# =============================================================================================
# The stand-in kernel (CPU), registered under a test namespace with vLLM 0.33.0's exact schemas
# =============================================================================================

TEST_NAMESPACE = "moe_registry_marlin_test"
GEMM_SCHEMA_0_33 = (  # verbatim from `strings vllm/_moe_C_stable_libtorch.abi3.so`
    "moe_wna16_marlin_gemm(Tensor! a, Tensor? c_or_none,Tensor! b_q_weight, Tensor? b_bias_or_none,"
    "Tensor! b_scales, Tensor? a_scales, Tensor? global_scale, Tensor? b_zeros_or_none,Tensor! workspace,"
    "Tensor sorted_token_ids,Tensor! expert_ids, Tensor! num_tokens_past_padded,Tensor! topk_weights, "
    "int moe_block_size, int top_k, bool mul_topk_weights, int b_type_id,int size_m, int size_n, "
    "int size_k, bool use_atomic_add,bool use_fp32_reduce, bool is_zp_float,int thread_k, int thread_n, "
    "int blocks_per_sm) -> Tensor"
)
ALIGN_SCHEMA_0_33 = (
    "moe_align_block_size(Tensor topk_ids, int num_experts,                     int block_size, "
    "Tensor! sorted_token_ids,                     Tensor! experts_ids,                     "
    "Tensor! num_tokens_post_pad,                     Tensor? maybe_expert_map,                     "
    "Tensor(a!)? scatter_idx=None) -> ()"
)
UINT4_ID, UINT4B8_ID = 1125899906843648, 1125899907892224  # vllm scalar_types.uint4 / uint4b8 .id
FLOAT4_E2M1F_ID = 562949953487106  # vllm scalar_types.float4_e2m1f.id
CALLS: list[dict] = []


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise RuntimeError(msg)


def stand_in_gemm(a, c_or_none, b_q_weight, b_bias_or_none, b_scales, a_scales, global_scale, b_zeros_or_none,
                  workspace, sorted_token_ids, expert_ids, num_tokens_past_padded, topk_weights, moe_block_size,
                  top_k, mul_topk_weights, b_type_id, size_m, size_n, size_k, use_atomic_add, use_fp32_reduce,
                  is_zp_float, thread_k, thread_n, blocks_per_sm):
    """The checks of vLLM's ops.cu that apply to 16-bit activations, then the MoE GEMM in fp32."""
    CALLS.append(dict(top_k=top_k, mul=mul_topk_weights, size_m=size_m, size_n=size_n, size_k=size_k,
                      block=moe_block_size, type_id=b_type_id))
    _check(a.dtype in (torch.float16, torch.bfloat16) and a.is_contiguous(), "a must be fp16/bf16 contiguous")
    _check(moe_block_size == 8 or (moe_block_size % 16 == 0 and 16 <= moe_block_size <= 64), "moe_block_size")
    _check(tuple(a.shape) == (size_m, size_k), f"a shape {tuple(a.shape)} vs ({size_m}, {size_k})")
    _check(size_k % 16 == 0 and b_q_weight.shape[1] == size_k // 16, "b_q_weight dim 1")
    _check(b_q_weight.dtype == torch.int32 and b_q_weight.is_contiguous(), "b_q_weight int32 contiguous")
    _check(b_q_weight.shape[2] % 16 == 0 and b_q_weight.shape[2] // 16 * 8 == size_n, "size_n vs b_q_weight")
    _check(b_scales.dim() == 3 and b_scales.shape[2] == size_n and b_scales.is_contiguous(), "b_scales shape")
    _check(a_scales is None, "a_scales are for 8-bit activations only")
    _check(c_or_none is not None and c_or_none.is_contiguous() and c_or_none.dtype == a.dtype
           and tuple(c_or_none.shape) == (size_m * top_k, size_n), "c [size_m * top_k, size_n] as vLLM passes it")
    _check(use_fp32_reduce and not use_atomic_add and not is_zp_float, "reduce flags as vLLM passes them")
    _check((thread_k, thread_n, blocks_per_sm) == (-1, -1, -1), "auto thread config")
    _check(topk_weights.dtype == torch.float32 and topk_weights.is_contiguous(), "topk_weights fp32")
    for t in (sorted_token_ids, expert_ids, num_tokens_past_padded):
        _check(t.dtype == torch.int32, "alignment buffers are int32")
    num_groups = b_scales.shape[1]
    fp4 = b_type_id == FLOAT4_E2M1F_ID
    nvfp4 = fp4 and b_scales.dtype == torch.float8_e4m3fn
    if fp4:
        _check(b_scales.dtype in (torch.float8_e4m3fn, torch.float8_e8m0fnu), "fp4 b_scales e4m3 or e8m0")
        _check(size_k // num_groups == (16 if nvfp4 else 32), "NvFP4 group 16 / MXFP4 group 32")
        _check((global_scale is not None) == nvfp4, "global_scale iff nvfp4")
        if nvfp4:
            _check(global_scale.dtype == torch.float32 and tuple(global_scale.shape) == (b_q_weight.shape[0],),
                   "scalar type of global_scale must be float, one per expert")
        else:
            _check(a.dtype == torch.bfloat16, "MXFP4 kernels exist for bf16 activations only")
    else:
        _check(b_scales.dtype == a.dtype, "b_scales dtype must equal the activation dtype (s_type = c_type)")
        _check(global_scale is None, "global_scale is for nvfp4 only")
    if num_groups > 1 and not fp4:
        _check(size_k % num_groups == 0, "size_k % num_groups")
        _check(size_k // num_groups in (32, 64, 128), "group size must be 32/64/128 (group_blocks 2/4/8)")
    has_zp = b_zeros_or_none is not None
    if fp4:
        _check(not has_zp, "no zero points with fp4")
    elif has_zp:
        z = b_zeros_or_none
        _check(b_type_id == UINT4_ID, "zero points need b_type uint4")
        _check(z.dtype == torch.int32 and z.dim() == 3 and z.shape[1] == num_groups and z.shape[2] == size_n // 8,
               "b_zeros [E, G, N/8] int32")
    else:
        _check(b_type_id == UINT4B8_ID, "no zero points needs b_type uint4b8")
    _check(size_n % 64 == 0, "size_n % min_thread_n")
    _check(size_n % 128 == 0 and size_k % 64 == 0, "Invalid thread config (no thread_n=64 config exists)")
    sms = workspace.numel() // 4
    _check(workspace.numel() >= min(size_n // 64 * (sorted_token_ids.numel() // moe_block_size), sms * 4),
           "workspace too small")
    if b_bias_or_none is not None:
        _check(b_bias_or_none.shape[1] == size_n and b_bias_or_none.is_contiguous(), "b_bias [E, N]")

    E = b_q_weight.shape[0]
    grouped = num_groups > 1
    sp, sps = np_get_scale_perms()
    weights = []
    g = size_k // num_groups
    rows = np.arange(size_k) // g
    for e in range(E):
        q = np_unmarlin_weights(b_q_weight[e].numpy(), size_k, size_n)
        if fp4:
            raw = b_scales[e].view(torch.uint8).numpy()
            if nvfp4:  # S0E5M3 byte eeeeemmm -> the half it came from: sf * factor * 2^7
                s = (raw.astype(np.int16) << 7).view(np.float16).astype(np.float64)
                s = np_unpermute(np_unpermute(s, np.array([0, 2, 1, 3])), sp) / 2**7
                eb = 14 if a.dtype == torch.float16 else 126
                s = s * float(global_scale[e]) / 2.0 ** (eb - 7)  # the factor cancels
            else:
                s = 2.0 ** (np_unpermute(np_unpermute(raw.astype(np.float64), np.array([0, 2, 1, 3])), sp) - 127)
            weights.append(torch.from_numpy(E2M1[q] * s[rows]).float())
            continue
        s = np_unpermute(b_scales[e].float().numpy(), sp if grouped else sps)
        zp = np_unmarlin_zero_points(b_zeros_or_none[e].numpy(), size_n) if has_zp else np.full((num_groups, size_n), 8)
        weights.append(torch.from_numpy((q - zp[rows]) * s[rows]).float())  # [K, N]
    bias = None
    if b_bias_or_none is not None:
        bias = torch.from_numpy(np_unpermute(b_bias_or_none.float().numpy(), sps))

    c = c_or_none
    c.fill_(float("nan"))  # rows the kernel does not write stay NaN
    total = int(num_tokens_past_padded[0])
    flat_w = topk_weights.reshape(-1)
    for b in range(total // moe_block_size):
        e = int(expert_ids[b])
        ids = sorted_token_ids[b * moe_block_size:(b + 1) * moe_block_size].long()
        ids = ids[ids < size_m * top_k]
        if ids.numel() == 0 or e < 0:
            continue
        out = a[ids // top_k].float() @ weights[e]
        if bias is not None:
            out = out + bias[e]
        if mul_topk_weights:
            out = out * flat_w[ids].unsqueeze(1)
        c[ids] = out.to(a.dtype)
    return c


def stand_in_align(topk_ids, num_experts, block_size, sorted_token_ids, experts_ids, num_tokens_post_pad,
                   maybe_expert_map, scatter_idx=None):
    """The CUDA kernel's contract, written as a loop; tokens of an expert in reverse order on purpose
    (the CUDA op orders them by atomics, so the adapter must not depend on the order)."""
    flat = topk_ids.reshape(-1).tolist()
    numel = len(flat)
    sorted_token_ids.fill_(numel)
    experts_ids.fill_(0)
    pos = 0
    for e in range(num_experts):
        members = [i for i, x in enumerate(flat) if x == e][::-1]
        n_pad = -(-len(members) // block_size) * block_size
        for j, i in enumerate(members):
            sorted_token_ids[pos + j] = i
        for blk in range(n_pad // block_size):
            experts_ids[pos // block_size + blk] = e
        pos += n_pad
    num_tokens_post_pad[0] = pos


_LIB = None


def _register_stand_ins() -> None:
    global _LIB
    if _LIB is not None:
        return
    lib = torch.library.Library(TEST_NAMESPACE, "DEF")
    lib.define(GEMM_SCHEMA_0_33)
    lib.impl("moe_wna16_marlin_gemm", stand_in_gemm, "CPU")
    lib.define(ALIGN_SCHEMA_0_33)
    lib.impl("moe_align_block_size", stand_in_align, "CPU")
    _LIB = lib


@pytest.fixture
def stand_in(monkeypatch):
    """Point the adapter at the CPU stand-ins (GEMM + align)."""
    _register_stand_ins()
    monkeypatch.setattr(ops, "OP_NAMESPACE", TEST_NAMESPACE)
    CALLS.clear()
    return CALLS


# =============================================================================================
# Layout tests
# =============================================================================================

NK_CASES = [(128, 64), (256, 192), (64, 128), (704, 256), (16 * 7, 64 * 3), (2816, 64)]


def test_weight_perm_matches_transcription_and_is_a_permutation():
    ours = repack.weight_perm().numpy()
    assert np.array_equal(ours, np_get_weight_perm_4bit())
    assert np.array_equal(np.sort(ours), np.arange(1024))


@pytest.mark.parametrize("K,N", NK_CASES)
def test_repack_equals_numpy_reference(K, N):
    rng = np.random.default_rng(K * 7919 + N)
    E = 3
    q = rng.integers(0, 16, size=(E, K, N))
    gptq = torch.from_numpy(np.stack([np_pack_rows(q[e]) for e in range(E)]))
    ours = repack.gptq_to_marlin_qweight(gptq, chunk_nibbles=K * N)  # one expert per chunk
    assert ours.dtype == torch.int32 and tuple(ours.shape) == (E, K // 16, 2 * N)
    for e in range(E):
        assert np.array_equal(ours[e].numpy(), np_marlin_weights(q[e], K, N)), f"expert {e}"
    # The batched path (all experts in one chunk) gives the same words.
    assert torch.equal(repack.gptq_to_marlin_qweight(gptq), ours)
    # GPTQ pack / unpack round-trip against the transcription of pack_rows.
    assert torch.equal(repack.pack_gptq_rows(torch.from_numpy(q)), gptq)
    assert np.array_equal(repack.unpack_gptq_rows(gptq).numpy(), q)


@pytest.mark.parametrize("K,N", NK_CASES[:4])
def test_repack_is_a_bijection_of_nibbles(K, N):
    rng = np.random.default_rng(K + N)
    q = rng.integers(0, 16, size=(K, N))
    marlin = repack.gptq_to_marlin_qweight(torch.from_numpy(np_pack_rows(q))[None])[0].numpy()
    nibbles = np_unpack_cols(marlin)
    assert np.array_equal(np.sort(nibbles.ravel()), np.sort(q.ravel()))  # same multiset
    assert np.array_equal(np_unmarlin_weights(marlin, K, N), q)  # and invertible position by position


def test_repack_rejects_untileable_shapes():
    with pytest.raises(ValueError, match="multiple of 64"):
        repack.marlin_repack_nibbles(torch.zeros(16, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="tile"):
        repack.marlin_repack_nibbles(torch.zeros(24, 64, dtype=torch.uint8))


@pytest.mark.parametrize("K,N,g", [(256, 128, 32), (256, 128, 64), (256, 128, 128), (256, 128, -1),
                                   (128, 192, 128), (704, 64, 64)])
def test_scale_permutation_matches_vllm_formula(K, N, g):
    rng = np.random.default_rng(K + N + g)
    G = 1 if g in (-1, K) else K // g
    s = rng.standard_normal((2, G, N)).astype(np.float32)
    ours = repack.marlin_permute_scales(torch.from_numpy(s), K, N, g).numpy()
    for e in range(2):
        assert np.array_equal(ours[e], np_marlin_permute_scales(s[e], K, N, g))
    # The formula itself, spelled out: grouped -> column i of each run of 64 takes 8*(i%8) + i//8;
    # per-channel -> runs of 32 take [0, 1, 8, 9, 16, 17, 24, 25, 2, 3, 10, 11, ...].
    if g in (-1, K):
        expected = [2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)]
        assert list(repack.scale_perms()[1]) == expected
        assert ours[0].reshape(-1, 32)[0].tolist() == s[0].reshape(-1, 32)[0][expected].tolist()
    else:
        assert list(repack.scale_perms()[0]) == [i // 8 + 8 * (i % 8) for i in range(64)]


@pytest.mark.parametrize("G,N", [(1, 64), (4, 128), (8, 192)])
def test_zero_points_match_vllm(G, N):
    rng = np.random.default_rng(G * N)
    zp = rng.integers(0, 16, size=(3, G, N))
    ours = repack.marlin_zero_points(torch.from_numpy(zp).to(torch.int32), N).numpy()
    assert ours.shape == (3, G, N // 8) and ours.dtype == np.int32
    for e in range(3):
        assert np.array_equal(ours[e], np_marlin_zero_points(zp[e], G, N))
        assert np.array_equal(np_unmarlin_zero_points(ours[e], N), zp[e])


def test_bias_permutation_matches_vllm():
    b = np.random.default_rng(3).standard_normal((4, 192)).astype(np.float32)
    assert np.array_equal(repack.marlin_permute_bias(torch.from_numpy(b)).numpy(), np_marlin_permute_bias(b))


@pytest.mark.parametrize("half", [False, True], ids=["bf16", "fp16"])
def test_nvfp4_scale_processing_matches_vllm(half):
    rng = np.random.default_rng(5 + half)
    # e4m3 values (a cast through float8 keeps them exact), some zeros, some tiny
    raw = torch.from_numpy(rng.uniform(0, 40, size=(3, 16, 128)).astype(np.float32))
    raw[0, 0, :5] = 0
    raw[1, 2, :3] = 2.0**-8
    e4m3 = raw.to(torch.float8_e4m3fn).float()
    factor = repack.nvfp4_compute_scale_factor(e4m3, torch.half if half else torch.bfloat16)
    assert factor == np_nvfp4_compute_scale_factor(e4m3.numpy(), half)
    assert factor == (1.0 if half else 8.0)  # max ~40 -> 448/40 -> 2^3
    for e in range(3):
        perm = repack.marlin_permute_scales(e4m3[e], 256, 128, 16)  # K=256: 16 groups of 16
        assert np.array_equal(perm.numpy(), np_marlin_permute_scales(e4m3[e].numpy(), 256, 128, 16))
        ours = repack.nvfp4_marlin_process_scales(perm, factor)
        assert ours.dtype == torch.float8_e4m3fn and ours.shape == (16, 128)
        assert np.array_equal(ours.view(torch.uint8).numpy(), np_nvfp4_marlin_process_scales(perm.numpy(), factor))
    gs = torch.tensor([1e-3, 2.5e-4], dtype=torch.float32)
    got = repack.nvfp4_marlin_process_global_scale(gs, torch.half if half else torch.bfloat16)
    assert np.array_equal(got.numpy(), np_nvfp4_marlin_process_global_scale(gs.numpy(), half))


def test_mxfp4_scale_processing_is_the_byte_interleave():
    b = torch.randint(100, 140, (2, 8, 64), dtype=torch.uint8)
    out = repack.mxfp4_marlin_process_scales(b)
    assert out.dtype == torch.float8_e8m0fnu
    assert torch.equal(out.view(torch.uint8), b.reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(2, 8, 64))
    # vLLM goes bytes -> e8m0 -> param dtype -> permute -> e8m0: the same bytes for every finite scale
    via_values = b.view(torch.float8_e8m0fnu).to(torch.bfloat16).reshape(-1, 4)[:, [0, 2, 1, 3]]
    assert torch.equal(via_values.to(torch.float8_e8m0fnu).view(torch.uint8).reshape(2, 8, 64), out.view(torch.uint8))


def test_scalar_type_ids():
    # vllm/scalar_type.py: id = exponent | mantissa<<8 | signed<<16 | bias<<17 | finite<<49 | nan_repr<<50
    def vllm_id(exponent, mantissa, signed, bias, finite, nan_repr):
        return exponent | mantissa << 8 | int(signed) << 16 | bias << 17 | int(finite) << 49 | nan_repr << 50

    assert repack.UINT4_ID == vllm_id(0, 4, False, 0, False, 1) == UINT4_ID
    assert repack.UINT4B8_ID == vllm_id(0, 4, False, 8, False, 1) == UINT4B8_ID
    assert repack.FLOAT4_E2M1F_ID == vllm_id(2, 1, True, 0, True, 0)
    assert repack.FLOAT8_E4M3FN_ID == vllm_id(4, 3, True, 0, True, 2)


def test_block_size_follows_fused_marlin_moe():
    def vllm_block(M, topk, E):
        for block_size_m in [8, 16, 32, 48, 64]:
            if M * topk / E / block_size_m < 0.9:
                break
        return block_size_m

    for M in (1, 7, 64, 100, 512, 4096, 100000):
        for topk, E in ((8, 128), (2, 8), (1, 4)):
            assert repack.choose_block_size_m(M, topk, E) == vllm_block(M, topk, E)


@pytest.mark.parametrize("T,k,E,block", [(1, 8, 128, 8), (7, 2, 8, 16), (64, 8, 128, 8), (33, 2, 8, 64),
                                         (5, 4, 16, 32)])
def test_align_torch_contract(T, k, E, block):
    g = torch.Generator().manual_seed(T * k)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).to(torch.int32)
    ids[ids == 3] = 1  # expert 3 gets no tokens, expert 1 gets more
    sorted_ids, expert_ids, ntpp = repack.moe_align_block_size_torch(ids, E, block)
    numel = ids.numel()
    max_padded, num_blocks = repack.align_buffer_sizes(numel, E, block)
    assert sorted_ids.shape == (max_padded,) and expert_ids.shape == (num_blocks,)
    assert sorted_ids.dtype == expert_ids.dtype == ntpp.dtype == torch.int32
    total = int(ntpp[0])
    assert total % block == 0
    flat = ids.reshape(-1)
    seen = sorted_ids[:total]
    assert sorted(seen[seen < numel].tolist()) == list(range(numel))  # every pair exactly once
    assert bool((sorted_ids[total:] == numel).all())
    for b in range(total // block):
        members = seen[b * block:(b + 1) * block]
        members = members[members < numel].long()
        assert bool((flat[members] == expert_ids[b]).all())
    assert 3 not in expert_ids[: total // block].tolist()
    # Same buffers as the stand-in written from the CUDA kernel's contract, up to order in an expert.
    s2 = torch.empty_like(sorted_ids)
    e2 = torch.empty_like(expert_ids)
    n2 = torch.empty_like(ntpp)
    stand_in_align(ids, E, block, s2, e2, n2, None)
    assert torch.equal(n2, ntpp) and torch.equal(e2, expert_ids)
    for e in range(E):  # an expert's blocks hold the same pairs (order inside the run may differ)
        blocks = (expert_ids[: total // block] == e).nonzero().flatten().tolist()
        run = [i for b in blocks for i in range(b * block, (b + 1) * block)]
        assert sorted(s2[run].tolist()) == sorted(sorted_ids[run].tolist())


# =============================================================================================
# Config checks and the missing-op error
# =============================================================================================

# The shared small layer (4 experts, top-2, H=256, I=128, SiLU) with int4 weights, groups of 64.
_layer = functools.partial(make_layer, quant="int4_w4a16:g64")


@pytest.mark.parametrize("kwargs,pads,match", [
    (dict(H=192), {}, "hidden size 192 is not a multiple of 128"),
    # lcm(64, 32) = 64 -> 96 pads to 128; lcm(64, 128) = 128 -> 192 pads to 256 (vLLM marlin_moe_padded_intermediate)
    (dict(I=96, quant="int4_w4a16:g32"), {}, r"intermediate size 96 is not a multiple of lcm\(64, group=32\) = 64; "
                                             r"pad_intermediate_to=128"),
    (dict(I=192, quant="int4_w4a16:g128"), {}, r"lcm\(64, group=128\) = 128; pad_intermediate_to=256"),
    (dict(quant="int4_w4a16:g16"), {}, r"group size 16 is not one of \[-1, 32, 64, 128\]"),
    (dict(act="relu2_no_mul", I=192), {}, "pad_intermediate_to=256"),
    (dict(dtype="fp32"), {}, "bf16 or fp16"),
    (dict(quant="fp8"), {}, "not implemented here"),
    (dict(quant="mxfp4", dtype="fp16"), {}, "bf16 activations only"),
    (dict(quant="nvfp4_w4a16", I=96), {}, r"lcm\(64, group=16\) = 64; pad_intermediate_to=128"),
    (dict(quant="int4_w4a16:g64:act_order"), {}, "act-order"),
    (dict(apply_router_weight_on_input=True), {}, "top_k == 1"),
    (dict(H=256), {"pad_hidden_to": 320}, "hidden size 320"),
])
def test_config_checks_raise_value_error(kwargs, pads, match):
    layer = _layer(**kwargs)
    with pytest.raises(ValueError, match=match):
        check_marlin_config(layer, **pads)


def test_config_accepts_vllm_shapes():
    for H, I, q in ((2816, 704, "int4_w4a16:g64"), (4096, 14336, "int4_w4a16:g128"), (2816, 704, "int4_w4a16:gchannel"),
                    (2048, 768, "int4_w4a16:g32")):
        cfg = check_marlin_config(_layer(E=8, H=H, I=I, quant=q))
        assert cfg.gemm1_n == 2 * I
    cfg = check_marlin_config(_layer(H=2816, I=704, act="relu2_no_mul"), pad_intermediate_to=768)
    assert cfg.gemm1_n == 768


def test_shape_errors_come_before_the_missing_op(monkeypatch):
    """A bad config is a ValueError even where the op is missing (CPU); weights are checked too."""
    monkeypatch.delenv(ops.ENV_VAR, raising=False)
    layer = _layer(H=128, I=64, quant="int4_w4a16:g64")
    w = random_weights(layer, seed=0)
    bad = ExpertWeights(w13=w.w13, w2=quantize_int4(torch.randn(4, 128, 64), group_size=32))
    with pytest.raises(ValueError, match="group size"):
        MarlinExperts(layer, bad)
    relu = _layer(H=128, I=64, act="relu2_no_mul")
    with pytest.raises(ValueError, match="pad_intermediate_to=128"):
        MarlinExperts(relu, random_weights(relu, seed=0))


def test_act_order_weights_are_refused():
    layer = _layer(H=128, I=64, quant="int4_w4a16:g64")
    w = random_weights(layer, seed=0)
    w13 = quantize_int4(w.w13.dequantize(torch.bfloat16), group_size=64, act_order=True)
    with pytest.raises(ValueError, match="act-order"):
        check_marlin_config(layer, ExpertWeights(w13=w13, w2=w.w2))


def test_missing_op_raises_clear_runtime_error(monkeypatch):
    monkeypatch.delenv(ops.ENV_VAR, raising=False)
    assert not ops.marlin_op_available()  # CPU machine: no vLLM
    layer = _layer(H=128, I=64)
    with pytest.raises(RuntimeError, match=r"vLLM's _moe_C ops not found \(pip install vllm\)"):
        MarlinExperts(layer, random_weights(layer, seed=0))
    available, detail = ops.probe()
    assert not available and "pip install vllm" in detail


def test_load_moe_c_paths(monkeypatch, tmp_path):
    monkeypatch.delenv(ops.ENV_VAR, raising=False)
    assert ops.load_moe_c() is False  # nothing to load
    with pytest.raises(FileNotFoundError, match="_moe_C library not found"):
        ops.load_moe_c(tmp_path / "missing.so")
    monkeypatch.setenv(ops.ENV_VAR, str(tmp_path / "missing.so"))
    layer = _layer(H=128, I=64)
    with pytest.raises(RuntimeError, match=r"ops not found \(pip install vllm\).*missing\.so"):
        MarlinExperts(layer, random_weights(layer, seed=0))
    bogus = tmp_path / "bogus.so"
    bogus.write_bytes(b"not an ELF file")
    with pytest.raises(RuntimeError, match="failed under torch"):
        ops.load_moe_c(bogus)


# =============================================================================================
# The whole adapter through the CPU stand-in kernel
# =============================================================================================

def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


CASES = [  # (name, layer kwargs, pads, zero_point)
    ("silu g64 sym", dict(E=6, k=2, H=128, I=64, act="silu", quant="int4_w4a16:g64"), {}, False),
    ("silu g32 zp", dict(E=6, k=2, H=256, I=128, act="silu", quant="int4_w4a16:g32:zp"), {}, True),
    ("gelu_tanh g128 fp16", dict(E=5, k=3, H=256, I=128, act="gelu_tanh", quant="int4_w4a16:g128", dtype="fp16"),
     {}, False),
    ("gelu channel zp", dict(E=4, k=2, H=128, I=64, act="gelu", quant="int4_w4a16:gchannel:zp"), {}, True),
    ("relu2 g64 padded I", dict(E=4, k=2, H=128, I=64, act="relu2_no_mul", quant="int4_w4a16:g64"),
     {"pad_intermediate_to": 128}, False),
    ("silu_no_mul channel", dict(E=4, k=1, H=128, I=128, act="silu_no_mul", quant="int4_w4a16:gchannel"), {}, False),
    ("silu g64 padded H+I", dict(E=4, k=2, H=128, I=64, act="silu", quant="int4_w4a16:g64"),
     {"pad_hidden_to": 256, "pad_intermediate_to": 128}, False),
    ("gelu_tanh channel zp padded H+I", dict(E=4, k=2, H=128, I=64, act="gelu_tanh", quant="int4_w4a16:gchannel:zp"),
     {"pad_hidden_to": 256, "pad_intermediate_to": 128}, True),
    ("swigluoai interleaved bias padded", dict(E=4, k=2, H=128, I=64, act="swigluoai", quant="int4_w4a16:g32",
                                               bias=True, activation_params=SwigluOAIParams(interleaved=True)),
     {"pad_intermediate_to": 128}, False),
    ("silu bias zp", dict(E=4, k=2, H=128, I=64, act="silu", quant="int4_w4a16:g64:zp", bias=True), {}, True),
    ("llama4 weight on input", dict(E=4, k=1, H=128, I=64, act="silu", quant="int4_w4a16:g64",
                                    apply_router_weight_on_input=True), {}, False),
    ("nvfp4_w4a16 silu", dict(E=6, k=2, H=256, I=128, act="silu", quant="nvfp4_w4a16"), {}, "fp4"),
    ("nvfp4 gelu_tanh fp16", dict(E=4, k=2, H=128, I=64, act="gelu_tanh", quant="nvfp4", dtype="fp16"), {}, "fp4"),
    ("nvfp4 relu2 padded H+I bias", dict(E=4, k=2, H=128, I=64, act="relu2_no_mul", quant="nvfp4_w4a16", bias=True),
     {"pad_hidden_to": 256, "pad_intermediate_to": 128}, "fp4"),
    ("mxfp4 swigluoai bias", dict(E=4, k=2, H=128, I=64, act="swigluoai", quant="mxfp4", bias=True), {}, "fp4"),
    ("mxfp4 silu padded I", dict(E=5, k=3, H=256, I=64, act="silu", quant="mxfp4"), {"pad_intermediate_to": 128},
     "fp4"),
]


@pytest.mark.parametrize("name,kw,pads,zp", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("use_align_op", [True, False], ids=["align-op", "align-torch"])
def test_forward_through_stand_in_matches_reference(stand_in, monkeypatch, name, kw, pads, zp, use_align_op):
    if not use_align_op:
        monkeypatch.setattr(ops, "align_op_available", lambda: False)
    layer = _layer(**kw)
    weights = random_weights(layer, seed=1, dtype=torch.bfloat16 if layer.dtype == "bf16" else torch.float16)
    marlin = MarlinExperts(layer, weights, **pads)
    ref = ReferenceExperts(layer, weights)
    E, k = layer.num_experts, layer.top_k
    dtype = marlin.dtype
    for T, empty, kind in ((1, (), "random"), (7, (0, E - 1), "random"), (40, (2,), "imbalanced")):
        w, ids = routing_pattern(T, E, k, device="cpu", kind=kind, empty=empty,
                                 generator=torch.Generator().manual_seed(T))
        x = torch.randn(T, layer.hidden_size, generator=torch.Generator().manual_seed(T + 1)).to(dtype)
        out = marlin(x, w, ids)
        assert out.dtype == dtype and out.shape == (T, layer.hidden_size)
        assert bool(torch.isfinite(out).all()), "the stand-in initialises c with NaN: a row was not written"
        err = _rel(out, ref(x, w, ids))
        # bf16: GEMM1 output, activation and GEMM2 output each rounded once (<= 2**-8 each) -> ~1e-2 worst.
        assert err < (2e-2 if dtype == torch.bfloat16 else 4e-3), f"{name} T={T}: rel err {err:.3e}"
    assert {c["type_id"] for c in stand_in} == {FLOAT4_E2M1F_ID if zp == "fp4" else UINT4_ID if zp else UINT4B8_ID}
    Hp = pads.get("pad_hidden_to", layer.hidden_size)
    Ip = pads.get("pad_intermediate_to", layer.local_intermediate_size)
    n1 = Ip * (2 if layer.activation.is_gated else 1)
    assert len(stand_in) == 6  # two GEMMs per forward, three forwards
    for c1, c2, T in zip(stand_in[0::2], stand_in[1::2], (1, 7, 40)):
        # GEMM1 as _fused_marlin_moe: top_k=topk, size_m=M, N = w13 rows, K = hidden, no router weight
        assert (c1["top_k"], c1["size_m"], c1["size_n"], c1["size_k"], c1["mul"]) == (k, T, n1, Hp, False)
        # GEMM2: top_k=1, size_m=M*topk, N = hidden, K = intermediate, router weight applied
        assert (c2["top_k"], c2["size_m"], c2["size_n"], c2["size_k"]) == (1, T * k, Hp, Ip)
        assert c2["mul"] == (not layer.apply_router_weight_on_input)
        assert c1["block"] == c2["block"] == repack.choose_block_size_m(T, k, E)


def test_stand_in_detects_a_wrong_layout(stand_in, monkeypatch):
    """The end-to-end check can fail: a repack with a different tile permutation is caught."""
    layer = _layer(E=4, k=2, H=128, I=64, quant="int4_w4a16:g64")
    weights = random_weights(layer, seed=2)
    ref = ReferenceExperts(layer, weights)
    w, ids = routing_pattern(16, 4, 2, device="cpu", generator=torch.Generator().manual_seed(0))
    x = torch.randn(16, 128).to(torch.bfloat16)
    good = _rel(MarlinExperts(layer, weights)(x, w, ids), ref(x, w, ids))
    wrong = tuple(reversed(repack._weight_perm_list()))
    monkeypatch.setattr(repack, "_weight_perm_list", lambda: wrong)
    bad = _rel(MarlinExperts(layer, weights)(x, w, ids), ref(x, w, ids))
    assert good < 2e-2 and bad > 0.5, (good, bad)


def test_swapped_gate_up_would_be_caught(stand_in):
    """Sensitivity: feeding w13 as [up; gate] gives an O(1) error, so the [gate; up] order is tested."""
    layer = _layer(E=4, k=2, H=128, I=64, act="silu", quant="int4_w4a16:g64")
    weights = random_weights(layer, seed=3)
    ref = ReferenceExperts(layer, weights)
    dq = weights.w13.dequantize(torch.bfloat16)
    swapped = quantize_int4(torch.cat([dq[:, 64:], dq[:, :64]], dim=1), group_size=64)
    w, ids = routing_pattern(16, 4, 2, device="cpu", generator=torch.Generator().manual_seed(1))
    x = torch.randn(16, 128).to(torch.bfloat16)
    err = _rel(MarlinExperts(layer, ExpertWeights(w13=swapped, w2=weights.w2))(x, w, ids), ref(x, w, ids))
    assert err > 0.3


def test_scales_in_another_dtype_are_cast_with_a_warning(stand_in):
    layer = _layer(E=4, k=2, H=128, I=64, quant="int4_w4a16:g64", dtype="bf16")
    g = torch.Generator().manual_seed(4)
    w16 = ExpertWeights(  # fresh fp32 weights: their fp16 scales are not all bf16 values
        w13=quantize_int4(torch.randn(4, 128, 128, generator=g), group_size=64, scale_dtype=torch.float16),
        w2=quantize_int4(torch.randn(4, 128, 64, generator=g), group_size=64, scale_dtype=torch.float16))
    with pytest.warns(UserWarning, match="rounded to the layer dtype"):
        MarlinExperts(layer, w16)


def test_zero_points_all_eight_run_as_uint4b8(stand_in):
    layer = _layer(E=4, k=2, H=128, I=64, quant="int4_w4a16:g64:zp")
    w = random_weights(_layer(E=4, k=2, H=128, I=64, quant="int4_w4a16:g64"), seed=5)

    def with_zeros(t: Int4GroupTensor) -> Int4GroupTensor:
        zeros = torch.full_like(t.scales, 8, dtype=torch.int32)
        return Int4GroupTensor(qweight=t.qweight, scales=t.scales, zeros=zeros, group_size=t.group_size)

    m = MarlinExperts(layer, ExpertWeights(w13=with_zeros(w.w13), w2=with_zeros(w.w2)))
    assert m.w13.zeros is None and m.w13.type_id == UINT4B8_ID


@pytest.mark.parametrize("layer,expected", [
    # int4 g32: lcm(64, 32) = 64, 160 -> 192 (vLLM marlin_moe_padded_intermediate); hidden never padded.
    (_layer(H=256, I=160, quant="int4_w4a16:g32"), (256, 192)),
    # int4 g128: lcm(64, 128) = 128, 384 is already a multiple: no padding.
    (_layer(H=256, I=384, quant="int4_w4a16:g128"), (256, 384)),
    # gpt-oss MXFP4 (vLLM oracle/mxfp4.py MARLIN): hidden 2880 -> 12 x 256 = 3072, intermediate 2880 -> 23 x 128 = 2944.
    (_layer(E=4, H=2880, I=2880, act="swigluoai", quant="mxfp4", bias=True), (3072, 2944)),
])
def test_declared_padding_is_what_the_adapter_accepts(layer, expected):
    from moe_registry.execution.declared import declared_padding

    assert declared_padding("marlin", layer) == expected
    hidden, intermediate = expected
    cfg = check_marlin_config(layer, pad_hidden_to=hidden, pad_intermediate_to=intermediate)
    assert (cfg.hidden_padded, cfg.intermediate_padded) == expected
    if layer.quant.kind.value == "int4_w4a16":
        from moe_registry.backends.marlin.kernel import marlin_padded_intermediate

        assert marlin_padded_intermediate(layer.intermediate_size, layer.quant.group_size) == intermediate
