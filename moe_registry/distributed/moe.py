"""A sharded MoE experts layer: select and agree once, then dispatch -> local experts -> combine."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..execution import build_experts
from ..execution.weights import ExpertWeights, torch_dtype
from ..schemas.layer import LayerSpec, ParallelConfig
from ..selection import select_backend
from .agree import agree_on_selection
from .layout import RankLayout
from .shard import shard_weights


def _new_groups(layout: RankLayout) -> tuple[Any, Any]:
    """Create every TP and every EP group (all ranks must create all of them, in the same order)
    and return this rank's two; a group of one rank is None (no collective needed)."""
    tp_group = ep_group = None
    if layout.tp > 1:
        for e in range(layout.ep):
            g = dist.new_group(layout.tp_group_ranks(e))
            if e == layout.ep_rank:
                tp_group = g
    if layout.ep > 1:
        for t in range(layout.tp):
            g = dist.new_group(layout.ep_group_ranks(t))
            if t == layout.tp_rank:
                ep_group = g
    return tp_group, ep_group


class DistributedExperts:
    """One rank's part of an EP x TP MoE layer.

    ``layer`` has the full sizes and ``parallel=ParallelConfig(tp, ep)``; ``weights`` are the full
    layer's canonical weights (sharded here) or, with ``weights_are_local=True``, this rank's
    share already. Selection runs on the per-rank layer, for ``device`` (None: this machine), and
    the ranks agree on it before anything else (``SelectionMismatch`` on every rank otherwise).
    ``forward`` takes this rank's tokens with GLOBAL expert ids and returns the full layer's
    output for them (the TP partial sums already reduced).
    """

    def __init__(self, layer: LayerSpec, weights: ExpertWeights, *, device: Any = None,
                 weights_are_local: bool = False, registry: Any = None, **select_kwargs: Any) -> None:
        if not dist.is_initialized():
            raise RuntimeError("DistributedExperts needs torch.distributed initialised (init_process_group)")
        self.layout = RankLayout.of(dist.get_rank(), layer.parallel)
        if dist.get_world_size() != self.layout.world_size:
            raise ValueError(f"{layer.parallel.label()} needs {self.layout.world_size} ranks; the world has "
                             f"{dist.get_world_size()}")
        self.layer = layer
        self.tp_group, self.ep_group = _new_groups(self.layout)
        self.selection = select_backend(layer, device, registry=registry, **select_kwargs)
        self.choices = agree_on_selection(self.selection)
        local = weights if weights_are_local else shard_weights(
            weights, layer.replace(parallel=ParallelConfig()), self.layout)
        # After dispatch each received row is one (token, expert) pair: the local kernel runs it
        # as a top-1 layer (same kernel, same weights; top_k only shapes the routing tensors).
        run_as = self.selection if self.ep_group is None else self.selection.model_copy(
            update={"layer": self.selection.layer.replace(top_k=1)})
        self.experts = build_experts(run_as, local, registry=registry)

    def __call__(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        return self.forward(hidden_states, topk_weights, topk_ids)

    def forward(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        layer, E = self.layer, self.layer.num_experts
        if topk_ids.dim() != 2 or topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != hidden_states.shape[0]:
            raise ValueError(f"expected topk_ids / topk_weights [T, {layer.top_k}] for hidden_states [T, H]; got "
                             f"{list(topk_ids.shape)} / {list(topk_weights.shape)} / {list(hidden_states.shape)}")
        if self.ep_group is None:
            out = self.experts(hidden_states, topk_weights, topk_ids)
        else:
            out = self._dispatch_combine(hidden_states, topk_weights, topk_ids, E)
        if self.tp_group is not None:
            partial = out.float()
            dist.all_reduce(partial, group=self.tp_group)
            out = partial.to(torch_dtype(layer))
        return out

    def _dispatch_combine(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                          E: int) -> torch.Tensor:
        ep, e_local = self.layout.ep, self.layer.local_num_experts
        T, k = topk_ids.shape
        flat = topk_ids.reshape(-1).long()
        # The split sizes of all_to_all_single are host integers, so this rank syncs once for the
        # counts anyway. Each rank also sends every peer a flag "my ids are out of range", so a bad
        # id makes EVERY rank of the group raise instead of leaving the others in a collective.
        owner = torch.div(flat, e_local, rounding_mode="floor")
        bad = ((flat < 0) | (flat >= E)).any().long()
        send_meta = torch.stack([torch.bincount(owner.clamp(0, ep - 1), minlength=ep), bad.expand(ep)], dim=1)
        recv_meta = torch.empty_like(send_meta)
        dist.all_to_all_single(recv_meta, send_meta.contiguous(), group=self.ep_group)
        meta = torch.cat([send_meta[:, 0], recv_meta.reshape(-1)]).tolist()
        send, recv, flags = meta[:ep], meta[ep::2], meta[ep + 1::2]
        if any(flags):
            ranks = [self.layout.ep_group_ranks()[i] for i, f in enumerate(flags) if f]
            raise ValueError(f"topk_ids must be global expert ids in [0, {E}); rank(s) {ranks} passed ids outside it")
        order = torch.argsort(owner, stable=True)
        token = torch.div(order, k, rounding_mode="floor")
        send_x = x[token]
        send_ids = (flat[order] - owner[order] * e_local).to(torch.int32)
        send_w = topk_weights.reshape(-1)[order].float()
        n_recv = sum(recv)
        recv_x = x.new_empty((n_recv, x.shape[1]))
        recv_ids = send_ids.new_empty((n_recv,))
        recv_w = send_w.new_empty((n_recv,))
        for out, inp in ((recv_x, send_x), (recv_ids, send_ids), (recv_w, send_w)):
            dist.all_to_all_single(out, inp, output_split_sizes=recv, input_split_sizes=send, group=self.ep_group)
        # Each received pair is one token for one local expert, with its router weight (applied by
        # the backend, on the input or the output as the layer says).
        y = self.experts(recv_x, recv_w[:, None], recv_ids[:, None]) if n_recv else recv_x
        back = x.new_empty((T * k, x.shape[1]))
        dist.all_to_all_single(back, y.contiguous(), output_split_sizes=send, input_split_sizes=recv,
                               group=self.ep_group)
        combined = torch.zeros((T, x.shape[1]), dtype=torch.float32, device=x.device)
        combined.index_add_(0, token, back.float())
        return combined.to(x.dtype)
