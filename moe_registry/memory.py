"""Memory fit: do a model's expert weights, as the chosen backends hold them, fit on one GPU?

The rule (also in docs/cli-json.md and in every ``explain --json`` as ``memory.rule``):

* Counted, per GPU: the expert weights of every MoE layer on that rank, as the chosen backend holds
  them after loading: packed values, block / group scales, per-tensor and global scales, biases, at
  the padded per-rank sizes, and expanded where the backend dequantizes at load
  (``QuantSupport.dequantized_at_load`` / ``dequantized_bits``). ``Candidate.expert_weight_bytes``
  is that figure for one layer; ``QuantScheme.matrix_bytes`` holds the format facts.
* Budget: ``BUDGET_FRACTION`` (vLLM's default ``gpu_memory_utilization``) of the device's memory
  (``DeviceSpec.memory_gb``, read as 10^9 bytes). Attention, embeddings, KV cache and activations
  are not counted: fitting is necessary, not sufficient, so a rejection is always a real one.
* When the plan does not fit, the chosen backend holding the most bytes, in the layers where an
  eligible alternative holds fewer, is rejected there with ``memory_exceeded`` and those layers are
  selected again (a pure function of the plan: the rejection is one more reason passed to
  ``select_backend``); repeated until the plan fits or no layer can shrink. Then every other
  eligible backend that would take the final plan over the budget is rejected too, so a backend
  whose whole-model expert weights do not fit is never left looking eligible.
* Modes: ``prefer`` (default) keeps the smallest plan when none fits and reports ``fits: false``
  with the expert parallelism that would fit; ``strict`` then rejects every backend (the layers have
  no backend: exit 3); ``report`` only reports. A forced backend is never swapped (``strict``
  rejects it, with its reasons).
"""

# No `from __future__ import annotations`: string annotations cost a compile() each when pydantic or
# NamedTuple reads them at import, which explain's start-up counts (issue 20).

from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict

from .schemas.device import DeviceSpec
from .schemas.layer import LayerSpec
from .schemas.selection import Reason, ReasonCode, Selection

BUDGET_FRACTION = 0.92
BUDGET_SOURCE = "vLLM 0.33.0 config/cache.py L215: gpu_memory_utilization default 0.92"
GB = 10**9

MemoryMode = Literal["prefer", "strict", "report"]
MEMORY_MODES: tuple[MemoryMode, ...] = ("prefer", "strict", "report")

RULE = (f"per GPU, the expert weights of every MoE layer as the chosen backend holds them (values, block and "
        f"global scales, biases; padded, and dequantized where the backend dequantizes at load) must fit in "
        f"{BUDGET_FRACTION:g} x the device memory ({BUDGET_SOURCE}); attention, embeddings, KV cache and "
        f"activations are not counted, so fitting is necessary, not sufficient")

Extra = tuple[tuple[str, Reason], ...]
SelectKey = Callable[[LayerSpec, Extra], "Selection | None"]  # None: no backend can run the layer


class MemoryFit(BaseModel):
    """The whole-model expert weight memory per GPU against the device's budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: str = RULE
    mode: MemoryMode = "prefer"
    device_memory_bytes: int | None  # None: the device's memory is unknown (the check abstains)
    budget_fraction: float = BUDGET_FRACTION
    budget_bytes: int | None
    expert_weight_bytes: int  # per GPU, every MoE layer, as the chosen backends hold them
    fits: bool | None  # None: unknown device memory
    rejected: tuple[str, ...] = ()  # backends rejected with memory_exceeded in some layer
    hint: str = ""  # when it does not fit: the expert parallelism that would
    # True: a measured policy's decode / prefill split (two copies of some layers' weights) did not fit, so
    # each of those layers is served by its chosen backend alone (the planner drops the split, with a note).
    phases_dropped: bool = False

    def describe(self) -> str:
        held = f"expert weights per GPU: {gb(self.expert_weight_bytes)}"
        if self.budget_bytes is None or self.device_memory_bytes is None:
            return held + " (device memory unknown: fit not checked)"
        verdict = "fits" if self.fits else "DOES NOT FIT"
        text = (f"{held} of a {gb(self.budget_bytes)} budget ({self.budget_fraction:.0%} of "
                f"{gb(self.device_memory_bytes)}): {verdict}")
        if self.rejected:
            text += f"; rejected for memory: {', '.join(self.rejected)}"
        return text + (f" (hint: {self.hint})" if self.hint else "")


def gb(n: int) -> str:
    """Bytes as decimal GB (MB below one GB), with three significant digits or more."""
    if n < GB:
        return f"{n / 10**6:.1f} MB"
    return f"{n / GB:.2f} GB" if n < 10 * GB else f"{n / GB:.1f} GB"


def _bytes(selection: Selection | None, phases: bool = True) -> int:
    if selection is None:
        return 0
    # A second backend serving prefill keeps its own copy, unless the plan drops the split (phases=False).
    return selection.held_bytes() if phases else selection.eligible[0].expert_weight_bytes or 0


def split(selection: Selection | None) -> bool:
    """Does a second backend serve one of the phases (a second copy of the weights)?"""
    return selection is not None and any(p.backend != selection.backend for p in selection.phases)


def _ep_hint(counts: dict[LayerSpec, int], total: int, budget: int) -> str:
    """The fewest GPUs at which these expert weights fit with expert parallelism over all of them
    (EP = GPUs, experts unsplit: how vLLM's --enable-expert-parallel and SGLang's --ep-size spread
    them), and what each then holds. Per-GPU bytes scale as GPUs now / GPUs then: EP that divides
    the experts splits them exactly, and the current layout's TP already divides their width."""
    keys = list(counts)
    if not keys or total <= 0:
        return ""
    now = keys[0].parallel.tp * keys[0].parallel.ep
    experts = {k.num_experts for k in keys}
    for n in range(now + 1, max(experts) + 1):
        if all(e % n == 0 for e in experts) and total * now // n <= budget:
            return f"EP{n} over {n} GPUs would hold {gb(total * now // n)} per GPU"
    return ""


