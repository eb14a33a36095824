"""One K step of the GEMV kernels (``gemv.py``, ``slots.py``): a step's weight tile and scale entries as
loaded from HBM, the activation row in the weights' register layout, the unpacked values with their scales
applied, and the products added elementwise (float32, or in 16-bit pairs: ``_madd``). A step's loads are split
from its arithmetic (``_step_entries`` / ``_step_from``) so that a caller can issue every step's loads first
(``Config.whole``)."""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels import FMT_16BIT, FMT_INT4
from .unpack import _half_entries, _half_values, _unpack


@triton.jit
def _madd(acc, a, b, PAIRS: tl.constexpr, ASM: tl.constexpr):
    """``acc + a * b`` elementwise: in float32, or (PAIRS) in a's 16-bit dtype with one fma per two products
    (``fma.rn.bf16x2`` / ``f16x2``; the interpreter, whose unpacked values are float32, in float32)."""
    if not PAIRS:
        out = acc + a.to(tl.float32) * b.to(tl.float32)
    elif not ASM:
        out = (a.to(tl.float32) * b.to(tl.float32) + acc.to(tl.float32)).to(a.dtype)
    elif a.dtype == tl.float16:
        out = tl.inline_asm_elementwise("fma.rn.f16x2 $0, $1, $2, $3;", "=r,r,r,r", [a, b.to(a.dtype), acc],
                                        dtype=tl.float16, is_pure=True, pack=2)
    else:
        out = tl.inline_asm_elementwise("fma.rn.bf16x2 $0, $1, $2, $3;", "=r,r,r,r", [a, b.to(a.dtype), acc],
                                        dtype=tl.bfloat16, is_pure=True, pack=2)
    return out


