"""The stand-ins that let the installed vLLM build a model's MoE layers on a machine without the
target GPU (``python -m moe_registry.engines.vllm.executed`` only; never imported by the plugin).

Nothing of vLLM's selection is restated here: vLLM's own model class, layer code, quant methods and
oracles run. What is faked is what a CPU box lacks (the GPU, its driver, the compiled ``_C`` ops,
process groups of N ranks, device memory). Each stand-in is in :data:`FAKES` with why it is needed
and why it cannot move the MoE choice; a record and the parity document list them. The compiled
probes that *do* take part in selection answer what the wheel's C++ answers (S4, S9), and the
Python range checks around them stay vLLM's.
"""

from __future__ import annotations

import os
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(frozen=True)
class Fake:
    id: str
    what: str
    why: str  # why the CPU run needs it
    safe: str  # why it cannot change vLLM's MoE choice


FAKES: tuple[Fake, ...] = (
    Fake("S1", "vllm._C_stable_libtorch is an empty module",
         "its .so links libcuda.so.1 and a CUDA libtorch (platforms/cuda.py L23 imports it)",
         "it registers kernels; no selection code reads it"),
    Fake("S2", "the platform is vLLM's CudaPlatformBase reporting the target's compute capability, name, memory, "
         "SM count and a node of 8 such GPUs; torch.cuda's device-property getters report the same",
         "there is no GPU here", "this is the premise: every capability check vLLM makes runs on it"),
    Fake("S3", "VLLM_HAS_FLASHINFER_CUBIN=1", "has_flashinfer() must not depend on this box's toolchain",
         "it says FlashInfer's cubins are present, as in vLLM's CUDA images"),
    Fake("S4", "the C++ probe torch.ops._C.cutlass_group_gemm_supported answers true",
         "the op lives in the CUDA extension (S1)",
         "vLLM's own 90 <= cc < 110 range check around it stays (vllm/_custom_ops.py L828-835); the CUDA 13 "
         "build answers true inside that range"),
    Fake("S9", "cutlass_scaled_mm_supports_{fp8,block_fp8,fp4} answer cc >= 89 / >= 90 / >= 100",
         "w8a8_utils calls them at import; the ops live in the CUDA extension",
         "they gate dense linear kernels, not MoE experts"),
    Fake("S10", "vllm.vllm_flash_attn is a placeholder whose functions raise when called",
         "its extensions need CUDA; attention modules import names from it", "attention is not MoE selection"),
    Fake("S11", "_has_module('deep_gemm' | 'vllm.third_party.deep_gemm') is find_spec only",
         "the vendored DeepGEMM .so needs libcuda, so the trial import fails here",
         "DeepGEMM is found as on a GPU box; its nvcc >= 12.9 check stays real"),
    Fake("S12", "process groups are stand-ins reporting the layout's world sizes (TP, DP, EP = TP x DP), rank 0",
         "N ranks cannot run here", "layers read group sizes while they are built; no collective runs"),
    Fake("S13", "tensors are allocated on the meta device", "there is no device memory",
         "selection runs before weights exist (routed_experts.py L164 then L227)"),
    Fake("S14", "compiled ops that layers bind when they are built (torch.ops._C.<op>) are stand-ins that raise if "
         "called", "the ops live in the CUDA extension (S1)",
         "only those names; every other op stays missing, so availability probes answer as vLLM's own code decides"),
    Fake("S15", "the CuTe-DSL router GEMM warm-up module (bf16x3_router_gemm_sm90) is a stand-in",
         "it imports nvidia-cutlass-dsl, whose JIT libraries are not installed here", "it is the dense gate's GEMM"),
    Fake("S16", "torch.compile off (CompilationConfig(mode=NONE)); VLLM_DISABLE_SHARED_EXPERTS_STREAM=1",
         "compilation passes bind CUDA ops at import; a CUDA stream cannot be created here",
         "FusedMoEConfig reads only max_cudagraph_capture_size from the compilation config, and no is_supported_config "
         "reads it; the stream only overlaps shared experts at run time"),
    Fake("S17", "Triton's CUDA driver reports itself active",
         "vllm/triton_utils/importing.py uses real Triton only with one active driver; here there is none, so "
         "vLLM would swap in placeholders a GPU box never sees (they break @triton.autotune config filters at import)",
         "no kernel is compiled or launched while layers are built"),
)

