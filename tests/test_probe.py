"""`moe-registry probe` on the CPU: declared-ness from the declarations, drift, crash isolation,
and the verification record.

The fake backends are registered the way a third-party plugin is: a tiny installed distribution
(dist-info with an ``moe_registry`` entry point) on sys.path, which the probe hands to its worker
subprocesses through PYTHONPATH. Their adapters wrap ``ReferenceExperts`` so that everything they
do not deliberately get wrong is right.

The reference test runs the probe's real quick grid; the fake-backend tests use small shape
classes of the same kinds (aligned, unaligned intermediate, one token) to stay fast.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

pytest.importorskip("torch")

from moe_registry import provenance  # noqa: E402
from moe_registry.backends.reference import DECLARATION as REFERENCE  # noqa: E402
from moe_registry.registry import Registry, default_registry  # noqa: E402
from moe_registry.schemas.activation import Activation  # noqa: E402
from moe_registry.schemas.quant import QuantKind, QuantScheme  # noqa: E402
from moe_registry.schemas.selection import ReasonCode  # noqa: E402
from moe_registry.verify import grid, oracle, probe, report  # noqa: E402
from moe_registry.verify.grid import ShapeClass  # noqa: E402
from moe_registry.verify.probe import run_probe  # noqa: E402
from moe_registry.verify.record import ProbeRecord, verification_summary  # noqa: E402

# Small stand-ins for the probe's quick classes: 176 = 11 x 16 is unaligned to 32/64/128, so it
# also exercises the format-wide scale-group rule (mxfp4 cannot even be quantized there).
SMALL = (
    ShapeClass(name="aligned", num_experts=4, top_k=2, hidden_size=128, intermediate_size=128, tokens=8),
    ShapeClass(name="I=176", num_experts=4, top_k=2, hidden_size=128, intermediate_size=176, tokens=8),
    ShapeClass(name="tiny-T", num_experts=4, top_k=2, hidden_size=128, intermediate_size=128, tokens=1),
)

PLUGIN = '''
from moe_registry.backends.reference import DECLARATION as REFERENCE
from moe_registry.registry import hookimpl
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.quant import QuantKind


def _declaration(backend_id, adapter, drop=(), features=None):
    d = REFERENCE.model_dump()
    d.update(id=backend_id, name=backend_id, provider="acme", kernel="acme", adapter=adapter, requirements=(),
             activations={a: impl for a, impl in d["activations"].items() if a not in drop},
             quant=[q for q in d["quant"] if q["kind"] in (QuantKind.BF16, QuantKind.FP16)],
             priority={"unquantized": 1})
    if features is not None:
        d["features"] = {**d["features"], **features}
    return d


@hookimpl
def moe_registry_backends():
    return [
        # Claims relu2_no_mul (its adapter raises for it); does not claim gelu_no_mul (it runs it).
        _declaration("acme-drift", "acme_probe_kernels:DriftExperts", drop=(Activation.GELU_NO_MUL,)),
        _declaration("acme-crashy", "acme_probe_kernels:CrashyExperts"),
        # Marlin's old mismatch, both ways: says no biases (runs them), says router weight on input (raises).
        _declaration("acme-features", "acme_probe_kernels:FeatureExperts", features={"bias": False}),
    ]
'''

KERNELS = '''
import os
import time

from moe_registry.backends.reference.kernel import ReferenceExperts


class DriftExperts(ReferenceExperts):
    backend = "acme-drift"

    def __init__(self, layer, weights, **kw):
        if layer.quant.kind.value not in ("bf16", "fp16"):  # consistent with its declaration
            raise ValueError(f"acme-drift runs 16-bit weights only, not {layer.quant.label()}")
        if layer.activation.value == "relu2_no_mul":  # the deliberately wrong claim
            raise NotImplementedError("acme-drift has no relu2 epilogue")
        super().__init__(layer, weights, **kw)


class FeatureExperts(ReferenceExperts):
    backend = "acme-features"

    def __init__(self, layer, weights, **kw):
        if layer.quant.kind.value not in ("bf16", "fp16"):
            raise ValueError(f"acme-features runs 16-bit weights only, not {layer.quant.label()}")
        if layer.apply_router_weight_on_input:  # the deliberately wrong claim
            raise NotImplementedError("acme-features never scales the input")
        super().__init__(layer, weights, **kw)


class CrashyExperts(ReferenceExperts):
    backend = "acme-crashy"

    def __init__(self, layer, weights, **kw):
        if layer.quant.kind.value not in ("bf16", "fp16"):
            raise ValueError(f"acme-crashy runs 16-bit weights only, not {layer.quant.label()}")
        super().__init__(layer, weights, **kw)

    def forward(self, hidden_states, topk_weights, topk_ids):
        aligned = self.layer.intermediate_size == 128 and hidden_states.shape[0] > 1
        if aligned and self.layer.quant.kind.value == "bf16":
            if self.layer.activation.value == "gelu":
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            if self.layer.activation.value == "gelu_tanh":
                os.abort()
            if self.layer.activation.value == "silu_no_mul" and os.environ.get("ACME_HANG"):
                time.sleep(120)  # a kernel that never returns
        return super().forward(hidden_states, topk_weights, topk_ids)
'''


@pytest.fixture(scope="module")
def plugin_registry(tmp_path_factory):
    """A real installed distribution with an ``moe_registry`` entry point, on sys.path."""
    root = tmp_path_factory.mktemp("acme_plugin")
    dist = root / "acme_probe-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme_probe\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[moe_registry]\nacme = acme_probe_plugin\n")
    (root / "acme_probe_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (root / "acme_probe_kernels.py").write_text(textwrap.dedent(KERNELS))
    sys.path.insert(0, str(root))
    try:
        registry = Registry()
        assert {"acme-drift", "acme-crashy", "acme-features"} <= set(registry.ids()), registry.problems
        yield registry
    finally:
        sys.path.remove(str(root))
        for name in ("acme_probe_plugin", "acme_probe_kernels"):
            sys.modules.pop(name, None)
        default_registry.cache_clear()  # a registry built while the plugin was on sys.path must not outlive it


def _result(record: ProbeRecord, backend: str, shape: str, activation: str, kind: str = "bf16", *,
            bias: bool = False, router_weight_on_input: bool = False):
    matches = [r for r in record.results if r.backend == backend and r.shape == shape
               and r.activation.value == activation and r.quant.kind.value == kind and r.bias == bias
               and r.apply_router_weight_on_input == router_weight_on_input]
    assert len(matches) == 1, matches
    return matches[0]


# --- 1. The reference backend: no drift, every declared combination passes ---------------------


@pytest.fixture(scope="module")
def reference_record() -> ProbeRecord:
    # The probe's real quick grid (aligned H=I=512, tiny T, I=704; every activation and quant kind),
    # in a subprocess worker, as `moe-registry probe --backend reference --quick` runs it.
    return run_probe(backends=["reference"], quick=True, registry=Registry(entry_points=False), progress=False)


def test_reference_has_no_drift_and_every_declared_combination_passes(reference_record):
    record = reference_record
    assert [s.name for s in record.shapes] == ["aligned", "tiny-T", "I=704"]
    results = record.results_for("reference")
    # 3 shapes x every activation x every kind, plus per kind on the first shape: bias x (silu, swigluoai)
    # and router weight on input x silu = 3 feature combinations.
    assert len(results) == 3 * len(Activation) * len(QuantKind) + 3 * len(QuantKind)
    declared = [r for r in results if r.declared]
    assert len(declared) > 200
    assert [r.label() for r in declared if r.status != "passed"] == []
    assert record.drift == ()
    # The reference is held to the float64 oracle: 16-bit activation schemes within 2e-2.
    assert max(r.rel_error for r in declared if r.tolerance == oracle.TOL_16BIT) < oracle.TOL_16BIT
    # int4 at I=704 uses group 64 (128 does not divide 704): the weights exist and it is declared.
    r704 = _result(record, "reference", "I=704", "silu", "int4_w4a16")
    assert r704.quant == QuantScheme(kind=QuantKind.INT4_W4A16, group_size=64) and r704.declared
    # fp8_block at I=704 (partial last 128-block at TP1, DeepSeek's ceil blocks) is declared and runs:
    # the probe's first finding, fixed in QuantScheme.partial_last_group. Nothing is undeclared now.
    f704 = _result(record, "reference", "I=704", "silu", "fp8_block")
    assert f704.declared and f704.status == "passed"
    # Undeclared: only the kinds no format exists for, which the reference does not claim (and cannot build).
    no_format = {QuantKind.INT8_W8A16, QuantKind.MXFP8_W8A16, QuantKind.MXFP8, QuantKind.MXFP4_FP8}
    undeclared = [r for r in results if not r.declared]
    assert {r.quant.kind for r in undeclared} == no_format and record.format_findings == ()
    assert all(r.reasons == (ReasonCode.QUANT_UNSUPPORTED,) and r.status != "passed" for r in undeclared)
    # The feature axes: biases and router weight on the input, declared by the reference and passing.
    for act, feature in (("silu", "bias"), ("swigluoai", "bias"), ("silu", "router_weight_on_input")):
        r = _result(record, "reference", "aligned", act, "bf16", **{feature: True})
        assert r.declared and r.status == "passed", r
    assert record.backends[0].status == "probed" and record.backends[0].worker_restarts == 0


# --- 2. A wrong declaration: exactly the two drifts ----------------------------------------------


def test_wrong_declaration_reports_exactly_two_drifts(plugin_registry):
    record = run_probe(backends=["acme-drift"], quick=True, registry=plugin_registry, progress=False, shapes=SMALL,
                       quant_kinds=["bf16", "fp16", "fp8", "mxfp4"])
    kinds = {(d.kind, d.activation.value) for d in record.drift}
    assert kinds == {("declared_but_failing", "relu2_no_mul"), ("undeclared_but_working", "gelu_no_mul")}
    # Each drift at every shape, for the schemes it declares (bf16, fp16) and nothing else.
    assert len(record.drift) == 2 * len(SMALL) * 2
    assert {d.quant.kind for d in record.drift} == {QuantKind.BF16, QuantKind.FP16}
    failing = [d for d in record.drift if d.kind == "declared_but_failing"]
    assert all(d.status == "raised" and "NotImplementedError: acme-drift has no relu2" in d.detail for d in failing)
    working = [d for d in record.drift if d.kind == "undeclared_but_working"]
    assert all(d.reasons == (ReasonCode.ACTIVATION_UNSUPPORTED,) for d in working)
    assert all("ACTIVATION_UNSUPPORTED but works" in d.detail for d in working)
    # Undeclared schemes raise: consistent, so no drift, and the reason codes are kept.
    fp8 = _result(record, "acme-drift", "aligned", "silu", "fp8")
    assert not fp8.declared and fp8.status == "raised" and ReasonCode.QUANT_UNSUPPORTED in fp8.reasons
    assert "ValueError: acme-drift runs 16-bit weights only" in fp8.message
    # mxfp4 (32-element blocks) cannot represent K=176: skipped with the quantizer's reason.
    mx = _result(record, "acme-drift", "I=176", "silu", "mxfp4")
    assert mx.status == "skipped" and "cannot build the layer's weights" in mx.message
    assert report.main_exit_code(record) == report.EXIT_DRIFT
    summary = verification_summary(record)["backends"]["acme-drift"]
    assert summary["status"] == "failing"
    assert summary["activations"]["failing"] == ["relu2_no_mul"]
    assert summary["activations"]["undeclared_working"] == ["gelu_no_mul"]


def test_feature_drift_is_reported_both_ways(plugin_registry):
    """Biases run but are not declared; router weight on the input is declared but raises."""
    record = run_probe(backends=["acme-features"], registry=plugin_registry, progress=False, shapes=SMALL[:1],
                       quant_kinds=["bf16"], activations=["silu", "swigluoai", "gelu"])
    plain = [r for r in record.results if not r.bias and not r.apply_router_weight_on_input]
    assert len(plain) == 3 and all(r.declared and r.status == "passed" for r in plain)
    drift = {(d.kind, d.activation.value, d.bias, d.apply_router_weight_on_input) for d in record.drift}
    assert drift == {("undeclared_but_working", "silu", True, False),
                     ("undeclared_but_working", "swigluoai", True, False),
                     ("declared_but_failing", "silu", False, True)}
    working = [d for d in record.drift if d.kind == "undeclared_but_working"]
    assert all(d.reasons == (ReasonCode.FEATURE_UNSUPPORTED,) for d in working)
    assert all("+bias" in d.describe() for d in working)
    failing = _result(record, "acme-features", "aligned", "silu", router_weight_on_input=True)
    assert failing.declared and failing.status == "raised" and "never scales the input" in failing.message
    summary = verification_summary(record)["backends"]["acme-features"]
    assert summary["features"] == {"verified": [], "failing": ["router_weight_on_input"],
                                   "undeclared_working": ["bias"]}
    assert report.main_exit_code(record) == report.EXIT_DRIFT


# --- 3. A CUDA-like error and a hard crash do not stop the others ----------------------------------


def test_cuda_error_and_crash_are_contained(plugin_registry):
    record = run_probe(backends=["acme-crashy"], quick=True, registry=plugin_registry, progress=False, shapes=SMALL,
                       quant_kinds=["bf16"])
    results = record.results_for("acme-crashy")
    assert len(results) == len(SMALL) * len(Activation) + 3  # + bias x2, router weight on input x1
    cuda = _result(record, "acme-crashy", "aligned", "gelu")
    assert cuda.status == "raised" and "CUDA error: an illegal memory access" in cuda.message
    crashed = _result(record, "acme-crashy", "aligned", "gelu_tanh")
    assert crashed.status == "raised" and "worker crashed" in crashed.message
    assert "SIGABRT" in crashed.message or "134" in crashed.message
    others = [r for r in results if r not in (cuda, crashed)]
    assert others and all(r.status == "passed" for r in others), [r.label() for r in others if r.status != "passed"]
    # The worker exited after the CUDA error and after the crash: three workers ran in order.
    silu = _result(record, "acme-crashy", "aligned", "silu")
    swiglu = _result(record, "acme-crashy", "aligned", "swigluoai")
    assert (silu.worker, cuda.worker, crashed.worker, swiglu.worker) == (0, 0, 1, 2)
    assert record.backends[0].worker_restarts == 2
    assert {(d.kind, d.activation.value) for d in record.drift} == {
        ("declared_but_failing", "gelu"), ("declared_but_failing", "gelu_tanh")}


def test_a_hung_combination_times_out_and_the_rest_still_run(plugin_registry, monkeypatch):
    monkeypatch.setenv("ACME_HANG", "1")  # the worker inherits this process's environment
    record = run_probe(backends=["acme-crashy"], registry=plugin_registry, progress=False, shapes=SMALL[:1],
                       quant_kinds=["bf16"], activations=["silu", "silu_no_mul", "gelu_no_mul"], timeout_s=3)
    hung = _result(record, "acme-crashy", "aligned", "silu_no_mul")
    assert hung.status == "raised" and hung.message.startswith("timed out") and hung.worker == 0
    after = _result(record, "acme-crashy", "aligned", "gelu_no_mul")
    assert after.status == "passed" and after.worker == 1


def test_in_process_mode_runs_the_same_checks(plugin_registry):
    record = run_probe(backends=["acme-drift"], registry=plugin_registry, progress=False, isolate=False,
                       shapes=SMALL[:1], quant_kinds=["bf16"])
    assert {(d.kind, d.activation.value) for d in record.drift} == {
        ("declared_but_failing", "relu2_no_mul"), ("undeclared_but_working", "gelu_no_mul")}
    assert all(r.worker is None for r in record.results)


# --- 4. The record and the CLI ----------------------------------------------------------------------


def test_record_round_trips(reference_record, tmp_path):
    path = reference_record.save(tmp_path / "verification" / "cpu-probe.json")
    loaded = ProbeRecord.load(path)
    assert loaded == reference_record
    data = json.loads(path.read_text())
    assert data["device"]["vendor"] == "cpu" and data["registry_digest"] == Registry(entry_points=False).digest
    assert "torch" in data["versions"] and data["date"].endswith("+00:00")
    assert all(key not in json.dumps(data).lower() for key in ("hostname", "node"))
    with pytest.raises(ValueError):
        ProbeRecord.model_validate_json(path.read_text().replace('"passed"', '"maybe"', 1))


def test_verification_summary_and_provenance(reference_record):
    summary = verification_summary(reference_record)
    ref = summary["backends"]["reference"]
    assert summary["device"] == "cpu" and ref["status"] == "verified"
    assert set(ref["activations"]["verified"]) == {a.value for a in Activation}
    assert "bf16" in ref["quant"]["verified"] and ref["quant"]["failing"] == []
    assert sorted(ref["features"]["verified"]) == ["bias", "router_weight_on_input"]
    updated = provenance.apply_verification(REFERENCE, reference_record, "docs/verification/cpu-probe.json")
    assert all("cpu" in impl.verified_on for impl in updated.activations.values())
    assert "cpu" in updated.features.verified_on and "cpu" not in REFERENCE.features.verified_on
    assert [h.status for h in updated.hardware if h.devices == "cpu"] == ["verified"]
    lines = provenance.verification_lines(updated)
    (cpu_line,) = [line for line in lines if line.startswith("cpu:")]
    assert cpu_line.startswith("cpu: verified (docs/verification/cpu-probe.json); verified activations silu")
    # The committed declaration already points at the H100 record; the CPU line is what this record added.
    assert [line.split(":")[0] for line in provenance.verification_lines(REFERENCE)] == ["sm90"]
    unverified = REFERENCE.model_copy(update={"hardware": (), "activations": {
        a: i.model_copy(update={"verified_on": ()}) for a, i in REFERENCE.activations.items()},
        "quant": tuple(q.model_copy(update={"verified_on": ()}) for q in REFERENCE.quant)})
    assert provenance.verification_lines(unverified) == ["cited from upstream source only"]


def test_cli_json_output_parses_and_out_writes_a_record(tmp_path, monkeypatch, capsys):
    from moe_registry import cli

    real = probe.run_probe

    def small(**kwargs):  # the CLI's own arguments, on the small grid
        return real(**kwargs, shapes=SMALL[:1], quant_kinds=["bf16"])

    monkeypatch.setattr(probe, "run_probe", small)
    out = tmp_path / "record.json"
    code = cli.main(["probe", "--backend", "reference", "--quick", "--json", "--in-process", "--out", str(out)])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    record = ProbeRecord.model_validate(data)
    assert ProbeRecord.load(out).results == record.results
    assert [r.status for r in record.results] == ["passed"] * (len(Activation) + 3)
    # The table form ends with the compact summary.
    assert cli.main(["probe", "--backend", "reference", "--quick", "--in-process"]) == 0
    text = capsys.readouterr().out
    assert "declared ok" in text and "reference" in text
    assert text.rstrip().splitlines()[-1].startswith("drift: 0 declared-but-failing, 0 undeclared-but-working")


def test_unavailable_backends_are_skipped_with_the_reason():
    record = run_probe(backends=["trtllm-fp4", "marlin"], registry=Registry(entry_points=False), progress=False,
                       shapes=SMALL[:1], quant_kinds=["bf16"])
    by_id = {b.backend: b for b in record.backends}
    assert by_id["trtllm-fp4"].status == "skipped" and "device" in by_id["trtllm-fp4"].reason
    assert by_id["marlin"].status == "skipped"
    assert record.results == () and record.drift == ()


def test_tolerances_come_from_the_declaration():
    from moe_registry.backends.torch_grouped_mm import DECLARATION as GROUPED

    # A backend that runs every scheme as declared, without dequantizing at load (test-only).
    native = REFERENCE.model_copy(update={"quant": tuple(s.model_copy(update={"dequantized_at_load": False})
                                                         for s in REFERENCE.quant)})
    layer = grid.layer_for(SMALL[0], Activation.SILU, QuantScheme(kind=QuantKind.NVFP4))
    assert oracle.tolerance_for(native, layer)[0] == oracle.TOL_FP4  # W4A4 scheme, not dequantized at load
    assert oracle.tolerance_for(GROUPED, layer)[0] == oracle.TOL_16BIT  # dequantized at load: bf16 activations
    assert oracle.tolerance_for(REFERENCE, layer)[0] == oracle.TOL_16BIT  # holds fp32 weights, quantizes no activation
    fp8 = layer.replace(quant="fp8")
    assert oracle.tolerance_for(native, fp8)[0] == oracle.TOL_FP8
    assert oracle.tolerance_for(native, layer.replace(quant="int4_w4a16"))[0] == oracle.TOL_16BIT
