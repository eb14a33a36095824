"""The reference backend: plain PyTorch in float32, on any device. It defines the semantics every
other backend is tested against, so it favours obviousness over speed.

Per (token, slot) pair routed to expert e, with x the token's hidden state and w its router weight:
``y = act(x @ w13[e].T + b13[e]) @ w2[e].T + b2[e]``; output ``sum w * y``. With
``apply_router_weight_on_input`` (Llama-4) the weight scales x instead and the output is ``sum y``.
This is vLLM's ``fused_moe`` / FlashInfer's test ``compute_with_experts`` written per expert.
Quantized weights are dequantized once at build; activations are not quantized, so a W8A8 / W4A4
backend differs from this by its activation quantization error (tolerances account for it).
"""

from __future__ import annotations

import torch

from moe_registry.execution.activations import apply_activation
from moe_registry.execution.base import Experts, pad_weights
from moe_registry.execution.guards import check_forward_inputs, check_weights
from moe_registry.execution.weights import ExpertWeights, torch_dtype
from moe_registry.schemas.layer import LayerSpec


class ReferenceExperts(Experts):
    backend = "reference"

    def __init__(self, layer: LayerSpec, weights: ExpertWeights, *, pad_hidden_to: int | None = None,
                 pad_intermediate_to: int | None = None) -> None:
        super().__init__(layer, weights, pad_hidden_to=pad_hidden_to, pad_intermediate_to=pad_intermediate_to)
        check_weights(layer, weights)
        w = weights.dequantized(torch.float32)
        params = layer.swigluoai
        w = pad_weights(w, self.hidden_padded, self.intermediate_padded,
                        interleaved=bool(params and params.interleaved))
        self.w13, self.w2, self.w13_bias, self.w2_bias = w.w13, w.w2, w.w13_bias, w.w2_bias
        self.device = self.w2.device
        self.out_dtype = torch_dtype(layer)

    def forward(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        check_forward_inputs(self.layer, hidden_states, topk_weights, topk_ids, device=self.device)
        T, H = hidden_states.shape
        k = topk_ids.shape[1]
        x = hidden_states.float()
        if self.hidden_padded != H:
            x = torch.nn.functional.pad(x, (0, self.hidden_padded - H))
        out = torch.zeros(T, self.hidden_padded, dtype=torch.float32, device=x.device)

        # Flatten the (token, slot) pairs and group them by expert. A token that lists an expert
        # twice contributes twice, as in every fused kernel (they treat slots independently).
        flat_ids = topk_ids.reshape(-1).long()
        flat_weights = topk_weights.reshape(-1)
        flat_tokens = torch.arange(T, device=x.device).repeat_interleave(k)
        order = torch.argsort(flat_ids, stable=True)
        counts = torch.bincount(flat_ids, minlength=self.w2.shape[0]).tolist()  # one sync for the loop

        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue  # an expert with no tokens does no work and adds nothing
            pairs = order[start:start + n]
            start += n
            tokens, weight = flat_tokens[pairs], flat_weights[pairs].unsqueeze(1)
            xe = x[tokens]
            if self.layer.apply_router_weight_on_input:
                xe = xe * weight
            h = xe @ self.w13[e].T
            if self.w13_bias is not None:
                h = h + self.w13_bias[e]
            y = apply_activation(h, self.layer) @ self.w2[e].T
            if self.w2_bias is not None:
                y = y + self.w2_bias[e]
            if not self.layer.apply_router_weight_on_input:
                y = y * weight
            out.index_add_(0, tokens, y)
        return out[:, :H].to(self.out_dtype)
