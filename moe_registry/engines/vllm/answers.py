"""vLLM's executed choice in the one shape every engine answer takes (:class:`~..answer.EngineAnswer`),
and the case that asks vLLM about a plan (model source, target device, parallel layout)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...schemas.device import DeviceSpec
from ...schemas.layer import ParallelConfig
from ..answer import EngineAnswer, EngineRejection
from . import names
from .fakes import FAKES
from .observe import LayerRecord

if TYPE_CHECKING:
    from ...planner.results import LayerGroup, ModelPlan
    from .executed import Case, CaseResult

FAKED = (f"vLLM ran on this machine with the target GPU faked ({', '.join(f.id for f in FAKES)}: "
         "moe_registry/engines/vllm/fakes.py)")


def vllm_layout(parallel: ParallelConfig) -> tuple[int, int, bool]:
    """(--tensor-parallel-size, --data-parallel-size, --enable-expert-parallel) giving our MoE layout
    in vLLM; ValueError for a layout vLLM has no flags for (MoE TP and EP at once)."""
    tp, ep, dp = parallel.tp, parallel.ep, parallel.dp
    if ep == 1:
        return tp, dp, False
    if tp != 1:
        raise ValueError(f"vLLM has no MoE layout {parallel.label()}: with --enable-expert-parallel its MoE TP is 1")
    if ep % dp:
        raise ValueError(f"vLLM spreads experts over TP x DP ranks: EP{ep} is not a multiple of DP{dp}")
    return ep // dp, dp, True


def case_for(plan: "ModelPlan", device: DeviceSpec, *, case_id: str = "plan", moe_backend: str = "auto") -> "Case":
    """The vLLM build that answers for ``plan``: its model source as vLLM would read it from disk."""
    from ...planner.sources import _load
    from .executed import Case

    if plan.quant_method == "override":
        raise ValueError("vLLM reads the quantization from the checkpoint: a --quant override cannot be executed")
    if device.vendor != "nvidia" or device.sm is None:
        raise ValueError(f"vLLM's choice is executed for an NVIDIA target, not {device.name}: pass --device")
    source = _load(plan.source.removeprefix("preset ") if plan.source.startswith("preset ") else plan.source)
    tp, dp, ep = vllm_layout(plan.parallel)
    return Case(id=case_id, config=source.config, device=device.name, sm=device.sm, memory_gb=device.memory_gb or 80,
                tp=tp, dp=dp, expert_parallel=ep, moe_backend=moe_backend, hf_quant_config=source.hf_quant_config,
                quantize_config=source.quantize_config)


def flag_of(record: LayerRecord) -> str | None:
    """The --moe-backend key that forces the kernel vLLM picked: vLLM's own mapping, read in the child
    (0.33: not observable, so the family's key)."""
    if record.flag is not None or record.experts_class is None:
        return record.flag
    family = names.family_of_class(record.experts_class)
    return next((key for key, fam in names.NAME_FAMILY.items() if fam == family), None)


def answer_from_record(record: LayerRecord, version: str, assumptions: tuple[str, ...] = ()) -> EngineAnswer:
    rejected = tuple(EngineRejection(candidate=f"{t.backend} ({t.experts_class})" if t.backend else t.experts_class,
                                     reason=t.reason or "") for t in record.rejected)
    kernel = f"{record.backend or '?'} ({record.experts_class})" if record.experts_class else None
    notes = tuple(n for n in (record.note,) if n)
    return EngineAnswer(engine="vllm", version=version, source="executed", flag=flag_of(record), kernel=kernel,
                        family=names.family_of_class(record.experts_class), rejected=rejected, error=record.error,
                        assumptions=(FAKED, *assumptions, *notes))


def _answer_for_group(group: "LayerGroup", result: "CaseResult") -> EngineAnswer | None:
    indices = set(group.indices)
    records = [r for r in result.layers if r.facts is not None and r.facts.index in indices]
    if not records and result.layers:  # a layer without facts (vLLM raised before reading it)
        records = [r for r in result.layers if r.facts is None and r.error]
    assumptions = tuple(result.assumptions)
    if records:
        first = records[0]
        differ = sorted({r.prefix for r in records if (r.backend, r.experts_class) != (first.backend, first.experts_class)})
        extra = (f"vLLM chose differently within the group at {', '.join(differ)}",) if differ else ()
        return answer_from_record(first, result.vllm, assumptions + extra)
    if result.error:
        return EngineAnswer(engine="vllm", version=result.vllm or "?", source="executed", flag=None, kernel=None,
                            family=None, error=f"vLLM did not build this layer: {result.error}",
                            assumptions=(FAKED, *assumptions))
    return None


def answers_for_result(plan: "ModelPlan", result: "CaseResult") -> tuple[EngineAnswer | None, ...]:
    return tuple(_answer_for_group(group, result) for group in plan.groups())


def answers_for_plan(plan: "ModelPlan", version: str) -> tuple[EngineAnswer | None, ...]:
    from .executed import run_cases

    devices = {g.selection.device for g in plan.groups() if g.selection is not None}
    device = plan.device or (next(iter(devices)) if devices else None)
    if device is None:
        raise ValueError("vLLM's choice is executed for a target device: pass --device (h100, b200, ...)")
    case = case_for(plan, device)
    result = run_cases([case], cached=True)[case.id]
    return answers_for_result(plan, result)
