"""`moe-registry bench`: time every eligible, available backend on a model's MoE layer shapes,
write a cost table for the measured policy, and analyse it (crossovers, regret).

What is timed
-------------
For each distinct layer shape (``plan_model(..., select=False)``, deduplicated by ``shape_key()``),
``select_backend(layer, None)`` on this machine gives every eligible candidate (not just the
winner), with the padding each needs. Each candidate's adapter is built once, through
``build_experts``, from one set of random canonical weights per shape (``random_weights``:
N(0, 1/fan_in), quantized like the layer; every backend converts the same weights). Then, per
token count T:

* ``input_sets`` (default 8) input sets, shared by every backend of the shape: hidden states
  N(0, 1) and a random routing that is fixed per set (softmax over N(0, 1) logits, top-k,
  renormalised). Calls rotate over the sets, so the L2 cache does not keep one set's activations
  and experts' weights warm between calls (a model's other layers evict them in real use).
* Warm-up: every set once (and at least ``warmup`` calls); the first output is checked (shape
  ``[T, H]``, finite) so a backend that computes garbage is reported, not timed.
* ``reps`` timed calls of the adapter's ``forward`` (its input guards included: what a caller of
  ``build_experts`` pays), each between two CUDA events on GPU (``perf_counter`` on CPU). Calls
  slower than ``max_point_s / reps`` get fewer repetitions (never fewer than ``min_reps``).
  Median, p10 and p90 in microseconds go to the cost table.

Token counts not measured are interpolated log-log by :meth:`CostTable.estimate_us`.
``holdout_tokens`` measures a second table at other token counts in a separate pass on the same
built adapters: the ground truth that :func:`regret` scores the policy table against.

Torch is imported only by the functions that time (:func:`run_bench`); the analysis
(:func:`crossover`, :func:`regret`) and rendering are torch-free.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from .measured import COST_SCHEMA_VERSION, CostEntry, CostTable, MeasuredPolicy
from .schemas.device import PRESETS, DeviceSpec, detect
from .schemas.layer import LayerSpec, ParallelConfig
from .schemas.selection import Candidate, ReasonCode
from .selection import DeclaredPriority, select_backend

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_TOKENS", "BenchReport", "bench_layers", "crossover", "crossovers", "main", "parse_layer",
    "parse_tokens", "plot", "policy_sides", "print_report", "regret", "resolve_target", "run_bench", "winners",
]

DEFAULT_TOKENS = (1, 16, 64, 512, 4096)
REGRET_TARGET = 1.05  # issue 5: measured-policy regret <= 5 %
_UNAVAILABLE = {ReasonCode.PACKAGE_MISSING, ReasonCode.KERNEL_NOT_BUILT}

# --- Inputs -----------------------------------------------------------------------------------------


def parse_tokens(text: str | Iterable[int]) -> tuple[int, ...]:
    """``"1,16,64"`` (or a sequence of ints) -> sorted distinct positive token counts."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"--tokens must be comma-separated integers, got {text!r}") from None
    else:
        values = [int(v) for v in text]
    if not values:
        raise ValueError("--tokens is empty")
    if any(v < 1 for v in values):
        raise ValueError(f"token counts must be at least 1, got {min(values)}")
    return tuple(sorted(set(values)))


_LAYER_KEYS = {
    "experts": "num_experts", "num_experts": "num_experts", "e": "num_experts",
    "top_k": "top_k", "topk": "top_k", "k": "top_k",
    "hidden": "hidden_size", "hidden_size": "hidden_size", "h": "hidden_size",
    "intermediate": "intermediate_size", "intermediate_size": "intermediate_size", "i": "intermediate_size",
    "activation": "activation", "act": "activation", "quant": "quant", "dtype": "dtype", "routing": "routing",
    "bias": "bias", "router_weight_on_input": "apply_router_weight_on_input",
    "apply_router_weight_on_input": "apply_router_weight_on_input", "tp": "tp", "ep": "ep",
}
_REQUIRED = ("num_experts", "top_k", "hidden_size", "intermediate_size")


def parse_layer(text: str, quant: str | None = None, parallel: ParallelConfig | None = None) -> LayerSpec:
    """A single layer from ``layer:experts=8,top_k=2,hidden=64,intermediate=32[,activation=silu,quant=...,
    dtype=bf16,routing=...,bias=1,tp=1,ep=1]`` (the ``layer:`` prefix optional). ``quant`` overrides."""
    body = text[len("layer:"):] if text.startswith("layer:") else text
    fields: dict[str, Any] = {}
    tp, ep = (parallel.tp, parallel.ep) if parallel else (1, 1)
    for item in filter(None, (p.strip() for p in body.split(","))):
        key, sep, value = item.partition("=")
        name = _LAYER_KEYS.get(key.strip().lower().replace("-", "_"))
        if not sep or name is None:
            raise ValueError(f"layer spec {text!r}: expected key=value with a key among "
                             f"experts, top_k, hidden, intermediate, activation, quant, dtype, routing, bias, tp, ep; "
                             f"got {item!r}")
        value = value.strip()
        if name in ("num_experts", "top_k", "hidden_size", "intermediate_size", "tp", "ep"):
            try:
                number = int(value)
            except ValueError:
                raise ValueError(f"layer spec {text!r}: {key} must be an integer, got {value!r}") from None
            if name == "tp":
                tp = number
            elif name == "ep":
                ep = number
            else:
                fields[name] = number
        elif name in ("bias", "apply_router_weight_on_input"):
            fields[name] = value.lower() in ("1", "true", "yes", "on")
        else:
            fields[name] = value
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise ValueError(f"layer spec {text!r} lacks {', '.join(missing)} "
                         "(e.g. layer:experts=8,top_k=2,hidden=256,intermediate=128)")
    if quant:
        fields["quant"] = quant
    if fields.get("activation") == "swigluoai":
        from .schemas.activation import SwigluOAIParams

        fields["activation_params"] = SwigluOAIParams()
    if tp < 1 or ep < 1:
        raise ValueError("tp and ep must be positive")
    return LayerSpec(parallel=ParallelConfig(tp=tp, ep=ep), **fields)


