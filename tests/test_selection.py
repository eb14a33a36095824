"""Selection: the seed cases, every reason with hints, force / prefer / forbid, env override,
abstention, padding, fingerprints."""

from __future__ import annotations

import pytest

from moe_registry import LayerSpec, ParallelConfig, select_backend
from moe_registry.errors import BackendNotEligible, NoEligibleBackend, UnknownBackend
from moe_registry.registry import Registry
from moe_registry.schemas.device import get_device
from moe_registry.schemas.layer import RoutingMethod
from moe_registry.schemas.selection import ReasonCode
from moe_registry.selection import DeclaredPriority

from _decl_helpers import assert_selected

GEMMA4 = LayerSpec(name="model.language_model.layers.0.experts", index=0, num_experts=128, top_k=8,
                   hidden_size=2816, intermediate_size=704, activation="gelu_tanh", quant="nvfp4")


def codes(selection, backend):
    rejection = selection.rejection(backend)
    return set() if rejection is None else rejection.codes()


# --- The seed cases ---------------------------------------------------------------------------

def test_gemma4_nvfp4_on_b200_selects_trtllm():
    s = select_backend(GEMMA4, "b200")
    assert_selected(s, "trtllm-fp4")
    assert s.decided_by == "priority"
    assert s.engines["vllm"] == "flashinfer_trtllm"
    # gelu_tanh runs through the Geglu gate: accepted, but said out loud.
    assert any(n.kind == "approximation" and "gelu_tanh" in n.message for n in s.notes)


def test_gemma4_nvfp4_on_h100_rejects_trtllm_for_the_device_and_names_the_fallback():
    s = select_backend(GEMMA4, "h100")
    trt = s.rejection("trtllm-fp4")
    assert trt is not None and trt.codes() == {ReasonCode.DEVICE_UNSUPPORTED}
    reason = trt.reasons[0]
    assert "SM100" in reason.required and "SM90" in reason.actual
    assert "b200" in reason.hint and "SM100" in reason.hint
    assert codes(s, "flashinfer-cutlass") == {ReasonCode.QUANT_UNSUPPORTED}
    assert "nvfp4" in s.rejection("flashinfer-cutlass").reasons[0].message
    # The fallback is named: vLLM 0.33's own choice on Hopper (Humming ahead of Marlin, prefers_humming).
    assert_selected(s, "humming")
    assert [c.backend for c in s.eligible][:3] == ["humming", "marlin", "torch-grouped-mm"]


def test_limitations_are_judged_on_the_padded_size_the_kernel_sees():
    """Audit T14: the relu2 tile limitation is stated on the unpadded 704, but TRT-LLM-gen's weight prep
    pads a non-gated intermediate to 128 (704 -> 768 = 3 x 256), so the kernel never sees 704."""
    relu2 = select_backend(GEMMA4.replace(activation="relu2_no_mul"), "b200")
    assert_selected(relu2, "trtllm-fp4")
    assert codes(relu2, "trtllm-fp4") == set()
    assert [(p.dimension, p.original, p.padded) for p in relu2.padding] == [("intermediate", 704, 768)]
    # Without padding the kernel would see 704: the seed case is explained again, limitation and all.
    unpadded = select_backend(GEMMA4.replace(activation="relu2_no_mul"), "b200",
                              policy=DeclaredPriority(allow_padding=False))
    (reason,) = unpadded.rejection("trtllm-fp4").reasons
    assert reason.code is ReasonCode.SHAPE_UNALIGNED and reason.required == "multiple of 128 when non-gated"
    assert "704" in reason.source and "GEMM1 rows" in reason.source and "2688" in reason.source
    gelu = select_backend(GEMMA4.replace(activation="gelu"), "b200")
    assert_selected(gelu, "trtllm-fp4")
    assert gelu.rejection("trtllm-fp4") is None
    assert not any(n.kind == "approximation" for n in gelu.notes)  # exact erf GeGLU


def test_relu2_at_a_multiple_of_256_is_not_limited():
    s = select_backend(GEMMA4.replace(activation="relu2_no_mul", intermediate_size=1024), "b200")
    assert_selected(s, "trtllm-fp4")


# --- Every reason, not the first --------------------------------------------------------------

def test_every_failing_rule_is_reported():
    layer = LayerSpec(num_experts=8, top_k=2, hidden_size=96, intermediate_size=96, activation="gelu_tanh",
                      quant="int4_w4a16:g32:act_order", dtype="fp32", bias=True, apply_router_weight_on_input=True)
    s = select_backend(layer, "h100")
    marlin = codes(s, "marlin")
    # fp32 hidden states, act_order, hidden % 128, router weight on input with top-2 (the adapter's limit):
    # all of them, not the first. Intermediate 96 pads to 128 and biases run, so neither is a reason.
    assert {ReasonCode.DTYPE_UNSUPPORTED, ReasonCode.QUANT_OPTION_UNSUPPORTED, ReasonCode.SHAPE_UNALIGNED,
            ReasonCode.KNOWN_LIMITATION} == marlin
    assert [r.field for r in s.rejection("marlin").reasons if r.code is ReasonCode.SHAPE_UNALIGNED] == ["hidden"]
    assert len(s.rejection("marlin").reasons) == 4
    assert_selected(s, "reference")


