"""FlashInfer CUTLASS adapter on CPU: weight preparation, quant_scales, the exact kernel-call wiring
(against a stub that emulates ``cutlass_fused_moe`` from flashinfer-moe-api.md's documented
semantics), guards, and the JIT-module status check against fake cache directories.

The kernel itself cannot run here (SM90 needs a > 40-minute JIT build; NvFP4 needs SM100). Where
``import flashinfer`` works on this machine, FlashInfer's own pure-torch helpers and path rules are
used as independent oracles; otherwise those tests skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from moe_registry.backends import _flashinfer_base as fib  # noqa: E402
from moe_registry.backends import _flashinfer_jit as fic  # noqa: E402
from moe_registry.backends.flashinfer_cutlass import DECLARATION  # noqa: E402
from moe_registry.backends.flashinfer_cutlass import kernel as K  # noqa: E402
from moe_registry.backends.reference.kernel import ReferenceExperts  # noqa: E402
from moe_registry.execution.weights import ExpertWeights, random_weights  # noqa: E402
from moe_registry.formats import (  # noqa: E402
    Fp8BlockTensor, Fp8Tensor, MxFp4Tensor, NvFp4Tensor, quantize_nvfp4, unswizzle_128x4,
)
from moe_registry.schemas.activation import SwigluOAIParams  # noqa: E402

from _factories import make_layer, rel_err, routed_inputs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# --- [gate; up] -> [up; gate] -------------------------------------------------------------------

def test_gate_up_swap_plain_and_bias():
    layer = make_layer(bias=True)
    w = random_weights(layer, seed=3)
    p = K.prepare_cutlass_weights(layer, w)
    I = layer.local_intermediate_size
    gate, up = w.w13[:, :I], w.w13[:, I:]
    assert torch.equal(p.fc1, torch.cat([up, gate], dim=1))  # w31 = cat([w3, w1])
    assert torch.equal(p.fc2, w.w2)
    assert torch.equal(p.fc1_bias, torch.cat([w.w13_bias[:, I:], w.w13_bias[:, :I]], dim=1).to(torch.bfloat16))
    assert p.fc2_bias.dtype == torch.bfloat16 and p.fc2_bias.shape == (4, 256)


def test_non_gated_keeps_rows():
    layer = make_layer(activation="relu2_no_mul")
    w = random_weights(layer, seed=4)
    p = K.prepare_cutlass_weights(layer, w)
    assert torch.equal(p.fc1, w.w13)


def test_interleaved_swigluoai_is_deinterleaved():
    layer = make_layer(activation="swigluoai", activation_params=SwigluOAIParams(interleaved=True))
    E, I, H = 4, 128, 256
    rows = torch.arange(2 * I, dtype=torch.float32).view(1, 2 * I, 1).expand(E, 2 * I, H)
    w = ExpertWeights(w13=rows.to(torch.bfloat16).contiguous(), w2=torch.zeros(E, H, I, dtype=torch.bfloat16))
    p = K.prepare_cutlass_weights(layer, w)
    first_col = p.fc1[0, :, 0].float()
    assert torch.equal(first_col[:I], torch.arange(1, 2 * I, 2, dtype=torch.float32))  # up = odd rows
    assert torch.equal(first_col[I:], torch.arange(0, 2 * I, 2, dtype=torch.float32))  # gate = even rows


@pytest.mark.parametrize("quant", ["fp8", "fp8_block", "nvfp4", "mxfp4"])
def test_gate_up_swap_quantized(quant):
    """The swap moves data and scales together: dequantizing the prepared fc1 gives [up; gate]."""
    layer = make_layer(quant=quant)
    w = random_weights(layer, seed=5)
    p = K.prepare_cutlass_weights(layer, w)
    I = layer.local_intermediate_size
    canon = w.w13.dequantize()
    want = torch.cat([canon[:, I:], canon[:, :I]], dim=1)
    if quant == "fp8":
        got = Fp8Tensor(p.fc1, p.w1_scale).dequantize()
    elif quant == "fp8_block":
        got = Fp8BlockTensor(p.fc1, p.w1_scale).dequantize()
    elif quant == "nvfp4":
        assert p.fc1.dtype == torch.int64 and p.fc1.shape == (4, 2 * I, 256 // 16)  # 16 e2m1 per int64
        assert p.w1_scale.dtype == torch.int32 and p.w1_scale.shape == (4, 2 * I, 256 // 16 // 4)
        scale = unswizzle_128x4(p.w1_scale.view(torch.uint8).reshape(4, -1), 2 * I, 256 // 16)
        got = NvFp4Tensor(p.fc1.view(torch.uint8), scale.view(torch.float8_e4m3fn), p.w1_global).dequantize()
    else:
        assert p.needs_sm90_interleave and p.fc1.dtype == torch.uint8
        got = MxFp4Tensor(p.fc1, uninterleave_scales(p.w1_scale.view(torch.uint8))).dequantize()
    assert torch.equal(got, want)


def uninterleave_scales(folded: torch.Tensor) -> torch.Tensor:
    """Inverse of the SM90 mixed-GEMM scale fold for uint8 e8m0 / group 32 (written from the fold's
    documented shape ``[E, rows/64, K/128, 16, 16]``)."""
    e, r64, k128, folded_m, cols = folded.shape
    x = folded.reshape(e, r64, k128, folded_m, 4, 4).permute(0, 1, 4, 3, 2, 5)
    return x.reshape(e, r64 * 64, k128 * 4).contiguous()


def test_sm90_scale_fold_matches_flashinfer(flashinfer):
    from flashinfer.fused_moe import interleave_moe_scales_for_sm90_mixed_gemm as fi_fold

    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 255, (3, 256, 16), generator=g, dtype=torch.uint8)
    assert torch.equal(K.interleave_moe_scales_for_sm90_mixed_gemm(s), fi_fold(s))
    b = torch.randn(2, 128, 4, generator=g).to(torch.bfloat16)
    assert torch.equal(K.interleave_moe_scales_for_sm90_mixed_gemm(b, 128).view(torch.int16),
                       fi_fold(b, 128).view(torch.int16))
    assert torch.equal(uninterleave_scales(K.interleave_moe_scales_for_sm90_mixed_gemm(s)), s)


DECLARED_KERNEL_VALUES = {"silu": 3, "gelu": 4, "gelu_tanh": 8, "relu2_no_mul": 6, "swigluoai": 5,
                          "silu_no_mul": 2, "gelu_no_mul": 0}


def test_declared_activation_ids():
    assert {a.value: impl.kernel_value for a, impl in DECLARATION.activations.items()} == DECLARED_KERNEL_VALUES


def test_activation_ids_match_flashinfer(flashinfer):
    """Every declared kernel_value is FlashInfer's ActivationType member the declaration names."""
    from flashinfer.fused_moe import ActivationType

    for act, impl in DECLARATION.activations.items():
        assert impl.kernel_value == int(ActivationType[impl.kernel_name]), act