def resolve_target(target: str, quant: str | None = None, parallel: ParallelConfig | None = None,
                   args: Any = None) -> tuple[list[LayerSpec], dict[LayerSpec, str]]:
    """The distinct layer shapes of ``target`` and a label for each (for tables and plots).

    ``target``: a preset name, model directory or config.json (its MoE layers, deduplicated by
    shape); ``layer:experts=..,top_k=..,hidden=..,intermediate=..`` (see :func:`parse_layer`); or
    ``layer`` with the shape in ``args`` (``experts``, ``top_k``, ``hidden``, ``intermediate``,
    ``activation``, ``dtype``, ``routing``, ``bias``: the attributes `moe-registry select` has)."""
    parallel = parallel or ParallelConfig()
    if target.startswith("layer:"):
        layer = parse_layer(target, quant, parallel)
        return [layer], {layer.shape_key(): "layer"}
    if target == "layer":
        if args is None or getattr(args, "experts", None) is None:
            raise ValueError("bench layer needs the shape: layer:experts=8,top_k=2,hidden=256,intermediate=128 "
                             "(or --experts/--top-k/--hidden/--intermediate)")
        spec = [f"experts={args.experts}", f"top_k={args.top_k}", f"hidden={args.hidden}",
                f"intermediate={args.intermediate}"]
        for attr, key in (("activation", "activation"), ("dtype", "dtype"), ("routing", "routing")):
            if getattr(args, attr, None):
                spec.append(f"{key}={getattr(args, attr)}")
        if getattr(args, "bias", False):
            spec.append("bias=1")
        if getattr(args, "router_weight_on_input", False):
            spec.append("router_weight_on_input=1")
        layer = parse_layer(",".join(spec), quant, parallel)
        return [layer], {layer.shape_key(): "layer"}
    from .planner import plan_model

    plan = plan_model(target, parallel=parallel, quant=quant, select=False)
    layers: list[LayerSpec] = []
    labels: dict[LayerSpec, str] = {}
    for lp in plan.layers:
        key = lp.layer.shape_key()
        if key not in labels:
            layers.append(key)
            labels[key] = plan.model
    if len(layers) > 1:  # several shapes in one model: tell them apart
        labels = {k: f"{plan.model} #{i + 1}" for i, k in enumerate(layers)}
    return layers, labels


# --- Timing ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class BenchReport:
    """What :func:`run_bench` measured: the cost table (and the held-out one), what could not be
    timed and why (``skipped``: one dict per backend / token count, with a one-line reason), and
    how it was measured (``meta``)."""

    table: CostTable
    holdout: CostTable | None = None
    skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema_version": COST_SCHEMA_VERSION,
                                "cost_table": self.table.model_dump(mode="json")}
        if self.holdout is not None:
            data["holdout_table"] = self.holdout.model_dump(mode="json")
        data["skipped"] = self.skipped
        data["meta"] = self.meta
        return data


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


def _is_sticky_cuda_error(exc: BaseException) -> bool:
    """Errors after which the CUDA context is unusable (every later call fails too)."""
    text = str(exc).lower()
    return any(s in text for s in ("illegal memory access", "device-side assert", "unspecified launch failure",
                                   "misaligned address", "illegal instruction", "cuda error: an illegal"))


def _torch_device(device: Any) -> "torch.device":
    import torch

    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda requested but CUDA is not available here")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        else:
            torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ValueError(f"bench runs on cpu or cuda, not {dev.type}")
    return dev


def _versions(extra: Mapping[str, str] = ()) -> dict[str, str]:
    import torch

    out = {"torch": torch.__version__, "python": platform.python_version()}
    if torch.version.cuda:
        out["cuda"] = str(torch.version.cuda)
    for label, dist in (("moe-registry", "moe-registry"), ("flashinfer", "flashinfer-python"), ("vllm", "vllm")):
        try:
            out[label] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    out.update(dict(extra))
    return out


