#!/usr/bin/env python3
"""Compile the low-T kernels for SM90 on a machine without a GPU and report what the compiler made of
them: registers and spills (the wheel's ``ptxas -v``), shared memory, and the instruction mix of the SASS (``nvdisasm`` from the
triton wheel). What costs no device time (benchmarks/lowt-notes.md says what each version showed).

    PYTHONPATH=/path/to/triton-3.6 python benchmarks/lowt_sass.py [--fmt nvfp4] [--dump DIR]

Pick the triton version the GPU machine runs (gpu-machine-notes.md: 3.6.0); a local
``pip install --target DIR triton==3.6.0`` is enough (no CUDA driver needed to compile).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from moe_registry.backends.triton_lowt_moe import codes as F  # noqa: E402
from moe_registry.backends.triton_lowt_moe import gemv as GV  # noqa: E402
from moe_registry.backends.triton_lowt_moe import slots as SL  # noqa: E402
from moe_registry.backends.triton_lowt_moe import kernels as KN  # noqa: E402
from moe_registry.backends.triton_lowt_moe.kernel import BLOCK_4BIT, BLOCK_16BIT  # noqa: E402

FMTS = {"bf16": F.FMT_16BIT, "int4": F.FMT_INT4, "nvfp4": F.FMT_NVFP4, "mxfp4": F.FMT_MXFP4}
PTR = {"a": "*bf16", "ids": "*i32", "tw": "*fp32", "bias": "*fp32", "c": "*bf16", "zero": "*fp32", "ok": "*i32",
       "gsc": "*fp32", "out": "*bf16", "z": "*u8", "sorted": "*i32", "block_expert": "*i32", "total": "*i32",
       "ws": "*fp32", "cnt": "*i32"}


def _sig(fn: triton.JITFunction, fmt: int, stage: int, finish: bool, ptrs: dict | None = None) -> tuple[dict, dict]:
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        base = name[:-4] if name.endswith("_ptr") else None
        if base is not None:
            if ptrs and base in ptrs:
                sig[name] = ptrs[base]
            elif base == "w":
                sig[name] = "*bf16" if fmt == F.FMT_16BIT else "*u8"
            elif base == "s":
                sig[name] = "*bf16" if fmt == F.FMT_INT4 else "*u8"
            elif base == "c" and stage == 2 and not finish:
                sig[name] = "*fp32"
            else:
                sig[name] = PTR.get(base, "*fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("alpha", "limit", "up_add"):
            sig[name] = "fp32"
        elif i in fn.constexprs:
            sig[name] = "constexpr"
        else:
            sig[name] = "i32"
            if name.startswith("s_") or name in ("K", "N_OUT"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def compile_one(fn: triton.JITFunction, consts: dict, fmt: int, stage: int, warps: int, stages: int,
                ptrs: dict | None = None, maxnreg: int | None = None) -> object:
    sig, attrs = _sig(fn, fmt, stage, finish=stage == 2 and consts.get("SPLIT") is not None, ptrs=ptrs)
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages,
                                                                           **({"maxnreg": maxnreg} if maxnreg else {})})


def sass_mix(cubin: bytes) -> tuple[collections.Counter, str]:
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
    ops = collections.Counter()
    for line in text.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", line)
        if m:
            ops[m.group(1).split(".")[0]] += 1
    return ops, text


def ptxas_usage(ptx: str) -> str:
    """Registers per thread and spill bytes, from the triton wheel's own ``ptxas -v`` on the kernel's PTX (the
    compile the GPU machine does; Triton's metadata has them only after loading on a device)."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        err = subprocess.run([ptxas, "-v", "-arch=sm_90a", src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", err)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", err)
    return (f"{regs.group(1) if regs else '?'} registers, spills {spills.group(1)} / {spills.group(2)} B"
            if spills else f"{regs.group(1) if regs else '?'} registers")


def loops(text: str) -> list[tuple[int, collections.Counter]]:
    """(instructions, op mix) of each loop body (a label up to a backward branch to it), largest first."""
    lines = text.splitlines()
    labels = {m.group(1): i for i, l in enumerate(lines) if (m := re.match(r"^(\.L_x_\d+):", l))}
    out = []
    for i, l in enumerate(lines):
        m = re.search(r"BRA\s+`\((\.L_x_\d+)\)", l)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            ops = collections.Counter()
            for b in lines[labels[m.group(1)]:i + 1]:
                mm = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", b)
                if mm:
                    ops[mm.group(1).split(".")[0]] += 1
            out.append((sum(ops.values()), ops))
    return sorted(out, key=lambda x: -x[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fmt", default="nvfp4,int4,bf16,mxfp4")
    p.add_argument("--bn", type=int, default=32)
    p.add_argument("--bk", type=int, help="K step (default: the adapter's, 256 for 4-bit, 128 for 16-bit)")
    p.add_argument("--bm", type=int, default=16)
    p.add_argument("--bm-token", type=int, default=8)
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--kernel", default="gemm1,gemm2,token",
                   help="gemm1, gemm2 (per expert slot), token, gemv1, gemv2 (the GEMV kernels; --bn rows per program), "
                        "gemv1t, gemvt (GEMV with GEMM2 per token), slot1 (GEMM1 over an expert's --bm pairs)")
    p.add_argument("--split", type=int, default=1, help="programs per tile sharing its K steps (gemm1, gemm2)")
    p.add_argument("--unroll", type=int, default=2, help="K steps per loop iteration of the GEMV kernels")
    p.add_argument("--pdl", action="store_true", help="the GEMV kernels' programmatic dependent launch calls")
    p.add_argument("--pairs", action="store_true", help="the GEMV kernels' products in 16-bit pairs (Config.pairs)")
    p.add_argument("--steps", type=int, default=0, help="the GEMV kernels' STEPS (Config.whole: K steps unrolled)")
    p.add_argument("--maxnreg", type=int, help="registers per thread at most (Config.maxnreg / maxnreg2)")
    p.add_argument("--tail", action="store_true", help="the GEMV kernels with a partial last K step (TAIL)")
    p.add_argument("--dump")
    a = p.parse_args()
    print(f"triton {triton.__version__}")
    for name in a.fmt.split(","):
        fmt = FMTS[name]
        group = 16 if fmt == F.FMT_NVFP4 else 32 if fmt == F.FMT_MXFP4 else 128
        bk = a.bk or (BLOCK_16BIT if fmt == F.FMT_16BIT else BLOCK_4BIT)
        for kern in a.kernel.split(","):
            ptrs = None
            if kern in ("gemm1", "gemm2"):
                fn = KN.lowt_moe_kernel
                stage = 1 if kern == "gemm1" else 2
                consts = dict(STAGE=stage, FMT=fmt, GATED=stage == 1, HAS_BIAS=False, HAS_ZP=False, GROUP=group,
                              ROUTED_ON_INPUT=False, BN=a.bn, BK=bk, BM=a.bm, PCHUNK=16, E_P2=128, ASM=fmt != 0,
                              DOT_F32=False, ZERO_BLOCK=1024, TAIL=False, SORTED=False, SPLIT=a.split, BT=16)
            elif kern == "slot1":
                fn, stage = SL.gemv_slot1_kernel, 1
                consts = dict(FMT=fmt, GATED=True, HAS_BIAS=False, HAS_ZP=False, GROUP=group, ROUTED_ON_INPUT=False,
                              BR=a.bn, BK=bk, ASM=True, TAIL=False, UNROLL=a.unroll, SCALE2=fmt == F.FMT_NVFP4,
                              PDL=a.pdl, BM=a.bm, E_P2=128, PCHUNK=128)
            elif kern in ("gemv1", "gemv2", "gemv1t", "gemvt"):
                fn = {"gemv1": GV.gemv1_kernel, "gemv1t": GV.gemv1_kernel, "gemv2": GV.gemv2_kernel,
                      "gemvt": GV.gemv_token_kernel}[kern]
                stage = 1 if kern.startswith("gemv1") else 2
                consts = dict(FMT=fmt, HAS_BIAS=False, HAS_ZP=False, GROUP=group, ROUTED_ON_INPUT=False, BR=a.bn,
                              BK=bk, ASM=True, TAIL=a.tail, UNROLL=a.unroll, PDL=a.pdl,
                              PAIRS=a.pairs)
                if kern in ("gemv1", "gemv2", "gemv1t"):
                    consts["STEPS"] = a.steps
                if stage == 1:
                    consts.update(GATED=True, TOKEN2=kern == "gemv1t", SCALE2=kern == "gemv1t" and fmt == F.FMT_NVFP4)
                    ptrs = {"c": "*fp32"} if kern == "gemv1t" and not a.pairs else None
                elif kern == "gemvt":
                    consts["TOPK"] = 8
                    ptrs = {"a": "*bf16" if a.pairs else "*fp32", "c": "*bf16"}
                else:
                    consts["BT"] = 2
            else:
                fn = KN.lowt_token_kernel
                consts = dict(FMT=fmt, HAS_BIAS=False, HAS_ZP=False, GROUP=group, ROUTED_ON_INPUT=False, BN=a.bn,
                              BK=bk, BM=a.bm_token, ASM=fmt != 0, DOT_F32=False, TAIL=False)
                stage = 2
            k = compile_one(fn, consts, fmt, stage, a.warps, a.stages, ptrs, a.maxnreg)
            md = k.metadata
            ops, text = sass_mix(k.asm["cubin"])
            total = sum(ops.values())
            top = ", ".join(f"{op} {n}" for op, n in ops.most_common(14))
            print(f"{name:6} {kern:6} bn {a.bn} bm {a.bm if kern != 'token' else a.bm_token} warps {a.warps} bk {bk}: "
                  f"{ptxas_usage(k.asm['ptx'])}, smem {md.shared}, instr {total}: {top}")
            rows = a.bn * (2 if kern in ("gemm1", "gemv1", "gemv1t", "slot1") else 1)
            per = rows * bk / (32 * a.warps) * (a.unroll if kern.startswith(("gemv", "slot")) else 1)
            inner = [lp for lp in loops(text) if lp[0] > 8  # (a trap's branch to itself is no loop)
                     and (lp[1]["HMMA"] + lp[1]["HGMMA"] or kern.startswith(("gemv", "slot")))
                     and not lp[1]["MUFU"]]
            if not inner:  # straight-line (STEPS): where the loads sit among the instructions
                body = [m.group(1).split(".")[0] for ln in text.splitlines()
                        if (m := re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", ln))]
                ldg = [i for i, op in enumerate(body) if op == "LDG"]
                math = [i for i, op in enumerate(body) if op in ("HFMA2", "FFMA", "HMUL2")]
                first = math[0] if math else len(body)
                print(f"    straight-line: {len(ldg)} LDG, {sum(i < first for i in ldg)} before the first product "
                      f"(instruction {first} of {len(body)}); LDG positions {ldg[:6]}...{ldg[-6:]}")
            for n, mix in inner[:1]:
                print(f"    main loop {n} instr = {n / per:.2f} per weight element per thread: "
                      + ", ".join(f"{op} {c}" for op, c in mix.most_common(12)))
            bf16_tiles = [ln for ln in k.asm["ttgir"].splitlines() if "local_alloc %" in ln and "xbf16" in ln]
            print(f"    16-bit tiles through shared memory: {len(bf16_tiles)}")
            if a.dump:
                os.makedirs(a.dump, exist_ok=True)
                for ext in ("ttgir", "ptx"):
                    with open(os.path.join(a.dump, f"{name}-{kern}.{ext}"), "w") as f:
                        f.write(k.asm[ext])
                with open(os.path.join(a.dump, f"{name}-{kern}.sass"), "w") as f:
                    f.write(text)


if __name__ == "__main__":
    main()
