"""The deployer's answer under `explain`'s decision table: what each engine's own default picks per
layer group (from :mod:`moe_registry.engines.answer`), whether a flag must be set, and what to type,
with the GPU count (:mod:`moe_registry.planner.layouts` suggestions when the layout must change).

Nothing is decided here: the engine's answer, our selection and the suggested layouts come in; this
module compares them and words the result.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, NamedTuple

from ..engines.answer import FLAG_OPTION, separation
from ..planner.layouts import Suggestion, cli_flags, gpu_count, sglang_flags, vllm_flags

if TYPE_CHECKING:
    from ..engines.answer import EngineAnswer
    from ..planner.results import LayerGroup, ModelPlan
    from ..schemas.capability import BackendCapability

ENGINE_NAMES = {"vllm": "vLLM", "sglang": "SGLang"}


# EngineDefaults and Verdict are NamedTuples, not frozen dataclasses: ~4x cheaper to define, and
# explain's start-up counts (issue 20).
class EngineDefaults(NamedTuple):
    """One engine's answers for a plan, one per group (None: the engine has no opinion there)."""

    engine: str
    source: str  # "model" | "executed" | "" (nobody answers for this engine)
    version: str
    answers: tuple[EngineAnswer | None, ...]

    def describe(self) -> str:
        name = ENGINE_NAMES[self.engine]
        if not self.source:
            return f"{name}'s default: not known here"
        if self.source == "executed":
            return f"{name} {self.version}'s default (its own selection code, run here)"
        why = "installed, but no executed answer is registered" if _installed(self.engine) else "not installed here"
        return f"{name} {self.version}'s default (moe-registry's model of its oracle; {name} {why})"


def _installed(engine: str) -> bool:
    """Whether the engine is importable, found without importing it."""
    try:
        return importlib.util.find_spec(engine) is not None
    except (ImportError, ValueError):
        return False


def engine_defaults(plan: ModelPlan, engine: str) -> EngineDefaults:
    """The engine's default per group: its executed answer when a provider runs it and the engine is
    installed, else the model of its oracle; an engine nobody answers for gives no answers."""
    from ..engines.answer import EngineNotInstalled, engine_answers

    sources = ("executed", "model") if _installed(engine) else ("model",)
    for source in sources:
        try:
            answers = engine_answers(plan, engine, source=source)  # type: ignore[arg-type]
        except (EngineNotInstalled, ValueError):
            continue
        version = next((a.version for a in answers if a is not None), "")
        return EngineDefaults(engine, source, version, answers)
    return EngineDefaults(engine, "", "", tuple(None for _ in plan.groups()))


# --- One group: the engine's pick against ours --------------------------------------------------


class Verdict(NamedTuple):
    """``same``: the engine's default already runs our pick; ``differs``: a flag is needed (or no
    flag can get it); ``engine-none``: the engine finds no backend; ``unknown``: no answer."""

    kind: str
    cell: str  # the table cell
    text: str  # the sentence under the table ("" for same / unknown)


def _declarations() -> dict[str, BackendCapability]:
    from ..registry import default_registry

    return {d.id: d for d in default_registry().declarations()}


def _priority(decl: BackendCapability, group: LayerGroup) -> int:
    assert group.selection is not None
    return decl.priority_for(group.layer.quant.family, group.selection.device, group.layer)


def _because(group: LayerGroup, answer: EngineAnswer, decls: dict[str, BackendCapability]) -> str:
    """Why our pick is not the engine's default, from the declarations and our selection."""
    assert group.selection is not None
    s, quant = group.selection, group.layer.quant.kind
    sep = separation(answer, s.rejections, decls.values(), quant)
    if sep.kind == "no-kernel":
        return "moe-registry declares no backend of that kernel"
    if sep.kind == "not-covering":
        return f"moe-registry's {', '.join(d.id for d in sep.peers)} does not declare {quant.value}"
    assert sep.peer is not None
    if sep.reason is not None:
        r = sep.reason
        what = f"{r.actual}, needs {r.required}" if r.actual and r.required else r.message
        return f"moe-registry rejects {sep.peer.id} here ({r.code.value}: {what})"
    d = sep.peer
    ranks = (f"moe-registry ranks {s.backend} above {d.id} by declared priority ({_priority(decls[s.backend], group)} "
             f"vs {_priority(d, group)})")
    # A device rule's rank may rest on a committed benchmark: then say so, and where.
    rule = decls[s.backend].priority_override_for(group.layer.quant.family, s.device, group.layer)
    if rule is not None and "benchmarks/results/" in rule.source:
        return f"{ranks}, set from a measurement ({rule.source.split(' ', 1)[0]})"
    return f"{ranks}, not by a measurement"


