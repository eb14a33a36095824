"""The TRT-LLM-gen adapters beyond NvFP4 (tests/test_trtllm_prep.py) on CPU: each adapter's weight
preparation against FlashInfer's own CPU helpers (``prepare_trtllm_bf16_weights``,
``prepare_trtllm_fp8_per_tensor_weights``, ``prepare_trtllm_mxint4_weights``, the DeepSeek FP8
quantizer, ``get_shuffle_matrix_a_row_indices`` / ``convert_to_block_layout``) or vLLM's recipe
(gpt-oss MXFP4), and each adapter's kernel call against a stub that computes the kernel's documented
math from the arguments it receives (undoing the layout), compared with the reference backend.

The kernels need SM100; nothing here runs them.
"""

from __future__ import annotations

import functools

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from moe_registry.backends.reference.kernel import ReferenceExperts  # noqa: E402
from moe_registry.backends.trtllm_gen import _layout as LY  # noqa: E402
from moe_registry.backends.trtllm_gen import bf16_kernel, fp4_kernel, fp8_kernel, mxint4_kernel  # noqa: E402
from moe_registry.backends.trtllm_gen._adapter import pack_topk  # noqa: E402
from moe_registry.execution.patterns import relative_error  # noqa: E402
from moe_registry.execution.weights import ExpertWeights, random_weights  # noqa: E402
from moe_registry.formats import (  # noqa: E402
    Int4GroupTensor, MxFp4Tensor, pack_int4, quantize, swizzle_128x4, unswizzle_128x4,
)
from moe_registry.schemas.layer import LayerSpec  # noqa: E402

from _factories import make_layer, routed_inputs  # noqa: E402


layer_of = functools.partial(make_layer, num_experts=3, quant="bf16")  # the shared small layer, 3 experts


def up_gate(w: torch.Tensor, I: int) -> torch.Tensor:
    return torch.cat([w[:, I:], w[:, :I]], 1)


