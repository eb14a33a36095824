"""Decode measured as engines run it (issue 21): graph entries in cost tables, the measured policy ranking
decode by graphed times, the decode / prefill backends in the Selection and the plan, the memory fit
counting a second copy, and the rendering. Torch-free: hand-made cost tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_registry.cli import main
from moe_registry.measure.analysis import regret, winners
from moe_registry.measured import DECODE_BUCKETS, CostEntry, CostTable, MeasuredPolicy
from moe_registry.planner import plan_model
from moe_registry.render import plan_json
from moe_registry.schemas.device import PRESETS
from moe_registry.schemas.layer import LayerSpec
from moe_registry.schemas.selection import Candidate, PhaseChoice
from moe_registry.selection import select_backend

H100, B200 = PRESETS["h100"], PRESETS["b200"]
INT4 = LayerSpec(num_experts=8, top_k=2, hidden_size=256, intermediate_size=128, quant="int4_w4a16:g128")


def entries(backend: str, points: dict[int, float], mode: str = "eager", layer: LayerSpec = INT4) -> list[CostEntry]:
    return [CostEntry(backend=backend, layer=layer.shape_key(), tokens=t, mode=mode, median_us=us)
            for t, us in points.items()]


def table(*groups: list[CostEntry], device=H100) -> CostTable:
    return CostTable(device=device, card="test card", entries=tuple(e for g in groups for e in g))


def cand(backend: str, priority: int, held: str = "int4_w4a16:g128", size: int = 1000) -> Candidate:
    return Candidate(backend=backend, priority=priority, weights_held=held, expert_weight_bytes=size)


def test_decode_buckets_are_the_graph_buckets():
    from moe_registry.execution import graphs

    assert graphs.DEFAULT_BUCKETS is DECODE_BUCKETS and DECODE_BUCKETS[-1] == 64


def test_old_tables_load_as_eager():
    data = table(entries("a", {1: 5.0})).model_dump(mode="json")
    del data["entries"][0]["mode"]
    data["schema_version"] = 1
    loaded = CostTable.model_validate(data)
    assert loaded.entries[0].mode == "eager" and loaded.points("a", INT4) == [(1, 5.0)]
    assert loaded.points("a", INT4, "graph") == []


def test_points_and_estimates_keep_the_modes_apart():
    costs = table(entries("a", {1: 300.0, 64: 400.0}), entries("a", {1: 40.0, 64: 90.0}, "graph"))
    assert costs.points("a", INT4) == [(1, 300.0), (64, 400.0)]
    assert costs.points("a", INT4, "graph") == [(1, 40.0), (64, 90.0)]
    assert costs.estimate_us("a", INT4, 64, "graph") == 90.0


def test_decode_is_ranked_by_graphed_time_where_measured():
    # eager, "fast-eager" wins at T=1 (host overhead differences); graphed, "fast-graph" does
    costs = table(entries("fast-eager", {1: 300.0, 512: 900.0}), entries("fast-graph", {1: 400.0, 512: 800.0}),
                  entries("fast-eager", {1: 60.0}, "graph"), entries("fast-graph", {1: 40.0}, "graph"))
    policy = MeasuredPolicy(costs, num_tokens=1)
    ordered, decided_by, notes = policy.order([cand("fast-eager", 100), cand("fast-graph", 1)], INT4, H100)
    assert [c.backend for c in ordered] == ["fast-graph", "fast-eager"]
    assert ordered[0].estimated_us == 40.0
    # above the last bucket an engine runs eagerly: eager times decide
    ordered, _, _ = MeasuredPolicy(costs, num_tokens=512).order([cand("fast-eager", 100), cand("fast-graph", 1)],
                                                                INT4, H100)
    assert ordered[0].backend == "fast-graph" and ordered[0].estimated_us == 800.0
    assert policy.run_us("fast-graph", INT4, 64) == (40.0, "graph")
    assert policy.run_us("fast-graph", INT4, 65)[1] == "eager"
    # a backend without graph times runs eagerly at decode, and is ranked by that
    only_eager = table(entries("x", {1: 30.0}), entries("y", {1: 200.0}), entries("y", {1: 35.0}, "graph"))
    ordered, _, _ = MeasuredPolicy(only_eager, num_tokens=1).order([cand("x", 1), cand("y", 1)], INT4, H100)
    assert [c.backend for c in ordered] == ["x", "y"]


def _split_table(device=H100) -> CostTable:
    return table(entries("dec", {1: 300.0, 64: 400.0, 512: 2000.0, 4096: 9000.0}),
                 entries("dec", {1: 20.0, 64: 50.0}, "graph"),
                 entries("pre", {1: 310.0, 64: 420.0, 512: 1000.0, 4096: 5000.0}),
                 entries("pre", {1: 60.0, 64: 90.0}, "graph"),
                 entries("bf16", {1: 200.0, 64: 300.0, 512: 500.0, 4096: 1000.0}),
                 entries("bf16", {1: 50.0, 64: 60.0}, "graph"), device=device)


def test_phases_pick_decode_and_prefill_among_backends_holding_the_same_weights():
    policy = MeasuredPolicy(_split_table())
    pool = [cand("dec", 90), cand("pre", 100), cand("bf16", 60, held="bf16 (dequantized from int4_w4a16:g128)",
                                                    size=4000)]
    phases, notes = policy.phases(pool, INT4, H100)
    assert [(p.phase, p.backend, p.mode) for p in phases] == [("decode", "dec", "graph"), ("prefill", "pre", "eager")]
    assert phases[0].tokens == "T <= 64" and phases[1].tokens == "T > 64"
    assert phases[0].estimated_us == 70.0 and phases[1].estimated_us == 6000.0  # bf16 is faster but holds bf16
    assert phases[1].expert_weight_bytes == 1000
    assert "keeps its own copy" in notes[0].message and "summed over T=1,64" in notes[0].message


def test_phases_need_both_sides_and_the_same_card():
    decode_only = table(entries("a", {1: 5.0, 64: 9.0}), entries("b", {1: 6.0, 64: 7.0}))
    assert MeasuredPolicy(decode_only).phases([cand("a", 1), cand("b", 1)], INT4, H100) == ((), ())
    prefill_only = table(entries("a", {512: 5.0}), entries("b", {512: 6.0}))
    assert MeasuredPolicy(prefill_only).phases([cand("a", 1), cand("b", 1)], INT4, H100) == ((), ())
    assert MeasuredPolicy(_split_table(device=B200)).phases([cand("dec", 1), cand("pre", 1)], INT4, H100) == ((), ())
    assert MeasuredPolicy(_split_table()).phases([cand("unmeasured", 1)], INT4, H100) == ((), ())


def test_one_backend_for_both_phases_says_so():
    costs = table(entries("a", {1: 5.0, 512: 50.0}), entries("b", {1: 6.0, 512: 60.0}))
    phases, notes = MeasuredPolicy(costs).phases([cand("a", 1), cand("b", 2)], INT4, H100)
    assert [p.backend for p in phases] == ["a", "a"] and phases[0].mode == "eager"
    assert "own copy" not in notes[0].message


def test_ties_go_to_declared_priority():
    costs = table(entries("a", {1: 5.0, 512: 50.0}), entries("b", {1: 5.0, 512: 50.0}))
    phases, _ = MeasuredPolicy(costs).phases([cand("a", 1), cand("b", 2)], INT4, H100)
    assert [p.backend for p in phases] == ["b", "b"]


def test_held_bytes_count_each_backend_once():
    from moe_registry.schemas.selection import Selection

    base = select_backend(INT4, "h100")
    chosen = base.eligible[0]
    own = chosen.expert_weight_bytes
    assert base.held_bytes() == own
    split = base.model_copy(update={"phases": (
        PhaseChoice(phase="decode", tokens="T <= 64", backend=chosen.backend, mode="graph", expert_weight_bytes=own),
        PhaseChoice(phase="prefill", tokens="T > 64", backend="other", mode="eager", expert_weight_bytes=7))})
    assert isinstance(split, Selection) and split.held_bytes() == own + 7


def _measured_plan_table() -> CostTable:
    layer = plan_model("qwen3-30b-a3b-gptq-int4", select=False).layers[0].layer.shape_key()
    return table(entries("humming", {1: 400.0, 64: 500.0, 4096: 1800.0}, layer=layer),
                 entries("humming", {1: 45.0, 64: 160.0}, "graph", layer=layer),
                 entries("marlin", {1: 350.0, 64: 450.0, 4096: 1500.0}, layer=layer),
                 entries("marlin", {1: 49.0, 64: 173.0}, "graph", layer=layer))


def test_plan_carries_and_renders_decode_and_prefill(tmp_path, capsys):
    costs = _measured_plan_table()
    path = tmp_path / "costs.json"
    costs.save(path)
    plan = plan_model("qwen3-30b-a3b-gptq-int4", device="h100", policy=MeasuredPolicy(costs))
    s = plan.layers[0].selection
    assert [(p.phase, p.backend) for p in s.phases] == [("decode", "humming"), ("prefill", "marlin")]
    group = plan_json(plan)["groups"][0]
    assert group["serves"] == {"decode": "humming", "prefill": "marlin"}
    assert group["selection"]["phases"][0]["mode"] == "graph"
    # the memory fit counts both copies
    assert plan.memory.expert_weight_bytes == 2 * len(plan.layers) * s.eligible[0].expert_weight_bytes
    assert main(["explain", "qwen3-30b-a3b-gptq-int4", "--device", "h100", "--policy", "measured",
                 "--costs", str(path)]) == 0
    out = capsys.readouterr().out
    assert "decode (T <= 64, graph): humming; prefill (T > 64): marlin" in " ".join(out.split())
    assert main(["explain", "qwen3-30b-a3b-gptq-int4", "--device", "h100", "--policy", "measured",
                 "--costs", str(path), "--markdown"]) == 0
    assert "- decode (T <= 64, graph): `humming`; prefill (T > 64): `marlin`" in capsys.readouterr().out


def test_declared_priority_plans_one_backend_for_every_phase():
    plan = plan_model("qwen3-30b-a3b-gptq-int4", device="h100")
    s = plan.layers[0].selection
    assert s.phases == ()
    assert plan_json(plan)["groups"][0]["serves"] == {"decode": s.backend, "prefill": s.backend}


def test_winners_and_regret_as_engines_run_it():
    costs = _split_table()
    assert winners(costs, INT4)[1] == "bf16"  # eager: 200 us
    assert winners(costs, INT4, "graph")[1] == "dec"  # graphed: 20 us
    rows = {r["tokens"]: r for r in regret(costs, costs, registry=_Registry())["rows"]}
    assert rows[1]["best"] == "dec" and rows[1]["best_us"] == 20.0  # truth at decode is the graphed time
    assert rows[4096]["best"] == "bf16"


class _Registry:
    def get(self, backend):
        raise KeyError(backend)


@pytest.mark.parametrize("argv", [["--json"], []])
def test_bench_report_shows_graph_rows(argv, tmp_path, capsys):
    from moe_registry.measure.report import print_report
    from moe_registry.render import console

    print_report(console(), _split_table())
    out = capsys.readouterr().out
    assert "dec (graph)" in out and "pre (graph)" in out
    assert json.loads(_split_table().model_dump_json())["entries"][4]["mode"] == "graph"


def test_decode_bench_floor_and_summary():
    import sys
    from pathlib import Path

    bench_dir = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if not Path(bench_dir, "decode_bench.py").is_file():
        pytest.skip("benchmarks/ is not beside the tests (a copy of the package only)")
    sys.path.insert(0, bench_dir)
    try:
        import decode_bench
    finally:
        sys.path.remove(bench_dir)
    gpt_oss = plan_model("gpt-oss-120b", select=False).layers[0].layer.shape_key()
    # T=1: top-4 of 128 experts, each expert's MXFP4 weights + scales + biases, at 3350 GB/s
    per_expert = gpt_oss.expert_weight_bytes() / 128
    assert decode_bench.floor_us(gpt_oss, 1, 3350) == pytest.approx(4 * per_expert / 3350e9 * 1e6)
    assert decode_bench.floor_us(gpt_oss, 4096, 3350) == pytest.approx(128 * per_expert / 3350e9 * 1e6, rel=1e-9)
    costs = table(entries("dec", {1: 300.0}, layer=gpt_oss), entries("dec", {1: 20.0}, "graph", layer=gpt_oss))
    record = {"case": "gpt-oss", "table": costs.model_dump(mode="json"), "layer": gpt_oss.model_dump(mode="json"),
              "layer_describe": gpt_oss.describe(), "floor_us": {"1": 15.8},
              "skipped": [{"backend": "flashinfer-cutlass", "stage": "unavailable", "tokens": None, "reason": "no"}]}
    lines = decode_bench.summary_lines([record, {"case": "other", "error": "boom"}], {"card": "c", "date": "d"})
    text = "\n".join(lines)
    assert "dec graph" in text and "20.0" in text and "dec eager" in text and "300.0" in text
    assert "HBM floor" in text and "15.8" in text
    assert "not timed: flashinfer-cutlass (unavailable)" in text and "other: no table (boom)" in text


def test_run_says_which_backend_serves_decode_and_prefill(tmp_path):
    pytest.importorskip("torch")
    from moe_registry.measure.run import _serves

    costs = _measured_plan_table()
    layer = plan_model("qwen3-30b-a3b-gptq-int4", select=False).layers[0].layer
    split = select_backend(layer, "h100", policy=MeasuredPolicy(costs, num_tokens=1))
    assert split.backend == "humming"  # graphed T=1: 45 vs 49 us
    assert _serves(split) == {"decode": "humming", "prefill": "marlin"}
    one = select_backend(layer, "h100")
    assert _serves(one) == {"decode": one.backend, "prefill": one.backend}
    path = tmp_path / "costs.json"
    costs.save(path)
    assert main(["run", "--preset", "qwen3-30b-a3b", "--tp", "2", "--costs", str(path)]) == 2  # sharded: refused


def _with_phases(selection, *backends_bytes):
    phases = tuple(PhaseChoice(phase=phase, tokens="T", backend=b, mode="eager", expert_weight_bytes=n)
                   for phase, (b, n) in zip(("decode", "prefill"), backends_bytes))
    return selection.model_copy(update={"phases": phases})


def test_memory_counts_a_second_copy_only_for_another_backend():
    from moe_registry.memory import _bytes, split

    base = select_backend(INT4, "h100")
    own = base.eligible[0].expert_weight_bytes
    assert own and _bytes(None) == 0 and _bytes(None, False) == 0 and not split(None)
    assert _bytes(base) == own and _bytes(base, False) == own and not split(base)
    same = _with_phases(base, (base.backend, own), (base.backend, own))
    assert _bytes(same) == own and not split(same)
    other = _with_phases(base, (base.backend, own), ("other", 5))
    assert split(other) and _bytes(other) == own + 5 and _bytes(other, False) == own
    unknown = other.model_copy(update={"eligible": (base.eligible[0].model_copy(update={"expert_weight_bytes": None}),)})
    assert _bytes(unknown, False) == 0


COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "decode-h100" / "costs.json"


def _gpt_oss_table() -> CostTable:
    """The committed H100 numbers at the gpt-oss-120b layer (benchmarks/results/decode-h100/), two backends."""
    layer = plan_model("gpt-oss-120b", select=False).layers[0].layer.shape_key()
    return table(entries("humming", {1: 617.0, 16: 367.2, 64: 619.2, 512: 932.1, 4096: 2702.3}, layer=layer),
                 entries("humming", {1: 72.8, 16: 310.0, 64: 600.4}, "graph", layer=layer),
                 entries("oai-triton-kernels", {1: 1446.7, 16: 1185.2, 64: 1190.5, 512: 1190.1, 4096: 2293.7},
                         layer=layer),
                 entries("oai-triton-kernels", {1: 133.1, 16: 375.9, 64: 678.7}, "graph", layer=layer))


def test_the_committed_h100_table_loads_with_graph_entries():
    if not COMMITTED.is_file():
        pytest.skip("benchmarks/results is not beside the tests")
    costs = CostTable.load(COMMITTED)
    gpt_oss = _gpt_oss_table()
    layer = gpt_oss.entries[0].layer
    for backend in ("humming", "oai-triton-kernels"):
        for mode in ("eager", "graph"):
            mine = dict(gpt_oss.points(backend, layer, mode))
            assert {t: us for t, us in costs.points(backend, layer, mode) if t in mine} == pytest.approx(mine, abs=0.06)


def test_a_split_that_does_not_fit_is_dropped_before_any_backend_is_rejected():
    # gpt-oss-120b on one H100 with the H100 numbers: decode humming, prefill oai-triton-kernels would hold
    # 2 x 61 GB; one copy fits, so each layer keeps its chosen backend for both phases, with a note
    policy = MeasuredPolicy(_gpt_oss_table())
    split_plan = plan_model("gpt-oss-120b", device="h100", policy=policy, memory="report")
    s = split_plan.layers[0].selection
    assert [(p.phase, p.backend) for p in s.phases] == [("decode", "humming"), ("prefill", "oai-triton-kernels")]
    one = s.eligible[0].expert_weight_bytes
    assert split_plan.memory.expert_weight_bytes == 36 * 2 * one and not split_plan.memory.fits
    assert not split_plan.memory.phases_dropped  # report only
    plan = plan_model("gpt-oss-120b", device="h100", policy=policy)
    s = plan.layers[0].selection
    assert s.phases == () and s.backend == "humming"
    assert plan.memory.phases_dropped and plan.memory.fits and plan.memory.expert_weight_bytes == 36 * one
    # only the dequantizing one, as without a split (the fp32 reference is never a GPU plan)
    assert plan.memory.rejected == ("torch-grouped-mm",)
    assert any("humming serves decode and prefill: the measured split (decode humming, prefill oai-triton-kernels) "
               "would hold two copies" in n.message for n in s.notes)
    assert plan_json(plan)["groups"][0]["serves"] == {"decode": "humming", "prefill": "humming"}
    # on an H200 the same table is another card's: declared priority, no split
    assert plan_model("gpt-oss-120b", device="h200", policy=policy).layers[0].selection.phases == ()


def test_phase_times_are_rounded_and_the_note_names_both_sides():
    costs = table(entries("a", {1: 0.1234567, 8: 1.0, 512: 10.0004, 4096: 20.0}),
                  entries("b", {1: 9.0, 8: 9.0, 512: 1.40049, 4096: 2.0}))
    phases, notes = MeasuredPolicy(costs, graph_tokens=8).phases([cand("a", 1), cand("b", 1)], INT4, H100)
    assert [(p.backend, p.estimated_us, p.tokens) for p in phases] == [("a", 1.123, "T <= 8"), ("b", 3.4, "T > 8")]
    text = notes[0].message
    assert text.startswith("decode (T <= 8, eager): a 1.12346 us summed over T=1,8; prefill (T > 8, eager): b 3.40049 us ")
    assert "summed over T=512,4096, among backends holding int4_w4a16:g128;" in text
    unlabelled = MeasuredPolicy(costs).phases([cand("a", 1, held=""), cand("b", 1, held="")], INT4, H100)[1]
    assert "among backends holding the same weights" in unlabelled[0].message


def test_summed_policy_without_a_common_token_count_uses_the_union():
    costs = table(entries("a", {1: 10.0}), entries("b", {4096: 1.0}))
    ordered, decided_by, notes = MeasuredPolicy(costs).order([cand("a", 1), cand("b", 1)], INT4, H100)
    # union grid 1, 4096: a = 10 + 10 (clamped), b = 1 + 1
    assert [(c.backend, c.estimated_us) for c in ordered] == [("b", 2.0), ("a", 20.0)]
    assert "summed over T=1,4096" in notes[0].message
    nothing = table(entries("a", {1: 10.0}, layer=INT4.replace(hidden_size=512)))
    ordered, decided_by, _ = MeasuredPolicy(nothing).order([cand("a", 1), cand("b", 2)], INT4, H100)
    assert decided_by == "priority" and ordered[0].backend == "b"



def _fit(selection, n: int, memory_gb: float, mode: str = "prefer"):
    from moe_registry.memory import fit

    device = H100.model_copy(update={"memory_gb": memory_gb})
    return fit({selection.layer: n}, lambda key, extra: _drop(selection, extra), device, mode)


def _drop(selection, extra):
    """The planner's re-selection with memory_exceeded reasons: the rejected backends leave the eligible list."""
    gone = {b for b, _ in extra}
    eligible = tuple(c for c in selection.eligible if c.backend not in gone)
    if not eligible:
        return None
    return selection.model_copy(update={"eligible": eligible, "backend": eligible[0].backend})