def _load_optional_ops(notes: list[str]) -> dict[str, str]:
    """Register kernels that come from outside packages (vLLM's _moe_C from $MOE_REGISTRY_VLLM_MOE_C)
    so the environment check sees them. Never raises: what fails becomes a note."""
    extra: dict[str, str] = {}
    try:
        from .backends.marlin import ops

        path = os.environ.get(ops.ENV_VAR)
        if path:
            if ops.load_moe_c():
                extra["vllm_moe_c"] = os.path.basename(path)
                notes.append(f"vLLM _moe_C loaded from {path}")
            else:
                notes.append(f"${ops.ENV_VAR}={path} loaded, but it registers no moe_wna16_marlin_gemm")
    except Exception as exc:
        notes.append(f"vLLM _moe_C not loaded: {_one_line(exc)}")
    return extra


def _input_sets(layer: LayerSpec, T: int, dev: "torch.device", n: int, seed: int) -> list[tuple[Any, Any, Any]]:
    import torch

    from .execution.weights import torch_dtype

    dtype = torch_dtype(layer)
    E, k, H = layer.local_num_experts, layer.top_k, layer.hidden_size
    sets = []
    for i in range(n):
        gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + T * 1_009 + i)
        x = torch.randn(T, H, generator=gen, device=dev, dtype=torch.float32).to(dtype).contiguous()
        logits = torch.randn(T, E, generator=gen, device=dev, dtype=torch.float32)
        w, ids = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)
        w = (w / w.sum(dim=-1, keepdim=True)).float().contiguous()
        sets.append((x, w, ids.to(torch.int32).contiguous()))
    return sets


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))]


def time_forward(fn: Callable[..., Any], sets: Sequence[tuple[Any, ...]], dev: "torch.device", *, reps: int,
                 warmup: int = 3, min_reps: int = 5, max_point_s: float = 2.0,
                 expect_shape: tuple[int, int] | None = None) -> dict[str, float]:
    """Median / p10 / p90 microseconds of ``fn(*sets[i % n])``; see the module docstring."""
    import torch

    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    n = len(sets)
    out = fn(*sets[0])
    if expect_shape is not None and tuple(out.shape) != expect_shape:
        raise RuntimeError(f"forward returned shape {list(out.shape)}, expected {list(expect_shape)}")
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError("forward returned non-finite values")
    del out
    for i in range(1, max(warmup, n)):
        fn(*sets[i % n])
    sync()
    t0 = time.perf_counter()
    fn(*sets[0])
    sync()
    one = max(time.perf_counter() - t0, 1e-7)
    count = reps if reps * one <= max_point_s else max(min(reps, min_reps), int(max_point_s / one))
    samples: list[float] = []
    if cuda:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
        for i in range(count):
            args = sets[(i + 1) % n]
            starts[i].record()
            fn(*args)
            ends[i].record()
        torch.cuda.synchronize(dev)
        samples = [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]
    else:
        for i in range(count):
            args = sets[(i + 1) % n]
            t = time.perf_counter()
            fn(*args)
            samples.append((time.perf_counter() - t) * 1e6)
    samples = sorted(max(s, 1e-3) for s in samples)
    return {"median_us": statistics.median(samples), "p10_us": _percentile(samples, 0.1),
            "p90_us": _percentile(samples, 0.9), "reps": float(count)}


def _free(dev: "torch.device") -> None:
    gc.collect()
    if dev.type == "cuda":
        import torch

        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()


