"""Planner rules at their edges, with hand-computed expectations (issue 15): which layers are MoE
under each schedule key, per-layer lists, integer bounds, the routing and activation of each family,
layer names, dtype and heads, source lookup and the typed errors. Configs are small dicts holding the
keys the published configs use (see test_planner.py / test_published_configs.py for whole ones).
"""

from __future__ import annotations

import json
import re

import pytest

from moe_registry.planner import (
    ConfigNotFound, InvalidLayer, LayerGroup, MalformedConfig, NotAMoEModel, ParallelismError, PlanError,
    UnknownPreset, list_presets, plan_config, plan_model,
)
from moe_registry.planner import sources as planner_sources
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.layer import LayerSpec, ParallelConfig, RoutingMethod
from moe_registry.schemas.quant import QuantKind


def cfg(**keys) -> dict:
    """A Qwen3-MoE-style config (qwen3_moe keys) with 4 layers, changed by ``keys`` (None deletes)."""
    base = {"model_type": "qwen3_moe", "num_hidden_layers": 4, "hidden_size": 64, "num_experts": 8,
            "num_experts_per_tok": 2, "moe_intermediate_size": 32, "hidden_act": "silu", "norm_topk_prob": True}
    base.update(keys)
    return {k: v for k, v in base.items() if v is not None}


def plan(config, **kw):
    return plan_config(config, select=False, **kw)


def moe_indices(config) -> list[int]:
    return [s.index for s in plan(config).layer_specs]


NAME = "cfg-under-test"


def raises(exc_type, config, *named, **kw):
    """The typed one-line error of planning ``config``; it names the config (or the layer) and ``named``."""
    with pytest.raises(exc_type) as err:
        plan_config(config, select=False, name=NAME, **kw)
    msg = str(err.value)
    assert isinstance(err.value, PlanError) and "\n" not in msg
    assert NAME in msg or "experts (layer" in msg, msg
    for word in named:  # as a whole word: "XXkeyXX" does not name the key
        assert re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", msg), (word, msg)
    return msg


# --- Which layers are MoE -------------------------------------------------------------------------

@pytest.mark.parametrize("keys,expected", [
    ({"num_hidden_layers": 6}, [0, 1, 2, 3, 4, 5]),  # no schedule key: every layer
    ({"hybrid_override_pattern": "MEME"}, [1, 3]),
    ({"hybrid_override_pattern": "EEEE", "moe_layers": [0]}, [0, 1, 2, 3]),  # the first rule present wins
    ({"layers_block_type": ["moe", "mamba", "moe", "attention"]}, [0, 2]),
    ({"enable_moe_block": True}, [0, 1, 2, 3]),
    ({"moe_layers": [3, 1, 3]}, [1, 3]),  # sorted, duplicates once
    ({"moe_layers": [0, 3]}, [0, 3]),  # the last layer is a layer
    ({"interleave_moe_layer_step": 1}, [0, 1, 2, 3]),
    ({"interleave_moe_layer_step": 2, "num_hidden_layers": 7}, [1, 3, 5]),
    ({"interleave_moe_layer_step": 3, "num_hidden_layers": 7}, [2, 5]),
    ({"moe_layer_freq": [1, 0, 0, 1]}, [0, 3]),
    ({"expert_layer_period": 3, "expert_layer_offset": 2, "num_hidden_layers": 9}, [2, 5, 8]),
    ({"expert_layer_period": 3, "num_hidden_layers": 9}, [1, 4, 7]),  # offset defaults to 1
    ({"expert_layer_offset": 0, "num_hidden_layers": 5}, [0, 2, 4]),  # period defaults to 2
    ({"moe_layer_start_index": 1, "moe_layer_end_index": 2, "moe_layer_interval": 1}, [1, 2]),
    ({"moe_layer_start_index": 0, "moe_layer_end_index": 5, "moe_layer_interval": 2, "num_hidden_layers": 8},
     [1, 3, 5]),  # (i + 1) % interval == 0, start <= i <= end
    ({"moe_layer_start_index": 2, "num_hidden_layers": 5}, [2, 3, 4]),  # end defaults to the last layer
    ({"moe_layer_interval": 2, "num_hidden_layers": 5}, [1, 3]),  # start defaults to 0
    ({"moe_layer_end_index": 1}, [0, 1]),
    ({"first_k_dense_replace": 1, "num_hidden_layers": 5}, [1, 2, 3, 4]),
    ({"first_k_dense_replace": 0, "moe_layer_freq": 2, "num_hidden_layers": 5}, [0, 2, 4]),
    ({"first_k_dense_replace": 3, "moe_layer_freq": 2, "num_hidden_layers": 7}, [4, 6]),
    ({"first_k_dense_replace": None, "moe_layer_freq": 3, "num_hidden_layers": 7}, [0, 3, 6]),
    ({"decoder_sparse_step": 2, "num_hidden_layers": 6}, [1, 3, 5]),
    ({"decoder_sparse_step": 1, "mlp_only_layers": [0, 2]}, [1, 3]),
    ({"mlp_only_layers": [3]}, [0, 1, 2]),  # the step defaults to 1
    ({"decoder_sparse_step": 3, "mlp_only_layers": [], "num_hidden_layers": 6}, [2, 5]),
])
def test_moe_layer_schedules(keys, expected):
    assert moe_indices(cfg(**keys)) == expected


