"""SGLang 0.5.23 itself, executed on this CPU with the GPU faked (engines/sglang/_worker.py names
each fake): its runner for the four issue-22 models on H100 and B200, our provider through
``engine_answers``, and the plugin loaded by SGLang's own ``load_plugins()`` from our entry point.

Marked ``sglang``: run in the SGLang venv with ``scripts/engine_tests.sh sglang``; the default suite
deselects them and, without SGLang, they skip.
"""

from __future__ import annotations

import logging

import pytest

pytestmark = pytest.mark.sglang
pytest.importorskip("sglang")

from moe_registry.engines.answer import engine_answers  # noqa: E402
from moe_registry.engines.sglang.executed import Case, answers_from_outcome, case_for_plan, run_cases  # noqa: E402
from moe_registry.planner import plan_model  # noqa: E402
from moe_registry.registry import default_registry  # noqa: E402
from moe_registry.schemas.device import get_device  # noqa: E402
from moe_registry.schemas.layer import ParallelConfig  # noqa: E402

MODELS = ("gemma-4-26b-a4b-nvfp4", "gpt-oss-120b", "deepseek-v3", "qwen3-30b-a3b")
# (device, model) -> (runner, quant method, the config-time step that set it or None)
EXPECTED = {
    ("h100", "gemma-4-26b-a4b-nvfp4"): ("marlin", "ModelOptNvFp4FusedMoEMethod", None),
    ("h100", "gpt-oss-120b"): ("triton_kernel", "Mxfp4MoEMethod", "_gpt_oss_overrides"),
    ("h100", "deepseek-v3"): ("triton", "Fp8MoEMethod", None),
    ("h100", "qwen3-30b-a3b"): ("triton", "UnquantizedFusedMoEMethod", None),
    ("b200", "gemma-4-26b-a4b-nvfp4"): ("flashinfer_trtllm", "ModelOptNvFp4FusedMoEMethod", "_gemma4_overrides"),
    ("b200", "gpt-oss-120b"): ("flashinfer_mxfp4", "Mxfp4MoEMethod", "_gpt_oss_overrides"),
    ("b200", "deepseek-v3"): ("flashinfer_trtllm", "Fp8MoEMethod", "_deepseek_moe_quant_resolution"),
    ("b200", "qwen3-30b-a3b"): ("flashinfer_trtllm", "UnquantizedFusedMoEMethod", "_qwen3_moe_family_overrides"),
}


@pytest.fixture(scope="module", params=("h100", "b200"))
def executed(request):
    device = get_device(request.param)
    plans = [plan_model(m, device, ParallelConfig(tp=8) if m == "deepseek-v3" else ParallelConfig()) for m in MODELS]
    outcomes, meta = run_cases(device, [case_for_plan(p, key=p.model) for p in plans])
    return request.param, plans, outcomes, meta


def test_sglang_resolves_the_runner_of_every_moe_layer(executed):
    dev, plans, outcomes, meta = executed
    assert meta["version"] == "0.5.23"
    for plan, outcome in zip(plans, outcomes):
        runner, method, step = EXPECTED[(dev, plan.model)]
        assert outcome.error is None, outcome.error
        assert [x["index"] for x in outcome.layers] == [p.layer.index for p in plan.layers]  # every MoE layer built
        assert {(x["runner"], x["method"]) for x in outcome.layers} == {(runner, method)}, plan.model
        steps = [s["source"] for s in outcome.config["steps"] if "moe_runner_backend" in s["fields"]]
        assert (steps[0] if steps else None) == step  # the config-time override SGLang ran, or none (auto per layer)
        if step:
            assert outcome.config["steps"][0]["where"].startswith("sglang/srt/arg_groups/")  # file:line of SGLang's own code


def test_answers_carry_the_family_and_the_fakes(executed):
    dev, plans, outcomes, meta = executed
    for plan, outcome in zip(plans, outcomes):
        answers = answers_from_outcome(plan, outcome, meta)
        assert len(answers) == len(plan.groups())
        for a in answers:
            assert a is not None and a.source == "executed" and a.flag == EXPECTED[(dev, plan.model)][0]
            assert a.family is not None
            assert any(f.startswith("F1 torch.cuda") for f in a.assumptions)


def test_engine_answers_runs_sglang_for_a_plan():
    plan = plan_model("qwen3-30b-a3b", "h100")
    (answer,) = engine_answers(plan, "sglang", source="executed")
    assert (answer.flag, answer.family, answer.kernel) == ("triton", "triton", "triton (UnquantizedFusedMoEMethod)")
    assert answer.agrees_with(default_registry().get("triton-fused-moe"))
    assert not answer.agrees_with(default_registry().get("torch-grouped-mm"))


# --- the plugin, loaded by SGLang --------------------------------------------------------------


