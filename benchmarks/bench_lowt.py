#!/usr/bin/env python3
"""triton-lowt-moe against its peers on one GPU, same weights and inputs, graphs at T <= 64 (issue 21).

    python benchmarks/bench_lowt.py --out lowt.json [--layers gemma4-nvfp4,...] [--moe-c /tmp/moe_C.so]

Layers: Gemma 4 26B-A4B NvFP4 (W4A16), Qwen3-30B-A3B int4 g128 (GPTQ, symmetric), Mixtral 8x7B AWQ int4
g128 with zero points, Gemma 4 and Qwen3-30B bf16. Peers: ``humming`` (4-bit), ``marlin`` (int4; needs
vLLM's ``_moe_C``), vLLM 0.33's ``fused_experts_impl`` (bf16; the shim of ``bench_moe.py``). Per layer:
relative error of every backend against the float32 reference (T = 1, 16, 64), then CUDA-graph replays
at T in {1, 2, 4, 8, 16, 32, 64} and eager calls at T = 512 / 4096, for our default configs and a few
variants. Floors: bytes of the distinct experts each input set hits (weights + scales as our kernels
read them) plus activations, over the copy bandwidth measured in the same run, and over 3.35 TB/s.

``--costs-from RECORD --out costs.json`` (no GPU): the record as a cost table for the measured policy
(``cost_table``).

``--warm LAYER``: compile every kernel the timed pass will launch (Triton, Humming's NVRTC, Marlin's
PTX JIT) without timing; the driver runs one such process per layer in parallel first, so the timed
pass measures kernels, not compilers. Results are rewritten after every layer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any, Callable

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _p in (_ROOT, _HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

LAYERS: dict[str, dict[str, Any]] = {
    "gemma4-nvfp4": dict(num_experts=128, top_k=8, hidden_size=2816, intermediate_size=704, activation="gelu_tanh",
                         quant="nvfp4"),
    "qwen3-int4": dict(num_experts=128, top_k=8, hidden_size=2048, intermediate_size=768, activation="silu",
                       quant={"kind": "int4_w4a16", "group_size": 128}),
    "mixtral-awq": dict(num_experts=8, top_k=2, hidden_size=4096, intermediate_size=14336, activation="silu",
                        quant={"kind": "int4_w4a16", "group_size": 128, "zero_point": True}),
    "gemma4-bf16": dict(num_experts=128, top_k=8, hidden_size=2816, intermediate_size=704, activation="gelu_tanh"),
    "qwen3-bf16": dict(num_experts=128, top_k=8, hidden_size=2048, intermediate_size=768, activation="silu"),
}
GRAPH_T = (1, 2, 4, 8, 16, 32, 64)
VARIANT_T = (1, 2, 4, 8, 16, 32, 64)  # where the non-default configs are timed too (where they give one)
EAGER_T = (512, 4096)
CHECK_T = (1, 16, 64)
SPEC_BW = 3.35e12  # H100 SXM HBM3 (engines-2026-12.md section 5)


def variants(name: str) -> dict[str, Callable[[int], Any]]:
    """Our configs: the default and alternatives, as ``T -> Config`` (None: the default for T)."""
    from moe_registry.backends.triton_lowt_moe import ops

    C = ops.Config

    def gemv(T: int, **kw: Any) -> Any:  # the GEMV kernels up to 16 tokens, with 16-bit pairs up to 64
        return C(gemv=True, **kw) if T <= (64 if kw.get("pairs") else 16) else None

    def gemv8(T: int, **kw: Any) -> Any:  # the T = 1 default's tiling: 8 rows, 2 warps, 4 K steps in flight
        return gemv(T, **{"bn1": 8, "bn2": 8, "warps": 2, "warps2": 2, "unroll": 4, **kw})

    def gemv16(T: int, **kw: Any) -> Any:  # the GEMV default's tiling above T = 1: 16 rows, 4 warps, 2 K steps in flight
        return gemv(T, bn1=16, bn2=16, warps=4, warps2=4, unroll=2, **kw)

    return {
        "default": lambda T: None,
        "gemv16": lambda T: gemv16(T),
        "gemv8": lambda T: gemv8(T),
        # GEMM2 per token (t: its k experts' steps as one loop), programmatic dependent launch of GEMM2 (p),
        # products chained in 16-bit pairs (x)
        "gemv8x": lambda T: gemv8(T, pairs=True),
        "gemv8t": lambda T: gemv8(T, gemm2="token"),
        "gemv8tp": lambda T: gemv8(T, gemm2="token", pdl=True),
        "gemv8tpx": lambda T: gemv8(T, gemm2="token", pdl=True, pairs=True),
        # GEMM2 per pair (partial sums) launched as a programmatic dependent of GEMM1, without and with pairs
        "gemv8p": lambda T: gemv8(T, pdl=True),
        "gemv8px": lambda T: gemv8(T, pdl=True, pairs=True),
        "gemv16px": lambda T: gemv16(T, pdl=True, pairs=True),
        # more loads in flight (8 K steps per thread: 135 registers, sm_90) or twice the programs (4 rows, one warp)
        "gemv8u8px": lambda T: gemv8(T, unroll=8, pdl=True, pairs=True),
        "gemv4px": lambda T: gemv(T, bn1=4, bn2=4, warps=1, warps2=1, unroll=4, pdl=True, pairs=True),
        "gemv16tpx": lambda T: gemv16(T, gemm2="token", pdl=True, pairs=True),
        # every K step of a program as straight-line code (w): all of its loads may be in flight at once; with PDL
        # GEMM2 issues its weights' loads before it waits for GEMM1 (gemv8xw: whole without PDL, to tell the two apart)
        "gemv8xw": lambda T: gemv8(T, pairs=True, whole=True),
        "gemv8pw": lambda T: gemv8(T, pdl=True, whole=True),
        "gemv8pxw": lambda T: gemv8(T, pdl=True, pairs=True, whole=True),
        "gemv8w4pxw": lambda T: gemv8(T, warps=4, warps2=4, pdl=True, pairs=True, whole=True),
        "gemv16pxw": lambda T: gemv16(T, pdl=True, pairs=True, whole=True),
        "gemv8r16pxw": lambda T: gemv8(T, bn2=16, warps2=4, pdl=True, pairs=True, whole=True),  # GEMM2: half the programs
        # GEMM2's registers capped: Gemma 4's T = 1 grid (2816 programs) in one wave at 40 (sm_90 compile: 150 B of
        # spills), 1.02 waves at 48 (21 programs per SM; 54 B), 1.33 at 64 (8 B)
        "gemv8pxw40": lambda T: gemv8(T, pdl=True, pairs=True, whole=True, maxnreg2=40),
        "gemv8pxw48": lambda T: gemv8(T, pdl=True, pairs=True, whole=True, maxnreg2=48),
        "gemv8pxw64": lambda T: gemv8(T, pdl=True, pairs=True, whole=True, maxnreg2=64),
        # GEMM1 over an expert's pairs, 2 / 4 per pass (each weight unpacked once per pass), from 4 tokens
        "slot2": lambda T: gemv8(T, unroll=2, gemm2="token", pdl=True, pairs=True, slots=True, bm=2) if T >= 4 else None,
        "slot4": lambda T: gemv8(T, unroll=2, gemm2="token", pdl=True, pairs=True, slots=True, bm=4) if T >= 4 else None,
        "dot": lambda T: C(bm=8 if T < 32 else 16) if T <= 16 else None,  # the per-expert-slot dot kernels
    }


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dev = torch.device("cuda")
        self.rec: dict[str, Any] = {"results": [], "errors": [], "checks": [], "notes": []}
        self.t0 = time.perf_counter()
        self.timed_at: dict[str, set[int]] = {}  # per backend label: the T it is timed at (``backends``)

    def error(self, where: str, exc: BaseException) -> None:
        msg = f"{where}: {type(exc).__name__}: {str(exc)[:300]}"
        print(f"ERROR {msg}", flush=True)
        self.rec["errors"].append({"where": where, "error": msg, "traceback": traceback.format_exc(limit=8)})

    def save(self) -> None:
        self.rec["wall_s"] = round(time.perf_counter() - self.t0, 1)
        with open(self.args.out + ".tmp", "w") as f:
            json.dump(self.rec, f, indent=1, default=str)
        os.replace(self.args.out + ".tmp", self.args.out)

    # --- backends ---------------------------------------------------------------------------------

    def backends(self, name: str, layer: Any, weights: Any) -> dict[str, Callable[..., Any]]:
        """name -> fn(x, w, ids) for every backend that runs this layer here."""
        from moe_registry.backends.triton_lowt_moe.kernel import TritonLowTExperts

        out: dict[str, Callable[..., Any]] = {}
        ours = TritonLowTExperts(layer, weights)
        self.per_expert_bytes = (ours.weight_bytes) / layer.local_num_experts
        self.timed_at.clear()
        for label, cfg in variants(name).items():
            if self.args.variants != "all" and label not in ("default", *self.args.variants.split(",")):
                continue
            exp = ours if label == "default" else _with_config(ours, cfg)
            out[f"ours:{label}"] = exp.forward
            # a variant is timed at the T where it gives a config of its own (None: the default's, timed already)
            self.timed_at[f"ours:{label}"] = set(GRAPH_T + EAGER_T) if label == "default" else {
                T for T in VARIANT_T if cfg(T) is not None}
        kind = layer.quant.kind.value
        wanted = self.args.peers.split(",")
        if kind != "bf16" and "humming" in wanted:
            try:
                from moe_registry.backends.humming.kernel import HummingExperts

                out["humming"] = HummingExperts(layer, weights).forward
            except Exception as exc:
                self.error(f"{name}/humming", exc)
        if kind == "int4_w4a16" and "marlin" in wanted:
            try:
                from moe_registry.backends.marlin.kernel import MarlinExperts

                out["marlin"] = MarlinExperts(layer, weights).forward
            except Exception as exc:
                self.error(f"{name}/marlin", exc)
        if kind == "bf16" and "vllm" in wanted:
            try:
                from bench_moe import load_vllm

                fm = load_vllm(self.args.vllm_shim, self.args.moe_c)
                w13, w2 = weights.w13.contiguous(), weights.w2.contiguous()
                act = layer.activation.value
                out["vllm"] = lambda x, w, ids: fm.fused_experts_impl(x, w13, w2, w, ids, activation=act)
            except Exception as exc:
                self.error(f"{name}/vllm", exc)
        return out

    # --- one layer ------------------------------------------------------------------------------------

    def inputs(self, layer: Any, T: int, sets: int = 3) -> tuple[list[tuple[Any, ...]], float]:
        from moe_registry.execution.patterns import routing_pattern

        gen = torch.Generator(device=self.dev).manual_seed(1000 + T)
        out, hits = [], []
        for _ in range(sets):
            w, ids = routing_pattern(T, layer.local_num_experts, layer.top_k, device=self.dev, generator=gen)
            x = torch.randn(T, layer.hidden_size, device=self.dev, generator=gen).to(torch.bfloat16)
            out.append((x, w, ids))
            hits.append(int(torch.unique(ids).numel()))
        return out, float(statistics.mean(hits))

    def layer(self, name: str, warm_only: bool) -> None:
        from moe_registry.backends.reference.kernel import ReferenceExperts
        from moe_registry.execution.patterns import relative_error
        from moe_registry.execution.weights import random_weights
        from moe_registry.measure.timing import time_calls, time_graph
        from moe_registry.schemas.layer import LayerSpec

        layer = LayerSpec(name=name, **LAYERS[name])
        print(f"\n== {name}: {layer.describe()}", flush=True)
        weights = random_weights(layer, device=self.dev, dtype=torch.bfloat16, seed=7)
        fns = self.backends(name, layer, weights)
        tokens = GRAPH_T + (EAGER_T if self.args.eager else ())
        sets = {T: self.inputs(layer, T) for T in tokens}
        if warm_only:
            for label, fn in fns.items():
                for T in tokens:
                    if label.startswith("ours:") and T not in self.timed_at[label]:
                        continue
                    try:
                        fn(*sets[T][0][0])
                    except Exception as exc:
                        self.error(f"warm {name}/{label}/T{T}", exc)
                torch.cuda.synchronize()
            return
        ref = ReferenceExperts(layer, weights)
        for T in CHECK_T:
            x, w, ids = sets[T][0][0]
            want = ref(x, w, ids).float()
            for label, fn in fns.items():
                try:
                    err = relative_error(fn(x, w, ids).float(), want)
                except Exception as exc:
                    self.error(f"check {name}/{label}/T{T}", exc)
                    continue
                self.rec["checks"].append({"layer": name, "backend": label, "T": T, "rel_err": err})
                print(f"  check {label:<22} T={T:<3} rel err {err:.2e}", flush=True)
        del ref
        torch.cuda.empty_cache()
        bw = self.rec["ceilings"]["copy_bandwidth_gbs"] * 1e9
        for T in tokens:
            inputs, hit = sets[T]
            nbytes = hit * self.per_expert_bytes + 4.0 * T * layer.hidden_size + 8.0 * T * layer.top_k
            if T <= 64:  # an untimed pass first: the first backend timed at a T came out 4-13 % slow (343abfb run)
                try:
                    time_graph(next(iter(fns.values())), inputs, self.dev, replays=20)
                except Exception:
                    torch.cuda.synchronize()  # the same failure is recorded in the timed pass below
            for label, fn in fns.items():
                if label.startswith("ours:") and T not in self.timed_at[label]:
                    continue
                mode = "graph" if T <= 64 else "eager"
                try:
                    if mode == "graph":
                        t = time_graph(fn, inputs, self.dev, replays=self.args.replays)
                    else:
                        t = time_calls(fn, inputs, self.dev, warmup=2, min_reps=5, max_reps=50, budget_s=0.05)
                except Exception as exc:
                    self.error(f"time {name}/{label}/T{T}", exc)
                    torch.cuda.synchronize()
                    continue
                row = {"layer": name, "quant": layer.quant.label() if hasattr(layer.quant, "label") else
                       layer.quant.kind.value, "backend": label, "mode": mode, "T": T, "us": t.median_us,
                       "p10_us": t.p10_us, "p90_us": t.p90_us, "experts_hit": hit, "bytes": nbytes,
                       "floor_us": nbytes / bw * 1e6, "spec_floor_us": nbytes / SPEC_BW * 1e6}
                row["floor_pct"] = 100.0 * row["floor_us"] / t.median_us
                if label.startswith("ours:"):  # what the row timed, so that a later default can be matched to it
                    row["config"] = fn.__self__.config_for(T).label()  # type: ignore[attr-defined]
                self.rec["results"].append(row)
                print(f"  {label:<22} {mode:<5} T={T:<5} {t.median_us:9.1f} us  floor {row['floor_us']:7.1f} us "
                      f"({row['floor_pct']:5.1f}%)", flush=True)
        del fns, weights
        torch.cuda.empty_cache()

    def run(self) -> None:
        from _timing import machine_info, measure_ceilings

        import triton

        self.rec["meta"] = {**machine_info(self.dev), "args": vars(self.args), "triton": triton.__version__}
        self.rec["ceilings"] = measure_ceilings(self.dev)
        print(f"ceilings: copy {self.rec['ceilings']['copy_bandwidth_gbs']:.0f} GB/s, bf16 matmul "
              f"{self.rec['ceilings']['bf16_matmul_tflops']:.0f} TFLOP/s", flush=True)
        self.save()
        for name in self.args.layers.split(","):
            try:
                self.layer(name, warm_only=False)
            except Exception as exc:
                self.error(name, exc)
            torch.cuda.synchronize()
            self.save()
        self.summary()
        self.save()

    def summary(self) -> None:
        rows = self.rec["results"]

        def us(layer: str, backend: str, T: int) -> float | None:
            return next((r["us"] for r in rows if (r["layer"], r["backend"], r["T"]) == (layer, backend, T)), None)

        out = []
        print("\nlayer          T     ours(best)  variant           peers (us)                         best peer / ours  %floor")
        for layer in dict.fromkeys(r["layer"] for r in rows):
            for T in dict.fromkeys(r["T"] for r in rows if r["layer"] == layer):
                mine = [(r["us"], r["backend"]) for r in rows if r["layer"] == layer and r["T"] == T
                        and r["backend"].startswith("ours:")]
                if not mine:
                    continue
                best, which = min(mine)
                default = us(layer, "ours:default", T)
                peers = {r["backend"]: r["us"] for r in rows if r["layer"] == layer and r["T"] == T
                         and not r["backend"].startswith("ours:")}
                floor = next(r["floor_us"] for r in rows if r["layer"] == layer and r["T"] == T)
                item = {"layer": layer, "T": T, "ours_best_us": best, "ours_best": which, "ours_default_us": default,
                        "peers": peers, "floor_us": floor,
                        "speedup_vs_best_peer": (min(peers.values()) / best) if peers else None,
                        "floor_pct": 100.0 * floor / best}
                out.append(item)
                ptxt = ", ".join(f"{k} {v:.1f}" for k, v in peers.items())
                sp = f"{item['speedup_vs_best_peer']:.2f}x" if peers else "-"
                print(f"{layer:<14} {T:<5} {best:9.1f}  {which:<17} {ptxt:<34} {sp:>8}  {item['floor_pct']:5.1f}",
                      flush=True)
        self.rec["summary"] = out


# The prefill (eager) rows of the committed cost table, and the test of this function on a record without configs:
# benchmarks/results/lowt-h100-split (tree 0242030), whose default split
# K to fill 1024 programs (Config split1 = split2 = 0); today's default does not split. A row of ours stands for today's
# default where its config launches the same tiles and splits (``ops.resolved``, checked per layer and T): the
# run's "ours:default" where its split came to 1, else a variant with today's config ("nosplit" at T = 1 and 4).
RUN_DEFAULT = {"split1": 0, "split2": 0}


def run_variants(T: int) -> dict[str, Any]:
    """The variants of that run at T, as its tree (0242030) configured them (None: the default)."""
    from moe_registry.backends.triton_lowt_moe import ops

    if T > 64:
        return {}
    C, bm = ops.Config, 8 if T < 32 else 16
    return {"nosplit": C(bm=bm, split1=1, split2=1), "splitmax": C(bm=bm, split1=64, split2=64),
            "token": C(bm=bm, gemm2="token", split1=0), "narrow": C(bn1=16, bn2=16, bm=bm, bm_token=8, warps=1, warps2=1,
                                                                    stages=4, split1=0, split2=0)}
PEERS = {"humming": "humming", "marlin": "marlin"}  # bench label -> registry backend ("vllm" is no backend here)


def cost_table(rec: dict[str, Any], run_default: dict[str, int] = RUN_DEFAULT,
               ran_variants: Callable[[int], dict[str, Any]] = run_variants, prefill: dict[str, Any] | None = None) -> Any:
    """A ``moe_registry.measured.CostTable`` from a ``--out`` record: triton-lowt-moe as the adapter runs it now
    (its default config per T) and the registry backends timed beside it, each with its mode (graph at T <= 64,
    eager above), for the layers that have such a peer. ``run_default``: what the run's default config had
    beside today's; ``ran_variants``: the run's variant configs at T. Ours at a T only from a row whose config
    launches exactly today's default (the run's default first, then the variants in order); none where no row
    does. A row that records its config (``config``, runs from 40b0593 on) stands for today's default where that
    label is today's. ``prefill``: a second record whose eager rows (T > 64) replace ``rec``'s (a decode-only
    run, ``--no-eager``): each T's rows still come from one run."""
    from moe_registry.backends.triton_lowt_moe import ops
    from moe_registry.backends.triton_lowt_moe.kernel import BLOCK_4BIT
    from moe_registry.measured import CostEntry, CostTable
    from moe_registry.schemas.device import get_device
    from moe_registry.schemas.layer import LayerSpec

    meta = rec["meta"]
    if meta.get("compute_capability") != "9.0" or "H100" not in meta.get("card", ""):
        raise ValueError(f"a cost table of the H100 preset needs an H100 record, got {meta.get('card')}")
    # Only layers where a registry backend ran beside ours: the measured policy puts a measured backend ahead of
    # every unmeasured one, so ours alone in a table (the bf16 layers: vLLM's peer is no backend) would win unseen.
    peered = {r["layer"] for r in rec["results"] if r["backend"] in PEERS}

    def launches(cfg: Any, layer: Any, T: int) -> Any:
        return ops.resolved(cfg, T, layer.top_k, layer.local_num_experts, layer.hidden_size,
                            layer.local_intermediate_size, BLOCK_4BIT)

    def stands_for_today(name: str, variant: str, T: int, config: str | None) -> bool:
        layer = LayerSpec(**LAYERS[name])
        today = ops.default_config(T, layer.top_k, layer.local_num_experts,
                                   quantized=layer.quant.kind.value not in ("bf16", "fp16"))
        if config is not None:
            return config == today.label()
        ran: Any
        if variant == "default":
            ran = dataclasses.replace(today, **run_default) if today.gemm2 != "sorted" else today  # type: ignore[arg-type]
        else:
            ran = ran_variants(T).get(variant)
            if ran is None:
                return False
        return launches(ran, layer, T) == launches(today, layer, T)

    rows = rec["results"]
    if prefill is not None:
        rows = [r for r in rows if r["mode"] != "eager"] + [r for r in prefill["results"] if r["mode"] == "eager"]
    variants_ran = list(dict.fromkeys(r["backend"][5:] for r in rows if r["backend"].startswith("ours:")))
    order = list(dict.fromkeys(["default", *ran_variants(1), *variants_ran]))
    chosen: dict[tuple[str, int], str] = {}
    for row in rows:
        name, label, T = row["layer"], row["backend"], row["T"]
        if name in peered and label.startswith("ours:") and stands_for_today(name, label[5:], T, row.get("config")):
            best = chosen.get((name, T))
            if best is None or order.index(label[5:]) < order.index(best):
                chosen[(name, T)] = label[5:]
    entries = []
    for row in rows:
        name, label, T = row["layer"], row["backend"], row["T"]
        if name not in peered:
            continue
        if label.startswith("ours:"):
            if chosen.get((name, T)) != label[5:]:
                continue
            backend = "triton-lowt-moe"
        elif label in PEERS:
            backend = PEERS[label]
        else:
            continue
        entries.append(CostEntry(backend=backend, layer=LayerSpec(**LAYERS[name]), tokens=T, mode=row["mode"],
                                 median_us=row["us"], p10_us=row["p10_us"], p90_us=row["p90_us"]))
    versions = {"python": meta["python"], "torch": meta["torch"].split("+")[0], "cuda": meta["torch_cuda"],
                "triton": meta["triton"]}
    device = get_device("h100").model_copy(update={"memory_gb": meta["memory_gib"]})
    date = meta["date_utc"]
    if prefill is not None:
        date = f"{date} (T <= 64); {prefill['meta']['date_utc']} (eager, T > 64)"
    return CostTable(device=device, card=meta["card"], date=date, versions=versions, entries=tuple(entries))


