"""The vLLM plugin's logic without vLLM installed: the hooks (observe.py) on stand-in classes shaped like
vLLM 0.34's (RoutedExperts._get_quant_method, MoEKernelOracle.try_backend, a quant method that reads
the layer's config), enforce's checks, the plugin's switches and post-import hooks, the report. The same
paths run against the real wheel in tests/test_vllm_engine.py (marked vllm)."""

from __future__ import annotations

import json
import logging
import sys
import types
from enum import Enum

import pytest

from moe_registry.engines.vllm import observe, plugin
from moe_registry.engines.vllm.layer import LayerFacts
from moe_registry.engines.vllm.observe import Hooks, LayerRecord, Tried
from moe_registry.engines.vllm.verdict import fingerprint, layer_rows, pin_for, verdict


# --- Stand-ins shaped like vLLM 0.34 ---------------------------------------------------------------


class Backend(Enum):
    FLASHINFER_TRTLLM = "FLASHINFER_TRTLLM"
    FLASHINFER_CUTLASS = "FLASHINFER_CUTLASS"
    TRITON = "TRITON"


class TrtLlmFp8ExpertsMonolithic: ...
class FlashInferExperts: ...  # noqa: E701
class TritonExperts: ...  # noqa: E701


CLASSES = {Backend.FLASHINFER_TRTLLM: [TrtLlmFp8ExpertsMonolithic], Backend.FLASHINFER_CUTLASS: [FlashInferExperts],
           Backend.TRITON: [TritonExperts]}
KEYS = {"flashinfer_trtllm": Backend.FLASHINFER_TRTLLM, "flashinfer_cutlass": Backend.FLASHINFER_CUTLASS,
        "triton": Backend.TRITON}


class MoEKernelOracle:
    name = "Fp8"

    def __init__(self, config, weight_key, activation_key, accepts):
        self.moe_config, self.weight_key, self.activation_key, self.accepts = config, weight_key, activation_key, accepts

    def try_backend(self, backend, kernel_classes=None, activation_key=None):
        rejected = []
        for cls in kernel_classes or CLASSES[backend]:
            if cls.__name__ in self.accepts:
                return cls, rejected
            rejected.append((cls, f"kernel does not support {cls.__name__} here"))
        return None, rejected


class Fp8MoEMethod:
    """Reads the layer's moe_config, as vLLM's Fp8MoEMethod(quant_config, layer) does."""

    def __init__(self, layer, accepts):
        config = layer.moe_config
        oracle = MoEKernelOracle(config, "kFp8StaticTensorSym", "kFp8StaticTensorSym", accepts)
        if config.moe_backend != "auto":
            cls, rejected = oracle.try_backend(KEYS[config.moe_backend])
            if cls is None:
                raise ValueError(f"Fp8 MoE backend '{config.moe_backend}' does not support the deployment configuration")
            self.fp8_backend, self.experts_cls = KEYS[config.moe_backend], cls
            return
        for backend in Backend:
            cls, _ = oracle.try_backend(backend)
            if cls is not None:
                self.fp8_backend, self.experts_cls = backend, cls
                return
        raise NotImplementedError("No FP8 MoE backend supports the deployment configuration.")


def _config(moe_backend="auto"):
    return types.SimpleNamespace(
        num_experts=8, experts_per_token=2, hidden_dim=4096, intermediate_size=14336,
        activation=types.SimpleNamespace(value="silu"), in_dtype="torch.bfloat16",
        routing_method=types.SimpleNamespace(name="RenormalizeNaive"), has_bias=False, swiglu_limit=None,
        swiglu_alpha=None, swiglu_beta=None, moe_backend=moe_backend,
        moe_parallel_config=types.SimpleNamespace(tp_size=1, ep_size=1, dp_size=1, use_ep=False))


def _vllm_like(accepts):
    class RoutedExperts:
        def __init__(self, prefix, moe_config):
            self.moe_config = moe_config
            self.apply_router_weight_on_input = False
            self.quant_method = self._get_quant_method(prefix, "fp8-config", moe_config)

        def _get_quant_method(self, prefix, quant_config, moe_config):
            return Fp8MoEMethod(self, accepts)

    return types.SimpleNamespace(RoutedExperts=RoutedExperts), types.SimpleNamespace(
        __name__="oracle.base", MoEKernelOracle=MoEKernelOracle)


