"""`run`, `bench` and `probe` as a person sees them (issue 20 items 7, 9, 10): progress while they
work, the memory `run` will take said up front, noisy timings warned, text that wraps and never
prints a Python list, and JSON that carries its schema version."""

from __future__ import annotations

import importlib
import json

import pytest

from moe_registry.cli import main
from moe_registry.measure import timing
from moe_registry.memory import gb
from moe_registry.planner import plan_model

TINY = "layer:experts=8,top_k=2,hidden=64,intermediate=32"


@pytest.fixture(autouse=True)
def _columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")


def test_run_says_what_it_does_and_how_much_memory_before_the_work(monkeypatch):
    pytest.importorskip("torch")
    from moe_registry.measure import run

    lines: list[str] = []

    class Stop(Exception):
        pass

    def no_weights(*args, **kwargs):
        raise Stop  # stop where the heavy part starts: the lines before it are what a person waits with

    monkeypatch.setattr(importlib.import_module("moe_registry.execution"), "random_weights", no_weights)
    with pytest.raises(Stop):
        run.run_preset_layer("gemma-4-26b-a4b-nvfp4", torch_device="cpu", progress=lines.append)
    spec = plan_model("gemma-4-26b-a4b-nvfp4", select=False).layer_specs[0]
    assert run.host_bytes_estimate(spec) == 3 * spec.expert_weight_bytes(held_bits=32)
    assert gb(run.host_bytes_estimate(spec)) == "9.14 GB"  # measured: 9.6 GB of host memory on the CPU
    assert lines[0].startswith("model.language_model.layers.0.experts: about 9.14 GB of host memory")
    assert lines[1].startswith("backend ") and "building random weights on cpu" in lines[1]


def _fake_run(monkeypatch, report):
    monkeypatch.setattr(importlib.import_module("moe_registry.measure.run"), "run_preset_layer",
                        lambda *a, **k: report)


REPORT = {"model": "m", "layer": "model.layers.0.mlp.experts", "shape": "E=8 top2 H=64 I=32 silu bf16 bf16",
          "parallel": "unsharded (one process)", "median_us": 10.0, "notes": []}


def test_run_text_prints_lists_as_lines_and_never_single_gpu_on_a_cpu(monkeypatch, capsys):
    _fake_run(monkeypatch, {**REPORT, "notes": ["one", "two"]})
    assert main(["run", "--preset", "qwen3-30b-a3b", "--torch-device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "notes:" in out and "- one" in out and "- two" in out and "parallel: unsharded (one process)" in out
    _fake_run(monkeypatch, REPORT)
    assert main(["run", "--preset", "qwen3-30b-a3b", "--torch-device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "notes: none" in out and "[]" not in out and "single GPU" not in out


def test_run_and_models_json_carry_the_schema_version(monkeypatch, capsys):
    _fake_run(monkeypatch, REPORT)
    assert main(["run", "--preset", "qwen3-30b-a3b", "--torch-device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["schema_version"] == 1
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema_version"] == 1 and "deepseek-v3" in data["presets"]


def test_noisy_timings_are_named():
    assert timing.noisy(10.0, 16.0) and not timing.noisy(10.0, 15.0) and not timing.noisy(0.0, 5.0)
    assert "2 of 5 timings are too noisy to trust (p90 / p10 > 1.5)" in timing.noise_warning(2, 5)


def test_bench_talks_before_its_silent_part_and_wraps(capsys):
    pytest.importorskip("torch")
    assert main(["bench", TINY, "--tokens", "1", "--reps", "2", "--torch-device", "cpu",
                 "--backend", "reference"]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert any("building random weights" in l for l in err) and any("reference: preparing its weights" in l for l in err)
    assert all(len(l) <= 80 for l in err)


def test_bench_report_warns_about_noise():
    from moe_registry.measure.report import print_report
    from moe_registry.measured import CostEntry, CostTable
    from moe_registry.planner import single_layer
    from moe_registry.render.terminal import safe_console
    from moe_registry.schemas.device import get_device
    import io

    layer = single_layer(experts=8, top_k=2, hidden=64, intermediate=32)
    table = CostTable(device=get_device("cpu"), entries=(
        CostEntry(backend="reference", layer=layer, tokens=1, median_us=10.0, p10_us=5.0, p90_us=30.0),
        CostEntry(backend="reference", layer=layer, tokens=2, median_us=10.0, p10_us=9.0, p90_us=11.0)))
    buf = io.StringIO()
    print_report(safe_console(file=buf, width=80), table)
    assert "1 of 2 timings are too noisy to trust" in buf.getvalue()


def test_probe_summary_never_cuts_an_id():
    from moe_registry.verify.record import BackendProbe, ProbeRecord
    from moe_registry.verify.report import print_record
    from moe_registry.render.terminal import safe_console
    from moe_registry.schemas.device import get_device
    import io

    record = ProbeRecord(moe_registry_version="0", registry_digest="x", date="2026-12-07", card="cpu",
                         device=get_device("cpu"), shapes=(),
                         backends=(BackendProbe(backend="trtllm-fp8-channel", status="skipped", reason="no GPU"),
                                   BackendProbe(backend="flashinfer-cutlass", status="skipped", reason="no GPU")))
    buf = io.StringIO()
    print_record(safe_console(file=buf, width=80), record)
    lines = buf.getvalue().splitlines()
    assert any(l.startswith("trtllm-fp8-channel ") for l in lines) and "…" not in buf.getvalue()
    assert all(len(l) <= 80 for l in lines)
