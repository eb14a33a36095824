"""The CLI: what `explain` shows, exit codes, one-line errors, plain output, the generated matrix."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_registry.cli import main
from moe_registry.models import preset_text

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_gemma4_nvfp4_on_b200_every_layer_on_trtllm(capsys):
    code, out, err = run(capsys, "explain", "gemma-4-26b-a4b-nvfp4", "--device", "b200", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["schema_version"] == 1 and data["moe_layers"] == 30
    assert {layer["backend"] for layer in data["layers"]} == {"trtllm-fp4"}
    (group,) = data["groups"]
    assert group["layer"]["activation"] == "gelu_tanh" and group["layer"]["quant"]["kind"] == "nvfp4"
    assert group["selection"]["engines"]["vllm"] == "flashinfer_trtllm"


def test_explain_gemma4_nvfp4_on_h100_shows_fallback_and_sm100_reason(capsys):
    code, out, _ = run(capsys, "explain", "gemma-4-26b-a4b-nvfp4", "--device", "h100")
    assert code == 0
    # vLLM 0.33's own choice on Hopper (HummingIndexedExperts), ahead of Marlin and the grouped GEMM
    assert "humming" in out and "0-29 (30)" in out and "E128 k8 H2816 I704" in out
    assert "trtllm-fp4" in out and "device_unsupported" in out and "SM100" in out
    assert not ANSI.search(out)  # not a terminal: plain text


def test_explain_markdown_is_pasteable(capsys):
    code, out, _ = run(capsys, "explain", "deepseek-v3", "--device", "h100", "--markdown")
    assert code == 0
    assert out.startswith("## MoE backend plan: deepseek-v3")
    assert "| layers 3-60 (58) |" in out and "| rejected backend | code | reason | hint |" in out


def test_explain_tp8_pads_nvfp4_to_whole_groups_keeps_the_ep_hint_and_exits_3_only_unpadded(capsys):
    # 704 / TP8 = 88 splits NvFP4's 16-element groups: TRT-LLM-gen pads the rank's shard to 128.
    code, out, _ = run(capsys, "explain", "gemma-4-26b-a4b-nvfp4", "--device", "b200", "--tp", "8", "--json")
    assert code == 0
    selection = json.loads(out)["groups"][0]["selection"]
    assert selection["backend"].startswith("trtllm")
    assert [(p["dimension"], p["original"], p["padded"]) for p in selection["padding"]] == [("intermediate", 88, 128)]
    ep8 = "(EP8: vLLM --enable-expert-parallel, SGLang --ep-size 8) keeps intermediate 704"
    assert any(n["kind"] == "hint" and ep8 in n["message"]
               for n in selection["notes"])
    code, out, _ = run(capsys, "explain", "gemma-4-26b-a4b-nvfp4", "--device", "b200", "--tp", "8", "--no-pad", "--json")
    assert code == 3
    group = json.loads(out)["groups"][0]
    hints = {r["hint"] for rej in group["rejections"] for r in rej["reasons"]}
    assert any("(EP8: vLLM --enable-expert-parallel, SGLang --ep-size 8) keeps intermediate 704" in h for h in hints)
    code, out, _ = run(capsys, "explain", "gemma-4-26b-a4b-nvfp4", "--device", "b200", "--ep", "8", "--json")
    assert code == 0 and {layer["backend"] for layer in json.loads(out)["layers"]} == {"trtllm-fp4"}


def test_select_exit_codes(capsys):
    args = ["select", "--experts", "128", "--top-k", "8", "--hidden", "2816", "--intermediate", "704",
            "--activation", "gelu_pytorch_tanh", "--quant", "nvfp4"]
    assert run(capsys, *args, "--device", "b200")[0] == 0
    code, _, err = run(capsys, *args, "--device", "h100", "--force", "trtllm-fp4")
    assert code == 3 and "SM100" in err and err.count("\n") == 1
    from moe_registry.registry import default_registry

    forbid = [x for b in default_registry().ids() for x in ("--forbid", b)]
    code, out, _ = run(capsys, *args, "--device", "h100", *forbid, "--json")
    assert code == 3 and json.loads(out)["error"] == "no_eligible_backend"


@pytest.mark.parametrize("argv, needle", [
    (["explain", "/nonexistent/config.json"], "/nonexistent"),
    (["explain", "no-such-model"], "no-such-model"),
    (["explain", "qwen3-30b-a3b", "--device", "h300"], "unknown device 'h300'"),
    (["explain", "qwen3-30b-a3b", "--tp", "5"], "TP5"),
    (["explain", "qwen3-30b-a3b", "--quant", "int3"], "unknown quantization scheme"),
    (["explain", "qwen3-30b-a3b", "--force", "marlinn"], "unknown backend 'marlinn'"),
    (["select", "--experts", "8", "--top-k", "2", "--hidden", "64", "--intermediate", "64", "--activation", "x"],
     "unknown activation 'x'"),
    (["select", "--experts", "8", "--top-k", "9", "--hidden", "64", "--intermediate", "64"], "top_k (9) exceeds"),
    (["select", "--experts", "8"], "required"),
    (["nonsense"], "invalid choice"),
    (["select", "--experts", "8", "--top-k", "2", "--hidden", "64", "--intermediate", "64", "--policy", "measured"],
     "--costs"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("moe-registry: error:") and err.count("\n") == 1 and needle in err
    assert "Traceback" not in err


def test_malformed_and_truncated_files_exit_2(capsys, tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"num_local_experts": 8, "hidden_size": ')
    code, _, err = run(capsys, "explain", str(bad))
    assert code == 2 and err.count("\n") == 1


def _mutations():
    text = preset_text("deepseek-v3")
    return st.one_of(
        st.integers(0, len(text)).map(lambda n: text[:n]),  # truncated
        st.recursive(st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
                     lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(
                         ["num_experts", "num_local_experts", "n_routed_experts", "hidden_size", "moe_intermediate_size",
                          "intermediate_size", "num_experts_per_tok", "num_hidden_layers", "hidden_act",
                          "first_k_dense_replace", "quantization_config", "text_config", "mlp_only_layers",
                          "decoder_sparse_step", "hybrid_override_pattern", "quant_method", "weight_block_size",
                          "config_groups", "ignore", "bits", "group_size"]), children, max_size=8),
                     max_leaves=20).map(json.dumps),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_mutations(), device=st.sampled_from(["h100", "b200", "cpu"]))
def test_fuzzed_configs_never_traceback(tmp_path_factory, capsys, text, device):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(text)
    code = main(["explain", str(path), "--device", device, "--json"])
    _, err = capsys.readouterr()
    assert code in (0, 2, 3), err
    assert "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1


def test_backends_markdown_matches_the_committed_matrix(capsys):
    code, out, _ = run(capsys, "backends", "--markdown")
    assert code == 0
    committed = (ROOT / "docs" / "capability-matrix.md").read_text()
    assert out == committed, "docs/capability-matrix.md is stale: moe-registry backends --markdown > docs/capability-matrix.md"


def test_backends_json_and_device_filter(capsys):
    code, out, _ = run(capsys, "backends", "--json", "--device", "h100")
    data = json.loads(out)
    assert code == 0 and data["problems"] == []
    by_id = {b["id"]: b for b in data["backends"]}
    assert by_id["trtllm-fp4"]["runs_on_device"] is False
    assert "fp8_block" in by_id["flashinfer-cutlass"]["quant_on_device"]
    assert "nvfp4" not in by_id["flashinfer-cutlass"]["quant_on_device"]


def test_schema_and_models(capsys):
    code, out, _ = run(capsys, "schema")
    data = json.loads(out)
    assert code == 0 and set(data) == {"capability", "layer", "selection"}
    code, out, _ = run(capsys, "models", "--json")
    data = json.loads(out)
    assert code == 0 and data["schema_version"] == 1 and "gemma-4-26b-a4b-nvfp4" in data["presets"]


def test_console_script_does_not_import_torch():
    probe = ("import sys, io, contextlib; from moe_registry.cli import main; "
             "f = io.StringIO();\nwith contextlib.redirect_stdout(f): rc = main(['explain', 'qwen3-235b-a22b', "
             "'--device', 'b200', '--json'])\nprint(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "False"]


@pytest.mark.parametrize("preset, formats", [("qwen3-235b-a22b", []), ("deepseek-v3", ["fp8"])])
def test_explain_imports_no_plugin_isolation_and_only_its_quant_format(preset, formats):
    # explain's start-up (benchmarks/bench_explain_time.py): the plugin-isolation machinery (subprocess,
    # signals, threads) loads only to evaluate a plugin, a quantization format's parser only for a
    # checkpoint in that format.
    import importlib.metadata

    if list(importlib.metadata.entry_points(group="moe_registry")):
        pytest.skip("an entry-point plugin is installed: the registry evaluates it")
    probe = ("import sys, io, contextlib; from moe_registry.cli import main\n"
             f"with contextlib.redirect_stdout(io.StringIO()): rc = main(['explain', '{preset}', '--device', 'h100'])\n"
             "print(rc, 'moe_registry._isolation' in sys.modules, sorted(m.rsplit('.', 1)[1] for m in sys.modules\n"
             "      if m.startswith('moe_registry.quant_config.') and m.rsplit('.', 1)[1] not in ('base', 'patterns')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"0 False {formats}"


def test_planning_commands_pause_the_garbage_collector(capsys, monkeypatch):
    import gc

    from moe_registry.render import deploy

    seen: list[bool] = []
    real = deploy.engine_defaults
    monkeypatch.setattr(deploy, "engine_defaults", lambda plan, engine: seen.append(gc.isenabled()) or real(plan, engine))
    assert gc.isenabled()
    code, _, _ = run(capsys, "explain", "qwen3-30b-a3b", "--device", "h100")
    assert code == 0 and seen == [False, False]
    assert gc.isenabled()  # main() gives an in-process caller its collector back
    # The program (`moe-registry`, `python -m moe_registry.cli`) leaves it off to the exit, so the
    # interpreter's last full collection is skipped too, and freezes what the command made, so the
    # collection run while the modules are torn down skips it.
    probe = ("import atexit, gc, sys; from moe_registry import cli; sys.argv = ['moe-registry', 'models']; "
             "atexit.register(lambda: print('collector on at exit:', gc.isenabled(), 'frozen:', gc.get_freeze_count() > 0,"
             " file=sys.stderr)); cli.entry()")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0 and "collector on at exit: False frozen: True" in done.stderr, done.stderr


def test_no_color_env_gives_plain_text():
    env = {"NO_COLOR": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "moe_registry.cli", "backends"], capture_output=True, text=True,
                            env={**env, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and not ANSI.search(result.stdout)
