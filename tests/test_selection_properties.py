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
from moe_registry.environment import Environment
from moe_registry.schemas.selection import ReasonCode
from moe_registry.selection import DeclaredPriority, _resolve, evaluate

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
# Kinds engines run that moe-registry has no weight format for: the reference does not claim them.
NO_FORMAT = {QuantKind.INT8_W8A16, QuantKind.MXFP8_W8A16, QuantKind.MXFP8, QuantKind.MXFP4_FP8}
POLICIES = [DeclaredPriority(), DeclaredPriority(exact_activations=True), DeclaredPriority(allow_padding=False)]


def _eligible(layer, device, policy):
    try:
        return {c.backend for c in select_backend(layer, device, policy=policy).eligible}
    except NoEligibleBackend:
        return set()


@settings(max_examples=300, deadline=None)
@given(layer=layers(), device=st.sampled_from(DEVICES), policy=st.sampled_from(POLICIES),
       force=st.sampled_from([None, *default_registry().ids()]))
def test_selection_properties(layer, device, policy, force):
    registry = default_registry()
    try:
        first = select_backend(layer, device, policy=policy, force=force)
    except NoEligibleBackend as exc:
        assert force is None  # a forced backend raises BackendNotEligible, never this
        assert str(exc) and "\n" not in str(exc)
        assert {r.backend for r in exc.rejections} == set(registry.ids())
        return
    except BackendNotEligible as exc:
        assert force is not None and exc.backend == force
        # the reference runs every valid layer with a weight format on every device
        assert force != "reference" or layer.quant.kind in NO_FORMAT
        # The forced backend's reasons are exactly those an unforced selection gives it.
        try:
            unforced = select_backend(layer, device, policy=policy)
            assert unforced.rejection(force).reasons == exc.reasons
        except NoEligibleBackend as none:
            assert next(r for r in none.rejections if r.backend == force).reasons == exc.reasons
        return
    _resolve.cache_clear()
    again = select_backend(layer, device, policy=policy, force=force)
    assert again == first  # deterministic, cache or not
    if force is not None:
        assert first.backend == force and first.decided_by == "forced"
    eligible = [c.backend for c in first.eligible]
    assert eligible[0] == first.backend
    assert ("reference" in eligible) == (layer.quant.kind not in NO_FORMAT)
    # The chosen backend passes every rule it declares, evaluated on its own.
    target = PRESETS[device]
    env = Environment.planning_target()
    assert evaluate(registry.get(first.backend), layer.shape_key(), target, env, policy,
                    registry.declarations()).reasons == []
    # Every rejected backend fails at least one of its rules, and no backend is both.
    for rejection in first.rejections:
        assert evaluate(registry.get(rejection.backend), layer.shape_key(), target, env, policy,
                        registry.declarations()).reasons == list(rejection.reasons)
    assert set(eligible).isdisjoint({r.backend for r in first.rejections})


@settings(max_examples=150, deadline=None)
@given(layer=layers(), device=st.sampled_from(DEVICES))
def test_padding_and_approximations_only_ever_add_backends(layer, device):
    default = _eligible(layer, device, DeclaredPriority())
    assert _eligible(layer, device, DeclaredPriority(allow_padding=False)) <= default
    assert _eligible(layer, device, DeclaredPriority(exact_activations=True)) <= default


@settings(max_examples=150, deadline=None)
@given(layer=layers(), device=st.sampled_from(DEVICES))
def test_every_eligible_backend_can_be_forced(layer, device):
    for backend in _eligible(layer, device, DeclaredPriority()):
        assert select_backend(layer, device, force=backend).backend == backend


@settings(max_examples=150, deadline=None)
@given(layer=layers(), device=st.sampled_from(DEVICES), top_k=st.integers(1, 4),
       routing=st.sampled_from([None, *RoutingMethod]))
def test_a_device_rejection_does_not_depend_on_unrelated_fields(layer, device, top_k, routing):
    """A backend rejected because of the device stays rejected for the device when only the
    routing and top-k change (the device rule reads neither)."""
    changed = layer.replace(top_k=min(top_k, layer.num_experts), routing=routing)

    def device_rejected(spec):
        try:
            selection = select_backend(spec, device)
            rejections = selection.rejections
        except NoEligibleBackend as exc:
            rejections = exc.rejections
        return {r.backend for r in rejections if ReasonCode.DEVICE_UNSUPPORTED in r.codes()}

    assert device_rejected(layer) == device_rejected(changed)
