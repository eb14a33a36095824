"""What an engine's own default (``--moe-backend auto`` / ``--moe-runner-backend auto``) picks for
each layer group of a plan, in one shape whatever produced it.

Two sources answer: ``"model"``, our torch-free restatement of the engine's oracle (always there,
and it drifts with each release), and ``"executed"``, the installed engine's own selection code run
for the layer (exact for that version; needs the engine installed). :func:`engine_answers` is the
one entry point the CLI and the renderers use; an engine package plugs its executed answer in by
registering a provider in :data:`PROVIDERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from ..planner.results import ModelPlan
    from .vllm.model import VllmChoice
    from ..schemas.capability import BackendCapability
    from ..schemas.quant import QuantKind
    from ..schemas.selection import Reason, Rejection

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
    family: str | None  # kernel family, comparable with our declarations (engines/vllm/names.py)
    rejected: tuple[EngineRejection, ...] = ()
    error: str | None = None  # the engine refuses the layer (no backend): its message
    assumptions: tuple[str, ...] = ()  # what was assumed or faked to get this answer

    def agrees_with(self, declaration: BackendCapability | None) -> bool:
        """Does our chosen backend (None: none) run the kernel family the engine picks?"""
        if declaration is None:
            return self.family is None
        # Both engines answer in one family vocabulary (engines/vllm/names.py; SGLang's runners map into it
        # in engines/sglang/names.py), and our declaration's family is its vLLM name's.
        from .vllm.names import family_of_declaration  # the one family table
        return self.family is not None and family_of_declaration(declaration) == self.family


# The engine's flag that pins a kernel, as its users type it.
FLAG_OPTION = {"vllm": "--moe-backend", "sglang": "--moe-runner-backend"}


class Comparison(BaseModel):
    """Our choice beside the engine's for one layer group: agree, or why not and what would fix it."""

    # Built when first used, not at import: `explain` makes one only when asked about an engine.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    agree: bool
    why: str = ""
    fix: str = ""


def _engine_name(declaration: BackendCapability, engine: Engine) -> str | None:
    return declaration.engines.vllm if engine == "vllm" else declaration.engines.sglang


class Separation(NamedTuple):  # not a frozen dataclass: ~4x cheaper to define, and explain's start-up counts (issue 20)
    """The first fact, in our declarations and selection, that separates our pick from the engine's
    kernel. ``kind``: ``"no-kernel"`` (no declaration here is that kernel), ``"not-covering"`` (those
    that are, ``peers``, do not declare the layer's scheme), ``"rejected"`` (``peer`` is that kernel and
    our selection rejected it: ``reason``) or ``"ranked"`` (``peer`` is eligible and ranks below our pick)."""

    kind: Literal["no-kernel", "not-covering", "rejected", "ranked"]
    peers: tuple[BackendCapability, ...] = ()
    peer: BackendCapability | None = None
    reason: Reason | None = None


def separation(answer: EngineAnswer, rejections: tuple[Rejection, ...],
               declarations: Iterable[BackendCapability], quant: QuantKind | None = None) -> Separation:
    """Why our selection did not land on the engine's kernel; ``quant`` (when given) first keeps the
    declarations of that kernel that declare the scheme. The one finder behind :func:`compare` (the
    plugin's and ``--engine``'s wording) and ``render.deploy`` (the deployer's)."""
    same = tuple(d for d in declarations if answer.agrees_with(d))
    if not same:
        return Separation("no-kernel")
    covering = same if quant is None else tuple(d for d in same if d.quant_support(quant))
    if not covering:
        return Separation("not-covering", peers=same)
    rejected = {r.backend: r for r in rejections}
    for decl in covering:
        if decl.id in rejected:
            return Separation("rejected", peer=decl, reason=rejected[decl.id].reasons[0])
    return Separation("ranked", peer=covering[0])


