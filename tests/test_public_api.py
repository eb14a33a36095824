"""The public surface: ``moe_registry.__all__`` and the declaration vocabulary in
``moe_registry.schemas``. Every exported name resolves, to the object its home module defines."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import moe_registry
import moe_registry.schemas as schemas

from _decl_helpers import assert_selected

CALLER_AND_PLUGIN_NAMES = {"PlanError", "ModelPlan", "Policy", "MeasuredPolicy", "ExpertWeights", "Environment",
                           "select_backend", "plan_model", "BackendCapability", "hookimpl", "Experts"}


def test_every_public_name_resolves_to_its_home_definition():
    assert CALLER_AND_PLUGIN_NAMES <= set(moe_registry.__all__)
    for name, module in moe_registry._EXPORTS.items():
        assert getattr(moe_registry, name) is getattr(importlib.import_module(module), name), name
    assert sorted(moe_registry.__all__) == sorted(moe_registry._EXPORTS)


def test_the_type_checking_imports_match_the_lazy_exports():
    # What IDEs and mypy see must be what attribute access returns.
    tree = ast.parse(Path(moe_registry.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    seen = {alias.name for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert seen == set(moe_registry._EXPORTS)


def test_schemas_package_exports_the_vocabulary_and_submodules_still_import():
    for name in schemas.__all__:
        assert hasattr(schemas, name), name
    from moe_registry.schemas.capability import BackendCapability, Condition, DeviceRule, QuantSupport
    from moe_registry.schemas.selection import ReasonCode

    assert (schemas.BackendCapability, schemas.Condition, schemas.DeviceRule, schemas.QuantSupport,
            schemas.ReasonCode) == (BackendCapability, Condition, DeviceRule, QuantSupport, ReasonCode)
    assert {"BackendCapability", "QuantSupport", "Condition", "DeviceRule", "Activation", "QuantKind", "QuantScheme",
            "LayerSpec", "ReasonCode", "Requirement", "RoutingSupport", "FeatureSupport"} <= set(schemas.__all__)


def test_a_declaration_written_from_the_schemas_package_alone_is_selected():
    from moe_registry import Registry, hookimpl, select_backend
    from moe_registry.schemas import (
        Activation, ActivationImpl, BackendCapability, DeviceRule, FeatureSupport, LayerSpec, QuantFamily, QuantKind,
        QuantSupport, RoutingSupport,
    )

    src = "test"
    decl = BackendCapability(
        id="p-one", name="Plugin one", provider="tests", description="test-only", kernel="none",
        devices=(DeviceRule(min_sm=80, source=src),), dtypes=("bf16",),
        activations={Activation.SILU: ActivationImpl(kernel_name="silu", source=src)},
        quant=(QuantSupport(kind=QuantKind.BF16, source=src),), routing=RoutingSupport(precomputed=True, source=src),
        features=FeatureSupport(source=src), priority={QuantFamily.UNQUANTIZED: 1})

    class Plugin:
        @hookimpl
        def moe_registry_backends(self):
            return [decl]

    reg = Registry(builtins=False, entry_points=False, plugins=[Plugin()])
    layer = LayerSpec(num_experts=8, top_k=2, hidden_size=256, intermediate_size=256, activation="silu")
    sel = select_backend(layer, "h100", registry=reg)
    assert_selected(sel, "p-one")


def test_importing_the_package_and_its_schemas_does_not_import_torch():
    code = ("import sys, moe_registry, moe_registry.schemas; moe_registry.Environment; moe_registry.PlanError; "
            "moe_registry.MeasuredPolicy; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(moe_registry.__file__).parents[1])
