"""Every selection rule against test-only declarations, with hand-computed expectations.

The built-in declarations change as upstream kernels do; these tests pin the RULES: every
ReasonCode is produced (with its field, required and actual values), every declared limit is
checked at its edge (value = limit passes, one past it rejects), every hint kind says what it
should, padding combines as declared, and force / prefer / forbid and the fingerprint behave as
documented. Registries here hold only the declarations each test builds.
"""

from __future__ import annotations

import pytest

from moe_registry.errors import BackendNotEligible, NoEligibleBackend
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, Condition, DeviceRule, DimTest, FeatureSupport, KnownLimitation,
    QuantSupport, Requirement, RoutingSupport, ShapeRule,
)
from moe_registry.schemas.device import DeviceSpec, get_device
from moe_registry.schemas.layer import LayerSpec, ParallelConfig, RoutingMethod
from moe_registry.schemas.quant import QuantFamily, QuantKind, ScaleLayout
from moe_registry.schemas.selection import ReasonCode
from moe_registry.selection import DeclaredPriority, evaluate, select_backend
from moe_registry.environment import Environment

from _decl_helpers import BASE, SRC, assert_selected, decl, registry  # noqa: E402,F401


def reasons(layer: LayerSpec, d: BackendCapability, device: str | DeviceSpec = "h100", policy=None,
            env: Environment | None = None):
    device = get_device(device) if isinstance(device, str) else device
    verdict = evaluate(d, layer, device, env or Environment.planning_target(), policy or DeclaredPriority(), (d,))
    return verdict


def only(verdict, code: ReasonCode):
    """The single reason of ``verdict`` (asserting it is of ``code``)."""
    assert [r.code for r in verdict.reasons] == [code], [r.render() for r in verdict.reasons]
    return verdict.reasons[0]


# --- Devices -----------------------------------------------------------------------------------

def test_device_rule_edges():
    rule = DeviceRule(min_sm=90, max_sm=100, source=SRC)
    assert rule.matches(get_device("sm90")) and rule.matches(get_device("sm100"))
    assert not rule.matches(get_device("sm89")) and not rule.matches(get_device("sm103"))
    exact = DeviceRule(sm=(100, 103), source=SRC)
    assert exact.matches(get_device("b300")) and not exact.matches(get_device("sm110"))
    assert not DeviceRule(min_sm=75, source=SRC).matches(get_device("cpu"))
    assert DeviceRule(vendor="any", source=SRC).matches(get_device("cpu"))
    assert DeviceRule(vendor="cpu", source=SRC).matches(get_device("cpu"))
    assert not DeviceRule(vendor="cpu", source=SRC).matches(get_device("h100"))


def test_device_unsupported_names_the_rule_the_device_and_where_it_would_run():
    r = only(reasons(BASE, decl(devices=(DeviceRule(sm=(100,), source="cubins"),))), ReasonCode.DEVICE_UNSUPPORTED)
    assert (r.field, r.required, r.actual) == ("device", "SM100", "h100 (SM90)")
    assert r.hint == "would be eligible on SM100 (e.g. b200, gb200)"
    assert r.source == "cubins"


# --- Activations -------------------------------------------------------------------------------

def test_activation_unsupported_lists_the_backends_that_run_it():
    other = decl("t-b", activations={Activation.GELU: ActivationImpl(kernel_name="gelu", source=SRC)})
    silu_only = decl("t-c")  # runs silu only: not named
    d = decl()
    v = evaluate(d, BASE.replace(activation="gelu"), get_device("h100"), Environment.planning_target(),
                 DeclaredPriority(), (d, other, silu_only))
    r = only(v, ReasonCode.ACTIVATION_UNSUPPORTED)
    assert (r.field, r.required, r.actual) == ("activation", "silu", "gelu")
    assert r.hint == ("backends that run gelu: t-b; if this kernel does run it, declare it in its activations "
                      "(verify with `moe-registry probe --backend t-a`); that is the only change needed")