def test_adapter_schemes_are_the_declared_ones():
    """The adapter calls the kernel for exactly the schemes the declaration says it converts."""
    assert set(K.CUTLASS_CALLS) == {s.kind for s in DECLARATION.quant if s.adapter_implemented}


# --- quant_scales ----------------------------------------------------------------------------------

def test_fp8_quant_scales_order_and_values():
    w1 = torch.tensor([0.5, 2.0, 4.0])
    w2 = torch.tensor([1.0, 3.0, 0.25])
    a1, a2 = torch.tensor(0.1), torch.tensor(0.2)
    qs = K.fp8_quant_scales(w1, w2, a1, a2)
    assert len(qs) == 4
    assert torch.allclose(qs[0], torch.tensor([0.05, 0.2, 0.4]))  # fc1_dequant = w1_scale * a1
    assert qs[1].dim() == 0 and float(qs[1]) == pytest.approx(5.0)  # fc2_quant = 1 / a2
    assert torch.allclose(qs[2], torch.tensor([0.2, 0.6, 0.05]))  # fc2_dequant = w2_scale * a2
    assert qs[3].dim() == 0 and float(qs[3]) == pytest.approx(0.1)  # fc1_input_dequant = a1
    assert all(q.dtype == torch.float32 for q in qs)


def test_nvfp4_quant_scales_order_and_values():
    b1 = torch.zeros(2, 128, 4, dtype=torch.int32)
    b2 = torch.ones(2, 256, 2, dtype=torch.int32)
    w1_gs, w2_gs = torch.tensor([2.0, 4.0]), torch.tensor([8.0, 16.0])
    qs = K.nvfp4_quant_scales(b1, b2, w1_gs, w2_gs, torch.tensor(10.0), torch.tensor(0.5))
    assert len(qs) == 6
    assert qs[0].dim() == 0 and float(qs[0]) == 10.0  # a1_gs
    assert qs[1] is b1 and qs[4] is b2  # swizzled block scales, int32
    assert torch.allclose(qs[2], torch.tensor([1 / 20, 1 / 40]))  # 1/(a1_gs*w1_gs)
    assert qs[3].dim() == 0 and float(qs[3]) == 0.5  # a2_gs
    assert torch.allclose(qs[5], torch.tensor([1 / 4, 1 / 8]))  # 1/(a2_gs*w2_gs)


def test_swiglu_bias_params():
    layer = make_layer(activation="swigluoai", activation_params=SwigluOAIParams(alpha=1.5, limit=6.0, up_offset=0.5))
    p = K.swiglu_bias_params(layer, 3, "cpu")
    assert set(p) == {"swiglu_alpha", "swiglu_beta", "swiglu_limit"}
    assert torch.equal(p["swiglu_alpha"], torch.full((3,), 1.5)) and p["swiglu_alpha"].dtype == torch.float32
    assert torch.equal(p["swiglu_beta"], torch.full((3,), 0.5))
    assert torch.equal(p["swiglu_limit"], torch.full((3,), 6.0))
    unlimited = make_layer(activation="swigluoai", activation_params=SwigluOAIParams(limit=None))
    assert float(K.swiglu_bias_params(unlimited, 1, "cpu")["swiglu_limit"][0]) == torch.finfo(torch.float32).max
    assert K.swiglu_bias_params(make_layer(), 3, "cpu") == {}


# --- The call, against an emulating stub ---------------------------------------------------------------