def test_tp_shard_that_splits_scale_groups_is_padded_to_whole_groups_and_keeps_the_ep_hint():
    # 704 / TP8 = 88 = 5.5 NvFP4 groups of 16. TRT-LLM-gen pads a gated intermediate to 64; ranks
    # hold whole groups (shards cut on the 16-grid), so the kernel sees lcm(64, 16) -> 128.
    s = select_backend(GEMMA4.replace(parallel=ParallelConfig(tp=8)), "b200")
    assert_selected(s, "trtllm-fp4")
    (pad,) = s.padding
    assert (pad.dimension, pad.original, pad.padded, pad.multiple_of) == ("intermediate", 88, 128, 64)
    assert pad.extra_weight_memory_pct == pytest.approx(100 * (128 / 88 - 1), abs=0.01)  # 45.45 %
    assert any(n.kind == "padding" and "96 per rank" in n.message for n in s.notes)
    ep8 = "(EP8: vLLM --enable-expert-parallel, SGLang --ep-size 8) keeps intermediate 704"
    assert any(n.kind == "hint" and ep8 in n.message for n in s.notes)
    # A backend that pads the intermediate to 8 holds whole groups too: 88 -> 96 (torch grouped GEMM).
    grouped = next(c for c in s.eligible if c.backend == "torch-grouped-mm")
    assert [(p.original, p.padded, p.multiple_of) for p in grouped.padding] == [(88, 96, 16)]
    # The reference declares no padding: it cannot hold whole groups, and says so with the hint.
    ref = s.rejection("reference").reasons
    assert [(r.code, r.actual) for r in ref] == [(ReasonCode.SHAPE_UNALIGNED, "88")]
    assert "(EP8: vLLM --enable-expert-parallel, SGLang --ep-size 8) keeps intermediate 704" in ref[0].hint
    # Without padding no backend can: exit 3 territory, every reason with the EP hint.
    with pytest.raises(NoEligibleBackend) as err:
        select_backend(GEMMA4.replace(parallel=ParallelConfig(tp=8)), "b200", policy=DeclaredPriority(allow_padding=False))
    reasons = [r for rej in err.value.rejections for r in rej.reasons if r.field == "intermediate"]
    assert reasons and all(r.actual == "88" for r in reasons)
    assert any("(EP8: vLLM --enable-expert-parallel, SGLang --ep-size 8) keeps intermediate 704" in r.hint for r in reasons)
    s_ep8 = select_backend(GEMMA4.replace(parallel=ParallelConfig(ep=8)), "b200")
    assert_selected(s_ep8, "trtllm-fp4")
    assert s_ep8.layer.local_num_experts == 16 and not s_ep8.padding


def test_a_checkpoint_without_whole_groups_is_not_rescued_by_padding():
    # fp8_block at I=704: 704 % 128 != 0, so TP2's 352 cuts a partial block that no grid makes whole
    # (vLLM 0.33 oracle/fp8.py L337-346 raises for it too).
    layer = GEMMA4.replace(quant="fp8_block", parallel=ParallelConfig(tp=2))
    with pytest.raises(NoEligibleBackend) as err:
        select_backend(layer, "b200", forbid=())
    for rejection in err.value.rejections:
        assert any(r.code is ReasonCode.SHAPE_UNALIGNED and r.actual == "352" for r in rejection.reasons)


def test_padding_is_applied_and_costed():
    # TRT-LLM-gen weight prep pads a gated intermediate to a multiple of 64 (vLLM flashinfer_fp4_moe.py).
    gated = select_backend(GEMMA4.replace(intermediate_size=720), "b200")  # 720 % 64 = 16
    assert_selected(gated, "trtllm-fp4")
    (pad,) = gated.padding
    assert (pad.dimension, pad.original, pad.padded, pad.multiple_of) == ("intermediate", 720, 768, 64)
    assert pad.extra_weight_memory_pct == pytest.approx(100 * (768 / 720 - 1), abs=0.01)
    assert pad.extra_flops_pct == pad.extra_weight_memory_pct
    no_pad = select_backend(GEMMA4.replace(intermediate_size=720), "b200",
                            policy=DeclaredPriority(allow_padding=False))
    assert no_pad.backend != "trtllm-fp4"
    hint = no_pad.rejection("trtllm-fp4").reasons[0].hint
    assert "allow padding to 768" in hint


def test_exact_activation_policy_rejects_approximations():
    s = select_backend(GEMMA4, "b200", policy=DeclaredPriority(exact_activations=True))
    assert codes(s, "trtllm-fp4") == {ReasonCode.ACTIVATION_APPROXIMATE}
    assert_selected(s, "flashinfer-cutlass")  # runs GegluTanh itself


# --- Unknown is not false ---------------------------------------------------------------------

