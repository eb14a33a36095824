"""Every bundled preset plans to the MoE layers of the published config (CPU, no selection)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moe_registry import models
from moe_registry.planner import list_presets, plan_model
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.layer import ParallelConfig, RoutingMethod

NEMOTRON_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"

# preset: (MoE layer indices, E, top-k, hidden, expert I, activation, quant label, routing, first layer name)
EXPECTED = {
    "deepseek-v3": (range(3, 61), 256, 8, 7168, 2048, "silu", "fp8_block", RoutingMethod.DEEPSEEK_V3,
                    "model.layers.3.mlp.experts"),
    "nemotron-3-nano-30b-a3b": ([i for i, c in enumerate(NEMOTRON_PATTERN) if c == "E"], 128, 6, 2688, 1856,
                                "relu2_no_mul", "bf16", RoutingMethod.DEEPSEEK_V3, "backbone.layers.1.mixer.experts"),
    "qwen3-235b-a22b": (range(94), 128, 8, 4096, 1536, "silu", "bf16", RoutingMethod.SOFTMAX_TOPK_RENORM,
                        "model.layers.0.mlp.experts"),
    "qwen3-30b-a3b": (range(48), 128, 8, 2048, 768, "silu", "bf16", RoutingMethod.SOFTMAX_TOPK_RENORM,
                      "model.layers.0.mlp.experts"),
    "qwen3-30b-a3b-gptq-int4": (range(48), 128, 8, 2048, 768, "silu", "int4_w4a16:g128",
                                RoutingMethod.SOFTMAX_TOPK_RENORM, "model.layers.0.mlp.experts"),
    "gemma-4-26b-a4b": (range(30), 128, 8, 2816, 704, "gelu_tanh", "bf16", RoutingMethod.CUSTOM,
                        "model.language_model.layers.0.experts"),
    "gemma-4-26b-a4b-nvfp4": (range(30), 128, 8, 2816, 704, "gelu_tanh", "nvfp4", RoutingMethod.CUSTOM,
                              "model.language_model.layers.0.experts"),
    "mixtral-8x7b": (range(32), 8, 2, 4096, 14336, "silu", "bf16", RoutingMethod.SOFTMAX_TOPK_RENORM,
                     "model.layers.0.block_sparse_moe.experts"),
    "gpt-oss-120b": (range(36), 128, 4, 2880, 2880, "swigluoai", "mxfp4", RoutingMethod.TOPK_SOFTMAX,
                     "model.layers.0.mlp.experts"),
    "gpt-oss-20b": (range(24), 32, 4, 2880, 2880, "swigluoai", "mxfp4", RoutingMethod.TOPK_SOFTMAX,
                    "model.layers.0.mlp.experts"),
    "llama-4-scout": (range(48), 16, 1, 5120, 8192, "silu", "bf16", RoutingMethod.LLAMA4,
                      "language_model.model.layers.0.feed_forward.experts"),
    "glm-4.5": (range(3, 92), 160, 8, 5120, 1536, "silu", "bf16", RoutingMethod.DEEPSEEK_V3,
                "model.layers.3.mlp.experts"),
    "kimi-k2.5": (range(1, 61), 384, 8, 7168, 2048, "silu", "int4_w4a16:g32", RoutingMethod.DEEPSEEK_V3,
                  "language_model.model.layers.1.mlp.experts"),
}


def test_every_bundled_preset_is_covered_here():
    assert set(models.preset_names()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_layers_match_the_published_config(name):
    indices, experts, top_k, hidden, width, act, quant, routing, first_name = EXPECTED[name]
    plan = plan_model(name, select=False)
    specs = plan.layer_specs
    assert [s.index for s in specs] == list(indices)
    assert specs[0].name == first_name
    for spec in specs:
        assert (spec.num_experts, spec.top_k, spec.hidden_size, spec.intermediate_size) == (experts, top_k, hidden, width)
        assert spec.activation.value == act
        assert spec.quant.label() == quant
        assert spec.routing is routing
        assert spec.name == first_name.replace(f".{specs[0].index}.", f".{spec.index}.")
    assert len(plan.groups()) == 1  # every MoE layer of these models is the same layer


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_files_hold_a_source_and_real_config_keys(name):
    data = json.loads(models.preset_text(name))
    assert isinstance(data["_source"], str) and len(data["_source"]) > 40
    config = data.get("text_config", data)
    assert "num_hidden_layers" in config and "hidden_size" in config
    assert any(k in config for k in ("num_local_experts", "num_experts", "n_routed_experts"))


def test_layer_counts_from_the_brief():
    counts = {name: len(plan_model(name, select=False).layers) for name in EXPECTED}
    assert counts["deepseek-v3"] == 58
    assert counts["nemotron-3-nano-30b-a3b"] == 23
    assert counts["qwen3-235b-a22b"] == 94
    assert counts["qwen3-30b-a3b"] == 48
    assert counts["gemma-4-26b-a4b"] == 30
    assert counts["mixtral-8x7b"] == 32
    assert counts["gpt-oss-120b"] == 36
    assert counts["llama-4-scout"] == 48


def test_gpt_oss_carries_the_clamped_swiglu_and_biases():
    spec = plan_model("gpt-oss-120b", select=False).layers[0].layer
    assert spec.activation is Activation.SWIGLUOAI and spec.bias is True
    params = spec.swigluoai
    assert (params.alpha, params.limit, params.up_offset, params.interleaved) == (1.702, 7.0, 1.0, True)


def test_llama4_applies_the_router_weight_on_the_input():
    assert all(p.layer.apply_router_weight_on_input for p in plan_model("llama-4-scout", select=False).layers)


def test_gptq_preset_keeps_the_checkpoint_dtype():
    assert plan_model("qwen3-30b-a3b-gptq-int4", select=False).layers[0].layer.dtype == "fp16"


def test_gemma4_tp8_shards_the_intermediate_and_ep8_keeps_it():
    tp8 = plan_model("gemma-4-26b-a4b", parallel=ParallelConfig(tp=8), select=False).layers[0].layer
    assert tp8.local_intermediate_size == 88 and tp8.local_num_experts == 128
    ep8 = plan_model("gemma-4-26b-a4b", parallel=ParallelConfig(ep=8), select=False).layers[0].layer
    assert ep8.local_intermediate_size == 704 and ep8.local_num_experts == 16
    assert ep8.parallel == ParallelConfig(ep=8)


def test_presets_are_found_by_hugging_face_id_too():
    assert plan_model("Qwen/Qwen3-30B-A3B", select=False).model == "qwen3-30b-a3b"
    assert plan_model("deepseek-ai/deepseek-v3", select=False).model == "deepseek-v3"


def test_group_label_names_the_range():
    assert plan_model("deepseek-v3", select=False).groups()[0].label() == "layers 3-60 (58)"
    nemotron = plan_model("nemotron-3-nano-30b-a3b", select=False).groups()[0]
    assert nemotron.count == 23 and not nemotron.contiguous and nemotron.label() == "layers 1-51 (23 of them)"


def test_list_presets_describes_model_and_quantization():
    presets = list_presets()
    assert set(presets) == set(EXPECTED)
    assert presets["deepseek-v3"].startswith("deepseek-ai/DeepSeek-V3; ") and "FP8" in presets["deepseek-v3"]
    assert "NVFP4" in presets["gemma-4-26b-a4b-nvfp4"]
    assert "compressed-tensors" in presets["kimi-k2.5"] and "g32" in presets["kimi-k2.5"]
    assert presets["mixtral-8x7b"] == "mistralai/Mixtral-8x7B-v0.1; bf16"


def test_planning_does_not_import_torch():
    code = ("import sys; from moe_registry.planner import plan_model, list_presets; list_presets(); "
            "[plan_model(n, select=False) for n in list_presets()]; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"
