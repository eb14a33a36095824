"""CUDA-graph capture of every backend that declares ``features.cuda_graphs``, for every scheme it runs
here, at every token bucket of ``execution.graphs.DEFAULT_BUCKETS`` (``pytest -m gpu tests/gpu``).

The declaration's ``cuda_graphs`` is the claim "a forward has no host sync and replays correctly from a
graph"; this is its check: ``GraphedExperts`` (what ``bench`` and an engine's decode run) must give the
eager forward's output at each bucket T (the same kernels on the same inputs: equal up to 1e-6, 0.0
measured), and at a T between buckets (padded rows: equal up to the kernel's own rounding, 1e-2).
Eager is first compared with eager. A backend that declares itself bit-reproducible (no
``features.nondeterministic``) must repeat itself within 1e-6. One that declares why it is not
(triton-lowt-moe: float32 atomics; humming: stream-K atomics into the bf16 output) is held to what
summation order can do, for eager against eager and graph against eager alike: each element within one
unit in the last place of the output dtype, plus float32 roundings of the largest output for sums that
cancel, or, for sums kept in the output dtype, the whole output within one unit of that dtype's
precision (``_order_only``). A multiple of the
measured eager spread would not do: that spread is one or two elements rounded the other way (5.4e-6
and 5.2e-6 on the H100), a count that is 0 in some runs and larger in the next.
The parametrisation is derived from the registry, so a new backend or scheme that declares graphs is
checked without editing this file. Layer shapes are the benchmark's models (so Humming's and Triton's
JIT caches are shared with ``benchmarks/gpu_session.sh decode-bench``): Gemma 4 for NvFP4, Qwen3-30B for
int4, Mixtral AWQ for int4 with zero points, gpt-oss-120b for MXFP4, a medium layer for the rest.
Rows go to ``$GRAPH_CAPTURE_TABLE`` (or ``$OUT/graph_capture_table.txt``).
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

from moe_registry.execution.graphs import DEFAULT_BUCKETS, GraphedExperts  # noqa: E402
from moe_registry.execution.patterns import relative_error, routing_pattern  # noqa: E402
from moe_registry.execution.weights import random_weights, torch_dtype  # noqa: E402
from moe_registry.planner import single_layer  # noqa: E402
from moe_registry.registry import default_registry  # noqa: E402
from moe_registry.schemas.quant import QuantKind  # noqa: E402

pytestmark = pytest.mark.gpu

_MODEL = {  # quant spelling -> (experts, top_k, hidden, intermediate, activation, dtype, bias)
    "nvfp4": (128, 8, 2816, 704, "gelu_tanh", "bf16", False),  # Gemma 4 26B-A4B NvFP4
    "nvfp4_w4a16": (128, 8, 2816, 704, "gelu_tanh", "bf16", False),
    "int4_w4a16:g128": (128, 8, 2048, 768, "silu", "fp16", False),  # Qwen3-30B-A3B GPTQ int4
    "int4_w4a16:g128:zp": (8, 2, 4096, 14336, "silu", "bf16", False),  # Mixtral 8x7B AWQ
    "mxfp4": (128, 4, 2880, 2880, "swigluoai", "bf16", True),  # gpt-oss-120b
}
_MEDIUM = (32, 4, 1024, 768)
ROWS: list[str] = []
EXACT = 1e-6  # graphed vs eager, and eager vs eager, of a bit-reproducible backend (0.0 measured)
REPEATS = 3  # eager reruns of a nondeterministic backend


def _schemes(decl) -> list[str]:
    """The quant spellings this declaration runs (adapter implemented; zero points both ways)."""
    out = []
    for q in decl.quant:
        if not q.adapter_implemented:
            continue
        spelling = q.kind.value + (":g128" if q.kind is QuantKind.INT4_W4A16 else "")
        out.append(spelling)
        if q.zero_point and q.kind is QuantKind.INT4_W4A16:
            out.append(spelling + ":zp")
    return out


def _cases() -> list:
    cases = []
    for decl in default_registry().declarations():
        if decl.features.cuda_graphs:
            cases += [pytest.param(decl.id, s, id=f"{decl.id}-{s}") for s in _schemes(decl)]
    return cases


def _layer(decl, scheme: str):
    if scheme in _MODEL:
        E, k, H, I, act, dtype, bias = _MODEL[scheme]
    else:
        E, k, H, I = _MEDIUM
        act = "silu" if any(a.value == "silu" for a in decl.activations) else next(iter(decl.activations)).value
        dtype, bias = ("fp16" if scheme == "fp16" else "bf16"), False
        quant = {"bf16": None, "fp16": None}.get(scheme, scheme)
        return single_layer(experts=E, top_k=k, hidden=H, intermediate=I, activation=act, quant=quant, dtype=dtype)
    layer = single_layer(experts=E, top_k=k, hidden=H, intermediate=I, activation=act, quant=scheme, dtype=dtype,
                         bias=bias)
    if act == "swigluoai":
        layer = layer.replace(activation_params=layer.swigluoai.model_copy(update={"interleaved": True}))
    return layer


def _order_only(got, want, top_k: int) -> tuple[bool, int]:
    """Whether ``got`` differs from ``want`` only as the same sums added in another order can make it, and
    how many elements differ at all. Sums kept in float32 (triton-lowt-moe): each element within one ulp
    of the output dtype, plus 4 k float32 roundings of the largest output where a sum cancels. Sums kept
    in the output dtype (Humming's stream-K adds K slices into the bf16 output with atomics): every
    element may round the other way at each add, so the whole output within one unit of the output
    dtype's precision (relative, over the tensor); a wrong result (a stale or misplaced row) is off by
    its own size."""
    g, w = got.float(), want.float()
    allowed = torch.finfo(want.dtype).eps * w.abs() + 4 * top_k * torch.finfo(torch.float32).eps * w.abs().max()
    diff = (g - w).abs()
    float32_order = bool((diff <= allowed).all())
    output_dtype_order = relative_error(got, want) <= torch.finfo(want.dtype).eps
    return float32_order or output_dtype_order, int((diff > 0).sum())


def _row(line: str) -> None:
    """One row per case, written at once (a run stopped by its time limit keeps what it checked)."""
    ROWS.append(line)
    print(line, flush=True)
    path = os.environ.get("GRAPH_CAPTURE_TABLE") or (os.path.join(os.environ["OUT"], "graph_capture_table.txt")
                                                    if os.environ.get("OUT") else None)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@pytest.mark.parametrize("backend, scheme", _cases())
def test_graphed_equals_eager_at_every_bucket(sm90, backend, scheme):
    from moe_registry.execution import build_experts
    from moe_registry.selection import select_backend

    registry = default_registry()
    decl = registry.get(backend)
    layer = _layer(decl, scheme)
    try:
        selection = select_backend(layer, None, force=backend)
    except Exception as exc:  # not installed / built here: say so, never a silent pass
        pytest.skip(f"{backend} cannot run {scheme} here: {str(exc)[:300]}")
    weights = random_weights(layer, device=sm90, dtype=torch_dtype(layer))
    experts = build_experts(selection, weights)
    if getattr(experts, "capturable", True) is False:  # the adapter's own word: a host-syncing path here
        pytest.skip(f"{backend} runs {scheme} on a path that syncs with the host on this device")
    graphed = GraphedExperts(experts, buckets=DEFAULT_BUCKETS)
    where = f"{torch.cuda.get_device_name()} {backend:<20} {scheme:<20} {layer.describe()}"
    nondeterministic = decl.features.nondeterministic is not None
    errors: dict[int, float] = {}
    spread = 0.0  # largest eager-vs-eager relative difference seen
    try:
        for T in (*DEFAULT_BUCKETS, 3, 50):
            gen = torch.Generator(device=sm90).manual_seed(T)
            w, ids = routing_pattern(T, layer.local_num_experts, layer.top_k, device=sm90, kind="imbalanced",
                                     generator=gen)
            x = torch.randn(T, layer.hidden_size, device=sm90, generator=gen).to(torch_dtype(layer))
            want = experts(x, w, ids).clone()
            # eager against itself: a nondeterministic kernel shows here
            for _ in range(REPEATS if nondeterministic else 1):
                again = experts(x, w, ids).clone()
                spread = max(spread, relative_error(again, want))
                if nondeterministic:
                    ok, n = _order_only(again, want, layer.top_k)
                    assert ok, (T, "eager differs from eager beyond summation order", relative_error(again, want), n)
                else:
                    assert relative_error(again, want) <= EXACT, (
                        T, "eager differs from eager (declared bit-reproducible)", relative_error(again, want))
            got = graphed(x, w, ids).clone()
            errors[T] = relative_error(got, want)
            if T not in DEFAULT_BUCKETS:  # padded rows: another bucket's config may round differently
                assert errors[T] <= 1e-2, (T, errors[T])
            elif nondeterministic:
                ok, n = _order_only(got, want, layer.top_k)
                assert ok, (T, "graphed differs from eager beyond summation order", errors[T], n)
            else:
                assert errors[T] <= EXACT, (T, errors[T])
    except BaseException as exc:
        _row(f"{where}: FAILED after T={','.join(map(str, errors))}: {type(exc).__name__}: {str(exc)[:300]}")
        raise
    worst = max(errors[T] for T in DEFAULT_BUCKETS)
    order = (f"; declared nondeterministic: eager vs eager up to {spread:.1e}, every element within summation "
             f"order" if nondeterministic else "")
    _row(f"{where}: graphed vs eager at T={','.join(map(str, DEFAULT_BUCKETS))}: max rel diff {worst:.1e} "
         f"(padded T=3, 50: {errors[3]:.1e}, {errors[50]:.1e}){order}; {len(graphed._graphs)} graphs")
