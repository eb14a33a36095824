"""PyTorch grouped GEMM experts: ``torch.nn.functional.grouped_mm`` (CUTLASS on SM90/SM100).

One forward is: sort the ``T*k`` (token, expert) pairs by expert (stable), cumulative row offsets
per expert, gather the rows, GEMM1 as one grouped GEMM, the activation in float32 (router weight
folded in), GEMM2 as one grouped GEMM, then an inverse-permutation gather and a sum over the k
copies of each token. There is no loop over experts and no host synchronisation on the bf16 CUDA
path: offsets come from ``searchsorted`` on the sorted ids (``torch.bincount`` on CUDA reads
``min``/``max`` back to the host), the reduction is a gather plus a sum (deterministic, unlike
``index_add_``'s atomics).

What ``grouped_mm`` requires (PyTorch ``aten/src/ATen/native/GroupedMMUtils.h``,
``cuda/GroupedBlas.cpp``, ``cuda/GroupMM.cu``, ``cuda/GroupMMCommon.cuh``):

- fast path (CUTLASS, no host sync) only when A, B and the output are all bf16 and the device is
  SM 9.0 or 10.x (``_grouped_mm_cuda``: ``use_fast_path = _scaled_mm_allowed_device(...) &&
  a_b_and_out_are_bf16``); fp16 / fp32 run ``_grouped_mm_fallback``: ``offs.cpu()`` (a host sync)
  and one ``mm`` per group. Correct, slow.
- every operand's non-unit stride a multiple of 16 bytes and data pointers 16-byte aligned
  (``check_valid_strides_and_return_transposed``): for bf16/fp16 ``H % 8 == 0`` and ``I % 8 == 0``
  (A of GEMM1 is ``[M, H]``, A of GEMM2 is ``[M, I]``; B needs ``K % 8`` when K-major or
  ``N % 8`` when N-major). The same check runs on CPU.
- ``offs`` int32, 1-D, one entry per group; groups may be empty in the 2-D x 3-D form (only the
  2-D x 2-D form asserts non-empty groups); no alignment of the per-group row counts.
- fewer than 1024 groups (``GroupMM.cu``: ``TORCH_CHECK(group_count < 1024, ...)``).
- no bias (``"Bias not supported yet"``) and the output dtype equals A's dtype.

Quantized layers run on weights dequantized once at load to the layer dtype (4x the weight
memory of int4, 2x that of fp8): this backend trades memory for a bf16 tensor-core GEMM.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F

from ...execution.activations import apply_activation
from ...execution.base import Experts, pad_weights
from ...execution.declared import check_declared
from ...execution.guards import check_forward_inputs, check_weights
from ...execution.weights import ExpertWeights, torch_dtype
from ...schemas.activation import Activation
from ...schemas.layer import LayerSpec

WeightLayout = Literal["k_major", "n_major"]

# Public since PyTorch 2.9 as torch.nn.functional.grouped_mm; the private op is the same kernel.
_grouped_mm: Callable[..., torch.Tensor] = getattr(F, "grouped_mm", None) or torch._grouped_mm

# Mirrors of the kernel's limits (see the module docstring for the sources).
GROUPED_MM_ALIGN_BYTES = 16  # GroupedMMUtils.h check_valid_strides_and_return_transposed
GROUPED_MM_MAX_GROUPS = 1023  # GroupMM.cu: group_count < 1024


def alignment_elements(dtype: torch.dtype) -> int:
    """Elements per 16 bytes: the multiple H and I must keep (8 for bf16/fp16, 4 for fp32)."""
    return GROUPED_MM_ALIGN_BYTES // torch.empty((), dtype=dtype).element_size()


def uses_fast_path(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether grouped_mm takes its CUTLASS path (no host sync) for this dtype on this device."""
    if dtype != torch.bfloat16 or device.type != "cuda":
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major in (9, 10)


def _plain(w: Any, dtype: torch.dtype) -> torch.Tensor:
    """A weight as a plain tensor of ``dtype``; quantized formats are dequantized in float32 first."""
    if isinstance(w, torch.Tensor):
        return w.to(dtype)
    return w.dequantize(torch.float32).to(dtype)


# In-place float32 forms of the activations whose maths is one elementwise function (bitwise the
# same as moe_registry.execution.activations, which is the definition; tests compare the two).
_INPLACE: dict[Activation, Callable[[torch.Tensor], Any]] = {
    Activation.SILU: lambda t: F.silu(t, inplace=True),
    Activation.GELU: lambda t: torch.ops.aten.gelu_(t, approximate="none"),
    Activation.GELU_TANH: lambda t: torch.ops.aten.gelu_(t, approximate="tanh"),
    Activation.SILU_NO_MUL: lambda t: F.silu(t, inplace=True),
    Activation.GELU_NO_MUL: lambda t: torch.ops.aten.gelu_(t, approximate="none"),
    Activation.GELU_TANH_NO_MUL: lambda t: torch.ops.aten.gelu_(t, approximate="tanh"),
    Activation.RELU2_NO_MUL: lambda t: F.relu(t, inplace=True).square_(),
}


