"""More selection rules against test-only declarations, hand-computed (issue 15): the dtype-per-device
rule, hints in each of their forms, TP scale-group padding, the padding fixpoint, parallel-layout
hints, what a candidate holds, and the layer a selection reports. Complements test_selection_rules.py.
"""

from __future__ import annotations

import pytest

from moe_registry.environment import Environment
from moe_registry.errors import BackendNotEligible
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, Condition, DeviceRule, DimTest, DTypeRule, FeatureSupport, QuantSupport,
    Requirement, RoutingSupport, ShapeRule,
)
from moe_registry.schemas.device import get_device
from moe_registry.schemas.layer import ParallelConfig
from moe_registry.schemas.quant import QuantFamily, QuantKind
from moe_registry.schemas.selection import ReasonCode
from moe_registry.selection import DeclaredPriority, evaluate, select_backend
from moe_registry.selection.padding import _tp_split_group

from _decl_helpers import BASE, SRC, assert_selected, decl as _decl, registry  # noqa: E402,F401


def decl(id: str = "t-a", **changes):
    return _decl(id, features_source="features src", **changes)


def verdict(layer, d, device="h100", policy=None, others=None):
    return evaluate(d, layer, get_device(device), Environment.planning_target(), policy or DeclaredPriority(),
                    others if others is not None else (d,))


def only(v, code):
    assert [r.code for r in v.reasons] == [code], [r.render() for r in v.reasons]
    return v.reasons[0]


# --- dtype on some devices only ----------------------------------------------------------------

MARLIN_LIKE = dict(  # bf16 needs SM80+, fp16 runs from SM75, fp32 only on SM90+
    dtypes=("bf16", "fp16", "fp32"),
    dtype_devices=(DTypeRule(dtype="fp16", devices=(DeviceRule(min_sm=75, source=SRC),), source="fp16 rule"),
                   DTypeRule(dtype="bf16", devices=(DeviceRule(min_sm=80, source=SRC),), source="bf16 rule"),
                   DTypeRule(dtype="fp32", devices=(DeviceRule(min_sm=90, source=SRC),), source="fp32 rule")),
)


def test_a_dtype_restricted_to_some_devices():
    d = decl(**MARLIN_LIKE)
    r = only(verdict(BASE, d, "sm75"), ReasonCode.DTYPE_UNSUPPORTED)
    assert (r.field, r.required, r.actual, r.source) == ("dtype.device", "bf16 on SM80+", "bf16 on sm75 (SM75)",
                                                         "bf16 rule")
    # fp16 runs here, fp32 does not (its own rule): the hint names only what does
    assert r.hint.startswith("fp16 hidden states run on sm75 (SM75); would be eligible on SM80+ (e.g. a100, l40s, h100")
    assert verdict(BASE, d, "sm80").reasons == []
    assert verdict(BASE.replace(dtype="fp16"), d, "sm75").reasons == []
    assert verdict(BASE.replace(dtype="fp32"), d, "h100").reasons == []
    assert only(verdict(BASE.replace(dtype="fp32"), d, "sm80"), ReasonCode.DTYPE_UNSUPPORTED).source == "fp32 rule"


def test_the_dtype_hint_when_no_other_dtype_runs_here():
    d = decl(dtype_devices=(DTypeRule(dtype="bf16", devices=(DeviceRule(min_sm=90, source=SRC),), source="r"),))
    r = only(verdict(BASE, d, "sm80"), ReasonCode.DTYPE_UNSUPPORTED)
    assert r.hint.startswith("would be eligible on SM90+ (e.g. h100, h200")


def test_the_dtype_rule_is_silent_where_the_backend_does_not_run():
    d = decl(**MARLIN_LIKE, devices=(DeviceRule(min_sm=80, source=SRC),))
    assert [(r.code, r.field) for r in verdict(BASE, d, "sm75").reasons] == [(ReasonCode.DEVICE_UNSUPPORTED, "device")]


def test_a_reason_without_a_hint_has_none():
    r = only(verdict(BASE.replace(dtype="fp16"), decl()), ReasonCode.DTYPE_UNSUPPORTED)
    assert (r.field, r.hint, r.source) == ("dtype", "", "")


# --- Hints in each form ------------------------------------------------------------------------

def test_device_hint_without_an_example_when_no_preset_matches():
    r = only(verdict(BASE, decl(devices=(DeviceRule(sm=(95,), source=SRC),))), ReasonCode.DEVICE_UNSUPPORTED)
    assert r.hint == "would be eligible on SM95"


