"""What the two FlashInfer adapters (CUTLASS and TRT-LLM-gen) share: the runtime check, the
build-time checks derived from the declaration, exact zero padding of the weights, static activation
ranges with one-batch calibration of the GEMM2 input scale, the CPU-test constructor, and the start
of ``forward``. Imports torch; the torch-free JIT-cache checks are ``_flashinfer_jit``."""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from moe_registry.backends._flashinfer_jit import (
    FLASHINFER_DISTRIBUTION,
    FLASHINFER_VERSION_WRITTEN_FOR,
    flashinfer_package_root,
)
from moe_registry.execution.activations import apply_activation
from moe_registry.execution.base import Experts, pad_weights
from moe_registry.execution.declared import check_declared, device_spec_of
from moe_registry.execution.guards import check_forward_inputs, check_weights
from moe_registry.execution.weights import ExpertWeights
from moe_registry.formats.rows import pad_rows_cols, pad_weight
from moe_registry.registry import Registry, default_registry
from moe_registry.schemas.capability import BackendCapability
from moe_registry.schemas.layer import LayerSpec


def require_runtime(backend: str, device: torch.device, layer: LayerSpec, hidden_padded: int,
                    intermediate_padded: int, registry: Registry | None = None) -> int:
    """RuntimeError unless the weights sit on a CUDA GPU the backend's declaration runs this layer
    on, and flashinfer is installed; returns the GPU's SM. (The device facts come from the
    declaration through check_declared, never from a list here.)"""
    if device.type != "cuda" or not torch.cuda.is_available():
        decl = (registry or default_registry()).get(backend)
        needs = " or ".join(rule.describe() for rule in decl.devices)
        raise RuntimeError(f"{backend} needs CUDA weights on {needs}; weights are on {device}"
                           + ("" if torch.cuda.is_available() else " and CUDA is not available"))
    spec = device_spec_of(device)
    try:
        check_declared(backend, layer, spec, hidden_padded=hidden_padded, intermediate_padded=intermediate_padded,
                       registry=registry)
    except ValueError as exc:  # the layer already passed without a device: what is left is about this GPU
        raise RuntimeError(str(exc)) from None
    if flashinfer_package_root() is None:
        raise RuntimeError(f"{backend} needs {FLASHINFER_DISTRIBUTION} "
                           f"(pip install {FLASHINFER_DISTRIBUTION}=={FLASHINFER_VERSION_WRITTEN_FOR})")
    if spec.sm is None:
        raise RuntimeError(f"{backend}: {device} reports no SM version")
    return spec.sm


def kernel_activation(decl: BackendCapability, layer: LayerSpec) -> int:
    """FlashInfer's ``ActivationType`` value for the layer's activation, from the declaration
    (ActivationImpl.kernel_value; call after ``check_declared`` accepted the layer)."""
    impl = decl.activations[layer.activation]
    if impl.kernel_value is None:
        raise ValueError(f"{decl.id}: the declaration gives no kernel_value for activation {layer.activation.value}")
    return impl.kernel_value


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _gemm1_segments(I: int, I_to: int, gated: bool, interleaved: bool) -> list[tuple[int, int]]:
    if not gated:
        return [(I, I_to)]
    if interleaved:  # gpt-oss rows g0, u0, g1, u1, ...: zero pairs go at the end
        return [(2 * I, 2 * I_to)]
    return [(I, I_to), (I, I_to)]


def pad_expert_weights(weights: ExpertWeights, layer: LayerSpec, hidden_to: int, intermediate_to: int) -> ExpertWeights:
    """``ExpertWeights`` zero-padded to ``hidden_to`` / ``intermediate_to`` (exact, see
    ``execution.base.Experts``); quantized formats padded in their packed form (``formats.rows``)."""
    H, I = layer.hidden_size, layer.local_intermediate_size
    if (hidden_to, intermediate_to) == (H, I):
        return weights
    params = layer.swigluoai
    interleaved = bool(params and params.interleaved)
    if not weights.is_quantized:
        return pad_weights(weights, hidden_to, intermediate_to, interleaved=interleaved)
    seg13 = _gemm1_segments(I, intermediate_to, layer.activation.is_gated, interleaved)
    w13 = pad_weight(weights.w13, seg13, hidden_to)
    w2 = pad_weight(weights.w2, [(H, hidden_to)], intermediate_to)
    b13 = None if weights.w13_bias is None else pad_rows_cols(weights.w13_bias.unsqueeze(-1), seg13, None).squeeze(-1)
    b2 = None if weights.w2_bias is None else pad_rows_cols(weights.w2_bias.unsqueeze(-1), [(H, hidden_to)],
                                                            None).squeeze(-1)
    return ExpertWeights(w13=w13, w2=w2, w13_bias=b13, w2_bias=b2)


def amax_dequant_scale(amax: Any, fmax: float) -> torch.Tensor:
    """``amax / fmax`` as a 0-dim fp32 tensor, floored so an all-zero input gives a tiny positive
    scale rather than a division by zero."""
    a = torch.as_tensor(amax, dtype=torch.float32)
    return (a.clamp(min=1e-12) / fmax).reshape(())