@pytest.fixture
def hooks():
    made = []

    def make(accepts=("FlashInferExperts", "TritonExperts"), decide=None):
        h = Hooks()
        routed, base = _vllm_like(accepts)
        assert h.install_get_quant_method(routed) is None and h.install_judge(base) is None
        h.decide = decide
        made.append(h)
        return h, routed.RoutedExperts

    yield make
    for h in made:
        h.uninstall()


# --- Observe ------------------------------------------------------------------------------------------


def test_observe_records_every_candidate_with_vllms_reason_and_the_pick(hooks):
    h, RoutedExperts = hooks()
    layer = RoutedExperts("model.layers.3.block_sparse_moe.experts", _config())
    assert layer.quant_method.experts_cls is FlashInferExperts  # vLLM's own choice, untouched
    [record] = h.records
    assert record.prefix == "model.layers.3.block_sparse_moe.experts" and record.oracle == "Fp8"
    assert (record.backend, record.experts_class, record.pinned, record.error) == (
        "FLASHINFER_CUTLASS", "FlashInferExperts", None, None)
    assert [(t.backend, t.experts_class, t.reason) for t in record.tried] == [
        ("FLASHINFER_TRTLLM", "TrtLlmFp8ExpertsMonolithic", "kernel does not support TrtLlmFp8ExpertsMonolithic here"),
        ("FLASHINFER_CUTLASS", "FlashInferExperts", None)]
    assert [t.experts_class for t in record.rejected] == ["TrtLlmFp8ExpertsMonolithic"]
    facts = record.facts
    assert (facts.weight_key, facts.activation_key, facts.index, facts.in_dtype, facts.moe_backend) == (
        "kFp8StaticTensorSym", "kFp8StaticTensorSym", 3, "bfloat16", "auto")
    assert LayerRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert h.take_new() == [record] and h.take_new() == []


def test_vllms_own_refusal_passes_through_and_is_recorded(hooks):
    h, RoutedExperts = hooks(accepts=())
    with pytest.raises(NotImplementedError, match="No FP8 MoE backend supports"):
        RoutedExperts("model.layers.0.mlp.experts", _config())
    [record] = h.records
    assert record.error == "NotImplementedError: No FP8 MoE backend supports the deployment configuration."
    assert [t.reason is None for t in record.tried] == [False, False, False]


def test_facts_read_every_field_vllm_decides_on():
    from moe_registry.engines.vllm.layer import facts_from_vllm, key_name

    config = _config()
    config.moe_parallel_config = types.SimpleNamespace(tp_size=1, ep_size=8, dp_size=2, use_ep=True)
    config.has_bias, config.swiglu_limit, config.swiglu_alpha, config.swiglu_beta = True, 7.0, 1.702, 1.0
    config.activation = types.SimpleNamespace(value="swigluoai")
    config.moe_backend = "triton"
    layer = types.SimpleNamespace(apply_router_weight_on_input=True)
    method = types.SimpleNamespace(quant_config=types.SimpleNamespace(group_size=128, desc_act=True))
    facts = facts_from_vllm("model.layers.5.mlp.experts", layer, config, "kInt4Static", None, method)
    assert facts == LayerFacts(
        prefix="model.layers.5.mlp.experts", num_experts=8, top_k=2, hidden=4096, intermediate=14336,
        activation="swigluoai", in_dtype="bfloat16", routing="RenormalizeNaive", tp=1, ep=8, dp=2, use_ep=True,
        has_bias=True, swiglu_limit=7.0, swiglu_alpha=1.702, swiglu_beta=1.0, apply_router_weight_on_input=True,
        weight_key="kInt4Static", activation_key=None, group_size=128, act_order=True, quant_method="SimpleNamespace",
        moe_backend="triton")
    bare = facts_from_vllm("p", types.SimpleNamespace(), _config(), None, None, None)
    assert (bare.quant_method, bare.group_size, bare.act_order, bare.apply_router_weight_on_input) == (
        None, None, False, False)
    assert key_name(None) is None and key_name("kNvfp4Static") == "kNvfp4Static"


