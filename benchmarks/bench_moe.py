#!/usr/bin/env python3
"""Time fused-MoE experts backends on real layer shapes; write JSON results and a plot.

    python benchmarks/bench_moe.py --out docs/bench/h100.json --plot docs/bench/h100.png
    python benchmarks/bench_moe.py --device cpu --quick --out /tmp/b.json --plot /tmp/b.png

Shapes: Gemma 4 26B-A4B (E=128, top-8, H=2816, I=704, gelu_tanh), Qwen3-30B-A3B (E=128, top-8,
H=2048, I=768, silu), Mixtral-8x7B (E=8, top-2, H=4096, I=14336, silu); T in {1, 16, 64, 512,
4096}. Backends: torch-grouped-mm (bf16; both weight layouts; CUDA-graph replay at small T),
marlin (int4_w4a16, g128 where the shape allows, else g64; skipped with a note when the vLLM op
is absent: pass ``--load-library .../_moe_C_stable_libtorch.abi3.so``), reference (small T).

Per case: median us per forward (CUDA events around each call, warm-up, several rotated input
sets), TFLOP/s (``2*T*k*(H*gemm1_rows + I*H)``), GB/s (weights of the distinct experts hit, plus
activations in and out), and % of the roofline floor ``max(bytes/BW, flops/peak)`` with BW and
peak measured in the same run (1 GiB device copy, 8192^3 bf16 matmul). At T=4096 also % of the
card's grouped-GEMM peak (best of pure ``grouped_mm`` calls measured here). Overhead: the
adapter's ``forward`` (guards, with and without the id-range sync) against a direct call of the
same kernel function. Results are rewritten after every shape, so a crash keeps what ran.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from typing import Any, Callable

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (_ROOT, _HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

from _timing import Timing, machine_info, measure_ceilings, time_calls, time_graph  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    "gemma4-26b-a4b": dict(num_experts=128, top_k=8, hidden_size=2816, intermediate_size=704, activation="gelu_tanh"),
    "qwen3-30b-a3b": dict(num_experts=128, top_k=8, hidden_size=2048, intermediate_size=768, activation="silu"),
    "mixtral-8x7b": dict(num_experts=8, top_k=2, hidden_size=4096, intermediate_size=14336, activation="silu"),
}
TOKENS = (1, 16, 64, 512, 4096)
QUICK_TOKENS = (1, 16, 64)
REFERENCE_TOKENS = (1, 16)
GRAPH_TOKENS = (1, 16, 64)
OVERHEAD_TOKENS = (1, 64, 4096)
N_INPUT_SETS = 4
TIME_BUDGET_S = 210.0  # optional parts are skipped past this (the whole run must stay < 4 min)


def shrink(shape: dict[str, Any]) -> dict[str, Any]:
    """A CPU-sized version of a shape (H and I / 8, at most 16 experts) for --quick."""
    E = min(shape["num_experts"], 16)
    return dict(shape, num_experts=E, top_k=min(shape["top_k"], E), hidden_size=shape["hidden_size"] // 8,
                intermediate_size=shape["intermediate_size"] // 8)


# --- Arithmetic ---------------------------------------------------------------------------------------

def flops(layer: Any, T: int) -> float:
    H, I, R, k = layer.hidden_size, layer.local_intermediate_size, layer.gemm1_rows, layer.top_k
    return 2.0 * T * k * (H * R + I * H)


def expert_weight_bytes(layer: Any, quant: str) -> float:
    """Bytes of one expert's GEMM weights as the backend reads them."""
    H, I, R = layer.hidden_size, layer.local_intermediate_size, layer.gemm1_rows
    elems = R * H + H * I
    if quant.startswith("int4"):
        tail = quant.split(":g")[1] if ":g" in quant else "128"
        groups_per_row_elem = 1.0 / int(tail) if tail.isdigit() else 0.0  # per channel: ~no scale bytes
        return elems / 2 + elems * groups_per_row_elem * 2  # nibbles + 16-bit scales
    return elems * 2.0


def traffic_bytes(layer: Any, T: int, experts_hit: float, quant: str) -> float:
    act = 2.0 * T * layer.hidden_size * 2  # bf16 in + out
    routing = T * layer.top_k * 8.0  # fp32 weights + int32 ids
    return experts_hit * expert_weight_bytes(layer, quant) + act + routing


