"""Planner inputs, layer schedules, typed one-line errors and the selection hand-off (CPU)."""

from __future__ import annotations

import json
import sys

import pytest

from moe_registry import models
from moe_registry.planner import (
    ConfigNotFound,
    InvalidLayer,
    MalformedConfig,
    ModelPlan,
    NotAMoEModel,
    ParallelismError,
    PlanError,
    SelectionUnavailable,
    UnknownPreset,
    plan_config,
    plan_model,
)
from moe_registry.schemas.device import PRESETS
from moe_registry.schemas.layer import ParallelConfig, RoutingMethod
from moe_registry.schemas.selection import Selection


def preset_config(name: str) -> dict:
    return {k: v for k, v in json.loads(models.preset_text(name)).items() if not k.startswith("_")}


def indices(plan) -> list[int]:
    return [p.layer.index for p in plan.layers]


def one_line_error(exc_type, fn, *args, **kwargs) -> str:
    with pytest.raises(exc_type) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert isinstance(err.value, PlanError) and isinstance(err.value, ValueError)
    assert msg and "\n" not in msg
    return msg


# --- Inputs ----------------------------------------------------------------------------------


def test_model_directory_and_config_json_path(tmp_path):
    (tmp_path / "Mixtral-8x7B").mkdir()
    config_path = tmp_path / "Mixtral-8x7B" / "config.json"
    config_path.write_text(json.dumps(preset_config("mixtral-8x7b")))
    by_dir = plan_model(tmp_path / "Mixtral-8x7B", select=False)
    by_file = plan_model(str(config_path), select=False)
    assert by_dir.model == by_file.model == "Mixtral-8x7B"
    assert by_dir.source == by_file.source == str(config_path)
    assert by_dir.layer_specs == by_file.layer_specs == plan_model("mixtral-8x7b", select=False).layer_specs


def test_a_json_file_with_another_name_is_read_as_the_config(tmp_path):
    path = tmp_path / "deepseek.json"
    path.write_text(json.dumps(preset_config("deepseek-v3")))
    plan = plan_model(path, select=False)
    assert plan.model == "deepseek" and len(plan.layers) == 58 and plan.layers[0].layer.quant.label() == "fp8_block"


def test_gemma4_nvfp4_as_a_model_directory_with_hf_quant_config(tmp_path):
    data = json.loads(models.preset_text("gemma-4-26b-a4b-nvfp4"))
    (tmp_path / "config.json").write_text(json.dumps(preset_config("gemma-4-26b-a4b-nvfp4")))
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(data["_hf_quant_config"]))
    plan = plan_model(tmp_path, select=False)
    assert {p.layer.quant.label() for p in plan.layers} == {"nvfp4"}
    assert plan.layers[3].layer.name == "model.language_model.layers.3.experts"


def test_plan_config_in_memory_and_json_round_trip():
    plan = plan_config(preset_config("qwen3-30b-a3b"), device="h100", name="qwen", select=False)
    assert plan.device == PRESETS["h100"] and plan.model == "qwen"
    assert ModelPlan.model_validate_json(plan.model_dump_json()) == plan


# --- Errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ['{"model_type": "mixtral", "hidden_size": 4096,', "", "{'single': 'quotes'}",
                                  '{"a": 1} trailing'])
def test_malformed_or_truncated_json(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    msg = one_line_error(MalformedConfig, plan_model, tmp_path, select=False)
    assert str(tmp_path / "config.json") in msg and "not valid JSON" in msg and "line" in msg


def test_malformed_hf_quant_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(preset_config("qwen3-30b-a3b")))
    (tmp_path / "hf_quant_config.json").write_text('{"quantization": {"quant_algo": "NVFP4"')
    assert "hf_quant_config.json" in one_line_error(MalformedConfig, plan_model, tmp_path, select=False)


def test_json_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2, 3]")
    assert "JSON object" in one_line_error(MalformedConfig, plan_model, tmp_path, select=False)


def test_missing_files_and_directories(tmp_path):
    assert "has no config.json" in one_line_error(ConfigNotFound, plan_model, tmp_path, select=False)
    missing = tmp_path / "nope" / "config.json"
    assert str(missing) in one_line_error(ConfigNotFound, plan_model, str(missing), select=False)
    one_line_error(ConfigNotFound, plan_model, "./no-such-model-dir", select=False)


