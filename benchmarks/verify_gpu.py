#!/usr/bin/env python3
"""Verify the torch-grouped-mm backend against the reference on this GPU; write a JSON record.

    python benchmarks/verify_gpu.py docs/verification/torch-grouped-mm-h100.json
    python benchmarks/verify_gpu.py /tmp/v.json --torch-device cpu --quick      # logic check on CPU

Each case draws fresh random inputs, runs ``TorchGroupedMMExperts`` and ``ReferenceExperts``
(float32, per-expert loop) on the same weights and records ``||out - ref|| / ||ref||``. The
caching allocator is filled with NaN before each case, so an output element the kernel never
wrote shows up as a failure. Experiments (not assertions): no host sync in the bf16 forward,
CUDA-graph capture, and FP8 rowwise ``torch._scaled_grouped_mm`` on this card. The JSON is
rewritten after every case, so a crash keeps what ran. ``tests/gpu/test_grouped_mm_gpu.py``
imports the case list and ``run_case`` from this file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
import zlib
from dataclasses import dataclass
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import torch  # noqa: E402

from _timing import machine_info  # noqa: E402

from moe_registry.execution.patterns import relative_error, routing_pattern  # noqa: E402
from moe_registry.measure.timing import time_calls  # noqa: E402

BF16_TOL = 1e-2

# --- Cases ------------------------------------------------------------------------------------------

MEDIUM = dict(num_experts=32, top_k=4, hidden_size=1024, intermediate_size=512)
GEMMA4 = dict(num_experts=128, top_k=8, hidden_size=2816, intermediate_size=704)  # Gemma 4 26B-A4B
SEED = dict(num_experts=64, top_k=8, hidden_size=4096, intermediate_size=704)  # the seed's layer
ALL_ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "swigluoai", "relu2_no_mul", "silu_no_mul", "gelu_no_mul",
                   "gelu_tanh_no_mul")


@dataclass(frozen=True)
class Case:
    name: str
    layer: dict[str, Any]  # LayerSpec fields
    T: int
    routing: str = "random"  # random | imbalanced | empty
    ids_dtype: str = "int32"
    weight_layout: str | None = None  # None: the adapter's default
    pad_hidden_to: int | None = None
    pad_intermediate_to: int | None = None
    tol: float = BF16_TOL
    weight_seed: int = 0

    def layer_key(self) -> str:
        return json.dumps(self.layer, sort_keys=True) + f"|seed{self.weight_seed}"


def _case(group: str, shape: dict[str, Any], T: int, act: str, **kw: Any) -> Case:
    extra = kw.pop("layer_extra", {})
    tag = kw.pop("tag", "")
    layer = dict(shape, activation=act, **extra)
    name = f"{group}/{act}/T{T}" + (f"/{kw['routing']}" if kw.get("routing", "random") != "random" else "") + tag
    return Case(name=name, layer=layer, T=T, **kw)


def cases(quick: bool = False) -> list[Case]:
    """The verification cases, grouped by layer so weights are built once per layer."""
    out: list[Case] = []
    if quick:  # small shapes for a CPU logic check
        small = dict(num_experts=8, top_k=2, hidden_size=128, intermediate_size=64)
        for act in ALL_ACTIVATIONS:
            out += [_case("small", small, T, act) for T in (1, 7)]
        out.append(_case("small", small, 16, "silu", routing="empty"))
        out.append(_case("small", small, 16, "silu", routing="imbalanced"))
        out.append(_case("small-pad", dict(small, hidden_size=124, intermediate_size=60), 5, "silu",
                         pad_hidden_to=128, pad_intermediate_to=64))
        out.append(_case("small-int4", small, 9, "silu", layer_extra={"quant": "int4_w4a16:g64"}))
        return out
    # Every activation on a medium shape.
    for act in ALL_ACTIVATIONS:
        out += [_case("medium", MEDIUM, T, act) for T in (1, 7, 64, 512)]
    # Features on the medium shape.
    out.append(_case("medium-bias", MEDIUM, 64, "swigluoai", layer_extra={"bias": True}))
    out.append(_case("medium-bias", MEDIUM, 7, "silu", layer_extra={"bias": True}))
    out.append(_case("medium-input-weight", dict(MEDIUM, top_k=1), 64, "silu",
                     layer_extra={"apply_router_weight_on_input": True}))
    out.append(_case("medium", MEDIUM, 64, "silu", ids_dtype="int64", tag="/int64"))
    out.append(_case("medium", MEDIUM, 512, "silu", weight_layout="n_major", tag="/n_major"))
    out.append(_case("medium", MEDIUM, 512, "silu", weight_layout="k_major", tag="/k_major"))
    out.append(_case("medium-pad", dict(MEDIUM, hidden_size=1004, intermediate_size=500), 64, "silu",
                     pad_hidden_to=1008, pad_intermediate_to=504))
    # No fp16 case: torch-grouped-mm declares bf16 only (fp16 takes PyTorch's per-group fallback after a host
    # sync; experiment_fp16_path times it) and its guard refuses fp16 hidden states.
    # Gemma 4 layer.
    for T in (1, 7, 64, 512, 4096):
        out.append(_case("gemma4", GEMMA4, T, "gelu_tanh"))
    out.append(_case("gemma4", GEMMA4, 512, "gelu_tanh", routing="imbalanced"))
    out.append(_case("gemma4", GEMMA4, 4096, "gelu_tanh", routing="imbalanced"))
    out.append(_case("gemma4", GEMMA4, 512, "gelu_tanh", routing="empty"))
    out.append(_case("gemma4", GEMMA4, 4096, "gelu_tanh", weight_layout="n_major", tag="/n_major"))
    for T in (64, 4096):
        out.append(_case("gemma4", GEMMA4, T, "silu"))
    # Gemma 4 shape, int4 (GPTQ g64: I=704 is not a multiple of 128) weights dequantized at load.
    for T in (1, 64):
        out.append(_case("gemma4-int4-dequant", GEMMA4, T, "gelu_tanh", layer_extra={"quant": "int4_w4a16:g64"}))
    # The seed's layer.
    for T in (1, 7, 64, 512, 4096):
        out.append(_case("seed", SEED, T, "silu"))
    out.append(_case("seed", SEED, 64, "silu", routing="empty"))
    out.append(_case("seed", SEED, 4096, "silu", routing="imbalanced"))
    for T in (1, 512):
        out.append(_case("seed", SEED, T, "gelu_tanh"))
    return out


# --- Running one case ---------------------------------------------------------------------------------

class LayerCache:
    """Weights and built backends of the most recent layer (one layer held at a time: big shapes)."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.items: dict[Any, Any] = {}

    def get(self, case: Case, device: torch.device) -> dict[Any, Any]:
        if case.layer_key() != self.key:
            self.items.clear()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            self.key = case.layer_key()
        return self.items


