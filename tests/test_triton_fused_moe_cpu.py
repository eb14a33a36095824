"""triton-fused-moe on the CPU: the same Triton kernels in Triton's interpreter (tiny shapes), the
alignment against a plain sort, config lookup, and the declaration the adapter reads.

The interpreter is chosen when ``kernels.py`` is first imported (``TRITON_INTERPRET=1`` must be set
by then); without triton installed the kernel tests skip. Shapes keep ragged tails (I and H not
multiples of the tiles) so masking is exercised; routing is imbalanced or leaves experts empty.
"""

from __future__ import annotations

import functools
import os
import sys

import pytest

# triton reads TRITON_INTERPRET when it is imported and when it decorates: both must happen after this.
_LATE = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
os.environ.setdefault("TRITON_INTERPRET", "1")
torch = pytest.importorskip("torch")

from moe_registry.backends.triton_fused_moe import DECLARATION  # noqa: E402
from moe_registry.backends.triton_fused_moe import codes as C  # noqa: E402
from moe_registry.backends.triton_fused_moe import configs  # noqa: E402
from moe_registry.execution.patterns import relative_error, routing_pattern  # noqa: E402
from moe_registry.execution.weights import random_weights, torch_dtype  # noqa: E402
from moe_registry.schemas.activation import Activation, SwigluOAIParams  # noqa: E402
from moe_registry.schemas.layer import LayerSpec  # noqa: E402

from _factories import make_layer  # noqa: E402


try:  # decorate the kernels now, in interpreter mode (triton.jit reads TRITON_INTERPRET when it decorates)
    from moe_registry.backends.triton_fused_moe import kernels as _kernels
except ImportError:  # no triton: the kernel tests skip
    _kernels = None


def _triton_interpreter():
    if _kernels is None:
        pytest.skip("triton is not installed")
    if _LATE:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (run these tests in their own process)")
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(_kernels.moe_gemm_kernel, InterpretedFunction):
        pytest.skip("the kernels were imported before TRITON_INTERPRET=1 was set (not in interpreter mode)")
    from moe_registry.backends.triton_fused_moe import ops

    return ops


BF16_TOL = 1e-2


def _run(layer: LayerSpec, kind: str = "imbalanced", T: int = 7, config=None, seed: int = 0) -> float:
    from moe_registry.backends.reference.kernel import ReferenceExperts
    from moe_registry.backends.triton_fused_moe.kernel import TritonFusedMoEExperts

    gen = torch.Generator().manual_seed(seed)
    weights = random_weights(layer, dtype=torch_dtype(layer), seed=seed)
    w, ids = routing_pattern(T, layer.num_experts, layer.top_k, device="cpu", kind=kind, generator=gen)
    x = torch.randn(T, layer.hidden_size, generator=gen).to(torch_dtype(layer))
    out = TritonFusedMoEExperts(layer, weights, config=config)(x, w, ids)
    ref = ReferenceExperts(layer, weights)(x, w, ids)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    return relative_error(out, ref)


# The shared small layer at this file's size (8 experts, H=40, I=24: quick in the interpreter).
_layer = functools.partial(make_layer, num_experts=8, hidden_size=40, intermediate_size=24)


