"""OpenAI's ``triton_kernels`` MXFP4 MoE (``matmul_ogs``): what vLLM 0.33 runs for gpt-oss on Hopper.

vLLM's MXFP4 oracle puts ``TRITON`` (``OAITritonMxfp4ExpertsMonolithic`` / ``OAITritonExperts``,
``fused_moe/experts/gpt_oss_triton_kernels_moe.py``) first on SM90 for gpt-oss. The kernels are not
vLLM's: they are OpenAI's Triton library ``triton_kernels``, vendored in vLLM's wheel as
``vllm/third_party/triton_kernels`` (the "3.5.1" API generation: ``matmul_ogs`` + ``routing``) and
installable from the Triton repository as the top-level package ``triton_kernels``. As vLLM's
``import_triton_kernels`` does, the top-level package wins and the vendored copy is the fall-back.

Availability is probed without importing either (:func:`triton_kernels_available`): importing
vLLM's package runs ``vllm/__init__``, and the adapter imports the package only when it is built.
"""

from __future__ import annotations

import importlib.util
import os

from moe_registry.registry import hookimpl
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.capability import (
    ActivationImpl, BackendCapability, DeviceRule, EngineNames, FeatureSupport, HardwareStatus, PriorityOverride,
    QuantSupport, Requirement, RoutingSupport, ShapeRule,
)
from moe_registry.schemas.quant import QuantFamily, QuantKind

_V = "vLLM 0.33.0"
_EXPERTS = f"{_V} model_executor/layers/fused_moe/experts/gpt_oss_triton_kernels_moe.py"
_ORACLE = f"{_V} model_executor/layers/fused_moe/oracle/mxfp4.py"
_SWIZZLE = f"{_V} model_executor/layers/quantization/utils/mxfp4_utils.py L65-170 _swizzle_mxfp4"
_TK = f"{_V} vllm/third_party/triton_kernels (OpenAI triton_kernels, API generation 3.5.1)"
_IMPORT = f"{_V} vllm/utils/import_utils.py L56-78 import_triton_kernels, L560-587 has_triton_kernels / " \
          "get_triton_kernels_version"
_RECORD = "docs/verification/h100-decode.txt"
_GRAPHS = "tests/gpu/test_graph_capture_gpu.py"

#: The generation this adapter drives: ``matmul_ogs`` with ``routing.routing_from_bitmatrix`` (vLLM's
#: "3.5.1"). Triton 3.6's ``SparseMatrix`` API and 3.8's ``matmul`` are other generations (vLLM
#: branches on them); the probe refuses them with that reason.
GENERATION_FILES = ("matmul_ogs.py", "routing.py", "swiglu.py")
PACKAGES = ("triton_kernels", "vllm.third_party.triton_kernels")


def _package_dir(name: str) -> str | None:
    """The directory of package ``name`` without importing it (nor its parents): the top-level
    package's spec, or vLLM's install directory + ``third_party/triton_kernels``."""
    top, _, rest = name.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    for root in roots:
        path = os.path.join(root, *rest.split(".")) if rest else root
        if os.path.isdir(path):
            return path
    return None


def locate() -> tuple[str | None, str | None, str]:
    """(import name, directory, detail) of the triton_kernels this machine has, as vLLM picks it
    (top-level first); (None, None, why) when none of the supported generation is there."""
    found = []
    for name in PACKAGES:
        path = _package_dir(name)
        if path is None:
            continue
        missing = [f for f in GENERATION_FILES if not os.path.isfile(os.path.join(path, f))]
        if not missing:
            return name, path, f"{name} at {path}"
        found.append(f"{name} at {path} lacks {', '.join(missing)} (another API generation)")
    if found:
        return None, None, "; ".join(found) + ": this adapter drives the matmul_ogs + routing generation vLLM vendors"
    return None, None, ("neither triton_kernels nor vllm.third_party.triton_kernels is importable (pip install vllm, "
                        "or triton_kernels from the Triton repository's python/triton_kernels)")


def triton_kernels_available() -> tuple[bool, str]:
    """Requirement probe (torch-free, imports nothing)."""
    name, _, detail = locate()
    return name is not None, detail


