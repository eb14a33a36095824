"""The rules behind the deployer's answer, pinned exactly (issue 20; what the mutation run checks):
layouts spelled back as flags, which layouts a plan may move to, the memory hint's GPU count, and
each verdict of an engine's default against our pick."""

from __future__ import annotations

import pytest

from moe_registry.engines.answer import EngineAnswer
from moe_registry.memory import _ep_hint
from moe_registry.planner import plan_model
from moe_registry.planner.layouts import _ep_layout, _runnable, attention_tp, cli_flags, gpu_count, gpus
from moe_registry.render.deploy import EngineDefaults, _engine_line, _declarations, verdict
from moe_registry.schemas.layer import LayerSpec, ParallelConfig
from moe_registry.schemas.selection import Reason, ReasonCode


def answer(flag: str | None, kernel: str | None, family: str | None, error: str | None = None) -> EngineAnswer:
    return EngineAnswer(engine="vllm", version="0.33.0", source="model", flag=flag, kernel=kernel, family=family,
                        error=error)


# --- Layouts as flags ------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, style, flags", [
    (ParallelConfig(), "vllm", ()),
    (ParallelConfig(), "sglang", ()),
    (ParallelConfig(tp=8), "vllm", ("--tp", "8")),
    (ParallelConfig(tp=8), "sglang", ("--tp", "8")),
    (ParallelConfig(tp=8, dp=2), "vllm", ("--tp", "4", "--dp", "2")),
    (ParallelConfig(ep=2), "vllm", ("--tp", "2", "--enable-expert-parallel")),
    (ParallelConfig(ep=2), "sglang", ("--tp", "2", "--ep", "2")),
    (ParallelConfig(ep=16, dp=2), "vllm", ("--tp", "8", "--dp", "2", "--enable-expert-parallel")),
    (ParallelConfig(ep=16, dp=2), "sglang", ("--tp", "8", "--dp", "2", "--enable-expert-parallel")),
    (ParallelConfig(tp=2, ep=2), "vllm", ("--tp", "4", "--ep", "2")),
    (ParallelConfig(tp=4, ep=2), "vllm", ("--tp", "8", "--ep", "2")),
])
def test_cli_flags(layout, style, flags):
    assert cli_flags(layout, style) == flags


def test_gpu_counts():
    assert gpus(ParallelConfig(tp=4, ep=2, dp=1)) == 8 and attention_tp(ParallelConfig(ep=16, dp=2)) == 8
    assert gpu_count(ParallelConfig()) == "1 GPU" and gpu_count(ParallelConfig(ep=2)) == "2 GPUs"
    assert attention_tp(ParallelConfig(tp=2, dp=4)) == 1  # never below one


QWEN = plan_model("qwen3-30b-a3b", "h100", select=False)  # 128 experts, I 768, 32 heads, 4 KV heads


@pytest.mark.parametrize("layout, ok", [
    (ParallelConfig(ep=8), True), (ParallelConfig(tp=8), True),
    (ParallelConfig(ep=3), False),  # 128 experts
    (ParallelConfig(tp=5), False),  # 768
    (ParallelConfig(tp=3), False),  # 768 % 3 == 0, but 32 heads
])
def test_runnable_layouts(layout, ok):
    assert _runnable(QWEN, layout) is ok


def test_ep_layouts_keep_the_attention_tp_where_they_can():
    tp8 = plan_model("qwen3-30b-a3b", "h100", ParallelConfig(tp=8), select=False)
    assert _ep_layout(tp8, 16, "vllm") == ParallelConfig(ep=16, dp=2)
    assert _ep_layout(tp8, 16, "sglang") == ParallelConfig(ep=16, dp=1)
    assert _ep_layout(tp8, 4, "vllm") == ParallelConfig(ep=4, dp=4)  # 4 % 8: attention TP 1
    assert _ep_layout(QWEN, 2, "vllm") == ParallelConfig(ep=2, dp=2)
    assert _ep_layout(QWEN, 1, "vllm") == ParallelConfig()