def test_unknown_preset_lists_the_presets():
    msg = one_line_error(UnknownPreset, plan_model, "gemma-5-huge", select=False)
    assert "gemma-4-26b-a4b" in msg and "deepseek-v3" in msg
    one_line_error(UnknownPreset, plan_model, "someorg/unknown-model", select=False)


def test_dense_config_is_not_a_moe_model():
    dense = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
             "hidden_act": "silu"}
    assert "declares no routed experts" in one_line_error(NotAMoEModel, plan_config, dense, select=False)
    zero = {**preset_config("qwen3-30b-a3b"), "num_experts": 0}
    one_line_error(NotAMoEModel, plan_config, zero, select=False)
    gemma = preset_config("gemma-4-26b-a4b")
    gemma["text_config"] = {**gemma["text_config"], "enable_moe_block": False}
    assert "enable_moe_block" in one_line_error(NotAMoEModel, plan_config, gemma, select=False)


@pytest.mark.parametrize("drop,change,expect", [
    ("hidden_size", {}, "has no hidden_size"),
    (None, {"num_experts_per_tok": "8"}, "num_experts_per_tok must be an integer"),
    (None, {"moe_intermediate_size": -1}, "moe_intermediate_size must be an integer >= 1"),
    (None, {"hidden_act": "swishy"}, "unknown activation 'swishy'"),
    (None, {"mlp_only_layers": "0"}, "mlp_only_layers must be a list"),
])
def test_bad_keys_name_the_key(drop, change, expect):
    config = {**preset_config("qwen3-30b-a3b"), **change}
    if drop:
        del config[drop]
    assert expect in one_line_error(MalformedConfig, plan_config, config, select=False)


def test_tp_and_ep_that_do_not_divide_name_the_layer():
    msg = one_line_error(ParallelismError, plan_model, "gemma-4-26b-a4b", parallel=ParallelConfig(tp=3), select=False)
    assert msg.startswith("model.language_model.layers.0.experts (layer 0):") and "TP3" in msg and "704" in msg
    msg = one_line_error(ParallelismError, plan_model, "deepseek-v3", parallel=ParallelConfig(ep=3), select=False)
    assert msg.startswith("model.layers.3.mlp.experts (layer 3):") and "EP3" in msg and "256" in msg


def test_other_layer_errors_are_invalid_layer():
    config = {**preset_config("mixtral-8x7b"), "num_experts_per_tok": 9}
    assert "top_k (9) exceeds num_experts (8)" in one_line_error(InvalidLayer, plan_config, config, select=False)


def test_unknown_device_is_a_plan_error():
    assert "unknown device 'tpu9'" in one_line_error(PlanError, plan_model, "qwen3-30b-a3b", device="tpu9", select=False)


# --- Layer schedules ------------------------------------------------------------------------------


def small(**keys) -> dict:
    return {"hidden_size": 64, "moe_intermediate_size": 32, "intermediate_size": 128, "num_experts_per_tok": 2,
            "hidden_act": "silu", **keys}


def test_deepseek_first_k_dense_and_layer_frequency():
    cfg = small(model_type="deepseek_v3", n_routed_experts=8, num_hidden_layers=8, first_k_dense_replace=1,
                moe_layer_freq=2, scoring_func="sigmoid")
    plan = plan_config(cfg, select=False)
    assert indices(plan) == [2, 4, 6] and plan.layers[0].layer.routing is RoutingMethod.DEEPSEEK_V3


def test_qwen_sparse_step_and_mlp_only_layers():
    cfg = small(model_type="qwen2_moe", num_experts=8, num_hidden_layers=8, decoder_sparse_step=2,
                mlp_only_layers=[3], norm_topk_prob=False)
    plan = plan_config(cfg, select=False)
    assert indices(plan) == [1, 5, 7] and plan.layers[0].layer.routing is RoutingMethod.SOFTMAX_TOPK


