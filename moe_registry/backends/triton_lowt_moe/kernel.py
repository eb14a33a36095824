"""The ``triton-lowt-moe`` adapter: the low-T kernels (``kernels.py``) behind ``Experts``.

Build: each weight is packed once (``ops.pack_weight``: 4-bit data regrouped into the kernels' K steps,
int4 words transposed so that rows are contiguous; 16-bit weights as they are). What the kernels refuse
is refused by ``check_declared``; the activation code is the declaration's ``kernel_value``.

Forward: no host sync. An expert id outside [0, E) is never used as an address; on the GPU the kernel
that meets it stops with a device error (the stream fails, as with a device-side assert), on the CPU
the input guard refuses it first. Capturable in a CUDA graph (``moe_registry.execution.graphs``).
On a CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` before triton is first
imported), on the plain-Triton unpacking path: slow, for tests on tiny shapes.
"""

from __future__ import annotations

from typing import Any

import torch

from ...execution.base import Experts
from ...execution.guards import check_forward_inputs
from ...execution.weights import ExpertWeights, torch_dtype
from ...formats.int4 import Int4GroupTensor, scales_in_dtype
from ...schemas.layer import LayerSpec
from ..triton_fused_moe.kernel import checked_triton_build
from ..triton_fused_moe.ops import epilogue_for
from . import ops

BLOCK_4BIT = 256  # K elements per step of the 4-bit kernels (the packing block)
BLOCK_16BIT = 128


class TritonLowTExperts(Experts):
    """Experts on the low-T Triton kernels.

    ``config``: one ``ops.Config`` for every batch, or a callable ``T -> Config``; default
    ``ops.default_config``. ``block_k``: the K step (4-bit weights are packed for it).
    """

    backend = "triton-lowt-moe"

    def __init__(self, layer: LayerSpec, weights: ExpertWeights, *, pad_hidden_to: int | None = None,
                 pad_intermediate_to: int | None = None, config: Any = None, block_k: int | None = None) -> None:
        super().__init__(layer, weights, pad_hidden_to=pad_hidden_to, pad_intermediate_to=pad_intermediate_to)
        decl = checked_triton_build(self, weights)
        self.dtype = torch_dtype(layer)
        self.device = weights.device
        block = block_k or (BLOCK_4BIT if weights.is_quantized else BLOCK_16BIT)
        self.w13 = ops.pack_weight(self._scales_cast(weights.w13), self.dtype, block=block, backend=self.backend)
        self.w2 = ops.pack_weight(self._scales_cast(weights.w2), self.dtype, block=block, backend=self.backend)
        self.w13_bias = None if weights.w13_bias is None else weights.w13_bias.float().contiguous()
        self.w2_bias = None if weights.w2_bias is None else weights.w2_bias.float().contiguous()
        code = decl.activations[layer.activation].kernel_value
        assert code is not None, f"declaration of {self.backend} gives no kernel_value for {layer.activation.value}"
        self.epilogue = epilogue_for(layer, code)
        self.config = config
        self.asm = self.device.type == "cuda"
        # Cleared by the kernels when an id is out of range, never set back (the GPU kernel also stops).
        self._ok = torch.ones(1, dtype=torch.int32, device=self.device)
        # The kernels' arrival counters (0 between forwards), one set per CUDA stream so that forwards in flight
        # on two streams at once (micro-batches overlapped on two streams) never count into the same tiles;
        # sized for the default configs of every T that uses them (a config that needs more gets fresh zeros
        # per call, a memset). Never replaced or freed while the adapter lives: a captured graph keeps the address.
        L = layer
        self._counter_size = max(ops.counters_needed(T, L.top_k, L.local_num_experts, L.hidden_size,
                                                     L.local_intermediate_size,
                                                     ops.default_config(T, L.top_k, L.local_num_experts,
                                                                        quantized=weights.is_quantized))
                                 for T in (1, ops.SORT_ABOVE))
        self._counters: dict[int, torch.Tensor] = {}
        self._stream_counters()

    def _scales_cast(self, w: Any) -> Any:
        """int4 scales in the layer dtype where they are not: the pre-scaled steps multiply in it
        (``scales_in_dtype`` warns when that rounds)."""
        if isinstance(w, Int4GroupTensor) and w.scales.dtype != self.dtype:
            import dataclasses

            return dataclasses.replace(w, scales=scales_in_dtype(
                w.scales, self.dtype, backend=self.backend, why="its kernels scale small groups in the layer dtype"))
        return w

    def _stream_counters(self) -> torch.Tensor:
        """The counters of the current stream (made on its first forward)."""
        key = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        if key not in self._counters:
            self._counters[key] = torch.zeros(self._counter_size, dtype=torch.int32, device=self.device)
        return self._counters[key]

    def config_for(self, T: int) -> ops.Config:
        if self.config is None:
            return ops.default_config(T, self.layer.top_k, self.layer.local_num_experts,
                                      quantized=self.w13.fmt != ops.F.FMT_16BIT)
        return self.config(T) if callable(self.config) else self.config

    def forward(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        # On CUDA the range check is the kernels' (no sync); on the CPU the guard's host check is free.
        check_forward_inputs(self.layer, hidden_states, topk_weights, topk_ids, device=self.device,
                             dtype=self.dtype, check_id_range=self.device.type != "cuda")
        return self.run(hidden_states, topk_weights, topk_ids)

    def run(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """The forward without the metadata guards (inputs already validated)."""
        T = hidden_states.shape[0]
        if T == 0:
            return hidden_states.new_empty((0, self.layer.hidden_size))
        L = self.layer
        cfg = self.config_for(T)
        need = ops.counters_needed(T, L.top_k, L.local_num_experts, L.hidden_size, L.local_intermediate_size, cfg)
        return ops.fused_experts(hidden_states, topk_weights, topk_ids, self.w13, self.w2, L.local_num_experts,
                                 L.local_intermediate_size, self.epilogue, cfg, w13_bias=self.w13_bias,
                                 w2_bias=self.w2_bias, ok=self._ok, asm=self.asm,
                                 counters=self._stream_counters() if self._counter_size >= need else None)

    def direct_call(self, ids_dtype: torch.dtype = torch.int32) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        """``(fn, args, kwargs)``: ``fn(x, topk_weights, topk_ids)`` runs the kernels without guards."""
        return (lambda x, w, ids: self.run(x, w, ids)), (), {}

    @property
    def weight_bytes(self) -> int:
        return self.w13.nbytes + self.w2.nbytes
