"""The adapter contract every backend's ``kernel.py`` implements, and exact zero padding.

An adapter is built once per layer from canonical weights (see ``weights.py``) and then called per
batch. The module itself imports no torch so that declarations and tooling can name ``Experts``
without pulling torch in; ``pad_weights`` imports it when called.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..schemas.layer import LayerSpec
    from .weights import ExpertWeights


class Experts(ABC):
    """One MoE experts layer bound to one backend.

    Subclasses set ``backend`` (the declaration id) and keep the constructor signature below:
    ``build_experts`` passes the padding selection decided, and nothing else.

    Padding (``pad_hidden_to`` / ``pad_intermediate_to``) is requested only when the backend's
    declaration allows it for an alignment rule. It is exact because every padded weight entry is
    zero: padded hidden columns of ``w13`` meet zero-padded input columns, so GEMM1 is unchanged;
    padded intermediate lanes produce ``act(0 + 0)`` (finite for every activation) which then meets
    zero columns of ``w2``, so they add exactly 0 to GEMM2; padded hidden rows of ``w2`` produce
    outputs that are sliced off. (Bitwise equality is not promised: a GEMM may reduce a longer K in
    a different order.)
    """

    backend: str = ""

    def __init__(
        self,
        layer: "LayerSpec",
        weights: "ExpertWeights",
        *,
        pad_hidden_to: int | None = None,
        pad_intermediate_to: int | None = None,
    ) -> None:
        self.layer = layer
        H, I = layer.hidden_size, layer.local_intermediate_size
        for name, target, size in (("pad_hidden_to", pad_hidden_to, H),
                                   ("pad_intermediate_to", pad_intermediate_to, I)):
            if target is not None and target < size:
                raise ValueError(f"{name}={target} is smaller than the layer's size {size}")
        # Padded sizes the kernel sees; equal to the layer's when no padding was requested.
        self.hidden_padded = pad_hidden_to or H
        self.intermediate_padded = pad_intermediate_to or I

    @abstractmethod
    def forward(self, hidden_states: "torch.Tensor", topk_weights: "torch.Tensor",
                topk_ids: "torch.Tensor") -> "torch.Tensor":
        """``hidden_states [T, H]`` (layer dtype), ``topk_weights [T, k]`` float32, ``topk_ids [T, k]``
        int32/int64 local expert ids in ``[0, E_local)`` -> ``[T, H]`` in the layer dtype."""

    def __call__(self, hidden_states: Any, topk_weights: Any, topk_ids: Any) -> Any:
        return self.forward(hidden_states, topk_weights, topk_ids)

    def __repr__(self) -> str:
        pad = ""
        if self.hidden_padded != self.layer.hidden_size:
            pad += f", hidden->{self.hidden_padded}"
        if self.intermediate_padded != self.layer.local_intermediate_size:
            pad += f", intermediate->{self.intermediate_padded}"
        return f"{type(self).__name__}({self.backend!r}, {self.layer.describe()}{pad})"


def pad_weights(weights: "ExpertWeights", hidden_to: int | None = None, intermediate_to: int | None = None,
                *, interleaved: bool = False) -> "ExpertWeights":
    """Zero-pad unquantized canonical weights to ``hidden_to`` / ``intermediate_to`` (None: keep).

    Gated ``w13 [E, 2I, H]`` holds ``[gate; up]``: each half is padded on its own
    (``[gate; 0; up; 0]``), otherwise the up rows would slide into the gate half. With
    ``interleaved=True`` (gpt-oss rows g0, u0, g1, u1, ...) the zero rows go at the end, which keeps
    the alternation. Quantized weights are refused: their packed data and scales need a
    format-aware pad (pad before quantizing, or in the adapter).
    """
    import torch
    import torch.nn.functional as F

    from .weights import ExpertWeights

    if weights.is_quantized:
        raise ValueError("pad_weights pads unquantized weights only; pad before quantizing, "
                         "or pad the packed data and scales in the adapter")
    H, I = weights.hidden_size, weights.intermediate_size
    Hp, Ip = hidden_to or H, intermediate_to or I
    if Hp < H or Ip < I:
        raise ValueError(f"cannot pad down: hidden {H}->{Hp}, intermediate {I}->{Ip}")
    if (Hp, Ip) == (H, I):
        return weights
    gated = weights.w13.shape[-2] == 2 * I
    if not gated and weights.w13.shape[-2] != I:
        raise ValueError(f"w13 has {weights.w13.shape[-2]} rows; expected {2 * I} (gated) or {I} (non-gated)")

    def pad_rows(t: torch.Tensor, rows_dim: int) -> torch.Tensor:
        """Pad the GEMM1-output dimension (rows of w13, entries of w13_bias) to the padded width."""
        t = t.movedim(rows_dim, -1)
        if gated and not interleaved:
            gate, up = t[..., :I], t[..., I:]
            t = torch.cat([F.pad(gate, (0, Ip - I)), F.pad(up, (0, Ip - I))], dim=-1)
        else:
            t = F.pad(t, (0, (Ip - I) * (2 if gated else 1)))
        return t.movedim(-1, rows_dim).contiguous()

    w13 = pad_rows(F.pad(weights.w13, (0, Hp - H)), rows_dim=-2)
    w2 = F.pad(weights.w2, (0, Ip - I, 0, Hp - H)).contiguous()
    w13_bias = None if weights.w13_bias is None else pad_rows(weights.w13_bias, rows_dim=-1)
    w2_bias = None if weights.w2_bias is None else F.pad(weights.w2_bias, (0, Hp - H)).contiguous()
    return ExpertWeights(w13=w13, w2=w2, w13_bias=w13_bias, w2_bias=w2_bias)