def test_llama4_interleave_step_and_explicit_moe_layers():
    text = small(model_type="llama4_text", num_local_experts=16, num_experts_per_tok=1, num_hidden_layers=6,
                 interleave_moe_layer_step=2)
    wrapped = {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4", "text_config": text}
    plan = plan_config(wrapped, select=False)
    assert indices(plan) == [1, 3, 5]
    assert plan.layers[0].layer.name == "language_model.model.layers.1.feed_forward.experts"
    assert indices(plan_config({**text, "moe_layers": [0, 4]}, select=False)) == [0, 4]
    assert plan_config(text, select=False).layers[0].layer.name == "model.layers.1.feed_forward.experts"


def test_nemotron_layers_block_type_and_pattern_length():
    cfg = small(model_type="nemotron_h", n_routed_experts=8, num_hidden_layers=4, mlp_hidden_act="relu2",
                layers_block_type=["mamba", "moe", "attention", "moe"])
    plan = plan_config(cfg, select=False)
    assert indices(plan) == [1, 3] and plan.layers[0].layer.activation.value == "relu2_no_mul"
    assert plan.layers[0].layer.gemm1_rows == 32  # non-gated: GEMM1 is I wide
    bad = small(model_type="nemotron_h", n_routed_experts=8, num_hidden_layers=4, hybrid_override_pattern="MEM")
    assert "hybrid_override_pattern" in one_line_error(MalformedConfig, plan_config, bad, select=False)


def test_gemma_activation_alias_and_default():
    plan = plan_model("gemma-4-26b-a4b", select=False)
    assert plan.layers[0].layer.activation.value == "gelu_tanh"
    cfg = preset_config("gemma-4-26b-a4b")
    cfg["text_config"] = {k: v for k, v in cfg["text_config"].items() if k != "hidden_activation"}
    plan = plan_config(cfg, select=False)
    assert plan.layers[0].layer.activation.value == "gelu_tanh" and any("default" in n for n in plan.notes)


def test_unknown_family_plans_with_unknown_routing():
    cfg = small(model_type="brand_new_moe", num_experts=8, num_hidden_layers=2)
    plan = plan_config(cfg, select=False)
    assert plan.layers[0].layer.routing is None and any("not a known MoE family" in n for n in plan.notes)
    del cfg["hidden_act"]
    one_line_error(MalformedConfig, plan_config, cfg, select=False)


def test_groups_split_on_a_different_layer():
    hf = {"quantization": {"quant_algo": "FP8", "exclude_modules": ["model.layers.3.mlp.experts"]}}
    plan = plan_config(small(model_type="qwen3_moe", num_experts=8, num_hidden_layers=6), hf_quant_config=hf,
                       select=False)
    groups = plan.groups()
    assert [(g.label(), g.layer.quant.label()) for g in groups] == [
        ("layers 0-2 (3)", "fp8"), ("layer 3", "bf16"), ("layers 4-5 (2)", "fp8")]
    assert groups[0].names[1] == "model.layers.1.mlp.experts" and groups[0].layer.name is None


# --- Selection hand-off -------------------------------------------------------------------------


@pytest.fixture
def counted_selection(monkeypatch):
    """The real select_backend, counting its calls."""
    import moe_registry.selection as selection

    calls = []
    real = selection.select_backend

    def counting(layer, device=None, **kwargs):
        calls.append((layer, device, kwargs))
        return real(layer, device, **kwargs)

    monkeypatch.setattr(selection, "select_backend", counting)
    return calls


def test_selection_runs_once_per_distinct_layer(counted_selection):
    hf = {"quantization": {"quant_algo": "NVFP4", "exclude_modules": ["model.language_model.layers.29.experts"]}}
    plan = plan_config(preset_config("gemma-4-26b-a4b"), device="b200", hf_quant_config=hf, prefer=())
    assert len(counted_selection) == 2  # 29 identical NVFP4 layers, one bf16 layer
    # The one extra reason: the fp32 reference is no deployment plan for a GPU (issue 20).
    assert all(layer.name is None and device == PRESETS["b200"] and set(kw) == {"prefer", "extra_reasons"}
               and kw["prefer"] == () and [b for b, _ in kw["extra_reasons"]] == ["reference"]
               for layer, device, kw in counted_selection)
    assert all(isinstance(p.selection, Selection) and p.error is None for p in plan.layers)
    assert plan.layers[3].layer.name == "model.language_model.layers.3.experts"
    assert plan.layers[0].selection is plan.layers[28].selection
    assert [g.label() for g in plan.groups()] == ["layers 0-28 (29)", "layer 29"]


def test_no_eligible_backend_is_recorded_per_layer(counted_selection):
    from moe_registry.registry import default_registry

    everything = tuple(d.id for d in default_registry().declarations())
    plan = plan_model("mixtral-8x7b", device="h100", forbid=everything)
    assert len(counted_selection) == 1
    first = plan.layers[0]
    assert first.selection is None and first.error.startswith("no backend can run") and "\n" not in first.error
    assert {r.backend for r in first.rejections} == set(everything)
    group = plan.groups()[0]
    assert group.count == 32 and group.error == first.error and group.rejections == first.rejections


def test_select_without_the_selection_module_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "moe_registry.selection", None)
    assert "select=False" in one_line_error(SelectionUnavailable, plan_model, "qwen3-30b-a3b")


