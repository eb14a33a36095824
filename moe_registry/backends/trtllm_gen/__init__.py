"""FlashInfer's TRT-LLM-gen fused-MoE kernels (Blackwell SM100 family), one package for the family.

Declarations (torch-free): ``bf16``, ``fp8`` (per-tensor, per-channel, 128-block), ``fp4`` (NvFP4,
MXFP4 x bf16, MXFP4 x MXFP8), ``mxint4``; what they share is ``_facts``. Adapters (torch):
``*_kernel`` modules on one base (``_adapter``) and one weight-layout module (``_layout``). Not verified
on hardware: TRT-LLM-gen needs SM100 and the project's GPU machines are SM90.
"""

from __future__ import annotations

from moe_registry.registry import hookimpl
from moe_registry.schemas.capability import BackendCapability

from . import bf16, fp4, fp8, mxint4

DECLARATIONS: tuple[BackendCapability, ...] = (fp4.DECLARATION, *fp8.DECLARATIONS, bf16.DECLARATION,
                                               mxint4.DECLARATION)


@hookimpl
def moe_registry_backends() -> list[BackendCapability]:
    return list(DECLARATIONS)
