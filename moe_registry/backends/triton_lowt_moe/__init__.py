"""``triton-lowt-moe``: this project's fused-MoE Triton kernels for decode-sized batches (T up to ~64),
weight-only: bf16/fp16, int4 (GPTQ / AWQ group scales, with or without zero points), NvFP4 and MXFP4
run with 16-bit activations, the 4-bit weights dequantized in registers next to the tensor-core dot.

Every fact below is a property of our own kernels (``kernels.py``, ``ops.py``), cited by function;
``verified_on`` names what the probe and the GPU tests confirmed on hardware.
"""

from __future__ import annotations

from moe_registry.registry import hookimpl
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, Condition, DeviceRule, FeatureSupport, HardwareStatus, QuantSupport, Requirement,
    RoutingSupport, ShapeRule,
)
from moe_registry.schemas.quant import QuantFamily, QuantKind

from ..triton_fused_moe import _ACT as _FUSED_ACT
from ..triton_fused_moe import codes as C

_K = "moe_registry/backends/triton_lowt_moe/kernels.py"
_GV = "moe_registry/backends/triton_lowt_moe/gemv.py"
_OPS = "moe_registry/backends/triton_lowt_moe/ops.py"
_EPI = f"{_K} _activation (run-time code, GEMM1 accumulators in float32; the maths of triton_fused_moe._activate)"
_PROBE = "docs/verification/h100-lowt-probe.json"  # moe-registry probe --quick, NVIDIA H100 80GB HBM3, 2026-12-07
_VERIFIED = ("sm90",)  # every declared activation x scheme (and biases, router weight on input) passed in _PROBE
_BENCH = "benchmarks/results/lowt-h100/lowt-bench.json"  # benchmarks/bench_lowt.py, same H100 session

# The activation maths and codes are triton-fused-moe's (one _activate); silu_clamp runs as its swigluoai.
_ACT = {**_FUSED_ACT, Activation.SILU_CLAMP: (C.ACT_SWIGLUOAI, (
    "the swigluoai epilogue with alpha 1, up offset 0, [gate; up] rows (triton_fused_moe/ops.py epilogue_for): "
    "silu(min(gate, L)) * clamp(up)"))}
_FOUR_BIT = (QuantKind.INT4_W4A16, QuantKind.NVFP4, QuantKind.NVFP4_W4A16, QuantKind.MXFP4)
_UNPACK = ("moe_registry/backends/triton_lowt_moe/unpack.py _unpack (PTX: int4 codes + magic exponent, e2m1 bits "
           f"times 2^-126 fixed by mul.bf16x2) and _half_multipliers; {_OPS} pack_weight")
_A16 = "run weight-only with 16-bit activations (W4A16), as vLLM 0.33 runs NvFP4 on SM90 (Marlin, Humming)"

