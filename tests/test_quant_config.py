"""Quantization-config formats -> per-MoE-layer schemes, on small synthetic configs."""

from __future__ import annotations

import json

import pytest

from moe_registry.planner import PlanError, plan_config, plan_model
from moe_registry.quant_config import (
    InconsistentMoEQuant,
    QuantConfigError,
    UnknownQuantMethod,
    UnsupportedQuantScheme,
    ancestors,
    parse_quant_config,
)
from moe_registry.schemas.quant import QuantScheme


def qwen_like(num_layers: int = 4, **extra) -> dict:
    """A small Qwen3-MoE style config: experts at model.layers.N.mlp.experts, every layer MoE."""
    return {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 256,
            "intermediate_size": 512, "moe_intermediate_size": 128, "num_experts": 8, "num_experts_per_tok": 2,
            "num_hidden_layers": num_layers, "hidden_act": "silu", "norm_topk_prob": True,
            "torch_dtype": "bfloat16", **extra}


def labels(plan) -> list[str]:
    return [p.layer.quant.label() for p in plan.layers]


NVFP4_GROUP = {"weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16},
               "input_activations": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16}}
INT4_GROUP = {"weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128, "symmetric": True},
              "input_activations": None}
FP8_TENSOR_GROUP = {"weights": {"num_bits": 8, "type": "float", "strategy": "tensor"},
                    "input_activations": {"num_bits": 8, "type": "float", "strategy": "tensor"}}


def ct(groups: dict, ignore=()) -> dict:
    return {"quant_method": "compressed-tensors", "format": "mixed-precision", "config_groups": groups,
            "ignore": list(ignore)}


# --- ModelOpt ---------------------------------------------------------------------------------


def test_modelopt_nested_hf_quant_config_in_a_model_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(qwen_like()))
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt", "version": "0.19.0"},
         "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", "group_size": 16,
                          "exclude_modules": ["lm_head"]}}))
    plan = plan_model(tmp_path, select=False)
    assert labels(plan) == ["nvfp4"] * 4
    assert plan.quantization.startswith("ModelOpt NVFP4 g16")


def test_modelopt_flat_quantization_config():
    qc = {"config_groups": {"group_0": {"input_activations": {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16},
                                        "weights": {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16},
                                        "targets": ["Linear"]}},
          "ignore": ["lm_head"], "quant_algo": "NVFP4", "kv_cache_scheme": "FP8", "producer": {"name": "modelopt"},
          "quant_library": "modelopt", "quant_method": "modelopt"}
    assert labels(plan_config(qwen_like(quantization_config=qc), select=False)) == ["nvfp4"] * 4


def test_modelopt_quant_algo_without_quant_method_is_still_modelopt():
    qc = {"quant_algo": "FP8", "exclude_modules": ["lm_head"]}
    assert labels(plan_config(qwen_like(quantization_config=qc), select=False)) == ["fp8"] * 4


def test_modelopt_glob_exclusion_keeps_that_moe_layer_bf16():
    hf = {"quantization": {"quant_algo": "NVFP4", "group_size": 16,
                           "exclude_modules": ["lm_head", "model.layers.*.self_attn*", "model.layers.1.mlp*"]}}
    plan = plan_config(qwen_like(num_layers=12), hf_quant_config=hf, select=False)
    assert labels(plan) == ["nvfp4", "bf16"] + ["nvfp4"] * 10  # layers 10 and 11 do not match "layers.1.mlp*"
    assert [g.label() for g in plan.groups()] == ["layer 0", "layer 1", "layers 2-11 (10)"]


@pytest.mark.parametrize("pattern", ["model.layers.2", "model.layers.2.mlp", "model.layers.2.mlp.experts.*",
                                     "model.layers.2.mlp.experts.0.gate_proj", "re:model\\.layers\\.2\\.mlp"])
def test_modelopt_ancestor_parent_and_inner_module_exclusions(pattern):
    hf = {"quantization": {"quant_algo": "NVFP4", "exclude_modules": [pattern]}}
    assert labels(plan_config(qwen_like(), hf_quant_config=hf, select=False)) == ["nvfp4", "nvfp4", "bf16", "nvfp4"]


