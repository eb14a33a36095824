"""CUDA graphs at decode: capture an adapter's forward once per token bucket and replay it.

A decode step launches a handful of small kernels whose launch cost exceeds their run time; a
CUDA graph replays them with one launch. ``GraphedExperts(experts)`` captures lazily, once per
bucket (T <= ``max_tokens``, rounded up to the next bucket), into static input buffers; a call
copies the inputs in, replays, and returns a view of the static output (valid until the next call
of the same bucket, as in every engine's graph runner). Rows padded up to the bucket repeat the
first token's expert ids with zero input and zero router weight: they add no expert to the weight
traffic and are sliced off.

Only backends that declare ``features.cuda_graphs`` (no host sync in a forward) are accepted, and
not an adapter whose ``capturable`` is False (a fallback path taken on this device):
capturing a forward that syncs raises inside capture, or records a graph that is silently wrong.
Larger T runs the adapter eagerly.
"""

from __future__ import annotations

from typing import Any

import torch

from ..measured import DECODE_BUCKETS
from .base import Experts
from .guards import check_forward_inputs
from .weights import torch_dtype

DEFAULT_BUCKETS = DECODE_BUCKETS


def graph_refusal(experts: Experts, *, registry: Any = None) -> str | None:
    """Why ``experts`` cannot be captured in a CUDA graph (one line), or None when it can: its
    declaration must list ``features.cuda_graphs``, the adapter must not say ``capturable = False``
    (a host-syncing fallback path on this device), and it must live on a CUDA device."""
    from ..registry import default_registry

    decl = (registry or default_registry()).get(experts.backend)
    if not decl.features.cuda_graphs:
        return (f"{experts.backend}: its declaration does not list cuda_graphs (a forward may sync with the host); "
                "run it eagerly")
    if getattr(experts, "capturable", True) is False:
        return f"{experts!r} runs a path that syncs with the host here; run it eagerly"
    device = getattr(experts, "device", None)
    if device is None or torch.device(device).type != "cuda":
        return f"{experts.backend}: CUDA graphs need the experts on a CUDA device, got {device}"
    return None


class GraphedExperts:
    """``experts`` with its forward replayed from CUDA graphs for T up to ``max(buckets)``."""

    def __init__(self, experts: Experts, buckets: tuple[int, ...] = DEFAULT_BUCKETS, *,
                 registry: Any = None) -> None:
        refusal = graph_refusal(experts, registry=registry)
        if refusal:
            raise ValueError(refusal)
        device = experts.device  # type: ignore[attr-defined]  # graph_refusal checked it
        if not buckets or any(b <= 0 for b in buckets):
            raise ValueError(f"buckets must be positive token counts, got {buckets}")
        self.experts = experts
        self.device = torch.device(device)
        self.buckets = tuple(sorted(set(buckets)))
        self.max_tokens = self.buckets[-1]
        self._graphs: dict[tuple[int, torch.dtype], tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], torch.Tensor]] = {}
        self._pool: Any = None  # torch.cuda's memory-pool handle, shared by every captured graph

    def bucket(self, T: int) -> int | None:
        return next((b for b in self.buckets if b >= T), None)

    def capture(self, T: int, ids_dtype: torch.dtype = torch.int32) -> None:
        """Capture the bucket holding T (warm-up on a side stream first, as PyTorch requires)."""
        b = self.bucket(T)
        if b is None:
            raise ValueError(f"T={T} is above the largest bucket {self.max_tokens}")
        key = (b, ids_dtype)
        if key in self._graphs:
            return
        layer = self.experts.layer
        dtype = torch_dtype(layer)
        x = torch.zeros(b, layer.hidden_size, dtype=dtype, device=self.device)
        w = torch.zeros(b, layer.top_k, dtype=torch.float32, device=self.device)
        ids = (torch.arange(b * layer.top_k, device=self.device) % layer.local_num_experts).to(ids_dtype)
        ids = ids.view(b, layer.top_k).contiguous()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.experts(x, w, ids)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.experts(x, w, ids)
        self._pool = graph.pool()
        self._graphs[key] = (graph, (x, w, ids), out)

    def __call__(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        b = self.bucket(hidden_states.shape[0]) if isinstance(hidden_states, torch.Tensor) else None
        if b is None or hidden_states.shape[0] == 0:
            return self.experts(hidden_states, topk_weights, topk_ids)
        # Metadata only (copy_ would broadcast or convert a wrong tensor); the id range is checked on
        # the device inside the graph, as the adapter's own forward does.
        check_forward_inputs(self.experts.layer, hidden_states, topk_weights, topk_ids, device=self.device,
                             dtype=torch_dtype(self.experts.layer), check_id_range=False)
        T = hidden_states.shape[0]
        key = (b, topk_ids.dtype)
        if key not in self._graphs:
            self.capture(T, topk_ids.dtype)
        graph, (x, w, ids), out = self._graphs[key]
        x[:T].copy_(hidden_states)
        w[:T].copy_(topk_weights)
        ids[:T].copy_(topk_ids)
        if T < b:  # padded rows: no new expert, no contribution
            x[T:].zero_()
            w[T:].zero_()
            ids[T:].copy_(topk_ids[:1].expand(b - T, -1))
        graph.replay()
        return out[:T]

    forward = __call__