def test_activation_hint_when_no_other_backend_runs_it():
    d = decl()
    r = only(verdict(BASE.replace(activation="gelu"), d), ReasonCode.ACTIVATION_UNSUPPORTED)
    assert r.hint == ("if this kernel does run it, declare it in its activations (verify with "
                      "`moe-registry probe --backend t-a`); that is the only change needed")
    both = verdict(BASE.replace(activation="gelu", dtype="fp16"), d)
    hint = next(x.hint for x in both.reasons if x.code is ReasonCode.ACTIVATION_UNSUPPORTED)
    assert hint.endswith("; that alone is not enough: it also fails on dtype_unsupported")


def test_approximate_activation_reason_and_note_in_full():
    approx = ActivationImpl(kernel_name="Geglu", fidelity="approximate", note="erf for tanh", source="act src")
    d = decl(activations={Activation.GELU_TANH: approx})
    layer = BASE.replace(activation="gelu_tanh")
    r = only(verdict(layer, d, policy=DeclaredPriority(exact_activations=True)), ReasonCode.ACTIVATION_APPROXIMATE)
    assert (r.actual, r.source) == ("Geglu (erf for tanh)", "act src")
    assert r.message == "Test t-a would run gelu_tanh approximately: erf for tanh"
    assert r.hint == "allow approximate activations (drop exact_activations / --exact)"
    # no declared bound: the note says so by giving none
    assert [n.message for n in verdict(layer, d).notes] == ["t-a runs gelu_tanh as Geglu: erf for tanh"]


def test_swigluoai_constants_reason_names_the_constants_and_the_features_source():
    d = decl(activations={Activation.SWIGLUOAI: ActivationImpl(kernel_name="oai", source=SRC)})
    r = only(verdict(BASE.replace(activation="swigluoai", activation_params={"limit": 10.0}), d),
             ReasonCode.FEATURE_UNSUPPORTED)
    assert "limit=10.0" in r.actual and r.source == "features src"


def test_quant_unsupported_here_when_every_scheme_is_for_other_devices():
    d = decl(quant=(QuantSupport(kind=QuantKind.NVFP4, devices=(DeviceRule(min_sm=100, source=SRC),), source=SRC),),
             priority={QuantFamily.NVFP4: 1})
    r = only(verdict(BASE, d), ReasonCode.QUANT_UNSUPPORTED)  # a bf16 layer; the only scheme is for SM100+
    assert (r.field, r.required, r.actual, r.hint) == ("quant", "none", "bf16", "")


def test_adapter_missing_reason_in_full():
    d = decl(devices=(DeviceRule(vendor="any", source=SRC),),
             quant=(QuantSupport(kind=QuantKind.BF16, adapter_implemented=False, source="q src"),))
    here = evaluate(d, BASE, get_device("cpu"), registry(d).environment(), DeclaredPriority(), (d,))
    r = only(here, ReasonCode.ADAPTER_MISSING)
    assert (r.hint, r.source) == ("plan with a named --device to see what an engine would run", "q src")


# --- Parallel-layout hints ---------------------------------------------------------------------

def _inter_rule(m):
    return decl(shape_rules=(ShapeRule(dimension="intermediate", multiple_of=m, source=SRC),))


EP_HINT = ("expert parallelism over the TP group (EP{n}: vLLM --enable-expert-parallel, SGLang --ep-size {n}) "
           "keeps intermediate {i}")


@pytest.mark.parametrize("m,full,parallel,experts,hint", [
    # TP2: 768/2 = 384 is not a multiple of 256; EP2 keeps 768; TP1 is the only smaller TP
    (256, 768, ParallelConfig(tp=2), 8, EP_HINT.format(n=2, i=768) + "; TP1 gives intermediate 768"),
    # TP4: 192; TP3 gives 256, not a multiple of 384; TP2 gives 384
    (384, 768, ParallelConfig(tp=4), 8, EP_HINT.format(n=4, i=768) + "; TP2 gives intermediate 384"),
    # 640 itself is not a multiple of 256: no EP hint, and no smaller TP helps
    (256, 640, ParallelConfig(tp=2), 8, ""),
    # TP2 x EP2: 6 experts do not split over 4 ranks, and a smaller TP is not offered under EP
    (256, 768, ParallelConfig(tp=2, ep=2), 6, ""),
])
def test_parallel_hints(m, full, parallel, experts, hint):
    layer = BASE.replace(intermediate_size=full, num_experts=experts, parallel=parallel)
    r = only(verdict(layer, _inter_rule(m)), ReasonCode.SHAPE_UNALIGNED)
    assert r.hint == hint


def test_no_parallel_hint_for_the_hidden_size():
    d = decl(shape_rules=(ShapeRule(dimension="hidden", multiple_of=128, source=SRC),))
    r = only(verdict(BASE.replace(hidden_size=320, parallel=ParallelConfig(tp=2)), d), ReasonCode.SHAPE_UNALIGNED)
    assert r.hint == ""  # TP and EP do not change the hidden size


# --- TP through scale groups, the padding fixpoint ---------------------------------------------