def test_the_schedule_is_noted_with_its_count():
    notes = plan(cfg(num_hidden_layers=6, decoder_sparse_step=2)).notes
    assert any(n.startswith("3 of 6 layers are MoE") for n in notes)


@pytest.mark.parametrize("keys,exc,named", [
    ({"hybrid_override_pattern": "MEM"}, MalformedConfig, "hybrid_override_pattern"),  # 3 characters, 4 layers
    ({"hybrid_override_pattern": "MEMEE"}, MalformedConfig, "hybrid_override_pattern"),
    ({"hybrid_override_pattern": 1234}, MalformedConfig, "hybrid_override_pattern"),
    ({"layers_block_type": ["moe", "moe", "moe"]}, MalformedConfig, "layers_block_type"),
    ({"moe_layers": [1, 4]}, MalformedConfig, "moe_layers"),  # layer 4 of 4 layers (0..3)
    ({"moe_layers": [4, 0, 1]}, MalformedConfig, "layer 4 of 4"),  # the largest, wherever it is listed
    ({"moe_layers": "1,2"}, MalformedConfig, "moe_layers"),
    ({"moe_layers": [1, -1]}, MalformedConfig, "moe_layers"),
    ({"moe_layer_freq": [1, 0, 1]}, MalformedConfig, "moe_layer_freq"),
    ({"moe_layer_freq": [1, 0, 2, 1]}, MalformedConfig, "moe_layer_freq"),
    ({"moe_layer_freq": [1, 0, 1.0, 1]}, MalformedConfig, "moe_layer_freq"),
    ({"expert_layer_period": 2, "expert_layer_offset": 2}, MalformedConfig, "expert_layer_offset"),
    ({"expert_layer_period": 0}, MalformedConfig, "expert_layer_period"),
    ({"expert_layer_offset": -1}, MalformedConfig, "expert_layer_offset"),
    ({"moe_layer_start_index": [0, 1]}, MalformedConfig, "moe_layer_start_index"),
    ({"moe_layer_end_index": [3, 3]}, MalformedConfig, "moe_layer_end_index"),
    ({"moe_layer_start_index": -2}, MalformedConfig, "moe_layer_start_index"),
    ({"moe_layer_end_index": -2}, MalformedConfig, "moe_layer_end_index"),
    ({"moe_layer_interval": 0}, MalformedConfig, "moe_layer_interval"),
    ({"interleave_moe_layer_step": -1}, MalformedConfig, "interleave_moe_layer_step"),
    ({"first_k_dense_replace": -1}, MalformedConfig, "first_k_dense_replace"),
    ({"moe_layer_freq": -2}, MalformedConfig, "moe_layer_freq"),
    ({"decoder_sparse_step": -1}, MalformedConfig, "decoder_sparse_step"),
    ({"mlp_only_layers": [0, "1"]}, MalformedConfig, "mlp_only_layers"),
    ({"interleave_moe_layer_step": 0}, NotAMoEModel, "interleave_moe_layer_step"),  # step 0: no MoE layer
    ({"enable_moe_block": False}, NotAMoEModel, "enable_moe_block"),
    ({"layers_block_type": ["mamba"] * 4}, NotAMoEModel, "layers_block_type"),
    ({"moe_layer_start_index": 4}, NotAMoEModel, "moe_layer_start_index"),
    ({"first_k_dense_replace": 4}, NotAMoEModel, "first_k_dense_replace"),
    ({"decoder_sparse_step": 5}, NotAMoEModel, "decoder_sparse_step"),
])
def test_bad_or_empty_schedules(keys, exc, named):
    raises(exc, cfg(**keys), named)


def test_the_interval_counts_layers_from_one():
    # ERNIE-4.5 / Qwen: layer i is MoE when (i + 1) % interval == 0
    assert moe_indices(cfg(moe_layer_interval=3, num_hidden_layers=7)) == [2, 5]
    assert moe_indices(cfg(decoder_sparse_step=3, num_hidden_layers=7)) == [2, 5]
    assert moe_indices(cfg(moe_layer_start_index=3, moe_layer_end_index=-1, num_hidden_layers=6)) == [3, 4, 5]


def test_expert_offset_just_below_the_period_is_fine():
    assert moe_indices(cfg(expert_layer_period=2, expert_layer_offset=1)) == [1, 3]
    assert moe_indices(cfg(expert_layer_period=1, expert_layer_offset=0)) == [0, 1, 2, 3]  # period 1: every layer
    raises(MalformedConfig, cfg(expert_layer_period=0), "expert_layer_period must be an integer >= 1")


def test_a_zero_step_or_frequency_means_every_layer():
    # DeepSeek / Qwen configs read 0 (or null) as "no spacing", like the transformers defaults of 1
    assert moe_indices(cfg(first_k_dense_replace=1, moe_layer_freq=0)) == [1, 2, 3]
    assert moe_indices(cfg(decoder_sparse_step=0)) == [0, 1, 2, 3]


