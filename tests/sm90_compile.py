"""Compile, for sm_90 (Hopper) on a machine without a GPU, every Triton launch that triton-lowt-moe's forward
makes for a set of configs and weight formats: the launches are recorded (no kernel runs) from the real
``ops.fused_experts`` path with ``asm=True`` (as on a GPU: PTX unpacking, PDL, register caps), then each is made
again, in parallel workers, through Triton's own launcher as a compile-only warm-up for a faked SM90 device
(``benchmarks/lowt_precompile.py install_fakes``: the signature and specialization the GPU computes) down to a cubin
(Triton's bundled ptxas). The interpreter tests run the kernels' Python and never see what only the compiler
rejects (a type, a constexpr, an inconsistent return); this does.

    python tests/sm90_compile.py [--layers NAME,NAME] [--jobs N]

Run by tests/test_lowt_sm90_compile.py with the installed Triton (CI's). Run it by hand with the GPU machine's
Triton (gpu-machine-notes.md: 3.6.0) before a GPU session: 3.6 rejected a constexpr branch's early return that
3.9 takes. Exit status 1 and one line per launch that fails to compile; 0 when all compile.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
import sys
import time
from typing import Any

os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not the interpreter's (read when triton decorates)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # 3.6's default (3.9 warns that it will change)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from moe_registry.schemas.activation import SwigluOAIParams  # noqa: E402

from _factories import make_layer  # noqa: E402
from lowt_precompile import install_fakes  # noqa: E402

Launch = tuple[JITFunction, Any, tuple, dict]  # (kernel, grid, arguments, keywords) as ops.fused_experts made it

# The weight formats, each with the epilogue a real model pairs it with; 4-bit K steps of 256 (the adapter's):
# H = 512 two whole steps, I = 384 one and a partial one (16-bit steps of 128: H = 640 five, I = 320 two and a
# partial one).
_OAI = SwigluOAIParams(alpha=1.702, limit=7.0, up_offset=1.0, interleaved=True)
LAYERS: dict[str, dict[str, Any]] = {
    "bf16 gelu_tanh": dict(quant="bf16", activation="gelu_tanh", hidden_size=640, intermediate_size=320),
    "fp16 relu2 on input": dict(quant="fp16", dtype="fp16", activation="relu2", hidden_size=640,
                                intermediate_size=320, apply_router_weight_on_input=True, top_k=1),
    "int4 g128": dict(quant="int4_w4a16"),
    "int4 g32 zero points": dict(quant={"kind": "int4_w4a16", "group_size": 32, "zero_point": True}),
    "nvfp4 gelu_tanh": dict(quant="nvfp4_w4a16", activation="gelu_tanh"),
    "mxfp4 swigluoai bias": dict(quant="mxfp4", activation="swigluoai", activation_params=_OAI, bias=True),
}


def configs(quantized: bool) -> dict[str, Any]:
    """The defaults a 128-expert top-8 layer gets at T = 1, 4, 16 and 128 (GEMV, dot, sorted), and every option
    beside them (``ops.Config``'s fields: pairs, PDL, whole K, register caps, GEMM2 per token, slots, K splits)."""
    from moe_registry.backends.triton_lowt_moe import ops

    out = {f"default T={T}": ops.default_config(T, 8, 128, quantized=quantized) for T in (1, 4, 16, 128)}
    gemv8 = functools.partial(dataclasses.replace, ops.default_config(1, 8, 128, quantized=True))  # its GEMV tiling
    out.update({
        "gemv pdl pairs whole maxnreg": gemv8(pdl=True, pairs=True, whole=True, maxnreg=96, maxnreg2=40),
        "gemv whole": gemv8(whole=True),
        "gemv token pdl pairs": gemv8(gemm2="token", pdl=True, pairs=True),
        "gemv token": gemv8(gemm2="token"),
        "slots bm2": gemv8(gemm2="token", pairs=True, slots=True, bm=2),
        "dot k-split": ops.Config(bm=8, split1=2, split2=2),
        "dot token": ops.Config(bm=8, gemm2="token"),
    })
    return out


def record(layer_name: str, config_names: list[str] | None = None) -> list[Launch]:
    """The launches of one forward per config on ``layer_name``."""
    from moe_registry.backends.triton_lowt_moe import ops
    from moe_registry.backends.triton_lowt_moe.kernel import TritonLowTExperts
    from moe_registry.execution.patterns import routing_pattern
    from moe_registry.execution.weights import random_weights, torch_dtype

    fields = {"num_experts": 16, "top_k": 2, "hidden_size": 512, "intermediate_size": 384,
              **LAYERS[layer_name]}
    layer = make_layer(**fields)
    dtype = torch_dtype(layer)
    build = sys.modules[TritonLowTExperts.__module__].checked_triton_build.__globals__
    active = build["interpreter_active"]
    build["interpreter_active"] = lambda: True  # the adapter's CPU check: these kernels are built, not run, here
    try:
        experts = TritonLowTExperts(layer, random_weights(layer, dtype=dtype, seed=0))
    finally:
        build["interpreter_active"] = active
    launches: list[Launch] = []

    def launcher(fn: JITFunction, grid: Any) -> Any:
        return lambda *args, **kwargs: launches.append((fn, grid, args, kwargs))

    saved = JITFunction.__getitem__
    JITFunction.__getitem__ = launcher  # type: ignore[method-assign]
    try:
        for name, cfg in configs(experts.w13.fmt != ops.F.FMT_16BIT).items():
            if config_names is not None and name not in config_names:
                continue
            T = 5
            w, ids = routing_pattern(T, layer.num_experts, layer.top_k, device="cpu", kind="random",
                                     generator=torch.Generator().manual_seed(0))
            x = torch.randn(T, layer.hidden_size).to(dtype)
            ops.fused_experts(x, w, ids.to(torch.int32), experts.w13, experts.w2, layer.num_experts,
                              layer.intermediate_size, experts.epilogue, cfg, w13_bias=experts.w13_bias,
                              w2_bias=experts.w2_bias, ok=experts._ok, asm=True)
    finally:
        JITFunction.__getitem__ = saved  # type: ignore[method-assign]
    return launches


def _key(launch: Launch) -> str:
    """What a compile depends on: the kernel, its arguments' types (tensors by dtype) and its keywords."""
    fn, _, args, kwargs = launch
    types = tuple(str(a.dtype) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args)
    return repr((fn.__module__, fn.__name__, types, sorted(kwargs.items())))


_LAUNCHES: list[Launch] = []  # read by the forked workers (kernels do not pickle)


def compile_launch(i: int) -> str | None:
    """None when launch ``i`` compiles to a cubin, else one line: the kernel, its constexprs and the error."""
    fn, grid, args, kwargs = _LAUNCHES[i]
    try:
        fn[grid](*args, **kwargs)  # a compile-only warm-up (install_fakes)
        return None
    except Exception as e:  # every compiler error is a finding, reported in one line: its root cause
        while e.__cause__ is not None:
            e = e.__cause__  # type: ignore[assignment]
        flags = " ".join(f"{k}={v}" for k, v in kwargs.items() if k.isupper())
        options = {k: v for k, v in kwargs.items() if not k.isupper()}
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        where = next((ln.split("(")[0] for ln in lines if ln.startswith("def ")), "")  # the jit function it was in
        text = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
        return f"{fn.__name__} [{flags}] {options}: {where} {text}".replace(":  ", ": ")


@triton.jit
def _compiles(x_ptr, N: tl.constexpr):
    tl.store(x_ptr + tl.arange(0, N), tl.zeros((N,), dtype=tl.float32))


@triton.jit
def _rejected(x_ptr, N: tl.constexpr):
    tl.store(x_ptr + tl.arange(0, N), tl.zeros((N,), dtype=tl.float32))  # N = 3: arange needs a power of 2


def self_check() -> int:
    """The checker tells a kernel that compiles from one the compiler rejects (so a pass means something)."""
    install_fakes(None)
    x = (torch.empty(4),)
    _LAUNCHES[:] = [(_compiles, (1,), x, {"N": 4, "num_warps": 1}), (_rejected, (1,), x, {"N": 3, "num_warps": 1})]
    good, bad = compile_launch(0), compile_launch(1)
    print(f"compiles: {good}; rejected: {bad}")
    return 0 if good is None and bad is not None and "_rejected" in bad else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default=",".join(LAYERS), help=f"a comma list of: {'; '.join(LAYERS)}")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--self-check", action="store_true", help="only show that a rejected kernel is reported")
    a = p.parse_args()
    if a.self_check:
        return self_check()
    t0 = time.perf_counter()
    unique: dict[str, tuple] = {}
    names = a.layers.split(",")
    if unknown := [n for n in names if n not in LAYERS]:
        p.error(f"--layers: unknown {unknown}; known: {list(LAYERS)}")
    for name in names:
        for launch in record(name):
            unique.setdefault(_key(launch), launch)
    _LAUNCHES[:] = unique.values()
    install_fakes(None)  # after recording: the workers inherit the faked SM90 device
    print(f"triton {triton.__version__}: {len(unique)} distinct launches to compile for sm_90", flush=True)
    fork = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, a.jobs), mp_context=fork) as pool:
        errors = [e for e in pool.map(compile_launch, range(len(_LAUNCHES))) if e]
    for e in errors:
        print(f"FAIL {e}")
    print(f"{len(unique) - len(errors)} of {len(unique)} compiled in {time.perf_counter() - t0:.0f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