def test_an_approximate_activation_is_a_note_by_default_and_a_reason_when_exact_is_asked():
    approx = ActivationImpl(kernel_name="Geglu", fidelity="approximate", max_abs_error=5e-4,
                            note="erf for tanh", source=SRC)
    d = decl(activations={Activation.GELU_TANH: approx})
    layer = BASE.replace(activation="gelu_tanh")
    v = reasons(layer, d)
    assert v.reasons == []
    assert [n.kind for n in v.notes] == ["approximation"]
    assert v.notes[0].message == "t-a runs gelu_tanh as Geglu: erf for tanh (|difference| <= 0.0005)"
    r = only(reasons(layer, d, policy=DeclaredPriority(exact_activations=True)), ReasonCode.ACTIVATION_APPROXIMATE)
    assert (r.field, r.required) == ("activation", "exact gelu_tanh")


def test_swigluoai_custom_constants_need_the_feature():
    d = decl(activations={Activation.SWIGLUOAI: ActivationImpl(kernel_name="oai", source=SRC)})
    defaults = BASE.replace(activation="swigluoai")
    interleaved_only = defaults.replace(activation_params={"interleaved": True})
    custom = defaults.replace(activation_params={"limit": 10.0})
    assert reasons(defaults, d).reasons == []
    assert reasons(interleaved_only, d).reasons == []  # a weight layout, undone at load
    r = only(reasons(custom, d), ReasonCode.FEATURE_UNSUPPORTED)
    assert r.field == "activation_params"
    with_params = decl(activations=d.activations, features=FeatureSupport(swigluoai_params=True, source=SRC))
    assert reasons(custom, with_params).reasons == []


# --- Quantization ------------------------------------------------------------------------------

INT4 = QuantSupport(kind=QuantKind.INT4_W4A16, group_sizes=(64, 128), source="int4 src")


def test_quant_unsupported_when_the_kind_is_not_declared():
    other = decl("t-b", quant=(INT4,), priority={QuantFamily.INT4: 1})
    bf16_only = decl("t-c")  # runs bf16 only: not named
    d = decl()
    layer = BASE.replace(quant="int4_w4a16:g128")
    v = evaluate(d, layer, get_device("h100"), Environment.planning_target(), DeclaredPriority(),
                 (d, other, bf16_only))
    r = only(v, ReasonCode.QUANT_UNSUPPORTED)
    assert (r.field, r.required, r.actual) == ("quant", "bf16", "int4_w4a16")
    assert r.hint == "backends that run int4_w4a16: t-b"


def test_quant_unsupported_on_this_device_names_the_devices():
    d = decl(quant=(QuantSupport(kind=QuantKind.BF16, devices=(DeviceRule(min_sm=100, source=SRC),), source="q"),))
    r = only(reasons(BASE, d, "h100"), ReasonCode.QUANT_UNSUPPORTED)
    assert (r.field, r.required, r.actual) == ("quant.device", "bf16 on SM100+", "bf16 on h100 (SM90)")
    assert r.hint.startswith("would be eligible on SM100+ (e.g. b200")
    assert r.source == "q"  # the quant support's own source
    assert reasons(BASE, d, "b200").reasons == []


def test_a_device_hint_names_no_cpu_example():
    # Examples are GPU presets; a rule that only the CPU meets gets no "(e.g. ...)".
    d = decl(devices=(DeviceRule(vendor="cpu", source=SRC),))
    r = only(reasons(BASE, d, "h100"), ReasonCode.DEVICE_UNSUPPORTED)
    assert r.hint == "would be eligible on CPU"


@pytest.mark.parametrize("scheme,field,required,actual", [
    ("int4_w4a16:g32", "quant.group_size", "64 or 128", "32"),
    ("int4_w4a16:g128:zp", "quant.zero_point", "symmetric", "zero points"),
    ("int4_w4a16:g128:act_order", "quant.act_order", "no act_order", "act_order"),
])
def test_each_quant_option_is_checked_on_its_own(scheme, field, required, actual):
    d = decl(quant=(INT4,), priority={QuantFamily.INT4: 1})
    r = only(reasons(BASE.replace(quant=scheme), d), ReasonCode.QUANT_OPTION_UNSUPPORTED)
    assert (r.field, r.required, r.actual) == (field, required, actual)
    assert r.source == "int4 src"


