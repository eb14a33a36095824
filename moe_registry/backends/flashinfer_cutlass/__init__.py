"""FlashInfer's CUTLASS fused MoE (`cutlass_fused_moe`): SM90 and Blackwell, per-scheme arch lists.

Not verified on hardware: on SM90 its JIT module takes well over 40 minutes to build on the
project's 16-core GPU machines (flashinfer-moe-api.md 1.9, measured), and there is no SM100 here.
"""

from __future__ import annotations

from moe_registry.registry import hookimpl
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, Condition, DeviceRule, EngineNames, FeatureSupport, HardwareStatus,
    PriorityOverride, QuantSupport, Requirement, RoutingSupport, ShapeRule,
)
from moe_registry.schemas.quant import QuantFamily, QuantKind, ScaleLayout

_API = "flashinfer 0.7.2.post1 fused_moe/api.py L517-562"
_KERNELS = "flashinfer data/csrc/fused_moe/cutlass_backend/cutlass_fused_moe_kernels.cuh L2237-2300, L2384"
_ENUM = "flashinfer tllm_enums.py ActivationType"  # also the source of every kernel_value below
_BINDING = "flashinfer data/csrc/fused_moe/cutlass_backend/flashinfer_cutlass_fused_moe_binding.cu"

_BF16_ARCHS = (89, 90, 100, 103, 107, 110, 120, 121)  # _CUTLASS_BF16_ARCHS (= _CUTLASS_FP8_ARCHS)
_NVFP4_ARCHS = (100, 103, 107, 110, 120, 121)  # _CUTLASS_NVFP4_ARCHS, _CUTLASS_MXFP8_MXFP4_ARCHS
_HOPPER = (90,)  # _CUTLASS_FP8_BLOCK_ARCHS, _CUTLASS_W4A16_ARCHS, _CUTLASS_W4A8_ARCHS, _CUTLASS_HUMMING_ARCHS
_MXFP8_ARCHS = (100, 103, 107)  # _CUTLASS_MXFP8_ARCHS (MXFP8 x MXFP8: SM10x only)
_VLLM_MXFP4_PAD = ("vLLM 0.33.0 fused_moe/oracle/mxfp4.py L874-879 mxfp4_round_up_hidden_size_and_intermediate_size: "
                   "FLASHINFER_CUTLASS_MXFP4_BF16 / _MXFP8 round hidden and intermediate up to 128; the adapter zero-pads")
# Not declared (declaration audit, answered): C35 INT4 W4A16 (binding L281-312 builds CutlassMoeFCRunner<bf16,
# uint4b_t> for use_packed_weights without use_w4_group_scaling) is reachable only through that flag: api.py has no
# arch list for it and FlashInfer's tests never run it, so which archs compile it is unverifiable here. C36
# SwigluStep / SiTU / ClampedRelu2 (tllm_enums.py L68-83) have no moe-registry Activation id (no bundled model
# uses them); declaring them needs ids with execution and oracle definitions first.


def _on(archs: tuple[int, ...], name: str) -> tuple[DeviceRule, ...]:
    return (DeviceRule(sm=archs, source=f"{_API} {name}"),)


_SM9X_DEMOTED = ("vLLM 0.33.0 model_executor/layers/fused_moe/oracle/unquantized.py L76-80: 'On Hopper (SM90), "
                 "the FlashInfer unquantized MoE kernels are slower than Triton, so prefer Triton by default' "
                 "(_move_to_back FLASHINFER_TRTLLM, FLASHINFER_CUTLASS when is_device_capability_family(90))")

