"""Unpacking 4-bit weights next to the dot (used by ``kernels.py``): PTX on the GPU, the same values in
plain Triton for the CPU interpreter (which cannot run PTX). The PTX strings are tested bit for bit by
an emulation of their instructions in tests/test_triton_lowt_moe_cpu.py."""

from __future__ import annotations

import triton
import triton.language as tl

from . import codes as F

FMT_INT4 = tl.constexpr(F.FMT_INT4)
FMT_NVFP4 = tl.constexpr(F.FMT_NVFP4)
FMT_MXFP4 = tl.constexpr(F.FMT_MXFP4)

# --- Unpacking 4-bit bytes ---------------------------------------------------------------------
# Packed weights come in blocks of one K step (``pack_weight``): in a block of L elements starting at
# k0, byte i holds element k0 + i (low nibble) and element k0 + L/2 + i (high nibble), so the two
# nibble tiles meet two contiguous halves of the activations. The PTX below takes four bytes ($4) and
# returns the low-nibble values of bytes 0-3 as two 16-bit pairs ($0: bytes 0, 1; $1: bytes 2, 3) and
# the high-nibble values likewise ($2, $3); Triton keeps it elementwise in the dot operand's register
# layout (the unpacked tile never goes through shared memory). Inputs $5.. are per-byte 16-bit pairs:
# multipliers (or zero points) of the low nibbles ($5, $6), then of the high nibbles ($7, $8), ...

_SPLIT = ["prmt.b32 t, $4, 0, 0x4140;", "prmt.b32 u, $4, 0, 0x4342;"]  # bytes 0, 1 / 2, 3 -> low byte of each half


def _int4_asm(prescale: bool, fp16: bool) -> str:
    """int4 codes -> 16-bit ``q + 128`` (bf16) / ``q + 1024`` (fp16), exact. Pre-scaled:
    ``(q + magic - zc) * s`` with ``zc`` ($5-$8) = ``z + magic`` and ``s`` ($9-$12) the group scale."""
    magic = "0x64006400" if fp16 else "0x43004300"
    kind = "f16x2" if fp16 else "bf16x2"
    lines = ["{", ".reg .b32 t, u, v;", *_SPLIT]
    for out, src, shift in ((0, "t", 0), (1, "u", 0), (2, "t", 4), (3, "u", 4)):
        if shift:
            lines.append(f"shr.u32 {src}, {src}, 4;")
        dst = "v" if prescale else f"${out}"
        lines.append(f"lop3.b32 {dst}, {src}, 0x000f000f, {magic}, 0xea;")
        if prescale:
            lines.append(f"sub.rn.{kind} v, v, ${5 + out};")
            lines.append(f"mul.rn.{kind} ${out}, v, ${9 + out};")
    lines.append("}")
    return "\n".join(lines)


def _e2m1_asm(mx: bool) -> str:
    """e2m1 codes (sign bit 3, magnitude bits 0-2) -> bf16 bits with the sign at 15 and the magnitude at
    6-8: the value times 2^-126 (0.5 becomes the subnormal 2^-127, which mul.bf16x2 takes exactly);
    then times the multiplier ($5-$8): NvFP4 ``e4m3 scale * 2^116`` (the tile holds
    ``value * scale * 2^-10``, exact); MXFP4 times 2^126 first, then ``2^(e - 127)``.
    Each byte goes to the high byte of a 16-bit half (t: bytes 0, 1; u: bytes 2, 3), the rest of the half 0: a
    low nibble's bf16 is then ``(h >> 2 | h << 4) & 0x81c0`` (the two terms never meet inside the mask: one lop3),
    a high nibble's ``h & 0x8000 | (h >> 6) & 0x01c0`` (its sign already at 15, but the low nibble sits under the
    magnitude's field): 3 instructions per two values before the multiply, where shifting and masking sign and
    magnitude apart took 5."""
    lines = ["{", ".reg .b32 t, u, a, b, c;", "prmt.b32 t, $4, 0, 0x1404;", "prmt.b32 u, $4, 0, 0x3424;"]
    if mx:
        lines.append("mov.b32 c, 0x7e807e80;")  # 2^126, 2^126
    for out, src, low in ((0, "t", True), (1, "u", True), (2, "t", False), (3, "u", False)):
        if low:  # lop3 0xa8: (a | b) & c
            lines += [f"shr.u32 a, {src}, 2;", f"shl.b32 b, {src}, 4;", "lop3.b32 a, a, b, 0x81c081c0, 0xa8;"]
        else:  # lop3 0xec: (a & c) | b
            lines += [f"shr.u32 a, {src}, 6;", "and.b32 a, a, 0x01c001c0;", f"lop3.b32 a, {src}, a, 0x80008000, 0xec;"]
        if mx:
            lines.append("mul.rn.bf16x2 a, a, c;")
        lines.append(f"mul.rn.bf16x2 ${out}, a, ${5 + out};")
    lines.append("}")
    return "\n".join(lines)


