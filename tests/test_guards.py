"""Guards refuse every mismatched tensor with one ValueError line that names it."""

from __future__ import annotations

import pytest
import torch

from moe_registry.backends.reference.kernel import ReferenceExperts
from moe_registry.execution.guards import check_forward_inputs, check_weights
from moe_registry.execution.routing import route
from moe_registry.execution.weights import ExpertWeights, random_weights
from moe_registry.schemas.layer import LayerSpec, ParallelConfig

LAYER = LayerSpec(name="layers.3.mlp", num_experts=8, top_k=2, hidden_size=16, intermediate_size=32, bias=True)
T = 5


def good_inputs():
    x = torch.randn(T, 16, dtype=torch.bfloat16)
    tw = torch.rand(T, 2)
    ti = torch.randint(0, 8, (T, 2), dtype=torch.int32)
    return x, tw, ti


def refuses(name: str, fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message.startswith(name), message  # the message leads with the tensor's name
    assert "\n" not in message and "expected" in message and "got" in message
    return message


def test_good_inputs_pass():
    check_forward_inputs(LAYER, *good_inputs())
    check_forward_inputs(LAYER, *good_inputs()[:2], good_inputs()[2].long())
    check_forward_inputs(LAYER, torch.empty(0, 16, dtype=torch.bfloat16), torch.empty(0, 2),
                         torch.empty(0, 2, dtype=torch.int32))


def _bad_cases():
    x, tw, ti = good_inputs()
    return {
        "hidden_wrong_H": ("hidden_states", (torch.randn(T, 17, dtype=torch.bfloat16), tw, ti), {}, "[5, 16]"),
        "hidden_1d": ("hidden_states", (x.reshape(-1), tw, ti), {}, "2-D"),
        "hidden_dtype": ("hidden_states", (x.float(), tw, ti), {}, "torch.bfloat16"),
        "hidden_dtype_override": ("hidden_states", (x, tw, ti), {"dtype": torch.float16}, "torch.float16"),
        "hidden_noncontig": ("hidden_states", (torch.randn(16, T, dtype=torch.bfloat16).t(), tw, ti), {},
                             "contiguous"),
        "hidden_device": ("hidden_states", (x.to("meta"), tw, ti), {"device": "cpu"}, "device cpu"),
        "hidden_not_tensor": ("hidden_states", (x.tolist(), tw, ti), {}, "list"),
        "weights_dtype": ("topk_weights", (x, tw.bfloat16(), ti), {}, "torch.float32"),
        "weights_rows": ("topk_weights", (x, tw[:-1], ti), {}, "5 rows"),
        "weights_k": ("topk_weights", (x, torch.rand(T, 3), ti), {}, "2 columns (layer top_k)"),
        "weights_noncontig": ("topk_weights", (x, torch.rand(2, T).t(), ti), {}, "contiguous"),
        "weights_device": ("topk_weights", (x, tw.to("meta"), ti), {}, "device cpu"),
        "ids_dtype": ("topk_ids", (x, tw, ti.float()), {}, "torch.int32 or torch.int64"),
        "ids_rows": ("topk_ids", (x, tw, ti[:2]), {}, "5 rows"),
        "ids_k": ("topk_ids", (x, tw, ti[:, :1].contiguous()), {}, "2 columns"),
        "ids_noncontig": ("topk_ids", (x, tw, torch.zeros(2, T, dtype=torch.int32).t()), {}, "contiguous"),
        "ids_high": ("topk_ids", (x, tw, torch.full((T, 2), 8, dtype=torch.int32)), {}, "[0, 8)"),
        "ids_negative": ("topk_ids", (x, tw, torch.full((T, 2), -1, dtype=torch.int64)), {}, "min -1"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_forward_inputs_refused(case):
    name, args, kwargs, fragment = _bad_cases()[case]
    message = refuses(name, check_forward_inputs, LAYER, *args, **kwargs)
    assert fragment in message and "layers.3.mlp" in message


def test_id_range_check_is_skippable_and_uses_local_experts():
    x, tw, _ = good_inputs()
    high = torch.full((T, 2), 8, dtype=torch.int32)
    check_forward_inputs(LAYER, x, tw, high, check_id_range=False)
    ep = LAYER.model_copy(update={"parallel": ParallelConfig(ep=2)})  # 4 local experts
    refuses("topk_ids", check_forward_inputs, ep, x, tw, torch.full((T, 2), 4, dtype=torch.int32))


def test_reference_forward_validates():
    w = random_weights(LAYER)
    experts = ReferenceExperts(LAYER, w)
    x, tw, _ = good_inputs()
    refuses("topk_ids", experts, x, tw, torch.full((T, 2), 9, dtype=torch.int32))
    refuses("hidden_states", experts, x.float(), tw, torch.zeros(T, 2, dtype=torch.int32))


def _bad_weights():
    w = random_weights(LAYER)
    return {
        "w13_shape": ("w13", ExpertWeights(w.w13[:, :16], w.w2, w.w13_bias, w.w2_bias), "[8, 64, 16]"),
        "w2_shape": ("w2", ExpertWeights(w.w13, w.w2.transpose(1, 2), w.w13_bias, w.w2_bias), "[8, 16, 32]"),
        "w2_dtype": ("w2", ExpertWeights(w.w13, w.w2.half(), w.w13_bias, w.w2_bias), "dtype of w13"),
        "w13_int": ("w13", ExpertWeights(w.w13.to(torch.int8), w.w2, w.w13_bias, w.w2_bias), "dtype"),
        "w13_device": ("w13", ExpertWeights(w.w13.to("meta"), w.w2, w.w13_bias, w.w2_bias), "device cpu"),
        "w13_not_tensor": ("w13", ExpertWeights(object(), w.w2, w.w13_bias, w.w2_bias), "plain tensor"),
        "bias_missing": ("w2_bias", ExpertWeights(w.w13, w.w2, w.w13_bias, None), "bias tensor"),
        "bias_shape": ("w13_bias", ExpertWeights(w.w13, w.w2, w.w13_bias[:, :32], w.w2_bias), "[8, 64]"),
    }


@pytest.mark.parametrize("case", list(_bad_weights()))
def test_weights_refused(case):
    name, weights, fragment = _bad_weights()[case]
    assert fragment in refuses(name, check_weights, LAYER, weights)


def test_weights_checks_follow_the_layer():
    w = random_weights(LAYER)
    check_weights(LAYER, w)
    check_weights(LAYER, w, dtype=torch.bfloat16, device="cpu")
    refuses("w13", check_weights, LAYER, w, dtype=torch.float16)
    nobias = LAYER.model_copy(update={"bias": False})
    refuses("w13_bias", check_weights, nobias, w)
    # Global shapes handed to an EP2 rank: the guard wants the local expert count.
    ep = LAYER.model_copy(update={"parallel": ParallelConfig(ep=2)})
    assert "[4, 64, 16]" in refuses("w13", check_weights, ep, w)
    refuses("weights", check_weights, LAYER, (w.w13, w.w2))


def test_quantized_layer_needs_quantized_weights():
    layer = LAYER.model_copy(update={"quant": LAYER.quant.parse("nvfp4"), "bias": False})
    w = random_weights(LAYER.model_copy(update={"bias": False}))
    assert "NvFp4Tensor" in refuses("w13", check_weights, layer, w)


def test_int4_group_size_must_match_the_layer():
    pytest.importorskip("moe_registry.formats")
    base = LayerSpec(num_experts=2, top_k=1, hidden_size=128, intermediate_size=128, quant="int4_w4a16:g32")
    w = random_weights(base)
    check_weights(base, w)
    g64 = base.model_copy(update={"quant": base.quant.parse("int4_w4a16:g64")})
    assert "int4 group size 64" in refuses("w13", check_weights, g64, w)
    zp = base.model_copy(update={"quant": base.quant.parse("int4_w4a16:g32:zp")})
    assert "zero points present" in refuses("w13", check_weights, zp, w)


@pytest.mark.parametrize("write", ["numpy", "data", "inplace"])
def test_range_check_cannot_be_fooled_by_writes_that_skip_the_version_counter(write):
    # Writes through .numpy() / .data do not bump the version counter (issue 13): the check reads
    # the ids on every call instead of trusting a mark.
    layer = LayerSpec(num_experts=8, top_k=2, hidden_size=16, intermediate_size=16)
    weights, ids = route(torch.randn(4, 8), layer)
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    check_forward_inputs(layer, x, weights, ids)
    if write == "numpy":
        ids.numpy()[0, 0] = 8
    elif write == "data":
        ids.data[1, 1] = -1
    else:
        ids[2, 0] = 9
    with pytest.raises(ValueError, match=r"topk_ids.*\[0, 8\)"):
        check_forward_inputs(layer, x, weights, ids)