DECLARATION = BackendCapability(
    id="flashinfer-cutlass",
    name="FlashInfer CUTLASS fused MoE",
    provider="FlashInfer 0.7.2.post1 (TensorRT-LLM CUTLASS kernels, JIT-built)",
    description="Grouped-GEMM MoE with fused activation and finalize; top-k computed outside the kernel.",
    kernel="flashinfer.fused_moe.cutlass_fused_moe",
    adapter="moe_registry.backends.flashinfer_cutlass.kernel:FlashInferCutlassExperts",
    gemm1_order="up_gate",
    devices=(DeviceRule(sm=tuple(sorted(set(_BF16_ARCHS + _NVFP4_ARCHS))), source=(
        f"{_API} (union of the per-scheme arch lists); core.py get_cutlass_fused_moe_module raises "
        "'Invalid backend' for other archs (e.g. SM80)")),),
    dtypes=("bf16", "fp16"),
    activations={
        Activation.SILU: ActivationImpl(kernel_name="Swiglu", kernel_value=3, source=f"{_ENUM}; {_KERNELS}"),
        Activation.GELU: ActivationImpl(
            kernel_name="Geglu", kernel_value=4, note="CUTLASS GELU epilogue uses erf", source=(
                f"{_ENUM}; {_KERNELS} (Geglu = gelu(g) * u, erf); vLLM flashinfer_cutlass_moe.py L184 leaves GELU "
                "out of its own list, a vLLM choice, not the kernel's")),
        Activation.GELU_TANH: ActivationImpl(kernel_name="GegluTanh", kernel_value=8,
                                             source=f"{_ENUM}; {_KERNELS} L2387"),
        Activation.SWIGLUOAI: ActivationImpl(kernel_name="SwigluBias", kernel_value=5, source=(
            f"{_KERNELS}: SwigluBias with swiglu_alpha / swiglu_beta / swiglu_limit (flashinfer-moe-api.md 1.3)")),
        Activation.RELU2_NO_MUL: ActivationImpl(kernel_name="Relu2", kernel_value=6, source=f"{_ENUM}; vLLM L184"),
        Activation.SILU_NO_MUL: ActivationImpl(kernel_name="Silu", kernel_value=2,
                                               source=f"{_ENUM} (non-gated Silu)"),
        Activation.GELU_NO_MUL: ActivationImpl(kernel_name="Gelu", kernel_value=0,
                                               source=f"{_ENUM} (non-gated Gelu, erf)"),
    },
    quant=(
        # Unquantized weights run only with activations of the same dtype: FusedMoeRunner builds a
        # runner for (fp16, fp16) and (bf16, bf16) only, anything else throws "Could not construct".
        QuantSupport(kind=QuantKind.BF16, devices=_on(_BF16_ARCHS, "_CUTLASS_BF16_ARCHS"), dtypes=("bf16",),
                     source=f"{_API}; {_BINDING} FusedMoeRunner L184-194 (bf16 weights with bf16 activations)"),
        QuantSupport(kind=QuantKind.FP16, devices=_on(_BF16_ARCHS, "_CUTLASS_BF16_ARCHS"), dtypes=("fp16",),
                     source=f"{_API}; {_BINDING} FusedMoeRunner L184-186 (fp16 weights with fp16 activations)"),
        QuantSupport(kind=QuantKind.FP8, devices=_on(_BF16_ARCHS, "_CUTLASS_FP8_ARCHS"), source=(
            f"{_API}; quant_scales order flashinfer-moe-api.md 1.6 (test_moe_fp8)")),
        QuantSupport(kind=QuantKind.FP8_BLOCK, devices=_on(_HOPPER, "_CUTLASS_FP8_BLOCK_ARCHS"), dtypes=("bf16",),
                     source=(f"{_API}; use_deepseek_fp8_block_scale needs SM90 and CUDA >= 12.8 (flashinfer-moe-api.md "
                             f"1.5); bf16 input only: {_BINDING} FusedMoeRunner L192 builds the fp8-weight runner for "
                             "bf16 activations only (fp16 throws 'Could not construct fused moe op', L315)")),
        QuantSupport(kind=QuantKind.MXFP4, devices=_on(_HOPPER, "_CUTLASS_W4A16_ARCHS"), dtypes=("bf16",),
                     source=(f"{_API}; W4A16 MXFP4 takes bf16 input only (flashinfer-moe-api.md 1.5; {_BINDING} "
                             "L270 'SM90 MXFP4 W4A16 supports BF16 activations only')")),
        QuantSupport(kind=QuantKind.INT4_FP8, group_sizes=(128,), devices=_on(_HOPPER, "_CUTLASS_W4A8_ARCHS"),
                     adapter_implemented=False,
                     source=f"{_API}; W4A8 INT4 group 128 (flashinfer-moe-api.md 1.6, test_moe_w4a8)"),
        QuantSupport(kind=QuantKind.NVFP4, activation_scale_layout=ScaleLayout.SWIZZLED_128X4,
                     devices=_on(_NVFP4_ARCHS, "_CUTLASS_NVFP4_ARCHS"), source=(
                         f"{_API}; weight block scales swizzled 128x4 (vLLM flashinfer_cutlass_moe.py L146); not on "
                         "SM90 (flashinfer-moe-api.md 1.5)")),
        QuantSupport(kind=QuantKind.MXFP4_MXFP8, devices=_on(_NVFP4_ARCHS, "_CUTLASS_MXFP8_MXFP4_ARCHS"),
                     adapter_implemented=False, source=f"{_API}"),
        # Audit C32: Humming MXFP4 x FP8 on SM90, bf16/fp16 input quantized to fp8 online in the kernel.
        QuantSupport(kind=QuantKind.MXFP4_FP8, devices=_on(_HOPPER, "_CUTLASS_HUMMING_ARCHS"), adapter_implemented=False,
                     note="Humming mode (use_wfp4afp8_humming): fp8 activations quantized online from bf16/fp16",
                     source=(f"{_API} L562 _CUTLASS_HUMMING_ARCHS; {_BINDING} L234-250 make_humming_runner (FP16/BF16 "
                             "inputs, activation dtype == output dtype, 'only supported on SM90')")),
        # Audit C34: MXFP4 weights with fp8 activations on SM100+ (the binding's sm >= 100 branch).
        QuantSupport(kind=QuantKind.MXFP4_FP8, devices=(DeviceRule(min_sm=100, source=f"{_BINDING} L207"),),
                     adapter_implemented=False, note="activations arrive quantized to fp8 e4m3",
                     source=f"{_BINDING} L207: sm >= 100 && isWMxfp4AFp8Quant() (fp8 input, int64-packed MXFP4)"),
        # Audit C33: MXFP8 x MXFP8 on SM10x only.
        QuantSupport(kind=QuantKind.MXFP8, devices=_on(_MXFP8_ARCHS, "_CUTLASS_MXFP8_ARCHS"), adapter_implemented=False,
                     source=f"{_API} L558 _CUTLASS_MXFP8_ARCHS; {_BINDING} L199 isWMxfp8AMxfp8Quant runner"),
    ),
    shape_rules=(
        ShapeRule(dimension="hidden", multiple_of=8, when=Condition(quant=(QuantKind.BF16, QuantKind.FP16)),
                  source="flashinfer binding runMoe ~L420-436: TMA alignment 128 bits / 16-bit = 8"),
        ShapeRule(dimension="intermediate", multiple_of=8, when=Condition(quant=(QuantKind.BF16, QuantKind.FP16)),
                  source="flashinfer binding runMoe ~L420-436: TMA alignment 128 bits / 16-bit = 8"),
        ShapeRule(dimension="hidden", multiple_of=16, when=Condition(quant=(QuantKind.FP8,)),
                  source="flashinfer binding runMoe ~L420-436: TMA alignment 128 bits / 8-bit = 16"),
        ShapeRule(dimension="intermediate", multiple_of=16, when=Condition(quant=(QuantKind.FP8,)),
                  source="flashinfer binding runMoe ~L420-436: TMA alignment 128 bits / 8-bit = 16"),
        *(ShapeRule(dimension=dim, multiple_of=128, when=Condition(quant=(QuantKind.FP8_BLOCK, QuantKind.INT4_FP8)),
                    source="flashinfer prepare.py prepare_cutlass_fp8_block_weights (alignment=128) / "
                           "prepare_cutlass_w4a8_weights (alignment=group_size=128): H, I % 128")
          for dim in ("hidden", "intermediate")),
        # MXFP4 weights (every activation format): binding runMoe L422-427 "hidden_size / inter_size must be
        # divisible by 128 for MXFP4 weights"; vLLM pads both for its two FlashInfer CUTLASS MXFP4 backends.
        *(ShapeRule(dimension=dim, multiple_of=128, pad=True,
                    when=Condition(quant=(QuantKind.MXFP4, QuantKind.MXFP4_MXFP8)),
                    source=f"{_BINDING} runMoe L422-427; prepare.py prepare_cutlass_w4a16_weights; {_VLLM_MXFP4_PAD}")
          for dim in ("hidden", "intermediate")),
        *(ShapeRule(dimension=dim, multiple_of=128, when=Condition(quant=(QuantKind.MXFP4_FP8,)),
                    source=f"{_BINDING} runMoe L422-427 (isWMxfp4AFp8Quant / isWMxfp4AFp8HummingQuant)")
          for dim in ("hidden", "intermediate")),
        # MXFP8 x MXFP8: 1-byte activations and weights, so the TMA rule gives 16 (runMoe L428-437).
        *(ShapeRule(dimension=dim, multiple_of=16, when=Condition(quant=(QuantKind.MXFP8,)),
                    source=f"{_BINDING} runMoe L428-437: TMA alignment 128 bits / 8-bit = 16")
          for dim in ("hidden", "intermediate")),
        # NVFP4's I % 16 (flashinfer-moe-api.md 1.7) is the format's scale group, checked for every backend.
        ShapeRule(dimension="hidden", multiple_of=64, when=Condition(quant=(QuantKind.NVFP4,)),
                  source="flashinfer-moe-api.md 1.7: NVFP4 (SM100) H % 64; prepare.py prepare_cutlass_nvfp4_weights"),
        # The fc1 block scales must have alignToSfDim(I, 64) rows per half (MinKDimAlignmentNVFP4 = 64,
        # moe_gemm_kernels.h L118), and the 128x4 swizzle pads rows to 128, so the [up; gate] halves
        # meet the kernel's layout only when I % 64 == 0 (gated, 2I % 128) or I % 128 == 0 (non-gated).
        ShapeRule(dimension="intermediate", multiple_of=64, pad=True,
                  when=Condition(gated=True, quant=(QuantKind.NVFP4,)), source=(
                      f"{_BINDING} runMoe ~L1489-1500: fc1 weight block rows == alignToSfDim(I, 64) * 2; 128-row "
                      "swizzled scales (fused_moe/runners.py CutlassNvfp4Runner: round_up(gemm1_rows, 128)). "
                      "Unverifiable (audit C25): FlashInfer's own prepare.py L1990-1994 / runners.py L2454 ask only "
                      "I % 16 and alignToSfDim(I, 64) * 2 == round_up(2I, 128) for any I % 16 == 0, so this is "
                      "probably stricter than the kernel; it is vLLM's limit (flashinfer_fp4_moe.py L441-448) and "
                      "harmless, since the adapter pads")),
        ShapeRule(dimension="intermediate", multiple_of=128, pad=True,
                  when=Condition(gated=False, quant=(QuantKind.NVFP4,)), source=(
                      f"{_BINDING} runMoe ~L1501-1511: fc1 weight block rows == alignToSfDim(I, 64); 128-row "
                      "swizzled scales (fused_moe/runners.py CutlassNvfp4Runner: round_up(gemm1_rows, 128))")),
    ),
    routing=RoutingSupport(precomputed=True, source="cutlass_fused_moe takes token_selected_experts / token_final_scales"),
    features=FeatureSupport(bias=True, swigluoai_params=True, source=(
        "cutlass_fused_moe fc1_expert_biases / fc2_expert_biases and swiglu_alpha/beta/limit (flashinfer-moe-api.md 1.2)")),
    requirements=(
        Requirement(kind="package", name="flashinfer-python", package="flashinfer-python", import_name="flashinfer",
                    hint="pip install flashinfer-python", source="flashinfer-moe-api.md 6"),
        Requirement(kind="jit_module", name="fused_moe JIT module", package="flashinfer-python",
                    probe="moe_registry.backends._flashinfer_jit:fused_moe_module_status",
                    build_cost=("well over 40 minutes for fused_moe_90 on 16 cores (measured: 87 of 242 objects "
                                "after 19 min); other archs unmeasured"),
                    hint="prebuild it once and keep the cache: python -c \"from flashinfer.jit.fused_moe import "
                         "gen_cutlass_fused_moe_sm90_module as g; g().build_and_load()\" (sm89/sm100/sm103/sm120 "
                         "have their own gen_cutlass_fused_moe_sm<arch>_module)",
                    source=("flashinfer-moe-api.md 1.9 (measured on the project's H100/H200 machines); flashinfer "
                            "0.7.2.post1 jit/fused_moe.py L108-184. No prebuilt module on PyPI: flashinfer-jit-cache "
                            "is not published there (pip: 'No matching distribution', 2026-11-29), only on "
                            "FlashInfer's own wheel index")),
    ),
    priority={QuantFamily.UNQUANTIZED: 70, QuantFamily.FP8: 80, QuantFamily.NVFP4: 80, QuantFamily.MXFP4: 80,
              QuantFamily.INT4: 80},
    # vLLM moves FlashInfer's unquantized MoE to the back on SM9x ("slower than Triton"): below Triton
    # and the grouped GEMM there; first after TRT-LLM-gen elsewhere.
    priority_overrides=(PriorityOverride(
        family=QuantFamily.UNQUANTIZED, devices=(DeviceRule(min_sm=90, max_sm=99, source=_SM9X_DEMOTED),),
        priority=50, source=_SM9X_DEMOTED),),
    engines=EngineNames(
        vllm="flashinfer_cutlass", sglang="flashinfer_cutlass", trtllm="CUTLASS",
        # SGLang 0.5.23: MXFP4 x bf16 runs FlashInfer's CUTLASS mixed-input MoE under flashinfer_mxfp4 on SM90 / SM120
        # (on SM100 that name runs TRT-LLM-gen); its Fp8MoEMethod has no flashinfer_cutlass path (FP8 layers become
        # triton) and the other kinds have no runner of their own.
        sglang_by_quant={QuantKind.MXFP4: "flashinfer_mxfp4", QuantKind.FP8: None, QuantKind.FP8_BLOCK: None,
                         QuantKind.INT4_FP8: None, QuantKind.MXFP4_MXFP8: None, QuantKind.MXFP4_FP8: None,
                         QuantKind.MXFP8: None},
        source="vLLM config/kernel.py MoEBackend; SGLang 0.5.23 layers/moe/utils.py L194 MoeRunnerBackend, "
               "quantization/mxfp4.py L1433-1476, quantization/fp8.py L2968-2977, arg_groups/moe_hook.py L72-84 "
               "(flashinfer_cutlass: modelopt_fp4 / modelopt_fp8 / bf16 only); executed branch probe "
               "docs/verification/sglang-0.5.23-executed.json; TRT-LLM MoeConfig.backend"),
    hardware=(
        HardwareStatus(devices="sm90", status="not verified on hardware",
                       note="the fused_moe_90 JIT build does not fit a GPU session (> 40 min)"),
        HardwareStatus(devices="sm100", status="not verified on hardware", note="no SM100 machine available"),
    ),
)


@hookimpl
def moe_registry_backends() -> list[BackendCapability]:
    return [DECLARATION]