def _act(h: torch.Tensor, act_type: int, params: dict, e: int) -> torch.Tensor:
    """FlashInfer's activation on fc1 output (flashinfer-moe-api.md 1.3: u = first half, g = second)."""
    if act_type == 6:
        return F.relu(h).square()
    if act_type == 2:
        return F.silu(h)
    if act_type == 0:
        return F.gelu(h)
    u, g = h.chunk(2, dim=-1)
    if act_type == 3:
        return F.silu(g) * u
    if act_type == 4:
        return F.gelu(g) * u
    if act_type == 8:
        return F.gelu(g, approximate="tanh") * u
    if act_type == 5:
        alpha, beta, limit = (float(params[k][e]) for k in ("swiglu_alpha", "swiglu_beta", "swiglu_limit"))
        gc = g.clamp(max=limit)
        return gc * torch.sigmoid(alpha * gc) * (u.clamp(-limit, limit) + beta)
    raise AssertionError(act_type)


def _nvfp4_raw(x: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize without the global scale (e2m1 * block scale): what the tensor core sees."""
    t = quantize_nvfp4(x.float(), global_scale=gs)
    return t.dequantize() * gs


class CutlassStub:
    """Records the call and computes what ``cutlass_fused_moe`` is documented to compute."""

    def __init__(self, scheme: str):
        self.scheme = scheme
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, x, ids, weights, fc1, fc2, out_dtype, qs, **kw):
        self.calls.append(((x, ids, weights, fc1, fc2, out_dtype, qs), kw))
        out, E = kw["output"], fc1.shape[0]
        params = {k: kw[k] for k in ("swiglu_alpha", "swiglu_beta", "swiglu_limit") if k in kw}
        xf = x.float()
        acc = torch.zeros(out.shape, dtype=torch.float32)
        if self.scheme == "nvfp4":
            xf = _nvfp4_raw(x, qs[0])
        for e in range(E):
            if self.scheme in ("bf16", "fp16"):
                W1, W2 = fc1[e].float(), fc2[e].float()
            elif self.scheme == "fp8":
                W1, W2 = fc1[e].float(), fc2[e].float()
            elif self.scheme == "fp8_block":
                W1 = Fp8BlockTensor(fc1[e], qs[0][e]).dequantize()
                W2 = Fp8BlockTensor(fc2[e], qs[1][e]).dequantize()
            elif self.scheme == "nvfp4":
                def raw(w, blocks):
                    n, kb = w.shape[0], w.shape[1] * 16
                    sf = unswizzle_128x4(blocks.view(torch.uint8).reshape(-1), n, kb // 16)
                    sf = sf.view(torch.float8_e4m3fn)
                    return NvFp4Tensor(w.view(torch.uint8), sf, torch.tensor(1.0)).dequantize()
                W1, W2 = raw(fc1[e], qs[1][e]), raw(fc2[e], qs[4][e])
            elif self.scheme == "mxfp4":
                W1 = MxFp4Tensor(fc1[e], uninterleave_scales(qs[0][e:e + 1].view(torch.uint8))[0]).dequantize()
                W2 = MxFp4Tensor(fc2[e], uninterleave_scales(qs[1][e:e + 1].view(torch.uint8))[0]).dequantize()
            for t in range(x.shape[0]):
                for j in range(ids.shape[1]):
                    if int(ids[t, j]) != e:
                        continue
                    h = xf[t] @ W1.T
                    if self.scheme == "fp8":
                        h = h * qs[0][e]
                    elif self.scheme == "nvfp4":
                        h = h * qs[2][e]
                    if kw.get("fc1_expert_biases") is not None:
                        h = h + kw["fc1_expert_biases"][e].float()
                    a = _act(h, int(kw["activation_type"]), params, e)
                    if self.scheme == "fp8":
                        a = (a * qs[1]).clamp(-448, 448).to(torch.float8_e4m3fn).float()
                    elif self.scheme == "nvfp4":
                        a = _nvfp4_raw(a.unsqueeze(0), qs[3])[0]
                    y = a @ W2.T
                    if self.scheme == "fp8":
                        y = y * qs[2][e]
                    elif self.scheme == "nvfp4":
                        y = y * qs[5][e]
                    if kw.get("fc2_expert_biases") is not None:
                        y = y + kw["fc2_expert_biases"][e].float()
                    acc[t] += weights[t, j] * y
        out.copy_(acc.to(out.dtype))
        return [out]


@pytest.fixture
def stubbed(monkeypatch):
    """Replace every FlashInfer entry point the adapter calls; returns a factory of stubs."""
    state: dict = {}

    def install(scheme: str) -> CutlassStub:
        stub = CutlassStub(scheme)
        state["stub"] = stub
        state["ws_calls"] = []
        monkeypatch.setattr(K, "_flashinfer_cutlass_fused_moe", lambda: stub)
        monkeypatch.setattr(K, "_flashinfer_workspace_size", lambda **kw: state["ws_calls"].append(kw) or 4096)
        monkeypatch.setattr(K, "_flashinfer_activation", lambda v: v)
        monkeypatch.setattr(K, "_sm90_interleave", lambda w: w)
        return stub

    install.state = state
    return install


CASES = [
    # quant, activation, tolerance vs the unquantized-activation reference
    ("bf16", "silu", 1e-2), ("bf16", "gelu", 1e-2), ("bf16", "gelu_tanh", 1e-2), ("bf16", "relu2_no_mul", 1e-2),
    ("bf16", "swigluoai", 1e-2), ("bf16", "silu_no_mul", 1e-2), ("bf16", "gelu_no_mul", 1e-2),
    ("fp8", "silu", 6e-2), ("fp8", "relu2_no_mul", 6e-2), ("fp8_block", "silu", 1e-2),
    ("nvfp4", "silu", 0.2), ("nvfp4", "relu2_no_mul", 0.2), ("mxfp4", "silu", 1e-2),
]


@pytest.mark.parametrize("quant,act,tol", CASES)
def test_forward_wiring_matches_reference(stubbed, quant, act, tol):
    kw = {}
    if act == "swigluoai":
        kw["activation_params"] = SwigluOAIParams(alpha=1.702, limit=0.5, up_offset=1.0)
    layer = make_layer(quant=quant, activation=act, bias=(quant == "bf16" and act == "silu"), **kw)
    w = random_weights(layer, seed=11)
    x, tw, ids = routed_inputs(layer, T=6, seed=12)
    stub = stubbed(layer.dtype if quant == "bf16" else quant)
    ad = K.FlashInferCutlassExperts._without_runtime_checks(layer, w)
    out = ad(x, tw, ids.long())  # int64 ids must arrive as int32
    ref = ReferenceExperts(layer, w)(x, tw, ids)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    assert rel_err(out, ref) <= tol

    (args, kwargs), = stub.calls
    x_in, ids_in, w_in, fc1, fc2, out_dtype, qs = args
    assert ids_in.dtype == torch.int32 and torch.equal(ids_in, ids)
    assert w_in.dtype == torch.float32 and w_in is tw
    assert kwargs["use_fused_finalize"] is False
    assert kwargs["output"].shape == (6, 256) and kwargs["output"].dtype == torch.bfloat16
    assert kwargs["workspace_buffer"].dtype == torch.uint8 and kwargs["workspace_buffer"].numel() == 4096
    assert (kwargs["tp_size"], kwargs["tp_rank"], kwargs["ep_size"], kwargs["ep_rank"]) == (1, 0, 1, 0)
    assert kwargs["activation_type"] == DECLARED_KERNEL_VALUES[act]
    assert kwargs["use_deepseek_fp8_block_scale"] is (quant == "fp8_block")
    assert kwargs["use_w4_group_scaling"] is (quant == "mxfp4")
    ws = stubbed.state["ws_calls"][0]
    assert ws["use_fused_finalize"] is False and ws["weight_dtype"] == fc1.dtype and ws["x_dtype"] == x_in.dtype
    assert (ws["hidden_size"], ws["intermediate_size"], ws["num_experts_total"], ws["top_k"]) == (256, 128, 4, 2)
    expected = {"bf16": (torch.bfloat16, torch.bfloat16, None), "fp8": (torch.float8_e4m3fn, torch.float8_e4m3fn, 4),
                "fp8_block": (torch.bfloat16, torch.float8_e4m3fn, 2), "nvfp4": (torch.bfloat16, torch.int64, 6),
                "mxfp4": (torch.bfloat16, torch.uint8, 2)}[quant]
    assert (x_in.dtype, fc1.dtype) == expected[:2]
    assert (qs is None) if expected[2] is None else len(qs) == expected[2]
    if act == "swigluoai":
        assert float(kwargs["swiglu_limit"][0]) == 0.5 and float(kwargs["swiglu_beta"][0]) == 1.0
    else:
        assert "swiglu_alpha" not in kwargs


def test_static_activation_scales_are_used(stubbed):
    layer = make_layer(quant="fp8")
    w = random_weights(layer, seed=2)
    x, tw, ids = routed_inputs(layer, seed=3)
    stub = stubbed("fp8")
    ad = K.FlashInferCutlassExperts._without_runtime_checks(layer, w, input_amax=4.48, intermediate_amax=8.96)
    assert ad._calibration_weights is None
    ad(x, tw, ids)
    qs = stub.calls[0][0][6]
    assert float(qs[3]) == pytest.approx(0.01)  # a1 = 4.48 / 448
    assert float(qs[1]) == pytest.approx(50.0)  # 1 / a2, a2 = 8.96 / 448
    assert torch.allclose(qs[0], w.w13.scale * 0.01)


def test_first_batch_calibrates_once(stubbed):
    layer = make_layer(quant="nvfp4")
    w = random_weights(layer, seed=2)
    x, tw, ids = routed_inputs(layer, seed=3)
    stub = stubbed("nvfp4")
    ad = K.FlashInferCutlassExperts._without_runtime_checks(layer, w)
    ad(x, tw, ids)
    amax = float(ad.intermediate_amax)
    assert ad._calibration_weights is None and amax > 0
    ad(x * 4, tw, ids)  # a later, larger batch does not recalibrate
    assert float(ad.intermediate_amax) == amax
    assert float(stub.calls[1][0][6][3]) == pytest.approx(448 * 6 / amax)  # a2_gs
    assert float(stub.calls[1][0][6][0]) == pytest.approx(448 * 6 / float((x * 4).float().abs().max()))  # dynamic a1_gs


def test_padding_is_exact_and_sliced(stubbed):
    layer = make_layer(hidden_size=200, intermediate_size=100)  # bf16 needs % 8 only; pad to show slicing
    w = random_weights(layer, seed=7)
    x, tw, ids = routed_inputs(layer, seed=8)
    stub = stubbed("bf16")
    ad = K.FlashInferCutlassExperts._without_runtime_checks(layer, w, pad_hidden_to=256, pad_intermediate_to=128)
    out = ad(x, tw, ids)
    ref = ReferenceExperts(layer, w)(x, tw, ids)
    assert out.shape == (5, 200) and out.is_contiguous()
    assert rel_err(out, ref) <= 1e-2
    fc1 = stub.calls[0][0][3]
    assert fc1.shape == (4, 256, 256)
    assert torch.equal(fc1[:, :100, :200], w.w13[:, 100:])  # up half, then zero rows
    assert fc1[:, 100:128].abs().sum() == 0 and fc1[:, :, 200:].abs().sum() == 0


def test_padding_quantized_nvfp4_is_exact():
    layer = make_layer(quant="nvfp4", hidden_size=192, intermediate_size=96)
    w = random_weights(layer, seed=9)
    pw = fib.pad_expert_weights(w, layer, 256, 128)
    d13, d2 = w.w13.dequantize(), w.w2.dequantize()
    want13 = torch.zeros(4, 256, 256)
    want13[:, :96, :192], want13[:, 128:224, :192] = d13[:, :96], d13[:, 96:]
    assert torch.equal(pw.w13.dequantize(), want13)
    assert torch.equal(pw.w2.dequantize(), F.pad(d2, (0, 32, 0, 64)))


# --- Guards ------------------------------------------------------------------------------------------

@pytest.fixture
def bf16_adapter(stubbed):
    layer = make_layer()
    stub = stubbed("bf16")
    return K.FlashInferCutlassExperts._without_runtime_checks(layer, random_weights(layer, seed=1)), layer, stub


@pytest.mark.parametrize("bad", ["dtype", "noncontig", "shape", "weights_dtype", "ids_range", "misaligned"])
def test_forward_guards_raise_before_the_kernel(bf16_adapter, bad):
    ad, layer, stub = bf16_adapter
    x, tw, ids = routed_inputs(layer)
    if bad == "dtype":
        x = x.half()
    elif bad == "noncontig":
        x = torch.randn(layer.hidden_size, 5).to(torch.bfloat16).T
    elif bad == "shape":
        x = x[:, :128].contiguous()
    elif bad == "weights_dtype":
        tw = tw.half()
    elif bad == "ids_range":
        ids = ids.clone()
        ids[0, 0] = 4
    else:  # a contiguous view whose data pointer is 2 bytes past a 16-byte boundary
        buf = torch.empty(x.numel() + 8, dtype=torch.bfloat16)
        x = buf[1:1 + x.numel()].view_as(x).copy_(x)
        assert x.is_contiguous() and x.data_ptr() % 16
    with pytest.raises(ValueError) as info:
        ad(x, tw, ids)
    assert "\n" not in str(info.value)
    assert stub.calls == []


@pytest.mark.parametrize("kw,match", [
    (dict(activation="gelu_tanh_no_mul"), "does not run activation gelu_tanh_no_mul"),
    (dict(dtype="fp32"), r"does not run bf16 with fp32 hidden states \(takes bf16\)"),
    (dict(quant="fp8_block", hidden_size=192), "hidden to be a multiple of 128"),
    (dict(quant="nvfp4", activation="relu2_no_mul", intermediate_size=64),
     r"intermediate to be a multiple of 128; the kernel would see 64 \(pad intermediate to 128\)"),
    (dict(quant="mxfp4", dtype="fp16"), r"does not run mxfp4 with fp16 hidden states \(takes bf16\)"),
    (dict(quant="int4_w4a16"), "does not run int4_w4a16"),
    (dict(quant="int4_fp8"), "cannot convert its weights yet"),
    (dict(apply_router_weight_on_input=True, top_k=1), "applies router weights to expert outputs only"),
    # The declaration's facts the adapter used to restate and now derives (declaration wins):
    (dict(quant="fp8_block", dtype="fp16"), r"does not run fp8_block with fp16 hidden states \(takes bf16\)"),
    (dict(quant="bf16", dtype="fp16"), r"does not run bf16 with fp16 hidden states \(takes bf16\)"),
    (dict(quant="nvfp4", intermediate_size=96), "pad intermediate to 128"),
])
def test_layer_checks(kw, match):
    """Every layer-level refusal is the declaration's, raised by the adapter before any work: by
    weight preparation and by the adapter itself, with the backend id first."""
    layer = make_layer(**kw)
    with pytest.raises(ValueError, match=f"^flashinfer-cutlass: .*{match}"):
        K.prepare_cutlass_weights(layer, None)
    with pytest.raises(ValueError, match=match):
        K.FlashInferCutlassExperts._without_runtime_checks(layer, None)


def test_declared_padding_is_applied_by_selection_not_refused():
    """NvFP4 with I % 64 != 0 (gated) pads: the declared pad rule, as selection hands it to the adapter."""
    from moe_registry.execution.declared import declared_padding

    layer = make_layer(quant="nvfp4", intermediate_size=96)
    assert declared_padding("flashinfer-cutlass", layer) == (256, 128)
    assert declared_padding("flashinfer-cutlass", make_layer(quant="nvfp4", activation="relu2_no_mul",
                                                             intermediate_size=192)) == (256, 256)
    w = random_weights(layer, seed=0)
    p = K.prepare_cutlass_weights(layer, w, intermediate_to=128)
    assert p.fc1.shape == (4, 256, 256 // 16) and p.fc2.shape == (4, 256, 128 // 16)


def test_wrong_weights_raise_value_error():
    layer = make_layer(quant="fp8")
    with pytest.raises(ValueError, match="Fp8Tensor"):
        K.FlashInferCutlassExperts(layer, random_weights(make_layer(), seed=0))


def test_constructing_on_cpu_raises_runtime_error():
    layer = make_layer()
    with pytest.raises(RuntimeError, match="needs CUDA weights"):
        K.FlashInferCutlassExperts(layer, random_weights(layer, seed=0))


# --- JIT module status --------------------------------------------------------------------------------

H100 = fic.DeviceInfo(sm=90, capabilities=((9, 0),), name="NVIDIA H100 80GB HBM3")


@pytest.fixture
def fake_flashinfer(tmp_path, monkeypatch):
    """A fake installed flashinfer package root (version 0.7.2.post1) and an empty workspace."""
    root = tmp_path / "site" / "flashinfer"
    root.mkdir(parents=True)
    (root / "_build_meta.py").write_text('__version__ = "0.7.2.post1"\n')
    ws = tmp_path / "ws"
    ws.mkdir()
    for var in ("FLASHINFER_DISABLE_JIT", "FLASHINFER_CUDA_ARCH_LIST", fic.ALLOW_JIT_BUILD_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FLASHINFER_WORKSPACE_BASE", str(ws))
    monkeypatch.setattr(fic, "_jit_cache_providers", lambda version: [])
    return root, ws


def _jit_dir(ws: Path, module: str = "fused_moe_90", arch: str = "90a") -> Path:
    return ws / ".cache" / "flashinfer" / "0.7.2.post1" / arch / "cached_ops" / module


def test_module_names():
    assert fic.cutlass_module_name(90) == "fused_moe_90"
    assert fic.cutlass_module_name(90, h20=True) == "fused_moe_90_h20_prebuilt_d"
    assert fic.cutlass_module_name(89) == "fused_moe_89"
    assert [fic.cutlass_module_name(s) for s in (100, 107, 110, 103, 120, 121)] == [
        "fused_moe_100", "fused_moe_100", "fused_moe_100", "fused_moe_103", "fused_moe_120", "fused_moe_120"]
    assert fic.cutlass_module_name(80) is None
    assert fic.trtllm_module_name(100) == "fused_moe_trtllm_sm100"
    assert fic.trtllm_module_name(107) == "fused_moe_trtllm_sm107"
    assert fic.trtllm_module_name(90) is None


def test_not_built_reports_exact_path(fake_flashinfer):
    root, ws = fake_flashinfer
    st = fic.cutlass_module_status(H100, package_root=root)
    so = _jit_dir(ws) / "fused_moe_90.so"
    assert not st.built and st.module == "fused_moe_90" and st.path == so
    assert str(so) in st.detail
    assert root / "data" / "aot" / "fused_moe_90" / "fused_moe_90.so" in st.checked


def test_aot_module_is_built(fake_flashinfer):
    root, _ = fake_flashinfer
    aot = root / "data" / "aot" / "fused_moe_90" / "fused_moe_90.so"
    aot.parent.mkdir(parents=True)
    aot.write_bytes(b"\x7fELF")
    st = fic.cutlass_module_status(H100, package_root=root)
    assert st.built and st.source == "aot" and st.path == aot and str(aot) in st.detail
    assert K.require_built_or_allowed(st) == "1"  # FLASHINFER_DISABLE_JIT=1 while loading an AOT module


def test_jit_cache_provider_is_used(fake_flashinfer, tmp_path, monkeypatch):
    root, _ = fake_flashinfer
    cache = tmp_path / "provider"
    (cache / "fused_moe_90").mkdir(parents=True)
    (cache / "fused_moe_90" / "fused_moe_90.so").write_bytes(b"x")
    providers = [("p", cache, frozenset({"sm90a"}), frozenset({"fused_moe_90"}))]
    monkeypatch.setattr(fic, "_jit_cache_providers", lambda version: providers)
    st = fic.cutlass_module_status(H100, package_root=root)
    assert st.built and st.source == "flashinfer-jit-cache"
    providers[:] = [("p", cache, frozenset({"sm100a"}), frozenset({"fused_moe_90"}))]  # wrong arch
    assert not fic.cutlass_module_status(H100, package_root=root).built


def _make_ninja_build(build_dir: Path, module: str) -> Path:
    """A real ninja build laid out like FlashInfer's (absolute paths, object + link), built once."""
    build_dir.mkdir(parents=True)
    src = build_dir.parent / "src.cu"
    src.write_text("// source\n")
    obj, so = build_dir / "src.cuda.o", build_dir / f"{module}.so"
    (build_dir / "build.ninja").write_text(textwrap.dedent(f"""\
        ninja_required_version = 1.3
        rule cuda_compile
          command = cp $in $out && echo "$out: $in" > $out.d
          depfile = $out.d
          deps = gcc
        rule link
          command = cp $in $out
        build {obj}: cuda_compile {src}
        build {so}: link {obj}
        default {so}
        """))
    subprocess.run(["ninja", "-C", str(build_dir), "-f", str(build_dir / "build.ninja")], check=True,
                   capture_output=True)
    assert (build_dir / ".ninja_log").is_file() and (build_dir / ".ninja_deps").is_file()
    return src


@pytest.mark.skipif(shutil.which("ninja") is None, reason="needs ninja on PATH")
def test_jit_cache_built_then_stale(fake_flashinfer):
    root, ws = fake_flashinfer
    src = _make_ninja_build(_jit_dir(ws), "fused_moe_90")
    st = fic.cutlass_module_status(H100, package_root=root)
    assert st.built and st.source == "jit-cache", st.detail
    assert K.require_built_or_allowed(st) is None  # FlashInfer refuses JIT-cache modules under FLASHINFER_DISABLE_JIT
    os.utime(src, (src.stat().st_atime + 100, src.stat().st_mtime + 100))  # an edited source
    st = fic.cutlass_module_status(H100, package_root=root)
    assert not st.built and "out-of-date" in st.detail
    st = fic.cutlass_module_status(H100, package_root=root, verify_with_ninja=False)
    assert not st.built


@pytest.mark.skipif(shutil.which("ninja") is None, reason="needs ninja on PATH")
def test_jit_cache_ninja_dry_run_decides(fake_flashinfer):
    root, ws = fake_flashinfer
    build_dir = _jit_dir(ws)
    _make_ninja_build(build_dir, "fused_moe_90")
    # Change a command: outputs are newer than inputs, but ninja's log no longer matches.
    text = (build_dir / "build.ninja").read_text().replace("cp $in $out &&", "cp -p $in $out &&")
    (build_dir / "build.ninja").write_text(text)
    st = fic.cutlass_module_status(H100, package_root=root)
    assert not st.built and "ninja -n" in st.detail and "would run 2 build step(s)" in st.detail  # compile + relink


def test_so_without_ninja_state_is_not_built(fake_flashinfer, monkeypatch):
    root, ws = fake_flashinfer
    d = _jit_dir(ws)
    d.mkdir(parents=True)
    (d / "fused_moe_90.so").write_bytes(b"x")
    st = fic.cutlass_module_status(H100, package_root=root, verify_with_ninja=False)
    assert not st.built and "build.ninja" in st.detail
    monkeypatch.setenv("FLASHINFER_DISABLE_JIT", "1")
    st = fic.cutlass_module_status(H100, package_root=root)
    assert not st.built and "FLASHINFER_DISABLE_JIT" in st.detail
    monkeypatch.delenv("FLASHINFER_DISABLE_JIT")
    monkeypatch.setattr(fic.shutil, "which", lambda name: None)
    st = fic.cutlass_module_status(H100, package_root=root)
    assert not st.built and "ninja` is not on PATH" in st.detail


def test_arch_directory_rules(fake_flashinfer, monkeypatch):
    root, ws = fake_flashinfer
    two = fic.DeviceInfo(sm=90, capabilities=((9, 0), (10, 0)))
    st = fic.cutlass_module_status(two, package_root=root)
    assert st.path == _jit_dir(ws, arch="90a_100a") / "fused_moe_90.so"
    monkeypatch.setenv("FLASHINFER_CUDA_ARCH_LIST", "10.0a 9.0")
    assert fic.cutlass_module_status(H100, package_root=root).path == _jit_dir(ws, arch="90a_100a") / "fused_moe_90.so"
    assert fic.cutlass_module_status(fic.DeviceInfo(sm=80, capabilities=((8, 0),)), package_root=root).module is None
    b200 = fic.DeviceInfo(sm=100, capabilities=((10, 0),))
    monkeypatch.delenv("FLASHINFER_CUDA_ARCH_LIST")
    want = _jit_dir(ws, "fused_moe_100", "100a") / "fused_moe_100.so"
    assert fic.cutlass_module_status(b200, package_root=root).path == want


def test_paths_match_flashinfers_own_rules(flashinfer, tmp_path, monkeypatch):
    """FlashInfer's jit/env.py, imported fresh in a subprocess, names the same directory."""
    env = dict(os.environ, FLASHINFER_WORKSPACE_BASE=str(tmp_path), FLASHINFER_CUDA_ARCH_LIST="9.0 10.0a")
    code = "from flashinfer.jit import env; print(env.FLASHINFER_JIT_DIR); print(env.FLASHINFER_AOT_DIR)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    jit_dir, aot_dir = out.stdout.strip().splitlines()[-2:]
    monkeypatch.setenv("FLASHINFER_CUDA_ARCH_LIST", "9.0 10.0a")
    monkeypatch.setattr(fic, "_jit_cache_providers", lambda version: [])
    st = fic.cutlass_module_status(H100, workspace_base=tmp_path, verify_with_ninja=False)
    assert st.path == Path(jit_dir) / "fused_moe_90" / "fused_moe_90.so"
    assert st.checked[0] == Path(aot_dir) / "fused_moe_90" / "fused_moe_90.so"
    assert fic.flashinfer_version() == flashinfer.__version__


def test_refusal_message_and_opt_in(fake_flashinfer, monkeypatch):
    root, _ = fake_flashinfer
    st = fic.cutlass_module_status(H100, package_root=root)
    with pytest.raises(RuntimeError) as info:
        K.require_built_or_allowed(st)
    msg = str(info.value)
    assert msg.startswith("FlashInfer's fused_moe_90 JIT module is not built; its first build takes well over 40 "
                          "minutes for fused_moe_90 on 16 cores")
    assert "prebuild it or install flashinfer-jit-cache" in msg
    assert str(st.path) in msg
    with pytest.warns(UserWarning, match="will now build fused_moe_90"):
        assert K.require_built_or_allowed(st, allow_jit_build=True) is None
    monkeypatch.setenv(fic.ALLOW_JIT_BUILD_ENV, "1")
    with pytest.warns(UserWarning):
        K.require_built_or_allowed(st)
    with pytest.raises(RuntimeError):
        K.require_built_or_allowed(st, allow_jit_build=False)  # the explicit flag wins


def test_status_module_imports_neither_torch_nor_flashinfer():
    code = ("import sys, moe_registry.backends._flashinfer_jit as m; built, detail = m.fused_moe_module_status(); "
            "assert isinstance(built, bool) and detail; "
            "assert 'torch' not in sys.modules and 'flashinfer' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True)


@pytest.mark.skipif(shutil.which("ninja") is None, reason="needs ninja on PATH")
def test_load_rechecks_with_flashinfers_own_build_file(flashinfer, tmp_path):
    """A JIT cache that looks up to date (our fake ninja build) is still refused once FlashInfer's
    own build.ninja for fused_moe_90 is regenerated into it: ninja would compile every object.
    Runs in a subprocess so FlashInfer reads FLASHINFER_CUDA_ARCH_LIST / the workspace at import."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from pathlib import Path
        from test_flashinfer_prep import _make_ninja_build, _jit_dir, H100
        from moe_registry.backends import _flashinfer_jit as fic
        from moe_registry.backends.flashinfer_cutlass import kernel as K
        ws = Path({str(tmp_path)!r})
        _make_ninja_build(_jit_dir(ws), "fused_moe_90")
        st = fic.cutlass_module_status(H100)
        assert st.built and st.source == "jit-cache", st.detail
        try:
            K._recheck_jit_cache(90, st)
        except RuntimeError as exc:
            msg = str(exc)
        else:
            raise AssertionError("expected a refusal")
        assert msg.startswith("FlashInfer's fused_moe_90 JIT module is not built"), msg
        assert "with build.ninja regenerated" in msg and "build step(s)" in msg, msg
        assert str(_jit_dir(ws)) in msg, msg
        print("ok")
        """)
    env = dict(os.environ, FLASHINFER_WORKSPACE_BASE=str(tmp_path), FLASHINFER_CUDA_ARCH_LIST="9.0a")
    env.pop("FLASHINFER_DISABLE_JIT", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO,
                         timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


@pytest.mark.parametrize("quant,device,match", [
    ("nvfp4", "h100", r"runs nvfp4 only on SM100/SM103/SM107/SM110/SM120/SM121"),
    ("mxfp4", "b200", r"runs mxfp4 only on SM90"),
    ("fp8_block", "b200", r"runs fp8_block only on SM90"),
    ("bf16", "a100", r"needs SM89/.*; a100 \(SM80\) is not"),
    ("bf16", "h100", None), ("nvfp4", "b200", None), ("mxfp4", "h200", None),
])
def test_runtime_device_check_is_the_declarations(monkeypatch, quant, device, match):
    """The per-scheme arch lists are the declaration's: a GPU it does not list for the layer's
    scheme is refused with a RuntimeError carrying its reason (CUDA faked; device a preset)."""
    from moe_registry.schemas.device import get_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fib, "device_spec_of", lambda d: get_device(device))
    monkeypatch.setattr(fib, "flashinfer_package_root", lambda: "/somewhere")
    layer = make_layer(quant=quant)
    cuda = torch.device("cuda", 0)
    if match is None:
        assert fib.require_runtime(K.BACKEND, cuda, layer, 256, 128) == get_device(device).sm
    else:
        with pytest.raises(RuntimeError, match=f"^flashinfer-cutlass: .*{match}"):
            fib.require_runtime(K.BACKEND, cuda, layer, 256, 128)


def test_mxfp4_pads_hidden_and_intermediate_to_128_as_vllm_does(stubbed):
    """gpt-oss on Hopper: vLLM's FLASHINFER_CUTLASS_MXFP4_BF16 rounds hidden and intermediate up to 128
    (oracle/mxfp4.py); the declaration pads, and the padded forward equals the reference."""
    from moe_registry.execution.declared import declared_padding

    # 224 = 7 x 32 and 96 = 3 x 32 hold whole MXFP4 groups; neither is a multiple of 128: 256 and 128.
    layer = make_layer(quant="mxfp4", activation="swigluoai", bias=True, hidden_size=224, intermediate_size=96)
    assert declared_padding("flashinfer-cutlass", layer) == (256, 128)
    w = random_weights(layer, seed=5)
    x, tw, ids = routed_inputs(layer, T=6, seed=6)
    stub = stubbed("mxfp4")
    ad = K.FlashInferCutlassExperts._without_runtime_checks(layer, w, pad_hidden_to=256, pad_intermediate_to=128)
    out = ad(x, tw, ids)
    ref = ReferenceExperts(layer, w)(x, tw, ids)
    assert out.shape == (6, 224) and rel_err(out, ref) <= 1e-2
    (args, kwargs), = stub.calls
    assert args[0].shape == (6, 256) and kwargs["fc1_expert_biases"].shape == (4, 256)
    with pytest.raises(ValueError, match="pad hidden to 256"):
        K.prepare_cutlass_weights(layer, w)  # unpadded: refused with the size to pad to
