"""Issue 20: the deployer's answer. What each engine's default picks per layer group, what to type
(with the GPU count), hints that are command lines which succeed when re-run, --dp as vLLM 0.34.0
reads it, and the decision on the first screen."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from moe_registry.cli import main
from moe_registry.planner import ParallelismError, list_presets, plan_model
from moe_registry.planner.layouts import (
    cli_flags,
    from_flags,
    problems,
    sglang_flags,
    suggest_layouts,
    vllm_flags,
)
from moe_registry.schemas.device import PRESETS
from moe_registry.schemas.layer import ParallelConfig

ROOT = Path(__file__).resolve().parents[1]


def run_json(*argv: str) -> tuple[int, dict]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([*argv, "--json"])
    return code, json.loads(buf.getvalue())


def run_text(capsys, *argv: str, columns: int = 80, monkeypatch=None) -> tuple[int, list[str]]:
    code = main(list(argv))
    return code, capsys.readouterr().out.splitlines()


@pytest.fixture(autouse=True)
def _columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")


# --- Parallel flags: vLLM 0.34.0's FusedMoEParallelConfig.make ------------------------------------

@pytest.mark.parametrize("flags, layout", [
    (dict(tp=4, ep=None, enable_ep=False, dp=2), ParallelConfig(tp=8, ep=1, dp=2)),  # EP off: TP over tp x dp
    (dict(tp=4, ep=None, enable_ep=True, dp=2), ParallelConfig(tp=1, ep=8, dp=2)),
    (dict(tp=1, ep=None, enable_ep=False, dp=4), ParallelConfig(tp=4, ep=1, dp=4)),
    (dict(tp=8, ep=2, enable_ep=False, dp=None), ParallelConfig(tp=4, ep=2, dp=1)),
    (dict(tp=None, ep=8, enable_ep=False, dp=None), ParallelConfig(tp=1, ep=8, dp=1)),
    (dict(tp=1, ep=None, enable_ep=True, dp=1), ParallelConfig()),
])
def test_flags_give_the_layout_vllm_makes(flags, layout):
    assert from_flags(**flags) == layout


def test_dp_without_ep_shards_the_experts_over_tp_x_dp():
    # Gemma 4 NvFP4 at -tp 4 -dp 2: every rank holds I/8 = 88, not I/4 = 176 (today's main planned I176).
    code, data = run_json("explain", "gemma-4-26b-a4b-nvfp4", "--device", "h100", "--tp", "4", "--dp", "2")
    assert code == 0 and data["parallel"] == {"tp": 8, "ep": 1, "dp": 2}
    (group,) = data["groups"]
    assert group["layer"]["parallel"]["tp"] == 8


def test_run_spawns_tp_x_dp_ranks(monkeypatch, capsys):
    seen = {}

    def fake(preset, **kw):
        seen.update(kw)
        return {"model": preset}

    import importlib

    monkeypatch.setattr(importlib.import_module("moe_registry.distributed.launch"), "run_distributed_preset", fake)
    assert main(["run", "--preset", "qwen3-30b-a3b", "--tp", "4", "--dp", "2", "--json"]) == 0
    assert (seen["tp"], seen["ep"]) == (8, 1)


@pytest.mark.parametrize("flags, needle", [
    (dict(tp=8, ep=2, enable_ep=False, dp=2), "--dp 2 with --ep 2"),
    (dict(tp=2, ep=4, enable_ep=False, dp=1), "--ep 4 must divide --tp 2"),
    (dict(tp=0, ep=None, enable_ep=False, dp=1), "must be positive"),
])
def test_contradictions_are_one_line_errors(flags, needle):
    with pytest.raises(ParallelismError, match=needle):
        from_flags(**flags)


@pytest.mark.parametrize("layout", [ParallelConfig(), ParallelConfig(tp=8), ParallelConfig(tp=8, dp=2),
                                    ParallelConfig(ep=16, dp=2), ParallelConfig(ep=8), ParallelConfig(tp=4, ep=2),
                                    ParallelConfig(ep=16, dp=16)])
def test_every_spelling_of_a_layout_reads_back_as_it(layout):
    for style in ("vllm", "sglang"):
        argv = cli_flags(layout, style)
        opts = dict(zip(argv[::2], argv[1::2])) if "--enable-expert-parallel" not in argv else \
            dict(zip(argv[:-1][::2], argv[:-1][1::2]))
        got = from_flags(tp=int(opts["--tp"]) if "--tp" in opts else None,
                         ep=int(opts["--ep"]) if "--ep" in opts else None,
                         enable_ep="--enable-expert-parallel" in argv, dp=int(opts.get("--dp", 1)))
        assert got == layout, (style, argv)
    vllm = vllm_flags(layout)
    if vllm is not None:  # vLLM: -tp T -dp D [--enable-expert-parallel]
        words = vllm.split()
        tp = int(words[words.index("-tp") + 1]) if "-tp" in words else 1
        dp = int(words[words.index("-dp") + 1]) if "-dp" in words else 1
        assert from_flags(tp=tp, ep=None, enable_ep="--enable-expert-parallel" in words, dp=dp) == layout
    else:
        assert layout.tp > 1 and layout.ep > 1
    words = sglang_flags(layout).split()
    size = int(words[words.index("--tp-size") + 1]) if "--tp-size" in words else 1
    assert size == layout.tp * layout.ep and ("--ep-size" in words) == (layout.ep > 1)


def test_attention_tp_must_suit_the_heads(capsys):
    # Qwen3-30B-A3B: 32 attention heads, 4 KV heads; 768 % 3 == 0, so only the heads refuse TP3.
    assert main(["explain", "qwen3-30b-a3b", "--device", "h100", "--tp", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "attention TP3 does not suit 32 attention heads" in err


# --- Hints: command lines that succeed when re-run -----------------------------------------------

def _walk():
    for preset in list_presets():
        for device in PRESETS:
            yield preset, device


def test_every_hint_of_every_preset_and_device_reruns_and_fits():
    """Each suggestion is a moe-registry command line; re-run, it plans every layer, fits, and
    uses the GPUs it says. A plan that does not fit always gets one (a layer no backend runs on any
    layout, DeepSeek-V3's block FP8 on an A100 once the fp32 reference is no plan, gets none)."""
    checked = 0
    for preset, device in _walk():
        code, data = run_json("explain", preset, "--device", device)
        if code == 0 and (data["memory"] or {}).get("fits") is False:  # every plan that does not fit gets one
            assert data["suggestions"], (preset, device)
        for s in data["suggestions"]:
            argv = shlex.split(s["command"])
            assert argv[:2] == ["moe-registry", "explain"]
            again, other = run_json(*argv[1:])
            assert again == 0 and other["memory"]["fits"] is not False, s["command"]
            assert other["parallel"] == s["parallel"]
            assert other["parallel"]["tp"] * other["parallel"]["ep"] == s["gpus"]
            assert f"{s['gpus']} GPU" in s["why"] or s["why"].startswith(f"TP{s['gpus']} ")
            checked += 1
        for engine in data["what_to_type"]["engines"]:
            assert engine["flags"] is None or "--moe-backend" not in engine["flags"] or engine["engine"] == "vllm"
    assert checked >= 40


def test_the_memory_hint_no_longer_loops():
    """issue 20 item 2: TP8 -> the hint -> TP8/EP2 -> ... each said 'EP.. with TP..' for 16 GPUs."""
    code, data = run_json("explain", "deepseek-v3", "--device", "h100", "--tp", "8")
    assert code == 0 and data["memory"]["fits"] is False
    assert data["memory"]["hint"] == "EP16 over 16 GPUs would hold 40.9 GB per GPU"
    (first, *_) = data["suggestions"]
    assert first["gpus"] == 16 and first["command"].endswith("--tp 8 --dp 2 --enable-expert-parallel")
    # Block FP8 with EP on Hopper: vLLM 0.34's oracle picks FLASHINFER_CUTLASS, as we do, so no --moe-backend.
    assert first["engines"][0] == {"engine": "vllm", "flags": "-tp 8 -dp 2 --enable-expert-parallel",
                                   "why": "vLLM's default already picks this"}
    # SGLang-style flags get an SGLang-style hint.
    code, data = run_json("explain", "deepseek-v3", "--device", "h100", "--tp", "8", "--ep", "2")
    assert data["suggestions"][0]["command"].endswith("--tp 16 --ep 16")


def test_suggestions_fix_the_worst_problem_without_adding_one():
    plan = plan_model("gemma-4-26b-a4b-nvfp4", "b200", ParallelConfig(tp=8), no_pad=None) \
        if False else plan_model("gemma-4-26b-a4b-nvfp4", "b200", ParallelConfig(tp=8))
    assert problems(plan) == ("padding",)
    (ep8,) = suggest_layouts(plan, lambda p: plan_model("gemma-4-26b-a4b-nvfp4", "b200", p))
    assert ep8.parallel == ParallelConfig(ep=8) and ep8.gpus == 8 and not problems(ep8.plan)
    fine = plan_model("gemma-4-26b-a4b-nvfp4", "h100")
    assert problems(fine) == () and suggest_layouts(fine, lambda p: 1 / 0) == ()


# --- The engine's default per layer group ---------------------------------------------------------

def test_gpt_oss_says_it_differs_from_vllms_default_and_why(capsys):
    code, lines = run_text(capsys, "explain", "gpt-oss-120b", "--device", "h100")
    text = " ".join(" ".join(lines).split())
    assert code == 0
    assert "vLLM 0.34.0's default (moe-registry's model of its oracle" in text
    # Our pick on Hopper is humming, ranked above vLLM's kernel (oai-triton-kernels) by a committed measurement.
    assert "TRITON (OAITritonMxfp4ExpertsMonolithic), not humming: moe-registry ranks humming above " \
           "oai-triton-kernels by declared priority (90 vs 85), set from a measurement " \
           "(benchmarks/results/decode-h100/decode_bench.json)" in text
    assert "vLLM: --moe-backend humming (runs moe-registry's pick; without it vLLM runs its default, triton)" in text


def test_a_priority_without_a_measurement_says_so():
    from moe_registry.planner import plan_model
    from moe_registry.render.deploy import verdict
    from moe_registry.engines.answer import engine_answers

    # Gemma 4 NvFP4 on an A100: vLLM's default is Marlin, ranked below humming by declared priority only.
    plan = plan_model("gemma-4-26b-a4b-nvfp4", "a100")
    texts = [verdict(g, a).text for g, a in zip(plan.groups(), engine_answers(plan))]
    assert texts == ["MARLIN (MarlinExperts), not humming: moe-registry ranks humming above marlin by declared "
                     "priority (70 vs 60), not by a measurement"]


def test_an_agreeing_plan_needs_no_flag(capsys):
    code, lines = run_text(capsys, "explain", "gemma-4-26b-a4b-nvfp4", "--device", "h100")
    assert code == 0 and "  vLLM: no flags to set (vLLM's default already picks this)" in lines
    header = next(l for l in lines if l.startswith("layers"))
    assert header.endswith("vLLM default") and lines[lines.index(header) + 2].endswith(" same")


def test_llama4_on_b200_differs_with_the_reason(capsys):
    code, lines = run_text(capsys, "explain", "llama-4-scout", "--device", "b200")
    text = " ".join(" ".join(lines).split())
    assert "not triton-fused-moe: moe-registry rejects trtllm-bf16 here (feature_unsupported" in text


def test_the_executed_answer_is_used_when_installed_and_provided(monkeypatch):
    from moe_registry.engines import answer
    from moe_registry.render import deploy

    plan = plan_model("gemma-4-26b-a4b-nvfp4", "h100")
    model = answer.engine_answers(plan, "vllm", source="model")
    executed = tuple(a.model_copy(update={"source": "executed", "version": "0.34.0"}) for a in model)
    monkeypatch.setitem(answer.PROVIDERS.setdefault("vllm", {}), "executed", lambda p: executed)
    monkeypatch.setattr(deploy, "_installed", lambda engine: engine == "vllm")
    d = deploy.engine_defaults(plan, "vllm")
    assert d.source == "executed" and d.version == "0.34.0" and "its own selection code" in d.describe()
    monkeypatch.setattr(deploy, "_installed", lambda engine: False)
    assert deploy.engine_defaults(plan, "vllm").source == "model"
    assert deploy.engine_defaults(plan, "sglang").source in ("", "model")


# --- The first screen ----------------------------------------------------------------------------

def _screen(capsys, *argv):
    code, lines = run_text(capsys, *argv)
    first = "\n".join(lines[:24])
    return code, lines, first


@pytest.mark.parametrize("argv", [
    ("explain", "gemma-4-26b-a4b-nvfp4", "--device", "b200", "--tp", "8", "--no-pad"),
    ("explain", "deepseek-v3", "--device", "h100", "--tp", "8"),
    ("explain", "gpt-oss-120b", "--device", "h100"),
    ("explain", "llama-4-scout", "--device", "b200"),
])
def test_decision_and_what_to_type_on_the_first_screen(capsys, argv):
    code, lines, first = _screen(capsys, *argv)
    assert "layers    backend" in first and "what to type" in first
    assert all(len(l) <= 80 and l == l.rstrip() for l in lines)


def test_qwen3_fp8_at_tp4_leads_with_the_fix(capsys, tmp_path):
    # Qwen/Qwen3-30B-A3B-FP8: the preset's shape with its block-FP8 quantization_config.
    cfg = json.loads((ROOT / "moe_registry" / "models" / "qwen3-30b-a3b.json").read_text())
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                  "weight_block_size": [128, 128]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    code, lines, first = _screen(capsys, "explain", str(tmp_path), "--device", "h100", "--tp", "4")
    assert code == 0 and "what to type: no engine can be told to run the chosen backend" in " ".join(first.split())
    first, everything = " ".join(first.split()), " ".join(" ".join(lines).split())
    assert "--tp 4 --enable-expert-parallel" in first and f"{tmp_path} --device h100 --tp 2" in everything


def test_forced_backends_are_marked(capsys, monkeypatch):
    code, lines = run_text(capsys, "explain", "gemma-4-26b-a4b-nvfp4", "--device", "h100", "--force", "marlin")
    text = "\n".join(lines)
    assert "marlin *" in text and "* marlin: forced by --force, not chosen by selection" in text
    from moe_registry.environment import Environment
    from moe_registry.render.plan import plan_lines

    env = Environment.planning_target(backend_override="marlin")
    plan = plan_model("gemma-4-26b-a4b-nvfp4", "h100", environment=env)
    text = "\n".join(plan_lines(plan))
    assert "marlin *" in text and "* marlin: forced by MOE_REGISTRY_BACKEND, not chosen by selection" in text


def test_an_ineligible_prefer_is_not_silent(capsys):
    assert main(["explain", "gemma-4-26b-a4b-nvfp4", "--device", "h100", "--prefer", "trtllm-fp4"]) == 0
    err = capsys.readouterr().err
    assert "warning: --prefer trtllm-fp4 ignored: not eligible (device_unsupported" in err


def test_priority_is_named_for_what_it_is_and_layer_kinds_are_labelled(capsys):
    code, lines = run_text(capsys, "explain", "gemma-4-26b-a4b-nvfp4", "--device", "h100")
    assert "higher-priority backends rejected (declared priority, not measured speed):" in lines
    assert "all layers: activation gelu_tanh, quant nvfp4, dtype bf16" in lines
    assert not any("faster backends" in l for l in lines)


def test_sglang_style_flags_get_sglang_flags(capsys):
    code, lines = run_text(capsys, "explain", "qwen3-30b-a3b", "--device", "h100", "--tp", "8", "--ep", "2")
    text = " ".join(" ".join(lines).split())
    # triton-fused-moe has an SGLang runner name (engines.sglang), so the SGLang line names it with the layout.
    assert "SGLang: --tp-size 8 --ep-size 2 --moe-runner-backend triton" in text
    assert "vLLM: - (vLLM cannot run this layout" in text


def test_piped_output_has_no_trailing_spaces():
    proc = subprocess.run([sys.executable, "-m", "moe_registry.cli", "explain", "qwen3-30b-a3b", "--device", "b200",
                           "--tp", "8", "-v"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode in (0, 3) and proc.stdout
    assert all(line == line.rstrip() for line in proc.stdout.splitlines())


# --- select: for deployers ------------------------------------------------------------------------

def test_select_hides_maintainer_hints_and_prints_a_shared_hint_once(capsys):
    argv = ["select", "--experts", "128", "--top-k", "8", "--hidden", "2816", "--intermediate", "704",
            "--activation", "gelu_tanh", "--quant", "nvfp4", "--device", "b200", "--tp", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "declare it in its activations" not in out and "moe-registry probe" not in out
    # Backends that do not run the checkpoint's format are listed by name, once (-v: why each).
    flat = " ".join(out.split())
    assert "rejected, do not run nvfp4: trtllm-fp8, trtllm-fp8-channel, trtllm-fp8-block, trtllm-bf16," in flat
    assert "does not run nvfp4" not in out and out.count("trtllm-fp8-channel") == 1
    assert "I 88->128" in " ".join(out.split()) or "intermediate 88->128" in " ".join(out.split())
    assert len(lines) <= 42 and all(len(l) <= 80 and l == l.rstrip() for l in lines)
    assert main([*argv, "-v"]) == 0
    verbose = capsys.readouterr().out
    assert "declare it in its activations" in verbose and "does not run nvfp4" in verbose
    assert "rejected, do not run" not in verbose


def test_explain_and_select_never_import_rich_or_torch():
    """Start-up time (issue 20): the text of explain and select is laid out without rich."""
    probe = ("import sys, io, contextlib\nfrom moe_registry.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    main(['explain', 'deepseek-v3', '--device', 'h100'])\n"
             "    main(['select', '--experts', '8', '--top-k', '2', '--hidden', '256', '--intermediate', '128'])\n"
             "print(sorted(m for m in ('rich', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "[]"
