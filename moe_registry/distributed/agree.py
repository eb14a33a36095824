"""Every rank selects for its own per-rank layer; the ranks compare before the first forward."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from ..errors import SelectionMismatch
from ..schemas.selection import Selection


def agree_on_selection(selection: Selection, *, group: Any = None) -> list[tuple[int, str, str, str]]:
    """All-gather ``(rank, backend, fingerprint, decided_by)`` over ``group`` (default: the world).

    Returns every rank's choice when all agree; raises ``SelectionMismatch`` on EVERY rank otherwise
    (the all-gather completes on all ranks first, so no rank is left waiting in a later collective).
    """
    mine = (dist.get_rank(), selection.backend, selection.fingerprint, selection.decided_by)
    size = dist.get_world_size(group)
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, mine, group=group)
    choices = [tuple(c) for c in gathered]
    if len({(backend, fingerprint) for _, backend, fingerprint, _ in choices}) > 1:
        label = selection.layer.name or selection.layer.describe()
        raise SelectionMismatch(label, sorted(choices))
    return choices
