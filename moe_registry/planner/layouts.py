"""Parallel layouts as the engines spell them.

* :func:`from_flags`: the engine-style flags (``--tp``, ``--ep``, ``--enable-expert-parallel``,
  ``--dp``) -> the experts' layout, a :class:`ParallelConfig` (MoE TP x EP, and the DP that spans it).
* :func:`cli_flags`, :func:`vllm_flags`, :func:`sglang_flags`: a layout back to the flags of
  moe-registry, vLLM and SGLang, so a hint is something to type.
* :func:`suggest_layouts`: the layouts a plan could move to when it does not fit, has no backend,
  pads, or picks a kernel no engine runs; each checked by planning it, with its GPU count.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ..schemas.layer import ParallelConfig
from .results import ParallelismError

if TYPE_CHECKING:
    from .results import ModelPlan

MAKE_SOURCE = ("vLLM 0.34.0 model_executor/layers/fused_moe/config.py L1154-1290 FusedMoEParallelConfig.make: "
               "flatten_tp_across_dp_and_pcp gives the MoE layer tp x dp ranks; with enable_expert_parallel they "
               "become EP (ep_size = tp x dp, tp 1), without it TP (tp_size = tp x dp)")


def from_flags(*, tp: int | None, ep: int | None, enable_ep: bool, dp: int | None) -> ParallelConfig:
    """The experts' layout the flags describe, as the engines read them:

    * vLLM (``-tp T [-dp D] [--enable-expert-parallel]``): the MoE layer spans T x D ranks
      (:data:`MAKE_SOURCE`); expert parallelism makes them EP(T x D), else TP(T x D).
    * SGLang (``--tp-size N --ep-size M``): EP M within the N ranks, each expert split N / M ways.
      ``--ep N`` alone means ``--tp N --ep N``. SGLang's DP attention stays inside the TP group, so
      ``--dp`` with ``--ep`` would mean something else in each engine: refused.

    Raises :class:`ParallelismError` (one line) for a contradiction."""
    dp = 1 if dp is None else dp
    if any(v is not None and v < 1 for v in (tp, ep, dp)):
        raise ParallelismError("--tp, --ep and --dp must be positive")
    t = tp if tp is not None else (ep or 1)
    if enable_ep:
        if ep is not None and ep != t * dp:
            raise ParallelismError(f"--enable-expert-parallel spreads the experts over tp x dp = {t * dp} ranks; "
                                   f"--ep {ep} contradicts it (drop one of them)")
        return ParallelConfig(tp=1, ep=t * dp, dp=dp) if t * dp > 1 else ParallelConfig()
    if ep is None:
        return ParallelConfig(tp=t * dp, ep=1, dp=dp)
    if dp > 1:
        raise ParallelismError(f"--dp {dp} with --ep {ep}: --dp is vLLM's -dp (the MoE layer spans tp x dp ranks) "
                               "and --ep SGLang's --ep-size (EP within --tp); use --tp T --dp D "
                               "--enable-expert-parallel (vLLM) or --tp N --ep M (SGLang)")
    if t % ep:
        raise ParallelismError(f"--ep {ep} must divide --tp {t}: EP runs within the TP group (SGLang --ep-size); "
                               f"for EP{ep} with unsplit experts use --tp {ep} --ep {ep} or --tp {ep} "
                               "--enable-expert-parallel")
    return ParallelConfig(tp=t // ep, ep=ep, dp=1)


def gpus(parallel: ParallelConfig) -> int:
    """GPUs the MoE layer spans (vLLM: tp x dp; SGLang: --tp-size)."""
    return parallel.tp * parallel.ep


def attention_tp(parallel: ParallelConfig) -> int:
    """The attention's TP size: the GPUs over the DP replicas (vLLM -tp; SGLang --tp-size / --dp-size)."""
    return max(gpus(parallel) // parallel.dp, 1)


def gpu_count(parallel: ParallelConfig) -> str:
    n = gpus(parallel)
    return f"{n} GPU{'' if n == 1 else 's'}"


def cli_flags(parallel: ParallelConfig, style: str = "vllm") -> tuple[str, ...]:
    """moe-registry's own flags for a layout (:func:`from_flags` gives it back), in vLLM's style
    (``--tp T --dp D --enable-expert-parallel``) or SGLang's (``--tp N --ep M``) where it can say it."""
    p = parallel
    if (p.tp > 1 and p.ep > 1) or (style == "sglang" and p.ep > 1 and p.dp == 1):
        return ("--tp", str(p.tp * p.ep), "--ep", str(p.ep))
    t = attention_tp(p)
    out: tuple[str, ...] = ("--tp", str(t)) if t > 1 else ()
    out += ("--dp", str(p.dp)) if p.dp > 1 else ()
    return out + (("--enable-expert-parallel",) if p.ep > 1 else ())


def vllm_flags(parallel: ParallelConfig) -> str | None:
    """vLLM's flags for a layout; None when vLLM cannot express it (TP within EP)."""
    p = parallel
    if p.tp > 1 and p.ep > 1:
        return None
    t = attention_tp(p)
    out = [f"-tp {t}"] if t > 1 else []
    out += [f"-dp {p.dp}"] if p.dp > 1 else []
    out += ["--enable-expert-parallel"] if p.ep > 1 else []
    return " ".join(out)


def sglang_flags(parallel: ParallelConfig) -> str:
    """SGLang's flags for a layout (DP attention inside the TP group)."""
    p = parallel
    out = [f"--tp-size {gpus(p)}"] if gpus(p) > 1 else []
    out += [f"--ep-size {p.ep}"] if p.ep > 1 else []
    out += [f"--dp-size {p.dp} --enable-dp-attention"] if p.dp > 1 else []
    return " ".join(out)


# --- What a plan could move to ---------------------------------------------------------------------


class Suggestion(NamedTuple):  # not a frozen dataclass: ~4x cheaper to define, and explain's start-up counts (issue 20)
    """A layout to try instead, checked by planning it (``plan``): ``why`` says what it gives, in numbers."""

    parallel: ParallelConfig
    why: str
    plan: ModelPlan | None = None

    @property
    def gpus(self) -> int:
        return gpus(self.parallel)


_BLOCKING = {"no-backend", "memory"}  # the plan cannot run as it is


def problems(plan: ModelPlan) -> tuple[str, ...]:
    """What a deployer must change about this plan, worst first: no backend for some layers, expert
    weights that do not fit, a pick no engine can be told to run, padding."""
    out = []
    chosen = [lp.selection for lp in plan.layers if lp.selection is not None]
    if any(lp.selection is None for lp in plan.layers):
        out.append("no-backend")
    if plan.memory is not None and plan.memory.fits is False:
        out.append("memory")
    if any("vllm" not in s.engines and "sglang" not in s.engines for s in chosen):
        out.append("no-engine")
    if any(s.padding for s in chosen):
        out.append("padding")
    return tuple(out)


def _runnable(plan: ModelPlan, parallel: ParallelConfig) -> bool:
    """Whether every MoE layer can take the layout (EP divides the experts, TP the width, the
    attention TP suits the heads)."""
    for spec in {lp.layer.shape_key() for lp in plan.layers}:
        if spec.num_experts % parallel.ep or spec.intermediate_size % parallel.tp:
            return False
        if not spec.runnable_tp(attention_tp(parallel)):
            return False
    return True


def _ep_layout(plan: ModelPlan, n: int, style: str) -> ParallelConfig:
    """EP over ``n`` GPUs: SGLang ``--tp n --ep n``; vLLM keeps the plan's attention TP where it
    divides ``n`` (``-tp T -dp n/T --enable-expert-parallel``)."""
    t = n if style == "sglang" else attention_tp(plan.parallel)
    if n % t:
        t = 1
    return ParallelConfig(tp=1, ep=n, dp=n // t) if n > 1 else ParallelConfig()


def suggest_layouts(plan: ModelPlan, replan: Callable[[ParallelConfig], ModelPlan], *,
                    max_gpus: int = 64, style: str = "vllm") -> tuple[Suggestion, ...]:
    """Layouts that fix :func:`problems` of ``plan``, each planned with ``replan`` and kept only when
    its plan has none of them: the same GPUs with expert parallelism, fewer GPUs with smaller TP,
    and, when the expert weights do not fit, the fewest GPUs (powers of two up to ``max_gpus``)
    with expert parallelism that hold them. The first suggestion is the one to try. ``style``:
    the engine whose flags the user spoke (``sglang``: EP within the TP group, no DP)."""
    found = problems(plan)
    if not found:
        return ()
    target = found[0]  # the worst problem: the one every suggestion must fix
    tried: set[ParallelConfig] = {plan.parallel}
    out: list[Suggestion] = []

    def acceptable(other: ModelPlan) -> bool:
        # It fixes the target, adds no problem this plan does not have, and leaves nothing blocking.
        new = set(problems(other))
        return target not in new and not new & _BLOCKING and new <= set(found)

    def attempt(parallel: ParallelConfig, why: Callable[[ModelPlan], str]) -> bool:
        if parallel in tried or not _runnable(plan, parallel):
            return False
        tried.add(parallel)
        try:
            other = replan(parallel)
        except ValueError:  # a layout the planner refuses: not a suggestion
            return False
        if not acceptable(other):
            return False
        out.append(Suggestion(parallel, why(other), other))
        return True

    def held(other: ModelPlan) -> str:
        from ..memory import gb

        mem = other.memory
        return "every layer has a backend" if mem is None else f"{gb(mem.expert_weight_bytes)} per GPU"

    n = gpus(plan.parallel)
    if target == "memory":
        total = plan.memory.expert_weight_bytes if plan.memory else 0
        budget = plan.memory.budget_bytes if plan.memory else None
        m = n * 2
        while m <= max_gpus and not out:
            # Expert bytes per GPU scale with 1 / GPUs under EP; plan only the counts that could fit.
            if budget is None or total * n // m <= budget:
                attempt(_ep_layout(plan, m, style), functools.partial(lambda m, o: f"EP{m} over {m} GPUs: {held(o)}", m))
            m *= 2
        return tuple(out)
    if n > 1:
        attempt(_ep_layout(plan, n, style), lambda o: f"EP{n} over the same {n} GPUs: {held(o)}")
        if plan.parallel.ep == 1 and target in ("no-backend", "no-engine"):
            t = plan.parallel.tp // 2
            while t >= 1 and len(out) < 2:
                attempt(ParallelConfig(tp=t, ep=1, dp=1),
                        functools.partial(lambda t, o: f"TP{t} over {gpu_count(ParallelConfig(tp=t))}: {held(o)}", t))
                t //= 2
    return tuple(out)
