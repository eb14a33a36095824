"""Row-by-row parity of our choice with vLLM's own choice, executed (docs/parity-vllm.md).

A row is one layer group of one deployment (model, device, layout) of the committed record
(:mod:`.vllm.record`: vLLM's selection code run for every MoE layer). It agrees when our chosen
backend runs the kernel family vLLM ran (:meth:`~.answer.EngineAnswer.agrees_with`). A row that
differs is explained only from the tables below, never by per-row prose, so rows added later are
covered or flagged:

1. vLLM refuses the layer or the model (its own error, executed: a measured reason).
2. :data:`MISSING_BACKEND`, keyed by (vLLM kernel family, quant family or ``"*"``): none of our
   declarations has that family *and* declares the layer's quant kind.
3. :data:`REJECTED`, matched on (vLLM kernel family, our reason code, field, rule phrase): a
   declaration of vLLM's family covers the quant kind but selection rejected it for this layer.
4. :data:`PREFERRED`, keyed by (vLLM kernel family, our kernel family or backend id): a declaration
   of vLLM's family was eligible but our policy ranked another first; only measured evidence (a
   committed benchmark) or a capability vLLM lacks may go here.
Anything else is "UNEXPLAINED" in the document and fails ``tests/test_parity_vllm.py``. The same
rows hold the hand model (:mod:`.vllm.model`) to the executed answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..planner import plan_model
from ..registry import Registry
from ..schemas.capability import BackendCapability
from ..schemas.device import get_device
from ..schemas.layer import LayerSpec
from ..schemas.selection import Reason, ReasonCode, Rejection
from .answer import EngineAnswer, engine_answers
from .vllm import record as vllm_record
from .vllm.answers import answers_for_result
from .vllm.names import family_of_declaration

Kind = Literal["missing-backend", "missing-capability", "ours-better-measured", "ours-better-capability", "vllm-none",
               "vllm-refuses-model", "engine-none", "engine-missing-backend", "follows-vllm"]

@dataclass(frozen=True)
class Explanation:
    kind: Kind
    text: str
    evidence: str  # an upstream source, an issue item, a committed benchmark file or the executed record


_TRTLLM = "moe_registry/backends/trtllm_gen/ (the TRT-LLM-gen family's declarations)"
_CONCURRENT = "the backend's declaration (moe_registry/backends/) names the kinds it covers"

# (vLLM kernel family, quant family value or "*") -> no declaration of that kernel covers the layer's quant kind.
MISSING_BACKEND: dict[tuple[str, str], Explanation] = {
    ("triton", "*"): Explanation(
        "missing-backend", "no declaration of vLLM's Triton fused MoE (TritonExperts) covers this quant kind "
        "(`triton-fused-moe`)", f"fused_moe/experts/triton_moe.py L67-191; {_CONCURRENT}"),
    ("humming", "*"): Explanation(
        "missing-backend", "no declaration of Humming (vLLM's HummingIndexedExperts, ahead of Marlin on SM90) covers "
        "this quant kind (`humming`)",
        f"fused_moe/experts/fused_humming_moe.py L677; quantization/utils/humming/priority.py L10-48; {_CONCURRENT}"),
    ("flashinfer-trtllm", "unquantized"): Explanation(
        "missing-backend", "no TRT-LLM-gen declaration covers bf16 (FlashInfer `trtllm_bf16_moe`; `trtllm-bf16`)",
        f"fused_moe/experts/trtllm_bf16_moe.py L244-271; {_TRTLLM}"),
    ("flashinfer-trtllm", "fp8"): Explanation(
        "missing-backend", "no TRT-LLM-gen declaration covers FP8 (FlashInfer `trtllm_fp8_block_scale_moe` / "
        "per-tensor; `trtllm-fp8`)", f"fused_moe/experts/trtllm_fp8_moe.py L346-432; {_TRTLLM}"),
    ("flashinfer-trtllm", "mxfp4"): Explanation(
        "missing-backend", "no TRT-LLM-gen declaration covers MXFP4 (FlashInfer `trtllm_fp4_block_scale_moe`, MXFP4 x "
        "bf16; `trtllm-fp4`)", f"fused_moe/experts/trtllm_mxfp4_moe.py L165-195; {_TRTLLM}"),
    ("flashinfer-trtllm", "int4"): Explanation(
        "missing-backend", "no TRT-LLM-gen declaration covers int4 (MXINT4; `trtllm-mxint4`)",
        f"fused_moe/experts/trtllm_mxint4_moe.py L21-96; {_TRTLLM}"),
    ("deep-gemm", "*"): Explanation(
        "missing-backend", "no declaration of DeepGEMM (vLLM's TritonOrDeepGemmExperts)",
        "fused_moe/experts/triton_deep_gemm_moe.py L24"),
    ("flashinfer-cutedsl", "*"): Explanation(
        "missing-backend", "no declaration of FlashInfer's CuteDSL NvFP4 MoE", "fused_moe/experts/flashinfer_cutedsl_moe.py L34"),
    ("vllm-cutlass", "*"): Explanation(
        "missing-backend", "no declaration of vLLM's own CUTLASS MoE (CutlassExpertsFp4 / W4A8)",
        "fused_moe/experts/cutlass_moe.py L701, L1294"),
}

@dataclass(frozen=True)
class RejectedMatch:
    """Matches one reason of a same-family declaration's rejection: family ("*": any), code, and
    optionally the reason's field and a phrase of its message (the rule it came from)."""

    family: str
    code: ReasonCode
    field: str | None = None
    phrase: str | None = None

    def matches(self, family: str, reason: Reason) -> bool:
        return (self.family in ("*", family) and reason.code is self.code
                and (self.field is None or reason.field == self.field)
                and (self.phrase is None or self.phrase in reason.message))

    def key(self) -> str:
        return f"{self.family}, {self.code.value}" + "".join(f", {x}" for x in (self.field, self.phrase) if x)