def _reason(backend: str, layers: int, held_bytes: int, held: str, total: int, budget: int, device: DeviceSpec,
            hint: str) -> Reason:
    return Reason(
        code=ReasonCode.MEMORY_EXCEEDED, field="memory", required=f"<= {gb(budget)} per GPU", actual=gb(total),
        message=(f"{backend} would hold {gb(held_bytes)} of expert weights per GPU for these {layers} layers "
                 f"({held}); the model's expert weights would need {gb(total)} per GPU, over the {gb(budget)} "
                 f"budget ({BUDGET_FRACTION:.0%} of {device.label()}'s {device.memory_gb:g} GB)"),
        hint=hint, source=BUDGET_SOURCE)


def fit(counts: dict[LayerSpec, int], select: SelectKey, device: DeviceSpec,
        mode: MemoryMode = "prefer") -> tuple[dict[LayerSpec, Extra], MemoryFit]:
    """The memory_exceeded reasons per layer key that make the plan fit (or the smallest plan), and
    the fit itself. ``counts``: layer shape key -> number of MoE layers with it. ``select``: the
    planner's selection of one key with extra reasons (pure, so calling it again is cheap)."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {mode!r}; one of {', '.join(MEMORY_MODES)}")
    budget = int(device.memory_gb * GB * BUDGET_FRACTION) if device.memory_gb else None
    # key -> backend -> (layers, bytes it would hold for them, what it holds, model total when rejected)
    facts: dict[LayerSpec, dict[str, tuple[int, int, str, int]]] = {k: {} for k in counts}

    def extras(k: LayerSpec, hint: str = "") -> Extra:
        assert budget is not None or not facts[k]
        return tuple((b, _reason(b, *f, budget, device, hint)) for b, f in facts[k].items())  # type: ignore[arg-type]

    phases = True  # count a decode / prefill split's second copy until it is dropped for not fitting
    while True:
        selections = {k: select(k, extras(k)) for k in counts}
        total = sum(n * _bytes(selections[k], phases) for k, n in counts.items())
        if mode == "report" or budget is None or total <= budget:
            break
        if phases and any(split(s) for s in selections.values()):
            phases = False  # one copy per layer first, before any backend is rejected
            continue
        shares: dict[str, int] = {}
        shrink: dict[str, list[LayerSpec]] = {}
        for k, s in selections.items():
            if s is None or s.decided_by in ("forced", "env"):
                continue
            chosen = s.eligible[0]
            mine = chosen.expert_weight_bytes or 0
            shares[chosen.backend] = shares.get(chosen.backend, 0) + counts[k] * mine
            if any(c.expert_weight_bytes is not None and c.expert_weight_bytes < mine for c in s.eligible[1:]):
                shrink.setdefault(chosen.backend, []).append(k)
        if not shrink:
            break
        pick = max(shrink, key=lambda b: (shares[b], b))
        for k in shrink[pick]:
            chosen = selections[k].eligible[0]  # type: ignore[union-attr]
            facts[k][pick] = (counts[k], counts[k] * (chosen.expert_weight_bytes or 0), chosen.weights_held, total)

    fits = None if budget is None else total <= budget
    if mode != "report" and budget is not None:
        # Every other eligible backend whose layers would take the model over the budget, in this plan.
        for k, s in selections.items():
            if s is None:
                continue
            base = total - counts[k] * _bytes(s, phases)
            for c in s.eligible[1:]:
                would = base + counts[k] * (c.expert_weight_bytes or 0)
                if would > budget:
                    facts[k].setdefault(c.backend, (counts[k], counts[k] * (c.expert_weight_bytes or 0),
                                                    c.weights_held, would))
    hint = ""
    if fits is False and budget is not None:
        hint = _ep_hint(counts, total, budget)
        if mode == "strict":
            for k, s in selections.items():
                for c in (s.eligible if s is not None else ()):
                    facts[k].setdefault(c.backend, (counts[k], counts[k] * (c.expert_weight_bytes or 0),
                                                    c.weights_held, total))
    elif fits:
        held = sorted({f"{s.backend} ({s.eligible[0].weights_held})" for s in selections.values() if s is not None})
        hint = f"{', '.join(held)} {'hold' if len(held) > 1 else 'holds'} {gb(total)} per GPU and fits"
    rejected = tuple(sorted({b for f in facts.values() for b in f}))
    memory = MemoryFit(mode=mode, device_memory_bytes=int(device.memory_gb * GB) if device.memory_gb else None,
                       budget_bytes=budget, expert_weight_bytes=total, fits=fits, rejected=rejected,
                       hint=hint if fits is False else "", phases_dropped=not phases)
    return {k: extras(k, hint) for k in counts}, memory