DECLARATION = BackendCapability(
    id="oai-triton-kernels",
    name="OpenAI triton_kernels MXFP4 MoE (vLLM's MXFP4 TRITON)",
    provider="OpenAI triton_kernels (vendored in vLLM 0.33 as vllm.third_party.triton_kernels), driven as vLLM does",
    description="Top-k packed into a bitmatrix, routing_from_bitmatrix (expert histogram, gather / scatter indices), "
                "matmul_ogs GEMM1 on MXFP4 weights with the gathered bf16 rows and swigluoai fused, matmul_ogs GEMM2 "
                "with the router weights and the top-k sum fused into its scatter.",
    kernel="triton_kernels.matmul_ogs.matmul_ogs (+ routing.routing_from_bitmatrix)",
    adapter="moe_registry.backends.oai_triton.kernel:OaiTritonExperts",
    devices=(DeviceRule(min_sm=90, max_sm=129, source=(
        f"{_EXPERTS} L43-53 _triton_kernel_moe_supports_current_device: CUDA (9, 0) <= capability < (13, 0)")),),
    dtypes=("bf16",),
    activations={Activation.SWIGLUOAI: ActivationImpl(
        kernel_name="triton_kernels.swiglu.swiglu_fn fused into GEMM1 (FusedActivation, reduction_n 2)", source=(
            f"{_EXPERTS} L1100-1101 OAITritonExperts._supports_activation (SWIGLUOAI only), L813-818 FusedActivation("
            f"FnSpecs('swiglu', swiglu_fn, ('alpha', 'limit')), (1.702, 7.0), 2); {_TK} swiglu_details/_swiglu.py "
            "compute_swiglu: interleaved gate/up pairs, s * (linear + 1)"))},
    quant=(QuantSupport(kind=QuantKind.MXFP4, dtypes=("bf16",), source=(
        f"{_EXPERTS} L1031-1038 _supports_quant_scheme [(kMxfp4Static, None)]: MXFP4 weights, bf16 activations "
        f"(L775 asserts hidden_states bf16); weights swizzled as {_SWIZZLE} (Hopper value / scale layouts, scale "
        "groups padded to 4 on SM90); biases fp32")),),
    shape_rules=(
        ShapeRule(dimension="hidden", multiple_of=32, source="MXFP4 scale groups of 32 along K (GEMM1 K = hidden)"),
        # vLLM rounds the intermediate up to 64 for TRITON on CUDA; the adapter does not pad (yet), so an
        # unaligned intermediate is refused rather than padded.
        ShapeRule(dimension="intermediate", multiple_of=64, source=(
            f"{_ORACLE} L837-916 mxfp4_round_up_hidden_size_and_intermediate_size: round_up(intermediate, 64) for "
            "TRITON on CUDA (vLLM pads; this adapter refuses an unaligned size instead)")),
    ),
    routing=RoutingSupport(precomputed=True, source=(
        f"{_EXPERTS} L1125-1176 OAITritonExperts.apply: make_routing_data(topk_ids, topk_weights) from top-k computed "
        "outside (the modular path; the monolithic class fuses softmax-top-k into triton_kernels.routing)")),
    # swigluoai_params False: vLLM's TRITON path passes alpha 1.702 / limit 7.0 whatever the model says
    # (triton_kernel_fused_experts defaults, L714-715); the adapter passes the layer's, selection admits
    # only the gpt-oss constants.
    features=FeatureSupport(
        bias=True, apply_router_weight_on_input=False, swigluoai_params=False, cuda_graphs=True, source=(
            f"{_EXPERTS} L776-777 w1_bias / w2_bias fp32; OAITritonExperts passes apply_router_weight_on_input=False; "
            f"cuda_graphs: sizes from metadata only (vLLM captures it); captured and replayed by `bench` on the H100 "
            f"({_RECORD}); the graphed == eager check is {_GRAPHS}, not yet run for it")),
    requirements=(
        Requirement(kind="package", name="triton", package="triton", import_name="triton",
                    hint="pip install triton (CUDA builds of torch bring it)", source=f"{_TK} imports triton"),
        Requirement(kind="jit_module", name="triton_kernels (matmul_ogs generation)",
                    probe="moe_registry.backends.oai_triton:triton_kernels_available",
                    build_cost="Triton JIT per launch configuration on first use (seconds each)",
                    hint="pip install vllm (vendors it), or triton_kernels from the Triton repository",
                    source=_IMPORT),
    ),
    # vLLM's gpt-oss order puts TRITON ahead of FlashInfer CUTLASS and Humming / Marlin on every CUDA device
    # but SM12x (oracle/mxfp4.py L402-435): 85, above FlashInfer CUTLASS (80), below TRT-LLM-gen (100). On SM90
    # the measurement puts Humming first (its override, 90: benchmarks/results/decode-h100/).
    priority={QuantFamily.MXFP4: 85},
    priority_overrides=(PriorityOverride(family=QuantFamily.MXFP4, devices=(DeviceRule(sm=(120, 121), source=(
        f"{_ORACLE} L425-434: consumer Blackwell moves TRITON after BATCHED_MARLIN")),), priority=55, source=(
        f"{_ORACLE} L425-434")),),
    hardware=(HardwareStatus(devices="sm90", status="not verified on hardware", record=_RECORD, note=(
        "2026-12-07, NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, triton 3.6.0, vLLM 0.33.0's vendored triton_kernels: "
        "built, ran and was captured in CUDA graphs at the gpt-oss-120b layer for T 1..4096 (finite outputs; "
        "benchmarks/results/decode-h100/), but not yet compared with the reference: tests/gpu/test_oai_triton_gpu.py "
        f"and {_GRAPHS} did not reach it within the session's device time")),),
    engines=EngineNames(vllm="triton", sglang="triton_kernel", source=(
        f"{_ORACLE} L375 map_mxfp4_backend: 'triton' -> [Mxfp4MoeBackend.TRITON] (the MXFP4 oracle's meaning of "
        "--moe-backend triton); SGLang 0.5.23 --moe-runner-backend triton_kernel: srt/layers/quantization/mxfp4.py "
        "L1447-1450 (Mxfp4MoEMethod runs triton_kernels' matmul_ogs), its gpt-oss default on Hopper at EP1 "
        "(srt/arg_groups/model_overrides/gpt_oss.py L102-120; executed record docs/verification/sglang-0.5.23-executed.json)")),
)


@hookimpl
def moe_registry_backends() -> list[BackendCapability]:
    return [DECLARATION]
