"""``moe-registry tune TARGET``: pick launch configs for this card and write them as JSON data.

For each layer shape of TARGET (a preset, config.json or ``layer:experts=..``) and each token count,
a small search: the block-M regime follows the pairs per expert (T*k/E); within it GEMM1's tile is
chosen with GEMM2 at the default, then GEMM2's with GEMM1 at its winner (coordinate descent: the
sum of the two candidate lists is timed, not their product). Each candidate is timed as a CUDA
graph replay of the whole forward (launch gaps out, the same for every candidate) on rotated
random inputs. The winners go to ``configs/E=..,N=..,K=..,device_name=<card>,dtype=<quant>.json``
(``--out-dir`` to write elsewhere), which the adapter then reads; an existing file is merged (the
token counts tuned now replace theirs).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ...schemas.layer import LayerSpec
from . import configs


def _cfg(bm: int, bn: int, bk: int, group: int, warps: int, stages: int, swap: bool = False) -> dict[str, Any]:
    c: dict[str, Any] = dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=group,
                             num_warps=warps, num_stages=stages)
    if swap:
        c["SWAP_AB"] = True
    return c


def candidates(T: int, layer: LayerSpec, quant: str, sm: int = 90) -> tuple[int, list[dict], list[dict]]:
    """(BLOCK_SIZE_M, GEMM1 candidates, GEMM2 candidates) for T tokens: a few tiles per regime."""
    per_expert = T * layer.top_k / layer.local_num_experts
    fp8_block = quant == "fp8_block"
    bks = (128,) if fp8_block else (128, 256)
    swap_ok = sm == 90
    if per_expert <= 8:  # decode: memory-bound, few rows per expert; likeliest winners first
        bm = 16
        shapes = [(64, 128, 4, True), (128, 128, 3, True), (64, 256, 4, True), (64, 128, 4, False),
                  (32, 128, 4, False), (32, 256, 4, False), (128, 256, 3, True), (64, 64, 5, True)]
        tiles = [_cfg(16, bn, bk, 1, 4, st, swap and swap_ok) for bn, bk, st, swap in shapes
                 if not (fp8_block and bk not in bks)]
        if fp8_block:
            tiles += [_cfg(16, 128, 128, 1, 4, 4, swap_ok), _cfg(16, 32, 128, 1, 4, 5)]
    elif per_expert <= 48:
        bm = 32 if not fp8_block else 16
        tiles = [_cfg(bm, bn, bk, 1, 4, st, swap_ok and bm < 64 and bn >= 64)
                 for bn in (64, 128) for bk in ((64, 128) if not fp8_block else (128,)) for st in (3, 4)]
    else:  # prefill: compute-bound
        bm = 64
        bk = 128 if fp8_block else 64
        bm = 128 if not fp8_block else bm
        # vLLM's H200 tiles for this regime first (its configs/ for Qwen3 and Mixtral), then variations.
        tiles = [_cfg(bm, 256 if not fp8_block else 128, bk, 16, 8, 4 if not fp8_block else 3),
                 _cfg(bm, 128, bk, 16, 8, 3), _cfg(bm, 128, bk, 16, 4, 3), _cfg(bm, 64, bk, 8, 4, 3)]
        tiles += [_cfg(bm, bn, bk, g, w, 3) for bn in (64, 128) for w in (4, 8) for g in (8, 16)
                  if (bn, w, g) not in ((128, 8, 16), (128, 4, 16), (64, 4, 8))]
        if layer.activation.is_gated:  # GEMM1's tile spans BLOCK_SIZE_N gate and as many up rows
            return bm, [dict(t, BLOCK_SIZE_N=max(32, t["BLOCK_SIZE_N"] // 2)) for t in tiles], tiles
    return bm, tiles, list(tiles)


def layer_weights(layer: LayerSpec, device: Any, seed: int = 0) -> Any:
    """Random canonical weights; FP8 block ones quantized one expert at a time (a whole DeepSeek-V3
    layer in fp32 would be 45 GB before quantization)."""
    import math

    import torch

    from ...execution.weights import ExpertWeights, random_weights, torch_dtype

    if layer.quant.kind.value != "fp8_block":
        return random_weights(layer, device=device, dtype=torch_dtype(layer), seed=seed)
    from ...formats.fp8 import Fp8BlockTensor, quantize_fp8_block

    gen = torch.Generator(device=device).manual_seed(seed)
    E, H, I, R = layer.local_num_experts, layer.hidden_size, layer.local_intermediate_size, layer.gemm1_rows

    def one(n: int, k: int) -> Fp8BlockTensor:
        parts = [quantize_fp8_block(torch.randn(n, k, device=device, generator=gen).mul_(1 / math.sqrt(k)))
                 for _ in range(E)]
        return Fp8BlockTensor(data=torch.stack([p.data for p in parts]), scale=torch.stack([p.scale for p in parts]))

    return ExpertWeights(w13=one(R, H), w2=one(H, I))


def tune_layer(layer: LayerSpec, tokens: tuple[int, ...], *, device: Any = "cuda", budget_s: float = 60.0,
               seed: int = 0, log=print) -> dict[int, dict[str, Any]]:
    """{T: {"gemm1": cfg, "gemm2": cfg, "us": median}} for one layer on ``device``."""
    import torch

    from ...execution.patterns import routing_pattern
    from ...execution.weights import torch_dtype
    from ...measure.timing import time_graph
    from .kernel import TritonFusedMoEExperts

    dev = torch.device(device)
    weights = layer_weights(layer, dev, seed)
    experts = TritonFusedMoEExperts(layer, weights)
    major, minor = torch.cuda.get_device_capability(dev)
    quant = layer.quant.kind.value
    out: dict[int, dict[str, Any]] = {}
    t_end = time.perf_counter() + budget_s
    gen = torch.Generator(device=dev).manual_seed(seed)
    for T in tokens:
        sets = []
        for _ in range(3):
            w, ids = routing_pattern(T, layer.local_num_experts, layer.top_k, device=dev, generator=gen)
            x = torch.randn(T, layer.hidden_size, device=dev, generator=gen).to(torch_dtype(layer))
            sets.append((x, w, ids))
        replays = 60 if T <= 512 else 20
        default = configs.default_config(T, layer.local_num_experts, layer.top_k, quant)
        bm, c1, c2 = candidates(T, layer, quant, major * 10 + minor)
        start = {p: dict(default[p], BLOCK_SIZE_M=bm) for p in ("gemm1", "gemm2")}

        def measure(cfg: dict[str, dict[str, Any]], sets: list[Any] = sets, replays: int = replays) -> float:
            experts.fixed_config = configs.validate(cfg, quant)
            try:
                return time_graph(experts.run, sets, experts.device, warmup=len(sets), replays=replays).median_us
            except Exception as exc:  # a tile that does not fit (shared memory): skip it
                log(f"    skip {cfg}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                torch.cuda.synchronize(dev)
                return float("inf")

        best = dict(start)
        best_us = measure(best)
        for part, cands in (("gemm1", c1), ("gemm2", c2)):
            for cand in cands:
                if time.perf_counter() > t_end:
                    break
                trial = {**best, part: cand}
                us = measure(trial)
                if us < best_us:
                    best, best_us = trial, us
        ref_us = measure(default)
        if ref_us <= best_us:
            best, best_us = default, ref_us
        out[T] = {**best, "us": round(best_us, 2), "default_us": round(ref_us, 2)}
        log(f"  T={T:<5} {best_us:9.1f} us (default {ref_us:9.1f} us)  gemm1 {best['gemm1']}  gemm2 {best['gemm2']}")
    experts.fixed_config = None
    return out  # the caller empties the CUDA cache once this layer's weights are released


def save_table(layer: LayerSpec, table: dict[int, dict[str, Any]], device_name: str, out_dir: Path | None,
               meta: dict[str, Any]) -> Path:
    quant = layer.quant.kind.value
    path = (out_dir or configs.CONFIG_DIR) / configs.config_file_name(
        layer.local_num_experts, layer.local_intermediate_size, layer.hidden_size, quant, device_name)
    merged = dict(configs._load(str(path)) or {})
    merged.update({T: {"gemm1": v["gemm1"], "gemm2": v["gemm2"]} for T, v in table.items()})
    old_meta = {}
    if path.exists():
        import json

        old_meta = json.loads(path.read_text()).get("_meta", {})
    timings = {**old_meta.get("us", {}), **{str(T): {"tuned": v["us"], "default": v["default_us"]}
                                               for T, v in table.items()}}
    configs.save(path, merged, {**meta, "us": timings})
    return path


def tune(layers: list[LayerSpec], labels: dict[LayerSpec, str], tokens: tuple[int, ...], *, budget_s: float = 60.0,
         out_dir: Path | None = None) -> int:
    """`moe-registry tune`: tune every layer shape of the target (``labels`` names them) and write
    one config file per shape."""
    import datetime

    import torch

    if not torch.cuda.is_available():
        raise ValueError("tune needs a CUDA GPU (the configs are per card)")
    name = torch.cuda.get_device_name()
    for layer in layers:
        quant = layer.quant.kind.value
        if quant not in ("bf16", "fp16", "fp8", "fp8_block"):
            raise ValueError(f"triton-fused-moe runs bf16, fp16, fp8, fp8_block; {labels[layer]} is {quant}")
        print(f"== {labels[layer]}: {layer.describe()}", flush=True)
        table = tune_layer(layer, tokens, budget_s=budget_s)
        torch.cuda.empty_cache()
        meta = {"card": name, "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "torch": torch.__version__, "triton": __import__("triton").__version__,
                "method": "CUDA graph replay of the whole forward, median, 3 rotated random input sets"}
        print(f"  wrote {save_table(layer, table, name, out_dir, meta)}", flush=True)
    return 0
