"""The planner's rules that the mutation run of planner/*.py found unstated, one test per rule:
which layouts a plan that cannot run as it is may move to, and in what order; the attention TP the
heads allow; test oracles are never a GPU plan, whatever the registry; a decode / prefill split that
does not fit is dropped, and said so; what a plan records (model type, quant method, a name even for
a nameless directory, groups computed once); one-line refusals of malformed configs.

Each suggestion search runs on real plans with a stand-in ``replan`` that records the layouts it is
asked for, so a test states which layouts are tried, in which order, and which are kept."""

from __future__ import annotations

import pytest

from moe_registry.planner import ParallelismError, plan_config, plan_model
from moe_registry.planner.layouts import problems, suggest_layouts
from moe_registry.render.deploy import _declarations
from moe_registry.schemas.device import get_device
from moe_registry.schemas.layer import ParallelConfig
from moe_registry.schemas.selection import ReasonCode

P = ParallelConfig
GOOD = plan_model("qwen3-30b-a3b", "h100")  # one H100, every layer a backend, fits: no problem
UNSELECTED = GOOD.model_copy(update={"memory": None})  # a plan without a memory fit: nothing to say per GPU


def no_backend(model: str, parallel: ParallelConfig):
    plan = plan_model(model, "h100", parallel, forbid=tuple(_declarations()))
    assert problems(plan) == ("no-backend",)
    return plan


def recording(answer=lambda p: GOOD):
    calls: list[ParallelConfig] = []

    def replan(parallel: ParallelConfig):
        calls.append(parallel)
        return answer(parallel)
    return calls, replan


def test_good_plan_has_no_problem():
    assert problems(GOOD) == () and GOOD.memory is not None


# --- Same GPUs: expert parallelism first, then smaller TP -----------------------------------------

def test_at_most_two_layouts_are_suggested_and_the_search_stops_there():
    plan = no_backend("qwen3-30b-a3b", P(tp=8))
    calls, replan = recording()
    got = suggest_layouts(plan, replan)
    assert [s.parallel for s in got] == [P(ep=8), P(tp=4)]
    assert calls == [P(ep=8), P(tp=4)]  # TP2 and TP1 are never planned once two are found


def test_two_gpus_try_ep2_then_one_gpu():
    plan = no_backend("qwen3-30b-a3b", P(tp=2))
    calls, replan = recording(lambda p: plan)  # nothing fixes it
    assert suggest_layouts(plan, replan) == ()
    assert calls == [P(ep=2), P(tp=1)]  # EP2 keeps attention TP2


def test_one_gpu_has_no_layout_to_move_to():
    # One GPU for the MoE layer (DP replicas of it included): no EP over it, no smaller TP.
    for parallel in (P(), P(dp=2)):
        plan = no_backend("qwen3-30b-a3b", parallel)
        calls, replan = recording()
        assert suggest_layouts(plan, replan) == () and calls == []


def test_the_ep_layout_follows_the_style_the_user_spoke():
    # TP8 over DP2 (vLLM -tp 4 -dp 2): vLLM keeps attention TP4 (EP8 = 4 x DP2); SGLang puts EP8 in one TP group.
    plan = no_backend("qwen3-30b-a3b", P(tp=8, dp=2))
    calls, replan = recording(lambda p: plan)
    suggest_layouts(plan, replan)
    assert calls[0] == P(ep=8, dp=2)
    calls, replan = recording(lambda p: plan)
    suggest_layouts(plan, replan, style="sglang")
    assert calls[0] == P(ep=8, dp=1)


def test_a_layout_the_model_cannot_take_is_never_planned():
    # Mixtral has 8 experts: EP16 over the same 16 GPUs cannot split them, so TP8 and TP4 are next.
    plan = no_backend("mixtral-8x7b", P(tp=16))
    calls, replan = recording()
    got = suggest_layouts(plan, replan)
    assert calls == [P(tp=8), P(tp=4)] and [s.parallel for s in got] == [P(tp=8), P(tp=4)]


