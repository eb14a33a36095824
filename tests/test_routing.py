"""Every routing method against small hand-computed cases."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from moe_registry.execution.routing import DEFAULT_ROUTING, route
from moe_registry.schemas.layer import RoutingMethod

from _factories import make_layer

LOGITS = torch.tensor([[1.0, 3.0, 0.0, 2.0],
                       [-1.0, 0.5, 4.0, 0.0]])
TOP2 = [[1, 3], [2, 1]]  # the two largest logits per row, in order


# The shared small layer, 4 experts of width 8 (routing never looks at H or I).
layer = functools.partial(make_layer, hidden_size=8, intermediate_size=8)


def sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def expect(weights, ids, want_w, want_ids):
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert weights.is_contiguous() and ids.is_contiguous()
    # Order within a row is not part of the contract: compare sorted by id.
    order = ids.long().argsort(dim=-1)
    got_ids, got_w = ids.gather(1, order), weights.gather(1, order)
    want_ids_t = torch.tensor(want_ids)
    want_order = want_ids_t.argsort(dim=-1)
    assert got_ids.tolist() == want_ids_t.gather(1, want_order).tolist()
    want = torch.tensor(want_w, dtype=torch.float64).gather(1, want_order)
    torch.testing.assert_close(got_w.double(), want, rtol=1e-6, atol=1e-7)


def softmax_row(row):
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def test_softmax_topk_no_renorm():
    probs = [softmax_row(r) for r in LOGITS.tolist()]
    w, i = route(LOGITS, layer(), method="softmax_topk")
    expect(w, i, [[probs[0][1], probs[0][3]], [probs[1][2], probs[1][1]]], TOP2)
    assert w.sum(dim=-1).lt(0.99).all()  # not renormalised


@pytest.mark.parametrize("method", ["topk_softmax", "softmax_topk_renorm"])
def test_renormalised_softmax_methods(method):
    # Mathematically equal: exp(l_i) / sum over the chosen k of exp(l_j).
    row0, row1 = softmax_row([3.0, 2.0]), softmax_row([4.0, 0.5])
    w, i = route(LOGITS, layer(), method=method)
    expect(w, i, [row0, row1], TOP2)


def test_llama4_top1_sigmoid_of_logit():
    w, i = route(LOGITS, layer(k=1), method="llama4")
    expect(w, i, [[sig(3.0)], [sig(4.0)]], [[1], [2]])
    w, i = route(LOGITS, layer(k=2), method="llama4")  # top-k generalises; no renorm
    expect(w, i, [[sig(3.0), sig(2.0)], [sig(4.0), sig(0.5)]], TOP2)


def test_sigmoid_and_sigmoid_renorm():
    w, i = route(LOGITS, layer(), method="sigmoid")
    expect(w, i, [[sig(3.0), sig(2.0)], [sig(4.0), sig(0.5)]], TOP2)
    w, i = route(LOGITS, layer(), method="sigmoid_renorm")
    s0, s1 = sig(3.0) + sig(2.0), sig(4.0) + sig(0.5)
    expect(w, i, [[sig(3.0) / s0, sig(2.0) / s0], [sig(4.0) / s1, sig(0.5) / s1]], TOP2)


def test_minimax2_bias_selects_but_does_not_weigh():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    bias = torch.tensor([5.0, 0.0, 0.0, 0.0])  # pulls expert 0 into the top-2
    w, i = route(logits, layer(), method="minimax2", correction_bias=bias)
    s = sig(0.0) + sig(3.0)
    expect(w, i, [[sig(0.0) / s, sig(3.0) / s]], [[0, 3]])
    w, i = route(logits, layer(), method="minimax2")  # no bias: plain sigmoid top-2, renormalised
    s = sig(2.0) + sig(3.0)
    expect(w, i, [[sig(2.0) / s, sig(3.0) / s]], [[2, 3]])


# DeepSeek-V3 crafted case: 8 experts in 4 groups of 2. Sigmoid scores (via logit = log(p/(1-p))):
#   group 0: [0.90, 0.01] -> top-2 sum 0.91 (holds the single best expert)
#   group 1: [0.60, 0.55] -> 1.15
#   group 2: [0.50, 0.50] -> 1.00
#   group 3: [0.10, 0.10] -> 0.20
# topk_group=2 keeps groups 1 and 2, so the best expert (0) is NOT chosen: top-2 = experts 2, 3.
DS_SCORES = [0.90, 0.01, 0.60, 0.55, 0.50, 0.50, 0.10, 0.10]
DS_LOGITS = torch.tensor([[math.log(p / (1 - p)) for p in DS_SCORES]], dtype=torch.float32)


def test_deepseek_v3_group_limit_excludes_the_best_expert():
    w, i = route(DS_LOGITS, layer(E=8), method="deepseek_v3", n_group=4, topk_group=2, routed_scaling_factor=2.5)
    expect(w, i, [[0.60 / 1.15 * 2.5, 0.55 / 1.15 * 2.5]], [[2, 3]])


def test_deepseek_v3_without_groups_takes_the_global_top_k():
    w, i = route(DS_LOGITS, layer(E=8), method="deepseek_v3")  # n_group = topk_group = 1
    expect(w, i, [[0.90 / 1.50, 0.60 / 1.50]], [[0, 2]])
    w, i = route(DS_LOGITS, layer(E=8), method="deepseek_v3", renormalize=False, routed_scaling_factor=2.0)
    expect(w, i, [[0.90 * 2, 0.60 * 2]], [[0, 2]])


def test_deepseek_v3_bias_moves_groups_and_experts_not_weights():
    # +0.6 on experts 6 and 7 (scores 0.10) makes them 0.70 each: group 3 sums 1.40 and ranks
    # first, group 1 (1.15) second; inside those, 6 and 7 (0.70) beat 2 (0.60) and 3 (0.55).
    bias = torch.zeros(8)
    bias[6] = bias[7] = 0.6
    w, i = route(DS_LOGITS, layer(E=8), method="deepseek_v3", n_group=4, topk_group=2, correction_bias=bias)
    expect(w, i, [[0.5, 0.5]], [[6, 7]])  # weights from the unbiased 0.10 / 0.10, renormalised


def test_deepseek_v3_masks_dropped_groups_even_below_zero():
    # Every kept expert's biased score is negative: a 0.0 fill (transformers) would pick from a
    # dropped group; -inf keeps the choice inside the kept groups.
    logits = torch.zeros(1, 8)  # all scores 0.5
    bias = torch.tensor([-1.0, -1.0, -2.0, -2.0, -3.0, -3.0, -3.0, -3.0])
    w, i = route(logits, layer(E=8), method="deepseek_v3", n_group=4, topk_group=1, correction_bias=bias)
    expect(w, i, [[0.5, 0.5]], [[0, 1]])


def test_default_method_and_layer_routing():
    assert DEFAULT_ROUTING is RoutingMethod.SOFTMAX_TOPK_RENORM
    a = route(LOGITS, layer())
    b = route(LOGITS, layer(), method="softmax_topk_renorm")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = route(LOGITS, layer(routing="sigmoid"))
    expect(*c, [[sig(3.0), sig(2.0)], [sig(4.0), sig(0.5)]], TOP2)


def test_custom_routing():
    def fixed(logits, k):
        T = logits.shape[0]
        return torch.full((T, k), 0.5, dtype=torch.float64), torch.arange(k).repeat(T, 1)

    w, i = route(LOGITS, layer(), method="custom", custom=fixed)
    expect(w, i, [[0.5, 0.5], [0.5, 0.5]], [[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="custom=callable"):
        route(LOGITS, layer(), method="custom")
    with pytest.raises(ValueError, match="expected shape"):
        route(LOGITS, layer(), method="custom", custom=lambda lg, k: (torch.ones(2, 3), torch.zeros(2, 3)))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        route(LOGITS, layer(), method="custom", custom=lambda lg, k: (torch.ones(2, 2), torch.full((2, 2), 4)))


@pytest.mark.parametrize("method", [m for m in RoutingMethod if m is not RoutingMethod.CUSTOM])
def test_every_method_shapes_range_and_empty_batch(method):
    spec = layer(E=16, k=4)
    logits = torch.randn(7, 16, generator=torch.Generator().manual_seed(0)).bfloat16()
    w, i = route(logits, spec, method=method)
    assert w.shape == i.shape == (7, 4) and w.dtype == torch.float32 and i.dtype == torch.int32
    assert int(i.min()) >= 0 and int(i.max()) < 16
    assert all(len(set(row)) == 4 for row in i.tolist())  # routing never repeats an expert
    w0, i0 = route(logits[:0], spec, method=method)
    assert w0.shape == i0.shape == (0, 4)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(method="softmax_topk", correction_bias=torch.zeros(4)), "correction_bias"),
    (dict(method="deepseek_v3", correction_bias=torch.zeros(3)), "correction_bias: expected shape [4]"),
    (dict(method="softmax_topk_renorm", routed_scaling_factor=2.5), "routed_scaling_factor"),
    (dict(method="sigmoid", n_group=2), "n_group"),
    (dict(method="softmax_topk", renormalize=True), "use softmax_topk_renorm"),
    (dict(method="sigmoid_renorm", renormalize=False), "use sigmoid"),
    (dict(method="topk_softmax", renormalize=False), "always renormalises"),
    (dict(method="deepseek_v3", n_group=3), "must divide"),
    (dict(method="deepseek_v3", n_group=2, topk_group=3), "topk_group=3"),
    (dict(method="deepseek_v3", n_group=4, topk_group=1), "need >= 2 experts per group"),
    (dict(method="softmax_topk", custom=lambda lg, k: None), "custom= is only used"),
    (dict(method="no_such_method"), "no_such_method"),
])
def test_refused_parameters(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        route(LOGITS, layer(), **kwargs)
    assert fragment in str(info.value)


def test_deepseek_group_capacity_and_logit_shape():
    with pytest.raises(ValueError, match="cannot hold top_k"):
        route(torch.zeros(1, 8), layer(E=8, k=3), method="deepseek_v3", n_group=4, topk_group=1)
    with pytest.raises(ValueError, match=r"router_logits: expected shape \[T, 4\]"):
        route(torch.zeros(2, 5), layer())