def _with_config(base: Any, cfg_for: Callable[[int], Any]) -> Any:
    """A shallow copy of our adapter with another config rule (weights shared)."""
    import copy

    other = copy.copy(base)
    other.config = lambda T: cfg_for(T) or base.config_for(T)
    return other


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.devnull)
    p.add_argument("--layers", default=",".join(LAYERS))
    p.add_argument("--peers", default="humming,marlin,vllm")
    p.add_argument("--variants", default="all", help="all, default, or a comma list of variant names (the default "
                   "config is always timed)")
    p.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True, help="also T = 512, 4096 eagerly")
    p.add_argument("--replays", type=int, default=100)
    p.add_argument("--warm", help="compile for this layer only (no timing), then exit")
    p.add_argument("--phase", default="both", choices=("warm", "time", "both"),
                   help="warm: one --warm process per layer in parallel, then exit; time: the timed pass only")
    p.add_argument("--warm-limit", type=float, default=300.0, help="seconds before the warm-up processes are stopped")
    p.add_argument("--vllm-shim", default=os.path.join(_ROOT, ".gpu", "vllm_shim"))
    p.add_argument("--moe-c", default=os.environ.get("MOE_REGISTRY_VLLM_MOE_C"))
    p.add_argument("--costs-from", metavar="RECORD", help="no GPU: write --out as the cost table of a recorded run")
    p.add_argument("--prefill-from", metavar="RECORD", help="with --costs-from: the eager rows (T > 64) of this run")
    args = p.parse_args()
    unknown = set(args.variants.split(",")) - set(variants("")) if args.variants != "all" else set()
    if unknown:
        p.error(f"--variants: unknown {', '.join(sorted(unknown))}")
    if args.costs_from:
        with open(args.costs_from) as f:
            rec = json.load(f)
        prefill = None
        if args.prefill_from:
            with open(args.prefill_from) as f:
                prefill = json.load(f)
        cost_table(rec, prefill=prefill).save(args.out)
        return
    if not torch.cuda.is_available():
        sys.exit("bench_lowt.py needs a CUDA GPU")
    if args.warm:
        Run(args).layer(args.warm, warm_only=True)
        return
    if args.phase in ("warm", "both"):
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, __file__, "--out", os.devnull, "--warm", name, "--peers", args.peers,
                                   "--variants", args.variants, "--vllm-shim", args.vllm_shim]
                                  + (["--moe-c", args.moe_c] if args.moe_c else []) + ([] if args.eager else ["--no-eager"]))
                 for name in args.layers.split(",")]
        deadline = time.monotonic() + args.warm_limit
        for proc in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()  # a compiler still running would disturb the timed pass
                proc.wait()
        print(f"warm-up: {time.perf_counter() - t0:.0f} s", flush=True)
    if args.phase in ("time", "both"):
        Run(args).run()


if __name__ == "__main__":
    main()