def test_smaller_tp_names_whole_gpus():
    # Only TP2 fixes it; the suggestion says so in whole numbers (TP8 -> 4 -> 2, never 2.0).
    plan = no_backend("qwen3-30b-a3b", P(tp=8))
    calls, replan = recording(lambda p: UNSELECTED if p == P(tp=2) else plan)
    (only,) = suggest_layouts(plan, replan)
    assert calls == [P(ep=8), P(tp=4), P(tp=2), P(tp=1)]
    assert only.parallel == P(tp=2) and only.gpus == 2 and only.plan is UNSELECTED
    assert only.why == "TP2 over 2 GPUs: every layer has a backend"


def test_a_suggestion_names_what_each_gpu_holds_or_that_every_layer_has_a_backend():
    plan = no_backend("qwen3-30b-a3b", P(tp=2))
    first, _ = suggest_layouts(plan, lambda p: UNSELECTED)
    assert first.why == "EP2 over the same 2 GPUs: every layer has a backend"
    first, _ = suggest_layouts(plan, lambda p: GOOD)
    assert first.why == "EP2 over the same 2 GPUs: 58.0 GB per GPU"  # GOOD's expert weights on its GPU


# --- Memory: the fewest GPUs, EP over all of them, that could hold the experts --------------------

SMALL = get_device("h100").model_copy(update={"memory_gb": 30.0})
TOO_BIG = plan_model("mixtral-8x7b", SMALL)  # 8 experts, ~90 GB of bf16 experts against a 27.6 GB budget


def memory_plan(total: int, budget: int, parallel: ParallelConfig | None = None):
    """TOO_BIG with these expert bytes per GPU and budget, on ``parallel``."""
    assert problems(TOO_BIG)[0] == "memory"
    memory = TOO_BIG.memory.model_copy(update={"expert_weight_bytes": total, "budget_bytes": budget})
    return TOO_BIG.model_copy(update={"memory": memory, "parallel": parallel or P()})


@pytest.mark.parametrize("total, budget, parallel, first", [
    (2000, 1000, P(), P(ep=2, dp=2)),  # 2000 x 1 / 2 == 1000: at the budget is inside it
    (2001, 1000, P(), P(ep=2, dp=2)),  # 2001 // 2 == 1000 bytes per GPU (whole bytes)
    (2002, 1000, P(), P(ep=4, dp=4)),  # 1001 > 1000: two GPUs are skipped without planning them
    (4000, 1000, P(tp=2), P(ep=8, dp=4)),  # from 2 GPUs: 4000 x 2 / 4 = 2000, x 2 / 8 = 1000
])
def test_memory_plans_only_the_gpu_counts_that_could_fit(total, budget, parallel, first):
    calls, replan = recording()
    (s,) = suggest_layouts(memory_plan(total, budget, parallel), replan)
    assert calls == [first] and s.parallel == first


def test_memory_search_goes_up_to_max_gpus_inclusive():
    calls, replan = recording(lambda p: TOO_BIG)  # nothing fits: every count up to the limit is planned
    assert suggest_layouts(memory_plan(10**6, 1), replan) == () and calls == []  # and none could fit
    assert suggest_layouts(memory_plan(8000, 1000), replan, max_gpus=8) == ()
    assert calls == [P(ep=8, dp=8)]  # 16 GPUs would be above max_gpus (and above Mixtral's 8 experts)
    (s,) = suggest_layouts(memory_plan(8000, 1000), recording()[1], max_gpus=8)
    assert s.parallel == P(ep=8, dp=8) and s.why == "EP8 over 8 GPUs: 58.0 GB per GPU"  # GOOD's bytes
    assert suggest_layouts(memory_plan(8000, 1000), recording()[1], max_gpus=7) == ()


# --- Attention TP: the heads must take it ----------------------------------------------------------

def config(heads: int, kv: int | None = 0, width: int = 7680) -> dict:
    out = {"model_type": "qwen3_moe", "num_hidden_layers": 1, "num_experts": 8, "num_experts_per_tok": 2,
           "hidden_size": 64, "moe_intermediate_size": width, "num_attention_heads": heads}
    if kv != 0:
        out["num_key_value_heads"] = kv  # None: written as null (unknown KV heads)
    return out