def run_bench(layers: Sequence[LayerSpec], tokens: Sequence[int] | str = DEFAULT_TOKENS,
              backends: Sequence[str] | None = None, reps: int = 50, device: Any = None, *,
              holdout_tokens: Sequence[int] | str | None = None, exclude: Sequence[str] = (),
              input_sets: int = 8, warmup: int = 3, min_reps: int = 5, max_point_s: float = 2.0, seed: int = 0,
              progress: Callable[[str], None] | None = None,
              checkpoint: Callable[[BenchReport], None] | None = None) -> BenchReport:
    """Time every eligible, available backend (or those of ``backends``, minus ``exclude``) on each
    distinct shape of ``layers`` at each of ``tokens``; see the module docstring for the method.

    ``device``: ``None`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    ``holdout_tokens``: also measure these (a separate pass on the same adapters) into
    ``report.holdout``. ``progress`` gets one line per measured point; ``checkpoint`` gets the
    report so far after every backend (to save partial results). A failure (selection, build, one
    token count) is recorded in ``report.skipped`` and the rest goes on; after an error that leaves
    the CUDA context unusable, the remaining work is skipped with that reason.
    """
    import torch

    from .execution import build_experts, random_weights
    from .execution.weights import torch_dtype
    from .registry import default_registry

    started = time.perf_counter()
    tokens = parse_tokens(tokens)
    holdout = parse_tokens(holdout_tokens) if holdout_tokens else ()
    if reps < 1:
        raise ValueError("reps must be at least 1")
    if input_sets < 1:
        raise ValueError("input_sets must be at least 1")
    registry = default_registry()
    for name in (*(backends or ()), *exclude):
        registry.get(name)  # UnknownBackend (a ValueError) for a typo, before anything runs
    dev = _torch_device(device)
    notes: list[str] = []
    extra_versions: dict[str, str] = {}
    if dev.type == "cuda":
        extra_versions = _load_optional_ops(notes)
        registry.refresh_environment()
        target: str | None = None
        spec_device = detect()
        card = torch.cuda.get_device_name(dev)
    else:
        # This machine's CPU; on a GPU machine, plan for the CPU (what runs there is torch only).
        target = None if detect().vendor == "cpu" else "cpu"
        spec_device = PRESETS["cpu"]
        card = f"cpu ({platform.machine() or platform.processor() or 'unknown'})"
    date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    versions = _versions(extra_versions)

    entries: list[CostEntry] = []
    holdout_entries: list[CostEntry] = []
    skipped: list[dict[str, Any]] = []
    meta: dict[str, Any] = {
        "torch_device": str(dev), "card": card, "tokens": list(tokens), "holdout_tokens": list(holdout),
        "reps": reps, "min_reps": min_reps, "max_point_s": max_point_s, "warmup": warmup, "input_sets": input_sets,
        "seed": seed, "notes": notes, "points": [],
        "method": ("adapter forward (guards included) between CUDA events (perf_counter on CPU), median/p10/p90 "
                   f"over up to {reps} calls after warm-up; {input_sets} input sets rotated, routing random but "
                   "fixed per set; weights random N(0, 1/fan_in), quantized like the layer"),
    }

    def report() -> BenchReport:
        meta["wall_s"] = round(time.perf_counter() - started, 2)
        table = CostTable(device=spec_device, card=card, date=date, versions=versions, entries=tuple(entries))
        held = (CostTable(device=spec_device, card=card, date=date, versions=versions,
                          entries=tuple(holdout_entries)) if holdout else None)
        return BenchReport(table=table, holdout=held, skipped=list(skipped), meta=dict(meta))

    def skip(layer: LayerSpec, backend: str, stage: str, reason: str, T: int | None = None) -> None:
        skipped.append({"layer": layer.describe(), "backend": backend, "stage": stage, "tokens": T, "reason": reason})
        if progress:
            progress(f"  {backend}: skipped ({stage}{f', T={T}' if T else ''}): {reason}")

    fatal: str | None = None
    seen: set[LayerSpec] = set()
    for raw in layers:
        layer = raw.shape_key()
        if layer in seen:
            continue
        seen.add(layer)
        if progress:
            progress(f"{layer.describe()}")
        if fatal:
            skip(layer, "*", "cuda", fatal)
            continue
        try:
            selection = select_backend(layer, target, registry=registry)
        except Exception as exc:  # NoEligibleBackend included: every rejection, one line
            skip(layer, "*", "selection", _one_line(exc))
            continue
        wanted = [c for c in selection.eligible if (backends is None or not backends or c.backend in backends)
                  and c.backend not in exclude]
        for name in backends or ():
            if name not in {c.backend for c in selection.eligible} and name not in exclude:
                rej = selection.rejection(name)
                why = "; ".join(r.message for r in rej.reasons) if rej else "not eligible"
                skip(layer, name, "selection", why)
        if not backends:
            # Eligible by its declaration but not installed / built here: say so, it was not timed.
            for rej in selection.rejections:
                if rej.backend not in exclude and all(r.code in _UNAVAILABLE for r in rej.reasons):
                    skip(layer, rej.backend, "unavailable", "; ".join(r.render() for r in rej.reasons))
        if not wanted:
            continue
        try:
            weights = random_weights(layer, device=dev, dtype=torch_dtype(layer), seed=seed)
        except Exception as exc:
            for c in wanted:
                skip(layer, c.backend, "weights", _one_line(exc))
            if _is_sticky_cuda_error(exc):
                fatal = f"CUDA context unusable after: {_one_line(exc)}"
            _free(dev)
            continue
        inputs: dict[int, list[tuple[Any, Any, Any]]] = {}
        for cand in wanted:
            if fatal:
                skip(layer, cand.backend, "cuda", fatal)
                continue
            chosen = selection.model_copy(update={"backend": cand.backend, "padding": cand.padding,
                                                  "decided_by": "forced"})
            experts = None
            try:
                t_build = time.perf_counter()
                experts = build_experts(chosen, weights, registry=registry)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                build_s = time.perf_counter() - t_build
                meta.setdefault("build_s", {})[f"{layer.describe()} / {cand.backend}"] = round(build_s, 3)
            except Exception as exc:
                skip(layer, cand.backend, "build", _one_line(exc))
                if _is_sticky_cuda_error(exc):
                    fatal = f"CUDA context unusable after: {_one_line(exc)}"
                experts = None
                _free(dev)
                continue
            for pass_name, pass_tokens, sink in (("main", tokens, entries), ("holdout", holdout, holdout_entries)):
                for T in pass_tokens:
                    if fatal:
                        skip(layer, cand.backend, "cuda", fatal, T)
                        continue
                    try:
                        if T not in inputs:
                            inputs[T] = _input_sets(layer, T, dev, input_sets, seed)
                        t = time_forward(experts.forward, inputs[T], dev, reps=reps, warmup=warmup,
                                         min_reps=min_reps, max_point_s=max_point_s,
                                         expect_shape=(T, layer.hidden_size))
                    except Exception as exc:
                        skip(layer, cand.backend, "forward", _one_line(exc), T)
                        if _is_sticky_cuda_error(exc):
                            fatal = f"CUDA context unusable after: {_one_line(exc)}"
                        continue
                    sink.append(CostEntry(backend=cand.backend, layer=layer, tokens=T, median_us=t["median_us"],
                                          p10_us=t["p10_us"], p90_us=t["p90_us"]))
                    meta["points"].append({"layer": layer.describe(), "backend": cand.backend, "pass": pass_name,
                                           "tokens": T, "reps": int(t["reps"])})
                    if progress:
                        tag = "" if pass_name == "main" else " (holdout)"
                        progress(f"  {cand.backend:<20} T={T:<6} {t['median_us']:12.1f} us  "
                                 f"(p10 {t['p10_us']:.1f}, p90 {t['p90_us']:.1f}, {int(t['reps'])} reps){tag}")
            del experts
            _free(dev)
            if checkpoint:
                checkpoint(report())
        del weights, inputs
        _free(dev)
    return report()


