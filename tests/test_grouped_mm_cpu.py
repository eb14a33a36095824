"""torch-grouped-mm adapter on CPU (torch's grouped_mm CPU fallback) against the reference backend.

The CPU path runs the same adapter code as CUDA (sort, offsets, gathers, both grouped GEMMs, the
inverse-permutation reduction); only the GEMM implementation underneath differs. Every case draws
fresh random inputs; the tolerance is the bf16 one (operands rounded to bf16, fp32 reference).
"""

from __future__ import annotations

import functools
import importlib.util

import pytest

torch = pytest.importorskip("torch")

from moe_registry.backends.reference.kernel import ReferenceExperts  # noqa: E402
from moe_registry.backends.torch_grouped_mm.kernel import (  # noqa: E402
    TorchGroupedMMExperts,
    alignment_elements,
    grouped_mm_experts,
)
from moe_registry.execution.weights import ExpertWeights, random_weights  # noqa: E402
from moe_registry.schemas.activation import Activation, SwigluOAIParams  # noqa: E402
from moe_registry.schemas.layer import LayerSpec  # noqa: E402

from _factories import make_layer as _make_layer, rel_err, routed_inputs  # noqa: E402

BF16_TOL = 1e-2


# The shared small layer at this file's size (8 experts, H=64, I=32: fast on the CPU fallback).
make_layer = functools.partial(_make_layer, num_experts=8, hidden_size=64, intermediate_size=32)


def compare(layer: LayerSpec, weights: ExpertWeights, x, w, ids, *, tol=BF16_TOL, **kw) -> float:
    ref = ReferenceExperts(layer, weights)(x, w, ids)
    out = TorchGroupedMMExperts(layer, weights, **kw)(x, w, ids)
    assert out.shape == ref.shape == (x.shape[0], layer.hidden_size)
    assert out.dtype == ref.dtype == x.dtype
    assert out.is_contiguous()
    if x.shape[0] == 0:
        return 0.0
    err = rel_err(out, ref)
    assert err <= tol, f"relative error {err:.3e} > {tol}"
    return err


# --- Every activation, every T --------------------------------------------------------------------

# silu_clamp is not declared by this backend (its adapter refuses it); activate() below still covers its maths.
@pytest.mark.parametrize("activation", [a.value for a in Activation if a is not Activation.SILU_CLAMP])
@pytest.mark.parametrize("T", [0, 1, 7, 64])
def test_matches_reference_every_activation(activation, T):
    layer = make_layer(activation=activation, num_experts=8, top_k=3)
    weights = random_weights(layer, seed=T + 1)
    x, w, ids = routed_inputs(layer, T, seed=100 + T)
    compare(layer, weights, x, w, ids)


@pytest.mark.parametrize("layout", ["k_major", "n_major"])
def test_weight_layouts_agree(layout):
    layer = make_layer(activation="gelu_tanh", num_experts=16, top_k=4)
    weights = random_weights(layer, seed=3)
    x, w, ids = routed_inputs(layer, 33, seed=4)
    compare(layer, weights, x, w, ids, weight_layout=layout)
    a = TorchGroupedMMExperts(layer, weights, weight_layout="k_major")(x, w, ids)
    b = TorchGroupedMMExperts(layer, weights, weight_layout="n_major")(x, w, ids)
    assert torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2)


def test_bad_weight_layout():
    layer = make_layer()
    with pytest.raises(ValueError, match="weight_layout"):
        TorchGroupedMMExperts(layer, random_weights(layer), weight_layout="row")


@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
def test_id_dtypes(ids_dtype):
    layer = make_layer()
    weights = random_weights(layer, seed=5)
    x, w, ids = routed_inputs(layer, 16, seed=6, ids_dtype=ids_dtype)
    compare(layer, weights, x, w, ids)


# --- Routing shapes ----------------------------------------------------------------------------------

def test_empty_experts():
    layer = make_layer(num_experts=8, top_k=2)
    weights = random_weights(layer, seed=7)
    x, w, _ = routed_inputs(layer, 20, seed=8)
    # Only experts 1, 4 and 6 get tokens; 0 (first group), 7 (last group) and others stay empty.
    g = torch.Generator().manual_seed(9)
    choices = torch.tensor([1, 4, 6])
    first = choices[torch.randint(0, 3, (20,), generator=g)]
    second = choices[(torch.searchsorted(choices, first) + 1) % 3]
    ids = torch.stack([first, second], dim=1).to(torch.int32)
    compare(layer, weights, x, w, ids)


