"""CPU tests of moe_registry.formats: recipes, bounds, bit layouts, validation.

Error bounds used below (all elementwise, on random normal weights):
- e2m1 (NvFP4, MXFP4): values are rounded to the nearest point of {0, .5, 1, 1.5, 2, 3, 4, 6} times
  the block step s, so |x - deq| <= h(|x|/s) * s with h = 0.25 on [0, 2], 0.5 on (2, 4], 1 on
  (4, 6] (half the local spacing). Values past 6s saturate; for NvFP4 that only happens when the
  e4m3 scale rounded down (relative error <= 2^-4), so |x|/s <= 6.375 and h = 1 still bounds it.
- e4m3 (FP8): 3 mantissa bits, so |x - q| <= 2^-4 |x| for normal values and <= 2^-10 (half the
  subnormal spacing 2^-9) below 2^-6, in units of the scale.
- int4 RTN: |x - deq| <= s / 2 per group (plus the rounding of s to fp16/bf16 for zero points).
"""

from __future__ import annotations

import math

import pytest
import torch

from moe_registry.formats import (
    E2M1_VALUES,
    Fp8BlockTensor,
    Fp8Tensor,
    Int4GroupTensor,
    MxFp4Tensor,
    NvFp4Tensor,
    desc_act_g_idx,
    e8m0_to_float,
    pack_int4,
    quantize,
    quantize_fp8,
    quantize_fp8_block,
    quantize_int4,
    quantize_mxfp4,
    quantize_nvfp4,
    swizzle_128x4,
    unpack_int4,
    unswizzle_128x4,
)
from moe_registry.schemas.quant import QuantKind, QuantScheme

GRID = torch.tensor(E2M1_VALUES)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def codes_of(data: torch.Tensor) -> torch.Tensor:
    """Independent nibble unpack: element 2j = low nibble, 2j+1 = high nibble (Python ints)."""
    flat = data.reshape(-1, data.shape[-1]).tolist()
    rows = [[c for byte in row for c in (byte & 0xF, byte >> 4)] for row in flat]
    return torch.tensor(rows, dtype=torch.int64).reshape(*data.shape[:-1], data.shape[-1] * 2)


def code_value(codes: torch.Tensor) -> torch.Tensor:
    mag = GRID[(codes & 7)]
    return torch.where(codes >= 8, -mag, mag)


def half_step(a: torch.Tensor) -> torch.Tensor:
    return torch.where(a <= 2, 0.25, torch.where(a <= 4, 0.5, 1.0))


def ref_e2m1_rne(a: torch.Tensor) -> torch.Tensor:
    """Round-half-even onto the e2m1 grid via the uniform spacing of each binade (torch.round is
    half-to-even), saturating at 6. Independent of the midpoint counting in the library."""
    r = torch.where(a < 2, torch.round(a * 2) / 2, torch.where(a < 4, torch.round(a), torch.round(a / 2) * 2))
    return r.clamp(max=6.0)


def ref_e2m1_ties_down(a: torch.Tensor) -> torch.Tensor:
    """Nearest e2m1 magnitude, first (lower) on ties: argmin over the table."""
    return GRID[(a.unsqueeze(-1) - GRID).abs().argmin(dim=-1)]


# ---------------------------------------------------------------------------------------- NvFP4


def nvfp4_step(t: NvFp4Tensor) -> torch.Tensor:
    """Dequant step per element: float(sf) / gs, broadcast over the 16 values of a block."""
    sf = t.scale.float().repeat_interleave(16, dim=-1)
    return sf / t.global_scale[..., None, None]