NVFP4 = dict(quant=(QuantSupport(kind=QuantKind.NVFP4, source=SRC),), priority={QuantFamily.NVFP4: 1})
SPLIT = BASE.replace(quant="nvfp4", intermediate_size=176, parallel=ParallelConfig(tp=2))  # 88 = 5.5 groups of 16


@pytest.mark.parametrize("layer,group", [
    (SPLIT, 16),
    (SPLIT.replace(intermediate_size=352), None),  # 176 per rank: whole groups
    (SPLIT.replace(intermediate_size=168), None),  # the checkpoint itself ends mid-group
    (SPLIT.replace(intermediate_size=88, parallel=ParallelConfig()), None),  # no TP
    (SPLIT.replace(quant="bf16"), None),  # no scale groups
])
def test_tp_split_group(layer, group):
    assert _tp_split_group(layer) == group


def test_a_padding_backend_holds_whole_groups_under_tp():
    d = decl(**NVFP4, shape_rules=(ShapeRule(dimension="intermediate", multiple_of=8, pad=True, source=SRC),))
    v = verdict(SPLIT, d)
    assert v.reasons == [] and v.padding == {"intermediate": 16} and v.sizes["intermediate"] == 96  # lcm(8, 16)
    assert "padding" in [n.kind for n in v.notes]
    assert [n.kind for n in v.notes] == ["padding", "hint"]  # and which layouts avoid the padding
    wide = decl(**NVFP4, shape_rules=(ShapeRule(dimension="intermediate", multiple_of=64, pad=True, source=SRC),))
    w = verdict(SPLIT, wide)
    assert w.sizes["intermediate"] == 128
    # shards cut on the 16-grid: round_up(88, 16) = 96 per rank, then padded to 128 for the kernel
    assert "(96 per rank" in w.notes[0].message and "padded to 128" in w.notes[0].message
    # TP2 x EP2 with 6 experts: no other layout to offer, so no hint note
    no_layout = verdict(SPLIT.replace(num_experts=6, parallel=ParallelConfig(tp=2, ep=2)), d)
    assert no_layout.reasons == [] and [n.kind for n in no_layout.notes] == ["padding"]


def test_a_backend_that_cannot_pad_is_told_how_to_hold_whole_groups():
    r = only(verdict(SPLIT, decl(**NVFP4)), ReasonCode.SHAPE_UNALIGNED)
    assert (r.field, r.required, r.actual) == ("intermediate", "multiple of 16", "88")
    assert r.hint == EP_HINT.format(n=2, i=176) + "; TP1 gives intermediate 176"
    pads = decl(**NVFP4, shape_rules=(ShapeRule(dimension="intermediate", multiple_of=8, pad=True, source=SRC),))
    v = verdict(SPLIT, pads, policy=DeclaredPriority(allow_padding=False))
    assert [r.field for r in v.reasons] == ["intermediate"]
    assert v.reasons[0].hint.endswith("; allow padding (ranks then hold whole groups)")


def test_the_allow_padding_hint_needs_a_pad_rule_on_the_intermediate():
    r = only(verdict(SPLIT, decl(**NVFP4)), ReasonCode.SHAPE_UNALIGNED)
    assert r.source == "nvfp4 format: one scale per 16 K-elements"
    for rules in ((ShapeRule(dimension="hidden", multiple_of=128, source=SRC),),  # not a pad rule
                  (ShapeRule(dimension="hidden", multiple_of=128, pad=True, source=SRC),)):  # pads the hidden only
        r = only(verdict(SPLIT, decl(**NVFP4, shape_rules=rules)), ReasonCode.SHAPE_UNALIGNED)
        assert r.hint == EP_HINT.format(n=2, i=176) + "; TP1 gives intermediate 176"


def test_fp8_blocks_may_end_partial_unless_tp_cuts_them():
    fp8 = dict(quant=(QuantSupport(kind=QuantKind.FP8_BLOCK, source=SRC),), priority={QuantFamily.FP8: 1})
    layer = BASE.replace(quant="fp8_block", hidden_size=704, intermediate_size=704)  # 5.5 blocks of 128
    assert verdict(layer, decl(**fp8)).reasons == []
    assert verdict(layer.replace(intermediate_size=256, parallel=ParallelConfig(tp=2)), decl(**fp8)).reasons == []
    r = only(verdict(layer.replace(parallel=ParallelConfig(tp=2)), decl(**fp8)), ReasonCode.SHAPE_UNALIGNED)
    assert (r.field, r.actual) == ("intermediate", "352")