def test_gpt_oss_plans_on_a_four_bit_backend_with_the_2880_padding_on_h100():
    """Issue 8: vLLM serves gpt-oss-120b on one H100 with MXFP4 kept 4-bit (padded) and the biases
    applied; the plan must not fall to dequantized bf16 because of hidden 2880 or the biases."""
    from moe_registry.planner import plan_model
    from moe_registry.schemas.selection import ReasonCode

    plan = plan_model("gpt-oss-120b", device="h100")
    groups = plan.groups()
    assert sum(len(g.indices) for g in groups) == 36
    for group in groups:
        s = group.selection
        # Humming (measured fastest on the H100, issue 21) holds the 4-bit weights unpadded
        assert s is not None and s.backend == "humming" and not s.padding
        assert group.layer.bias and group.layer.quant.weight_bits == 4
        # FlashInfer CUTLASS MXFP4 (vLLM pads both to 128): 2880 -> 23 x 128 = 2944.
        fi = next(c for c in s.eligible if c.backend == "flashinfer-cutlass")
        assert {(p.dimension, p.original, p.padded) for p in fi.padding} == {
            ("hidden", 2880, 2944), ("intermediate", 2880, 2944)}
        marlin = next(c for c in s.eligible if c.backend == "marlin")
        # Marlin MXFP4 (vLLM pads hidden to 256, intermediate to 128): 2880 -> 3072 and 2944.
        assert {(p.dimension, p.padded) for p in marlin.padding} == {("hidden", 3072), ("intermediate", 2944)}
        assert all(r.code is not ReasonCode.FEATURE_UNSUPPORTED for rej in s.rejections if rej.backend == "marlin"
                   for r in rej.reasons)


# --- _planner: explain's one reading for several layouts -------------------------------------------------


def test_planner_plans_each_layout_as_plan_model_does():
    from moe_registry.planner import _planner

    plan_on = _planner("gemma-4-26b-a4b", "h100", "nvfp4", memory="report")
    for parallel in (ParallelConfig(), ParallelConfig(tp=2), ParallelConfig(ep=4)):
        want = plan_model("gemma-4-26b-a4b", "h100", parallel, "nvfp4", memory="report")
        assert plan_on(parallel).model_dump() == want.model_dump(), parallel
    assert {lp.layer.quant.kind.value for lp in plan_on(ParallelConfig()).layers} == {"nvfp4"}


def test_planner_checks_its_arguments_on_every_call_after_the_source():
    from moe_registry.planner import _planner

    with pytest.raises(ConfigNotFound):  # the source first, as plan_model
        _planner("/nonexistent/config.json", 5, None, memory="prefer")(ParallelConfig())
    with pytest.raises(PlanError, match="device must be"):
        _planner("qwen3-30b-a3b", 5, None, memory="prefer")(ParallelConfig())
    with pytest.raises(PlanError, match="quant must be"):
        _planner("qwen3-30b-a3b", "h100", 4, memory="prefer")(ParallelConfig())
    plan_on = _planner("qwen3-30b-a3b", "h100", None, memory="prefer")
    plan_on(ParallelConfig())
    with pytest.raises(PlanError, match="parallel must be"):
        plan_on("tp2")  # type: ignore[arg-type]


def test_planner_passes_the_environment_to_selection():
    from moe_registry.environment import Environment
    from moe_registry.planner import _planner
    from moe_registry.schemas.device import get_device

    env = Environment(planning=False, device=get_device("h100"))
    got = _planner("qwen3-30b-a3b", None, None, memory="prefer", environment=env)(ParallelConfig())
    assert got.model_dump() == plan_model("qwen3-30b-a3b", environment=env).model_dump()
    assert got.layers[0].selection is not None and got.layers[0].selection.device.name == "h100"
