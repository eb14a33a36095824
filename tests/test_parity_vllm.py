"""The hand model of vLLM's oracle (moe_registry/engines/vllm/model.py), docs/parity-vllm.md, and the
committed record of vLLM 0.34.0's own selection, executed (docs/parity/vllm-0.34.0.json).

Hand-model cases come from reading vLLM (paths relative to vllm/model_executor/layers/); each cites
the lines that decide it. The record holds the hand model to what vLLM's code actually picked.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moe_registry.engines.vllm import model as vo
from moe_registry.engines.vllm import names, record
from moe_registry.engines.answer import vllm_model_answer
from moe_registry.engines.parity import (
    MISSING_BACKEND,
    PREFERRED,
    REJECTED,
    explain,
    parity_rows,
    render_markdown,
)
from moe_registry.registry import Registry
from moe_registry.schemas.capability import EngineNames
from moe_registry.schemas.device import get_device
from moe_registry.schemas.layer import LayerSpec, RoutingMethod
from moe_registry.schemas.quant import QuantKind
from moe_registry.schemas.selection import Reason, ReasonCode, Rejection

from _factories import make_layer

ROOT = Path(__file__).resolve().parents[1]


# The shared layer factory at a realistic size (128 experts, top-8, H=4096, I=1536) with renormalised
# softmax routing, as vLLM's oracle cases assume unless a case says otherwise.
layer = functools.partial(make_layer, E=128, k=8, H=4096, I=1536, routing=RoutingMethod.SOFTMAX_TOPK_RENORM)


def pick(spec: LayerSpec, device: str, **kw) -> tuple[str | None, str | None]:
    c = vo.vllm_default(spec, get_device(device), **kw)
    return c.backend, c.experts_class


# --- The oracle model, case by case ---------------------------------------------------------------

CASES = [
    # Unquantized. oracle/unquantized.py L69-80: on SM9x both FlashInfer backends go to the back, so
    # TRITON (TritonExperts, experts/triton_moe.py L120-191: AMA activations, (None, None)) is first.
    ("hopper bf16 -> Triton", layer(), "h100", {}, ("TRITON", "TritonExperts")),
    # Blackwell: FLASHINFER_TRTLLM first (L69-74); the monolithic class takes silu and RenormalizeNaive
    # routing (experts/trtllm_bf16_moe.py L95-102, L117-120, L257-271).
    ("blackwell bf16 silu -> TRT-LLM bf16", layer(), "b200", {},
     ("FLASHINFER_TRTLLM", "TrtLlmBf16ExpertsMonolithic")),
    # gelu_tanh is not in TrtLlmBf16's {silu, relu2_no_mul} (L117-120) but is in FlashInferExperts'
    # list (experts/flashinfer_cutlass_moe.py L183-191).
    ("blackwell bf16 gelu_tanh -> FI CUTLASS", layer(activation="gelu_tanh", routing=RoutingMethod.CUSTOM), "b200", {},
     ("FLASHINFER_CUTLASS", "FlashInferExperts")),
    # swigluoai: both FlashInfer backends to the back (oracle/unquantized.py L88-94) -> Triton even on B200.
    ("blackwell bf16 swigluoai -> Triton", layer(activation="swigluoai", routing=RoutingMethod.TOPK_SOFTMAX), "b200",
     {}, ("TRITON", "TritonExperts")),
    # Gemma 4's custom router is RoutingMethodType.Custom (router/custom_routing_router.py L31-44): the
    # monolithic TRT-LLM bf16 class refuses it and the modular one needs all2all kernels (L137-146).
    ("blackwell bf16 silu custom routing -> FI CUTLASS", layer(routing=RoutingMethod.CUSTOM), "b200", {},
     ("FLASHINFER_CUTLASS", "FlashInferExperts")),
    # TritonExperts needs < 1024 padded experts (experts/triton_moe.py L71-94); then BATCHED_TRITON
    # (batched format only), FLASHINFER_TRTLLM (SM10x only), FLASHINFER_CUTLASS (SM90 ok, L127-139).
    ("hopper bf16 1024 experts -> FI CUTLASS", layer(E=1024), "h100", {}, ("FLASHINFER_CUTLASS", "FlashInferExperts")),
    # Nemotron relu2_no_mul on B200: TRT-LLM bf16 takes relu2_no_mul and DeepSeekV3 routing.
    ("blackwell relu2 -> TRT-LLM bf16", layer(activation="relu2_no_mul", routing=RoutingMethod.DEEPSEEK_V3), "b200", {},
     ("FLASHINFER_TRTLLM", "TrtLlmBf16ExpertsMonolithic")),
    # FP8 block. oracle/fp8.py L122-132: SM90 + (kFp8Static128BlockSym, kFp8Dynamic128Sym) puts TRITON
    # first without EP and FLASHINFER_CUTLASS first with EP.
    ("hopper fp8 block TP -> Triton", layer("fp8_block", routing=RoutingMethod.DEEPSEEK_V3, E=256, H=7168, I=2048,
                                            tp=8), "h100", {}, ("TRITON", "TritonExperts")),
    ("hopper fp8 block EP -> FI CUTLASS", layer("fp8_block", routing=RoutingMethod.DEEPSEEK_V3, E=256, H=7168, I=2048,
                                                ep=8), "h100", {}, ("FLASHINFER_CUTLASS", "FlashInferExperts")),
    # Blackwell: AITER (ROCm) then FLASHINFER_TRTLLM (fp8.py L88-104); the monolithic class takes block FP8
    # with DeepSeekV3 routing (experts/trtllm_fp8_moe.py L378-390, L398-420).
    ("blackwell fp8 block -> TRT-LLM fp8", layer("fp8_block", routing=RoutingMethod.DEEPSEEK_V3, E=256, H=7168, I=2048),
     "b200", {}, ("FLASHINFER_TRTLLM", "TrtLlmFp8ExpertsMonolithic")),
    # DeepGEMM (vendored in the wheel, VLLM_USE_DEEP_GEMM=1 by default) is reached on Blackwell when
    # TRT-LLM FP8 refuses > 2048 experts (experts/trtllm_fp8_moe.py L107-111) and FlashInfer CUTLASS
    # takes block FP8 on SM90 only (experts/flashinfer_cutlass_moe.py L160-170); deep_gemm_moe.py L170-200.
    ("blackwell fp8 block 4096 experts -> DeepGEMM", layer("fp8_block", E=4096, H=7168, I=2048), "b200", {},
     ("DEEPGEMM", "TritonOrDeepGemmExperts")),
    # Qwen3.5 drops DeepGEMM on Blackwell (oracle/fp8.py L497-503, vllm/utils/deep_gemm.py L28-31); Triton
    # refuses >= 1024 padded experts (experts/triton_moe.py L71-94); next is MARLIN (weight-only, L601-621).
    ("blackwell fp8 block 4096 experts qwen3.5 -> Marlin", layer("fp8_block", E=4096, H=7168, I=2048), "b200",
     {"model_type": "qwen3_5_moe_text"}, ("MARLIN", "MarlinExperts")),
    # NvFP4. oracle/nvfp4.py L203-213 + quantization/utils/humming/priority.py L10-48: on SM90 HUMMING
    # moves ahead of MARLIN; without EP the indexed class (experts/fused_humming_moe.py L112-126).
    ("hopper nvfp4 -> Humming indexed", layer("nvfp4", activation="gelu_tanh", routing=RoutingMethod.CUSTOM, E=128,
                                              H=2816, I=704), "h100", {}, ("HUMMING", "HummingIndexedExperts")),
    ("hopper nvfp4 EP -> Humming grouped", layer("nvfp4", ep=2), "h100", {}, ("HUMMING", "HummingGroupedExperts")),
    # prefers_humming is SM90 only (priority.py L11): on SM80 MARLIN (SM>=75, experts/marlin_moe.py L592-621) wins.
    ("ampere nvfp4 -> Marlin", layer("nvfp4"), "a100", {}, ("MARLIN", "MarlinExperts")),
    # Blackwell NvFP4 with Gemma 4's custom routing: the monolithic TRT-LLM class refuses Custom
    # (experts/trtllm_nvfp4_moe.py L494-508), the modular one takes any parallel config (L296-298).
    ("blackwell nvfp4 custom -> TRT-LLM modular", layer("nvfp4", activation="gelu_tanh", routing=RoutingMethod.CUSTOM,
                                                        H=2816, I=704, tp=8), "b200", {},
     ("FLASHINFER_TRTLLM", "TrtLlmNvFp4ExpertsModular")),
    # MXFP4 (gpt-oss): no requested activation -> BF16 variants only (oracle/mxfp4.py L614-631).
    # Hopper: TRITON = OpenAI triton_kernels, CUDA 9.0-12.x and vendored triton_kernels
    # (experts/gpt_oss_triton_kernels_moe.py L43-53, L1505-1565).
    ("hopper gpt-oss mxfp4 -> OAI triton", layer("mxfp4", activation="swigluoai", routing=RoutingMethod.TOPK_SOFTMAX,
                                                 H=2880, I=2880, k=4, bias=True), "h100", {},
     ("TRITON", "OAITritonMxfp4ExpertsMonolithic")),
    ("blackwell gpt-oss mxfp4 -> TRT-LLM mxfp4 bf16", layer("mxfp4", activation="swigluoai",
                                                            routing=RoutingMethod.TOPK_SOFTMAX, H=2880, I=2880, k=4,
                                                            bias=True), "b200", {},
     ("FLASHINFER_TRTLLM_MXFP4_BF16", "TrtLlmMxfp4ExpertsMonolithic")),
    # With DP+EP the monolithic OAI class needs dp_size <= 1 and no all2all (L1547-1554): the modular
    # OAITritonExperts (second class of TRITON, oracle/mxfp4.py backend_to_kernel_cls) takes it.
    ("hopper mxfp4 DP+EP -> OAI triton modular", layer("mxfp4", activation="swigluoai",
                                                       routing=RoutingMethod.TOPK_SOFTMAX, ep=2, dp=2), "h100", {},
     ("TRITON", "OAITritonExperts")),
    # WNA16. oracle/int_wna16.py L122-137: on SM90 HUMMING before MARLIN.
    ("hopper gptq int4 -> Humming", layer("int4_w4a16:g128", dtype="fp16", H=2048, I=768), "h100",
     {"quant_method": "gptq"}, ("HUMMING", "HummingIndexedExperts")),
    # Blackwell: FLASHINFER_TRTLLM (MXINT4) is hidden behind VLLM_USE_FLASHINFER_MOE_INT4=0
    # (quantization/utils/flashinfer_mxint4_moe.py L24-31), so MARLIN.
    ("blackwell ct int4 g32 -> Marlin", layer("int4_w4a16:g32", routing=RoutingMethod.DEEPSEEK_V3, E=384, H=7168,
                                              I=2048), "b200", {"quant_method": "compressed-tensors"},
     ("MARLIN", "MarlinExperts")),
    # Marlin pre-filter: hidden % 128 (quantization/utils/marlin_utils.py L377-387); GPTQ may have bias,
    # which excludes TRITON (oracle/int_wna16.py L184-186; auto_gptq.py L472-479) -> HUMMING.
    ("blackwell gptq int4 hidden 2880 -> Humming", layer("int4_w4a16:g128", H=2880, I=2880), "b200",
     {"quant_method": "gptq"}, ("HUMMING", "HummingIndexedExperts")),
    # Same layer from compressed-tensors (may_have_bias=False, compressed_tensors_moe_wna16.py L102-109):
    # TritonWNA16Experts is allowed and comes before HUMMING on SM10x.
    ("blackwell ct int4 hidden 2880 -> Triton WNA16", layer("int4_w4a16:g128", H=2880, I=2880), "b200",
     {"quant_method": "compressed-tensors"}, ("TRITON", "TritonWNA16Experts")),
    # W4A8 (int4 x fp8): oracle/w4a8.py L61-70 order [CUTLASS, HUMMING]; CUTLASS is SM90 + bf16 only
    # (experts/cutlass_moe.py L1334-1360).
    ("hopper w4a8 -> CUTLASS", layer("int4_fp8"), "h100", {}, ("CUTLASS", "CutlassExpertsW4A8Fp8")),
    ("hopper w4a8 fp16 -> Humming", layer("int4_fp8", dtype="fp16"), "h100", {}, ("HUMMING", "HummingIndexedExperts")),
]


@pytest.mark.parametrize("name, spec, device, kw, expected", CASES, ids=[c[0] for c in CASES])
def test_oracle_model_matches_reading_of_vllm(name, spec, device, kw, expected):
    assert pick(spec, device, **kw) == expected


def test_swigluoai_demotion_is_recorded_as_a_move():
    c = vo.vllm_default(layer(activation="swigluoai", routing=RoutingMethod.TOPK_SOFTMAX), get_device("b200"))
    assert [m.source for m in c.moves] == ["fused_moe/oracle/unquantized.py L88-93", "fused_moe/oracle/unquantized.py L88-94"]
    assert c.order[0] == "TRITON"


def test_non_nvidia_devices_are_refused():
    with pytest.raises(ValueError, match="NVIDIA devices only"):
        vo.vllm_default(layer(), get_device("cpu"))


def test_every_rule_and_move_names_its_upstream_line():
    for cls in vo.CLASSES.values():
        for rule in cls.rules:
            assert re.search(r"(fused_moe|quantization|vllm)/\S+\.py", rule.source), (cls.name, rule)
            assert re.search(r"L\d+|use_batched_activation_format", rule.source), (cls.name, rule)
    for oracle in vo.ORACLES.values():
        for backend in oracle.backends:
            assert backend.classes and all(c in vo.CLASSES for c in backend.classes), backend
            for rule in backend.prefilter:
                assert re.search(r"L\d+", rule.source), rule
        for move in oracle.moves:
            assert re.search(r"\.py L\d+", move.source), move


def test_every_declared_engine_name_has_a_kernel_family():
    # A declaration whose engines.vllm is unknown here could never agree with vLLM: name it in NAME_FAMILY.
    for decl in Registry(entry_points=False):
        assert decl.engines.vllm is None or decl.engines.vllm in names.NAME_FAMILY, decl.id
    assert names.family_of_name("humming") == "humming"
    assert names.family_of_name("triton") == "triton"
    assert names.family_of_name("flashinfer_trtllm") == "flashinfer-trtllm"


def test_every_hand_model_class_has_the_family_of_its_backend():
    # The hand model and the executed answers name families from one table (names.CLASS_FAMILY).
    for oracle in vo.ORACLES.values():
        for backend in oracle.backends:
            for cls in backend.classes:
                if backend.family in names.CLASS_FAMILY.values():
                    assert names.family_of_class(cls) == backend.family, (backend.name, cls)


def test_mxfp4_triton_is_not_our_triton_fused_moe():
    # oracle/mxfp4.py L375: "triton" forces OpenAI's triton_kernels there, a different kernel family.
    c = vo.vllm_default(layer("mxfp4", activation="swigluoai", routing=RoutingMethod.TOPK_SOFTMAX), get_device("h100"))
    assert c.moe_backend == "triton" and c.family != names.family_of_name("triton")


# --- Explanations are keyed data, not prose ----------------------------------------------------------


def _decl(backend_id: str, vllm_name: str | None):
    decl = Registry(entry_points=False).get(backend_id)
    return decl.model_copy(update={"engines": EngineNames(vllm=vllm_name)})


def _trtllm_nvfp4():
    # By engine name and quant, not id: the TRT-LLM-gen family is being renamed (trtllm-nvfp4 -> trtllm-fp4).
    return next(d for d in Registry(entry_points=False)
                if d.engines.vllm == "flashinfer_trtllm" and d.quant_support(QuantKind.NVFP4))


def test_missing_backend_applies_only_when_no_declaration_covers_the_quant():
    spec = layer()
    c = vo.vllm_default(spec, get_device("h100"))  # TRITON
    decls = (_decl("flashinfer-cutlass", "flashinfer_cutlass"),)
    assert explain(spec, vllm_model_answer(c), "flashinfer-cutlass", (), decls)[0] is MISSING_BACKEND[("triton", "*")]
    # Once a bf16 declaration of the Triton family exists, "missing" no longer explains the row:
    # an eligible same-family backend that lost needs a PREFERRED entry (measured) or it is unexplained.
    decls += (_decl("torch-grouped-mm", "triton"),)
    got, via = explain(spec, vllm_model_answer(c), "flashinfer-cutlass", (), decls)
    assert got is None and "torch-grouped-mm eligible but ranked after flashinfer-cutlass" in via


def test_rejected_same_family_declaration_is_explained_by_its_reason():
    spec = layer("nvfp4", activation="gelu_tanh", routing=RoutingMethod.CUSTOM, H=2816, I=704, tp=8)
    c = vo.vllm_default(spec, get_device("b200"))
    decl = _trtllm_nvfp4()
    rej = (Rejection(backend=decl.id, reasons=(Reason(
        code=ReasonCode.SHAPE_UNALIGNED, field="intermediate", required="multiple of 16", actual="88",
        message="per-rank intermediate 88 splits nvfp4's 16-element scale groups"),)),)
    got, via = explain(spec, vllm_model_answer(c), None, rej, (decl,))
    generic = next(e for m, e in REJECTED if m.family == "*" and m.phrase == "scale groups")
    assert got is generic and via == "REJECTED[*, shape_unaligned, intermediate, scale groups]"
    rej = (Rejection(backend=decl.id, reasons=(Reason(code=ReasonCode.ROUTING_UNSUPPORTED, field="routing",
                                                     required="", actual="", message="x"),)),)
    got, via = explain(spec, vllm_model_answer(c), None, rej, (decl,))
    assert got is None and f"{decl.id} rejected (routing_unsupported)" in via


def test_explanation_tables_are_well_formed():
    # Each table says one kind of thing, and every entry cites an upstream line or a committed file.
    tables = [("missing", e, {"missing-backend"}) for e in MISSING_BACKEND.values()]
    tables += [("rejected", e, {"missing-capability", "ours-better-capability"}) for _, e in REJECTED]
    tables += [("preferred", e, {"ours-better-measured", "ours-better-capability"}) for e in PREFERRED.values()]
    assert len(tables) >= len(MISSING_BACKEND) + len(REJECTED) > 0
    for table, e, kinds in tables:
        assert e.kind in kinds, (table, e)
        cited = re.search(r"\.(py|cu|h) L\d+", e.evidence) or (ROOT / e.evidence.split()[0]).exists()
        assert cited, (table, e.evidence)
    families = {b.family for o in vo.ORACLES.values() for b in o.backends}
    assert {family for family, _ in MISSING_BACKEND} <= families
    for match, _ in REJECTED:
        assert match.family == "*" or match.family in families, match


# --- The committed document ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def committed():
    return record.load("0.34.0")


@pytest.fixture(scope="module")
def rows(committed):
    return parity_rows(committed)


def test_parity_document_is_current(rows, committed):
    text = (ROOT / "docs" / "parity-vllm.md").read_text()
    previous = record.load("0.33.0") if record.record_path("0.33.0").exists() else None
    assert render_markdown(rows, committed, previous) == text, "docs/parity-vllm.md is stale: python3 scripts/parity_vllm.py"


def test_every_row_agrees_or_is_explained(rows):
    bad = [f"{r.model} {r.device} {r.parallel} {r.layers}: ours {r.ours}, vLLM {r.vllm.kernel if r.vllm else None}"
           for r in rows if not r.explained]
    assert not bad, "rows without a reason (add a table entry in moe_registry/engines/parity.py):\n" + "\n".join(bad)


def test_the_hand_model_gives_vllms_executed_pick(rows):
    # While the hand model exists it must say what vLLM's own code picked, on every row where vLLM
    # answered about the MoE layer (a pick, or its oracle refusing the layer).
    moe_rows = [r for r in rows if r.model_agrees is not None]
    assert len(moe_rows) >= 50
    bad = [f"{r.model} {r.device} {r.parallel}: hand model {r.model_answer.kernel if r.model_answer else None}, "
           f"vLLM {r.vllm.kernel if r.vllm else None}" for r in moe_rows if not r.model_agrees]
    assert not bad, "fix moe_registry/engines/vllm/model.py:\n" + "\n".join(bad)


def test_rows_cover_presets_fixtures_tp_and_ep(rows, committed):
    from moe_registry.planner import list_presets

    seen = {(r.model, r.device, r.parallel) for r in rows} | {
        (d.model, d.device, d.parallel.label()) for d, _ in record.results(committed)}
    for name in [*list_presets(), "mixtral-8x7b-instruct-fp8", "qwen3-30b-a3b-fp8", "qwen3-30b-a3b-awq"]:
        for dev in ("h100", "b200"):
            assert (name, dev, "single GPU") in seen, name
    for name in ("gemma-4-26b-a4b-nvfp4", "deepseek-v3", "qwen3-30b-a3b-fp8", "mixtral-8x7b-instruct-fp8"):
        for tp in (2, 4, 8):
            assert (name, "b200", f"TP{tp}") in seen and (name, "h100", f"TP{tp}") in seen
    for name in ("deepseek-v3", "gpt-oss-120b", "qwen3-30b-a3b", "mixtral-8x7b-instruct-fp8"):
        assert (name, "h100", "EP8") in seen and (name, "b200", "EP8") in seen


def test_a_committed_record_round_trips():
    data = record.load("0.34.0")
    for deployment, result in record.results(data)[:6]:
        again = record.expand(record.compact(result), deployment.id)
        assert again.layers == result.layers and again.error == result.error


def test_the_record_is_what_vllm_0_34_ran(committed):
    # Facts the issue asked for, read from the executed record (not from our model of vLLM).
    by_id = {d.id: r for d, r in record.results(committed)}
    gemma = by_id["gemma-4-26b-a4b-nvfp4@b200:single GPU"].layers[0]
    assert (gemma.backend, gemma.experts_class) == ("FLASHINFER_TRTLLM", "TrtLlmNvFp4ExpertsModular")
    assert gemma.rejected[0].reason == "kernel does not support routing method 101"  # RoutingMethodType.Custom
    mixtral = by_id["mixtral-8x7b-instruct-fp8@h100:single GPU"].layers[0]
    assert (mixtral.backend, mixtral.experts_class) == ("FLASHINFER_CUTLASS", "FlashInferExperts")
    assert committed["vllm"] == "0.34.0" and committed["environment"]["vllm"] == "0.34.0"
    assert all(f.split(":")[0] for f in committed["fakes"])


def test_nvfp4_monolithic_trtllm_refuses_all2all_even_with_ag_rs():
    # experts/trtllm_nvfp4_moe.py L486-491: "not use_all2all_kernels" (no AG/RS exception, unlike bf16/fp8);
    # DP2+EP2 has all2all kernels (fused_moe/config.py L1035-1038), so the modular class runs it.
    spec = layer("nvfp4", routing=RoutingMethod.DEEPSEEK_V3, ep=2, dp=2)
    assert pick(spec, "b200") == ("FLASHINFER_TRTLLM", "TrtLlmNvFp4ExpertsModular")
    assert pick(layer("nvfp4", routing=RoutingMethod.DEEPSEEK_V3), "b200") == (
        "FLASHINFER_TRTLLM", "TrtLlmNvFp4ExpertsMonolithic")


def test_a_new_same_family_backend_that_loses_makes_rows_unexplained():
    # The declaration of the kernel vLLM picks for gpt-oss on Hopper (OpenAI triton_kernels), ranked last
    # by our policy: the rows must not agree, and be flagged until someone decides (a table entry).
    # (Humming's measured SM90 lead is taken away too: PREFERRED explains that one.)
    base = Registry(entry_points=False)
    decl, humming = base.get("oai-triton-kernels"), base.get("humming")
    loser = decl.model_copy(update={"priority": {k: -1000 for k in decl.priority}, "priority_overrides": ()})
    humming = humming.model_copy(update={"priority_overrides": humming.priority_overrides[:1]})  # int4 only
    data = record.load("0.34.0")
    rows = parity_rows(data, base.with_declaration(loser).with_declaration(humming))
    hopper_gpt_oss = [r for r in rows if r.model == "gpt-oss-20b" and r.device == "h100"]
    assert hopper_gpt_oss and all(not r.explained and "oai-triton-kernels" in r.via for r in hopper_gpt_oss)
    assert "**UNEXPLAINED**" in render_markdown(rows, data)


def test_a_declaration_keyed_triton_is_openais_kernels_only_when_it_runs_mxfp4_only():
    base = Registry(entry_points=False)
    assert names.family_of_declaration(base.get("oai-triton-kernels")) == "oai-triton-kernels"
    assert names.family_of_declaration(base.get("triton-fused-moe")) == "triton"
    mixed = base.get("oai-triton-kernels").model_copy(update={"quant": base.get("humming").quant})
    assert names.family_of_declaration(mixed) == "triton"  # also runs other families: the --moe-backend meaning
    assert names.family_of_declaration(base.get("humming")) == "humming"


def test_engines_never_import_torch():
    code = ("import sys; from moe_registry.engines.parity import parity_rows; from moe_registry.engines.vllm import "
            "record; parity_rows(record.load('0.34.0')); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_rules_run_in_the_order_of_vllms_base_gate():
    # modular_kernel.py L590-633: device, no-act-and-mul, activation, quant, parallel, routing, shape, format;
    # vLLM reports only the first failure, so the model must fail on the same rule.
    cls = vo.CLASSES["FlashInferExperts"]
    assert [r.stage for r in cls.rules] == sorted(r.stage for r in cls.rules)
    assert [r.text.split()[0] for r in cls.rules][:3] == ["device", "activation", "quant:"]
    c = vo.vllm_default(layer("nvfp4", activation="gelu"), get_device("b200"))  # gelu: TRT-LLM NvFP4 yes, FI CUTLASS no
    assert c.backend == "FLASHINFER_TRTLLM"
    c = vo.vllm_default(layer("nvfp4", activation="gelu", ep=2, dp=2), get_device("h100"))
    fi = next(loss for loss in c.losses if loss.backend == "FLASHINFER_CUTLASS")
    assert fi.rule.startswith("activation")  # activation is checked before the SM100-only nvfp4 quant rule
