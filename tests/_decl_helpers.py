"""Test-only declarations and registries for the selection-rule tests (test_selection_rules.py,
test_selection_edges.py): a permissive declaration to change one fact at a time, and a registry that
holds exactly the declarations a test builds, and ``assert_selected`` for the selection tests."""

from __future__ import annotations

from moe_registry.registry import Registry, hookimpl
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, DeviceRule, FeatureSupport, QuantSupport, RoutingSupport,
)
from moe_registry.schemas.layer import LayerSpec
from moe_registry.schemas.quant import QuantFamily, QuantKind
from moe_registry.schemas.selection import Selection

SRC = "test declaration"
# Routing named, so the in-kernel routing rule does not abstain (which would add a note).
BASE = LayerSpec(num_experts=8, top_k=2, hidden_size=256, intermediate_size=256, activation="silu",
                 routing="softmax_topk_renorm")


def decl(id: str = "t-a", *, features_source: str = SRC, **changes) -> BackendCapability:
    """A permissive declaration (any NVIDIA GPU from SM75, bf16, silu, bf16 weights) with ``changes``."""
    fields = dict(
        id=id, name=f"Test {id}", provider="tests", description="test-only", kernel="none",
        devices=(DeviceRule(min_sm=75, source=SRC),), dtypes=("bf16",),
        activations={Activation.SILU: ActivationImpl(kernel_name="silu", source=SRC)},
        quant=(QuantSupport(kind=QuantKind.BF16, source=SRC),),
        routing=RoutingSupport(precomputed=True, source=SRC),
        features=FeatureSupport(source=features_source), priority={QuantFamily.UNQUANTIZED: 50},
    )
    fields.update(changes)
    return BackendCapability(**fields)


def registry(*declarations: BackendCapability) -> Registry:
    """A registry of exactly these declarations (no built-ins, no entry points)."""
    class _Plugin:
        @hookimpl
        def moe_registry_backends(self) -> list[BackendCapability]:
            return list(declarations)

    return Registry(builtins=False, entry_points=False, plugins=[_Plugin()])


def assert_selected(selection: Selection, backend: str, **fields: object) -> Selection:
    """Assert ``selection`` chose ``backend`` (and has ``fields``, e.g. ``decided_by="env"``); a
    failure shows ``Selection.describe()``: what ran, why, and every loser's reasons."""
    want = {"backend": backend, **fields}
    got = {name: getattr(selection, name) for name in want}
    assert got == want, f"expected {want}, got {got}\n{selection.describe()}"
    return selection
