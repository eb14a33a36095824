"""A probe kernel for tests/gpu/test_triton_lowt_moe_gpu.py: the low-T kernels' PTX unpacking of N bytes. Its own
module, imported by the test: importing triton while the suite is collected would decorate the kernels before the
CPU tests set TRITON_INTERPRET (tests/test_triton_fused_moe_cpu.py)."""

from __future__ import annotations

import triton
import triton.language as tl

from moe_registry.backends.triton_lowt_moe.unpack import _unpack


@triton.jit
def unpack_probe(w_ptr, m_ptr, z_ptr, lo_ptr, hi_ptr, FMT: tl.constexpr, PRESCALE: tl.constexpr, F16: tl.constexpr,
                 N: tl.constexpr):
    """The kernels' PTX unpacking of N bytes, each byte's multiplier (and z + magic) for both its nibbles."""
    i = tl.arange(0, N)
    ADT: tl.constexpr = tl.float16 if F16 else tl.bfloat16
    m = tl.load(m_ptr + i)
    z = tl.load(z_ptr + i)
    lo, hi = _unpack(tl.load(w_ptr + i), m, m, z, z, FMT, PRESCALE, ADT, True)
    tl.store(lo_ptr + i, lo)
    tl.store(hi_ptr + i, hi)
