"""Our ids <-> SGLang 0.5.23 runner names (engines/sglang/names.py) and the plugin's choice, held
without SGLang installed: against the declarations, and against the committed record of executed
SGLang (docs/verification/sglang-0.5.23-executed.json)."""

from __future__ import annotations

import pytest

from moe_registry.engines.answer import EngineAnswer
from moe_registry.engines.parity_sglang import PROBE_PRESETS, PROBE_RUNNERS, load_record
from moe_registry.engines.sglang import plugin
from moe_registry.engines.sglang.names import (
    BRANCHES, METHODS_OF_KIND, RUNNERS, has_branch, kernel_family, missing_branches, sglang_flag)
from moe_registry.planner import plan_model
from moe_registry.registry import Registry, default_registry
from moe_registry.schemas.capability import EngineNames
from moe_registry.schemas.layer import ParallelConfig
from moe_registry.schemas.quant import QuantKind
from moe_registry.selection.policy import DeclaredPriority

DECLARATIONS = Registry(entry_points=False).declarations()
RECORD = load_record()


def decl(backend: str):
    return next(d for d in DECLARATIONS if d.id == backend)


def built(method: str) -> set[str]:
    """Runners the executed record shows SGLang building a layer of quant method ``method`` with."""
    return {x["runner"] for c in RECORD["cases"].values() for x in c["layers"] if x.get("method") == method}


@pytest.mark.parametrize("d", DECLARATIONS, ids=lambda d: d.id)
def test_no_declaration_names_a_runner_sglang_has_no_branch_for(d):
    assert missing_branches(d) == []


def test_flags_per_quant_kind():
    assert sglang_flag(decl("trtllm-fp4"), QuantKind.NVFP4) == "flashinfer_trtllm"
    assert sglang_flag(decl("trtllm-fp4"), QuantKind.MXFP4) == "flashinfer_mxfp4"
    assert sglang_flag(decl("trtllm-fp4"), QuantKind.MXFP4_MXFP8) is None
    assert sglang_flag(decl("trtllm-fp8-channel"), QuantKind.FP8_CHANNEL) is None
    assert sglang_flag(decl("flashinfer-cutlass"), QuantKind.FP8_BLOCK) is None
    assert sglang_flag(decl("flashinfer-cutlass"), QuantKind.BF16) == "flashinfer_cutlass"
    assert sglang_flag(decl("marlin"), QuantKind.INT4_W4A16) is None  # GPTQ asserts auto in SGLang
    assert sglang_flag(decl("marlin"), QuantKind.NVFP4) == "marlin"
    assert sglang_flag(decl("triton-fused-moe"), QuantKind.FP8_BLOCK) == "triton"
    assert sglang_flag(decl("humming"), QuantKind.NVFP4) is None
    assert sglang_flag(decl("torch-grouped-mm"), QuantKind.BF16) is None


def test_a_name_sglang_lacks_is_caught():
    bad = decl("marlin").model_copy(update={"engines": EngineNames(sglang="marlin_v2")})
    assert missing_branches(bad)[0] == "int4_w4a16: 'marlin_v2' is no SGLang 0.5.23 runner"
    unbranched = decl("trtllm-fp4").model_copy(update={"engines": EngineNames(sglang="flashinfer_trtllm")})
    assert missing_branches(unbranched) == ["mxfp4: Mxfp4MoEMethod has no 'flashinfer_trtllm' branch",
                                            "mxfp4_mxfp8: 'flashinfer_trtllm' named, but no SGLang quant method of this "
                                            "kind is known here"]
    split = decl("marlin").model_copy(update={"engines": EngineNames(sglang="flashinfer_trtllm", sglang_by_quant={
        k: None for k in QuantKind if k is not QuantKind.INT4_W4A16})})
    assert missing_branches(split) == ["int4_w4a16: GPTQMarlinMoEMethod has no 'flashinfer_trtllm' branch"]
    both = decl("marlin").model_copy(update={"engines": EngineNames(sglang="triton", sglang_by_quant={
        k: None for k in QuantKind if k is not QuantKind.INT4_W4A16})})
    assert missing_branches(both) == ["int4_w4a16: GPTQMarlinMoEMethod has no 'triton' branch",
                                      "int4_w4a16: CompressedTensorsFusedMoEMethod has no 'triton' branch"]