def test_align_matches_a_stable_sort():
    ops = _triton_interpreter()
    gen = torch.Generator().manual_seed(0)
    E, bm = 6, 16
    ids = torch.randint(0, E, (9, 3), generator=gen, dtype=torch.int32)
    ids[0, 0] = E + 3  # out of range: dropped and flagged
    al = ops.align(ids, E, bm)
    flat = ids.reshape(-1)
    assert int(al.ok) == 0
    total = int(al.total)
    counts = torch.bincount(flat[flat < E].long(), minlength=E)
    assert total == int(((counts + bm - 1) // bm * bm).sum())
    rows = al.sorted_pairs[:total].view(-1, bm)
    experts = al.block_expert[: total // bm]
    seen = []
    for block, e in zip(rows, experts.tolist()):
        real = block[block < flat.numel()]
        assert (flat[real.long()] == e).all()  # every pair of a block is routed to the block's expert
        seen += real.tolist()
    assert sorted(seen) == [i for i in range(flat.numel()) if flat[i] < E]  # each valid pair exactly once
    assert (al.block_expert[total // bm:] == -1).all()
    assert int(ops.align(ids.clamp(max=E - 1), E, bm).ok) == 1


@pytest.mark.parametrize("act", [a for a in DECLARATION.activations if a is not Activation.SWIGLUOAI])
def test_every_activation_bf16_matches_reference(act):
    _triton_interpreter()
    assert _run(_layer(activation=act)) <= BF16_TOL


def test_swigluoai_interleaved_with_biases_and_limit():
    _triton_interpreter()
    params = SwigluOAIParams(alpha=1.702, limit=7.0, up_offset=1.0, interleaved=True)
    layer = _layer(activation="swigluoai", activation_params=params, bias=True)
    assert _run(layer) <= BF16_TOL


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_fp16_and_empty_experts(act):
    _triton_interpreter()
    assert _run(_layer(activation=act, dtype="fp16", quant="fp16"), kind="empty") <= BF16_TOL


def test_naive_path_for_few_pairs():
    # T*k*4 <= E: each pair is its own block, no alignment pass (vLLM's naive block assignment).
    _triton_interpreter()
    assert _run(_layer(num_experts=64, top_k=2), kind="random", T=3) <= BF16_TOL


@pytest.mark.parametrize("E", [8, 64])  # aligned and naive paths
def test_out_of_range_ids_clear_the_flag_and_are_never_addresses(E):
    ops = _triton_interpreter()
    from moe_registry.backends.triton_fused_moe.kernel import TritonFusedMoEExperts

    layer = _layer(num_experts=E)
    experts = TritonFusedMoEExperts(layer, random_weights(layer))
    x = torch.randn(3, layer.hidden_size).to(torch.bfloat16)
    w = torch.full((3, 2), 0.5)
    ids = torch.tensor([[0, 1], [2, E + 5], [3, -1]], dtype=torch.int32)
    cfg, _ = experts.config_for(3)
    out, ok = ops.fused_experts(x, w, ids, experts.w13, experts.w2, E, layer.intermediate_size, cfg,
                                experts.epilogue)
    assert int(ok) == 0 and out.shape == (3, layer.hidden_size)
    _, ok = ops.fused_experts(x, w, ids.clamp(0, E - 1), experts.w13, experts.w2, E, layer.intermediate_size, cfg,
                              experts.epilogue)
    assert int(ok) == 1
    with pytest.raises(ValueError, match="expert ids in"):  # on the CPU the guard says so first
        experts(x, w, ids)


def test_router_weight_on_input_top1():
    _triton_interpreter()
    assert _run(_layer(top_k=1, apply_router_weight_on_input=True)) <= BF16_TOL


def test_swap_ab_and_bigger_tiles_agree():
    _triton_interpreter()
    cfg = {p: dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=16, BLOCK_SIZE_K=16, GROUP_SIZE_M=2, num_warps=4, num_stages=2,
                   SWAP_AB=True) for p in ("gemm1", "gemm2")}
    assert _run(_layer(), config=cfg) <= BF16_TOL


def _run_fp8(layer: LayerSpec, T: int = 5, seed: int = 0) -> float:
    """Error against the reference fed the kernel's own dynamically quantized input (dequantized):
    what remains is the GEMMs and the intermediate's quantization, not the input's (which alone is
    ~10% here: e4m3 keeps 3 mantissa bits)."""
    from moe_registry.backends.reference.kernel import ReferenceExperts
    from moe_registry.backends.triton_fused_moe import ops
    from moe_registry.backends.triton_fused_moe.kernel import TritonFusedMoEExperts

    gen = torch.Generator().manual_seed(seed)
    weights = random_weights(layer, seed=seed)
    w, ids = routing_pattern(T, layer.num_experts, layer.top_k, device="cpu", kind="imbalanced", generator=gen)
    x = torch.randn(T, layer.hidden_size, generator=gen).to(torch.bfloat16)
    out = TritonFusedMoEExperts(layer, weights)(x, w, ids)
    if layer.quant.kind.value == "fp8":
        q, s = ops.quant_fp8_tensor(x)
        x_seen = q.float() * s
    else:
        q, s = ops.quant_fp8_groups(x)
        x_seen = q.float() * s.repeat_interleave(128, dim=1)[:, : layer.hidden_size]
    ref = ReferenceExperts(layer, weights)(x_seen.to(torch.bfloat16), w, ids)
    return relative_error(out, ref)


@pytest.mark.parametrize("quant, tol", [("fp8", 8e-2), ("fp8_block", 4e-2)])
def test_fp8_schemes(quant, tol):
    _triton_interpreter()
    # H and I straddle a partial 128-block.
    assert _run_fp8(_layer(quant=quant, hidden_size=160, intermediate_size=136)) <= tol


def test_fp8_quantizers_follow_the_weight_recipe():
    ops = _triton_interpreter()
    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    q, s = ops.quant_fp8_groups(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (3, 2)
    amax = torch.stack([x[:, :128].float().abs().amax(1), x[:, 128:].float().abs().amax(1)], 1)
    torch.testing.assert_close(s, amax / 448)
    assert relative_error(q.float() * s.repeat_interleave(128, 1)[:, :200], x.float()) < 0.06
    qt, st = ops.quant_fp8_tensor(x)
    torch.testing.assert_close(st, (x.float().abs().amax() / 448).reshape(1))
    assert relative_error(qt.float() * st, x.float()) < 0.08


def test_cpu_weights_need_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    from moe_registry.backends.triton_fused_moe.kernel import TritonFusedMoEExperts

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    layer = _layer()
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        TritonFusedMoEExperts(layer, random_weights(layer))


def test_declaration_codes_are_the_kernel_codes():
    # The adapter passes ActivationImpl.kernel_value to the kernel: each activation has its own code,
    # gated ones below ACT_RELU2 (the kernel's gated/non-gated split).
    values = {act: impl.kernel_value for act, impl in DECLARATION.activations.items()}
    # Every activation the kernel has a code for; silu_clamp (added later) is not declared until it has one.
    assert set(values) == set(Activation) - {Activation.SILU_CLAMP}
    assert len(set(values.values())) == len(values)
    for act, code in values.items():
        assert (code < C.ACT_RELU2) == act.is_gated, act
    assert DECLARATION.features.cuda_graphs


def test_graphs_refuse_a_backend_without_cuda_graphs():
    from moe_registry.backends.reference.kernel import ReferenceExperts
    from moe_registry.execution.graphs import GraphedExperts

    layer = _layer()
    with pytest.raises(ValueError, match="cuda_graphs"):
        GraphedExperts(ReferenceExperts(layer, random_weights(layer)))


# --- configs (torch-free) ------------------------------------------------------------------------------

def test_default_config_when_no_file(tmp_path):
    cfg, where = configs.lookup(1, 128, 704, 2816, 8, "bf16", "NVIDIA H200", config_dir=tmp_path)
    assert where == "default" and cfg["gemm1"]["BLOCK_SIZE_M"] == 16
    mid, _ = configs.lookup(512, 128, 704, 2816, 8, "bf16", "NVIDIA H200", config_dir=tmp_path)
    assert mid["gemm1"]["BLOCK_SIZE_M"] == 64
    big, _ = configs.lookup(4096, 128, 704, 2816, 8, "bf16", "NVIDIA H200", config_dir=tmp_path)
    assert big["gemm1"]["BLOCK_SIZE_M"] == big["gemm2"]["BLOCK_SIZE_M"] == 128
    configs.validate(big, "bf16")
    blk, _ = configs.lookup(4096, 256, 2048, 7168, 8, "fp8_block", None)
    assert configs.FP8_BLOCK % blk["gemm1"]["BLOCK_SIZE_K"] == 0


def test_lookup_takes_the_nearest_tuned_T(tmp_path):
    def entry(bm: int, bn: int) -> dict:
        g = dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
        return {"gemm1": g, "gemm2": dict(g)}

    path = tmp_path / configs.config_file_name(8, 64, 32, "bf16", "Some GPU")
    configs.save(path, {1: entry(16, 32), 64: entry(16, 64), 4096: entry(64, 128)}, {"card": "Some GPU"})
    got = {T: configs.lookup(T, 8, 64, 32, 2, "bf16", "Some GPU", config_dir=tmp_path) for T in (1, 30, 40, 9000)}
    assert got[1][0]["gemm1"]["BLOCK_SIZE_N"] == 32
    assert got[30][0]["gemm1"]["BLOCK_SIZE_N"] == 32  # |30-1| < |30-64|
    assert got[40][0]["gemm1"]["BLOCK_SIZE_N"] == 64
    assert got[9000][0]["gemm1"]["BLOCK_SIZE_M"] == 64 and "T=4096" in got[9000][1]


@pytest.mark.parametrize("bad, match", [
    ({"gemm1": {}}, "needs keys"),
    ({"gemm1": dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=48, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=3)},
     "power of two"),
])
def test_validate_refuses_bad_configs(bad, match):
    bad = {**bad, "gemm2": bad["gemm1"]}
    with pytest.raises(ValueError, match=match):
        configs.validate(bad, "bf16")


def test_validate_fp8_block_k_tile():
    g = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=256, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
    with pytest.raises(ValueError, match="dividing 128"):
        configs.validate({"gemm1": g, "gemm2": g}, "fp8_block")


def test_committed_configs_are_valid():
    for path in configs.CONFIG_DIR.glob("*.json"):
        quant = path.stem.split("dtype=")[1]
        table = configs._load(str(path))
        assert table, path
        for cfg in table.values():
            configs.validate(cfg, quant)


def test_tune_cli_without_a_gpu_is_one_line_exit_2(capsys, monkeypatch):
    from moe_registry.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["tune", "qwen3-30b-a3b"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and err.count("\n") == 1


def test_tune_candidates_respect_the_kernel_limits():
    from moe_registry.backends.triton_fused_moe.tune import candidates

    for quant in ("bf16", "fp8_block"):
        layer = _layer(num_experts=128, top_k=8, hidden_size=2048, intermediate_size=768, quant=quant)
        for T in (1, 16, 64, 512, 4096):
            bm, c1, c2 = candidates(T, layer, quant)
            assert c1 and c2
            for g1, g2 in zip(c1, c2):
                configs.validate({"gemm1": g1, "gemm2": g2}, quant)
                assert g1["BLOCK_SIZE_M"] == g2["BLOCK_SIZE_M"] == bm
