"""The decision core's own argument checks and input bounds, each with its exact one-line message
(issue 13's hardening as seen from issue 15: these branches are part of what mutation testing and
branch coverage measure for selection.py and the planner package)."""

from __future__ import annotations

import json

import pytest

from moe_registry import planner
from moe_registry.planner import sources
from moe_registry.errors import InvalidArgument, InvalidDevice
from moe_registry.planner import (
    ConfigNotFound, MalformedConfig, PlanError, QuantConfigError, UnknownPreset, plan_config, plan_model,
)
from moe_registry.schemas.layer import LayerSpec
from moe_registry.selection import select_backend

LAYER = LayerSpec(num_experts=8, top_k=2, hidden_size=256, intermediate_size=256, routing="softmax_topk_renorm")


def cfg(**keys) -> dict:
    base = {"model_type": "qwen3_moe", "num_hidden_layers": 4, "hidden_size": 64, "num_experts": 8,
            "num_experts_per_tok": 2, "moe_intermediate_size": 32, "hidden_act": "silu"}
    base.update(keys)
    return base


# --- select_backend ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    ({"layer_spec": {"num_experts": 8}}, InvalidArgument, "select_backend needs a LayerSpec, got dict"),
    ({"prefer": "marlin"}, InvalidArgument, "prefer must be a list of backend ids, got str"),
    ({"forbid": 5}, InvalidArgument, "forbid must be a list of backend ids, got int"),
    ({"prefer": ["marlin", 1]}, InvalidArgument, "prefer must be a list of backend ids (str)"),
    ({"forbid": [None]}, InvalidArgument, "forbid must be a list of backend ids (str)"),
    ({"force": 5}, InvalidArgument, "force must be a backend id (str) or None, got int"),
    ({"policy": object()}, InvalidArgument, "policy must be a Policy (DeclaredPriority, MeasuredPolicy, ...), got object"),
    ({"device": 3.5}, InvalidDevice, "device must be a preset name, a DeviceSpec, a torch.device or None, got float"),
])
def test_select_backend_refuses_each_bad_argument_with_its_message(kwargs, error, message):
    args = {"layer_spec": LAYER, "device": "h100", **kwargs}
    with pytest.raises(error) as info:
        select_backend(args.pop("layer_spec"), args.pop("device"), **args)
    assert str(info.value) == message


def test_a_class_named_device_outside_torch_is_not_a_torch_device():
    device = type("device", (), {"type": "cpu", "__module__": "not_torch"})()
    with pytest.raises(InvalidDevice, match="got device$"):
        select_backend(LAYER, device)
    torchy = type("device", (), {"type": "cpu", "__module__": "torch"})()  # as torch.device reports itself
    assert select_backend(LAYER, torchy).device.name == "cpu"


def test_torch_devices():
    torch = pytest.importorskip("torch")
    s = select_backend(LAYER, torch.device("cpu"))
    assert s.device.name == "cpu" and not s.planning  # this machine: packages checked, not assumed
    with pytest.raises(InvalidDevice) as info:
        select_backend(LAYER, torch.device("meta"))
    assert str(info.value) == "torch device type 'meta' has no fused-MoE backends (cpu or cuda)"
    if not torch.cuda.is_available():
        with pytest.raises(InvalidDevice) as info:
            select_backend(LAYER, torch.device("cuda"))
        assert str(info.value) == "cuda requested but this machine has no CUDA device"


# --- plan_model / plan_config ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"parallel": "tp8"}, "parallel must be a ParallelConfig, got str"),
    ({"quant": 5}, "quant must be a QuantScheme or a string such as 'nvfp4', got int"),
    ({"device": 5}, "device must be a preset name or a DeviceSpec, got int"),
])
def test_plan_arguments(kwargs, message):
    with pytest.raises(PlanError) as info:
        plan_config(cfg(), select=False, **kwargs)
    assert str(info.value) == message


def test_model_sources():
    with pytest.raises(UnknownPreset) as info:
        plan_model(123, select=False)
    assert str(info.value) == "model source must be a preset name or a path, not int"
    with pytest.raises(ConfigNotFound) as info:
        plan_model("a\0b", select=False)
    assert str(info.value) == "model source contains a NUL character"
    with pytest.raises(ConfigNotFound, match=r"^cannot use '/x+' as a path: File name too long$"):
        plan_model("/" + "x" * 300, select=False)


def test_layer_count_bound():
    assert len(plan_config(cfg(num_hidden_layers=256), select=False).layers) == 256  # at the limit
    with pytest.raises(MalformedConfig) as info:
        plan_config(cfg(num_hidden_layers=257), select=False)
    assert str(info.value).endswith("num_hidden_layers 257 is above the limit of 256")