def test_ernie_lists_are_refused_as_multimodal_groups():
    for key in ("moe_layer_start_index", "moe_layer_end_index"):
        assert "multimodal" in raises(MalformedConfig, cfg(**{key: [1, 2]}), key)


@pytest.mark.parametrize("keys,rule", [
    ({}, "every layer"),
    ({"hybrid_override_pattern": "EEEE"}, "hybrid_override_pattern 'E' positions"),
    ({"layers_block_type": ["moe"] * 4}, "layers_block_type 'moe' entries"),
    ({"enable_moe_block": True}, "enable_moe_block"),
    ({"moe_layers": [0, 1, 2, 3]}, "moe_layers"),
    ({"interleave_moe_layer_step": 1}, "interleave_moe_layer_step=1"),
    ({"moe_layer_freq": [1, 1, 1, 1]}, "moe_layer_freq list (1 = MoE)"),
    ({"expert_layer_period": 1, "expert_layer_offset": 0}, "expert_layer_period=1, expert_layer_offset=0"),
    ({"moe_layer_start_index": 0}, "moe_layer_start_index=0, moe_layer_end_index=3, moe_layer_interval=1"),
    ({"first_k_dense_replace": 0}, "first_k_dense_replace=0, moe_layer_freq=1"),
    ({"decoder_sparse_step": 1}, "decoder_sparse_step=1, mlp_only_layers=[]"),
])
def test_the_note_names_the_schedule_rule(keys, rule):
    assert f"4 of 4 layers are MoE ({rule})" in plan(cfg(**keys)).notes


def test_layers_with_one_expert_are_dense():
    # Jamba-style per-layer expert counts: a layer with 1 expert is a dense MLP, not a MoE layer.
    config = cfg(num_experts=[1, 8, 1, 2])
    specs = plan(config).layer_specs
    assert [s.index for s in specs] == [1, 3] and [s.num_experts for s in specs] == [8, 2]
    raises(NotAMoEModel, cfg(num_experts=[1, 1, 1, 1]))
    raises(NotAMoEModel, cfg(num_experts=[0, 0, 0, 0]))
    assert moe_indices(cfg(num_experts=[0, 0, 0, 2])) == [3]


# --- Integers and per-layer lists ----------------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("num_hidden_layers", 0), ("num_hidden_layers", True), ("hidden_size", 0), ("hidden_size", 64.0),
    ("num_experts_per_tok", 0), ("moe_intermediate_size", 0), ("num_experts", -1), ("num_experts", "8"),
    ("moe_latent_size", 0), ("moe_latent_size", "16"), ("first_k_dense_replace", -1),
    ("num_experts_per_tok", [2, 2, 0, 2]), ("num_experts", [8, 8, -1, 8]),
])
def test_integers_below_their_minimum_or_not_integers(key, value):
    raises(MalformedConfig, cfg(**{key: value}), key)


def test_minimum_values_are_accepted():
    spec, = plan(cfg(num_hidden_layers=1, hidden_size=1, num_experts=2, num_experts_per_tok=1,
                     moe_intermediate_size=1)).layer_specs
    assert (spec.hidden_size, spec.num_experts, spec.top_k, spec.intermediate_size) == (1, 2, 1, 1)
    assert moe_indices(cfg(first_k_dense_replace=0)) == [0, 1, 2, 3]


def test_per_layer_lists_give_each_layer_its_value():
    specs = plan(cfg(num_experts=[8, 16, 8, 16], num_experts_per_tok=[1, 2, 3, 4],
                     moe_intermediate_size=[32, 64, 96, 128])).layer_specs
    assert [(s.num_experts, s.top_k, s.intermediate_size) for s in specs] == [
        (8, 1, 32), (16, 2, 64), (8, 3, 96), (16, 4, 128)]
    raises(MalformedConfig, cfg(num_experts_per_tok=[2, 2, 2]))
    raises(MalformedConfig, cfg(num_experts_per_tok=[2, 2, 2, 2, 2]))
    raises(MalformedConfig, cfg(num_experts_per_tok=[2, 2, 0, 2]))


def test_key_aliases_in_their_order():
    # experts: num_local_experts before num_experts before n_routed_experts
    assert plan(cfg(num_local_experts=16, n_routed_experts=4)).layer_specs[0].num_experts == 16
    assert plan(cfg(num_experts=None, n_routed_experts=4)).layer_specs[0].num_experts == 4
    # top-k: num_experts_per_tok first; then top_k_experts, experts_per_token, moe_k, moe_topk
    assert plan(cfg(num_experts_per_tok=None, top_k_experts=3)).layer_specs[0].top_k == 3
    assert plan(cfg(num_experts_per_tok=None, experts_per_token=4, moe_k=1)).layer_specs[0].top_k == 4
    # width: moe_intermediate_size before intermediate_size
    assert plan(cfg(intermediate_size=512)).layer_specs[0].intermediate_size == 32
    assert plan(cfg(moe_intermediate_size=None, intermediate_size=512)).layer_specs[0].intermediate_size == 512
    raises(MalformedConfig, cfg(moe_intermediate_size=None), "moe_intermediate_size / intermediate_size")
    raises(MalformedConfig, cfg(num_experts_per_tok=None), "num_experts_per_tok")
    raises(NotAMoEModel, cfg(num_experts=None), "qwen3_moe")
    raises(NotAMoEModel, cfg(num_experts=None, model_type=None), "unknown model_type")
    raises(NotAMoEModel, cfg(num_experts=0), "num_experts")
    raises(MalformedConfig, cfg(num_hidden_layers=None), "num_hidden_layers")


