"""The TRT-LLM-gen family's declarations (no torch): what each bundled model plans on B200 against
H100, per-routing-method top-k / expert bounds (generic in RoutingSupport and selection), SwiGLU-OAI
and bias where the kernel takes them, and the seed's relu2 case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_registry import LayerSpec, select_backend
from moe_registry.backends.trtllm_gen import DECLARATIONS, _facts
from moe_registry.cli import main
from moe_registry.registry import Registry
from moe_registry.schemas.capability import RoutingLimit, RoutingSupport
from moe_registry.schemas.layer import RoutingMethod
from moe_registry.schemas.selection import ReasonCode

from _decl_helpers import assert_selected

TRTLLM_IDS = {"trtllm-fp4", "trtllm-fp8", "trtllm-fp8-channel", "trtllm-fp8-block", "trtllm-bf16", "trtllm-mxint4"}


def plan(capsys, model: str, device: str, *extra: str) -> list[dict]:
    code = main(["explain", model, "--device", device, "--json", *extra])
    out, _ = capsys.readouterr()
    assert code == 0
    return json.loads(out)["groups"]


def backends(groups: list[dict]) -> set[str]:
    return {g["selection"]["backend"] for g in groups}


# --- What vLLM picks on SM100, we pick; on Hopper, none of the family -------------------------------------

@pytest.mark.parametrize("model,extra,b200", [
    ("deepseek-v3", (), "trtllm-fp8-block"),
    ("qwen3-235b-a22b", ("--quant", "fp8_block"), "trtllm-fp8-block"),
    ("qwen3-235b-a22b", (), "trtllm-bf16"),  # the bundled preset is the bf16 checkpoint
    ("gpt-oss-120b", (), "trtllm-fp4"),
    ("gemma-4-26b-a4b-nvfp4", (), "trtllm-fp4"),
])
def test_b200_picks_the_trtllm_gen_kernel_h100_does_not(capsys, model, extra, b200):
    groups = plan(capsys, model, "b200", *extra)
    assert backends(groups) == {b200}
    for g in groups:
        assert g["selection"]["engines"]["vllm"] == "flashinfer_trtllm"
    assert not backends(plan(capsys, model, "h100", *extra)) & TRTLLM_IDS


def test_gpt_oss_on_b200_is_mxfp4_x_bf16_padded_as_vllm_pads(capsys):
    (group,) = plan(capsys, "gpt-oss-120b", "b200")
    s = group["selection"]
    assert group["layer"]["quant"]["kind"] == "mxfp4"  # MXFP4 weights, bf16 activations
    assert group["layer"]["activation"] == "swigluoai" and group["layer"]["bias"] is True
    assert {(p["dimension"], p["original"], p["padded"]) for p in s["padding"]} == {
        ("hidden", 2880, 3072), ("intermediate", 2880, 2944)}


def test_gemma4_nvfp4_on_b200_keeps_the_gelu_tanh_approximation_note(capsys):
    (group,) = plan(capsys, "gemma-4-26b-a4b-nvfp4", "b200")
    notes = [n for n in group["selection"]["notes"] if n["kind"] == "approximation"]
    assert len(notes) == 1 and "gelu_tanh as Geglu" in notes[0]["message"]


def test_deepseek_routes_in_kernel_within_the_deepseek_bounds(capsys):
    (group,) = plan(capsys, "deepseek-v3", "b200")
    assert any("deepseek_v3 routing runs inside the kernel" in n["message"] for n in group["selection"]["notes"])


# --- Routing bounds ------------------------------------------------------------------------------------

def fp8_block(**kw) -> LayerSpec:
    base = dict(num_experts=256, top_k=8, hidden_size=7168, intermediate_size=2048, quant="fp8_block",
                routing="deepseek_v3")
    base.update(kw)
    return LayerSpec(**base)


def test_in_kernel_bound_exceeded_falls_back_to_precomputed_with_a_note():
    # Default (softmax -> top-k) has tiers up to 256 experts / top-8 only; 384 experts exceed them.
    s = select_backend(fp8_block(num_experts=384, routing="softmax_topk"), "b200")
    assert_selected(s, "trtllm-fp8-block")
    (note,) = [n for n in s.notes if n.kind == "routing"]
    assert "exceeds the kernel's in-kernel bounds" in note.message and "experts <= 256" in note.message


def test_precomputed_bound_rejects_with_the_routing_source():
    s = select_backend(fp8_block(num_experts=4096, top_k=8, routing=None), "b200")
    (reason,) = s.rejection("trtllm-fp8-block").reasons
    assert reason.code is ReasonCode.SHAPE_OUT_OF_RANGE and reason.field == "experts"
    assert reason.required == "<= 2048" and "MaxSupportedExperts = 2048" in reason.source
    llama = select_backend(fp8_block(quant="fp8", top_k=2, num_experts=16, routing="llama4"), "b200")
    assert_selected(llama, "trtllm-fp8")  # top-2 exceeds Llama4's top-1, precomputed top-k takes it
    assert any("llama4 exceeds" in n.message and "top_k <= 1" in n.message for n in llama.notes)


def test_routing_bounds_are_generic_for_any_backend():
    """A backend that routes in-kernel only (no precomputed path) is rejected by the method's bound."""
    only_in_kernel = RoutingSupport(in_kernel=(RoutingMethod.SOFTMAX_TOPK,), precomputed=False, source="test",
                                    limits=(RoutingLimit(methods=(RoutingMethod.SOFTMAX_TOPK,), max_top_k=4,
                                                         source="test bound"),))
    decl = next(d for d in DECLARATIONS if d.id == "trtllm-fp8-block").model_copy(update={"routing": only_in_kernel})
    registry = Registry(entry_points=False).with_declaration(decl)
    s = select_backend(fp8_block(routing="softmax_topk", num_experts=64), "b200", registry=registry)
    (reason,) = s.rejection("trtllm-fp8-block").reasons
    assert reason.field == "top_k" and reason.required == "<= 4" and reason.source == "test bound"
    with pytest.raises(ValueError, match="one entry per method"):
        RoutingSupport(in_kernel=(RoutingMethod.SIGMOID,), source="x", limits=(
            RoutingLimit(methods=(RoutingMethod.SIGMOID,), source="a"), RoutingLimit(methods=(RoutingMethod.SIGMOID,),
                                                                                    source="b")))


