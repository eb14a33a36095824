"""Launch configs of the Triton kernels: tuned JSON data per (E, N, K, dtype, device), a default.

File names follow vLLM's ``fused_moe/configs/`` (``E=..,N=..,device_name=...json``) with K and
our quant label added: ``E=128,N=704,K=2816,device_name=NVIDIA_H200,dtype=bf16.json``. N is the
per-rank intermediate size, K the hidden size. A file maps token counts T (as strings) to
``{"gemm1": {...}, "gemm2": {...}}``; the entry whose T is nearest the batch's is used (vLLM's
rule, ``fused_moe.py try_get_optimal_moe_config``). Both GEMMs share BLOCK_SIZE_M (one
alignment serves both). Torch-free: ``moe-registry tune`` and tests read these without a GPU.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).with_name("configs")
KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
# Optional: "SWAP_AB" (bool) computes B A^T (vLLM's swap-AB for BLOCK_SIZE_M < 64 on Hopper).
FP8_BLOCK = 128  # the scale tile: BLOCK_SIZE_K must divide it for fp8_block


def device_label(name: str) -> str:
    return name.replace(" ", "_").replace("/", "_")


def config_file_name(E: int, N: int, K: int, quant: str, device_name: str) -> str:
    return f"E={E},N={N},K={K},device_name={device_label(device_name)},dtype={quant}.json"


@functools.lru_cache(maxsize=64)
def _load(path: str) -> dict[int, dict[str, dict[str, int]]] | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        raw = json.load(f)
    return {int(t): v for t, v in raw.items() if not t.startswith("_")}


def default_config(T: int, E: int, top_k: int, quant: str) -> dict[str, dict[str, int]]:
    """Small M tiles at decode (pairs per expert <= 16), 64-row tiles beyond (vLLM's
    ``get_default_config`` shape of choice), 128x128/128x256 tiles for 16-bit prefill (measured, see
    below); fp8_block takes K tiles of 128 (one scale per tile)."""
    pairs_per_expert = T * top_k / max(E, 1)
    if pairs_per_expert >= 128 and quant in ("bf16", "fp16"):
        # Prefill: the tiles `moe-registry tune` picked at T=4096 on the H200 for Qwen3-30B, Mixtral (both
        # GEMMs) and Gemma 4 (GEMM2) (configs/*.json, 2026-11-29): 12-36 % faster than 64x64 tiles.
        return {"gemm1": dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=128, BLOCK_SIZE_K=64, GROUP_SIZE_M=16, num_warps=8,
                              num_stages=4),
                "gemm2": dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, BLOCK_SIZE_K=64, GROUP_SIZE_M=16, num_warps=8,
                              num_stages=4)}
    bm = 16 if pairs_per_expert <= 16 else 64
    if quant == "fp8_block":
        g = dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=64 if bm == 16 else 128, BLOCK_SIZE_K=128,
                 GROUP_SIZE_M=1 if bm == 16 else 32, num_warps=4, num_stages=3)
    elif bm == 16:
        g = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
    else:
        g = dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=64, GROUP_SIZE_M=8, num_warps=4, num_stages=3)
    return {"gemm1": dict(g), "gemm2": dict(g)}


def validate(cfg: dict[str, dict[str, int]], quant: str) -> dict[str, dict[str, int]]:
    """Refuse a config the kernels cannot run (missing keys, unequal BLOCK_SIZE_M, fp8_block K tile
    that does not divide 128)."""
    for part in ("gemm1", "gemm2"):
        c = cfg.get(part)
        if not isinstance(c, dict) or any(k not in c for k in KEYS):
            raise ValueError(f"triton-fused-moe config: {part} needs keys {', '.join(KEYS)}, got {c!r}")
        for k in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"):
            v = c[k]
            if v < 16 or v & (v - 1):
                raise ValueError(f"triton-fused-moe config: {part}.{k} must be a power of two >= 16, got {v}")
        if quant == "fp8_block" and FP8_BLOCK % c["BLOCK_SIZE_K"]:
            raise ValueError(f"triton-fused-moe config: fp8_block needs BLOCK_SIZE_K dividing {FP8_BLOCK}, "
                             f"got {c['BLOCK_SIZE_K']}")
    if cfg["gemm1"]["BLOCK_SIZE_M"] != cfg["gemm2"]["BLOCK_SIZE_M"]:
        raise ValueError("triton-fused-moe config: gemm1 and gemm2 must share BLOCK_SIZE_M")
    return cfg


def lookup(T: int, E: int, N: int, K: int, top_k: int, quant: str, device_name: str | None,
           config_dir: Path | None = None) -> tuple[dict[str, dict[str, int]], str]:
    """(config, where it came from): the tuned entry nearest T for this shape and card, else the default."""
    if device_name:
        path = (config_dir or CONFIG_DIR) / config_file_name(E, N, K, quant, device_name)
        table = _load(str(path))
        if table:
            t = min(table, key=lambda key: (abs(key - T), key))
            return validate(table[t], quant), f"{path.name}[T={t}]"
    return default_config(T, E, top_k, quant), "default"


def save(path: Path, table: dict[int, dict[str, Any]], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"_meta": meta, **{str(t): table[t] for t in sorted(table)}}
    path.write_text(json.dumps(data, indent=1) + "\n")
    _load.cache_clear()
