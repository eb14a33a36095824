"""`verified_on` tags come from committed records only (issue 8, items 6 and 7).

Every tag a declaration carries (on an activation, a quant support, its features, or any other
sourced fact) must be backed by a *passing row* of a committed record under docs/verification for
that backend, that device family and that capability. The records come in three formats:

- ``moe-registry probe`` records (``ProbeRecord`` JSON, e.g. h100-probe.json): a row passes when its
  status is ``passed`` with a relative error within its tolerance; the device is the record's
  ``compute_capability``.
- ``benchmarks/verify_gpu.py`` records (e.g. h100-torch-grouped-mm.json): a case passes when
  ``passed`` is true and ``rel_err <= tol``; the device is ``machine.compute_capability`` ("9.0" -> sm90);
  the activation and scheme are read from the case's ``layer`` (``LayerSpec.describe()``).
- the Marlin model-shape log (h100-marlin-models.txt, ``pytest -m gpu tests/gpu/test_marlin_gpu.py -k
  model_shapes``): a line passes when it ends its status as ``ok`` with ``rel_err <= tol``; it names no
  device, so its device comes from docs/verification/README.md (below, and checked against it).

And a new Activation or QuantKind starts unverified everywhere: tags are given per member, never
stamped on "every member of the enum".
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from moe_registry.registry import Registry
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import BackendCapability, Sourced
from moe_registry.schemas.quant import QuantKind, QuantScheme

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "verification"

# Text records carry no machine header: (file, backend, device tag, the README sentence that says so).
TEXT_RECORDS = {"h100-marlin-models.txt": ("marlin", "sm90", "NVIDIA H100 80GB HBM3** (SM 9.0"),
                "h200-humming.txt": ("humming", "sm90", "on an NVIDIA H200 (humming-kernels 0.1.19")}


@dataclasses.dataclass(frozen=True)
class Row:
    """One passing row: backend, device tag, and what it exercised."""

    record: str
    backend: str
    device: str
    activation: Activation
    quant: QuantKind
    bias: bool = False
    router_weight_on_input: bool = False


def _probe_rows(name: str, data: dict) -> list[Row]:
    from moe_registry.verify.record import ProbeRecord

    record = ProbeRecord.model_validate(data)
    tag = record.device_tag
    return [Row(name, r.backend, tag, r.activation, r.quant.kind, r.bias, r.apply_router_weight_on_input)
            for r in record.results
            if r.status == "passed" and r.rel_error is not None and r.tolerance is not None
            and r.rel_error <= r.tolerance]


def _verify_gpu_rows(name: str, data: dict) -> list[Row]:
    major, minor = data["machine"]["compute_capability"].split(".")
    tag = f"sm{major}{minor}"
    rows = []
    for case in data["cases"]:
        if not (case.get("passed") is True and case["rel_err"] <= case["tol"]):
            continue
        # LayerSpec.describe(): "E=32 top4 H=1024 I=512 silu bf16 bf16 single GPU"
        parts = case["layer"].split()
        rows.append(Row(name, data["backend"], tag, Activation(parts[4]), QuantScheme.parse(parts[5]).kind))
    return rows


_TEXT_LINE = re.compile(r"^\S+ (?P<act>\S+) (?P<quant>\S+)(?: pad\S+)?\s+T=\d+\s+\S+\s+rel_err=(?P<err>\S+) tol=(?P<tol>\S+) "
                        r"(?P<status>\S+)")


# The Humming GPU test log: "<preset> <scheme> <dtype> E=.. topK H=.. I=.. <activation> <scheme> <dtype> T=.. ..."
_LAYER_LINE = re.compile(r"^\S+ \S+ \S+ E=\d+ top\d+ H=\d+ I=\d+ (?P<act>\S+) (?P<quant>\S+) \S+\s+T=\d+\s+\S+\s+"
                         r"rel_err=(?P<err>\S+) tol=(?P<tol>\S+) (?P<status>\S+)")


def _text_rows(name: str, text: str) -> list[Row]:
    backend, tag, _ = TEXT_RECORDS[name]
    rows = []
    for line in text.splitlines():
        m = _TEXT_LINE.match(line) or _LAYER_LINE.match(line)
        if m and m["status"] == "ok" and float(m["err"]) <= float(m["tol"]):
            rows.append(Row(name, backend, tag, Activation(m["act"]), QuantScheme.parse(m["quant"]).kind))
    return rows


def record_rows() -> list[Row]:
    rows: list[Row] = []
    for path in sorted(RECORDS.iterdir()):
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("tool") == "moe-registry probe":
                rows += _probe_rows(path.name, data)
            elif "cases" in data and "machine" in data:
                rows += _verify_gpu_rows(path.name, data)
            elif {"backend", "shape", "rel_error_vs_reference"} <= set(data):
                pass  # a `moe-registry run` report: one layer, no tolerance, so it backs no tag
            elif data.get("engine") == "sglang" and "fakes" in data:
                pass  # what SGLang decides (scripts/parity_sglang.py), run with the GPU faked: backs no tag
            else:
                raise AssertionError(f"{path.name}: a record format this test does not know; teach it")
        elif path.name in TEXT_RECORDS:
            rows += _text_rows(path.name, path.read_text(encoding="utf-8"))
    return rows


ROWS = record_rows()


def _backed(backend: str, tag: str, **what) -> bool:
    return any(r.backend == backend and r.device == tag and all(getattr(r, k) == v for k, v in what.items())
               for r in ROWS)


def _sourced_facts(decl: BackendCapability):
    """(where, Sourced) for every sourced fact of a declaration, nested ones included."""
    def walk(obj, where):
        if isinstance(obj, Sourced):
            yield where, obj
        if isinstance(obj, BaseModel):
            for field in type(obj).model_fields:
                yield from walk(getattr(obj, field), f"{where}.{field}")
        elif isinstance(obj, (tuple, list)):
            for i, item in enumerate(obj):
                yield from walk(item, f"{where}[{i}]")
        elif isinstance(obj, dict):
            for key, item in obj.items():
                yield from walk(item, f"{where}[{getattr(key, 'value', key)}]")
    yield from walk(decl, decl.id)


def unbacked_tags(decl: BackendCapability) -> list[str]:
    """Every verified_on tag of ``decl`` that no passing record row supports."""
    problems = []
    for where, fact in _sourced_facts(decl):
        for tag in fact.verified_on:
            if where.startswith(f"{decl.id}.activations["):
                act = next(a for a, impl in decl.activations.items() if impl is fact)
                ok = _backed(decl.id, tag, activation=act)
            elif where.startswith(f"{decl.id}.quant[") and where.count(".") == 1:
                ok = _backed(decl.id, tag, quant=fact.kind)
            elif where == f"{decl.id}.features":
                wanted = [k for k, on in (("bias", fact.bias),
                                          ("router_weight_on_input", fact.apply_router_weight_on_input)) if on]
                ok = all(_backed(decl.id, tag, **{k: True}) for k in wanted) and _backed(decl.id, tag)
            else:  # a device, shape, routing or requirement fact: the backend ran and passed there
                ok = _backed(decl.id, tag)
            if not ok:
                problems.append(f"{where}: verified_on {tag!r} has no passing row in docs/verification")
    return problems


DECLARATIONS = Registry(entry_points=False).declarations()


def test_the_records_have_passing_rows_of_every_format():
    # The parsers read something from each committed record (a parser that reads nothing backs nothing).
    by_record = {r.record for r in ROWS}
    assert {"h100-probe.json", "h100-torch-grouped-mm.json", "h100-marlin-models.txt"} <= by_record
    marlin = [r for r in ROWS if r.record == "h100-marlin-models.txt"]
    # 6 model-shape tests x 4 token counts x 3 routings = 72 ok lines (hand-counted in the record; the relu2
    # Gemma 4 lines carry a "padI768" token).
    assert len(marlin) == 72 and {r.activation for r in marlin} == {
        Activation.SILU, Activation.GELU_TANH, Activation.RELU2_NO_MUL}
    readme = (RECORDS / "README.md").read_text(encoding="utf-8")
    for name, (_, _, sentence) in TEXT_RECORDS.items():
        assert sentence in readme and name in readme


@pytest.mark.parametrize("decl", DECLARATIONS, ids=lambda d: d.id)
def test_every_verified_on_tag_is_backed_by_a_passing_record_row(decl):
    assert unbacked_tags(decl) == []


@pytest.mark.parametrize("decl", DECLARATIONS, ids=lambda d: d.id)
def test_verified_hardware_status_points_at_a_record_that_ran_the_backend(decl):
    for status in decl.hardware:
        if status.status == "verified":
            assert status.record and (ROOT / status.record).is_file(), status
            assert _backed(decl.id, status.devices), f"{decl.id}: no passing row on {status.devices}"


def test_an_unbacked_tag_is_caught():
    from moe_registry.backends.marlin import DECLARATION as MARLIN

    # gelu never ran on Marlin in a record; int8_w8a16 has no format at all; features were run by the GPU
    # tests but no committed record shows them.
    impl = MARLIN.activations[Activation.GELU].model_copy(update={"verified_on": ("sm90",)})
    quant = tuple(q.model_copy(update={"verified_on": ("sm90",)}) if q.kind is QuantKind.INT8_W8A16 else q
                  for q in MARLIN.quant)
    features = MARLIN.features.model_copy(update={"verified_on": ("sm90",)})
    bad = MARLIN.model_copy(update={"activations": {**MARLIN.activations, Activation.GELU: impl}, "quant": quant,
                                    "features": features})
    problems = unbacked_tags(bad)
    assert len(problems) == 3, problems
    assert any("activations[gelu]" in p for p in problems)
    assert any("features" in p for p in problems)
    # A tag on another device family than the record's is not backed either.
    sm100 = MARLIN.model_copy(update={"quant": tuple(
        q.model_copy(update={"verified_on": ("sm100",)}) if q.kind is QuantKind.INT4_W4A16 else q
        for q in MARLIN.quant)})
    assert len(unbacked_tags(sm100)) == 1


# --- Item 7: a new member starts unverified -----------------------------------------------------------

# Every module that builds a built-in declaration (a family package builds them in its submodules).
_BACKEND_MODULES = ("moe_registry.backends.marlin", "moe_registry.backends.torch_grouped_mm",
                    "moe_registry.backends.reference", "moe_registry.backends.flashinfer_cutlass",
                    "moe_registry.backends.humming", "moe_registry.backends.triton_fused_moe",
                    *(f"moe_registry.backends.trtllm_gen.{m}" for m in ("bf16", "fp4", "fp8", "mxint4")))


def _add_member(enum_cls, name: str, value: str):
    """A test-only enum member, added the way Enum itself stores members."""
    member = str.__new__(enum_cls, value)
    member._name_, member._value_ = name, value
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    return member


def _remove_member(enum_cls, name: str, value: str) -> None:
    del enum_cls._member_map_[name]
    del enum_cls._value2member_map_[value]
    enum_cls._member_names_.remove(name)


@pytest.fixture
def extra_members(monkeypatch):
    """Activation.TEST_ONLY and QuantKind.TEST_ONLY exist while the backend modules are re-imported."""
    from moe_registry.schemas import quant as quant_schema

    act = _add_member(Activation, "TEST_ONLY", "test_only_activation")
    kind = _add_member(QuantKind, "TEST_ONLY", "test_only_kind")
    # A new kind needs its per-kind facts (the one table) before anything can name it.
    monkeypatch.setitem(quant_schema.QUANT_KINDS, kind,
                        quant_schema.QuantKindInfo(quant_schema.QuantFamily.INT4, 4, "16-bit"))
    modules = {}
    try:
        # Fresh copies of the declaration modules (the real ones, and the registry, stay untouched).
        for name in _BACKEND_MODULES:
            path = importlib.import_module(name).__file__
            spec = importlib.util.spec_from_file_location(f"{name}__with_test_only_members", path)
            module = importlib.util.module_from_spec(spec)
            module.__package__ = name.rpartition(".")[0] if not path.endswith("__init__.py") else name
            spec.loader.exec_module(module)
            for decl in getattr(module, "DECLARATIONS", None) or (module.DECLARATION,):
                modules[decl.id] = decl
        yield act, kind, modules
    finally:
        _remove_member(Activation, "TEST_ONLY", "test_only_activation")
        _remove_member(QuantKind, "TEST_ONLY", "test_only_kind")


def test_a_new_activation_or_quant_kind_inherits_no_verified_tag(extra_members):
    act, kind, declarations = extra_members
    assert act in list(Activation) and kind in list(QuantKind)
    seen_act = False
    for backend, decl in declarations.items():
        impl = decl.activations.get(act)
        if impl is not None:
            seen_act = True
            assert impl.verified_on == (), f"{backend} stamps a new activation as verified"
        for support in decl.quant_support(kind):
            assert support.verified_on == (), f"{backend} stamps a new quant kind as verified"
        # No other fact's tags changed by adding the members either.
        assert unbacked_tags(decl) == [], backend
    # The test would have caught a stamp: some declarations do take every activation (marlin, grouped_mm).
    assert seen_act
    # The reference does not claim a kind it has no format for.
    assert declarations["reference"].quant_support(kind) == ()