def metrics(layer: Any, T: int, hit: float, quant: str, t: Timing, ceilings: dict[str, float]) -> dict[str, Any]:
    f = flops(layer, T)
    b = traffic_bytes(layer, T, hit, quant)
    us = t.median_us
    mem_us = b / (ceilings["copy_bandwidth_gbs"] * 1e9) * 1e6
    math_us = f / (ceilings["bf16_matmul_tflops"] * 1e12) * 1e6
    floor_us = max(mem_us, math_us)
    return {"us": us, "p10_us": t.p10_us, "p90_us": t.p90_us, "reps": t.reps,
            "tflops": f / (us * 1e-6) / 1e12, "gbs": b / (us * 1e-6) / 1e9, "flops": f, "bytes": b,
            "experts_hit": hit, "memory_floor_us": mem_us, "math_floor_us": math_us, "floor_us": floor_us,
            "roofline_pct": 100.0 * floor_us / us, "bound": "memory" if mem_us >= math_us else "compute"}


# --- Inputs -------------------------------------------------------------------------------------------

def input_sets(layer: Any, T: int, device: torch.device, seed: int) -> tuple[list[tuple[Any, ...]], float]:
    """``N_INPUT_SETS`` rotated (x, topk_weights, topk_ids) sets and the mean distinct experts hit."""
    gen = torch.Generator(device=device).manual_seed(seed)
    sets, hits = [], []
    E, k = layer.local_num_experts, layer.top_k
    for _ in range(N_INPUT_SETS):
        x = torch.randn(T, layer.hidden_size, device=device, generator=gen).to(torch.bfloat16)
        logits = torch.randn(T, E, device=device, generator=gen)
        w, ids = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)
        w = (w / w.sum(dim=-1, keepdim=True)).float().contiguous()
        ids = ids.to(torch.int32).contiguous()
        sets.append((x, w, ids))
        hits.append(int(torch.unique(ids).numel()) if T else 0)
    return sets, float(statistics.mean(hits))


