"""Plain helpers of the FlashInfer adapters' CPU tests (test_flashinfer_prep.py, test_trtllm_prep.py,
test_trtllm_gen_prep.py): a small layer, routed inputs, the relative error. The ``flashinfer``
fixture is in ``conftest.py``."""

from __future__ import annotations

import torch

from moe_registry.execution.patterns import relative_error
from moe_registry.schemas.layer import LayerSpec


def small_layer(**kw) -> LayerSpec:
    """4 experts, top-2, H=256, I=128, SiLU; ``kw`` replaces or adds fields."""
    return LayerSpec(**{**dict(num_experts=4, top_k=2, hidden_size=256, intermediate_size=128, activation="silu"),
                        **kw})


def inputs(layer: LayerSpec, T: int = 5, seed: int = 0):
    """(bf16 hidden states [T, H], fp32 top-k weights, int32 top-k ids) from seeded softmax routing."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, layer.hidden_size, generator=g).to(torch.bfloat16)
    logits = torch.randn(T, layer.local_num_experts, generator=g)
    w, ids = torch.topk(logits.softmax(-1), layer.top_k, dim=-1)
    return x, w.contiguous(), ids.to(torch.int32).contiguous()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``relative_error`` of ``a`` against ``b``, after asserting ``a`` is finite."""
    assert torch.isfinite(a).all()
    return relative_error(a, b)