def test_unknown_routing_abstains_and_known_routing_is_checked():
    s = select_backend(GEMMA4, "b200")
    assert any(n.kind == "abstained" and "routing" in n.message for n in s.notes)
    known = select_backend(GEMMA4.replace(routing=RoutingMethod.DEEPSEEK_V3), "b200")
    assert any(n.kind == "routing" for n in known.notes)
    assert not any(n.kind == "abstained" for n in known.notes)


# --- force / prefer / forbid / env ------------------------------------------------------------

def test_force_eligible_and_ineligible():
    s = select_backend(GEMMA4, "h100", force="torch-grouped-mm")
    assert_selected(s, "torch-grouped-mm", decided_by="forced")
    with pytest.raises(BackendNotEligible) as err:
        select_backend(GEMMA4, "h100", force="trtllm-fp4")
    assert err.value.backend == "trtllm-fp4"
    assert [r.code for r in err.value.reasons] == [ReasonCode.DEVICE_UNSUPPORTED]
    assert "SM100" in str(err.value) and "\n" not in str(err.value)


def test_prefer_and_forbid():
    s = select_backend(GEMMA4, "h100", prefer=["reference", "torch-grouped-mm"])
    assert_selected(s, "reference", decided_by="preferred")
    s = select_backend(GEMMA4, "h100", forbid=["humming", "marlin"])
    assert_selected(s, "torch-grouped-mm")
    assert ReasonCode.FORBIDDEN in codes(s, "marlin") and ReasonCode.FORBIDDEN in codes(s, "humming")
    with pytest.raises(UnknownBackend):
        select_backend(GEMMA4, "h100", prefer=["marlinn"])


def test_environment_variable_forces(monkeypatch):
    monkeypatch.setenv("MOE_REGISTRY_BACKEND", "reference")
    s = select_backend(GEMMA4, "h100")
    assert_selected(s, "reference", decided_by="env")
    monkeypatch.setenv("MOE_REGISTRY_BACKEND", "trtllm-fp4")
    with pytest.raises(BackendNotEligible) as err:
        select_backend(GEMMA4, "h100")
    assert str(err.value).startswith("env backend")


def test_no_eligible_backend_carries_every_rejection():
    registry = Registry(builtins=True, entry_points=False)
    with pytest.raises(NoEligibleBackend) as err:
        select_backend(GEMMA4, "h100", forbid=registry.ids(), registry=registry)
    assert {r.backend for r in err.value.rejections} == set(registry.ids())
    assert "\n" not in str(err.value)


# --- This machine vs a planned target ---------------------------------------------------------

def test_planning_notes_assumed_packages():
    s = select_backend(GEMMA4.replace(quant="int4_w4a16", intermediate_size=768), "h100")
    # int4 on SM90: Humming ahead of Marlin, as vLLM's prefers_humming ranks it; Marlin stays eligible.
    assert_selected(s, "humming")
    assert s.planning
    assert any(n.kind == "assumed" and "humming-kernels" in n.message for n in s.notes)
    marlin = next(c for c in s.eligible if c.backend == "marlin")
    assert any(n.kind == "assumed" and "_moe_C" in n.message for n in marlin.notes)


def test_this_machine_checks_packages(monkeypatch):
    monkeypatch.setenv("MOE_REGISTRY_DEVICE", "h100")
    from moe_registry.environment import detect_device

    detect_device.cache_clear()
    registry = Registry(entry_points=False)
    try:
        s = select_backend(GEMMA4.replace(quant="int4_w4a16", intermediate_size=768), registry=registry)
    finally:
        detect_device.cache_clear()
    assert not s.planning and s.device.name == "h100"
    marlin = s.rejection("marlin")
    # No vLLM here (CI and this machine): the reason says what to install, not "unsupported device".
    assert marlin is not None and marlin.codes() == {ReasonCode.PACKAGE_MISSING}
    assert "pip install vllm" in marlin.reasons[0].hint


def test_selection_fingerprint_is_stable_and_sensitive():
    a = select_backend(GEMMA4, "b200")
    b = select_backend(GEMMA4.replace(name="other.name", index=5), "b200")
    assert a.fingerprint == b.fingerprint  # names do not change the decision
    assert a.fingerprint != select_backend(GEMMA4, "gb200").fingerprint
    assert a.fingerprint != select_backend(GEMMA4.replace(top_k=4), "b200").fingerprint
    assert len(a.fingerprint) == 16


def test_selection_round_trips_through_json():
    s = select_backend(GEMMA4, "h100")
    from moe_registry.schemas.selection import Selection

    assert Selection.model_validate_json(s.model_dump_json()) == s


def test_describe_is_one_line():
    line = select_backend(GEMMA4, "h100").describe()
    assert "\n" not in line and "humming" in line and "trtllm-fp4 (device_unsupported)" in line


def test_device_objects_and_names_agree():
    assert select_backend(GEMMA4, get_device("B200")).backend == select_backend(GEMMA4, "b200").backend
