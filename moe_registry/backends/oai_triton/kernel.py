"""The ``oai-triton-kernels`` adapter: OpenAI's ``triton_kernels`` MXFP4 MoE, called as vLLM 0.33 calls it.

Build (vLLM ``oracle/mxfp4.py`` ``convert_gpt_oss_weight_to_mxfp4_moe_kernel_format``, TRITON branch, and
``quantization/utils/mxfp4_utils.py`` ``_swizzle_mxfp4``): GEMM1 rows in gpt-oss's interleaved gate/up
order (canonical ``[gate; up]`` weights are interleaved here, rows with their scales: exact), weights and
e8m0 scales transposed so K is dim 1, wrapped as ``FP4`` and converted to the device's default
``matmul_ogs`` layouts (Hopper: ``HopperMXValueLayout`` / ``HopperMXScaleLayout``, the scale groups padded
to a multiple of 4 first), biases in fp32; the device's opt-flag constraints set once (SM90:
``split_k = 1``; SM100 / SM120 families: persistent kernel, epilogue subtile 1), as vLLM does.

Forward (``OAITritonExperts.apply`` -> ``make_routing_data`` -> ``triton_kernel_fused_experts``): top-k ids
(int16) packed into a bitmatrix by vLLM's ``pack_bitmatrix`` kernel, ``routing_from_bitmatrix`` (router
weights as bf16, as vLLM passes them), ``matmul_ogs`` GEMM1 with the gather and swigluoai fused,
``matmul_ogs`` GEMM2 with the router weights (``gammas``) and the top-k sum in its scatter. Every size
comes from tensor metadata: no host sync, so a forward can be captured in a CUDA graph.
"""

from __future__ import annotations

import importlib
import sys
import threading
from typing import Any

import torch
import triton
import triton.language as tl

from moe_registry.execution.base import Experts
from moe_registry.execution.declared import check_declared, device_spec_of
from moe_registry.execution.guards import check_forward_inputs, check_weights
from moe_registry.execution.weights import ExpertWeights
from moe_registry.schemas.layer import LayerSpec

from . import locate

_LOCK = threading.Lock()
_SCALE_WARPS = 8  # vLLM _swizzle_mxfp4(num_warps=8)


def load_triton_kernels() -> Any:
    """The ``triton_kernels`` package vLLM would use (top-level first, else vLLM's vendored copy,
    registered as ``triton_kernels`` because the vendored code imports itself by that name, as
    vLLM's ``import_triton_kernels`` does). RuntimeError (one line) when there is none."""
    name, _, detail = locate()
    if name is None:
        raise RuntimeError(f"oai-triton-kernels: {detail}")
    with _LOCK:
        module = importlib.import_module(name)
        existing = sys.modules.get("triton_kernels")
        if existing is None:
            sys.modules["triton_kernels"] = module
        elif existing is not module:
            raise RuntimeError(f"oai-triton-kernels: sys.modules['triton_kernels'] is {existing.__name__}, not {name}")
    return module


# vLLM 0.33.0 fused_moe/experts/gpt_oss_triton_kernels_moe.py L556-596 pack_bitmatrix (Apache-2.0), unchanged:
# one launch packs the top-k ids into the uint32 bitmatrix routing_from_bitmatrix reads.
@triton.jit
def pack_bitmatrix(bitmatrix, topk_ids, n_rows, bm_cols: tl.constexpr, n_expts_act,
                   BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_K: tl.constexpr):
    pid_m = tl.program_id(0)
    offsets_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offsets_k = tl.arange(0, BLOCK_SIZE_K)
    offsets = offsets_m[:, None] * n_expts_act + offsets_k[None, :]
    mask = (offsets_m < n_rows)[:, None] & (offsets_k < n_expts_act)[None, :]
    indices = tl.load(topk_ids + offsets, mask=mask, other=-1)
    valid = indices >= 0
    div = indices // 32
    rem = indices % 32
    one = tl.cast(1, tl.uint32)
    for i in range(bm_cols):
        offs = tl.arange(0, BLOCK_SIZE_K // 32) + i * (BLOCK_SIZE_K // 32)
        x = tl.where(valid[:, :, None] & (div[:, :, None] == offs[None, None, :]), (one << rem)[:, :, None], 0)
        y = tl.reduce_or(x, axis=1)
        bitmatrix_ptrs = bitmatrix + offsets_m[:, None] * bm_cols + offs[None, :]
        tl.store(bitmatrix_ptrs, y, mask=offsets_m[:, None] < n_rows)


def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)