def intermediate_amax(layer: LayerSpec, weights: ExpertWeights, hidden_states: torch.Tensor,
                      topk_ids: torch.Tensor) -> torch.Tensor:
    """``max |act(x @ w13[e].T + b13[e])|`` over the routed (token, expert) pairs of one batch: the
    FC2-input range a static FP8 / NvFP4 activation scale is calibrated from. Runs in float32 on
    the canonical (unpadded, ``[gate; up]``) weights with the reference activation."""
    x = hidden_states.float()
    T, k = topk_ids.shape
    ids = topk_ids.reshape(-1).long()
    tokens = torch.arange(T, device=ids.device).repeat_interleave(k)
    amax = torch.zeros((), dtype=torch.float32, device=x.device)
    for e in torch.unique(ids).tolist():  # one host sync, once per calibration
        rows = x[tokens[ids == e]]
        w13 = weights.w13
        w = w13[e].float() if isinstance(w13, torch.Tensor) else w13.expert(e).dequantize(torch.float32)
        h = rows @ w.to(x.device).T
        if weights.w13_bias is not None:
            h = h + weights.w13_bias[e].float()
        amax = torch.maximum(amax, apply_activation(h, layer).abs().amax())
    return amax


class FlashInferExperts(Experts):
    sm: int | None  # None when built by _without_runtime_checks (CPU tests)
    module_status: Any
    check_id_range: bool
    # Keyword defaults of ``_setup`` for the CPU-test constructor.
    SETUP_DEFAULTS: ClassVar[dict[str, Any]] = {}

    def _check_layer(self, layer: LayerSpec, weights: ExpertWeights, registry: Registry | None) -> None:
        """What needs no GPU: the declaration's rules for this layer (ValueError) and the weights."""
        self.declaration = check_declared(self.backend, layer, None, hidden_padded=self.hidden_padded,
                                          intermediate_padded=self.intermediate_padded, registry=registry)
        self._check_call(layer)
        check_weights(layer, weights)
        self.device = weights.device

    def _check_call(self, layer: LayerSpec) -> None:
        """Adapter-specific layer checks that are about calling the kernel, not capability."""

    def _check_runtime(self, layer: LayerSpec, registry: Registry | None) -> None:
        self.sm = require_runtime(self.backend, self.device, layer, self.hidden_padded,
                                      self.intermediate_padded, registry)  # RuntimeError

    @classmethod
    def _without_runtime_checks(cls, layer: LayerSpec, weights: ExpertWeights, *, pad_hidden_to: int | None = None,
                                pad_intermediate_to: int | None = None, **kwargs: Any) -> "FlashInferExperts":
        """Build without the CUDA / SM / flashinfer checks and without loading FlashInfer: lets CPU tests
        exercise preparation and the exact kernel-call wiring against a stub. Not for real use. The
        layer is still checked against the declaration (without a device); ``registry=`` picks the
        one it comes from."""
        self = cls.__new__(cls)
        Experts.__init__(self, layer, weights, pad_hidden_to=pad_hidden_to, pad_intermediate_to=pad_intermediate_to)
        self._check_layer(layer, weights, kwargs.get("registry"))
        self.sm = None
        self.module_status = None
        kwargs.pop("allow_jit_build", None)
        self._setup(layer, weights, **{**cls.SETUP_DEFAULTS, "registry": None, **kwargs})
        return self

    # Each adapter defines ``_setup(layer, weights, *, <its own keyword options>)``.
    _setup: Callable[..., None]

    def _calibrated_intermediate_amax(self) -> torch.Tensor:
        """The GEMM2 input range: given, or calibrated on the first batch before any kernel call."""
        if self.intermediate_amax is None:
            raise RuntimeError(f"{self.backend}: the GEMM2 input range is not calibrated yet")
        return self.intermediate_amax

    def _init_ranges(self, weights: ExpertWeights, input_amax: float | None, intermediate_amax: float | None,
                     *, quantizes_activations: bool = True) -> None:
        """Static activation ranges (0-dim fp32 amax). None: the GEMM1 input is scaled per batch, and
        the GEMM2 input is calibrated once on the first batch (as a checkpoint's w2_input_scale would
        be); the canonical weights are kept only until then."""
        self.input_amax = None if input_amax is None else self._amax(input_amax)
        self.intermediate_amax = None if intermediate_amax is None else self._amax(intermediate_amax)
        needs_calibration = quantizes_activations and self.intermediate_amax is None
        self._calibration_weights = weights if needs_calibration else None

    def _amax(self, value: Any) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float32, device=self.device).reshape(()).clamp(min=1e-12)

    def calibrate(self, hidden_states: torch.Tensor, topk_ids: torch.Tensor) -> None:
        """Set the static GEMM2-input scale from one batch (float32 torch pass; one host sync)."""
        weights = self._calibration_weights
        if weights is None:
            return
        self.intermediate_amax = self._amax(intermediate_amax(self.layer, weights, hidden_states, topk_ids))
        self._calibration_weights = None

    def _begin_forward(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                       topk_ids: torch.Tensor) -> torch.Tensor | None:
        """Guards, first-batch calibration and hidden padding; None for an empty batch."""
        check_forward_inputs(self.layer, hidden_states, topk_weights, topk_ids, device=self.device,
                             check_id_range=self.check_id_range)
        T, H = hidden_states.shape
        if T == 0:
            return None
        if self._calibration_weights is not None:
            self.calibrate(hidden_states, topk_ids)
        return F.pad(hidden_states, (0, self.hidden_padded - H)) if self.hidden_padded != H else hidden_states
