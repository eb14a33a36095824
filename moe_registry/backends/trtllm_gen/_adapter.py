"""The base of the TRT-LLM-gen adapters: construction, the start of every weight preparation
(declaration check + padding), the canonical -> ``[up; gate]`` GEMM1 rows, SwiGLU-OAI parameters, and
``forward`` (guards, the output buffer, the keywords every ``*_routed_moe`` call shares, the output
slice); each kernel module supplies its own entry call (``_routed_moe``).
Imports torch. What each kernel runs lives in its declaration; the guards are
``moe_registry.execution.declared``'s (through ``FlashInferExperts``).

Every adapter passes the local shard as the whole layer (``num_experts = local_num_experts =
E_local``, offset 0) because ``Experts.forward`` receives local expert ids, and precomputed routing
as ``(int32 ids, weights)`` (or packed ids where the entry only takes those) with
``routing_method_type = TopK``: precomputed top-k skips the routing methods entirely
(``trtllm_fused_moe_routing_custom.cuh`` ``run`` -> ``runPostTopKPipeline``). Padding is what the
declaration's pad rules give; zero padding is exact, the kernel sees the padded sizes as real and
the output is sliced (FlashInfer's ``valid_hidden_size`` / ``valid_intermediate_size`` stay None).
"""

from __future__ import annotations

from typing import Any

import torch

from moe_registry.backends._flashinfer_base import FlashInferExperts, kernel_activation, pad_expert_weights
from moe_registry.execution.declared import check_declared
from moe_registry.execution.weights import ExpertWeights, torch_dtype
from moe_registry.formats.rows import gate_up_to_up_gate
from moe_registry.registry import Registry
from moe_registry.schemas.layer import LayerSpec

ROUTING_METHOD_TOPK = 5  # tllm_enums.RoutingMethodType.TopK


