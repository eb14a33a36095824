"""`moe-registry bench` and moe_registry.measure.bench.run_bench on the CPU (torch-grouped-mm's CPU
fallback and the reference backend), on tiny layers: a valid cost table, the plot, failure
isolation, and the measured-policy script's analysis path. Timings themselves are not asserted
(the CPU is shared); their structure is.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from moe_registry.cli import main  # noqa: E402
from moe_registry.measure import analysis, bench  # noqa: E402
from moe_registry.measured import CostTable, MeasuredPolicy  # noqa: E402
from moe_registry.schemas.layer import LayerSpec  # noqa: E402
from moe_registry.selection import select_backend  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = "layer:experts=8,top_k=2,hidden=64,intermediate=32"
LAYER = LayerSpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=32)
FAST = dict(reps=3, input_sets=2, warmup=1, min_reps=2)
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def _png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_tiny_layer_writes_a_cost_table_and_a_png(tmp_path, capsys):
    if not HAS_MPL:
        pytest.skip("matplotlib not installed")
    out, png = tmp_path / "costs.json", tmp_path / "plot.png"
    code = main(["bench", TINY, "--tokens", "1,8", "--reps", "3", "--out", str(out), "--plot", str(png)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = CostTable.load(out)
    assert table.device.vendor == "cpu" and table.card.startswith("cpu") and table.date
    assert table.versions["torch"] == torch.__version__
    got = {(e.backend, e.tokens) for e in table.entries}
    assert got == {(b, t) for b in ("torch-grouped-mm", "reference") for t in (1, 8)}
    for e in table.entries:
        assert e.layer == LAYER and e.p10_us <= e.median_us <= e.p90_us
    assert _png(png) and png.stat().st_size > 5000
    assert "torch-grouped-mm" in captured.out and "T=8" in captured.out and "*" in captured.out
    # The table it wrote drives the measured policy for this machine.
    sel = select_backend(LAYER, None, policy=MeasuredPolicy(table, num_tokens=8))
    assert sel.decided_by == "measured" and sel.backend == analysis.winners(table, LAYER)[8]


def test_cli_bench_json_and_backend_filter(capsys):
    code = main(["bench", TINY, "--tokens", "4", "--reps", "2", "--backend", "torch-grouped-mm", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    data = json.loads(captured.out)
    table = CostTable.model_validate(data["cost_table"])
    assert {e.backend for e in table.entries} == {"torch-grouped-mm"}
    assert data["skipped"] == [] and data["meta"]["tokens"] == [4]
    assert captured.err == ""  # no progress lines in JSON mode


@pytest.mark.parametrize("argv, needle", [
    (["--tokens", "1,x"], "--tokens"),
    (["--tokens", "0"], "at least 1"),
    (["--backend", "no-such-backend"], "no-such-backend"),
    (["--reps", "0"], "--reps"),
])
def test_cli_bench_bad_input_exits_2_with_one_line(capsys, argv, needle):
    assert main(["bench", TINY, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moe-registry: error:") and needle in err[0]


def test_cli_bench_bad_layer_spec_and_bare_layer_exit_2(capsys):
    assert main(["bench", "layer:experts=8,top_k=2"]) == 2
    assert "lacks hidden_size, intermediate_size" in capsys.readouterr().err
    assert main(["bench", "layer"]) == 2
    assert "layer:experts=" in capsys.readouterr().err


def test_one_spelling_of_a_layer_for_select_bench_flags_and_layer_strings(capsys):
    # select's flags, bench's `layer` flags and `layer:...` all go through planner.single_layer.
    flags = ["--experts", "8", "--top-k", "2", "--hidden", "64", "--intermediate", "32",
             "--activation", "swigluoai", "--swiglu-limit", "7"]
    assert main(["select", *flags, "--json"]) == 0
    selected = LayerSpec.model_validate(json.loads(capsys.readouterr().out)["layer"])
    assert main(["bench", "layer", *flags, "--tokens", "2", "--reps", "1", "--backend", "reference", "--json"]) == 0
    timed = LayerSpec.model_validate(json.loads(capsys.readouterr().out)["cost_table"]["entries"][0]["layer"])
    text = bench.parse_layer("layer:experts=8,top_k=2,hidden=64,intermediate=32,act=swigluoai,swiglu_limit=7")
    assert selected.shape_key() == timed == text
    assert text.activation_params.limit == 7
    # The same refusal everywhere: silu_clamp needs its limit.
    for argv in (["select", *flags[:8], "--activation", "silu_clamp"], ["bench", "layer", *flags[:8], "--activation",
                                                                       "silu_clamp"]):
        assert main(argv) == 2
        assert "silu_clamp needs --swiglu-limit" in capsys.readouterr().err
    with pytest.raises(ValueError, match="silu_clamp needs"):
        bench.parse_layer("layer:experts=8,top_k=2,hidden=64,intermediate=32,act=silu_clamp")
    assert main(["bench", "layer", "--experts", "8", "--top-k", "2"]) == 2
    assert "missing --hidden, --intermediate" in capsys.readouterr().err


def test_cli_bench_ineligible_backend_exits_3_with_the_reason(capsys):
    # marlin needs SM75+: nothing of what was asked can run on the CPU.
    assert main(["bench", TINY, "--tokens", "1", "--reps", "2", "--backend", "marlin"]) == 3
    captured = capsys.readouterr()
    assert "nothing could be timed" in captured.err and "marlin" in captured.err and "SM75" in captured.err


def test_resolve_target_dedupes_a_model_to_its_shapes():
    layers, labels = bench.resolve_target("qwen3-30b-a3b", "int4_w4a16:g128")
    assert len(layers) == 1
    (layer,) = layers
    assert (layer.num_experts, layer.top_k, layer.hidden_size, layer.intermediate_size) == (128, 8, 2048, 768)
    assert layer.quant.label() == "int4_w4a16:g128" and layer.name is None and labels[layer]
    spec = bench.parse_layer("layer:E=16,k=4,H=256,I=128,act=gelu_tanh,tp=2,bias=1")
    assert spec.local_intermediate_size == 64 and spec.bias and spec.activation.value == "gelu_tanh"
    assert bench.parse_tokens("4096, 1,16,16") == (1, 16, 4096)


def test_run_bench_int4_layer_and_holdout_pass():
    layer = LayerSpec(num_experts=4, top_k=2, hidden_size=128, intermediate_size=128, quant="int4_w4a16:g128")
    saved = []
    report = bench.run_bench([layer, layer.replace(name="dup", index=3)], (1, 4), torch_device="cpu",
                             holdout_tokens=(2,), checkpoint=saved.append, **FAST)
    assert {(e.backend, e.tokens) for e in report.table.entries} == {
        (b, t) for b in ("torch-grouped-mm", "reference") for t in (1, 4)}
    assert {(e.backend, e.tokens) for e in report.holdout.entries} == {("torch-grouped-mm", 2), ("reference", 2)}
    assert len(saved) == 2  # after each backend; the duplicate shape is timed once
    assert all(e.layer.quant.label() == "int4_w4a16:g128" for e in report.table.entries)
    assert report.meta["input_sets"] == 2 and all(p["reps"] >= 2 for p in report.meta["points"])


def test_a_failing_backend_is_recorded_and_the_others_still_run(monkeypatch):
    from moe_registry.backends.reference.kernel import ReferenceExperts

    def broken(self, *args):
        raise RuntimeError("CUDA-like failure in this kernel")

    monkeypatch.setattr(ReferenceExperts, "forward", broken)
    report = bench.run_bench([LAYER], (1, 4), torch_device="cpu", **FAST)
    assert {e.backend for e in report.table.entries} == {"torch-grouped-mm"}
    failed = [s for s in report.skipped if s["backend"] == "reference"]
    assert [s["tokens"] for s in failed] == [1, 4] and all(s["stage"] == "forward" for s in failed)
    assert "CUDA-like failure" in failed[0]["reason"]


def test_garbage_output_and_build_failures_are_not_timed(monkeypatch):
    from moe_registry.backends.reference.kernel import ReferenceExperts
    from moe_registry.backends.torch_grouped_mm.kernel import TorchGroupedMMExperts

    monkeypatch.setattr(ReferenceExperts, "forward", lambda self, x, w, ids: torch.full_like(x, float("nan")))

    def no_build(self, *args, **kwargs):
        raise ValueError("cannot convert these weights")

    monkeypatch.setattr(TorchGroupedMMExperts, "__init__", no_build)
    report = bench.run_bench([LAYER], (2,), torch_device="cpu", **FAST)
    assert report.table.entries == ()
    stages = {(s["backend"], s["stage"]) for s in report.skipped}
    assert stages == {("reference", "forward"), ("torch-grouped-mm", "build")}
    assert any("non-finite" in s["reason"] for s in report.skipped)


def test_bench_layers_api_returns_a_cost_table():
    table = bench.bench_layers([LAYER], "2", backends=["reference"], reps=2, torch_device="cpu")
    assert isinstance(table, CostTable) and [(e.backend, e.tokens) for e in table.entries] == [("reference", 2)]


def test_measured_policy_script_quick_inprocess(tmp_path):
    if not HAS_MPL:
        pytest.skip("matplotlib not installed")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import measured_policy
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    code = measured_policy.main(["--out-dir", str(tmp_path), "--torch-device", "cpu", "--quick", "--inprocess",
                                 "--cases", "qwen3-int4", "--reps", "2", "--input-sets", "2"])
    assert code == 0
    result = json.loads((tmp_path / "measured_policy.json").read_text())
    assert result["errors"] == [] and result["cases"][0]["complete"]
    policy = CostTable.load(tmp_path / "policy_costs.json")
    truth = CostTable.load(tmp_path / "truth_costs.json")
    assert {e.tokens for e in policy.entries} == set(measured_policy.QUICK_POLICY_TOKENS)
    assert {e.tokens for e in truth.entries} == set(measured_policy.QUICK_TRUTH_TOKENS)
    summary = result["regret"]["summary"]
    assert summary["n"] == len(measured_policy.QUICK_TRUTH_TOKENS) and summary["max"] >= 1.0
    assert _png(tmp_path / "measured_policy.png")