def activate(h: torch.Tensor, layer: LayerSpec, scale: torch.Tensor | None = None) -> torch.Tensor:
    """GEMM1 output ``h [M, 2I or I]`` (16-bit) -> ``act(h) * scale`` ``[M, I]`` in ``h.dtype``.

    Float32 maths as ``apply_activation`` defines it, with fewer passes: only the gate half is
    widened to float32 and then updated in place (the up half is read as 16-bit by the multiply).
    swigluoai goes through ``apply_activation`` itself.
    """
    fn = _INPLACE.get(layer.activation)
    if fn is None:
        act = apply_activation(h.float(), layer)
    else:
        width = h.shape[-1] // 2 if layer.activation.is_gated else h.shape[-1]
        act = h[:, :width].to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        fn(act)
        if layer.activation.is_gated:
            act.mul_(h[:, width:])
    if scale is not None:
        act.mul_(scale)
    return act.to(h.dtype)


def grouped_mm_experts(
    hidden_states: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w13_t: torch.Tensor,
    w2_t: torch.Tensor,
    expert_ids: torch.Tensor,
    layer: LayerSpec,
    *,
    w13_bias: torch.Tensor | None = None,
    w2_bias: torch.Tensor | None = None,
    apply_router_weight_on_input: bool = False,
    hidden_padded: int | None = None,
) -> torch.Tensor:
    """The whole forward without guards: what the adapter runs after validating its inputs.

    ``w13_t [E, Hp, R]`` and ``w2_t [E, Ip, Hp]`` are GEMM-ready (``[G, K, N]``, K-major views or
    N-major copies), ``expert_ids`` is ``arange(E)`` in ``topk_ids``' dtype on the same device,
    biases float32. ``layer`` only chooses the activation. Returns ``[T, H]`` in the input dtype.
    """
    T, H = hidden_states.shape
    k = topk_ids.shape[1]
    dtype = hidden_states.dtype
    Hp = hidden_padded or H
    if T == 0:
        return hidden_states.new_empty((0, H))
    x = F.pad(hidden_states, (0, Hp - H)) if Hp != H else hidden_states

    # --- Permute (token, expert) pairs into expert order ----------------------------------------
    flat_ids = topk_ids.reshape(-1)
    sorted_ids, order = torch.sort(flat_ids, stable=True)
    # offs[e] = number of pairs routed to experts <= e: the end row of group e (int32, no sync).
    offs = torch.searchsorted(sorted_ids, expert_ids, right=True, out_int32=True)
    token_of_row = order // k if k > 1 else order
    rows = x.index_select(0, token_of_row)  # [M, Hp]
    row_weights = topk_weights.reshape(-1).index_select(0, order).unsqueeze(1)  # [M, 1] fp32
    if apply_router_weight_on_input:
        rows = (rows.float() * row_weights).to(dtype)

    # --- GEMM1, activation, GEMM2 ---------------------------------------------------------------
    h = _grouped_mm(rows, w13_t, offs=offs)  # [M, R] in dtype
    # GEMM2 is linear in its input rows: scaling them by the router weight scales the output, so
    # the weight is applied here, on [M, I] in float32, rather than on GEMM2's wider [M, H] output.
    scale = None if apply_router_weight_on_input else row_weights
    if w13_bias is not None:
        hf = h.float()
        hf += w13_bias.index_select(0, sorted_ids)
        act = apply_activation(hf, layer)
        if scale is not None:
            act.mul_(scale)
        act = act.to(dtype)
    else:
        act = activate(h, layer, scale)  # [M, Ip] in dtype
    y = _grouped_mm(act, w2_t, offs=offs)  # [M, Hp], rows in expert order

    # --- Un-permute and reduce the k copies of each token (gather + sum: deterministic) ---------
    inverse = torch.argsort(order)
    y_tok = y.index_select(0, inverse)  # [T*k, Hp], token-major
    if w2_bias is None:
        out = y_tok if k == 1 else y_tok.view(T, k, Hp).sum(dim=1)  # bf16 sum accumulates in fp32
    else:
        out = y_tok.view(T, k, Hp).sum(dim=1, dtype=torch.float32)
        bias = w2_bias[topk_ids.long()]  # [T, k, Hp] fp32
        if not apply_router_weight_on_input:
            bias = bias * topk_weights.unsqueeze(-1)
        out = (out + bias.sum(dim=1)).to(dtype)
    if Hp != H:
        out = out[:, :H]
    return out.contiguous()


