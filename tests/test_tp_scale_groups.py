"""Why a TP shard that splits NvFP4's 16-element scale groups must be cut on the group grid.

GEMM2 reduces over the intermediate, which TP splits: y = sum over ranks of h[:, shard] @ W2[:, shard]^T.
A rank whose shard starts mid-group needs the scale of a group it holds only part of.

* Group-grid shards (selection's rule; vLLM's block-aligned TP loading for FP8 blocks, oracle/fp8.py
  L324-352 pad_tp_shard_to_weight_blocks, routed_experts.py L391-418): rank r takes columns
  [r*S, r*S + S) with S = round_up(I/tp, 16), zero-filled past I, then padded for the kernel.
  Every rank holds whole groups with their own scales, so the sum is the unsharded GEMM: exact.
* vLLM 0.33's NvFP4 loading (quantization/modelopt.py L980: w2_weight_scale has I_pp // 16 columns;
  fused_moe/routed_experts.py _load_w2 L594-595 slices the checkpoint with loaded_per_rank =
  (I/16) // tp at offset rank * loaded_per_rank, the packed weights at rank * I_pp / 2 bytes;
  quantization/utils/flashinfer_utils.py L275-278 zero-pads the scales to the padded width): the
  scales no longer line up with the values. Simulated here from that arithmetic, not run.
"""

from __future__ import annotations

import torch

from moe_registry.formats import quantize_nvfp4
from moe_registry.formats._common import e2m1_decode

H, I, TP, G = 32, 176, 2, 16  # I/TP = 88 = 5.5 groups, as Gemma 4's 704 at TP8


def _weights():
    gen = torch.Generator().manual_seed(0)
    w2 = torch.randn(H, I, generator=gen)
    h = torch.randn(8, I, generator=gen)
    return quantize_nvfp4(w2), h


def _dequant(data: torch.Tensor, scale: torch.Tensor, global_scale: torch.Tensor, k: int) -> torch.Tensor:
    """Values [H, k] from packed e2m1 [H, k/2] and per-16 scales (missing scale columns read as 0)."""
    values = e2m1_decode(data)[:, :k]
    cols = torch.arange(k) // G
    sf = torch.zeros(H, k)
    have = cols < scale.shape[1]
    sf[:, have] = scale.float()[:, cols[have]]
    return values * sf / global_scale


def test_group_grid_shards_are_exact():
    q, h = _weights()
    full = h @ q.dequantize().T
    stride = -(-(I // TP) // G) * G  # 96
    out = torch.zeros_like(full)
    for r in range(TP):
        start, stop = r * stride, min(r * stride + stride, I)
        assert start % G == 0  # every shard starts on a group boundary
        data = torch.zeros(H, stride // 2, dtype=torch.uint8)
        data[:, :(stop - start) // 2] = q.data[:, start // 2:stop // 2]
        scale = torch.zeros(H, stride // G, dtype=torch.float8_e4m3fn)
        scale[:, :-(-(stop - start) // G)] = q.scale[:, start // G:-(-stop // G)]
        h_shard = torch.zeros(h.shape[0], stride)
        h_shard[:, :stop - start] = h[:, start:stop]  # the rank's GEMM1 rows past I are zero too
        out += h_shard @ _dequant(data, scale, q.global_scale, stride).T
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)


def test_floor_sliced_scales_are_not():
    q, h = _weights()
    full = h @ q.dequantize().T
    local = I // TP  # 88
    per_rank = (I // G) // TP  # 11 // 2 = 5 scale columns per rank
    out = torch.zeros_like(full)
    for r in range(TP):
        data = q.data[:, r * local // 2:(r + 1) * local // 2]
        scale = q.scale[:, r * per_rank:r * per_rank + local // G]
        out += h[:, r * local:(r + 1) * local] @ _dequant(data, scale, q.global_scale, local).T
    err = ((out - full).norm() / full.norm()).item()
    assert err > 0.1, err  # not a rounding difference: rank 1's scales are half a group off
