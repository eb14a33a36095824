"""The measured policy (moe_registry.measured) and its analysis (moe_registry.measure.analysis: crossover,
regret, policy_sides) on hand-made cost tables; the `select --policy measured` CLI path.

Torch-free: nothing here times a kernel.
"""

from __future__ import annotations

import json

import pytest

from moe_registry.measure.analysis import crossover, crossovers, policy_sides, regret, winners
from moe_registry.cli import main
from moe_registry.measured import CostEntry, CostTable, MeasuredPolicy
from moe_registry.schemas.device import PRESETS
from moe_registry.schemas.layer import LayerSpec
from moe_registry.schemas.selection import Candidate
from moe_registry.selection import select_backend

from _decl_helpers import assert_selected

H100, B200, CPU = PRESETS["h100"], PRESETS["b200"], PRESETS["cpu"]
BF16 = LayerSpec(num_experts=8, top_k=2, hidden_size=256, intermediate_size=128)
INT4 = BF16.replace(quant="int4_w4a16:g128")


def table(points: dict[str, dict[int, float]], layer: LayerSpec = BF16, device=H100, **kw) -> CostTable:
    """``{backend: {tokens: median_us}}`` -> a cost table for one layer."""
    entries = tuple(CostEntry(backend=b, layer=layer.shape_key(), tokens=t, median_us=us)
                    for b, pts in points.items() for t, us in pts.items())
    return CostTable(device=device, card=kw.pop("card", "test card"), entries=entries, **kw)


def cands(*pairs: tuple[str, int]) -> list[Candidate]:
    return [Candidate(backend=b, priority=p) for b, p in pairs]


# --- MeasuredPolicy ordering -------------------------------------------------------------------------


def test_fastest_measured_candidate_wins_against_priority():
    costs = table({"slow-high-prio": {64: 50.0}, "fast-low-prio": {64: 10.0}})
    ordered, decided_by, notes = MeasuredPolicy(costs, num_tokens=64).order(
        cands(("slow-high-prio", 100), ("fast-low-prio", 1)), BF16, H100)
    assert [c.backend for c in ordered] == ["fast-low-prio", "slow-high-prio"]
    assert decided_by == "measured"
    assert ordered[0].estimated_us == 10.0 and ordered[1].estimated_us == 50.0
    assert "fast-low-prio 10 us" in notes[0].message and notes[0].kind == "measured"


def test_unmeasured_candidates_follow_in_priority_order():
    costs = table({"b": {16: 30.0}, "a": {16: 20.0}})
    ordered, decided_by, notes = MeasuredPolicy(costs, num_tokens=16).order(
        cands(("x-low", 5), ("a", 1), ("y-high", 50), ("b", 90)), BF16, H100)
    assert [c.backend for c in ordered] == ["a", "b", "y-high", "x-low"]
    assert decided_by == "measured"
    assert ordered[2].estimated_us is None
    assert "unmeasured, ranked by priority: y-high, x-low" in notes[0].message


def test_table_from_another_device_is_ignored_with_a_note():
    costs = table({"fast-low-prio": {64: 1.0}, "slow-high-prio": {64: 100.0}}, device=B200)
    ordered, decided_by, notes = MeasuredPolicy(costs, num_tokens=64).order(
        cands(("slow-high-prio", 100), ("fast-low-prio", 1)), BF16, H100)
    assert [c.backend for c in ordered] == ["slow-high-prio", "fast-low-prio"]
    assert decided_by == "priority"
    assert "b200" in notes[0].message and "declared priority decides" in notes[0].message


def test_no_measurement_for_the_shape_falls_back_to_priority():
    other = BF16.replace(hidden_size=512)
    costs = table({"fast-low-prio": {64: 1.0}}, layer=other)
    ordered, decided_by, notes = MeasuredPolicy(costs, num_tokens=64).order(
        cands(("slow-high-prio", 100), ("fast-low-prio", 1)), BF16, H100)
    assert ordered[0].backend == "slow-high-prio" and decided_by == "priority"
    assert "no measurement" in notes[0].message


