"""NCCL expert / tensor parallelism on 2+ GPUs of one host, vs the single-GPU reference.

Run on a machine with several GPUs (``pytest -m gpu tests/gpu/test_distributed_gpu.py``); skipped
with fewer than the ranks a case needs. Keep NVLink multicast off (NCCL_NVLS_ENABLE=0).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from moe_registry.distributed.launch import launch, run_rank_jobs  # noqa: E402
from moe_registry.planner import plan_model  # noqa: E402
from moe_registry.schemas.layer import ParallelConfig  # noqa: E402

pytestmark = pytest.mark.gpu


def _layer(preset: str):
    layer = plan_model(preset, select=False).layers[0].layer
    return layer.replace(name=None, index=None, parallel=ParallelConfig())


@pytest.mark.parametrize("preset", ["gemma-4-26b-a4b", "qwen3-30b-a3b"])
@pytest.mark.parametrize("tp,ep", [(1, 2), (2, 1), (1, 4), (2, 2)])
def test_nccl_sharded_layer_matches_reference(preset, tp, ep):
    world = tp * ep
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs, this host has {torch.cuda.device_count()}")
    layer = _layer(preset)
    jobs = [{"layer": layer.model_dump_json(), "tp": tp, "ep": ep, "tokens": t, "seed": 5, "cuda": True,
             "skew": True, "routing": "softmax_topk_renorm", "force": "torch-grouped-mm"}
            for t in ([1] * ep, [64] * ep, [512 + 7 * e for e in range(ep)])]
    results = launch(run_rank_jobs, world, jobs, backend="nccl", timeout_s=400)
    assert all(status == "ok" for _, status, _ in results), results
    for _, _, per_job in results:
        for row in per_job:
            assert row["rel_error_vs_reference"] < 1e-2, row