def test_declared_options_pass():
    d = decl(quant=(QuantSupport(kind=QuantKind.INT4_W4A16, zero_point=True, act_order=True, source=SRC),),
             priority={QuantFamily.INT4: 1})
    assert reasons(BASE.replace(quant="int4_w4a16:g128:zp:act_order"), d).reasons == []


def test_activation_scale_layout_must_match_when_both_are_known():
    d = decl(quant=(QuantSupport(kind=QuantKind.NVFP4, activation_scale_layout=ScaleLayout.LINEAR, source=SRC),),
             priority={QuantFamily.NVFP4: 1})
    linear, swizzled, unknown = (BASE.replace(quant=q) for q in ("nvfp4:linear", "nvfp4:swizzled_128x4", "nvfp4"))
    assert reasons(linear, d).reasons == [] and reasons(unknown, d).reasons == []
    r = only(reasons(swizzled, d), ReasonCode.QUANT_OPTION_UNSUPPORTED)
    assert (r.field, r.required, r.actual) == ("quant.activation_scale_layout", "linear", "swizzled_128x4")


def test_dtype_unsupported_by_the_backend_and_by_one_scheme():
    r = only(reasons(BASE.replace(dtype="fp16"), decl()), ReasonCode.DTYPE_UNSUPPORTED)
    assert (r.field, r.required, r.actual) == ("dtype", "bf16", "fp16")
    per_scheme = decl(dtypes=("bf16", "fp16"), quant=(QuantSupport(kind=QuantKind.BF16, dtypes=("bf16",), source=SRC),))
    r = only(reasons(BASE.replace(dtype="fp16"), per_scheme), ReasonCode.DTYPE_UNSUPPORTED)
    assert (r.field, r.required, r.actual) == ("dtype", "bf16", "fp16")


# --- Shapes ------------------------------------------------------------------------------------

def test_multiple_of_at_the_edge_and_its_hint():
    d = decl(shape_rules=(ShapeRule(dimension="hidden", multiple_of=128, source="align"),))
    assert reasons(BASE.replace(hidden_size=384), d).reasons == []
    r = only(reasons(BASE.replace(hidden_size=320), d), ReasonCode.SHAPE_UNALIGNED)
    assert (r.field, r.required, r.actual) == ("hidden", "multiple of 128", "320")
    assert r.hint == "" and r.source == "align"


def test_a_padded_rule_pads_and_an_unpadded_policy_rejects_with_the_padded_size():
    d = decl(shape_rules=(ShapeRule(dimension="intermediate", multiple_of=128, pad=True, source=SRC),))
    layer = BASE.replace(intermediate_size=320)
    assert reasons(layer, d).reasons == [] and reasons(layer, d).padding == {"intermediate": 128}
    r = only(reasons(layer, d, policy=DeclaredPriority(allow_padding=False)), ReasonCode.SHAPE_UNALIGNED)
    assert r.hint == "allow padding to 384"
    s = select_backend(layer, "h100", registry=registry(d))
    (pad,) = s.padding
    assert (pad.dimension, pad.original, pad.padded, pad.multiple_of) == ("intermediate", 320, 384, 128)
    assert pad.extra_weight_memory_pct == pytest.approx(20.0)  # 384/320 - 1


def test_two_pad_rules_on_one_dimension_pad_to_their_lcm():
    d = decl(shape_rules=(ShapeRule(dimension="intermediate", multiple_of=64, pad=True, source=SRC),
                          ShapeRule(dimension="intermediate", multiple_of=96, pad=True, source=SRC)))
    s = select_backend(BASE.replace(intermediate_size=200), "h100", registry=registry(d))
    assert [(p.dimension, p.padded, p.multiple_of) for p in s.padding] == [("intermediate", 384, 192)]


