"""FlashInfer CUTLASS fused MoE: ``flashinfer.fused_moe.cutlass_fused_moe`` (0.7.2.post1).

Not verified on hardware. On the project's SM90 GPUs the kernel lives in the ``fused_moe_90`` JIT
module, whose first build takes > 40 min on 16 cores (flashinfer-moe-api.md 1.9), so this adapter
refuses to start that build (``RuntimeError``) unless ``allow_jit_build=True`` or
``MOE_REGISTRY_FLASHINFER_ALLOW_JIT=1``; it loads an AOT module (``flashinfer-jit-cache``) or an
up-to-date JIT cache. The weight preparation (everything up to the kernel call) is pure PyTorch
and is tested on CPU; the call itself is wired from FlashInfer's source and tests:

- fc1 is ``[E, 2I, H]`` rows **[up; gate]** (``w31 = cat([w3, w1])``, section 1.4): the canonical
  ``[gate; up]`` halves are swapped (gpt-oss interleaved rows de-interleaved) in data, scales and
  bias alike. fc2 is ``[E, H, I]``.
- ``quant_scales`` per scheme (section 1.6, binding ``getQuantParams``): bf16/fp16 ``None``;
  FP8 per tensor ``[w1_scale*a1 [E], 1/a2 (0-dim), w2_scale*a2 [E], a1 (0-dim)]`` with the input
  quantized here (``x / a1`` to e4m3); DeepSeek FP8 block ``[w13 block scales, w2 block scales]``
  + ``use_deepseek_fp8_block_scale`` (SM90); NvFP4 ``[a1_gs, w1 swizzled block scales as int32,
  1/(a1_gs*w1_gs) [E], a2_gs, w2 swizzled block scales as int32, 1/(a2_gs*w2_gs) [E]]`` with
  weights viewed int64 (SM100+); W4A16 MXFP4 ``[interleaved w1 e8m0 as int32, w2 ...]`` with
  weights through ``interleave_moe_weights_for_sm90_mixed_gemm`` (needs the module) +
  ``use_w4_group_scaling`` (SM90).
- int32 ids, fp32 router weights, a preallocated ``output``, a ``workspace_buffer`` sized by
  ``cutlass_fused_moe_workspace_size``, ``use_fused_finalize=False`` (deterministic),
  ``tp/ep = 1/0`` (the weights are this rank's shard and ids are local).
- activation: the declaration's ``kernel_value`` for the layer's activation (FlashInfer
  ``ActivationType``); swigluoai (SwigluBias) also gets per-expert alpha / beta (= up_offset) /
  limit tensors.

What the kernel runs (activations, dtypes and archs per scheme, alignments) lives only in the
declaration (``flashinfer_cutlass/__init__.py``); the guards here are
``moe_registry.execution.declared``'s, and only how to call the kernel per scheme stays here.

Activation scales. FP8 and NvFP4 quantize activations. The GEMM1 input scale is dynamic (this
batch's amax) unless ``input_amax`` is given; the GEMM2 input (intermediate) scale is static: from
``intermediate_amax`` if given, else calibrated once on the first forward batch with a float32
torch pass (``intermediate_amax`` of ``_flashinfer_base``), as a checkpoint's ``w2_input_scale``
would be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from typing import Any, Callable

import torch

from moe_registry.backends import _flashinfer_jit as fij
from moe_registry.backends._flashinfer_base import (
    FlashInferExperts,
    amax_dequant_scale,
    kernel_activation,
    pad_expert_weights,
    round_up,
)
from moe_registry.execution.declared import check_declared
from moe_registry.execution.weights import ExpertWeights, torch_dtype
from moe_registry.formats._common import FP8_E4M3_MAX
from moe_registry.formats.rows import gate_up_to_up_gate
from moe_registry.registry import Registry
from moe_registry.schemas.layer import LayerSpec
from moe_registry.schemas.quant import QuantKind

BACKEND = "flashinfer-cutlass"

NVFP4_ACT_GS_NUMERATOR = 448.0 * 6.0  # encode global scale = 448*6/amax (flashinfer-moe-api.md 4)
_ALIGN_BYTES = 16  # `input` must be 16-byte aligned (test_vectorized_kernel_rejects_misaligned_input)


# --- How to call the kernel per weight scheme ------------------------------------------------------
# What the kernel runs (activations, dtypes per scheme, alignments, archs per scheme) is the
# declaration's (moe_registry/backends/flashinfer_cutlass/__init__.py); check_declared derives the
# guards from it. What stays here is how to call cutlass_fused_moe for a scheme it runs.

@dataclasses.dataclass(frozen=True)
class CutlassCall:
    """Call parameters of ``cutlass_fused_moe`` for one weight scheme (flashinfer-moe-api.md 1.5-1.6)."""

    kind: str
    use_deepseek_fp8_block_scale: bool = False
    use_w4_group_scaling: bool = False


#: The schemes whose weights this adapter converts: exactly the declaration's quant supports with
#: ``adapter_implemented`` (a test keeps the two equal).
CUTLASS_CALLS = {
    QuantKind.BF16: CutlassCall("bf16"),
    QuantKind.FP16: CutlassCall("fp16"),
    QuantKind.FP8: CutlassCall("fp8"),
    QuantKind.FP8_BLOCK: CutlassCall("fp8_block", use_deepseek_fp8_block_scale=True),
    QuantKind.NVFP4: CutlassCall("nvfp4"),
    QuantKind.MXFP4: CutlassCall("mxfp4", use_w4_group_scaling=True),
}


def cutlass_call(layer: LayerSpec) -> CutlassCall:
    """How to call the kernel for this layer's scheme (after ``check_declared`` accepted the layer)."""
    call = CUTLASS_CALLS.get(layer.quant.kind)
    if call is None:  # the declaration claims a weight conversion this module does not have
        raise NotImplementedError(f"{BACKEND}: the declaration marks {layer.quant.kind.value} as adapter_implemented, "
                                  "but the adapter has no call for it")
    return call


