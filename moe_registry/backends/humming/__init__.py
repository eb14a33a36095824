"""Humming (package ``humming-kernels`` 0.1.19): the MoE GEMMs vLLM 0.33 runs as ``HummingIndexedExperts``.

Humming JIT-compiles its kernels with NVRTC on first use (one kernel per tuning interval, compiled
in parallel, cached on disk in ``$HUMMING_CACHE_DIR``, default ``~/.humming/cache``). vLLM 0.33 ranks
it ahead of Marlin on SM90 only (``quantization/utils/humming/priority.py`` ``prefers_humming``:
``_HUMMING_PREFERRED_CAPABILITIES = {90}``; ``prioritize_humming`` in ``oracle/nvfp4.py``,
``oracle/int_wna16.py``, ``oracle/mxfp4.py``).

Activations: vLLM's NvFP4 / int4 / MXFP4 Humming paths build a 16-bit input schema
(``utils/humming/moe.py`` ``convert_to_humming_moe_kernel_format``: ``VLLM_HUMMING_INPUT_QUANT_CONFIG``
unset -> ``HummingInputSchema()``), so the GEMMs run with bf16/fp16 activations (W4A16). Even when
e2m1 activations are asked for, ``check_and_fallback_input_schema`` (``utils/humming/schema.py``)
tries e2m1 -> fp8 e4m3 -> fp8 e3m4 -> int8 -> 16-bit, and on SM90 every low-bit candidate fails
Humming's own ``is_humming_schema_compatible`` for group-16 NvFP4 weights (e2m1/e3m4 activations need
SM100; 8-bit activations need weight groups >= 32; int8 needs integer or MXFP4 weights), so NvFP4
ends at 16-bit activations there; and for groupwise weights with 8-bit activations it prefers W4A16
("prefer wna16 for groupwise weight or groupwise input"). This declaration states exactly that.
"""

from __future__ import annotations

import importlib.util

from moe_registry.registry import hookimpl
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, DeviceRule, EngineNames, FeatureSupport, HardwareStatus, PriorityOverride, QuantSupport,
    Requirement, RoutingSupport, ShapeRule,
)
from moe_registry.schemas.quant import QuantFamily, QuantKind

_V = "vLLM 0.33.0"
_EXPERTS = f"{_V} model_executor/layers/fused_moe/experts/fused_humming_moe.py"
_MOE = f"{_V} quantization/utils/humming/moe.py"
_SCHEMA = f"{_V} quantization/utils/humming/schema.py check_and_fallback_input_schema"
_HM = "humming-kernels 0.1.19"
_COMPAT = f"{_HM} humming/schema/humming.py is_humming_schema_compatible"
_FUSED = (f"fused into Humming's process_input kernel that quantizes/prepares GEMM2's input, as vLLM does "
          f"({_EXPERTS} HummingExpertsBase.process_input -> humming.forward.may_process_input with "
          f"{_V} quantization/utils/humming/activation.py get_humming_activation); the expression is compiled "
          f"in fp32 by NVRTC (humming/kernel/process_input.py ProcessInputActivation)")
_A16 = ("activations run as 16-bit (W4A16), as vLLM 0.33 does: its Humming path builds a 16-bit input schema on "
        "every GPU (e2m1 activations would need SM100+, 8-bit ones weight groups >= 32)")

_RECORD = "docs/verification/h200-humming.txt"
_GRAPH_RECORD = "docs/verification/h100-decode.txt"
#: Measured on the H200 (2026-11-29, record above): first forward of a freshly built layer with a cold
#: cache, i.e. both GEMMs' tuning intervals and the activation kernel compiled by NVRTC in parallel.
# Measured on the H200, 2026-11-29 (docs/verification/h200-humming.txt): the first forward of a layer shape
# JIT-compiles its kernels with NVRTC: Gemma 4 NvFP4 15.0 s, Qwen3-30B-A3B int4 g128 15.1 s / NvFP4 15.7 s,
# Mixtral int4 zp 21.6 s, gpt-oss-120b MXFP4 14.4 s; 0.7 s from a warm cache ($HUMMING_CACHE_DIR, default
# ~/.humming/cache, kept between runs).
JIT_COST = "14-22 s per layer shape cold (H200), 0.7 s from $HUMMING_CACHE_DIR"
_PRIORITY_SRC = ("vLLM 0.33.0 model_executor/layers/quantization/utils/humming/priority.py L10-48: prefers_humming() "
                 "is true for compute capability 90 only; prioritize_humming() moves Humming directly ahead of Marlin "
                 "(oracle/int_wna16.py, oracle/nvfp4.py, oracle/mxfp4.py apply it)")