def test_estimates_interpolate_log_log_between_token_counts_and_clamp_outside():
    costs = table({"a": {16: 10.0, 256: 160.0}})
    # log-log line through (16, 10) and (256, 160): slope 1, so T=64 -> 40.
    assert costs.estimate_us("a", BF16, 64) == pytest.approx(40.0)
    assert costs.estimate_us("a", BF16, 1) == 10.0 and costs.estimate_us("a", BF16, 4096) == 160.0
    assert costs.estimate_us("missing", BF16, 64) is None
    # The policy uses the interpolated value: a at T=64 (40 us) beats b (50 us) there, loses at 256.
    costs = table({"a": {16: 10.0, 256: 160.0}, "b": {16: 50.0, 256: 50.0}})
    at64, _, _ = MeasuredPolicy(costs, num_tokens=64).order(cands(("a", 1), ("b", 2)), BF16, H100)
    at200, _, _ = MeasuredPolicy(costs, num_tokens=200).order(cands(("a", 1), ("b", 2)), BF16, H100)
    assert at64[0].backend == "a" and at64[0].estimated_us == pytest.approx(40.0)
    assert at200[0].backend == "b"


def test_named_layer_entries_still_match_their_shape():
    named = BF16.replace(name="model.layers.3.mlp.experts", index=3)
    costs = CostTable(device=H100, entries=(CostEntry(backend="a", layer=named, tokens=8, median_us=5.0),))
    assert costs.points("a", BF16) == [(8, 5.0)]


def test_without_num_tokens_sums_only_the_counts_every_measured_backend_has():
    # 'gappy' failed at 4096; summing its remaining points would make it look cheapest.
    costs = table({"full": {1: 10.0, 64: 20.0, 4096: 1000.0}, "gappy": {1: 12.0, 64: 25.0}})
    ordered, decided_by, notes = MeasuredPolicy(costs).order(cands(("full", 1), ("gappy", 2)), BF16, H100)
    assert [c.backend for c in ordered] == ["full", "gappy"] and decided_by == "measured"
    assert ordered[0].estimated_us == pytest.approx(30.0)
    assert "summed over T=1,64" in notes[0].message


def test_select_backend_end_to_end_on_planned_h100():
    # Planning for h100: triton-fused-moe (priority first), flashinfer-cutlass, torch-grouped-mm and reference
    # are eligible.
    default = select_backend(BF16, "h100")
    assert_selected(default, "triton-fused-moe", decided_by="priority")
    costs = table({"flashinfer-cutlass": {1: 90.0, 4096: 900.0}, "torch-grouped-mm": {1: 40.0, 4096: 2000.0},
                   "triton-fused-moe": {1: 60.0, 4096: 1000.0}})
    small = select_backend(BF16, "h100", policy=MeasuredPolicy(costs, num_tokens=1))
    large = select_backend(BF16, "h100", policy=MeasuredPolicy(costs, num_tokens=4096))
    assert (small.backend, small.decided_by) == ("torch-grouped-mm", "measured")
    assert (large.backend, large.decided_by) == ("flashinfer-cutlass", "measured")
    assert [c.backend for c in small.eligible][-1] == "reference"  # unmeasured: last, by priority
    assert any(n.kind == "measured" for n in small.notes)
    # The same table does not decide for another device family.
    on_b200 = select_backend(BF16, "b200", policy=MeasuredPolicy(costs, num_tokens=1))
    assert on_b200.decided_by == "priority"


# --- crossover -----------------------------------------------------------------------------------------


def test_crossover_where_the_winner_flips():
    # a: 10 us at T=1 to 1000 us at T=1024 (log-log slope ln100/ln1024); b: 50 us flat.
    # a(T) = 10 * T**0.6644 = 50 at T = 5**(1/0.6644) = 11.27: a wins up to 11, b from 12.
    costs = table({"a": {1: 10.0, 1024: 1000.0}, "b": {1: 50.0, 1024: 50.0}}, layer=INT4)
    assert crossover(costs, INT4, "a", "b") == 12
    assert crossover(costs, INT4, "b", "a") == 12  # symmetric
    assert costs.estimate_us("a", INT4, 11) < 50.0 < costs.estimate_us("a", INT4, 12)