def test_modelopt_exclusion_of_the_router_or_attention_leaves_experts_quantized():
    hf = {"quantization": {"quant_algo": "NVFP4", "exclude_modules": ["model.layers.*.mlp.gate", "*self_attn*"]}}
    assert labels(plan_config(qwen_like(), hf_quant_config=hf, select=False)) == ["nvfp4"] * 4


def test_modelopt_mixed_precision_per_layer_algorithms():
    hf = {"quantization": {"quant_algo": "MIXED_PRECISION", "quantized_layers": {
        "model.layers.0.mlp.experts": {"quant_algo": "NVFP4", "group_size": 16},
        "model.layers.0.mlp.shared_expert.gate_proj": {"quant_algo": "FP8"},
        "model.layers.1.mlp.experts": {"quant_algo": "FP8"},
        "model.layers.2.mlp.experts.0.gate_proj": {"quant_algo": "W4A16_AWQ", "group_size": 64},
        "model.layers.2.mlp.experts.1.up_proj": {"quant_algo": "W4A16_AWQ", "group_size": 64}}}}
    plan = plan_config(qwen_like(), hf_quant_config=hf, select=False)
    assert labels(plan) == ["nvfp4", "fp8", "int4_w4a16:g64", "bf16"]


def test_modelopt_mixed_precision_disagreeing_experts_is_an_error():
    hf = {"quantization": {"quant_algo": "MIXED_PRECISION", "quantized_layers": {
        "model.layers.0.mlp.experts.0.gate_proj": {"quant_algo": "NVFP4"},
        "model.layers.0.mlp.experts.1.gate_proj": {"quant_algo": "FP8"}}}}
    with pytest.raises(InconsistentMoEQuant, match="model.layers.0.mlp.experts"):
        plan_config(qwen_like(), hf_quant_config=hf, select=False)


def test_modelopt_algorithms_without_a_scheme_are_refused():
    with pytest.raises(UnsupportedQuantScheme, match="FP8_PER_CHANNEL_PER_TOKEN"):
        plan_config(qwen_like(), hf_quant_config={"quantization": {"quant_algo": "FP8_PER_CHANNEL_PER_TOKEN"}},
                    select=False)
    with pytest.raises(UnsupportedQuantScheme, match="unknown ModelOpt quant_algo 'NVFP5'"):
        parse_quant_config({"quantization": {"quant_algo": "NVFP5"}}, source="hf_quant_config.json")
    with pytest.raises(UnsupportedQuantScheme, match="fixed group size of 16"):
        plan_config(qwen_like(), hf_quant_config={"quantization": {"quant_algo": "NVFP4", "group_size": 32}},
                    select=False)


# --- compressed-tensors ---------------------------------------------------------------------------


def test_compressed_tensors_re_ignore_excludes_one_layers_experts():
    qc = ct({"group_0": {"targets": ["Linear"], **NVFP4_GROUP}},
            ignore=["lm_head", "re:.*mlp.gate$", "re:model\\.layers\\.2\\.mlp\\.experts\\."])
    plan = plan_config(qwen_like(quantization_config=qc), select=False)
    assert labels(plan) == ["nvfp4", "nvfp4", "bf16", "nvfp4"]


def test_compressed_tensors_re_target_beats_a_class_target():
    qc = ct({"group_0": {"targets": ["Linear"], **FP8_TENSOR_GROUP},
             "group_1": {"targets": ["re:.*mlp\\.experts\\.\\d+\\.(gate|up|down)_proj$"], **INT4_GROUP}})
    assert labels(plan_config(qwen_like(quantization_config=qc), select=False)) == ["int4_w4a16:g128"] * 4


def test_compressed_tensors_only_named_targets_leave_other_experts_unquantized():
    qc = ct({"group_0": {"targets": ["re:model\\.layers\\.[01]\\.mlp\\.experts\\..*"], **INT4_GROUP}})
    assert labels(plan_config(qwen_like(quantization_config=qc), select=False)) == [
        "int4_w4a16:g128", "int4_w4a16:g128", "bf16", "bf16"]


def test_compressed_tensors_mismatched_projections_is_a_clear_error():
    qc = ct({"group_0": {"targets": ["Linear"], **NVFP4_GROUP}}, ignore=["re:.*down_proj$"])
    with pytest.raises(InconsistentMoEQuant) as err:
        plan_config(qwen_like(quantization_config=qc), select=False)
    msg = str(err.value)
    assert "\n" not in msg and "model.layers.0.mlp.experts" in msg and "down_proj: ignored" in msg