def test_nvfp4_roundtrip_bound_and_scales():
    w = (torch.randn(3, 64, 256, generator=gen(1)) * 0.05).to(torch.bfloat16)
    t = quantize_nvfp4(w)
    x = w.float()
    assert t.data.shape == (3, 64, 128) and t.data.dtype == torch.uint8
    assert t.scale.shape == (3, 64, 16) and t.scale.dtype == torch.float8_e4m3fn
    assert t.global_scale.shape == (3,) and t.shape == torch.Size((3, 64, 256))
    amax = x.abs().amax(dim=(-1, -2))
    torch.testing.assert_close(t.global_scale, 2688.0 / amax, rtol=0, atol=0)
    # The block holding each expert's amax gets sf = e4m3(448) = 448.
    assert (t.scale.float().amax(dim=(-1, -2)) == 448).all()
    # Scales: e4m3(gs * vmax / 6) (plain division here; equal except at e4m3 ties).
    vmax = x.unflatten(-1, (-1, 16)).abs().amax(-1)
    expected_sf = (t.global_scale[:, None, None] * vmax / 6).clamp(max=448).to(torch.float8_e4m3fn).float()
    assert torch.equal(t.scale.float(), expected_sf)
    # Codes: round-half-even of x * out_scale, out_scale = rcp(sf * rcp(gs)) in fp32 as the recipe
    # says. bf16 weights hit exact e2m1 midpoints there (30 of 49152 values here), so the fp32
    # order of operations matters: x / step instead would round those ties differently.
    sf = t.scale.float().repeat_interleave(16, dim=-1)
    out_scale = 1.0 / (sf * (1.0 / t.global_scale[:, None, None]))
    codes = codes_of(t.data)
    assert torch.equal(code_value(codes).abs(), ref_e2m1_rne(x.abs() * out_scale))
    step = nvfp4_step(t)
    assert torch.equal(codes >= 8, torch.signbit(x))
    # Elementwise bound.
    deq = t.dequantize()
    bound = half_step(x.abs() / step) * step * (1 + 1e-5)
    assert ((x - deq).abs() <= bound).all()
    assert (x.abs() / step).max() <= 6 * (1 + 2**-4) + 1e-4
    # And the error is not trivially zero (the test can fail in both directions).
    rel = (x - deq).abs().mean() / x.abs().mean()
    assert 0.02 < rel < 0.15
    assert t.dequantize(torch.bfloat16).dtype == torch.bfloat16


def test_nvfp4_exact_values_roundtrip():
    g = gen(2)
    e, n, blocks = 2, 8, 4
    idx = torch.randint(0, 16, (e, n, blocks, 16), generator=g)
    idx[..., 0] = 7  # block max 6 -> sf = 2^p exactly (6 * fp32(1/6) rounds to 1.0)
    vals = code_value(idx).float()
    p = torch.randint(-4, 5, (e, n, blocks, 1), generator=g).float()
    w = (vals * torch.exp2(p)).flatten(-2)
    t = quantize_nvfp4(w, global_scale=1.0)
    assert torch.equal(t.scale.float(), torch.exp2(p).squeeze(-1))
    deq = t.dequantize()
    assert torch.equal(deq, w)
    # Every code comes back, -0.0 (code 8) included: its sign bit is kept like cvt.rn.e2m1 does.
    assert (idx == 8).any()
    assert torch.equal(codes_of(t.data).reshape(idx.shape), idx)


def test_nvfp4_nibble_order():
    row = torch.tensor([[0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.5, -1.0, -6.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0]])
    t = quantize_nvfp4(row, global_scale=1.0)
    # codes: .5=1, 1=2, 1.5=3, 2=4, 3=5, 4=6, 6=7, -.5=9, -1=10, -6=15
    assert t.data[0].tolist() == [0x21, 0x43, 0x65, 0x97, 0xFA, 0x00, 0x00, 0x70]
    assert torch.equal(t.dequantize(), row)


def test_nvfp4_round_half_even_and_saturation():
    # gs = 1 and block max 6 -> sf = 1, out_scale = 1: values are rounded as they are.
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, -3.5, 0.2, 0.3, 2.6, 4.9, 5.1, -0.1, 6.0]
    expected = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -1.0, -4.0, 0.0, 0.5, 3.0, 4.0, 6.0, -0.0, 6.0]
    t = quantize_nvfp4(torch.tensor([ties]), global_scale=1.0)
    assert t.scale.float().item() == 1.0
    deq = t.dequantize()[0]
    assert deq.tolist() == expected
    assert codes_of(t.data)[0, 14].item() == 8  # -0.1 -> -0 (sign kept)
    # Saturation: vmax = 6.2 -> sf = e4m3(1.0333) = 1.0 (rounded down), so 6.2 -> 6.
    t = quantize_nvfp4(torch.tensor([[6.2, 5.9, -6.2] + [0.0] * 13]), global_scale=1.0)
    assert t.scale.float().item() == 1.0
    assert t.dequantize()[0, :3].tolist() == [6.0, 6.0, -6.0]