# A declaration of vLLM's family covers the quant kind but our selection rejected it; first match wins.
REJECTED: tuple[tuple[RejectedMatch, Explanation], ...] = (
    (RejectedMatch("triton", ReasonCode.SHAPE_UNALIGNED, "intermediate", "fp8_block's 128-element scale groups"),
     Explanation(
        "missing-capability",
        "vLLM refines the checkpoint's 128x128 FP8 blocks to the TP shard (64x64 at a per-rank intermediate of 192, "
        "32x32 at 96) and runs them on TritonExperts, which takes any block shape; our triton-fused-moe takes 128x128 "
        "blocks only, so we run another backend",
        "fused_moe/oracle/fp8.py L298 refine_fp8_moe_block_shape, L361-400 resolve_fp8_moe_weight_block_shape "
        "(0.34.0); executed: docs/parity/vllm-0.34.0.json (qwen3-30b-a3b-fp8 TP4 / TP8: "
        "weight key QuantKey(f8e4m3fn,scale(f32,static,GroupShape(row=64, col=64)),symmetric))")),
    (RejectedMatch("*", ReasonCode.SHAPE_UNALIGNED, "intermediate", "scale groups"), Explanation(
        "ours-better-capability",
        "the per-rank intermediate splits the checkpoint's weight-scale groups; vLLM's backend declares no "
        "intermediate padding, so it cannot hold whole groups on a rank, and vLLM itself checks no alignment when it "
        "selects while its loader shards w2's scale columns by integer division (I/16 // TP), so per-rank scales do "
        "not line up with the weights [inferred from code, not run; tests/test_tp_scale_groups.py shows the error]; "
        "we pick a backend that pads each rank to whole groups (or none, with the EP hint)",
        "quantization/modelopt.py L975-987 (w2_weight_scale I_pp // group_size); fused_moe/routed_experts.py L943-967, L580-603 "
        "(_load_w2: loaded_per_rank = cols // tp); quantization/utils/flashinfer_fp4_moe.py L400-425 (pad after load)")),
    (RejectedMatch("flashinfer-trtllm", ReasonCode.FEATURE_UNSUPPORTED, "apply_router_weight_on_input"), Explanation(
        "missing-capability",
        "vLLM runs Llama 4 routing inside the monolithic TRT-LLM-gen kernel (RoutingMethodType.Llama4), where "
        "FlashInfer applies the router weight as token scales on the input; our declaration covers only the "
        "pre-routed API, which has no weight-on-input",
        "fused_moe/experts/trtllm_bf16_moe.py L257-271; flashinfer 0.7.2.post1 csrc/trtllm_fused_moe_kernel_launcher.cu "
        "L3667-3677, L3968-3970")),
    (RejectedMatch("marlin", ReasonCode.SHAPE_UNALIGNED, "intermediate", "multiple of 64"), Explanation(
        "missing-capability", "vLLM zero-pads Marlin's intermediate to lcm(64, group) at weight prep; our declaration "
        "rejects the unpadded size", "quantization/utils/marlin_utils.py L335-387")),
)