def _poison_allocator(device: torch.device, nbytes: int = 256 << 20) -> None:
    """Fill cached-but-free device memory with NaN so unwritten outputs are caught: one large
    block (the allocator's large pool) and many 256 KiB blocks (its small pool, < 1 MiB)."""
    if device.type != "cuda":
        return
    try:
        big = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(float("nan"))
        small = [torch.empty(1 << 16, dtype=torch.float32, device=device).fill_(float("nan")) for _ in range(64)]
        del big, small
    except RuntimeError:  # out of memory: not worth failing a case over
        pass


def run_case(case: Case, device: torch.device, cache: LayerCache, *, seed: int = 0) -> dict[str, Any]:
    """Run one case; return its record (never raises: errors are recorded)."""
    from moe_registry.backends.reference.kernel import ReferenceExperts
    from moe_registry.backends.torch_grouped_mm.kernel import TorchGroupedMMExperts
    from moe_registry.execution.weights import random_weights, torch_dtype
    from moe_registry.schemas.layer import LayerSpec

    rec: dict[str, Any] = {"case": case.name, "T": case.T, "routing": case.routing, "tol": case.tol}
    try:
        layer = LayerSpec(**case.layer)
        rec["layer"] = layer.describe()
        items = cache.get(case, device)
        if "weights" not in items:
            t0 = time.perf_counter()
            items["weights"] = random_weights(layer, device=device, seed=case.weight_seed)
            items["reference"] = ReferenceExperts(layer, items["weights"])
            rec["build_s"] = round(time.perf_counter() - t0, 3)
        key = ("ours", case.weight_layout, case.pad_hidden_to, case.pad_intermediate_to)
        if key not in items:
            items[key] = TorchGroupedMMExperts(layer, items["weights"], pad_hidden_to=case.pad_hidden_to,
                                               pad_intermediate_to=case.pad_intermediate_to,
                                               weight_layout=case.weight_layout)
        ours, ref_experts = items[key], items["reference"]
        rec["weight_layout"] = ours.weight_layout
        rec["fast_path"] = getattr(ours, "fast_path", None)
        gen = torch.Generator(device=device).manual_seed(zlib.crc32(f"{case.name}|{seed}".encode()))
        dtype = torch_dtype(layer)
        x = torch.randn(case.T, layer.hidden_size, device=device, generator=gen).to(dtype)
        w, ids = routing_pattern(case.T, layer.local_num_experts, layer.top_k, device=device, kind=case.routing,
                              ids_dtype=getattr(torch, case.ids_dtype), generator=gen)
        rec["experts_hit"] = int(torch.unique(ids).numel()) if case.T else 0
        ref = ref_experts(x, w, ids)
        _poison_allocator(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = ours(x, w, ids)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rec["first_call_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        if tuple(out.shape) != tuple(ref.shape) or out.dtype != ref.dtype:
            raise AssertionError(f"output {tuple(out.shape)} {out.dtype} vs reference {tuple(ref.shape)} {ref.dtype}")
        err = relative_error(out, ref) if case.T else 0.0
        rec["rel_err"] = err
        rec["passed"] = bool(err <= case.tol)
        if not rec["passed"]:
            rec["error"] = f"relative error {err:.3e} > {case.tol}"
    except Exception as exc:  # recorded, the run goes on
        rec["passed"] = False
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["traceback"] = traceback.format_exc(limit=6)
    return rec


# --- Experiments ------------------------------------------------------------------------------------

def _gemma_experts(device: torch.device):
    from moe_registry.backends.torch_grouped_mm.kernel import TorchGroupedMMExperts
    from moe_registry.execution.weights import random_weights
    from moe_registry.schemas.layer import LayerSpec

    layer = LayerSpec(**GEMMA4, activation="gelu_tanh")
    return layer, TorchGroupedMMExperts(layer, random_weights(layer, device=device, seed=7))


def experiment_no_host_sync(device: torch.device, built: Any = None) -> dict[str, Any]:
    """bf16 forward (id-range check off) under ``torch.cuda.set_sync_debug_mode("error")``."""
    rec: dict[str, Any] = {"experiment": "no_host_sync_in_bf16_forward"}
    if device.type != "cuda":
        return {**rec, "status": "skipped (needs CUDA)"}
    experts = None
    try:
        layer, experts = built or _gemma_experts(device)
        experts.check_id_range = False
        results = {}
        for T in (1, 64, 4096):
            w, ids = routing_pattern(T, layer.local_num_experts, layer.top_k, device=device)
            x = torch.randn(T, layer.hidden_size, device=device, dtype=torch.bfloat16)
            experts(x, w, ids)  # warm (first-call allocations)
            torch.cuda.synchronize(device)
            torch.cuda.set_sync_debug_mode("error")
            try:
                experts(x, w, ids)
                results[f"T{T}"] = "no sync"
            except RuntimeError as exc:
                results[f"T{T}"] = f"SYNC: {exc}"
            finally:
                torch.cuda.set_sync_debug_mode(0)
        rec["results"] = results
        rec["status"] = "ok" if all(v == "no sync" for v in results.values()) else "host sync found"
    except Exception as exc:
        torch.cuda.set_sync_debug_mode(0)
        rec.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=6))
    finally:
        if experts is not None:
            experts.check_id_range = True
    return rec