def bench_layers(layers: Sequence[LayerSpec], tokens: Sequence[int] | str = DEFAULT_TOKENS,
                 backends: Sequence[str] | None = None, reps: int = 50, device: Any = None) -> CostTable:
    """Cost table of every eligible, available backend on the distinct shapes of ``layers``
    (see :func:`run_bench`, which also returns what could not be timed)."""
    return run_bench(layers, tokens, backends, reps, device).table


# --- Analysis (torch-free) --------------------------------------------------------------------------


def _log_ratio(table: CostTable, layer: LayerSpec, a: str, b: str, tokens: int) -> float:
    ta, tb = table.estimate_us(a, layer, tokens), table.estimate_us(b, layer, tokens)
    assert ta is not None and tb is not None
    return math.log(ta) - math.log(tb)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def crossovers(table: CostTable, layer: LayerSpec, a: str, b: str) -> list[int]:
    """Every token count at which the faster of ``a`` and ``b`` changes, in increasing order.

    Each value is the smallest integer T at which the new winner is strictly faster (by the
    table's log-log interpolation, which is linear in log T between measured points, so the root
    of ``log(t_a / t_b)`` is exact). Only the token range both backends were measured over is
    considered (outside it the estimates are clamped, not measured). Empty if either backend
    has no measurement for the layer or the winner never changes."""
    pa, pb = table.points(a, layer), table.points(b, layer)
    if not pa or not pb or a == b:
        return []
    lo, hi = max(pa[0][0], pb[0][0]), min(pa[-1][0], pb[-1][0])
    grid = sorted({t for t, _ in pa + pb if lo <= t <= hi})
    if len(grid) < 2:
        return []
    out: list[int] = []
    last_sign = _sign(_log_ratio(table, layer, a, b, grid[0]))
    for t0, t1 in zip(grid, grid[1:]):
        d0, d1 = _log_ratio(table, layer, a, b, t0), _log_ratio(table, layer, a, b, t1)
        s1 = _sign(d1)
        if s1 == 0 or last_sign == 0 or s1 == last_sign:
            if s1 != 0:
                last_sign = s1
            continue
        # The root lies in [t0, t1): d0 has last_sign or is 0 (a tie at t0).
        if d0 == 0:
            root = float(t0)
        else:
            f = d0 / (d0 - d1)
            root = math.exp(math.log(t0) + f * (math.log(t1) - math.log(t0)))
        cand = min(max(t0, math.ceil(root)), t1)
        # Rounding of exp/log can leave the candidate one off either way: settle on the first
        # integer where the new sign holds.
        while cand > t0 and _sign(_log_ratio(table, layer, a, b, cand - 1)) == s1:
            cand -= 1
        while cand < t1 and _sign(_log_ratio(table, layer, a, b, cand)) != s1:
            cand += 1
        out.append(int(cand))
        last_sign = s1
    return out


def crossover(table: CostTable, layer: LayerSpec, a: str, b: str) -> int | None:
    """The first token count (measured or interpolated) where the faster of ``a`` and ``b``
    changes; None if it never does over the range both were measured on (see :func:`crossovers`)."""
    found = crossovers(table, layer, a, b)
    return found[0] if found else None


def _layers_of(table: CostTable) -> list[LayerSpec]:
    out: list[LayerSpec] = []
    for e in table.entries:
        key = e.layer.shape_key()
        if key not in out:
            out.append(key)
    return out


def _backends_of(table: CostTable, layer: LayerSpec) -> list[str]:
    key = layer.shape_key()
    out: list[str] = []
    for e in table.entries:
        if e.layer.shape_key() == key and e.backend not in out:
            out.append(e.backend)
    return out


def winners(table: CostTable, layer: LayerSpec) -> dict[int, str]:
    """Measured token count -> the backend measured fastest there (ties: the first listed)."""
    key = layer.shape_key()
    best: dict[int, tuple[float, str]] = {}
    for e in table.entries:
        if e.layer.shape_key() == key and (e.tokens not in best or e.median_us < best[e.tokens][0]):
            best[e.tokens] = (e.median_us, e.backend)
    return {t: b for t, (_, b) in sorted(best.items())}