# torch.ops._C names that layers look up while they are built (S14): activation / norm / rotary ops that
# CustomOp classes bind in __init__, and the ops vllm/compilation/passes bind at import (gemma4.py imports
# vllm.compilation.backends whatever the compilation mode). Found by building every bundled preset at SM90
# and SM100; any other name stays missing.
STANDIN_OPS = frozenset({
    # activation.py / layernorm.py / rotary_embedding: bound in CustomOp __init__ (not the hasattr-probed
    # activation_lut_bf16, gelu_tanh, gemma_rms_norm, layer_norm, which stay missing)
    "silu_and_mul", "mul_and_silu", "gelu_and_mul", "gelu_tanh_and_mul", "fatrelu_and_mul", "swigluoai_and_mul",
    "swiglustep_and_mul", "situ_and_mul", "silu_and_mul_with_clamp", "relu_squared", "relu2_no_mul", "gelu_new",
    "gelu_fast", "gelu_quick", "rotary_embedding", "rms_norm", "fused_add_rms_norm",
    # vllm/compilation/passes: bound at import without a hasattr guard
    "static_scaled_fp8_quant", "dynamic_scaled_fp8_quant", "dynamic_per_token_scaled_fp8_quant",
    "rms_norm_static_fp8_quant", "fused_add_rms_norm_static_fp8_quant", "rms_norm_dynamic_per_token_quant",
    "silu_and_mul_quant", "silu_and_mul_per_block_quant", "fused_qk_norm_rope",
})

# The node vLLM sees: 8 GPUs of the target (ParallelConfig checks a TP x DP world fits on the node).
NODE_GPUS = 8

# SMs per device (attention workspaces size by it; no MoE rule reads it).
_COMPUTE_UNITS = {"a100": 108, "h100": 132, "h200": 132, "b200": 148, "gb200": 152, "b300": 160, "rtx-pro-6000": 188}


@dataclass(frozen=True)
class Target:
    """The GPU vLLM is made to see."""

    name: str
    sm: int  # 90, 100, 103, ...
    memory_gb: float

    @property
    def capability(self) -> tuple[int, int]:
        return self.sm // 10, self.sm % 10

    @property
    def compute_units(self) -> int:
        return _COMPUTE_UNITS.get(self.name, 132)


_installed: Target | None = None


def install(target: Target) -> None:
    """Put S1-S11, S14-S16 in place for this process (one target per process: vLLM caches what it
    probes). Must run before anything imports ``vllm.platforms.cuda``."""
    global _installed
    if _installed is not None:
        if _installed != target:
            raise RuntimeError(f"this process already fakes {_installed.name}; start another for {target.name}")
        return
    os.environ["VLLM_HAS_FLASHINFER_CUBIN"] = "1"  # S3
    os.environ["VLLM_DISABLE_SHARED_EXPERTS_STREAM"] = "1"  # S16
    sys.modules.setdefault("vllm._C_stable_libtorch", types.ModuleType("vllm._C_stable_libtorch"))  # S1
    sys.modules.setdefault("vllm.vllm_flash_attn", _flash_attn_placeholder())  # S10
    router = "vllm.model_executor.layers.fused_moe.router.bf16x3_router_gemm_sm90"
    sys.modules.setdefault(router, _router_gemm_standin(router))  # S15
    _platform(target)  # S2
    _compiled_probes()  # S4, S9
    _standin_ops()  # S14
    _deep_gemm_found()  # S11
    _triton_driver_active()  # S17
    _installed = target


def _raise_when_called(name: str) -> Any:
    def call(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"{name} is a stand-in on this machine (moe_registry.engines.vllm.fakes)")
    return call


