"""With the real vLLM wheel installed (its own venv: scripts/engine_tests.sh vllm): vLLM builds the MoE
layers of real models through its own model and layer code as if on SM90 / SM100, with the plugin
loaded the way vLLM loads it, in observe and enforce mode.

Marked ``vllm`` and skipped where vLLM is not importable, so the default suite runs without it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moe_registry.engines.vllm import names
from moe_registry.engines.vllm.answers import case_for
from moe_registry.engines.vllm.executed import run_cases, vllm_version
from moe_registry.planner import plan_model
from moe_registry.schemas.device import get_device

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(
    vllm_version() is None or not str(vllm_version()).startswith(("0.34.", "0.33.")),
    reason="needs vLLM 0.34.x / 0.33.x installed (scripts/engine_tests.sh vllm)")]

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "tests" / "fixtures" / "checkpoints"
MODELS = {  # the five: NvFP4, MXFP4, FP8 block, bf16, FP8 per tensor
    "gemma-4-26b-a4b-nvfp4": "gemma-4-26b-a4b-nvfp4", "gpt-oss-120b": "gpt-oss-120b", "deepseek-v3": "deepseek-v3",
    "qwen3-30b-a3b": "qwen3-30b-a3b", "mixtral-8x7b-instruct-fp8": str(CHECKPOINTS / "mixtral-8x7b-instruct-fp8"),
}
DEVICES = ("h100", "b200")


def _cases(mode: str | None, **changes):
    out = []
    for name, source in MODELS.items():
        for dev in DEVICES:
            device = get_device(dev)
            case = case_for(plan_model(source, device), device, case_id=f"{name}@{dev}")
            out.append(dataclasses.replace(case, plugin=mode, **changes))
    return out


@pytest.fixture(scope="module")
def observed():
    return run_cases(_cases("observe"))


@pytest.fixture(scope="module")
def enforced():
    return run_cases(_cases("enforce"))


def _ours(case_id: str):
    name, dev = case_id.split("@")
    return plan_model(MODELS[name], get_device(dev)).groups()[0].selection


def test_vllm_builds_every_moe_layer_through_its_own_code(observed):
    expected = {"gemma-4-26b-a4b-nvfp4": 30, "gpt-oss-120b": 36, "deepseek-v3": 58, "qwen3-30b-a3b": 48,
                "mixtral-8x7b-instruct-fp8": 32}
    for case_id, result in observed.items():
        assert result.error is None, (case_id, result.error)
        assert len(result.layers) == expected[case_id.split("@")[0]], case_id
        assert not result.unobserved
        for layer in result.layers:
            assert layer.experts_class and layer.backend and layer.facts is not None, (case_id, layer)


def test_observe_table_lists_every_layer_with_vllms_own_reasons(observed):
    gemma = observed["gemma-4-26b-a4b-nvfp4@b200"]
    text = "\n".join(gemma.log)
    assert "moe-registry (observe)" in text and "30 MoE layers" in text
    assert "layers 0-29 (30)" in text and "FLASHINFER_TRTLLM (TrtLlmNvFp4ExpertsModular)" in text
    # vLLM's own words for the monolithic class it passed over (Gemma 4 routes with a custom function)
    assert "FLASHINFER_TRTLLM (TrtLlmNvFp4ExpertsMonolithic): kernel does not support routing method 101" in text
    mixtral = "\n".join(observed["mixtral-8x7b-instruct-fp8@h100"].log)
    assert "FLASHINFER_CUTLASS (FlashInferExperts)" in mixtral
    assert "FLASHINFER_TRTLLM (TrtLlmFp8ExpertsMonolithic): kernel does not support current device cuda" in mixtral
    for result in observed.values():  # nothing pinned in observe
        assert all(layer.pinned is None for layer in result.layers)


def test_enforce_pins_only_what_vllm_accepts_and_vllm_then_runs_ours(enforced):
    pinned_somewhere = False
    for case_id, result in enforced.items():
        assert result.error is None, (case_id, result.error)
        ours = _ours(case_id)
        key = ours.engines.get("vllm")
        for layer in result.layers:
            if key is not None and names.family_of_name(key) == names.family_of_class(layer.experts_class):
                continue  # vLLM runs the registry's kernel: pinned, or already its own pick
            # otherwise enforce must have left the layer alone, with the reason
            assert layer.pinned is None and layer.note, (case_id, layer.prefix, layer.note)
        pins = {layer.pinned for layer in result.layers}
        if pins != {None}:
            pinned_somewhere = True
            assert pins == {key}, (case_id, pins)
            assert names.family_of_class(result.layers[0].experts_class) == names.family_of_name(key)
        assert any("enforce fingerprint" in line for line in result.log), case_id
    assert pinned_somewhere
    # The two the issue names: Mixtral FP8 per tensor and gpt-oss on Hopper run ours under enforce.
    assert {layer.experts_class for layer in enforced["mixtral-8x7b-instruct-fp8@h100"].layers} == {"FlashInferExperts"}
    # gpt-oss MXFP4 on Hopper: ours is humming (measured 72.8 vs 133.1 us at T=1 against vLLM's default,
    # benchmarks/results/decode-h100), so enforce pins it and vLLM builds Humming's experts.
    gpt_oss = enforced["gpt-oss-120b@h100"].layers
    assert {layer.pinned for layer in gpt_oss} == {"humming"}
    assert {names.family_of_class(layer.experts_class) for layer in gpt_oss} == {"humming"}


def test_enforce_leaves_an_explicit_moe_backend_alone():
    results = run_cases([dataclasses.replace(c, moe_backend="triton") for c in _cases("enforce")
                         if c.id in ("qwen3-30b-a3b@b200", "mixtral-8x7b-instruct-fp8@h100")])
    for case_id, result in results.items():
        assert result.error is None, (case_id, result.error)
        for layer in result.layers:
            assert layer.pinned is None and layer.note == "--moe-backend triton given: left alone"
            assert layer.experts_class == "TritonExperts"  # what the user asked for, not ours
            assert layer.facts is not None and layer.facts.moe_backend == "triton"


def test_enforce_fingerprint_is_the_same_for_the_same_decisions(enforced):
    again = run_cases([c for c in _cases("enforce") if c.id == "gpt-oss-120b@h100"])["gpt-oss-120b@h100"]
    line = next(x for x in again.log if "fingerprint" in x)
    first = next(x for x in enforced["gpt-oss-120b@h100"].log if "fingerprint" in x)
    assert line == first


def test_json_report_is_written_where_asked(tmp_path):
    path = tmp_path / "report.json"
    os.environ["MOE_REGISTRY_VLLM_JSON"] = str(path)
    try:
        run_cases([c for c in _cases("observe") if c.id == "deepseek-v3@b200"])
    finally:
        del os.environ["MOE_REGISTRY_VLLM_JSON"]
    data = json.loads(path.read_text())
    assert data["plugin"] == "moe-registry" and data["mode"] == "observe" and data["vllm"] == vllm_version()
    group = data["models"][0]["groups"][0]
    assert group["range"] == "layers 3-60 (58)" and group["engine"]["kernel"].startswith("FLASHINFER_TRTLLM")
    assert group["ours"] == "trtllm-fp8-block" and group["agree"] is True


_CHILD = """
import logging, os, sys, types
from moe_registry.engines.vllm import fakes
fakes.install(fakes.Target("b200", 100, 180))
records = []
logging.getLogger("vllm.moe_registry").addHandler(type("H", (logging.Handler,), {{"emit": lambda s, r: records.append(
    r.getMessage())}})(logging.WARNING))