def _priority(backend: str, layer: LayerSpec, registry: Any) -> int:
    try:
        return registry.get(backend).priority.get(layer.quant.family, 0)
    except Exception:  # a backend this registry does not know (another machine's plugin)
        return 0


def regret(policy_table: CostTable, truth_table: CostTable, layers: Sequence[LayerSpec] | None = None,
           tokens: Sequence[int] | None = None, *, registry: Any = None,
           target: float = REGRET_TARGET) -> dict[str, Any]:
    """How much slower the measured policy's choice is than the best measured, per layer and T.

    For each layer (default: every shape in ``truth_table``) and each token count (default: every
    count measured for it in ``truth_table``), the candidates are the backends measured there in
    ``truth_table`` (they ran on that machine, so they were eligible and available), with their
    declared priority. ``MeasuredPolicy(policy_table, num_tokens=T)`` ranks them; its first is
    "chosen". ``regret = truth time of chosen / best truth time`` (1.0 = optimal). The declared-
    priority default's regret is computed the same way, for comparison. ``held_out`` rows are
    token counts the policy table did not measure for that layer (its choice was interpolated).

    Returns ``{"rows": [...], "summary": {...}, "per_layer": {...}}``; summary has ``max``,
    ``mean``, ``declared_max``, ``declared_mean``, ``held_out_max``, ``held_out_mean``, ``n``,
    ``target`` and ``meets_target`` (max <= target)."""
    if registry is None:
        from .registry import default_registry

        registry = default_registry()
    device = truth_table.device
    layers = [l.shape_key() for l in layers] if layers is not None else _layers_of(truth_table)
    rows: list[dict[str, Any]] = []
    for layer in layers:
        key = layer.shape_key()
        truth: dict[int, dict[str, float]] = {}
        for e in truth_table.entries:
            if e.layer.shape_key() == key:
                truth.setdefault(e.tokens, {})[e.backend] = e.median_us
        policy_tokens = {e.tokens for e in policy_table.entries if e.layer.shape_key() == key}
        for T in (sorted(tokens) if tokens is not None else sorted(truth)):
            measured = truth.get(T)
            if not measured:
                continue
            cands = [Candidate(backend=b, priority=_priority(b, layer, registry)) for b in measured]
            ordered, decided_by, _ = MeasuredPolicy(policy_table, num_tokens=T).order(cands, layer, device)
            declared, _, _ = DeclaredPriority().order(cands, layer, device)
            best = min(measured, key=lambda b: (measured[b], b))
            chosen, fallback = ordered[0].backend, declared[0].backend
            rows.append({
                "layer": layer.describe(), "tokens": T, "chosen": chosen, "decided_by": decided_by,
                "chosen_us": round(measured[chosen], 3), "best": best, "best_us": round(measured[best], 3),
                "regret": measured[chosen] / measured[best], "declared": fallback,
                "declared_regret": measured[fallback] / measured[best], "held_out": T not in policy_tokens,
                "candidates": {b: round(us, 3) for b, us in sorted(measured.items(), key=lambda kv: kv[1])},
            })

    def stats(values: list[float]) -> tuple[float | None, float | None]:
        return (max(values), statistics.fmean(values)) if values else (None, None)

    def summarize(selected: list[dict[str, Any]]) -> dict[str, Any]:
        mx, mean = stats([r["regret"] for r in selected])
        dmx, dmean = stats([r["declared_regret"] for r in selected])
        hmx, hmean = stats([r["regret"] for r in selected if r["held_out"]])
        return {"n": len(selected), "max": mx, "mean": mean, "declared_max": dmx, "declared_mean": dmean,
                "held_out_n": sum(r["held_out"] for r in selected), "held_out_max": hmx, "held_out_mean": hmean,
                "target": target, "meets_target": mx is not None and mx <= target}

    per_layer = {layer.describe(): summarize([r for r in rows if r["layer"] == layer.describe()]) for layer in layers}
    summary = summarize(rows)
    if (policy_table.device.sm, policy_table.device.vendor) != (device.sm, device.vendor):
        summary["note"] = (f"policy table from {policy_table.device.label()}, truth from {device.label()}: "
                           "the measured policy falls back to declared priority")
    return {"rows": rows, "summary": summary, "per_layer": per_layer}


