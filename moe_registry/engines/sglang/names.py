"""Our backend ids <-> SGLang 0.5.23's MoE runner names (``--moe-runner-backend``), and the kernel
family each SGLang runner runs, in the family vocabulary of :mod:`..vllm.names` (so a row of
either parity table agrees when the engine and we run the same kernel family).

The SGLang flag of a backend is declared where the backend is (``EngineNames.sglang`` and, per
quant kind, ``sglang_by_quant``); this module reads it and holds what only SGLang says: its runner
names, which quant method runs which runner on which device, and which runner names each quant
kind's method has a branch for (:data:`BRANCHES`, checked against executed SGLang by
``tests/test_sglang_names.py`` from the committed record and by ``tests/engines/test_sglang.py``
against the installed wheel).
"""

from __future__ import annotations

from ...schemas.capability import BackendCapability
from ...schemas.quant import QuantKind

SGLANG_VERSION = "0.5.23"
_U = "sglang 0.5.23 srt/"

# MoeRunnerBackend values (layers/moe/utils.py L194-L219; the CLI list is arg_groups/choices.py L136).
RUNNERS: frozenset[str] = frozenset({
    "auto", "deep_gemm", "triton", "triton_kernel", "flashinfer_trtllm", "experimental_sgl_trtllm",
    "flashinfer_trtllm_routed", "flashinfer_cutlass", "flashinfer_mxfp4", "flashinfer_cutedsl", "flashinfer_megamoe",
    "cutlass", "aiter", "marlin", "humming", "experimental_sgl_marlin", "lora_cutedsl", "lora_triton", "lora_marlin",
    "hpc_ops", "megamoe", "intel_xpu",
})

# SGLang quant-method class -> runner names it has a branch for on CUDA (its create_moe_runner; any other name
# raises, is quietly replaced, or is accepted and fails at the first forward: sglang#36569). Only the methods our
# quant kinds load into are listed, and only names the executed record shows SGLang building for that method.
BRANCHES: dict[str, tuple[frozenset[str], str]] = {
    "UnquantizedFusedMoEMethod": (frozenset({"triton", "flashinfer_trtllm", "flashinfer_cutlass", "deep_gemm", "triton_kernel"}),
                                  f"{_U}layers/quantization/unquant.py L1169-1196 (any other name runs triton)"),
    "Fp8MoEMethod": (frozenset({"triton", "deep_gemm", "flashinfer_trtllm"}),
                     f"{_U}layers/quantization/fp8.py L2941-3000 (flashinfer_cutlass / cutedsl become triton, INFO; "
                     "marlin / humming only for FP4 experts, L445-456)"),
    "ModelOptNvFp4FusedMoEMethod": (frozenset({"flashinfer_trtllm", "flashinfer_cutlass", "marlin"}),
                                    f"{_U}layers/quantization/modelopt_quant.py L3111-3240"),
    "Mxfp4MoEMethod": (frozenset({"triton", "triton_kernel", "marlin", "deep_gemm", "flashinfer_mxfp4"}),
                       f"{_U}layers/quantization/mxfp4.py L1433-1476 (flashinfer_mxfp4: cutlass_sm90 / cutlass_sm120 / "
                       "trtllm_sm100; others raise NotImplementedError)"),
    # GPTQ MoE layers run Marlin under auto only: an explicit --moe-runner-backend (marlin included) trips
    # `assert get_moe_runner_backend().is_auto()` when the layer is built (executed record, probe-int4_w4a16).
    "GPTQMarlinMoEMethod": (frozenset(), f"{_U}hardware_backend/gpu/quantization/gptq_kernels.py L306-311"),
    "CompressedTensorsFusedMoEMethod": (frozenset({"marlin", "flashinfer_trtllm"}),
                                        f"{_U}layers/quantization/compressed_tensors/compressed_tensors.py L1341 (the "
                                        "scheme picks; int4 W4A16: marlin, flashinfer_trtllm for Kimi K2 thinking on SM100, "
                                        "arg_groups/overrides.py L810-831)"),
}

# Our quant kind -> the SGLang quant methods its checkpoints load into (as executed for the presets). A flag is
# named for a kind only when every one of them has a branch for it.
METHODS_OF_KIND: dict[QuantKind, tuple[str, ...]] = {
    QuantKind.BF16: ("UnquantizedFusedMoEMethod",),
    QuantKind.FP16: ("UnquantizedFusedMoEMethod",),
    QuantKind.FP8: ("Fp8MoEMethod",),
    QuantKind.FP8_BLOCK: ("Fp8MoEMethod",),
    QuantKind.NVFP4: ("ModelOptNvFp4FusedMoEMethod",),
    QuantKind.MXFP4: ("Mxfp4MoEMethod",),
    QuantKind.INT4_W4A16: ("GPTQMarlinMoEMethod", "CompressedTensorsFusedMoEMethod"),
}

# runner -> kernel family it runs, for runners whose family does not depend on the device.
_FAMILY: dict[str, str] = {
    "flashinfer_trtllm": "flashinfer-trtllm",
    "flashinfer_trtllm_routed": "flashinfer-trtllm",
    "flashinfer_cutlass": "flashinfer-cutlass",
    "flashinfer_cutedsl": "flashinfer-cutedsl",
    "triton": "triton",
    "triton_kernel": "oai-triton-kernels",
    "marlin": "marlin",
    "humming": "humming",
    "deep_gemm": "deep-gemm",
    "cutlass": "sglang-cutlass",
}


def kernel_family(runner: str, method: str | None, sm: int | None) -> str | None:
    """The kernel family SGLang runs for ``runner`` in quant method ``method`` on SM ``sm``.

    ``flashinfer_mxfp4`` is two kernels: FlashInfer's TRT-LLM-gen MXFP4 MoE on SM100 and its CUTLASS
    mixed-input MoE on SM90 / SM120 (mxfp4.py ``_fi_kernel``: trtllm_sm100, cutlass_sm90, cutlass_sm120)."""
    if runner == "flashinfer_mxfp4":
        if sm is None:
            return None
        return "flashinfer-trtllm" if sm // 10 == 10 else "flashinfer-cutlass"
    return _FAMILY.get(runner)


def sglang_flag(declaration: BackendCapability, kind: QuantKind) -> str | None:
    """The ``--moe-runner-backend`` value that makes SGLang run this backend's kernel on ``kind``."""
    return declaration.engines.sglang_flag(kind)


def missing_branches(declaration: BackendCapability) -> list[str]:
    """Every (quant kind, flag) of a declaration that names a runner SGLang has no branch for
    (sglang#36569, #27951: SGLang accepts such a name and crashes at the first forward)."""
    problems = []
    for support in declaration.quant:
        flag = sglang_flag(declaration, support.kind)
        if flag is None:
            continue
        if flag not in RUNNERS:
            problems.append(f"{support.kind.value}: {flag!r} is no SGLang {SGLANG_VERSION} runner")
            continue
        methods = METHODS_OF_KIND.get(support.kind)
        if methods is None:
            problems.append(f"{support.kind.value}: {flag!r} named, but no SGLang quant method of this kind is known here")
            continue
        problems += [f"{support.kind.value}: {m} has no {flag!r} branch" for m in methods if flag not in BRANCHES[m][0]]
    return problems


def has_branch(flag: str | None, kind: QuantKind) -> bool:
    """Does every SGLang quant method that loads ``kind`` have a branch for runner ``flag``?"""
    methods = METHODS_OF_KIND.get(kind)
    return flag is not None and methods is not None and all(flag in BRANCHES[m][0] for m in methods)
