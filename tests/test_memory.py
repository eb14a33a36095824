"""Expert weight memory (format bytes, per-rank layer bytes as a backend holds them) and the planner's
whole-model memory fit: memory_exceeded, re-selection, hints, modes, CLI exit codes.

Expected byte counts are computed by hand in the comments, not by the code under test."""

from __future__ import annotations

import json

import pytest

from moe_registry import LayerSpec, ParallelConfig, select_backend
from moe_registry.backends.marlin import DECLARATION as MARLIN
from moe_registry.backends.reference import DECLARATION as REFERENCE
from moe_registry.backends.torch_grouped_mm import DECLARATION as GROUPED
from moe_registry.cli import main
from moe_registry.errors import BackendNotEligible
from moe_registry.memory import BUDGET_FRACTION
from moe_registry.planner import plan_model
from moe_registry.registry import Registry
from moe_registry.schemas.capability import FeatureSupport, ShapeRule
from moe_registry.schemas.quant import QuantFamily, QuantScheme
from moe_registry.schemas.selection import ReasonCode

from _decl_helpers import assert_selected

GPT_OSS = LayerSpec(num_experts=128, top_k=4, hidden_size=2880, intermediate_size=2880, activation="swigluoai",
                    quant="mxfp4", bias=True)
GEMMA4 = LayerSpec(num_experts=128, top_k=8, hidden_size=2816, intermediate_size=704, activation="gelu_tanh",
                   quant="nvfp4")


# --- Format bytes ------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme, rows, cols, expected", [
    ("bf16", 2, 3, 12),  # 6 x 2 bytes
    ("fp8", 128, 256, 32768 + 4),  # 1 byte each + one fp32 per-tensor scale
    ("fp8_block", 4096, 7168, 29360128 + 4 * 32 * 56),  # 1 byte each + fp32 per 128x128 block
    ("fp8_block", 704, 2816, 704 * 2816 + 4 * 6 * 22),  # partial last block row counts whole: ceil(704/128) = 6
    ("nvfp4", 256, 2816, 360448 + 256 * 176 + 4),  # 4 bits + e4m3 per 16 + fp32 global
    ("mxfp4", 5760, 2880, 8294400 + 5760 * 90),  # 4 bits + e8m0 per 32
    ("int4_w4a16:g128:zp", 256, 512, 65536 + 2 * 256 * 4 + 256 * 4 // 2),  # + fp16 scales + 4-bit zeros
    ("int4_w4a16:gchannel", 256, 512, 65536 + 2 * 256),  # one scale per output channel
])
def test_matrix_bytes(scheme, rows, cols, expected):
    assert QuantScheme.parse(scheme).matrix_bytes(rows, cols) == expected


def test_layer_bytes_gpt_oss():
    # Per expert: w13 [5760, 2880] 8,294,400 + 518,400 scales; w2 [2880, 2880] 4,147,200 + 259,200;
    # biases (5760 + 2880) x 2 bytes = 17,280. Sum 13,236,480 x 128 experts.
    assert GPT_OSS.expert_weight_bytes() == 13_236_480 * 128 == 1_694_269_440
    # Dequantized to bf16: (5760 + 2880) x 2880 x 2 + 17,280 = 49,783,680 per expert.
    assert GPT_OSS.expert_weight_bytes(held_bits=16) == 49_783_680 * 128
    # Padded to 3072 x 3072: 9,437,184 + 589,824 + 4,718,592 + 294,912 + 18,432 = 15,058,944 per expert.
    assert GPT_OSS.expert_weight_bytes(3072, 3072) == 15_058_944 * 128
    # EP4 holds a quarter of the experts.
    assert GPT_OSS.replace(parallel=ParallelConfig(ep=4)).expert_weight_bytes() == 13_236_480 * 32