# --- The memory hint: EP over N GPUs --------------------------------------------------------------

def _counts(experts: int, parallel: ParallelConfig | None = None) -> dict[LayerSpec, int]:
    spec = LayerSpec(num_experts=experts, top_k=1, hidden_size=64, intermediate_size=64,
                     parallel=parallel or ParallelConfig())
    return {spec: 1}


def test_ep_hint_counts_gpus():
    assert _ep_hint({}, 100, 10) == "" and _ep_hint(_counts(8), 0, 10) == ""
    assert _ep_hint(_counts(8), 1, 10) == "EP2 over 2 GPUs would hold 0.0 MB per GPU"
    assert _ep_hint(_counts(8), 100, 50) == "EP2 over 2 GPUs would hold 0.0 MB per GPU"
    assert _ep_hint(_counts(8), 800 * 10**6, 100 * 10**6) == "EP8 over 8 GPUs would hold 100.0 MB per GPU"
    assert _ep_hint(_counts(3), 10, 3) == "EP3 over 3 GPUs would hold 0.0 MB per GPU"  # 10 // 3 fits, 10 / 3 not
    assert _ep_hint(_counts(2), 100, 10) == ""  # EP2 holds 50: nothing fits
    # From 8 GPUs (TP8), EP16 over 16 GPUs: the count is the GPUs, not EP within TP.
    assert _ep_hint(_counts(256, ParallelConfig(tp=8)), 818 * 10**8, 736 * 10**8) == \
        "EP16 over 16 GPUs would hold 40.9 GB per GPU"


# --- Verdicts -------------------------------------------------------------------------------------

GEMMA = plan_model("gemma-4-26b-a4b-nvfp4", "h100")  # humming
GROUP = GEMMA.groups()[0]


def test_verdicts_name_the_engine_pick_and_why():
    assert verdict(GROUP, None).kind == "unknown"
    same = verdict(GROUP, answer("humming", "HUMMING (HummingIndexedExperts)", "humming"))
    assert (same.kind, same.cell, same.text) == ("same", "same", "")
    ranked = verdict(GROUP, answer("marlin", "MARLIN (MarlinExperts)", "marlin"))
    assert (ranked.kind, ranked.cell) == ("differs", "marlin")
    assert ranked.text == ("MARLIN (MarlinExperts), not humming: moe-registry ranks humming above marlin by declared "
                           "priority (70 vs 60), not by a measurement")
    undeclared = verdict(GROUP, answer("triton", "TRITON (TritonExperts)", "triton"))
    assert undeclared.text == "TRITON (TritonExperts), not humming: moe-registry's triton-fused-moe does not declare nvfp4"
    # OpenAI's triton_kernels is declared (oai-triton-kernels), for MXFP4 only; DeepGEMM is not declared at all.
    oai = verdict(GROUP, answer("triton_unfused", "TRITON (OAI)", "oai-triton-kernels"))
    assert oai.text == "TRITON (OAI), not humming: moe-registry's oai-triton-kernels does not declare nvfp4"
    missing = verdict(GROUP, answer("deep_gemm", "DEEPGEMM (DeepGemmExperts)", "deep-gemm"))
    assert missing.text == "DEEPGEMM (DeepGemmExperts), not humming: moe-registry declares no backend of that kernel"
    rejected = verdict(GROUP, answer("flashinfer_trtllm", "X", "flashinfer-trtllm"))
    assert rejected.text == ("X, not humming: moe-registry rejects trtllm-fp4 here (device_unsupported: h100 (SM90), "
                             "needs SM100/SM103/SM107)")
    none = verdict(GROUP, answer(None, None, None, error="No NvFp4 MoE backend supports it."))
    assert (none.kind, none.cell, none.text) == ("engine-none", "none", "no backend: No NvFp4 MoE backend supports it.")
    assert verdict(GROUP, answer(None, None, None)).text == "no backend: no answer"
    cell_only = verdict(GROUP, answer(None, "KERNEL", "marlin"))
    assert cell_only.cell == "KERNEL"


