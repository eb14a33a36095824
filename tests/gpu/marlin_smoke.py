#!/usr/bin/env python3
"""Standalone smoke test of vLLM's Marlin MoE op (no moe_registry, no vLLM install).

    python tests/gpu/marlin_smoke.py [/path/to/vllm/_moe_C_stable_libtorch.abi3.so]

(path defaults to $MOE_REGISTRY_VLLM_MOE_C). Prints, step by step: the environment, whether the
library loads, the registered schemas against vLLM 0.33.0's, then one tiny MoE GEMM per weight
variant (int4 uint4b8 groups -1/32/64/128, int4 uint4 with zero points, NvFP4, MXFP4; bf16 and
fp16) compared with a dense float32 matmul of the same dequantized weights, the align op against
its contract, and the N=64 case that every thread config should refuse. Every step catches its own
exception, so one failure does not hide the others. Exit status 0 iff every expected-to-pass
case passed.

The Marlin layout is rebuilt here from a transcription of vLLM 0.33.0's Python reference
(``marlin_utils_test.py::get_weight_perm / marlin_weights``, ``marlin_utils.py::
marlin_permute_scales / marlin_zero_points``, ``marlin_utils_fp4.py::nvfp4_marlin_process_scales /
mxfp4_marlin_process_scales / nvfp4_marlin_process_global_scale``), independently of
``moe_registry/backends/marlin/repack.py``: if this passes and the adapter fails, the bug is in
the adapter's plumbing; if both fail the same way, suspect the layout or a kernel assumption.
"""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np
import torch

EXPECTED_GEMM = ("a", "c_or_none", "b_q_weight", "b_bias_or_none", "b_scales", "a_scales", "global_scale",
                 "b_zeros_or_none", "workspace", "sorted_token_ids", "expert_ids", "num_tokens_past_padded",
                 "topk_weights", "moe_block_size", "top_k", "mul_topk_weights", "b_type_id", "size_m", "size_n",
                 "size_k", "use_atomic_add", "use_fp32_reduce", "is_zp_float", "thread_k", "thread_n",
                 "blocks_per_sm")
EXPECTED_ALIGN = ("topk_ids", "num_experts", "block_size", "sorted_token_ids", "experts_ids", "num_tokens_post_pad",
                  "maybe_expert_map", "scatter_idx")


def scalar_type_id(exponent, mantissa, signed, bias, finite, nan_repr):  # vllm/scalar_type.py ScalarType.id
    return exponent | mantissa << 8 | int(signed) << 16 | bias << 17 | int(finite) << 49 | nan_repr << 50


UINT4 = scalar_type_id(0, 4, False, 0, False, 1)
UINT4B8 = scalar_type_id(0, 4, False, 8, False, 1)
FLOAT4_E2M1F = scalar_type_id(2, 1, True, 0, True, 0)
E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)


# --- vLLM reference layout, transcribed -------------------------------------------------------

def weight_perm() -> np.ndarray:
    perm = []
    for i in range(32):
        perm1 = []
        col = i // 4
        for block in [0, 1]:
            for row in [2 * (i % 4), 2 * (i % 4) + 1, 2 * (i % 4 + 4), 2 * (i % 4 + 4) + 1]:
                perm1.append(16 * row + col + 8 * block)
        for j in range(4):
            perm.extend([p + 256 * j for p in perm1])
    return np.array(perm).reshape(-1, 8)[:, [0, 2, 4, 6, 1, 3, 5, 7]].ravel()