def test_json_numbers_constants_size_and_depth(tmp_path):
    path = tmp_path / "config.json"
    # Non-finite numbers parse (as Python's json module and transformers read them, issue 20) and are
    # refused where a number is used.
    moe = '"num_hidden_layers": 2, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64'
    path.write_text('{"hidden_size": 1e999, ' + moe + '}')
    with pytest.raises(MalformedConfig, match=r"hidden_size must be an integer >= 1, got inf$"):
        plan_model(path, select=False)
    path.write_text('{"hidden_size": NaN, ' + moe + '}')
    with pytest.raises(MalformedConfig, match=r"hidden_size must be an integer >= 1, got nan$"):
        plan_model(path, select=False)
    path.write_text("[" * 65 + "]" * 65)  # 65 levels: past the limit, but not deep enough for a RecursionError
    with pytest.raises(MalformedConfig, match=r"is nested too deeply \(the limit is 64 levels\)$"):
        plan_model(path, select=False)
    path.write_text('{"a": ' * 65 + "1" + "}" * 65)  # objects count as levels too
    with pytest.raises(MalformedConfig, match=r"is nested too deeply \(the limit is 64 levels\)$"):
        plan_model(path, select=False)
    path.write_text("[" * 64 + "]" * 64)  # 64 levels: parsed, then refused as not an object
    with pytest.raises(MalformedConfig, match="must hold a JSON object, not list"):
        plan_model(path, select=False)
    path.write_text("[" * 200_000 + "]" * 200_000)  # json's own recursion gives out first
    with pytest.raises(MalformedConfig, match=r"is nested too deeply \(the limit is 64 levels\)$"):
        plan_model(path, select=False)
    path.write_bytes(b" " * (planner.MAX_CONFIG_BYTES + 1))
    with pytest.raises(MalformedConfig, match=r"is larger than 8388608 bytes \(the limit for a config file\)$"):
        plan_model(path, select=False)


def test_text_over_the_size_limit_is_refused_before_parsing():
    with pytest.raises(MalformedConfig) as info:
        sources._parse_json(" " * (planner.MAX_CONFIG_BYTES + 1), "where")
    assert str(info.value) == f"where is {planner.MAX_CONFIG_BYTES + 1} characters; the limit is {planner.MAX_CONFIG_BYTES}"
    assert sources._parse_json(json.dumps({"a": 1}), "where") == {"a": 1}


def test_a_quantization_config_of_the_wrong_json_types_is_a_typed_error():
    bad = cfg(quantization_config={"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": 128})
    with pytest.raises(QuantConfigError, match=r"weight_block_size must be a list of two integers, got 128$"):
        plan_config(bad, select=False)
    ct = cfg(quantization_config={"quant_method": "compressed-tensors", "config_groups": ["not", "a", "dict"]})
    with pytest.raises(QuantConfigError):
        plan_config(ct, select=False)


# --- Bounds at their edges, and messages that name what they read -----------------------------------

def test_a_config_of_exactly_the_size_limit_is_read(tmp_path):
    body = json.dumps(cfg())
    path = tmp_path / "config.json"
    path.write_text(body + " " * (planner.MAX_CONFIG_BYTES - len(body)))  # exactly 8 MiB: at the limit
    assert len(plan_model(path, select=False).layers) == 4


def test_path_errors_quote_80_characters_and_the_os_reason():
    with pytest.raises(ConfigNotFound) as info:
        plan_model("/" + "x" * 300, select=False)
    assert str(info.value) == f"cannot use {'/' + 'x' * 79!r} as a path: File name too long"
    with pytest.raises(ConfigNotFound) as info:  # RuntimeError (no strerror) from an unknown ~user
        plan_model("~nosuchuser_xyz/config.json", select=False)
    assert str(info.value) == "cannot use '~nosuchuser_xyz/config.json' as a path: Could not determine home directory."


def test_a_layer_field_error_names_the_field():
    with pytest.raises(PlanError) as info:
        plan_config(cfg(hidden_size=2**21), select=False)
    assert str(info.value) == ("model.layers.0.mlp.experts (layer 0): hidden_size: Input should be less than or "
                               "equal to 1048576")
    with pytest.raises(PlanError) as info:  # a model-level check has no field location
        plan_config(cfg(num_experts_per_tok=9), select=False)
    assert str(info.value) == "model.layers.0.mlp.experts (layer 0): top_k (9) exceeds num_experts (8)"


def test_the_regex_matching_budget_counts_the_moe_layers():
    # 100 re: patterns x 64 MoE layers = 6,400 <= 8,192: planned; x 128 layers = 12,800: refused.
    patterns = [f"re:.*layers\\.{i}\\.self_attn.*" for i in range(100)]
    quant = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": patterns,
             "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int",
                                                                         "symmetric": True, "group_size": 128,
                                                                         "strategy": "group"}}}}
    assert len(plan_config(cfg(num_hidden_layers=64, quantization_config=quant), select=False).layers) == 64
    with pytest.raises(QuantConfigError) as info:
        plan_config(cfg(num_hidden_layers=128, quantization_config=quant), select=False)
    assert str(info.value) == ("config quantization_config: 100 patterns (re: and globs) x 128 MoE layers is above "
                               "the matching limit of 8192")


