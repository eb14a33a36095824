"""triton-lowt-moe on an SM90 GPU against the reference (``pytest -m gpu tests/gpu``): the PTX
unpacking path, which the CPU tests (Triton's interpreter) cannot run.

Every declared activation x weight format (bf16, fp16, int4 g128 symmetric, int4 g64 with zero points,
NvFP4, MXFP4) on a medium shape whose intermediate leaves a partial last K step; T = 1 / 2 / 5 / 64
(per expert slot, K split, partial sums finished by the tile's last program) and 200 (pairs sorted into
expert blocks); the K-split configs against each other, each repeating its own bits; swigluoai with
biases; router weight on the input; the benchmark's layer shapes (Gemma 4 NvFP4, Qwen3-30B int4,
Mixtral AWQ int4); then what decode needs: no host sync, CUDA-graph replay equal to eager, and an
out-of-range expert id failing the stream (in a subprocess: it ends the CUDA context).
Tolerance 2e-2 (bf16 rounding of the intermediate and output, as for Humming and Marlin); fp16 1e-2.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from moe_registry.backends.reference.kernel import ReferenceExperts  # noqa: E402
from moe_registry.backends.triton_lowt_moe import DECLARATION  # noqa: E402
from moe_registry.execution.patterns import relative_error, routing_pattern  # noqa: E402
from moe_registry.execution.weights import random_weights, torch_dtype  # noqa: E402
from moe_registry.schemas.activation import Activation, SiluClampParams, SwigluOAIParams  # noqa: E402
from moe_registry.schemas.layer import LayerSpec  # noqa: E402

pytestmark = pytest.mark.gpu

MEDIUM = dict(num_experts=16, top_k=4, hidden_size=1024, intermediate_size=704)
SCHEMES = {
    "bf16": dict(quant="bf16"),
    "fp16": dict(quant="fp16", dtype="fp16"),
    "int4-g64": dict(quant={"kind": "int4_w4a16", "group_size": 64}),  # 704 = 11 x 64
    "int4-g64-zp": dict(quant={"kind": "int4_w4a16", "group_size": 64, "zero_point": True}),
    "int4-g128-aligned": dict(quant={"kind": "int4_w4a16", "group_size": 128}, intermediate_size=768),
    "nvfp4": dict(quant="nvfp4_w4a16"),
    "mxfp4": dict(quant="mxfp4"),
}
BENCH = {
    "gemma4-nvfp4": dict(num_experts=128, top_k=8, hidden_size=2816, intermediate_size=704, activation="gelu_tanh",
                         quant="nvfp4"),
    "qwen3-int4": dict(num_experts=128, top_k=8, hidden_size=2048, intermediate_size=768, activation="silu",
                       quant={"kind": "int4_w4a16", "group_size": 128}),
    "mixtral-awq": dict(num_experts=8, top_k=2, hidden_size=4096, intermediate_size=14336, activation="silu",
                        quant={"kind": "int4_w4a16", "group_size": 128, "zero_point": True}),
}


def _tol(layer: LayerSpec) -> float:
    return 1e-2 if layer.dtype == "fp16" else 2e-2


def _inputs(layer: LayerSpec, T: int, dev, kind: str, seed: int):
    gen = torch.Generator(device=dev).manual_seed(seed)
    w, ids = routing_pattern(T, layer.num_experts, layer.top_k, device=dev, kind=kind, generator=gen)
    x = torch.randn(T, layer.hidden_size, device=dev, generator=gen).to(torch_dtype(layer))
    return x, w, ids


def _build(layer: LayerSpec, dev, seed: int = 0):
    from moe_registry.backends.triton_lowt_moe.kernel import TritonLowTExperts

    weights = random_weights(layer, device=dev, dtype=torch_dtype(layer), seed=seed)
    return TritonLowTExperts(layer, weights), ReferenceExperts(layer, weights)


def _check(layer: LayerSpec, dev, tokens=(1, 2, 5, 64, 200), kinds=("imbalanced", "empty")):
    experts, ref = _build(layer, dev)
    errs = {}
    for T in tokens:
        for kind in kinds:
            x, w, ids = _inputs(layer, T, dev, kind, seed=T)
            errs[(T, kind)] = relative_error(experts(x, w, ids), ref(x, w, ids))
    tol = _tol(layer)
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f"{layer.describe()}: relative errors above {tol}: {bad}"


@pytest.mark.parametrize("act", [a for a in DECLARATION.activations if a not in (Activation.SWIGLUOAI,
                                                                                 Activation.SILU_CLAMP)])
def test_every_activation(sm90, act):
    # The activation is a run-time code: one compiled kernel per format serves them all.
    _check(LayerSpec(**MEDIUM, **SCHEMES["nvfp4"], activation=act), sm90, tokens=(1, 2, 5, 200), kinds=("imbalanced",))


@pytest.mark.parametrize("act", ["silu", "relu2_no_mul"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_format(sm90, scheme, act):
    _check(LayerSpec(**{**MEDIUM, **SCHEMES[scheme]}, activation=act), sm90, tokens=(1, 2, 5, 200))


@pytest.mark.parametrize("scheme", ["bf16", "mxfp4", "int4-g64-zp"])
@pytest.mark.parametrize("interleaved", [True, False])
def test_swigluoai_with_biases(sm90, interleaved, scheme):
    params = SwigluOAIParams(alpha=1.702, limit=7.0, up_offset=1.0, interleaved=interleaved)
    _check(LayerSpec(**{**MEDIUM, **SCHEMES[scheme]}, activation="swigluoai", activation_params=params, bias=True),
           sm90, tokens=(1, 2, 64))


def test_silu_clamp(sm90):
    _check(LayerSpec(**{**MEDIUM, **SCHEMES["nvfp4"]}, activation="silu_clamp",
                     activation_params=SiluClampParams(limit=1.0)), sm90, tokens=(1, 64))


def test_router_weight_on_input(sm90):
    _check(LayerSpec(**{**MEDIUM, "top_k": 1, **SCHEMES["int4-g128-aligned"]}, apply_router_weight_on_input=True),
           sm90, tokens=(2, 5, 64))


@pytest.mark.parametrize("name", list(BENCH))
def test_bench_shapes(sm90, name):
    _check(LayerSpec(name=name, **BENCH[name]), sm90, tokens=(1, 16, 64, 300), kinds=("imbalanced",))
    torch.cuda.empty_cache()


def test_no_host_sync_in_a_forward(sm90):
    experts, _ = _build(LayerSpec(**MEDIUM, **SCHEMES["nvfp4"]), sm90)
    for T in (1, 2, 20, 600):  # GEMV kernels, per expert slot, sorted blocks (ops.default_config)
        x, w, ids = _inputs(experts.layer, T, sm90, "imbalanced", seed=T)
        experts(x, w, ids)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            experts(x, w, ids)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_ptx_unpacking_is_exact_on_the_device(sm90):
    # The PTX of unpack.py run by the GPU on every byte value (4 copies, random multipliers): NvFP4, MXFP4 and
    # int4 (plain, and pre-scaled with zero points in bf16 and fp16) equal, bit for bit, the formats' values times
    # the multipliers (tests/test_triton_lowt_moe_cpu.py checks the same against an emulation of the PTX).
    from moe_registry.backends.triton_lowt_moe import codes as F
    from moe_registry.formats._common import E2M1_LUT

    from _unpack_probe import unpack_probe  # imports triton: not at collection, which precedes the interpreter tests

    gen = torch.Generator().manual_seed(7)
    N = 1024
    w = torch.arange(N, dtype=torch.int32).remainder(256).to(torch.uint8)
    lo_q, hi_q = (w & 0xF).long(), (w >> 4).long()
    e2m1 = E2M1_LUT.float()
    e4m3 = torch.randint(1, 127, (N,), generator=gen, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    expo = torch.randint(100, 150, (N,), generator=gen)
    zq = torch.randint(0, 16, (N,), generator=gen).float()
    scale = torch.randn(N, generator=gen) * 0.01
    cases = {  # name: (FMT, PRESCALE, F16, multiplier, z + magic, expected lo, expected hi), all float32
        "nvfp4": (F.FMT_NVFP4, False, False, e4m3 * 2.0**116, e4m3, e2m1[lo_q] * e4m3 * 2.0**-10,
                  e2m1[hi_q] * e4m3 * 2.0**-10),
        "mxfp4": (F.FMT_MXFP4, False, False, torch.exp2(expo - 127.0), e4m3, e2m1[lo_q] * torch.exp2(expo - 127.0),
                  e2m1[hi_q] * torch.exp2(expo - 127.0)),
        "int4": (F.FMT_INT4, False, False, scale, zq, lo_q + 128.0, hi_q + 128.0),
    }
    for f16, dt in ((False, torch.bfloat16), (True, torch.float16)):
        s = scale.to(dt).float()
        cases[f"int4 pre-scaled {dt}"] = (F.FMT_INT4, True, f16, s, zq + (1024.0 if f16 else 128.0),
                                          (lo_q - zq) * s, (hi_q - zq) * s)
    for name, (fmt, prescale, f16, mult, zc, want_lo, want_hi) in cases.items():
        dt = torch.float16 if f16 else torch.bfloat16
        lo = torch.empty(N, dtype=dt, device=sm90)
        hi = torch.empty(N, dtype=dt, device=sm90)
        unpack_probe[(1,)](w.to(sm90), mult.to(dt).to(sm90), zc.to(dt).to(sm90), lo, hi, FMT=fmt, PRESCALE=prescale,
                            F16=f16, N=N, num_warps=4)
        assert torch.equal(lo.cpu(), want_lo.to(dt)), name
        assert torch.equal(hi.cpu(), want_hi.to(dt)), name


def test_graphed_experts_match_eager(sm90):
    from moe_registry.execution.graphs import GraphedExperts

    experts, _ = _build(LayerSpec(**{**MEDIUM, **SCHEMES["int4-g128-aligned"]}), sm90)
    buckets = (1, 4, 16, 64)
    graphed = GraphedExperts(experts, buckets=buckets)
    for T in (1, 2, 3, 4, 16, 50, 64, 65):
        x, w, ids = _inputs(experts.layer, T, sm90, "imbalanced", seed=T)
        want = experts(x, w, ids).clone()
        got = graphed(x, w, ids)
        err = relative_error(got, want)
        # At a bucket's own size the graph replays eager's kernels (sums in a fixed order: graph == eager); a T
        # padded up to a bucket runs that bucket's config, which may be other kernels (here T = 2: the GEMV
        # kernels eagerly, the dot kernels at bucket 4; measured 3.7e-3 on the H100): within the tolerance of the
        # reference. 65 pads to no bucket: eager.
        assert err < (1e-3 if T in buckets or T > buckets[-1] else _tol(experts.layer)), (T, err)


@pytest.mark.parametrize("scheme", ["nvfp4", "int4-g128-aligned", "bf16"])
def test_k_split_configs_repeat_their_bits(sm90, scheme):
    # No split, one K step per program, GEMM2 per token: each within the tolerance of the reference, and each
    # forward with the same inputs gives the same bits (partial sums added in a fixed order, no atomics).
    from moe_registry.backends.triton_lowt_moe import ops

    _each_config_repeats_its_bits(LayerSpec(**{**MEDIUM, **SCHEMES[scheme]}), sm90, (1, 4, 16, 64), (
        None, ops.Config(bm=8, split1=1, split2=1), ops.Config(bm=8, split1=64, split2=64),
        ops.Config(bm=8, gemm2="token")))


def _each_config_repeats_its_bits(layer: LayerSpec, dev, tokens, configs) -> None:
    """Each config within the tolerance of the reference at every T, each forward with the same inputs giving
    the same bits."""
    experts, ref = _build(layer, dev)
    for T in tokens:
        x, w, ids = _inputs(layer, T, dev, "imbalanced", seed=T)
        want = ref(x, w, ids)
        for cfg in configs:
            experts.config = cfg
            out = experts(x, w, ids)
            assert torch.equal(experts(x, w, ids), out), (T, cfg)
            assert relative_error(out, want) <= _tol(layer), (T, cfg, relative_error(out, want))


GEMV = dict(gemv=True, warps=4, warps2=4)
GEMV8 = dict(gemv=True, bn1=8, bn2=8, warps=2, warps2=2, unroll=4)  # the T = 1 default's tiling


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_gemv_configs_every_format(sm90, scheme):
    # The GEMV kernels (a program per pair and row tile, CUDA-core products, PTX unpacking): within the tolerance
    # at every row tiling and unroll, each forward repeating its bits (GEMM2's pairs summed in a fixed order).
    from moe_registry.backends.triton_lowt_moe import ops

    _each_config_repeats_its_bits(LayerSpec(**{**MEDIUM, **SCHEMES[scheme]}), sm90, (1, 2, 5, 16), [
        *(ops.Config(**GEMV, bn1=bn, bn2=bn, unroll=unroll) for bn, unroll in ((16, 1), (16, 2), (32, 2), (8, 4))),
        # GEMM2 per token (its k experts' steps as one loop), with and without programmatic dependent launch
        *(ops.Config(**GEMV8, gemm2="token", unroll2=u2, pdl=pdl) for u2, pdl in ((4, False), (4, True), (3, True))),
        ops.Config(**GEMV, bn1=16, bn2=16, gemm2="token", pdl=True),
        # GEMM2 per pair launched as a programmatic dependent of GEMM1
        ops.Config(**GEMV8, pdl=True),
        # products chained in 16-bit pairs for a loop iteration (fma.rn.bf16x2 / f16x2), per pair and per token
        ops.Config(**GEMV8, pairs=True),
        ops.Config(**GEMV8, pdl=True, pairs=True),
        ops.Config(**GEMV, bn1=16, bn2=16, unroll=2, pdl=True, pairs=True),
        ops.Config(**GEMV8, gemm2="token", pdl=True, pairs=True),
        ops.Config(**GEMV, bn1=16, bn2=16, unroll=2, gemm2="token", pdl=True, pairs=True),
        # every K step as straight-line code, its loads first (H = 1024: 4 whole steps; I = 704: 2 and a partial one)
        ops.Config(**GEMV8, pdl=True, whole=True),
        ops.Config(**GEMV8, pdl=True, pairs=True, whole=True),
        ops.Config(**GEMV, bn1=16, bn2=16, unroll=2, pdl=True, pairs=True, whole=True),
        # registers capped (GEMM2 spills: 40, the one-wave cap of Gemma 4 at T = 1, where whole takes 72)
        ops.Config(**GEMV8, pdl=True, pairs=True, whole=True, maxnreg=96, maxnreg2=40),
        # GEMM1 over an expert's pairs, 1 / 2 / 4 per pass
        *(ops.Config(gemv=True, bn1=8, bn2=8, warps=2, warps2=2, unroll=2, gemm2="token", pdl=True, pairs=True,
                     slots=True, bm=bm) for bm in (1, 2, 4))])


@pytest.mark.parametrize("scheme", ["nvfp4", "int4-g128-aligned", "bf16"])
def test_gemv_programmatic_launch_graphed_equals_eager(sm90, scheme):
    # GEMM2 (per token or per pair) launched as a programmatic dependent of GEMM1 (griddepcontrol): captured in a
    # CUDA graph, the replay gives eager's bits at each bucket's own size, back to back, so GEMM2 never reads a
    # stale intermediate (nor per pair stale arrival counters).
    from moe_registry.backends.triton_lowt_moe import ops
    from moe_registry.execution.graphs import GraphedExperts

    experts, ref = _build(LayerSpec(**{**MEDIUM, **SCHEMES[scheme]}), sm90)
    for gemm2, pairs, whole in (("token", False, False), ("token", True, False), ("expert", False, False),
                                ("expert", True, False), ("expert", True, True)):
        experts.config = ops.Config(**GEMV8, gemm2=gemm2, pdl=True, pairs=pairs, whole=whole)
        graphed = GraphedExperts(experts, buckets=(1, 2, 4))
        for T in (1, 2, 4, 1):
            x, w, ids = _inputs(experts.layer, T, sm90, "imbalanced", seed=T)
            want = experts(x, w, ids).clone()
            outs = [graphed(x, w, ids).clone() for _ in range(3)]
            assert all(torch.equal(o, want) for o in outs), (gemm2, pairs, whole, T,
                                                             [relative_error(o, want) for o in outs])
            assert relative_error(want, ref(x, w, ids)) <= _tol(experts.layer), (gemm2, pairs, whole, T)


@pytest.mark.parametrize("name", list(BENCH))
def test_gemv_bench_shapes_and_epilogues(sm90, name):
    from moe_registry.backends.triton_lowt_moe import ops

    layer = LayerSpec(name=name, **BENCH[name])
    experts, ref = _build(layer, sm90)
    for cfg in (ops.Config(**GEMV, bn1=16, bn2=16), ops.Config(**GEMV8, pdl=True, pairs=True, whole=True)):
        experts.config = cfg  # whole: Mixtral's K of 4096 is 16 steps (the most), its 14336 keeps the loop
        for T in (1, 4):
            x, w, ids = _inputs(layer, T, sm90, "imbalanced", seed=T)
            assert relative_error(experts(x, w, ids), ref(x, w, ids)) <= _tol(layer), (T, cfg)
    del experts, ref
    torch.cuda.empty_cache()


def test_gemv_epilogues(sm90):
    from moe_registry.backends.triton_lowt_moe import ops

    params = SwigluOAIParams(alpha=1.702, limit=7.0, up_offset=1.0, interleaved=True)
    for extra in (dict(**SCHEMES["mxfp4"], activation="swigluoai", activation_params=params, bias=True),
                  dict(**SCHEMES["int4-g128-aligned"], top_k=1, apply_router_weight_on_input=True)):
        small = LayerSpec(**{**MEDIUM, **extra})
        experts, ref = _build(small, sm90)
        experts.config = ops.Config(**GEMV, bn1=32, bn2=16)
        x, w, ids = _inputs(small, 3, sm90, "imbalanced", seed=3)
        assert relative_error(experts(x, w, ids), ref(x, w, ids)) <= _tol(small), extra


_BAD_IDS = r"""
import sys, torch
from moe_registry.backends.triton_lowt_moe.kernel import TritonLowTExperts
from moe_registry.execution.weights import random_weights
from moe_registry.schemas.layer import LayerSpec
layer = LayerSpec(num_experts=16, top_k=4, hidden_size=256, intermediate_size=128, quant="nvfp4_w4a16")
experts = TritonLowTExperts(layer, random_weights(layer, device="cuda"))
T = int(sys.argv[1])
if sys.argv[2] == "gemv":
    from moe_registry.backends.triton_lowt_moe import ops
    experts.config = ops.Config(gemv=True, bn1=16, bn2=16, warps=4, warps2=4)
x = torch.randn(T, 256, device="cuda").to(torch.bfloat16)
w = torch.full((T, 4), 0.25, device="cuda")
ids = torch.arange(T * 4, device="cuda", dtype=torch.int32).view(T, 4) % 16
ids[0, 1] = 40  # out of range
experts(x, w, ids)
torch.cuda.synchronize()
print("NO ERROR")
"""


@pytest.mark.parametrize("T, kernels", [(1, "default"), (8, "default"), (100, "default"), (2, "gemv")])
def test_out_of_range_ids_fail_on_the_device(sm90, T, kernels):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p))
    r = subprocess.run([sys.executable, "-c", _BAD_IDS, str(T), kernels], capture_output=True, text=True, timeout=180,
                       env=env)
    assert r.returncode != 0 and "NO ERROR" not in r.stdout, r.stdout + r.stderr[-2000:]