def test_nvfp4_scale_clamped_at_448_no_nan():
    w = torch.randn(4, 32, generator=gen(3)) * 100
    t = quantize_nvfp4(w, global_scale=1e6)  # gs * vmax / 6 >> 448: the e4m3 scale saturates
    assert (t.scale.float() == 448).all()
    deq = t.dequantize()
    assert torch.isfinite(deq).all()
    assert torch.equal(deq.abs(), torch.full_like(deq, 6 * 448 / 1e6, dtype=torch.float32).where(w != 0, 0.0))


def test_nvfp4_zero_blocks_and_underflow():
    w = torch.randn(2, 4, 64, generator=gen(4))
    w[0, 1, 16:32] = 0  # one zero block
    w[0, 2, :16] = 1e-9  # sf = e4m3(2688/amax * 1e-9 / 6) underflows to 0 -> zeros, no NaN
    w[1] = 0  # a whole zero expert: gs falls back to 1
    t = quantize_nvfp4(w)
    assert t.global_scale[1].item() == 1.0
    deq = t.dequantize()
    assert torch.isfinite(deq).all()
    assert t.scale[0, 1, 1].float().item() == 0 and (deq[0, 1, 16:32] == 0).all()
    assert t.scale[0, 2, 0].float().item() == 0 and (deq[0, 2, :16] == 0).all()
    assert (deq[1] == 0).all() and (t.scale[1].float() == 0).all()


def test_nvfp4_per_expert_global_scale_tensor():
    w = torch.randn(2, 8, 32, generator=gen(5))
    gs = torch.tensor([100.0, 200.0])
    t = quantize_nvfp4(w, global_scale=gs)
    assert torch.equal(t.global_scale, gs)
    for e in range(2):
        single = quantize_nvfp4(w[e], global_scale=float(gs[e]))
        assert torch.equal(single.data, t.data[e]) and torch.equal(single.scale.float(), t.scale[e].float())


# ---------------------------------------------------------------------------------------- MXFP4


def test_mxfp4_roundtrip_bound_and_scales():
    w = (torch.randn(2, 48, 256, generator=gen(6)) * 0.02).to(torch.bfloat16)
    t = quantize_mxfp4(w)
    x = w.float()
    assert t.data.shape == (2, 48, 128) and t.scale.shape == (2, 48, 8) and t.scale.dtype == torch.uint8
    s_block = e8m0_to_float(t.scale)
    amax6 = x.unflatten(-1, (-1, 32)).abs().amax(-1) / 6
    # Power-of-two scale rounded up: s / 2 < amax / 6 <= s.
    assert ((amax6 <= s_block) & (s_block / 2 < amax6)).all()
    step = s_block.repeat_interleave(32, dim=-1)
    codes = codes_of(t.data)
    assert torch.equal(code_value(codes).abs(), ref_e2m1_ties_down(x.abs() / step))
    deq = t.dequantize()
    assert ((x - deq).abs() <= half_step(x.abs() / step) * step * (1 + 1e-6)).all()
    rel = (x - deq).abs().mean() / x.abs().mean()
    assert 0.02 < rel < 0.2


