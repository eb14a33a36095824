"""The one timer: `moe-registry bench`, `run`, `tune` and the scripts in benchmarks/ all time with it.

Method (the project's measuring notes): warm up first; time each call between two CUDA events
recorded back to back on the current stream (``perf_counter`` on the CPU), so the figure includes
the launch gaps the host leaves, which is what an eager forward costs; rotate several input sets
so caches do not flatter; take the median (and p10 / p90) of many repetitions. ``time_graph``
captures the call in CUDA graphs and times the replays instead (launch gaps removed).

Torch is imported by the functions, not by this module.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    import torch

__all__ = ["MAX_CPU_FLOP", "MAX_REPEATS", "MAX_TOKENS", "NOISY_SPREAD", "Timing", "check_run_size", "noise_warning", "noisy",
           "percentile", "rep_count", "time_calls", "time_graph", "torch_device", "usable_cpus"]

# Bounds of `run` / `bench` / the distributed run, checked before anything is built or spawned:
# far above a real batch (engines cap a forward at max_num_batched_tokens, 8k-64k) and a real
# measurement, far below what would take hours or exhaust memory.
MAX_TOKENS = 65_536
MAX_REPEATS = 10_000
MAX_CPU_FLOP = 2e12  # one `run` on the CPU: about a minute on two cores


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), the bound of gloo ranks here."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_run_size(tokens: object, repeats: object, *, flop_per_token: float | None = None,
                   cpu: bool = False) -> None:
    """ValueError (one line) for token or repeat counts out of bounds, or, on the CPU, for a run
    whose forwards (warm-up, ``repeats`` timed, the reference) would do more than ``MAX_CPU_FLOP``."""
    for flag, value, limit in (("--tokens", tokens, MAX_TOKENS), ("--repeats", repeats, MAX_REPEATS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise ValueError(f"{flag} must be an integer from 1 to {limit:,}, got {value!r}")
    if cpu and flop_per_token is not None:
        total = flop_per_token * tokens * (repeats + 2)  # type: ignore[operator]
        if total > MAX_CPU_FLOP:
            raise ValueError(f"this run would compute about {total:.1e} FLOP on the CPU (the limit is "
                             f"{MAX_CPU_FLOP:.0e}, about a minute here): lower --tokens or --repeats, or run on a GPU")

# A sample below a nanosecond is a clock artefact; cost tables need strictly positive times.
_MIN_SAMPLE_US = 1e-3


@dataclasses.dataclass(frozen=True)
class Timing:
    """Microseconds per call: median, 10th and 90th percentile over ``reps`` timed calls."""

    median_us: float
    p10_us: float
    p90_us: float
    reps: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# p90 / p10 above this: the machine was busy or the clock coarse; the median is not to be trusted
# (a warning, not a failure: on a quiet GPU the spread is a few percent).
NOISY_SPREAD = 1.5


def noisy(p10_us: float, p90_us: float) -> bool:
    """Whether a timing's spread (p90 / p10) is too wide to trust its median."""
    return p10_us > 0 and p90_us / p10_us > NOISY_SPREAD


def noise_warning(count: int, of: int) -> str:
    return (f"warning: {count} of {of} timings are too noisy to trust (p90 / p10 > {NOISY_SPREAD:g}): rerun on an "
            "idle machine or with more repetitions")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of already sorted values (NaN for none)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))]


def rep_count(one_call_s: float, *, min_reps: int, max_reps: int, budget_s: float) -> int:
    """How many calls to time: as many as fit ``budget_s`` of timed work, within
    ``[min_reps, max_reps]`` (``max_reps`` wins when the two cross)."""
    return int(min(max_reps, max(min_reps, budget_s / max(one_call_s, 1e-7))))


def _summary(samples: list[float], reps: int) -> Timing:
    samples = sorted(max(s, _MIN_SAMPLE_US) for s in samples)
    return Timing(median_us=statistics.median(samples), p10_us=percentile(samples, 0.1),
                  p90_us=percentile(samples, 0.9), reps=reps)


def _sync(device: "torch.device") -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def time_calls(fn: Callable[..., Any], input_sets: Sequence[Sequence[Any]], device: "torch.device", *,
               warmup: int = 5, min_reps: int = 10, max_reps: int = 200, budget_s: float | None = 0.15,
               check: Callable[[Any], None] | None = None) -> Timing:
    """Time ``fn(*input_sets[i % n])`` per call, in microseconds.

    ``warmup`` untimed calls rotate over the sets (``check``, when given, sees the first one's
    output and raises to refuse a wrong result before anything is timed). With ``budget_s``, one
    more call calibrates the repetition count (:func:`rep_count`); with ``budget_s=None`` exactly
    ``max_reps`` calls are timed. Timed calls start at the set after the calibration call's."""
    n = len(input_sets)
    for i in range(warmup):
        out = fn(*input_sets[i % n])
        if i == 0 and check is not None:
            check(out)
        del out
    if warmup == 0 and check is not None:
        check(fn(*input_sets[0]))
    _sync(device)
    if budget_s is None:
        reps = max_reps
    else:
        t0 = time.perf_counter()
        fn(*input_sets[0])
        _sync(device)
        reps = rep_count(time.perf_counter() - t0, min_reps=min_reps, max_reps=max_reps, budget_s=budget_s)
    samples: list[float] = []
    if device.type == "cuda":
        import torch

        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            args = input_sets[(i + 1) % n]
            starts[i].record()
            fn(*args)
            ends[i].record()
        torch.cuda.synchronize(device)
        samples = [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]
    else:
        for i in range(reps):
            args = input_sets[(i + 1) % n]
            t0 = time.perf_counter()
            fn(*args)
            samples.append((time.perf_counter() - t0) * 1e6)
    return _summary(samples, reps)


def time_graph(fn: Callable[..., Any], input_sets: Sequence[Sequence[Any]], device: "torch.device", *,
               warmup: int = 3, replays: int = 100) -> Timing:
    """Capture ``fn`` once per input set in a CUDA graph and time ``replays`` replays, rotating
    over the graphs (launch gaps removed). The warm-up runs on a side stream, as capture needs.

    Raises whatever capture raises (a host sync inside ``fn`` makes capture fail)."""
    import torch

    if device.type != "cuda":
        raise RuntimeError("CUDA graphs need a CUDA device")
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for i in range(warmup):
            fn(*input_sets[i % len(input_sets)])
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    graphs = []
    for args in input_sets:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn(*args)
        graphs.append(g)
    for g in graphs:
        g.replay()
    torch.cuda.synchronize(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    for i in range(replays):
        starts[i].record()
        graphs[i % len(graphs)].replay()
        ends[i].record()
    torch.cuda.synchronize(device)
    del graphs  # the captured memory pools go back before the next candidate is captured
    return _summary([s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)], replays)


def torch_device(device: Any, *, flag: str = "--torch-device") -> "torch.device":
    """``None`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> a torch
    device that exists here (CUDA made current); ValueError (one line, naming ``flag``) otherwise."""
    import torch

    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{flag} must be cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {device}: CUDA is not available here")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        else:
            torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ValueError(f"{flag} must be cpu, cuda or cuda:N, got {device!r}")
    return dev
