"""One layer's selection: the text pieces plans reuse, its JSON, Markdown and rich form, rejection tables."""

from __future__ import annotations

from typing import Any, Iterable

from ..schemas.selection import ReasonCode, Selection
from .terminal import escape_control

from . import JSON_SCHEMA_VERSION

# --- Shared text pieces ------------------------------------------------------------------------


def engine_flags(selection: Selection) -> str:
    e = selection.engines
    parts = []
    if "vllm" in e:
        parts.append(f"vLLM --moe-backend {e['vllm']}")
    if "sglang" in e:
        parts.append(f"SGLang --moe-runner-backend {e['sglang']}")
    if "trtllm" in e:
        parts.append(f"TRT-LLM moe_config.backend={e['trtllm']}")
    return "; ".join(parts) or "no engine equivalent"


def padding_text(selection: Selection) -> str:
    return ", ".join(f"{p.dimension} {p.original}->{p.padded} (+{p.extra_weight_memory_pct:g}% memory/FLOPs)"
                     for p in selection.padding) or "none"


def shape_text(selection: Selection) -> str:
    l = selection.layer
    text = f"E={l.num_experts} top-{l.top_k} H={l.hidden_size} I={l.intermediate_size}"
    if l.parallel.tp > 1 or l.parallel.ep > 1:
        text += f" (per rank: E={l.local_num_experts} I={l.local_intermediate_size})"
    return text


def layer_range(indices: list[int]) -> str:
    if not indices:
        return "-"
    indices = list(indices)
    if indices == list(range(indices[0], indices[-1] + 1)):
        span = str(indices[0]) if len(indices) == 1 else f"{indices[0]}-{indices[-1]}"
    else:
        span = ",".join(map(str, indices[:6])) + (",..." if len(indices) > 6 else "")
    return f"{span} ({len(indices)})"


# --- Selections ----------------------------------------------------------------------------------


def selection_json(selection: Selection) -> dict[str, Any]:
    data = selection.model_dump(mode="json")
    data["schema_version"] = JSON_SCHEMA_VERSION
    return data


def weights_text(selection: Selection) -> str:
    """Per-rank expert weights of one layer as the chosen backend holds them."""
    from ..memory import gb

    chosen = selection.eligible[0]
    if chosen.expert_weight_bytes is None:
        return "unknown"
    return f"{gb(chosen.expert_weight_bytes)} per layer per GPU ({chosen.weights_held})"


def _selection_lines(selection: Selection) -> list[str]:
    lines = [f"decided by: {selection.decided_by}", f"padding: {padding_text(selection)}",
             f"expert weights: {weights_text(selection)}",
             f"engines: {engine_flags(selection)}", f"fingerprint: {selection.fingerprint}"]
    lines += [f"note ({n.kind}): {n.message}" for n in selection.notes]
    return lines


def selection_markdown(selection: Selection, *, heading: str = "###") -> str:
    out = [f"{heading} {selection.layer.name or 'Layer'} -> `{selection.backend}`", "",
           f"- device: {selection.device.label()}{' (planning)' if selection.planning else ''}",
           f"- layer: {shape_text(selection)}, {selection.layer.activation.value}, {selection.layer.quant.label()}, "
           f"{selection.layer.dtype}, {selection.layer.parallel.label()}"]
    out += [f"- {line}" for line in _selection_lines(selection)]
    if len(selection.eligible) > 1:
        out.append("- also eligible: " + ", ".join(f"`{c.backend}`" for c in selection.eligible[1:]))
    out += ["", rejections_markdown(selection.rejections)]
    return "\n".join(out)


def rejections_markdown(rejections: Iterable) -> str:
    rejections = list(rejections)
    if not rejections:
        return "No backend was rejected."
    rows = ["| rejected backend | code | reason | hint |", "|---|---|---|---|"]
    for rejection in rejections:
        for reason in rejection.reasons:
            rows.append(f"| `{rejection.backend}` | {reason.code.value} | {_md(reason.message)} | {_md(reason.hint)} |")
    return "\n".join(rows)


def _md(text: str) -> str:
    return escape_control(text.replace("|", "\\|").replace("\n", " "))