os.environ["MOE_REGISTRY_VLLM"] = "enforce"
{setup}
from moe_registry.engines.vllm import plugin
plugin.register()
{after}
from moe_registry.engines.vllm.observe import HOOKS
print("WARNINGS", records)
print("HOOKS", HOOKS.installed)
"""


def _child(setup: str = "", after: str = "") -> str:
    done = subprocess.run([sys.executable, "-c", _CHILD.format(setup=setup, after=after)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_vllm_without_the_hooks_gets_a_warning_not_a_crash():
    # vLLM's module loads without RoutedExperts._get_quant_method: one warning naming it, no hook left,
    # and vLLM goes on (the layer module imports and builds as if the plugin were absent).
    out = _child(after=(
        "import vllm.model_executor.layers.fused_moe.routed_experts as re_mod\n"
        "plugin._patch_routed(types.SimpleNamespace(RoutedExperts=type('RoutedExperts', (), {})))\n"
        "assert re_mod.RoutedExperts.__dict__['_get_quant_method'].__qualname__ == 'RoutedExperts._get_quant_method'\n"
        "from moe_registry.planner import plan_model\n"
        "from moe_registry.schemas.device import get_device\n"
        "from moe_registry.engines.vllm.answers import case_for\n"
        "from moe_registry.engines.vllm.executed import _build\n"
        "_build(case_for(plan_model('qwen3-30b-a3b', get_device('b200')), get_device('b200')), [])\n"
        "print('BUILT')\n"))
    assert "has no RoutedExperts._get_quant_method; vLLM runs without the plugin" in out
    assert "BUILT" in out and "HOOKS []" in out


def test_another_vllm_version_gets_a_warning_and_no_hooks():
    out = _child(setup=("import importlib.metadata as m\nreal = m.version\n"
                        "m.version = lambda name: '0.35.0' if name == 'vllm' else real(name)"),
                 after="import vllm.model_executor.layers.fused_moe.routed_experts")
    assert "vLLM 0.35.0 is not a version this plugin knows (0.33.x, 0.34.x); vLLM runs without it" in out
    assert "HOOKS []" in out


def test_explain_engine_vllm_prints_vllms_pick_beside_ours():
    done = subprocess.run([sys.executable, "-m", "moe_registry.cli", "explain", "gemma-4-26b-a4b-nvfp4", "--device",
                           "b200", "--engine", "vllm", "--json"], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    group = data["groups"][0]
    assert group["ours"] == "trtllm-fp4" and group["agree"] is True
    assert group["engine"]["kernel"] == "FLASHINFER_TRTLLM (TrtLlmNvFp4ExpertsModular)"
    assert group["engine"]["flag"] == "flashinfer_trtllm" and group["engine"]["source"] == "executed"
    assert group["engine"]["rejected"][0]["reason"] == "kernel does not support routing method 101"