def test_preset_descriptions():
    presets = planner.list_presets()
    assert presets["qwen3-30b-a3b"] == "Qwen/Qwen3-30B-A3B; bf16"
    assert presets["gemma-4-26b-a4b-nvfp4"] == ("google/gemma-4-26B-A4B-it (quantized export); ModelOpt NVFP4 g16, "
                                                "2 exclude patterns")


def test_one_line_names_a_nested_field_with_dots():
    # The planner's form (the first error). A nested field's location has two parts, joined with "."; a
    # model-level error has none.
    from pydantic import ValidationError

    from moe_registry.errors import validation_one_line
    from moe_registry.schemas.layer import LayerSpec

    base = dict(num_experts=8, top_k=2, hidden_size=512, intermediate_size=512)
    with pytest.raises(ValidationError) as nested:
        LayerSpec.model_validate({**base, "quant": {"kind": "int4_w4a16", "group_size": "x"}})
    assert validation_one_line(nested.value, first_only=True).startswith(
        "quant.group_size: Input should be a valid integer")
    with pytest.raises(ValidationError) as field:
        LayerSpec.model_validate({**base, "top_k": 0})
    assert validation_one_line(field.value, first_only=True) == "top_k: Input should be greater than 0"
    with pytest.raises(ValidationError) as model_level:
        LayerSpec.model_validate({**base, "top_k": 9})
    assert validation_one_line(model_level.value, first_only=True) == "top_k (9) exceeds num_experts (8)"


def test_preset_description_falls_back_to_the_name_and_the_top_level_dtype(monkeypatch):
    # A preset with no model id and no quantized-from names itself; its dtype may sit at the top level only
    # (multimodal configs whose text_config has none).
    fake = {"model_type": "fake_moe", "torch_dtype": "float16", "text_config": {"num_hidden_layers": 2}}
    monkeypatch.setattr(planner._presets, "preset_names", lambda: ("my-preset",))
    monkeypatch.setattr(planner._presets, "preset_text", lambda name: json.dumps(fake))
    assert planner.list_presets() == {"my-preset": "my-preset; fp16"}


def test_a_layer_with_two_bad_fields_names_the_first_only():
    # The planner reports one field per layer (the first pydantic error), not every error joined.
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_hidden_layers": 1,
           "num_experts": 8, "num_experts_per_tok": 2, "hidden_size": 10**9, "moe_intermediate_size": 10**9,
           "intermediate_size": 64, "hidden_act": "silu"}
    with pytest.raises(planner.InvalidLayer) as info:
        planner.plan_config(cfg, select=False)
    assert str(info.value) == ("model.layers.0.mlp.experts (layer 0): hidden_size: Input should be less than or "
                               "equal to 1048576")


def test_single_layer_spells_one_layer_with_its_defaults_and_limits():
    from moe_registry.schemas.activation import Activation, SiluClampParams, SwigluOAIParams
    from moe_registry.schemas.layer import ParallelConfig, RoutingMethod
    from moe_registry.schemas.quant import QuantScheme

    plain = planner.single_layer(experts=8, top_k=2, hidden=512, intermediate=256)
    assert plain == LayerSpec(num_experts=8, top_k=2, hidden_size=512, intermediate_size=256)
    assert (plain.activation, plain.quant, plain.dtype, plain.routing, plain.bias, plain.apply_router_weight_on_input,
            plain.parallel, plain.activation_params) == (Activation.SILU, QuantScheme.parse("bf16"), "bf16", None,
                                                         False, False, ParallelConfig(), None)
    full = planner.single_layer(experts=8, top_k=1, hidden=512, intermediate=256, activation="swigluoai",
                                quant="fp8", dtype="fp16", swiglu_limit=5.0, routing="softmax_topk", bias=True,
                                router_weight_on_input=True, parallel=ParallelConfig(tp=2))
    assert (full.activation, full.quant, full.dtype, full.routing, full.bias, full.apply_router_weight_on_input,
            full.parallel, full.activation_params) == (
        Activation.SWIGLUOAI, QuantScheme.parse("fp8"), "fp16", RoutingMethod.SOFTMAX_TOPK, True, True,
        ParallelConfig(tp=2), SwigluOAIParams(limit=5.0))
    gpt_oss = planner.single_layer(experts=8, top_k=2, hidden=512, intermediate=256, activation="swigluoai")
    assert gpt_oss.activation_params == SwigluOAIParams()  # the gpt-oss constants
    clamp = planner.single_layer(experts=8, top_k=2, hidden=512, intermediate=256, activation="silu_clamp",
                                 swiglu_limit=7.0)
    assert clamp.activation_params == SiluClampParams(limit=7.0)
    with pytest.raises(ValueError, match="^--swiglu-limit applies to swigluoai and silu_clamp, not silu$"):
        planner.single_layer(experts=8, top_k=2, hidden=512, intermediate=256, swiglu_limit=7.0)
    with pytest.raises(ValueError, match=r"^silu_clamp needs --swiglu-limit \(the config's swiglu_limit\)$"):
        planner.single_layer(experts=8, top_k=2, hidden=512, intermediate=256, activation="silu_clamp")
