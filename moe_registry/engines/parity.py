"""Row-by-row parity of our choice with vLLM 0.33.0's default choice (docs/parity-vllm.md).

A row is one layer group of one bundled preset on one device and parallel layout. It agrees when
our chosen backend runs the same kernel family as vLLM's (our declaration's ``engines.vllm`` key,
through :data:`~moe_registry.engines.vllm_oracle.ENGINE_FAMILY`). A row that differs is explained
only from the tables below, never by per-row prose, so rows added later are covered or flagged:

1. :data:`MISSING_BACKEND`, keyed by (vLLM kernel family, quant family or ``"*"``): used when none
   of our declarations has that family *and* declares the layer's quant kind.
2. :data:`REJECTED`, matched on (vLLM kernel family, our reason code, field, rule phrase): a
   declaration of vLLM's family covers the quant kind but selection rejected it for this layer.
3. :data:`PREFERRED`, keyed by (vLLM kernel family, our kernel family or backend id): a declaration
   of vLLM's family was eligible but our policy ranked another first; only measured evidence (a
   committed benchmark) or a capability vLLM lacks may go here.
4. vLLM has no backend at all for the layer (it raises): explained by vLLM's own trace.
Anything else is "UNEXPLAINED" in the document and fails ``tests/test_parity_vllm.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from ..models import preset_text
from ..planner import list_presets, plan_model
from ..registry import Registry
from ..schemas.capability import BackendCapability
from ..schemas.device import get_device
from ..schemas.layer import LayerSpec, ParallelConfig
from ..schemas.selection import Reason, ReasonCode, Rejection
from .vllm_oracle import ASSUMPTIONS, VLLM_VERSION, VllmChoice, family_of_declaration, vllm_default

DEVICES = ("h100", "b200")
TP_VARIANTS = {"gemma-4-26b-a4b-nvfp4": (2, 4, 8), "deepseek-v3": (2, 4, 8)}

Kind = Literal["missing-backend", "missing-capability", "ours-better-measured", "ours-better-capability", "vllm-none",
               "engine-none", "engine-missing-backend", "follows-vllm"]


@dataclass(frozen=True)
class Explanation:
    kind: Kind
    text: str
    evidence: str  # an upstream source, an issue item, or a committed benchmark file


_TRTLLM = "issue 8 item 2 (TRT-LLM-gen family)"
_CONCURRENT = "issue 8 (humming / triton-fused-moe backends, in progress)"

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
        "rejects the unpadded size (issue 8 item 3)", "quantization/utils/marlin_utils.py L335-387")),
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
    vllm: VllmChoice
    agree: bool
    explanation: Explanation | None
    via: str = ""  # which table (and key) explained it

    @property
    def explained(self) -> bool:
        return self.agree or self.explanation is not None


def _checkpoint(name: str) -> tuple[str | None, str | None]:
    """(quant_method, model_type) of a preset, as vLLM would read them from the checkpoint."""
    data = json.loads(preset_text(name) or "{}")
    text = data.get("text_config") or {}
    qc = data.get("quantization_config") or text.get("quantization_config") or {}
    method = "modelopt" if data.get("_hf_quant_config") else qc.get("quant_method")
    return method, text.get("model_type") or data.get("model_type")


def _family(decl: BackendCapability) -> str | None:
    return family_of_declaration(decl)


def explain(layer: LayerSpec, vllm: VllmChoice, ours: str | None, rejections: tuple[Rejection, ...],
            declarations: tuple[BackendCapability, ...]) -> tuple[Explanation | None, str]:
    """The explanation of a differing row from the tables and the key that gave it; without one
    (None, what we know about vLLM's family among our declarations)."""
    if vllm.family is None:
        last = vllm.losses[-1] if vllm.losses else None
        return Explanation("vllm-none", f"vLLM 0.33 raises 'No {vllm.oracle} MoE backend supports the deployment "
                           "configuration'" + (f" (last: {last.backend}: {last.rule})" if last else ""),
                           vllm.source), "vllm-none"
    same = [d for d in declarations if _family(d) == vllm.family and d.quant_support(layer.quant.kind)]
    if not same:
        for key in ((vllm.family, layer.quant.family.value), (vllm.family, "*")):
            if key in MISSING_BACKEND:
                return MISSING_BACKEND[key], f"MISSING_BACKEND{key}"
        return None, f"no declaration of family {vllm.family} covers {layer.quant.kind.value}; no MISSING_BACKEND entry"
    rejected = {r.backend: r for r in rejections}
    for match, explanation in REJECTED:
        for decl in same:
            if decl.id in rejected and any(match.matches(vllm.family, r) for r in rejected[decl.id].reasons):
                return explanation, f"REJECTED[{match.key()}]"
    ours_family = next((_family(d) for d in declarations if d.id == ours), None) if ours else None
    for key in ((vllm.family, ours or "none"), (vllm.family, ours_family or "")):
        if key in PREFERRED:
            return PREFERRED[key], f"PREFERRED{key}"
    # Unexplained: say what we know, so the fix (a table entry or a selection change) is obvious.
    status = [f"{d.id} rejected ({', '.join(sorted(c.value for c in rejected[d.id].codes()))})" if d.id in rejected
              else f"{d.id} eligible but ranked after {ours}" for d in same]
    return None, "; ".join(status) + "; no REJECTED / PREFERRED entry"


def parity_rows(registry: Registry | None = None) -> list[ParityRow]:
    registry = registry or Registry(entry_points=False)
    declarations = registry.declarations()
    family = {d.id: _family(d) for d in declarations}
    cases = [(name, ParallelConfig()) for name in list_presets()]
    cases += [(name, ParallelConfig(tp=tp)) for name, tps in TP_VARIANTS.items() for tp in tps]
    rows = []
    for name, parallel in cases:
        method, model_type = _checkpoint(name)
        for dev in DEVICES:
            device = get_device(dev)
            plan = plan_model(name, device, parallel, registry=registry)
            for group in plan.groups():
                ours = group.selection.backend if group.selection else None
                rejections = group.selection.rejections if group.selection else group.rejections
                vllm = vllm_default(group.layer, device, quant_method=method, model_type=model_type)
                ours_family = family.get(ours) if ours else None
                agree = (ours is None and vllm.backend is None) or (
                    ours_family is not None and ours_family == vllm.family)
                explanation, via = (None, "") if agree else explain(group.layer, vllm, ours, rejections, declarations)
                rows.append(ParityRow(name, dev, parallel.label(), group.label(), group.layer, ours, ours_family, vllm,
                                      agree, explanation, via))
    return rows


# --- Markdown --------------------------------------------------------------------------------------


def _vllm_cell(c: VllmChoice) -> str:
    if c.backend is None:
        return "none"
    return f"`{c.moe_backend or '-'}` {c.backend} ({c.experts_class})"


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


def render_markdown(rows: list[ParityRow]) -> str:
    agree = sum(r.agree for r in rows)
    unexplained = [r for r in rows if not r.explained]
    kinds: dict[str, int] = {}
    for r in rows:
        if not r.agree and r.explanation:
            kinds[r.explanation.kind] = kinds.get(r.explanation.kind, 0) + 1
    out = [
        "# Parity with vLLM's default MoE backend choice",
        "",
        "Generated by `python3 scripts/parity_vllm.py` (checked by `tests/test_parity_vllm.py`); do not edit.",
        "",
        f"Our choice (`plan_model`, built-in declarations, per layer group) against a model of vLLM {VLLM_VERSION}'s "
        "default (`--moe-backend auto`) choice, `moe_registry/engines/vllm_oracle.py`, which restates vLLM's oracles "
        "(`fused_moe/oracle/*.py`) and the experts classes' `is_supported_config` with their sources. "
        "A row agrees when our backend's `engines.vllm` names the same kernel family as vLLM's pick. "
        "Reasons come from the tables in `moe_registry/engines/parity.py`, keyed by vLLM kernel family.",
        "",
        f"**{len(rows)} rows: {agree} agree, {len(rows) - agree - len(unexplained)} differ with a reason "
        f"({', '.join(f'{v} {k}' for k, v in sorted(kinds.items())) or 'none'}), {len(unexplained)} unexplained.**",
        "",
        "vLLM model assumptions:",
        "",
        *[f"- {a}" for a in ASSUMPTIONS],
        "",
        "| model | device | parallel | layers | quant | ours | vLLM default | agree | reason |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ids = _reason_ids(rows)
    for r in rows:
        out.append(f"| {r.model} | {r.device} | {r.parallel} | {r.layers} | {r.layer.quant.label()} {r.layer.activation.value} "
                   f"| {r.ours or 'none'} | {_vllm_cell(r.vllm)} | "
                   f"{'yes' if r.agree else 'no'} | {_reason_cell(r, ids)} |")
    out += ["", "## Reasons", "",
            "Kinds: `missing-backend` (we declare no such kernel for this quant), `missing-capability` (we declare it "
            "but lack what vLLM does here), `ours-better-measured` / `ours-better-capability` (a committed benchmark "
            "or a capability vLLM lacks), `vllm-none` (vLLM has no backend for the layer). **UNEXPLAINED** rows need "
            "a table entry in `moe_registry/engines/parity.py` or a selection fix; the test fails on them.", "",
            "| id | table key | kind | reason | evidence |", "|---|---|---|---|---|"]
    by_via = {r.via: r.explanation for r in rows if not r.agree and r.explanation is not None}
    for via, rid in ids.items():
        e = by_via[via]
        out.append(f"| {rid} | `{via}` | {e.kind} | {e.text} | {e.evidence} |")
    out += ["", "## Why vLLM picks what it picks", "",
            "Each distinct walk of a vLLM oracle above: the priority order after vLLM's own moves, then every "
            "candidate tried before the winner with the first rule it failed (vLLM reports only the first).", ""]
    seen = set()
    for r in rows:
        c = r.vllm
        key = (c.oracle, c.backend, c.experts_class, c.order, c.losses)
        if key in seen:
            continue
        seen.add(key)
        users = sorted({f"{x.model} {x.device} {x.parallel}" for x in rows
                        if (x.vllm.oracle, x.vllm.backend, x.vllm.experts_class, x.vllm.order, x.vllm.losses) == key})
        out.append(f"### {c.oracle} -> {c.label()} ({len(users)} row{'' if len(users) == 1 else 's'})")
        out.append("")
        out.append(f"Rows: {'; '.join(users)}.")
        out.append("")
        out.append(f"- oracle: `{c.source}`")
        for m in c.moves:
            out.append(f"- move: {m.text} (`{m.source}`)")
        out.append(f"- order: {', '.join(c.order)}")
        for loss in c.losses:
            cls = f" {loss.experts_class}" if loss.experts_class else ""
            out.append(f"- lost: {loss.backend}{cls}: {loss.rule} (`{loss.source}`)")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
