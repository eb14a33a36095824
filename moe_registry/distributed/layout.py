"""Where a rank sits in the EP x TP grid, and its process groups (torch-free arithmetic)."""

from __future__ import annotations

import dataclasses

from ..schemas.layer import ParallelConfig


@dataclasses.dataclass(frozen=True)
class RankLayout:
    """``rank = ep_rank * tp + tp_rank``: the ``tp`` ranks of one TP group are neighbours (as
    vLLM and SGLang lay out TP inside a node) and share their tokens; the ``ep`` ranks with the
    same ``tp_rank`` form one EP group and exchange tokens."""

    rank: int
    tp: int = 1
    ep: int = 1

    def __post_init__(self) -> None:
        if self.tp < 1 or self.ep < 1:
            raise ValueError(f"tp and ep must be >= 1, got tp={self.tp} ep={self.ep}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size} (TP{self.tp} x EP{self.ep})")

    @classmethod
    def of(cls, rank: int, parallel: ParallelConfig) -> "RankLayout":
        return cls(rank=rank, tp=parallel.tp, ep=parallel.ep)

    @property
    def world_size(self) -> int:
        return self.tp * self.ep

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def ep_rank(self) -> int:
        return self.rank // self.tp

    def tp_group_ranks(self, ep_rank: int | None = None) -> list[int]:
        e = self.ep_rank if ep_rank is None else ep_rank
        return [e * self.tp + t for t in range(self.tp)]

    def ep_group_ranks(self, tp_rank: int | None = None) -> list[int]:
        t = self.tp_rank if tp_rank is None else tp_rank
        return [e * self.tp + t for e in range(self.ep)]

    def experts(self, num_experts: int) -> range:
        """Global ids of the experts this rank holds."""
        if num_experts % self.ep:
            raise ValueError(f"EP{self.ep} does not divide {num_experts} experts")
        local = num_experts // self.ep
        return range(self.ep_rank * local, (self.ep_rank + 1) * local)

    def intermediate(self, intermediate_size: int) -> range:
        """The slice of every expert's intermediate width this rank holds."""
        if intermediate_size % self.tp:
            raise ValueError(f"TP{self.tp} does not divide intermediate size {intermediate_size}")
        local = intermediate_size // self.tp
        return range(self.tp_rank * local, (self.tp_rank + 1) * local)