INT4_ASM = tl.constexpr(_int4_asm(False, False))
INT4_ASM_F16 = tl.constexpr(_int4_asm(False, True))
INT4_PRESCALE_ASM = tl.constexpr(_int4_asm(True, False))
INT4_PRESCALE_ASM_F16 = tl.constexpr(_int4_asm(True, True))
NVFP4_ASM = tl.constexpr(_e2m1_asm(False))
MXFP4_ASM = tl.constexpr(_e2m1_asm(True))
C_PLAIN = tl.constexpr("=r,=r,=r,=r,r")
C_SCALED = tl.constexpr("=r,=r,=r,=r,r,r,r,r,r")
C_ZS = tl.constexpr("=r,=r,=r,=r,r,r,r,r,r,r,r,r,r")
TWO_116 = tl.constexpr(2.0**116)
TWO_M10 = tl.constexpr(2.0**-10)


@triton.jit
def _e2m1_value(nib):
    """float32 value of e2m1 codes (sign bit 3): 0, .5, 1, 1.5, 2, 3, 4, 6."""
    c = nib & 7
    e = c >> 1
    m = (c & 1).to(tl.float32)
    mag = tl.where(e == 0, m * 0.5, (1.0 + m * 0.5) * tl.exp2((e - 1).to(tl.float32)))
    return tl.where((nib & 8) != 0, -mag, mag)