def test_imbalanced_routing():
    layer = make_layer(num_experts=16, top_k=4)
    weights = random_weights(layer, seed=10)
    x, w, _ = routed_inputs(layer, 64, seed=11)
    # Every token picks expert 0 plus three distinct others drawn from a tiny set: expert 0 gets all
    # 64 rows, a few get many, most get none.
    g = torch.Generator().manual_seed(12)
    others = torch.stack([torch.randperm(4, generator=g)[:3] + 1 for _ in range(64)])
    ids = torch.cat([torch.zeros(64, 1, dtype=torch.long), others], dim=1).to(torch.int32)
    compare(layer, weights, x, w, ids)


def test_all_tokens_one_expert_last():
    layer = make_layer(num_experts=8, top_k=1)
    weights = random_weights(layer, seed=13)
    x, w, _ = routed_inputs(layer, 9, seed=14)
    ids = torch.full((9, 1), 7, dtype=torch.int32)
    compare(layer, weights, x, w, ids)


def test_duplicate_expert_in_one_token():
    # A token listing the same expert twice contributes twice (the reference's documented rule).
    layer = make_layer(num_experts=4, top_k=2)
    weights = random_weights(layer, seed=15)
    x, w, _ = routed_inputs(layer, 5, seed=16)
    ids = torch.tensor([[2, 2], [0, 1], [3, 3], [1, 0], [2, 3]], dtype=torch.int32)
    compare(layer, weights, x, w, ids)


# --- Layer features ----------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["silu", "swigluoai", "relu2_no_mul"])
def test_biases(activation):
    layer = make_layer(activation=activation, bias=True, num_experts=8, top_k=3)
    weights = random_weights(layer, seed=17)
    x, w, ids = routed_inputs(layer, 23, seed=18)
    compare(layer, weights, x, w, ids)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_router_weight_on_input(top_k, bias):
    layer = make_layer(apply_router_weight_on_input=True, top_k=top_k, bias=bias)
    weights = random_weights(layer, seed=19)
    x, w, ids = routed_inputs(layer, 17, seed=20)
    compare(layer, weights, x, w, ids)


def test_swigluoai_interleaved_params():
    layer = make_layer(activation="swigluoai",
                       activation_params=SwigluOAIParams(alpha=1.5, limit=3.0, up_offset=0.5, interleaved=True),
                       bias=True)
    weights = random_weights(layer, seed=21)
    x, w, ids = routed_inputs(layer, 12, seed=22)
    compare(layer, weights, x, w, ids)


def test_tensor_parallel_local_sizes():
    layer = make_layer(intermediate_size=64, parallel={"tp": 2}, num_experts=8)
    weights = random_weights(layer, seed=23)  # local I = 32
    assert weights.intermediate_size == 32
    x, w, ids = routed_inputs(layer, 10, seed=24)
    compare(layer, weights, x, w, ids)


@pytest.mark.parametrize("dtype_name,dtype", [("fp16", torch.float16), ("fp32", torch.float32)])
def test_other_layer_dtypes_are_refused_as_declared(dtype_name, dtype):
    # grouped_mm would run them through PyTorch's per-expert fallback, not the CUTLASS kernel the
    # declaration describes; the adapter refuses what the declaration does not claim.
    layer = make_layer(dtype=dtype_name)
    with pytest.raises(ValueError, match=f"takes bf16 hidden states, not {dtype_name}"):
        TorchGroupedMMExperts(layer, random_weights(layer, seed=25, dtype=dtype))


# --- Padding -----------------------------------------------------------------------------------------

def test_alignment_rule_values():
    assert alignment_elements(torch.bfloat16) == 8
    assert alignment_elements(torch.float16) == 8
    assert alignment_elements(torch.float32) == 4