# --- Layer errors: parallelism vs other ---------------------------------------------------------

def test_layer_errors_are_typed_by_their_cause():
    raises(ParallelismError, cfg(), "model.layers.0.mlp.experts (layer 0)", parallel=ParallelConfig(tp=3))  # 32 % 3
    raises(ParallelismError, cfg(), "model.layers.0.mlp.experts (layer 0)", parallel=ParallelConfig(ep=3))  # 8 % 3
    msg = raises(InvalidLayer, cfg(num_experts_per_tok=[2, 9, 2, 2]), "model.layers.1.mlp.experts (layer 1)")
    assert "Value error" not in msg  # pydantic's prefix is dropped
    assert len(plan(cfg(), parallel=ParallelConfig(tp=2, ep=2)).layer_specs) == 4


# --- Routing, activation, names ------------------------------------------------------------------

@pytest.mark.parametrize("model_type,extra,routing,on_input", [
    ("qwen3_moe", {"norm_topk_prob": True}, RoutingMethod.SOFTMAX_TOPK_RENORM, False),
    ("qwen3_moe", {"norm_topk_prob": False}, RoutingMethod.SOFTMAX_TOPK, False),
    ("qwen2_moe", {"norm_topk_prob": None}, RoutingMethod.SOFTMAX_TOPK, False),  # transformers default False
    ("mixtral", {}, RoutingMethod.SOFTMAX_TOPK_RENORM, False),
    ("deepseek_v3", {"scoring_func": "sigmoid"}, RoutingMethod.DEEPSEEK_V3, False),
    ("deepseek_v3", {}, RoutingMethod.DEEPSEEK_V3, False),  # DeepseekV3Config default scoring is sigmoid
    ("deepseek_v2", {"scoring_func": "softmax"}, RoutingMethod.CUSTOM, False),
    ("deepseek_v4", {"scoring_func": "sqrtsoftplus"}, RoutingMethod.CUSTOM, False),
    ("jamba", {}, RoutingMethod.SOFTMAX_TOPK, False),
    ("granitemoe", {}, RoutingMethod.TOPK_SOFTMAX, False),
    ("phimoe", {}, RoutingMethod.CUSTOM, False),
    ("ernie4_5_moe", {}, RoutingMethod.CUSTOM, False),
    ("nemotron_h", {}, RoutingMethod.DEEPSEEK_V3, False),
    ("llama4_text", {}, RoutingMethod.LLAMA4, True),
    ("gemma4_text", {}, RoutingMethod.CUSTOM, False),
    ("some_new_moe", {}, None, False),
])
def test_routing_of_each_family(model_type, extra, routing, on_input):
    spec = plan(cfg(model_type=model_type, **extra)).layer_specs[0]
    assert spec.routing is routing and spec.apply_router_weight_on_input is on_input


@pytest.mark.parametrize("normalize,routing", [(1, RoutingMethod.SOFTMAX_TOPK_RENORM), (0, RoutingMethod.SOFTMAX_TOPK)])
def test_dbrx_routing_follows_moe_normalize_expert_weights(normalize, routing):
    dbrx = {"model_type": "dbrx", "d_model": 64, "n_heads": 4, "n_layers": 2, "attn_config": {"kv_n_heads": 2},
            "ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": 4, "moe_top_k": 2,
                           "moe_normalize_expert_weights": normalize}}
    spec = plan(dbrx).layer_specs[0]
    assert spec.routing is routing and spec.activation is Activation.SILU  # DbrxFFNConfig default act
    assert spec.apply_router_weight_on_input is False
    assert (spec.hidden_size, spec.num_experts, spec.top_k, spec.intermediate_size) == (64, 4, 2, 32)
    assert (spec.attention_heads, spec.kv_heads) == (4, 2)
    raises(MalformedConfig, {**dbrx, "attn_config": [1]}, "DBRX")
    assert not any("no activation in the config" in n for n in plan(dbrx).notes)  # DBRX's own default
    gelu = {**dbrx, "ffn_config": {**dbrx["ffn_config"], "ffn_act_fn": {"name": "gelu"}}}
    assert plan(gelu).layer_specs[0].activation is Activation.GELU
    assert plan({**dbrx, "ffn_config": {**dbrx["ffn_config"], "ffn_act_fn": "gelu"}}).layer_specs[0].activation \
        is Activation.GELU
    default_norm = {k: v for k, v in dbrx["ffn_config"].items() if k != "moe_normalize_expert_weights"}
    # DbrxFFNConfig: moe_normalize_expert_weights defaults to 1 (renormalise)
    assert plan({**dbrx, "ffn_config": default_norm}).layer_specs[0].routing is RoutingMethod.SOFTMAX_TOPK_RENORM
    no_attn = {k: v for k, v in dbrx.items() if k != "attn_config"}
    assert plan(no_attn).layer_specs[0].attention_heads == 4
    # keys outside ffn_config / attn_config are kept: a schedule key applies
    assert [s.index for s in plan({**dbrx, "moe_layers": [1]}).layer_specs] == [1]


