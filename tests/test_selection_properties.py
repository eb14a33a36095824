"""Property tests: random valid layers x every device preset."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from moe_registry import LayerSpec, ParallelConfig, select_backend
from moe_registry.errors import BackendNotEligible, NoEligibleBackend
from moe_registry.registry import default_registry
from moe_registry.schemas.activation import Activation, SiluClampParams, SwigluOAIParams
from moe_registry.schemas.device import PRESETS
from moe_registry.schemas.layer import RoutingMethod
from moe_registry.schemas.quant import QuantKind, QuantScheme
from moe_registry.selection import DeclaredPriority, _resolve

SCHEMES = [QuantScheme(kind=k) for k in QuantKind] + [
    QuantScheme.parse(t) for t in ("int4_w4a16:g32", "int4_w4a16:g64:zp", "int4_w4a16:gchannel",
                                   "int4_w4a16:g128:act_order", "nvfp4:linear", "nvfp4:swizzled_128x4")]


@st.composite
def layers(draw):
    quant = draw(st.sampled_from(SCHEMES))
    unit = max(quant.scale_group_k or 1, 8)
    tp = draw(st.sampled_from([1, 2, 4, 8]))
    ep = draw(st.sampled_from([1, 2, 4, 8]))
    experts = ep * draw(st.integers(1, 64))
    # "Valid" includes loadable: each rank holds whole quantization groups.
    intermediate = tp * unit * draw(st.integers(1, 48))
    activation = draw(st.sampled_from(list(Activation)))
    params = None
    if activation is Activation.SWIGLUOAI:
        params = draw(st.sampled_from([None, SwigluOAIParams(interleaved=True), SwigluOAIParams(alpha=1.0)]))
    elif activation is Activation.SILU_CLAMP:
        params = SiluClampParams(limit=draw(st.sampled_from([7.0, 10.0])))
    return LayerSpec(
        num_experts=experts, top_k=draw(st.integers(1, min(experts, 16))),
        hidden_size=unit * draw(st.integers(1, 96)), intermediate_size=intermediate, activation=activation,
        activation_params=params, quant=quant, dtype=draw(st.sampled_from(["bf16", "fp16", "fp32"])),
        routing=draw(st.sampled_from([None, *RoutingMethod])), bias=draw(st.booleans()),
        apply_router_weight_on_input=draw(st.booleans()), parallel=ParallelConfig(tp=tp, ep=ep))


DEVICES = sorted(PRESETS)
POLICIES = [DeclaredPriority(), DeclaredPriority(exact_activations=True), DeclaredPriority(allow_padding=False)]


@settings(max_examples=300, deadline=None)
@given(layer=layers(), device=st.sampled_from(DEVICES), policy=st.sampled_from(POLICIES),
       force=st.sampled_from([None, *default_registry().ids()]))
def test_selection_properties(layer, device, policy, force):
    try:
        first = select_backend(layer, device, policy=policy, force=force)
    except (NoEligibleBackend, BackendNotEligible) as exc:
        if force is None:
            assert isinstance(exc, NoEligibleBackend)
        assert str(exc) and "\n" not in str(exc)
        assert force != "reference", "the reference runs every valid layer on every device"
        return
    _resolve.cache_clear()
    again = select_backend(layer, device, policy=policy, force=force)
    assert again == first  # deterministic, cache or not
    assert first.backend == (force or first.backend)
    assert first.rejection(first.backend) is None
    assert all(len(r.reasons) >= 1 for r in first.rejections)
    eligible = {c.backend for c in first.eligible}
    assert "reference" in eligible
    assert eligible.isdisjoint({r.backend for r in first.rejections})
    assert eligible | {r.backend for r in first.rejections} == set(default_registry().ids())
    assert first.eligible[0].backend == first.backend