def test_rules_after_a_padded_rule_are_still_evaluated():
    d = decl(shape_rules=(ShapeRule(dimension="intermediate", multiple_of=128, pad=True, source=SRC),
                          ShapeRule(dimension="hidden", multiple_of=128, source=SRC)))
    r = only(reasons(BASE.replace(intermediate_size=320, hidden_size=320), d), ReasonCode.SHAPE_UNALIGNED)
    assert r.field == "hidden"


def test_a_conditional_rule_applies_only_when_its_condition_holds():
    d = decl(activations={a: ActivationImpl(kernel_name=a.value, source=SRC)
                          for a in (Activation.SILU, Activation.RELU2_NO_MUL)},
             shape_rules=(ShapeRule(dimension="intermediate", multiple_of=128, when=Condition(gated=False), source=SRC),))
    assert reasons(BASE.replace(intermediate_size=320), d).reasons == []
    r = only(reasons(BASE.replace(intermediate_size=320, activation="relu2_no_mul"), d), ReasonCode.SHAPE_UNALIGNED)
    assert r.required == "multiple of 128 when non-gated"


@pytest.mark.parametrize("value,ok", [(64, True), (63, False), (1024, True), (1025, False)])
def test_shape_min_and_max_edges(value, ok):
    d = decl(shape_rules=(ShapeRule(dimension="hidden", min=64, max=1024, source=SRC),))
    v = reasons(BASE.replace(hidden_size=value), d)
    if ok:
        assert v.reasons == []
    else:
        r = only(v, ReasonCode.SHAPE_OUT_OF_RANGE)
        assert (r.field, r.required, r.actual) == ("hidden", "64..1024", str(value))


def test_max_experts_edge_and_the_ep_hint():
    d = decl(max_experts=16)
    assert reasons(BASE.replace(num_experts=16, top_k=2), d).reasons == []
    r = only(reasons(BASE.replace(num_experts=48, top_k=2), d), ReasonCode.SHAPE_OUT_OF_RANGE)
    assert (r.field, r.required, r.actual) == ("experts", "<= 16 per rank", "48")
    assert r.hint == "EP3 gives 16 experts per rank"  # the smallest EP with <= 16 per rank
    ep3 = BASE.replace(num_experts=48, top_k=2, parallel=ParallelConfig(ep=3))
    assert reasons(ep3, d).reasons == []


def test_max_experts_hint_when_the_divisor_is_the_square_root():
    # 16 experts, at most 4 per rank: d = 4 = sqrt(16) is the divisor, so EP4 (a search that stops
    # below the square root would only find d = 2 and say EP8).
    r = only(reasons(BASE.replace(num_experts=16, top_k=2), decl(max_experts=4)), ReasonCode.SHAPE_OUT_OF_RANGE)
    assert r.hint == "EP4 gives 4 experts per rank"


def test_max_experts_hint_for_a_prime_count():
    r = only(reasons(BASE.replace(num_experts=17, top_k=2), decl(max_experts=16)), ReasonCode.SHAPE_OUT_OF_RANGE)
    assert r.hint == "EP17 gives 1 experts per rank"  # 17 is prime: EP17 is the only layout that divides it


def test_max_top_k_edge():
    d = decl(max_top_k=8)
    assert reasons(BASE.replace(num_experts=64, top_k=8), d).reasons == []
    r = only(reasons(BASE.replace(num_experts=64, top_k=9), d), ReasonCode.SHAPE_OUT_OF_RANGE)
    assert (r.field, r.required, r.actual) == ("top_k", "<= 8", "9")


@pytest.mark.parametrize("test,value,matches", [
    (DimTest(dimension="intermediate", multiple_of=256), 512, True),
    (DimTest(dimension="intermediate", multiple_of=256), 768 - 64, False),
    (DimTest(dimension="intermediate", not_multiple_of=256), 512, False),
    (DimTest(dimension="intermediate", min=512), 512, True),
    (DimTest(dimension="intermediate", min=512), 511, False),
    (DimTest(dimension="intermediate", max=512), 512, True),
    (DimTest(dimension="intermediate", max=512), 513, False),
])
def test_dim_test_edges(test, value, matches):
    assert test.matches(BASE.replace(intermediate_size=value)) is matches