def policy_sides(table: CostTable, layer: LayerSpec, a: str, b: str, device: DeviceSpec | str | None = None,
                 *, truth: CostTable | None = None, **select_kwargs: Any) -> dict[str, Any]:
    """Show the measured policy choosing each side of the crossover of ``a`` and ``b``.

    ``select_backend(layer, device, policy=MeasuredPolicy(table, num_tokens=T))`` at token counts
    just below and at the crossover, and at the nearest measured counts either side. ``device``
    None selects for this machine. Returns the crossover, one row per T (backend, decided_by,
    estimated times) and ``sides_differ``: both ends decided by "measured" with different backends.
    With ``truth``, each row also says which backend ``truth`` measured (or interpolated) fastest."""
    x = crossover(table, layer, a, b)
    result: dict[str, Any] = {"layer": layer.describe(), "a": a, "b": b, "crossover": x, "rows": [],
                              "sides_differ": False}
    if x is None:
        return result
    measured = sorted({t for t, _ in table.points(a, layer)} & {t for t, _ in table.points(b, layer)})
    below = [t for t in measured if t < x]
    above = [t for t in measured if t >= x]
    probe = sorted({*(below[-1:]), max(1, x - 1), x, *(above[:1])})
    for T in probe:
        sel = select_backend(layer, device, policy=MeasuredPolicy(table, num_tokens=T), **select_kwargs)
        row: dict[str, Any] = {"tokens": T, "backend": sel.backend, "decided_by": sel.decided_by,
                               "estimated_us": {c.backend: c.estimated_us for c in sel.eligible
                                                if c.estimated_us is not None},
                               "side": "below" if T < x else "at/above", "device": sel.device.label(),
                               "planning": sel.planning}
        if truth is not None:
            ta, tb = truth.estimate_us(a, layer, T), truth.estimate_us(b, layer, T)
            if ta is not None and tb is not None:
                row["truth_fastest"] = a if ta < tb else b
        result["rows"].append(row)
    lo, hi = result["rows"][0], result["rows"][-1]
    result["sides_differ"] = (lo["decided_by"] == hi["decided_by"] == "measured" and lo["backend"] != hi["backend"])
    return result


# --- Rendering --------------------------------------------------------------------------------------


def _short(layer: LayerSpec) -> str:
    text = (f"E={layer.num_experts} top{layer.top_k} H={layer.hidden_size} I={layer.intermediate_size} "
            f"{layer.activation.value} {layer.quant.label()}")
    return text + (f" {layer.parallel.label()}" if layer.parallel != ParallelConfig() else "")


def _winner_changes(table: CostTable, layer: LayerSpec) -> list[tuple[str, str, int]]:
    """(from, to, T) for each change of the fastest backend between measured token counts."""
    w = list(winners(table, layer).items())
    out = []
    for (t0, a), (t1, b) in zip(w, w[1:]):
        if a != b:
            inside = [x for x in crossovers(table, layer, a, b) if t0 < x <= t1]
            out.append((a, b, inside[-1] if inside else t1))
    return out


def print_report(console: Any, table: CostTable, *, skipped: Sequence[Mapping[str, Any]] = (),
                 labels: Mapping[LayerSpec, str] | None = None, title: str | None = None) -> None:
    """One rich table per layer shape: median us per backend and token count, fastest marked *."""
    from rich.table import Table

    labels = labels or {}
    head = title or f"cost table: {table.card or table.device.label()}, {table.date}"
    console.print(head, markup=False)
    for layer in _layers_of(table):
        tokens = sorted({e.tokens for e in table.entries if e.layer.shape_key() == layer})
        best = winners(table, layer)
        name = labels.get(layer)
        t = Table(title=(f"{name}: " if name else "") + layer.describe(), title_justify="left")
        t.add_column("backend", no_wrap=True)
        for T in tokens:
            t.add_column(f"T={T}", justify="right")
        for backend in _backends_of(table, layer):
            pts = dict(table.points(backend, layer))
            cells = []
            for T in tokens:
                if T not in pts:
                    cells.append("-")
                elif best.get(T) == backend:
                    cells.append(f"[bold]{pts[T]:,.1f}*[/bold]")
                else:
                    cells.append(f"{pts[T]:,.1f}")
            t.add_row(backend, *cells)
        console.print(t)
        changes = _winner_changes(table, layer)
        if changes:
            console.print("  winner changes: " + "; ".join(f"{a} -> {b} at T={x}" for a, b, x in changes), markup=False)
    console.print("  times: median microseconds per forward; * fastest at that T", markup=False)
    for s in skipped:
        where = f" T={s['tokens']}" if s.get("tokens") else ""
        console.print(f"  not timed: {s['backend']} ({s['stage']}{where}) on {s['layer']}: {s['reason']}",
                      markup=False)