def test_candidates_carry_bytes_as_held_after_padding_and_dequantization():
    s = select_backend(GEMMA4.replace(parallel=ParallelConfig(tp=8)), "b200")
    # trtllm-fp4 pads 88 -> 128: w13 [256, 2816] 405,508 + w2 [2816, 128] 180,224 + 22,528 + 4 = 202,756.
    chosen = s.eligible[0]
    assert (chosen.backend, chosen.weights_held) == ("trtllm-fp4", "nvfp4")
    assert chosen.expert_weight_bytes == (405_508 + 202_756) * 128 == 77_857_792
    # torch grouped GEMM pads 88 -> 96 and holds bf16: (192 + 96) x 2816 x 2 bytes per expert.
    grouped = next(c for c in s.eligible if c.backend == "torch-grouped-mm")
    assert grouped.weights_held == "bf16 (dequantized from nvfp4)"
    assert grouped.expert_weight_bytes == (192 + 96) * 2816 * 2 * 128
    # The reference holds fp32 (ReferenceExperts dequantizes to float32 at build), bf16 checkpoints too.
    ref = select_backend(LayerSpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=32), "cpu",
                         force="reference")
    assert ref.eligible[0].expert_weight_bytes == (64 + 32) * 64 * 4 * 8
    assert ref.eligible[0].weights_held == "fp32 (dequantized from bf16)"


# --- Whole-model fit -------------------------------------------------------------------------------

def _fixed(declarations) -> Registry:
    """A registry of exactly these declarations (the mechanics below must not depend on which
    4-bit backends the built-ins declare today)."""
    reg = Registry(builtins=False, entry_points=False)
    for d in declarations:
        reg = reg.with_declaration(d)
    return reg


NO_4BIT = (GROUPED, REFERENCE)


def _marlin_for_gpt_oss(priority: int) -> Registry:
    """Test-only: the bf16 grouped GEMM, the reference, and Marlin with biases and hidden / intermediate
    padded to 256 (the real Marlin facts live in its declaration; these tests need only the mechanics)."""
    decl = MARLIN.model_copy(update={
        "features": FeatureSupport(bias=True, swigluoai_params=True, source="test"),
        "shape_rules": tuple(ShapeRule(dimension=d, multiple_of=256, pad=True, source="test")
                             for d in ("hidden", "intermediate")),
        "priority": {**MARLIN.priority, QuantFamily.MXFP4: priority}})
    return _fixed((*NO_4BIT, decl))


def test_gpt_oss_on_h100_with_the_real_backends_fits_on_a_4bit_one():
    """Issue 8 must-show: every layer on a 4-bit-weight backend, ~61-64 GB per GPU, and the dequantizing
    grouped GEMM rejected with memory_exceeded on an 80 GB card (Humming since issue 21's measurement: no
    padding; FlashInfer CUTLASS, with its 2880 -> 2944 padding, fits too)."""
    plan = plan_model("gpt-oss-120b", "h100")
    s = plan.groups()[0].selection
    assert "bf16" not in s.eligible[0].weights_held  # packed MXFP4 as held, not dequantized
    assert s.backend == "humming" and not s.padding
    fi = next(c for c in s.eligible if c.backend == "flashinfer-cutlass")
    assert {p.dimension for p in fi.padding} == {"hidden", "intermediate"}
    assert plan.memory.fits is True and 55e9 < plan.memory.expert_weight_bytes < 73.6e9
    assert s.rejection("torch-grouped-mm").codes() == {ReasonCode.MEMORY_EXCEEDED}