def test_pad_rules_are_judged_at_the_padded_sizes():
    # intermediate pads 320 -> 384; the hidden pad rule applies from intermediate 384 on: it applies too
    d = decl(shape_rules=(
        ShapeRule(dimension="intermediate", multiple_of=128, pad=True, source=SRC),
        ShapeRule(dimension="hidden", multiple_of=512, pad=True, source=SRC,
                  when=Condition(dims=(DimTest(dimension="intermediate", min=384),))),
    ))
    v = verdict(BASE.replace(intermediate_size=320), d)
    assert v.reasons == [] and v.padding == {"intermediate": 128, "hidden": 512}
    assert v.sizes == {"hidden": 512, "intermediate": 384}
    assert verdict(BASE.replace(intermediate_size=256), d).padding == {}  # 256 < 384: no hidden pad


def test_shape_rule_conditions_are_judged_at_the_padded_sizes():
    d = decl(shape_rules=(
        ShapeRule(dimension="intermediate", multiple_of=128, pad=True, source=SRC),
        ShapeRule(dimension="hidden", multiple_of=512, source="big-I rule",
                  when=Condition(dims=(DimTest(dimension="intermediate", min=384),))),
    ))
    r = only(verdict(BASE.replace(intermediate_size=320), d), ReasonCode.SHAPE_UNALIGNED)  # 320 -> 384: applies
    assert (r.field, r.source) == ("hidden", "big-I rule")
    assert verdict(BASE.replace(intermediate_size=256), d).reasons == []


def test_odd_pad_multiples():
    d = decl(shape_rules=(ShapeRule(dimension="intermediate", multiple_of=3, pad=True, source=SRC),))
    assert verdict(BASE.replace(intermediate_size=320), d).sizes["intermediate"] == 321
    odd = decl(shape_rules=(ShapeRule(dimension="intermediate", multiple_of=5, source=SRC),
                            ShapeRule(dimension="hidden", multiple_of=5, source=SRC)))
    v = verdict(BASE.replace(intermediate_size=330, hidden_size=165, parallel=ParallelConfig(tp=2)), odd)
    assert v.reasons == [] and v.sizes == {"hidden": 165, "intermediate": 165}  # unpadded sizes stay as they are


# --- Requirements that do not apply -------------------------------------------------------------

def test_requirement_conditions_are_judged_at_the_padded_sizes_and_each_on_its_own():
    d = decl(shape_rules=(ShapeRule(dimension="intermediate", multiple_of=128, pad=True, source=SRC),),
             requirements=(
                 Requirement(kind="package", name="only-nvfp4", when=Condition(quant=(QuantKind.NVFP4,)), source=SRC),
                 Requirement(kind="package", name="big-I", source=SRC,
                             when=Condition(dims=(DimTest(dimension="intermediate", min=384),))),
             ))
    notes = [n.message for n in verdict(BASE.replace(intermediate_size=320), d).notes if n.kind == "assumed"]
    assert len(notes) == 1 and "package big-I" in notes[0]  # 320 is padded to 384: the second applies


def test_requirements_outside_their_condition_or_devices_say_nothing():
    d = decl(requirements=(
        Requirement(kind="package", name="only-nvfp4", when=Condition(quant=(QuantKind.NVFP4,)), source=SRC),
        Requirement(kind="package", name="only-sm100", devices=(DeviceRule(sm=(100,), source=SRC),), source=SRC),
    ))
    v = verdict(BASE, d)
    assert v.reasons == [] and v.notes == []
    assert [n.kind for n in verdict(BASE, d, "b200").notes] == ["assumed"]
    # one that does not apply on this device does not hide the next one
    later = decl(requirements=(d.requirements[1], Requirement(kind="package", name="everywhere", source=SRC)))
    notes = verdict(BASE, later).notes
    assert len(notes) == 1 and "package everywhere" in notes[0].message


# --- What a candidate holds --------------------------------------------------------------------

@pytest.mark.parametrize("dtype,bits,held", [("bf16", 16, "bf16"), ("fp16", 16, "fp16"), ("fp32", 16, "bf16"),
                                             ("bf16", 32, "fp32")])
def test_weights_held_by_a_backend_that_dequantizes(dtype, bits, held):
    d = decl(dtypes=("bf16", "fp16", "fp32"), quant=(QuantSupport(kind=QuantKind.NVFP4, dequantized_at_load=True,
                                                                  dequantized_bits=bits, source=SRC),),
             priority={QuantFamily.NVFP4: 1})
    layer = BASE.replace(quant="nvfp4", dtype=dtype)
    (c,) = select_backend(layer, "h100", registry=registry(d)).eligible
    assert c.weights_held == f"{held} (dequantized from nvfp4)"
    # 8 experts x (w13 512x256 + w2 256x256) x bits/8, no scales
    assert c.expert_weight_bytes == 8 * (512 * 256 + 256 * 256) * bits // 8


