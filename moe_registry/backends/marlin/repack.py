"""Marlin weight layout in pure PyTorch: GPTQ int4 -> Marlin tiles, scale / zero-point / bias
permutations, and the ``ScalarType`` ids the kernel takes.

vLLM repacks with the CUDA op ``torch.ops._C.gptq_marlin_repack`` (in the 88 MB ``_C`` library,
which the GPU machines do not carry). This module ports vLLM's pure-Python reference of the same
layout instead. Sources (vLLM 0.33.0 wheel, ``vllm/model_executor/layers/quantization/utils/``):

- ``marlin_utils_test.py``: ``get_weight_perm`` (num_bits=4, is_a_8bit=False),
  ``marlin_permute_weights`` and ``marlin_weights`` (permute to 16x64 tiles, then pack 8 nibbles
  per int32, low nibble first).
- ``marlin_utils.py``: ``get_scale_perms``, ``marlin_permute_scales``,
  ``marlin_moe_permute_scales``, ``marlin_zero_points``, ``marlin_permute_bias``.
- ``quant_utils.py``: ``pack_rows`` (GPTQ: 8 K-rows per int32, low nibble first),
  ``pack_cols``/``unpack_cols``.
- ``vllm/scalar_type.py``: ``ScalarType.id``.

That ``marlin_weights(q_w, ...) == gptq_marlin_repack(gptq_pack(q_w), ...)`` bit for bit is what
vLLM's own ``tests/kernels/quantization/test_marlin_gemm.py::test_gptq_marlin_repack`` asserts
(``torch.testing.assert_close(marlin_q_w_1, marlin_q_w_2)``), so porting the reference ports the
CUDA repack. ``tests/test_marlin_repack.py`` checks this module against a separate numpy
transcription of the same vLLM functions.

Everything here works on any device (CPU or CUDA) and never imports vLLM.
"""

from __future__ import annotations

from functools import lru_cache

import torch

GPTQ_MARLIN_TILE = 16  # marlin_utils.GPTQ_MARLIN_TILE
GPTQ_MARLIN_MIN_THREAD_N = 64  # marlin_utils.GPTQ_MARLIN_MIN_THREAD_N
GPTQ_MARLIN_MIN_THREAD_K = 128  # marlin_utils.GPTQ_MARLIN_MIN_THREAD_K
MARLIN_MAX_BLOCKS_PER_SM = 4  # marlin_utils.MARLIN_MAX_BLOCKS_PER_SM (workspace = SMs * 4 locks)
MARLIN_SUPPORTED_GROUP_SIZES = (-1, 32, 64, 128)  # marlin_utils.MARLIN_SUPPORTED_GROUP_SIZES
PACK_FACTOR_4BIT = 8  # 32 // num_bits
SYMMETRIC_ZERO = 8  # uint4b8: stored code = value + 8


# --- ScalarType ids (vllm/scalar_type.py, ScalarType.id) -----------------------------------------

_NAN_REPR_NONE = 0
_NAN_REPR_IEEE_754 = 1
_NAN_REPR_EXTD_RANGE_MAX_MIN = 2


def scalar_type_id(exponent: int, mantissa: int, signed: bool, bias: int = 0,
                   finite_values_only: bool = False, nan_repr: int = _NAN_REPR_IEEE_754) -> int:
    """Port of ``ScalarType.id``: the fields or-ed into one int64, in this order and width:
    exponent 8, mantissa 8, signed 1, bias 32, finite_values_only 1, nan_repr 8 bits."""
    value, offset = 0, 0
    for member, width in ((exponent, 8), (mantissa, 8), (int(signed), 1), (bias, 32),
                          (int(finite_values_only), 1), (nan_repr, 8)):
        value |= (int(member) & ((1 << width) - 1)) << offset
        offset += width
    return value


# scalar_types.uint4 = ScalarType.uint(4, None); uint4b8 = ScalarType.uint(4, 8) (GPTQ, value = q - 8);
# float4_e2m1f = ScalarType.float_(2, 1, True, NanRepr.NONE); float8_e4m3fn = float_(4, 3, True, EXTD).
UINT4_ID = scalar_type_id(0, 4, False, 0)  # 1125899906843648
UINT4B8_ID = scalar_type_id(0, 4, False, 8)  # 1125899907892224
FLOAT4_E2M1F_ID = scalar_type_id(2, 1, True, 0, True, _NAN_REPR_NONE)  # 562949953487106
FLOAT8_E4M3FN_ID = scalar_type_id(4, 3, True, 0, True, _NAN_REPR_EXTD_RANGE_MAX_MIN)


