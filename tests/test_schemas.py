"""Schemas: validation with readable messages, aliases, presets, JSON Schema export."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from moe_registry import Activation, LayerSpec, ParallelConfig, QuantScheme
from moe_registry.schemas.capability import BackendCapability
from moe_registry.schemas.device import PRESETS, get_device
from moe_registry.schemas.quant import QuantKind


def make(**overrides):
    base = dict(num_experts=128, top_k=8, hidden_size=2816, intermediate_size=704)
    return LayerSpec(**{**base, **overrides})


@pytest.mark.parametrize("overrides, message", [
    ({"hidden_size": 0}, "greater than 0"),
    ({"intermediate_size": -704}, "greater than 0"),
    ({"num_experts": 0}, "greater than 0"),
    ({"top_k": 129}, "top_k (129) exceeds num_experts (128)"),
    ({"activation": "swishy"}, "unknown activation 'swishy'"),
    ({"quant": "nvfp5"}, "unknown quantization scheme 'nvfp5'"),
    ({"parallel": ParallelConfig(tp=3)}, "TP3 does not divide intermediate_size 704"),
    ({"parallel": ParallelConfig(ep=3)}, "EP3 does not divide num_experts 128"),
    ({"quant": "nvfp4:g32"}, "fixed group size of 16"),
    ({"activation_params": {"alpha": 1.0}}, "swigluoai activation only"),
])
def test_invalid_layer_specs_raise_readable_validation_errors(overrides, message):
    with pytest.raises(ValidationError) as err:
        make(**overrides)
    assert message in str(err.value)


def test_hf_aliases_and_gating():
    assert Activation.parse("gelu_pytorch_tanh") is Activation.GELU_TANH
    assert Activation.parse("relu2") is Activation.RELU2_NO_MUL
    assert Activation.parse("SiLU") is Activation.SILU
    assert make(activation="gelu_pytorch_tanh").activation is Activation.GELU_TANH
    assert Activation.SILU.is_gated and not Activation.RELU2_NO_MUL.is_gated


def test_quant_scheme_parse_and_label_round_trip():
    for text in ["bf16", "nvfp4", "int4_w4a16:g128", "int4_w4a16:g32:zp", "int4_w4a16:gchannel", "fp8_block",
                 "nvfp4:linear"]:
        assert QuantScheme.parse(QuantScheme.parse(text).label()) == QuantScheme.parse(text)
    assert QuantScheme.parse("int4_w4a16").group_size == 128
    assert QuantScheme.parse("mxfp4").group_size == 32
    assert QuantScheme(kind=QuantKind.FP8).group_size is None
    with pytest.raises(ValueError, match="zero points apply to int4"):
        QuantScheme.parse("fp8:zp")


def test_per_rank_sizes():
    layer = make(parallel=ParallelConfig(tp=8))
    assert layer.local_intermediate_size == 88 and layer.gemm1_rows == 176
    layer = make(parallel=ParallelConfig(ep=8))
    assert layer.local_intermediate_size == 704 and layer.local_num_experts == 16
    assert make(activation="relu2_no_mul").gemm1_rows == 704


def test_devices():
    assert get_device("SM_90").sm == 90 and get_device("sm103").family == 10
    assert get_device("RTX-PRO-6000").sm == 120
    with pytest.raises(ValueError, match="unknown device 'h300'"):
        get_device("h300")
    for name in ["cpu", "a100", "l40s", "h100", "h200", "b200", "gb200", "b300", "rtx-pro-6000", "sm80", "sm120"]:
        assert name in PRESETS


def test_layer_spec_round_trips_and_is_hashable():
    layer = make(activation="swigluoai", activation_params={"limit": 7.0, "interleaved": True}, bias=True)
    assert LayerSpec.model_validate_json(layer.model_dump_json()) == layer
    assert hash(layer) == hash(LayerSpec.model_validate_json(layer.model_dump_json()))
    with pytest.raises(ValidationError):
        LayerSpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=64, unknown_field=1)


def test_json_schema_export():
    cap = BackendCapability.model_json_schema()
    assert cap["title"] == "BackendCapability" and "activations" in cap["properties"]
    layer = LayerSpec.model_json_schema()
    assert set(layer["required"]) == {"num_experts", "top_k", "hidden_size", "intermediate_size"}
    json.dumps([cap, layer])


def test_declarations_validate_and_reject_unprioritised_families():
    from moe_registry.backends.reference import DECLARATION

    data = DECLARATION.model_dump()
    data["priority"] = {"unquantized": 0}
    with pytest.raises(ValidationError, match="no priority for quant families"):
        BackendCapability.model_validate(data)