def test_dequantized_padded_weights_are_counted_at_the_padded_size():
    d = decl(quant=(QuantSupport(kind=QuantKind.NVFP4, dequantized_at_load=True, source=SRC),),
             priority={QuantFamily.NVFP4: 1},
             shape_rules=(ShapeRule(dimension="intermediate", multiple_of=128, pad=True, source=SRC),
                          ShapeRule(dimension="hidden", multiple_of=384, pad=True, source=SRC)))
    (c,) = select_backend(BASE.replace(quant="nvfp4", intermediate_size=320), "h100", registry=registry(d)).eligible
    # hidden 256 -> 384, intermediate 320 -> 384, held in bf16: 8 x (2*384*384 + 384*384) x 2 bytes
    assert c.expert_weight_bytes == 8 * 3 * 384 * 384 * 2


def test_padded_weights_are_counted_at_the_padded_size():
    d = decl(shape_rules=(ShapeRule(dimension="intermediate", multiple_of=128, pad=True, source=SRC),
                          ShapeRule(dimension="hidden", multiple_of=384, pad=True, source=SRC)))
    (c,) = select_backend(BASE.replace(intermediate_size=320), "h100", registry=registry(d)).eligible
    # hidden 256 -> 384, intermediate 320 -> 384; bf16: 8 experts x (2*384*384 + 384*384) x 2 bytes
    assert c.expert_weight_bytes == 8 * 3 * 384 * 384 * 2 and c.weights_held == "bf16"


# --- Ordering ties and what the selection reports ----------------------------------------------

def test_among_equal_priorities_no_padding_wins_before_the_id():
    padded = decl("t-a", priority={QuantFamily.UNQUANTIZED: 90},
                  shape_rules=(ShapeRule(dimension="hidden", multiple_of=512, pad=True, source=SRC),))
    plain = decl("t-z", priority={QuantFamily.UNQUANTIZED: 90})
    s = select_backend(BASE, "h100", registry=registry(padded, plain))
    assert [c.backend for c in s.eligible] == ["t-z", "t-a"]


def test_a_forced_backend_that_cannot_run_says_who_forced_it(monkeypatch):
    reg = registry(decl("t-a"), decl("t-x", devices=(DeviceRule(sm=(100,), source=SRC),)))
    with pytest.raises(BackendNotEligible) as err:
        select_backend(BASE, "h100", force="t-x", registry=reg)
    assert err.value.origin == "forced"
    monkeypatch.setenv("MOE_REGISTRY_BACKEND", "t-x")
    with pytest.raises(BackendNotEligible) as err:
        select_backend(BASE, "h100", registry=reg)
    assert err.value.origin == "env"


@pytest.mark.parametrize("name,index", [("layers.3.experts", 3), ("layers.3.experts", None), (None, 3)])
def test_the_selection_reports_the_layer_as_given(name, index):
    layer = BASE.replace(name=name, index=index)
    s = select_backend(layer, "h100", registry=registry(decl()))
    assert s.layer == layer
    assert select_backend(BASE, "h100", registry=registry(decl())).layer == BASE


# --- Routing paths and their bounds ------------------------------------------------------------

from moe_registry.environment import RequirementState  # noqa: E402
from moe_registry.schemas.capability import EngineNames, KnownLimitation, RoutingLimit  # noqa: E402
from moe_registry.schemas.layer import RoutingMethod  # noqa: E402
from moe_registry.schemas.selection import Reason  # noqa: E402

DS = RoutingMethod.DEEPSEEK_V3
DS_LAYER = BASE.replace(routing="deepseek_v3", num_experts=256, top_k=8)


def routed(in_kernel=(DS,), precomputed=True, *limits):
    return decl(routing=RoutingSupport(in_kernel=in_kernel, precomputed=precomputed, limits=limits, source="route"))


def test_in_kernel_bounds_exceeded_route_outside_when_the_precomputed_path_fits():
    d = routed((DS,), True, RoutingLimit(methods=(DS,), max_experts=128, source="ds limit"))
    v = verdict(DS_LAYER, d)
    assert v.reasons == [] and [n.message for n in v.notes] == [
        "t-a: deepseek_v3 exceeds the kernel's in-kernel bounds (experts <= 128); routed outside, precomputed top-k"]


def test_a_method_the_kernel_does_not_route_goes_precomputed_silently():
    v = verdict(BASE, routed((DS,), True))  # softmax_topk_renorm, not in-kernel here
    assert v.reasons == [] and v.notes == []


def test_unknown_routing_when_only_an_in_kernel_method_fits():
    d = routed((DS,), True, RoutingLimit(max_top_k=4, source="pre limit"))
    v = verdict(DS_LAYER.replace(routing=None), d)  # top-8: the precomputed path's top-4 bound fails
    assert v.reasons == [] and [n.kind for n in v.notes] == ["abstained"]
    assert "the precomputed path does not" in v.notes[0].message


def test_no_routing_path_at_all():
    d = routed((), False)
    r = only(verdict(BASE.replace(routing=None), d), ReasonCode.ROUTING_UNSUPPORTED)
    assert (r.required, r.actual, r.source) == ("", "unknown", "route")