def experiment_cuda_graph(device: torch.device, built: Any = None) -> dict[str, Any]:
    """Capture the bf16 forward (id-range check off) in a CUDA graph; replay on new inputs copied
    into the static buffers; compare with eager."""
    rec: dict[str, Any] = {"experiment": "cuda_graph_capture"}
    if device.type != "cuda":
        return {**rec, "status": "skipped (needs CUDA)"}
    experts = None
    try:
        layer, experts = built or _gemma_experts(device)
        experts.check_id_range = False
        results = {}
        for T in (1, 16, 64):
            x = torch.randn(T, layer.hidden_size, device=device, dtype=torch.bfloat16)
            w, ids = routing_pattern(T, layer.local_num_experts, layer.top_k, device=device)
            s = torch.cuda.Stream(device)
            s.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(s):
                for _ in range(2):
                    experts(x, w, ids)
            torch.cuda.current_stream(device).wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                static_out = experts(x, w, ids)
            x2 = torch.randn_like(x)
            w2, ids2 = routing_pattern(T, layer.local_num_experts, layer.top_k, device=device)
            x.copy_(x2)
            w.copy_(w2)
            ids.copy_(ids2)
            g.replay()
            torch.cuda.synchronize(device)
            eager = experts(x2, w2, ids2)
            err = relative_error(static_out, eager)
            results[f"T{T}"] = {"rel_err_vs_eager": err, "ok": err <= 1e-6}
        rec["results"] = results
        rec["status"] = "ok" if all(r["ok"] for r in results.values()) else "mismatch"
    except Exception as exc:
        rec.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=6))
    finally:
        if experts is not None:
            experts.check_id_range = True
    return rec


