"""FlashInfer TRT-LLM-gen FP8 MoE adapters: per-tensor scales
(``trtllm_fp8_per_tensor_scale_routed_moe``) and DeepSeek 128-block scales
(``trtllm_fp8_block_scale_routed_moe``). Not verified on hardware (SM100 only). The per-channel
entry is declared planning-only (no adapter).

Per tensor (FlashInfer ``prepare.py::prepare_trtllm_fp8_per_tensor_weights``; vLLM
``flashinfer_utils.py::rotate_weights_for_fi_trtllm_fp8_per_tensor_moe``): e4m3 data with GEMM1
``[up; gate]`` rows permuted by ``w3_w1_permute_indices`` (tile 128), GEMM2 by the shuffle; the
scalars are ``fp4_kernel.output_scalars`` of the encode multipliers (``448/amax``) of weights, the
hidden states (dynamic unless ``input_amax``) and the FC2 input (``intermediate_amax`` or calibrated
on the first batch). Llama 4's router weight on the input is the kernel's
``use_routing_scales_on_input``. CPU-tested against that FlashInfer function.

128 blocks (vLLM ``flashinfer_utils.py::_shuffle_deepseek_fp8_moe_weights`` and
``prepare_fp8_moe_layer_for_fi``): GEMM1 ``[up; gate]`` (block scales swapped with it, no gated row
interleave), both weights' rows shuffled with ``epilogue_tile_m = 64`` (16-row blocks, inside one
128-row scale block) and reblocked to BlockMajorK; scales ``[E, rows/128, K/128]`` fp32 unchanged.
Hidden states are quantized per token and 128-column group (FlashInfer
``prepare.py::_deepseek_fp8_quantize_activations``: ``scale = amax / 448``), scales passed
transposed ``[H/128, T]``. CPU-tested against FlashInfer's index and block-layout functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from moe_registry.execution.weights import ExpertWeights
from moe_registry.registry import Registry
from moe_registry.schemas.layer import LayerSpec

from . import _layout as L
from ._adapter import TrtllmGenExperts, declared_padded_weights, gemm1_rows_up_gate
from .fp4_kernel import output_scalars

PER_TENSOR = "trtllm-fp8"
BLOCK = "trtllm-fp8-block"
FP8_MAX = 448.0
BLOCK_EPILOGUE_TILE_M = 64  # vLLM _shuffle_deepseek_fp8_moe_weights
WEIGHT_LAYOUT_BLOCK_MAJOR_K = 2  # tllm_enums.WeightLayout.BlockMajorK


# --- Per tensor ------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrtllmFp8Weights:
    gemm1_weights: torch.Tensor  # float8_e4m3fn [E, M, H], permuted rows
    gemm2_weights: torch.Tensor  # float8_e4m3fn [E, H, I]
    w1_mult: torch.Tensor  # fp32 [E] encode multipliers (1 / dequant scale)
    w2_mult: torch.Tensor
    gated: bool


def prepare_trtllm_fp8_weights(layer: LayerSpec, weights: ExpertWeights, *, hidden_to: int | None = None,
                               intermediate_to: int | None = None,
                               registry: Registry | None = None) -> TrtllmFp8Weights:
    w, Hp, Ip = declared_padded_weights(PER_TENSOR, layer, weights, hidden_to=hidden_to,
                                        intermediate_to=intermediate_to, registry=registry)
    gated = layer.activation.is_gated
    w13, _ = gemm1_rows_up_gate(layer, w, Ip)
    p1 = L.w3_w1_permute_indices(int(w13.data.shape[1]), gated=gated)
    return TrtllmFp8Weights(
        gemm1_weights=L.permute_rows(w13.data, p1), gemm2_weights=L.permute_rows(w.w2.data, L.w2_permute_indices(Hp)),
        w1_mult=(1.0 / w13.scale.float()).contiguous(), w2_mult=(1.0 / w.w2.scale.float()).contiguous(), gated=gated)


def quantize_per_tensor(x: torch.Tensor, mult: torch.Tensor) -> torch.Tensor:
    """e4m3 of ``x * mult`` (FlashInfer ``prepare_trtllm_fp8_per_tensor_activations``)."""
    return (x.float() * mult).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def _per_tensor_routed_moe() -> Callable[..., Any]:
    from flashinfer.fused_moe import trtllm_fp8_per_tensor_scale_routed_moe

    return trtllm_fp8_per_tensor_scale_routed_moe


class TrtllmFp8Experts(TrtllmGenExperts):
    """FlashInfer TRT-LLM-gen FP8 per-tensor MoE for one layer. Not verified on hardware."""

    backend = PER_TENSOR

    def _prepare(self, layer: LayerSpec, weights: ExpertWeights, registry: Registry | None) -> TrtllmFp8Weights:
        return prepare_trtllm_fp8_weights(layer, weights, hidden_to=self.hidden_padded,
                                          intermediate_to=self.intermediate_padded, registry=registry)

    def _routed_moe(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    out: torch.Tensor) -> Any:
        p = self.prepared
        in_amax = self.input_amax if self.input_amax is not None else x.abs().amax().float().clamp(min=1e-12)
        a1_mult = (FP8_MAX / in_amax).reshape(())
        c_mult = (FP8_MAX / self._calibrated_intermediate_amax()).reshape(())
        out1, gate1, out2 = output_scalars(p.w1_mult, p.w2_mult, a1_mult, c_mult, gated=p.gated)
        return _per_tensor_routed_moe()(
            (self._ids(topk_ids), topk_weights), None, quantize_per_tensor(x, a1_mult), p.gemm1_weights, out1, gate1,
            p.gemm2_weights, out2, use_routing_scales_on_input=self.layer.apply_router_weight_on_input,
            activation_type=self.activation_type, output=out, **self._call_kwargs())


# --- 128 blocks ------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrtllmFp8BlockWeights:
    gemm1_weights: torch.Tensor  # float8_e4m3fn [E, H/128, 2I, 128] (BlockMajorK), shuffled rows
    gemm1_scales: torch.Tensor  # fp32 [E, 2I/128, H/128], [up; gate] blocks
    gemm2_weights: torch.Tensor  # float8_e4m3fn [E, I/128, H, 128]
    gemm2_scales: torch.Tensor  # fp32 [E, H/128, I/128]


def prepare_trtllm_fp8_block_weights(layer: LayerSpec, weights: ExpertWeights, *, hidden_to: int | None = None,
                                     registry: Registry | None = None) -> TrtllmFp8BlockWeights:
    w, _, I = declared_padded_weights(BLOCK, layer, weights, hidden_to=hidden_to, intermediate_to=None,
                                      registry=registry)
    w13, _ = gemm1_rows_up_gate(layer, w, I)

    def shuffled(data: torch.Tensor) -> torch.Tensor:
        rows = L.shuffle_matrix_a_row_indices(int(data.shape[1]), BLOCK_EPILOGUE_TILE_M)
        return L.block_major_k(L.permute_rows(data.view(torch.uint8), rows)).view(torch.float8_e4m3fn)

    return TrtllmFp8BlockWeights(gemm1_weights=shuffled(w13.data), gemm1_scales=w13.scale.float().contiguous(),
                                 gemm2_weights=shuffled(w.w2.data), gemm2_scales=w.w2.scale.float().contiguous())


def quantize_per_token_block(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 ``[T, H]`` -> (e4m3 ``[T, H]``, fp32 scales ``[H/128, T]``): one dequant scale per token and
    128 columns (FlashInfer ``prepare.py::_deepseek_fp8_quantize_activations``)."""
    T, H = x.shape
    blocks = x.float().reshape(T, H // 128, 128)
    scales = (blocks.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    q = (blocks / scales).clamp(-FP8_MAX, FP8_MAX).reshape(T, H).to(torch.float8_e4m3fn)
    return q, scales.squeeze(-1).transpose(0, 1).contiguous()


def _block_routed_moe() -> Callable[..., Any]:
    from flashinfer.fused_moe import trtllm_fp8_block_scale_routed_moe

    return trtllm_fp8_block_scale_routed_moe


def _deepseek_fp8() -> Any:
    from flashinfer.fused_moe import Fp8QuantizationType

    return Fp8QuantizationType.DeepSeekFp8


class TrtllmFp8BlockExperts(TrtllmGenExperts):
    """FlashInfer TRT-LLM-gen FP8 128-block MoE for one layer. Not verified on hardware."""

    backend = BLOCK
    quantizes_activations = False  # per-token block scales, computed per batch

    def _prepare(self, layer: LayerSpec, weights: ExpertWeights, registry: Registry | None) -> TrtllmFp8BlockWeights:
        return prepare_trtllm_fp8_block_weights(layer, weights, hidden_to=self.hidden_padded, registry=registry)

    def _routed_moe(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    out: torch.Tensor) -> Any:
        p = self.prepared
        xq, x_sf = quantize_per_token_block(x)
        return _block_routed_moe()(
            (self._ids(topk_ids), topk_weights), None, xq, x_sf, p.gemm1_weights, p.gemm1_scales, p.gemm2_weights,
            p.gemm2_scales, use_shuffled_weight=True, weight_layout=WEIGHT_LAYOUT_BLOCK_MAJOR_K, output=out,
            fp8_quantization_type=_deepseek_fp8(), activation_type=self.activation_type,
            **self._swiglu_params(x.device), **self._call_kwargs())