def test_compressed_tensors_int4_asymmetric_with_group_actorder():
    group = {"targets": ["Linear"], "input_activations": None,
             "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 32, "symmetric": False,
                         "actorder": "group"}}
    assert labels(plan_config(qwen_like(quantization_config=ct({"g": group})), select=False))[0] == \
        "int4_w4a16:g32:zp:act_order"


@pytest.mark.parametrize("weights,acts,label", [
    ({"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128]},
     {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 128, "dynamic": True}, "fp8_block"),
    ({"num_bits": 4, "type": "float", "strategy": "group", "group_size": 32}, None, "mxfp4"),
    ({"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16}, None, "nvfp4_w4a16"),
    ({"num_bits": 4, "type": "int", "strategy": "channel"}, {"num_bits": 8, "type": "float"}, "int4_fp8:gchannel"),
])
def test_compressed_tensors_schemes(weights, acts, label):
    qc = ct({"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts}})
    assert labels(plan_config(qwen_like(quantization_config=qc), select=False))[0] == label


def test_compressed_tensors_fp8_per_channel_has_no_scheme():
    qc = ct({"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
                         "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}}})
    with pytest.raises(UnsupportedQuantScheme, match="no moe-registry scheme"):
        plan_config(qwen_like(quantization_config=qc), select=False)


def test_compressed_tensors_unused_unsupported_group_does_not_block():
    qc = ct({"attn": {"targets": ["re:.*self_attn.*"],
                      "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
                      "input_activations": {"num_bits": 8, "type": "float", "strategy": "token"}},
             "experts": {"targets": ["re:.*mlp\\.experts\\..*"], **NVFP4_GROUP}})
    plan = plan_config(qwen_like(quantization_config=qc), select=False)
    assert labels(plan) == ["nvfp4"] * 4 and "attn: no scheme" in plan.quantization


# --- GPTQ / AWQ -------------------------------------------------------------------------------


def test_gptq_modules_to_not_convert_and_dynamic_skip():
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True,
          "modules_to_not_convert": ["layers.1.mlp", "gate"],
          "dynamic": {"-:model\\.layers\\.3\\..*": {}, "+:model\\.layers\\.2\\..*": {"group_size": 64}}}
    plan = plan_config(qwen_like(num_layers=12, quantization_config=qc), select=False)
    got = labels(plan)
    assert got[:4] == ["int4_w4a16:g128", "bf16", "int4_w4a16:g64", "bf16"]
    assert got[10:] == ["int4_w4a16:g128"] * 2  # "layers.1.mlp" is not a substring of "layers.11.mlp..."


def test_gptq_act_order_asymmetric_and_per_channel():
    qc = {"quant_method": "gptq", "bits": 4, "group_size": -1, "desc_act": True, "sym": False}
    assert labels(plan_config(qwen_like(quantization_config=qc), select=False))[0] == "int4_w4a16:gchannel:zp:act_order"


def test_gptq_8bit_symmetric_is_int8_w8a16_and_other_8bit_experts_are_refused_unless_skipped():
    # vLLM auto_gptq.py TYPE_MAP has (8, sym) -> uint8b128 only (Marlin MoE runs it).
    qc = {"quant_method": "gptq", "bits": 8, "group_size": 128}
    assert labels(plan_config(qwen_like(quantization_config=qc), select=False)) == ["int8_w8a16:g128"] * 4
    for extra in ({"sym": False}, {"desc_act": True}):
        with pytest.raises(UnsupportedQuantScheme, match="8-bit"):
            plan_config(qwen_like(quantization_config={**qc, **extra}), select=False)
    qc = {**qc, "sym": False, "dynamic": {"-:.*mlp\\.experts": {}}}
    assert labels(plan_config(qwen_like(quantization_config=qc), select=False)) == ["bf16"] * 4


def test_gptq_quantize_config_json_without_quant_method(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(qwen_like(torch_dtype="float16")))
    (tmp_path / "quantize_config.json").write_text(json.dumps(
        {"bits": 4, "group_size": 128, "desc_act": False, "sym": True, "true_sequential": True}))
    plan = plan_model(tmp_path, select=False)
    assert labels(plan) == ["int4_w4a16:g128"] * 4 and plan.layers[0].layer.dtype == "fp16"


def test_awq_zero_point_and_router_exclusion():
    qc = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm",
          "modules_to_not_convert": ["gate"]}
    assert labels(plan_config(qwen_like(quantization_config=qc), select=False)) == ["int4_w4a16:g128:zp"] * 4
    qc["zero_point"] = False
    assert labels(plan_config(qwen_like(quantization_config=qc), select=False))[0] == "int4_w4a16:g128"


# --- FP8 / MXFP4 -------------------------------------------------------------------------------


def test_fp8_block_and_per_tensor():
    block = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
    assert labels(plan_config(qwen_like(quantization_config=block), select=False)) == ["fp8_block"] * 4
    tensor = {"activation_scheme": "static", "quant_method": "fp8"}
    assert labels(plan_config(qwen_like(quantization_config=tensor), select=False)) == ["fp8"] * 4
    with pytest.raises(UnsupportedQuantScheme, match="weight_block_size"):
        plan_config(qwen_like(quantization_config={"quant_method": "fp8", "weight_block_size": [64, 64]}), select=False)


def test_fp8_ignored_layers_naming_an_expert_projection_exclude_the_fused_layer():
    qc = {"quant_method": "fp8", "weight_block_size": [128, 128],
          "ignored_layers": ["model.layers.1.mlp.experts.0.gate_proj", "model.layers.2.mlp.gate"]}
    assert labels(plan_config(qwen_like(quantization_config=qc), select=False)) == [
        "fp8_block", "bf16", "fp8_block", "fp8_block"]


def test_mxfp4_experts_only_with_modules_to_not_convert():
    config = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 256,
              "intermediate_size": 256, "num_local_experts": 4, "num_experts_per_tok": 2, "num_hidden_layers": 3,
              "swiglu_limit": 7.0, "hidden_act": "silu",
              "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
                  "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head",
                  "model.layers.2.mlp"]}}
    assert labels(plan_config(config, select=False)) == ["mxfp4", "mxfp4", "bf16"]


# --- Unknown methods, precedence, override ---------------------------------------------------------


def test_unknown_quant_method_is_one_typed_line():
    with pytest.raises(UnknownQuantMethod) as err:
        plan_config(qwen_like(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True}),
                    select=False)
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, PlanError) and isinstance(err.value, QuantConfigError)
    assert "\n" not in msg and "'bitsandbytes'" in msg and "compressed-tensors" in msg