# --- Format scale groups and parallel hints ----------------------------------------------------

def test_a_tp_shard_that_splits_scale_groups_is_rejected_with_both_parallel_hints():
    d = decl(quant=(INT4,), priority={QuantFamily.INT4: 1})
    layer = BASE.replace(quant="int4_w4a16:g128", intermediate_size=768, parallel=ParallelConfig(tp=4))
    r = only(reasons(layer, d), ReasonCode.SHAPE_UNALIGNED)  # 768/4 = 192: 1.5 groups of 128
    assert (r.field, r.required, r.actual) == ("intermediate", "multiple of 128", "192")
    assert r.hint == ("expert parallelism over the TP group (EP4: vLLM --enable-expert-parallel, SGLang --ep-size 4) keeps "
                      "intermediate 768; TP3 gives intermediate 256")
    assert reasons(layer.replace(parallel=ParallelConfig(tp=3)), d).reasons == []


def test_parallel_hint_for_a_shape_rule():
    d = decl(shape_rules=(ShapeRule(dimension="intermediate", multiple_of=256, source=SRC),))
    layer = BASE.replace(intermediate_size=1024, parallel=ParallelConfig(tp=8))  # 128 per rank
    r = only(reasons(layer, d), ReasonCode.SHAPE_UNALIGNED)
    assert r.hint == ("expert parallelism over the TP group (EP8: vLLM --enable-expert-parallel, SGLang --ep-size 8) keeps "
                      "intermediate 1024; TP4 gives intermediate 256")


# --- Limitations, routing, features, parallelism -----------------------------------------------

def test_known_limitation_applies_only_under_its_condition():
    lim = KnownLimitation(when=Condition(activations=(Activation.SILU,),
                                         dims=(DimTest(dimension="hidden", max=128),)),
                          reason="no tile for tiny hidden", hint="use H >= 256", source="lim src")
    d = decl(limitations=(lim,))
    assert reasons(BASE, d).reasons == []
    r = only(reasons(BASE.replace(hidden_size=128), d), ReasonCode.KNOWN_LIMITATION)
    assert r.message == "Test t-a: no tile for tiny hidden" and r.hint == "use H >= 256" and r.source == "lim src"


def test_routing_unsupported_without_precomputed_top_k():
    d = decl(routing=RoutingSupport(in_kernel=(RoutingMethod.DEEPSEEK_V3,), precomputed=False, source="route src"))
    assert reasons(BASE.replace(routing="deepseek_v3"), d).reasons == []
    r = only(reasons(BASE.replace(routing="softmax_topk_renorm"), d), ReasonCode.ROUTING_UNSUPPORTED)
    assert (r.field, r.required, r.actual) == ("routing", "deepseek_v3", "softmax_topk_renorm")
    unknown = reasons(BASE.replace(routing=None), d)  # routing unknown: the rule abstains
    assert unknown.reasons == [] and [n.kind for n in unknown.notes] == ["abstained"]


def test_in_kernel_routing_is_noted():
    d = decl(routing=RoutingSupport(in_kernel=(RoutingMethod.LLAMA4,), precomputed=True, source=SRC))
    v = reasons(BASE.replace(routing="llama4"), d)
    assert v.reasons == [] and v.notes[0].message == "t-a: llama4 routing runs inside the kernel"


@pytest.mark.parametrize("layer_change,field", [({"bias": True}, "bias"),
                                                ({"apply_router_weight_on_input": True}, "apply_router_weight_on_input")])
def test_features(layer_change, field):
    r = only(reasons(BASE.replace(**layer_change), decl()), ReasonCode.FEATURE_UNSUPPORTED)
    assert r.field == field
    full = decl(features=FeatureSupport(bias=True, apply_router_weight_on_input=True, source=SRC))
    assert reasons(BASE.replace(**layer_change), full).reasons == []