# (vLLM kernel family, our kernel family or backend id) -> why our pick beats vLLM's (measured or capability).
PREFERRED: dict[tuple[str, str], Explanation] = {
    ("oai-triton-kernels", "humming"): Explanation(
        "ours-better-measured",
        "on the H100 at the gpt-oss-120b layer, Humming (vLLM's own Hopper MXFP4 fallback) beats vLLM's default, "
        "OpenAI's triton_kernels, at every decode T from CUDA graphs (T=1 73 vs 133 us, T=64 600 vs 679 us) and at "
        "T=512 eager (932 vs 1190 us); triton_kernels wins only T=4096 (2294 vs 2702 us); the same weights and run",
        "benchmarks/results/decode-h100/decode_bench.json (issue 21, 2026-12-07, NVIDIA H100 80GB HBM3)"),
}


@dataclass(frozen=True)
class ParityRow:
    model: str
    device: str
    parallel: str
    layers: str
    layer: LayerSpec
    ours: str | None  # backend id; None: no backend (exit 3)
    ours_family: str | None
    vllm: EngineAnswer | None  # executed; None: vLLM built no such layer
    model_answer: EngineAnswer | None  # the hand model's answer for the same layer
    agree: bool
    explanation: Explanation | None
    via: str = ""  # which table (and key) explained it

    @property
    def explained(self) -> bool:
        return self.agree or self.explanation is not None

    @property
    def moe_answer(self) -> bool:
        """vLLM answered about the MoE layer itself (a pick, or its oracle refusing it)."""
        return self.vllm is not None and (self.vllm.error is None or "MoE backend supports" in self.vllm.error)

    @property
    def model_agrees(self) -> bool | None:
        """The hand model gives vLLM's executed pick (None: vLLM's answer is not about the MoE layer)."""
        if not self.moe_answer or self.vllm is None:
            return None
        hand = self.model_answer
        if hand is None:
            return False
        return (hand.kernel, hand.error is not None) == (self.vllm.kernel, self.vllm.error is not None)


def _family(decl: BackendCapability) -> str | None:
    return family_of_declaration(decl)


