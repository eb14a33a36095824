#!/usr/bin/env python3
"""Fused-MoE experts side by side on one GPU: ours against vLLM's kernel, PyTorch and transformers.

    python benchmarks/make_vllm_shim.py            # once, on the CPU machine (writes .gpu/vllm_shim)
    python benchmarks/bench_moe.py --out benchmarks/results/bench-moe-h200.json \
        --plot benchmarks/results/bench-moe-h200.png --moe-c /tmp/moe_C.so

Backends, same weights and inputs:
- ``triton-fused-moe``: this project's Triton kernels, the adapter's ``forward`` (guards included).
- ``vllm-fused-experts``: vLLM 0.33.0's own ``fused_experts_impl`` (its Triton kernel, H200-tuned
  configs, ``_moe_C`` align and sum) from the wheel's Python files (``make_vllm_shim.py``); vLLM's
  ``_C`` activation ops are registered here as Triton kernels of the same maths, and its FP8
  activation quantization is our Triton kernel of the same recipe (the ``_C`` library is not carried).
- ``torch-grouped-mm``: this project's PyTorch grouped-GEMM backend (bf16 layers).
- ``transformers-grouped-mm``: transformers' ``grouped_mm`` experts implementation (bf16 layers).
Each eager (the call as a framework makes it) and, for T <= 64, replayed from a CUDA graph.

Layers: Gemma 4 26B-A4B, Qwen3-30B-A3B, Mixtral 8x7B (bf16); DeepSeek-V3 and Qwen3-235B-A22B
(FP8 128x128 blocks); T in {1, 16, 64, 512, 4096}. Per row: median us, the HBM floor (bytes of
the distinct experts hit + activations over the measured copy bandwidth), and at T = 4096 the
share of the measured bf16 grouped-GEMM peak (TFLOP/s). Output agreement between backends is
recorded (relative difference at T = 16). Results are rewritten after every layer.
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

from _timing import machine_info, measure_ceilings  # noqa: E402

from moe_registry.measure.timing import Timing, time_calls, time_graph  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    "gemma4-26b-a4b": dict(num_experts=128, top_k=8, hidden_size=2816, intermediate_size=704, activation="gelu_tanh"),
    "qwen3-30b-a3b": dict(num_experts=128, top_k=8, hidden_size=2048, intermediate_size=768, activation="silu"),
    "mixtral-8x7b": dict(num_experts=8, top_k=2, hidden_size=4096, intermediate_size=14336, activation="silu"),
    "deepseek-v3-fp8": dict(num_experts=256, top_k=8, hidden_size=7168, intermediate_size=2048, activation="silu",
                            quant="fp8_block"),
    "qwen3-235b-a22b-fp8": dict(num_experts=128, top_k=8, hidden_size=4096, intermediate_size=1536,
                                activation="silu", quant="fp8_block"),
}
TOKENS = (1, 16, 64, 512, 4096)
GRAPH_TOKENS = (1, 16, 64)
N_SETS = 3
TIME_BUDGET_S = 170.0


# --- vLLM's kernel (shimmed) ----------------------------------------------------------------------------

_C_LIB = None


def register_vllm_c_activations() -> None:
    """``torch.ops._C.{silu,gelu,gelu_tanh}_and_mul(out, input)`` as Triton kernels (vLLM's _C is not carried).
    Once per process: a second ``Library("_C", "DEF")`` raises ("Only a single TORCH_LIBRARY ..."), which is
    how bench_lowt.py lost vLLM for its second bf16 layer on the H100 (benchmarks/results/lowt-h100)."""
    global _C_LIB
    if _C_LIB is not None:
        return
    import triton
    import triton.language as tl

    @triton.jit
    def act_and_mul(out_ptr, in_ptr, d, stride_in, stride_out, ACT: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = cols < d
        g = tl.load(in_ptr + row * stride_in + cols, mask=m, other=0.0).to(tl.float32)
        u = tl.load(in_ptr + row * stride_in + d + cols, mask=m, other=0.0).to(tl.float32)
        if ACT == 0:
            a = g / (1.0 + tl.exp(-g))
        elif ACT == 1:
            a = 0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476))
        else:
            inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
            a = 0.5 * g * (2.0 / (1.0 + tl.exp(-2.0 * inner)))
        tl.store(out_ptr + row * stride_out + cols, (a * u).to(out_ptr.dtype.element_ty), mask=m)

    def make(code: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
        def impl(out: torch.Tensor, inp: torch.Tensor) -> None:
            d = inp.shape[-1] // 2
            rows = inp.numel() // inp.shape[-1]
            if rows:
                act_and_mul[(rows, triton.cdiv(d, 1024))](out, inp, d, inp.stride(-2), out.stride(-2), ACT=code,
                                                          BLOCK=1024)
        return impl

    lib = torch.library.Library("_C", "DEF")
    for name, code in (("silu_and_mul", 0), ("gelu_and_mul", 1), ("gelu_tanh_and_mul", 2)):
        lib.define(f"{name}(Tensor(a!) result, Tensor input) -> ()")
        lib.impl(name, make(code), "CUDA")
    _C_LIB = lib


def load_vllm(shim: str, moe_c: str | None) -> Any:
    if moe_c:
        torch.ops.load_library(moe_c)
    if shim not in sys.path:
        sys.path.insert(0, shim)
    register_vllm_c_activations()
    from vllm.model_executor.layers.fused_moe import fused_moe as fm

    return fm


# --- Weights ---------------------------------------------------------------------------------------------

def make_weights(layer: Any, device: torch.device, seed: int) -> Any:
    from moe_registry.backends.triton_fused_moe.tune import layer_weights

    return layer_weights(layer, device, seed)


def expert_bytes(layer: Any) -> float:
    H, I, R = layer.hidden_size, layer.local_intermediate_size, layer.gemm1_rows
    elems = R * H + H * I
    if layer.quant.kind.value == "fp8_block":
        return elems + 4.0 * (math.ceil(R / 128) * math.ceil(H / 128) + math.ceil(H / 128) * math.ceil(I / 128))
    return 2.0 * elems


def flops(layer: Any, T: int) -> float:
    return 2.0 * T * layer.top_k * layer.hidden_size * (layer.gemm1_rows + layer.local_intermediate_size)


# --- The run ---------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dev = torch.device("cuda")
        self.t0 = time.perf_counter()
        self.rec: dict[str, Any] = {"results": [], "agreement": [], "notes": [], "errors": [], "peaks": []}
        self.tokens = tuple(int(t) for t in args.tokens.split(","))
        self.vllm = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.rec["notes"].append(text)

    def error(self, where: str, exc: BaseException) -> None:
        msg = f"{where}: {type(exc).__name__}: {str(exc)[:400]}"
        print(f"ERROR {msg}", flush=True)
        self.rec["errors"].append({"where": where, "error": msg, "traceback": traceback.format_exc(limit=6)})

    def save(self) -> None:
        self.rec["wall_s"] = round(self.elapsed(), 1)
        with open(self.args.out + ".tmp", "w") as f:
            json.dump(self.rec, f, indent=1, default=str)
        os.replace(self.args.out + ".tmp", self.args.out)

    def inputs(self, layer: Any, T: int) -> tuple[list[tuple[Any, ...]], float]:
        from moe_registry.execution.patterns import routing_pattern

        gen = torch.Generator(device=self.dev).manual_seed(1000 + T)
        sets, hits = [], []
        for _ in range(N_SETS):
            w, ids = routing_pattern(T, layer.local_num_experts, layer.top_k, device=self.dev, generator=gen)
            x = torch.randn(T, layer.hidden_size, device=self.dev, generator=gen).to(torch.bfloat16)
            sets.append((x, w, ids))
            hits.append(int(torch.unique(ids).numel()))
        return sets, float(statistics.mean(hits))

    def add(self, shape: str, layer: Any, backend: str, mode: str, T: int, hit: float, t: Timing) -> None:
        c = self.rec["ceilings"]
        bytes_ = hit * expert_bytes(layer) + 4.0 * T * layer.hidden_size + 8.0 * T * layer.top_k
        mem_us = bytes_ / (c["copy_bandwidth_gbs"] * 1e9) * 1e6
        f = flops(layer, T)
        row = {"shape": shape, "quant": layer.quant.kind.value, "backend": backend, "mode": mode, "T": T,
               "us": t.median_us, "p10_us": t.p10_us, "p90_us": t.p90_us, "reps": t.reps, "experts_hit": hit,
               "hbm_floor_us": mem_us, "hbm_floor_pct": 100.0 * mem_us / t.median_us,
               "tflops": f / (t.median_us * 1e-6) / 1e12}
        self.rec["results"].append(row)
        print(f"  {backend:<26} {mode:<6} T={T:<5} {t.median_us:10.1f} us  floor {mem_us:8.1f} us "
              f"({row['hbm_floor_pct']:5.1f}%)  {row['tflops']:7.1f} TFLOP/s", flush=True)

    def time_both(self, shape: str, layer: Any, backend: str, fn: Callable[..., Any],
                  sets: dict[int, tuple[list, float]], graph: bool = True) -> None:
        for T in self.tokens:
            inputs, hit = sets[T]
            try:
                t = time_calls(fn, inputs, self.dev, warmup=3, min_reps=10, max_reps=200, budget_s=0.06)
                self.add(shape, layer, backend, "eager", T, hit, t)
            except Exception as exc:
                self.error(f"{shape}/{backend}/eager/T{T}", exc)
            if graph and T in GRAPH_TOKENS:
                try:
                    t = time_graph(fn, inputs, self.dev, replays=100)
                    self.add(shape, layer, backend, "graph", T, hit, t)
                except Exception as exc:
                    self.error(f"{shape}/{backend}/graph/T{T}", exc)
                    torch.cuda.synchronize()

    def agree(self, shape: str, outs: dict[str, torch.Tensor]) -> None:
        from moe_registry.execution.patterns import relative_error

        base = outs.get("triton-fused-moe")
        if base is None:
            return
        for name, out in outs.items():
            if name != "triton-fused-moe":
                d = relative_error(base, out)
                self.rec["agreement"].append({"shape": shape, "T": 16, "vs": name, "rel_diff": d})
                print(f"  agreement T=16: triton-fused-moe vs {name}: {d:.2e}", flush=True)

    def run_shape(self, name: str, spec: dict[str, Any]) -> None:
        from moe_registry.backends.triton_fused_moe.kernel import TritonFusedMoEExperts
        from moe_registry.schemas.layer import LayerSpec

        layer = LayerSpec(name=name, **spec)
        print(f"\n== {name}: {layer.describe()}", flush=True)
        weights = make_weights(layer, self.dev, seed=1)
        sets = {T: self.inputs(layer, T) for T in self.tokens}
        outs: dict[str, torch.Tensor] = {}
        probe = sets[16][0][0] if 16 in sets else sets[self.tokens[0]][0][0]
        fp8 = layer.quant.kind.value == "fp8_block"

        ours = TritonFusedMoEExperts(layer, weights)
        self.rec.setdefault("configs", {})[name] = {str(T): ours.config_for(T)[1] for T in self.tokens}
        self.time_both(name, layer, "triton-fused-moe", ours.forward, sets)
        outs["triton-fused-moe"] = ours(*probe).float()
        w13, w2 = ours.w13, ours.w2
        s13, s2 = ours.w13_scale, ours.w2_scale

        if self.vllm is not None:
            fm = self.vllm
            act = layer.activation.value
            kw = dict(activation=act, use_fp8_w8a8=fp8, w1_scale=s13, w2_scale=s2,
                      block_shape=[128, 128] if fp8 else None)

            def vllm_fn(x: Any, w: Any, ids: Any) -> Any:
                return fm.fused_experts_impl(x, w13, w2, w, ids, **kw)

            self.time_both(name, layer, "vllm-fused-experts", vllm_fn, sets)
            try:
                outs["vllm-fused-experts"] = vllm_fn(*probe).float()
            except Exception as exc:
                self.error(f"{name}/vllm/agreement", exc)
        del ours
        torch.cuda.empty_cache()

        if not fp8 and self.elapsed() < TIME_BUDGET_S:
            try:
                from moe_registry.backends.torch_grouped_mm.kernel import TorchGroupedMMExperts

                gm = TorchGroupedMMExperts(layer, weights)
                self.time_both(name, layer, "torch-grouped-mm", gm.forward, sets)
                outs["torch-grouped-mm"] = gm(*probe).float()
                del gm
            except Exception as exc:
                self.error(f"{name}/torch-grouped-mm", exc)
            self.transformers(name, layer, weights, sets, outs, probe)
        elif fp8:
            self.note(f"{name}: torch-grouped-mm and transformers run bf16 (dequantized) weights, not FP8: not timed")
        self.agree(name, outs)
        del weights, outs
        torch.cuda.empty_cache()

    def transformers(self, name: str, layer: Any, weights: Any, sets: dict, outs: dict, probe: tuple) -> None:
        """transformers' ``grouped_mm`` experts implementation on the same weights (its Qwen3-MoE experts
        module; Gemma's gelu_pytorch_tanh through the config's hidden_act)."""
        try:
            import transformers
            from transformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig
            from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts
        except Exception as exc:
            self.note(f"transformers experts unavailable: {type(exc).__name__}: {exc}")
            return
        try:
            hidden_act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[layer.activation.value]
            cfg = Qwen3MoeConfig(hidden_size=layer.hidden_size, moe_intermediate_size=layer.local_intermediate_size,
                                 num_experts=layer.local_num_experts, num_experts_per_tok=layer.top_k,
                                 hidden_act=hidden_act)
            cfg._experts_implementation = "grouped_mm"
            with torch.device("meta"):
                mod = Qwen3MoeExperts(cfg)
            mod = mod.to_empty(device=self.dev).to(torch.bfloat16)
            for pname, w in (("gate_up_proj", weights.w13), ("down_proj", weights.w2)):
                p = getattr(mod, pname)
                p.data = w.to(torch.bfloat16) if tuple(p.shape) == tuple(w.shape) else \
                    w.transpose(1, 2).contiguous().to(torch.bfloat16)
            self.rec.setdefault("versions", {})["transformers"] = transformers.__version__

            def hf(x: Any, w: Any, ids: Any, mod: Any = mod) -> Any:
                return mod(x, ids.long(), w.to(x.dtype))

            outs["transformers-grouped-mm"] = hf(*probe).float()
            self.time_both(name, layer, "transformers-grouped-mm", hf, sets, graph=True)
            del mod
        except Exception as exc:
            self.error(f"{name}/transformers", exc)

    def grouped_peak(self) -> None:
        """The card's bf16 grouped-GEMM peak: pure grouped_mm with equal, large groups."""
        for label, G, rows, K, N in (("8x4096 K4096 N4096", 8, 4096, 4096, 4096),
                                     ("128x512 K2048 N1536", 128, 512, 2048, 1536),
                                     ("8x2048 K4096 N28672", 8, 2048, 4096, 28672)):
            try:
                a = torch.randn(G * rows, K, device=self.dev).to(torch.bfloat16)
                b = torch.randn(G, N, K, device=self.dev).div_(math.sqrt(K)).to(torch.bfloat16).transpose(1, 2)
                offs = torch.arange(1, G + 1, device=self.dev, dtype=torch.int32) * rows
                t = time_calls(lambda a=a, b=b, offs=offs: torch.nn.functional.grouped_mm(a, b, offs=offs), [()], self.dev,
                               warmup=3, min_reps=10, max_reps=50, budget_s=0.1)
                tf = 2.0 * G * rows * K * N / (t.median_us * 1e-6) / 1e12
                self.rec["peaks"].append({"label": label, "us": t.median_us, "tflops": tf})
                print(f"  grouped_mm {label:<24} {tf:7.1f} TFLOP/s", flush=True)
                del a, b
            except Exception as exc:
                self.error(f"peak/{label}", exc)
        self.rec["grouped_gemm_peak_tflops"] = max((p["tflops"] for p in self.rec["peaks"]), default=float("nan"))

    def run(self) -> None:
        self.rec["meta"] = {**machine_info(self.dev), "args": vars(self.args), "tokens": list(self.tokens)}
        import triton

        self.rec["versions"] = {"torch": torch.__version__, "triton": triton.__version__}
        try:
            self.vllm = load_vllm(self.args.vllm_shim, self.args.moe_c)
            self.rec["versions"]["vllm"] = "0.33.0 (wheel Python files, shimmed: benchmarks/make_vllm_shim.py)"
        except Exception as exc:
            self.error("vllm import", exc)
        self.rec["ceilings"] = measure_ceilings(self.dev)
        c = self.rec["ceilings"]
        print(f"ceilings: copy {c['copy_bandwidth_gbs']:.0f} GB/s, bf16 matmul {c['bf16_matmul_tflops']:.0f} TFLOP/s",
              flush=True)
        self.grouped_peak()
        self.save()
        for name in (self.args.shapes.split(",") if self.args.shapes else SHAPES):
            if self.elapsed() > TIME_BUDGET_S:
                self.note(f"{name}: skipped (time budget {TIME_BUDGET_S:.0f} s)")
                continue
            try:
                self.run_shape(name, SHAPES[name])
            except Exception as exc:
                self.error(name, exc)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            self.save()
        self.summary()
        self.save()
        if self.args.plot:
            try:
                plot(self.rec, self.args.plot)
            except Exception as exc:
                self.error("plot", exc)
                self.save()

    def summary(self) -> None:
        """The issue's targets, per layer: graphed T<=64 vs vLLM graphed and >= 70 % of the HBM floor at T=1;
        eager vs vLLM eager; T=4096 vs vLLM and >= 60 % of the grouped-GEMM peak."""
        rows = self.rec["results"]
        peak = self.rec.get("grouped_gemm_peak_tflops", float("nan"))

        def get(shape: str, backend: str, mode: str, T: int) -> dict | None:
            return next((r for r in rows if (r["shape"], r["backend"], r["mode"], r["T"]) == (shape, backend, mode, T)),
                        None)

        out = []
        for shape in dict.fromkeys(r["shape"] for r in rows):
            for T in self.tokens:
                for mode in ("eager", "graph"):
                    ours, vl = get(shape, "triton-fused-moe", mode, T), get(shape, "vllm-fused-experts", mode, T)
                    if ours is None:
                        continue
                    item = {"shape": shape, "T": T, "mode": mode, "ours_us": ours["us"],
                            "vllm_us": vl["us"] if vl else None,
                            "speedup_vs_vllm": vl["us"] / ours["us"] if vl else None,
                            "hbm_floor_pct": ours["hbm_floor_pct"]}
                    if T == 4096 and mode == "eager":
                        item["grouped_peak_pct"] = 100.0 * ours["tflops"] / peak
                    out.append(item)
        self.rec["summary"] = out
        print("\nshape                 T     mode   ours us   vLLM us   vLLM/ours  %HBM floor  %grouped peak")
        for s in out:
            vl = f"{s['vllm_us']:9.1f}" if s["vllm_us"] else "        -"
            sp = f"{s['speedup_vs_vllm']:9.2f}x" if s["speedup_vs_vllm"] else "         -"
            gp = f"{s['grouped_peak_pct']:6.1f}" if "grouped_peak_pct" in s else "     -"
            print(f"{s['shape']:<21} {s['T']:<5} {s['mode']:<6} {s['ours_us']:9.1f} {vl} {sp}  "
                  f"{s['hbm_floor_pct']:9.1f}  {gp}", flush=True)