def compare(answer: EngineAnswer, ours: str | None, rejections: tuple[Rejection, ...],
            declarations: tuple[BackendCapability, ...]) -> Comparison:
    """Our backend ``ours`` (None: no backend; ``rejections`` then hold every reason) against the
    engine's answer. ``why`` names the first reason that separates the two, ``fix`` the engine flag
    (or the registry's hint) that makes the engine run what we chose."""
    by_id = {d.id: d for d in declarations}
    mine = by_id.get(ours) if ours else None
    if answer.agrees_with(mine):
        return Comparison(agree=True)
    option = FLAG_OPTION[answer.engine]
    key = _engine_name(mine, answer.engine) if mine else None
    fix = f"{option} {key}" if key else ""
    if answer.error:  # and ours runs it (both refusing agree above)
        return Comparison(agree=False, why=f"{answer.engine} refuses it: {answer.error}",
                          fix=fix or f"run {ours} through moe-registry ({answer.engine} has no such kernel)")
    if mine is None:
        first = next((r.reasons[0] for r in rejections if r.reasons), None)
        why = f"no backend here runs it: {first.render()}" if first else "no backend here runs it"
        return Comparison(agree=False, why=why, fix=first.hint if first and first.hint else "")
    sep = separation(answer, rejections, declarations)
    if sep.kind == "rejected":
        assert sep.peer is not None and sep.reason is not None
        return Comparison(agree=False, why=f"{sep.peer.id} (the engine's kernel) rejected here: {sep.reason.message}",
                          fix=fix or sep.reason.hint)
    if sep.kind == "ranked":
        assert sep.peer is not None
        return Comparison(agree=False, why=f"{sep.peer.id} (the engine's kernel) is eligible; ours ranks {ours} first",
                          fix=fix)
    if key is None:
        return Comparison(agree=False, why=f"ours, {ours}, is not a {answer.engine} kernel; no declaration here is "
                          f"{answer.engine}'s {answer.kernel or 'pick'}", fix=f"run {ours} through moe-registry")
    return Comparison(agree=False, why=f"no declaration here is {answer.engine}'s {answer.kernel or 'pick'}", fix=fix)


def executed_key(engine: Engine, version: str, request: object) -> str:
    """What an executed answer depends on, as a :mod:`moe_registry.cache` key: this interpreter, the
    installed engine (version, and the time its metadata was written: a reinstall changes it), our
    code that builds the engine's layers (``engines/<engine>/``), the environment variables the
    engine and FlashInfer read, and the request itself (checkpoint files, device, layout)."""
    import json
    import os
    import sys
    from importlib import metadata
    from pathlib import Path

    from .. import __version__
    from ..cache import stat_line

    parts = [f"executed {engine} {version}", f"moe-registry {__version__}", sys.executable, sys.version]
    try:
        located = getattr(metadata.distribution(engine), "_path", None)
        parts.append(stat_line(located) if located is not None else "no metadata path")
    except metadata.PackageNotFoundError:
        parts.append("no metadata")
    ours = Path(__file__).parent / engine
    parts.extend(stat_line(path) for path in sorted(ours.glob("*.py")))
    prefixes = (f"{engine.upper()}_", "SGL_", "FLASHINFER_", "MOE_REGISTRY_", "CUDA_")
    parts.extend(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(prefixes))
    parts.append(json.dumps(request, sort_keys=True, default=str))
    return "\n".join(parts)


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
        known = ", ".join(f"{e} ({'/'.join(sorted(s))})" for e, s in sorted(PROVIDERS.items()))
        raise ValueError(f"no {source} answer for engine {engine!r}; known: {known}") from None
    return provider(plan)


def _load_builtin_providers() -> None:
    if "vllm" not in PROVIDERS:
        register_provider("vllm", "model", _vllm_model)
        register_provider("vllm", "executed", _vllm_executed)
    if "sglang" not in PROVIDERS:
        register_provider("sglang", "executed", _sglang_executed)


# The executed providers import their engine modules only when asked (explain without an engine
# installed never is): they run the engine in a child process.
def _vllm_executed(plan: ModelPlan) -> tuple[EngineAnswer | None, ...]:
    from .vllm.executed import executed_answers
    return executed_answers(plan)


def _sglang_executed(plan: ModelPlan) -> tuple[EngineAnswer | None, ...]:
    from .sglang.executed import executed_answers
    return executed_answers(plan)


# --- vLLM, from the hand model of its oracle -----------------------------------------------------


def _vllm_model(plan: ModelPlan) -> tuple[EngineAnswer | None, ...]:
    from .vllm.model import vllm_default
    out: list[EngineAnswer | None] = []
    for group in plan.groups():
        device = plan.device or (group.selection.device if group.selection else None)
        if device is None or device.vendor != "nvidia" or device.sm is None:
            out.append(None)  # the model covers NVIDIA devices only
            continue
        method = plan.quant_method if plan.quant_method != "override" else None
        out.append(vllm_model_answer(vllm_default(group.layer, device, quant_method=method, model_type=plan.model_type,
                                                  fp8_static=plan.fp8_static_activations)))
    return tuple(out)


def vllm_model_answer(c: VllmChoice) -> EngineAnswer:
    """The hand model's walk of vLLM's oracle as an engine answer."""
    from .vllm.model import ASSUMPTIONS, VLLM_VERSION
    rejected = tuple(EngineRejection(candidate=f"{l.backend} ({l.experts_class})" if l.experts_class else l.backend,
                                     reason=l.rule, source=l.source) for l in c.losses)
    error = None if c.backend else f"No {c.oracle} MoE backend supports the deployment configuration."
    return EngineAnswer(engine="vllm", version=VLLM_VERSION, source="model", flag=c.moe_backend,
                        kernel=c.label() if c.backend else None, family=c.family, rejected=rejected,
                        error=error, assumptions=ASSUMPTIONS)