@pytest.mark.parametrize("hidden,inter", [(60, 32), (64, 30), (60, 30)])
def test_unaligned_without_padding_is_a_clear_error(hidden, inter):
    layer = make_layer(hidden_size=hidden, intermediate_size=inter)
    with pytest.raises(ValueError, match=r"multiple of 8.*\(pad (hidden|intermediate) to \d+\)"):
        TorchGroupedMMExperts(layer, random_weights(layer, seed=27))


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "swigluoai", "relu2_no_mul"])
@pytest.mark.parametrize("hidden,inter,pad_h,pad_i", [(60, 30, 64, 32), (64, 32, 80, 48), (60, 32, 64, None)])
def test_padding_requested(activation, hidden, inter, pad_h, pad_i):
    layer = make_layer(hidden_size=hidden, intermediate_size=inter, activation=activation, bias=True)
    weights = random_weights(layer, seed=28)
    x, w, ids = routed_inputs(layer, 19, seed=29)
    ref = ReferenceExperts(layer, weights)(x, w, ids)  # unpadded reference
    experts = TorchGroupedMMExperts(layer, weights, pad_hidden_to=pad_h, pad_intermediate_to=pad_i)
    assert experts.hidden_padded == (pad_h or hidden)
    assert experts.w13_t.shape[1] == (pad_h or hidden)
    out = experts(x, w, ids)
    assert out.shape == (19, hidden)
    assert rel_err(out, ref) <= BF16_TOL


def test_padding_interleaved_swigluoai():
    layer = make_layer(activation="swigluoai", intermediate_size=30,
                       activation_params=SwigluOAIParams(interleaved=True))
    weights = random_weights(layer, seed=30)
    x, w, ids = routed_inputs(layer, 11, seed=31)
    ref = ReferenceExperts(layer, weights)(x, w, ids)
    out = TorchGroupedMMExperts(layer, weights, pad_intermediate_to=32)(x, w, ids)
    assert rel_err(out, ref) <= BF16_TOL


def test_pad_smaller_than_size_refused():
    layer = make_layer()
    with pytest.raises(ValueError, match="smaller"):
        TorchGroupedMMExperts(layer, random_weights(layer), pad_hidden_to=32)


# --- Quantized weights, dequantized at load -------------------------------------------------------

_HAS_FORMATS = importlib.util.find_spec("moe_registry.formats") is not None


@pytest.mark.skipif(not _HAS_FORMATS, reason="moe_registry.formats not present")
@pytest.mark.parametrize("quant", ["int4_w4a16", "int4_w4a16:g32", "int4_w4a16:zp", "fp8", "fp8_block", "nvfp4",
                                   "nvfp4_w4a16", "mxfp4"])
def test_dequantized_at_load(quant):
    layer = make_layer(quant=quant, hidden_size=256, intermediate_size=128, num_experts=8, top_k=2)
    try:
        weights = random_weights(layer, seed=32)
    except (ImportError, AttributeError, NotImplementedError) as exc:  # formats still being written
        pytest.skip(f"cannot quantize {quant} yet: {exc}")
    x, w, ids = routed_inputs(layer, 24, seed=33)
    experts = TorchGroupedMMExperts(layer, weights)
    assert experts.dequantized_at_load
    assert experts.w13_t.dtype == torch.bfloat16
    # Same quantized weights on both sides: the only difference is bf16 rounding of operands.
    ref = ReferenceExperts(layer, weights)(x, w, ids)
    assert rel_err(experts(x, w, ids), ref) <= BF16_TOL


@pytest.mark.skipif(not _HAS_FORMATS, reason="moe_registry.formats not present")
def test_dequantized_int4_with_padding():
    layer = make_layer(quant="int4_w4a16:g32", hidden_size=256, intermediate_size=96)
    try:
        weights = random_weights(layer, seed=34)
    except (ImportError, AttributeError, NotImplementedError) as exc:
        pytest.skip(f"cannot quantize int4 yet: {exc}")
    x, w, ids = routed_inputs(layer, 9, seed=35)
    ref = ReferenceExperts(layer, weights)(x, w, ids)
    out = TorchGroupedMMExperts(layer, weights, pad_intermediate_to=128)(x, w, ids)
    assert rel_err(out, ref) <= BF16_TOL


# --- Guards ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built():
    layer = make_layer()
    return layer, TorchGroupedMMExperts(layer, random_weights(layer, seed=36))


def test_guard_wrong_hidden(built):
    layer, experts = built
    x, w, ids = routed_inputs(layer, 4, seed=37)
    with pytest.raises(ValueError, match="hidden_states"):
        experts(x[:, :32].contiguous(), w, ids)


def test_guard_wrong_dtype(built):
    layer, experts = built
    x, w, ids = routed_inputs(layer, 4, seed=38)
    with pytest.raises(ValueError, match="hidden_states.*dtype"):
        experts(x.float(), w, ids)
    with pytest.raises(ValueError, match="topk_weights.*dtype"):
        experts(x, w.bfloat16(), ids)
    with pytest.raises(ValueError, match="topk_ids.*dtype"):
        experts(x, w, ids.float())


