"""The reference backend against an independent float64 oracle.

The oracle shares no code with the reference: it evaluates *every* expert for every (token, slot)
pair with dense einsums and combines them through a one-hot matrix, and its activations are
written out from their definitions. The reference instead gathers tokens per expert, calls
``apply_activation`` and accumulates with ``index_add_``.

Tolerances. Both sides read the same stored inputs and weights (bf16 or fp32 values), so the only
differences are the reference's float32 arithmetic (relative ~1e-6 on O(1) sums of a few dozen
terms) and, for bf16 layers, the final rounding of the output to bf16, which is at most half an
ulp: ``|round(v) - v| <= 2**-8 * |v|`` (7 stored mantissa bits). Hence fp32: rtol=atol=1e-5;
bf16: rtol=2**-8 (exactly that rounding bound) plus atol=2e-5 for the float32 part. Sensitivity
tests below show these tolerances reject the nearest wrong semantics (gelu vs gelu_tanh, flipped
interleave, weight on input vs output, a dropped bias).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from moe_registry.backends.reference.kernel import ReferenceExperts
from moe_registry.execution.base import Experts, pad_weights
from moe_registry.execution.weights import ExpertWeights, random_weights
from moe_registry.schemas.activation import Activation, SwigluOAIParams
from moe_registry.schemas.layer import LayerSpec, ParallelConfig

from _decl_helpers import assert_selected
from _factories import make_layer as _make_layer

TOL = {"fp32": dict(rtol=1e-5, atol=1e-5), "bf16": dict(rtol=2**-8, atol=2e-5)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
E, K, H, I = 6, 2, 16, 24


# --- The oracle ------------------------------------------------------------------------------

def _act64(h: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
    """Activations from their definitions, in float64."""
    act = layer.activation
    if act is Activation.SWIGLUOAI:
        p = layer.swigluoai
        n = h.shape[-1] // 2
        gate, up = (h[..., 0::2], h[..., 1::2]) if p.interleaved else (h[..., :n], h[..., n:])
        if p.limit is not None:
            gate = torch.minimum(gate, torch.full_like(gate, p.limit))
            up = torch.maximum(torch.minimum(up, torch.full_like(up, p.limit)), torch.full_like(up, -p.limit))
        return (up + p.up_offset) * gate / (1 + torch.exp(-p.alpha * gate))

    def silu(g):
        return g / (1 + torch.exp(-g))

    def gelu(g):
        return 0.5 * g * (1 + torch.special.erf(g / math.sqrt(2)))

    def gelu_tanh(g):
        return 0.5 * g * (1 + torch.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))

    def relu2(g):
        return torch.where(g > 0, g * g, torch.zeros_like(g))

    fn = {Activation.SILU: silu, Activation.GELU: gelu, Activation.GELU_TANH: gelu_tanh,
          Activation.SILU_NO_MUL: silu, Activation.GELU_NO_MUL: gelu,
          Activation.GELU_TANH_NO_MUL: gelu_tanh, Activation.RELU2_NO_MUL: relu2}[act]
    if not act.is_gated:
        return fn(h)
    n = h.shape[-1] // 2
    return fn(h[..., :n]) * h[..., n:]


def oracle(layer: LayerSpec, w: ExpertWeights, x: torch.Tensor, topk_w: torch.Tensor,
           topk_ids: torch.Tensor) -> torch.Tensor:
    """Dense over all experts, combined with a one-hot [T, k, E] matrix; float64 throughout."""
    d = torch.float64
    w13, w2 = w.w13.to(d), w.w2.to(d)
    n_exp = w2.shape[0]
    X, S = x.to(d), topk_w.to(d)
    T, k = topk_ids.shape
    onehot = torch.nn.functional.one_hot(topk_ids.long(), n_exp).to(d)  # [T, k, E]
    if layer.apply_router_weight_on_input:
        xin, scale = S[..., None] * X[:, None, :], torch.ones_like(S)
    else:
        xin, scale = X[:, None, :].expand(T, k, X.shape[1]), S
    h = torch.einsum("tjh,erh->tjer", xin, w13)
    if w.w13_bias is not None:
        h = h + w.w13_bias.to(d)
    y = torch.einsum("tjei,ehi->tjeh", _act64(h, layer), w2)
    if w.w2_bias is not None:
        y = y + w.w2_bias.to(d)
    return torch.einsum("tje,tj,tjeh->th", onehot, scale, y)


# --- Inputs ----------------------------------------------------------------------------------

# The shared small layer at this file's size (module constants E, K, H, I).
make_layer = functools.partial(_make_layer, num_experts=E, top_k=K, hidden_size=H, intermediate_size=I)


def make_inputs(layer: LayerSpec, T: int = 9, seed: int = 1):
    """Ids never use the last local expert (an empty expert) and token 0 lists expert 1 twice."""
    g = torch.Generator().manual_seed(seed)
    n_exp = layer.local_num_experts
    x = torch.randn(T, layer.hidden_size, generator=g).to(DTYPES[layer.dtype])
    rows = [torch.randperm(n_exp - 1, generator=g)[: layer.top_k] for _ in range(T)]
    ids = (torch.stack(rows) if rows else torch.empty(0, layer.top_k)).to(torch.int32)
    if T and layer.top_k > 1:
        ids[0, :] = 1  # duplicate expert within one token
    weights = torch.rand(T, layer.top_k, generator=g) + 0.1
    return x, weights.float(), ids


ALL_ACTIVATIONS = [
    ("silu", None), ("gelu", None), ("gelu_tanh", None),
    ("swigluoai", None),  # defaults: alpha 1.702, limit 7, +1, halves
    ("swigluoai", SwigluOAIParams(interleaved=True)),
    ("swigluoai", SwigluOAIParams(alpha=1.0, limit=None, up_offset=0.0, interleaved=False)),
    ("swigluoai", SwigluOAIParams(limit=0.5, interleaved=True)),  # small limit: the clamps bite
    ("relu2_no_mul", None), ("silu_no_mul", None), ("gelu_no_mul", None), ("gelu_tanh_no_mul", None),
]


def _id(case):
    act, p = case
    return act if p is None else f"{act}-a{p.alpha}-l{p.limit}-o{p.up_offset}-{'il' if p.interleaved else 'halves'}"


def check(layer: LayerSpec, T: int = 9, *, seed: int = 1, pad=(None, None)):
    w = random_weights(layer, dtype=DTYPES[layer.dtype], seed=seed)
    x, tw, ti = make_inputs(layer, T, seed=seed + 1)
    experts = ReferenceExperts(layer, w, pad_hidden_to=pad[0], pad_intermediate_to=pad[1])
    out = experts(x, tw, ti)
    assert out.dtype == DTYPES[layer.dtype] and out.shape == (T, layer.hidden_size)
    torch.testing.assert_close(out.double(), oracle(layer, w, x, tw, ti), **TOL[layer.dtype])
    return out


# --- Correctness -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("case", ALL_ACTIVATIONS, ids=_id)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_every_activation_matches_oracle(case, dtype, bias):
    act, params = case
    check(make_layer(act=act, dtype=dtype, activation_params=params, bias=bias))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("act", ["silu", "swigluoai", "relu2_no_mul"])
def test_router_weight_on_input(act, dtype):
    check(make_layer(act=act, dtype=dtype, apply_router_weight_on_input=True, bias=True))


@pytest.mark.parametrize("T", [0, 1, 2, 33])
def test_token_counts(T):
    check(make_layer(act="silu", dtype="fp32", bias=True), T=T)


def test_empty_expert_and_duplicates_contribute_as_defined():
    layer = make_layer(act="silu", dtype="fp32")
    w = random_weights(layer, dtype=torch.float32)
    x, tw, ti = make_inputs(layer, T=4)
    experts = ReferenceExperts(layer, w)
    out = experts(x, tw, ti)
    # Token 0 lists expert 1 in both slots: its output is (w0 + w1) times expert 1's output.
    single = ReferenceExperts(make_layer(act="silu", dtype="fp32").model_copy(update={"top_k": 1}), w)
    y1 = single(x[:1], torch.ones(1, 1), torch.tensor([[1]], dtype=torch.int32))
    torch.testing.assert_close(out[:1], (tw[0].sum() * y1), rtol=1e-5, atol=1e-5)
    # The last expert never receives tokens: poisoning its weights changes nothing.
    poisoned = ExpertWeights(w13=w.w13.clone(), w2=w.w2.clone())
    poisoned.w13[E - 1] = float("nan")
    torch.testing.assert_close(ReferenceExperts(layer, poisoned)(x, tw, ti), out, rtol=0, atol=0)


def test_int64_ids_accepted():
    layer = make_layer(act="gelu", dtype="fp32")
    w = random_weights(layer, dtype=torch.float32)
    x, tw, ti = make_inputs(layer)
    experts = ReferenceExperts(layer, w)
    torch.testing.assert_close(experts(x, tw, ti.long()), experts(x, tw, ti), rtol=0, atol=0)


def test_local_shapes_under_tp_and_ep():
    layer = LayerSpec(num_experts=8, top_k=2, hidden_size=16, intermediate_size=32, dtype="fp32",
                      parallel=ParallelConfig(tp=2, ep=2), bias=True)
    w = random_weights(layer, dtype=torch.float32)
    assert tuple(w.w13.shape) == (4, 32, 16) and tuple(w.w2.shape) == (4, 16, 16)
    assert tuple(w.w13_bias.shape) == (4, 32) and tuple(w.w2_bias.shape) == (4, 16)
    assert (w.num_experts, w.hidden_size, w.intermediate_size) == (4, 16, 16)
    check(layer)


def test_random_weights_scale_and_determinism():
    layer = LayerSpec(num_experts=4, top_k=2, hidden_size=256, intermediate_size=128, dtype="fp32")
    a, b = random_weights(layer, seed=3), random_weights(layer, seed=3)
    assert torch.equal(a.w13, b.w13) and not torch.equal(a.w13, random_weights(layer, seed=4).w13)
    assert a.w13.dtype == torch.bfloat16
    assert abs(a.w13.float().std().item() * math.sqrt(256) - 1) < 0.05
    assert abs(a.w2.float().std().item() * math.sqrt(128) - 1) < 0.05


def test_experts_base_is_abstract_and_callable():
    with pytest.raises(TypeError):
        Experts(make_layer(), None)  # type: ignore[abstract]
    layer = make_layer(act="silu", dtype="fp32")
    experts = ReferenceExperts(layer, random_weights(layer, dtype=torch.float32))
    assert experts.backend == "reference" and "reference" in repr(experts)


# --- The tolerances can fail -----------------------------------------------------------------

@pytest.mark.parametrize("mutation", ["gelu_vs_tanh", "interleave", "weight_on_input", "drop_bias"])
def test_tolerance_rejects_nearest_wrong_semantics(mutation):
    layer = make_layer(act="gelu", dtype="fp32", bias=True)
    if mutation == "interleave":
        layer = make_layer(act="swigluoai", dtype="fp32", activation_params=SwigluOAIParams(interleaved=True),
                           bias=True)
    w = random_weights(layer, dtype=torch.float32)
    x, tw, ti = make_inputs(layer, T=16)
    x = x * 2  # spread GEMM1 outputs over |g| ~ 2-3, where gelu and its tanh form differ most
    wrong_layer, wrong_w = layer, w
    if mutation == "gelu_vs_tanh":
        wrong_layer = layer.model_copy(update={"activation": Activation.GELU_TANH})
    elif mutation == "interleave":
        wrong_layer = layer.model_copy(update={"activation_params": SwigluOAIParams(interleaved=False)})
    elif mutation == "weight_on_input":
        wrong_layer = layer.model_copy(update={"apply_router_weight_on_input": True})
    else:
        wrong_layer = layer.model_copy(update={"bias": False})
        wrong_w = ExpertWeights(w13=w.w13, w2=w.w2)
    out = ReferenceExperts(wrong_layer, wrong_w)(x, tw, ti)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(out.double(), oracle(layer, w, x, tw, ti), **TOL["fp32"])


# --- Padding ---------------------------------------------------------------------------------

PAD_CASES = [("silu", None), ("swigluoai", SwigluOAIParams(interleaved=True)),
             ("swigluoai", SwigluOAIParams(interleaved=False)), ("relu2_no_mul", None), ("gelu_tanh", None)]


@pytest.mark.parametrize("case", PAD_CASES, ids=_id)
@pytest.mark.parametrize("pad", [(32, None), (None, 32), (48, 40)], ids=["hidden", "intermediate", "both"])
def test_padded_reference_equals_unpadded(case, pad):
    act, params = case
    layer = make_layer(act=act, dtype="fp32", activation_params=params, bias=True)
    w = random_weights(layer, dtype=torch.float32)
    x, tw, ti = make_inputs(layer)
    plain = ReferenceExperts(layer, w)(x, tw, ti)
    padded = ReferenceExperts(layer, w, pad_hidden_to=pad[0], pad_intermediate_to=pad[1])
    assert (padded.hidden_padded, padded.intermediate_padded) == (pad[0] or H, pad[1] or I)
    torch.testing.assert_close(padded(x, tw, ti), plain, rtol=1e-6, atol=1e-6)


def test_pad_weights_pads_gate_and_up_halves_separately():
    layer = make_layer(act="silu", dtype="fp32", bias=True)
    w = random_weights(layer, dtype=torch.float32)
    p = pad_weights(w, 20, 30)
    assert tuple(p.w13.shape) == (E, 60, 20) and tuple(p.w2.shape) == (E, 20, 30)
    assert torch.equal(p.w13[:, :I, :H], w.w13[:, :I]) and torch.equal(p.w13[:, 30:30 + I, :H], w.w13[:, I:])
    assert not p.w13[:, I:30].any() and not p.w13[:, 30 + I:].any() and not p.w13[:, :, H:].any()
    assert torch.equal(p.w13_bias[:, :I], w.w13_bias[:, :I])
    assert torch.equal(p.w13_bias[:, 30:30 + I], w.w13_bias[:, I:])
    assert not p.w13_bias[:, I:30].any() and not p.w13_bias[:, 30 + I:].any()
    assert torch.equal(p.w2[:, :H, :I], w.w2) and not p.w2[:, H:].any() and not p.w2[:, :, I:].any()
    assert torch.equal(p.w2_bias[:, :H], w.w2_bias) and not p.w2_bias[:, H:].any()


def test_pad_weights_interleaved_and_non_gated_pad_at_the_end():
    w = random_weights(make_layer(act="relu2_no_mul", dtype="fp32"), dtype=torch.float32)
    p = pad_weights(w, None, 32)
    assert tuple(p.w13.shape) == (E, 32, H) and torch.equal(p.w13[:, :I], w.w13) and not p.w13[:, I:].any()
    w = random_weights(make_layer(act="swigluoai", dtype="fp32", activation_params=SwigluOAIParams(interleaved=True)),
                       dtype=torch.float32)
    p = pad_weights(w, None, 32, interleaved=True)
    assert tuple(p.w13.shape) == (E, 64, H) and torch.equal(p.w13[:, :2 * I], w.w13) and not p.w13[:, 2 * I:].any()


def test_pad_weights_refuses_quantized_and_shrinking():
    w = random_weights(make_layer(act="silu", dtype="fp32"), dtype=torch.float32)
    with pytest.raises(ValueError, match="cannot pad down"):
        pad_weights(w, H - 1, None)
    with pytest.raises(ValueError, match="smaller than"):
        ReferenceExperts(make_layer(act="silu", dtype="fp32"), w, pad_intermediate_to=I - 8)

    class Packed:  # stands in for a formats object
        shape = w.w2.shape

    with pytest.raises(ValueError, match="unquantized"):
        pad_weights(ExpertWeights(w13=w.w13, w2=Packed()), 32, None)


# --- Quantized weights (run once moe_registry.formats exists) --------------------------------

QUANT_SCHEMES = ["fp8", "fp8_block", "nvfp4", "mxfp4", "int4_w4a16:g32"]


@pytest.mark.parametrize("scheme", QUANT_SCHEMES)
def test_quantized_weights_run_as_their_dequantization(scheme):
    formats = pytest.importorskip("moe_registry.formats")
    if not hasattr(formats, "quantize"):  # the package is being written; run once it exports quantize
        pytest.skip("moe_registry.formats.quantize not available yet")
    layer = LayerSpec(num_experts=4, top_k=2, hidden_size=128, intermediate_size=128, quant=scheme,
                      dtype="bf16", bias=scheme == "mxfp4", activation="swigluoai" if scheme == "mxfp4" else "silu")
    w = random_weights(layer, dtype=torch.bfloat16)
    assert w.is_quantized and (w.num_experts, w.hidden_size, w.intermediate_size) == (4, 128, 128)
    x, tw, ti = make_inputs(layer, T=8)
    out = ReferenceExperts(layer, w)(x, tw, ti)
    deq = w.dequantized(torch.float32)
    assert not deq.is_quantized
    torch.testing.assert_close(out.double(), oracle(layer, deq, x, tw, ti), **TOL["bf16"])


# --- build_experts / run_layer ---------------------------------------------------------------

def test_run_layer_forced_reference_equals_route_then_forward():
    from moe_registry.execution import run_layer
    from moe_registry.execution.routing import route

    layer = make_layer(act="silu", dtype="fp32", bias=True)
    w = random_weights(layer, dtype=torch.float32)
    x, _, _ = make_inputs(layer)
    logits = torch.randn(x.shape[0], E, generator=torch.Generator().manual_seed(5))
    out, selection = run_layer(layer, w, x, logits, device="cpu", force="reference")
    assert_selected(selection, "reference")
    tw, ti = route(logits, layer)
    torch.testing.assert_close(out, ReferenceExperts(layer, w)(x, tw, ti), rtol=0, atol=0)
    with pytest.raises(ValueError, match="EP2"):
        run_layer(layer.model_copy(update={"parallel": ParallelConfig(ep=2)}), w, x, logits, force="reference")


def test_build_experts_passes_the_selected_padding():
    from moe_registry.execution import build_experts
    from moe_registry.schemas.selection import Padding
    from moe_registry.selection import select_backend

    layer = make_layer(act="swigluoai", dtype="fp32", activation_params=SwigluOAIParams(interleaved=True), bias=True)
    selection = select_backend(layer, "cpu", force="reference")
    padding = (Padding(dimension="hidden", original=H, padded=32, multiple_of=32, extra_weight_memory_pct=100,
                       extra_flops_pct=100),
               Padding(dimension="intermediate", original=I, padded=32, multiple_of=32,
                       extra_weight_memory_pct=33, extra_flops_pct=33))
    w = random_weights(layer, dtype=torch.float32)
    experts = build_experts(selection.model_copy(update={"padding": padding}), w)
    assert isinstance(experts, ReferenceExperts) and (experts.hidden_padded, experts.intermediate_padded) == (32, 32)
    x, tw, ti = make_inputs(layer)
    torch.testing.assert_close(experts(x, tw, ti), build_experts(selection, w)(x, tw, ti), rtol=1e-6, atol=1e-6)