# --- Weight preparation (pure torch) ---------------------------------------------------------------

@dataclasses.dataclass
class CutlassWeights:
    """Everything ``cutlass_fused_moe`` receives that does not depend on the batch."""

    scheme: str
    fc1: torch.Tensor  # [E, 2I|I, H] bf16/fp16/e4m3, or uint8 / int64 views for FP4
    fc2: torch.Tensor  # [E, H, I]
    fc1_bias: torch.Tensor | None = None  # [E, 2I|I], layer dtype, [up; gate]
    fc2_bias: torch.Tensor | None = None  # [E, H]
    w1_scale: torch.Tensor | None = None  # fp8: [E] dequant; fp8_block: [E, 2I/128, H/128]; nvfp4/mxfp4: int32 blocks
    w2_scale: torch.Tensor | None = None
    w1_global: torch.Tensor | None = None  # nvfp4: [E] encode global scale
    w2_global: torch.Tensor | None = None
    x_dtype: torch.dtype = torch.bfloat16  # what `input` will be (fp8 for per-tensor FP8)
    needs_sm90_interleave: bool = False  # mxfp4: fc1/fc2 still need interleave_moe_weights_for_sm90_mixed_gemm

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.fc1.dtype


def interleave_moe_scales_for_sm90_mixed_gemm(scales: torch.Tensor, group_size: int = 32) -> torch.Tensor:
    """Port of FlashInfer 0.7.2.post1 ``fused_moe/prepare.py::interleave_moe_scales_for_sm90_mixed_gemm``
    (L333-405, pure torch): ``[E, rows, K/group]`` scales -> ``[E, rows/64, K/128, folded_m,
    16 bytes / element]`` (uint8 e8m0, group 32: ``[E, rows/64, K/128, 16, 16]``)."""
    if scales.dim() != 3:
        raise ValueError(f"scales must be 3-D [E, rows, K/group], got {tuple(scales.shape)}")
    if group_size <= 0 or 128 % group_size:
        raise ValueError(f"group_size={group_size} must be positive and divide 128")
    groups_per_k128 = 128 // group_size
    element_bits = scales.element_size() * 8
    physical_cols = 128 // element_bits
    if physical_cols % groups_per_k128:
        raise ValueError(f"scale dtype {scales.dtype} and group_size={group_size} do not fold")
    m_slices = physical_cols // groups_per_k128
    if 64 % m_slices:
        raise ValueError(f"folded M slices {m_slices} must divide 64")
    folded_m = 64 // m_slices
    e, rows, kgs = scales.shape
    if rows % 64:
        raise ValueError(f"scale rows={rows} must be divisible by 64")
    if kgs % groups_per_k128:
        raise ValueError(f"K/group_size={kgs} must be divisible by {groups_per_k128}")
    k128 = kgs // groups_per_k128
    return (scales.reshape(e, rows // 64, m_slices, folded_m, k128, groups_per_k128)
            .permute(0, 1, 4, 3, 2, 5).contiguous()
            .reshape(e, rows // 64, k128, folded_m, physical_cols))


def _swizzled_block_scales(scale: torch.Tensor) -> torch.Tensor:
    """Linear e4m3 NvFP4 scales ``[E, rows, K/16]`` -> the CUTLASS 128x4-swizzled buffer viewed as
    int32 ``[E, round_up(rows, 128), round_up(K/16, 4) / 4]`` (CutlassNvfp4Runner._quant_scales)."""
    from moe_registry.formats import swizzle_128x4

    e, rows, cols = scale.shape
    flat = swizzle_128x4(scale.view(torch.uint8))  # [E, R*C]
    r, c = round_up(rows, 128), round_up(cols, 4)
    return flat.reshape(e, r, c).contiguous().view(torch.int32)


def prepare_cutlass_weights(layer: LayerSpec, weights: ExpertWeights, *, hidden_to: int | None = None,
                            intermediate_to: int | None = None, registry: Registry | None = None) -> CutlassWeights:
    """Canonical weights -> the tensors ``cutlass_fused_moe`` takes (pure torch, any device).

    Zero-pads to ``hidden_to`` / ``intermediate_to`` (exact), swaps gated rows to ``[up; gate]``,
    converts scales per scheme. MXFP4 data is left un-interleaved (``needs_sm90_interleave``): that
    step needs FlashInfer's SM90 module, see ``FlashInferCutlassExperts``. ValueError (every
    reason, from the declaration) for a layer the kernel does not run.
    """
    H, I = layer.hidden_size, layer.local_intermediate_size
    Hp, Ip = hidden_to or H, intermediate_to or I
    check_declared(BACKEND, layer, None, hidden_padded=Hp, intermediate_padded=Ip, registry=registry)
    scheme = cutlass_call(layer)
    dtype = torch_dtype(layer)
    w = pad_expert_weights(weights, layer, Hp, Ip)
    w13, b13 = w.w13, w.w13_bias
    if layer.activation.is_gated:
        params = layer.swigluoai
        interleaved = bool(params and params.interleaved)
        w13 = gate_up_to_up_gate(w13, Ip, interleaved=interleaved)
        if b13 is not None:
            b13 = gate_up_to_up_gate(b13.unsqueeze(-1), Ip, interleaved=interleaved).squeeze(-1)
    bias: dict[str, Any] = {"fc1_bias": None if b13 is None else b13.to(dtype).contiguous(),
            "fc2_bias": None if w.w2_bias is None else w.w2_bias.to(dtype).contiguous()}

    if scheme.kind in ("bf16", "fp16"):
        return CutlassWeights(scheme.kind, w13.to(dtype).contiguous(), w.w2.to(dtype).contiguous(),
                              x_dtype=dtype, **bias)
    if scheme.kind == "fp8":
        return CutlassWeights("fp8", w13.data.contiguous(), w.w2.data.contiguous(),
                              w1_scale=w13.scale.float().contiguous(), w2_scale=w.w2.scale.float().contiguous(),
                              x_dtype=torch.float8_e4m3fn, **bias)
    if scheme.kind == "fp8_block":
        return CutlassWeights("fp8_block", w13.data.contiguous(), w.w2.data.contiguous(),
                              w1_scale=w13.scale.float().contiguous(), w2_scale=w.w2.scale.float().contiguous(),
                              x_dtype=dtype, **bias)
    if scheme.kind == "nvfp4":
        return CutlassWeights("nvfp4", w13.data.contiguous().view(torch.int64),
                              w.w2.data.contiguous().view(torch.int64),
                              w1_scale=_swizzled_block_scales(w13.scale), w2_scale=_swizzled_block_scales(w.w2.scale),
                              w1_global=w13.global_scale.float().contiguous(),
                              w2_global=w.w2.global_scale.float().contiguous(), x_dtype=dtype, **bias)
    if scheme.kind == "mxfp4":
        return CutlassWeights("mxfp4", w13.data.contiguous(), w.w2.data.contiguous(),
                              w1_scale=interleave_moe_scales_for_sm90_mixed_gemm(w13.scale).view(torch.int32),
                              w2_scale=interleave_moe_scales_for_sm90_mixed_gemm(w.w2.scale).view(torch.int32),
                              x_dtype=dtype, needs_sm90_interleave=True, **bias)
    raise AssertionError(scheme.kind)


# --- Per-batch scales ------------------------------------------------------------------------------

def fp8_quant_scales(w1_scale: torch.Tensor, w2_scale: torch.Tensor, a1: torch.Tensor,
                     a2: torch.Tensor) -> list[torch.Tensor]:
    """FP8 per-tensor ``quant_scales`` (binding ``getQuantParams``; ``test_moe_fp8``). ``a1``/``a2``
    are the GEMM1 / GEMM2 input *dequant* scales (``amax/448``, 0-dim fp32); ``w*_scale`` the
    per-expert weight dequant scales ``[E]``."""
    a1, a2 = a1.float().reshape(()), a2.float().reshape(())
    return [(w1_scale * a1).contiguous(), (1.0 / a2).reshape(()), (w2_scale * a2).contiguous(), a1.clone()]


def nvfp4_quant_scales(w1_blocks: torch.Tensor, w2_blocks: torch.Tensor, w1_gs: torch.Tensor, w2_gs: torch.Tensor,
                       a1_gs: torch.Tensor, a2_gs: torch.Tensor) -> list[torch.Tensor]:
    """NvFP4 ``quant_scales`` (binding ``getQuantParams`` isNvfp4Quant; ``CutlassNvfp4Runner``): all
    global scales are *encode* scales (``448*6/amax``), so the dequant factors are ``1/(a*w)``."""
    a1_gs, a2_gs = a1_gs.float().reshape(()), a2_gs.float().reshape(())
    return [a1_gs, w1_blocks, (1.0 / (a1_gs * w1_gs)).contiguous(),
            a2_gs, w2_blocks, (1.0 / (a2_gs * w2_gs)).contiguous()]


def swiglu_bias_params(layer: LayerSpec, num_experts: int, device: Any) -> dict[str, torch.Tensor]:
    """gpt-oss clamped SwiGLU as FlashInfer's SwigluBias: ``min(g, limit) * sigmoid(alpha * ...)
    * (clamp(u, -limit, limit) + beta)`` with beta = ``up_offset``; no limit = FLT_MAX (the kernel
    default, ``tllm_enums.DEFAULT_SWIGLU_LIMIT``)."""
    p = layer.swigluoai
    if p is None:
        return {}
    limit = p.limit if p.limit is not None else torch.finfo(torch.float32).max

    def full(v: float) -> torch.Tensor:
        return torch.full((num_experts,), float(v), dtype=torch.float32, device=device)

    return {"swiglu_alpha": full(p.alpha), "swiglu_beta": full(p.up_offset), "swiglu_limit": full(limit)}


# --- Runtime (CUDA, FlashInfer) ----------------------------------------------------------------------

@contextlib.contextmanager
def _env(name: str, value: str | None):
    old = os.environ.get(name)
    try:
        if value is not None:
            os.environ[name] = value
        yield
    finally:
        if value is not None:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def first_build_cost() -> str:
    """The first-use build cost, as this backend's declaration states it (its jit_module requirement)."""
    from moe_registry.backends.flashinfer_cutlass import DECLARATION

    return next(r.build_cost for r in DECLARATION.requirements if r.kind == "jit_module" and r.build_cost)


def require_built_or_allowed(status: fij.ModuleStatus, allow_jit_build: bool | None = None) -> str | None:
    """Refuse (RuntimeError naming the first-build cost and the path checked) unless the module is
    built or building is allowed; warn when a build is about to start. Returns the value to give
    ``FLASHINFER_DISABLE_JIT`` while loading ("1" for AOT modules, which load without ninja, so
    that nothing can start compiling; None otherwise: FlashInfer refuses JIT-cache modules under
    that variable, and a permitted build needs it unset)."""
    if not status.built:
        if not fij.jit_build_allowed(allow_jit_build):
            raise RuntimeError(fij.not_built_message(status.module or "fused_moe", status.detail,
                                                     build_cost=first_build_cost()))
        warnings.warn(f"flashinfer-cutlass: FlashInfer will now build {status.module} "
                      f"({first_build_cost()}; set MAX_JOBS to bound memory, 3-8 GB per nvcc job). "
                      + status.detail, stacklevel=3)
        return None
    if status.source in ("aot", "flashinfer-jit-cache") and not (status.module or "").endswith("_h20_prebuilt_d"):
        return "1"
    return None


def load_cutlass_module(device: torch.device, *, allow_jit_build: bool | None = None) -> fij.ModuleStatus:
    """Load FlashInfer's CUTLASS fused-MoE module for ``device`` without a surprise build.

    Refuses (RuntimeError with the first-build cost and the path checked) when it is not built,
    unless building is allowed. An AOT module is loaded with ``FLASHINFER_DISABLE_JIT=1`` set for
    the duration, so nothing can start compiling; a JIT-cache module needs ninja to run (FlashInfer
    refuses JIT-cache modules under ``FLASHINFER_DISABLE_JIT``), which ``ninja -n`` showed to be a
    no-op. ``get_cutlass_fused_moe_module`` is ``functools.cache``d on the same argument
    ``cutlass_fused_moe`` passes, so later calls reuse this load.
    """
    major, minor = torch.cuda.get_device_capability(device)
    props = torch.cuda.get_device_properties(device)
    caps = tuple(torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))
    info = fij.DeviceInfo(sm=major * 10 + minor, capabilities=caps,
                          name=props.name, h20=props.multi_processor_count == 78, source="torch.cuda")
    status = fij.cutlass_module_status(info)
    guard = require_built_or_allowed(status, allow_jit_build)
    with _env("FLASHINFER_DISABLE_JIT", guard), torch.cuda.device(device):
        if status.source == "jit-cache" and not fij.jit_build_allowed(allow_jit_build):
            status = _recheck_jit_cache(info.sm, status)
        from flashinfer.fused_moe.core import get_cutlass_fused_moe_module

        get_cutlass_fused_moe_module(f"{info.sm}")
    return status


def _recheck_jit_cache(sm: int, status: fij.ModuleStatus) -> fij.ModuleStatus:
    """The status check ran ``ninja -n`` on the ``build.ninja`` found on disk; FlashInfer first
    rewrites that file from the current environment (CUDA_HOME, FLASHINFER_EXTRA_* flags, the
    package path), and a changed command line rebuilds everything. So regenerate it exactly as
    ``JitSpecNvcc.build`` will (``write_ninja``, write-if-different) and dry-run ninja again."""
    import shutil

    from flashinfer.jit import fused_moe as jit_fused_moe

    gen = {89: "sm89", 90: "sm90", 100: "sm100", 107: "sm100", 110: "sm100", 103: "sm103", 120: "sm120",
           121: "sm120"}[sm]
    spec = getattr(jit_fused_moe, f"gen_cutlass_fused_moe_{gen}_module")()
    spec.write_ninja()
    ninja = shutil.which("ninja")
    problem = "ninja is not on PATH" if ninja is None else fij._ninja_dry_run(spec.build_dir, ninja)
    if problem is not None:
        raise RuntimeError(fij.not_built_message(status.module or spec.name,
                                                 f"{spec.jit_library_path} exists but, with build.ninja regenerated "
                                                 f"for this environment, {problem}", build_cost=first_build_cost()))
    return status


def _flashinfer_cutlass_fused_moe() -> Callable[..., Any]:
    from flashinfer.fused_moe import cutlass_fused_moe

    return cutlass_fused_moe


def _flashinfer_workspace_size(**kwargs: Any) -> int:
    from flashinfer.fused_moe import cutlass_fused_moe_workspace_size

    return int(cutlass_fused_moe_workspace_size(**kwargs))


def _flashinfer_activation(value: int) -> Any:
    from flashinfer.fused_moe import ActivationType

    return ActivationType(value)


def _sm90_interleave(weight: torch.Tensor) -> torch.Tensor:
    from flashinfer.fused_moe import interleave_moe_weights_for_sm90_mixed_gemm

    return interleave_moe_weights_for_sm90_mixed_gemm(weight, "fp4")


# --- The adapter -------------------------------------------------------------------------------------

class FlashInferCutlassExperts(FlashInferExperts):
    """FlashInfer ``cutlass_fused_moe`` for one layer (module docstring). Extra keyword arguments
    (all optional; ``build_experts`` passes none): ``allow_jit_build`` (None: the
    ``MOE_REGISTRY_FLASHINFER_ALLOW_JIT`` env var), ``input_amax`` / ``intermediate_amax`` (static
    activation ranges for FP8 / NvFP4), ``max_num_tokens`` (preallocate the workspace),
    ``tune_max_num_tokens`` (FlashInfer autotuner bucket range), ``check_id_range``."""

    backend = "flashinfer-cutlass"

    def __init__(self, layer: LayerSpec, weights: ExpertWeights, *, pad_hidden_to: int | None = None,
                 pad_intermediate_to: int | None = None, allow_jit_build: bool | None = None,
                 input_amax: float | None = None, intermediate_amax: float | None = None,
                 max_num_tokens: int | None = None, tune_max_num_tokens: int = 8192,
                 check_id_range: bool = True, registry: Registry | None = None) -> None:
        super().__init__(layer, weights, pad_hidden_to=pad_hidden_to, pad_intermediate_to=pad_intermediate_to)
        self._check_layer(layer, weights, registry)  # ValueError
        self._check_runtime(layer, registry)  # RuntimeError
        self.module_status = load_cutlass_module(self.device, allow_jit_build=allow_jit_build)  # RuntimeError
        self._setup(layer, weights, input_amax=input_amax, intermediate_amax=intermediate_amax,
                    max_num_tokens=max_num_tokens, tune_max_num_tokens=tune_max_num_tokens,
                    check_id_range=check_id_range, registry=registry)

    SETUP_DEFAULTS = dict(input_amax=None, intermediate_amax=None, max_num_tokens=None, tune_max_num_tokens=8192,
                          check_id_range=True)

    def _check_call(self, layer: LayerSpec) -> None:
        self.scheme = cutlass_call(layer)

    def _setup(self, layer: LayerSpec, weights: ExpertWeights, *, input_amax: float | None,
               intermediate_amax: float | None, max_num_tokens: int | None, tune_max_num_tokens: int,
               check_id_range: bool, registry: Registry | None) -> None:
        """Prepare weights and per-layer constants (no flashinfer call except the MXFP4 interleave)."""
        self.out_dtype = torch_dtype(layer)
        self.check_id_range = check_id_range
        self.tune_max_num_tokens = tune_max_num_tokens
        self.activation_type = kernel_activation(self.declaration, layer)
        self.prepared = prepare_cutlass_weights(layer, weights, hidden_to=self.hidden_padded,
                                                intermediate_to=self.intermediate_padded, registry=registry)
        if self.prepared.needs_sm90_interleave:
            self.prepared.fc1 = _sm90_interleave(self.prepared.fc1)
            self.prepared.fc2 = _sm90_interleave(self.prepared.fc2)
            self.prepared.needs_sm90_interleave = False
        E = layer.local_num_experts
        self.activation_params = swiglu_bias_params(layer, E, self.device)
        self._init_ranges(weights, input_amax, intermediate_amax,
                          quantizes_activations=self.scheme.kind in ("fp8", "nvfp4"))
        self._workspace: torch.Tensor | None = None
        self._workspace_tokens = 0
        if max_num_tokens:
            self._ensure_workspace(max_num_tokens)

    def _ensure_workspace(self, num_tokens: int) -> torch.Tensor:
        if self._workspace is not None and num_tokens <= self._workspace_tokens:
            return self._workspace
        capacity = 1 << max(int(num_tokens) - 1, 0).bit_length()  # next power of two
        p = self.prepared
        size = _flashinfer_workspace_size(
            max_num_tokens=capacity, hidden_size=self.hidden_padded, intermediate_size=self.intermediate_padded,
            num_experts_total=self.layer.local_num_experts, top_k=self.layer.top_k, x_dtype=p.x_dtype,
            weight_dtype=p.weight_dtype, output_dtype=self.out_dtype,
            activation_type=_flashinfer_activation(self.activation_type),
            use_deepseek_fp8_block_scale=self.scheme.use_deepseek_fp8_block_scale,
            use_w4_group_scaling=self.scheme.use_w4_group_scaling, use_fused_finalize=False, device=self.device)
        self._workspace = torch.empty(size, dtype=torch.uint8, device=self.device)
        self._workspace_tokens = capacity
        return self._workspace

    def _inputs_and_scales(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        p, kind = self.prepared, self.scheme.kind
        if kind in ("bf16", "fp16"):
            return x, None
        assert p.w1_scale is not None and p.w2_scale is not None  # every quantized kind has weight scales
        if kind == "fp8_block":
            return x, [p.w1_scale, p.w2_scale]
        if kind == "mxfp4":
            return x, [p.w1_scale, p.w2_scale]
        in_amax = self.input_amax if self.input_amax is not None else x.abs().amax().float().clamp(min=1e-12)
        if kind == "fp8":
            a1 = amax_dequant_scale(in_amax, FP8_E4M3_MAX)
            a2 = amax_dequant_scale(self._calibrated_intermediate_amax(), FP8_E4M3_MAX)
            xq = (x.float() / a1).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
            return xq, fp8_quant_scales(p.w1_scale, p.w2_scale, a1, a2)
        if kind == "nvfp4":
            assert p.w1_global is not None and p.w2_global is not None  # NvFP4 weights carry global scales
            a1_gs = NVFP4_ACT_GS_NUMERATOR / in_amax
            a2_gs = NVFP4_ACT_GS_NUMERATOR / self._calibrated_intermediate_amax()
            return x, nvfp4_quant_scales(p.w1_scale, p.w2_scale, p.w1_global, p.w2_global, a1_gs, a2_gs)
        raise AssertionError(kind)

    def forward(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        T, H = hidden_states.shape
        x = self._begin_forward(hidden_states, topk_weights, topk_ids)
        if x is None:
            return hidden_states.new_empty((0, H))
        x_in, quant_scales = self._inputs_and_scales(x)
        if x_in.data_ptr() % _ALIGN_BYTES:
            raise ValueError(f"hidden_states: expected a {_ALIGN_BYTES}-byte aligned data pointer "
                             f"(cutlass_fused_moe input), got address {x_in.data_ptr():#x}")
        ids = topk_ids if topk_ids.dtype == torch.int32 else topk_ids.to(torch.int32)
        out = torch.empty((T, self.hidden_padded), dtype=self.out_dtype, device=x.device)
        workspace = self._ensure_workspace(T)
        p = self.prepared
        _flashinfer_cutlass_fused_moe()(
            x_in, ids, topk_weights, p.fc1, p.fc2, self.out_dtype, quant_scales,
            fc1_expert_biases=p.fc1_bias, fc2_expert_biases=p.fc2_bias,
            tp_size=1, tp_rank=0, ep_size=1, ep_rank=0, output=out,
            use_deepseek_fp8_block_scale=self.scheme.use_deepseek_fp8_block_scale,
            use_w4_group_scaling=self.scheme.use_w4_group_scaling,
            tune_max_num_tokens=self.tune_max_num_tokens,
            activation_type=_flashinfer_activation(self.activation_type),
            use_fused_finalize=False, workspace_buffer=workspace, **self.activation_params)
        return out if self.hidden_padded == H else out[:, :H].contiguous()


def fused_moe_module_status() -> tuple[bool, str]:
    """(built, detail) for this machine's CUTLASS fused-MoE module; see ``_flashinfer_jit``."""
    return fij.fused_moe_module_status()
