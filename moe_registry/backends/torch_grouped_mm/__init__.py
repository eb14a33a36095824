"""PyTorch's grouped GEMM (`torch.nn.functional.grouped_mm`, `torch._grouped_mm` before 2.10; CUTLASS on SM90+): tokens sorted
by expert, one grouped GEMM per projection, the activation applied in between.

No JIT is involved, which makes it the practical SM90 backend while FlashInfer's module is not
prebuilt (flashinfer-moe-api.md 7). Quantized checkpoints are dequantized to 16-bit at load.
"""

from __future__ import annotations

from moe_registry.registry import hookimpl
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, DeviceRule, FeatureSupport, HardwareStatus, QuantSupport, Requirement,
    RoutingSupport, ShapeRule,
)
from moe_registry.schemas.quant import QuantFamily, QuantKind

_BETWEEN = "applied between the grouped GEMMs by moe_registry.execution.activations (exact maths)"
_DEQUANT = "weights dequantized to bf16 once at load by moe_registry.formats, then the bf16 grouped GEMM"
_PROBE = "docs/verification/h100-probe.json"  # moe-registry probe, NVIDIA H100 80GB HBM3, 2026-11-28
_VERSIONS = ("torch._grouped_mm from PyTorch 2.9; public as torch.nn.functional.grouped_mm from 2.10 (pytorch PR "
             "#168298 'Add public grouped_mm', after 2.9 shipped); the adapter takes whichever exists")
# Tags only from that committed record's passing rows (tests/test_verification_records.py checks them): every
# activation and these kinds passed there. Listed per member so that a new one starts unverified.
_PROBED_ACTIVATIONS = (Activation.SILU, Activation.GELU, Activation.GELU_TANH, Activation.SWIGLUOAI,
                       Activation.RELU2_NO_MUL, Activation.SILU_NO_MUL, Activation.GELU_NO_MUL,
                       Activation.GELU_TANH_NO_MUL)
_PYTORCH_SCALED = ("PyTorch aten/src/ATen/native/cuda/GroupedBlas.cpp _scaled_grouped_mm_cuda: FP8 e4m3 operands with "
                   "rowwise scales (per token for A, per output channel for B), SM90 kernels, majors 9/10 only; "
                   "MXFP8 / MXFP4 / NvFP4 go through FBGEMM-GenAI and depend on the build (not declared)")

DECLARATION = BackendCapability(
    id="torch-grouped-mm",
    name="PyTorch grouped GEMM",
    provider="PyTorch >= 2.9 (torch._grouped_mm; public torch.nn.functional.grouped_mm from 2.10)",
    description="Token sort + two bf16 grouped GEMMs (CUTLASS on SM90) + activation + weighted combine; "
                "no loop over experts.",
    kernel="torch.nn.functional.grouped_mm",
    adapter="moe_registry.backends.torch_grouped_mm.kernel:TorchGroupedMMExperts",
    devices=(
        # Only majors 9 and 10 take the CUTLASS path; elsewhere grouped_mm silently becomes one mm per
        # expert after a host sync (GroupedMMUtils.h _grouped_mm_fallback): correct, but not this kernel.
        DeviceRule(min_sm=90, max_sm=109, source=(
            "PyTorch aten/src/ATen/native/cuda/GroupedBlas.cpp _grouped_mm_cuda: use_fast_path needs bf16 and "
            "_scaled_mm_allowed_device (major 9 or 10); flashinfer-moe-api.md 7 (measured ~448 TFLOP/s on H100)")),
        DeviceRule(vendor="cpu", source=(f"PyTorch >= 2.9 CPU fallback of grouped_mm (exercised by "
                                         f"tests/test_grouped_mm_cpu.py); {_VERSIONS}")),
    ),
    dtypes=("bf16",),
    activations={act: ActivationImpl(kernel_name="torch (between GEMMs)", source=_BETWEEN,
                                     verified_on=("sm90",) if act in _PROBED_ACTIVATIONS else ())
                 # silu_clamp takes the same torch path but is not declared until probed here (issue 12)
                 for act in Activation if act is not Activation.SILU_CLAMP},
    quant=(
        QuantSupport(kind=QuantKind.BF16, source="torch grouped_mm takes bf16 operands", verified_on=("sm90",)),
        # Dequantizing handles zero points and act-order g_idx alike (moe_registry.formats.int4).
        *(QuantSupport(kind=kind, dequantized_at_load=True, zero_point=True, act_order=True, source=_DEQUANT,
                       verified_on=("sm90",))
          for kind in (QuantKind.FP8, QuantKind.FP8_BLOCK, QuantKind.NVFP4, QuantKind.NVFP4_W4A16, QuantKind.MXFP4,
                       QuantKind.INT4_W4A16)),
        # Audit G9: the native FP8 path. Listed after the dequantizing one, which is what runs (and plans)
        # until an adapter calls torch._scaled_grouped_mm; one FP8 rowwise grouped GEMM (not the MoE) was
        # measured in docs/verification/h100-torch-grouped-mm.json ("fp8_rowwise_scaled_grouped_mm").
        QuantSupport(kind=QuantKind.FP8, adapter_implemented=False,
                     devices=(DeviceRule(min_sm=90, max_sm=109, source=_PYTORCH_SCALED),),
                     note="native FP8 rowwise torch._scaled_grouped_mm (per-tensor weight scales broadcast per row, "
                          "activations quantized per token)", source=_PYTORCH_SCALED),
    ),
    shape_rules=tuple(
        ShapeRule(dimension=dim, multiple_of=8, pad=True, source=(
            "PyTorch aten/src/ATen/native/GroupedMMUtils.h check_valid_strides_and_return_transposed: non-unit "
            "strides must be multiples of 16 bytes (8 bf16 elements); the adapter zero-pads"))
        for dim in ("hidden", "intermediate")),
    max_experts=1023,  # aten/src/ATen/native/cuda/GroupMM.cu: TORCH_CHECK(group_count < 1024)
    routing=RoutingSupport(precomputed=True, source="the adapter takes topk_ids / topk_weights"),
    # cuda_graphs: bf16 on SM90/SM100 only (the fp16 fallback reads offs on the host); the adapter's
    # ``capturable`` says which path it took, and GraphedExperts checks it.
    features=FeatureSupport(bias=True, apply_router_weight_on_input=True, swigluoai_params=True, cuda_graphs=True,
                            source=("moe_registry.backends.torch_grouped_mm.kernel; cuda_graphs: "
                                    "tests/gpu/test_triton_fused_moe_gpu.py test_graphed_grouped_mm_now_captures")),
    requirements=(Requirement(kind="package", name="torch", package="torch", import_name="torch",
                              hint="pip install 'torch>=2.9'", source=_VERSIONS),),
    priority={QuantFamily.UNQUANTIZED: 60, QuantFamily.FP8: 30, QuantFamily.NVFP4: 30, QuantFamily.MXFP4: 30,
              QuantFamily.INT4: 30},
    hardware=(HardwareStatus(devices="sm90", status="verified", record=_PROBE, note=(
        "probe 2026-11-28 on NVIDIA H100 80GB HBM3: 336 declared combinations passed, 0 failed, 0 drift; "
        "tests/gpu 68 passed; docs/verification/h100-torch-grouped-mm.json 62/62 cases, max rel err 4.8e-3")),),
)


@hookimpl
def moe_registry_backends() -> list[BackendCapability]:
    return [DECLARATION]
