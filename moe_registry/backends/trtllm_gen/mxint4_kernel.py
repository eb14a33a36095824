"""FlashInfer TRT-LLM-gen MXINT4 MoE: ``flashinfer.fused_moe.trtllm_mxint4_block_scale_routed_moe``.
Not verified on hardware (SM100 only).

Weights: canonical ``int4_w4a16`` at group 32, symmetric (``moe_registry.formats.Int4GroupTensor``,
GPTQ layout ``[K/8, N]`` int32 with codes ``q + 8``) -> FlashInfer's signed int4 ``[N, K/2]`` uint8
(element 2j in the low nibble, ``prepare.py::_mxint4_quantize``) with bf16 scales ``[N, K/32]``;
then ``prepare.py::prepare_trtllm_mxint4_weights``: GEMM1 ``[up; gate]`` rows permuted by
``w3_w1_permute_indices`` (tile 128), GEMM2 by the shuffle, scales permuted alike and
128x4-interleaved, packed data reblocked to BlockMajorK (128 bytes). CPU-tested against that
FlashInfer function. The routed entry takes packed top-k only: ``(id << 16) | bf16(weight)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from moe_registry.execution.declared import check_declared
from moe_registry.execution.weights import ExpertWeights
from moe_registry.registry import Registry
from moe_registry.schemas.layer import LayerSpec

from . import _layout as L
from ._adapter import TrtllmGenExperts, pack_topk

BACKEND = "trtllm-mxint4"
GROUP = 32


@dataclasses.dataclass
class TrtllmMxInt4Weights:
    gemm1_weights: torch.Tensor  # uint8 [E, H/256, 2I, 128] (BlockMajorK of [E, 2I, H/2])
    gemm1_scales: torch.Tensor  # bf16 [E, 2I, H/32], permuted rows, 128x4-interleaved
    gemm2_weights: torch.Tensor  # uint8 [E, I/256, H, 128]
    gemm2_scales: torch.Tensor  # bf16 [E, H, I/32]


def to_signed_nibbles(w: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric ``Int4GroupTensor`` (group 32) -> (uint8 ``[..., N, K/2]`` two's-complement nibbles,
    element 2j low; bf16 scales ``[..., N, K/32]``)."""
    if w.zeros is not None or w.g_idx is not None or w.group_size != GROUP:
        raise ValueError(f"{BACKEND}: needs symmetric int4 at group {GROUP} without g_idx")
    q = (w.unpack() - 8).transpose(-1, -2)  # [..., N, K] in -8..7
    nibbles = (q & 0xF).to(torch.uint8).unflatten(-1, (-1, 2))
    packed = (nibbles[..., 0] | (nibbles[..., 1] << 4)).contiguous()
    return packed, w.scales.transpose(-1, -2).to(torch.bfloat16).contiguous()


def prepare_trtllm_mxint4_weights(layer: LayerSpec, weights: ExpertWeights, *,
                                  registry: Registry | None = None) -> TrtllmMxInt4Weights:
    I = layer.local_intermediate_size
    check_declared(BACKEND, layer, None, hidden_padded=layer.hidden_size, intermediate_padded=I, registry=registry)
    d13, s13 = to_signed_nibbles(weights.w13)
    d2, s2 = to_signed_nibbles(weights.w2)
    params = layer.swigluoai
    if params is not None and params.interleaved:  # gpt-oss rows g0, u0, g1, u1, ... -> [up; gate]
        swap = torch.cat([torch.arange(1, 2 * I, 2), torch.arange(0, 2 * I, 2)])
    else:  # [gate; up] -> [up; gate]
        swap = torch.cat([torch.arange(I, 2 * I), torch.arange(0, I)])
    d13, s13 = L.permute_rows(d13, swap), L.permute_rows(s13, swap)
    M, H = 2 * I, layer.hidden_size
    p1 = L.w3_w1_permute_indices(M)
    p1_sf = L.w3_w1_permute_indices(M, num_elts_per_sf=32)
    p2, p2_sf = L.w2_permute_indices(H), L.w2_permute_indices(H, num_elts_per_sf=16)
    return TrtllmMxInt4Weights(
        gemm1_weights=L.block_major_k(L.permute_rows(d13, p1)),
        gemm1_scales=L.interleaved_scales(L.permute_rows(s13, p1_sf)),
        gemm2_weights=L.block_major_k(L.permute_rows(d2, p2)),
        gemm2_scales=L.interleaved_scales(L.permute_rows(s2, p2_sf)))


def _flashinfer_routed_moe() -> Callable[..., Any]:
    from flashinfer.fused_moe import trtllm_mxint4_block_scale_routed_moe

    return trtllm_mxint4_block_scale_routed_moe


class TrtllmMxInt4Experts(TrtllmGenExperts):
    """FlashInfer TRT-LLM-gen MXINT4 MoE for one layer. Not verified on hardware."""

    backend = BACKEND
    quantizes_activations = False

    def _prepare(self, layer: LayerSpec, weights: ExpertWeights, registry: Registry | None) -> TrtllmMxInt4Weights:
        return prepare_trtllm_mxint4_weights(layer, weights, registry=registry)

    def _routed_moe(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    out: torch.Tensor) -> Any:
        p = self.prepared
        params = self._swiglu_params(x.device)
        return _flashinfer_routed_moe()(
            pack_topk(topk_ids, topk_weights), x, p.gemm1_weights, p.gemm1_scales, params["gemm1_alpha"],
            params["gemm1_beta"], params["gemm1_clamp_limit"], p.gemm2_weights, p.gemm2_scales, output=out,
            **self._call_kwargs())
