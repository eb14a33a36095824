"""TRT-LLM-gen NvFP4 adapter on CPU: the row-permutation index functions (against slow loops
written from FlashInfer's documented semantics, and against FlashInfer's own functions when
``import flashinfer`` works here), the full weight layout, the output scalars, the kernel-call
wiring against an emulating stub, guards and the availability errors.

The kernel needs SM100; the project's GPUs are SM90, so nothing here runs it.
"""

from __future__ import annotations

import functools

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from moe_registry.backends import _flashinfer_base as fib  # noqa: E402
from moe_registry.backends import _flashinfer_jit as fic  # noqa: E402
from moe_registry.backends.reference.kernel import ReferenceExperts  # noqa: E402
from moe_registry.backends.trtllm_gen import _layout as LY  # noqa: E402
from moe_registry.backends.trtllm_gen import fp4_kernel as K  # noqa: E402
from moe_registry.backends.trtllm_gen._adapter import ROUTING_METHOD_TOPK  # noqa: E402
from moe_registry.backends.trtllm_gen.fp4 import DECLARATION  # noqa: E402
from moe_registry.execution.declared import declared_padding  # noqa: E402
from moe_registry.execution.weights import random_weights  # noqa: E402
from moe_registry.formats import NvFp4Tensor, quantize_nvfp4  # noqa: E402

from _factories import make_layer as _make_layer, rel_err, routed_inputs  # noqa: E402


make_layer = functools.partial(_make_layer, quant="nvfp4")  # the shared small layer, NVFP4


# --- Independent index computations (slow loops from the documented semantics) ------------------------