def plot(rec: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rec["results"]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.2 * len(shapes), 4.6), squeeze=False)
    styles = {"eager": "-", "graph": "--"}
    for ax, shape in zip(axes[0], shapes):
        for backend in dict.fromkeys(r["backend"] for r in rows if r["shape"] == shape):
            for mode in ("eager", "graph"):
                pts = sorted((r["T"], r["us"]) for r in rows
                             if (r["shape"], r["backend"], r["mode"]) == (shape, backend, mode))
                if pts:
                    ax.plot(*zip(*pts), styles[mode], marker="o", ms=3, label=f"{backend} ({mode})")
        floor = sorted({(r["T"], r["hbm_floor_us"]) for r in rows
                        if r["shape"] == shape and r["backend"] == "triton-fused-moe" and r["mode"] == "eager"})
        if floor:
            ax.plot(*zip(*floor), "k:", lw=1, label="HBM floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens T")
        ax.set_ylabel("us per forward")
        ax.set_title(shape, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    meta = rec.get("meta", {})
    fig.suptitle(f"MoE experts forward on {meta.get('card')} ({str(meta.get('date_utc', ''))[:10]}, "
                 f"torch {rec.get('versions', {}).get('torch')}, triton {rec.get('versions', {}).get('triton')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--plot")
    p.add_argument("--shapes", help=f"comma-separated subset of {', '.join(SHAPES)}")
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    p.add_argument("--vllm-shim", default=os.path.join(_ROOT, ".gpu", "vllm_shim"))
    p.add_argument("--moe-c", default=os.environ.get("MOE_REGISTRY_VLLM_MOE_C"),
                   help="vLLM's _moe_C library (for moe_align_block_size / moe_sum)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_moe.py needs a CUDA GPU")
    Bench(args).run()


if __name__ == "__main__":
    main()