@triton.jit
def _w_tile(live, w_ptr_e, s_wn, rows, k0, klen, FMT: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr,
            MASKED: tl.constexpr):
    """The stored weights of one K step (at ``k0``, ``klen`` elements) of ``rows``: ``[BR, BK]`` 16-bit values
    or ``[BR, BK/2]`` bytes of two nibbles; 0 where not ``live`` (a step past the end, a bad expert id)."""
    ok = tl.full([1, 1], 1, tl.int1) & live  # a tensor even where ``live`` is a plain bool
    if FMT == FMT_16BIT:
        k = k0 + tl.arange(0, BK)
        if MASKED:
            ok = (k < k0 + klen)[None, :] & ok
        w = tl.load(w_ptr_e + rows[:, None] * s_wn + k[None, :], mask=ok, other=0.0)
    else:
        i = tl.arange(0, BK // 2)
        if MASKED:
            ok = (i < klen // 2)[None, :] & ok
        w = tl.load(w_ptr_e + rows[:, None] * s_wn + (k0 // 2 + i)[None, :], mask=ok, other=0)
    return w


@triton.jit
def _x_tiles(x_ptr, live, k0, klen, FMT: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, MASKED: tl.constexpr):
    """The activation row at ``x_ptr`` for one K step, loaded per weight row (the same addresses, from L1) so
    that it arrives in the weights' register layout with no shared-memory shuffle: 16-bit weights ``[BR, BK]``
    (twice), 4-bit the halves that meet the low and the high nibbles ``[BR, BK/2]``."""
    ok = tl.full([1, 1], 1, tl.int1) & live
    if FMT == FMT_16BIT:
        k = k0 + tl.arange(0, BK)
        if MASKED:
            ok = (k < k0 + klen)[None, :] & ok
        xlo = tl.load(x_ptr + k[None, :] + tl.zeros((BR, BK), dtype=tl.int32), mask=ok, other=0.0)
        xhi = xlo
    else:
        BKB: tl.constexpr = BK // 2
        i = tl.arange(0, BKB)
        x_ptrs = x_ptr + k0 + i[None, :] + tl.zeros((BR, BKB), dtype=tl.int32)
        if MASKED:
            ok = (i < klen // 2)[None, :] & ok
        xlo = tl.load(x_ptrs, mask=ok, other=0.0)
        xhi = tl.load(x_ptrs + (klen // 2 if MASKED else BKB), mask=ok, other=0.0)
    return xlo, xhi


@triton.jit
def _w_values(w, s_ptr_e, z_ptr_e, rows, s_sn, k0, klen, FMT: tl.constexpr, HAS_ZP: tl.constexpr,
              GROUP: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, ASM: tl.constexpr, MASKED: tl.constexpr):
    """(low, high) nibble values of 4-bit bytes ``w`` (``_w_tile``) with their group scales applied (int4
    pre-scaled: ``(q - z) * s`` rounded once to the layer dtype, as Marlin's dequantization does); 16-bit
    weights as they are (twice)."""
    return _values_from(_with_entries(w, s_ptr_e, z_ptr_e, rows, s_sn, k0, klen, FMT, HAS_ZP, GROUP, BK, MASKED),
                        s_ptr_e, FMT, HAS_ZP, GROUP, BR, BK, ASM, MASKED)


@triton.jit
def _scale_entries_of(s_ptr_e, z_ptr_e, rows, s_sn, k0, klen, FMT: tl.constexpr, HAS_ZP: tl.constexpr,
                      GROUP: tl.constexpr, BK: tl.constexpr, MASKED: tl.constexpr):
    """The scale entries of one K step's two halves (``_half_entries``), as loaded; 4-bit only."""
    BKB: tl.constexpr = BK // 2
    half = klen // 2
    return (_half_entries(s_ptr_e, z_ptr_e, rows, s_sn, k0, half, FMT, GROUP, HAS_ZP, BKB, MASKED),
            _half_entries(s_ptr_e, z_ptr_e, rows, s_sn, k0 + half, half, FMT, GROUP, HAS_ZP, BKB, MASKED))


@triton.jit
def _values_from(loaded, s_ptr_e, FMT: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr, BR: tl.constexpr,
                 BK: tl.constexpr, ASM: tl.constexpr, MASKED: tl.constexpr):
    """``_w_values`` of a step's (weights, low half's scale entries, high half's) as loaded."""
    w = loaded[0]
    if FMT == FMT_16BIT:
        lo = w
        hi = w
    else:
        # int4's multipliers are its scales, in the layer dtype; NvFP4 / MXFP4 unpack to bf16 (unpack.py)
        ADT: tl.constexpr = s_ptr_e.dtype.element_ty if FMT == FMT_INT4 else tl.bfloat16
        BKB: tl.constexpr = BK // 2
        m_lo, z_lo = _half_values(loaded[1], FMT, GROUP, HAS_ZP, ADT, ASM, BR, BKB, MASKED)
        m_hi, z_hi = _half_values(loaded[2], FMT, GROUP, HAS_ZP, ADT, ASM, BR, BKB, MASKED)
        lo, hi = _unpack(w, m_lo, m_hi, z_lo, z_hi, FMT, FMT == FMT_INT4, ADT, ASM)
    return lo, hi


@triton.jit
def _products(acc, lo, hi, xlo, xhi, FMT: tl.constexpr, PAIRS: tl.constexpr, ASM: tl.constexpr):
    """``acc`` plus the elementwise products of one step (4-bit: both nibbles' halves)."""
    acc = _madd(acc, lo, xlo, PAIRS, ASM)
    if FMT != FMT_16BIT:
        acc = _madd(acc, hi, xhi, PAIRS, ASM)
    return acc


@triton.jit
def _gemv_step(acc, x_ptr, live, w_ptr_e, s_wn, rows, s_ptr_e, z_ptr_e, s_sn, k0, klen, FMT: tl.constexpr,
               HAS_ZP: tl.constexpr, GROUP: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, ASM: tl.constexpr,
               MASKED: tl.constexpr, PAIRS: tl.constexpr):
    """``acc`` plus the products of one K step (at ``k0``, ``klen`` elements) of weight ``rows`` with the
    activation row at ``x_ptr``, elementwise (``[BR, BK]`` 16-bit, ``[BR, BK/2]`` 4-bit; float32, or with
    PAIRS in the weights' 16-bit dtype, ``_madd``): the caller sums them once. ``live`` False adds nothing:
    the loads are predicated off and read as 0."""
    if FMT == FMT_16BIT:  # load order as measured on the H100
        xlo, xhi = _x_tiles(x_ptr, live, k0, klen, FMT, BR, BK, MASKED)
        w = _w_tile(live, w_ptr_e, s_wn, rows, k0, klen, FMT, BR, BK, MASKED)
    else:
        w = _w_tile(live, w_ptr_e, s_wn, rows, k0, klen, FMT, BR, BK, MASKED)
        xlo, xhi = _x_tiles(x_ptr, live, k0, klen, FMT, BR, BK, MASKED)
    lo, hi = _w_values(w, s_ptr_e, z_ptr_e, rows, s_sn, k0, klen, FMT, HAS_ZP, GROUP, BR, BK, ASM, MASKED)
    return _products(acc, lo, hi, xlo, xhi, FMT, PAIRS, ASM)


@triton.jit
def _gemv_acc(FMT: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, DT: tl.constexpr = tl.float32):
    W: tl.constexpr = BK if FMT == FMT_16BIT else BK // 2
    return tl.zeros((BR, W), dtype=DT)


@triton.jit
def _pairs_dtype(w_ptr, s_ptr, FMT: tl.constexpr, ASM: tl.constexpr):
    """A zero of the dtype PAIRS multiplies in: the unpacked weights' (16-bit weights as stored, int4 its
    scales', NvFP4 / MXFP4 bf16); float32 on the interpreter, whose unpacked values are float32."""
    DT: tl.constexpr = (tl.float32 if not ASM else w_ptr.dtype.element_ty if FMT == FMT_16BIT
                        else s_ptr.dtype.element_ty if FMT == FMT_INT4 else tl.bfloat16)
    return tl.zeros((1,), dtype=DT)


@triton.jit
def _step_entries(w_ptr_e, s_ptr_e, z_ptr_e, s_wn, s_sn, rows, k0, klen, FMT: tl.constexpr, HAS_ZP: tl.constexpr,
                  GROUP: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, MASKED: tl.constexpr):
    """What one K step of ``rows`` reads from HBM, loaded: (weights, low half's scale entries, high half's)
    as stored (16-bit weights: the weights alone)."""
    w = _w_tile(True, w_ptr_e, s_wn, rows, k0, klen, FMT, BR, BK, MASKED)
    return _with_entries(w, s_ptr_e, z_ptr_e, rows, s_sn, k0, klen, FMT, HAS_ZP, GROUP, BK, MASKED)


@triton.jit
def _with_entries(w, s_ptr_e, z_ptr_e, rows, s_sn, k0, klen, FMT: tl.constexpr, HAS_ZP: tl.constexpr,
                  GROUP: tl.constexpr, BK: tl.constexpr, MASKED: tl.constexpr):
    """``_step_entries`` of a step whose weights ``w`` are loaded already. One return: Triton 3.6 (the GPU
    machine's) rejects a constexpr branch's early return of another type ("Inconsistent return types")."""
    if FMT == FMT_16BIT:
        loaded = (w,)
    else:
        e_lo, e_hi = _scale_entries_of(s_ptr_e, z_ptr_e, rows, s_sn, k0, klen, FMT, HAS_ZP, GROUP, BK, MASKED)
        loaded = (w, e_lo, e_hi)  # type: ignore[assignment]
    return loaded


@triton.jit
def _step_from(acc, loaded, x_ptr, s_ptr_e, k0, klen, FMT: tl.constexpr, HAS_ZP: tl.constexpr, GROUP: tl.constexpr,
               BR: tl.constexpr, BK: tl.constexpr, ASM: tl.constexpr, MASKED: tl.constexpr, PAIRS: tl.constexpr):
    """``_gemv_step`` from what ``_step_entries`` loaded."""
    xlo, xhi = _x_tiles(x_ptr, True, k0, klen, FMT, BR, BK, MASKED)
    lo, hi = _values_from(loaded, s_ptr_e, FMT, HAS_ZP, GROUP, BR, BK, ASM, MASKED)
    return _products(acc, lo, hi, xlo, xhi, FMT, PAIRS, ASM)
