"""What an engine's own default (``--moe-backend auto`` / ``--moe-runner-backend auto``) picks for
each layer group of a plan, in one shape whatever produced it.

Two sources answer: ``"model"``, our torch-free restatement of the engine's oracle (always there,
and it drifts with each release), and ``"executed"``, the installed engine's own selection code run
for the layer (exact for that version; needs the engine installed). :func:`engine_answers` is the
one entry point the CLI and the renderers use; an engine package plugs its executed answer in by
registering a provider in :data:`PROVIDERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from ..planner.results import ModelPlan
    from ..schemas.capability import BackendCapability

Engine = Literal["vllm", "sglang"]
Source = Literal["model", "executed"]


class EngineRejection(BaseModel):
    """One candidate the engine tried before its pick (or before giving up), with its own words."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidate: str  # the engine's backend name, with the kernel class where it names one
    reason: str
    source: str | None = None  # upstream file:line, where known


class EngineAnswer(BaseModel):
    """The engine's default for one layer group."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: Engine
    version: str  # "0.34.0"
    source: Source
    flag: str | None  # the value of the engine's flag that forces this kernel (vLLM --moe-backend key)
    kernel: str | None  # the engine's own name for its pick, e.g. "HUMMING (HummingIndexedExperts)"
    family: str | None  # kernel family, comparable with our declarations (engines.vllm_oracle.ENGINE_FAMILY)
    rejected: tuple[EngineRejection, ...] = ()
    error: str | None = None  # the engine refuses the layer (no backend): its message
    assumptions: tuple[str, ...] = ()  # what was assumed or faked to get this answer

    def agrees_with(self, declaration: BackendCapability | None) -> bool:
        """Does our chosen backend (None: none) run the kernel family the engine picks?"""
        if declaration is None:
            return self.family is None
        # Both engines answer in one family vocabulary (vllm_oracle.ENGINE_FAMILY; SGLang's runners map
        # into it in engines/sglang/names.py), and our declaration's family is its vLLM name's.
        from .vllm_oracle import family_of_declaration  # the one family table
        return self.family is not None and family_of_declaration(declaration) == self.family


class EngineNotInstalled(ValueError):
    """``executed`` was asked for and the engine (or the version this package runs) is not installed."""


# engine -> source -> provider(plan) returning one answer (None: the engine has no opinion) per plan group.
Provider = Callable[["ModelPlan"], "tuple[EngineAnswer | None, ...]"]
PROVIDERS: dict[str, dict[str, Provider]] = {}


def register_provider(engine: str, source: Source, provider: Provider) -> None:
    PROVIDERS.setdefault(engine, {})[source] = provider


def engine_answers(plan: ModelPlan, engine: str = "vllm", *, source: Source = "model") -> tuple[EngineAnswer | None, ...]:
    """One answer per ``plan.groups()`` (same order). Raises :class:`EngineNotInstalled` for
    ``source="executed"`` when the engine is not importable, ValueError for an engine or source
    nobody provides."""
    _load_builtin_providers()
    try:
        provider = PROVIDERS[engine][source]
    except KeyError:
        known = ", ".join(f"{e} ({'/'.join(sorted(s))})" for e, s in sorted(PROVIDERS.items())) or "none"
        raise ValueError(f"no {source} answer for engine {engine!r}; known: {known}") from None
    return provider(plan)


def _load_builtin_providers() -> None:
    if "vllm" not in PROVIDERS:
        register_provider("vllm", "model", _vllm_model)
    if "sglang" not in PROVIDERS:
        from .sglang.executed import executed_answers  # torch-free; runs SGLang in a child process when called
        register_provider("sglang", "executed", executed_answers)


# --- vLLM, from the hand model of its oracle -----------------------------------------------------


def _vllm_model(plan: ModelPlan) -> tuple[EngineAnswer | None, ...]:
    from .vllm_oracle import ASSUMPTIONS, VLLM_VERSION, vllm_default
    out: list[EngineAnswer | None] = []
    for group in plan.groups():
        device = plan.device or (group.selection.device if group.selection else None)
        if device is None or device.vendor != "nvidia" or device.sm is None:
            out.append(None)  # the model covers NVIDIA devices only
            continue
        method = plan.quant_method if plan.quant_method != "override" else None
        c = vllm_default(group.layer, device, quant_method=method, model_type=plan.model_type)
        rejected = tuple(EngineRejection(candidate=f"{l.backend} ({l.experts_class})" if l.experts_class else l.backend,
                                         reason=l.rule, source=l.source) for l in c.losses)
        error = None if c.backend else f"No {c.oracle} MoE backend supports the deployment configuration."
        out.append(EngineAnswer(engine="vllm", version=VLLM_VERSION, source="model", flag=c.moe_backend,
                                kernel=c.label() if c.backend else None, family=c.family, rejected=rejected,
                                error=error, assumptions=ASSUMPTIONS))
    return tuple(out)