def _flash_attn_placeholder() -> types.ModuleType:
    module = types.ModuleType("vllm.vllm_flash_attn")
    module.__path__ = []

    def attribute(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _raise_when_called(f"vllm.vllm_flash_attn.{name}")

    module.__getattr__ = attribute  # type: ignore[method-assign]
    return module


def _router_gemm_standin(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    class _Kernel:
        def register_warmup(self, **_kwargs: Any) -> None:
            return None

    module._SM90_BF16X3_ROUTER_GEMM_KERNEL = _Kernel()  # type: ignore[attr-defined]
    return module


def _platform(target: Target) -> None:
    import vllm.platforms as platforms
    from vllm.platforms.cuda import CudaPlatformBase
    from vllm.platforms.interface import DeviceCapability

    major, minor = target.capability

    class TargetCudaPlatform(CudaPlatformBase):
        @classmethod
        def get_device_capability(cls, device_id: int = 0) -> DeviceCapability:
            return DeviceCapability(major=major, minor=minor)

        @classmethod
        def get_device_name(cls, device_id: int = 0) -> str:
            return f"NVIDIA {target.name.upper()} (faked)"

        @classmethod
        def get_device_total_memory(cls, device_id: int = 0) -> int:
            return int(target.memory_gb * 2**30)

        @classmethod
        def is_fully_connected(cls, physical_device_ids: list[int]) -> bool:
            return True

        @classmethod
        def num_compute_units(cls, device_id: int = 0) -> int:
            return target.compute_units

        @classmethod
        def device_count(cls) -> int:
            return NODE_GPUS

    platforms._current_platform = TargetCudaPlatform()

    import torch

    properties = types.SimpleNamespace(name=f"NVIDIA {target.name.upper()} (faked)", major=major, minor=minor,
                                       multi_processor_count=target.compute_units,
                                       total_memory=int(target.memory_gb * 2**30))
    torch.cuda.get_device_properties = lambda device=None: properties  # type: ignore[assignment,return-value]
    torch.cuda.get_device_capability = lambda device=None: (major, minor)
    torch.cuda.get_device_name = lambda device=None: properties.name
    torch.cuda.current_device = lambda: 0
    torch.cuda.device_count = lambda: NODE_GPUS


def _compiled_probes() -> None:
    import vllm._custom_ops as ops

    real_group_gemm = ops.cutlass_group_gemm_supported

    def cutlass_group_gemm_supported(cuda_device_capability: int) -> bool:
        if cuda_device_capability < 90 or cuda_device_capability >= 110:
            return bool(real_group_gemm(cuda_device_capability))  # vLLM's own range check answers
        return True

    ops.cutlass_group_gemm_supported = cutlass_group_gemm_supported
    ops.cutlass_scaled_mm_supports_fp8 = lambda cap: cap >= 89
    ops.cutlass_scaled_mm_supports_block_fp8 = lambda cap: cap >= 90
    ops.cutlass_scaled_mm_supports_fp4 = lambda cap: cap >= 100


def _standin_ops() -> None:
    import torch

    real = torch.ops._C

    class StandInOp:
        def __init__(self, name: str):
            self.name = name

        def __getattr__(self, overload: str) -> Any:  # .default, .out, ...: the same stand-in
            if overload.startswith("__"):
                raise AttributeError(overload)
            return self

        def __call__(self, *_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError(f"torch.ops._C.{self.name} is a stand-in on this machine")

    class Namespace:
        def __getattr__(self, name: str) -> Any:
            if name in STANDIN_OPS:
                return StandInOp(name)
            return getattr(real, name)

    torch.ops.__dict__["_C"] = Namespace()


def _deep_gemm_found() -> None:
    import importlib.util

    import vllm.utils.import_utils as iu

    real = iu._has_module

    def has_module(module_name: str) -> bool:
        if module_name in ("deep_gemm", "vllm.third_party.deep_gemm"):
            return importlib.util.find_spec(module_name) is not None
        return bool(real(module_name))

    iu._has_module = has_module


def _triton_driver_active() -> None:
    from triton.backends import backends

    nvidia = backends.get("nvidia")
    if nvidia is not None and nvidia.driver is not None:
        nvidia.driver.is_active = staticmethod(lambda: True)


# --- While a model is built -----------------------------------------------------------------------


class _Group:
    """A process group as the layers see it while they are built: sizes and rank 0 (S12)."""

    def __init__(self, name: str, size: int):
        self.unique_name = name
        self.world_size = size
        self.rank = self.rank_in_group = self.local_rank = 0
        self.ranks = list(range(size))
        self.first_rank, self.last_rank = 0, size - 1
        self.is_first_rank, self.is_last_rank = True, size == 1
        self.device_group = self.cpu_group = _GroupHandle(size)
        self.use_custom_op_call = False


class _GroupHandle:
    def __init__(self, size: int):
        self._size = size

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return 0


@contextmanager
def process_groups(tp: int, dp: int) -> Iterator[None]:
    """vLLM's parallel-state groups for a TP x DP layout (EP group = TP x DP, as initialize_model_parallel
    builds it for MoE models), restored afterwards."""
    import vllm.distributed.parallel_state as ps

    sizes = {"_WORLD": tp * dp, "_TP": tp, "_PP": 1, "_DP": dp, "_EP": tp * dp, "_PCP": 1, "_DCP": 1}
    saved = {name: getattr(ps, name, None) for name in sizes}
    for name, size in sizes.items():
        setattr(ps, name, _Group(name.strip("_").lower(), size))
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(ps, name, value)


@contextmanager
def meta_device() -> Iterator[None]:
    """Every tensor created while building, on the meta device, including those vLLM asks on "cuda" (S13)."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._device import _device_constructors

    constructors = _device_constructors()

    def on_gpu(device: Any) -> bool:
        return isinstance(device, int) or (device is not None and torch.device(device).type == "cuda")

    class Meta(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = dict(kwargs or {})
            device = kwargs.get("device")
            if (func in constructors and device is None) or on_gpu(device):
                kwargs["device"] = "meta"
            return func(*args, **kwargs)

    with Meta():
        yield
