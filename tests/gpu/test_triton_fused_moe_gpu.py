"""triton-fused-moe on an SM90 GPU against the reference (``pytest -m gpu tests/gpu``).

Every declared activation x dtype (bf16, fp16) on a medium shape, the benchmark's layer shapes
(Gemma 4, Qwen3-30B-A3B, Mixtral 8x7B in bf16; DeepSeek-V3 and Qwen3-235B per-expert shapes in
FP8 128x128 blocks, with fewer experts so the fp32 reference fits), imbalanced routing and empty
experts (``moe_registry.execution.patterns``), both the aligned and the naive (few pairs) paths,
biases, swigluoai, router weight on input, FP8 per-tensor. Then what a decode step needs: no host
sync in a forward, CUDA-graph capture and replay per bucket, and the device-side id-range check
(in a subprocess: a device-side assert ends the CUDA context).
Tolerances: bf16/fp16 1e-2; FP8 against the reference fed the kernel's own quantized input
(what remains is the GEMMs and the intermediate's quantization): 4e-2 block, 8e-2 per tensor.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
# Not imported here: importing triton at collection, before tests/test_triton_fused_moe_cpu.py sets
# TRITON_INTERPRET=1, would leave the CPU tests' kernels half out of interpreter mode.
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from moe_registry.backends.triton_fused_moe import DECLARATION  # noqa: E402
from moe_registry.backends.reference.kernel import ReferenceExperts  # noqa: E402
from moe_registry.execution.patterns import relative_error, routing_pattern  # noqa: E402
from moe_registry.execution.weights import random_weights, torch_dtype  # noqa: E402
from moe_registry.schemas.activation import Activation, SwigluOAIParams  # noqa: E402
from moe_registry.schemas.layer import LayerSpec  # noqa: E402

pytestmark = pytest.mark.gpu

TOL = 1e-2
MEDIUM = dict(num_experts=32, top_k=4, hidden_size=1024, intermediate_size=704)
BENCH_BF16 = {
    "gemma4": dict(num_experts=128, top_k=8, hidden_size=2816, intermediate_size=704, activation="gelu_tanh"),
    "qwen3-30b": dict(num_experts=128, top_k=8, hidden_size=2048, intermediate_size=768, activation="silu"),
    "mixtral": dict(num_experts=8, top_k=2, hidden_size=4096, intermediate_size=14336, activation="silu"),
}
BENCH_FP8 = {  # per-expert shapes of the real layers; 32 experts keep the fp32 reference small
    "deepseek-v3": dict(num_experts=32, top_k=8, hidden_size=7168, intermediate_size=2048, quant="fp8_block"),
    "qwen3-235b": dict(num_experts=32, top_k=8, hidden_size=4096, intermediate_size=1536, quant="fp8_block"),
}


def _inputs(layer: LayerSpec, T: int, dev, kind: str, seed: int):
    gen = torch.Generator(device=dev).manual_seed(seed)
    w, ids = routing_pattern(T, layer.num_experts, layer.top_k, device=dev, kind=kind, generator=gen)
    x = torch.randn(T, layer.hidden_size, device=dev, generator=gen).to(torch_dtype(layer))
    return x, w, ids


def _build(layer: LayerSpec, dev, seed: int = 0):
    from moe_registry.backends.triton_fused_moe.kernel import TritonFusedMoEExperts

    weights = random_weights(layer, device=dev, dtype=torch_dtype(layer), seed=seed)
    return TritonFusedMoEExperts(layer, weights), ReferenceExperts(layer, weights)


def _check(layer: LayerSpec, dev, tokens=(1, 7, 64, 300), kinds=("imbalanced", "empty"), tol=TOL):
    experts, ref = _build(layer, dev)
    errs = {}
    for T in tokens:
        for kind in kinds:
            x, w, ids = _inputs(layer, T, dev, kind, seed=T)
            out = experts(x, w, ids)
            errs[(T, kind)] = relative_error(out, ref(x, w, ids))
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f"{layer.describe()}: relative errors above {tol}: {bad}"
    return errs


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("act", [a for a in DECLARATION.activations if a is not Activation.SWIGLUOAI])
def test_every_activation_and_dtype(sm90, act, dtype):
    _check(LayerSpec(**MEDIUM, activation=act, dtype=dtype, quant=dtype), sm90, tokens=(3, 64))


@pytest.mark.parametrize("interleaved", [True, False])
def test_swigluoai_with_biases(sm90, interleaved):
    params = SwigluOAIParams(alpha=1.702, limit=7.0, up_offset=1.0, interleaved=interleaved)
    _check(LayerSpec(**MEDIUM, activation="swigluoai", activation_params=params, bias=True), sm90, tokens=(3, 64))


def test_router_weight_on_input(sm90):
    _check(LayerSpec(**{**MEDIUM, "top_k": 1}, apply_router_weight_on_input=True), sm90, tokens=(5, 64))


@pytest.mark.parametrize("name", list(BENCH_BF16))
def test_bench_shapes_bf16(sm90, name):
    tokens = (1, 7, 64, 300) if name != "mixtral" else (1, 16, 300)
    _check(LayerSpec(name=name, **BENCH_BF16[name]), sm90, tokens=tokens)
    torch.cuda.empty_cache()


def _fp8_error(layer: LayerSpec, dev, T: int, kind: str) -> float:
    from moe_registry.backends.triton_fused_moe import ops

    experts, ref = _build(layer, dev)
    x, w, ids = _inputs(layer, T, dev, kind, seed=T)
    out = experts(x, w, ids)
    if layer.quant.kind.value == "fp8":
        q, s = ops.quant_fp8_tensor(x)
        seen = q.float() * s
    else:
        q, s = ops.quant_fp8_groups(x)
        seen = q.float() * s.repeat_interleave(128, dim=1)[:, : layer.hidden_size]
    return relative_error(out, ref(seen.to(x.dtype), w, ids))


@pytest.mark.parametrize("T", [1, 16, 200])
@pytest.mark.parametrize("name", list(BENCH_FP8))
def test_bench_shapes_fp8_block(sm90, name, T):
    err = _fp8_error(LayerSpec(name=name, **BENCH_FP8[name]), sm90, T, "imbalanced" if T > 1 else "random")
    assert err <= 4e-2, err
    torch.cuda.empty_cache()


@pytest.mark.parametrize("quant, tol", [("fp8", 8e-2), ("fp8_block", 4e-2)])
def test_fp8_empty_experts_and_partial_blocks(sm90, quant, tol):
    layer = LayerSpec(num_experts=16, top_k=4, hidden_size=1000, intermediate_size=328, quant=quant)
    assert _fp8_error(layer, sm90, 64, "empty") <= tol


def test_quantizers_round_like_torch(sm90):
    from moe_registry.backends.triton_fused_moe import ops

    x = torch.randn(64, 512, device=sm90).to(torch.bfloat16)
    q, s = ops.quant_fp8_groups(x)
    want = (x.float().view(64, 4, 128) / s.view(64, 4, 1)).clamp(-448, 448).to(torch.float8_e4m3fn).view(64, 512)
    assert (q.float() == want.float()).float().mean() > 0.999  # division order may flip a rare tie
    qt, st = ops.quant_fp8_tensor(x)
    want_t = (x.float() / st).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert (qt.float() == want_t.float()).float().mean() > 0.999


def test_no_host_sync_in_a_forward(sm90, no_host_sync):
    experts, _ = _build(LayerSpec(**MEDIUM), sm90)
    for T in (1, 64, 600):  # naive and aligned paths
        x, w, ids = _inputs(experts.layer, T, sm90, "imbalanced", seed=T)
        experts(x, w, ids)  # compile first
        no_host_sync(experts, x, w, ids)


def test_graphed_experts_match_eager(sm90):
    from moe_registry.execution.graphs import GraphedExperts

    experts, _ = _build(LayerSpec(**MEDIUM), sm90)
    graphed = GraphedExperts(experts, buckets=(1, 4, 16, 64))
    for T in (1, 3, 16, 50, 64, 65):  # exact buckets, padded buckets, and eager above the largest
        x, w, ids = _inputs(experts.layer, T, sm90, "imbalanced", seed=T)
        want = experts(x, w, ids).clone()
        got = graphed(x, w, ids)
        assert got.shape == want.shape
        assert relative_error(got, want) < 1e-6, T
    assert len(graphed._graphs) == 4


def test_graphed_grouped_mm_now_captures(sm90):
    # The id-range guard used to copy min/max to the host; on the device it no longer breaks capture.
    from moe_registry.backends.torch_grouped_mm.kernel import TorchGroupedMMExperts
    from moe_registry.execution.graphs import GraphedExperts

    layer = LayerSpec(**MEDIUM)
    experts = TorchGroupedMMExperts(layer, random_weights(layer, device=sm90))
    if not experts.fast_path:
        pytest.skip("grouped_mm's fallback syncs with the host")
    graphed = GraphedExperts(experts, buckets=(8,))
    x, w, ids = _inputs(layer, 5, sm90, "random", seed=1)
    assert relative_error(graphed(x, w, ids), experts(x, w, ids)) < 1e-6


_BAD_IDS = r"""
import sys, torch
from moe_registry.execution.weights import random_weights
from moe_registry.schemas.layer import LayerSpec
layer = LayerSpec(num_experts=32, top_k=4, hidden_size=256, intermediate_size=128)
backend = sys.argv[1]
if backend == "triton":
    from moe_registry.backends.triton_fused_moe.kernel import TritonFusedMoEExperts as Cls
else:
    from moe_registry.backends.torch_grouped_mm.kernel import TorchGroupedMMExperts as Cls
experts = Cls(layer, random_weights(layer, device="cuda"))
T = int(sys.argv[2])
x = torch.randn(T, 256, device="cuda").to(torch.bfloat16)
w = torch.full((T, 4), 0.25, device="cuda")
ids = torch.arange(T * 4, device="cuda", dtype=torch.int32).view(T, 4) % 32
ids[0, 1] = 40  # out of range
experts(x, w, ids)
torch.cuda.synchronize()
print("NO ERROR")
"""


@pytest.mark.parametrize("backend, T", [("triton", 1), ("triton", 100), ("grouped_mm", 100)])
def test_out_of_range_ids_fail_on_the_device(sm90, backend, T):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p))
    r = subprocess.run([sys.executable, "-c", _BAD_IDS, backend, str(T)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode != 0 and "NO ERROR" not in r.stdout, r.stdout + r.stderr[-2000:]
    assert "device-side assert" in r.stderr or "assert" in r.stderr.lower(), r.stderr[-2000:]