def selection_lines(selection: Selection, *, width: int = 80, verbose: bool = False) -> list[str]:
    """`select`'s text: the decision and what runs it in each engine first, then the rejections
    (hints for deployers only, each shared hint once; ``verbose``: every hint as declared)."""
    from .terminal import wrap

    l = selection.layer
    forced = {"forced": " (forced by --force)", "env": " (forced by MOE_REGISTRY_BACKEND)"}.get(selection.decided_by, "")
    out = wrap(f"{l.name or 'layer'} on {selection.device.label()}{' (planning)' if selection.planning else ''}: "
               f"{selection.backend}{forced}", width)
    out += wrap(f"{shape_text(selection)}, activation {l.activation.value}, quant {l.quant.label()}, "
                f"dtype {l.dtype}", width, first="  ", indent="  ")
    lines = [f"decided by: {selection.decided_by}", f"padding: {padding_text(selection)}",
             f"expert weights: {weights_text(selection)}", f"engines: {engine_flags(selection)}"]
    if verbose:
        lines += [f"fingerprint: {selection.fingerprint}"] + [f"note ({n.kind}): {n.message}" for n in selection.notes]
    for line in lines:
        out += wrap(line, width, first="  ", indent="    ")
    if len(selection.eligible) > 1:
        out += wrap("also eligible: " + ", ".join(c.backend for c in selection.eligible[1:]), width,
                    first="  ", indent="    ")
    rejections = list(selection.rejections)
    # A deployer cannot make a backend run another weight format: list those by name only (-v: why).
    other_format = [] if verbose else [rej.backend for rej in rejections
                                       if any(r.code is ReasonCode.QUANT_UNSUPPORTED for r in rej.reasons)]
    rejections = [rej for rej in rejections if rej.backend not in other_format]
    if rejections:
        out += reason_lines("rejected:", rejections, width, verbose=verbose, first_only=not verbose)
    if other_format:
        out += wrap(f"rejected, do not run {l.quant.kind.value}: {', '.join(other_format)}", width, indent="  ")
    if not verbose:
        out.append("(-v: every reason and hint as declared, notes and the fingerprint)")
    return out


def print_selection(selection: Selection, *, verbose: bool = False) -> None:
    from .terminal import width, write_lines

    write_lines(selection_lines(selection, width=width(), verbose=verbose))


# Hint parts written for whoever maintains a declaration, not for whoever deploys a model: shown with -v.
_MAINTAINER_HINTS = ("if this kernel does run it", "that alone is not enough", "that is the only change needed")


def deployer_hint(hint: str) -> str:
    """A reason's hint without the parts meant for a declaration's maintainer."""
    return "; ".join(p for p in hint.split("; ") if not p.startswith(_MAINTAINER_HINTS))


def _reason_text(reason, hint: str) -> str:
    return f"{reason.code.value}: {reason.message}" + (f" (hint: {hint})" if hint else "")


def reason_lines(title: str, rejections: Iterable, width: int, *, verbose: bool = False,
                 first_only: bool = False) -> list[str]:
    """One row per backend. A reason every listed backend shares (a quantization format's scale
    groups, say) is printed once above the table, and so is a hint that several rows share
    ("backends that run nvfp4: ...")."""
    from .terminal import table, wrap

    rejections = list(rejections)
    shared = set.intersection(*({r.message for r in rej.reasons} for rej in rejections)) \
        if len(rejections) > 1 else set()

    def hint_of(reason) -> str:
        return reason.hint if verbose else deployer_hint(reason.hint or "")

    counts: dict[str, int] = {}
    for rej in rejections:
        for r in rej.reasons:
            if r.message not in shared and hint_of(r):
                counts[hint_of(r)] = counts.get(hint_of(r), 0) + 1
    repeated = [h for h, n in counts.items() if n > 1]
    out = wrap(title, width) if title else []
    for reason in rejections[0].reasons if shared else ():
        if reason.message in shared:
            out += wrap(f"all of them: {_reason_text(reason, hint_of(reason))}", width, indent="  ")
    rows = []
    for rejection in rejections:
        lines = [_reason_text(r, "" if hint_of(r) in repeated else hint_of(r))
                 for r in rejection.reasons if r.message not in shared]
        if first_only and len(lines) > 1:  # the first reason, and the codes of the others (-v: all)
            rest = [r.code.value for r in rejection.reasons if r.message not in shared][1:]
            lines = [lines[0], f"and {', '.join(dict.fromkeys(rest))}"]
        rows.append([rejection.backend, "\n".join(lines) or "(only the shared reasons above)"])
    out += table(["backend", "why not"], rows, width, fixed=(0,))
    for h in repeated:
        out += wrap(f"hint ({counts[h]} rows): {h}", width, indent="  ")
    return out