def test_key_names_are_vllms_own(monkeypatch):
    from moe_registry.engines.vllm.layer import key_name

    class Key:
        def __init__(self, text):
            self.text = text

        def __eq__(self, other):
            return isinstance(other, Key) and other.text == self.text

        def __hash__(self):
            return hash(self.text)

        def __str__(self):
            return f"QuantKey({self.text})"

    class OtherKey(Key):
        pass

    # without vLLM: vLLM's own str() of the key
    assert key_name(Key("fp8")) == "QuantKey(fp8)"
    quant_utils = types.ModuleType("quant_utils")
    quant_utils.GROUP = Key("fp8")  # equal, but not a k-constant
    quant_utils.kOther = OtherKey("nvfp4")  # equal value, other type: not the same key
    quant_utils.kFp8StaticTensorSym = Key("fp8")
    quant_utils.kNvfp4Static = Key("nvfp4")
    path = "vllm.model_executor.layers.quantization.utils"
    parent = None
    for depth, name in enumerate(["vllm", *path.split(".")[1:]]):
        full = ".".join(path.split(".")[:depth + 1])
        module = types.ModuleType(full)
        monkeypatch.setitem(sys.modules, full, module)
        if parent is not None:
            setattr(parent, name, module)
        parent = module
    parent.quant_utils = quant_utils
    monkeypatch.setitem(sys.modules, path + ".quant_utils", quant_utils)
    assert key_name(Key("fp8")) == "kFp8StaticTensorSym"
    assert key_name(Key("nvfp4")) == "kNvfp4Static"
    assert key_name(Key("int4")) == "QuantKey(int4)"


@pytest.mark.parametrize("holders, detail", [
    ({"group_size": 64}, (64, False)),
    ({"quant_config": types.SimpleNamespace(group_size=32, has_g_idx=True)}, (32, True)),
    ({"group_size": 128, "quant_config": types.SimpleNamespace(group_size=32)}, (128, False)),  # the method's own first
    ({"actorder": "group"}, (None, True)),
    ({"actorder": "dynamic"}, (None, True)),
    ({"actorder": "static"}, (None, False)),
    ({"desc_act": False, "group_size": "128"}, (None, False)),  # not an int: not a group size
    ({}, (None, False)),
])
def test_scheme_detail_reads_where_vllm_keeps_it(holders, detail):
    from moe_registry.engines.vllm.layer import _scheme_detail

    assert _scheme_detail(types.SimpleNamespace(**holders)) == detail
    assert _scheme_detail(None) == (None, False)


# --- Enforce ------------------------------------------------------------------------------------------


def test_enforce_pins_a_key_vllm_accepts_and_vllm_builds_ours(hooks):
    seen = []

    def decide(record):
        seen.append((record.experts_class, record.facts.moe_backend))
        return "triton", None

    h, RoutedExperts = hooks(decide=decide)
    config = _config()
    layer = RoutedExperts("model.layers.0.mlp.experts", config)
    assert seen == [("FlashInferExperts", "auto")]  # decided on vLLM's auto answer
    assert layer.quant_method.experts_cls is TritonExperts and config.moe_backend == "triton"
    assert layer.moe_config is config  # the probes' copies never stay on the layer
    [record] = h.records
    assert record.pinned == "triton" and record.experts_class == "TritonExperts" and record.note is None


def test_enforce_never_pins_a_key_vllm_rejects(hooks):
    h, RoutedExperts = hooks(accepts=("FlashInferExperts",), decide=lambda record: ("triton", None))
    config = _config()
    layer = RoutedExperts("model.layers.0.mlp.experts", config)
    assert layer.quant_method.experts_cls is FlashInferExperts and config.moe_backend == "auto"
    [record] = h.records
    assert record.pinned is None
    assert record.note == ("vLLM refuses --moe-backend triton here: ValueError: Fp8 MoE backend 'triton' does not "
                           "support the deployment configuration")


def test_enforce_never_pins_a_key_that_runs_another_kernel(hooks):
    # vLLM accepts the key but runs a class of another family for it (MXFP4 'triton' is OpenAI's kernels)
    h, RoutedExperts = hooks(decide=lambda record: ("flashinfer_trtllm", None))
    CLASSES[Backend.FLASHINFER_TRTLLM].insert(0, TritonExperts)
    try:
        layer = RoutedExperts("model.layers.0.mlp.experts", _config())
    finally:
        CLASSES[Backend.FLASHINFER_TRTLLM].pop(0)
    assert layer.quant_method.experts_cls is TritonExperts  # auto: TRT-LLM's list now leads with Triton
    [record] = h.records
    assert record.pinned is None
    assert record.note == "vLLM runs TritonExperts for --moe-backend flashinfer_trtllm, not our kernel"