@pytest.mark.parametrize("heads, kv, tp, message", [
    # the attention heads refuse it, the KV heads would not (TP8 is a multiple of 2 KV heads)
    (12, 2, 8, "attention TP8 does not suit 12 attention heads and 2 KV heads (the engines refuse it); "
               "TP sizes that do: 1, 2, 4, 6, 12"),
    # the KV heads refuse it (4 neither divides nor is a multiple of 6), the attention heads would not
    (24, 6, 4, "attention TP4 does not suit 24 attention heads and 6 KV heads (the engines refuse it); "
               "TP sizes that do: 1, 2, 3, 6, 12, 24"),
    (6, 3, 2, "attention TP2 does not suit 6 attention heads and 3 KV heads (the engines refuse it); "
              "TP sizes that do: 1, 3, 6"),
    # KV heads unknown (null): only the attention heads count, and the message does not name KV heads
    (12, None, 8, "attention TP8 does not suit 12 attention heads (the engines refuse it); "
                  "TP sizes that do: 1, 2, 3, 4, 6, 12"),
    # the sizes offered stop at 64 GPUs, as the suggestions do
    (130, 130, 4, "attention TP4 does not suit 130 attention heads and 130 KV heads (the engines refuse it); "
                  "TP sizes that do: 1, 2, 5, 10, 13, 26"),
])
def test_attention_tp_must_divide_the_heads_and_suit_the_kv_heads(heads, kv, tp, message):
    with pytest.raises(ParallelismError) as info:
        plan_config(config(heads, kv), parallel=P(tp=tp), select=False)
    assert str(info.value) == f"config: {message}"


@pytest.mark.parametrize("heads, kv, parallel", [
    (12, 2, P(tp=6)), (24, 6, P(tp=12)), (24, 6, P(tp=24)), (6, 3, P(tp=3)), (12, None, P(tp=3)),
    (12, 2, P(ep=8, dp=8)),  # attention TP 1: every head count takes it
    (12, 2, P(tp=16, dp=4)),  # attention TP 4 (16 GPUs over 4 replicas)
])
def test_attention_tp_the_heads_take(heads, kv, parallel):
    plan = plan_config(config(heads, kv), parallel=parallel, select=False)
    assert plan.parallel == parallel


def test_attention_tp_is_the_gpus_over_the_replicas():
    with pytest.raises(ParallelismError, match="attention TP8 does not suit 12"):
        plan_config(config(12, 2), parallel=P(tp=16, dp=2), select=False)


# --- Test oracles are never a GPU plan ------------------------------------------------------------

def test_a_registry_of_ones_own_has_its_oracle_rejected_on_a_gpu():
    from moe_registry.backends.reference import DECLARATION as REF
    from moe_registry.backends.torch_grouped_mm import DECLARATION as TGM
    from moe_registry.registry import Registry

    mine = Registry(entry_points=False, builtins=False).with_declaration(REF.model_copy(update={"id": "my-oracle"})) \
        .with_declaration(TGM)
    s = plan_model("qwen3-30b-a3b", "h100", registry=mine).groups()[0].selection
    (reason,) = s.rejection("my-oracle").reasons
    assert (reason.code, reason.required) == (ReasonCode.KNOWN_LIMITATION, "a deployment kernel")
    cpu = plan_model("qwen3-30b-a3b", "cpu", registry=mine).groups()[0].selection
    assert cpu.rejection("my-oracle") is None  # on a CPU the oracle is a plan like any other


# --- A measured decode / prefill split that does not fit ------------------------------------------

def test_a_split_is_kept_when_it_fits_and_dropped_with_a_memory_note_when_not():
    from moe_registry.measured import MeasuredPolicy

    from test_decode_phases import _gpt_oss_table

    policy = MeasuredPolicy(_gpt_oss_table())
    kept = plan_model("gpt-oss-120b", device="h100", policy=policy, memory="report")  # no fitting: kept
    s = kept.layers[0].selection
    assert [(p.phase, p.backend) for p in s.phases] == [("decode", "humming"), ("prefill", "oai-triton-kernels")]
    assert not any(n.kind == "memory" and "serves decode and prefill" in n.message for n in s.notes)
    dropped = plan_model("gpt-oss-120b", device="h100", policy=policy)
    assert dropped.memory.phases_dropped
    for lp in dropped.layers:
        s = lp.selection
        assert s.phases == () and s.backend == "humming"
        (note,) = [n for n in s.notes if "serves decode and prefill" in n.message]
        assert note.kind == "memory"
        assert note.message == ("humming serves decode and prefill: the measured split (decode humming, prefill "
                                "oai-triton-kernels) would hold two copies of the expert weights, over the memory "
                                "budget")


