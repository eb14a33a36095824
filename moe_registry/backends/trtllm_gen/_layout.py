"""TRT-LLM-gen weight layouts, shared by every kernel of the family: ports of FlashInfer's pure
python/torch row-permutation helpers, its K-block layout and the 128x4 scale interleave. Imports torch.

Every kernel consumes GEMM1 as ``[up; gate]`` (canonical ``[gate; up]`` is swapped first), with
rows permuted per expert by ``w3_w1_permute_indices`` (the gated-activation row interleave composed
with the ``shuffleMatrixA`` epilogue shuffle) and GEMM2 by ``w2_permute_indices`` (the shuffle
only). Block-scaled kernels permute their scale rows the same way and 128x4-interleave them;
BlockMajorK kernels (bf16, MXINT4) then reblock K (``convert_to_block_layout``).
"""

from __future__ import annotations

import torch

EPILOGUE_TILE_M = 128  # "FIXME: this depends on the kernel internals" (FlashInfer tests / prepare.py)
BLOCK_K_BYTES = 128  # BlockMajorK: K blocked by 128 bytes (prepare.py block_k = 128 on uint8 views)

# flashinfer/utils.py srcToDstBlk16RowMap / srcToDstBlk32RowMap (L1042-1062).
_SRC_TO_DST_BLK16 = (0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15)
_SRC_TO_DST_BLK32 = (0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27,
                     4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31)


def shuffle_block_size(epilogue_tile_m: int) -> int:
    """``flashinfer/utils.py::get_shuffle_block_size``: 32 when ``epilogue_tile_m % 128 == 0``, else 16."""
    return 32 if epilogue_tile_m % 128 == 0 else 16


def shuffle_matrix_a_row_indices(m: int, epilogue_tile_m: int = EPILOGUE_TILE_M) -> torch.Tensor:
    """``flashinfer/utils.py::get_shuffle_matrix_a_row_indices`` (L1073): ``row_indices[new] = old``
    for TRT-LLM-gen ``shuffleMatrixA``, reordering rows inside blocks of 16 or 32."""
    block = shuffle_block_size(epilogue_tile_m)
    if m % block:
        raise ValueError(f"shuffle_matrix_a: rows ({m}) must be a multiple of {block}")
    row_map = torch.tensor(_SRC_TO_DST_BLK16 if block == 16 else _SRC_TO_DST_BLK32, dtype=torch.long)
    old = torch.arange(m, dtype=torch.long)
    new = (old // block) * block + row_map[old % block]
    indices = torch.empty(m, dtype=torch.long)
    indices[new] = old
    return indices


def shuffle_matrix_sf_a_row_indices(m: int, epilogue_tile_m: int = EPILOGUE_TILE_M,
                                    num_elts_per_sf: int = 16) -> torch.Tensor:
    """``flashinfer/utils.py::get_shuffle_matrix_sf_a_row_indices`` (L1111): the same rows as the
    data shuffle, for linear-layout scales of a matrix with ``m % 128 == 0`` rows."""
    if num_elts_per_sf not in (16, 32):
        raise ValueError(f"num_elts_per_sf must be 16 or 32, got {num_elts_per_sf}")
    if m % 128:
        raise ValueError(f"shuffle_matrix_sf_a: rows ({m}) must be a multiple of 128")
    return shuffle_matrix_a_row_indices(m, epilogue_tile_m)


def reorder_rows_for_gated_act_gemm_indices(m: int) -> torch.Tensor:
    """``fused_moe/core.py::get_reorder_rows_for_gated_act_gemm_row_indices`` (L548):
    ``[r0, ..., r(M/2-1), rM/2, ..., r(M-1)] -> [r0, rM/2, r1, rM/2+1, ...]``."""
    if m % 2:
        raise ValueError(f"reorder_rows_for_gated_act_gemm: rows ({m}) must be even")
    rows = torch.arange(m, dtype=torch.long)
    out = torch.empty_like(rows)
    out[0::2] = rows[: (m + 1) // 2]
    out[1::2] = rows[(m + 1) // 2:]
    return out


def w3_w1_permute_indices(m: int, epilogue_tile_m: int = EPILOGUE_TILE_M, *, gated: bool = True,
                          num_elts_per_sf: int | None = None) -> torch.Tensor:
    """``fused_moe/core.py::_maybe_get_cached_w3_w1_permute_indices`` (L475): the gated reorder
    (identity when non-gated) composed with the A shuffle (scale variant when ``num_elts_per_sf``)."""
    permute0 = reorder_rows_for_gated_act_gemm_indices(m) if gated else torch.arange(m, dtype=torch.long)
    if num_elts_per_sf is None:
        permute1 = shuffle_matrix_a_row_indices(m, epilogue_tile_m)
    else:
        permute1 = shuffle_matrix_sf_a_row_indices(m, epilogue_tile_m, num_elts_per_sf)
    return permute0[permute1]


def w2_permute_indices(m: int, epilogue_tile_m: int = EPILOGUE_TILE_M, *,
                       num_elts_per_sf: int | None = None) -> torch.Tensor:
    """``fused_moe/core.py::get_w2_permute_indices_with_cache`` (L514): the shuffle only."""
    if num_elts_per_sf is None:
        return shuffle_matrix_a_row_indices(m, epilogue_tile_m)
    return shuffle_matrix_sf_a_row_indices(m, epilogue_tile_m, num_elts_per_sf)


def permute_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of every expert of ``t [E, M, ...]`` gathered by one index (the permutation depends only
    on M, so it is applied to all experts at once)."""
    return t.index_select(1, index.to(t.device)).contiguous()


def block_major_k(t: torch.Tensor, block_bytes: int = BLOCK_K_BYTES) -> torch.Tensor:
    """``fused_moe/core.py::convert_to_block_layout`` per expert: ``[E, M, K]`` ->
    ``[E, K/bk, M, bk]`` with ``bk = block_bytes / element size`` (128 bytes: 64 bf16, 256 packed int4)."""
    E, M, K = t.shape
    bk = block_bytes // t.element_size()
    if K % bk:
        raise ValueError(f"block_major_k: K ({K}) must be a multiple of {bk}")
    return t.view(E, M, K // bk, bk).permute(0, 2, 1, 3).contiguous()


def interleaved_scales(scale: torch.Tensor) -> torch.Tensor:
    """``block_scale_interleave`` of per-expert linear scales ``[E, rows, cols]`` (any dtype), kept in
    the linear shape (valid when rows % 128 == 0 and cols % 4 == 0, which the kernels' alignment
    rules give). FlashInfer's own is a CUDA kernel; ``moe_registry.formats.swizzle_128x4`` is its
    torch port."""
    from moe_registry.formats import swizzle_128x4

    E, rows, cols = scale.shape
    if rows % 128 or cols % 4:
        raise ValueError(f"block scales [{rows}, {cols}] need rows % 128 == 0 and cols % 4 == 0")
    return swizzle_128x4(scale).reshape(E, rows, cols)