def pack_cols(q: np.ndarray) -> np.ndarray:
    q = q.astype(np.uint32)
    out = np.zeros((q.shape[0], q.shape[1] // 8), dtype=np.uint32)
    for i in range(8):
        out |= q[:, i::8] << (4 * i)
    return out.astype(np.int32)


def marlin_weights(q_kn: np.ndarray) -> np.ndarray:
    K, N = q_kn.shape
    q = q_kn.reshape(K // 16, 16, N // 16, 16).transpose(0, 2, 1, 3).reshape(K // 16, N * 16)
    q = q.reshape(-1, 1024)[:, weight_perm()].reshape(K // 16, N * 16)
    return pack_cols(q)


def scale_perms():
    sp = [i + 8 * j for i in range(8) for j in range(8)]
    sps = [2 * i + j for i in range(4) for j in [0, 1, 8, 9, 16, 17, 24, 25]]
    return np.array(sp), np.array(sps)


def permute_scales(s: np.ndarray, K: int, N: int, group: int) -> np.ndarray:
    sp, sps = scale_perms()
    p = sp if (group < K and group != -1) else sps
    return s.reshape(-1, p.size)[:, p].reshape(-1, N)


def zero_points(zp: np.ndarray, N: int) -> np.ndarray:
    sp, _ = scale_perms()
    zp = zp.reshape(-1, 64)[:, sp]
    zp = zp.reshape(-1, 8)[:, [0, 2, 4, 6, 1, 3, 5, 7]].reshape(-1, N)
    return pack_cols(zp)


# --- one MoE GEMM -----------------------------------------------------------------------------

def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _num_sms(dev: torch.device) -> int:
    return torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 4


def run_gemm(op, dev, *, kind: str, group: int, dtype: torch.dtype, E=3, K=512, N=256, T=5, k=2, seed=0) -> float:
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 16, size=(E, K, N))  # K-major codes
    if kind in ("nvfp4", "mxfp4"):
        group = 16 if kind == "nvfp4" else 32
    G = 1 if group == -1 else K // group
    rows = np.arange(K) // (K if group == -1 else group)
    qweight, scales, zeros, gscale = [], [], [], None
    w_ref = np.zeros((E, K, N))
    if kind == "nvfp4":
        sf = torch.from_numpy(rng.uniform(0.5, 40, size=(E, G, N)).astype(np.float32)).to(torch.float8_e4m3fn).float()
        gs_dequant = np.array([1 / 300.0, 1 / 1000.0, 1 / 2688.0])[:E]
        procs, factors = [], []
        for e in range(E):
            sp = torch.from_numpy(permute_scales(sf[e].to(dtype).float().numpy(), K, N, 16)).to(dtype)
            procs.append(sp)
        # one factor for all experts (vLLM MoE: _nvfp4_compute_scale_factor over every expert)
        allp = torch.stack(procs)
        if dtype != torch.half:
            m = (allp.float() * 2**7).max()
            factor = float((448 * 2**7 / m).log2().floor().exp2()) if m < 448 * 2**7 else 1.0
        else:
            factor = 1.0
        for e in range(E):
            s = procs[e].to(torch.half).reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(G, -1)
            if factor > 1.0:
                s = (s.float() * factor).to(torch.half)
            s = s * 2**7
            s[s < 2] = 0
            scales.append((s.view(torch.int16) << 1).view(torch.float8_e4m3fn)[:, 1::2].contiguous())
            factors.append(factor)
            w_ref[e] = E2M1[q[e]] * sf[e].numpy()[rows] * gs_dequant[e]
        eb = 14 if dtype == torch.half else 126
        gscale = torch.tensor(gs_dequant * 2.0 ** (eb - 7) / factor, dtype=torch.float32, device=dev)
        type_id = FLOAT4_E2M1F
    elif kind == "mxfp4":
        sb = rng.integers(118, 124, size=(E, G, N)).astype(np.uint8)
        for e in range(E):
            p = permute_scales(sb[e], K, N, 32).reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(G, N)
            scales.append(torch.from_numpy(np.ascontiguousarray(p)).view(torch.float8_e8m0fnu))
            w_ref[e] = E2M1[q[e]] * 2.0 ** (sb[e][rows].astype(np.float64) - 127)
        type_id = FLOAT4_E2M1F
    else:
        s = rng.uniform(0.005, 0.025, size=(E, G, N)).astype(np.float32)
        s = torch.from_numpy(s).to(dtype).float().numpy()  # the values the kernel will see
        zp = rng.integers(0, 16, size=(E, G, N)) if kind == "zp" else np.full((E, G, N), 8)
        for e in range(E):
            scales.append(torch.from_numpy(permute_scales(s[e], K, N, group)).to(dtype))
            if kind == "zp":
                zeros.append(torch.from_numpy(zero_points(zp[e], N)))
            w_ref[e] = (q[e] - zp[e][rows]) * s[e][rows]
        type_id = UINT4 if kind == "zp" else UINT4B8
    for e in range(E):
        qweight.append(torch.from_numpy(marlin_weights(q[e])))
    b_q = torch.stack(qweight).to(dev).contiguous()
    b_s = torch.stack(scales).to(dev).contiguous()
    b_z = torch.stack(zeros).to(dev).contiguous() if zeros else None

    a = torch.from_numpy(rng.standard_normal((T, K)).astype(np.float32)).to(dtype)
    ids = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int32)
    tw = rng.uniform(0.2, 1.0, size=(T, k)).astype(np.float32)
    # moe_align_block_size, written out: block 16, expert by expert, sentinel T*k
    block, numel = 16, T * k
    sorted_ids, expert_ids = [], []
    for e in range(E):
        members = [i for i, x in enumerate(ids.ravel()) if x == e]
        pad = -(-len(members) // block) * block
        sorted_ids += members + [numel] * (pad - len(members))
        expert_ids += [e] * (pad // block)
    total = len(sorted_ids)
    max_padded = numel + E * (block - 1)
    sorted_ids += [numel] * (max_padded - total)
    expert_ids += [0] * (-(-max_padded // block) - len(expert_ids))
    sms = _num_sms(dev)
    args = dict(
        a=a.to(dev), c_or_none=torch.empty(T * k, N, dtype=dtype, device=dev), b_q_weight=b_q, b_bias_or_none=None,
        b_scales=b_s, a_scales=None, global_scale=gscale, b_zeros_or_none=b_z,
        workspace=torch.zeros(sms * 4, dtype=torch.int32, device=dev),
        sorted_token_ids=torch.tensor(sorted_ids, dtype=torch.int32, device=dev),
        expert_ids=torch.tensor(expert_ids, dtype=torch.int32, device=dev),
        num_tokens_past_padded=torch.tensor([total], dtype=torch.int32, device=dev),
        topk_weights=torch.from_numpy(tw).to(dev), moe_block_size=block, top_k=k, mul_topk_weights=True,
        b_type_id=type_id, size_m=T, size_n=N, size_k=K, use_atomic_add=False, use_fp32_reduce=True,
        is_zp_float=False, thread_k=-1, thread_n=-1, blocks_per_sm=-1)
    names = [x.name for x in op.default._schema.arguments]
    out = op(*[args[n] for n in names])
    _sync(dev)
    ref = np.einsum("tk,tjkn->tjn", a.float().numpy().astype(np.float64), w_ref[ids]) * tw[..., None]
    ref = torch.from_numpy(ref.reshape(T * k, N))
    return float((out.double().cpu() - ref).norm() / ref.norm())


def main() -> int:
    print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuda available {torch.cuda.is_available()}")
    dev = torch.device(os.environ.get("MARLIN_SMOKE_DEVICE", "cuda:0"))  # "cpu": dry run with a stand-in op
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            print("FAIL: no CUDA device")
            return 1
        cap = torch.cuda.get_device_capability(dev)
        props = torch.cuda.get_device_properties(dev)
        print(f"device {props.name}, SM{cap[0]}{cap[1]}, {props.multi_processor_count} SMs")
    # --case N runs only case N (one process per case isolates a hung kernel); --list prints them.
    args = sys.argv[1:]
    only = int(args[args.index("--case") + 1]) if "--case" in args else None
    args = [a for i, a in enumerate(args) if a != "--case" and (i == 0 or args[i - 1] != "--case")]
    path = args[0] if args else os.environ.get("MOE_REGISTRY_VLLM_MOE_C")
    ns = torch.ops._moe_C
    if not hasattr(ns, "moe_wna16_marlin_gemm"):
        if not path:
            print("FAIL: give the .so path (argv[1] or $MOE_REGISTRY_VLLM_MOE_C)")
            return 1
        print(f"loading {path} ({os.path.getsize(path) / 1e6:.1f} MB)" if os.path.exists(path) else f"MISSING {path}")
        try:
            torch.ops.load_library(path)
        except Exception as exc:
            print(f"FAIL: load_library: {type(exc).__name__}: {exc}")
            return 1
    if not hasattr(ns, "moe_wna16_marlin_gemm"):
        print("FAIL: library loaded but _moe_C::moe_wna16_marlin_gemm not registered")
        return 1
    op = ns.moe_wna16_marlin_gemm
    print("gemm schema :", op.default._schema)
    names = tuple(x.name for x in op.default._schema.arguments)
    print("  matches vLLM 0.33.0 argument names:", names == EXPECTED_GEMM)
    if hasattr(ns, "moe_align_block_size"):
        sch = ns.moe_align_block_size.default._schema
        print("align schema:", sch)
        print("  matches vLLM 0.33.0 argument names:", tuple(x.name for x in sch.arguments) == EXPECTED_ALIGN)

    ok = True
    cases = [("int4 uint4b8", "sym", g, d) for g in (128, -1, 32, 64) for d in (torch.bfloat16, torch.float16)]
    cases += [("int4 uint4 zp", "zp", g, torch.bfloat16) for g in (128, -1, 32)]
    cases += [("nvfp4", "nvfp4", 16, torch.bfloat16), ("nvfp4", "nvfp4", 16, torch.float16),
              ("mxfp4", "mxfp4", 32, torch.bfloat16)]
    print("\nE=3 K=512 N=256 T=5 top2 block16 mul_topk_weights=True; rel err vs float32 dense")
    for index, (label, kind, group, dtype) in enumerate(cases):
        if only is not None and index != only:
            continue
        tol = 1e-2 if dtype == torch.bfloat16 else 3e-3
        name = f"{label:<14} g{group:<4} {str(dtype)[6:]:<9}"
        try:
            err = run_gemm(op, dev, kind=kind, group=group, dtype=dtype)
            verdict = "PASS" if err <= tol else "FAIL"
            ok &= err <= tol
            print(f"  {name} rel_err={err:.3e} (tol {tol:.0e}) {verdict}")
        except Exception as exc:
            ok = False
            print(f"  {name} ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            traceback.print_exc(limit=2)

    if only is not None:
        print("\nSMOKE", "PASS" if ok else "FAIL")
        return 0 if ok else 1
    if hasattr(ns, "moe_align_block_size"):
        try:
            T, k, E, block = 7, 2, 8, 16
            ids = torch.stack([torch.randperm(E)[:k] for _ in range(T)]).to(torch.int32).to(dev)
            max_padded = T * k + E * (block - 1)
            s = torch.empty(max_padded, dtype=torch.int32, device=dev)
            e_ = torch.empty(-(-max_padded // block), dtype=torch.int32, device=dev)
            n = torch.empty(1, dtype=torch.int32, device=dev)
            ns.moe_align_block_size(ids, E, block, s, e_, n, None)
            _sync(dev)
            counts = torch.bincount(ids.flatten().long(), minlength=E).cpu()
            want_total = int(((counts + block - 1) // block * block).sum())
            valid = s[: int(n[0])].cpu()
            good = int(n[0]) == want_total and sorted(valid[valid < T * k].tolist()) == list(range(T * k))
            ok &= good
            print(f"\nalign op: num_tokens_post_pad={int(n[0])} (want {want_total}), every pair once: {good} "
                  f"-> {'PASS' if good else 'FAIL'}")
        except Exception as exc:
            ok = False
            print(f"\nalign op ERROR {type(exc).__name__}: {exc}")

    try:  # A7: N = 64 has no thread config (thread_n is 128 or 256)
        run_gemm(op, dev, kind="sym", group=128, dtype=torch.bfloat16, N=64)
        print("\nN=64: ran (the adapter's 'non-gated intermediate % 128' rule is stricter than needed)")
    except Exception as exc:
        print(f"\nN=64: refused as expected: {str(exc).splitlines()[0][:200]}")
    print("\nSMOKE", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