def explain(layer: LayerSpec, vllm: EngineAnswer, ours: str | None, rejections: tuple[Rejection, ...],
            declarations: tuple[BackendCapability, ...]) -> tuple[Explanation | None, str]:
    """The explanation of a differing row from the tables and the key that gave it; without one
    (None, what we know about vLLM's family among our declarations)."""
    if vllm.error is not None:
        if "MoE backend supports" in vllm.error:
            return Explanation("vllm-none", f"vLLM {vllm.version} raises: {vllm.error}",
                               f"executed (docs/parity/vllm-{vllm.version}.json)"), f"vllm-none: {vllm.error}"
        return Explanation("vllm-refuses-model", f"vLLM {vllm.version} refuses the model before this MoE layer: "
                           f"{vllm.error}", f"executed (docs/parity/vllm-{vllm.version}.json)"), (
            f"vllm-refuses-model: {vllm.error}")
    family = vllm.family
    same = [d for d in declarations if _family(d) == family and d.quant_support(layer.quant.kind)]
    if not same:
        for key in ((family or "", layer.quant.family.value), (family or "", "*")):
            if key in MISSING_BACKEND:
                return MISSING_BACKEND[key], f"MISSING_BACKEND{key}"
        return None, f"no declaration of family {family} covers {layer.quant.kind.value}; no MISSING_BACKEND entry"
    rejected = {r.backend: r for r in rejections}
    for match, explanation in REJECTED:
        for decl in same:
            if decl.id in rejected and any(match.matches(family or "", r) for r in rejected[decl.id].reasons):
                return explanation, f"REJECTED[{match.key()}]"
    ours_family = next((_family(d) for d in declarations if d.id == ours), None) if ours else None
    for key in ((family or "", ours or "none"), (family or "", ours_family or "")):
        if key in PREFERRED:
            return PREFERRED[key], f"PREFERRED{key}"
    # Unexplained: say what we know, so the fix (a table entry or a selection change) is obvious.
    status = [f"{d.id} rejected ({', '.join(sorted(c.value for c in rejected[d.id].codes()))})" if d.id in rejected
              else f"{d.id} eligible but ranked after {ours}" for d in same]
    return None, "; ".join(status) + "; no REJECTED / PREFERRED entry"


def parity_rows(record: dict[str, Any], registry: Registry | None = None) -> list[ParityRow]:
    """Every layer group of every deployment in the executed ``record`` (:func:`.vllm.record.load`)."""
    registry = registry or Registry(entry_points=False)
    declarations = registry.declarations()
    family = {d.id: _family(d) for d in declarations}
    rows = []
    for deployment, result in vllm_record.results(record):
        device = get_device(deployment.device)
        plan = plan_model(deployment.path(), device, deployment.parallel, registry=registry)
        executed = answers_for_result(plan, result)
        hand = engine_answers(plan, "vllm", source="model")
        for group, vllm, model_answer in zip(plan.groups(), executed, hand):
            ours = group.selection.backend if group.selection else None
            rejections = group.selection.rejections if group.selection else group.rejections
            ours_family = family.get(ours) if ours else None
            if vllm is None:
                agree = False
            elif vllm.error is not None:
                agree = ours is None
            else:
                agree = ours_family is not None and ours_family == vllm.family
            explanation, via = (None, "") if agree or vllm is None else explain(group.layer, vllm, ours, rejections,
                                                                                declarations)
            if vllm is None:
                via = "vLLM built no MoE layer for this group"
            rows.append(ParityRow(deployment.model, deployment.device, deployment.parallel.label(), group.label(),
                                  group.layer, ours, ours_family, vllm, model_answer, agree, explanation, via))
    return rows


# --- Markdown --------------------------------------------------------------------------------------


def _vllm_cell(answer: EngineAnswer | None) -> str:
    if answer is None:
        return "no MoE layer built"
    if answer.error is not None:
        return "refuses"
    return f"`{answer.flag or '-'}` {answer.kernel}"


def _reason_ids(rows: list[ParityRow]) -> dict[str, str]:
    """R1, R2, ... per table key, in order of first appearance."""
    ids: dict[str, str] = {}
    for r in rows:
        if not r.agree and r.explanation is not None and r.via not in ids:
            ids[r.via] = f"R{len(ids) + 1}"
    return ids


def _reason_cell(row: ParityRow, ids: dict[str, str]) -> str:
    if row.agree:
        return ""
    if row.explanation is None:
        return f"**UNEXPLAINED**: {row.via}"
    return f"{ids[row.via]} {row.explanation.kind}"