def experiment_fp8_rowwise(device: torch.device) -> dict[str, Any]:
    """Does ``torch._scaled_grouped_mm`` (FP8 e4m3, rowwise scales) run and verify here?

    Gemma 4 GEMM1 shape (E=128 groups, K=2816, N=1408) with per-output-channel weight scales
    ``[E, N]`` and per-row dynamic activation scales ``[M]``. Compared with a float32 product of
    the dequantized operands (checks the kernel) and with bf16 grouped_mm of the unquantized
    operands (the quantization error), and timed against bf16 grouped_mm.
    """
    rec: dict[str, Any] = {"experiment": "fp8_rowwise_scaled_grouped_mm", "shape": "E=128 K=2816 N=1408, top-8"}
    fn = getattr(torch, "_scaled_grouped_mm", None)
    if fn is None:
        return {**rec, "status": "absent (torch._scaled_grouped_mm not in this build)"}
    if device.type != "cuda":
        return {**rec, "status": "skipped (needs CUDA)"}
    try:
        E, K, N, k = 128, 2816, 1408, 8
        fp8 = torch.float8_e4m3fn
        fmax = torch.finfo(fp8).max
        w = (torch.randn(E, N, K, device=device) / math.sqrt(K)).to(torch.bfloat16)
        s_w = w.float().abs().amax(dim=-1).clamp_min(1e-12) / fmax  # [E, N]
        w_q = (w.float() / s_w.unsqueeze(-1)).to(fp8)  # [E, N, K]
        b_q = w_q.transpose(1, 2)  # [E, K, N], column-major (the kernel requires B "transposed")
        b_bf16 = w.transpose(1, 2)
        runs = {}
        for T in (1, 64, 512, 4096):
            M = T * k
            _, ids = routing_pattern(T, E, k, device=device)
            sorted_ids = torch.sort(ids.reshape(-1)).values
            offs = torch.searchsorted(sorted_ids, torch.arange(E, device=device, dtype=sorted_ids.dtype),
                                      right=True, out_int32=True)
            a = torch.randn(M, K, device=device).to(torch.bfloat16)
            s_a = a.float().abs().amax(dim=-1).clamp_min(1e-12) / fmax  # [M]
            a_q = (a.float() / s_a.unsqueeze(-1)).to(fp8)
            entry: dict[str, Any] = {}
            try:
                out = fn(a_q, b_q, s_a, s_w, offs=offs, out_dtype=torch.bfloat16)
                torch.cuda.synchronize(device)
                a_dq = a_q.float() * s_a.unsqueeze(-1)
                ref = torch.empty(M, N, device=device)
                ends = offs.tolist()
                start = 0
                for g, end in enumerate(ends):
                    if end > start:
                        ref[start:end] = a_dq[start:end] @ (w_q[g].float() * s_w[g].unsqueeze(-1)).T
                    start = end
                bf16 = torch.nn.functional.grouped_mm(a, b_bf16, offs=offs)
                entry["rel_err_vs_dequantized_fp32"] = relative_error(out, ref)
                entry["rel_err_vs_bf16_grouped_mm"] = relative_error(out, bf16)
                entry["verified"] = entry["rel_err_vs_dequantized_fp32"] <= BF16_TOL
                t8 = time_calls(lambda a_q=a_q, s_a=s_a, offs=offs: fn(a_q, b_q, s_a, s_w, offs=offs, out_dtype=torch.bfloat16),
                                [()], device,
                                warmup=3, min_reps=10, max_reps=50, budget_s=0.1)
                t16 = time_calls(lambda a=a, offs=offs: torch.nn.functional.grouped_mm(a, b_bf16, offs=offs), [()], device,
                                 warmup=3, min_reps=10, max_reps=50, budget_s=0.1)
                entry["fp8_us"], entry["bf16_us"] = t8.median_us, t16.median_us
                entry["fp8_tflops"] = 2 * M * K * N / (t8.median_us * 1e-6) / 1e12
                entry["bf16_tflops"] = 2 * M * K * N / (t16.median_us * 1e-6) / 1e12
                try:
                    outf = fn(a_q, b_q, s_a, s_w, offs=offs, out_dtype=torch.bfloat16, use_fast_accum=True)
                    entry["fast_accum_rel_err_vs_dequantized_fp32"] = relative_error(outf, ref)
                except Exception as exc:
                    entry["fast_accum_error"] = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
            runs[f"T{T}"] = entry
        rec["runs"] = runs
        ok = all(r.get("verified") for r in runs.values())
        rec["status"] = "runs and verifies" if ok else "failed (see runs)"
    except Exception as exc:
        rec.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=6))
    return rec