def test_enforce_leaves_an_explicit_choice_alone(hooks):
    calls = []
    h, RoutedExperts = hooks(decide=lambda record: calls.append(record) or ("triton", None))
    layer = RoutedExperts("model.layers.0.mlp.experts", _config(moe_backend="flashinfer_cutlass"))
    assert layer.quant_method.experts_cls is FlashInferExperts and not calls
    assert h.records[0].note == "--moe-backend flashinfer_cutlass given: left alone"


def test_enforce_keeps_vllms_choice_when_ours_says_so(hooks):
    h, RoutedExperts = hooks(decide=lambda record: (None, "vLLM's pick already runs our kernel"))
    RoutedExperts("model.layers.0.mlp.experts", _config())
    assert h.records[0].pinned is None and h.records[0].note == "vLLM's pick already runs our kernel"
    assert len(h.records) == 1  # the probes are not kept


# --- Installing ---------------------------------------------------------------------------------------


def test_missing_hooks_are_named_not_raised():
    h = Hooks()
    assert h.install_get_quant_method(types.SimpleNamespace()) == "RoutedExperts._get_quant_method"
    assert h.install_get_quant_method(types.SimpleNamespace(RoutedExperts=type("RoutedExperts", (), {}))) == (
        "RoutedExperts._get_quant_method")
    module = types.SimpleNamespace(__name__="vllm.x", MoEKernelOracle=type("MoEKernelOracle", (), {}))
    assert h.install_judge(module) == "vllm.x: MoEKernelOracle.try_backend / FusedMoEExperts.is_supported_config"
    assert h.installed == []


def test_wrapping_is_idempotent_and_undone(hooks):
    h, RoutedExperts = hooks()
    wrapped = RoutedExperts.__dict__["_get_quant_method"]
    assert h.install_get_quant_method(types.SimpleNamespace(RoutedExperts=RoutedExperts)) is None
    assert RoutedExperts.__dict__["_get_quant_method"] is wrapped and h.installed == [
        "RoutedExperts._get_quant_method", "MoEKernelOracle.try_backend"]
    h.uninstall()
    assert RoutedExperts.__dict__["_get_quant_method"].__qualname__.endswith("RoutedExperts._get_quant_method")
    assert MoEKernelOracle.__dict__["try_backend"].__qualname__ == "MoEKernelOracle.try_backend"


def test_vllm_0_33_gate_gives_each_class_verdict_without_the_backend_name():
    class FusedMoEExperts:
        @staticmethod
        def is_supported_config(cls, moe_config, weight_key, activation_key, activation_format):
            return (cls.__name__ == "TritonExperts"), f"kernel does not support {cls.__name__}"

    h = Hooks()
    assert h.install_judge(types.SimpleNamespace(__name__="mk", FusedMoEExperts=FusedMoEExperts)) is None
    scope = observe._Scope("model.layers.0.mlp.experts")
    token = observe._current.set(scope)
    try:
        for cls in (FlashInferExperts, TritonExperts):
            FusedMoEExperts.is_supported_config(cls, None, "kFp8StaticTensorSym", None, "standard")
    finally:
        observe._current.reset(token)
        h.uninstall()
    assert scope.record.tried == [Tried("", "FlashInferExperts", "kernel does not support FlashInferExperts"),
                                  Tried("", "TritonExperts", None)]
    assert scope.weight_key == "kFp8StaticTensorSym" and scope.record.oracle is None


# --- The registry's verdict ------------------------------------------------------------------------------


def _facts(**changes) -> LayerFacts:
    base = dict(prefix="model.layers.0.block_sparse_moe.experts", num_experts=8, top_k=2, hidden=4096,
                intermediate=14336, activation="silu", in_dtype="bfloat16", routing="RenormalizeNaive", tp=1, ep=1,
                dp=1, use_ep=False, weight_key="kFp8StaticTensorSym", activation_key="kFp8StaticTensorSym")
    return LayerFacts(**{**base, **changes})


@pytest.fixture
def on_h100(monkeypatch):
    monkeypatch.setenv("MOE_REGISTRY_DEVICE", "h100")