# --- The run ------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.quick = args.quick
        self.t0 = time.perf_counter()
        self.record: dict[str, Any] = {"results": [], "overhead": [], "grouped_gemm_peak": [], "notes": [],
                                       "errors": []}
        self.tokens = QUICK_TOKENS if self.quick else TOKENS
        self.timing_kw = dict(warmup=2, min_reps=3, max_reps=20, target_s=0.02) if self.quick else \
            dict(warmup=5, min_reps=20, max_reps=300, target_s=0.12)

    # -- bookkeeping --
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over_budget(self) -> bool:
        return self.elapsed() > TIME_BUDGET_S

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.record["notes"].append(text)

    def error(self, where: str, exc: BaseException) -> None:
        msg = f"{where}: {type(exc).__name__}: {exc}"
        print(f"ERROR {msg}", flush=True)
        self.record["errors"].append({"where": where, "error": msg, "traceback": traceback.format_exc(limit=8)})

    def save(self) -> None:
        self.record["wall_s"] = round(self.elapsed(), 1)
        path = self.args.out
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(self.record, f, indent=1, default=str)
        os.replace(path + ".tmp", path)

    def free(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    # -- pieces --
    def add(self, shape: str, backend: str, layer: Any, T: int, hit: float, quant: str, t: Timing,
            **extra: Any) -> None:
        row = {"shape": shape, "backend": backend, "T": T, "quant": quant,
               **metrics(layer, T, hit, quant, t, self.record["ceilings"]), **extra}
        self.record["results"].append(row)
        print(f"  {backend:<30} T={T:<5} {row['us']:10.1f} us  {row['tflops']:7.1f} TFLOP/s  "
              f"{row['gbs']:8.1f} GB/s  {row['roofline_pct']:5.1f}% roofline", flush=True)

    def time_backend(self, shape: str, backend: str, layer: Any, fn: Callable[..., Any], quant: str,
                     sets: dict[int, tuple[list, float]], tokens: tuple[int, ...], *, graph: bool = False,
                     **timing: Any) -> None:
        for T in tokens:
            try:
                inputs, hit = sets[T]
                if graph:
                    t = time_graph(fn, inputs, self.device)
                else:
                    t = time_calls(fn, inputs, self.device, **{**self.timing_kw, **timing})
                self.add(shape, backend, layer, T, hit, quant, t)
            except Exception as exc:
                self.error(f"{shape}/{backend}/T{T}", exc)

    def grouped_peak(self, label: str, G: int, rows_per_group: int, K: int, N: int) -> float | None:
        """TFLOP/s of one bf16 grouped_mm with equal groups (weights K-major, like the adapter)."""
        try:
            M = G * rows_per_group
            a = torch.randn(M, K, device=self.device).to(torch.bfloat16)
            b = (torch.randn(G, N, K, device=self.device) / math.sqrt(K)).to(torch.bfloat16).transpose(1, 2)
            offs = torch.arange(1, G + 1, device=self.device, dtype=torch.int32) * rows_per_group
            fn = torch.nn.functional.grouped_mm
            t = time_calls(lambda: fn(a, b, offs=offs), [()], self.device, **self.timing_kw)
            tf = 2.0 * M * K * N / (t.median_us * 1e-6) / 1e12
            self.record["grouped_gemm_peak"].append({"label": label, "G": G, "rows_per_group": rows_per_group,
                                                      "K": K, "N": N, "us": t.median_us, "tflops": tf})
            print(f"  grouped_mm {label:<34} {t.median_us:9.1f} us  {tf:7.1f} TFLOP/s", flush=True)
            del a, b
            return tf
        except Exception as exc:
            self.error(f"grouped_peak/{label}", exc)
            return None

    def overhead(self, shape: str, layer: Any, experts: Any, sets: dict[int, tuple[list, float]]) -> None:
        """forward (guards incl. the id-range sync), forward without the id-range check, and the
        direct kernel function, interleaved over three rounds; medians of the round medians."""
        fn, args, kwargs = experts.direct_call(torch.int32)

        def direct(x: Any, w: Any, ids: Any) -> Any:
            return fn(x, w, ids, *args, **kwargs)

        for T in (OVERHEAD_TOKENS if not self.quick else QUICK_TOKENS[:2]):
            if T not in sets:
                continue
            try:
                inputs, _ = sets[T]
                rounds: dict[str, list[float]] = {"direct": [], "forward_no_id_check": [], "forward": []}
                for _ in range(3):
                    rounds["direct"].append(time_calls(direct, inputs, self.device, **self.timing_kw).median_us)
                    experts.check_id_range = False
                    rounds["forward_no_id_check"].append(
                        time_calls(experts.forward, inputs, self.device, **self.timing_kw).median_us)
                    experts.check_id_range = True
                    rounds["forward"].append(
                        time_calls(experts.forward, inputs, self.device, **self.timing_kw).median_us)
                med = {k: statistics.median(v) for k, v in rounds.items()}
                spread = {k: (max(v) - min(v)) / statistics.median(v) * 100 for k, v in rounds.items()}
                row = {"shape": shape, "T": T, **{f"{k}_us": v for k, v in med.items()},
                       "overhead_pct": (med["forward"] - med["direct"]) / med["direct"] * 100,
                       "overhead_no_id_check_pct": (med["forward_no_id_check"] - med["direct"]) / med["direct"] * 100,
                       "round_spread_pct": spread}
                self.record["overhead"].append(row)
                print(f"  overhead T={T:<5} direct {med['direct']:9.1f} us  forward {med['forward']:9.1f} us "
                      f"({row['overhead_pct']:+.2f}%)  without id-range sync {med['forward_no_id_check']:9.1f} us "
                      f"({row['overhead_no_id_check_pct']:+.2f}%)", flush=True)
            except Exception as exc:
                experts.check_id_range = True
                self.error(f"{shape}/overhead/T{T}", exc)

    # -- one shape --
    def run_shape(self, name: str, spec: dict[str, Any]) -> None:
        from moe_registry.backends.reference.kernel import ReferenceExperts
        from moe_registry.backends.torch_grouped_mm.kernel import TorchGroupedMMExperts
        from moe_registry.execution.weights import random_weights
        from moe_registry.schemas.layer import LayerSpec

        spec = shrink(spec) if self.quick else spec
        layer = LayerSpec(name=name, **spec)
        print(f"\n== {name}: {layer.describe()}", flush=True)
        sets = {T: input_sets(layer, T, self.device, seed=1000 + T) for T in self.tokens}

        # torch-grouped-mm, bf16, both weight layouts.
        try:
            weights = random_weights(layer, device=self.device, seed=1)
        except Exception as exc:
            self.error(f"{name}/weights", exc)
            return
        for layout in ("k_major", "n_major"):
            if layout == "n_major" and self.over_budget():
                self.note(f"{name}: n_major layout skipped (time budget)")
                continue
            try:
                t_build = time.perf_counter()
                experts = TorchGroupedMMExperts(layer, weights, weight_layout=layout)
                build_s = time.perf_counter() - t_build
                label = "torch-grouped-mm" + ("" if layout == "k_major" else "[n_major]")
                self.time_backend(name, label, layer, experts.forward, "bf16", sets, self.tokens)
                if layout == "k_major":
                    self.record.setdefault("build_s", {})[f"{name}/torch-grouped-mm"] = round(build_s, 3)
                    if self.device.type == "cuda" and not self.over_budget():
                        fn, args, kwargs = experts.direct_call(torch.int32)
                        experts.check_id_range = False
                        self.time_backend(name, "torch-grouped-mm[cudagraph]", layer,
                                          lambda x, w, ids: fn(x, w, ids, *args, **kwargs), "bf16", sets,
                                          tuple(T for T in GRAPH_TOKENS if T in sets), graph=True)
                        experts.check_id_range = True
                    if not self.over_budget():
                        self.overhead(name, layer, experts, sets)
                    if 4096 in sets:
                        self.gemm_only(name, layer, experts, sets)
                del experts
                self.free()
            except Exception as exc:
                self.error(f"{name}/torch-grouped-mm[{layout}]", exc)
        self.save()

        # reference (small T only; it loops over experts with a host sync).
        try:
            if not self.over_budget():
                ref = ReferenceExperts(layer, weights)
                self.time_backend(name, "reference", layer, ref.forward, "bf16", sets,
                                  tuple(T for T in REFERENCE_TOKENS if T in sets), warmup=1, min_reps=3, max_reps=10,
                                  target_s=0.05)
                del ref
            else:
                self.note(f"{name}: reference skipped (time budget)")
        except Exception as exc:
            self.error(f"{name}/reference", exc)
        del weights
        self.free()
        self.save()

        # marlin int4.
        self.run_marlin(name, spec, sets)
        self.save()

    def gemm_only(self, name: str, layer: Any, experts: Any, sets: dict[int, tuple[list, float]]) -> None:
        """The two grouped GEMMs alone at T=4096 with this batch's routing: the forward's GEMM share."""
        try:
            x, _, ids = sets[4096][0][0]
            M = ids.numel()
            sorted_ids = torch.sort(ids.reshape(-1)).values
            offs = torch.searchsorted(sorted_ids, torch.arange(layer.local_num_experts, device=self.device,
                                                               dtype=sorted_ids.dtype), right=True, out_int32=True)
            a1 = torch.randn(M, experts.w13_t.shape[1], device=self.device).to(torch.bfloat16)
            a2 = torch.randn(M, experts.w2_t.shape[1], device=self.device).to(torch.bfloat16)
            mm = torch.nn.functional.grouped_mm

            def both() -> None:
                mm(a1, experts.w13_t, offs=offs)
                mm(a2, experts.w2_t, offs=offs)

            t = time_calls(both, [()], self.device, **self.timing_kw)
            f = flops(layer, 4096)
            self.record.setdefault("gemm_only_T4096", []).append(
                {"shape": name, "us": t.median_us, "tflops": f / (t.median_us * 1e-6) / 1e12})
            print(f"  two grouped GEMMs alone, T=4096: {t.median_us:9.1f} us  "
                  f"{f / (t.median_us * 1e-6) / 1e12:7.1f} TFLOP/s", flush=True)
            del a1, a2
        except Exception as exc:
            self.error(f"{name}/gemm_only", exc)

    def run_marlin(self, name: str, spec: dict[str, Any], sets: dict[int, tuple[list, float]]) -> None:
        from moe_registry.execution.weights import random_weights
        from moe_registry.schemas.layer import LayerSpec

        try:
            from moe_registry.backends.marlin.kernel import MarlinExperts
        except Exception as exc:
            self.note("marlin skipped: cannot import moe_registry.backends.marlin.kernel "
                      f"({type(exc).__name__}: {exc})")
            return
        if self.over_budget():
            self.note(f"{name}: marlin skipped (time budget)")
            return
        H, I = spec["hidden_size"], spec["intermediate_size"]
        group = next((g for g in (128, 64, 32) if H % g == 0 and I % g == 0), -1)
        quant = f"int4_w4a16:g{group}" if group > 0 else "int4_w4a16:gchannel"
        if group != 128:
            self.note(f"{name}: marlin runs {quant} (H={H}, I={I} are not both multiples of 128)")
        try:
            layer = LayerSpec(name=name, quant=quant, **spec)
            weights = random_weights(layer, device=self.device, seed=2)
            t_build = time.perf_counter()
            experts = MarlinExperts(layer, weights)
            self.record.setdefault("build_s", {})[f"{name}/marlin"] = round(time.perf_counter() - t_build, 3)
        except Exception as exc:
            self.note(f"{name}: marlin skipped: {type(exc).__name__}: {exc}")
            self.free()
            return
        self.time_backend(name, f"marlin[{quant}]", layer, experts.forward, quant, sets, self.tokens)
        del experts, weights
        self.free()

    # -- all --
    def run(self) -> None:
        dev = self.device
        self.record["meta"] = {**machine_info(dev), "args": vars(self.args), "tokens": list(self.tokens),
                               "input_sets": N_INPUT_SETS, "timing": self.timing_kw,
                               "method": "CUDA events around each call, median; inputs rotated over "
                                         f"{N_INPUT_SETS} sets; weights random N(0, 1/fan_in); 'forward' is the "
                                         "adapter's forward as build_experts returns it (guards incl. the id-range "
                                         "sync); '[cudagraph]' replays the guard-free kernel function"}
        print(f"device: {self.record['meta'].get('card')} cc {self.record['meta'].get('compute_capability')} "
              f"torch {torch.__version__}", flush=True)
        for lib in self.args.load_library or []:
            try:
                torch.ops.load_library(lib)
                self.note(f"loaded {lib}")
            except Exception as exc:
                self.error(f"load_library {lib}", exc)
        try:
            self.record["ceilings"] = measure_ceilings(dev, quick=self.quick)
        except Exception as exc:
            self.error("ceilings", exc)
            self.record["ceilings"] = {"copy_bandwidth_gbs": float("nan"), "bf16_matmul_tflops": float("nan")}
        c = self.record["ceilings"]
        print(f"ceilings: copy {c['copy_bandwidth_gbs']:.0f} GB/s, bf16 matmul {c['bf16_matmul_tflops']:.1f} TFLOP/s",
              flush=True)
        print("grouped-GEMM peak probes:", flush=True)
        probes = [("8x512 K2816 N1408 (notes)", 8, 512, 2816, 1408), ("8x4096 K4096 N4096", 8, 4096, 4096, 4096),
                  ("128x256 K2816 N1408", 128, 256, 2816, 1408)]
        if self.quick:
            probes = [("4x64 K256 N128", 4, 64, 256, 128)]
        for probe in probes:
            self.grouped_peak(*probe)
        self.save()
        shapes = self.args.shapes.split(",") if self.args.shapes else list(SHAPES)
        for name in shapes:
            if name not in SHAPES:
                self.note(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
                continue
            try:
                self.run_shape(name, SHAPES[name])
            except Exception as exc:
                self.error(name, exc)
            self.free()
            self.save()
        self.finish()

    def finish(self) -> None:
        peaks = [p["tflops"] for p in self.record["grouped_gemm_peak"]]
        peaks += [g["tflops"] for g in self.record.get("gemm_only_T4096", [])]
        card_peak = max(peaks) if peaks else float("nan")
        self.record["card_grouped_gemm_peak_tflops"] = card_peak
        for row in self.record["results"]:
            if row["T"] == 4096 and card_peak == card_peak:
                row["grouped_peak_pct"] = 100.0 * row["tflops"] / card_peak
        self.save()
        if self.args.plot:
            try:
                self.plot(self.args.plot)
            except Exception as exc:
                self.error("plot", exc)
            self.save()
        self.table()

    def plot(self, path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.record["results"]
        shapes = list(dict.fromkeys(r["shape"] for r in rows))
        if not shapes:
            raise RuntimeError("no results to plot")
        fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 4.5), squeeze=False)
        for ax, shape in zip(axes[0], shapes):
            for backend in dict.fromkeys(r["backend"] for r in rows if r["shape"] == shape):
                pts = sorted((r["T"], r["us"]) for r in rows if r["shape"] == shape and r["backend"] == backend)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=backend)
            floor = sorted({(r["T"], r["floor_us"]) for r in rows
                            if r["shape"] == shape and r["backend"] == "torch-grouped-mm"})
            if floor:
                ax.plot([p[0] for p in floor], [p[1] for p in floor], "k--", lw=1, label="bf16 roofline floor")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens T")
            ax.set_ylabel("us per forward")
            ax.set_title(shape)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        meta = self.record.get("meta", {})
        fig.suptitle(f"MoE experts forward on {meta.get('card')} ({meta.get('date_utc', '')[:10]}, "
                     f"torch {meta.get('torch')})")
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        self.record["plot"] = path

    def table(self) -> None:
        rows = self.record["results"]
        meta = self.record.get("meta", {})
        c = self.record.get("ceilings", {})
        print(f"\n==== {meta.get('card')} cc {meta.get('compute_capability')} driver {meta.get('driver')} "
              f"torch {meta.get('torch')} {meta.get('date_utc')}")
        print(f"ceilings: copy {c.get('copy_bandwidth_gbs', float('nan')):.0f} GB/s, bf16 mm "
              f"{c.get('bf16_matmul_tflops', float('nan')):.0f} TFLOP/s, grouped-GEMM peak "
              f"{self.record.get('card_grouped_gemm_peak_tflops', float('nan')):.0f} TFLOP/s")
        Ts = sorted({r["T"] for r in rows})
        head = f"{'shape':<15} {'backend':<29}" + "".join(f"{'T=' + str(T):>16}" for T in Ts)
        print("us per forward (% of roofline floor):")
        print(head)
        for shape in dict.fromkeys(r["shape"] for r in rows):
            for backend in dict.fromkeys(r["backend"] for r in rows if r["shape"] == shape):
                cells = []
                for T in Ts:
                    r = next((r for r in rows if r["shape"] == shape and r["backend"] == backend and r["T"] == T), None)
                    cells.append(f"{r['us']:9.1f} ({r['roofline_pct']:3.0f}%)" if r else f"{'-':>16}")
                print(f"{shape[:15]:<15} {backend[:29]:<29}" + "".join(f"{c:>16}" for c in cells))
        big = [r for r in rows if "grouped_peak_pct" in r]
        if big:
            print("T=4096: " + "; ".join(f"{r['shape']} {r['backend']} {r['tflops']:.0f} TFLOP/s = "
                                          f"{r['grouped_peak_pct']:.0f}% of grouped peak" for r in big))
        for o in self.record["overhead"]:
            print(f"overhead {o['shape']} T={o['T']}: forward {o['overhead_pct']:+.2f}% "
                  f"(without id-range sync {o['overhead_no_id_check_pct']:+.2f}%) vs direct {o['direct_us']:.1f} us")
        for n in self.record["notes"]:
            print(f"note: {n}")
        for e in self.record["errors"]:
            print(f"ERROR {e['error']}")
        print(f"wall {self.elapsed():.0f} s -> {self.args.out}" + (f", {self.args.plot}" if self.args.plot else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="shrunken shapes, T in {1, 16, 64}, few reps (CPU check)")
    p.add_argument("--out", required=True, help="JSON results path")
    p.add_argument("--plot", default=None, help="PNG path (matplotlib)")
    p.add_argument("--shapes", default="", help=f"comma list of {', '.join(SHAPES)} (default: all)")
    p.add_argument("--load-library", action="append", default=[],
                   help="torch.ops.load_library this .so first (e.g. vLLM's _moe_C for marlin); repeatable")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA not available; use --device cpu --quick", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(min(4, os.cpu_count() or 1))  # fewer threads: less noise on a shared host
    bench = Bench(args)
    try:
        bench.run()
    except KeyboardInterrupt:
        bench.note("interrupted")
        bench.save()
        bench.table()
        return 130
    return 1 if bench.record["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