def test_gpt_oss_on_h100_without_a_4bit_backend_does_not_fit_and_says_what_would():
    plan = plan_model("gpt-oss-120b", "h100", registry=_fixed(NO_4BIT))
    m = plan.memory
    assert m.expert_weight_bytes == 49_783_680 * 128 * 36 == 229_403_197_440  # ~229 GB of bf16
    assert m.budget_bytes == int(80e9 * BUDGET_FRACTION) and m.fits is False
    assert m.hint == "EP4 over 4 GPUs would hold 57.4 GB per GPU"  # 229.4 / 4
    # prefer: the smallest plan is kept; the fp32 reference is no plan for a GPU at all (issue 20)
    group = plan.groups()[0]
    assert_selected(group.selection, "torch-grouped-mm")
    ref = group.selection.rejection("reference")
    assert ref.codes() == {ReasonCode.KNOWN_LIMITATION} and "test oracle" in ref.reasons[0].message
    assert m.rejected == ()
    # On a CPU target the reference stays a candidate, and the memory fit counts its fp32:
    # (5760 + 2880) x 2880 x 4 + 17,280 bf16 bias bytes = 99,550,080 per expert x 4608 = 458.7 GB.
    cpu = plan_model("gpt-oss-120b", "cpu", force="reference", registry=_fixed(NO_4BIT))
    assert cpu.memory.expert_weight_bytes == 99_550_080 * 128 * 36


def test_memory_exceeded_reselects_the_backend_that_fits():
    # Marlin ranked below torch-grouped-mm: the bf16 plan (229 GB) is chosen first, does not fit on
    # 80 GB, so torch-grouped-mm is rejected and the layers are selected again: Marlin, 4-bit.
    plan = plan_model("gpt-oss-120b", "h100", registry=_marlin_for_gpt_oss(priority=10))
    s = plan.groups()[0].selection
    assert_selected(s, "marlin", decided_by="priority")
    assert [(p.dimension, p.original, p.padded) for p in s.padding] == [("hidden", 2880, 3072),
                                                                         ("intermediate", 2880, 3072)]
    assert plan.memory.expert_weight_bytes == 15_058_944 * 128 * 36  # 69.4 GB, padded, MXFP4
    assert plan.memory.fits is True and plan.memory.rejected == ("torch-grouped-mm",)
    reason = s.rejection("torch-grouped-mm").reasons[0]
    assert reason.code is ReasonCode.MEMORY_EXCEEDED and reason.field == "memory"
    assert reason.actual == "229.4 GB" and reason.required == "<= 73.6 GB per GPU"
    assert reason.hint == "marlin (mxfp4) holds 69.4 GB per GPU and fits"
    assert s.rejection("torch-grouped-mm").reasons == (reason,)  # its only reason: it runs the layer otherwise


def test_a_backend_that_would_not_fit_is_rejected_even_when_it_is_not_chosen():
    plan = plan_model("gpt-oss-120b", "h100", registry=_marlin_for_gpt_oss(priority=100))
    s = plan.groups()[0].selection
    assert_selected(s, "marlin")
    assert [c.backend for c in s.eligible] == ["marlin"]
    assert s.rejection("torch-grouped-mm").codes() == {ReasonCode.MEMORY_EXCEEDED}
    # On a 141 GB H200 the bf16 plan still does not fit (229.4 GB > 0.92 x 141 = 129.7 GB).
    assert plan_model("gpt-oss-120b", "h200", registry=_marlin_for_gpt_oss(100)).groups()[0].selection \
        .rejection("torch-grouped-mm").codes() == {ReasonCode.MEMORY_EXCEEDED}


def test_memory_is_a_function_of_the_plan():
    a = plan_model("gpt-oss-120b", "h100", registry=_marlin_for_gpt_oss(priority=10))
    b = plan_model("gpt-oss-120b", "h100", registry=_marlin_for_gpt_oss(priority=10))
    assert a == b
    # and selection alone (no plan) is unchanged by it
    assert_selected(select_backend(GPT_OSS, "h100", registry=_marlin_for_gpt_oss(priority=10)), "torch-grouped-mm")