def test_verdict_and_pin(on_h100):
    ours = verdict(_facts())
    assert ours.backend == "flashinfer-cutlass" and ours.key == "flashinfer_cutlass"
    assert pin_for(ours, "FlashInferExperts") == (None, "vLLM's pick already runs our kernel")
    assert pin_for(ours, "TritonExperts") == ("flashinfer_cutlass", None)
    nameless = verdict(_facts(weight_key=None, activation_key=None, in_dtype="float16", num_experts=1024,
                              intermediate=1024, hidden=1024, top_k=1))
    assert nameless.key is None or nameless.backend
    unknown = verdict(_facts(activation="swiglustep"))
    assert unknown.selection is None and "no activation id" in unknown.error
    assert pin_for(unknown, "TritonExperts") == (None, f"no backend of ours: {unknown.error}")


def test_rows_and_fingerprint(on_h100):
    record = LayerRecord("model.layers.0.block_sparse_moe.experts", oracle="Fp8", facts=_facts(),
                         tried=[Tried("FLASHINFER_TRTLLM", "TrtLlmFp8ExpertsMonolithic", "kernel does not support x"),
                                Tried("FLASHINFER_CUTLASS", "FlashInferExperts", None)],
                         backend="FLASHINFER_CUTLASS", experts_class="FlashInferExperts", flag="flashinfer_cutlass")
    [row] = layer_rows([record], "0.34.0")
    assert row.ours == "flashinfer-cutlass" and row.comparison.agree and row.index == 0
    assert row.answer.kernel == "FLASHINFER_CUTLASS (FlashInferExperts)" and row.answer.flag == "flashinfer_cutlass"
    assert [r.reason for r in row.answer.rejected] == ["kernel does not support x"]
    other = LayerRecord(record.prefix, facts=record.facts, pinned="triton")
    assert fingerprint([record]) == fingerprint([record]) != fingerprint([other])
    assert len(fingerprint([record])) == 16 and fingerprint([]) != fingerprint([record])
    assert fingerprint([LayerRecord(record.prefix)]) != fingerprint([LayerRecord(record.prefix.replace("0", "1"))])


def test_fingerprint_holds_our_selection(monkeypatch):
    record = LayerRecord("model.layers.0.block_sparse_moe.experts", facts=_facts())
    monkeypatch.setenv("MOE_REGISTRY_DEVICE", "h100")
    on_h100 = fingerprint([record])
    monkeypatch.setenv("MOE_REGISTRY_DEVICE", "b200")
    assert fingerprint([record]) != on_h100  # same layer, same pin: another device selects another way


def test_rows_for_layers_we_cannot_read_or_run(on_h100):
    unread = LayerRecord("model.layers.3.mlp.experts", backend="TRITON", experts_class="TritonExperts",
                         note="moe-registry could not read the layer: KeyError: x", pinned=None)
    [row] = layer_rows([unread], "0.34.0")
    assert (row.prefix, row.index, row.ours, row.ours_error, row.note, row.pinned) == (
        "model.layers.3.mlp.experts", None, None, "moe-registry could not read the layer: KeyError: x",
        "moe-registry could not read the layer: KeyError: x", None)
    mxfp8 = _facts(prefix="model.layers.4.mlp.experts", weight_key="kMxfp8Static", activation_key="kMxfp8Dynamic")
    record = LayerRecord(mxfp8.prefix, facts=mxfp8, backend="TRITON", experts_class="TritonExperts", pinned="x")
    [row] = layer_rows([record], "0.34.0")  # MXFP8 x MXFP8: no backend of ours runs it on h100
    assert row.pinned == "x" and row.index == 4
    assert row.ours is None and row.ours_error.startswith("no backend can run E=8 top2 H=4096 I=14336 silu mxfp8")
    assert not row.comparison.agree and row.comparison.why.startswith("no backend here runs it: ")


# --- The plugin's switches ---------------------------------------------------------------------------------


@pytest.fixture
def fresh_plugin(monkeypatch):
    monkeypatch.setattr(plugin, "STATE", plugin._State())
    yield plugin.STATE
    finder = plugin.STATE.finder
    if finder is not None and finder in sys.meta_path:
        sys.meta_path.remove(finder)


def test_off_unless_asked(fresh_plugin, monkeypatch):
    monkeypatch.delenv("MOE_REGISTRY_VLLM", raising=False)
    plugin.register()
    plugin.register()
    assert fresh_plugin.registered and fresh_plugin.finder is None and fresh_plugin.mode is None