def slow_reorder(m: int) -> list[int]:
    """reorderRowsForGatedActGemm: [r0, .., r(M/2-1), rM/2, ..] -> [r0, rM/2, r1, rM/2+1, ...]."""
    out = []
    for i in range(m // 2):
        out += [i, m // 2 + i]
    return out


def slow_shuffle(m: int, epilogue_tile_m: int) -> list[int]:
    """shuffleMatrixA: inside each block of B rows (32 when epilogue_tile_m % 128 == 0, else 16),
    the rows viewed as [B/8][8]... old row i goes to (i % (B/8)) * 8 + i // (B/8); returns
    ``row_indices[new] = old``."""
    B = 32 if epilogue_tile_m % 128 == 0 else 16
    n = B // 8
    out = [0] * m
    for old in range(m):
        base, i = divmod(old, B)
        out[base * B + (i % n) * 8 + i // n] = old
    return out


def slow_swizzle(scale: torch.Tensor) -> torch.Tensor:
    """128x4 interleave by the offset formula of flashinfer-moe-api.md section 4 item 6."""
    rows, cols = scale.shape
    R, C = -(-rows // 128) * 128, -(-cols // 4) * 4
    out = torch.zeros(R * C, dtype=scale.dtype)
    for r in range(rows):
        for c in range(cols):
            off = ((r // 128) * (C // 4) + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
            out[off] = scale[r, c]
    return out


@pytest.mark.parametrize("m", [32, 128, 256, 384, 1024])
@pytest.mark.parametrize("tile", [128, 64])
def test_shuffle_indices_match_slow_loop(m, tile):
    assert LY.shuffle_matrix_a_row_indices(m, tile).tolist() == slow_shuffle(m, tile)


@pytest.mark.parametrize("m", [2, 128, 256, 768])
def test_reorder_indices_match_slow_loop(m):
    assert LY.reorder_rows_for_gated_act_gemm_indices(m).tolist() == slow_reorder(m)


@pytest.mark.parametrize("m", [128, 256, 512])
def test_composed_permutations(m):
    w = torch.arange(m)
    staged = w[torch.tensor(slow_reorder(m))][torch.tensor(slow_shuffle(m, 128))]  # reorder, then shuffle
    assert torch.equal(w[LY.w3_w1_permute_indices(m)], staged)
    assert torch.equal(w[LY.w3_w1_permute_indices(m, num_elts_per_sf=16)], staged)
    assert torch.equal(w[LY.w3_w1_permute_indices(m, gated=False)], w[torch.tensor(slow_shuffle(m, 128))])
    assert LY.w2_permute_indices(m).tolist() == slow_shuffle(m, 128)


def test_index_preconditions():
    with pytest.raises(ValueError):
        LY.shuffle_matrix_a_row_indices(48, 128)
    with pytest.raises(ValueError):
        LY.shuffle_matrix_sf_a_row_indices(96, 128)
    with pytest.raises(ValueError):
        LY.reorder_rows_for_gated_act_gemm_indices(7)


@pytest.mark.parametrize("m", [128, 256, 384, 1024])
@pytest.mark.parametrize("gated", [True, False])
def test_indices_match_flashinfer(flashinfer, m, gated):
    from flashinfer.fused_moe.core import (
        _maybe_get_cached_w3_w1_permute_indices,
        get_reorder_rows_for_gated_act_gemm_row_indices,
        get_w2_permute_indices_with_cache,
    )
    from flashinfer.utils import get_shuffle_matrix_a_row_indices, get_shuffle_matrix_sf_a_row_indices

    x = torch.zeros(m, 8, dtype=torch.uint8)
    assert torch.equal(LY.shuffle_matrix_a_row_indices(m, 128), get_shuffle_matrix_a_row_indices(x, 128))
    assert torch.equal(LY.shuffle_matrix_a_row_indices(m, 64), get_shuffle_matrix_a_row_indices(x, 64))
    assert torch.equal(LY.shuffle_matrix_sf_a_row_indices(m, 128), get_shuffle_matrix_sf_a_row_indices(x, 128))
    assert torch.equal(LY.reorder_rows_for_gated_act_gemm_indices(m), get_reorder_rows_for_gated_act_gemm_row_indices(x))
    for sf in (None, 16):
        theirs = _maybe_get_cached_w3_w1_permute_indices({}, x, 128, num_elts_per_sf=sf, is_gated_act_gemm=gated)
        assert torch.equal(LY.w3_w1_permute_indices(m, gated=gated, num_elts_per_sf=sf), theirs)
        assert torch.equal(LY.w2_permute_indices(m, num_elts_per_sf=sf),
                           get_w2_permute_indices_with_cache({}, x, 128, num_elts_per_sf=sf))


def test_routing_and_activation_ids_match_flashinfer(flashinfer):
    from flashinfer.fused_moe import ActivationType
    from flashinfer.tllm_enums import RoutingMethodType

    assert ROUTING_METHOD_TOPK == int(RoutingMethodType.TopK)
    declared = {a.value: impl.kernel_value for a, impl in DECLARATION.activations.items()}
    assert declared == {"silu": int(ActivationType.Swiglu), "gelu": int(ActivationType.Geglu),
                        "gelu_tanh": int(ActivationType.Geglu), "relu2_no_mul": int(ActivationType.Relu2),
                        "swigluoai": int(ActivationType.Swiglu),
                        "silu_clamp": int(ActivationType.Swiglu)}  # planning-only: Swiglu with the clamp
    from moe_registry.backends.trtllm_gen import DECLARATIONS

    for decl in DECLARATIONS:  # every kernel of the family: the enum value is the named member's
        for act, impl in decl.activations.items():
            assert impl.kernel_value == int(ActivationType[impl.kernel_name]), (decl.id, act)


# --- The full weight layout ----------------------------------------------------------------------------

# relu2_no_mul at I = 128: GEMM1 rows % 128 is the rule (there is no "multiple of 256" limitation).
@pytest.mark.parametrize("act,I", [("silu", 128), ("relu2_no_mul", 128)])
def test_prepared_layout(act, I):
    layer = make_layer(activation=act, intermediate_size=I)
    w = random_weights(layer, seed=3)
    p = K.prepare_trtllm_fp4_weights(layer, w)
    E, H = 4, 256
    M = 2 * I if act == "silu" else I
    assert p.gemm1_weights.shape == (E, M, H // 2) and p.gemm1_weights.dtype == torch.uint8
    assert p.gemm1_scales.shape == (E, M, H // 16) and p.gemm1_scales.dtype == torch.float8_e4m3fn
    assert p.gemm2_weights.shape == (E, H, I // 2) and p.gemm2_scales.shape == (E, H, I // 16)
    assert p.gated is (act == "silu")
    assert torch.equal(p.w1_gs, w.w13.global_scale) and torch.equal(p.w2_gs, w.w2.global_scale)
    d13, s13 = w.w13.data, w.w13.scale.view(torch.uint8)
    if act == "silu":  # [gate; up] -> [up; gate] first
        d13, s13 = torch.cat([d13[:, I:], d13[:, :I]], 1), torch.cat([s13[:, I:], s13[:, :I]], 1)
    reorder = torch.tensor(slow_reorder(M)) if act == "silu" else torch.arange(M)
    shuffle1, shuffle2 = torch.tensor(slow_shuffle(M, 128)), torch.tensor(slow_shuffle(H, 128))
    for e in range(E):
        assert torch.equal(p.gemm1_weights[e], d13[e][reorder][shuffle1])
        assert torch.equal(p.gemm1_scales[e].view(torch.uint8).reshape(-1), slow_swizzle(s13[e][reorder][shuffle1]))
        assert torch.equal(p.gemm2_weights[e], w.w2.data[e][shuffle2])
        assert torch.equal(p.gemm2_scales[e].view(torch.uint8).reshape(-1),
                           slow_swizzle(w.w2.scale[e].view(torch.uint8)[shuffle2]))


def test_output_scalars_gated_and_not():
    w1, w2 = torch.tensor([2.0, 4.0]), torch.tensor([8.0, 16.0])
    a1, c = torch.tensor(10.0), torch.tensor(0.5)
    o1, g1, o2 = K.output_scalars(w1, w2, a1, c, gated=True)
    assert torch.allclose(o1, torch.tensor([0.5 / 20, 0.5 / 40]))  # c_gs / (w1_gs * a1_gs)
    assert torch.allclose(g1, torch.tensor([1 / 20, 1 / 40]))  # 1 / (w1_gs * a1_gs)
    assert torch.allclose(o2, torch.tensor([1 / 4, 1 / 8]))  # 1 / (c_gs * w2_gs)
    o1n, g1n, o2n = K.output_scalars(w1, w2, a1, c, gated=False)
    assert torch.equal(o1n, torch.tensor([0.5, 0.5]))  # c_gs alone
    assert torch.equal(g1n, g1) and torch.equal(o2n, o2)
    assert all(t.dtype == torch.float32 and t.shape == (2,) for t in (o1, g1, o2, o1n))


# --- The call, against an emulating stub -----------------------------------------------------------------

def _raw(data: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e2m1 * block scale, no global scale: what the tensor core multiplies."""
    return NvFp4Tensor(data, scale, torch.tensor(1.0)).dequantize()


class TrtllmStub:
    """Records the call; computes the kernel's documented math after undoing the layout with the
    test's own slow-loop permutations and swizzle (so a layout bug shows up as a wrong result)."""

    def __init__(self):
        self.calls = []

    def __call__(self, topk, bias, xq, x_sf, g1w, g1s, g1b, g1a, g1beta, g1clamp, g2w, g2s, g2b, out1, gate1, out2,
                 **kw):
        self.calls.append(((topk, bias, xq, x_sf, g1w, g1s, g1b, g1a, g1beta, g1clamp, g2w, g2s, g2b, out1, gate1,
                            out2), kw))
        ids, weights = topk
        E, M, H = g1w.shape[0], g1w.shape[1], g1w.shape[2] * 2
        I = kw["intermediate_size"]
        gated = M == 2 * I
        reorder = torch.tensor(slow_reorder(M)) if gated else torch.arange(M)
        inv1 = torch.argsort(reorder[torch.tensor(slow_shuffle(M, 128))])
        inv2 = torch.argsort(torch.tensor(slow_shuffle(H, 128)))

        def unswizzle(s, rows, cols):
            lin = torch.zeros(rows, cols, dtype=torch.uint8)
            flat = s.view(torch.uint8).reshape(-1)
            for r in range(rows):
                for c in range(cols):
                    lin[r, c] = flat[((r // 128) * (cols // 4) + c // 4) * 512 + (r % 32) * 16
                                     + ((r % 128) // 32) * 4 + c % 4]
            return lin.view(torch.float8_e4m3fn)

        x = _raw(xq, x_sf)
        out = kw["output"]
        acc = torch.zeros(out.shape)
        for e in range(E):
            W1 = _raw(g1w[e], unswizzle(g1s[e], M, H // 16))[inv1]  # back to [up; gate] / plain rows
            W2 = _raw(g2w[e], unswizzle(g2s[e], H, I // 16))[inv2]
            for t in range(x.shape[0]):
                for j in range(ids.shape[1]):
                    if int(ids[t, j]) != e:
                        continue
                    h = x[t] @ W1.T
                    act = kw["activation_type"]
                    if gated:
                        u, g = h[:I], h[I:]
                        g = g * gate1[e]
                        a = (F.silu(g) if act == 3 else F.gelu(g)) * (u * out1[e])
                    else:
                        assert act == 6
                        a = F.relu(h * gate1[e]).square() * out1[e]
                    a = quantize_nvfp4(a.unsqueeze(0), global_scale=1.0).dequantize()[0]
                    acc[t] += weights[t, j] * (a @ W2.T) * out2[e]
        out.copy_(acc.to(out.dtype))
        return [out]


@pytest.fixture
def stub(monkeypatch):
    s = TrtllmStub()
    monkeypatch.setattr(K, "_flashinfer_routed_moe", lambda: s)
    monkeypatch.setattr(K, "_sf_layout_linear", lambda: "layout_linear")
    return s


@pytest.mark.parametrize("act,H,I,pads", [
    ("silu", 256, 128, {}), ("gelu", 256, 64, {}), ("gelu_tanh", 256, 64, {}), ("relu2_no_mul", 256, 256, {}),
    ("silu", 192, 96, {"pad_hidden_to": 256, "pad_intermediate_to": 128}),
])
def test_forward_wiring_matches_reference(stub, act, H, I, pads):
    layer = make_layer(activation=act, hidden_size=H, intermediate_size=I)
    w = random_weights(layer, seed=21)
    x, tw, ids = routed_inputs(layer, T=6, seed=22)
    ad = K.TrtllmFp4Experts._without_runtime_checks(layer, w, **pads)
    out = ad(x, tw, ids.long())
    ref = ReferenceExperts(layer, w)(x, tw, ids)
    assert out.shape == (6, H) and out.dtype == torch.bfloat16 and out.is_contiguous()
    tol = 0.25 if act != "gelu_tanh" else 0.3  # NvFP4 activations (both GEMMs); gelu_tanh runs as erf GELU
    assert rel_err(out, ref) <= tol

    (args, kw), = stub.calls
    (ids_in, w_in), bias, xq, x_sf = args[0], args[1], args[2], args[3]
    Hp, Ip = pads.get("pad_hidden_to", H), pads.get("pad_intermediate_to", I)
    assert ids_in.dtype == torch.int32 and torch.equal(ids_in, ids) and w_in is tw and bias is None
    assert xq.dtype == torch.uint8 and xq.shape == (6, Hp // 2)
    assert x_sf.dtype == torch.float8_e4m3fn and x_sf.shape == (6, Hp // 16)  # linear layout
    assert all(a is None for a in args[6:10]) and args[12] is None  # no biases / alpha / beta / clamp
    assert kw["intermediate_size"] == Ip and kw["num_experts"] == kw["local_num_experts"] == 4
    assert kw["local_expert_offset"] == 0 and kw["top_k"] == 2 and kw["do_finalize"] is True
    assert kw["routing_method_type"] == 5 and kw["hidden_states_scale_layout"] == "layout_linear"
    assert kw["activation_type"] == {"silu": 3, "gelu": 4, "gelu_tanh": 4, "relu2_no_mul": 6}[act]
    assert kw["output"].shape == (6, Hp) and kw["output"].dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 and t.shape == (4,) for t in args[13:16])


def test_static_scales_skip_calibration(stub):
    layer = make_layer()
    w = random_weights(layer, seed=1)
    x, tw, ids = routed_inputs(layer, T=6, seed=2)
    ad = K.TrtllmFp4Experts._without_runtime_checks(layer, w, input_amax=6.0, intermediate_amax=3.0)
    assert ad._calibration_weights is None
    ad(x, tw, ids)
    out1, gate1, out2 = stub.calls[0][0][13:16]
    a1_gs, c_gs = 448 * 6 / 6.0, 448 * 6 / 3.0
    assert torch.allclose(gate1, 1 / (w.w13.global_scale * a1_gs))
    assert torch.allclose(out1, c_gs / (w.w13.global_scale * a1_gs))
    assert torch.allclose(out2, 1 / (c_gs * w.w2.global_scale))


def test_padding_rules():
    """The declaration's pad rules: hidden to 256, intermediate to 64 (gated) or 128 (non-gated)."""
    pad = lambda layer: declared_padding("trtllm-fp4", layer)  # noqa: E731
    assert pad(make_layer(hidden_size=2816, intermediate_size=704)) == (2816, 704)
    assert pad(make_layer(hidden_size=200, intermediate_size=100)) == (256, 128)
    relu2 = make_layer(hidden_size=200, intermediate_size=100, activation="relu2_no_mul")
    assert pad(relu2) == (256, 128)
    assert pad(make_layer(intermediate_size=192, activation="relu2_no_mul")) == (256, 256)
    layer = make_layer(hidden_size=192, intermediate_size=96)
    with pytest.raises(ValueError, match="pad hidden to 256"):
        K.TrtllmFp4Experts._without_runtime_checks(layer, random_weights(layer, seed=0))
    # With the declared padding the same layer builds.
    Hp, Ip = pad(layer)
    K.TrtllmFp4Experts._without_runtime_checks(layer, random_weights(layer, seed=0), pad_hidden_to=Hp,
                                                 pad_intermediate_to=Ip)


# --- Guards and availability --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["dtype", "noncontig", "shape", "ids_dtype", "ids_range"])
def test_forward_guards_raise_before_the_kernel(stub, bad):
    layer = make_layer()
    ad = K.TrtllmFp4Experts._without_runtime_checks(layer, random_weights(layer, seed=0), intermediate_amax=1.0)
    x, tw, ids = routed_inputs(layer, T=6)
    if bad == "dtype":
        x = x.float()
    elif bad == "noncontig":
        x = torch.randn(layer.hidden_size, 6).to(torch.bfloat16).T
    elif bad == "shape":
        tw = tw[:, :1].contiguous()
    elif bad == "ids_dtype":
        ids = ids.to(torch.int16)
    else:
        ids = ids.clone()
        ids[1, 1] = -1
    with pytest.raises(ValueError) as info:
        ad(x, tw, ids)
    assert "\n" not in str(info.value)
    assert stub.calls == []


@pytest.mark.parametrize("kw,match", [
    (dict(quant="fp8"), "does not run fp8"),
    (dict(dtype="fp16"), "takes bf16 hidden states, not fp16"),
    (dict(activation="silu_no_mul"), "does not run activation silu_no_mul"),
    (dict(activation="relu2_no_mul", intermediate_size=64), r"multiple of 128.*\(pad intermediate to 128\)"),
    (dict(apply_router_weight_on_input=True, top_k=1), "applies router weights to expert outputs only"),
    (dict(quant="mxfp4", hidden_size=256, intermediate_size=64), r"multiple of 128.*\(pad intermediate to 128\)"),
])
def test_layer_checks(kw, match):
    """Every layer-level refusal is the declaration's, raised by weight preparation and by the
    adapter before any work, with the backend id first."""
    layer = make_layer(**kw)
    with pytest.raises(ValueError, match=f"^trtllm-fp4: .*{match}"):
        K.prepare_trtllm_fp4_weights(layer, None)
    with pytest.raises(ValueError, match=match):
        K.TrtllmFp4Experts._without_runtime_checks(layer, None)


def test_constructing_on_cpu_raises_runtime_error():
    layer = make_layer()
    with pytest.raises(RuntimeError, match="needs CUDA weights on SM100/SM103/SM107"):
        K.TrtllmFp4Experts(layer, random_weights(layer, seed=0))


def test_trtllm_probe_without_gpu(monkeypatch):
    monkeypatch.setattr(fic, "this_gpu", lambda: fic.DeviceInfo(sm=90, capabilities=((9, 0),)))
    built, detail = fic.trtllm_module_status()
    assert not built and "SM 10.x" in detail


def test_runtime_device_check_is_the_declarations(monkeypatch):
    """On a GPU the declaration does not list, the adapter refuses with a RuntimeError carrying the
    declaration's reason (CUDA itself is faked here; the device is a preset)."""
    from moe_registry.schemas.device import get_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    layer = make_layer()
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(fib, "device_spec_of", lambda device: get_device("h100"))
    with pytest.raises(RuntimeError, match=r"^trtllm-fp4: .*needs SM100/SM103/SM107; h100 \(SM90\) is not"):
        fib.require_runtime(K.BACKEND, cuda, layer, 256, 128)
    monkeypatch.setattr(fib, "device_spec_of", lambda device: get_device("b200"))
    monkeypatch.setattr(fib, "flashinfer_package_root", lambda: "/somewhere")
    assert fib.require_runtime(K.BACKEND, cuda, layer, 256, 128) == 100