def test_modes_and_unknown_memory():
    no_4bit = _fixed(NO_4BIT)
    report = plan_model("gpt-oss-120b", "h100", memory="report", registry=no_4bit)
    assert report.memory.fits is False and report.memory.rejected == ()
    assert report.groups()[0].selection.rejection("reference").codes() == {ReasonCode.KNOWN_LIMITATION}
    strict = plan_model("gpt-oss-120b", "h100", memory="strict", registry=no_4bit)
    assert all(lp.selection is None for lp in strict.layers)
    assert {r.backend for r in strict.layers[0].rejections if ReasonCode.MEMORY_EXCEEDED in r.codes()} == {
        "torch-grouped-mm"}
    unknown = plan_model("gpt-oss-120b", "sm90", registry=no_4bit)  # a generic target: no memory figure
    assert unknown.memory.fits is None and unknown.memory.budget_bytes is None
    assert_selected(unknown.groups()[0].selection, "torch-grouped-mm")
    with pytest.raises(ValueError, match="unknown memory mode"):
        plan_model("gpt-oss-120b", "h100", memory="maybe")


def test_a_forced_backend_is_kept_in_prefer_and_refused_in_strict():
    plan = plan_model("gpt-oss-120b", "h100", force="torch-grouped-mm")  # 229 GB of bf16
    assert_selected(plan.groups()[0].selection, "torch-grouped-mm")
    assert plan.memory.fits is False
    with pytest.raises(BackendNotEligible) as err:
        plan_model("gpt-oss-120b", "h100", force="torch-grouped-mm", memory="strict")
    assert ReasonCode.MEMORY_EXCEEDED in {r.code for r in err.value.reasons}


def test_tp8_gemma_fits_and_counts_the_padding():
    plan = plan_model("gemma-4-26b-a4b-nvfp4", "b200", parallel=ParallelConfig(tp=8))
    assert plan.memory.fits is True
    assert plan.memory.expert_weight_bytes == 77_857_792 * 30


# --- CLI --------------------------------------------------------------------------------------------

def test_cli_exit_codes(capsys):
    assert main(["explain", "gemma-4-26b-a4b-nvfp4", "--device", "b200", "--tp", "8"]) == 0
    out = capsys.readouterr().out
    assert "I88->128" in out and "expert weights per GPU: 2.34 GB" in out
    assert main(["explain", "gemma-4-26b-a4b-nvfp4", "--device", "b200", "--tp", "8", "--no-pad"]) == 3
    capsys.readouterr()
    # DeepSeek-V3's 654 GB of FP8 experts on one B200: the kernel question is answered (exit 0), the
    # fit is not, with the EP that would fit; strict refuses (exit 3).
    assert main(["explain", "deepseek-v3", "--device", "b200"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the line wraps at the terminal's width
    assert "DOES NOT FIT" in out and "EP4 over 4 GPUs would hold 163.5 GB per GPU" in out
    assert main(["explain", "deepseek-v3", "--device", "b200", "--memory", "strict"]) == 3
    capsys.readouterr()
    assert main(["explain", "gpt-oss-120b", "--device", "h100", "--memory", "bogus"]) == 2


def test_cli_json_adds_memory_fields(capsys):
    assert main(["explain", "gpt-oss-120b", "--device", "h100", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema_version"] == 1 and data["memory"]["fits"] is True
    assert "0.92" in data["memory"]["rule"]
    group = data["groups"][0]
    per_layer = group["expert_weight_bytes"]["per_layer"]
    assert group["expert_weight_bytes"]["total"] == per_layer * 36 == data["memory"]["expert_weight_bytes"]
    assert group["selection"]["eligible"][0]["expert_weight_bytes"] == per_layer
    grouped = next(r for r in group["selection"]["rejections"] if r["backend"] == "torch-grouped-mm")
    (reason,) = grouped["reasons"]
    # bf16: (5760 + 2880) x 2880 x 2 + 17,280 bias bytes = 49,783,680 per expert x 4608 = 229.4 GB
    assert (reason["code"], reason["actual"]) == ("memory_exceeded", "229.4 GB")
