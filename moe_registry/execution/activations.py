"""The activation between the two expert GEMMs, exactly as each ``Activation`` id defines it.

Sources: vLLM ``model_executor/layers/activation.py`` (SiluAndMul, GeluAndMul with
``approximate="none" | "tanh"``, ReLUSquaredActivation) and transformers ``modular_gpt_oss.py``
``GptOssExperts._apply_gate`` (swigluoai), vLLM ``fused_moe/utils.py`` ``_swiglu_limit_torch``
(silu_clamp). This is the reference semantics; backends are tested
against it, so nothing here approximates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..schemas.activation import Activation
from ..schemas.layer import LayerSpec


def _swigluoai(h: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
    p = layer.swigluoai
    assert p is not None
    if p.interleaved:  # HF gpt-oss checkpoint layout: rows alternate gate, up
        gate, up = h[..., 0::2], h[..., 1::2]
    else:
        gate, up = h.chunk(2, dim=-1)
    if p.limit is not None:
        # One-sided on gate (its negative tail is already damped by the sigmoid), two-sided on up.
        gate = gate.clamp(max=p.limit)
        up = up.clamp(min=-p.limit, max=p.limit)
    return (up + p.up_offset) * (gate * torch.sigmoid(p.alpha * gate))


def _silu_clamp(h: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
    limit = layer.silu_clamp_limit
    assert limit is not None
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate.clamp(max=limit)) * up.clamp(min=-limit, max=limit)


_GATED = {
    Activation.SILU: F.silu,
    Activation.GELU: lambda x: F.gelu(x, approximate="none"),
    Activation.GELU_TANH: lambda x: F.gelu(x, approximate="tanh"),
}
_NOT_GATED = {
    Activation.RELU2_NO_MUL: lambda x: torch.square(F.relu(x)),
    Activation.SILU_NO_MUL: F.silu,
    Activation.GELU_NO_MUL: lambda x: F.gelu(x, approximate="none"),
    Activation.GELU_TANH_NO_MUL: lambda x: F.gelu(x, approximate="tanh"),
}


def apply_activation(h: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
    """GEMM1 output ``h [M, 2I]`` (gated: ``[gate | up]`` halves) or ``[M, I]`` -> ``[M, I]``.

    Computes in ``h``'s dtype; callers pass float32 (the reference does).
    """
    act = layer.activation
    width = h.shape[-1]
    if act.is_gated and width % 2:
        raise ValueError(f"gated activation {act.value} needs an even GEMM1 width, got {width}")
    if act is Activation.SWIGLUOAI:
        return _swigluoai(h, layer)
    if act is Activation.SILU_CLAMP:
        return _silu_clamp(h, layer)
    if act in _GATED:
        gate, up = h.chunk(2, dim=-1)
        return _GATED[act](gate) * up
    if act in _NOT_GATED:
        return _NOT_GATED[act](h)
    raise NotImplementedError(f"no reference implementation of activation {act.value!r}")