def plot(table: CostTable, path: str | os.PathLike[str], *, labels: Mapping[LayerSpec, str] | None = None,
         overlay: CostTable | None = None, title: str | None = None,
         marks: Mapping[LayerSpec, Sequence[tuple[int, str]]] | None = None) -> Path:
    """Time vs tokens (log-log), one line per backend (p10-p90 band), one panel per layer shape.

    ``overlay``: a second table (e.g. the policy table) drawn as hollow markers. ``marks``: extra
    vertical lines per layer (token count, label); winner changes of ``table`` are marked anyway."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install 'moe-registry[plot]')") from None
    labels, marks = labels or {}, marks or {}
    layers = _layers_of(table) or (_layers_of(overlay) if overlay else [])
    n = max(1, len(layers))
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.6 * rows), squeeze=False)
    colors: dict[str, Any] = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    for ax, layer in zip(axes.flat, layers):
        for backend in _backends_of(table, layer):
            color = colors.setdefault(backend, cycle[len(colors) % len(cycle)])
            key = layer.shape_key()
            es = sorted((e for e in table.entries if e.backend == backend and e.layer.shape_key() == key),
                        key=lambda e: e.tokens)
            xs = [e.tokens for e in es]
            ax.plot(xs, [e.median_us for e in es], marker="o", ms=3.5, color=color, label=backend)
            if all(e.p10_us is not None and e.p90_us is not None for e in es):
                ax.fill_between(xs, [e.p10_us for e in es], [e.p90_us for e in es], color=color, alpha=0.15, lw=0)
        if overlay is not None:
            for backend in _backends_of(overlay, layer):
                color = colors.setdefault(backend, cycle[len(colors) % len(cycle)])
                pts = overlay.points(backend, layer)
                ax.plot([t for t, _ in pts], [u for _, u in pts], ls="none", marker="s", ms=7, mfc="none",
                        color=color, label=f"{backend} (policy table)")
        span = [e.tokens for e in table.entries if e.layer.shape_key() == layer.shape_key()]
        for a, b, x in _winner_changes(table, layer):
            ax.axvline(x, color="grey", ls="--", lw=0.9)
            right = bool(span) and math.log(x) > (math.log(min(span)) + math.log(max(span))) / 2
            ax.annotate(f"{a}\u2192{b}\nT={x}", (x, 0.97), xycoords=("data", "axes fraction"), fontsize=7,
                        ha="right" if right else "left", va="top", color="dimgrey")
        for x, text in marks.get(layer.shape_key(), ()):
            ax.axvline(x, color="black", ls=":", lw=0.9)
            ax.annotate(text, (x, 0.03), xycoords=("data", "axes fraction"), fontsize=7, ha="left", va="bottom")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted({e.tokens for e in table.entries if e.layer.shape_key() == layer.shape_key()})
        if 1 < len(ticks) <= 12:
            ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("tokens per forward")
        ax.set_ylabel("median \u00b5s per forward")
        name = labels.get(layer.shape_key())
        ax.set_title((f"{name}\n" if name else "") + _short(layer), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(layers):]:
        ax.set_visible(False)
    fig.suptitle(title or f"{table.card or table.device.label()} \u2014 {table.date}", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# --- CLI ----------------------------------------------------------------------------------------------


def _check_writable(flag: str, path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file name")
    parent = path.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot create files in {existing or parent}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path} is not writable")


def main(args: Any) -> int:
    """`moe-registry bench TARGET [--tokens ...] [--quant Q] [--backend B ...] [--out FILE] [--plot FILE.png]
    [--json] [--reps N]`. Optional attributes read when the parser has them: ``device`` (cpu / cuda),
    ``tp``, ``ep``, ``holdout_tokens``, ``holdout_out`` and, for the target ``layer``, ``experts``,
    ``top_k``, ``hidden``, ``intermediate``, ``activation``, ``dtype``, ``routing``, ``bias``."""
    import json

    tokens = parse_tokens(args.tokens)
    holdout = getattr(args, "holdout_tokens", None)
    holdout = parse_tokens(holdout) if holdout else None
    if args.reps < 1:
        raise ValueError("--reps must be at least 1")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib (pip install 'moe-registry[plot]')") from None
    tp, ep = getattr(args, "tp", None), getattr(args, "ep", None)
    tp, ep = 1 if tp is None else tp, 1 if ep is None else ep  # 0 is an error, not "unset"
    if tp < 1 or ep < 1:
        raise ValueError("--tp and --ep must be positive")
    # Output paths are checked before the benchmark runs, so an unwritable one loses no results.
    for flag, path in (("--out", args.out), ("--holdout-out", getattr(args, "holdout_out", None)),
                       ("--plot", args.plot)):
        if path:
            _check_writable(flag, Path(path))
    layers, labels = resolve_target(args.target, args.quant, ParallelConfig(tp=tp, ep=ep), args)
    as_json = bool(getattr(args, "json", False))

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = run_bench(layers, tokens, backends=list(args.backend or []) or None, reps=args.reps,
                       device=getattr(args, "device", None), holdout_tokens=holdout,
                       progress=None if as_json else progress)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        report.table.save(args.out)
    holdout_out = getattr(args, "holdout_out", None)
    if holdout_out and report.holdout is not None:
        Path(holdout_out).parent.mkdir(parents=True, exist_ok=True)
        report.holdout.save(holdout_out)
    if args.plot and report.table.entries:
        plot(report.table, args.plot, labels=labels, overlay=None)
    if as_json:
        sys.stdout.write(json.dumps(report.as_json(), indent=2, allow_nan=False) + "\n")
    else:
        from .cli import _console

        console = _console()
        print_report(console, report.table, skipped=report.skipped, labels=labels)
        if report.holdout is not None and report.holdout.entries:
            print_report(console, report.holdout, labels=labels, title="held-out token counts")
        for path, what in ((args.out, "cost table"), (holdout_out, "held-out cost table"),
                           (args.plot if report.table.entries else None, "plot")):
            if path:
                console.print(f"wrote {what}: {path}", markup=False)
    if not report.table.entries:
        print("moe-registry: nothing could be timed: "
              + ("; ".join(f"{s['backend']} ({s['stage']}): {s['reason']}" for s in report.skipped[:3])
                 or "no eligible backend"), file=sys.stderr)
        return 3
    return 0
