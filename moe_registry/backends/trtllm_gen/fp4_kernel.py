"""FlashInfer TRT-LLM-gen FP4 MoE: ``flashinfer.fused_moe.trtllm_fp4_block_scale_routed_moe``, for
NvFP4 x NvFP4, MXFP4 weights x bf16 activations and MXFP4 x MXFP8.

Status: not verified on hardware (TRT-LLM-gen needs SM100; the project's GPUs are SM90). The weight
preparation is pure PyTorch and tested on CPU against FlashInfer's own index functions; the call is
wired from FlashInfer 0.7.2.post1's source (``fused_moe/core.py``, ``fused_moe/prepare.py``
``prepare_trtllm_fp4_weights``, ``data/csrc/trtllm_fused_moe_kernel_launcher.cu``) and vLLM 0.33's
callers (``experts/trtllm_nvfp4_moe.py``, ``experts/trtllm_mxfp4_moe.py``, ``oracle/mxfp4.py``).

Weights (``_layout``): packed e2m1 data and linear block scales (e4m3 per 16 for NvFP4, e8m0 per 32
for MXFP4) with GEMM1 as ``[up; gate]``, rows permuted per expert (``w3_w1_permute_indices`` /
``w2_permute_indices``, ``epilogue_tile_m = 128``), scales then 128x4-interleaved and viewed as
float8_e4m3fn (the launcher's dtype for both scale kinds). Biases (float32) take the same row
permutation.

NvFP4 scalars from encode global scales (``448*6/amax``): ``output1_scale_scalar = c_gs / (w1_gs *
a1_gs)`` (``c_gs`` alone for non-gated activations), ``output1_scale_gate_scalar = 1 / (w1_gs *
a1_gs)``, ``output2_scale_scalar = 1 / (c_gs * w2_gs)``; ``a1_gs`` is the hidden states' global scale
(dynamic unless ``input_amax``), ``c_gs`` the FC2 input's (``intermediate_amax``, or calibrated on the
first batch). The GEMM accumulators are then in raw units, so SwiGLU-OAI's beta / limit and the
biases are divided by the matching dequant scalar (vLLM's fold for beta and the limit; for the biases
inferred from the same contract, unverified). MXFP4 x bf16 has no global scales: scalars None, every
parameter raw.

Forward: NvFP4 hidden states quantized with linear scales (``fp4_quantize(...,
is_sf_swizzled_layout=False)``), MXFP4 x bf16 hidden states passed as bf16, MXFP4 x MXFP8 ones
quantized to MXFP8 with linear e8m0 scales (``mxfp8_quantize(..., is_sf_swizzled_layout=False)``); precomputed routing as
``(int32 ids, fp32 weights)``; ``activation_type`` the declaration's ``kernel_value``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from moe_registry.execution.weights import ExpertWeights
from moe_registry.registry import Registry
from moe_registry.schemas.layer import LayerSpec
from moe_registry.schemas.quant import QuantKind

from . import _layout as L
from ._adapter import TrtllmGenExperts, declared_padded_weights, gemm1_rows_up_gate

BACKEND = "trtllm-fp4"

NVFP4_SF_VEC = 16
NVFP4_GS_NUMERATOR = 448.0 * 6.0
# The scale rows take the data's row permutation; FlashInfer and vLLM compute it with
# num_elts_per_sf = 16 for MXFP4 too (prepare.py prepare_trtllm_fp4_weights, oracle/mxfp4.py).
_SF_INDEX_VEC = 16


@dataclasses.dataclass
class TrtllmFp4Weights:
    gemm1_weights: torch.Tensor  # uint8 [E, M, H/2], M = 2I (gated) or I, permuted rows
    gemm1_scales: torch.Tensor  # float8_e4m3fn view [E, M, H/16 or H/32], permuted then 128x4-interleaved
    gemm2_weights: torch.Tensor  # uint8 [E, H, I/2]
    gemm2_scales: torch.Tensor  # float8_e4m3fn view [E, H, I/16 or I/32]
    gemm1_bias: torch.Tensor | None  # fp32 [E, M], permuted rows (physical units)
    gemm2_bias: torch.Tensor | None  # fp32 [E, H]
    w1_gs: torch.Tensor | None  # NvFP4: fp32 [E] encode global scales; MXFP4: None
    w2_gs: torch.Tensor | None
    gated: bool
    nvfp4: bool


def prepare_trtllm_fp4_weights(layer: LayerSpec, weights: ExpertWeights, *, hidden_to: int | None = None,
                               intermediate_to: int | None = None,
                               registry: Registry | None = None) -> TrtllmFp4Weights:
    """Canonical NvFP4 / MXFP4 weights -> TRT-LLM-gen's permuted layout (module docstring; pure
    torch). ValueError (every reason, from the declaration) for a layer the kernel does not run."""
    w, Hp, Ip = declared_padded_weights(BACKEND, layer, weights, hidden_to=hidden_to, intermediate_to=intermediate_to,
                                        registry=registry)
    gated = layer.activation.is_gated
    w13, b13 = gemm1_rows_up_gate(layer, w, Ip)
    M = int(w13.data.shape[1])
    p1, p2 = L.w3_w1_permute_indices(M, gated=gated), L.w2_permute_indices(Hp)
    p1_sf = L.w3_w1_permute_indices(M, gated=gated, num_elts_per_sf=_SF_INDEX_VEC)
    p2_sf = L.w2_permute_indices(Hp, num_elts_per_sf=_SF_INDEX_VEC)

    def scales(s: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return L.interleaved_scales(L.permute_rows(s.view(torch.uint8), index)).view(torch.float8_e4m3fn)

    nvfp4 = layer.quant.kind is QuantKind.NVFP4
    return TrtllmFp4Weights(
        gemm1_weights=L.permute_rows(w13.data, p1), gemm1_scales=scales(w13.scale, p1_sf),
        gemm2_weights=L.permute_rows(w.w2.data, p2), gemm2_scales=scales(w.w2.scale, p2_sf),
        gemm1_bias=None if b13 is None else L.permute_rows(b13.float().unsqueeze(-1), p1).squeeze(-1),
        gemm2_bias=None if w.w2_bias is None else L.permute_rows(w.w2_bias.float().unsqueeze(-1), p2).squeeze(-1),
        w1_gs=w13.global_scale.float().contiguous() if nvfp4 else None,
        w2_gs=w.w2.global_scale.float().contiguous() if nvfp4 else None, gated=gated, nvfp4=nvfp4)


def output_scalars(w1_gs: torch.Tensor, w2_gs: torch.Tensor, a1_gs: torch.Tensor, c_gs: torch.Tensor, *,
                   gated: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output1_scale_scalar, output1_scale_gate_scalar, output2_scale_scalar), each fp32 [E], from
    encode (multiplier) global scales: NvFP4's ``448*6/amax`` and FP8 per-tensor's ``448/amax``
    alike (FlashInfer ``FP4Moe.prepare_static_weights_for_kernel``;
    ``prepare.py::prepare_trtllm_fp8_per_tensor_weights``)."""
    w1_gs, w2_gs = w1_gs.float(), w2_gs.float()
    a1_gs, c_gs = a1_gs.float().reshape(()), c_gs.float().reshape(())
    dequant1 = 1.0 / (w1_gs * a1_gs)
    out1 = c_gs * dequant1 if gated else c_gs.expand_as(w1_gs).clone()
    return out1.contiguous(), dequant1.contiguous(), (1.0 / (c_gs * w2_gs)).contiguous()


