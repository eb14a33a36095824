"""The declaration schema's own rules (schemas/capability.py), with hand-computed expectations:
device and dimension tests at their edges, what each rule says of itself (``describe``), the
defaults a declaration gets for what it leaves out, and the validators that refuse an inconsistent
declaration. Selection's use of them is in test_selection_rules.py.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, Condition, DeviceRule, DimTest, DTypeRule, FeatureSupport, KnownLimitation,
    PriorityOverride, QuantSupport, RoutingLimit, RoutingSupport, ShapeRule, dimension_value,
)
from moe_registry.schemas.device import DeviceSpec, get_device
from moe_registry.schemas.layer import LayerSpec, ParallelConfig, RoutingMethod
from moe_registry.schemas.quant import QuantFamily, QuantKind

SRC = "test declaration"
BASE = LayerSpec(num_experts=8, top_k=2, hidden_size=256, intermediate_size=256, activation="silu",
                 routing="softmax_topk_renorm")
NO_SM = DeviceSpec(name="nvidia-unknown", vendor="nvidia")  # an NVIDIA device whose SM is not known
AMD = DeviceSpec(name="mi300", vendor="amd")


# --- DeviceRule -------------------------------------------------------------------------------

@pytest.mark.parametrize("rule,device,matches", [
    (DeviceRule(min_sm=90, source=SRC), "sm90", True),
    (DeviceRule(min_sm=90, source=SRC), "sm89", False),
    (DeviceRule(max_sm=90, source=SRC), "sm90", True),
    (DeviceRule(max_sm=90, source=SRC), "sm100", False),
    (DeviceRule(max_sm=90, source=SRC), "sm75", True),
    (DeviceRule(sm=(90,), source=SRC), "sm90", True),
    (DeviceRule(sm=(90,), source=SRC), "sm89", False),
    (DeviceRule(sm=(90,), min_sm=100, source=SRC), "sm90", False),  # every given bound must hold
    (DeviceRule(source=SRC), "sm75", True),  # no bound: any NVIDIA GPU
    (DeviceRule(source=SRC), "cpu", False),
    (DeviceRule(vendor="amd", source=SRC), "h100", False),
])
def test_device_rule_matches(rule, device, matches):
    assert rule.matches(get_device(device)) is matches


def test_a_device_without_an_sm_matches_only_rules_without_sm_bounds():
    assert DeviceRule(source=SRC).matches(NO_SM)
    for bounded in (DeviceRule(sm=(90,), source=SRC), DeviceRule(min_sm=75, source=SRC),
                    DeviceRule(max_sm=120, source=SRC)):
        assert not bounded.matches(NO_SM)
    assert DeviceRule(vendor="amd", source=SRC).matches(AMD)
    assert not DeviceRule(vendor="amd", min_sm=90, source=SRC).matches(AMD)
    assert not DeviceRule(vendor="cpu", max_sm=90, source=SRC).matches(get_device("cpu"))
    assert DeviceRule(vendor="any", min_sm=100, source=SRC).matches(get_device("sm75"))  # "any" ignores bounds


@pytest.mark.parametrize("rule,text", [
    (DeviceRule(vendor="any", source=SRC), "any device"),
    (DeviceRule(vendor="cpu", source=SRC), "CPU"),
    (DeviceRule(vendor="amd", source=SRC), "AMD"),
    (DeviceRule(sm=(100, 103), source=SRC), "SM100/SM103"),
    (DeviceRule(min_sm=90, max_sm=100, source=SRC), "SM90-SM100"),
    (DeviceRule(min_sm=90, source=SRC), "SM90+"),
    (DeviceRule(max_sm=89, source=SRC), "up to SM89"),
    (DeviceRule(source=SRC), "any NVIDIA GPU"),
])
def test_device_rule_describe(rule, text):
    assert rule.describe() == text


# --- DimTest and Condition --------------------------------------------------------------------

@pytest.mark.parametrize("test,value,matches", [
    (DimTest(dimension="hidden", not_multiple_of=128), 384, False),
    (DimTest(dimension="hidden", not_multiple_of=128), 320, True),
    (DimTest(dimension="hidden", multiple_of=1), 321, True),
    (DimTest(dimension="hidden"), 321, True),
    (DimTest(dimension="hidden", min=256, max=256), 256, True),
    (DimTest(dimension="hidden", min=256, max=256), 257, False),
    (DimTest(dimension="hidden", min=256, max=256), 255, False),
])
def test_dim_test_matches(test, value, matches):
    assert test.matches(BASE.replace(hidden_size=value)) is matches


def test_dim_tests_judge_the_per_rank_value_and_the_given_sizes():
    layer = BASE.replace(num_experts=64, top_k=4, intermediate_size=1024, parallel=ParallelConfig(tp=2, ep=4))
    assert dimension_value(layer, "experts") == 16  # 64 experts over EP4
    assert dimension_value(layer, "intermediate") == 512  # 1024 over TP2
    assert dimension_value(layer, "hidden") == 256
    assert dimension_value(layer, "top_k") == 4
    assert dimension_value(layer, "intermediate", {"intermediate": 640}) == 640  # padded size wins
    assert dimension_value(layer, "experts", {"intermediate": 640}) == 16  # not padded: the layer's
    assert DimTest(dimension="experts", max=16).matches(layer)
    assert not DimTest(dimension="experts", max=15).matches(layer)
    assert not DimTest(dimension="intermediate", multiple_of=256).matches(layer, {"intermediate": 640})


def test_multiples_must_be_positive():
    for bad in (0, -128):
        with pytest.raises(ValidationError):
            DimTest(dimension="hidden", multiple_of=bad)
        with pytest.raises(ValidationError):
            DimTest(dimension="hidden", not_multiple_of=bad)
        with pytest.raises(ValidationError):
            ShapeRule(dimension="hidden", multiple_of=bad, source=SRC)
        with pytest.raises(ValidationError):
            RoutingLimit(max_top_k=bad, source=SRC)
        with pytest.raises(ValidationError):
            RoutingLimit(max_experts=bad, source=SRC)
    assert RoutingLimit(max_top_k=1, max_experts=1, source=SRC).failures(BASE.replace(num_experts=1, top_k=1)) == []


@pytest.mark.parametrize("test,text", [
    (DimTest(dimension="intermediate", multiple_of=256), "intermediate % 256 == 0"),
    (DimTest(dimension="hidden", not_multiple_of=128), "hidden % 128 != 0"),
    (DimTest(dimension="experts", min=2, max=64), "experts >= 2 and experts <= 64"),
    (DimTest(dimension="top_k", multiple_of=2, not_multiple_of=4, min=1, max=8),
     "top_k % 2 == 0 and top_k % 4 != 0 and top_k >= 1 and top_k <= 8"),
])
def test_dim_test_describe(test, text):
    assert test.describe() == text


GELU = BASE.replace(activation="gelu")
RELU2 = BASE.replace(activation="relu2_no_mul")


@pytest.mark.parametrize("condition,layer,matches", [
    (Condition(), BASE, True),
    (Condition(activations=(Activation.SILU, Activation.GELU)), GELU, True),
    (Condition(activations=(Activation.SILU,)), GELU, False),
    (Condition(gated=True), BASE, True),
    (Condition(gated=True), RELU2, False),
    (Condition(gated=False), RELU2, True),
    (Condition(gated=False), BASE, False),
    (Condition(quant=(QuantKind.NVFP4,)), BASE.replace(quant="nvfp4"), True),
    (Condition(quant=(QuantKind.NVFP4,)), BASE, False),
    (Condition(group_sizes=(128,)), BASE.replace(quant="int4_w4a16:g128"), True),
    (Condition(group_sizes=(128,)), BASE.replace(quant="int4_w4a16:g64"), False),
    (Condition(apply_router_weight_on_input=True), BASE.replace(apply_router_weight_on_input=True), True),
    (Condition(apply_router_weight_on_input=True), BASE, False),
    (Condition(apply_router_weight_on_input=False), BASE, True),
    (Condition(apply_router_weight_on_input=False), BASE.replace(apply_router_weight_on_input=True), False),
    (Condition(dims=(DimTest(dimension="hidden", max=256),)), BASE, True),
    (Condition(dims=(DimTest(dimension="hidden", max=256), DimTest(dimension="top_k", min=3))), BASE, False),
    (Condition(gated=True, activations=(Activation.GELU,)), BASE, False),  # every field must match
    (Condition(expert_parallel=True), BASE.replace(parallel={"ep": 2}), True),
    (Condition(expert_parallel=True), BASE.replace(parallel={"tp": 2}), False),
    (Condition(expert_parallel=False), BASE.replace(parallel={"tp": 2}), True),
    (Condition(expert_parallel=False), BASE.replace(parallel={"ep": 2}), False),
    (Condition(expert_parallel=False, gated=False), BASE, False),  # ep matches, gated does not
])
def test_condition_matches(condition, layer, matches):
    assert condition.matches(layer) is matches


def test_condition_describe():
    assert Condition().describe() == "always"
    assert Condition(gated=False).describe() == "non-gated"
    assert Condition(apply_router_weight_on_input=False).describe() == "router weight on output"
    full = Condition(activations=(Activation.SILU, Activation.GELU), gated=True, quant=(QuantKind.NVFP4,),
                     group_sizes=(64, 128), apply_router_weight_on_input=True, expert_parallel=True,
                     dims=(DimTest(dimension="hidden", min=128),))
    assert full.describe() == ("activation in {silu, gelu} and gated and quant in {nvfp4} and group size in {64, 128}"
                               " and router weight on input and expert parallel and hidden >= 128")
    assert Condition(expert_parallel=False).describe() == "no expert parallelism"


# --- Defaults a declaration gets for what it leaves out ---------------------------------------

def test_defaults_are_the_conservative_ones():
    f = FeatureSupport(source=SRC)
    assert (f.bias, f.apply_router_weight_on_input, f.swigluoai_params, f.cuda_graphs) == (False, False, False, False)
    assert (f.tensor_parallel, f.expert_parallel) == (True, True)
    q = QuantSupport(kind=QuantKind.BF16, source=SRC)
    assert (q.group_sizes, q.zero_point, q.act_order, q.activation_scale_layout, q.devices, q.dtypes) == (
        None, False, False, None, None, None)
    assert (q.dequantized_at_load, q.dequantized_bits, q.adapter_implemented, q.note) == (False, 16, True, "")
    r = RoutingSupport(source=SRC)
    assert (r.in_kernel, r.precomputed, r.limits) == ((), True, ())
    s = ShapeRule(dimension="hidden", multiple_of=128, source=SRC)
    assert (s.pad, s.min, s.max, s.when) == (False, None, None, Condition())
    a = ActivationImpl(kernel_name="silu", source=SRC)
    assert (a.fidelity, a.max_abs_error, a.kernel_value, a.note) == ("exact", None, None, "")
    d = DeviceRule(source=SRC)
    assert (d.vendor, d.sm, d.min_sm, d.max_sm, d.verified_on) == ("nvidia", None, None, None, ())
    c = Condition()
    assert (c.activations, c.gated, c.quant, c.group_sizes, c.apply_router_weight_on_input, c.dims) == (
        None, None, None, None, None, ())
    lim = RoutingLimit(source=SRC)
    assert (lim.methods, lim.max_top_k, lim.max_experts) == ((), None, None)
    assert KnownLimitation(when=Condition(), reason="r", source=SRC).hint == ""


def test_a_fact_needs_a_source():
    with pytest.raises(ValidationError):
        DeviceRule(source="")
    with pytest.raises(ValidationError):
        DTypeRule(dtype="bf16", devices=(), source=SRC)
    with pytest.raises(ValidationError):
        PriorityOverride(family=QuantFamily.INT4, devices=(), priority=1, source=SRC)
    with pytest.raises(ValidationError):
        ActivationImpl(kernel_name="x", max_abs_error=-1e-3, source=SRC)
    assert ActivationImpl(kernel_name="x", max_abs_error=0.0, source=SRC).max_abs_error == 0.0


def test_an_approximate_activation_must_say_what_runs_instead():
    with pytest.raises(ValidationError, match="note"):
        ActivationImpl(kernel_name="geglu", fidelity="approximate", source=SRC)
    assert ActivationImpl(kernel_name="geglu", fidelity="approximate", note="erf", source=SRC).note == "erf"
    assert ActivationImpl(kernel_name="gelu", fidelity="exact", source=SRC).note == ""


def test_only_hidden_or_intermediate_multiples_pad():
    with pytest.raises(ValidationError, match="padded"):
        ShapeRule(dimension="hidden", min=64, pad=True, source=SRC)  # nothing to pad to
    with pytest.raises(ValidationError, match="padded"):
        ShapeRule(dimension="experts", multiple_of=8, pad=True, source=SRC)
    with pytest.raises(ValidationError, match="padded"):
        ShapeRule(dimension="top_k", multiple_of=2, pad=True, source=SRC)
    for dim in ("hidden", "intermediate"):
        assert ShapeRule(dimension=dim, multiple_of=128, pad=True, source=SRC).pad
    assert not ShapeRule(dimension="experts", max=256, source=SRC).pad  # unpadded rules need no multiple


# --- Routing bounds ---------------------------------------------------------------------------

def test_routing_limit_failures_at_their_edges():
    lim = RoutingLimit(max_top_k=8, max_experts=256, source=SRC)
    assert lim.failures(BASE.replace(num_experts=256, top_k=8)) == []
    assert lim.failures(BASE.replace(num_experts=257, top_k=8)) == [("experts", "<= 256", "257")]
    assert lim.failures(BASE.replace(num_experts=256, top_k=9)) == [("top_k", "<= 8", "9")]
    assert lim.failures(BASE.replace(num_experts=300, top_k=10)) == [("top_k", "<= 8", "10"), ("experts", "<= 256", "300")]
    # The routing kernel indexes every expert: EP does not lower the count it sees.
    assert lim.failures(BASE.replace(num_experts=512, top_k=8, parallel=ParallelConfig(ep=4))) == [
        ("experts", "<= 256", "512")]
    assert RoutingLimit(source=SRC).failures(BASE.replace(num_experts=4096, top_k=64)) == []


def test_routing_limit_describe():
    assert RoutingLimit(max_top_k=8, max_experts=256, source=SRC).describe() == "top-k <= 8 and experts <= 256"
    assert RoutingLimit(max_top_k=10, source=SRC).describe() == "top-k <= 10"
    assert RoutingLimit(max_experts=512, source=SRC).describe() == "experts <= 512"
    assert RoutingLimit(source=SRC).describe() == "no limit"


DS, L4 = RoutingMethod.DEEPSEEK_V3, RoutingMethod.LLAMA4


def test_routing_support_finds_the_limit_of_each_path():
    pre = RoutingLimit(max_top_k=10, source=SRC)
    ds = RoutingLimit(methods=(DS,), max_experts=384, source=SRC)
    r = RoutingSupport(in_kernel=(DS, L4), limits=(ds, pre), source=SRC)
    assert r.limit_for(DS) is ds
    assert r.limit_for(None) is pre
    assert r.limit_for(L4) is None  # a method without an entry has no bound
    assert RoutingSupport(in_kernel=(DS,), limits=(ds,), source=SRC).limit_for(None) is None


def test_routing_limits_one_per_path_and_only_in_kernel_methods():
    with pytest.raises(ValidationError, match="one entry"):
        RoutingSupport(limits=(RoutingLimit(max_top_k=8, source=SRC), RoutingLimit(max_top_k=4, source=SRC)), source=SRC)
    with pytest.raises(ValidationError, match="one entry"):
        RoutingSupport(in_kernel=(DS, L4), limits=(RoutingLimit(methods=(DS,), max_top_k=8, source=SRC),
                                                   RoutingLimit(methods=(L4, DS), max_top_k=4, source=SRC)), source=SRC)
    with pytest.raises(ValidationError, match="not in in_kernel"):
        RoutingSupport(in_kernel=(L4,), limits=(RoutingLimit(methods=(DS,), max_top_k=8, source=SRC),), source=SRC)
    ok = RoutingSupport(in_kernel=(DS, L4), limits=(RoutingLimit(methods=(DS,), max_top_k=8, source=SRC),
                                                    RoutingLimit(methods=(L4,), max_top_k=1, source=SRC),
                                                    RoutingLimit(max_top_k=4, source=SRC)), source=SRC)
    assert len(ok.limits) == 3


# --- The declaration as a whole ---------------------------------------------------------------

def decl(**changes) -> BackendCapability:
    fields = dict(
        id="t-a", name="Test", provider="tests", description="test-only", kernel="none",
        devices=(DeviceRule(min_sm=75, source=SRC),), dtypes=("bf16",),
        activations={Activation.SILU: ActivationImpl(kernel_name="silu", source=SRC)},
        quant=(QuantSupport(kind=QuantKind.BF16, source=SRC),),
        routing=RoutingSupport(source=SRC), features=FeatureSupport(source=SRC),
        priority={QuantFamily.UNQUANTIZED: 50},
    )
    fields.update(changes)
    return BackendCapability(**fields)


def test_a_declaration_is_checked_for_consistency():
    with pytest.raises(ValidationError, match="no priority for quant families"):
        decl(quant=(QuantSupport(kind=QuantKind.NVFP4, source=SRC),))
    with pytest.raises(ValidationError, match="declares no devices"):
        decl(devices=())
    with pytest.raises(ValidationError, match="dtypes it does not declare"):
        decl(dtype_devices=(DTypeRule(dtype="fp16", devices=(DeviceRule(min_sm=80, source=SRC),), source=SRC),))
    with pytest.raises(ValidationError):
        decl(id="Has Spaces")
    ok = decl(dtypes=("bf16", "fp16"),
              dtype_devices=(DTypeRule(dtype="bf16", devices=(DeviceRule(min_sm=80, source=SRC),), source=SRC),),
              quant=(QuantSupport(kind=QuantKind.BF16, source=SRC), QuantSupport(kind=QuantKind.NVFP4, source=SRC)),
              priority={QuantFamily.UNQUANTIZED: 1, QuantFamily.NVFP4: 2})
    assert [s.kind for s in ok.quant_support(QuantKind.NVFP4)] == [QuantKind.NVFP4]
    assert ok.quant_support(QuantKind.FP8) == ()


def test_priority_overrides_apply_on_their_devices_only_and_the_first_wins():
    d = decl(quant=(QuantSupport(kind=QuantKind.BF16, source=SRC), QuantSupport(kind=QuantKind.INT4_W4A16, source=SRC)),
             priority={QuantFamily.UNQUANTIZED: 50, QuantFamily.INT4: 40},
             priority_overrides=(
                 PriorityOverride(family=QuantFamily.INT4, devices=(DeviceRule(sm=(90,), source=SRC),), priority=95,
                                  source=SRC),
                 PriorityOverride(family=QuantFamily.INT4, devices=(DeviceRule(min_sm=80, source=SRC),), priority=60,
                                  source=SRC),
             ))
    assert d.priority_for(QuantFamily.INT4, get_device("h100")) == 95  # both match: the first
    assert d.priority_for(QuantFamily.INT4, get_device("b200")) == 60
    assert d.priority_for(QuantFamily.INT4, get_device("sm75")) == 40  # none matches: the declared one
    assert d.priority_for(QuantFamily.UNQUANTIZED, get_device("h100")) == 50  # another family's rule
    assert d.priority_for(QuantFamily.NVFP4, get_device("h100")) == 0  # a family it has no priority for


def test_a_priority_override_with_a_condition_applies_to_layers_it_matches():
    # vLLM moves Triton first on Hopper for block FP8 without EP only (fused_moe/oracle/fp8.py L122-132).
    d = decl(quant=(QuantSupport(kind=QuantKind.FP8, source=SRC), QuantSupport(kind=QuantKind.FP8_BLOCK, source=SRC)),
             priority={QuantFamily.FP8: 75},
             priority_overrides=(PriorityOverride(
                 family=QuantFamily.FP8, devices=(DeviceRule(sm=(90,), source=SRC),), priority=85,
                 when=Condition(quant=(QuantKind.FP8_BLOCK,), expert_parallel=False), source=SRC),))
    block = BASE.replace(quant="fp8_block")
    h100 = get_device("h100")
    assert d.priority_for(QuantFamily.FP8, h100, block) == 85
    assert d.priority_for(QuantFamily.FP8, h100, block.replace(parallel={"ep": 2})) == 75  # EP: not moved
    assert d.priority_for(QuantFamily.FP8, h100, BASE.replace(quant="fp8")) == 75  # per-tensor: not moved
    assert d.priority_for(QuantFamily.FP8, get_device("b200"), block) == 75  # another device
    assert d.priority_for(QuantFamily.FP8, h100) == 75  # no layer: a conditional rule does not apply
    assert PriorityOverride(family=QuantFamily.FP8, devices=(DeviceRule(sm=(90,), source=SRC),), priority=1,
                            source=SRC).when == Condition()