def test_a_rejection_without_required_and_actual_is_quoted_whole():
    s = GROUP.selection
    bare = Reason(code=ReasonCode.FORBIDDEN, field="backend", required="", actual="trtllm-fp4",
                  message="trtllm-fp4 is forbidden")
    rejections = tuple(r.model_copy(update={"reasons": (bare,)}) if r.backend == "trtllm-fp4" else r
                       for r in s.rejections)
    group = GROUP.model_copy(update={"selection": s.model_copy(update={"rejections": rejections})})
    got = verdict(group, answer("flashinfer_trtllm", "X", "flashinfer-trtllm"))
    assert got.text == "X, not humming: moe-registry rejects trtllm-fp4 here (forbidden: trtllm-fp4 is forbidden)"


def test_no_backend_here_and_a_pick_the_engine_has():
    nothing = plan_model("qwen3-30b-a3b", "h100", forbid=tuple(_declarations()))
    (group,) = nothing.groups()
    got = verdict(group, answer("triton", "TRITON (TritonExperts)", "triton"))
    assert (got.kind, got.cell, got.text) == ("differs", "triton", "TRITON (TritonExperts); moe-registry finds no backend")


# --- What to type, per engine -----------------------------------------------------------------------

def _defaults(plan, *answers) -> EngineDefaults:
    return EngineDefaults("vllm", "model", "0.33.0", tuple(answers))


def test_engine_lines():
    decls = _declarations()
    same = answer("humming", "HUMMING", "humming")
    assert _engine_line(GEMMA, "vllm", _defaults(GEMMA, same), decls) == ("", "vLLM's default already picks this")
    other = answer("marlin", "MARLIN", "marlin")
    assert _engine_line(GEMMA, "vllm", _defaults(GEMMA, other), decls) == (
        "--moe-backend humming", "runs moe-registry's pick; without it vLLM runs its default, marlin")
    unknown = EngineDefaults("vllm", "", "", (None,))
    assert _engine_line(GEMMA, "vllm", unknown, decls) == ("--moe-backend humming", "vLLM's default: not known here")
    assert _engine_line(GEMMA, "sglang", EngineDefaults("sglang", "", "", (None,)), decls) == (
        None, "no SGLang flag runs humming; the layout alone: no flags")
    tp4ep2 = plan_model("qwen3-30b-a3b", "h100", ParallelConfig(tp=4, ep=2))
    assert _engine_line(tp4ep2, "vllm", _defaults(tp4ep2, None), decls) == (
        None, "vLLM cannot run this layout (TP within EP); SGLang can")
    none = plan_model("qwen3-30b-a3b", "h100", forbid=tuple(decls))
    assert _engine_line(none, "vllm", _defaults(none, None), decls) == (None, "no backend for some layers (below)")


def test_describe_says_which_source_answered(monkeypatch):
    from moe_registry.render import deploy

    monkeypatch.setattr(deploy, "_installed", lambda engine: False)
    assert EngineDefaults("vllm", "model", "0.33.0", ()).describe() == (
        "vLLM 0.33.0's default (moe-registry's model of its oracle; vLLM not installed here)")
    monkeypatch.setattr(deploy, "_installed", lambda engine: True)
    assert EngineDefaults("vllm", "model", "0.33.0", ()).describe() == (
        "vLLM 0.33.0's default (moe-registry's model of its oracle; vLLM installed, but no executed answer is "
        "registered)")
    assert EngineDefaults("vllm", "executed", "0.34.0", ()).describe() == (
        "vLLM 0.34.0's default (its own selection code, run here)")
    assert EngineDefaults("sglang", "", "", ()).describe() == "SGLang's default: not known here"