def test_every_problem_of_every_kind_is_reported_in_order():
    names = EngineNames(sglang=None, sglang_by_quant={QuantKind.FP16: "nope", QuantKind.FP8: "marlin",
                                                      QuantKind.MXFP4: "flashinfer_trtllm", QuantKind.INT4_FP8: "triton",
                                                      QuantKind.NVFP4: "triton", QuantKind.MXFP8: "marlin"})
    d = decl("flashinfer-cutlass").model_copy(update={"engines": names})
    assert [q.kind for q in d.quant][:7] == [QuantKind.BF16, QuantKind.FP16, QuantKind.FP8, QuantKind.FP8_BLOCK,
                                             QuantKind.MXFP4, QuantKind.INT4_FP8, QuantKind.NVFP4]
    assert missing_branches(d) == ["fp16: 'nope' is no SGLang 0.5.23 runner",
                                   "fp8: Fp8MoEMethod has no 'marlin' branch",
                                   "mxfp4: Mxfp4MoEMethod has no 'flashinfer_trtllm' branch",
                                   "int4_fp8: 'triton' named, but no SGLang quant method of this kind is known here",
                                   "nvfp4: ModelOptNvFp4FusedMoEMethod has no 'triton' branch",
                                   "mxfp8: 'marlin' named, but no SGLang quant method of this kind is known here"]


def test_has_branch_needs_every_method_of_the_kind():
    assert has_branch("marlin", QuantKind.MXFP4) and has_branch("marlin", QuantKind.NVFP4)
    assert not has_branch("marlin", QuantKind.INT4_W4A16)  # compressed-tensors has it, GPTQ (auto only) does not
    assert not has_branch("flashinfer_trtllm", QuantKind.INT4_W4A16)
    assert not has_branch(None, QuantKind.BF16)
    assert not has_branch("triton", QuantKind.MXFP8)  # no method known for the kind
    assert has_branch("flashinfer_mxfp4", QuantKind.MXFP4) and not has_branch("flashinfer_mxfp4", QuantKind.NVFP4)


@pytest.mark.parametrize("method", sorted(BRANCHES))
def test_every_branch_is_one_executed_sglang_built(method):
    assert BRANCHES[method][0] <= RUNNERS
    assert BRANCHES[method][0] <= built(method), f"{method}: named but never built by SGLang in the record"


def test_runners_sglang_refused_on_every_device_have_no_branch():
    """A probe that SGLang refused (an error) or replaced (another runner built) on both devices is no branch."""
    for kind, preset in PROBE_PRESETS.items():
        for runner in PROBE_RUNNERS:
            outcomes = [c for k, c in RECORD["cases"].items() if k.startswith(f"probe-{kind} ") and k.endswith(f" {runner}")]
            assert len(outcomes) == 2, (kind, runner)
            ran = [x for c in outcomes if not c["error"] for x in c["layers"]
                   if not x.get("error") and x["runner"] == runner]
            if not ran:
                methods = METHODS_OF_KIND.get(QuantKind(kind.removesuffix("_ct")), ())
                assert not any(runner in BRANCHES[m][0] for m in methods if m in _methods_of(preset)), (kind, runner)


def _methods_of(preset: str) -> set[str]:
    return {x["method"] for k, c in RECORD["cases"].items() if f" {preset} " in k for x in c["layers"] if x.get("method")}


@pytest.mark.parametrize("runner,method,sm,family", [
    ("flashinfer_trtllm", "Fp8MoEMethod", 100, "flashinfer-trtllm"),
    ("flashinfer_trtllm_routed", None, 100, "flashinfer-trtllm"),
    ("flashinfer_mxfp4", "Mxfp4MoEMethod", 100, "flashinfer-trtllm"),
    ("flashinfer_mxfp4", "Mxfp4MoEMethod", 103, "flashinfer-trtllm"),
    ("flashinfer_mxfp4", "Mxfp4MoEMethod", 90, "flashinfer-cutlass"),
    ("flashinfer_mxfp4", "Mxfp4MoEMethod", 120, "flashinfer-cutlass"),
    ("flashinfer_mxfp4", "Mxfp4MoEMethod", None, None),
    ("triton", "UnquantizedFusedMoEMethod", 90, "triton"),
    ("triton_kernel", "Mxfp4MoEMethod", 90, "oai-triton-kernels"),
    ("marlin", "GPTQMarlinMoEMethod", 90, "marlin"),
    ("deep_gemm", "Fp8MoEMethod", 90, "deep-gemm"),
    ("flashinfer_cutlass", "UnquantizedFusedMoEMethod", 90, "flashinfer-cutlass"),
    ("humming", None, 90, "humming"),
    ("aiter", None, 90, None),
])
def test_kernel_family(runner, method, sm, family):
    assert kernel_family(runner, method, sm) == family


def test_selection_carries_the_flag_of_the_layers_quant_kind():
    b200 = plan_model("gpt-oss-120b", "b200")
    assert {g.selection.backend for g in b200.groups()} == {"trtllm-fp4"}
    assert {g.selection.engines["sglang"] for g in b200.groups()} == {"flashinfer_mxfp4"}
    gemma = plan_model("gemma-4-26b-a4b-nvfp4", "b200")
    assert {g.selection.engines["sglang"] for g in gemma.groups()} == {"flashinfer_trtllm"}
    qwen = plan_model("qwen3-30b-a3b", "h100")
    assert qwen.groups()[0].selection.engines == {"vllm": "triton", "sglang": "triton"}


