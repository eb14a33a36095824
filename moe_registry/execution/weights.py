"""Canonical expert weights: the one layout every adapter converts from.

nn.Linear style ``[out, in]``: ``w13 [E, 2I, H]`` with rows ``[gate; up]`` (gated activations; gpt-oss
``swigluoai`` with ``interleaved=True`` alternates gate/up rows instead) or ``[E, I, H]``
(non-gated), ``w2 [E, H, I]``, ``w13_bias [E, 2I or I]``, ``w2_bias [E, H]``. E and I are the
per-rank (local) sizes. A weight is a ``torch.Tensor`` or a ``moe_registry.formats`` object whose
``.shape`` is the logical (dequantized) ``[..., N, K]``; biases are always plain tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..schemas.layer import LayerSpec

_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def torch_dtype(layer_or_name: LayerSpec | str) -> torch.dtype:
    """The torch dtype of a LayerSpec's hidden states (``"bf16"`` -> ``torch.bfloat16``)."""
    name = layer_or_name.dtype if isinstance(layer_or_name, LayerSpec) else layer_or_name
    return _TORCH_DTYPES[name]


def _to(t: Any, *, dtype: torch.dtype | None = None, device: Any = None) -> Any:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return t.to(device=device, dtype=dtype)
    # A formats object: move it; it keeps its own storage dtypes.
    return t.to(device) if device is not None else t


@dataclass(frozen=True)
class ExpertWeights:
    w13: Any  # torch.Tensor [E, 2I or I, H] or a formats object of that logical shape
    w2: Any  # torch.Tensor [E, H, I] or a formats object
    w13_bias: torch.Tensor | None = None  # [E, 2I or I]
    w2_bias: torch.Tensor | None = None  # [E, H]

    # Sizes come from w2 [E, H, I]: it is the one weight whose shape names all three directly.
    @property
    def num_experts(self) -> int:
        return int(self.w2.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.w2.shape[-2])

    @property
    def intermediate_size(self) -> int:
        return int(self.w2.shape[-1])

    @property
    def is_quantized(self) -> bool:
        return not (isinstance(self.w13, torch.Tensor) and isinstance(self.w2, torch.Tensor))

    @property
    def device(self) -> torch.device:
        return _device_of(self.w2)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> "ExpertWeights":
        """Plain tensors of ``dtype`` (quantized weights dequantized, biases cast)."""
        def plain(w: Any) -> torch.Tensor:
            return w.to(dtype) if isinstance(w, torch.Tensor) else w.dequantize(dtype)
        return ExpertWeights(w13=plain(self.w13), w2=plain(self.w2),
                             w13_bias=_to(self.w13_bias, dtype=dtype), w2_bias=_to(self.w2_bias, dtype=dtype))

    def to(self, device: Any) -> "ExpertWeights":
        return ExpertWeights(w13=_to(self.w13, device=device), w2=_to(self.w2, device=device),
                             w13_bias=_to(self.w13_bias, device=device), w2_bias=_to(self.w2_bias, device=device))


def _device_of(w: Any) -> torch.device:
    """Device of a tensor or formats object (its own ``.device`` if it has one, else its first tensor field)."""
    if isinstance(w, torch.Tensor) or hasattr(w, "device"):
        return torch.device(w.device)
    for value in getattr(w, "__dict__", {}).values():
        if isinstance(value, torch.Tensor):
            return value.device
    raise TypeError(f"cannot tell the device of a {type(w).__name__}")


def random_weights(layer: LayerSpec, *, device: Any = "cpu", dtype: torch.dtype = torch.bfloat16,
                   seed: int = 0) -> ExpertWeights:
    """Random canonical weights of the layer's local shapes, quantized with ``layer.quant``.

    Entries are N(0, 1/fan_in) (std ``1/sqrt(fan_in)``), so for O(1) inputs both GEMM outputs are
    O(1) whatever H and I are, and tolerances mean the same across shapes. Biases (when
    ``layer.bias``) are N(0, 0.5^2): large enough that a backend which drops them fails a test.
    Values are drawn on ``device`` with a seeded generator: the same seed gives the same weights on
    the same kind of device (CPU and CUDA generators differ).
    """
    E, I, H, R = layer.local_num_experts, layer.local_intermediate_size, layer.hidden_size, layer.gemm1_rows
    gen = torch.Generator(device=device).manual_seed(seed)

    def normal(shape: tuple[int, ...], std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=device, dtype=torch.float32).mul_(std).to(dtype)

    w13 = normal((E, R, H), 1 / math.sqrt(H))
    w2 = normal((E, H, I), 1 / math.sqrt(I))
    w13_bias = normal((E, R), 0.5) if layer.bias else None
    w2_bias = normal((E, H), 0.5) if layer.bias else None
    if layer.quant.is_quantized:
        from ..formats import quantize  # lazy: formats is only needed for quantized layers

        return ExpertWeights(w13=quantize(w13, layer.quant), w2=quantize(w2, layer.quant), w13_bias=w13_bias,
                             w2_bias=w2_bias)
    return ExpertWeights(w13=w13, w2=w2, w13_bias=w13_bias, w2_bias=w2_bias)
