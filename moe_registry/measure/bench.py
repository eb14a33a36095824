"""`moe-registry bench`: time every eligible, available backend on a model's MoE layer shapes and
write a cost table for the measured policy (analysis: :mod:`.analysis`; tables and plots:
:mod:`.report`).

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
  ``build_experts`` pays), each between two CUDA events on GPU (``perf_counter`` on CPU), with
  :func:`.timing.time_calls`. Calls slower than ``max_point_s / reps`` get fewer repetitions
  (never fewer than ``min_reps``). Median, p10 and p90 in microseconds go to the cost table.

Decode as engines run it: at T up to the largest CUDA-graph bucket (``measured.DECODE_BUCKETS``, 64),
a backend that can be captured (declared ``features.cuda_graphs``, adapter not on a host-syncing path:
``execution.graphs.graph_refusal``) is also timed from CUDA graphs (:func:`.timing.time_graph`: one
graph per input set, replays between CUDA events, launch gaps removed), recorded as entries with
``mode="graph"`` beside the eager ones (``graphs=False``: eager only). A backend that cannot be captured
has eager entries only, and is said so in ``skipped`` (stage ``graph``).

Token counts not measured are interpolated log-log by :meth:`CostTable.estimate_us`.
``holdout_tokens`` measures a second table at other token counts in a separate pass on the same
built adapters: the ground truth that :func:`.analysis.regret` scores the policy table against.

Torch is imported only by the functions that time (:func:`run_bench`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import gc
import os
import platform
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from ..environment import package_versions
from .timing import MAX_TOKENS
from ..errors import cuda_context_broken, one_line
from ..measured import COST_SCHEMA_VERSION, DECODE_BUCKETS, CostEntry, CostTable, Mode
from ..planner import plan_model, single_layer
from ..environment import detect_device as detect
from ..schemas.device import PRESETS
from ..schemas.layer import LayerSpec, ParallelConfig
from ..schemas.selection import ReasonCode
from ..selection import select_backend
from . import timing

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_TOKENS", "BenchReport", "bench_layers", "load_optional_ops", "parse_layer", "parse_tokens",
           "resolve_target", "run_bench"]

DEFAULT_TOKENS = (1, 16, 64, 512, 4096)
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
    if any(v > MAX_TOKENS for v in values):
        raise ValueError(f"token counts must be at most {MAX_TOKENS:,}, got {max(values)}")
    return tuple(sorted(set(values)))


# Keys of ``layer:key=value,...`` -> keyword arguments of planner.single_layer (the spelling
# `moe-registry select` uses), plus tp / ep for the parallel layout.
_LAYER_KEYS = {
    "experts": "experts", "num_experts": "experts", "e": "experts",
    "top_k": "top_k", "topk": "top_k", "k": "top_k",
    "hidden": "hidden", "hidden_size": "hidden", "h": "hidden",
    "intermediate": "intermediate", "intermediate_size": "intermediate", "i": "intermediate",
    "activation": "activation", "act": "activation", "quant": "quant", "dtype": "dtype", "routing": "routing",
    "swiglu_limit": "swiglu_limit", "bias": "bias", "router_weight_on_input": "router_weight_on_input",
    "apply_router_weight_on_input": "router_weight_on_input", "tp": "tp", "ep": "ep",
}
_REQUIRED = ("experts", "top_k", "hidden", "intermediate")
_FIELD_NAMES = {"experts": "num_experts", "top_k": "top_k", "hidden": "hidden_size", "intermediate": "intermediate_size"}
_INTEGERS = (*_REQUIRED, "tp", "ep")


def parse_layer(text: str, quant: str | None = None, parallel: ParallelConfig | None = None) -> LayerSpec:
    """A single layer from ``layer:experts=8,top_k=2,hidden=64,intermediate=32[,activation=silu,quant=...,
    dtype=bf16,routing=...,swiglu_limit=7,bias=1,tp=1,ep=1]`` (the ``layer:`` prefix optional), built
    by :func:`~moe_registry.planner.single_layer`. ``quant`` overrides."""
    body = text[len("layer:"):] if text.startswith("layer:") else text
    fields: dict[str, Any] = {}
    tp, ep = (parallel.tp, parallel.ep) if parallel else (1, 1)
    for item in filter(None, (p.strip() for p in body.split(","))):
        key, sep, value = item.partition("=")
        name = _LAYER_KEYS.get(key.strip().lower().replace("-", "_"))
        if not sep or name is None:
            raise ValueError(f"layer spec {text!r}: expected key=value with a key among "
                             f"experts, top_k, hidden, intermediate, activation, quant, dtype, routing, swiglu_limit, "
                             f"bias, tp, ep; got {item!r}")
        value = value.strip()
        if name in _INTEGERS:
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
        elif name == "swiglu_limit":
            try:
                fields[name] = float(value)
            except ValueError:
                raise ValueError(f"layer spec {text!r}: {key} must be a number, got {value!r}") from None
        elif name in ("bias", "router_weight_on_input"):
            fields[name] = value.lower() in ("1", "true", "yes", "on")
        else:
            fields[name] = value
    missing = [_FIELD_NAMES[k] for k in _REQUIRED if k not in fields]
    if missing:
        raise ValueError(f"layer spec {text!r} lacks {', '.join(missing)} "
                         "(e.g. layer:experts=8,top_k=2,hidden=256,intermediate=128)")
    if quant:
        fields["quant"] = quant
    if tp < 1 or ep < 1:
        raise ValueError("tp and ep must be positive")
    return single_layer(parallel=ParallelConfig(tp=tp, ep=ep), **fields)


def resolve_target(target: str, quant: str | None = None,
                   parallel: ParallelConfig | None = None) -> tuple[list[LayerSpec], dict[LayerSpec, str]]:
    """The distinct layer shapes of ``target`` and a label for each (for tables and plots).

    ``target``: a preset name, model directory or config.json (its MoE layers, deduplicated by
    shape), or ``layer:experts=..,top_k=..,hidden=..,intermediate=..`` (see :func:`parse_layer`)."""
    parallel = parallel or ParallelConfig()
    if target == "layer":  # `bench layer` with shape flags is the CLI's (the same spelling as `select`)
        raise ValueError("target 'layer' needs its shape: layer:experts=8,top_k=2,hidden=256,intermediate=128")
    if target.startswith("layer:"):
        layer = parse_layer(target, quant, parallel)
        return [layer], {layer.shape_key(): "layer"}
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


# --- Running the grid ---------------------------------------------------------------------------


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


# A cost table's ``meta.versions``: label -> distribution (python too; "cuda" is torch's)
RECORDED_PACKAGES = {"torch": "torch", "moe-registry": "moe-registry", "flashinfer": "flashinfer-python",
                     "vllm": "vllm"}
_line = functools.partial(one_line, limit=500)  # an exception as a skip reason


def load_optional_ops(notes: list[str]) -> dict[str, str]:
    """Register kernels that come from outside packages (vLLM's _moe_C from $MOE_REGISTRY_VLLM_MOE_C)
    so the environment check sees them. Never raises: what fails becomes a note."""
    extra: dict[str, str] = {}
    try:
        from ..backends.marlin import ops

        path = os.environ.get(ops.ENV_VAR)
        if path:
            if ops.load_moe_c():
                extra["vllm_moe_c"] = os.path.basename(path)
                notes.append(f"vLLM _moe_C loaded from {path}")
            else:
                notes.append(f"${ops.ENV_VAR}={path} loaded, but it registers no moe_wna16_marlin_gemm")
    except Exception as exc:
        notes.append(f"vLLM _moe_C not loaded: {_line(exc)}")
    return extra


def _input_sets(layer: LayerSpec, T: int, dev: "torch.device", n: int, seed: int) -> list[tuple[Any, Any, Any]]:
    import torch

    from ..execution.patterns import routing_pattern
    from ..execution.weights import torch_dtype

    dtype = torch_dtype(layer)
    sets = []
    for i in range(n):
        gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + T * 1_009 + i)
        x = torch.randn(T, layer.hidden_size, generator=gen, device=dev, dtype=torch.float32).to(dtype).contiguous()
        w, ids = routing_pattern(T, layer.local_num_experts, layer.top_k, device=dev, generator=gen)
        sets.append((x, w, ids))
    return sets


def _output_check(shape: tuple[int, int]) -> Callable[[Any], None]:
    """Refuse to time a forward whose first output has the wrong shape or non-finite values."""

    def check(out: Any) -> None:
        import torch

        if tuple(out.shape) != shape:
            raise RuntimeError(f"forward returned shape {list(out.shape)}, expected {list(shape)}")
        if not bool(torch.isfinite(out).all()):
            raise RuntimeError("forward returned non-finite values")

    return check


def _free(dev: "torch.device") -> None:
    gc.collect()
    if dev.type == "cuda":
        import torch

        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()


def run_bench(layers: Sequence[LayerSpec], tokens: Sequence[int] | str = DEFAULT_TOKENS,
              backends: Sequence[str] | None = None, reps: int = 50, torch_device: Any = None, *,
              holdout_tokens: Sequence[int] | str | None = None, exclude: Sequence[str] = (),
              input_sets: int = 8, warmup: int = 3, min_reps: int = 5, max_point_s: float = 2.0, seed: int = 0,
              graphs: bool = True, progress: Callable[[str], None] | None = None,
              checkpoint: Callable[[BenchReport], None] | None = None) -> BenchReport:
    """Time every eligible, available backend (or those of ``backends``, minus ``exclude``) on each
    distinct shape of ``layers`` at each of ``tokens``; see the module docstring for the method.

    ``torch_device``: ``None`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    ``graphs``: on a GPU, also time T <= 64 from CUDA graphs where the backend can be captured.
    ``holdout_tokens``: also measure these (a separate pass on the same adapters) into
    ``report.holdout``. ``progress`` gets one line per measured point; ``checkpoint`` gets the
    report so far after every backend (to save partial results). A failure (selection, build, one
    token count) is recorded in ``report.skipped`` and the rest goes on; after an error that leaves
    the CUDA context unusable, the remaining work is skipped with that reason.
    """
    import torch

    from ..execution import build_experts, random_weights
    from ..execution.graphs import graph_refusal
    from ..execution.weights import torch_dtype
    from ..registry import default_registry

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
    dev = timing.torch_device(torch_device)
    notes: list[str] = []
    extra_versions: dict[str, str] = {}
    if dev.type == "cuda":
        extra_versions = load_optional_ops(notes)
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
    versions = package_versions(RECORDED_PACKAGES)
    if torch.version.cuda:
        versions["cuda"] = str(torch.version.cuda)
    versions.update(extra_versions)

    entries: list[CostEntry] = []
    holdout_entries: list[CostEntry] = []
    skipped: list[dict[str, Any]] = []
    meta: dict[str, Any] = {
        "torch_device": str(dev), "card": card, "tokens": list(tokens), "holdout_tokens": list(holdout),
        "reps": reps, "min_reps": min_reps, "max_point_s": max_point_s, "warmup": warmup, "input_sets": input_sets,
        "seed": seed, "notes": notes, "points": [], "graphs": graphs and dev.type == "cuda",
        "graph_max_tokens": DECODE_BUCKETS[-1],
        "method": ("adapter forward (guards included) between CUDA events (perf_counter on CPU), median/p10/p90 "
                   f"over up to {reps} calls after warm-up; {input_sets} input sets rotated, routing random but "
                   "fixed per set; weights random N(0, 1/fan_in), quantized like the layer"
                   + (f"; T <= {DECODE_BUCKETS[-1]} also from CUDA graphs (mode graph: one graph per input set, "
                      f"up to {reps} replays between CUDA events)" if graphs and dev.type == "cuda" else "")),
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
            skip(layer, "*", "selection", _line(exc))
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
        if progress:
            from ..memory import gb

            progress(f"  building random weights ({gb(layer.expert_weight_bytes(held_bits=32))} in fp32 before "
                     f"quantizing) for {', '.join(c.backend for c in wanted)}")
        try:
            weights = random_weights(layer, device=dev, dtype=torch_dtype(layer), seed=seed)
        except Exception as exc:
            for c in wanted:
                skip(layer, c.backend, "weights", _line(exc))
            if cuda_context_broken(exc):
                fatal = f"CUDA context unusable after: {_line(exc)}"
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
            if progress:
                progress(f"  {cand.backend}: preparing its weights, then timing T={','.join(map(str, tokens))}")
            try:
                t_build = time.perf_counter()
                experts = build_experts(chosen, weights, registry=registry)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                build_s = time.perf_counter() - t_build
                meta.setdefault("build_s", {})[f"{layer.describe()} / {cand.backend}"] = round(build_s, 3)
            except Exception as exc:
                skip(layer, cand.backend, "build", _line(exc))
                if cuda_context_broken(exc):
                    fatal = f"CUDA context unusable after: {_line(exc)}"
                experts = None
                _free(dev)
                continue
            refusal = graph_refusal(experts, registry=registry) if graphs and dev.type == "cuda" else "off"
            if refusal not in (None, "off"):
                skip(layer, cand.backend, "graph", f"timed eagerly only: {refusal}")
            for pass_name, pass_tokens, sink in (("main", tokens, entries), ("holdout", holdout, holdout_entries)):
                for T in pass_tokens:
                    if fatal:
                        skip(layer, cand.backend, "cuda", fatal, T)
                        continue
                    try:
                        if T not in inputs:
                            inputs[T] = _input_sets(layer, T, dev, input_sets, seed)
                        t = timing.time_calls(experts.forward, inputs[T], dev, warmup=max(warmup, input_sets),
                                              min_reps=min(min_reps, reps), max_reps=reps, budget_s=max_point_s,
                                              check=_output_check((T, layer.hidden_size)))
                    except Exception as exc:
                        skip(layer, cand.backend, "forward", _line(exc), T)
                        if cuda_context_broken(exc):
                            fatal = f"CUDA context unusable after: {_line(exc)}"
                        continue
                    timed: list[tuple[Mode, timing.Timing]] = [("eager", t)]
                    if refusal is None and T <= DECODE_BUCKETS[-1]:
                        try:
                            timed.append(("graph", timing.time_graph(experts.forward, inputs[T], dev, replays=reps)))
                        except Exception as exc:
                            skip(layer, cand.backend, "graph", _line(exc), T)
                            if cuda_context_broken(exc):
                                fatal = f"CUDA context unusable after: {_line(exc)}"
                    for mode, t in timed:
                        sink.append(CostEntry(backend=cand.backend, layer=layer, tokens=T, mode=mode,
                                              median_us=t.median_us, p10_us=t.p10_us, p90_us=t.p90_us))
                        meta["points"].append({"layer": layer.describe(), "backend": cand.backend, "pass": pass_name,
                                               "tokens": T, "mode": mode, "reps": t.reps})
                        if progress:
                            tag = ("" if pass_name == "main" else " (holdout)") + (" graph" if mode == "graph" else "")
                            loud = " NOISY" if timing.noisy(t.p10_us, t.p90_us) else ""
                            progress(f"  {cand.backend:<20} T={T:<6} {t.median_us:12.1f} us  "
                                     f"(p10 {t.p10_us:.1f}, p90 {t.p90_us:.1f}, {t.reps} reps){tag}{loud}")
            del experts
            _free(dev)
            if checkpoint:
                checkpoint(report())
        del weights, inputs
        _free(dev)
    return report()


def bench_layers(layers: Sequence[LayerSpec], tokens: Sequence[int] | str = DEFAULT_TOKENS,
                 backends: Sequence[str] | None = None, reps: int = 50, torch_device: Any = None) -> CostTable:
    """Cost table of every eligible, available backend on the distinct shapes of ``layers``
    (see :func:`run_bench`, which also returns what could not be timed)."""
    return run_bench(layers, tokens, backends, reps, torch_device).table