def test_more_layouts_and_the_hint_from_several_gpus():
    assert _runnable(QWEN, ParallelConfig(ep=3, dp=3)) is False  # 128 experts; attention TP 1 would be fine
    assert _runnable(QWEN, ParallelConfig(ep=4, dp=4)) is True
    # From 2 GPUs: EP8 holds 100 x 2 / 8 = 25 <= 30 (EP4 would hold 50).
    assert _ep_hint(_counts(8, ParallelConfig(tp=2)), 100, 30) == "EP8 over 8 GPUs would hold 0.0 MB per GPU"


# --- The same answer for tools, and per group in text -------------------------------------------------

def test_advice_json_shape():
    from moe_registry.render.deploy import advice_json, engine_defaults

    plan = plan_model("gpt-oss-120b", "h100")
    defaults = {e: engine_defaults(plan, e) for e in ("vllm", "sglang")}
    data = advice_json(plan, defaults, (), ["moe-registry", "explain", "gpt-oss-120b"])
    vllm, sglang = data["engine_defaults"]
    assert (vllm["engine"], vllm["source"], vllm["version"]) == ("vllm", "model", "0.34.0")
    assert (sglang["engine"], sglang["source"], sglang["version"]) == ("sglang", None, None)
    (group,) = vllm["groups"]
    assert group["range"] == "layers 0-35 (36)" and group["verdict"] == "differs"
    assert group["answer"]["flag"] == "triton" and group["answer"]["source"] == "model"
    assert group["why"].startswith("TRITON (OAITritonMxfp4ExpertsMonolithic), not humming")
    assert sglang["groups"] == [{"range": "layers 0-35 (36)", "answer": None, "verdict": "unknown", "why": None}]
    assert data["what_to_type"] == {"gpus": 1, "engines": [
        {"engine": "vllm", "flags": "--moe-backend humming",
         "why": "runs moe-registry's pick; without it vLLM runs its default, triton"},
        {"engine": "sglang", "flags": None, "why": "no SGLang flag runs humming; the layout alone: no flags"}]}
    assert data["suggestions"] == []


def test_a_group_that_differs_is_named_and_continuation_lines_are_indented():
    from moe_registry.planner import plan_config
    from moe_registry.render.deploy import advice_lines

    from test_planner import preset_config

    hf = {"quantization": {"quant_algo": "NVFP4", "exclude_modules": ["model.language_model.layers.29.experts"]}}
    plan = plan_config(preset_config("gemma-4-26b-a4b"), device="h100", hf_quant_config=hf)
    first, last = plan.groups()
    answers = (answer("humming", "HUMMING", "humming"), answer("marlin", "MARLIN (MarlinExperts)", "marlin"))
    lines = advice_lines(plan, {"vllm": EngineDefaults("vllm", "model", "0.33.0", answers)}, (), ["moe-registry"], 80)
    text = "\n".join(lines)
    assert f"- {last.label()}: MARLIN (MarlinExperts), not {last.selection.backend}" in text
    assert first.label() not in text
    long = [l for l in lines if l.startswith("  vLLM")]
    assert long and all(l.startswith("    ") for l in lines[lines.index(long[0]) + 1:] if not l.startswith("  SGLang"))


# --- Mutation survivors of the first run, killed ----------------------------------------------------

from moe_registry.planner import ParallelismError  # noqa: E402
from moe_registry.planner.layouts import from_flags, problems, sglang_flags, suggest_layouts, vllm_flags  # noqa: E402
from moe_registry.render.deploy import engine_defaults, engine_flag  # noqa: E402