def bf16_source(layer: LayerSpec, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    w = random_weights(layer.replace(quant="bf16"), seed=seed)
    return w.w13, w.w2


def fi_activation(act: str):
    from flashinfer.fused_moe.api import ReLU2, SwiGLU

    return SwiGLU() if act == "silu" else ReLU2()


# --- Weight preparation against FlashInfer's own helpers -------------------------------------------------

@pytest.mark.parametrize("act", ["silu", "relu2_no_mul"])
def test_bf16_prep_matches_flashinfer(flashinfer, act):
    from flashinfer.fused_moe.prepare import prepare_trtllm_bf16_weights

    layer = layer_of(activation=act, hidden_size=192)
    w = random_weights(layer, seed=1)
    ours = bf16_kernel.prepare_trtllm_bf16_weights(layer, w)
    w1 = up_gate(w.w13, 128) if act == "silu" else w.w13
    theirs = prepare_trtllm_bf16_weights(w1, w.w2, num_local_experts=3, hidden_size=192, intermediate_size=128,
                                         activation=fi_activation(act))
    assert torch.equal(ours.gemm1_weights, theirs["gemm1_weights"])
    assert torch.equal(ours.gemm2_weights, theirs["gemm2_weights"])
    assert ours.gemm1_weights.shape == (3, 192 // 64, w1.shape[1], 64)


@pytest.mark.parametrize("act", ["silu", "relu2_no_mul"])
def test_fp8_per_tensor_prep_and_scalars_match_flashinfer(flashinfer, act):
    from flashinfer.fused_moe.prepare import prepare_trtllm_fp8_per_tensor_weights

    layer = layer_of(activation=act, quant="fp8")
    w13, w2 = bf16_source(layer, seed=2)
    canonical = ExpertWeights(w13=quantize(w13, layer.quant), w2=quantize(w2, layer.quant))
    ours = fp8_kernel.prepare_trtllm_fp8_weights(layer, canonical)
    a1, c = 448 / 3.0, 448 / 5.0
    w1 = up_gate(w13, 128) if act == "silu" else w13
    theirs = prepare_trtllm_fp8_per_tensor_weights(w1, w2, hidden_states_scale_global=a1, intermediate_scale_global=c,
                                                   num_local_experts=3, hidden_size=256, intermediate_size=128,
                                                   activation=fi_activation(act))
    assert torch.equal(ours.gemm1_weights.view(torch.uint8), theirs["gemm1_weights"].view(torch.uint8))
    assert torch.equal(ours.gemm2_weights.view(torch.uint8), theirs["gemm2_weights"].view(torch.uint8))
    out1, gate1, out2 = fp4_kernel.output_scalars(ours.w1_mult, ours.w2_mult, torch.tensor(a1), torch.tensor(c),
                                                  gated=act == "silu")
    assert torch.allclose(out1, theirs["output1_scales_scalar"], rtol=1e-6)
    assert torch.allclose(gate1, theirs["output1_scales_gate_scalar"], rtol=1e-6)
    assert torch.allclose(out2, theirs["output2_scales_scalar"], rtol=1e-6)


def test_fp8_block_prep_matches_flashinfer_quantizer_and_layout(flashinfer):
    from flashinfer.fused_moe.core import convert_to_block_layout
    from flashinfer.fused_moe.prepare import _deepseek_fp8_quantize_weights
    from flashinfer.utils import get_shuffle_matrix_a_row_indices

    layer = layer_of(quant="fp8_block")
    w13, w2 = bf16_source(layer, seed=3)
    canonical = ExpertWeights(w13=quantize(w13, layer.quant), w2=quantize(w2, layer.quant))
    ours = fp8_kernel.prepare_trtllm_fp8_block_weights(layer, canonical)
    for ours_w, ours_s, source in ((ours.gemm1_weights, ours.gemm1_scales, up_gate(w13, 128)),
                                   (ours.gemm2_weights, ours.gemm2_scales, w2)):
        q, s = _deepseek_fp8_quantize_weights(source)  # FlashInfer's DeepSeek recipe == our format's
        assert torch.equal(ours_s, s)
        for e in range(3):
            u8 = q[e].view(torch.uint8)
            rows = get_shuffle_matrix_a_row_indices(u8, 64)
            assert torch.equal(ours_w[e].view(torch.uint8), convert_to_block_layout(u8[rows].contiguous(), 128))


def fi_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Int4GroupTensor]:
    """FlashInfer's MXINT4 quantization of ``w [E, N, K]`` and the same values as our canonical
    Int4GroupTensor (GPTQ layout, codes q + 8)."""
    from flashinfer.fused_moe.prepare import _mxint4_quantize

    packed, scales = _mxint4_quantize(w)
    E, N, K = w.shape
    lo, hi = (packed & 0xF).to(torch.int32), (packed >> 4).to(torch.int32)
    q = torch.stack([lo, hi], -1).reshape(E, N, K)
    q = torch.where(q >= 8, q - 16, q)  # two's-complement nibbles
    canonical = Int4GroupTensor(qweight=pack_int4((q + 8).transpose(-1, -2)),
                                scales=scales.reshape(E, N, K // 32).transpose(-1, -2).contiguous(),
                                zeros=None, group_size=32)
    return packed, scales, canonical


def test_int4_nibble_conversion_round_trips():
    w = torch.randn(2, 64, 96)
    t = quantize(w, layer_of(quant="int4_w4a16:g32").quant)
    packed, scales = mxint4_kernel.to_signed_nibbles(t)
    lo, hi = (packed & 0xF).to(torch.int32), (packed >> 4).to(torch.int32)
    q = torch.stack([lo, hi], -1).reshape(2, 64, 96)
    q = torch.where(q >= 8, q - 16, q).float()
    dequant = (q.unflatten(-1, (-1, 32)) * scales.float().unsqueeze(-1)).flatten(-2)
    assert torch.equal(dequant, t.dequantize())


def test_mxint4_prep_matches_flashinfer(flashinfer, monkeypatch):
    import flashinfer.quantization.fp4_quantization as fq
    from flashinfer.fused_moe.prepare import prepare_trtllm_mxint4_weights

    # FlashInfer's block_scale_interleave is a CUDA kernel; its torch port (tested against the offset
    # formula in test_formats / test_trtllm_prep) stands in, so everything else is FlashInfer's own.
    monkeypatch.setattr(fq, "block_scale_interleave", lambda s: swizzle_128x4(s))
    layer = layer_of(quant="int4_w4a16:g32", intermediate_size=256, num_experts=2)
    w13, w2 = bf16_source(layer, seed=4)
    canonical = ExpertWeights(w13=fi_int4(w13)[2], w2=fi_int4(w2)[2])
    ours = mxint4_kernel.prepare_trtllm_mxint4_weights(layer, canonical)
    theirs = prepare_trtllm_mxint4_weights(up_gate(w13, 256), w2, num_local_experts=2, hidden_size=256,
                                           intermediate_size=256)
    assert torch.equal(ours.gemm1_weights, theirs["gemm1_weights"])
    assert torch.equal(ours.gemm2_weights, theirs["gemm2_weights"])
    assert torch.equal(ours.gemm1_scales.reshape(-1), theirs["gemm1_weights_scale"].reshape(-1))
    assert torch.equal(ours.gemm2_scales.reshape(-1), theirs["gemm2_weights_scale"].reshape(-1))


# The shared small layer shaped like gpt-oss's experts (interleaved SwiGLU-OAI, biases, MXFP4).
gpt_oss_like = functools.partial(make_layer, num_experts=2, activation="swigluoai", bias=True, quant="mxfp4",
                                 activation_params={"interleaved": True}, routing="topk_softmax")


def test_mxfp4_gpt_oss_prep_matches_vllm_recipe(flashinfer):
    """vLLM oracle/mxfp4.py (TRTLLM backends): swap every two interleaved rows (g, u -> u, g), then only
    the epilogue shuffle (get_w2_permute_indices_with_cache) on data, scales (num_elts_per_sf=16),
    biases; scales 128x4-interleaved."""
    from flashinfer.fused_moe.core import get_w2_permute_indices_with_cache

    layer = gpt_oss_like()
    w = random_weights(layer, seed=5)
    ours = fp4_kernel.prepare_trtllm_fp4_weights(layer, w)
    swap = torch.arange(256).view(-1, 2).flip(-1).reshape(-1)
    d13, s13, b13 = w.w13.data[:, swap], w.w13.scale[:, swap], w.w13_bias[:, swap].float()
    for e in range(2):
        p = get_w2_permute_indices_with_cache({}, d13[e], 128)
        p_sf = get_w2_permute_indices_with_cache({}, s13[e], 128, num_elts_per_sf=16)
        assert torch.equal(ours.gemm1_weights[e], d13[e][p])
        assert torch.equal(ours.gemm1_scales[e].view(torch.uint8).reshape(-1), swizzle_128x4(s13[e][p_sf]))
        assert torch.equal(ours.gemm1_bias[e], b13[e][p])
        p2 = get_w2_permute_indices_with_cache({}, w.w2.data[e], 128)
        assert torch.equal(ours.gemm2_weights[e], w.w2.data[e][p2])
        assert torch.equal(ours.gemm2_bias[e], w.w2_bias[e].float()[p2])
    assert ours.w1_gs is None and not ours.nvfp4 and ours.gated


# --- The kernel calls, against stubs that undo the layout ------------------------------------------------

def unpermute(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return t.index_select(-2 if t.dim() >= 2 else 0, torch.argsort(index))


def unblock(t: torch.Tensor) -> torch.Tensor:
    """BlockMajorK [K/bk, M, bk] -> [M, K] (one expert)."""
    kb, m, bk = t.shape
    return t.permute(1, 0, 2).reshape(m, kb * bk)


def activation(h: torch.Tensor, act: int, I: int, gated: bool, alpha=None, beta=None, limit=None) -> torch.Tensor:
    """The kernel's epilogue on GEMM1 rows [up; gate] (X1 = up, X2 = gate)."""
    if not gated:
        assert act == 6
        return F.relu(h).square()
    up, gate = h[..., :I], h[..., I:]
    if act == 4:
        return F.gelu(gate) * up
    assert act == 3
    if limit is not None:
        up, gate = up.clamp(-limit, limit), gate.clamp(max=limit)
    a = 1.0 if alpha is None else alpha
    b = 0.0 if beta is None else beta
    return gate * torch.sigmoid(a * gate) * (up + b)


class Stub:
    """Records the call; ``compute(args, kw)`` returns the kernel's output."""

    def __init__(self, compute):
        self.compute, self.calls = compute, []

    def __call__(self, *args, **kw):
        self.calls.append((args, kw))
        out = kw["output"]
        out.copy_(self.compute(args, kw).to(out.dtype))
        return [out]


def moe(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, expert) -> torch.Tensor:
    out = torch.zeros(x.shape[0], expert(0, x[:1]).shape[-1])
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            out[t] += float(weights[t, j]) * expert(int(ids[t, j]), x[t:t + 1])[0]
    return out


def check(adapter, layer, w, tol, seed=7):
    x, tw, ids = routed_inputs(layer, seed=seed)
    out = adapter(x, tw, ids.long())
    ref = ReferenceExperts(layer, w)(x, tw, ids)
    assert out.shape == (x.shape[0], layer.hidden_size) and out.dtype == torch.bfloat16
    assert relative_error(out, ref) <= tol, relative_error(out, ref)


@pytest.mark.parametrize("act,H", [("silu", 256), ("relu2_no_mul", 256), ("swigluoai", 256), ("silu", 200)])
def test_bf16_call_matches_reference(monkeypatch, act, H):
    layer = layer_of(activation=act, hidden_size=H, intermediate_size=96)
    w = random_weights(layer, seed=8)

    def compute(args, kw):
        (ids, tw), x, g1, g2 = args
        I, gated = kw["intermediate_size"], act != "relu2_no_mul"
        M = 2 * I if gated else I

        def expert(e, xt):
            W1 = unpermute(unblock(g1[e]), LY.w3_w1_permute_indices(M, gated=gated)).float()
            W2 = unpermute(unblock(g2[e]), LY.w2_permute_indices(g2.shape[2])).float()
            params = [None if kw[k] is None else float(kw[k][e]) for k in ("gemm1_alpha", "gemm1_beta",
                                                                              "gemm1_clamp_limit")]
            return activation(xt.float() @ W1.T, kw["activation_type"], I, gated, *params) @ W2.T
        assert kw["use_shuffled_weight"] is True and kw["weight_layout"] == 2
        return moe(x, ids, tw, expert)

    stub = Stub(compute)
    monkeypatch.setattr(bf16_kernel, "_flashinfer_routed_moe", lambda: stub)
    from moe_registry.execution.declared import declared_padding

    Hp, Ip = declared_padding("trtllm-bf16", layer)
    assert (Hp, Ip) == (256, 128)  # hidden to a multiple of 64 (BlockMajorK), intermediate to 128
    ad = bf16_kernel.TrtllmBf16Experts._without_runtime_checks(layer, w, pad_hidden_to=Hp, pad_intermediate_to=Ip)
    check(ad, layer, w, 0.02)
    (args, kw), = stub.calls
    assert kw["intermediate_size"] == 128 and kw["num_experts"] == kw["local_num_experts"] == 3
    assert kw["routing_method_type"] == 5 and kw["activation_type"] == {"silu": 3, "relu2_no_mul": 6,
                                                                        "swigluoai": 3}[act]
    if act == "swigluoai":
        assert torch.allclose(kw["gemm1_alpha"], torch.full((3,), 1.702)) and torch.equal(kw["gemm1_beta"],
                                                                                         torch.ones(3))
        assert torch.equal(kw["gemm1_clamp_limit"], torch.full((3,), 7.0))
    else:
        assert kw["gemm1_alpha"] is None and kw["gemm1_clamp_limit"] is None


@pytest.mark.parametrize("act,on_input", [("silu", False), ("relu2_no_mul", False), ("silu", True)])
def test_fp8_per_tensor_call_matches_reference(monkeypatch, act, on_input):
    layer = layer_of(activation=act, quant="fp8", apply_router_weight_on_input=on_input,
                     top_k=1 if on_input else 2, routing="llama4" if on_input else None)
    w = random_weights(layer, seed=9)

    def compute(args, kw):
        (ids, tw), bias, xq, g1, out1, gate1, g2, out2 = args
        I, gated = kw["intermediate_size"], act == "silu"
        M = 2 * I if gated else I

        def expert(e, xt):
            h = xt.float() @ unpermute(g1[e].float(), LY.w3_w1_permute_indices(M, gated=gated)).T
            if gated:  # gate in physical units, up scaled by output1 (into FC2-input units)
                a = activation(torch.cat([h[:, :I] * out1[e], h[:, I:] * gate1[e]], -1), 3, I, True)
            else:
                a = F.relu(h * gate1[e]).square() * out1[e]
            a = a.clamp(-448, 448).to(torch.float8_e4m3fn).float()
            return a @ unpermute(g2[e].float(), LY.w2_permute_indices(g2.shape[1])).T * out2[e]
        if kw["use_routing_scales_on_input"]:  # Llama 4: router weight scales the input, not the output
            return moe(xq.float() * tw.float(), ids, torch.ones_like(tw), lambda e, xt: expert(e, xt))
        return moe(xq, ids, tw, expert)

    stub = Stub(compute)
    monkeypatch.setattr(fp8_kernel, "_per_tensor_routed_moe", lambda: stub)
    ad = fp8_kernel.TrtllmFp8Experts._without_runtime_checks(layer, w)
    check(ad, layer, w, 0.08)
    (args, kw), = stub.calls
    assert args[2].dtype == torch.float8_e4m3fn and kw["use_routing_scales_on_input"] is on_input
    assert all(t.dtype == torch.float32 and t.shape == (3,) for t in (args[4], args[5], args[7]))


@pytest.mark.parametrize("act,H", [("silu", 256), ("swigluoai", 256), ("silu", 200)])
def test_fp8_block_call_matches_reference(monkeypatch, act, H):
    layer = layer_of(activation=act, quant="fp8_block", hidden_size=H)
    w = random_weights(layer, seed=10)

    def compute(args, kw):
        (ids, tw), bias, xq, x_sf, g1, g1s, g2, g2s = args
        I, Hp = kw["intermediate_size"], xq.shape[1]
        x = (xq.float().unflatten(-1, (-1, 128)) * x_sf.T.unsqueeze(-1)).flatten(-2)

        def dequant(blocked, scales):
            rows = unpermute(unblock(blocked.view(torch.uint8)), LY.shuffle_matrix_a_row_indices(blocked.shape[1], 64))
            s = scales.repeat_interleave(128, 0).repeat_interleave(128, 1)
            return rows.view(torch.float8_e4m3fn).float() * s

        def expert(e, xt):
            params = [None if kw[k] is None else float(kw[k][e]) for k in ("gemm1_alpha", "gemm1_beta",
                                                                              "gemm1_clamp_limit")]
            return activation(xt @ dequant(g1[e], g1s[e]).T, 3, I, True, *params) @ dequant(g2[e], g2s[e]).T
        assert kw["use_shuffled_weight"] is True and kw["weight_layout"] == 2 and kw["output"].shape[1] == Hp
        return moe(x, ids, tw, expert)

    stub = Stub(compute)
    monkeypatch.setattr(fp8_kernel, "_block_routed_moe", lambda: stub)
    monkeypatch.setattr(fp8_kernel, "_deepseek_fp8", lambda: "DeepSeekFp8")
    pads = {} if H == 256 else {"pad_hidden_to": 256}
    ad = fp8_kernel.TrtllmFp8BlockExperts._without_runtime_checks(layer, w, **pads)
    check(ad, layer, w, 0.06)
    (args, kw), = stub.calls
    assert args[3].shape == (2, 5) and args[3].dtype == torch.float32  # [H/128, T]
    assert kw["fp8_quantization_type"] == "DeepSeekFp8" and kw["activation_type"] == 3


def test_fp8_block_does_not_pad_intermediate():
    layer = layer_of(quant="fp8_block", intermediate_size=192)
    with pytest.raises(ValueError, match=r"^trtllm-fp8-block: .*multiple of 128"):
        fp8_kernel.prepare_trtllm_fp8_block_weights(layer, None)


@pytest.mark.parametrize("act", ["silu", "swigluoai"])
def test_mxint4_call_matches_reference(monkeypatch, act):
    params = {"interleaved": True} if act == "swigluoai" else None
    layer = layer_of(activation=act, activation_params=params, quant="int4_w4a16:g32", intermediate_size=256,
                     num_experts=2)
    w = random_weights(layer, seed=11)

    def compute(args, kw):
        packed, x, g1, g1s, alpha, beta, limit, g2, g2s = args
        ids, tw = packed >> 16, (packed & 0xFFFF).to(torch.int16).view(torch.bfloat16).float()
        I = kw["intermediate_size"]

        def dequant(blocked, scales, index):
            rows = unpermute(unblock(blocked), index)
            lo, hi = (rows & 0xF).to(torch.int32), (rows >> 4).to(torch.int32)
            q = torch.stack([lo, hi], -1).reshape(rows.shape[0], -1)
            q = torch.where(q >= 8, q - 16, q).float()
            s = unpermute(unswizzle_128x4(scales.reshape(-1), *scales.shape), index).float()
            return (q.unflatten(-1, (-1, 32)) * s.unsqueeze(-1)).flatten(-2)

        def expert(e, xt):
            W1 = dequant(g1[e], g1s[e], LY.w3_w1_permute_indices(2 * I))
            W2 = dequant(g2[e], g2s[e], LY.w2_permute_indices(g2.shape[2]))
            p = [None if t is None else float(t[e]) for t in (alpha, beta, limit)]
            return activation(xt.float() @ W1.T, 3, I, True, *p) @ W2.T
        return moe(x, ids, tw, expert)

    stub = Stub(compute)
    monkeypatch.setattr(mxint4_kernel, "_flashinfer_routed_moe", lambda: stub)
    ad = mxint4_kernel.TrtllmMxInt4Experts._without_runtime_checks(layer, w)
    check(ad, layer, w, 0.02)
    (args, kw), = stub.calls
    assert args[0].dtype == torch.int32 and args[0].shape == (5, 2)  # packed top-k


def test_pack_topk_matches_flashinfer_contract():
    ids = torch.tensor([[3, 0]], dtype=torch.int32)
    w = torch.tensor([[0.75, 0.25]])
    packed = pack_topk(ids, w)
    assert torch.equal(packed >> 16, ids)
    assert torch.equal((packed & 0xFFFF).to(torch.int16).view(torch.bfloat16).float(), w)


@pytest.mark.parametrize("quant", ["mxfp4", "mxfp4_mxfp8"])
def test_mxfp4_gpt_oss_call_matches_reference(monkeypatch, quant):
    layer = gpt_oss_like(hidden_size=224, intermediate_size=96, quant=quant)  # padded to 256 / 128
    w = random_weights(layer, seed=12)

    def compute(args, kw):
        ((ids, tw), _, x, x_sf, g1, g1s, b1, alpha, beta, limit, g2, g2s, b2, o1, gate1, o2) = args
        assert o1 is None and gate1 is None and o2 is None
        if quant == "mxfp4":
            assert x.dtype == torch.bfloat16 and x_sf is None and kw["hidden_states_scale_layout"] is None
        else:  # MXFP8: e4m3 values, linear e8m0 scale per 32
            assert x.dtype == torch.float8_e4m3fn and kw["hidden_states_scale_layout"] == "layout_linear"
            scale = torch.exp2(x_sf.view(torch.uint8).float() - 127)
            x = (x.float().unflatten(-1, (-1, 32)) * scale.unsqueeze(-1)).flatten(-2)
        I, Hp = kw["intermediate_size"], x.shape[1]

        def dequant(data, scales, index, rows, cols):
            s = unswizzle_128x4(scales.view(torch.uint8).reshape(-1), rows, cols // 32)
            return unpermute(MxFp4Tensor(data, s).dequantize(), index)

        def expert(e, xt):
            i1 = LY.w3_w1_permute_indices(2 * I)
            h = xt.float() @ dequant(g1[e], g1s[e], i1, 2 * I, Hp).T + unpermute(b1[e].unsqueeze(-1), i1)[:, 0]
            a = activation(h, 3, I, True, float(alpha[e]), float(beta[e]), float(limit[e]))
            i2 = LY.w2_permute_indices(Hp)
            return a @ dequant(g2[e], g2s[e], i2, Hp, I).T + unpermute(b2[e].unsqueeze(-1), i2)[:, 0]
        return moe(x, ids, tw, expert)

    stub = Stub(compute)
    monkeypatch.setattr(fp4_kernel, "_flashinfer_routed_moe", lambda: stub)
    monkeypatch.setattr(fp4_kernel, "_sf_layout_linear", lambda: "layout_linear")
    from moe_registry.execution.declared import declared_padding

    assert declared_padding("trtllm-fp4", layer) == (256, 128)
    ad = fp4_kernel.TrtllmFp4Experts._without_runtime_checks(layer, w, pad_hidden_to=256, pad_intermediate_to=128)
    check(ad, layer, w, 0.02 if quant == "mxfp4" else 0.05)
    (args, kw), = stub.calls
    assert kw["output"].shape == (5, 256)


def test_mxfp8_input_quantization_recipe():
    x = torch.randn(3, 64) * torch.logspace(-3, 3, 64)
    q, sf = fp4_kernel._quantize_mxfp8_input(x.to(torch.bfloat16), on_kernel_device=False)
    scale = torch.exp2(sf.view(torch.uint8).float() - 127)
    assert q.dtype == torch.float8_e4m3fn and sf.shape == (3, 2)
    assert (q.float().abs().unflatten(-1, (-1, 32)).amax(-1) <= 448).all()
    back = (q.float().unflatten(-1, (-1, 32)) * scale.unsqueeze(-1)).flatten(-2)
    assert relative_error(back, x.to(torch.bfloat16).float()) < 0.05
    # amax / 448 rounded up to a power of two: the largest value lands in [224, 448] after e4m3 rounding.
    assert ((q.float().abs().unflatten(-1, (-1, 32)).amax(-1)) >= 224).all()


def test_unknown_option_is_a_type_error():
    layer = layer_of()
    with pytest.raises(TypeError, match="unknown option"):
        bf16_kernel.TrtllmBf16Experts(layer, random_weights(layer), input_amx=1.0)


@pytest.mark.parametrize("cls", [bf16_kernel.TrtllmBf16Experts, fp8_kernel.TrtllmFp8Experts])
def test_constructing_on_cpu_raises_runtime_error(cls):
    layer = layer_of(quant="fp8" if cls is fp8_kernel.TrtllmFp8Experts else "bf16")
    with pytest.raises(RuntimeError, match="needs CUDA weights on SM100/SM103/SM107"):
        cls(layer, random_weights(layer))


def test_nvfp4_swigluoai_and_biases_are_passed_in_raw_accumulator_units(monkeypatch):
    """NvFP4's GEMM accumulators are scaled by output1_scale_gate_scalar / output2_scale_scalar, so beta,
    the clamp limit and the biases are divided by them; alpha is not (vLLM trtllm_nvfp4_moe.py L166-195
    for beta and the limit; the biases follow the same contract, unverified)."""
    layer = gpt_oss_like(quant="nvfp4", activation_params=None)
    w = random_weights(layer, seed=13)
    stub = Stub(lambda args, kw: torch.zeros(kw["output"].shape))
    monkeypatch.setattr(fp4_kernel, "_flashinfer_routed_moe", lambda: stub)
    monkeypatch.setattr(fp4_kernel, "_sf_layout_linear", lambda: "layout_linear")
    ad = fp4_kernel.TrtllmFp4Experts._without_runtime_checks(layer, w, intermediate_amax=4.0)
    x, tw, ids = routed_inputs(layer)
    ad(x, tw, ids)
    (args, kw), = stub.calls
    b1, alpha, beta, limit, b2, gate1, out2 = args[6], args[7], args[8], args[9], args[12], args[14], args[15]
    p = ad.prepared
    assert torch.allclose(alpha, torch.full((2,), 1.702))
    assert torch.allclose(beta * gate1, torch.ones(2)) and torch.allclose(limit * gate1, torch.full((2,), 7.0))
    assert torch.allclose(b1 * gate1.unsqueeze(-1), p.gemm1_bias) and torch.allclose(b2 * out2.unsqueeze(-1),
                                                                                      p.gemm2_bias)
    assert kw["activation_type"] == 3 and kw["hidden_states_scale_layout"] == "layout_linear"
