"""FlashInfer TRT-LLM-gen NvFP4 MoE: ``flashinfer.fused_moe.trtllm_fp4_block_scale_routed_moe``.

Status: not verified on hardware (TRT-LLM-gen needs SM100; the project's GPUs are SM90). The weight
preparation is pure PyTorch and tested on CPU against FlashInfer's own index functions; the call
is wired from FlashInfer 0.7.2.post1's source (``fused_moe/core.py``, ``fused_moe/prepare.py``,
``data/csrc/trtllm_fused_moe_kernel_launcher.cu``) and its tests
(``tests/moe/trtllm_gen_fused_moe_utils.py`` ``FP4Moe.prepare_static_weights_for_kernel``).

Weights (flashinfer-moe-api.md 2.5; ``prepare.py::prepare_trtllm_fp4_weights``):

1. NvFP4 weights with **linear** e4m3 block scales (``moe_registry.formats.NvFp4Tensor``).
2. W1 (gated): canonical ``[gate; up]`` -> ``[up; gate]``, then per expert the row permutation
   ``reorder_rows_for_gated_act_gemm`` (interleave the up and gate halves) composed with the
   ``shuffle_matrix_a`` row shuffle for ``epilogue_tile_m = 128``, applied to the packed data and
   (``get_shuffle_matrix_sf_a_row_indices``, ``num_elts_per_sf = 16``) to the scales, whose result
   then gets the 128x4 ``block_scale_interleave`` (``moe_registry.formats.swizzle_128x4``).
   Non-gated W1: the shuffle only.
3. W2: the shuffle + interleave.
4. Scales viewed as float8_e4m3fn; per-expert fp32 scalars with encode global scales
   (``448*6/amax``): ``output1_scale_scalar = c_gs / (w1_gs * a1_gs)`` (``c_gs`` alone for
   non-gated activations), ``output1_scale_gate_scalar = 1 / (w1_gs * a1_gs)``,
   ``output2_scale_scalar = 1 / (c_gs * w2_gs)``; ``a1_gs`` is the hidden states' global scale,
   ``c_gs`` the FC2 input's.

Forward: hidden states quantized to NvFP4 with linear scales (``fp4_quantize(...,
is_sf_swizzled_layout=False)`` on SM100), precomputed routing passed as the tuple
``(int32 ids, fp32 weights)`` (``UnpackedPrecomputed``: the weights are read at their own dtype),
``routing_method_type = TopK`` (no pre/post-processing of the given weights,
``trtllm_fused_moe_routing_runner.cu``), ``activation_type`` the declaration's ``kernel_value``
for the layer's activation (gelu_tanh runs through Geglu: an approximation the declaration
states). The local shard is passed as the whole layer (``num_experts = local_num_experts =
E_local``, offset 0) because ``Experts.forward`` receives local ids.

What the kernel runs (activations, bf16, NvFP4, alignments, SM10x) lives only in the declaration
(``trtllm_nvfp4/__init__.py``); the guards here are ``moe_registry.execution.declared``'s.
Padding: what the declaration's pad rules give (``declared_padding``; selection passes it to the
adapter). Zero padding of the packed weights is exact, so the kernel sees the padded sizes as
real ones and the output is sliced; FlashInfer's ``valid_hidden_size`` /
``valid_intermediate_size`` arguments are left ``None`` (they change the GEMM2 output width and are
a separate code path, also unverified here).

Activation scales: ``a1_gs`` is dynamic (this batch's amax) unless ``input_amax`` is given;
``c_gs`` is static, from ``intermediate_amax`` or calibrated once on the first batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from moe_registry.backends import _flashinfer_common as fic
from moe_registry.backends._flashinfer_base import FlashInferExperts
from moe_registry.execution.declared import check_declared
from moe_registry.execution.weights import ExpertWeights, torch_dtype
from moe_registry.registry import Registry
from moe_registry.schemas.layer import LayerSpec

BACKEND = "trtllm-nvfp4"

EPILOGUE_TILE_M = 128  # "FIXME: this depends on the kernel internals" (FlashInfer tests / prepare.py)
NVFP4_SF_VEC = 16
NVFP4_GS_NUMERATOR = 448.0 * 6.0
ROUTING_METHOD_TOPK = 5  # tllm_enums.RoutingMethodType.TopK

# --- Row-permutation indices: ports of FlashInfer's pure python/torch helpers ----------------------

# flashinfer/utils.py srcToDstBlk16RowMap / srcToDstBlk32RowMap (L1042-1062).
_SRC_TO_DST_BLK16 = (0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15)
_SRC_TO_DST_BLK32 = (0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27,
                     4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31)


def shuffle_block_size(epilogue_tile_m: int) -> int:
    """``flashinfer/utils.py::get_shuffle_block_size``: 32 when ``epilogue_tile_m % 128 == 0``, else 16."""
    return 32 if epilogue_tile_m % 128 == 0 else 16


def shuffle_matrix_a_row_indices(m: int, epilogue_tile_m: int = EPILOGUE_TILE_M) -> torch.Tensor:
    """``flashinfer/utils.py::get_shuffle_matrix_a_row_indices`` (L1073): ``row_indices[new] = old``
    for TRT-LLM-gen ``shuffleMatrixA``, reordering rows inside blocks of 16 or 32."""
    block = shuffle_block_size(epilogue_tile_m)
    if m % block:
        raise ValueError(f"shuffle_matrix_a: rows ({m}) must be a multiple of {block}")
    row_map = torch.tensor(_SRC_TO_DST_BLK16 if block == 16 else _SRC_TO_DST_BLK32, dtype=torch.long)
    old = torch.arange(m, dtype=torch.long)
    new = (old // block) * block + row_map[old % block]
    indices = torch.empty(m, dtype=torch.long)
    indices[new] = old
    return indices


def shuffle_matrix_sf_a_row_indices(m: int, epilogue_tile_m: int = EPILOGUE_TILE_M,
                                    num_elts_per_sf: int = NVFP4_SF_VEC) -> torch.Tensor:
    """``flashinfer/utils.py::get_shuffle_matrix_sf_a_row_indices`` (L1111): the same rows as the
    data shuffle, for linear-layout scales of a matrix with ``m % 128 == 0`` rows."""
    if num_elts_per_sf not in (16, 32):
        raise ValueError(f"num_elts_per_sf must be 16 or 32, got {num_elts_per_sf}")
    if m % 128:
        raise ValueError(f"shuffle_matrix_sf_a: rows ({m}) must be a multiple of 128")
    return shuffle_matrix_a_row_indices(m, epilogue_tile_m)


def reorder_rows_for_gated_act_gemm_indices(m: int) -> torch.Tensor:
    """``fused_moe/core.py::get_reorder_rows_for_gated_act_gemm_row_indices`` (L548):
    ``[r0, ..., r(M/2-1), rM/2, ..., r(M-1)] -> [r0, rM/2, r1, rM/2+1, ...]``."""
    if m % 2:
        raise ValueError(f"reorder_rows_for_gated_act_gemm: rows ({m}) must be even")
    rows = torch.arange(m, dtype=torch.long)
    out = torch.empty_like(rows)
    out[0::2] = rows[: (m + 1) // 2]
    out[1::2] = rows[(m + 1) // 2:]
    return out


def w3_w1_permute_indices(m: int, epilogue_tile_m: int = EPILOGUE_TILE_M, *, gated: bool = True,
                          num_elts_per_sf: int | None = None) -> torch.Tensor:
    """``fused_moe/core.py::_maybe_get_cached_w3_w1_permute_indices`` (L475): the gated reorder
    (identity when non-gated) composed with the A shuffle (scale variant when ``num_elts_per_sf``)."""
    permute0 = reorder_rows_for_gated_act_gemm_indices(m) if gated else torch.arange(m, dtype=torch.long)
    if num_elts_per_sf is None:
        permute1 = shuffle_matrix_a_row_indices(m, epilogue_tile_m)
    else:
        permute1 = shuffle_matrix_sf_a_row_indices(m, epilogue_tile_m, num_elts_per_sf)
    return permute0[permute1]


def w2_permute_indices(m: int, epilogue_tile_m: int = EPILOGUE_TILE_M, *,
                       num_elts_per_sf: int | None = None) -> torch.Tensor:
    """``fused_moe/core.py::get_w2_permute_indices_with_cache`` (L514): the shuffle only."""
    if num_elts_per_sf is None:
        return shuffle_matrix_a_row_indices(m, epilogue_tile_m)
    return shuffle_matrix_sf_a_row_indices(m, epilogue_tile_m, num_elts_per_sf)


# --- Weight preparation (pure torch) -----------------------------------------------------------------

@dataclasses.dataclass
class TrtllmNvFp4Weights:
    gemm1_weights: torch.Tensor  # uint8 [E, M, H/2], M = 2I (gated) or I, shuffled rows
    gemm1_scales: torch.Tensor  # float8_e4m3fn [E, M, H/16], shuffled rows then 128x4-interleaved
    gemm2_weights: torch.Tensor  # uint8 [E, H, I/2]
    gemm2_scales: torch.Tensor  # float8_e4m3fn [E, H, I/16]
    w1_gs: torch.Tensor  # fp32 [E] encode global scales
    w2_gs: torch.Tensor
    gated: bool


def _interleaved_scales(scale_u8: torch.Tensor) -> torch.Tensor:
    """``block_scale_interleave`` of one expert's linear uint8 scales, reshaped to the linear shape
    (valid when rows % 128 == 0 and cols % 4 == 0, which the alignments above guarantee)."""
    from moe_registry.formats import swizzle_128x4

    rows, cols = scale_u8.shape
    if rows % 128 or cols % 4:
        raise ValueError(f"trtllm-nvfp4: block scales [{rows}, {cols}] need rows % 128 == 0 and cols % 4 == 0")
    return swizzle_128x4(scale_u8).reshape(rows, cols)


def prepare_trtllm_nvfp4_weights(layer: LayerSpec, weights: ExpertWeights, *, hidden_to: int | None = None,
                                 intermediate_to: int | None = None,
                                 registry: Registry | None = None) -> TrtllmNvFp4Weights:
    """Canonical NvFP4 weights -> TRT-LLM-gen's shuffled layout (module docstring; pure torch).
    ValueError (every reason, from the declaration) for a layer the kernel does not run."""
    H, I = layer.hidden_size, layer.local_intermediate_size
    Hp, Ip = hidden_to or H, intermediate_to or I
    check_declared(BACKEND, layer, None, hidden_padded=Hp, intermediate_padded=Ip, registry=registry)
    w = fic.pad_expert_weights(weights, layer, Hp, Ip)
    gated = layer.activation.is_gated
    w13 = fic.gate_up_to_up_gate(w.w13, Ip) if gated else w.w13  # [up; gate] (w31)
    E, M = int(w13.data.shape[0]), int(w13.data.shape[1])
    p1 = w3_w1_permute_indices(M, gated=gated).to(w13.data.device)
    p1_sf = w3_w1_permute_indices(M, gated=gated, num_elts_per_sf=NVFP4_SF_VEC).to(w13.data.device)
    p2 = w2_permute_indices(Hp).to(w.w2.data.device)
    p2_sf = w2_permute_indices(Hp, num_elts_per_sf=NVFP4_SF_VEC).to(w.w2.data.device)
    g1w, g1s, g2w, g2s = [], [], [], []
    for e in range(E):
        g1w.append(w13.data[e][p1].contiguous())
        g1s.append(_interleaved_scales(w13.scale[e].view(torch.uint8)[p1_sf].contiguous()))
        g2w.append(w.w2.data[e][p2].contiguous())
        g2s.append(_interleaved_scales(w.w2.scale[e].view(torch.uint8)[p2_sf].contiguous()))
    return TrtllmNvFp4Weights(
        gemm1_weights=torch.stack(g1w), gemm1_scales=torch.stack(g1s).view(torch.float8_e4m3fn),
        gemm2_weights=torch.stack(g2w), gemm2_scales=torch.stack(g2s).view(torch.float8_e4m3fn),
        w1_gs=w13.global_scale.float().contiguous(), w2_gs=w.w2.global_scale.float().contiguous(), gated=gated)


def output_scalars(w1_gs: torch.Tensor, w2_gs: torch.Tensor, a1_gs: torch.Tensor, c_gs: torch.Tensor, *,
                   gated: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output1_scale_scalar, output1_scale_gate_scalar, output2_scale_scalar), each fp32 [E], from
    encode global scales (``FP4Moe.prepare_static_weights_for_kernel``; flashinfer-moe-api.md 2.1)."""
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