@pytest.mark.parametrize("model_type,wrapper,name", [
    ("qwen3_moe", None, "model.layers.1.mlp.experts"),
    ("qwen3_vl_moe_text", "qwen3_vl_moe", "model.language_model.layers.1.mlp.experts"),
    ("deepseek_v3", "kimi_k25", "language_model.model.layers.1.mlp.experts"),
    ("gemma4_text", None, "model.layers.1.experts"),
    ("gemma4_text", "gemma4", "model.language_model.layers.1.experts"),
    ("llama4_text", None, "model.layers.1.feed_forward.experts"),
    ("llama4_text", "llama4", "language_model.model.layers.1.feed_forward.experts"),
    ("mixtral", None, "model.layers.1.block_sparse_moe.experts"),
    ("nemotron_h", None, "backbone.layers.1.mixer.experts"),
    ("deepseek_v4", None, "layers.1.ffn.experts"),
    ("granitemoe", None, "model.layers.1.block_sparse_moe"),
    ("jamba", "wrapped_jamba", "model.layers.1.feed_forward.experts"),  # not the .mlp. layout: kept
    ("some_new_moe", None, "model.layers.1.mlp.experts"),
])
def test_layer_names_are_the_checkpoint_paths(model_type, wrapper, name):
    text = cfg(model_type=model_type)
    config = {"model_type": wrapper, "text_config": text} if wrapper else text
    assert plan(config).layer_specs[1].name == name


def test_a_text_config_is_used_only_when_it_holds_the_model():
    outer = cfg(num_hidden_layers=2)
    assert len(plan({**outer, "text_config": {"vocab_size": 10}}).layer_specs) == 2  # no MoE keys: ignored
    inner = cfg(num_hidden_layers=3)
    assert len(plan({"model_type": "wrapper", "text_config": inner}).layer_specs) == 3
    assert len(plan({"text_config": {"num_hidden_layers": 5, **{k: v for k, v in inner.items()
                                                                if k != "num_hidden_layers"}}}).layer_specs) == 5
    # num_hidden_layers alone marks the language model: its missing experts are an error, not the outer ones used
    raises(NotAMoEModel, {**outer, "text_config": {"num_hidden_layers": 2}}, "text_config")


@pytest.mark.parametrize("keys,act", [
    ({"hidden_act": "gelu_pytorch_tanh"}, Activation.GELU_TANH),
    ({"hidden_activation": "gelu_pytorch_tanh", "hidden_act": "silu"}, Activation.GELU_TANH),
    ({"mlp_hidden_act": "relu2", "hidden_activation": "silu"}, Activation.RELU2_NO_MUL),
    ({"hidden_act": None, "model_type": "nemotron_h"}, Activation.RELU2_NO_MUL),  # transformers default
    ({"hidden_act": None, "model_type": "mixtral"}, Activation.SILU),
])
def test_activation_keys_in_their_order_and_defaults(keys, act):
    assert plan(cfg(**keys)).layer_specs[0].activation is act


def test_bad_activations():
    raises(MalformedConfig, cfg(hidden_act=None, model_type="some_new_moe"), "some_new_moe")  # no known default
    raises(MalformedConfig, cfg(hidden_act=7), "hidden_act")
    raises(MalformedConfig, cfg(hidden_act="swishy"), "hidden_act", "swishy")
    raises(MalformedConfig, cfg(hidden_act=None, hidden_activation=[1]), "hidden_activation")


def test_a_defaulted_activation_is_noted_and_a_given_one_is_not():
    assert any("no activation in the config" in n for n in plan(cfg(hidden_act=None)).notes)
    assert not any("no activation in the config" in n for n in plan(cfg()).notes)


@pytest.mark.parametrize("limit", [0, -1.0, True, "7", float("nan"), float("inf")])
def test_swiglu_limit_must_be_a_positive_finite_number(limit):
    raises(MalformedConfig, cfg(swiglu_limit=limit))


def test_swiglu_limit_clamps_silu_only():
    spec = plan(cfg(swiglu_limit=10)).layer_specs[0]
    assert spec.activation is Activation.SILU_CLAMP and spec.activation_params.limit == 10.0
    tiny = plan(cfg(swiglu_limit=1e-3)).layer_specs[0]
    assert tiny.activation_params.limit == 1e-3
    assert not spec.bias
    raises(MalformedConfig, cfg(swiglu_limit=10, hidden_act="gelu"), "hidden_act", "'gelu'")
    # a defaulted activation is named as such
    raises(MalformedConfig, cfg(swiglu_limit=10, hidden_act=None, model_type="gemma4_text"), "default",
           "'gelu_pytorch_tanh'")


