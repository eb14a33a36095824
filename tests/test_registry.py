"""The plugin registry: entry-point discovery, fault isolation, and one fact in one place."""

from __future__ import annotations

import sys
import textwrap

import pytest

from moe_registry import LayerSpec, select_backend
from moe_registry.backends.trtllm_gen.fp4 import DECLARATION as TRTLLM
from moe_registry.registry import Registry, hookimpl
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.selection import ReasonCode

from _decl_helpers import assert_selected

TRTLLM_GEN_IDS = ["trtllm-fp4", "trtllm-fp8", "trtllm-fp8-channel", "trtllm-fp8-block", "trtllm-bf16", "trtllm-mxint4"]

GEMMA4 = LayerSpec(num_experts=128, top_k=8, hidden_size=2816, intermediate_size=704, activation="gelu",
                   quant="nvfp4")

PLUGIN_MODULE = '''
from moe_registry.backends.reference import DECLARATION as REFERENCE
from moe_registry.registry import hookimpl
from moe_registry.schemas.quant import QuantFamily

@hookimpl
def moe_registry_backends():
    fast = REFERENCE.model_dump()
    fast.update(id="acme-fast", name="ACME fast MoE", provider="acme",
                priority={family.value: 1000 for family in QuantFamily})
    return [fast]
'''

BROKEN_MODULE = '''
raise RuntimeError("acme-broken cannot find its CUDA library")
'''


def _install_distribution(tmp_path, monkeypatch, name: str, entry_points: dict[str, str], modules: dict[str, str]):
    """A real (if tiny) installed distribution: importlib.metadata finds its entry points on sys.path."""
    dist = tmp_path / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[moe_registry]\n{lines}\n")
    for module, source in modules.items():
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_builtins_are_registered_in_order():
    registry = Registry(entry_points=False)
    assert registry.ids() == TRTLLM_GEN_IDS + ["flashinfer-cutlass", "marlin", "humming", "oai-triton-kernels",
                                                "triton-fused-moe", "triton-lowt-moe", "torch-grouped-mm", "reference"]
    assert registry.problems == []


def test_entry_point_plugin_is_selected_when_it_ranks_first_and_broken_one_is_isolated(tmp_path, monkeypatch):
    _install_distribution(tmp_path, monkeypatch, "acme_moe",
                          {"fast": "acme_fast_plugin", "broken": "acme_broken_plugin"},
                          {"acme_fast_plugin": PLUGIN_MODULE, "acme_broken_plugin": BROKEN_MODULE})
    registry = Registry()
    assert "acme-fast" in registry.ids()
    assert [(p.plugin.split()[0], p.stage) for p in registry.problems] == [("broken", "load")]
    assert "cannot find its CUDA library" in registry.problems[0].message
    s = select_backend(GEMMA4, "h100", registry=registry)
    assert_selected(s, "acme-fast")
    # The rest still select as before.
    s = select_backend(GEMMA4, "b200", registry=registry, forbid=["acme-fast"])
    assert_selected(s, "trtllm-fp4")
    sys.modules.pop("acme_fast_plugin", None)


class _Raising:
    @hookimpl
    def moe_registry_backends(self):
        raise ValueError("bad plugin")


class _Invalid:
    @hookimpl
    def moe_registry_backends(self):
        return [{"id": "no spaces allowed here", "name": "x"}]


class _Duplicate:
    @hookimpl
    def moe_registry_backends(self):
        return [TRTLLM]


def test_faulty_plugins_are_reported_and_isolated():
    registry = Registry(entry_points=False, plugins=[_Raising(), _Invalid(), _Duplicate()])
    stages = sorted(p.stage for p in registry.problems)
    assert stages == ["call", "duplicate", "validate"]
    assert registry.ids() == TRTLLM_GEN_IDS + ["flashinfer-cutlass", "marlin", "humming", "oai-triton-kernels",
                                                "triton-fused-moe", "triton-lowt-moe", "torch-grouped-mm", "reference"]
    assert_selected(select_backend(GEMMA4, "b200", registry=registry), "trtllm-fp4")


def _registry_with(declaration):
    """The built-in registry with only this declaration replaced."""
    return Registry(entry_points=False).with_declaration(declaration)


def test_adding_an_activation_to_the_declaration_is_the_only_change_needed():
    """vLLM #41050: the kernel ran GeGLU, but an allow-list and two asserts said no. Here the
    activation lives in one place; adding it there makes the backend eligible."""
    without = TRTLLM.model_copy(update={"activations": {a: i for a, i in TRTLLM.activations.items()
                                                        if a is not Activation.GELU}})
    before = select_backend(GEMMA4, "b200", registry=_registry_with(without))
    assert before.backend != "trtllm-fp4"
    assert before.rejection("trtllm-fp4").codes() == {ReasonCode.ACTIVATION_UNSUPPORTED}
    assert before.rejection("trtllm-fp4").reasons[0].hint.endswith(
        "declare it in its activations (verify with `moe-registry probe --backend trtllm-fp4`); "
        "that is the only change needed")

    restored = without.model_copy(update={"activations": {**without.activations,
                                                          Activation.GELU: TRTLLM.activations[Activation.GELU]}})
    changed = {k for k in type(TRTLLM).model_fields if getattr(restored, k) != getattr(without, k)}
    assert changed == {"activations"}
    after = select_backend(GEMMA4, "b200", registry=_registry_with(restored))
    assert_selected(after, "trtllm-fp4")


def test_unknown_backend_lookup_is_typed():
    from moe_registry.errors import UnknownBackend

    with pytest.raises(UnknownBackend, match="known backends"):
        Registry(entry_points=False).get("nope")


def test_with_declaration_replaces_or_adds_and_keeps_the_rest():
    base = Registry(entry_points=False)
    renamed = TRTLLM.model_copy(update={"name": "changed"})
    replaced = base.with_declaration(renamed)
    assert replaced.ids() == base.ids() and replaced.get("trtllm-fp4").name == "changed"
    assert [d for d in replaced if d.id != "trtllm-fp4"] == [d for d in base if d.id != "trtllm-fp4"]
    added = base.with_declaration(TRTLLM.model_copy(update={"id": "trtllm-fp4-copy"}))
    assert added.ids() == [*base.ids(), "trtllm-fp4-copy"]