# --- Runtime ---------------------------------------------------------------------------------------

def _quantize_input(x: torch.Tensor, a1_gs: torch.Tensor, *,
                    on_kernel_device: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 ``[T, H]`` -> (uint8 ``[T, H/2]``, float8 linear scales ``[T, H/16]``). On a device the
    runtime checks accepted (``on_kernel_device``), FlashInfer's ``fp4_quantize``
    (``is_sf_swizzled_layout=False``); otherwise (CPU tests of ``_without_runtime_checks`` only) the
    same recipe in torch (``moe_registry.formats.quantize_nvfp4``)."""
    T, H = x.shape
    if on_kernel_device and x.is_cuda:
        from flashinfer import fp4_quantize

        q, sf = fp4_quantize(x, a1_gs.reshape(1), sf_vec_size=NVFP4_SF_VEC, sf_use_ue8m0=False,
                             is_sf_swizzled_layout=False)
        return q.view(torch.uint8), sf.view(torch.float8_e4m3fn).reshape(T, H // NVFP4_SF_VEC)
    from moe_registry.formats import quantize_nvfp4

    t = quantize_nvfp4(x, global_scale=a1_gs.reshape(()))
    return t.data, t.scale


def _quantize_mxfp8_input(x: torch.Tensor, *, on_kernel_device: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 ``[T, H]`` -> (float8_e4m3fn ``[T, H]``, e8m0 scales ``[T, H/32]`` viewed as float8_e4m3fn,
    linear layout). On the kernel's device FlashInfer's ``mxfp8_quantize(..., is_sf_swizzled_layout=False)``
    (``prepare.py::prepare_trtllm_fp4_activations``); otherwise (CPU tests only) the OCP MX recipe in
    torch: ``2^ceil(log2(amax_32 / 448))`` (the CUDA kernel's ``cvt_float_to_e8m0(vmax / 448, RoundPosInf)``),
    values saturated to e4m3."""
    T, H = x.shape
    if on_kernel_device and x.is_cuda:
        from flashinfer import mxfp8_quantize

        q, sf = mxfp8_quantize(x, is_sf_swizzled_layout=False)
        return q, sf.view(torch.float8_e4m3fn).reshape(T, H // 32)
    blocks = x.float().reshape(T, H // 32, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    exponent = torch.where(amax > 0, torch.ceil(torch.log2(amax / 448.0)), torch.full_like(amax, -127.0))
    exponent = exponent.clamp(-127, 127)
    q = (blocks / torch.exp2(exponent)).clamp(-448.0, 448.0).reshape(T, H).to(torch.float8_e4m3fn)
    return q, (exponent + 127).to(torch.uint8).reshape(T, H // 32).view(torch.float8_e4m3fn)


def _flashinfer_routed_moe() -> Callable[..., Any]:
    from flashinfer.fused_moe import trtllm_fp4_block_scale_routed_moe

    return trtllm_fp4_block_scale_routed_moe


def _sf_layout_linear() -> Any:
    from flashinfer.tllm_enums import SfLayout

    return SfLayout.layout_linear


class TrtllmFp4Experts(TrtllmGenExperts):
    """FlashInfer TRT-LLM-gen FP4 MoE for one layer (NvFP4, or MXFP4 weights with bf16 or MXFP8
    activations). Not verified on hardware."""

    backend = BACKEND

    def _prepare(self, layer: LayerSpec, weights: ExpertWeights, registry: Registry | None) -> TrtllmFp4Weights:
        self.quantizes_activations = layer.quant.kind is QuantKind.NVFP4
        return prepare_trtllm_fp4_weights(layer, weights, hidden_to=self.hidden_padded,
                                          intermediate_to=self.intermediate_padded, registry=registry)

    def _routed_moe(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    out: torch.Tensor) -> Any:
        p = self.prepared
        b1, b2 = p.gemm1_bias, p.gemm2_bias
        if p.nvfp4:
            in_amax = self.input_amax if self.input_amax is not None else x.abs().amax().float().clamp(min=1e-12)
            a1_gs = (NVFP4_GS_NUMERATOR / in_amax).reshape(())
            c_gs = (NVFP4_GS_NUMERATOR / self._calibrated_intermediate_amax()).reshape(())
            xq, x_sf = _quantize_input(x, a1_gs, on_kernel_device=self.sm is not None)
            out1, gate1, out2 = output_scalars(p.w1_gs, p.w2_gs, a1_gs, c_gs, gated=p.gated)
            params = self._swiglu_params(x.device, raw_scale=gate1)
            b1 = None if b1 is None else b1 / gate1.unsqueeze(-1)
            b2 = None if b2 is None else b2 / out2.unsqueeze(-1)
            layout = _sf_layout_linear()
        else:  # MXFP4 weights: no global scales, bf16 or MXFP8 activations
            out1, gate1, out2, layout = None, None, None, None
            xq, x_sf = x, None
            if self.layer.quant.kind is QuantKind.MXFP4_MXFP8:
                xq, x_sf = _quantize_mxfp8_input(x, on_kernel_device=self.sm is not None)
                layout = _sf_layout_linear()
            params = self._swiglu_params(x.device)
        return _flashinfer_routed_moe()(
            (self._ids(topk_ids), topk_weights), None, xq, x_sf, p.gemm1_weights, p.gemm1_scales, b1,
            params["gemm1_alpha"], params["gemm1_beta"], params["gemm1_clamp_limit"], p.gemm2_weights, p.gemm2_scales,
            b2, out1, gate1, out2, activation_type=self.activation_type, output=out,
            hidden_states_scale_layout=layout, **self._call_kwargs())