def test_parallel_unsupported_with_the_other_layout_as_hint():
    no_tp = decl(features=FeatureSupport(tensor_parallel=False, source=SRC))
    r = only(reasons(BASE.replace(parallel=ParallelConfig(tp=2)), no_tp), ReasonCode.PARALLEL_UNSUPPORTED)
    assert (r.field, r.required, r.actual, r.hint) == (
        "parallel.tp", "TP1", "TP2",
        "expert parallelism over the TP group instead (EP2: vLLM --enable-expert-parallel, SGLang --ep-size 2)")
    no_ep = decl(features=FeatureSupport(expert_parallel=False, source=SRC))
    r = only(reasons(BASE.replace(parallel=ParallelConfig(ep=4)), no_ep), ReasonCode.PARALLEL_UNSUPPORTED)
    assert (r.field, r.required, r.actual, r.hint) == ("parallel.ep", "EP1", "EP4", "TP4 without expert parallelism instead")
    assert reasons(BASE.replace(parallel=ParallelConfig(tp=2)), no_ep).reasons == []


# --- This machine: packages, built kernels, adapters ------------------------------------------

def never_built() -> tuple[bool, str]:
    return False, "not in the JIT cache"


CPU_DECL = dict(devices=(DeviceRule(vendor="any", source=SRC),))


def test_package_missing_and_kernel_not_built_on_this_machine():
    d = decl(**CPU_DECL, requirements=(
        Requirement(kind="package", name="no-such-dist-xyz", package="no-such-dist-xyz",
                    import_name="no_such_module_xyz", hint="pip install no-such-dist-xyz", source="req"),
        Requirement(kind="jit_module", name="fused_test", probe=f"{__name__}:never_built", build_cost="40 min",
                    hint="build it", source="jit"),
    ))
    reg = registry(d)
    v = evaluate(d, BASE, get_device("cpu"), reg.environment(), DeclaredPriority(), (d,))
    assert [r.code for r in v.reasons] == [ReasonCode.PACKAGE_MISSING, ReasonCode.KERNEL_NOT_BUILT]
    pkg, jit = v.reasons
    assert pkg.field == "environment" and pkg.hint == "pip install no-such-dist-xyz"
    assert jit.actual == "not in the JIT cache" and jit.hint == "build it; first build costs 40 min"
    planned = reasons(BASE, d, "h100")  # a named device: assumed installable, said so
    assert planned.reasons == [] and {n.kind for n in planned.notes} == {"assumed"}


def test_adapter_missing_when_running_here_but_planned_with_a_note():
    d = decl(**CPU_DECL, quant=(QuantSupport(kind=QuantKind.BF16, adapter_implemented=False, source=SRC),))
    reg = registry(d)
    here = evaluate(d, BASE, get_device("cpu"), reg.environment(), DeclaredPriority(), (d,))
    r = only(here, ReasonCode.ADAPTER_MISSING)
    assert r.field == "quant"
    planned = reasons(BASE, d, "h100")
    assert planned.reasons == [] and "adapter cannot run it yet" in planned.notes[-1].message


def test_dequantized_at_load_says_what_it_costs():
    d = decl(quant=(QuantSupport(kind=QuantKind.NVFP4, dequantized_at_load=True, source=SRC),),
             priority={QuantFamily.NVFP4: 1})
    v = reasons(BASE.replace(quant="nvfp4"), d)
    assert v.reasons == [] and v.notes[0].kind == "memory"
    assert v.notes[0].message == ("t-a dequantizes nvfp4 weights to 16-bit when the layer is built: 4x the expert "
                                  "weight memory of the checkpoint")


def test_planning_notes_every_requirement_with_its_build_cost():
    d = decl(requirements=(
        Requirement(kind="jit_module", name="fancy_jit", build_cost="40 min", hint="build it", source=SRC),
        Requirement(kind="package", name="fancy-kernels", import_name="fancy_kernels", source=SRC)))
    v = reasons(BASE, d)
    assert v.reasons == []
    assert [n.message for n in v.notes] == [
        "t-a: planning for h100 (SM90) assumes built kernel module fancy_jit is available on it (first build: 40 min)",
        "t-a: planning for h100 (SM90) assumes package fancy-kernels is available on it"]