def test_crossover_at_a_tie_is_the_first_count_where_the_new_winner_is_strictly_faster():
    costs = table({"marlin": {1: 10.0, 16: 40.0, 256: 160.0},
                   "torch-grouped-mm": {1: 40.0, 16: 40.0, 256: 80.0}}, layer=INT4)
    assert crossover(costs, INT4, "marlin", "torch-grouped-mm") == 17


def test_several_crossovers_and_none():
    costs = table({"a": {1: 1.0, 10: 30.0, 100: 1.0}, "b": {1: 10.0, 10: 10.0, 100: 10.0}})
    found = crossovers(costs, BF16, "a", "b")
    assert len(found) == 2 and 1 < found[0] <= 10 < found[1] <= 100
    assert crossover(costs, BF16, "a", "b") == found[0]
    always = table({"a": {1: 1.0, 100: 2.0}, "b": {1: 10.0, 100: 20.0}})
    assert crossover(always, BF16, "a", "b") is None
    assert crossover(always, BF16, "a", "missing") is None


def test_crossover_only_over_the_range_both_were_measured():
    # b was measured at 512..4096 only; below that its estimate is clamped, not measured.
    costs = table({"a": {1: 1.0, 512: 100.0, 4096: 200.0}, "b": {512: 150.0, 4096: 150.0}})
    assert crossover(costs, BF16, "a", "b") == 1 + max(t for t in range(512, 4097)
                                                       if costs.estimate_us("a", BF16, t) <= 150.0)
    assert winners(costs, BF16) == {1: "a", 512: "a", 4096: "b"}


# --- regret --------------------------------------------------------------------------------------------


def test_regret_is_one_at_measured_points():
    truth = table({"torch-grouped-mm": {1: 40.0, 64: 60.0, 4096: 900.0},
                   "flashinfer-cutlass": {1: 90.0, 64: 70.0, 4096: 600.0}})
    result = regret(truth, truth)
    assert [r["regret"] for r in result["rows"]] == [1.0, 1.0, 1.0]
    assert all(r["decided_by"] == "measured" and not r["held_out"] for r in result["rows"])
    s = result["summary"]
    assert s["max"] == 1.0 and s["mean"] == 1.0 and s["meets_target"] and s["n"] == 3
    # Declared priority (flashinfer-cutlass first for bf16) loses at T=1 and 64.
    assert s["declared_max"] == pytest.approx(90.0 / 40.0)
    assert [r["declared"] for r in result["rows"]] == ["flashinfer-cutlass"] * 3


def test_regret_at_held_out_counts_where_interpolation_misses_the_crossover():
    # The policy table saw only T=1 and T=4096; the truth flips at 64 and back at 4096.
    policy = table({"a": {1: 10.0, 4096: 1000.0}, "b": {1: 20.0, 4096: 2000.0}})
    truth = table({"a": {1: 10.0, 64: 100.0, 4096: 1000.0}, "b": {1: 20.0, 64: 80.0, 4096: 2000.0}})
    result = regret(policy, truth)
    rows = {r["tokens"]: r for r in result["rows"]}
    assert rows[64]["chosen"] == "a" and rows[64]["best"] == "b" and rows[64]["held_out"]
    assert rows[64]["regret"] == pytest.approx(100.0 / 80.0)
    assert result["summary"]["max"] == pytest.approx(1.25) and not result["summary"]["meets_target"]
    assert result["summary"]["held_out_n"] == 1 and result["summary"]["held_out_max"] == pytest.approx(1.25)
    assert result["summary"]["mean"] == pytest.approx((1 + 1.25 + 1) / 3)
    # Explicit layers / token counts restrict the rows.
    only = regret(policy, truth, layers=[BF16], tokens=[1, 64])
    assert [r["tokens"] for r in only["rows"]] == [1, 64]