def _model_cell(row: ParityRow) -> str:
    agrees = row.model_agrees
    return "-" if agrees is None else "=" if agrees else f"**{row.model_answer.kernel if row.model_answer else 'none'}**"


def _picks(record: dict[str, Any]) -> dict[str, list[tuple[str | None, str | None, str | None]]]:
    """Deployment id -> (backend, experts class, error) per run of layers."""
    out = {}
    for deployment, result in vllm_record.results(record):
        runs: list[tuple[str | None, str | None, str | None]] = []
        for layer in result.layers:
            pick = (layer.backend, layer.experts_class, layer.error)
            if not runs or runs[-1] != pick:
                runs.append(pick)
        out[deployment.id] = runs or [(None, None, result.error)]
    return out


def _versions_section(record: dict[str, Any], previous: dict[str, Any]) -> list[str]:
    now, then = _picks(record), _picks(previous)
    shared = [d for d in now if d in then]
    same = [d for d in shared if [p[:2] for p in now[d]] == [p[:2] for p in then[d]]]
    out = ["", f"## vLLM {previous['vllm']}, executed", "",
           f"The same deployments built by vLLM {previous['vllm']} (record `docs/parity/vllm-{previous['vllm']}.json`; "
           f"software: {', '.join(f'{k} {v}' for k, v in sorted(previous['environment'].items()))}). Its oracles have "
           "no `try_backend`: the plugin hooks the generic gate `FusedMoEExperts.is_supported_config` instead, which "
           "gives each class's verdict but not the backend name, and misses rejections a class decides before that "
           f"gate. **{len(same)} of {len(shared)} deployments pick the same kernels as {record['vllm']}.**", ""]
    differ = [d for d in shared if d not in same]
    unbuilt = [d for d in differ if any(c is None for _, c, _ in then[d] + now[d])]
    if differ:
        out += [f"| deployment | vLLM {previous['vllm']} | vLLM {record['vllm']} |", "|---|---|---|"]
        for d in differ:
            cell = {v: "; ".join(f"{b} ({c})" if c else f"not built: {(e or '')[:160]}" for b, c, e in picks[d])
                    for v, picks in (("then", then), ("now", now))}
            out.append(f"| {d} | {cell['then']} | {cell['now']} |")
    if unbuilt:
        out += ["", f"{len(unbuilt)} of these differ because one version did not build the model on this machine: an "
                "error before any MoE layer is an environment limit of the CPU run (the error is vLLM's or its "
                "dependencies', as quoted), not a kernel decision of vLLM's."]
    return out