# Measured, not vLLM's order (vLLM 0.33 ranks OpenAI's triton_kernels, then FlashInfer CUTLASS, ahead of Humming for
# gpt-oss): above both on SM90 (90 > oai-triton-kernels 85 > flashinfer-cutlass 80).
_MXFP4_SM90 = ("benchmarks/results/decode-h100/decode_bench.json (issue 21, NVIDIA H100 80GB HBM3, 2026-12-07): at the "
               "gpt-oss-120b layer Humming is faster than oai-triton-kernels (vLLM's SM90 default) at every decode T from "
               "CUDA graphs (T=1 73 vs 133 us, T=64 600 vs 679 us) and at T=512 (932 vs 1190 us), slower only at T=4096 "
               "(2702 vs 2294 us); FlashInfer CUTLASS is not measurable on SM90 here (its JIT build takes > 40 min)")
# Listed, not "every Activation": a new id (silu_clamp) is declared only once kernel.activation_kwargs
# has its expression and a run verified it.
_FUSED_ACTIVATIONS = (Activation.SILU, Activation.GELU, Activation.GELU_TANH, Activation.SWIGLUOAI,
                      Activation.RELU2_NO_MUL, Activation.SILU_NO_MUL, Activation.GELU_NO_MUL,
                      Activation.GELU_TANH_NO_MUL)


def nvrtc_available() -> tuple[bool, str]:
    """Requirement probe (torch-free): Humming compiles with NVRTC from ``cuda-bindings``
    (``humming/jit/runtime.py`` ``_get_compiler``: NVRTCCompiler when ``cuda.bindings.nvrtc`` imports,
    else nvcc)."""
    try:
        found = importlib.util.find_spec("cuda.bindings.nvrtc") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return True, "cuda.bindings.nvrtc importable (Humming compiles its kernels on first use)"
    return False, "cuda.bindings.nvrtc is not importable (pip install cuda-bindings; Humming needs NVRTC or nvcc)"