def test_from_flags_edges_and_messages():
    assert from_flags(tp=4, ep=8, enable_ep=True, dp=2) == ParallelConfig(ep=8, dp=2)  # --ep agreeing with tp x dp
    assert from_flags(tp=2, ep=None, enable_ep=True, dp=1) == ParallelConfig(ep=2)
    with pytest.raises(ParallelismError) as info:
        from_flags(tp=4, ep=4, enable_ep=True, dp=2)
    assert str(info.value) == ("--enable-expert-parallel spreads the experts over tp x dp = 8 ranks; --ep 4 "
                               "contradicts it (drop one of them)")
    with pytest.raises(ParallelismError) as info:
        from_flags(tp=8, ep=2, enable_ep=False, dp=2)
    assert str(info.value) == ("--dp 2 with --ep 2: --dp is vLLM's -dp (the MoE layer spans tp x dp ranks) and --ep "
                               "SGLang's --ep-size (EP within --tp); use --tp T --dp D --enable-expert-parallel (vLLM) "
                               "or --tp N --ep M (SGLang)")
    with pytest.raises(ParallelismError) as info:
        from_flags(tp=2, ep=4, enable_ep=False, dp=1)
    assert str(info.value).endswith("use --tp 4 --ep 4 or --tp 4 --enable-expert-parallel")
    with pytest.raises(ParallelismError, match="^--tp, --ep and --dp must be positive$"):
        from_flags(tp=None, ep=None, enable_ep=False, dp=0)


@pytest.mark.parametrize("layout, vllm, sglang", [
    (ParallelConfig(tp=2), "-tp 2", "--tp-size 2"),
    (ParallelConfig(ep=2), "-tp 2 --enable-expert-parallel", "--tp-size 2 --ep-size 2"),
    (ParallelConfig(tp=2, ep=2), None, "--tp-size 4 --ep-size 2"),
    (ParallelConfig(ep=4, dp=2), "-tp 2 -dp 2 --enable-expert-parallel",
     "--tp-size 4 --ep-size 4 --dp-size 2 --enable-dp-attention"),
    (ParallelConfig(), "", ""),
])
def test_engine_flags_exactly(layout, vllm, sglang):
    assert vllm_flags(layout) == vllm and sglang_flags(layout) == sglang


def test_the_test_oracle_reason_and_a_registry_of_ones_own():
    from moe_registry.backends.reference import DECLARATION as REF
    from moe_registry.backends.torch_grouped_mm import DECLARATION as TGM
    from moe_registry.registry import Registry

    plan = plan_model("qwen3-30b-a3b", "h100", force="torch-grouped-mm")
    (reason,) = plan.groups()[0].selection.rejection("reference").reasons
    assert (reason.code, reason.field, reason.required, reason.actual, reason.hint) == (
        ReasonCode.KNOWN_LIMITATION, "backend", "a deployment kernel", "test oracle",
        "plan for a CPU (--device cpu) to run it")
    mine = Registry(entry_points=False, builtins=False).with_declaration(REF.model_copy(update={"id": "my-oracle"})) \
        .with_declaration(TGM)
    s = plan_model("qwen3-30b-a3b", "h100", registry=mine).groups()[0].selection
    assert s.backend == "torch-grouped-mm" and s.rejection("my-oracle") is not None


def test_engine_defaults_fall_back_to_the_model_and_have_no_version_without_answers(monkeypatch):
    from moe_registry.render import deploy

    assert deploy._installed("json") is True and deploy._installed("no_such_module_here") is False
    monkeypatch.setattr(deploy, "_installed", lambda engine: True)  # installed, no executed provider registered
    assert engine_defaults(GEMMA, "vllm").source == "model"
    cpu = plan_model("qwen3-30b-a3b", "cpu")
    assert engine_defaults(cpu, "vllm") == EngineDefaults("vllm", "model", "", (None,))  # NVIDIA only
    assert engine_defaults(cpu, "sglang") == EngineDefaults("sglang", "", "", (None,))


def test_verdict_edges():
    assert verdict(GROUP, None) == deploy_verdict("unknown", "?", "")
    assert verdict(GROUP, answer("marlin", "MARLIN", "marlin"), decls={}) == \
        deploy_verdict("differs", "marlin", "MARLIN; moe-registry finds no backend")
    nothing = plan_model("qwen3-30b-a3b", "h100", forbid=tuple(_declarations())).groups()[0]
    assert engine_flag(nothing, "vllm") is None and engine_flag(GROUP, "vllm") == "humming"