def test_gpt_oss_runs_swigluoai_with_biases_and_its_limit():
    spec = plan(cfg(model_type="gpt_oss", hidden_act="silu")).layer_specs[0]
    assert spec.activation is Activation.SWIGLUOAI and spec.bias
    assert (spec.activation_params.limit, spec.activation_params.interleaved) == (7.0, True)  # the default limit
    assert plan(cfg(model_type="gpt_oss", swiglu_limit=5)).layer_specs[0].activation_params.limit == 5.0
    assert spec.routing is RoutingMethod.TOPK_SOFTMAX
    assert not plan(cfg()).layer_specs[0].bias
    # the note quotes what the config said, which the experts do not compute
    assert any("'silu'" in n and "swigluoai" in n for n in plan(cfg(model_type="gpt_oss", hidden_act="silu")).notes)


def test_an_unknown_family_is_named_in_its_note():
    assert any("model_type 'some_new_moe' is not a known MoE family" in n
               for n in plan(cfg(model_type="some_new_moe")).notes)
    assert any("model_type '(none)' is not a known MoE family" in n for n in plan(cfg(model_type=None)).notes)


def test_hash_routed_layers_are_noted():
    hashed = lambda n: [x for x in plan(cfg(num_hash_layers=n)).notes if "hash" in x]  # noqa: E731
    assert len(hashed(1)) == 1 and "first 1 MoE layers" in hashed(1)[0]
    assert hashed(0) == [] and hashed(None) == []


def test_errors_name_the_text_config_they_read():
    wrapped = {"model_type": "w", "text_config": cfg(hidden_size=None)}
    msg = raises(MalformedConfig, wrapped, "hidden_size")
    assert msg.startswith(NAME + " text_config")
    assert raises(MalformedConfig, cfg(hidden_size=None), "hidden_size").startswith(NAME + " has no")


def test_the_wrappers_model_type_is_used_when_the_text_config_has_none():
    inner = cfg(model_type=None)
    spec = plan({"model_type": "mixtral", "text_config": inner}).layer_specs[0]
    assert spec.routing is RoutingMethod.SOFTMAX_TOPK_RENORM  # Mixtral's, not an unknown family's


def test_latent_moe_replaces_the_expert_hidden_size():
    assert plan(cfg(moe_latent_size=16)).layer_specs[0].hidden_size == 16
    assert plan(cfg(moe_latent_size=1)).layer_specs[0].hidden_size == 1


# --- dtype, heads, device ------------------------------------------------------------------------

@pytest.mark.parametrize("keys,dtype", [
    ({}, "bf16"),
    ({"torch_dtype": "float16"}, "fp16"),
    ({"torch_dtype": "torch.float16"}, "fp16"),
    ({"torch_dtype": "Float32"}, "fp32"),
    ({"torch_dtype": "float8_e4m3fn"}, "bf16"),  # unknown names: engines' bf16
    ({"dtype": "float16", "torch_dtype": "float32"}, "fp16"),  # dtype before torch_dtype
    ({"dtype": 16, "torch_dtype": "half"}, "fp16"),  # a non-string is skipped
])
def test_dtype(keys, dtype):
    assert plan(cfg(**keys)).layer_specs[0].dtype == dtype


def test_dtype_of_the_text_config_first():
    config = {"model_type": "w", "torch_dtype": "float32", "text_config": cfg(torch_dtype="float16")}
    assert plan(config).layer_specs[0].dtype == "fp16"
    config = {"model_type": "w", "torch_dtype": "float16", "text_config": cfg()}
    assert plan(config).layer_specs[0].dtype == "fp16"


def test_bf16_is_planned_in_fp16_below_sm80_only():
    assert plan(cfg(), device="sm75").layer_specs[0].dtype == "fp16"
    assert plan(cfg(), device="sm80").layer_specs[0].dtype == "bf16"
    assert plan(cfg(), device="cpu").layer_specs[0].dtype == "bf16"
    assert plan(cfg(torch_dtype="float32"), device="sm75").layer_specs[0].dtype == "fp32"


@pytest.mark.parametrize("keys,heads", [
    ({"num_attention_heads": 32, "num_key_value_heads": 4}, (32, 4)),
    ({"num_attention_heads": 32}, (32, 32)),  # no GQA key: as many KV heads as heads
    ({"num_attention_heads": 32, "num_key_value_heads": 0}, (32, None)),
    ({"num_attention_heads": True, "num_key_value_heads": 4}, (None, None)),
    ({"num_attention_heads": 0, "num_key_value_heads": 4}, (None, None)),
    ({"num_key_value_heads": 4}, (None, None)),
    ({"num_attention_heads": 1, "num_key_value_heads": 1}, (1, 1)),
])
def test_attention_heads(keys, heads):
    spec = plan(cfg(**keys)).layer_specs[0]
    assert (spec.attention_heads, spec.kv_heads) == heads


def test_unknown_device_and_memory_mode_are_plan_errors():
    with pytest.raises(PlanError, match="tpu9"):
        plan(cfg(), device="tpu9")
    with pytest.raises(PlanError):
        plan_config(cfg(), device="h100", memory="sometimes")


def test_plan_config_names_an_unnamed_config_config():
    p = plan_config(cfg(), select=False)
    assert (p.model, p.source) == ("config", "config")