def test_guard_wrong_k_and_rows(built):
    layer, experts = built
    x, w, ids = routed_inputs(layer, 4, seed=39)
    with pytest.raises(ValueError, match="topk_ids.*columns"):
        experts(x, w, ids[:, :1].contiguous())
    with pytest.raises(ValueError, match="topk_weights.*rows"):
        experts(x, w[:3].contiguous(), ids)


def test_guard_ids_out_of_range(built):
    layer, experts = built
    x, w, ids = routed_inputs(layer, 4, seed=40)
    bad = ids.clone()
    bad[1, 0] = layer.num_experts
    with pytest.raises(ValueError, match=r"topk_ids.*\[0, 8\)"):
        experts(x, w, bad)
    bad[1, 0] = -1
    with pytest.raises(ValueError, match="topk_ids"):
        experts(x, w, bad)


def test_guard_non_contiguous(built):
    layer, experts = built
    x, w, ids = routed_inputs(layer, 4, seed=41)
    with pytest.raises(ValueError, match="contiguous"):
        experts(torch.cat([x, x], dim=1)[:, ::2], w, ids)


def test_weight_shape_mismatch_refused():
    layer = make_layer()
    other = random_weights(make_layer(intermediate_size=48), seed=42)
    with pytest.raises(ValueError, match="w13|w2"):
        TorchGroupedMMExperts(layer, other)


def test_bias_mismatch_refused():
    layer = make_layer(bias=True)
    with pytest.raises(ValueError, match="bias"):
        TorchGroupedMMExperts(layer, random_weights(make_layer(bias=False), seed=43))


# --- Kernel-code properties ------------------------------------------------------------------------

@pytest.mark.parametrize("activation", [a.value for a in Activation])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_activate_matches_apply_activation(activation, dtype):
    from moe_registry.backends.torch_grouped_mm.kernel import activate
    from moe_registry.execution.activations import apply_activation

    layer = make_layer(activation=activation)
    g = torch.Generator().manual_seed(50)
    h = (3 * torch.randn(37, layer.gemm1_rows, generator=g)).to(dtype)
    scale = torch.rand(37, 1, generator=g)
    expected = (apply_activation(h.float(), layer) * scale).to(dtype)
    h0 = h.clone()
    got = activate(h, layer, scale)
    assert torch.equal(h, h0), "activate modified its input"
    assert got.dtype == dtype and got.shape == expected.shape
    # Same float32 maths; erf/tanh may differ in the last float32 bit between vectorised and
    # strided loops, which can flip one rounding of the 16-bit result: allow one unit there.
    eps = torch.finfo(dtype).eps if dtype != torch.float32 else 1e-5
    torch.testing.assert_close(got.float(), expected.float(), rtol=eps, atol=1e-5)


def test_direct_call_matches_forward(built):
    layer, experts = built
    x, w, ids = routed_inputs(layer, 13, seed=44)
    fn, args, kwargs = experts.direct_call(ids.dtype)
    assert fn is grouped_mm_experts
    assert torch.equal(fn(x, w, ids, *args, **kwargs), experts(x, w, ids))


def test_deterministic(built):
    layer, experts = built
    x, w, ids = routed_inputs(layer, 64, seed=45)
    assert torch.equal(experts(x, w, ids), experts(x, w, ids))


def test_id_range_check_can_be_skipped(built):
    layer, _ = built
    experts = TorchGroupedMMExperts(layer, random_weights(layer, seed=46))
    experts.check_id_range = False
    x, w, ids = routed_inputs(layer, 8, seed=47)
    ref = ReferenceExperts(layer, random_weights(layer, seed=46))(x, w, ids)
    assert rel_err(experts(x, w, ids), ref) <= BF16_TOL


def test_inputs_not_modified(built):
    layer, experts = built
    x, w, ids = routed_inputs(layer, 10, seed=48)
    x0, w0, ids0 = x.clone(), w.clone(), ids.clone()
    experts(x, w, ids)
    assert torch.equal(x, x0) and torch.equal(w, w0) and torch.equal(ids, ids0)


def test_repr_names_backend_and_padding():
    layer = make_layer(hidden_size=60)
    experts = TorchGroupedMMExperts(layer, random_weights(layer, seed=49), pad_hidden_to=64)
    assert "torch-grouped-mm" in repr(experts) and "hidden->64" in repr(experts)
