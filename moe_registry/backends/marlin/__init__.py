"""vLLM's Marlin MoE kernel (`torch.ops._moe_C.moe_wna16_marlin_gemm`): weight-only, SM75+ (fp16 on SM75).

The kernel runs the two GEMMs on 4-bit (or 8-bit) weights with 16-bit activations; the
activation between them is applied by the adapter, so every activation is available.
"""

from __future__ import annotations

from moe_registry.registry import hookimpl
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, Condition, DeviceRule, DimTest, DTypeRule, EngineNames, FeatureSupport,
    HardwareStatus, KnownLimitation, PriorityOverride, QuantSupport, Requirement, RoutingSupport, ShapeRule,
)
from moe_registry.schemas.quant import QuantFamily, QuantKind

_MXFP4_FIRST = (
    "vLLM 0.34.0 fused_moe/oracle/mxfp4.py L445-457: on SM110 (new in 0.34) and SM12x the gpt-oss list moves TRITON "
    "to just after BATCHED_MARLIN, so MARLIN is the default ('MARLIN prefills ~10% faster at equal decode "
    "throughput' on consumer Blackwell; Thor not benchmarked); quantization/utils/humming/priority.py L10-48 moves "
    "Humming ahead of Marlin on SM90 only")


_VLLM = "vLLM 0.33.0 model_executor/layers/fused_moe/experts/marlin_moe.py"
_UTILS = "vLLM 0.33.0 quantization/utils/marlin_utils.py"
_CHECK = f"{_UTILS} L356 check_moe_marlin_supports_config"
_PAD = (f"{_UTILS} L335 marlin_moe_padded_intermediate: round_up(I, lcm(64, group)), called by "
        "fused_moe/oracle/int_wna16.py L653/L803 and marlin_utils_fp8.py L256/L503; the int4 callers pass "
        "allow_tile_padding=True (auto_gptq.py L242, auto_awq.py L323, compressed_tensors_moe_wna16.py L108), "
        "which leaves only I % group (L377-380, the format's own rule); the adapter zero-pads")
_MXFP4_PAD = ("vLLM 0.33.0 fused_moe/oracle/mxfp4.py L865-870 mxfp4_round_up_hidden_size_and_intermediate_size: "
              "MARLIN rounds intermediate up to 128 and hidden up to 256 (CUDA); the adapter zero-pads")
_BETWEEN = ("applied between the Marlin GEMMs by moe_registry.execution.activations, as vLLM applies "
            f"apply_moe_activation between them ({_VLLM} L623 _supports_activation = every AMA member)")
_MARLIN_MODELS = "docs/verification/h100-marlin-models.txt"

# Tags only from a committed record with passing rows (tests/test_verification_records.py checks them):
# the model-shape run covered these three activations and int4_w4a16 on the H100.
_VERIFIED_ACTIVATIONS = {Activation.SILU: ("sm90",), Activation.GELU_TANH: ("sm90",),
                         Activation.RELU2_NO_MUL: ("sm90",)}
# Every scheme but MXFP4 keeps hidden unpadded ("hidden_size is the MoE I/O extent and is never padded").
_HIDDEN_NOT_PADDED = (QuantKind.INT4_W4A16, QuantKind.INT4_FP8, QuantKind.INT8_W8A16, QuantKind.NVFP4,
                      QuantKind.NVFP4_W4A16, QuantKind.FP8, QuantKind.MXFP8_W8A16)

