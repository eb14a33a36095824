"""`explain MODEL --engine ...`: any engine's answers beside ours (engines/answer.py compare,
render/engine.py), vLLM's executed records mapped onto plan groups (engines/vllm/answers.py), and the
one line without the engine. No engine installed here: answers come from registered stand-in providers
or committed records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moe_registry.cli import main
from moe_registry.engines import answer as answer_mod
from moe_registry.engines.answer import EngineAnswer, EngineRejection, compare, engine_answers
from moe_registry.engines.vllm import executed
from moe_registry.engines.vllm.answers import answers_for_result, case_for
from moe_registry.engines.vllm.executed import CaseResult
from moe_registry.engines.vllm.observe import LayerRecord
from moe_registry.planner import plan_model
from moe_registry.registry import Registry
from moe_registry.render.engine import plugin_text, row_groups
from moe_registry.schemas.device import get_device
from moe_registry.schemas.selection import Reason, ReasonCode, Rejection

ROOT = Path(__file__).resolve().parents[1]
DECLS = tuple(Registry(entry_points=False).declarations())


def _answer(**changes) -> EngineAnswer:
    base = dict(engine="vllm", version="0.34.0", source="executed", flag="flashinfer_cutlass",
                kernel="FLASHINFER_CUTLASS (FlashInferExperts)", family="flashinfer-cutlass")
    return EngineAnswer(**{**base, **changes})


def _reason(code=ReasonCode.DEVICE_UNSUPPORTED, message="needs SM100", hint="use a b200") -> Reason:
    return Reason(code=code, field="device", required="SM100", actual="SM90", message=message, hint=hint)


def test_compare_agree_and_each_way_to_differ():
    assert compare(_answer(), "flashinfer-cutlass", (), DECLS).agree
    # the engine's kernel is eligible here but ours ranks another first: its flag is the fix
    c = compare(_answer(), "triton-fused-moe", (), DECLS)
    assert not c.agree and c.why == "flashinfer-cutlass (the engine's kernel) is eligible; ours ranks triton-fused-moe first"
    assert c.fix == "--moe-backend triton"
    # the engine's kernel was rejected here: the first reason, and our flag
    rejected = (Rejection(backend="flashinfer-cutlass", reasons=(_reason(),)),)
    c = compare(_answer(), "triton-fused-moe", rejected, DECLS)
    assert c == answer_mod.Comparison(agree=False, why="flashinfer-cutlass (the engine's kernel) rejected here: needs SM100",
                                      fix="--moe-backend triton")
    # no declaration of the engine's kernel
    deepgemm = _answer(flag="deep_gemm", kernel="DEEPGEMM (DeepGemmExperts)", family="deepgemm")
    c = compare(deepgemm, "flashinfer-cutlass", (), DECLS)
    assert c.why == "no declaration here is vllm's DEEPGEMM (DeepGemmExperts)"
    assert c.fix == "--moe-backend flashinfer_cutlass"
    # ours is not an engine kernel at all
    c = compare(deepgemm, "torch-grouped-mm", (), DECLS)
    assert c == answer_mod.Comparison(agree=False, why=(
        "ours, torch-grouped-mm, is not a vllm kernel; no declaration here is vllm's DEEPGEMM (DeepGemmExperts)"),
        fix="run torch-grouped-mm through moe-registry")
    # an answer naming no kernel (a family we do not model) says "pick"
    blank = _answer(kernel=None, family="aiter", flag="aiter")
    assert compare(blank, "torch-grouped-mm", (), DECLS).why.endswith("no declaration here is vllm's pick")
    assert compare(blank, "flashinfer-cutlass", (), DECLS) == answer_mod.Comparison(
        agree=False, why="no declaration here is vllm's pick", fix="--moe-backend flashinfer_cutlass")
    # no backend of ours and nothing to say why (no rejections): no fix either
    assert compare(_answer(), None, (), DECLS) == answer_mod.Comparison(agree=False, why="no backend here runs it")
    hintless = (Rejection(backend="reference", reasons=(_reason(hint=""),)),)
    assert compare(_answer(), None, hintless, DECLS) == answer_mod.Comparison(
        agree=False, why="no backend here runs it: needs SM100")
    # no backend of ours: our first reason and its hint
    c = compare(_answer(), None, (Rejection(backend="reference", reasons=(_reason(),)),), DECLS)
    assert (c.agree, c.why, c.fix) == (False, "no backend here runs it: needs SM100 (hint: use a b200)", "use a b200")
    # the engine refuses the layer
    refuses = _answer(flag=None, kernel=None, family=None, error="No FP8 MoE backend supports the deployment configuration.")
    assert compare(refuses, None, (), DECLS) == answer_mod.Comparison(agree=True)  # neither runs it
    c = compare(refuses, "triton-fused-moe", (), DECLS)
    assert not c.agree and c.why.startswith("vllm refuses it: No FP8") and c.fix == "--moe-backend triton"
    c = compare(refuses, "torch-grouped-mm", (), DECLS)
    assert c.fix == "run torch-grouped-mm through moe-registry (vllm has no such kernel)"


def test_sglang_answers_compare_by_family_and_fix_by_sglang_flag():
    sgl = EngineAnswer(engine="sglang", version="0.5.23", source="executed", flag="flashinfer_cutlass",
                       kernel="flashinfer_cutlass", family="flashinfer-cutlass")
    assert compare(sgl, "flashinfer-cutlass", (), DECLS).agree
    c = compare(sgl, "triton-fused-moe", (), DECLS)
    assert not c.agree and c.fix == "--moe-runner-backend triton"  # SGLang's name for our pick
    # humming has no SGLang name: no flag to give, only moe-registry itself runs it
    c = compare(sgl, "humming", (), DECLS)
    assert not c.agree and c.fix == "" and c.why.startswith("flashinfer-cutlass (the engine's kernel) is eligible")
    # a runner whose family we cannot name never agrees, even with a declaration of the same flag
    assert not compare(sgl.model_copy(update={"family": None}), "flashinfer-cutlass", (), DECLS).agree
    triton = sgl.model_copy(update={"flag": "triton", "kernel": "triton", "family": "triton"})
    assert compare(triton, "flashinfer-cutlass", (), DECLS).fix == "--moe-runner-backend flashinfer_cutlass"


def test_vllm_answers_compare_by_family_not_by_sglang_name():
    # humming has a vLLM name only; a vLLM answer of the humming family agrees with it
    humming = _answer(flag="humming", kernel="HUMMING (HummingIndexedExperts)", family="humming")
    assert compare(humming, "humming", (), DECLS).agree
    assert not compare(humming, "marlin", (), DECLS).agree


def test_providers_and_defaults(monkeypatch):
    monkeypatch.setattr(answer_mod, "PROVIDERS", {})
    answer_mod._load_builtin_providers()
    from moe_registry.engines.sglang import executed as sglang_executed
    assert answer_mod.PROVIDERS == {"vllm": {"model": answer_mod._vllm_model, "executed": answer_mod._vllm_executed},
                                    "sglang": {"executed": answer_mod._sglang_executed}}
    # The executed providers hand the plan to their engine module (imported only then).
    monkeypatch.setattr(executed, "executed_answers", lambda plan: ("vllm", plan))
    monkeypatch.setattr(sglang_executed, "executed_answers", lambda plan: ("sglang", plan))
    assert answer_mod._vllm_executed("p") == ("vllm", "p") and answer_mod._sglang_executed("p") == ("sglang", "p")
    plan = plan_model("qwen3-30b-a3b", get_device("b200"))
    [model] = engine_answers(plan)  # vllm, model: the defaults
    assert (model.engine, model.source, model.kernel) == ("vllm", "model", "FLASHINFER_TRTLLM (TrtLlmBf16ExpertsMonolithic)")
    assert model.flag == "flashinfer_trtllm" and model.family == "flashinfer-trtllm" and model.error is None
    with pytest.raises(ValueError, match=r"no executed answer for engine 'trt'; known: .*vllm \(executed/model\)"):
        engine_answers(plan, "trt", source="executed")
    # the model covers NVIDIA targets only; a --quant override still reads as the layers say
    assert engine_answers(plan_model("qwen3-30b-a3b", get_device("cpu"))) == (None,)
    [override] = engine_answers(plan_model("qwen3-30b-a3b", get_device("h100"), quant="fp8"))
    assert override.kernel == "TRITON (TritonExperts)"  # dynamic per-tensor FP8 on Hopper, as vLLM's --quantization fp8


def test_explain_without_engines_imports_no_engine_runner():
    """explain's engine defaults read the model of vLLM's oracle; the modules that run an engine in a
    child (~11 ms of imports) load only when an engine is installed."""
    code = ("import sys; from moe_registry.planner import plan_model; from moe_registry.render.deploy import "
            "engine_defaults, _installed; plan = plan_model('qwen3-30b-a3b', 'h100'); "
            "[engine_defaults(plan, e) for e in ('vllm', 'sglang')]; "
            "print([e for e in ('vllm', 'sglang') if not _installed(e) and f'moe_registry.engines.{e}.executed' in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]


def test_register_provider():
    answer_mod._load_builtin_providers()
    def provide(plan):
        return ()
    saved = {engine: dict(sources) for engine, sources in answer_mod.PROVIDERS.items()}
    try:
        answer_mod.register_provider("sglang", "model", provide)
        assert answer_mod.PROVIDERS["sglang"]["model"] is provide
        answer_mod.register_provider("sglang", "executed", provide)
        assert set(answer_mod.PROVIDERS["sglang"]) == {"model", "executed"}
    finally:
        answer_mod.PROVIDERS.clear()
        answer_mod.PROVIDERS.update(saved)


def _record(prefix, backend="TRITON", cls="TritonExperts", error=None, facts=True):
    from moe_registry.engines.vllm.layer import LayerFacts

    f = LayerFacts(prefix=prefix, num_experts=128, top_k=8, hidden=2048, intermediate=768, activation="silu",
                   in_dtype="bfloat16", routing="RenormalizeNaive", tp=1, ep=1, dp=1, use_ep=False) if facts else None
    return LayerRecord(prefix, oracle="Unquantized", facts=f, backend=backend, experts_class=cls, error=error,
                       flag="triton" if cls else None)


def test_records_map_onto_plan_groups_by_layer_index():
    plan = plan_model("qwen3-30b-a3b", get_device("h100"))
    result = CaseResult("x", "0.34.0", [_record(f"model.layers.{i}.mlp.experts") for i in range(48)], [], ["note a"])
    [answer] = answers_for_result(plan, result)
    assert answer.kernel == "TRITON (TritonExperts)" and answer.flag == "triton" and answer.family == "triton"
    assert "note a" in answer.assumptions and answer.assumptions[0].startswith("vLLM ran on this machine")
    # vLLM chose differently inside one of our groups: said, not hidden
    layers = list(result.layers)
    layers[5] = _record("model.layers.5.mlp.experts", "FLASHINFER_CUTLASS", "FlashInferExperts")
    [answer] = answers_for_result(plan, CaseResult("x", "0.34.0", layers, [], []))
    assert "vLLM chose differently within the group at model.layers.5.mlp.experts" in answer.assumptions
    # vLLM stopped before building any MoE layer
    [answer] = answers_for_result(plan, CaseResult("x", "0.34.0", [], [], [], error="ValueError: bad config"))
    assert answer.error == "vLLM did not build this layer: ValueError: bad config" and answer.kernel is None
    # vLLM's oracle refused the first layer (no facts read)
    refused = _record("model.layers.0.mlp.experts", None, None, error="NotImplementedError: No x", facts=False)
    [answer] = answers_for_result(plan, CaseResult("x", "0.34.0", [refused], [], []))
    assert answer.error == "NotImplementedError: No x"


def test_the_case_for_a_plan_is_the_checkpoint_as_vllm_reads_it():
    plan = plan_model("gemma-4-26b-a4b-nvfp4", get_device("b200"), parallel=__import__(
        "moe_registry.schemas.layer", fromlist=["ParallelConfig"]).ParallelConfig(ep=8))
    case = case_for(plan, get_device("b200"))
    assert (case.device, case.sm, case.tp, case.dp, case.expert_parallel) == ("b200", 100, 8, 1, True)
    assert case.hf_quant_config["quantization"]["kv_cache_quant_algo"] is None
    assert case.config["model_type"] == "gemma4" and case.moe_backend == "auto"
    with pytest.raises(ValueError, match="a --quant override cannot be executed"):
        case_for(plan_model("qwen3-30b-a3b", get_device("b200"), quant="fp8"), get_device("b200"))
    with pytest.raises(ValueError, match="for an NVIDIA target, not cpu"):
        case_for(plan_model("qwen3-30b-a3b", get_device("h100")), get_device("cpu"))


@pytest.fixture
def fake_executed(monkeypatch):
    """A stand-in executed provider for vLLM (the real one needs vLLM installed)."""
    answer_mod._load_builtin_providers()
    providers = dict(answer_mod.PROVIDERS["vllm"])

    def provide(plan):
        return tuple(_answer(rejected=(EngineRejection(candidate="FLASHINFER_TRTLLM (TrtLlmFp8ExpertsMonolithic)",
                                                       reason="kernel does not support current device cuda"),))
                     for _ in plan.groups())

    monkeypatch.setitem(answer_mod.PROVIDERS, "vllm", {**providers, "executed": provide})


def test_explain_engine_table_json_markdown(fake_executed, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    source = str(ROOT / "tests" / "fixtures" / "checkpoints" / "mixtral-8x7b-instruct-fp8")
    assert main(["explain", source, "--device", "h100", "--engine", "vllm"]) == 0
    out = capsys.readouterr().out
    assert "vllm 0.34.0 (executed) beside moe-registry" in out and "FLASHINFER_CUTLASS" in out
    assert "FLASHINFER_TRTLLM (TrtLlmFp8ExpertsMonolithic): kernel does not support current device cuda" in out
    assert main(["explain", source, "--device", "h100", "--engine", "vllm", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    group = data["groups"][0]
    assert data["engine"] == "vllm" and group["range"] == "layers 0-31 (32)" and group["ours"] == "flashinfer-cutlass"
    assert group["agree"] is True and group["engine"]["kernel"] == "FLASHINFER_CUTLASS (FlashInferExperts)"
    assert main(["explain", source, "--device", "h100", "--engine", "vllm", "--markdown"]) == 0
    md = capsys.readouterr().out
    assert "| layers 0-31 (32) | flashinfer-cutlass | flashinfer_cutlass: FLASHINFER_CUTLASS (FlashInferExperts) | yes" in md


def test_explain_engine_without_the_engine_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(executed, "vllm_version", lambda: None)
    assert main(["explain", "gemma-4-26b-a4b-nvfp4", "--device", "b200", "--engine", "vllm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("moe-registry: error: install vLLM to execute its selection: pip install 'moe-registry[vllm]' "
                   "(vllm 0.34.x or 0.33.x)")
    monkeypatch.setattr(executed, "vllm_version", lambda: "0.35.0")
    assert main(["explain", "gemma-4-26b-a4b-nvfp4", "--device", "b200", "--engine", "vllm"]) == 2
    assert "vllm 0.35.0 is installed; install vLLM to execute" in capsys.readouterr().err


def test_an_engine_not_installed_is_one_line(monkeypatch, capsys):
    from moe_registry.engines.sglang import executed as sglang_executed
    monkeypatch.setattr(sglang_executed, "installed_version", lambda: None)
    assert main(["explain", "qwen3-30b-a3b", "--device", "h100", "--engine", "sglang"]) == 2
    err = capsys.readouterr().err
    assert err == ("moe-registry: error: the executed SGLang answer needs sglang==0.5.23 in this interpreter; "
                   "sglang is not installed\n")


def test_model_answers_need_no_engine():
    plan = plan_model(str(ROOT / "tests" / "fixtures" / "checkpoints" / "mixtral-8x7b-instruct-fp8"), get_device("h100"))
    [answer] = engine_answers(plan, "vllm", source="model")
    # the checkpoint's static activation scales put FlashInfer CUTLASS first, as vLLM executed does
    assert answer.kernel == "FLASHINFER_CUTLASS (FlashInferExperts)" and answer.version == "0.34.0"


def test_plain_explain_imports_neither_vllm_nor_torch():
    code = ("import sys; from moe_registry.cli import main; main(['explain', 'gemma-4-26b-a4b-nvfp4', '--device', "
            "'b200']); bad = [m for m in ('vllm', 'torch') if m in sys.modules]; assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-1500:]


def test_plugin_table_groups_layer_ranges():
    from moe_registry.engines.answer import Comparison
    from moe_registry.engines.vllm.verdict import LayerRow

    def row(i, kernel="TRITON (TritonExperts)", pinned=None):
        return LayerRow(f"model.layers.{i}.mlp.experts", i, _answer(flag="triton", kernel=kernel, family="triton"),
                        "triton-fused-moe", None, Comparison(agree=True), pinned, None)

    rows = [row(0), row(1), row(2, pinned="triton"), row(4, pinned="triton"), row(5, kernel="MARLIN (MarlinExperts)")]
    assert [g.label for g in row_groups(rows)] == ["layers 0-1 (2)", "layers 2-4 (2 of them)", "layer 5"]
    text = plugin_text("m", "observe", "0.34.0", rows)
    assert text.splitlines()[0] == "moe-registry (observe) for m on vLLM 0.34.0: 5 MoE layers, 5 agree"
    assert text.splitlines()[1].split() == ["layers", "vLLM", "ours", "agree", "pinned", "why", "not", "/", "fix"]


def test_the_model_provider_reads_what_vllm_reads_off_the_checkpoint(monkeypatch):
    from moe_registry.engines.vllm import model

    calls = []
    real = model.vllm_default

    def spy(layer, device, **kw):
        calls.append((device.name, kw))
        return real(layer, device, **kw)

    monkeypatch.setattr(model, "vllm_default", spy)
    plan = plan_model("qwen3-30b-a3b-gptq-int4", get_device("h100"))
    answer_mod._vllm_model(plan)
    assert calls == [("h100", {"quant_method": "gptq", "model_type": "qwen3_moe", "fp8_static": False})]
    calls.clear()
    answer_mod._vllm_model(plan.model_copy(update={"device": None}))  # the device each group was selected for
    assert calls == [("h100", {"quant_method": "gptq", "model_type": "qwen3_moe", "fp8_static": False})]
    calls.clear()
    answer_mod._vllm_model(plan.model_copy(update={"quant_method": "override"}))
    assert calls[0][1]["quant_method"] is None
    calls.clear()
    fp8 = plan_model(str(ROOT / "tests" / "fixtures" / "checkpoints" / "mixtral-8x7b-instruct-fp8"), get_device("b200"))
    answer_mod._vllm_model(fp8)
    assert calls == [("b200", {"quant_method": "fp8", "model_type": "mixtral", "fp8_static": True})]
    cpu = plan_model("qwen3-30b-a3b", get_device("cpu"))
    calls.clear()
    assert answer_mod._vllm_model(cpu) == (None,) and calls == []
    groups = answer_mod._vllm_model(plan_model("nemotron-3-nano-30b-a3b", get_device("h100")))
    assert groups and all(a is not None for a in groups)  # every group answered, not only the first
    # a group with no backend of ours and no planned device has no device to ask about; the next group still answers
    first, *rest = plan.layers
    odd = first.model_copy(update={"layer": first.layer.replace(top_k=4), "selection": None, "error": "none"})
    mixed = plan.model_copy(update={"device": None, "layers": (odd, *rest)})
    answers = answer_mod._vllm_model(mixed)
    assert len(answers) == 2 and answers[0] is None and answers[1] is not None
    # an NVIDIA target whose compute capability is unknown: no answer (the model needs the SM)
    from moe_registry.schemas.device import DeviceSpec

    unknown = plan.model_copy(update={"device": DeviceSpec(name="gpu", vendor="nvidia")})
    assert answer_mod._vllm_model(unknown) == (None,)


def test_fp8_activation_scheme_from_the_checkpoint():
    # The planner reads activation_scheme with the rest of the quantization config (one read of the checkpoint);
    # vLLM's FP8 oracle (the hand model) takes it from the plan.
    static = plan_model(str(ROOT / "tests" / "fixtures" / "checkpoints" / "mixtral-8x7b-instruct-fp8"), get_device("h100"))
    assert static.quant_method == "fp8" and static.fp8_static_activations
    block = plan_model(str(ROOT / "tests" / "fixtures" / "checkpoints" / "qwen3-30b-a3b-fp8"), get_device("h100"))
    assert block.quant_method == "fp8" and not block.fp8_static_activations  # dynamic
    assert not plan_model("deepseek-v3", get_device("h100")).fp8_static_activations  # a preset: dynamic
    assert not plan_model("gemma-4-26b-a4b-nvfp4", get_device("h100")).fp8_static_activations  # not FP8
    # the flag reaches the hand model: static per-tensor FP8 and dynamic FP8 take different vLLM paths
    static_answers = answer_mod.engine_answers(static, "vllm", source="model")
    dynamic_answers = answer_mod.engine_answers(static.model_copy(update={"fp8_static_activations": False}), "vllm",
                                                source="model")
    assert static_answers != dynamic_answers


def test_fp8_activation_scheme_nested_in_text_config(tmp_path):
    config = json.loads((ROOT / "tests" / "fixtures" / "checkpoints" / "mixtral-8x7b-instruct-fp8" / "config.json")
                        .read_text())
    quant = config.pop("quantization_config")
    wrapped = {"model_type": "wrapper", "architectures": config["architectures"], "text_config": {**config,
                                                                                                 "quantization_config": quant}}
    (tmp_path / "config.json").write_text(json.dumps(wrapped))
    assert plan_model(str(tmp_path / "config.json"), get_device("h100")).fp8_static_activations


def test_the_hand_models_answer_shape():
    from moe_registry.engines.vllm import model
    from moe_registry.engines.vllm.model import Loss, VllmChoice

    choice = VllmChoice("wna16", None, None, None, None, ("MARLIN", "TRITON"), (), (
        Loss("MARLIN", None, "check_moe_marlin_supports_config", "int_wna16.py L205"),
        Loss("TRITON", "TritonWNA16Experts", "no bias", "int_wna16.py L184")), "int_wna16.py L256")
    answer = answer_mod.vllm_model_answer(choice)
    assert answer.error == "No wna16 MoE backend supports the deployment configuration." and answer.kernel is None
    assert [(r.candidate, r.reason, r.source) for r in answer.rejected] == [
        ("MARLIN", "check_moe_marlin_supports_config", "int_wna16.py L205"),
        ("TRITON (TritonWNA16Experts)", "no bias", "int_wna16.py L184")]
    assert answer.assumptions == model.ASSUMPTIONS and answer.source == "model"