def render_markdown(rows: list[ParityRow], record: dict[str, Any], previous: dict[str, Any] | None = None) -> str:
    from .vllm.model import VLLM_VERSION

    version = record["vllm"]
    agree = sum(r.agree for r in rows)
    unexplained = [r for r in rows if not r.explained]
    kinds: dict[str, int] = {}
    for r in rows:
        if not r.agree and r.explanation:
            kinds[r.explanation.kind] = kinds.get(r.explanation.kind, 0) + 1
    hand = [r for r in rows if r.model_agrees is not None]
    env = ", ".join(f"{k} {v}" for k, v in sorted(record["environment"].items()))
    out = [
        "# Parity with vLLM's own MoE backend choice, executed",
        "",
        "Generated by `python3 scripts/parity_vllm.py` from `docs/parity/vllm-{v}.json` (checked by "
        "`tests/test_parity_vllm.py`); do not edit. `python3 scripts/parity_vllm.py --execute --python "
        "VENV/bin/python` re-runs vLLM (see `scripts/engine_tests.sh`).".format(v=version),
        "",
        f"For each deployment, vLLM {version}'s own code built the model (model class, layer code, quant "
        "methods, oracles) with `--moe-backend auto` as if on the target GPU, and `moe_registry/engines/vllm/observe.py` "
        "recorded every MoE layer's candidates, vLLM's rejection reasons and its pick. Ours is `plan_model` with the "
        "built-in declarations, per layer group. A row agrees when our backend's `engines.vllm` names the kernel "
        "family vLLM ran. Reasons come from the tables in `moe_registry/engines/parity.py`.",
        "",
        f"**{len(rows)} rows: {agree} agree, {len(rows) - agree - len(unexplained)} differ with a reason "
        f"({', '.join(f'{v} {k}' for k, v in sorted(kinds.items())) or 'none'}), {len(unexplained)} unexplained.** "
        f"The hand model (`engines/vllm/model.py`, vLLM {VLLM_VERSION}) gives vLLM's executed pick on "
        f"{sum(bool(r.model_agrees) for r in hand)} of the {len(hand)} rows where vLLM answered about the MoE layer.",
        "",
        f"Software: {env}. What was faked to run vLLM here (each: why, and why it cannot move the MoE choice, in "
        "`moe_registry/engines/vllm/fakes.py`):",
        "",
        *[f"- {f}" for f in record["fakes"]],
        "",
        "| model | device | parallel | layers | quant | ours | vLLM (`--moe-backend`: BACKEND (experts class)) | agree "
        "| reason | hand model |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ids = _reason_ids(rows)
    for r in rows:
        out.append(f"| {r.model} | {r.device} | {r.parallel} | {r.layers} | {r.layer.quant.label()} "
                   f"{r.layer.activation.value} | {r.ours or 'none'} | {_vllm_cell(r.vllm)} | "
                   f"{'yes' if r.agree else 'no'} | {_reason_cell(r, ids)} | {_model_cell(r)} |")
    out += ["", "Hand model: `=` gives vLLM's executed pick, `-` vLLM's answer is not about the MoE layer, **bold** "
            "the hand model's different answer (`tests/test_parity_vllm.py` fails on it).", "",
            "## Reasons", "",
            "Kinds: `vllm-none` / `vllm-refuses-model` (vLLM itself raises, executed), `missing-backend` (we declare no "
            "such kernel for this quant), `missing-capability` (we declare it but lack what vLLM does here), "
            "`ours-better-measured` / `ours-better-capability` (a committed benchmark or a capability vLLM lacks). "
            "**UNEXPLAINED** rows need a table entry in `moe_registry/engines/parity.py` or a selection fix; the test "
            "fails on them.", "",
            "| id | table key | kind | reason | evidence |", "|---|---|---|---|---|"]
    by_via = {r.via: r.explanation for r in rows if not r.agree and r.explanation is not None}
    for via, rid in ids.items():
        e = by_via[via]
        out.append(f"| {rid} | `{via}` | {e.kind} | {e.text} | {e.evidence} |")
    out += ["", "## Why vLLM picks what it picks", "",
            "Each distinct answer above, with every candidate vLLM's oracle tried before its pick and vLLM's own "
            "reason (`MoEKernelOracle.try_backend`; vLLM itself logs these at DEBUG only).", ""]
    seen: dict[tuple[Any, ...], list[str]] = {}
    answers: dict[tuple[Any, ...], EngineAnswer] = {}
    for r in rows:
        if r.vllm is None:
            continue
        key = (r.vllm.kernel, r.vllm.error, tuple((x.candidate, x.reason) for x in r.vllm.rejected))
        seen.setdefault(key, []).append(f"{r.model} {r.device} {r.parallel}")
        answers[key] = r.vllm
    for key, users in seen.items():
        a = answers[key]
        title = a.kernel or f"refuses: {a.error}"
        out += [f"### {title} ({len(users)} row{'' if len(users) == 1 else 's'})", "",
                f"Rows: {'; '.join(sorted(set(users)))}.", ""]
        out += [f"- rejected: `{x.candidate}`: {x.reason}" for x in a.rejected] or ["- first candidate accepted"]
        out.append("")
    if previous is not None:
        out += _versions_section(record, previous)
    return "\n".join(out).rstrip() + "\n"
