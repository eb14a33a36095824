"""The ``triton-fused-moe`` adapter: this project's Triton kernels (``kernels.py``) behind ``Experts``.

What it runs is read from the declaration (``moe_registry.backends.triton_fused_moe``): the
activation's kernel code is ``ActivationImpl.kernel_value``, what the kernels refuse is refused
by ``check_declared``. Weights stay in their canonical ``[E, N, K]`` layout (bf16 / fp16, or e4m3
with their scales): no repacking, no copy beyond a dtype cast.

No host sync in a forward: the id-range check runs inside the alignment kernel (out-of-range ids
are dropped, never used as an address) and ``torch._assert_async`` turns its flag into a
device-side assert. The forward is capturable in a CUDA graph (``moe_registry.execution.graphs``).

On a CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is
first imported): slow, for tests on tiny shapes.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ...execution.base import Experts
from ...execution.declared import check_declared
from ...execution.guards import check_forward_inputs, check_weights
from ...execution.weights import ExpertWeights, torch_dtype
from ...schemas.layer import LayerSpec
from ...schemas.quant import QuantKind
from . import codes as C
from . import configs

_QUANT_CODE = {QuantKind.BF16: C.QUANT_NONE, QuantKind.FP16: C.QUANT_NONE, QuantKind.FP8: C.QUANT_FP8_TENSOR,
               QuantKind.FP8_BLOCK: C.QUANT_FP8_BLOCK}


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def checked_triton_build(experts: Experts, weights: ExpertWeights) -> Any:
    """What a Triton adapter checks at build (this backend's and triton-lowt-moe's): the declaration
    (returned), no padding (the kernels mask every tail), the weights, and a CUDA device or the
    interpreter."""
    layer = experts.layer
    decl = check_declared(experts.backend, layer, None, hidden_padded=experts.hidden_padded,
                          intermediate_padded=experts.intermediate_padded)
    if (experts.hidden_padded, experts.intermediate_padded) != (layer.hidden_size, layer.local_intermediate_size):
        raise ValueError(f"{experts.backend}: the kernels mask every tail and declare no padding; got padded sizes "
                         f"hidden {experts.hidden_padded}, intermediate {experts.intermediate_padded}")
    check_weights(layer, weights)
    if weights.device.type != "cuda" and not interpreter_active():
        raise ValueError(f"{experts.backend}: weights are on {weights.device}; the Triton kernels run on CUDA "
                         "(or on the CPU in Triton's interpreter with TRITON_INTERPRET=1, for tests)")
    return decl


class TritonFusedMoEExperts(Experts):
    """Experts on the project's Triton fused-MoE kernels.

    ``config``: a fixed ``{"gemm1": {...}, "gemm2": {...}}`` for every batch (the tuner uses it);
    otherwise the committed tuned table for this card and shape, nearest T, else the default.
    ``check_id_range``: False drops the device-side assert (out-of-range ids are still never used
    as addresses: their pairs are skipped, which leaves those tokens' outputs undefined).
    """

    backend = "triton-fused-moe"
    check_id_range: bool = True

    def __init__(self, layer: LayerSpec, weights: ExpertWeights, *, pad_hidden_to: int | None = None,
                 pad_intermediate_to: int | None = None, config: dict[str, dict[str, int]] | None = None,
                 config_dir: Any = None) -> None:
        super().__init__(layer, weights, pad_hidden_to=pad_hidden_to, pad_intermediate_to=pad_intermediate_to)
        decl = checked_triton_build(self, weights)
        self.dtype = torch_dtype(layer)
        self.device = weights.device
        kind = layer.quant.kind
        self.quant = _QUANT_CODE[kind]
        self.quant_label = kind.value
        if self.quant == C.QUANT_NONE:
            self.w13, self.w2 = weights.w13.to(self.dtype).contiguous(), weights.w2.to(self.dtype).contiguous()
            self.w13_scale = self.w2_scale = None
        else:  # Fp8Tensor / Fp8BlockTensor: e4m3 data [E, N, K] and dequant scales
            self.w13, self.w2 = weights.w13.data.contiguous(), weights.w2.data.contiguous()
            self.w13_scale = weights.w13.scale.float().contiguous()
            self.w2_scale = weights.w2.scale.float().contiguous()
        self.w13_bias = None if weights.w13_bias is None else weights.w13_bias.float().contiguous()
        self.w2_bias = None if weights.w2_bias is None else weights.w2_bias.float().contiguous()

        # The GEMM1 epilogue, from the declaration and the layer.
        code = decl.activations[layer.activation].kernel_value
        assert code is not None, f"declaration of {self.backend} gives no kernel_value for {layer.activation.value}"
        from .ops import epilogue_for

        self.epilogue = epilogue_for(layer, code)
        self.fixed_config = configs.validate(config, self.quant_label) if config is not None else None
        self.config_dir = config_dir
        self.device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        self._configs: dict[int, tuple[dict[str, dict[str, int]], str]] = {}
        # Cleared by the kernels when an id is out of range, never set back: once an id was bad, every
        # later forward's device assert fires too (the first one already failed the stream).
        self._ok = torch.ones(1, dtype=torch.int32, device=self.device)

    def config_for(self, T: int) -> tuple[dict[str, dict[str, int]], str]:
        """The launch config for T tokens and where it came from (cached per T)."""
        if self.fixed_config is not None:
            return self.fixed_config, "fixed"
        hit = self._configs.get(T)
        if hit is None:
            L = self.layer
            hit = configs.lookup(T, L.local_num_experts, L.local_intermediate_size, L.hidden_size, L.top_k,
                                 self.quant_label, self.device_name, self.config_dir)
            self._configs[T] = hit
        return hit

    def forward(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        on_cuda = self.device.type == "cuda"
        # On CUDA the range check is the kernel's flag (below); on the CPU the guard's host check is free.
        check_forward_inputs(self.layer, hidden_states, topk_weights, topk_ids, device=self.device,
                             dtype=self.dtype, check_id_range=self.check_id_range and not on_cuda)
        return self.run(hidden_states, topk_weights, topk_ids)

    def run(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """The forward without the metadata guards (inputs already validated)."""
        from .ops import fused_experts

        T = hidden_states.shape[0]
        if T == 0:
            return hidden_states.new_empty((0, self.layer.hidden_size))
        cfg, _ = self.config_for(T)
        out, ok = fused_experts(hidden_states, topk_weights, topk_ids, self.w13, self.w2,
                                self.layer.local_num_experts, self.layer.local_intermediate_size, cfg, self.epilogue,
                                quant=self.quant, w13_scale=self.w13_scale, w2_scale=self.w2_scale,
                                w13_bias=self.w13_bias, w2_bias=self.w2_bias,
                                routed_on_input=self.layer.apply_router_weight_on_input, ok=self._ok)
        if self.check_id_range and self.device.type == "cuda":
            torch._assert_async(ok.view(()))  # device-side: no sync, capturable
        return out

    def direct_call(self, ids_dtype: torch.dtype = torch.int32) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        """``(fn, args, kwargs)``: ``fn(x, topk_weights, topk_ids)`` runs the kernels without guards."""
        return (lambda x, w, ids: self.run(x, w, ids)), (), {}

    @property
    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.w13, self.w2))