def test_sglang_answers_agree_by_kernel_family():
    answer = EngineAnswer(engine="sglang", version="0.5.23", source="executed", flag="flashinfer_mxfp4",
                          kernel="flashinfer_mxfp4 (Mxfp4MoEMethod)", family="flashinfer-trtllm")
    assert answer.agrees_with(decl("trtllm-fp4"))
    assert not answer.agrees_with(decl("flashinfer-cutlass"))
    assert not answer.agrees_with(None)
    none = answer.model_copy(update={"family": None, "flag": None})
    assert none.agrees_with(None) and not none.agrees_with(decl("trtllm-fp4"))


# --- the plugin's config-time choice (pure: the registry's plan, no SGLang) ----------------------


@pytest.mark.parametrize("model,device,runner", [
    ("qwen3-30b-a3b", "h100", "triton"),
    ("qwen3-30b-a3b", "b200", "flashinfer_trtllm"),
    ("gemma-4-26b-a4b-nvfp4", "h100", "marlin"),  # humming first, no SGLang name: the next eligible one SGLang runs
    ("gemma-4-26b-a4b-nvfp4", "b200", "flashinfer_trtllm"),
    # humming first (no SGLang name), then oai-triton-kernels: SGLang's own triton_kernel runner.
    ("gpt-oss-120b", "h100", "triton_kernel"),
    ("gpt-oss-120b", "b200", "flashinfer_mxfp4"),
    ("deepseek-v3", "b200", "flashinfer_trtllm"),
])
def test_the_plugin_chooses_one_runner_sglang_has_a_branch_for(model, device, runner):
    choice = plugin.choose(plan_model(model, device))
    assert choice.runner == runner
    assert "one runner for the whole model" in choice.why
    assert all(flag is None or flag == runner for _, _, flag in choice.per_group)


def test_the_plugin_leaves_sglang_alone_without_a_runner_it_can_name():
    # GPTQ int4: SGLang runs Marlin under auto only (an explicit runner asserts), so nothing is declared.
    choice = plugin.choose(plan_model("qwen3-30b-a3b-gptq-int4", "h100"))
    assert choice.runner is None and choice.why.startswith("no runner SGLang has a branch for")
    assert [flag for _, _, flag in choice.per_group] == [None]
    # Gemma 4 NvFP4 at TP8 without padding: no backend of ours can run it, SGLang keeps its own choice.
    unpadded = plan_model("gemma-4-26b-a4b-nvfp4", "b200", ParallelConfig(tp=8), policy=DeclaredPriority(allow_padding=False))
    none = plugin.choose(unpadded)
    assert none.runner is None and none.why == "no backend of the registry can run layers 0-29 (30): left to SGLang"
    assert plugin.choose(plan_model("deepseek-v3", "h100")).runner == "triton"  # FP8 block on Hopper


def test_the_plugin_votes_by_layers_and_needs_a_branch_for_every_kind(monkeypatch):
    plan = plan_model("qwen3-30b-a3b", "b200")
    monkeypatch.setattr(plugin, "has_branch", lambda flag, kind: False)
    assert plugin.choose(plan) .runner is None


def test_the_per_layer_table_groups_ranges():
    report = plugin.Report(model="m", choice=plugin.Choice("triton", "why"), expected=4)
    report.rows = [(0, "a", "triton", "U", "triton-fused-moe", "agree"), (1, "b", "triton", "U", "triton-fused-moe", "agree"),
                   (2, "c", "marlin", "G", "marlin", "agree"), (3, "d", "triton", "U", "triton-fused-moe", "agree")]
    lines = plugin.render(report).splitlines()
    assert lines[0] == "moe-registry x SGLang 0.5.23: m, 4 MoE layers"
    assert lines[1] == "  config time: triton (why)"
    assert [line.split()[0] for line in lines[3:]] == ["0-1", "2", "3"]


def test_registry_default_flags_are_the_declared_ones():
    reg = default_registry()
    for d in DECLARATIONS:
        assert reg.get(d.id).engines == d.engines


def test_without_sglang_there_is_no_sglang_answer(monkeypatch):
    import pytest as _pytest

    from moe_registry.engines import answer
    from moe_registry.engines.sglang import executed

    plan = plan_model("qwen3-30b-a3b", "h100")
    monkeypatch.setattr(executed, "installed_version", lambda: None)
    with _pytest.raises(answer.EngineNotInstalled, match=r"sglang==0\.5\.23 .*sglang is not installed"):
        answer.engine_answers(plan, "sglang", source="executed")
    monkeypatch.setattr(executed, "installed_version", lambda: "0.5.22")
    with _pytest.raises(answer.EngineNotInstalled, match="sglang 0.5.22 is installed"):
        answer.engine_answers(plan, "sglang", source="executed")
    with _pytest.raises(ValueError, match="no model answer for engine 'sglang'"):
        answer.engine_answers(plan, "sglang", source="model")
