"""Row-by-row parity of our choice with SGLang 0.5.23's default MoE runner (docs/parity-sglang.md),
from a committed record of executed SGLang (``docs/verification/sglang-0.5.23-executed.json``,
written by ``scripts/parity_sglang.py --execute`` where SGLang is installed).

A row is one layer group of one preset on one device and layout. It agrees when our backend runs
the kernel family SGLang's runner runs (:func:`.sglang.names.kernel_family`; our family is the one
our declaration's vLLM name has, :data:`.vllm.names.NAME_FAMILY`, the shared vocabulary). A
differing row is explained only from the keyed tables below, else it is UNEXPLAINED and
``tests/test_parity_sglang.py`` fails. The record also holds the branch probe: each candidate
runner forced with ``--moe-runner-backend`` on one preset per quant kind, which is the evidence
that a name in our declarations is one SGLang has a branch for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..planner import list_presets, plan_model
from ..registry import Registry
from ..schemas.device import get_device
from ..schemas.layer import LayerSpec, ParallelConfig
from ..schemas.selection import ReasonCode, Rejection
from .parity import MISSING_BACKEND, Explanation
from .sglang.names import SGLANG_VERSION, kernel_family
from .vllm.names import family_of_declaration

RECORD = Path(__file__).resolve().parents[2] / "docs" / "verification" / f"sglang-{SGLANG_VERSION}-executed.json"
DEVICES = ("h100", "b200")
LAYOUTS: dict[str, tuple[ParallelConfig, ...]] = {
    "gemma-4-26b-a4b-nvfp4": (ParallelConfig(tp=2), ParallelConfig(tp=4), ParallelConfig(tp=8)),
    "deepseek-v3": (ParallelConfig(tp=8), ParallelConfig(tp=8, ep=8)),
    "qwen3-30b-a3b": (ParallelConfig(tp=8, ep=2),),
    "kimi-k2.5": (ParallelConfig(tp=8, ep=8),),
}
# One preset per quant kind for the branch probe, and the runner names probed on it.
PROBE_PRESETS = {"bf16": "qwen3-30b-a3b", "fp8_block": "deepseek-v3", "nvfp4": "gemma-4-26b-a4b-nvfp4",
                 "mxfp4": "gpt-oss-20b", "int4_w4a16": "qwen3-30b-a3b-gptq-int4", "int4_w4a16_ct": "kimi-k2.5"}
PROBE_RUNNERS = ("flashinfer_trtllm", "flashinfer_mxfp4", "flashinfer_cutlass", "flashinfer_cutedsl", "marlin", "humming",
                 "triton", "triton_kernel", "deep_gemm", "cutlass")


def layouts() -> list[tuple[str, ParallelConfig]]:
    out = [(name, ParallelConfig()) for name in list_presets()]
    return out + [(name, p) for name, ps in LAYOUTS.items() for p in ps]


def case_key(kind: str, device: str, model: str, parallel: ParallelConfig, runner: str = "auto") -> str:
    return f"{kind} {device} {model} {parallel.label()} {runner}"


# --- reasons -----------------------------------------------------------------------------------

_SG = f"sglang {SGLANG_VERSION} srt/"
_V = "vLLM 0.33.0 model_executor/layers/fused_moe/"
# (SGLang kernel family, quant family or "*") -> we declare no such kernel for the layer's quant kind.
SGLANG_MISSING: dict[tuple[str, str], Explanation] = {}

# (SGLang kernel family, our backend id) -> why our pick differs; only a cited or measured reason goes here.
SGLANG_DIFFERS: dict[tuple[str, str], Explanation] = {
    ("oai-triton-kernels", "humming"): Explanation(
        "ours-better-measured",
        "SGLang runs OpenAI's triton_kernels MXFP4 MoE (`triton_kernel`, our `oai-triton-kernels`) for gpt-oss on Hopper "
        "at EP1; we rank Humming first for MXFP4 on SM90 because it measured faster at decode and up to T=512 on the "
        "gpt-oss-120b layer (graphed T=1: humming 72.8 us, triton_kernels 133.1 us; T=4096: 2702 vs 2294 us)",
        "benchmarks/results/decode-h100/decode_bench.json (NVIDIA H100 80GB HBM3, 2026-12-07); "
        f"{_SG}arg_groups/model_overrides/gpt_oss.py L102-120"),
    ("marlin", "humming"): Explanation(
        "engine-missing-backend",
        "SGLang has no Humming path for ModelOpt NvFP4, GPTQ or compressed-tensors int4 MoE layers (its humming runner "
        "serves `--quantization humming` and FP4 experts of FP8 checkpoints), so on SM80-SM9x it runs Marlin; we rank "
        "Humming ahead of Marlin on SM90 as vLLM 0.33 does (docs/parity-vllm.md agrees on these rows)",
        f"{_SG}layers/quantization/modelopt_quant.py L3117-3119 (auto: marlin on SM80-SM9x), gptq/gptq.py L623, "
        f"fp8.py L452-456; {_V}quantization/utils/humming/priority.py L10-48"),
    ("triton", "flashinfer-cutlass"): Explanation(
        "follows-vllm",
        "SGLang runs Triton here (its unquantized method unless a model override picks another runner, Gemma 4 bf16 has "
        "none on SM100; its Fp8MoEMethod without DeepGEMM's all-to-all); we put FlashInfer CUTLASS first where vLLM "
        "does: bf16 outside SM9x, and block FP8 on SM90 with expert parallelism (vLLM's FP8 oracle moves it to the "
        "front there); docs/parity-vllm.md agrees on these rows; no committed benchmark compares the two here",
        f"{_SG}layers/quantization/unquant.py L1193, fp8.py L2941-2961; arg_groups/model_overrides/gemma4.py L45-52 "
        f"(modelopt_fp4 only); {_V}oracle/unquantized.py L76-80, oracle/fp8.py L122-130"),
    ("triton", "trtllm-bf16"): Explanation(
        "follows-vllm",
        "SGLang's unquantized method runs Triton unless a model override picks flashinfer_trtllm (Qwen3-MoE, GLM-4 MoE, "
        "Nemotron-H, ... on SM100; Mixtral has none); we put TRT-LLM-gen bf16 first on SM100 as vLLM 0.33 does "
        "(docs/parity-vllm.md agrees on this row)",
        f"{_SG}layers/quantization/unquant.py L1193; arg_groups/model_overrides/qwen3_moe.py L41-90; "
        f"{_V}oracle/unquantized.py L55-96"),
    ("flashinfer-trtllm", "marlin"): Explanation(
        "follows-vllm",
        "SGLang runs the TRT-LLM-gen MXINT4 kernel on SM100 for Kimi K2 / K2.5 thinking int4 (a model-and-quant "
        "override); vLLM 0.33 uses it only with VLLM_USE_FLASHINFER_MOE_INT4=1 (default 0) and otherwise runs Marlin, "
        "and our declared int4 order (marlin 100 ahead of trtllm-mxint4 50) follows it (docs/parity-vllm.md agrees); "
        "no committed benchmark compares the two",
        f"{_SG}arg_groups/overrides.py L810-831; {_V}experts/trtllm_mxint4_moe.py L45-56, "
        "quantization/utils/flashinfer_mxint4_moe.py L24-31"),
    ("flashinfer-cutlass", "triton-fused-moe"): Explanation(
        "follows-vllm",
        "SGLang's Nemotron-H override runs FlashInfer CUTLASS for bf16 below SM100; vLLM 0.33 moves FlashInfer's "
        "unquantized kernels behind Triton on SM90 ('slower than Triton'), and so do we (docs/parity-vllm.md agrees)",
        f"{_SG}arg_groups/model_overrides/nemotron_h.py L120-121; {_V}oracle/unquantized.py L76-80"),
}

# A declaration of SGLang's family covers the layer but our selection rejected it: (reason code) -> why.
SGLANG_REJECTED: dict[ReasonCode, Explanation] = {
    ReasonCode.MEMORY_EXCEEDED: Explanation(
        "ours-better-capability",
        "the model's expert weights do not fit this layout with SGLang's runner (our memory rule, docs/cli-json.md "
        "'Memory fit'), so the registry rejects it; SGLang resolves its runner from the configuration alone, before "
        "any weight is loaded (its model overrides and quant methods read no memory budget). A layout that fits agrees",
        f"{_SG}arg_groups/overrides.py L810-831 (the Kimi K2 thinking int4 runner, chosen by quantization and "
        "device); moe_registry/memory.py"),
}

# SGLang refuses the configuration or the layer for a reason outside this CPU run: (phrase of its error) -> why.
SGLANG_REFUSES: dict[str, Explanation] = {
    "attn_temperature_tuning": Explanation(
        "engine-none",
        "transformers 5.19.0 (SGLang 0.5.23's pin) validates Llama4TextConfig strictly and refuses the checkpoint's "
        "`attn_temperature_tuning: 4` (declared `bool`), so SGLang cannot read this config before any MoE choice",
        "transformers 5.19.0 models/llama4/configuration_llama4.py L171; the preset's text_config"),
}


@dataclass(frozen=True)
class Row:
    model: str
    device: str
    parallel: str
    layers: str
    layer: LayerSpec
    ours: str | None
    ours_family: str | None
    sglang: str | None  # runner
    method: str | None
    sglang_family: str | None
    error: str | None
    agree: bool
    explanation: Explanation | None
    via: str = ""

    @property
    def explained(self) -> bool:
        return self.agree or self.explanation is not None


def load_record(path: Path = RECORD) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _explain(row_family: str | None, layer: LayerSpec, ours: str | None, error: str | None,
             families: dict[str, str | None], quant_kinds: dict[str, set[str]],
             rejections: tuple[Rejection, ...] = ()) -> tuple[Explanation | None, str]:
    if error:
        for phrase, explanation in SGLANG_REFUSES.items():
            if phrase in error:
                return explanation, f"SGLANG_REFUSES[{phrase}]"
        return None, f"SGLang refuses the layer ({error}); no SGLANG_REFUSES entry"
    if row_family is None:
        return None, "SGLang's runner has no family in names.py"
    if (row_family, ours or "none") in SGLANG_DIFFERS:
        return SGLANG_DIFFERS[(row_family, ours or "none")], f"SGLANG_DIFFERS{(row_family, ours or 'none')}"
    same = [b for b, f in families.items() if f == row_family and layer.quant.kind.value in quant_kinds[b]]
    if not same:
        for key in ((row_family, layer.quant.family.value), (row_family, "*")):
            if key in SGLANG_MISSING:
                return SGLANG_MISSING[key], f"SGLANG_MISSING{key}"
            if key in MISSING_BACKEND:
                return MISSING_BACKEND[key], f"MISSING_BACKEND{key}"
        return None, f"no declaration of family {row_family} covers {layer.quant.kind.value}"
    rejected = {r.backend: r for r in rejections}
    for code, explanation in SGLANG_REJECTED.items():
        if any(b in rejected and code in rejected[b].codes() for b in same):
            return explanation, f"SGLANG_REJECTED[{code.value}]"
    return None, f"{', '.join(same)} declared for {row_family} but {ours} chosen; no table entry"


def parity_rows(record: dict[str, Any], registry: Registry | None = None) -> list[Row]:
    registry = registry or Registry(entry_points=False)
    declarations = registry.declarations()
    families = {d.id: family_of_declaration(d) for d in declarations}
    quant_kinds = {d.id: {q.kind.value for q in d.quant} for d in declarations}
    answers = record["cases"]
    rows = []
    for name, parallel in layouts():
        for dev in DEVICES:
            device = get_device(dev)
            plan = plan_model(name, device, parallel, registry=registry)
            outcome = answers[case_key("model", dev, name, parallel)]
            by_index = {x["index"]: x for x in outcome["layers"]}
            for group in plan.groups():
                got = by_index.get(group.first, {})
                runner, method = got.get("runner"), got.get("method")
                error = outcome["error"] or got.get("error")
                fam = kernel_family(runner, method, device.sm) if runner else None
                ours = group.selection.backend if group.selection else None
                ours_family = families.get(ours) if ours else None
                agree = (ours is None and runner is None) or (fam is not None and ours_family == fam)
                rejections = group.selection.rejections if group.selection else group.rejections
                explanation, via = (None, "") if agree else _explain(fam, group.layer, ours, error, families, quant_kinds,
                                                                     rejections)
                rows.append(Row(name, dev, parallel.label(), group.label(), group.layer, ours, ours_family,
                                runner, method, fam, error, agree, explanation, via))
    return rows


def render_markdown(rows: list[Row], record: dict[str, Any]) -> str:
    agree = sum(r.agree for r in rows)
    unexplained = [r for r in rows if not r.explained]
    out = [
        "# Parity with SGLang's default MoE runner",
        "",
        "Generated by `python3 scripts/parity_sglang.py` from the executed record "
        f"`docs/verification/{RECORD.name}` (checked by `tests/test_parity_sglang.py`); do not edit.",
        "",
        f"Our choice (`plan_model`, built-in declarations, per layer group) against what SGLang {SGLANG_VERSION} "
        "itself resolves with `--moe-runner-backend auto` (the default): its server-argument resolution (model "
        "overrides, post-process passes), then each MoE layer built by the model's own MoE block, whose quant method "
        "picks the runner (`FusedMoE.runner_backend`). Nothing of SGLang's choice is restated: it was executed "
        f"({record['executed']}). A row agrees when our backend runs the kernel family SGLang's runner runs.",
        "",
        f"**{len(rows)} rows: {agree} agree, {len(rows) - agree - len(unexplained)} differ with a reason, "
        f"{len(unexplained)} unexplained.**",
        "",
        "What was faked or assumed to run SGLang on a CPU:",
        "",
        *[f"- {a}" for a in record["assumptions"] + record["fakes"]],
        "",
        "| model | device | parallel | layers | quant | ours | SGLang runner (quant method) | agree | reason |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ids: dict[str, str] = {}
    for r in rows:
        if not r.agree and r.explanation is not None and r.via not in ids:
            ids[r.via] = f"R{len(ids) + 1}"
    for r in rows:
        sg = f"`{r.sglang}` ({r.method})" if r.sglang else f"none: {r.error}"
        reason = "" if r.agree else (f"{ids[r.via]} {r.explanation.kind}" if r.explanation else f"**UNEXPLAINED**: {r.via}")
        out.append(f"| {r.model} | {r.device} | {r.parallel} | {r.layers} | {r.layer.quant.label()} {r.layer.activation.value} "
                   f"| {r.ours or 'none'} | {sg} | {'yes' if r.agree else 'no'} | {reason} |")
    out += ["", "## Reasons", "", "| id | table key | kind | reason | evidence |", "|---|---|---|---|---|"]
    by_via = {r.via: r.explanation for r in rows if not r.agree and r.explanation is not None}
    for via, rid in ids.items():
        e = by_via[via]
        out.append(f"| {rid} | `{via}` | {e.kind} | {e.text} | {e.evidence} |")
    return "\n".join(out + _probe_markdown(record)).rstrip() + "\n"


def _probe_markdown(record: dict[str, Any]) -> list[str]:
    """The branch probe: each runner name forced on one preset per quant kind, what SGLang did with it."""
    out = ["", "## Runner names forced per quant kind (branch probe)", "",
           "`--moe-runner-backend NAME` on one preset per quant kind, first MoE layer. `built`: SGLang built the layer with "
           "that runner (necessary for a branch, not sufficient: sglang#36569 shows names accepted at build that fail at "
           "the first forward, so `names.BRANCHES` also cites the code); `-> X`: it quietly ran X; else its error. "
           "Our declarations name only runners in `names.BRANCHES` (`tests/test_sglang_names.py`).", "",
           "| quant kind (preset) | runner | H100 | B200 |", "|---|---|---|---|"]

    def cell(case: dict[str, Any] | None, runner: str) -> str:
        if case is None:
            return "-"
        layer = case["layers"][0] if case["layers"] else {}
        error = case["error"] or layer.get("error")
        if error:
            return f"refused: {error.split(' (at ')[0][:90]}"
        return "built" if layer.get("runner") == runner else f"-> {layer.get('runner')}"

    for kind, preset in PROBE_PRESETS.items():
        for runner in PROBE_RUNNERS:
            cells = [cell(record["cases"].get(case_key(f"probe-{kind}", dev, preset, ParallelConfig(), runner)), runner)
                     for dev in DEVICES]
            out.append(f"| {kind} ({preset}) | `{runner}` | {' | '.join(cells)} |")
    return out