def _flashinfer_routed_moe() -> Callable[..., Any]:
    from flashinfer.fused_moe import trtllm_fp4_block_scale_routed_moe

    return trtllm_fp4_block_scale_routed_moe


def _sf_layout_linear() -> Any:
    from flashinfer.tllm_enums import SfLayout

    return SfLayout.layout_linear


# --- The adapter -----------------------------------------------------------------------------------

class TrtllmNvFp4Experts(FlashInferExperts):
    """FlashInfer TRT-LLM-gen NvFP4 MoE for one layer. Not verified on hardware (TRT-LLM-gen needs
    SM100; the project's GPUs are SM90). Extra optional keyword arguments: ``input_amax``,
    ``intermediate_amax`` (static activation ranges), ``tune_max_num_tokens``, ``check_id_range``.

    First use on SM100 also builds FlashInfer's ``fused_moe_trtllm_sm100`` JIT module and fetches
    its cubins (``FLASHINFER_CUBIN_DIR``, the ``flashinfer-cubin`` package, or a download); see
    ``_flashinfer_common.trtllm_module_status``.
    """

    backend = "trtllm-nvfp4"

    def __init__(self, layer: LayerSpec, weights: ExpertWeights, *, pad_hidden_to: int | None = None,
                 pad_intermediate_to: int | None = None, input_amax: float | None = None,
                 intermediate_amax: float | None = None, tune_max_num_tokens: int = 8192,
                 check_id_range: bool = True, registry: Registry | None = None) -> None:
        super().__init__(layer, weights, pad_hidden_to=pad_hidden_to, pad_intermediate_to=pad_intermediate_to)
        self._check_layer(layer, weights, registry)  # ValueError
        self._check_runtime(layer, registry)  # RuntimeError
        self._setup(layer, weights, input_amax=input_amax, intermediate_amax=intermediate_amax,
                    tune_max_num_tokens=tune_max_num_tokens, check_id_range=check_id_range, registry=registry)

    SETUP_DEFAULTS = dict(input_amax=None, intermediate_amax=None, tune_max_num_tokens=8192, check_id_range=True)

    def _setup(self, layer: LayerSpec, weights: ExpertWeights, *, input_amax: float | None,
               intermediate_amax: float | None, tune_max_num_tokens: int, check_id_range: bool,
               registry: Registry | None) -> None:
        self.out_dtype = torch_dtype(layer)
        self.check_id_range = check_id_range
        self.tune_max_num_tokens = tune_max_num_tokens
        self.activation_type = fic.kernel_activation(self.declaration, layer)
        self.prepared = prepare_trtllm_nvfp4_weights(layer, weights, hidden_to=self.hidden_padded,
                                                     intermediate_to=self.intermediate_padded, registry=registry)
        self._init_ranges(weights, input_amax, intermediate_amax)

    def forward(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        T, H = hidden_states.shape
        x = self._begin_forward(hidden_states, topk_weights, topk_ids)
        if x is None:
            return hidden_states.new_empty((0, H))
        in_amax = self.input_amax if self.input_amax is not None else x.abs().amax().float().clamp(min=1e-12)
        a1_gs = (NVFP4_GS_NUMERATOR / in_amax).reshape(())
        c_gs = (NVFP4_GS_NUMERATOR / self.intermediate_amax).reshape(())
        xq, x_sf = _quantize_input(x, a1_gs, on_kernel_device=self.sm is not None)
        p = self.prepared
        out1, gate1, out2 = output_scalars(p.w1_gs, p.w2_gs, a1_gs, c_gs, gated=p.gated)
        ids = topk_ids if topk_ids.dtype == torch.int32 else topk_ids.to(torch.int32)
        E = self.layer.local_num_experts
        out = torch.empty((T, self.hidden_padded), dtype=torch.bfloat16, device=x.device)
        _flashinfer_routed_moe()(
            (ids, topk_weights), None, xq, x_sf, p.gemm1_weights, p.gemm1_scales, None, None, None, None,
            p.gemm2_weights, p.gemm2_scales, None, out1, gate1, out2,
            num_experts=E, top_k=self.layer.top_k, n_group=None, topk_group=None,
            intermediate_size=self.intermediate_padded, local_expert_offset=0, local_num_experts=E,
            routed_scaling_factor=None, routing_method_type=ROUTING_METHOD_TOPK, do_finalize=True,
            activation_type=self.activation_type, output=out, tune_max_num_tokens=self.tune_max_num_tokens,
            hidden_states_scale_layout=_sf_layout_linear())
        return out if self.hidden_padded == H else out[:, :H].contiguous()