def test_every_exceeded_bound_of_every_path_is_a_reason():
    d = routed((DS,), True, RoutingLimit(methods=(DS,), max_experts=128, source="ds limit"),
               RoutingLimit(max_top_k=4, max_experts=200, source="pre limit"))
    v = verdict(DS_LAYER, d)
    got = [(r.code, r.field, r.required, r.actual, r.source) for r in v.reasons]
    assert got == [(ReasonCode.SHAPE_OUT_OF_RANGE, "top_k", "<= 4", "8", "pre limit"),
                   (ReasonCode.SHAPE_OUT_OF_RANGE, "experts", "<= 200", "256", "pre limit"),
                   (ReasonCode.SHAPE_OUT_OF_RANGE, "experts", "<= 128", "256", "ds limit")]
    assert "precomputed top-k" in v.reasons[0].message and "in-kernel deepseek_v3 routing" in v.reasons[2].message
    # at the bounds: everything runs in the kernel
    fits = DS_LAYER.replace(num_experts=128, top_k=4)
    assert verdict(fits, d).reasons == []
    # unknown routing with only the precomputed path bounded: its failures alone
    unknown = verdict(DS_LAYER.replace(routing=None), routed((), True, RoutingLimit(max_top_k=4, source="pre")))
    assert [(r.field, r.actual) for r in unknown.reasons] == [("top_k", "8")]
    # a method the kernel does not route: the precomputed path's failures alone
    other = verdict(DS_LAYER.replace(routing="softmax_topk"), d)
    assert [r.source for r in other.reasons] == ["pre limit", "pre limit"]


# --- Parallelism hints -------------------------------------------------------------------------

def test_feature_reasons_cite_the_features_source():
    v = verdict(BASE.replace(bias=True, apply_router_weight_on_input=True), decl())
    assert [(r.field, r.source) for r in v.reasons] == [("bias", "features src"),
                                                        ("apply_router_weight_on_input", "features src")]


def test_tp1_needs_no_tensor_parallel_support():
    no_tp = decl(features=FeatureSupport(tensor_parallel=False, expert_parallel=False, source="feat"))
    assert verdict(BASE, no_tp).reasons == []


def test_parallel_unsupported_without_a_layout_to_offer():
    none = decl(features=FeatureSupport(tensor_parallel=False, expert_parallel=False, source="feat"))
    v = verdict(BASE.replace(parallel=ParallelConfig(tp=2, ep=2)), none)
    assert [(r.field, r.hint, r.source) for r in v.reasons] == [("parallel.tp", "", "feat"), ("parallel.ep", "", "feat")]
    no_tp = decl(features=FeatureSupport(tensor_parallel=False, source="feat"))
    r = only(verdict(BASE.replace(num_experts=6, parallel=ParallelConfig(tp=4)), no_tp), ReasonCode.PARALLEL_UNSUPPORTED)
    assert r.hint == ""  # 6 experts do not split over 4 ranks
    no_ep = decl(features=FeatureSupport(expert_parallel=False, source="feat"))
    r = only(verdict(BASE.replace(intermediate_size=196, parallel=ParallelConfig(ep=8)), no_ep),
             ReasonCode.PARALLEL_UNSUPPORTED)
    assert r.hint == ""  # 196 does not split over 8 ranks
    r = only(verdict(BASE.replace(attention_heads=12, kv_heads=4, parallel=ParallelConfig(ep=8)), no_ep),
             ReasonCode.PARALLEL_UNSUPPORTED)
    assert r.hint == ""  # 12 attention heads do not split over TP8


# --- Shape rules: scope, bounds, padded sizes --------------------------------------------------

def test_shape_rule_texts_name_scope_bounds_and_padding():
    d = decl(shape_rules=(ShapeRule(dimension="hidden", min=512, source=SRC, when=Condition(gated=True)),
                          ShapeRule(dimension="top_k", max=1, source=SRC)))
    v = verdict(BASE, d)
    assert [(r.field, r.required, r.actual) for r in v.reasons] == [("hidden", "512..", "256"), ("top_k", "..1", "2")]
    assert [r.source for r in v.reasons] == [SRC, SRC]
    assert v.reasons[0].message == "Test t-a needs per-rank hidden in 512.. when gated; it is 256"
    padded = decl(shape_rules=(ShapeRule(dimension="intermediate", multiple_of=128, pad=True, source=SRC),
                               ShapeRule(dimension="intermediate", multiple_of=256, source=SRC)))
    r = only(verdict(BASE.replace(intermediate_size=320), padded), ReasonCode.SHAPE_UNALIGNED)
    assert r.actual == "384" and r.message.endswith("; it is 320, padded to 384")
    # a pad rule the layer already meets pads nothing
    assert verdict(BASE.replace(intermediate_size=384), decl(shape_rules=padded.shape_rules[:1])).padding == {}


