"""Expert and tensor parallelism over ``torch.distributed``: shard, agree, dispatch, combine.

Ranks form a grid of ``ep`` expert-parallel groups by ``tp`` tensor-parallel ranks
(``rank = ep_rank * tp + tp_rank``, see ``RankLayout``). Each rank holds ``E/ep`` experts
(EP) and ``I/tp`` of every expert's intermediate width (TP). Ranks of one TP group see the same
tokens; ranks of different EP groups see different tokens (data-parallel attention), as in vLLM,
SGLang and TRT-LLM. A forward routes globally, sends each (token, expert) pair to the rank that
owns the expert with ``all_to_all_single`` (counts exchanged first, no padding to the worst
case), runs the local experts through the selected backend, sends the rows back, combines them
and sums the TP partials with ``all_reduce``.

Before the first forward every rank selects a backend for its per-rank layer and the ranks
all-gather their selection fingerprints (TRT-LLM fingerprints its MoE resolution for the same
reason): ranks that resolve differently would otherwise hang in a collective or compute garbage.

Importing this package does not import torch; the submodules do.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DistributedExperts", "RankLayout", "SelectionMismatch", "agree_on_selection", "launch",
           "run_distributed_preset", "shard_weights"]

_LAZY = {
    "RankLayout": "layout", "shard_weights": "shard", "agree_on_selection": "agree",
    "DistributedExperts": "moe", "launch": "launch", "run_distributed_preset": "launch",
}


def __getattr__(name: str) -> Any:
    if name == "SelectionMismatch":
        from ..errors import SelectionMismatch
        return SelectionMismatch
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