def test_unknown_mode_and_versions_warn_once(fresh_plugin, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="vllm.moe_registry")
    monkeypatch.setenv("MOE_REGISTRY_VLLM", "loud")
    plugin.register()
    assert caplog.messages == ["moe-registry: MOE_REGISTRY_VLLM='loud' is not observe or enforce; vLLM runs without "
                               "the plugin"]
    assert fresh_plugin.finder is None


@pytest.mark.parametrize("version, hooked", [("0.34.0", True), ("0.34.2", True), ("0.33.0", True), ("0.35.0", False),
                                             ("0.3.4", False)])
def test_known_versions_only(fresh_plugin, monkeypatch, caplog, version, hooked):
    import importlib.metadata

    monkeypatch.setenv("MOE_REGISTRY_VLLM", "1")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version)
    caplog.set_level(logging.WARNING, logger="vllm.moe_registry")
    plugin.register()
    assert (fresh_plugin.finder is not None) is hooked and (fresh_plugin.mode == "observe") is hooked
    if not hooked:
        assert caplog.messages == [f"moe-registry: vLLM {version} is not a version this plugin knows (0.33.x, 0.34.x); "
                                   "vLLM runs without it"]
    else:
        judge = plugin._MODULAR if version.startswith("0.33.") else plugin._ORACLE_BASE
        assert set(fresh_plugin.finder.callbacks) == {plugin._ROUTED, judge, plugin._LOADER}


def test_register_never_raises(fresh_plugin, monkeypatch, caplog):
    import importlib.metadata

    def broken(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setenv("MOE_REGISTRY_VLLM", "enforce")
    monkeypatch.setattr(importlib.metadata, "version", broken)
    caplog.set_level(logging.WARNING, logger="vllm.moe_registry")
    plugin.register()
    assert caplog.messages == ["moe-registry: plugin off (PackageNotFoundError: No package metadata was found for vllm); "
                               "vLLM runs without it"]


def test_post_import_hook_fires_at_import_and_for_modules_already_imported(tmp_path, monkeypatch):
    (tmp_path / "fake_vllm_mod.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fired = []
    finder = plugin._PostImport({"fake_vllm_mod": lambda m: fired.append(m.VALUE), "json": lambda m: fired.append("json")})
    assert fired == ["json"]  # already imported: at once
    sys.meta_path.insert(0, finder)
    try:
        import fake_vllm_mod  # noqa: F401

        assert fired == ["json", 1] and finder not in sys.meta_path  # every callback fired: the finder leaves
    finally:
        sys.modules.pop("fake_vllm_mod", None)
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)


def test_report_logs_the_table_and_writes_json(fresh_plugin, monkeypatch, caplog, tmp_path, on_h100):
    monkeypatch.setattr(observe, "HOOKS", Hooks())
    fresh_plugin.mode, fresh_plugin.version = "enforce", "0.34.0"
    record = LayerRecord("model.layers.0.block_sparse_moe.experts", oracle="Fp8", facts=_facts(),
                         tried=[Tried("FLASHINFER_CUTLASS", "FlashInferExperts", None)], backend="FLASHINFER_CUTLASS",
                         experts_class="FlashInferExperts", flag="flashinfer_cutlass")
    second = _facts(prefix="model.layers.1.block_sparse_moe.experts")
    observe.HOOKS.records += [record, LayerRecord(second.prefix, **{
        **{k: v for k, v in vars(record).items() if k != "prefix"}, "facts": second})]
    path = tmp_path / "moe.json"
    monkeypatch.setenv("MOE_REGISTRY_VLLM_JSON", str(path))
    caplog.set_level(logging.INFO, logger="vllm.moe_registry")
    plugin.report("mixtral-fp8")
    assert caplog.messages[0].startswith("moe-registry: enforce fingerprint ")
    assert "(rank 0, 0 of 2 MoE layers pinned)" in caplog.messages[0]
    table = caplog.messages[1]
    assert table.splitlines()[0] == "moe-registry (enforce) for mixtral-fp8 on vLLM 0.34.0: 2 MoE layers, 2 agree"
    assert "layers 0-1 (2)" in table and "flashinfer-cutlass" in table
    data = json.loads(path.read_text())
    assert data["mode"] == "enforce" and data["models"][0]["groups"][0]["range"] == "layers 0-1 (2)"
    plugin.report("again")  # nothing new: nothing logged, the file keeps one model
    assert len(caplog.messages) == 2 and len(json.loads(path.read_text())["models"]) == 1
