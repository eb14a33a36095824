"""Expert and tensor parallelism on CPU ranks (gloo): sharding, agreement, dispatch and combine.

Each distributed case runs the sharded layer in spawned ranks and compares every rank's output
with the single-process reference of the FULL layer on that rank's tokens (``run_rank_job``), so
a wrong shard (gate/up lanes mixed, a bias added once per TP rank, a token sent to the wrong rank)
shows up as an O(1) error, far above the bf16 tolerance.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from moe_registry.distributed.launch import launch, run_rank_jobs  # noqa: E402
from moe_registry.distributed.layout import RankLayout  # noqa: E402
from moe_registry.distributed.shard import shard_weights  # noqa: E402
from moe_registry.execution import random_weights  # noqa: E402
from moe_registry.schemas.layer import LayerSpec  # noqa: E402

# bf16 outputs of one layer vs the fp32 reference (the single-process torch-grouped-mm tests use
# the same bound); a sharding bug gives errors of order 1.
TOL = 1e-2

SILU = LayerSpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=96, activation="silu")
# gpt-oss style: interleaved gate/up rows, biases (w2_bias must be added once, not once per TP rank).
OAI = LayerSpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=64, activation="swigluoai",
                activation_params={"interleaved": True}, bias=True)
RELU2 = LayerSpec(num_experts=8, top_k=3, hidden_size=64, intermediate_size=128, activation="relu2_no_mul")
LLAMA4 = LayerSpec(num_experts=8, top_k=1, hidden_size=64, intermediate_size=64, activation="silu",
                   routing="llama4", apply_router_weight_on_input=True)


def _job(layer: LayerSpec, tp: int, ep: int, tokens, *, force: str, skew: bool = True, **extra) -> dict:
    return {"layer": layer.model_dump_json(), "tp": tp, "ep": ep, "tokens": tokens, "seed": 3, "force": force,
            "target": "cpu", "skew": skew, **extra}


def _run(world: int, jobs: list[dict]) -> list[list[dict]]:
    results = launch(run_rank_jobs, world, jobs, backend="gloo", timeout_s=300)
    errors = [msg for _, status, msg in results if status != "ok"]
    assert not errors, errors
    return [r for _, _, r in results]  # per rank: one result per job


def test_two_ranks_ep2_and_tp2():
    jobs = [
        _job(SILU, 1, 2, [5, 0], force="reference"),  # EP2, one rank without tokens of its own
        _job(SILU, 1, 2, [6, 9], force="torch-grouped-mm"),
        _job(SILU, 2, 1, [7], force="reference"),  # TP2
        _job(SILU, 2, 1, [7], force="torch-grouped-mm"),
        _job(OAI, 2, 1, [5], force="reference"),  # TP2 with interleaved rows and biases
        _job(OAI, 1, 2, [4, 4], force="torch-grouped-mm"),
        _job(RELU2, 2, 1, [6], force="torch-grouped-mm"),  # non-gated rows
        _job(LLAMA4, 1, 2, [8, 3], force="reference", routing="llama4"),  # router weight on the input
    ]
    per_rank = _run(2, jobs)
    for j, job in enumerate(jobs):
        rows = [per_rank[r][j] for r in range(2)]
        assert {row["backend"] for row in rows} == {job["force"]}
        assert len({row["fingerprint"] for row in rows}) == 1
        for row in rows:
            assert row["rel_error_vs_reference"] < TOL, (j, row)
    assert [per_rank[r][0]["tokens"] for r in range(2)] == [5, 0]


def test_four_ranks_ep4_and_tp2_ep2():
    jobs = [
        _job(SILU, 1, 4, [3, 0, 11, 6], force="torch-grouped-mm"),  # EP4: 2 experts per rank
        _job(SILU, 1, 4, [2, 2, 2, 2], force="reference"),
        _job(SILU, 2, 2, [5, 9], force="torch-grouped-mm"),  # TP2 x EP2
        _job(OAI, 2, 2, [4, 7], force="reference"),
    ]
    per_rank = _run(4, jobs)
    for j in range(len(jobs)):
        for r in range(4):
            assert per_rank[r][j]["rel_error_vs_reference"] < TOL, (j, r, per_rank[r][j])
    # TP2 x EP2: ranks 0,1 form TP group 0 (EP rank 0) and hold the same tokens.
    tp_ep = [per_rank[r][2] for r in range(4)]
    assert [(x["tp_rank"], x["ep_rank"], x["tokens"]) for x in tp_ep] == [(0, 0, 5), (1, 0, 5), (0, 1, 9), (1, 1, 9)]


def test_ranks_that_select_differently_all_raise_with_every_choice():
    job = _job(SILU, 1, 2, [4, 4], force="torch-grouped-mm", force_by_rank={"1": "reference"})
    results = launch(run_rank_jobs, 2, [job], backend="gloo", timeout_s=300)
    assert [status for _, status, _ in results] == ["error", "error"]
    for _, _, message in results:
        assert message.startswith("SelectionMismatch: ranks disagree on the backend of")
        assert "rank 0: torch-grouped-mm" in message and "rank 1: reference" in message
        assert "fingerprint" in message


# --- Sharding alone (no processes) ------------------------------------------------------------


def _dense(w):
    return w if isinstance(w, torch.Tensor) else w.dequantize(torch.float32)


@pytest.mark.parametrize("quant", ["bf16", "nvfp4", "mxfp4", "fp8", "fp8_block", "int4_w4a16:g32",
                                   "int4_w4a16:g32:zp", "int4_w4a16:gchannel"])
@pytest.mark.parametrize("tp,ep,rank", [(2, 1, 1), (1, 2, 1), (2, 2, 2)])
def test_shards_equal_slices_of_the_dequantized_full_weights(quant, tp, ep, rank):
    layer = LayerSpec(num_experts=4, top_k=2, hidden_size=256, intermediate_size=512, activation="silu",
                      quant=quant, bias=True)
    full = random_weights(layer, dtype=torch.float32 if quant == "bf16" else torch.bfloat16, seed=1)
    layout = RankLayout(rank=rank, tp=tp, ep=ep)
    part = shard_weights(full, layer, layout)
    E, I = 4 // ep, 512 // tp
    e0, i0 = layout.ep_rank * E, layout.tp_rank * I
    w13, w2 = _dense(full.w13), _dense(full.w2)
    gate, up = w13[e0:e0 + E, i0:i0 + I], w13[e0:e0 + E, 512 + i0:512 + i0 + I]
    assert torch.equal(_dense(part.w13), torch.cat([gate, up], dim=1))
    assert torch.equal(_dense(part.w2), w2[e0:e0 + E, :, i0:i0 + I])
    b13 = full.w13_bias[e0:e0 + E]
    assert torch.equal(part.w13_bias, torch.cat([b13[:, i0:i0 + I], b13[:, 512 + i0:512 + i0 + I]], dim=1))
    expected_b2 = full.w2_bias[e0:e0 + E] if layout.tp_rank == 0 else torch.zeros_like(full.w2_bias[e0:e0 + E])
    assert torch.equal(part.w2_bias, expected_b2)


def test_interleaved_rows_stay_in_pairs():
    layer = OAI
    full = random_weights(layer, dtype=torch.float32, seed=2)
    part = shard_weights(full, layer, RankLayout(rank=1, tp=2))
    assert torch.equal(part.w13, full.w13[:, 64:128])  # lanes 32..63 own rows 64..127 (g, u pairs)


def test_a_shard_that_cuts_a_scale_group_is_refused():
    layer = LayerSpec(num_experts=2, top_k=1, hidden_size=128, intermediate_size=96, activation="silu",
                      quant="nvfp4")
    full = random_weights(layer, seed=0)
    with pytest.raises(ValueError, match="cuts through its packing or scale groups of 16"):
        shard_weights(full, layer, RankLayout(rank=1, tp=4))  # 24 lanes per rank: 1.5 NvFP4 groups


def test_full_weights_are_required():
    full = random_weights(SILU.replace(num_experts=4), seed=0)
    with pytest.raises(ValueError, match="takes the full layer's weights"):
        shard_weights(full, SILU, RankLayout(rank=0, ep=2))


def test_rank_layout_groups():
    lay = RankLayout(rank=5, tp=2, ep=4)
    assert (lay.tp_rank, lay.ep_rank) == (1, 2)
    assert lay.tp_group_ranks() == [4, 5]
    assert lay.ep_group_ranks() == [1, 3, 5, 7]
    assert lay.experts(16) == range(8, 12)
    with pytest.raises(ValueError, match="outside a world of 8"):
        RankLayout(rank=8, tp=2, ep=4)


# --- The CLI's `run --tp/--ep` -------------------------------------------------------------------


def test_cli_run_refuses_bad_parallel_sizes(capsys):
    from moe_registry.cli import main

    assert main(["run", "--preset", "qwen3-30b-a3b", "--tp", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--tp, --ep and --dp must be positive" in err
    assert main(["run", "--preset", "qwen3-30b-a3b", "--tp", "4", "--ep", "3"]) == 2
    assert "must divide --tp" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without GPUs")
def test_cli_run_with_nccl_needs_a_gpu_per_rank(capsys):
    from moe_registry.cli import main

    assert main(["run", "--preset", "qwen3-30b-a3b", "--tp", "2", "--torch-device", "cuda"]) == 2
    assert "NCCL needs one GPU per rank: 2 ranks, 0 GPUs here" in capsys.readouterr().err
    # vLLM's form: --tp 4 --enable-expert-parallel is EP4 with unsplit experts: 4 ranks as well.
    assert main(["run", "--preset", "qwen3-30b-a3b", "--tp", "4", "--enable-expert-parallel", "--torch-device", "cuda"]) == 2
    assert "NCCL needs one GPU per rank: 4 ranks, 0 GPUs here" in capsys.readouterr().err