class TorchGroupedMMExperts(Experts):
    """Experts on ``torch.nn.functional.grouped_mm``; quantized weights dequantized at load.

    Runs on the device the weights are on (move them first: CPU weights run PyTorch's CPU
    fallback). ``fast_path`` says whether grouped_mm takes its CUTLASS path here.

    ``weight_layout``: ``"k_major"`` keeps the canonical ``[E, N, K]`` storage and hands grouped_mm
    its transposed view (column-major B, no copy); ``"n_major"`` stores ``[E, K, N]`` contiguous
    (row-major B). Both are exact; the benchmark measures which the kernel prefers.
    """

    backend = "torch-grouped-mm"
    default_weight_layout: WeightLayout = "k_major"
    # The guard's id-range check reads min/max back to the host: one device sync per forward, which
    # on CUDA also stops the host from queueing ahead. Set False (per instance) only when the ids
    # are known good (e.g. inside a captured CUDA graph fed by ``route()``); out-of-range ids then
    # give wrong rows (uninitialised memory) instead of a ValueError.
    check_id_range: bool = True

    def __init__(
        self,
        layer: LayerSpec,
        weights: ExpertWeights,
        *,
        pad_hidden_to: int | None = None,
        pad_intermediate_to: int | None = None,
        weight_layout: WeightLayout | None = None,
    ) -> None:
        super().__init__(layer, weights, pad_hidden_to=pad_hidden_to, pad_intermediate_to=pad_intermediate_to)
        # What the declaration says this backend does not run (fp16, W4A8/MXFP8 schemes whose activation
        # quantization a dequantize-at-load path would silently drop, unpadded misaligned sizes, > 1023
        # experts) is refused here from the declaration itself, not from a second list.
        check_declared(self.backend, layer, None, hidden_padded=self.hidden_padded,
                       intermediate_padded=self.intermediate_padded)
        self.weight_layout: WeightLayout = weight_layout or self.default_weight_layout
        if self.weight_layout not in ("k_major", "n_major"):
            raise ValueError(f"weight_layout must be 'k_major' or 'n_major', got {self.weight_layout!r}")
        dtype = torch_dtype(layer)
        E, H, I = layer.local_num_experts, layer.hidden_size, layer.local_intermediate_size
        self.dtype = dtype
        self.dequantized_at_load = weights.is_quantized

        check_weights(layer, weights)

        # Dequantize one weight at a time (peak memory: one float32 copy of one weight).
        plain = ExpertWeights(w13=_plain(weights.w13, dtype), w2=_plain(weights.w2, dtype),
                              w13_bias=weights.w13_bias, w2_bias=weights.w2_bias)
        swiglu = layer.swigluoai
        plain = pad_weights(plain, self.hidden_padded if self.hidden_padded != H else None,
                            self.intermediate_padded if self.intermediate_padded != I else None,
                            interleaved=bool(swiglu and swiglu.interleaved))
        device = plain.w2.device

        # bf16 on SM90/SM100: CUTLASS, no host sync. Otherwise PyTorch's per-group fallback.
        self.fast_path = uses_fast_path(dtype, device)

        w13, w2 = plain.w13.contiguous(), plain.w2.contiguous()  # [E, R, Hp], [E, Hp, Ip]
        if self.weight_layout == "k_major":
            self.w13_t, self.w2_t = w13.transpose(1, 2), w2.transpose(1, 2)
        else:
            self.w13_t, self.w2_t = w13.transpose(1, 2).contiguous(), w2.transpose(1, 2).contiguous()
        self.w13_bias = None if plain.w13_bias is None else plain.w13_bias.to(device=device, dtype=torch.float32)
        self.w2_bias = None if plain.w2_bias is None else plain.w2_bias.to(device=device, dtype=torch.float32)
        self.device = device
        self._expert_ids = {d: torch.arange(E, device=device, dtype=d) for d in (torch.int32, torch.int64)}

    def forward(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        check_forward_inputs(self.layer, hidden_states, topk_weights, topk_ids, device=self.device,
                             check_id_range=self.check_id_range)
        return grouped_mm_experts(
            hidden_states, topk_weights, topk_ids, self.w13_t, self.w2_t, self._expert_ids[topk_ids.dtype],
            self.layer, w13_bias=self.w13_bias, w2_bias=self.w2_bias,
            apply_router_weight_on_input=self.layer.apply_router_weight_on_input,
            hidden_padded=self.hidden_padded)

    def direct_call(self, ids_dtype: torch.dtype = torch.int32) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        """``(fn, args, kwargs)`` such that ``fn(hidden_states, topk_weights, topk_ids, *args, **kwargs)``
        runs the same kernel code as ``forward`` without the guards (for overhead measurements)."""
        args = (self.w13_t, self.w2_t, self._expert_ids[ids_dtype], self.layer)
        kwargs = dict(w13_bias=self.w13_bias, w2_bias=self.w2_bias,
                      apply_router_weight_on_input=self.layer.apply_router_weight_on_input,
                      hidden_padded=self.hidden_padded)
        return grouped_mm_experts, args, kwargs

    @property
    def weight_bytes(self) -> int:
        """Bytes of the stored GEMM weights (after dequantization and padding)."""
        return sum(t.numel() * t.element_size() for t in (self.w13_t, self.w2_t))
