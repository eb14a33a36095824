"""The registry's verdict on a layer vLLM built, beside vLLM's own (the plugin's table and enforce).

A layer's :class:`~.layer.LayerFacts` become a LayerSpec and go through the same ``select_backend``
the CLI uses, on this machine's GPU or on ``MOE_REGISTRY_DEVICE`` (a preset: planned for, packages
assumed installable). Verdicts are cached per layer shape, so a model's 60 identical layers select once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from ...environment import ENV_DEVICE
from ...errors import NoEligibleBackend
from ...registry import default_registry
from ...schemas.layer import LayerSpec
from ...schemas.selection import Rejection, Selection
from ...selection import select_backend
from ..answer import Comparison, EngineAnswer, compare
from . import names
from .answers import answer_from_record
from .layer import LayerFacts, layer_spec

if TYPE_CHECKING:
    from .observe import LayerRecord


@dataclass(frozen=True)
class Verdict:
    layer: LayerSpec | None
    selection: Selection | None
    rejections: tuple[Rejection, ...] = ()
    error: str | None = None  # no backend of ours, or a layer we cannot describe: one line

    @property
    def backend(self) -> str | None:
        return self.selection.backend if self.selection else None

    @property
    def key(self) -> str | None:
        """Our backend's vLLM name (``engines.vllm``), if it has one."""
        return self.selection.engines.get("vllm") if self.selection else None


def verdict(facts: LayerFacts) -> Verdict:
    try:
        spec = layer_spec(facts)
    except ValueError as exc:
        return Verdict(None, None, error=str(exc))
    return _select(spec.shape_key(), os.environ.get(ENV_DEVICE) or None)


@lru_cache(maxsize=256)
def _select(spec: LayerSpec, device: str | None) -> Verdict:
    try:
        return Verdict(spec, select_backend(spec, device))
    except NoEligibleBackend as exc:
        return Verdict(spec, None, exc.rejections, error=str(exc))


def pin_for(ours: Verdict, vllm_class: str | None) -> tuple[str | None, str | None]:
    """(the --moe-backend key enforce should try, or None; why not). vLLM's own explicit path still
    has to accept the key and run our kernel with it (:meth:`.observe.Hooks._enforced`)."""
    if ours.selection is None:
        return None, f"no backend of ours: {ours.error}"
    if ours.key is None:
        return None, f"ours, {ours.backend}, has no vLLM --moe-backend name"
    if names.family_of_name(ours.key) == names.family_of_class(vllm_class):
        return None, "vLLM's pick already runs our kernel"
    return ours.key, None


@dataclass(frozen=True)
class LayerRow:
    """One MoE layer: vLLM's answer, ours, and how they compare."""

    prefix: str
    index: int | None
    answer: EngineAnswer
    ours: str | None
    ours_error: str | None
    comparison: Comparison
    pinned: str | None
    note: str | None


def layer_rows(records: "list[LayerRecord]", version: str) -> list[LayerRow]:
    declarations = tuple(default_registry().declarations())
    rows = []
    for record in records:
        answer = answer_from_record(record, version)
        ours = verdict(record.facts) if record.facts else Verdict(None, None, error=record.note)
        comparison = compare(answer, ours.backend, ours.rejections, declarations)
        rows.append(LayerRow(record.prefix, record.facts.index if record.facts else None, answer, ours.backend,
                             ours.error, comparison, record.pinned, record.note))
    return rows


def fingerprint(records: "list[LayerRecord]") -> str:
    """What this rank decided, hashed: every layer's prefix, pin and our selection's fingerprint."""
    decided = []
    for record in records:
        ours = verdict(record.facts) if record.facts else None
        decided.append((record.prefix, record.pinned, ours.selection.fingerprint if ours and ours.selection else None))
    return hashlib.sha256(json.dumps(decided).encode()).hexdigest()[:16]