@pytest.fixture(scope="module")
def with_plugin():
    device = get_device("h100")
    gpt = plan_model("gpt-oss-120b", device)
    qwen = plan_model("qwen3-30b-a3b", device, ParallelConfig(tp=8, ep=2))
    single = plan_model("qwen3-30b-a3b", device)  # the registry picks triton here; the user asks for another
    explicit = case_for_plan(single, ("--moe-runner-backend", "flashinfer_cutlass"), key="explicit")
    # Nemotron-3-Nano bf16 relu2 on Hopper: SGLang's own pick is flashinfer_cutlass, the registry's triton-fused-moe.
    nemotron = plan_model("nemotron-3-nano-30b-a3b", device)
    cases = [case_for_plan(gpt, key="gpt"), case_for_plan(qwen, key="qwen"), explicit,
             case_for_plan(nemotron, key="nemotron")]
    outcomes, _ = run_cases(device, cases, load_plugins=True)
    return dict(zip(("gpt", "qwen", "explicit", "nemotron"), zip((gpt, qwen, single, nemotron), outcomes)))


def test_the_plugins_config_time_choice_is_accepted_by_sglang(with_plugin):
    plan, outcome = with_plugin["nemotron"]
    assert outcome.plugin is not None, "SGLang's load_plugins() did not load the moe_registry entry point"
    choice = outcome.plugin["choice"]
    assert choice["runner"] is not None and "one runner for the whole model" in choice["why"]
    ours = [s for s in outcome.config["steps"] if s["source"] == "moe_registry"]
    # SGLang's own pick here is flashinfer_cutlass (docs/parity-sglang.md); the registry's, triton, differs, so it
    # is declared and SGLang validates and builds every layer with it.
    assert choice["runner"] == "triton"
    assert ours and ours[0]["fields"]["moe_runner_backend"] == choice["runner"]
    assert outcome.error is None and outcome.config["moe_runner_backend"] == choice["runner"]
    assert {x["runner"] for x in outcome.layers} == {choice["runner"]}  # every layer built with it


def test_the_per_layer_table_lists_every_moe_layer(with_plugin):
    for key in ("gpt", "qwen"):
        plan, outcome = with_plugin[key]
        (report,) = outcome.plugin["reports"]
        assert report["printed"] and report["expected"] == len(plan.layers)
        assert sorted(r[0] for r in report["rows"]) == [p.layer.index for p in plan.layers]
        assert report["text"].splitlines()[0].endswith(f"{len(plan.layers)} MoE layers")


def test_an_explicit_runner_is_left_alone(with_plugin):
    plan, outcome = with_plugin["explicit"]
    assert outcome.error is None, outcome.error
    assert plugin_choice_for(plan) == "triton"  # what the plugin would have declared under auto
    assert not [s for s in outcome.config["steps"] if s["source"] == "moe_registry"]
    assert outcome.config["moe_runner_backend"] == "flashinfer_cutlass"
    assert outcome.plugin["choice"] is None
    assert {x["runner"] for x in outcome.layers} == {"flashinfer_cutlass"}
    (report,) = outcome.plugin["reports"]  # still observed, per layer
    assert len(report["rows"]) == len(plan.layers)


def plugin_choice_for(plan):
    from moe_registry.engines.sglang.plugin import choose

    return choose(plan).runner


# --- harmless when SGLang's internals move ----------------------------------------------------


def test_a_missing_hook_is_one_warning_and_sglang_runs_without_it(monkeypatch, caplog):
    from sglang.srt.arg_groups import resolution_hooks
    from sglang.srt.plugins.hook_registry import HookRegistry

    from moe_registry.engines.sglang import plugin

    monkeypatch.setattr(plugin, "LAYER_TARGET", "sglang.srt.layers.moe.fused_moe_triton.layer.FusedMoE.gone")
    monkeypatch.setattr(plugin, "RESOLUTION_STEP", "handle_moe_kernel_config_renamed")
    monkeypatch.setitem(plugin._STATE, "warned", set())
    before = (dict(HookRegistry._hooks), {k: list(v) for k, v in resolution_hooks._HOOKS.items()})
    with caplog.at_level(logging.WARNING, logger="moe_registry.sglang"):
        plugin.register()
    assert (dict(HookRegistry._hooks), {k: list(v) for k, v in resolution_hooks._HOOKS.items()}) == before
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "handle_moe_kernel_config_renamed" in lines[0] and "FusedMoE.gone" in lines[1]


def test_a_failing_choice_never_raises_into_sglang(monkeypatch, caplog):
    from moe_registry.engines.sglang import plugin

    def broken(*_a, **_k):
        raise RuntimeError("planner broke")

    class Args:
        _raw_input = {"moe_runner_backend": "auto"}
        _resolved_overrides: list = []

    monkeypatch.setattr(plugin, "_declare", broken)
    monkeypatch.setitem(plugin._STATE, "warned", set())
    ran = []
    with caplog.at_level(logging.WARNING, logger="moe_registry.sglang"):
        plugin._resolution_hook(Args(), ran.append)
    assert len(ran) == 1 and "planner broke" in caplog.records[0].getMessage()


def test_case_keys_round_trip():
    case = Case({"config.json": {}}, ("--tp-size", "1"), ((0, "x"),), "k")
    assert case.request() == {"files": {"config.json": {}}, "args": ["--tp-size", "1"], "layers": [[0, "x"]]}