@triton.jit
def _unpack(w, m_lo, m_hi, z_lo, z_hi, FMT: tl.constexpr, PRESCALE: tl.constexpr, ADT: tl.constexpr,
            ASM: tl.constexpr):
    """(low-nibble values, high-nibble values) of the bytes ``w [BN, BKB]`` as dot operands of dtype ADT.
    ``m_*``: per-byte multipliers as ``_half_multipliers`` makes them; ``z_*``: pre-scaled int4 ``z + magic``.
    ASM: the PTX path (GPU); otherwise the same values in plain Triton and float32 (the interpreter, which
    cannot run PTX, and multiplies in float32 anyway)."""
    if ASM:
        if FMT == FMT_INT4:
            if PRESCALE:
                if ADT == tl.float16:
                    lo, hi = tl.inline_asm_elementwise(INT4_PRESCALE_ASM_F16, C_ZS, [w, z_lo, z_hi, m_lo, m_hi],
                                                       dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
                else:
                    lo, hi = tl.inline_asm_elementwise(INT4_PRESCALE_ASM, C_ZS, [w, z_lo, z_hi, m_lo, m_hi],
                                                       dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
            elif ADT == tl.float16:
                lo, hi = tl.inline_asm_elementwise(INT4_ASM_F16, C_PLAIN, [w], dtype=(tl.float16, tl.float16),
                                                   is_pure=True, pack=4)
            else:
                lo, hi = tl.inline_asm_elementwise(INT4_ASM, C_PLAIN, [w], dtype=(tl.bfloat16, tl.bfloat16),
                                                   is_pure=True, pack=4)
        elif FMT == FMT_NVFP4:
            lo, hi = tl.inline_asm_elementwise(NVFP4_ASM, C_SCALED, [w, m_lo, m_hi], dtype=(tl.bfloat16, tl.bfloat16),
                                               is_pure=True, pack=4)
        else:
            lo, hi = tl.inline_asm_elementwise(MXFP4_ASM, C_SCALED, [w, m_lo, m_hi], dtype=(tl.bfloat16, tl.bfloat16),
                                               is_pure=True, pack=4)
    else:
        wi = w.to(tl.int32)
        nl = wi & 0xF
        nh = (wi >> 4) & 0xF
        if FMT == FMT_INT4:
            magic = 1024.0 if ADT == tl.float16 else 128.0
            lo = nl.to(tl.float32) + magic
            hi = nh.to(tl.float32) + magic
            if PRESCALE:
                lo = (lo - z_lo.to(tl.float32)) * m_lo.to(tl.float32)
                hi = (hi - z_hi.to(tl.float32)) * m_hi.to(tl.float32)
        else:
            lo = _e2m1_value(nl) * m_lo
            hi = _e2m1_value(nh) * m_hi
        # Left in float32: the interpreter's float32 -> bf16 cast truncates (the GPU's rounds to nearest).
    return lo, hi


@triton.jit
def _scale_entries(s_ptr_e, z_ptr_e, ptrs, mask, FMT: tl.constexpr, HAS_ZP: tl.constexpr, MASKED: tl.constexpr):
    """The stored scale entries at ``ptrs`` and (int4 with zero points) the zero points' (else the scales again),
    as loaded: converted by ``_from_entries``."""
    other = 127 if FMT == FMT_MXFP4 else 0  # a masked MXFP4 entry reads as 2^0
    if MASKED:
        raw = tl.load(s_ptr_e + ptrs, mask=mask, other=other)
    else:
        raw = tl.load(s_ptr_e + ptrs)
    zq = raw
    if FMT == FMT_INT4 and HAS_ZP:
        if MASKED:
            zq = tl.load(z_ptr_e + ptrs, mask=mask, other=0)
        else:
            zq = tl.load(z_ptr_e + ptrs)
    return raw, zq


@triton.jit
def _from_entries(raw, zq, FMT: tl.constexpr, HAS_ZP: tl.constexpr, ADT: tl.constexpr, ASM: tl.constexpr):
    """(multiplier, z + magic) of stored scale entries (``_scale_entries``): NvFP4 ``e4m3 * 2^116`` (ASM, bf16)
    or ``e4m3 * 2^-10`` (float32); MXFP4 ``2^(e - 127)``; int4 the scale and ``z + magic`` in ADT."""
    if FMT == FMT_NVFP4:
        v = raw.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        if ASM:
            m = (v * TWO_116).to(tl.bfloat16)
        else:
            m = v * TWO_M10
        z = m
    elif FMT == FMT_MXFP4:
        e = raw.to(tl.int32)
        if ASM:
            m = (e << 7).to(tl.int16).to(tl.bfloat16, bitcast=True)  # 2^(e - 127); e = 0 (2^-127) reads as 0
        else:
            m = (e << 23).to(tl.float32, bitcast=True)
        z = m
    else:
        ZMAGIC: tl.constexpr = 1024.0 if ADT == tl.float16 else 128.0
        m = raw.to(ADT)
        if HAS_ZP:
            z = (zq.to(tl.float32) + ZMAGIC).to(ADT)
        else:
            z = (tl.zeros_like(m.to(tl.float32)) + (ZMAGIC + 8.0)).to(ADT)
    return m, z


@triton.jit
def _half_entries(s_ptr_e, z_ptr_e, rows, s_sn, k_first, klen, FMT: tl.constexpr, GROUP: tl.constexpr,
                  HAS_ZP: tl.constexpr, BKB: tl.constexpr, MASKED: tl.constexpr):
    """The stored scale (and zero point) entries for the elements ``k_first + i`` of ``rows``, as loaded
    (``_half_values`` converts them). Whole groups (the main loop): each group's entry once, ``[BN, groups]``;
    the masked tail step per element (``i < klen``), ``[BN, BKB]``."""
    if MASKED:
        i = tl.arange(0, BKB)
        ok = i < klen
        ptrs = rows[:, None] * s_sn + ((k_first + tl.where(ok, i, 0)) // GROUP)[None, :]
        return _scale_entries(s_ptr_e, z_ptr_e, ptrs, ok[None, :], FMT, HAS_ZP, True)
    else:
        GB: tl.constexpr = GROUP if GROUP < BKB else BKB  # elements (bytes) of one group in the half
        g = k_first // GROUP + tl.arange(0, BKB // GB)
        return _scale_entries(s_ptr_e, z_ptr_e, rows[:, None] * s_sn + g[None, :], None, FMT, HAS_ZP, False)


@triton.jit
def _half_values(entries, FMT: tl.constexpr, GROUP: tl.constexpr, HAS_ZP: tl.constexpr, ADT: tl.constexpr,
                 ASM: tl.constexpr, BN: tl.constexpr, BKB: tl.constexpr, MASKED: tl.constexpr):
    """Per-byte (multiplier, z + magic) ``[BN, BKB]`` of ``_half_entries``: whole groups converted once per
    group, then broadcast in registers."""
    m, z = _from_entries(entries[0], entries[1], FMT, HAS_ZP, ADT, ASM)
    if not MASKED:
        GB: tl.constexpr = GROUP if GROUP < BKB else BKB
        NG: tl.constexpr = BKB // GB
        m = tl.reshape(tl.broadcast_to(m[:, :, None], (BN, NG, GB)), (BN, BKB))
        z = tl.reshape(tl.broadcast_to(z[:, :, None], (BN, NG, GB)), (BN, BKB))
    return m, z


@triton.jit
def _half_multipliers(s_ptr_e, z_ptr_e, rows, s_sn, k_first, klen, FMT: tl.constexpr, GROUP: tl.constexpr,
                      HAS_ZP: tl.constexpr, ADT: tl.constexpr, ASM: tl.constexpr, BN: tl.constexpr,
                      BKB: tl.constexpr, MASKED: tl.constexpr):
    """Per-byte (multiplier, z + magic) ``[BN, BKB]`` for the elements ``k_first + i`` of ``rows``
    (``_half_entries``, then ``_half_values``)."""
    entries = _half_entries(s_ptr_e, z_ptr_e, rows, s_sn, k_first, klen, FMT, GROUP, HAS_ZP, BKB, MASKED)
    return _half_values(entries, FMT, GROUP, HAS_ZP, ADT, ASM, BN, BKB, MASKED)
