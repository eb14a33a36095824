"""Factories shared by the tests: a small valid MoE layer, routed inputs for it, and the relative
error. Weights come from the library's own ``moe_registry.execution.random_weights``.

A plain module, not fixtures in ``conftest.py``: parametrize tables build layers at import time,
and ``from conftest import ...`` is unreliable here (``tests/gpu/conftest.py`` shares the module
name ``conftest``). Torch-free at import: selection tests use ``make_layer`` without torch.
"""

from __future__ import annotations

from typing import Any

from moe_registry.schemas.layer import LayerSpec, ParallelConfig

# 4 experts, top-2, H=256, I=128, SiLU, bf16 activations and weights: valid for every CPU backend.
SMALL: dict[str, Any] = dict(num_experts=4, top_k=2, hidden_size=256, intermediate_size=128, activation="silu")
SHORT = {"E": "num_experts", "k": "top_k", "H": "hidden_size", "I": "intermediate_size", "act": "activation"}


def make_layer(quant: Any = None, /, *, tp: int = 1, ep: int = 1, dp: int = 1, **fields: Any) -> LayerSpec:
    """``SMALL`` with ``fields`` replaced or added; ``quant`` may come first (``make_layer("nvfp4")``).
    ``E``, ``k``, ``H``, ``I`` and ``act`` are short for num_experts, top_k, hidden_size,
    intermediate_size and activation; ``tp``/``ep``/``dp`` build ``parallel`` (pass ``parallel=``
    instead, not both). silu_clamp, which has no default limit, gets limit 1.0 (it binds on N(0, 1)
    inputs). A module with other defaults binds them once with ``functools.partial``, under the
    names its call sites use (``partial(make_layer, num_experts=8, hidden_size=64)``): a field given
    under both names is a TypeError, never a silent choice."""
    if quant is not None:
        if "quant" in fields:
            raise TypeError("make_layer got quant twice")
        fields["quant"] = quant
    for short, name in SHORT.items():
        if short in fields:
            if name in fields:
                raise TypeError(f"make_layer got both {short} and {name}")
            fields[name] = fields.pop(short)
    if (tp, ep, dp) != (1, 1, 1):
        if "parallel" in fields:
            raise TypeError("make_layer got both tp/ep/dp and parallel")
        fields["parallel"] = ParallelConfig(tp=tp, ep=ep, dp=dp)
    fields = {**SMALL, **fields}
    if fields["activation"] == "silu_clamp":
        fields.setdefault("activation_params", {"limit": 1.0})
    return LayerSpec(**fields)


def routed_inputs(layer: LayerSpec, T: int = 5, seed: int = 0, *, dtype: Any = None, ids_dtype: Any = None):
    """(hidden states [T, H] in ``dtype`` (bf16), fp32 top-k weights, top-k ids in ``ids_dtype``
    (int32)) from seeded softmax routing over the layer's local experts."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, layer.hidden_size, generator=g).to(dtype or torch.bfloat16)
    logits = torch.randn(T, layer.local_num_experts, generator=g)
    w, ids = torch.topk(logits.softmax(-1), layer.top_k, dim=-1)
    return x, w.contiguous(), ids.to(ids_dtype or torch.int32).contiguous()


def rel_err(a, b) -> float:
    """``relative_error`` of ``a`` against ``b``, after asserting ``a`` is finite."""
    import torch

    from moe_registry.execution.patterns import relative_error

    assert torch.isfinite(a).all(), "non-finite output"
    return relative_error(a, b)