def test_every_in_kernel_method_has_a_bound_and_default_routing_is_declared():
    for decl in DECLARATIONS:
        assert RoutingMethod.SOFTMAX_TOPK in decl.routing.in_kernel  # T22: Default (softmax -> top-k)
        assert decl.routing.limit_for(None) is not None  # the precomputed path's bound
        for method in decl.routing.in_kernel:
            assert decl.routing.limit_for(method) is not None, (decl.id, method)
    assert _facts.DEVICES[0].sm == (100, 103, 107)


# --- Features where the kernel takes them ---------------------------------------------------------------

def test_swigluoai_with_biases_runs_on_fp4_but_not_without_bias_support():
    layer = LayerSpec(num_experts=32, top_k=4, hidden_size=2880, intermediate_size=2880, activation="swigluoai",
                      bias=True, quant="mxfp4", routing="topk_softmax")
    s = select_backend(layer, "b200")
    assert_selected(s, "trtllm-fp4")
    bf16 = select_backend(layer.replace(quant="bf16"), "b200")
    assert bf16.rejection("trtllm-bf16").codes() == {ReasonCode.FEATURE_UNSUPPORTED}  # no bias argument
    no_bias = select_backend(layer.replace(quant="bf16", bias=False), "b200")
    assert_selected(no_bias, "trtllm-bf16")


def test_fp8_per_tensor_takes_router_weight_on_input():
    layer = LayerSpec(num_experts=16, top_k=1, hidden_size=5120, intermediate_size=8192, quant="fp8",
                      routing="llama4", apply_router_weight_on_input=True)
    s = select_backend(layer, "b200")
    assert_selected(s, "trtllm-fp8")
    assert any("llama4 routing runs inside the kernel" in n.message for n in s.notes)


def test_mxint4_is_int4_g32_symmetric_and_below_marlin():
    layer = LayerSpec(num_experts=64, top_k=8, hidden_size=2048, intermediate_size=1024, quant="int4_w4a16:g32")
    s = select_backend(layer, "b200")
    assert_selected(s, "marlin")  # vLLM uses MXINT4 only with VLLM_USE_FLASHINFER_MOE_INT4=1
    assert "trtllm-mxint4" in [c.backend for c in s.eligible]
    zp = select_backend(layer.replace(quant="int4_w4a16:g32:zp"), "b200")
    assert zp.rejection("trtllm-mxint4").codes() == {ReasonCode.QUANT_OPTION_UNSUPPORTED}
    g128 = select_backend(layer.replace(quant="int4_w4a16:g128"), "b200")
    assert g128.rejection("trtllm-mxint4").codes() == {ReasonCode.QUANT_OPTION_UNSUPPORTED}


def test_fp8_channel_is_planning_only():
    layer = LayerSpec(num_experts=64, top_k=8, hidden_size=2048, intermediate_size=1024, quant="fp8_channel")
    s = select_backend(layer, "b200")
    assert_selected(s, "trtllm-fp8-channel")
    assert any("adapter cannot run it yet" in n.message for n in s.notes)


def test_install_hint_is_a_command_that_names_the_version():
    for decl in DECLARATIONS:
        (req,) = decl.requirements
        assert req.hint.startswith("pip install flashinfer-python==0.7.2.post1")
        assert "install flashinfer-cubin" not in req.hint


def test_docs_name_no_old_id():
    root = Path(__file__).resolve().parents[1]
    for path in [root / "README.md", *(root / "docs").rglob("*.md")]:
        assert "trtllm-nvfp4" not in path.read_text(), path


def test_every_adapter_named_by_a_declaration_imports():
    pytest.importorskip("torch")
    import importlib

    for decl in DECLARATIONS:
        if decl.adapter is None:
            assert all(not s.adapter_implemented for s in decl.quant), decl.id  # planning-only
            continue
        module, cls = decl.adapter.split(":")
        adapter = getattr(importlib.import_module(module), cls)
        assert adapter.backend == decl.id


def test_fp8_block_launcher_bounds_deepseek_top_k_more_tightly():
    block = next(d for d in DECLARATIONS if d.id == "trtllm-fp8-block")
    fp4 = next(d for d in DECLARATIONS if d.id == "trtllm-fp4")
    assert block.routing.limit_for(RoutingMethod.DEEPSEEK_V3).max_top_k == 8
    assert fp4.routing.limit_for(RoutingMethod.DEEPSEEK_V3).max_top_k == 22
    s = select_backend(fp8_block(top_k=12, num_experts=256), "b200")
    assert_selected(s, "trtllm-fp8-block")
    assert any("deepseek_v3 exceeds" in n.message and "top_k <= 8" in n.message for n in s.notes)
