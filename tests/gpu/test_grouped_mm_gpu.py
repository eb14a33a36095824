"""torch-grouped-mm on an SM90+ GPU against the reference (``pytest -m gpu tests/gpu``).

The case table and the runner live in ``benchmarks/verify_gpu.py`` (which also writes the JSON
verification record), so the test and the record cannot drift apart. Cases: every activation on
a medium shape, Gemma 4 (E=128, top-8, H=2816, I=704) and the seed's layer (E=64, top-8,
H=4096, I=704) at T in {1, 7, 64, 512, 4096}, imbalanced routing, empty experts, biases, router
weight on input, padding, int64 ids, both weight layouts, int4 dequantized at load.
Tolerance: ``||out - ref|| / ||ref|| <= 1e-2`` (bf16).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

torch = pytest.importorskip("torch")

from moe_registry.execution.patterns import routing_pattern  # noqa: E402

pytestmark = pytest.mark.gpu

_VERIFY = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "verify_gpu.py")
_spec = importlib.util.spec_from_file_location("moe_registry_verify_gpu", _VERIFY)
verify = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = verify  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(verify)

_CASES = verify.cases()
_CACHE = verify.LayerCache()  # cases are grouped by layer: weights are built once per layer


@pytest.mark.parametrize("case", _CASES, ids=[c.name for c in _CASES])
def test_matches_reference(case, sm90):
    rec = verify.run_case(case, sm90, _CACHE)
    if "traceback" in rec:
        print(rec["traceback"])
    assert rec["passed"], f"{case.name}: {rec.get('error')}"


@pytest.fixture(scope="module")
def gemma_experts(sm90):
    _CACHE.items.clear()  # free the last case layer first
    torch.cuda.empty_cache()
    built = verify._gemma_experts(sm90)
    yield built
    del built
    torch.cuda.empty_cache()


def test_no_host_sync_in_bf16_forward(sm90, gemma_experts):
    rec = verify.experiment_no_host_sync(sm90, gemma_experts)
    assert rec["status"] == "ok", rec


def test_cuda_graph_capture(sm90, gemma_experts):
    rec = verify.experiment_cuda_graph(sm90, gemma_experts)
    assert rec["status"] == "ok", rec


def test_too_many_experts_refused_on_cuda(sm90):
    from moe_registry.backends.torch_grouped_mm.kernel import TorchGroupedMMExperts
    from moe_registry.execution.weights import random_weights
    from moe_registry.schemas.layer import LayerSpec

    layer = LayerSpec(num_experts=1024, top_k=2, hidden_size=64, intermediate_size=32)
    with pytest.raises(ValueError, match="1023"):
        TorchGroupedMMExperts(layer, random_weights(layer, device=sm90))


def test_weights_stay_on_device_and_output_dtype(sm90, gemma_experts):
    layer, experts = gemma_experts
    assert experts.w13_t.is_cuda and experts.w2_t.is_cuda
    x = torch.randn(3, layer.hidden_size, device=sm90, dtype=torch.bfloat16)
    w, ids = routing_pattern(3, layer.local_num_experts, layer.top_k, device=sm90)
    out = experts(x, w, ids)
    assert out.is_cuda and out.dtype == torch.bfloat16 and out.shape == (3, layer.hidden_size)


def test_empty_batch(sm90, gemma_experts):
    layer, experts = gemma_experts
    x = torch.empty(0, layer.hidden_size, device=sm90, dtype=torch.bfloat16)
    w = torch.empty(0, layer.top_k, device=sm90, dtype=torch.float32)
    ids = torch.empty(0, layer.top_k, device=sm90, dtype=torch.int32)
    assert experts(x, w, ids).shape == (0, layer.hidden_size)


def test_guard_device_mismatch(sm90, gemma_experts):
    layer, experts = gemma_experts
    x = torch.randn(2, layer.hidden_size, dtype=torch.bfloat16)  # on CPU
    w, ids = routing_pattern(2, layer.local_num_experts, layer.top_k, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="device"):
        experts(x, w, ids)
