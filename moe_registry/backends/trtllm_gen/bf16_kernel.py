"""FlashInfer TRT-LLM-gen BF16 MoE: ``flashinfer.fused_moe.trtllm_bf16_routed_moe``. Not verified on
hardware (SM100 only). Weights: FlashInfer ``prepare.py::prepare_trtllm_bf16_weights`` in torch --
GEMM1 ``[up; gate]`` rows permuted by ``w3_w1_permute_indices`` (gated reorder + epilogue shuffle,
tile 128), GEMM2 by the shuffle, both reblocked to BlockMajorK (K in blocks of 128 bytes = 64 bf16),
the only layout the bf16 entry takes (``use_shuffled_weight=True``, ``weight_layout=BlockMajorK``).
CPU-tested against that FlashInfer function."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from moe_registry.execution.weights import ExpertWeights
from moe_registry.registry import Registry
from moe_registry.schemas.layer import LayerSpec

from . import _layout as L
from ._adapter import TrtllmGenExperts, declared_padded_weights, gemm1_rows_up_gate

BACKEND = "trtllm-bf16"
WEIGHT_LAYOUT_BLOCK_MAJOR_K = 2  # tllm_enums.WeightLayout.BlockMajorK


@dataclasses.dataclass
class TrtllmBf16Weights:
    gemm1_weights: torch.Tensor  # bf16 [E, H/64, M, 64], M = 2I (gated) or I
    gemm2_weights: torch.Tensor  # bf16 [E, I/64, H, 64]


def prepare_trtllm_bf16_weights(layer: LayerSpec, weights: ExpertWeights, *, hidden_to: int | None = None,
                                intermediate_to: int | None = None,
                                registry: Registry | None = None) -> TrtllmBf16Weights:
    w, Hp, Ip = declared_padded_weights(BACKEND, layer, weights, hidden_to=hidden_to, intermediate_to=intermediate_to,
                                        registry=registry)
    w13, _ = gemm1_rows_up_gate(layer, w, Ip)
    w13, w2 = w13.to(torch.bfloat16), w.w2.to(torch.bfloat16)
    p1 = L.w3_w1_permute_indices(int(w13.shape[1]), gated=layer.activation.is_gated)
    p2 = L.w2_permute_indices(Hp)
    return TrtllmBf16Weights(gemm1_weights=L.block_major_k(L.permute_rows(w13, p1)),
                             gemm2_weights=L.block_major_k(L.permute_rows(w2, p2)))


def _flashinfer_routed_moe() -> Callable[..., Any]:
    from flashinfer.fused_moe import trtllm_bf16_routed_moe

    return trtllm_bf16_routed_moe


class TrtllmBf16Experts(TrtllmGenExperts):
    """FlashInfer TRT-LLM-gen BF16 MoE for one layer. Not verified on hardware."""

    backend = BACKEND
    quantizes_activations = False

    def _prepare(self, layer: LayerSpec, weights: ExpertWeights, registry: Registry | None) -> TrtllmBf16Weights:
        return prepare_trtllm_bf16_weights(layer, weights, hidden_to=self.hidden_padded,
                                           intermediate_to=self.intermediate_padded, registry=registry)

    def _routed_moe(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    out: torch.Tensor) -> Any:
        p = self.prepared
        return _flashinfer_routed_moe()(
            (self._ids(topk_ids), topk_weights), x, p.gemm1_weights, p.gemm2_weights, use_shuffled_weight=True,
            weight_layout=WEIGHT_LAYOUT_BLOCK_MAJOR_K, activation_type=self.activation_type, output=out,
            **self._swiglu_params(x.device), **self._call_kwargs())