def test_fit_counts_drops_and_keeps_the_split_by_the_budget():
    from moe_registry.memory import BUDGET_FRACTION, GB

    base = select_backend(INT4, "h100")
    own = base.eligible[0].expert_weight_bytes
    biggest = max(c.expert_weight_bytes for c in base.eligible)
    assert biggest >= 2 * own  # a dequantizing backend (bf16 / fp32) is eligible too
    s = _with_phases(base, (base.backend, own), ("other", own))
    n = 1000

    def gb_for(total_bytes: float) -> float:  # device memory whose budget is total_bytes (+ a little)
        return (total_bytes + 1) / (BUDGET_FRACTION * GB)

    # two copies fit: counted, kept; the biggest backend alone fits too, so nothing is rejected
    _, m = _fit(s, n, gb_for(n * biggest))
    assert m.fits and not m.phases_dropped and m.expert_weight_bytes == 2 * n * own and m.rejected == ()
    # one copy fits, two do not: the split goes first, then nothing needs rejecting
    _, m = _fit(s, n, gb_for(n * own * 1.5))
    assert m.fits and m.phases_dropped and m.expert_weight_bytes == n * own
    # not even one copy fits: the split is dropped and the fit reports it (no endless loop)
    _, m = _fit(s, n, gb_for(n * own * 0.5))
    assert m.fits is False and m.phases_dropped
    # report mode: both copies counted, nothing dropped
    _, m = _fit(s, n, gb_for(n * own * 1.5), "report")
    assert m.fits is False and not m.phases_dropped and m.expert_weight_bytes == 2 * n * own


def test_after_dropping_a_split_the_other_backends_are_judged_with_one_copy():
    from moe_registry.memory import BUDGET_FRACTION, GB

    base = select_backend(INT4, "h100")
    own = base.eligible[0].expert_weight_bytes
    bigger = base.eligible[1].model_copy(update={"backend": "bigger", "expert_weight_bytes": own * 3 // 2})
    s = _with_phases(base.model_copy(update={"eligible": (base.eligible[0], bigger)}), (base.backend, own),
                     ("other", own))
    n = 1000
    _, m = _fit(s, n, (n * own * 5 // 4) / (BUDGET_FRACTION * GB))  # one copy fits, two do not
    assert m.phases_dropped and m.fits
    assert m.rejected == ("bigger",)  # 1.5 copies would not fit (judged against one copy, not two)