def set_device_constraints(device: torch.device) -> None:
    """vLLM ``_swizzle_mxfp4``'s opt-flag constraints for this device (module-global in triton_kernels,
    as in vLLM: every matmul_ogs of the process sees them)."""
    import triton_kernels.matmul_ogs_details.opt_flags as opt_flags

    major, _ = _capability(device)
    if major == 9:
        opt_flags.update_opt_flags_constraints({"split_k": 1})
    elif major in (10, 12):
        opt_flags.update_opt_flags_constraints({"is_persistent": True, "epilogue_subtile": 1})


def swizzle_mxfp4(data: torch.Tensor, scale: torch.Tensor, device: torch.device) -> tuple[Any, Any, Any]:
    """``data [E, N, K/2]`` / ``scale [E, N, K/32]`` (uint8) -> (value tensor, InFlexData, scale tensor) in
    the device's default matmul_ogs layouts (vLLM ``_swizzle_mxfp4`` on CUDA)."""
    from triton_kernels.numerics import InFlexData
    from triton_kernels.tensor import FP4, convert_layout, wrap_torch_tensor
    from triton_kernels.tensor_details import layout

    value_layout, value_opts = layout.make_default_matmul_mxfp4_w_layout(mx_axis=1)
    scale_layout, scale_opts = layout.make_default_matmul_mxfp4_w_scale_layout(mx_axis=1, num_warps=_SCALE_WARPS)
    if _capability(device)[0] == 9 and scale.numel() > 0:  # vLLM #47303: scale groups padded to 0 mod 4
        scale = torch.nn.functional.pad(scale, (0, -scale.shape[-1] % 4))
    value = convert_layout(wrap_torch_tensor(data.transpose(-2, -1), dtype=FP4), value_layout, **value_opts)
    scales = convert_layout(wrap_torch_tensor(scale.transpose(-2, -1)), scale_layout, **scale_opts)
    return value, InFlexData(), scales


def interleave_index(intermediate: int) -> torch.Tensor:
    """Rows ``[gate; up]`` -> gpt-oss's interleaved g0, u0, g1, u1, ..."""
    return torch.stack([torch.arange(intermediate), torch.arange(intermediate, 2 * intermediate)], dim=1).flatten()


