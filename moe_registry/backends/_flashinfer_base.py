"""What the two FlashInfer adapters (CUTLASS and TRT-LLM-gen) share, beyond the torch-free helpers of
``_flashinfer_common``: the build-time checks derived from the declaration, static activation
ranges with one-batch calibration of the GEMM2 input scale, the CPU-test constructor, and the start
of ``forward``. Imports torch."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from moe_registry.backends import _flashinfer_common as fic
from moe_registry.execution.base import Experts
from moe_registry.execution.declared import check_declared
from moe_registry.execution.guards import check_forward_inputs, check_weights
from moe_registry.execution.weights import ExpertWeights
from moe_registry.registry import Registry
from moe_registry.schemas.layer import LayerSpec


class FlashInferExperts(Experts):
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
        self.sm = fic.require_runtime(self.backend, self.device, layer, self.hidden_padded,
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

    def _setup(self, layer: LayerSpec, weights: ExpertWeights, **kwargs: Any) -> None:
        raise NotImplementedError

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
        self.intermediate_amax = self._amax(fic.intermediate_amax(self.layer, weights, hidden_states, topk_ids))
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