def test_plan_config_needs_a_mapping():
    with pytest.raises(MalformedConfig, match=f"{NAME} must be a JSON object, not list"):
        plan_config([("model_type", "qwen3_moe")], select=False, name=NAME)


def test_selection_on_this_machine_when_no_device_is_named(monkeypatch):
    from moe_registry.environment import detect_device

    monkeypatch.setenv("MOE_REGISTRY_DEVICE", "h100")
    detect_device.cache_clear()
    try:
        p = plan_config(cfg(), name=NAME)
    finally:
        detect_device.cache_clear()
    assert p.device is None and p.memory is not None
    assert all(layer.selection is not None and layer.selection.device.name == "h100" for layer in p.layers)


# --- Quantization sources and expert_dtype -------------------------------------------------------

FP8_BLOCK = {"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic"}


def test_quantization_config_sources_in_vllms_order():
    hf = {"quantization": {"quant_algo": "NVFP4"}}
    gptq = {"bits": 4, "group_size": 128, "desc_act": False, "sym": True, "quant_method": "gptq"}
    kind = lambda p: p.layer_specs[0].quant.kind  # noqa: E731
    assert kind(plan(cfg(quantization_config=FP8_BLOCK), hf_quant_config=hf)) is QuantKind.FP8_BLOCK
    assert kind(plan(cfg(), hf_quant_config=hf, quantize_config=gptq)) is QuantKind.NVFP4
    assert kind(plan(cfg(), quantize_config=gptq)) is QuantKind.INT4_W4A16
    assert kind(plan(cfg())) is QuantKind.BF16
    wrapped = {"model_type": "w", "text_config": cfg(quantization_config=FP8_BLOCK)}
    assert kind(plan(wrapped, hf_quant_config=hf)) is QuantKind.FP8_BLOCK
    outer = {"model_type": "w", "quantization_config": FP8_BLOCK, "text_config": cfg()}
    assert kind(plan(outer, hf_quant_config=hf)) is QuantKind.FP8_BLOCK
    assert kind(plan(cfg(quantization_config=FP8_BLOCK), quant="nvfp4")) is QuantKind.NVFP4  # the override wins


def test_expert_dtype_fp4_makes_the_routed_experts_mxfp4():
    v4 = cfg(model_type="deepseek_v4", quantization_config=FP8_BLOCK, expert_dtype="fp4")
    p = plan(v4)
    assert p.layer_specs[0].quant.kind is QuantKind.MXFP4_MXFP8 and "expert_dtype fp4" in p.quantization
    assert plan({**v4, "expert_dtype": "fp8"}).layer_specs[0].quant.kind is QuantKind.FP8_BLOCK
    assert plan({**v4, "quantization_config": None}).layer_specs[0].quant.kind is QuantKind.BF16  # nothing quantized
    assert plan(v4, quant="nvfp4").layer_specs[0].quant.kind is QuantKind.NVFP4  # an override wins
    raises(MalformedConfig, {**v4, "expert_dtype": "fp2"}, "expert_dtype", "fp2")
    fp8 = plan({**v4, "expert_dtype": "fp8"}).quantization
    assert p.quantization.startswith(fp8) and p.quantization != fp8  # the block-FP8 summary, then the experts'


def test_quant_config_errors_name_the_file_or_argument_they_came_from(tmp_path):
    bad_hf = {"quantization": {"quant_algo": "NO_SUCH_ALGO"}}
    bad_gptq = {"bits": 4, "group_size": 128, "quant_method": "no-such-method"}
    with pytest.raises(PlanError, match=f"{NAME} hf_quant_config"):
        plan_config(cfg(), select=False, name=NAME, hf_quant_config=bad_hf)
    with pytest.raises(PlanError, match=f"{NAME} quantize_config"):
        plan_config(cfg(), select=False, name=NAME, quantize_config=bad_gptq)
    (tmp_path / "config.json").write_text(json.dumps(cfg()))
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(bad_hf))
    with pytest.raises(PlanError, match="hf_quant_config.json"):
        plan_model(tmp_path, select=False)
    (tmp_path / "hf_quant_config.json").unlink()
    (tmp_path / "quantize_config.json").write_text(json.dumps(bad_gptq))
    with pytest.raises(PlanError, match="quantize_config.json"):
        plan_model(tmp_path, select=False)
    with pytest.raises(PlanError, match=f"{NAME} quantization_config"):
        plan_config(cfg(quantization_config={"quant_method": "no-such-method"}), select=False, name=NAME)


def test_expert_dtype_keeps_excluded_layers_unquantized():
    q = {**FP8_BLOCK, "modules_to_not_convert": ["layers.0.ffn.experts"]}  # DeepSeek-V4's native names
    specs = plan(cfg(model_type="deepseek_v4", quantization_config=q, expert_dtype="fp4")).layer_specs
    assert [s.quant.kind for s in specs] == [QuantKind.BF16] + [QuantKind.MXFP4_MXFP8] * 3


# --- Groups --------------------------------------------------------------------------------------

def _group(indices) -> LayerGroup:
    layer = LayerSpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=32)
    return LayerGroup(indices=tuple(indices), names=tuple(f"l{i}" for i in indices), layer=layer)