def test_config_json_quantization_config_wins_over_hf_quant_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(qwen_like(quantization_config={"quant_method": "fp8"})))
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "NVFP4"}}))
    assert labels(plan_model(tmp_path, select=False)) == ["fp8"] * 4


def test_quant_override_replaces_every_layers_scheme():
    plan = plan_model("gemma-4-26b-a4b", quant="nvfp4", select=False)
    assert labels(plan) == ["nvfp4"] * 30 and plan.quantization == "nvfp4 (override)"
    scheme = QuantScheme(kind="int4_w4a16", group_size=64)
    assert set(labels(plan_model("deepseek-v3", quant=scheme, select=False))) == {"int4_w4a16:g64"}
    # the override also stands in for a quantization config moe-registry cannot read
    odd = qwen_like(quantization_config={"quant_method": "bitsandbytes"})
    assert labels(plan_config(odd, quant="mxfp4", select=False)) == ["mxfp4"] * 4


def test_bad_quant_override_is_a_plan_error():
    with pytest.raises(PlanError, match="unknown quantization scheme 'int3'"):
        plan_model("qwen3-30b-a3b", quant="int3", select=False)


def test_excluded_layer_of_an_fp16_checkpoint_is_fp16():
    qc = {"quant_method": "awq", "bits": 4, "group_size": 128, "modules_to_not_convert": ["layers.0.mlp"]}
    assert labels(plan_config(qwen_like(torch_dtype="float16", quantization_config=qc), select=False))[0] == "fp16"


def test_quant_config_errors_are_single_lines():
    bad = [{"quant_method": "gptq", "bits": "four"}, {"quant_method": "compressed-tensors"},
           {"quant_method": "awq", "modules_to_not_convert": "gate", "group_size": 0}, []]
    for qc in bad:
        with pytest.raises(QuantConfigError) as err:
            parse_quant_config(qc, source="config.json quantization_config")
        assert "\n" not in str(err.value)


def test_ancestors():
    assert ancestors("a.b.c") == ["a.b.c", "a.b", "a"]