def verdict(group: LayerGroup, answer: EngineAnswer | None,
            decls: dict[str, BackendCapability] | None = None) -> Verdict:
    if answer is None:
        return Verdict("unknown", "?", "")
    decls = _declarations() if decls is None else decls
    s = group.selection
    if answer.error is not None or answer.kernel is None:
        text = f"no backend: {answer.error or 'no answer'}"
        return Verdict("engine-none", "none", text)
    ours = decls.get(s.backend) if s is not None else None
    if s is None or ours is None:
        return Verdict("differs", answer.flag or answer.kernel, f"{answer.kernel}; moe-registry finds no backend")
    if answer.agrees_with(ours):
        return Verdict("same", "same", "")
    return Verdict("differs", answer.flag or answer.kernel,
                   f"{answer.kernel}, not {s.backend}: {_because(group, answer, decls)}")


def engine_flag(group: LayerGroup, engine: str) -> str | None:
    """The value of the engine's backend flag that runs our pick for this group (None: none does)."""
    s = group.selection
    return None if s is None else s.engines.get(engine)


# --- What to type --------------------------------------------------------------------------------


def _engine_line(plan: ModelPlan, engine: str, defaults: EngineDefaults,
                 decls: dict[str, BackendCapability]) -> tuple[str | None, str]:
    """The engine's flags that run ``plan`` as chosen (None: none can) and why they are what they are."""
    name = ENGINE_NAMES[engine]
    groups = plan.groups()
    layout = vllm_flags(plan.parallel) if engine == "vllm" else sglang_flags(plan.parallel)
    if layout is None:
        return None, f"{name} cannot run this layout (TP within EP); SGLang can"
    if any(g.selection is None for g in groups):
        return None, "no backend for some layers (below)"
    verdicts = [verdict(g, a, decls) for g, a in zip(groups, defaults.answers)]
    needed = {engine_flag(g, engine) for g, v in zip(groups, verdicts) if v.kind != "same"}
    if not needed:
        return layout, f"{name}'s default already picks this"
    if None in needed:
        missing = sorted({g.selection.backend for g in groups if engine_flag(g, engine) is None and g.selection})
        return None, f"no {name} flag runs {', '.join(missing)}; the layout alone: {layout or 'no flags'}"
    if len(needed) > 1:
        return None, (f"the layer groups need different {FLAG_OPTION[engine]} values ({', '.join(sorted(needed))}: "  # type: ignore[arg-type]
                      f"{name}'s flag is one for the whole model)")
    (value,) = needed
    flags = f"{layout} {FLAG_OPTION[engine]} {value}".strip()
    if defaults.source:
        theirs = sorted({a.flag or a.kernel or "none" for a, v in zip(defaults.answers, verdicts)
                         if a is not None and v.kind != "same"})
        return flags, f"runs moe-registry's pick; without it {name} runs its default, {', '.join(theirs)}"
    return flags, f"{name}'s default: not known here"


_LEAD = {
    "no-backend": "no backend runs every layer on this layout",
    "memory": "the expert weights do not fit this layout",
    "padding": "this layout makes the kernel pad the expert weights",
    "no-engine": "no engine can be told to run the chosen backend on this layout",
}