def pack_topk(ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """FlashInfer's packed precomputed routing: ``(expert_id << 16) | bf16(weight).view(int16)``
    as int32 (``PackedScoreIdx``, core.py ``trtllm_*_routed_moe`` docstrings)."""
    low = weights.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    return ((ids.to(torch.int32) << 16) | low).contiguous()


def declared_padded_weights(backend: str, layer: LayerSpec, weights: ExpertWeights, *, hidden_to: int | None,
                            intermediate_to: int | None,
                            registry: Registry | None) -> tuple[ExpertWeights, int, int]:
    """The start of every weight preparation: ``layer`` checked against ``backend``'s declaration at the
    padded sizes (ValueError), then the weights zero-padded to them. Returns (padded weights, Hp, Ip);
    a size left None is the layer's own."""
    Hp = hidden_to or layer.hidden_size
    Ip = intermediate_to or layer.local_intermediate_size
    check_declared(backend, layer, None, hidden_padded=Hp, intermediate_padded=Ip, registry=registry)
    return pad_expert_weights(weights, layer, Hp, Ip), Hp, Ip


def gemm1_rows_up_gate(layer: LayerSpec, weights: ExpertWeights, intermediate: int) -> tuple[Any, Any]:
    """(w13, w13_bias) with gated rows as ``[up; gate]`` (FlashInfer's ``w31``; interleaved gpt-oss
    rows are de-interleaved on the way), non-gated rows unchanged. ``weights`` already padded."""
    if not layer.activation.is_gated:
        return weights.w13, weights.w13_bias
    params = layer.swigluoai
    interleaved = bool(params and params.interleaved)
    w13 = gate_up_to_up_gate(weights.w13, intermediate, interleaved=interleaved)
    bias = weights.w13_bias
    if bias is not None:
        bias = gate_up_to_up_gate(bias.unsqueeze(-1), intermediate, interleaved=interleaved).squeeze(-1)
    return w13, bias


def swiglu_params(layer: LayerSpec, experts: int, device: torch.device,
                  raw_scale: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
    """``gemm1_alpha`` / ``gemm1_beta`` / ``gemm1_clamp_limit`` (fp32 per expert) for swigluoai, else
    Nones. ``raw_scale``: the per-expert GEMM1 dequant scale (``output1_scale_gate_scalar``) of kernels
    whose accumulator is not in physical units (NvFP4, FP8 per-tensor): beta and the limit shift /
    clamp the raw accumulator, so they are divided by it, alpha is not (vLLM trtllm_nvfp4_moe.py
    L166-195)."""
    params = layer.swigluoai
    if params is None:
        return {"gemm1_alpha": None, "gemm1_beta": None, "gemm1_clamp_limit": None}

    def full(value: float) -> torch.Tensor:
        t = torch.full((experts,), float(value), dtype=torch.float32, device=device)
        return t if raw_scale is None else t / raw_scale.float()

    alpha = torch.full((experts,), float(params.alpha), dtype=torch.float32, device=device)
    limit = None if params.limit is None else full(params.limit)
    return {"gemm1_alpha": alpha, "gemm1_beta": full(params.up_offset), "gemm1_clamp_limit": limit}


class TrtllmGenExperts(FlashInferExperts):
    """One TRT-LLM-gen kernel for one layer. Not verified on hardware (TRT-LLM-gen needs SM100; the
    project's GPUs are SM90). Keyword options: ``SETUP_DEFAULTS`` (``input_amax`` /
    ``intermediate_amax``: static activation ranges where the kernel quantizes activations,
    ``tune_max_num_tokens``, ``check_id_range``).

    First use on SM100 also builds FlashInfer's ``fused_moe_trtllm_sm100`` JIT module and fetches its
    cubins (``_flashinfer_jit.trtllm_module_status``)."""

    backend = ""
    SETUP_DEFAULTS = dict(input_amax=None, intermediate_amax=None, tune_max_num_tokens=8192, check_id_range=True)
    quantizes_activations = True  # False: bf16 activations, no scales to calibrate

    def __init__(self, layer: LayerSpec, weights: ExpertWeights, *, pad_hidden_to: int | None = None,
                 pad_intermediate_to: int | None = None, registry: Registry | None = None, **options: Any) -> None:
        unknown = set(options) - set(self.SETUP_DEFAULTS)
        if unknown:
            raise TypeError(f"{self.backend}: unknown option(s) {sorted(unknown)}")
        super().__init__(layer, weights, pad_hidden_to=pad_hidden_to, pad_intermediate_to=pad_intermediate_to)
        self._check_layer(layer, weights, registry)  # ValueError
        self._check_runtime(layer, registry)  # RuntimeError
        self._setup(layer, weights, registry=registry, **{**self.SETUP_DEFAULTS, **options})

    def _setup(self, layer: LayerSpec, weights: ExpertWeights, *, input_amax: float | None,
               intermediate_amax: float | None, tune_max_num_tokens: int, check_id_range: bool,
               registry: Registry | None) -> None:
        self.out_dtype = torch_dtype(layer)
        self.check_id_range = check_id_range
        self.tune_max_num_tokens = tune_max_num_tokens
        self.activation_type = kernel_activation(self.declaration, layer)
        self.prepared = self._prepare(layer, weights, registry)
        self._init_ranges(weights, input_amax, intermediate_amax, quantizes_activations=self.quantizes_activations)

    def _prepare(self, layer: LayerSpec, weights: ExpertWeights, registry: Registry | None) -> Any:
        raise NotImplementedError

    def forward(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        """Guards and padding (``_begin_forward``), this kernel's ``*_routed_moe`` call (``_routed_moe``)
        into a preallocated bf16 output, and the slice back to the layer's hidden size."""
        T = hidden_states.shape[0]
        x = self._begin_forward(hidden_states, topk_weights, topk_ids)
        if x is None:
            return hidden_states.new_empty((0, self.layer.hidden_size))
        out = self._output(T, x.device)
        result = self._routed_moe(x, topk_weights, topk_ids, out)
        return self._finish(out if result is None else result, T)

    def _routed_moe(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    out: torch.Tensor) -> Any:
        """Call this kernel's FlashInfer entry on the padded hidden states ``x`` with ``output=out`` and
        ``**self._call_kwargs()``; returns what the entry returns (None, a tensor or ``[output]``)."""
        raise NotImplementedError

    def _swiglu_params(self, device: torch.device, raw_scale: torch.Tensor | None = None) -> dict[str, Any]:
        """``swiglu_params`` for this layer's local experts."""
        return swiglu_params(self.layer, self.layer.local_num_experts, device, raw_scale=raw_scale)

    def _call_kwargs(self) -> dict[str, Any]:
        """Keywords every ``*_routed_moe`` entry takes the same way."""
        E = self.layer.local_num_experts
        return dict(num_experts=E, top_k=self.layer.top_k, n_group=None, topk_group=None,
                    intermediate_size=self.intermediate_padded, local_expert_offset=0, local_num_experts=E,
                    routed_scaling_factor=None, routing_method_type=ROUTING_METHOD_TOPK, do_finalize=True,
                    tune_max_num_tokens=self.tune_max_num_tokens)

    def _output(self, T: int, device: torch.device) -> torch.Tensor:
        return torch.empty((T, self.hidden_padded), dtype=torch.bfloat16, device=device)

    def _finish(self, out: Any, T: int) -> torch.Tensor:
        """The kernel's result (a tensor, or ``[output]``) sliced back to the layer's hidden size."""
        if isinstance(out, (list, tuple)):
            out = out[0]
        H = self.layer.hidden_size
        return out if self.hidden_padded == H else out[:, :H].contiguous()

    @staticmethod
    def _ids(topk_ids: torch.Tensor) -> torch.Tensor:
        return topk_ids if topk_ids.dtype == torch.int32 else topk_ids.to(torch.int32)
