"""Two published configs that did not plan (issue 20): Nemotron-3-Super's ``Infinity`` and
DeepSeek-V4-Flash, whose only eligible backend was the fp32 test oracle."""

from __future__ import annotations

import json

import pytest

from moe_registry.cli import main
from moe_registry.planner import plan_config, plan_model
from moe_registry.selection import select_backend

from test_published_configs import DSV4_FLASH, NEMOTRON_SUPER


def strict(text: str):
    def refuse(name):
        raise ValueError(f"{name} in output")
    return json.loads(text, parse_constant=refuse)


# --- Nemotron-3-Super-120B-A12B-NVFP4: "time_step_limit": [0.0, Infinity] -------------------------

def test_a_config_with_infinity_plans_and_the_output_stays_strict_json(tmp_path, capsys):
    # The published config.json holds the Mamba time-step limit as Python's json module writes it.
    config = {**NEMOTRON_SUPER, "time_step_limit": [0.0, float("inf")], "time_step_min": 0.001}
    text = json.dumps(config)
    assert "Infinity" in text  # as transformers' to_json_string writes it
    (tmp_path / "config.json").write_text(text)
    assert main(["explain", str(tmp_path), "--device", "b200", "--json"]) == 0
    data = strict(capsys.readouterr().out)
    assert {g["layer"]["hidden_size"] for g in data["groups"]} == {1024}
    assert main(["explain", str(tmp_path), "--device", "b200"]) == 0
    assert "Infinity" not in capsys.readouterr().out


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_a_non_finite_number_is_refused_where_it_is_used(tmp_path, capsys, literal):
    text = json.dumps({**NEMOTRON_SUPER, "moe_intermediate_size": 123456789}).replace("123456789", literal)
    (tmp_path / "config.json").write_text(text)
    assert main(["explain", str(tmp_path), "--device", "b200"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "moe_intermediate_size" in err


# --- DeepSeek-V4-Flash: what vLLM 0.34.0 runs, declared planning-only ------------------------------

@pytest.mark.parametrize("device, backend, flag", [("h100", "humming", "humming"),
                                                   ("b200", "trtllm-fp4", "flashinfer_trtllm")])
def test_deepseek_v4_flash_plans_on_what_vllm_runs(device, backend, flag):
    plan = plan_config(DSV4_FLASH, device=device)
    (group,) = plan.groups()
    s = group.selection
    assert s is not None and s.backend == backend and s.engines["vllm"] == flag
    assert any("silu_clamp in its engine; moe-registry's adapter cannot run it yet" in n.message for n in s.notes)
    assert "reference" not in [c.backend for c in s.eligible]


def test_planning_only_activations_are_refused_when_running_here():
    from moe_registry.environment import Environment

    layer = plan_config(DSV4_FLASH, select=False).layer_specs[0].shape_key()
    here = Environment(planning=False)  # this machine: the adapter must run it, and it cannot
    with pytest.raises(Exception) as info:
        select_backend(layer, "h100", environment=here, force="humming")
    assert "adapter does not pass it yet" in str(info.value)


def test_the_fp32_reference_is_never_a_gpu_deployment_plan(capsys):
    # Forbid every real backend: the reference alone could run it, and that is no plan for an H100.
    from moe_registry.registry import default_registry

    others = [x for b in default_registry().ids() if b != "reference" for x in ("--forbid", b)]
    assert main(["explain", "qwen3-30b-a3b", "--device", "h100", *others]) == 3
    out = capsys.readouterr().out
    assert "moe-registry's test oracle" in " ".join(out.split())
    plan = plan_model("qwen3-30b-a3b", "cpu", force="reference")  # on a CPU target it stays a plan
    assert plan.groups()[0].selection.backend == "reference"
    from moe_registry.errors import BackendNotEligible

    with pytest.raises(BackendNotEligible, match="test oracle"):
        plan_model("qwen3-30b-a3b", "h100", force="reference")


def test_the_planning_only_activation_reason_exactly():
    from moe_registry.backends.humming import DECLARATION
    from moe_registry.environment import Environment
    from moe_registry.errors import BackendNotEligible
    from moe_registry.schemas.activation import Activation

    layer = plan_config(DSV4_FLASH, select=False).layer_specs[0].shape_key()
    with pytest.raises(BackendNotEligible) as info:
        select_backend(layer, "h100", environment=Environment(planning=False), force="humming")
    (reason,) = [r for r in info.value.reasons if r.code.value == "adapter_missing" and r.field == "activation"]
    assert (reason.required, reason.actual, reason.hint, reason.source) == (
        "silu_clamp in the adapter", "not implemented", "plan with a named --device to see what an engine would run",
        DECLARATION.activations[Activation.SILU_CLAMP].source)