DECLARATION = BackendCapability(
    id="humming",
    name="Humming MoE (vLLM 0.33 HummingIndexedExperts)",
    provider=f"{_HM} (NVRTC JIT), driven as {_V} drives it",
    description="Tokens sorted into expert blocks (moe_align_block_size), indexed Humming GEMM1 on quantized weights, "
                "activation fused into Humming's input-processing kernel, indexed GEMM2, weighted top-k sum.",
    kernel="humming.forward.humming_forward (gemm_type indexed) + humming.forward.may_process_input",
    adapter="moe_registry.backends.humming.kernel:HummingExperts",
    devices=(DeviceRule(min_sm=75, source=f"{_EXPERTS} _supports_current_device: CUDA capability >= 7.5; "
                                          f"{_V} quantization/humming.py HummingConfig.get_min_capability = 75"),),
    # c_dtype float16 / bfloat16 only (humming/config/mma.py get_dtype_compatibility_error); bf16 needs
    # SM80 (schema/humming.py dtype_min_sm_version_map).
    dtypes=("bf16", "fp16"),
    # Each one ran on the H200 in the probe record (docs/verification/h200-humming-probe.json) and the
    # model-shape tests (silu, gelu_tanh, swigluoai).
    activations={**{act: ActivationImpl(kernel_name="humming process_input (fused expression)", source=_FUSED,
                                        verified_on=("sm90",))
                    for act in _FUSED_ACTIVATIONS},
                 # DeepSeek-V4's swiglu_limit: what vLLM 0.34.0 runs on Hopper (fused_moe/oracle/mxfp4.py
                 # select_deepseek_v4_mxfp4_moe_backend: prioritize_humming puts HUMMING first on SM90; the clamp
                 # comes through the activation config). Planning-only until the adapter has the expression.
                 Activation.SILU_CLAMP: ActivationImpl(
                     kernel_name="humming process_input (clamped SiLU)", adapter_implemented=False,
                     source=(f"vLLM 0.34.0 model_executor/layers/fused_moe/oracle/mxfp4.py L461-485, L756-819; "
                             f"fused_moe/experts/fused_humming_moe.py L205-216 get_humming_activation(activation, "
                             f"activation_config); fused_moe/activation.py L165-197 ApplyMoEActivationConfig "
                             f"(clamp_limit = swiglu_limit); {_V} utils/humming/activation.py clamped-SiLU template"))},
    quant=(
        QuantSupport(kind=QuantKind.INT4_W4A16, group_sizes=(-1, 16, 32, 64, 128, 256), zero_point=True,
                     verified_on=("sm90",),
                     source=(f"{_EXPERTS} _supports_quant_scheme (kInt4Static, None) and uintN group/channel keys; "
                             f"{_COMPAT}: weight groups < 16 incompatible; zero points as uint4 codes "
                             f"({_HM} schema/humming.py HummingWeightSchema.has_zero_point); act-order not run: "
                             f"{_HM} schema/gptq.py GPTQWeightSchema.to_humming_schema asserts not desc_act")),
        QuantSupport(kind=QuantKind.NVFP4, note=_A16, verified_on=("sm90",), source=(
            f"{_EXPERTS} _supports_quant_scheme (kNvfp4Static, kNvfp4Dynamic); {_V} fused_moe/oracle/nvfp4.py "
            f"HUMMING branch -> {_MOE} convert_to_humming_moe_kernel_format(quant_method modelopt nvfp4) with a "
            f"16-bit HummingInputSchema; {_SCHEMA}; {_COMPAT} (e2m1 activations SM100+, 8-bit activations need "
            f"weight groups >= 32)")),
        QuantSupport(kind=QuantKind.NVFP4_W4A16, verified_on=("sm90",),
                     source=f"{_EXPERTS} _supports_quant_scheme (kNvfp4Static, None)"),
        QuantSupport(kind=QuantKind.MXFP4, verified_on=("sm90",), source=(
            f"{_EXPERTS} _supports_quant_scheme (kMxfp4Static, None); {_HM} schema/mxfp4.py Mxfp4WeightSchema "
            f"(e2m1, e8m0 scale per 32)")),
        # A DeepSeek-V4 checkpoint asks for MXFP8 activations; vLLM's DeepSeek-V4 oracle gives HUMMING 16-bit
        # ones (_backend_activation_key -> None). Planning-only: the adapter has not run this kind.
        QuantSupport(kind=QuantKind.MXFP4_MXFP8, adapter_implemented=False, note=(
            "runs MXFP4 x MXFP8 checkpoints with 16-bit activations, as vLLM 0.34's DeepSeek-V4 oracle gives "
            "HUMMING (W4A16)"), source=(
            "vLLM 0.34.0 model_executor/layers/fused_moe/oracle/mxfp4.py L488-507 _backend_activation_key (HUMMING "
            "-> None: BF16 activations), L756-819 select_deepseek_v4_mxfp4_moe_backend")),
        QuantSupport(kind=QuantKind.FP8, adapter_implemented=False, source=(
            f"{_EXPERTS} _supports_quant_scheme (kFp8StaticTensorSym, kFp8StaticTensorSym); {_HM} schema/fp8.py; "
            f"moe-registry's adapter does not convert Fp8Tensor weights yet")),
    ),
    shape_rules=(
        # Weights are int32 words of 32 / bits values along K (schema/humming.py get_tensors_attrs
        # "weight" (N, K*bits/32)); e2m1 bytes are viewed as int32 (schema/modelopt.py, mxfp4.py).
        ShapeRule(dimension="hidden", multiple_of=8, source=f"{_HM} schema/humming.py get_tensors_attrs: "
                                                            f"K packed 8 x 4-bit per int32 (GEMM1 K = hidden)"),
        ShapeRule(dimension="intermediate", multiple_of=8, source=f"{_HM} schema/humming.py get_tensors_attrs: "
                                                                  f"K packed 8 x 4-bit per int32 (GEMM2 K = intermediate)"),
    ),
    routing=RoutingSupport(precomputed=True, source=f"{_EXPERTS} HummingIndexedExperts.apply takes topk_ids / "
                                                    f"topk_weights and aligns them with moe_align_block_size"),
    features=FeatureSupport(
        bias=True, apply_router_weight_on_input=False, swigluoai_params=True, cuda_graphs=True, tensor_parallel=True,
        expert_parallel=True,
        nondeterministic=(
            "stream-K (humming-kernels 0.1.19 config.py use_stream_k=True, the default vLLM runs) adds a GEMM's K "
            "slices into the bf16 / fp16 output with atomics in no fixed order (include/humming/epilogue/"
            "gmem_writer.cuh: tma_reduce_add, atomic_reduce_add_f162 when slice_count > 3; humming's own "
            "testing/runner.py allows bf16 stream-K outliers for this), so repeated forwards differ by output-dtype "
            "roundings: two eager forwards of the Mixtral int4 g128 zero-point layer (E8 k2 H4096 I14336) at T=1 "
            "differed by 5.3e-3 to 5.5e-3 relative on the H100 (docs/verification/h100-gpu-tests-77375fe.log); "
            "the Gemma 4 NvFP4, Qwen3-30B int4 and gpt-oss MXFP4 layers repeated within 1e-6 there; "
            "use_batch_invariant=True turns stream-K off"),
        source=(
            f"{_EXPERTS}: humming_forward(bias=w1_bias / w2_bias), LayerConfig.has_bias; apply() asserts not "
            f"apply_router_weight_on_input; {_V} utils/humming/activation.py clamped-SiLU template takes limit, "
            f"alpha, beta and binary_interleaved / binary_split rows; _supports_parallel_config True; cuda_graphs: "
            f"the adapter's forward sizes everything from metadata (moe_align_block_size from _moe_C or the sync-free "
            f"torch one); tests/gpu/test_graph_capture_gpu.py: graphed == eager at every bucket for int4 g128 on the H100 "
            f"({_GRAPH_RECORD}; the other schemes were captured by bench there, their equality check not reached), "
            f"NvFP4 and int4 captured equal to eager by issue 21's raw capture (2026-12-07)")),
    requirements=(
        Requirement(kind="package", name="humming-kernels", package="humming-kernels", import_name="humming",
                    hint="pip install humming-kernels==0.1.19 (the moe-registry 'humming' extra; needs a CUDA torch and "
                         "cuda-bindings)",
                    source=f"{_V} utils/import_utils.py has_humming; PyPI humming-kernels 0.1.19 (Apache-2.0)"),
        Requirement(kind="jit_module", name="humming NVRTC JIT", probe="moe_registry.backends.humming:nvrtc_available",
                    build_cost=JIT_COST, hint="pip install cuda-bindings (NVRTC), or put nvcc on PATH",
                    source=f"{_HM} humming/jit/runtime.py KernelRuntime._get_compiler / compile_many; "
                           f"humming/utils/jit.py get_humming_cache_dir (HUMMING_CACHE_DIR)"),
    ),
    # vLLM puts Humming directly ahead of Marlin on SM90 only and keeps FlashInfer ahead of both
    # (oracle/nvfp4.py AVAILABLE_BACKENDS + prioritize_humming): FP4 above Marlin (60, whose FP4 path is
    # unverified) and torch-grouped-mm (30), below FlashInfer (80) and TRT-LLM-gen (100); INT4 below
    # Marlin (100) except on SM90 (the override below). Measured on the H200 (2026-11-29,
    # benchmarks/results/humming-h200/): int4 Qwen3-30B humming faster than Marlin at T <= 64 and 4096
    # (Marlin only between T~290 and ~630), AWQ Mixtral faster at 4 of 5 token counts; `--policy measured`
    # with those cost tables picks Marlin in its window.
    priority={QuantFamily.NVFP4: 70, QuantFamily.MXFP4: 70, QuantFamily.INT4: 90, QuantFamily.FP8: 35},
    # vLLM moves Humming directly ahead of Marlin on capability 9.0 only; elsewhere Marlin stays first
    # for int4 (NvFP4 / MXFP4 already rank Humming above Marlin everywhere: 70 > 60).
    priority_overrides=(PriorityOverride(
        family=QuantFamily.INT4, devices=(DeviceRule(sm=(90,), source=_PRIORITY_SRC),), priority=110,
        source=_PRIORITY_SRC), PriorityOverride(
        family=QuantFamily.MXFP4, devices=(DeviceRule(sm=(90,), source=_MXFP4_SM90),), priority=90, source=_MXFP4_SM90)),
    hardware=(HardwareStatus(devices="sm90", status="verified", record=_RECORD, note=(
        "2026-11-29, NVIDIA H200, humming-kernels 0.1.19, torch 2.11.0+cu130: tests/gpu/test_humming_gpu.py 11/11 - "
        "Gemma 4 NvFP4 gelu_tanh, Qwen3-30B-A3B int4 g128 (fp16) and NvFP4 silu, Mixtral int4 g128 zero points silu, "
        "gpt-oss-120b MXFP4 swigluoai with biases; T 1/7/64/512/4096 with imbalanced routing and empty experts; max "
        "rel err 6.4e-3 vs the reference (tolerance 2e-2 bf16, 1e-2 fp16); conversions equal Humming's own "
        "dequantization; probe (docs/verification/h200-humming-probe.json): 104 declared combinations passed (8 "
        "activations x int4 g128/g64, NvFP4, NvFP4 W4A16, MXFP4 x aligned / T=1 / I=704, biases), max rel err "
        "5.5e-3, 226 undeclared refused, 0 drift")),),
    engines=EngineNames(vllm="humming", source=(
        f"{_V} fused_moe/oracle/nvfp4.py map_nvfp4_backend 'humming'; no SGLang name: SGLang 0.5.23's humming runner "
        "serves its own `--quantization humming` and FP4 experts of FP8 checkpoints (quantization/humming.py, "
        "fp8.py L452-456), not the ModelOpt NvFP4, MXFP4 or GPTQ layers this backend runs")),
)


@hookimpl
def moe_registry_backends() -> list[BackendCapability]:
    return [DECLARATION]