def test_a_plan_without_a_split_gets_no_split_note():
    for lp in GOOD.layers:
        assert not any("serves decode and prefill" in n.message for n in lp.selection.notes)


# --- A source's name ------------------------------------------------------------------------------

def test_a_model_directory_without_a_name_is_named_by_its_config(tmp_path, monkeypatch):
    import json

    (tmp_path / "config.json").write_text(json.dumps(config(8, 2)))
    monkeypatch.chdir(tmp_path)
    plan = plan_model(".", select=False)  # the working directory: Path(".").name is ""
    assert (plan.model, plan.source) == ("config.json", "config.json")
    assert plan_model(str(tmp_path), select=False).model == tmp_path.name


# --- What a plan records, and one-line refusals of malformed configs ------------------------------

def test_a_plan_records_its_model_type_and_quant_method():
    nvfp4 = plan_model("gemma-4-26b-a4b-nvfp4", select=False)
    assert (nvfp4.model_type, nvfp4.quant_method) == ("gemma4_text", "modelopt")  # the text config's type
    bf16 = plan_config(config(8, 2), select=False)
    assert (bf16.model_type, bf16.quant_method) == ("qwen3_moe", None)
    untyped = plan_config({**{k: v for k, v in config(8, 2).items() if k != "model_type"}, "hidden_act": "silu"},
                          select=False)
    assert untyped.model_type is None  # no model_type: None, never ""


@pytest.mark.parametrize("quantized_layers, message", [
    # the config itself is malformed: found while parsing it
    (5, "config quantization_config: malformed quantization config (AttributeError: "),
    # one layer's entry is malformed: found when that layer's scheme is looked up, and the layer is named
    ({"model.layers.0.mlp.experts": {"quant_algo": 5}},
     "config quantization_config: malformed quantization config for model.layers.0.mlp.experts (AttributeError: "),
])
def test_a_malformed_quant_config_is_a_one_line_quant_config_error(quantized_layers, message):
    from moe_registry.planner import QuantConfigError

    qc = {"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION", "quantized_layers": quantized_layers}
    with pytest.raises(QuantConfigError) as info:
        plan_config({**config(8, 2), "quantization_config": qc}, select=False)
    text = str(info.value)
    assert text.startswith(message) and text.endswith(")") and "\n" not in text


@pytest.mark.parametrize("key", ["moe_layer_freq", "decoder_sparse_step"])
def test_a_layer_step_below_one_is_refused_with_its_bound(key):
    from moe_registry.planner import MalformedConfig

    with pytest.raises(MalformedConfig) as info:
        plan_config({**config(8, 2), key: -2}, select=False)
    assert str(info.value) == f"config: {key} must be an integer >= 1, got -2"


def test_an_integer_over_pythons_digit_limit_is_malformed_json(tmp_path):
    from moe_registry.planner import MalformedConfig

    path = tmp_path / "config.json"
    path.write_text('{"num_hidden_layers": ' + "9" * 5000 + "}")
    with pytest.raises(MalformedConfig) as info:
        plan_model(str(path), select=False)
    text = str(info.value)
    assert text.startswith(f"{path} is not valid JSON: Exceeds the limit") and "ValueError" not in text
    assert "\n" not in text


def test_groups_are_computed_once_per_plan_and_again_for_other_layers():
    plan = plan_model("qwen3-30b-a3b", select=False)
    assert plan.groups() is plan.groups()  # cached: renderers ask for them many times
    fewer = plan.model_copy(update={"layers": plan.layers[:1]})
    assert len(fewer.groups()) == 1 and fewer.groups()[0].indices == (plan.layers[0].layer.index,)