@pytest.mark.parametrize("indices,label,contiguous", [
    ([5], "layer 5", True),
    ([3, 4], "layers 3-4 (2)", True),
    ([3, 4, 5, 6], "layers 3-6 (4)", True),
    ([1, 3, 5], "layers 1-5 (3 of them)", False),
    ([1, 2, 4], "layers 1-4 (3 of them)", False),
])
def test_group_labels(indices, label, contiguous):
    g = _group(indices)
    assert g.label() == label and g.contiguous is contiguous
    assert (g.first, g.last, g.count) == (indices[0], indices[-1], len(indices))


def test_groups_of_a_plan_are_runs_of_equal_shapes():
    p = plan(cfg(num_hidden_layers=5, num_experts_per_tok=[2, 2, 4, 2, 2]))
    assert [(g.indices, g.layer.top_k) for g in p.groups()] == [((0, 1), 2), ((2,), 4), ((3, 4), 2)]
    assert all(g.layer.name is None and g.layer.index is None for g in p.groups())


# --- Sources -------------------------------------------------------------------------------------

def test_sources(tmp_path, monkeypatch):
    with pytest.raises(UnknownPreset, match="empty"):
        plan_model("   ", select=False)
    with pytest.raises(ConfigNotFound):
        plan_model("/no-such-absolute-dir-xyz", select=False)
    with pytest.raises(ConfigNotFound):
        plan_model("no-such/dir/config", select=False)  # two slashes: a path
    with pytest.raises(ConfigNotFound):
        plan_model("missing.json", select=False)
    with pytest.raises(ConfigNotFound):
        plan_model("~/no-such-model-dir-xyz", select=False)
    with pytest.raises(UnknownPreset):
        plan_model("org/model", select=False)  # one slash: a Hugging Face id, not a path
    bad = tmp_path / "config.json"
    bad.write_bytes(b"\xff\xfe{not utf-8")
    with pytest.raises(MalformedConfig, match="UTF-8") as err:
        plan_model(bad, select=False)
    assert str(bad) in str(err.value)
    with pytest.raises(MalformedConfig):
        plan_model(tmp_path, select=False)
    bad.write_text("[1, 2]")
    with pytest.raises(MalformedConfig, match="not list"):
        plan_model(bad, select=False)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(cfg()))

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(planner_sources, "read_regular_file", unreadable)  # the planner's one bounded read
    with pytest.raises(ConfigNotFound, match=": Permission denied$") as err:  # the OS's reason, as it says it
        plan_model(good, select=False)
    assert str(good) in str(err.value)

    def vanished(*args, **kwargs):  # removed between the existence check and the read
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(planner_sources, "read_regular_file", vanished)
    with pytest.raises(ConfigNotFound, match="no such file") as err:
        plan_model(good, select=False)
    assert str(good) in str(err.value)


def test_a_broken_selection_import_is_not_mistaken_for_a_missing_module(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def failing(name, globals=None, locals=None, fromlist=(), level=0):
        if level and name == "selection":  # the planner's relative `from ..selection import`
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", failing)
    with pytest.raises(ModuleNotFoundError):
        plan_config(cfg(), device="h100")


def test_presets_by_name_and_by_model_id():
    by_name = plan_model("qwen3-30b-a3b", select=False)
    assert by_name.model == "qwen3-30b-a3b" and by_name.source == "preset qwen3-30b-a3b"
    assert by_name.model_id and by_name.provenance  # the preset's _model_id and _source
    for spelling in (by_name.model_id, by_name.model_id.upper(), " qwen3-30b-a3b.json ", "QWEN3-30B-A3B"):
        assert plan_model(spelling, select=False).model == "qwen3-30b-a3b"


def test_a_config_path_gives_the_model_its_directory_name_and_id(tmp_path):
    d = tmp_path / "My-Model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg(_name_or_path="org/My-Model")))
    p = plan_model(d / "config.json", select=False)
    assert (p.model, p.model_id) == ("My-Model", "org/My-Model")
    (d / "config.json").write_text(json.dumps(cfg(_name_or_path=7)))
    assert plan_model(d, select=False).model_id is None
    other = tmp_path / "other.json"
    other.write_text(json.dumps(cfg()))
    assert plan_model(other, select=False).model == "other"


def test_companion_quant_files_of_a_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(cfg()))
    (tmp_path / "quantize_config.json").write_text(json.dumps(
        {"bits": 4, "group_size": 128, "desc_act": False, "sym": True, "quant_method": "gptq"}))
    assert plan_model(tmp_path, select=False).layer_specs[0].quant.kind is QuantKind.INT4_W4A16
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "NVFP4"}}))
    assert plan_model(tmp_path, select=False).layer_specs[0].quant.kind is QuantKind.NVFP4


def test_list_presets_names_every_preset_with_its_quantization():
    listed = list_presets()
    assert listed["qwen3-30b-a3b"] == "Qwen/Qwen3-30B-A3B; bf16"
    # a quantized export names the model it was made from (its _quantized_from)
    assert listed["gemma-4-26b-a4b-nvfp4"].startswith("google/gemma-4-26B-A4B-it (quantized export); ")
    assert "NVFP4" in listed["gemma-4-26b-a4b-nvfp4"]