def test_a_padded_rule_refused_by_policy_gives_both_hints():
    d = decl(shape_rules=(ShapeRule(dimension="intermediate", multiple_of=256, pad=True, source=SRC),))
    layer = BASE.replace(intermediate_size=768, parallel=ParallelConfig(tp=2))
    r = only(verdict(layer, d, policy=DeclaredPriority(allow_padding=False)), ReasonCode.SHAPE_UNALIGNED)
    assert r.hint == EP_HINT.format(n=2, i=768) + "; TP1 gives intermediate 768; allow padding to 512"


def test_max_experts_per_rank_under_ep_and_without_a_layout():
    d = decl(max_experts=16)
    r = only(verdict(BASE.replace(num_experts=64, parallel=ParallelConfig(ep=2)), d), ReasonCode.SHAPE_OUT_OF_RANGE)
    assert (r.actual, r.hint) == ("32", "EP4 gives 16 experts per rank")
    r = only(verdict(BASE.replace(num_experts=1, top_k=1), decl(max_experts=0)), ReasonCode.SHAPE_OUT_OF_RANGE)
    assert r.hint == ""
    r = only(verdict(BASE.replace(num_experts=32), d), ReasonCode.SHAPE_OUT_OF_RANGE)
    assert r.hint == "EP2 gives 16 experts per rank"


def test_a_limitation_reports_the_padded_sizes_it_was_judged_at():
    lim = KnownLimitation(when=Condition(dims=(DimTest(dimension="intermediate", min=384),)), reason="no tile",
                          source="lim")
    d = decl(limitations=(lim,), shape_rules=(ShapeRule(dimension="intermediate", multiple_of=128, pad=True,
                                                        source=SRC),))
    r = only(verdict(BASE.replace(intermediate_size=320), d), ReasonCode.KNOWN_LIMITATION)
    assert r.field == "layer" and r.required == "not (intermediate >= 384)"
    assert r.actual.endswith(", per-rank intermediate padded to 384")
    both = decl(limitations=(lim,), shape_rules=d.shape_rules + (
        ShapeRule(dimension="hidden", multiple_of=512, pad=True, source=SRC),))
    r = only(verdict(BASE.replace(intermediate_size=320), both), ReasonCode.KNOWN_LIMITATION)
    assert r.actual.endswith(", per-rank hidden padded to 512, per-rank intermediate padded to 384")


def test_a_scheme_may_take_dtypes_the_backend_does_not():
    d = decl(quant=(QuantSupport(kind=QuantKind.BF16, dtypes=("bf16", "fp16"), source=SRC),))
    assert verdict(BASE.replace(dtype="fp16"), d).reasons == []


# --- Requirements on this machine --------------------------------------------------------------

def test_requirement_states_on_this_machine():
    d = decl(requirements=(
        Requirement(kind="package", name="fine", source="ok"),  # satisfied ones do not stop the others
        Requirement(kind="torch_op", name="moe_op", package="opdist", hint="install opdist", source="op"),
        Requirement(kind="jit_module", name="jit", hint="build it", source="jit"),
        Requirement(kind="package", name="unchecked", source="none"),
    ))
    env = Environment(planning=False, requirements=(
        RequirementState(backend="t-a", name="moe_op", satisfied=False, detail="op not registered"),
        RequirementState(backend="t-a", name="jit", satisfied=False, detail="not built"),
        RequirementState(backend="t-a", name="fine", satisfied=True, detail="1.0"),
    ))
    v = evaluate(d, BASE, get_device("h100"), env, DeclaredPriority(), (d,))
    assert [(r.code, r.required, r.actual, r.hint, r.source) for r in v.reasons] == [
        (ReasonCode.PACKAGE_MISSING, "op moe_op", "op not registered", "install opdist", "op"),
        (ReasonCode.KERNEL_NOT_BUILT, "built kernel module jit", "not built", "build it", "jit")]
    assert v.notes == []


# --- Resolution: engines, extra reasons, fingerprint of the policy -----------------------------

def test_engine_names_of_the_chosen_backend():
    d = decl(engines=EngineNames(vllm="vllm_name", trtllm="trt_name"))
    assert select_backend(BASE, "h100", registry=registry(d)).engines == {"vllm": "vllm_name", "trtllm": "trt_name"}


def test_extra_reasons_reject_and_enter_the_fingerprint():
    reg = registry(decl("t-a"), decl("t-b", priority={QuantFamily.UNQUANTIZED: 90}))
    extra = Reason(code=ReasonCode.MEMORY_EXCEEDED, field="memory", required="<= 80 GB", actual="90 GB",
                   message="t-b does not fit")
    base = select_backend(BASE, "h100", registry=reg)
    s = select_backend(BASE, "h100", registry=reg, extra_reasons=[("t-b", extra)])
    assert_selected(base, "t-b")
    assert_selected(s, "t-a")
    assert s.rejection("t-b").reasons == (extra,)
    assert s.fingerprint != base.fingerprint