def experiment_fp16_path(device: torch.device) -> dict[str, Any]:
    """fp16 grouped_mm takes PyTorch's fallback (per-group mm after a host sync): time it against
    bf16 on the Gemma 4 GEMM1 shape at T=64 so the lead can judge declaring fp16."""
    rec: dict[str, Any] = {"experiment": "fp16_fallback_vs_bf16"}
    if device.type != "cuda":
        return {**rec, "status": "skipped (needs CUDA)"}
    try:
        E, K, N, k, T = 128, 2816, 1408, 8, 64
        _, ids = routing_pattern(T, E, k, device=device)
        sorted_ids = torch.sort(ids.reshape(-1)).values
        offs = torch.searchsorted(sorted_ids, torch.arange(E, device=device, dtype=sorted_ids.dtype),
                                  right=True, out_int32=True)
        for dt in (torch.bfloat16, torch.float16):
            a = torch.randn(T * k, K, device=device, dtype=dt)
            b = torch.randn(E, N, K, device=device, dtype=dt).transpose(1, 2)
            t = time_calls(lambda a=a, b=b: torch.nn.functional.grouped_mm(a, b, offs=offs), [()], device,
                           warmup=3, min_reps=10, max_reps=50, budget_s=0.1)
            rec[f"{str(dt).replace('torch.', '')}_us"] = t.median_us
        rec["status"] = "ok"
    except Exception as exc:
        rec.update(status="error", error=f"{type(exc).__name__}: {exc}")
    return rec


