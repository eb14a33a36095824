#!/usr/bin/env python3
"""Fill a Triton cache with the low-T kernels for SM90 on a machine without a GPU, so that the GPU
session loads them instead of compiling (device time is the scarce resource there).

    PYTHONPATH=/path/to/triton-3.6 python benchmarks/lowt_precompile.py --cache DIR \\
        --remote-libtriton /path/to/cp312/triton/_C/libtriton.so [--set bench,tests,probe]

Each launch the GPU session will make (``bench_lowt.py``, ``tests/gpu/test_triton_lowt_moe_gpu.py``,
the probe) is made here on CPU tensors of the same shapes, dtypes and alignment, with Triton's driver
answering "CUDA, SM 9.0" and every launch turned into a compile-only warm-up, so the JIT computes the
same specialization and cache key. Triton's key hashes ``libtriton.so``, which differs between the
Python builds of one Triton version: ``--remote-libtriton`` names the GPU machine's (its wheel, unpacked),
whose hash then replaces this machine's. A key that still differs only costs the compile there.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def install_fakes(remote_libtriton: str | None) -> None:
    import triton
    import triton.runtime.cache as cache
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    class FakeCuda:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

    driver.set_active(FakeCuda())
    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        return run(self, *args, grid=grid, warmup=True, **kwargs)

    JITFunction.run = compile_only
    if remote_libtriton:
        local = _file_hash(os.path.join(os.path.dirname(triton.__file__), "_C", "libtriton.so"))
        remote = _file_hash(remote_libtriton)
        original = cache.triton_key

        @functools.lru_cache(None)
        def key() -> str:
            return original().replace(local, remote)

        cache.triton_key = key


def launch(layer, T: int, cfg=None, block: int | None = None) -> None:
    """The forward's launches for ``layer`` at ``T`` tokens, on CPU tensors shaped as on the GPU."""
    import torch

    from moe_registry.backends.triton_lowt_moe import DECLARATION, codes as F, ops
    from moe_registry.backends.triton_lowt_moe.kernel import BLOCK_16BIT, BLOCK_4BIT
    from moe_registry.backends.triton_fused_moe.ops import epilogue_for
    from moe_registry.execution.weights import torch_dtype

    dt = torch_dtype(layer)
    E, k, H, I, R = layer.local_num_experts, layer.top_k, layer.hidden_size, layer.local_intermediate_size, layer.gemm1_rows
    kind = layer.quant.kind.value

    def packed(N: int, K: int):
        if kind in ("bf16", "fp16"):
            return ops.PackedWeight(F.FMT_16BIT, torch.empty(E, N, K, dtype=dt), block or BLOCK_16BIT)
        blk = block or BLOCK_4BIT
        data = torch.empty(E, N, K // 2, dtype=torch.uint8)
        if kind.startswith("nvfp4"):
            return ops.PackedWeight(F.FMT_NVFP4, data, blk, scale=torch.empty(E, N, K // 16, dtype=torch.uint8),
                                    global_mult=torch.empty(E), group=16)
        if kind == "mxfp4":
            return ops.PackedWeight(F.FMT_MXFP4, data, blk, scale=torch.empty(E, N, K // 32, dtype=torch.uint8),
                                    group=32)
        g = layer.quant.group_size
        group = ops.ONE_GROUP if g in (-1, K) else g
        ng = 1 if group == ops.ONE_GROUP else K // g
        zeros = torch.empty(E, N, ng, dtype=torch.uint8) if layer.quant.zero_point else None
        return ops.PackedWeight(F.FMT_INT4, data, blk, scale=torch.empty(E, N, ng, dtype=dt), zeros=zeros, group=group)

    w13, w2 = packed(R, H), packed(H, I)
    code = DECLARATION.activations[layer.activation].kernel_value
    ep = epilogue_for(layer, code)
    cfg = cfg or ops.default_config(T, k, E, quantized=layer.quant.kind.value != layer.dtype)
    x = torch.empty(T, H, dtype=dt)
    w = torch.empty(T, k)
    ids = torch.zeros(T, k, dtype=torch.int32)
    bias13 = torch.empty(E, R) if layer.bias else None
    bias2 = torch.empty(E, H) if layer.bias else None
    ok = torch.ones(1, dtype=torch.int32)
    ops.fused_experts(x, w, ids, w13, w2, E, I, ep, cfg, w13_bias=bias13, w2_bias=bias2, ok=ok, asm=True)


def jobs(which: set[str], variants: set[str] | None = None, layers: set[str] | None = None):
    """(label, layer, T, config) for every launch the GPU session makes (the benchmark's: of ``variants`` and
    ``layers`` only, where given, as the call's ``--variants`` / ``--layers``)."""
    from moe_registry.schemas.activation import SiluClampParams, SwigluOAIParams
    from moe_registry.schemas.layer import LayerSpec
    from moe_registry.verify.grid import FEATURE_COMBOS, default_scheme, layer_for, shape_classes
    from moe_registry.schemas.quant import QuantKind

    out = []
    if "bench" in which:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bench_lowt as B

        for name, spec in B.LAYERS.items():
            if layers is not None and name not in layers:
                continue
            layer = LayerSpec(name=name, **spec)
            for T in B.GRAPH_T + B.EAGER_T:
                out.append((f"bench {name}", layer, T, None))
            for label, rule in B.variants(name).items():
                if label != "default" and (variants is None or label in variants):
                    for T in B.VARIANT_T:
                        out.append((f"bench {name} {label}", layer, T, rule(T)))
    if "tests" in which:
        import importlib.util

        spec = importlib.util.spec_from_file_location("lowt_gpu_tests", os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "gpu", "test_triton_lowt_moe_gpu.py"))
        # The GPU test module skips without a GPU at import; its tables are read by hand instead.
        medium = dict(num_experts=16, top_k=4, hidden_size=1024, intermediate_size=704)
        schemes = {"bf16": dict(quant="bf16"), "fp16": dict(quant="fp16", dtype="fp16"),
                   "int4-g64": dict(quant={"kind": "int4_w4a16", "group_size": 64}),
                   "int4-g64-zp": dict(quant={"kind": "int4_w4a16", "group_size": 64, "zero_point": True}),
                   "int4-g128-aligned": dict(quant={"kind": "int4_w4a16", "group_size": 128}, intermediate_size=768),
                   "nvfp4": dict(quant="nvfp4_w4a16"), "mxfp4": dict(quant="mxfp4")}
        for s in schemes.values():
            for act in ("silu", "relu2_no_mul"):
                for T in (1, 5, 200):
                    out.append(("tests format", LayerSpec(**{**medium, **s}, activation=act), T, None))
        for s in ("bf16", "mxfp4", "int4-g64-zp"):
            for inter in (True, False):
                p = SwigluOAIParams(alpha=1.702, limit=7.0, up_offset=1.0, interleaved=inter)
                for T in (1, 64):
                    out.append(("tests swigluoai", LayerSpec(**{**medium, **schemes[s]}, activation="swigluoai",
                                                            activation_params=p, bias=True), T, None))
        for T in (1, 64):
            out.append(("tests silu_clamp", LayerSpec(**{**medium, **schemes["nvfp4"]}, activation="silu_clamp",
                                                      activation_params=SiluClampParams(limit=1.0)), T, None))
        for T in (5, 64):
            out.append(("tests on-input", LayerSpec(**{**medium, "top_k": 1, **schemes["int4-g128-aligned"]},
                                                    apply_router_weight_on_input=True), T, None))
        bench = {"gemma4-nvfp4": dict(num_experts=128, top_k=8, hidden_size=2816, intermediate_size=704,
                                      activation="gelu_tanh", quant="nvfp4"),
                 "qwen3-int4": dict(num_experts=128, top_k=8, hidden_size=2048, intermediate_size=768,
                                    quant={"kind": "int4_w4a16", "group_size": 128}),
                 "mixtral-awq": dict(num_experts=8, top_k=2, hidden_size=4096, intermediate_size=14336,
                                     quant={"kind": "int4_w4a16", "group_size": 128, "zero_point": True})}
        for s in bench.values():
            for T in (1, 16, 64, 300):
                out.append(("tests bench", LayerSpec(**s), T, None))
        for T in (1, 8, 600):
            out.append(("tests nosync", LayerSpec(**medium, **schemes["nvfp4"]), T, None))
        for T in (1, 4, 16, 64, 3, 50, 65):
            out.append(("tests graphs", LayerSpec(**{**medium, **schemes["int4-g128-aligned"]}), T, None))
        for T in (1, 8, 100):
            out.append(("tests bad ids", LayerSpec(num_experts=16, top_k=4, hidden_size=256, intermediate_size=128,
                                                   quant="nvfp4_w4a16"), T, None))
        del spec
    if "probe" in which:
        kinds = [QuantKind.BF16, QuantKind.FP16, QuantKind.INT4_W4A16, QuantKind.NVFP4, QuantKind.NVFP4_W4A16,
                 QuantKind.MXFP4]
        shapes = shape_classes(quick=True)
        for kind in kinds:
            for shape in shapes:
                scheme = default_scheme(kind, shape)
                for act in ("silu", "relu2_no_mul"):
                    out.append(("probe", layer_for(shape, act, scheme), shape.tokens, None))
            shape = shapes[0]
            scheme = default_scheme(kind, shape)
            for feature, acts in FEATURE_COMBOS:
                for act in acts:
                    layer = layer_for(shape, act, scheme, bias=feature == "bias",
                                      router_weight_on_input=feature == "router_weight_on_input")
                    out.append(("probe feature", layer, shape.tokens, None))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True)
    p.add_argument("--remote-libtriton")
    p.add_argument("--set", default="bench,tests,probe")
    p.add_argument("--variants", help="the benchmark's variants to compile (default: all), as bench_lowt.py --variants")
    p.add_argument("--layers", help="the benchmark's layers to compile (default: all)")
    a = p.parse_args()
    os.environ["TRITON_CACHE_DIR"] = os.path.abspath(a.cache)
    os.environ.pop("TRITON_INTERPRET", None)
    install_fakes(a.remote_libtriton)
    import triton

    print(f"triton {triton.__version__} -> {a.cache}", flush=True)
    seen = set()
    t0 = time.time()
    todo = jobs(set(a.set.split(",")), set(a.variants.split(",")) if a.variants else None,
                set(a.layers.split(",")) if a.layers else None)
    for i, (label, layer, T, cfg) in enumerate(todo):
        key = (layer.model_dump_json(), T, repr(cfg))
        if key in seen:
            continue
        seen.add(key)
        try:
            launch(layer, T, cfg)
        except Exception as exc:  # report and go on: a miss only costs the compile on the GPU
            print(f"  FAILED {label} T={T}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        if i % 20 == 0:
            print(f"  {i}/{len(todo)} {time.time() - t0:.0f}s", flush=True)
    print(f"done: {len(seen)} launches in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