def deploy_verdict(kind, cell, text):
    from moe_registry.render.deploy import Verdict

    return Verdict(kind, cell, text)


def _two_groups():
    from moe_registry.planner import plan_config

    from test_planner import preset_config

    hf = {"quantization": {"quant_algo": "NVFP4", "exclude_modules": ["model.language_model.layers.29.experts"]}}
    return plan_config(preset_config("gemma-4-26b-a4b"), device="h100", hf_quant_config=hf)


def test_engine_line_with_two_groups():
    decls = _declarations()
    plan = _two_groups()  # humming (vLLM humming), then triton-fused-moe (vLLM triton)
    both = _defaults(plan, answer("marlin", "M", "marlin"), answer("marlin", "M", "marlin"))
    assert _engine_line(plan, "vllm", both, decls) == (
        None, "the layer groups need different --moe-backend values (humming, triton: vLLM's flag is one for the "
              "whole model)")
    # The last group's pick has no vLLM name: only it is named.
    last = plan.layers[-1]
    bare = last.model_copy(update={"selection": last.selection.model_copy(update={"engines": {}})})
    plan2 = plan.model_copy(update={"layers": (*plan.layers[:-1], bare)})
    assert plan2.groups()[-1].selection.engines == {}  # no stale groups after a copy
    assert problems(plan2) == ("no-engine",)
    assert _engine_line(plan2, "vllm", both, decls) == (
        None, f"no vLLM flag runs {last.selection.backend}; the layout alone: no flags")
    sglang_only = last.model_copy(update={"selection": last.selection.model_copy(update={"engines": {"sglang": "x"}})})
    assert problems(plan.model_copy(update={"layers": (*plan.layers[:-1], sglang_only)})) == ()


def test_suggestions_must_fix_the_worst_problem_and_add_none():
    padded = plan_model("gemma-4-26b-a4b-nvfp4", "b200", ParallelConfig(tp=8))
    assert problems(padded) == ("padding",)
    assert suggest_layouts(padded, lambda p: padded) == ()  # still pads
    no_backend = plan_model("gemma-4-26b-a4b-nvfp4", "b200", ParallelConfig(tp=8), policy=None,
                            forbid=tuple(_declarations()))
    assert suggest_layouts(padded, lambda p: no_backend) == ()  # fixes padding, adds a blocking problem
    fixed = plan_model("gemma-4-26b-a4b-nvfp4", "b200", ParallelConfig(ep=8))
    (only,) = suggest_layouts(padded, lambda p: fixed)
    assert only.parallel == ParallelConfig(ep=8) and only.why == "EP8 over the same 8 GPUs: 1.61 GB per GPU"
    assert only.plan is fixed


def test_memory_suggestions_try_the_runnable_counts_in_order():
    from moe_registry.schemas.device import get_device

    small = get_device("h100").model_copy(update={"memory_gb": 30.0})  # 27.6 GB budget
    plan = plan_model("mixtral-8x7b", small)  # 8 experts, 90 GB of bf16 experts
    assert problems(plan)[0] == "memory"
    calls = []

    def replan(p):
        calls.append(p)
        return plan_model("mixtral-8x7b", small, p)

    (s,) = suggest_layouts(plan, replan)
    assert calls == [ParallelConfig(ep=4, dp=4)] and s.gpus == 4 and s.why.startswith("EP4 over 4 GPUs: ")
    tiny = get_device("h100").model_copy(update={"memory_gb": 1.0})
    calls.clear()
    assert suggest_layouts(plan_model("mixtral-8x7b", tiny), replan) == () and calls == []  # nothing could fit
    tp8 = plan_model("qwen3-30b-a3b", "h100", ParallelConfig(tp=8), forbid=tuple(_declarations()))
    calls.clear()
    got = suggest_layouts(tp8, lambda p: calls.append(p) or tp8)
    assert calls == [ParallelConfig(ep=8, dp=1), ParallelConfig(tp=4), ParallelConfig(tp=2), ParallelConfig(tp=1)]
    assert got == ()