def test_mxfp4_exact_values_ties_down_and_zero_block():
    g = gen(7)
    idx = torch.randint(0, 16, (4, 2, 32), generator=g)
    vals = code_value(idx).float()
    vals[..., 5] = -6.0
    p = torch.randint(-10, 10, (4, 2, 1), generator=g).float()
    w = (vals * torch.exp2(p)).flatten(-2)
    t = quantize_mxfp4(w)
    assert torch.equal(t.scale.int() - 127, p.squeeze(-1).int())
    assert torch.equal(t.dequantize(), w)
    # Ties go to the lower magnitude (bucketize right=False), not to even.
    row = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, -0.25, -0.0, 6.0] + [0.0] * 21
    t = quantize_mxfp4(torch.tensor([row]))
    assert t.scale.item() == 127  # amax 6 -> 2^0
    assert t.dequantize()[0, :9].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, -0.5, -0.0]
    c = codes_of(t.data)[0]
    assert c[8].item() == 8 and c[9].item() == 0  # -0.25 -> sign set (x < 0); -0.0 -> +0
    # Zero block: byte 0 (2^-127), zero data.
    t = quantize_mxfp4(torch.zeros(1, 64))
    assert t.scale.tolist() == [[0, 0]] and (t.data == 0).all() and (t.dequantize() == 0).all()


def test_e8m0_decode_exact():
    b = torch.arange(0, 256, dtype=torch.int64).to(torch.uint8)
    v = e8m0_to_float(b)
    for byte in (0, 1, 100, 127, 200, 254):
        assert v[byte].item() == math.ldexp(1.0, byte - 127)
    assert math.isnan(v[255].item())


# ------------------------------------------------------------------------------------------ FP8


def test_fp8_per_tensor_bound_and_exact():
    w = torch.randn(3, 32, 64, generator=gen(8)) * torch.tensor([0.01, 1.0, 30.0])[:, None, None]
    t = quantize_fp8(w)
    assert t.data.dtype == torch.float8_e4m3fn and t.scale.shape == (3,) and t.shape == w.shape
    torch.testing.assert_close(t.scale, w.abs().amax(dim=(-1, -2)) / 448, rtol=1e-6, atol=0)
    assert (t.data.float().abs().amax(dim=(-1, -2)) == 448).all()
    deq = t.dequantize()
    s = t.scale[:, None, None]
    bound = torch.maximum(w.abs() * 2**-4, 2**-10 * s) * (1 + 1e-5)
    assert ((w - deq).abs() <= bound).all()
    # Exact: e4m3 grid values times 2^-3, with 448 present -> scale 2^-3 exactly.
    grid = torch.arange(0, 256, dtype=torch.int64).to(torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)]
    vals = grid[torch.randint(0, grid.numel(), (16, 32), generator=gen(9))]
    vals[0, 0] = 448.0
    w = vals * 0.125
    t = quantize_fp8(w)
    assert t.scale.item() == 0.125 and torch.equal(t.dequantize(), w)
    # Zero tensor: multiplier 1, scale 1 (FlashInfer), zeros.
    t = quantize_fp8(torch.zeros(4, 8))
    assert t.scale.item() == 1.0 and (t.dequantize() == 0).all()