DECLARATION = BackendCapability(
    id="triton-lowt-moe",
    name="Triton low-T fused MoE (moe-registry)",
    provider="moe-registry (Triton >= 3.4 kernels)",
    description="Decode-sized fused MoE: a few tokens run as batched GEMVs on the CUDA cores (a program per "
                "pair and row tile; GEMM2's pairs summed by each row tile's last program); more tokens read each used expert's "
                "weight tile once for all its tokens in a tensor-core dot (experts found by an in-kernel "
                "histogram, no sort and no host sync); 4-bit weights dequantized in registers, the activation "
                "fused into GEMM1, the router-weighted top-k sum fused into GEMM2; large batches sort pairs into "
                "expert blocks first. Capturable in CUDA graphs.",
    kernel="moe_registry.backends.triton_lowt_moe.kernels.lowt_moe_kernel",
    adapter="moe_registry.backends.triton_lowt_moe.kernel:TritonLowTExperts",
    devices=(DeviceRule(sm=(90,), source=(
        "moe_registry/backends/triton_lowt_moe/unpack.py _int4_asm / _e2m1_asm: PTX mul.rn.bf16x2 / sub.rn.bf16x2 need "
        "sm_90; written and tuned for Hopper only (tiles of 16 rows per warp for mma / wgmma); other architectures "
        "are not claimed")),),
    dtypes=("bf16", "fp16"),
    activations={act: ActivationImpl(kernel_name=f"{_K} _activation code {code}", kernel_value=code,
                                     source=f"{_EPI}: {what}", verified_on=_VERIFIED)
                 for act, (code, what) in _ACT.items()},
    quant=(
        QuantSupport(kind=QuantKind.BF16, dtypes=("bf16",), verified_on=_VERIFIED,
                     source=f"{_K} _kstep FMT_16BIT: bf16 tl.dot, float32 accumulate"),
        QuantSupport(kind=QuantKind.FP16, dtypes=("fp16",), verified_on=_VERIFIED,
                     source=f"{_K} _kstep FMT_16BIT: fp16 tl.dot, float32 accumulate"),
        QuantSupport(kind=QuantKind.INT4_W4A16, group_sizes=(-1, 16, 32, 64, 128, 256), zero_point=True,
                     verified_on=_VERIFIED, source=(
                         f"{_UNPACK}: GPTQ / AWQ layout (Int4GroupTensor), uint4 codes minus 8 or the zero point, "
                         f"group scale exact per step (groups >= 128) or in the layer dtype (smaller groups); "
                         f"act-order (g_idx) is not run: pack_weight refuses it")),
        QuantSupport(kind=QuantKind.NVFP4_W4A16, dtypes=("bf16",), verified_on=_VERIFIED, source=(
            f"{_UNPACK}: e2m1 x e4m3 per 16 (exact in bf16) x 2^10 / global scale per expert")),
        QuantSupport(kind=QuantKind.NVFP4, dtypes=("bf16",), note=_A16, verified_on=_VERIFIED, source=(
            f"{_UNPACK}: NvFp4Tensor weights; activations stay bf16")),
        QuantSupport(kind=QuantKind.MXFP4, dtypes=("bf16",), verified_on=_VERIFIED, source=(
            f"{_UNPACK}: e2m1 x e8m0 per 32 (2^(e-127) as bf16; e = 0 reads as 0)")),
    ),
    shape_rules=tuple(
        ShapeRule(dimension=dim, multiple_of=64, when=Condition(quant=_FOUR_BIT), source=(
            f"{_OPS} split_half_blocks: a K step's two halves hold whole 32-element halves, the last step too "
            f"({dim} is a GEMM's K)"))
        for dim in ("hidden", "intermediate")),
    routing=RoutingSupport(precomputed=True, source="the adapter takes topk_ids / topk_weights"),
    features=FeatureSupport(
        bias=True, apply_router_weight_on_input=True, swigluoai_params=True, cuda_graphs=True, verified_on=_VERIFIED,
        nondeterministic=(
            f"above 64 tokens ({_OPS} default_config: pairs sorted into expert blocks) GEMM2 adds each token's "
            f"router-weighted expert outputs into a float32 accumulator with atomics in no fixed order, so repeated "
            f"forwards differ in the last bits (relative 5.4e-6 / 5.2e-6 measured on the H100 for int4 / NvFP4, "
            f"docs/verification/h100-graph-capture-e593d2a.txt); up to 64 tokens the partial sums are added by "
            f"the last program of each tile in a fixed order ({_K} lowt_moe_kernel FINISH), or, for a few tokens "
            f"({_OPS} GEMV_FOR), summed in pair order by the last program of each row tile ({_GV} gemv2_kernel): "
            f"reproducible by "
            f"construction (tests/test_triton_lowt_moe_cpu.py repeats the bits in the interpreter; on the H100 "
            f"test_gemv_configs_every_format repeated the GEMV kernels' bits, docs/verification/"
            f"h100-lowt-gemv-371dfc1.log; the dot kernels' test_k_split_configs_repeat_their_bits is written, its "
            f"run not yet recorded)"),
        source=(f"{_K} lowt_moe_kernel / lowt_token_kernel HAS_BIAS / ROUTED_ON_INPUT / swigluoai params; {_OPS} "
                f"fused_experts: shapes from metadata only, no host sync; tests/gpu/test_triton_lowt_moe_gpu.py "
                f"test_no_host_sync_in_a_forward passed on the H100 (docs/verification/h100-lowt-gpu-tests.log); "
                f"graphed == eager on the H100 for bf16 at every bucket, NvFP4 at T <= 4, int4 at T <= 2 "
                f"(docs/verification/h100-graph-capture-e593d2a.txt, the other T stopped by the test's old "
                f"eager-reproducibility precondition); test_graphed_experts_match_eager (int4) failed there and again "
                f"at 77375fe on a TypeError of the test itself (a repeated keyword argument: no kernel ran; "
                f"docs/verification/h100-gpu-tests-77375fe.log), since fixed")),
    requirements=(Requirement(kind="package", name="triton", package="triton", import_name="triton",
                              hint="pip install triton (ships with CUDA builds of torch)",
                              source=f"{_K} imports triton"),),
    # Just above the reference and below every other backend: measured on the H100 slower than humming / marlin
    # (4-bit) from T = 4-8 and on Mixtral, at parity with vLLM's fused_experts (bf16) from T = 2 (benchmarks/README.md,
    # lowt-notes.md). Where it was faster (T = 1-2 on Gemma 4 NvFP4, 1-4 on Qwen3-30B int4 g128, Gemma 4 NvFP4 at
    # T = 512) the measured policy picks it from the cost table benchmarks/results/lowt-h100-gemv/costs.json; a
    # declared priority would move the whole family at every T.
    priority={QuantFamily.UNQUANTIZED: 5, QuantFamily.INT4: 5, QuantFamily.NVFP4: 5, QuantFamily.MXFP4: 5},
    hardware=(HardwareStatus(devices="sm90", status="verified", record=_PROBE, note=(
        "2026-12-07, NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, triton 3.6.0, main at e593d2a: probe (quick) 180 "
        "declared combinations passed (9 activations x bf16 / fp16 / int4 g128, g64 / NvFP4 / NvFP4 W4A16 / MXFP4 x "
        "aligned T=16, T=1, I=704; biases, router weight on input), max rel err 3.8e-3, 150 undeclared refused, 0 "
        "drift; int4 zero points are not in the probe: bench_lowt.py's check at the Mixtral AWQ shape (T 1 / 16 / 64, "
        f"rel err <= 2.6e-3, {_BENCH}); tests/gpu/test_triton_lowt_moe_gpu.py stopped by its 140 s limit after 35 of "
        "37 tests: 34 passed, test_graphed_experts_match_eager failed (no text: "
        "docs/verification/h100-lowt-gpu-tests.log). Same card and versions, tree 0242030 (K split and the "
        "finishing GEMM2, today's kernels): bench_lowt.py's check of today's default configs on all five layers at "
        "T 1 / 16 / 64, rel err <= 2.7e-3 (benchmarks/results/lowt-h100-split/bench.log); GPU tests: 35 passed, "
        "none failed, before the call's limit (names not recorded). Tree 371dfc1, same card and versions: the GEMV "
        "kernels (today's default for a few tokens) in every weight format at four tilings (T 1 / 2 / 5 / 16, each "
        "forward repeating its bits), the benchmark shapes, swigluoai with biases, router weight on input, a bad id "
        "stopping the stream, and graphed == eager with that tree's default configs: 18 GPU tests passed "
        "(docs/verification/h100-lowt-gemv-371dfc1.log); "
        "bench_lowt.py's checks of every GEMV tiling on all five layers, rel err <= 3.7e-3 "
        "(benchmarks/results/lowt-h100-gemv/bench.log). Tree 5857230 (GEMV the default for a few tokens): every "
        "format x two activations at T 1 / 2 / 5 / 200, no host sync, GEMV epilogues, bad ids: 27 passed; graphed "
        "vs eager within the reference tolerance where a T is padded to a bucket with another default "
        "(docs/verification/h100-lowt-default-gemv-5857230.log). The configs beside the default written after it "
        f"({_OPS} Config gemm2='token' with the GEMV kernels, pdl, pairs, slots), tree 343abfb, same card and "
        "versions: bench_lowt.py's checks against the reference on four layers at T 1 / 16 / 64, rel err <= 7.0e-3 "
        "(benchmarks/results/lowt-h100-variants/run1-343abfb/bench.log); their GPU tests (bit repeats, PDL graphed "
        "== eager) ran out of memory beside the bench's warm-up and have not passed (no GPU was lent again). "
        f"{_OPS} Config whole (every K step's loads first, 2026-12-08; GEMM2's before its PDL wait since e0e9dfe): "
        "interpreter tests only, never run on a GPU. Trees 5e8eaa9 to 6bf3430 did not compile the 16-bit GEMV kernels "
        "with triton 3.6 (fixed in 898cfe6); since then every launch of the forward in six formats x eleven configs "
        "compiles for sm_90 with triton 3.6 on a CPU (tests/sm90_compile.py), none of it run")),),
)


@hookimpl
def moe_registry_backends() -> list[BackendCapability]:
    return [DECLARATION]