# --- Permutations ------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _weight_perm_list() -> tuple[int, ...]:
    """``get_weight_perm(num_bits=4, is_a_8bit=False)`` from marlin_utils_test.py: 1024 entries."""
    perm_list: list[int] = []
    for i in range(32):
        perm1: list[int] = []
        col = i // 4
        for block in (0, 1):
            for row in (2 * (i % 4), 2 * (i % 4) + 1, 2 * (i % 4 + 4), 2 * (i % 4 + 4) + 1):
                perm1.append(16 * row + col + 8 * block)
        for j in range(4):
            perm_list.extend(p + 256 * j for p in perm1)
    interleave = (0, 2, 4, 6, 1, 3, 5, 7)  # num_bits == 4
    return tuple(perm_list[8 * g + k] for g in range(len(perm_list) // 8) for k in interleave)


def weight_perm(device: torch.device | str | None = None) -> torch.Tensor:
    """The 1024-entry Marlin weight permutation for 4-bit weights, 16-bit activations."""
    return torch.tensor(_weight_perm_list(), dtype=torch.long, device=device)


@lru_cache(maxsize=None)
def scale_perms() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``get_scale_perms()`` from marlin_utils.py: (scale_perm [64], scale_perm_single [32])."""
    scale_perm = [i + 8 * j for i in range(8) for j in range(8)]
    scale_perm_single = [2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)]
    return tuple(scale_perm), tuple(scale_perm_single)


_ZP_INTERLEAVE_4BIT = (0, 2, 4, 6, 1, 3, 5, 7)  # marlin_zero_points, num_bits == 4


# --- Nibble packing ----------------------------------------------------------------------------

_SHIFTS = tuple(4 * i for i in range(8))


def _to_int32_bits(acc: torch.Tensor) -> torch.Tensor:
    """int64 holding an unsigned 32-bit pattern -> int32 with the same bits (two's complement)."""
    acc = torch.where(acc >= 2**31, acc - 2**32, acc)
    return acc.to(torch.int32)


def pack_nibbles_last(q: torch.Tensor) -> torch.Tensor:
    """``[..., 8M]`` values in [0, 16) -> int32 ``[..., M]``; nibble i of word j is ``q[..., 8j+i]``.

    This is the packing of ``marlin_weights`` and ``pack_cols`` (``q_packed |= q[:, i::8] << 4*i``).
    """
    if q.shape[-1] % 8:
        raise ValueError(f"last dimension {q.shape[-1]} is not a multiple of 8")
    q = q.reshape(*q.shape[:-1], q.shape[-1] // 8, 8)
    acc = torch.zeros(q.shape[:-1], dtype=torch.int64, device=q.device)
    for i, shift in enumerate(_SHIFTS):  # one nibble at a time keeps the int64 temporaries small
        acc |= (q[..., i].to(torch.int64) & 0xF) << shift
    return _to_int32_bits(acc)


def unpack_nibbles_last(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_nibbles_last``: int32 ``[..., M]`` -> uint8 ``[..., 8M]``."""
    p = packed.to(torch.int32)
    parts = [((p >> shift) & 0xF).to(torch.uint8) for shift in _SHIFTS]
    return torch.stack(parts, dim=-1).reshape(*p.shape[:-1], p.shape[-1] * 8)


def unpack_gptq_rows(qweight: torch.Tensor) -> torch.Tensor:
    """GPTQ ``qweight`` int32 ``[..., K/8, N]`` (8 K-rows per word, low nibble first; vLLM
    ``pack_rows``) -> uint8 nibbles ``[..., K, N]``."""
    if qweight.dtype != torch.int32:
        raise ValueError(f"GPTQ qweight must be int32, got {qweight.dtype}")
    p = qweight
    parts = [((p >> shift) & 0xF).to(torch.uint8) for shift in _SHIFTS]  # each [..., K/8, N]
    q = torch.stack(parts, dim=-2)  # [..., K/8, 8, N]
    return q.reshape(*p.shape[:-2], p.shape[-2] * 8, p.shape[-1])


def pack_gptq_rows(q: torch.Tensor) -> torch.Tensor:
    """Inverse of ``unpack_gptq_rows``: nibbles ``[..., K, N]`` -> int32 ``[..., K/8, N]``."""
    K, N = q.shape[-2], q.shape[-1]
    if K % 8:
        raise ValueError(f"K={K} is not a multiple of 8")
    q = q.reshape(*q.shape[:-2], K // 8, 8, N).transpose(-1, -2)  # [..., K/8, N, 8]
    return pack_nibbles_last(q).squeeze(-1)  # [..., K/8, N, 1] -> [..., K/8, N]


# --- Weights -----------------------------------------------------------------------------------

def check_marlin_nk(size_k: int, size_n: int) -> None:
    """The tile constraints of the repack (K % 16, N % 64 for the 1024-wide permutation)."""
    if size_k % GPTQ_MARLIN_TILE:
        raise ValueError(f"size_k={size_k} is not a multiple of the Marlin tile {GPTQ_MARLIN_TILE}")
    if size_n % GPTQ_MARLIN_MIN_THREAD_N:
        raise ValueError(f"size_n={size_n} is not a multiple of {GPTQ_MARLIN_MIN_THREAD_N}")


def marlin_repack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """Nibbles ``[..., K, N]`` (unsigned 4-bit codes, K-major like GPTQ's unpacked ``q_w``) ->
    Marlin int32 ``[..., K/16, 2N]``.

    Port of ``marlin_weights(q_w, size_k, size_n, 4, get_weight_perm(4))``:
    reshape to 16x16 tiles ``(K/16, 16, N/16, 16)``, permute ``(0, 2, 1, 3)``, flatten to
    ``(K/16, N*16)``, apply the 1024-entry permutation to every run of 1024 values, then pack 8
    consecutive values per int32, low nibble first.
    """
    K, N = q.shape[-2], q.shape[-1]
    check_marlin_nk(K, N)
    lead = q.shape[:-2]
    t = GPTQ_MARLIN_TILE
    q = q.reshape(-1, K // t, t, N // t, t).permute(0, 1, 3, 2, 4).reshape(-1, K // t, N * t)
    perm = weight_perm(q.device)
    q = q.reshape(q.shape[0], -1, perm.numel())[:, :, perm].reshape(-1, K // t, N * t)
    return pack_nibbles_last(q).reshape(*lead, K // t, N * t // PACK_FACTOR_4BIT)


def gptq_to_marlin_qweight(qweight: torch.Tensor, *, chunk_nibbles: int = 1 << 28) -> torch.Tensor:
    """GPTQ ``qweight`` int32 ``[E, K/8, N]`` -> Marlin ``[E, K/16, 2N]`` int32, what
    ``ops.gptq_marlin_moe_repack(qweight, K, N, num_bits=4)`` returns (no act-order perm).

    Experts are processed in chunks of about ``chunk_nibbles`` 4-bit values to bound the
    temporary memory (the unpacked codes and int64 packing buffers).
    """
    if qweight.dim() != 3:
        raise ValueError(f"expected qweight [E, K/8, N], got shape {tuple(qweight.shape)}")
    E, K8, N = qweight.shape
    K = K8 * PACK_FACTOR_4BIT
    check_marlin_nk(K, N)
    out = torch.empty((E, K // GPTQ_MARLIN_TILE, N * GPTQ_MARLIN_TILE // PACK_FACTOR_4BIT),
                      dtype=torch.int32, device=qweight.device)
    per_chunk = max(1, chunk_nibbles // (K * N))
    for start in range(0, E, per_chunk):
        stop = min(E, start + per_chunk)
        out[start:stop] = marlin_repack_nibbles(unpack_gptq_rows(qweight[start:stop]))
    return out


# --- Scales, zero points, bias -----------------------------------------------------------------

def marlin_permute_scales(s: torch.Tensor, size_k: int, size_n: int, group_size: int) -> torch.Tensor:
    """Port of ``marlin_permute_scales(s, size_k, size_n, group_size, is_a_8bit=False)``.

    ``s [..., K/g, N]`` (``[..., 1, N]`` per channel). Grouped scales (``group_size < size_k`` and
    not -1) take the 64-entry ``scale_perm``; per-channel scales (or one group spanning K) take
    the 32-entry ``scale_perm_single``. Leading dims are experts (``marlin_moe_permute_scales``).
    """
    scale_perm, scale_perm_single = scale_perms()
    perm = scale_perm if (group_size < size_k and group_size != -1) else scale_perm_single
    if s.shape[-1] != size_n:
        raise ValueError(f"scales last dimension {s.shape[-1]} != size_n {size_n}")
    idx = torch.tensor(perm, dtype=torch.long, device=s.device)
    lead = s.shape[:-2]
    rows = s.shape[-2]
    flat = s.reshape(-1, rows * size_n)
    if (rows * size_n) % len(perm):
        raise ValueError(f"{rows}x{size_n} scales do not split into runs of {len(perm)}")
    out = flat.reshape(flat.shape[0], -1, len(perm))[:, :, idx]
    return out.reshape(*lead, rows, size_n).contiguous()


def marlin_zero_points(zp: torch.Tensor, size_n: int) -> torch.Tensor:
    """Port of ``marlin_zero_points(zp, size_k=num_groups, size_n, num_bits=4, is_a_8bit=False)``.

    Unpacked integer zero points ``[..., G, N]`` in [0, 16) -> int32 ``[..., G, N/8]``: permute
    with the 64-entry ``scale_perm`` (always, also per channel: zero points are applied on every
    MMA), interleave each run of 8 as ``[0, 2, 4, 6, 1, 3, 5, 7]``, then ``pack_cols``.
    """
    scale_perm, _ = scale_perms()
    if zp.shape[-1] != size_n:
        raise ValueError(f"zero points last dimension {zp.shape[-1]} != size_n {size_n}")
    lead, rows = zp.shape[:-2], zp.shape[-2]
    z = zp.to(torch.int64).reshape(-1, rows * size_n)
    if (rows * size_n) % 64:
        raise ValueError(f"{rows}x{size_n} zero points do not split into runs of 64")
    z = z.reshape(z.shape[0], -1, 64)[:, :, torch.tensor(scale_perm, device=zp.device)]
    z = z.reshape(z.shape[0], -1, 8)[:, :, torch.tensor(_ZP_INTERLEAVE_4BIT, device=zp.device)]
    z = z.reshape(-1, rows, size_n)
    return pack_nibbles_last(z).reshape(*lead, rows, size_n // PACK_FACTOR_4BIT).contiguous()


def marlin_permute_bias(b: torch.Tensor) -> torch.Tensor:
    """Port of ``marlin_permute_bias``: runs of 32 along the flattened tensor take ``scale_perm_single``."""
    _, scale_perm_single = scale_perms()
    idx = torch.tensor(scale_perm_single, dtype=torch.long, device=b.device)
    if b.numel() % 32:
        raise ValueError(f"bias of {b.numel()} elements does not split into runs of 32")
    return b.reshape(-1, 32)[:, idx].reshape(b.shape).contiguous()


# --- FP4 (NvFP4 / MXFP4) scales: marlin_utils_fp4.py ---------------------------------------------
#
# FP4 weights take the int4 path: vLLM views the e2m1 bytes ``[N, K/2]`` (element 2j in the low
# nibble) as int32 ``[N, K/8]``, transposes to the GPTQ ``[K/8, N]`` and calls
# ``gptq_marlin_repack(num_bits=4)`` (``_repack_marlin_experts``), so the nibble codes go through
# ``marlin_repack_nibbles`` unchanged. Only the scales differ.

FP4_INTERLEAVE = (0, 2, 1, 3)  # "fit the layout of fp8 dequantization", runs of 4 along the flattened scales


def _interleave_runs_of_4(s: torch.Tensor) -> torch.Tensor:
    rows = s.shape[-2]
    idx = torch.tensor(FP4_INTERLEAVE, dtype=torch.long, device=s.device)
    return s.reshape(-1, 4)[:, idx].reshape(*s.shape[:-2], rows, -1)


def nvfp4_compute_scale_factor(scales: torch.Tensor, a_dtype: torch.dtype) -> float:
    """Port of ``_nvfp4_compute_scale_factor``: the power of two (>= 1) that lifts the largest
    non-zero ``scale * 2^7`` to just below ``448 * 2^7``; 1.0 for fp16 activations."""
    if a_dtype == torch.half:
        return 1.0
    ws = scales.float() * (2**7)
    nonzero = ws > 0
    if bool(nonzero.any()):
        max_val = ws[nonzero].max()
        if float(max_val) < 448 * (2**7):
            return float((448 * (2**7) / max_val).log2().floor().exp2())
    return 1.0


def nvfp4_marlin_process_scales(marlin_scales: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """Port of ``nvfp4_marlin_process_scales`` (given the scale factor): Marlin-permuted e4m3 scales
    ``[..., G, N]`` (any float dtype holding e4m3 values) -> the kernel's S0E5M3 bytes, as
    ``float8_e4m3fn [..., G, N]``. Steps: to half; runs of 4 as [0, 2, 1, 3]; times the factor;
    times 2^7; values < 2 -> 0; the int16 bits shifted left by 1; keep the high byte."""
    s = marlin_scales.to(torch.half)
    s = _interleave_runs_of_4(s)
    if scale_factor > 1.0:
        s = (s.float() * scale_factor).to(torch.half)
    s = s * (2**7)
    s = torch.where(s < 2, torch.zeros_like(s), s)
    s = (s.view(torch.int16) << 1).view(torch.float8_e4m3fn)  # [..., G, 2N] bytes, little-endian
    return s[..., 1::2].contiguous()


def nvfp4_marlin_process_global_scale(global_scale: torch.Tensor, a_dtype: torch.dtype) -> torch.Tensor:
    """Port of ``nvfp4_marlin_process_global_scale``: the *dequant* global scale times
    ``2^(exponent_bias - 7)``, exponent_bias = 2^(e-1) - 2^(2-1) with e = 5 (fp16) or 8 (bf16)."""
    target_exponent = 5 if a_dtype == torch.half else 8
    exponent_bias = 2 ** (target_exponent - 1) - 2 ** (2 - 1)
    return global_scale * (2.0 ** (exponent_bias - 7))


def mxfp4_marlin_process_scales(marlin_scales: torch.Tensor) -> torch.Tensor:
    """Port of ``mxfp4_marlin_process_scales`` for 16-bit activations on e8m0 *bytes*: runs of 4
    as [0, 2, 1, 3], then viewed as ``float8_e8m0fnu`` (vLLM round-trips the values through the
    param dtype; the permutation does not depend on them, so permuting the bytes is the same)."""
    if marlin_scales.dtype != torch.uint8:
        raise ValueError(f"expected e8m0 bytes (uint8), got {marlin_scales.dtype}")
    return _interleave_runs_of_4(marlin_scales).contiguous().view(torch.float8_e8m0fnu)


# --- Block size and token alignment (pure torch fallback) -------------------------------------

def choose_block_size_m(num_tokens: int, top_k: int, num_experts: int) -> int:
    """``fused_marlin_moe``'s M block size: the first of 8, 16, 32, 48, 64 with
    ``M * topk / E / block < 0.9`` (64 if none)."""
    block = 64
    for block in (8, 16, 32, 48, 64):
        if num_tokens * top_k / num_experts / block < 0.9:
            break
    return block


def align_buffer_sizes(numel: int, num_experts: int, block_size: int) -> tuple[int, int]:
    """Sizes of ``sorted_token_ids`` and ``expert_ids`` as ``moe_align_block_size`` (Python,
    ``fused_moe/moe_align_block_size.py``) allocates them (``pad_sorted_ids=False``)."""
    max_padded = numel + num_experts * (block_size - 1)
    if numel < num_experts:
        max_padded = min(numel * block_size, max_padded)
    return max_padded, -(-max_padded // block_size)


def moe_align_block_size_torch(topk_ids: torch.Tensor, num_experts: int, block_size: int
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-torch ``moe_align_block_size`` (no expert map): the same contract as the CUDA op.

    ``sorted_token_ids`` lists, expert by expert, the flat indices ``t * top_k + j`` routed to that
    expert, each expert's run padded to a multiple of ``block_size`` with the sentinel
    ``topk_ids.numel()``; ``expert_ids[b]`` is the expert of block ``b`` (0 for unused tail
    blocks, as the CUDA kernel fills them); ``num_tokens_post_padded[0]`` is the padded total.
    Within an expert the CUDA op orders tokens by atomics, so its order may differ from this
    stable one; the GEMM does not depend on the order.
    """
    device = topk_ids.device
    flat = topk_ids.reshape(-1).to(torch.int64)
    numel = flat.numel()
    max_padded, num_blocks = align_buffer_sizes(numel, num_experts, block_size)
    # No host sync (capturable in a CUDA graph): every size comes from metadata; counts by scatter_add
    # (bincount reads the maximum on the host), block owners by searchsorted (repeat_interleave with
    # tensor repeats reads the total on the host), the padded total stays on the device.
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_size - 1) // block_size * block_size
    starts = torch.cumsum(padded, 0) - padded
    sorted_ids = torch.full((max_padded,), numel, dtype=torch.int32, device=device)
    order = torch.argsort(flat, stable=True)
    experts_sorted = flat[order]
    rank = torch.arange(numel, device=device) - (torch.cumsum(counts, 0) - counts)[experts_sorted]
    sorted_ids[starts[experts_sorted] + rank] = order.to(torch.int32)
    blocks_end = torch.cumsum(padded // block_size, 0)  # expert e owns blocks [blocks_end[e-1], blocks_end[e])
    owner = torch.searchsorted(blocks_end, torch.arange(num_blocks, device=device), right=True)
    expert_ids = torch.where(owner < num_experts, owner, 0).to(torch.int32)
    num_tokens_post_padded = padded.sum().to(torch.int32).view(1)
    return sorted_ids, expert_ids, num_tokens_post_padded