class OaiTritonExperts(Experts):
    """triton_kernels ``matmul_ogs`` MoE on MXFP4 weights, bf16 activations, swigluoai; see the module
    docstring. Build: declared guards (``ValueError``), triton_kernels present (``RuntimeError``), weights
    converted once. Forward: guards, bitmatrix, routing, two ``matmul_ogs``."""

    backend = "oai-triton-kernels"

    def __init__(self, layer: LayerSpec, weights: ExpertWeights, *, pad_hidden_to: int | None = None,
                 pad_intermediate_to: int | None = None) -> None:
        super().__init__(layer, weights, pad_hidden_to=pad_hidden_to, pad_intermediate_to=pad_intermediate_to)
        if self.hidden_padded != layer.hidden_size or self.intermediate_padded != layer.local_intermediate_size:
            raise ValueError("oai-triton-kernels: the adapter does not pad (its declaration refuses unaligned sizes)")
        check_weights(layer, weights)
        device = weights.device
        if device.type == "cpu" and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        check_declared(self.backend, layer, device_spec_of(device) if device.type == "cuda" else None,
                       hidden_padded=layer.hidden_size, intermediate_padded=layer.local_intermediate_size)
        load_triton_kernels()
        from triton_kernels.matmul_ogs import FlexCtx, FnSpecs, FusedActivation, PrecisionConfig
        from triton_kernels.swiglu import swiglu_fn

        self.device = device
        params = layer.swigluoai
        assert params is not None  # check_declared: swigluoai with the gpt-oss constants only
        I, E = layer.local_intermediate_size, layer.local_num_experts
        w = weights.to(device)
        w13, b13 = w.w13, w.w13_bias
        if not params.interleaved:  # canonical [gate; up] -> the interleaved rows the kernel's swiglu reads
            index = interleave_index(I).to(device)
            w13 = type(w13)(data=w13.data.index_select(-2, index), scale=w13.scale.index_select(-2, index))
            b13 = None if b13 is None else b13.index_select(-1, index)
        set_device_constraints(device)
        self.w13, flex13, scale13 = swizzle_mxfp4(w13.data, w13.scale, device)
        self.w2, flex2, scale2 = swizzle_mxfp4(w.w2.data, w.w2.scale, device)
        self.pc13 = PrecisionConfig(weight_scale=scale13, flex_ctx=FlexCtx(rhs_data=flex13))
        self.pc2 = PrecisionConfig(weight_scale=scale2, flex_ctx=FlexCtx(rhs_data=flex2))
        self.b13 = None if b13 is None else b13.float().contiguous()
        self.b2 = None if w.w2_bias is None else w.w2_bias.float().contiguous()
        self.act = FusedActivation(FnSpecs("swiglu", swiglu_fn, ("alpha", "limit")), (params.alpha, params.limit), 2)
        self.num_experts, self.bm_cols = E, triton.cdiv(E, 32)

    def routing(self, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> tuple[Any, Any, Any]:
        """vLLM ``make_routing_data`` ("3.5.1" branch): bitmatrix, then ``routing_from_bitmatrix``."""
        from triton_kernels.routing import routing_from_bitmatrix
        from triton_kernels.tensor import Bitmatrix

        ids = topk_ids.to(torch.int16)
        T, k = ids.shape
        bits = torch.zeros((T, self.bm_cols), dtype=torch.uint32, device=ids.device)
        pack_bitmatrix[(triton.cdiv(T, 512),)](bits, ids, T, self.bm_cols, k, BLOCK_SIZE_M=512, BLOCK_SIZE_K=32)
        bitmatrix = Bitmatrix(bits, shape=[T, self.bm_cols * 32], shape_max=[T, None], scratchpad=None)
        return routing_from_bitmatrix(bitmatrix, topk_weights.to(torch.bfloat16), ids, self.num_experts, k)

    def forward(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        from triton_kernels.matmul_ogs import matmul_ogs

        check_forward_inputs(self.layer, hidden_states, topk_weights, topk_ids, device=self.device,
                             dtype=torch.bfloat16)
        T, k = topk_ids.shape
        H, I = self.layer.hidden_size, self.layer.local_intermediate_size
        if T == 0:
            return torch.empty((0, H), dtype=torch.bfloat16, device=hidden_states.device)
        routing_data, gather, scatter = self.routing(topk_weights, topk_ids)
        inter = torch.empty((1, T * k, I), dtype=torch.bfloat16, device=hidden_states.device)
        matmul_ogs(hidden_states.contiguous(), self.w13, self.b13, routing_data, gather_indx=gather,
                   precision_config=self.pc13, gammas=None, fused_activation=self.act, y=inter)
        out = torch.empty((1, T, H), dtype=torch.bfloat16, device=hidden_states.device)
        matmul_ogs(inter.view(T * k, I), self.w2, self.b2, routing_data, scatter_indx=scatter,
                   precision_config=self.pc2, gammas=routing_data.gate_scal, y=out)
        return out.view(T, H)
