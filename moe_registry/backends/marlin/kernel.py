"""The ``marlin`` adapter: vLLM's Marlin weight-only MoE kernel, ``torch.ops._moe_C.moe_wna16_marlin_gemm``.

Scope: ``int4_w4a16`` (GPTQ layout, ``moe_registry.formats.Int4GroupTensor``), group sizes -1, 32,
64, 128, symmetric (``uint4b8``) or with integer zero points (``uint4``); ``nvfp4_w4a16`` and
``nvfp4`` (``NvFp4Tensor``, run weight-only as vLLM does on pre-Blackwell GPUs) and ``mxfp4``
(``MxFp4Tensor``, bf16 activations only), all as ``float4_e2m1f``; fp16/bf16 activations,
optional biases, every ``Activation`` (applied by ``apply_activation`` between the GEMMs),
router weight on the input (top-1), zero padding of hidden / intermediate.
Not run: GPTQ act-order (vLLM 0.33's op has no ``g_idx``/``perm``), 8-bit weights, W4A8.

What this mirrors (vLLM 0.33.0):

- FP4 weight preparation ``quantization/utils/marlin_utils_fp4.py``
  (``prepare_nvfp4_moe_layer_for_marlin``, ``prepare_moe_mxfp4_layer_for_marlin``): see
  ``prepare_fp4``.
- Weight preparation ``fused_moe/oracle/int_wna16.py::_process_weights_marlin``: canonical
  ``[E, N, K]`` -> GPTQ ``[E, K/8, N]`` -> ``gptq_marlin_moe_repack`` (ported in ``repack.py``),
  ``marlin_moe_permute_scales``, ``moe_packed_to_marlin_zero_points`` (our zero points arrive
  unpacked, so only ``marlin_zero_points``), ``marlin_permute_bias``. w13 keeps ``[gate; up]``:
  vLLM's Marlin w1 is ``[E, 2N, K]`` gate first (``tests/kernels/moe/test_moe.py``
  ``test_fused_marlin_moe`` builds ``w1 [e, 2n, k]`` and checks against ``SiluAndMul``); the GEMM
  output columns come out in logical N order, so our ``apply_activation`` reads them as is.
- Forward ``experts/marlin_moe.py::fused_marlin_moe`` / ``_fused_marlin_moe``: block size from
  ``M * topk / E``; ``moe_align_block_size``; GEMM1 with ``top_k=topk``, ``size_m=M``,
  ``mul_topk_weights=apply_router_weight_on_input`` (False here, see below); activation; GEMM2
  with ``top_k=1``, ``size_m=M*topk``, ``mul_topk_weights=True``; sum over top-k.
  ``use_atomic_add=False, use_fp32_reduce=True, is_zp_float=False`` as vLLM passes them;
  ``thread_k = thread_n = blocks_per_sm = -1`` (auto). Workspace: ``SMs * 4`` int32 zeros
  (``marlin_make_workspace_new(device, MARLIN_MAX_BLOCKS_PER_SM)``); the kernel resets its locks.

Differences from vLLM, all numerically benign: the activation runs in float32 on the GEMM1 output
and is rounded to the layer dtype once (vLLM's fused activation ops also compute in float32);
the top-k sum runs in float32 (vLLM sums in the layer dtype); with
``apply_router_weight_on_input`` (top_k == 1) the router weight scales the input before GEMM1
(vLLM scales the GEMM1 output, equal without a bias, and our reference's semantics with one).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from moe_registry.execution.activations import apply_activation
from moe_registry.execution.base import Experts
from moe_registry.execution.guards import check_forward_inputs, check_weights
from moe_registry.formats.int4 import scales_in_dtype
from moe_registry.execution.weights import ExpertWeights
from moe_registry.schemas.layer import LayerSpec
from moe_registry.schemas.quant import QuantKind, quant_info

from . import ops, repack
from .ops import load_moe_c, marlin_op_available  # noqa: F401  (public API of this module)
from .repack import (
    GPTQ_MARLIN_TILE,
    MARLIN_MAX_BLOCKS_PER_SM,
    MARLIN_SUPPORTED_GROUP_SIZES,
    UINT4_ID,
    UINT4B8_ID,
)

__all__ = ["MarlinExperts", "MarlinConfig", "check_marlin_config", "load_moe_c", "marlin_op_available",
           "marlin_padded_intermediate"]

_ACT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
HIDDEN_MULTIPLE = 128  # check_moe_marlin_supports_config: hidden_size % 128
# Every Marlin thread config has thread_n in {128, 256} (csrc/moe/marlin_moe_wna16/ops.cu
# small/large_batch_thread_configs; generate_kernels.py THREAD_CONFIGS), so each GEMM's N must be a
# multiple of 128: gated GEMM1 has N = 2I (I % 64 suffices), non-gated GEMM1 has N = I.
N_MULTIPLE = 128


def marlin_padded_intermediate(intermediate: int, group: int) -> int:
    """vLLM 0.33 ``marlin_moe_padded_intermediate`` (quantization/utils/marlin_utils.py L335): the
    smallest size >= ``intermediate`` that is a multiple of lcm(64, group) (group -1: 64), so the
    thread tiles fit and the scale groups stay whole. The declaration's pad rules say the same."""
    tile = math.lcm(64, group if group > 0 else 1)
    return -(-intermediate // tile) * tile


class MarlinConfig:
    """The validated sizes one MarlinExperts runs with (padded sizes where padding was asked)."""

    def __init__(self, *, hidden: int, hidden_padded: int, intermediate: int, intermediate_padded: int,
                 group_size: int, gated: bool, dtype: torch.dtype, weight_format: str) -> None:
        self.hidden, self.hidden_padded = hidden, hidden_padded
        self.intermediate, self.intermediate_padded = intermediate, intermediate_padded
        self.group_size, self.gated, self.dtype = group_size, gated, dtype
        self.weight_format = weight_format  # "int4" | "nvfp4" | "mxfp4"

    @property
    def gemm1_n(self) -> int:
        return self.intermediate_padded * (2 if self.gated else 1)


# The layer quant kinds the adapter converts (format class and fixed group: the quant-kind table's).
# NVFP4 as vLLM: W4A4 checkpoints run weight-only on Marlin.
_KINDS = (QuantKind.INT4_W4A16, QuantKind.NVFP4_W4A16, QuantKind.NVFP4, QuantKind.MXFP4)


def _group_size_of(w: Any, name: str) -> int:
    g = getattr(w, "group_size", None)
    if g is None or not hasattr(w, "qweight") or not hasattr(w, "scales"):
        raise ValueError(f"marlin: {name} must be an Int4GroupTensor (GPTQ layout), got {type(w).__name__}")
    return int(g)


def _check_no_act_order(w: Any, name: str) -> None:
    g_idx = getattr(w, "g_idx", None)
    if g_idx is None:
        return
    k = w.qweight.shape[-2] * repack.PACK_FACTOR_4BIT
    g = k if w.group_size == -1 else w.group_size
    trivial = (torch.arange(k, device=g_idx.device, dtype=torch.int64) // g).expand(g_idx.shape)
    if not torch.equal(g_idx.to(torch.int64), trivial):
        raise ValueError(f"marlin: {name} uses GPTQ act-order (a permuted g_idx); vLLM 0.33's "
                         f"moe_wna16_marlin_gemm has no g_idx/perm arguments, so act-order int4 cannot run here")


def check_marlin_config(layer: LayerSpec, weights: ExpertWeights | None = None, *,
                        pad_hidden_to: int | None = None, pad_intermediate_to: int | None = None) -> MarlinConfig:
    """Validate what the Marlin MoE kernel can run; raise ``ValueError`` (one line) otherwise.

    Mirrors vLLM's ``check_moe_marlin_supports_config`` (marlin_utils.py): ``hidden % 128``,
    ``intermediate % lcm(64, group)`` (vLLM pads up to it: ``marlin_padded_intermediate``),
    ``group in {-1, 32, 64, 128}`` (int4; NvFP4 / MXFP4 have
    their fixed 16 / 32), plus what the kernel's thread configs need for a non-gated GEMM1
    (``intermediate % 128``) and MXFP4's bf16-only kernels. Sizes are the padded ones.
    """
    if layer.dtype not in _ACT_DTYPES:
        raise ValueError(f"marlin: activations must be bf16 or fp16 (the kernel's a/c types), "
                         f"layer dtype is {layer.dtype}")
    if layer.quant.kind not in _KINDS:
        raise ValueError(f"marlin adapter runs int4_w4a16, nvfp4_w4a16 / nvfp4 (weight-only) and mxfp4 weights; "
                         f"{layer.quant.label()} is not implemented here")
    fmt = layer.quant.family.value  # "int4" | "nvfp4" | "mxfp4"
    fixed_group = quant_info(layer.quant.kind).fixed_group
    if fmt == "mxfp4" and layer.dtype != "bf16":
        raise ValueError("marlin: MXFP4 weights run with bf16 activations only (vLLM builds the MXFP4 Marlin "
                         "kernels for a_type bfloat16 only, generate_kernels.py)")
    if layer.quant.act_order:
        raise ValueError("marlin: GPTQ act-order is not supported (vLLM 0.33's Marlin MoE op has no g_idx/perm)")
    if fixed_group is not None:
        group = fixed_group
    else:
        group = layer.quant.group_size if layer.quant.group_size is not None else 128
        if weights is not None:
            g13, g2 = _group_size_of(weights.w13, "w13"), _group_size_of(weights.w2, "w2")
            if g13 != g2:
                raise ValueError(f"marlin: w13 and w2 have different group sizes ({g13} vs {g2})")
            group = g13
            _check_no_act_order(weights.w13, "w13")
            _check_no_act_order(weights.w2, "w2")
        if group not in MARLIN_SUPPORTED_GROUP_SIZES:
            raise ValueError(f"marlin: group size {group} is not one of {list(MARLIN_SUPPORTED_GROUP_SIZES)}")
    H, I = layer.hidden_size, layer.local_intermediate_size
    Hp, Ip = pad_hidden_to or H, pad_intermediate_to or I
    if Hp < H or Ip < I:
        raise ValueError(f"marlin: cannot pad down (hidden {H}->{Hp}, intermediate {I}->{Ip})")
    if Hp % HIDDEN_MULTIPLE:
        raise ValueError(f"marlin: hidden size {Hp} is not a multiple of {HIDDEN_MULTIPLE} "
                         f"(vLLM check_moe_marlin_supports_config)")
    i_multiple = math.lcm(64, group if group > 0 else 1)
    if Ip % i_multiple:
        raise ValueError(f"marlin: local intermediate size {Ip} is not a multiple of lcm(64, group={group}) = "
                         f"{i_multiple}; pad_intermediate_to={marlin_padded_intermediate(Ip, group)} pads it as "
                         f"vLLM's marlin_moe_padded_intermediate does")
    gated = layer.activation.is_gated
    if not gated and Ip % N_MULTIPLE:
        raise ValueError(f"marlin: non-gated activation {layer.activation.value} makes GEMM1 N = intermediate = {Ip}, "
                         f"which must be a multiple of {N_MULTIPLE} (every Marlin thread config has thread_n >= 128); "
                         f"pad_intermediate_to={-(-Ip // N_MULTIPLE) * N_MULTIPLE} makes it one")
    if group > 0 and (H % group or I % group):
        raise ValueError(f"marlin: group size {group} does not divide hidden {H} and intermediate {I}")
    if layer.apply_router_weight_on_input and layer.top_k != 1:
        raise ValueError(f"marlin: apply_router_weight_on_input needs top_k == 1 (vLLM fused_marlin_moe), "
                         f"got {layer.top_k}")
    return MarlinConfig(hidden=H, hidden_padded=Hp, intermediate=I, intermediate_padded=Ip, group_size=group,
                        gated=gated, dtype=_ACT_DTYPES[layer.dtype], weight_format=fmt)


# --- Weight preparation ----------------------------------------------------------------------

def _n_pad_index(n: int, n_padded: int, halves: bool, device: torch.device) -> torch.Tensor | None:
    """Index map from padded output channels to source channels (-1 = padding), or None.

    ``halves``: gated ``[gate; up]`` rows, each half padded on its own (``[gate; 0; up; 0]``);
    otherwise (non-gated, interleaved gpt-oss rows, or hidden) the padding goes at the end.
    """
    if n_padded == n:
        return None
    idx = torch.full((n_padded,), -1, dtype=torch.long, device=device)
    if halves:
        half, half_p = n // 2, n_padded // 2
        idx[:half] = torch.arange(half, device=device)
        idx[half_p:half_p + half] = torch.arange(half, n, device=device)
    else:
        idx[:n] = torch.arange(n, device=device)
    return idx


def _pad_last(t: torch.Tensor, index: torch.Tensor | None, fill: float | int) -> torch.Tensor:
    """Gather the last dim through ``index`` (from ``_n_pad_index``), writing ``fill`` at -1."""
    if index is None:
        return t
    out = t.new_full((*t.shape[:-1], index.numel()), fill)
    keep = index >= 0
    out[..., keep] = t[..., index[keep]]
    return out


class _PreparedWeight:
    """One GEMM's Marlin operands: ``qweight [E, K/16, 2N]`` int32, ``scales [E, G, N]`` (int4: the
    layer dtype; NvFP4: float8_e4m3fn S0E5M3 bytes; MXFP4: float8_e8m0fnu), ``zeros [E, G, N/8]``
    int32 or None, ``bias [E, N]`` (layer dtype) or None, ``global_scale`` fp32 ``[E]`` (NvFP4) or
    None, the b type id, and the (padded) N and K."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 bias: torch.Tensor | None, type_id: int, size_n: int, size_k: int,
                 global_scale: torch.Tensor | None = None) -> None:
        self.qweight, self.scales, self.zeros, self.bias = qweight, scales, zeros, bias
        self.type_id, self.size_n, self.size_k = type_id, size_n, size_k
        self.global_scale = global_scale  # NvFP4 only: fp32 [E] ("scalar type of global_scale must be float")


def prepare_int4(w: Any, *, k_padded: int, n_index: torch.Tensor | None, bias: torch.Tensor | None,
                 dtype: torch.dtype, device: torch.device, chunk_nibbles: int = 1 << 27) -> _PreparedWeight:
    """An ``Int4GroupTensor`` (logical ``[E, N, K]``) -> Marlin operands, padded.

    Padding keeps every padded weight exactly zero after dequantization: padded output channels
    get scale 0 (and code = zero point); padded K rows in new groups get scale 0 and code 8 = zero
    point 8; padded K rows inside the single per-channel group get code = that column's zero point.
    """
    qweight = w.qweight.to(device)
    E, K8, N = qweight.shape
    K = K8 * repack.PACK_FACTOR_4BIT
    g = w.group_size
    scales = scales_in_dtype(w.scales.to(device), dtype, backend="marlin", why="Marlin takes scales in the activation dtype")
    zeros = None if w.zeros is None else w.zeros.to(device=device, dtype=torch.int32)
    if zeros is not None and bool((zeros == repack.SYMMETRIC_ZERO).all()):
        zeros = None  # all zero points 8: the same weights as uint4b8, which needs no zero-point stream
    has_zp = zeros is not None
    n_padded = N if n_index is None else n_index.numel()
    groups = scales.shape[-2]
    groups_padded = groups if g == -1 else k_padded // g
    # Scales / zero points: pad output channels, then whole new groups along K.
    scales = _pad_last(scales, n_index, 0.0)
    scales = F.pad(scales, (0, 0, 0, groups_padded - groups))
    if zeros is not None:
        zeros = _pad_last(zeros, n_index, repack.SYMMETRIC_ZERO)
        zeros = F.pad(zeros, (0, 0, 0, groups_padded - groups), value=repack.SYMMETRIC_ZERO)
    fill_code = repack.SYMMETRIC_ZERO

    def codes_of(start: int, stop: int) -> torch.Tensor:
        codes = repack.unpack_gptq_rows(qweight[start:stop])  # uint8 [e, K, N]
        if n_index is not None or k_padded != K:
            codes = _pad_last(codes, n_index, fill_code)
            if k_padded != K:
                if g == -1 and zeros is not None:
                    # Same group as the real rows: code = the column's zero point -> exactly 0.
                    rows = zeros[start:stop, :1, :].to(torch.uint8).expand(-1, k_padded - K, -1)
                else:
                    rows = codes.new_full((stop - start, k_padded - K, n_padded), fill_code)
                codes = torch.cat([codes, rows], dim=-2)
        return codes

    out = _repack_codes_nk(codes_of, E, k_padded, n_padded, device, chunk_nibbles)
    marlin_scales = repack.marlin_permute_scales(scales.contiguous(), k_padded, n_padded,
                                                 -1 if g == -1 else g)
    marlin_zeros = repack.marlin_zero_points(zeros, n_padded) if zeros is not None else None
    marlin_bias = None
    if bias is not None:
        b = _pad_last(bias.to(device=device, dtype=dtype), n_index, 0.0)
        marlin_bias = repack.marlin_permute_bias(b.contiguous())
    return _PreparedWeight(out.contiguous(), marlin_scales.contiguous(), marlin_zeros, marlin_bias,
                           UINT4_ID if has_zp else UINT4B8_ID, n_padded, k_padded)


def _repack_codes_nk(codes_fn, E: int, k_padded: int, n_padded: int, device: torch.device,
                     chunk_nibbles: int) -> torch.Tensor:
    """Repack experts in chunks: ``codes_fn(start, stop)`` gives padded codes ``[e, Kp, Np]``."""
    t = GPTQ_MARLIN_TILE
    out = torch.empty((E, k_padded // t, n_padded * t // repack.PACK_FACTOR_4BIT), dtype=torch.int32, device=device)
    per_chunk = max(1, chunk_nibbles // (k_padded * n_padded))
    for start in range(0, E, per_chunk):
        stop = min(E, start + per_chunk)
        out[start:stop] = repack.marlin_repack_nibbles(codes_fn(start, stop))
    return out


def prepare_fp4(w: Any, fmt: str, *, k_padded: int, n_index: torch.Tensor | None, bias: torch.Tensor | None,
                dtype: torch.dtype, device: torch.device, chunk_nibbles: int = 1 << 27) -> _PreparedWeight:
    """An ``NvFp4Tensor`` / ``MxFp4Tensor`` (logical ``[E, N, K]``) -> Marlin operands, padded.

    vLLM 0.33 ``prepare_nvfp4_moe_layer_for_marlin`` / ``prepare_moe_mxfp4_layer_for_marlin``: the
    e2m1 codes are repacked like GPTQ int4 (``_repack_marlin_experts``); scales are transposed to
    ``[E, K/g, N]``, ``marlin_permute_scales``-ed (grouped perm) and processed
    (``nvfp4_marlin_process_scales`` with one scale factor for all experts of the weight, or
    ``mxfp4_marlin_process_scales``); the NvFP4 global scale passed is the *dequant* scale
    (``1 / NvFp4Tensor.global_scale``) through ``nvfp4_marlin_process_global_scale`` divided by the
    factor. Padded weights have code 0 (+0.0); padded NvFP4 scales are 0, padded e8m0 bytes 127 (1.0).
    """
    data = w.data.to(device)  # uint8 [E, N, K/2], element 2j in the low nibble
    E, N, K2 = data.shape
    K = 2 * K2
    n_padded = N if n_index is None else n_index.numel()
    group = 16 if fmt == "nvfp4" else 32

    def codes(start: int, stop: int) -> torch.Tensor:
        d = data[start:stop]
        c = torch.stack((d & 0xF, d >> 4), dim=-1).reshape(stop - start, N, K)  # [e, N, K]
        c = _pad_last(c.transpose(1, 2), n_index, 0)  # [e, K, Np]
        if k_padded != K:
            c = torch.cat([c, c.new_zeros((stop - start, k_padded - K, n_padded))], dim=1)
        return c

    qweight = _repack_codes_nk(codes, E, k_padded, n_padded, device, chunk_nibbles)
    groups_padded = k_padded // group
    if fmt == "nvfp4":
        s = w.scale.to(device).float().transpose(1, 2)  # [E, K/16, N] e4m3 values (exact in fp32)
        s = _pad_last(s, n_index, 0.0)
        s = F.pad(s, (0, 0, 0, groups_padded - s.shape[1])).to(dtype)  # vLLM: scales.to(param_dtype)
        factor = repack.nvfp4_compute_scale_factor(s, dtype)
        s = repack.marlin_permute_scales(s.contiguous(), k_padded, n_padded, group)
        s = repack.nvfp4_marlin_process_scales(s, factor)
        gs = 1.0 / w.global_scale.to(device=device, dtype=torch.float32).reshape(E)
        gs = (repack.nvfp4_marlin_process_global_scale(gs, dtype) / factor).contiguous()
        type_scales, global_scale = s, gs
    else:
        b = w.scale.to(device).transpose(1, 2)  # uint8 e8m0 [E, K/32, N]
        b = _pad_last(b, n_index, 127)
        b = F.pad(b, (0, 0, 0, groups_padded - b.shape[1]), value=127)
        b = repack.marlin_permute_scales(b.contiguous(), k_padded, n_padded, group)
        type_scales, global_scale = repack.mxfp4_marlin_process_scales(b), None
    marlin_bias = None
    if bias is not None:
        bb = _pad_last(bias.to(device=device, dtype=dtype), n_index, 0.0)
        marlin_bias = repack.marlin_permute_bias(bb.contiguous())
    return _PreparedWeight(qweight, type_scales, None, marlin_bias, repack.FLOAT4_E2M1F_ID, n_padded, k_padded,
                           global_scale=global_scale)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # a CPU stand-in op (tests) needs no locks


class MarlinExperts(Experts):
    """vLLM's Marlin MoE (``moe_wna16_marlin_gemm``) on int4 / NvFP4 / MXFP4 weights with 16-bit
    activations; see the module docstring. Build: validate (``ValueError``), find the op
    (``RuntimeError`` if absent), repack once. Forward: guards, align, GEMM1, activation, GEMM2, sum."""

    backend = "marlin"

    def __init__(self, layer: LayerSpec, weights: ExpertWeights, *, pad_hidden_to: int | None = None,
                 pad_intermediate_to: int | None = None) -> None:
        super().__init__(layer, weights, pad_hidden_to=pad_hidden_to, pad_intermediate_to=pad_intermediate_to)
        check_weights(layer, weights)
        self.config = cfg = check_marlin_config(layer, weights, pad_hidden_to=pad_hidden_to,
                                                pad_intermediate_to=pad_intermediate_to)
        ops.ensure_marlin_op()  # RuntimeError "vLLM's _moe_C ops not found (pip install vllm)" ...
        device = weights.device
        if device.type == "cpu" and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.dtype = cfg.dtype
        params = layer.swigluoai
        halves = cfg.gated and not (params is not None and params.interleaved)
        H, Hp, Ip = cfg.hidden, cfg.hidden_padded, cfg.intermediate_padded
        n13 = layer.gemm1_rows
        idx13 = _n_pad_index(n13, cfg.gemm1_n, halves, device)
        idx2 = _n_pad_index(H, Hp, False, device)
        if cfg.weight_format == "int4":
            def prepare(w, **kw):
                return prepare_int4(w, **kw)
        else:
            def prepare(w, **kw):
                return prepare_fp4(w, cfg.weight_format, **kw)
        self.w13 = prepare(weights.w13, k_padded=Hp, n_index=idx13, bias=weights.w13_bias, dtype=self.dtype,
                           device=device)
        self.w2 = prepare(weights.w2, k_padded=Ip, n_index=idx2, bias=weights.w2_bias, dtype=self.dtype,
                          device=device)
        # vLLM marlin_make_workspace_new(device, MARLIN_MAX_BLOCKS_PER_SM): SMs * 4 int32 zeros.
        self.workspace = torch.zeros(_num_sms(device) * MARLIN_MAX_BLOCKS_PER_SM, dtype=torch.int32, device=device)
        self.num_experts = layer.local_num_experts

    # --- forward ---------------------------------------------------------------------------

    def _align(self, topk_ids: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        E = self.num_experts
        if not ops.align_op_available():
            return repack.moe_align_block_size_torch(topk_ids, E, block)
        max_padded, num_blocks = repack.align_buffer_sizes(topk_ids.numel(), E, block)
        sorted_ids = torch.empty((max_padded,), dtype=torch.int32, device=topk_ids.device)
        expert_ids = torch.empty((num_blocks,), dtype=torch.int32, device=topk_ids.device)
        ntpp = torch.empty((1,), dtype=torch.int32, device=topk_ids.device)
        ops.moe_align_block_size(topk_ids, E, block, sorted_ids, expert_ids, ntpp)
        return sorted_ids, expert_ids, ntpp

    def _gemm(self, a: torch.Tensor, w: _PreparedWeight, sorted_ids: torch.Tensor, expert_ids: torch.Tensor,
              ntpp: torch.Tensor, topk_weights: torch.Tensor, *, block: int, top_k: int, mul_topk_weights: bool,
              size_m: int) -> torch.Tensor:
        # vLLM always hands the op its output buffer (intermediate_cache1 / cache3); so do we.
        c = torch.empty((size_m * top_k, w.size_n), dtype=self.dtype, device=a.device)
        return ops.moe_wna16_marlin_gemm(
            a=a, c_or_none=c, b_q_weight=w.qweight, b_bias_or_none=w.bias, b_scales=w.scales,
            a_scales=None, global_scale=w.global_scale, b_zeros_or_none=w.zeros, workspace=self.workspace,
            sorted_token_ids=sorted_ids, expert_ids=expert_ids, num_tokens_past_padded=ntpp,
            topk_weights=topk_weights, moe_block_size=block, top_k=top_k, mul_topk_weights=mul_topk_weights,
            b_type_id=w.type_id, size_m=size_m, size_n=w.size_n, size_k=w.size_k,
            use_atomic_add=False, use_fp32_reduce=True, is_zp_float=False,
            thread_k=-1, thread_n=-1, blocks_per_sm=-1)

    def forward(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        check_forward_inputs(self.layer, hidden_states, topk_weights, topk_ids, device=self.device, dtype=self.dtype)
        cfg = self.config
        T, k = topk_ids.shape
        if T == 0:
            return torch.empty((0, cfg.hidden), dtype=self.dtype, device=hidden_states.device)
        x = hidden_states
        weights = topk_weights.contiguous()
        on_input = self.layer.apply_router_weight_on_input
        if on_input:  # top_k == 1 (checked at build): scale the input, as the reference does
            x = (x.float() * weights).to(self.dtype)
        if cfg.hidden_padded != cfg.hidden:
            x = F.pad(x, (0, cfg.hidden_padded - cfg.hidden))
        x = x.contiguous()
        ids = topk_ids.to(torch.int32).contiguous()
        block = repack.choose_block_size_m(T, k, self.num_experts)
        sorted_ids, expert_ids, ntpp = self._align(ids, block)

        h = self._gemm(x, self.w13, sorted_ids, expert_ids, ntpp, weights, block=block, top_k=k,
                       mul_topk_weights=False, size_m=T)  # [T*k, N1], row t*k+j
        act = apply_activation(h.float(), self.layer).to(self.dtype).contiguous()  # [T*k, Ip]
        y = self._gemm(act, self.w2, sorted_ids, expert_ids, ntpp, weights, block=block, top_k=1,
                       mul_topk_weights=not on_input, size_m=T * k)  # [T*k, Hp], weighted
        out = y.view(T, k, cfg.hidden_padded).float().sum(dim=1)
        return out[:, :cfg.hidden].to(self.dtype)