def test_the_policy_enters_the_fingerprint():
    reg = registry(decl())
    prints = {select_backend(BASE, "h100", registry=reg, policy=p).fingerprint
              for p in (DeclaredPriority(), DeclaredPriority(exact_activations=True), DeclaredPriority(allow_padding=False))}
    assert len(prints) == 3
    assert DeclaredPriority().key() == "declared(exact=False,pad=True)"


def test_a_forced_backend_comes_first_and_the_rest_follow():
    reg = registry(decl("t-a"), decl("t-b", priority={QuantFamily.UNQUANTIZED: 90}),
                   decl("t-c", priority={QuantFamily.UNQUANTIZED: 70}))
    s = select_backend(BASE, "h100", force="t-a", registry=reg)
    assert s.backend == "t-a" and s.eligible[0].backend == "t-a" and {c.backend for c in s.eligible} == {
        "t-a", "t-b", "t-c"}
    assert s.notes == s.eligible[0].notes


# --- judge: one declaration's verdict, as the probe reads it ------------------------------------------------


def test_judge_tells_the_format_rule_from_a_declaration():
    from moe_registry.backends.reference import DECLARATION as REFERENCE
    from moe_registry.registry import Registry
    from moe_registry.schemas.layer import LayerSpec
    from moe_registry.selection import judge

    reg = Registry(entry_points=False)
    env, declarations, cpu = reg.environment(), reg.declarations(), get_device("cpu")
    aligned = LayerSpec(num_experts=4, top_k=2, hidden_size=128, intermediate_size=128, quant="nvfp4")
    verdict = judge(REFERENCE, aligned, cpu, env, declarations)
    assert verdict.declared and not verdict.format_rule_only and verdict.reasons == () and verdict.paddings == ()
    # I=200 splits NvFP4's 16-element scale groups: only the format's rule rejects it for the reference...
    unaligned = aligned.replace(intermediate_size=200)
    verdict = judge(REFERENCE, unaligned, cpu, env, declarations)
    assert not verdict.declared and verdict.format_rule_only
    assert [(r.code, r.field) for r in verdict.reasons] == [(ReasonCode.SHAPE_UNALIGNED, "intermediate")]
    # ...while a declaration without NvFP4 is rejected on its own account too.
    bf16_only = REFERENCE.model_copy(update={"quant": tuple(q for q in REFERENCE.quant if q.kind is QuantKind.BF16)})
    verdict = judge(bf16_only, unaligned, cpu, env, declarations)
    assert not verdict.format_rule_only and ReasonCode.QUANT_UNSUPPORTED in {r.code for r in verdict.reasons}
    # The same reasons selection's evaluate gives under the default policy (and the policy can be given).
    assert list(verdict.reasons) == evaluate(bf16_only, unaligned, cpu, env, DeclaredPriority(), declarations).reasons
    assert judge(bf16_only, unaligned, cpu, env, declarations, DeclaredPriority()) == verdict


@pytest.mark.parametrize("flashinfer_installed", [True, False])
def test_judge_reports_the_declared_padding(flashinfer_installed):
    from moe_registry.environment import Environment, RequirementState
    from moe_registry.registry import Registry
    from moe_registry.schemas.layer import LayerSpec
    from moe_registry.selection import judge

    reg = Registry(entry_points=False)
    layer = LayerSpec(num_experts=4, top_k=2, hidden_size=512, intermediate_size=704)
    # A B200 plan is judged for the target (packages assumed installable), never with this machine's
    # packages: the verdict is the same whether FlashInfer is installed here or not (issue 20).
    here = Environment(planning=False, requirements=tuple(
        RequirementState(backend="trtllm-bf16", name=r.name, satisfied=flashinfer_installed, detail="")
        for r in reg.get("trtllm-bf16").requirements))
    assert not judge(reg.get("trtllm-bf16"), layer, get_device("b200"), here, reg.declarations()).declared \
        or flashinfer_installed
    target = Environment.planning_target()
    verdict = judge(reg.get("trtllm-bf16"), layer, get_device("b200"), target, reg.declarations())
    # Its declared pad rule: the intermediate to a multiple of 128 (704 -> 768).
    assert [(p.dimension, p.original, p.padded) for p in verdict.paddings] == [("intermediate", 704, 768)]
    assert verdict.declared and verdict.reasons == ()
    # Without padding allowed, the same rule rejects the layer instead.
    strict = judge(reg.get("trtllm-bf16"), layer, get_device("b200"), target, reg.declarations(),
                   DeclaredPriority(allow_padding=False))
    assert not strict.declared and strict.paddings == ()