# --- Main ---------------------------------------------------------------------------------------------

def _write(path: str, record: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=str)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="JSON record path (e.g. docs/verification/torch-grouped-mm-h100.json)")
    p.add_argument("--torch-device", default="cuda")
    p.add_argument("--quick", action="store_true", help="small cases only (CPU logic check)")
    p.add_argument("--no-experiments", action="store_true")
    p.add_argument("--filter", default="", help="run only cases whose name contains this text")
    args = p.parse_args(argv)
    device = torch.device(args.torch_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA not available; use --torch-device cpu --quick for a logic check", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(min(4, os.cpu_count() or 1))  # fewer threads: less noise on a shared host
    record: dict[str, Any] = {"backend": "torch-grouped-mm", "reference": "reference (float32, per expert)",
                              "metric": "||out-ref||/||ref|| (float64)", "machine": machine_info(device),
                              "cases": [], "experiments": []}
    _write(args.out, record)
    t_start = time.perf_counter()
    cache = LayerCache()
    selected = [c for c in cases(args.quick) if args.filter in c.name]
    for case in selected:
        rec = run_case(case, device, cache)
        record["cases"].append(rec)
        status = "ok  " if rec["passed"] else "FAIL"
        err = rec.get("rel_err")
        print(f"{status} {case.name:<44} err={err if err is None else f'{err:.2e}'}"
              + (f"  {rec['error']}" if "error" in rec else ""), flush=True)
        _write(args.out, record)
    cache.items.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not args.no_experiments:
        shared = None
        if device.type == "cuda":
            try:
                shared = _gemma_experts(device)
            except Exception as exc:
                record["experiments"].append({"experiment": "build", "status": f"error: {exc}"})
        for fn in (lambda: experiment_no_host_sync(device, shared), lambda: experiment_cuda_graph(device, shared),
                   lambda: experiment_fp8_rowwise(device), lambda: experiment_fp16_path(device)):
            try:
                rec = fn()
            except Exception as exc:  # belt and braces: experiments already catch
                rec = {"experiment": "?", "status": f"error: {exc}"}
            record["experiments"].append(rec)
            _write(args.out, record)
        shared = None
    passed = sum(r["passed"] for r in record["cases"])
    record["summary"] = {"cases": len(record["cases"]), "passed": passed,
                         "max_rel_err": max((r.get("rel_err", 0.0) for r in record["cases"] if r["passed"]),
                                            default=0.0),
                         "wall_s": round(time.perf_counter() - t_start, 1)}
    _write(args.out, record)

    print("\n== experiments ==")
    for e in record["experiments"]:
        print(f"{e.get('experiment')}: {e.get('status')}")
        for key in ("results", "runs"):
            for name, val in (e.get(key) or {}).items():
                print(f"   {name}: {val}")
        for key in ("bfloat16_us", "float16_us", "error"):
            if key in e:
                print(f"   {key}: {e[key]}")
    m = record["machine"]
    print(f"\n== verification: {passed}/{len(record['cases'])} cases passed on {m.get('card')} "
          f"(cc {m.get('compute_capability')}, torch {m.get('torch')}), max rel err "
          f"{record['summary']['max_rel_err']:.2e}, {record['summary']['wall_s']} s -> {args.out}")
    for r in record["cases"]:
        if not r["passed"]:
            print(f"   FAIL {r['case']}: {r.get('error')}")
    return 0 if passed == len(record["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
