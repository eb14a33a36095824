"""Issue 13: bounds, exit codes, strict JSON, escaping, typed errors, inputs that used to be accepted.

Every documented command's --json output is parsed with a strict parser (no NaN / Infinity), on
success and on every error exit. The fuzz tests run a fixed, small budget (CI has 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_registry import LayerSpec, select_backend
from moe_registry.cli import main
from moe_registry.models import preset_text
from moe_registry.planner import (
    MAX_CONFIG_BYTES, MAX_JSON_DEPTH, ConfigNotFound, MalformedConfig, PlanError, plan_config, plan_model,
)
from moe_registry.quant_config import QuantConfigError, check_pattern
from moe_registry.registry import Registry, hookimpl
from moe_registry.schemas.layer import MAX_EXPERTS, MAX_LAYERS

from _decl_helpers import assert_selected

REPO = Path(__file__).resolve().parents[1]
TINY = "layer:experts=8,top_k=2,hidden=64,intermediate=32"
SELECT = ["select", "--experts", "8", "--top-k", "2", "--hidden", "128", "--intermediate", "128"]


def strict_json(text: str):
    """RFC 8259: NaN, Infinity and -Infinity are not JSON."""
    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_config(tmp_path: Path, text: str, name: str = "config.json") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def qwen(**changes) -> dict:
    cfg = json.loads(preset_text("qwen3-30b-a3b"))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg.update(changes)
    return cfg


# --- Strict JSON for every documented command and every exit code ----------------------------------

DOCUMENTED = [
    (["explain", "gemma-4-26b-a4b-nvfp4", "--device", "b200", "--json"], 0),
    (["explain", "gemma-4-26b-a4b-nvfp4", "--device", "b200", "--tp", "8", "--json"], 0),
    (["explain", "gemma-4-26b-a4b-nvfp4", "--device", "b200", "--tp", "8", "--no-pad", "--json"], 3),
    ([*SELECT, "--device", "h100", "--json"], 0),
    ([*SELECT, "--device", "h100", "--force", "trtllm-fp4", "--json"], 3),
    ([*SELECT, "--device", "h100", "--quant", "nvfp4", "--forbid", "marlin", "--forbid", "flashinfer-cutlass",
      "--forbid", "humming", "--forbid", "torch-grouped-mm", "--forbid", "triton-lowt-moe", "--forbid", "reference",
      "--json"], 3),
    (["backends", "--json"], 0),
    (["backends", "--device", "h100", "--json"], 0),
    (["models", "--json"], 0),
    (["bench", TINY, "--tokens", "2", "--reps", "1", "--torch-device", "cpu", "--json"], 0),
    # exit 2: an error object on stdout, one line on stderr
    (["explain", "no-such-model", "--json"], 2),
    (["explain", "qwen3-30b-a3b", "--device", "nope", "--json"], 2),
    ([*SELECT, "--tp", "0", "--json"], 2),
    (["select", "--experts", "x", "--json"], 2),
    (["bench", TINY, "--tp", "0", "--json"], 2),
    (["run", "--preset", "qwen3-30b-a3b", "--torch-device", "meta", "--json"], 2),
    (["run", "--preset", "qwen3-30b-a3b", "--device", "cpu", "--json"], 2),
    (["bench", TINY, "--device", "cuda", "--json"], 2),
]


@pytest.mark.parametrize("argv,expected", DOCUMENTED, ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_every_documented_json_output_is_strict_json(capsys, argv, expected):
    code, out, err = run(capsys, *argv)
    assert code == expected, err
    data = strict_json(out)
    if code == 2:
        assert data["error"] == "bad_input" and data["message"] and data["schema_version"] == 1
        assert err.count("\n") == 1 and err.startswith("moe-registry: error: ")
    if code == 3:
        assert data.get("error") in ("no_eligible_backend", "backend_not_eligible") or any(
            "error" in g for g in data.get("groups", []))


def test_schema_output_is_strict_json(capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0 and set(strict_json(out)) == {"capability", "layer", "selection"}


# --- Non-finite values are refused at input ----------------------------------------------------------


@pytest.mark.parametrize("literal", ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_in_a_config_exit_2(tmp_path, capsys, literal):
    # Read as Python's json module reads them (issue 20), refused where the planner uses one.
    text = json.dumps(qwen(model_type="gpt_oss")).replace('"rope_theta": 1000000.0', f'"swiglu_limit": {literal}')
    code, out, err = run(capsys, "explain", write_config(tmp_path, text), "--device", "h100", "--json")
    assert code == 2, err
    assert "swiglu_limit must be a finite positive number" in strict_json(out)["message"]


def test_infinite_swiglu_limit_from_a_dict_is_refused():
    cfg = json.loads(preset_text("gpt-oss-20b"))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")} | {"swiglu_limit": float("inf")}
    with pytest.raises(PlanError, match="finite"):
        plan_config(cfg, device="h100", select=False)


@pytest.mark.parametrize("literal", ["1e999", "Infinity", "NaN"])
def test_non_finite_cost_table_exits_2(tmp_path, capsys, literal):
    code, out, _ = run(capsys, "bench", TINY, "--tokens", "2", "--reps", "1", "--torch-device", "cpu",
                       "--out", str(tmp_path / "costs.json"))
    assert code == 0, out
    table = (tmp_path / "costs.json").read_text()
    data = json.loads(table)
    first = data["entries"][0]["median_us"]
    bad = tmp_path / "bad.json"
    bad.write_text(table.replace(json.dumps(first), literal, 1))
    code, out, err = run(capsys, "select", "--experts", "8", "--top-k", "2", "--hidden", "64", "--intermediate", "32",
                         "--device", "cpu", "--policy", "measured", "--costs", str(bad), "--json")
    assert code == 2 and "cost table" in strict_json(out)["message"], err


# --- Bounds --------------------------------------------------------------------------------------------


def test_deep_nesting_is_a_one_line_error(tmp_path, capsys):
    for depth in (MAX_JSON_DEPTH + 1, 100_000):
        text = '{"a": ' * depth + "1" + "}" * depth
        code, out, err = run(capsys, "explain", write_config(tmp_path, text), "--json")
        assert code == 2 and "nested too deeply" in err and err.count("\n") == 1
        strict_json(out)


def test_config_size_is_bounded(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"pad": "' + "x" * MAX_CONFIG_BYTES + '"}')
    with pytest.raises(MalformedConfig, match="larger than"):
        plan_model(path)


def test_huge_layer_counts_and_sizes_are_refused_quickly():
    started = time.monotonic()
    with pytest.raises(MalformedConfig, match=f"limit of {MAX_LAYERS}"):
        plan_config(qwen(num_hidden_layers=10**12), device="h100")
    with pytest.raises(PlanError, match="num_experts"):
        plan_config(qwen(num_experts=10**12), device="h100")
    with pytest.raises(ValueError, match="less than or equal"):
        LayerSpec(num_experts=MAX_EXPERTS + 1, top_k=1, hidden_size=128, intermediate_size=128)
    assert time.monotonic() - started < 5


def test_select_huge_prime_experts_is_a_quick_bad_input(capsys):
    started = time.monotonic()
    code, _, err = run(capsys, "select", "--experts", str(10**12 + 39), "--top-k", "2", "--hidden", "128",
                       "--intermediate", "128", "--device", "b200")
    assert code == 2 and "num_experts" in err
    assert time.monotonic() - started < 5


def test_ep_hint_uses_the_smallest_divisor():
    from moe_registry.selection.rules import _smallest_ep

    def brute(n, m):
        return next((ep for ep in range(2, n + 1) if n % ep == 0 and n // ep <= m), None)

    for n in range(1, 300):
        for m in (1, 2, 3, 7, 16, 64, 256):
            assert _smallest_ep(n, m) == brute(n, m), (n, m)
    assert _smallest_ep(MAX_EXPERTS, 64) == 1024
    assert _smallest_ep(65_521, 256) == 65_521  # a prime: only EP = E fits


@pytest.mark.parametrize("pattern,why", [
    (r"(x)\1", "not a pattern RE2 runs in linear time"),
    (r"(?=a)b", "not a pattern RE2 runs in linear time"),
    ("a" * 300, "the limit is 256"),
    ("(", "not a pattern RE2 runs in linear time"),
])
def test_patterns_re2_cannot_run_are_refused(pattern, why):
    with pytest.raises(QuantConfigError, match=why.replace("(", r"\(")):
        check_pattern(pattern)


@pytest.mark.parametrize("pattern", [r".*lm_head", r"model\.layers\.\d+\.self_attn.*", r".*\.(q|k|v)_proj$",
                                     r"model\.layers\.(0|1|2)\.mlp\.experts.*", r"(?:.*\.)?mlp\.gate$"])
def test_real_exclusion_patterns_stay_accepted(pattern):
    check_pattern(pattern)


@pytest.mark.parametrize("quant", [
    {"quant_method": "fp8", "ignored_layers": ["re:(a+)+$"]},
    {"quant_method": "compressed-tensors", "ignore": ["re:(.*a){25}x"], "config_groups": {"g": {
        "targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "tensor"}}}},
    {"quant_method": "modelopt", "quantization": {"quant_algo": "NVFP4", "group_size": 16,
                                                  "exclude_modules": ["re:(\\w+\\.?)+$"]}},
    {"quant_method": "gptq", "bits": 4, "group_size": 128, "dynamic": {"-:(m|mo|mod)+x": {}}},
])
def test_a_backtracking_pattern_in_any_format_is_matched_in_linear_time(tmp_path, capsys, quant):
    # Issue 13 refused these (Python's re backtracks); on RE2 they are ordinary patterns.
    started = time.monotonic()
    code, _, err = run(capsys, "explain", write_config(tmp_path, json.dumps(qwen(quantization_config=quant))),
                       "--device", "h100")
    assert code in (0, 2) and "internal" not in err, err
    assert time.monotonic() - started < 5


def test_declarations_per_plugin_are_bounded():
    from moe_registry.backends.reference import DECLARATION

    class Flood:
        @hookimpl
        def moe_registry_backends(self):
            base = DECLARATION.model_dump()
            return [base | {"id": f"flood-{i}"} for i in range(10_000)]

    started = time.monotonic()
    registry = Registry(entry_points=False, plugins=[Flood()])
    assert time.monotonic() - started < 5
    assert not any(i.startswith("flood") for i in registry.ids())
    assert any("at most 64" in p.message for p in registry.problems)


# --- Exit 2, not 1 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", [
    {"quant_method": "fp8", "weight_block_size": 128},
    {"quant_method": "fp8", "weight_block_size": "128"},
    {"quant_method": "fp8", "ignored_layers": 5},
    {"producer": "modelopt"},
    {"quant_method": "compressed-tensors", "config_groups": {"g": {"targets": ["Linear"], "weights": {
        "num_bits": 4, "type": ["int"], "strategy": {"x": 1}, "group_size": 32}}}},
    {"quant_method": "modelopt", "quantization": {"quant_algo": "NVFP4", "group_size": "16"}},
    {"quant_method": "gptq", "bits": "4"},
    {"quant_method": "gptq", "bits": 4, "dynamic": ["x"]},
    {"quant_method": "modelopt", "quantization": {"quant_algo": "MIXED_PRECISION", "quantized_layers": [1]}},
])
def test_malformed_quant_config_types_exit_2(tmp_path, capsys, quant):
    code, out, err = run(capsys, "explain", write_config(tmp_path, json.dumps(qwen(quantization_config=quant))),
                         "--device", "h100", "--json")
    assert code == 2, err
    assert err.count("\n") == 1
    strict_json(out)


def _cli(args: list[str], *, stdin=None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "moe_registry.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120, **kwargs)


def test_stdout_closed_exits_2_with_one_line():
    done = subprocess.run(f"{sys.executable} -m moe_registry.cli backends >&-", shell=True, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 2 and done.stderr == "moe-registry: error: standard output is closed\n"


@pytest.mark.parametrize("args", [["backends"], ["backends", "--markdown"], ["explain", "deepseek-v3", "--device", "h100"]])
def test_output_piped_into_head_is_a_normal_end(args):
    cmd = " ".join([sys.executable, "-m", "moe_registry.cli", *args])
    done = subprocess.run(f"set -o pipefail; {cmd} | head -1", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.count("\n") == 1


def test_run_and_bench_without_torch_exit_2():
    # torch made unimportable (None in sys.modules) before the CLI starts.
    code = ("import sys; sys.modules['torch'] = None; from moe_registry.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    for args in (["run", "--preset", "qwen3-30b-a3b", "--torch-device", "cpu"], ["bench", TINY, "--torch-device", "cpu"]):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "needs torch" in done.stderr and done.stderr.count("\n") == 1


def test_missing_adapter_module_is_a_typed_error():
    import torch

    from moe_registry.backends.reference import DECLARATION
    from moe_registry.execution import AdapterUnavailable, build_experts, random_weights

    registry = Registry(entry_points=False).with_declaration(
        DECLARATION.model_copy(update={"id": "acme-gone", "adapter": "acme_gone_module:Experts",
                                       "priority": {k: 10_000 for k in DECLARATION.priority}}))
    layer = LayerSpec(num_experts=4, top_k=2, hidden_size=64, intermediate_size=32)
    selection = select_backend(layer, torch.device("cpu"), registry=registry)
    assert_selected(selection, "acme-gone")
    with pytest.raises(AdapterUnavailable, match="acme_gone_module"):
        build_experts(selection, random_weights(layer), registry=registry)


# --- Terminal injection --------------------------------------------------------------------------------

EVIL = "ACME\x1b[2J\x1b]0;pwned\x07\rfake\nline\u202e"


def _evil_registry():
    from moe_registry.backends.reference import DECLARATION

    evil = DECLARATION.model_copy(update={"id": "acme-evil", "name": EVIL, "description": EVIL, "max_top_k": 1})
    return Registry(entry_points=False).with_declaration(evil)


def _assert_escaped(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "\u202e" not in text
    assert "\\x1b[2J" in text


def test_plugin_strings_are_escaped_in_markdown_table_and_exit_3(monkeypatch, capsys):
    import moe_registry.registry as registry_module
    import moe_registry.selection as selection_module

    evil = _evil_registry()
    monkeypatch.setattr(registry_module, "default_registry", lambda: evil)
    monkeypatch.setattr(selection_module, "default_registry", lambda: evil)
    for mode in ("--markdown", None):
        code, out, _ = run(capsys, "backends", *([mode] if mode else []))
        assert code == 0
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    _assert_escaped(run(capsys, "backends", "--markdown")[1])
    # exit 3: a forced plugin backend that cannot run the layer, its name in the one-line message
    code, out, err = run(capsys, *SELECT, "--device", "h100", "--force", "acme-evil")
    assert code == 3 and out == ""
    _assert_escaped(err)
    assert err.count("\n") == 1
    code, out, _ = run(capsys, *SELECT, "--device", "h100", "--force", "acme-evil", "--json")
    assert code == 3 and EVIL in strict_json(out)["reasons"][0]["message"]  # JSON keeps the exact string


def test_config_strings_are_escaped(tmp_path, capsys):
    directory = tmp_path / "evil\x1b[2Jmodel"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(qwen(model_type="evil\x1b]0;t\x07")))
    code, out, err = run(capsys, "explain", str(directory), "--device", "h100")
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    code, out, _ = run(capsys, "explain", str(directory), "--device", "h100", "--markdown")
    assert "\x1b" not in out and "\x07" not in out
    code, _, err = run(capsys, "explain", "evil\x1b[2J")
    assert code == 2 and "\x1b" not in err


# --- Typed library errors -----------------------------------------------------------------------------


def test_select_backend_accepts_a_torch_device_or_raises_the_typed_error():
    import torch

    from moe_registry.errors import InvalidDevice

    layer = LayerSpec(num_experts=8, top_k=2, hidden_size=128, intermediate_size=128)
    assert select_backend(layer, torch.device("cpu")).backend
    if not torch.cuda.is_available():
        with pytest.raises(InvalidDevice, match="no CUDA device"):
            select_backend(layer, torch.device("cuda"))
    with pytest.raises(InvalidDevice, match="meta"):
        select_backend(layer, torch.device("meta"))
    with pytest.raises(InvalidDevice):
        select_backend(layer, 3)


@pytest.mark.parametrize("source", [None, 5, "x" * 300, "/tmp/" + "y" * 300 + "/config.json", "a\0b", "~nosuchuser/x"])
def test_plan_model_bad_sources_raise_plan_error(source):
    with pytest.raises(PlanError):
        plan_model(source)


def test_long_path_is_config_not_found():
    with pytest.raises(ConfigNotFound):
        plan_model("/tmp/" + "y" * 300 + "/config.json")


# --- Bad input that used to be accepted --------------------------------------------------------------


@pytest.mark.parametrize("command", [["run", "--preset", "qwen3-30b-a3b"], ["bench", TINY]])
@pytest.mark.parametrize("device", ["cpu", "cuda", "h100"])
def test_run_and_bench_refuse_device_and_name_torch_device(capsys, command, device):
    # --device is a target device preset (explain, select); run and bench measure on this machine.
    code, out, err = run(capsys, *command, "--device", device)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--torch-device cpu|cuda" in err and "target device" in err


def test_bench_tp_zero_and_unwritable_out_are_refused_before_running(tmp_path, capsys):
    code, _, err = run(capsys, "bench", TINY, "--tp", "0")
    assert code == 2 and "--tp" in err
    started = time.monotonic()
    code, _, err = run(capsys, "bench", TINY, "--tokens", "1,2,4,8", "--out", "/dev/null/costs.json")
    assert code == 2 and "--out" in err and "nothing could be timed" not in err
    code, _, err = run(capsys, "bench", TINY, "--out", str(tmp_path))
    assert code == 2 and "is a directory" in err
    assert time.monotonic() - started < 10


def test_select_tokens_zero_with_the_measured_policy_is_refused(tmp_path, capsys):
    costs = tmp_path / "costs.json"
    assert run(capsys, "bench", TINY, "--tokens", "2", "--reps", "1", "--torch-device", "cpu", "--out", str(costs))[0] == 0
    code, _, err = run(capsys, "select", "--experts", "8", "--top-k", "2", "--hidden", "64", "--intermediate", "32",
                       "--device", "cpu", "--policy", "measured", "--costs", str(costs), "--tokens", "0")
    assert code == 2 and "positive token count" in err


def test_route_refuses_zero_groups_and_nan_scaling():
    import torch

    from moe_registry.execution import route

    layer = LayerSpec(num_experts=8, top_k=2, hidden_size=16, intermediate_size=16, routing="deepseek_v3")
    logits = torch.randn(3, 8)
    with pytest.raises(ValueError, match="n_group=0"):
        route(logits, layer, n_group=0)
    with pytest.raises(ValueError, match="topk_group=0"):
        route(logits, layer, n_group=2, topk_group=0)
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="routed_scaling_factor"):
            route(logits, layer, routed_scaling_factor=bad)
    route(logits, layer, routed_scaling_factor=2.5)


# --- Fuzz: config files and CLI arguments (fixed small budget) --------------------------------------------

_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from([0, 10**12, 2**63, -(10**12)]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.sampled_from(["re:(a+)+$", "re:.*", "\x1b[2J", "1e999", "NaN"]),
    st.lists(st.integers(0, 200), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_KEYS = st.sampled_from(["num_experts", "num_experts_per_tok", "hidden_size", "moe_intermediate_size",
                         "num_hidden_layers", "model_type", "hidden_act", "torch_dtype", "mlp_only_layers",
                         "decoder_sparse_step", "swiglu_limit", "quantization_config", "text_config"])
_QUANT = st.fixed_dictionaries({"quant_method": st.sampled_from(["fp8", "gptq", "awq", "modelopt", "compressed-tensors",
                                                                   "mxfp4", "bogus"])},
                               optional={"weight_block_size": _VALUES, "ignored_layers": _VALUES, "bits": _VALUES,
                                         "group_size": _VALUES, "dynamic": _VALUES, "ignore": _VALUES,
                                         "config_groups": _VALUES, "quantization": _VALUES, "quant_algo": _VALUES})


def _render(data, nest: int, raw_number: str | None) -> str:
    text = json.dumps(data)
    if raw_number is not None:
        text = text.replace('"hidden_size": ', f'"hidden_size": {raw_number}, "_x": ', 1)
    return "[" * nest + text + "]" * nest


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(changes=st.dictionaries(_KEYS, _VALUES, max_size=3), quant=st.none() | _QUANT,
       nest=st.sampled_from([0, 0, 0, 1, 200, 5000]), raw=st.sampled_from([None, None, "1e999", "NaN", "-Infinity"]),
       device=st.sampled_from(["h100", "b200", "cpu"]), json_flag=st.booleans())
def test_fuzz_config_files(tmp_path_factory, capsys, changes, quant, nest, raw, device, json_flag):
    cfg = qwen(**changes)
    if quant is not None:
        cfg["quantization_config"] = quant
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(_render(cfg, nest, raw))
    argv = ["explain", str(path), "--device", device] + (["--json"] if json_flag else [])
    _check_exit(capsys, argv, json_flag)


_FLAG_VALUES = st.sampled_from(["0", "-1", "1", "8", "128", "10000000000000", "x", "", "1e3", "nan", "h100", "b200",
                                "\x1b[2J", "nvfp4", "int4_w4a16:g0", "swigluoai", "deepseek_v3", "reference"])


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(command=st.sampled_from(["select", "explain", "backends", "models", "schema"]),
       flags=st.lists(st.tuples(st.sampled_from(["--experts", "--top-k", "--hidden", "--intermediate", "--tp", "--ep",
                                                 "--device", "--quant", "--activation", "--routing", "--force",
                                                 "--prefer", "--forbid", "--tokens", "--policy", "--which"]),
                                _FLAG_VALUES), max_size=6),
       json_flag=st.booleans())
def test_fuzz_cli_arguments(capsys, command, flags, json_flag):
    base = {"select": ["--experts", "8", "--top-k", "2", "--hidden", "128", "--intermediate", "128"],
            "explain": ["qwen3-30b-a3b"]}.get(command, [])
    argv = [command, *base, *(part for flag in flags for part in flag)] + (["--json"] if json_flag else [])
    _check_exit(capsys, argv, json_flag)


def _check_exit(capsys, argv: list[str], json_flag: bool) -> None:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code in (0, 2, 3), (argv, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1, err
    if json_flag and (code != 0 or argv[0] in ("select", "explain", "backends", "models")):
        strict_json(out)


_JUNK = [None, 0, -1, 1.5, float("nan"), "", b"bytes", [], {}, object(), 10**30, True]


def _library_calls():
    import torch

    from moe_registry.execution import check_forward_inputs, route
    from moe_registry.schemas.device import get_device
    from moe_registry.schemas.quant import QuantScheme

    layer = LayerSpec(num_experts=8, top_k=2, hidden_size=128, intermediate_size=128)
    deepseek = layer.replace(routing="deepseek_v3")
    return {
        "select_backend device": lambda j: select_backend(layer, j),
        "select_backend layer": lambda j: select_backend(j, "h100"),
        "select_backend force": lambda j: select_backend(layer, "h100", force=j),
        "select_backend prefer": lambda j: select_backend(layer, "h100", prefer=j),
        "select_backend forbid": lambda j: select_backend(layer, "h100", forbid=j),
        "select_backend policy": lambda j: select_backend(layer, "h100", policy=j),
        "plan_model source": lambda j: plan_model(j),
        "plan_model device": lambda j: plan_model("qwen3-30b-a3b", device=j),
        "plan_model parallel": lambda j: plan_model("qwen3-30b-a3b", device="h100", parallel=j),
        "plan_model quant": lambda j: plan_model("qwen3-30b-a3b", device="h100", quant=j),
        "plan_config": lambda j: plan_config(j),
        "QuantScheme.parse": lambda j: QuantScheme.parse(j),
        "get_device": lambda j: get_device(j),
        "route logits": lambda j: route(j, layer),
        "route layer": lambda j: route(torch.randn(2, 8), j),
        "route n_group": lambda j: route(torch.randn(2, 8), deepseek, n_group=j),
        "route routed_scaling_factor": lambda j: route(torch.randn(2, 8), deepseek, routed_scaling_factor=j),
        "check_forward_inputs": lambda j: check_forward_inputs(layer, j, torch.zeros(2, 2),
                                                               torch.zeros(2, 2, dtype=torch.int32)),
    }


def test_library_calls_with_junk_arguments_raise_typed_errors():
    from moe_registry.errors import MoeRegistryError

    untyped = []
    for name, call in _library_calls().items():
        for junk in _JUNK:
            try:
                call(junk)
            except (MoeRegistryError, ValueError):  # PlanError, InvalidArgument, InvalidDevice, ValidationError
                pass
            except Exception as exc:  # noqa: BLE001 - what the test is looking for
                untyped.append(f"{name}({junk!r:.20}): {type(exc).__name__}: {exc}")
    assert untyped == []


@pytest.mark.parametrize("value,expected", [("0.5", 0.5), ("abc", 1.0), ("-1", 1.0), ("0", 1.0), ("inf", 1.0),
                                            ("nan", 1.0), ("", 1.0), ("3600", 3600.0), ("3601", 1.0)])
def test_plugin_time_limit_from_the_environment(monkeypatch, value, expected):
    from moe_registry._isolation import plugin_timeout

    monkeypatch.setenv("MOE_REGISTRY_PLUGIN_TIMEOUT", value)
    assert plugin_timeout() == expected


@pytest.mark.parametrize("name,value", [("MOE_REGISTRY_DEVICE", "garbage"), ("MOE_REGISTRY_BACKEND", "nope\x1b[2J")])
def test_bad_environment_variables_exit_2_with_an_escaped_line(monkeypatch, capsys, name, value):
    from moe_registry.environment import detect_device as detect

    monkeypatch.setenv(name, value)
    detect.cache_clear()  # this machine is detected once per process
    try:
        code, out, err = run(capsys, *SELECT, "--json")
    finally:
        monkeypatch.delenv(name)
        detect.cache_clear()
    assert code == 2 and err.count("\n") == 1 and "\x1b" not in err
    assert strict_json(out)["error"] == "bad_input"