# --- Ordering: priority, padding tie-break, force, prefer, forbid, env --------------------------

A = decl("t-a", priority={QuantFamily.UNQUANTIZED: 50})
B = decl("t-b", priority={QuantFamily.UNQUANTIZED: 90})
C = decl("t-c", priority={QuantFamily.UNQUANTIZED: 90},
         shape_rules=(ShapeRule(dimension="hidden", multiple_of=512, pad=True, source=SRC),))
D = decl("t-d", priority={QuantFamily.UNQUANTIZED: 50})


def test_priority_then_no_padding_then_id():
    s = select_backend(BASE, "h100", registry=registry(A, B, C, D))
    assert [c.backend for c in s.eligible] == ["t-b", "t-c", "t-a", "t-d"]
    assert_selected(s, "t-b", decided_by="priority")
    # Without B, the padded C still outranks the unpadded lower-priority ones.
    assert_selected(select_backend(BASE, "h100", registry=registry(A, C, D)), "t-c")


def test_a_family_without_priority_ranks_as_zero():
    fp8_only_low = decl("t-z", quant=(QuantSupport(kind=QuantKind.FP8, source=SRC),), priority={QuantFamily.FP8: 0})
    fp8 = decl("t-y", quant=(QuantSupport(kind=QuantKind.FP8, source=SRC),), priority={QuantFamily.FP8: 1})
    s = select_backend(BASE.replace(quant="fp8"), "h100", registry=registry(fp8_only_low, fp8))
    assert [c.backend for c in s.eligible] == ["t-y", "t-z"]


def test_prefer_reorders_eligible_backends_only():
    reg = registry(A, B, decl("t-x", devices=(DeviceRule(sm=(100,), source=SRC),)))
    s = select_backend(BASE, "h100", prefer=("t-x", "t-a"), registry=reg)
    assert_selected(s, "t-a", decided_by="preferred")
    assert [c.backend for c in s.eligible] == ["t-a", "t-b"]


def test_force_picks_an_eligible_backend_and_refuses_an_ineligible_one():
    reg = registry(A, B, decl("t-x", devices=(DeviceRule(sm=(100,), source=SRC),)))
    s = select_backend(BASE, "h100", force="t-a", registry=reg)
    assert_selected(s, "t-a", decided_by="forced")
    with pytest.raises(BackendNotEligible) as err:
        select_backend(BASE, "h100", force="t-x", registry=reg)
    assert [r.code for r in err.value.reasons] == [ReasonCode.DEVICE_UNSUPPORTED]


def test_environment_override_forces(monkeypatch):
    monkeypatch.setenv("MOE_REGISTRY_BACKEND", "t-a")
    s = select_backend(BASE, "h100", registry=registry(A, B))
    assert_selected(s, "t-a", decided_by="env")


def test_forbid_rejects_with_its_own_reason_and_can_leave_nothing():
    s = select_backend(BASE, "h100", forbid=("t-b",), registry=registry(A, B))
    assert_selected(s, "t-a")
    r = s.rejection("t-b").reasons[-1]
    assert (r.code, r.field) == (ReasonCode.FORBIDDEN, "forbid")
    with pytest.raises(NoEligibleBackend):
        select_backend(BASE, "h100", forbid=("t-a", "t-b"), registry=registry(A, B))


def test_fingerprint_inputs():
    reg = registry(A, B)
    base = select_backend(BASE, "h100", registry=reg).fingerprint
    named = select_backend(BASE.replace(name="layers.3.experts", index=3), "h100", registry=reg).fingerprint
    assert named == base  # names are not part of what selection depends on
    for variant in (select_backend(BASE, "h100", force="t-b", registry=reg),
                    select_backend(BASE, "h100", prefer=("t-a",), registry=reg),
                    select_backend(BASE, "h100", forbid=("t-a",), registry=reg),
                    select_backend(BASE, "h200", registry=reg),
                    select_backend(BASE.replace(top_k=3), "h100", registry=reg),
                    select_backend(BASE, "h100", registry=registry(A, B, D))):
        assert variant.fingerprint != base
