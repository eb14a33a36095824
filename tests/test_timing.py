"""The one timer (moe_registry.measure.timing) on the CPU: which calls it makes, how many it times,
what it refuses. No speed is asserted (speed belongs in benchmarks/)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from moe_registry.measure.timing import percentile, rep_count, time_calls, torch_device  # noqa: E402

CPU = torch.device("cpu")


def test_rep_count_fits_the_budget_within_the_bounds():
    assert rep_count(0.01, min_reps=5, max_reps=50, budget_s=0.2) == 20
    assert rep_count(1.0, min_reps=5, max_reps=50, budget_s=0.2) == 5  # slow call: the floor
    assert rep_count(1e-6, min_reps=5, max_reps=50, budget_s=0.2) == 50  # fast call: the cap
    assert rep_count(1.0, min_reps=10, max_reps=3, budget_s=0.2) == 3  # bounds crossed: the cap wins


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(11)]
    assert (percentile(values, 0.1), percentile(values, 0.5), percentile(values, 0.9)) == (1.0, 5.0, 9.0)
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN for no samples


def test_time_calls_warms_up_checks_the_first_output_and_rotates_the_sets():
    calls: list[int] = []
    seen: list[object] = []

    def fn(i: int) -> int:
        calls.append(i)
        return i * 10

    t = time_calls(fn, [(0,), (1,), (2,)], CPU, warmup=4, max_reps=5, budget_s=None, check=seen.append)
    assert seen == [0]  # the first warm-up output only
    assert calls == [0, 1, 2, 0] + [1, 2, 0, 1, 2]  # warm-up, then 5 timed calls from the second set
    assert t.reps == 5 and 0 < t.p10_us <= t.median_us <= t.p90_us


def test_time_calls_with_a_budget_calibrates_on_one_extra_call():
    calls: list[int] = []
    t = time_calls(lambda: calls.append(1), [()], CPU, warmup=2, min_reps=3, max_reps=4, budget_s=10.0)
    assert t.reps == 4 and len(calls) == 2 + 1 + 4


def test_time_calls_check_refuses_before_timing():
    def bad(out: int) -> None:
        raise RuntimeError("forward returned non-finite values")

    calls: list[int] = []
    with pytest.raises(RuntimeError, match="non-finite"):
        time_calls(lambda: calls.append(1), [()], CPU, warmup=0, max_reps=5, budget_s=None, check=bad)
    assert len(calls) == 1


@pytest.mark.parametrize("text", ["meta", "cuda:x", "tpu"])
def test_torch_device_names_the_flag_on_bad_input(text):
    with pytest.raises(ValueError, match="--torch-device"):
        torch_device(text)


def test_torch_device_default_and_cpu():
    assert torch_device("cpu").type == "cpu"
    assert torch_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