@pytest.mark.parametrize("shape", [(256, 384), (200, 300), (2, 130, 129), (1, 5)])
def test_fp8_block_partial_tiles(shape):
    w = torch.randn(*shape, generator=gen(10))
    w[..., : min(shape[-2], 128), 128:256] = 0 if shape[-1] > 128 else w[..., : min(shape[-2], 128), 128:256]
    t = quantize_fp8_block(w)
    n, k = shape[-2:]
    tn, tk = math.ceil(n / 128), math.ceil(k / 128)
    assert t.scale.shape == (*shape[:-2], tn, tk) and t.data.shape == w.shape
    deq = t.dequantize()
    flat_w, flat_s, flat_d = w.reshape(-1, n, k), t.scale.reshape(-1, tn, tk), deq.reshape(-1, n, k)
    for b in range(flat_w.shape[0]):
        for i in range(tn):
            for j in range(tk):
                tile = flat_w[b, i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
                s = flat_s[b, i, j].item()
                assert s == pytest.approx(max(tile.abs().max().item() / 448, 1e-12), rel=1e-6)
                err = (tile - flat_d[b, i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]).abs()
                assert (err <= torch.maximum(tile.abs() * 2**-4, torch.tensor(2**-10 * s)) * (1 + 1e-5)).all()
    assert torch.isfinite(deq).all()


# ----------------------------------------------------------------------------------------- INT4


def test_int4_pack_order_vs_independent_unpack():
    q = torch.randint(0, 16, (2, 32, 6), generator=gen(11))
    q[0, :8, 0] = torch.arange(8)
    q[0, 8:16, 0] = 15
    packed = pack_int4(q)
    assert packed.dtype == torch.int32 and packed.shape == (2, 4, 6)
    assert packed[0, 0, 0].item() == 0x76543210
    assert packed[0, 1, 0].item() == -1  # 0xFFFFFFFF as int32
    for e in range(2):
        for i in range(4):
            for n in range(6):
                word = packed[e, i, n].item() & 0xFFFFFFFF
                for j in range(8):
                    assert (word >> (4 * j)) & 0xF == q[e, 8 * i + j, n].item()
    assert torch.equal(unpack_int4(packed), q.int())


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group_size", [32, 128, -1])
def test_int4_symmetric_roundtrip(scale_dtype, group_size):
    w = torch.randn(2, 24, 256, generator=gen(12)) * 0.03
    t = quantize_int4(w, group_size=group_size, scale_dtype=scale_dtype)
    g = 256 if group_size == -1 else group_size
    assert t.qweight.shape == (2, 32, 24) and t.scales.shape == (2, 256 // g, 24) and t.zeros is None
    assert t.scales.dtype == scale_dtype and t.shape == w.shape and t.kind is QuantKind.INT4_W4A16
    groups = w.transpose(-1, -2).unflatten(-2, (-1, g))  # [E, G, g, N]
    vllm_scale = torch.maximum(groups.amax(-2).abs() / 7, groups.amin(-2).abs() / 8).to(scale_dtype)
    assert torch.equal(t.scales, vllm_scale)
    s = t.scales.float().repeat_interleave(g, dim=-2).transpose(-1, -2)  # [E, N, K]
    deq = t.dequantize()
    assert ((w - deq).abs() <= s / 2 * (1 + 1e-5)).all()
    # The codes themselves, recomputed independently: round-half-even of w / scale, offset by the
    # symmetric zero 8, clamped to the 4-bit range (vLLM's quantize_weights with uint4b8).
    expected = torch.clamp(torch.round(w.transpose(-1, -2).float() / s.transpose(-1, -2)) + 8, 0, 15).int()
    assert torch.equal(t.unpack(), expected)


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_int4_zero_point_roundtrip(scale_dtype):
    w = torch.randn(24, 256, generator=gen(13)) * 0.03 + 0.01
    t = quantize_int4(w, group_size=64, zero_point=True, scale_dtype=scale_dtype)
    assert t.zeros is not None and t.zeros.dtype == torch.int32 and t.zeros.shape == (4, 24)
    assert t.zeros.min() >= 0 and t.zeros.max() <= 15
    groups = w.t().unflatten(0, (-1, 64))
    torch.testing.assert_close(t.scales.float(), (groups.amax(1) - groups.amin(1)) / 15, rtol=2**-7, atol=0)
    eps = torch.finfo(scale_dtype).eps
    s = t.scales.float().repeat_interleave(64, dim=0).t()
    assert ((w - t.dequantize()).abs() <= s * (0.5 + 16 * eps)).all()


def test_int4_zero_point_one_signed_groups():
    # Groups of one sign: the range is widened to include 0 (zero point 0 or 15), so the bound
    # holds; vLLM's ``round(|min / s|)`` would give an all-positive group a wrong-signed zero.
    w = torch.rand(8, 64, generator=gen(23)) + 0.5
    w[:, 32:] *= -1
    t = quantize_int4(w, group_size=32, zero_point=True, scale_dtype=torch.float16)
    assert t.zeros[0].tolist() == [0] * 8 and t.zeros[1].tolist() == [15] * 8
    s = t.scales.float().repeat_interleave(32, dim=0).t()
    assert ((w - t.dequantize()).abs() <= s * (0.5 + 16 * 2**-10)).all()


def test_int4_exact_values():
    g = gen(14)
    q = torch.randint(0, 16, (64, 8), generator=g)  # [K, N]
    q[0] = 0  # every group holds -8 (symmetric scale = 8 s / 8 = s)
    q[32] = 0
    s = torch.exp2(torch.randint(-8, -2, (2, 8), generator=g).float())  # [K/g, N]
    w = ((q - 8).float() * s.repeat_interleave(32, dim=0)).t().contiguous()  # [N, K]
    t = quantize_int4(w, group_size=32, scale_dtype=torch.float16)
    assert torch.equal(t.scales.float(), s)
    assert torch.equal(t.unpack(), q.int())
    assert torch.equal(t.dequantize(), w)


def test_int4_g_idx_dequant_and_act_order():
    g = gen(15)
    k, n, gs = 64, 6, 16
    q = torch.randint(0, 16, (k, n), generator=g)
    g_idx = (torch.arange(k) // gs)[torch.randperm(k, generator=g)].int()
    scales = torch.rand(k // gs, n, generator=g).half() + 0.5
    zeros = torch.randint(0, 16, (k // gs, n), generator=g).int()
    t = Int4GroupTensor(qweight=pack_int4(q), scales=scales, zeros=zeros, group_size=gs, g_idx=g_idx)
    deq = t.dequantize()
    for kk in range(k):
        grp = g_idx[kk].item()
        for nn in range(n):
            expected = (q[kk, nn].item() - zeros[grp, nn].item()) * scales[grp, nn].item()
            assert deq[nn, kk].item() == pytest.approx(expected, rel=1e-6)
    # act_order: groups follow decreasing column energy, each group holds exactly gs columns.
    w = torch.randn(2, n, k, generator=g) * torch.rand(k, generator=g) * 0.1
    t = quantize_int4(w, group_size=gs, act_order=True, scale_dtype=torch.float16)
    assert t.g_idx.shape == (2, k) and t.g_idx.dtype == torch.int32
    assert torch.equal(t.g_idx, desc_act_g_idx(w, gs))
    for e in range(2):
        order = torch.argsort(w[e].square().sum(0), descending=True, stable=True)
        assert torch.equal(t.g_idx[e][order].long(), torch.arange(k) // gs)
        assert torch.equal(torch.bincount(t.g_idx[e].long()), torch.full((k // gs,), gs))
    s_k = t.scales.float().gather(-2, t.g_idx.long().unsqueeze(-1).expand(2, k, n)).transpose(-1, -2)
    assert ((w - t.dequantize()).abs() <= s_k / 2 * (1 + 1e-5)).all()
    # An uneven g_idx is refused.
    bad = torch.zeros(k, dtype=torch.int32)
    with pytest.raises(ValueError, match="g_idx"):
        quantize_int4(w[0], group_size=gs, g_idx=bad)


def test_int4_all_zero_group():
    w = torch.zeros(4, 64)
    w[:, 32:] = torch.randn(4, 32, generator=gen(16))
    t = quantize_int4(w, group_size=32)
    assert torch.isfinite(t.dequantize()).all() and (t.dequantize()[:, :32] == 0).all()
    assert (t.unpack()[:32] == 8).all()


# -------------------------------------------------------------------------------------- swizzle


def brute_force_swizzle(scale: torch.Tensor) -> torch.Tensor:
    rows, cols = scale.shape
    r_pad, c_pad = math.ceil(rows / 128) * 128, math.ceil(cols / 4) * 4
    out = [0] * (r_pad * c_pad)
    vals = scale.tolist()
    for r in range(rows):
        for c in range(cols):
            off = ((r // 128) * math.ceil(cols / 4) + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
            out[off] = vals[r][c]
    return torch.tensor(out, dtype=scale.dtype)


@pytest.mark.parametrize("rows,cols", [(1, 1), (130, 5), (128, 8), (300, 17)])
def test_swizzle_offsets_and_inverse(rows, cols):
    s = torch.randint(1, 256, (rows, cols), generator=gen(17)).to(torch.uint8)
    flat = swizzle_128x4(s)
    assert flat.dim() == 1 and torch.equal(flat, brute_force_swizzle(s))
    assert torch.equal(unswizzle_128x4(flat, rows, cols), s)
    f8 = s.view(torch.float8_e4m3fn)
    assert torch.equal(swizzle_128x4(f8).view(torch.uint8), flat)
    assert unswizzle_128x4(swizzle_128x4(f8), rows, cols).dtype == torch.float8_e4m3fn


def test_swizzle_leading_expert_dim():
    s = torch.randint(0, 256, (3, 200, 6), generator=gen(18)).to(torch.uint8)
    out = swizzle_128x4(s)
    assert out.shape == (3, 256 * 8)
    assert torch.equal(out, torch.stack([swizzle_128x4(s[e]) for e in range(3)]))
    assert torch.equal(unswizzle_128x4(out, 200, 6), s)
    with pytest.raises(ValueError, match="last dim"):
        unswizzle_128x4(out, 100, 6)


# ---------------------------------------------------------------------------- dispatch, validation


@pytest.mark.parametrize(
    "label,cls,kind",
    [
        ("nvfp4", NvFp4Tensor, QuantKind.NVFP4),
        ("nvfp4_w4a16", NvFp4Tensor, QuantKind.NVFP4),
        ("mxfp4", MxFp4Tensor, QuantKind.MXFP4),
        ("mxfp4_mxfp8", MxFp4Tensor, QuantKind.MXFP4),
        ("fp8", Fp8Tensor, QuantKind.FP8),
        ("fp8_block", Fp8BlockTensor, QuantKind.FP8_BLOCK),
        ("int4_w4a16:g64:zp", Int4GroupTensor, QuantKind.INT4_W4A16),
        ("int4_fp8:act_order", Int4GroupTensor, QuantKind.INT4_W4A16),
    ],
)
def test_quantize_dispatch(label, cls, kind):
    w = torch.randn(2, 16, 256, generator=gen(19)).to(torch.bfloat16)
    scheme = QuantScheme.parse(label)
    t = quantize(w, scheme)
    assert type(t) is cls and t.kind is kind and t.scheme == scheme and t.shape == w.shape
    if cls is Int4GroupTensor:
        assert t.group_size == scheme.group_size and (t.zeros is not None) == scheme.zero_point
        assert (t.g_idx is not None) == scheme.act_order and t.scales.dtype == torch.bfloat16
    moved = t.to("cpu")
    assert type(moved) is cls and moved.scheme == scheme and torch.equal(moved.dequantize(), t.dequantize())
    rel = (t.dequantize() - w.float()).norm() / w.float().norm()
    assert rel < 0.2


@pytest.mark.parametrize("label", ["bf16", "fp16"])
def test_quantize_unquantized_scheme_raises(label):
    with pytest.raises(ValueError, match="not a quantized scheme"):
        quantize(torch.randn(4, 32), QuantScheme.parse(label))


NAN = torch.full((4, 64), float("nan"))
INF = torch.zeros(4, 64).index_fill_(1, torch.tensor([3]), float("inf"))


@pytest.mark.parametrize(
    "fn,w,match",
    [
        (quantize_nvfp4, torch.randn(4, 24), "multiple of 16"),
        (quantize_mxfp4, torch.randn(4, 48), "multiple of 32"),
        (quantize_int4, torch.randn(4, 12), "multiple of 8"),
        (lambda w: quantize_int4(w, group_size=128), torch.randn(4, 192), "group_size"),
        (lambda w: quantize_int4(w, scale_dtype=torch.float32), torch.randn(4, 128), "scale_dtype"),
        (quantize_fp8, torch.ones(4, 8, dtype=torch.int32), "fp32/fp16/bf16"),
        (quantize_nvfp4, torch.ones(4, 32).to(torch.float8_e4m3fn), "fp32/fp16/bf16"),
        (quantize_nvfp4, NAN, "NaN or inf"),
        (quantize_mxfp4, INF, "NaN or inf"),
        (quantize_fp8_block, NAN, "NaN or inf"),
        (quantize_int4, INF, "NaN or inf"),
        (quantize_fp8, torch.randn(16), "2 dims"),
        (quantize_fp8, [[1.0]], "torch.Tensor"),
        (lambda w: quantize_nvfp4(w, global_scale=0.0), torch.randn(4, 32), "global scale"),
        (lambda w: quantize_nvfp4(w, global_scale=torch.ones(3)), torch.randn(2, 4, 32), "broadcast"),
        (lambda w: quantize_int4(w, group_size=8, g_idx=torch.zeros(3, 16, dtype=torch.int32)),
         torch.randn(2, 4, 16), "broadcast"),
    ],
)
def test_bad_inputs_raise_one_line(fn, w, match):
    with pytest.raises(ValueError, match=match) as info:
        fn(w)
    assert "\n" not in str(info.value)


def test_constructors_check_shapes():
    with pytest.raises(ValueError, match="NvFp4Tensor"):
        NvFp4Tensor(torch.zeros(4, 8, dtype=torch.uint8), torch.zeros(4, 2).to(torch.float8_e4m3fn), torch.ones(()))
    with pytest.raises(ValueError, match="Int4GroupTensor"):
        Int4GroupTensor(torch.zeros(2, 4, dtype=torch.int32), torch.ones(3, 4).half(), None, 8)


# ------------------------------------------------------------------- FlashInfer's own helpers (CPU)


@pytest.fixture(scope="module")
def flashinfer():
    try:
        import flashinfer  # noqa: F401  (imports fine on a CPU-only torch in 0.7.2.post1)
        from flashinfer.fused_moe import prepare
        from flashinfer.quantization import fp4_quantization
        from flashinfer.trace.templates import gemm, moe
    except Exception as exc:  # ImportError, or a CUDA/driver probe failing at import
        pytest.skip(f"flashinfer not importable here: {exc}")
    return {"prepare": prepare, "fp4": fp4_quantization, "gemm": gemm, "moe": moe}


def test_flashinfer_mxfp4_quantizer_bit_exact(flashinfer):
    """Our quantize_mxfp4 == FlashInfer prepare.py::_quantize_mxfp4_linear, byte for byte."""
    w = (torch.randn(3, 40, 256, generator=gen(20)) * 0.02).to(torch.bfloat16)
    w[0, 0, :32] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 4, dtype=torch.bfloat16)
    w[0, 1, :32] = 0
    ours = quantize_mxfp4(w)
    packed, scales = flashinfer["prepare"]._quantize_mxfp4_linear(w.reshape(-1, 256))
    assert torch.equal(ours.data.reshape(-1, 128), packed)
    assert torch.equal(ours.scale.reshape(-1, 8), scales)


def test_flashinfer_host_dequant_matches(flashinfer):
    """FlashInfer's pure-torch host dequant (_e2m1_and_ufp8sf_scale_to_float_cpu; the public
    e2m1_and_ufp8sf_scale_to_float needs CUDA) agrees with ours for NvFP4 and MXFP4."""
    to_float = flashinfer["fp4"]._e2m1_and_ufp8sf_scale_to_float_cpu
    w = torch.randn(64, 128, generator=gen(21))
    nv = quantize_nvfp4(w)
    ref = to_float(nv.data, nv.scale.view(torch.uint8), 1.0 / nv.global_scale.reshape(1), 16, 1, False)
    torch.testing.assert_close(nv.dequantize(), ref, rtol=2e-7, atol=0)
    mx = quantize_mxfp4(w)
    ref = to_float(mx.data, mx.scale, torch.ones(1), 32, 0, False)
    assert torch.equal(mx.dequantize(), ref)
    # And their nibble decoder agrees with ours (low nibble = first element).
    assert torch.equal(flashinfer["moe"]._unpack_fp4_e2m1(nv.data), code_value(codes_of(nv.data)))


def test_flashinfer_unswizzle_inverts_our_swizzle(flashinfer):
    s = torch.randint(0, 256, (300, 17), generator=gen(22)).to(torch.uint8)
    assert torch.equal(flashinfer["gemm"]._unswizzle_sf_128x4(swizzle_128x4(s), 300, 17), s)