DECLARATION = BackendCapability(
    id="marlin",
    name="vLLM Marlin MoE",
    provider="vLLM 0.33.0 (_moe_C)",
    description="Weight-only mixed-precision grouped GEMM (4-bit or 8-bit weights, 16-bit activations), tokens "
                "sorted into expert blocks with moe_align_block_size.",
    kernel="torch.ops._moe_C.moe_wna16_marlin_gemm",
    adapter="moe_registry.backends.marlin.kernel:MarlinExperts",
    devices=(DeviceRule(min_sm=75, source=f"{_VLLM} L592 _supports_current_device (CUDA SM >= 7.5)"),),
    dtypes=("bf16", "fp16"),
    dtype_devices=(DTypeRule(dtype="bf16", devices=(DeviceRule(min_sm=80, source="bf16 kernels from SM80"),), source=(
        "vLLM 0.33.0 _moe_C_stable_libtorch.abi3.so: 'Turing only support FP16 or INT8 activation.' (csrc "
        "marlin_mm: on SM 7.5 a_type must be float16 or int8); its fatbin has sm_75-only TUs for the Turing "
        "fp16 variants next to sm_80 SASS + compute_80 PTX (cuobjdump --list-elf of that library)")),),
    # The kernel never sees the activation; execution.activations runs every member (a new one must be
    # implemented there first). Verified only where a record shows it.
    activations={act: ActivationImpl(kernel_name="torch (between GEMMs)", source=_BETWEEN,
                                     verified_on=_VERIFIED_ACTIVATIONS.get(act, ()))
                 # silu_clamp takes the same torch path but is not declared until probed here (issue 12)
                 for act in Activation if act is not Activation.SILU_CLAMP},
    quant=(
        QuantSupport(kind=QuantKind.INT4_W4A16, group_sizes=(-1, 32, 64, 128), zero_point=True, verified_on=("sm90",),
                     source=(f"{_VLLM} L601-619 _supports_quant_scheme (kInt4Static, kInt4Static32, kInt4StaticAsym); "
                             f"{_CHECK} group in -1/32/64/128")),
        # The FP4 conversions are written (moe_registry.backends.marlin.kernel.prepare_fp4) but not verified:
        # vLLM's wheel ships Marlin MoE as sm_80 SASS + compute_80 PTX, so an H100 JIT-compiles every kernel
        # variant on first use, and the FP4 variants did not finish compiling within the session. Until a run
        # verifies them, selection does not pick Marlin to run FP4 here (planning still reports it).
        QuantSupport(kind=QuantKind.NVFP4_W4A16, adapter_implemented=False,
                     source=f"{_VLLM} L601-619 (kNvfp4Static weights)"),
        QuantSupport(kind=QuantKind.NVFP4, adapter_implemented=False,
                     note="runs as W4A16: the checkpoint's activation scales are dropped", source=(
                         "vLLM oracle/nvfp4.py MARLIN branch; marlin_utils_fp4.py L341 'Weight-only FP4 compression "
                         "will be used leveraging the Marlin kernel'")),
        QuantSupport(kind=QuantKind.MXFP4, adapter_implemented=False, dtypes=("bf16",), source=(
            f"{_VLLM} L601-619 (kMxfp4Static); bf16 activations only as moe_registry.backends.marlin.kernel states "
            "(vLLM csrc/moe/marlin_moe_wna16/generate_kernels.py builds the e8m0-scale kernels for bf16; the "
            "generator is not in the 0.33.0 wheel, so not re-read here)")),
        QuantSupport(kind=QuantKind.FP8, adapter_implemented=False, note="runs as W8A16 (fp8 weight-only)",
                     source=f"{_VLLM} L601-619 (FP8 tensor / channel / block128 weights)"),
        # W4A8: the same int4 weights with activations quantized to fp8 per token (VLLM_MARLIN_INPUT_DTYPE=fp8).
        QuantSupport(kind=QuantKind.INT4_FP8, group_sizes=(-1, 32, 64, 128), adapter_implemented=False,
                     devices=(DeviceRule(sm=(89, 120, 121), source=f"{_UTILS} L720-737 get_marlin_input_dtype"),),
                     note="activations quantized to fp8 per token in the engine (VLLM_MARLIN_INPUT_DTYPE=fp8)",
                     source=(f"{_UTILS} L720-737 get_marlin_input_dtype: fp8 input 'only support SM89 or SM12x'; "
                             "fused_moe/oracle/int_wna16.py L638-643 marlin_int4_fp8_preprocess, 'for non-zp "
                             f"quantization format only'; {_CHECK} group in -1/32/64/128")),
        QuantSupport(kind=QuantKind.INT8_W8A16, group_sizes=(-1, 32, 64, 128), adapter_implemented=False, source=(
            f"{_VLLM} L601-619 (kInt8Static) and L309-315 (uint8b128); quantization/auto_gptq.py L98-101 "
            f"TYPE_MAP (8, sym) -> uint8b128; {_CHECK} group in -1/32/64/128")),
        QuantSupport(kind=QuantKind.MXFP8_W8A16, adapter_implemented=False,
                     source=f"{_VLLM} L601-619 (kMxfp8Static weights; fp8 e4m3 b type, L309-315)"),
    ),
    shape_rules=(
        ShapeRule(dimension="hidden", multiple_of=128, when=Condition(quant=_HIDDEN_NOT_PADDED),
                  source=f"{_CHECK}: hidden % 128, never padded"),
        ShapeRule(dimension="intermediate", multiple_of=64, pad=True, source=_PAD),
        ShapeRule(dimension="intermediate", multiple_of=128, pad=True, when=Condition(group_sizes=(128,)),
                  source=f"{_PAD} (lcm(64, 128) = 128)"),
        ShapeRule(dimension="intermediate", multiple_of=128, pad=True, when=Condition(gated=False), source=(
            "vLLM csrc/moe/marlin_moe_wna16 thread configs all have thread_n 128 or 256, so GEMM1's N = I "
            "(non-gated) must be a multiple of 128; marlin_utils.py L338-339 states the gated case (2I % 128) "
            "(inferred from the kernel source; the adapter zero-pads)")),
        ShapeRule(dimension="hidden", multiple_of=256, pad=True, when=Condition(quant=(QuantKind.MXFP4,)),
                  source=_MXFP4_PAD),
        ShapeRule(dimension="intermediate", multiple_of=128, pad=True, when=Condition(quant=(QuantKind.MXFP4,)),
                  source=_MXFP4_PAD),
    ),
    limitations=(KnownLimitation(
        when=Condition(apply_router_weight_on_input=True, dims=(DimTest(dimension="top_k", min=2),)),
        reason="the adapter applies the router weight on the input only for top-1 routing",
        hint="vLLM's fused_marlin_moe scales GEMM1's output instead (mul_topk_weights), which differs once "
             "a bias is added; Llama 4, the model that uses it, routes top-1",
        source="moe_registry.backends.marlin.kernel check_marlin_config (adapter choice)"),),
    routing=RoutingSupport(precomputed=True, source=f"{_VLLM} L226 fused_marlin_moe takes topk_ids / topk_weights"),
    # cuda_graphs not declared (yet): on the H100 (docs/verification/h100-decode.txt) graphed == eager held for int4
    # g128 with zero points (Mixtral shape, bf16) but failed for int4 g128 at the Qwen3-30B shape (fp16), cause not
    # established; declare it once tests/gpu/test_graph_capture_gpu.py passes for both (DTESTS_K=marlin).
    features=FeatureSupport(bias=True, apply_router_weight_on_input=True, swigluoai_params=True, source=(
        f"{_VLLM} L226-237 fused_marlin_moe(hidden_states, w1, w2, bias1, bias2, ..., apply_router_weight_on_input); "
        "the op's b_bias_or_none; the adapter permutes and pads both biases (marlin_permute_bias) and scales the "
        "input for top-1 router weight on input; tests/gpu/test_marlin_gpu.py runs both (no committed record)")),
    requirements=(Requirement(
        kind="torch_op", name="_moe_C::moe_wna16_marlin_gemm", package="vllm",
        library_env="MOE_REGISTRY_VLLM_MOE_C",
        hint="pip install vllm (importing it registers torch.ops._moe_C), or point MOE_REGISTRY_VLLM_MOE_C at "
             "vLLM's _moe_C library",
        source="vLLM 0.33.0 _moe_C_stable_libtorch.abi3.so registers torch.ops._moe_C.moe_wna16_marlin_gemm "
               "when vllm._custom_ops is imported"),),
    priority={QuantFamily.INT4: 100, QuantFamily.INT8: 100, QuantFamily.NVFP4: 60, QuantFamily.MXFP4: 60,
              QuantFamily.FP8: 40},
    # vLLM 0.34.0 runs gpt-oss MXFP4 on Marlin first on SM110 and SM12x (Humming's move ahead of Marlin is SM90 only).
    priority_overrides=(PriorityOverride(
        family=QuantFamily.MXFP4, devices=(DeviceRule(sm=(110,), source=_MXFP4_FIRST),
                                           DeviceRule(min_sm=120, max_sm=129, source=_MXFP4_FIRST)),
        priority=75, source=_MXFP4_FIRST),),
    hardware=(HardwareStatus(devices="sm90", status="verified", record=_MARLIN_MODELS, note=(
        "2026-11-28, NVIDIA H100 80GB HBM3, vLLM 0.33.0 _moe_C: int4_w4a16 at the Gemma 4 (g64) and Mixtral (g128) "
        "shapes x silu/gelu_tanh/relu2_no_mul, T 1/7/64/512 incl. imbalanced routing and an empty expert, rel err "
        "<= 5.7e-3 vs the reference; 16 single-GEMM layouts (groups -1/32/64/128, symmetric and zero points, bf16 "
        "and fp16) passed; FP4 schemes not verified")),),
    engines=EngineNames(
        vllm="marlin", sglang="marlin", trtllm="MARLIN",
        # SGLang 0.5.23 runs Marlin for NvFP4 (ModelOpt) and MXFP4 MoE layers when asked. Its int4 layers run Marlin
        # by default, but GPTQ's asserts `auto` (an explicit marlin crashes at load), so no flag forces it for int4;
        # its FP8 method takes marlin only for FP4 experts, and the other kinds have no Marlin MoE path there.
        sglang_by_quant={QuantKind.INT4_W4A16: None, QuantKind.FP8: None, QuantKind.NVFP4_W4A16: None,
                         QuantKind.INT4_FP8: None, QuantKind.INT8_W8A16: None, QuantKind.MXFP8_W8A16: None},
        source="vLLM config/kernel.py MoEBackend; SGLang 0.5.23 layers/moe/utils.py L194 MoeRunnerBackend, "
               "quantization/modelopt_quant.py L3233, quantization/mxfp4.py L1463, hardware_backend/gpu/quantization/"
               "gptq_kernels.py L306-311, "
               "quantization/fp8.py L445; executed record docs/verification/sglang-0.5.23-executed.json; "
               "TRT-LLM MoeConfig.backend"),
)


@hookimpl
def moe_registry_backends() -> list[BackendCapability]:
    return [DECLARATION]