def test_regret_with_a_policy_table_from_another_device_uses_priority():
    truth = table({"torch-grouped-mm": {1: 40.0}, "flashinfer-cutlass": {1: 90.0}})
    policy = table({"torch-grouped-mm": {1: 40.0}, "flashinfer-cutlass": {1: 90.0}}, device=B200)
    result = regret(policy, truth)
    assert result["rows"][0]["decided_by"] == "priority" and result["rows"][0]["chosen"] == "flashinfer-cutlass"
    assert "falls back to declared priority" in result["summary"]["note"]


# --- the policy on each side of a crossover -------------------------------------------------------------


def test_policy_picks_each_side_of_the_int4_crossover_on_planned_h100():
    # Planning int4_w4a16 g128 on h100: marlin (priority 100), torch-grouped-mm (30), reference.
    costs = table({"marlin": {1: 30.0, 16: 35.0, 64: 60.0, 512: 400.0, 4096: 3000.0},
                   "torch-grouped-mm": {1: 90.0, 16: 95.0, 64: 110.0, 512: 250.0, 4096: 1200.0}}, layer=INT4)
    x = crossover(costs, INT4, "marlin", "torch-grouped-mm")
    assert x is not None and 64 < x <= 512
    sides = policy_sides(costs, INT4, "marlin", "torch-grouped-mm", "h100")
    assert sides["crossover"] == x and sides["sides_differ"]
    by_t = {r["tokens"]: r for r in sides["rows"]}
    assert set(by_t) == {64, x - 1, x, 512}
    assert by_t[x - 1]["backend"] == "marlin" and by_t[x]["backend"] == "torch-grouped-mm"
    assert all(r["decided_by"] == "measured" for r in sides["rows"])
    # The default policy runs one backend at every T: Humming on SM90 (vLLM's prefers_humming order).
    assert_selected(select_backend(INT4, "h100"), "humming")


# --- CLI: select --policy measured ------------------------------------------------------------------------


def _select_argv(costs_path, tokens: int, *extra: str) -> list[str]:
    return ["select", "--experts", "8", "--top-k", "2", "--hidden", "256", "--intermediate", "128",
            "--device", "h100", "--policy", "measured", "--costs", str(costs_path), "--tokens", str(tokens), *extra]


def test_cli_select_with_measured_policy(tmp_path, capsys):
    path = tmp_path / "costs.json"
    table({"flashinfer-cutlass": {1: 90.0, 4096: 900.0}, "torch-grouped-mm": {1: 40.0, 4096: 2000.0}}).save(path)
    assert main(_select_argv(path, 1, "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backend"] == "torch-grouped-mm" and data["decided_by"] == "measured"
    assert data["eligible"][0]["estimated_us"] == 40.0
    assert main(_select_argv(path, 4096, "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backend"] == "flashinfer-cutlass" and data["decided_by"] == "measured"
    assert main(_select_argv(path, 1)) == 0  # the rich rendering works too
    out = capsys.readouterr().out
    assert "torch-grouped-mm" in out and "measured" in out


@pytest.mark.parametrize("content", ["{not json", '{"schema_version": 1}', '{"device": "h100", "entries": 3}', ""])
def test_cli_malformed_cost_file_exits_2_with_one_line(tmp_path, capsys, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert main(_select_argv(path, 1)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moe-registry: error:") and "cost table" in lines[0]


def test_cli_missing_cost_file_and_missing_costs_flag_exit_2(tmp_path, capsys):
    assert main(_select_argv(tmp_path / "nope.json", 1)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read cost table" in err[0]
    argv = _select_argv(tmp_path / "x.json", 1)
    i = argv.index("--costs")
    assert main(argv[:i] + argv[i + 2:]) == 2
    assert "--costs" in capsys.readouterr().err