def _layout_lines(plan: ModelPlan, width: int, decls: dict[str, BackendCapability], *, indent: str = "  ",
                  defaults: dict[str, EngineDefaults] | None = None) -> list[str]:
    """Per engine, the flags that run ``plan`` as chosen (its defaults computed here unless given)."""
    from .terminal import wrap

    out: list[str] = []
    for engine in ENGINE_NAMES:
        known = (defaults or {}).get(engine)
        flags, why = _engine_line(plan, engine, known or engine_defaults(plan, engine), decls)
        name = ENGINE_NAMES[engine]
        if flags is None:
            text = f"{name}: - ({why})"
        elif not flags:
            text = f"{name}: no flags to set ({why})"
        else:
            text = f"{name}: {flags} ({why})"
        out += wrap(text, width, first=indent, indent=indent + "  ")
    return out


def advice_lines(plan: ModelPlan, defaults: dict[str, EngineDefaults], suggestions: tuple[Suggestion, ...],
                 replay: list[str], width: int, *, style: str = "vllm") -> list[str]:
    """The text under the decision table: the engines' defaults where they differ from our pick, then
    what to type for this layout, or the layout to move to first when this one cannot run."""
    from ..planner.layouts import problems
    from .terminal import wrap

    decls = _declarations()
    out: list[str] = []
    groups = plan.groups()
    many = len(groups) > 1
    for d in defaults.values():
        notes = []
        for g, a in zip(groups, d.answers):
            v = verdict(g, a, decls)
            if v.text:
                notes.append((f"{g.label()}: " if many else "") + v.text)
        if notes:
            out += wrap(f"{d.describe()}:", width)
            for note in dict.fromkeys(notes):
                out += wrap(note, width, first="- ", indent="  ")
    found = problems(plan)
    blocking = [p for p in found if p != "padding"]  # the plan cannot be deployed as it is
    if not blocking:
        out += wrap(f"what to type ({gpu_count(plan.parallel)}):", width)
        out += _layout_lines(plan, width, decls, defaults=defaults)
    for i, s in enumerate(suggestions):
        argv = " ".join([*replay, *cli_flags(s.parallel, style)])
        if i == 0 and blocking:
            out += wrap(f"what to type: {_LEAD[blocking[0]]} ({gpu_count(plan.parallel)}); "
                        f"{s.why}:", width)
        elif i == 0:
            out += wrap(f"or, since {_LEAD[found[0]]}: {s.why}:", width)
        else:
            out += wrap(f"or {s.why}:", width)
        out += wrap(argv, width, first="  ", indent="    ")
        if i == 0 and blocking and s.plan is not None:
            out += _layout_lines(s.plan, width, decls)
    if blocking and not suggestions:
        out += wrap(f"what to type: {_LEAD[blocking[0]]}, and no layout moe-registry tried fixes it (reasons below)",
                    width)
    return out


def advice_json(plan: ModelPlan, defaults: dict[str, EngineDefaults], suggestions: tuple[Suggestion, ...],
                replay: list[str], *, style: str = "vllm") -> dict[str, Any]:
    """The same answer for tools (docs/cli-json.md)."""
    decls = _declarations()
    groups = plan.groups()

    def engines(p: ModelPlan, d: dict[str, EngineDefaults] | None = None) -> list[dict[str, Any]]:
        out = []
        for e in ENGINE_NAMES:
            flags, why = _engine_line(p, e, (d or {}).get(e) or engine_defaults(p, e), decls)
            out.append({"engine": e, "flags": flags, "why": why})
        return out

    return {
        "engine_defaults": [
            {"engine": e, "source": d.source or None, "version": d.version or None,
             "groups": [{"range": g.label(), "answer": ans.model_dump(mode="json") if ans is not None else None,
                         "verdict": (v := verdict(g, ans, decls)).kind, "why": v.text or None}
                        for g, ans in zip(groups, d.answers)]}
            for e, d in defaults.items()],
        "what_to_type": {"gpus": plan.parallel.tp * plan.parallel.ep, "engines": engines(plan, defaults)},
        "suggestions": [{"gpus": s.gpus, "parallel": s.parallel.model_dump(mode="json"), "why": s.why,
                         "command": " ".join([*replay, *cli_flags(s.parallel, style)]),
                         "engines": engines(s.plan) if s.plan is not None else []}
                        for s in suggestions],
    }
