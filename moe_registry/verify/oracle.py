"""The probe's oracles and bounds: the tolerance per (backend, scheme), the float64 dense oracle the
reference backend is held to, and the comparison of a backend's output with the oracle's.

Imports no torch at module level (the planner reads the tolerances); the oracle and the comparison
import it when called, in the worker.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..schemas.capability import BackendCapability
    from ..schemas.layer import LayerSpec


# --- Tolerances ---------------------------------------------------------------------------------
# Metric: ||out - ref|| / ||ref|| over the whole [T, H] output, in float32 (max |out - ref| is kept
# too). The oracle runs on the *same* (dequantized) weights, so weight quantization error cancels;
# what is left is the arithmetic the backend does differently.
#
# 16-bit activations: bf16 output rounding (relative 2^-9 per element) plus a bf16 round of the
# activation between the GEMMs (another ~2^-9 relative, amplified by at most the GEMM2 fan-in's
# cancellation) gives ~5e-3 in practice; 2e-2 leaves 4x headroom and still rejects a wrong
# activation family (silu for gelu), swapped gate/up halves, a dropped expert or a lost router
# weight, all O(1) relative. It cannot tell gelu from gelu_tanh (|difference| <= 4.7e-4, ~1e-4
# relative at the layer output): no bf16 bound can, which is why declarations state fidelity.
TOL_16BIT = 2e-2
# W8A8 (fp8 e4m3 activations, 3 mantissa bits: ~2^-4 relative per element before accumulation
# averages it down) and MXFP8 activations (e4m3 values with power-of-two block scales): ~3-6e-2.
TOL_FP8 = 1e-1
# NvFP4 W4A4: activations in e2m1 with e4m3 block scales; FlashInfer's test_moe_nvfp4 accepts 2e-1.
TOL_FP4 = 2e-1
_SIXTEEN_BIT = {"bf16", "fp16", "16-bit"}


def tolerance_for(decl: BackendCapability, layer: LayerSpec) -> tuple[float, str]:
    """The bound for (backend, scheme), from the declaration: a scheme the backend runs with 16-bit
    activations (weight-only, or a QuantSupport dequantized at load) gets the tight bound; otherwise
    the bound of the scheme's activation format (an undeclared scheme may quantize activations)."""
    scheme = layer.quant
    fmt = scheme.activation_format
    if fmt in _SIXTEEN_BIT:
        return TOL_16BIT, "16-bit activations"
    if any(s.dequantized_at_load for s in decl.quant_support(scheme.kind)):
        return TOL_16BIT, "dequantized at load: 16-bit activations"
    if fmt == "nvfp4":
        return TOL_FP4, "NvFP4 activations (W4A4)"
    return TOL_FP8, f"{fmt} activations"


# --- The float64 oracle (for the reference backend itself) ----------------------------------------


def _act64(h: Any, layer: Any) -> Any:
    """Every activation from its definition, in float64 (shares no code with execution.activations)."""
    import torch

    from moe_registry.schemas.activation import Activation

    act = layer.activation
    if act is Activation.SWIGLUOAI:
        p = layer.swigluoai
        n = h.shape[-1] // 2
        gate, up = (h[..., 0::2], h[..., 1::2]) if p.interleaved else (h[..., :n], h[..., n:])
        if p.limit is not None:
            gate = torch.minimum(gate, torch.full_like(gate, p.limit))
            up = torch.maximum(torch.minimum(up, torch.full_like(up, p.limit)), torch.full_like(up, -p.limit))
        return (up + p.up_offset) * gate / (1 + torch.exp(-p.alpha * gate))

    def silu(g: Any) -> Any:
        return g / (1 + torch.exp(-g))

    if act is Activation.SILU_CLAMP:
        n, limit = h.shape[-1] // 2, layer.silu_clamp_limit
        gate, up = h[..., :n], h[..., n:]
        gate = torch.minimum(gate, torch.full_like(gate, limit))
        up = torch.maximum(torch.minimum(up, torch.full_like(up, limit)), torch.full_like(up, -limit))
        return silu(gate) * up

    def gelu(g: Any) -> Any:
        return 0.5 * g * (1 + torch.special.erf(g / math.sqrt(2)))

    def gelu_tanh(g: Any) -> Any:
        return 0.5 * g * (1 + torch.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3)))

    def relu2(g: Any) -> Any:
        return torch.where(g > 0, g * g, torch.zeros_like(g))

    fn = {Activation.SILU: silu, Activation.GELU: gelu, Activation.GELU_TANH: gelu_tanh,
          Activation.SILU_NO_MUL: silu, Activation.GELU_NO_MUL: gelu, Activation.GELU_TANH_NO_MUL: gelu_tanh,
          Activation.RELU2_NO_MUL: relu2}[act]
    if not act.is_gated:
        return fn(h)
    n = h.shape[-1] // 2
    return fn(h[..., :n]) * h[..., n:]


def dense_oracle(layer: Any, weights: Any, x: Any, topk_weights: Any, topk_ids: Any) -> Any:
    """Every expert for every (token, slot) pair with dense einsums, combined through a one-hot
    ``[T, k, E]`` matrix; float64 throughout, on the dequantized weights. Returns ``[T, H]`` float64."""
    import torch

    d = torch.float64
    plain = weights.dequantized(torch.float32)
    w13, w2 = plain.w13.to(d), plain.w2.to(d)
    n_exp = w2.shape[0]
    X, S = x.to(d), topk_weights.to(d)
    T, k = topk_ids.shape
    onehot = torch.nn.functional.one_hot(topk_ids.long(), n_exp).to(d)  # [T, k, E]
    if layer.apply_router_weight_on_input:
        xin, scale = S[..., None] * X[:, None, :], torch.ones_like(S)
    else:
        xin, scale = X[:, None, :].expand(T, k, X.shape[1]), S
    h = torch.einsum("tjh,erh->tjer", xin, w13)
    if plain.w13_bias is not None:
        h = h + plain.w13_bias.to(d)
    y = torch.einsum("tjei,ehi->tjeh", _act64(h, layer), w2)
    if plain.w2_bias is not None:
        y = y + plain.w2_bias.to(d)
    return torch.einsum("tje,tj,tjeh->th", onehot, scale, y)


def compare(out: Any, ref: Any, layer: Any, tokens: int, tolerance: float) -> dict[str, Any]:
    """A backend's output against the oracle's: ``passed`` within ``tolerance`` (relative error in
    float32), ``wrong`` for another shape or dtype, non-finite values, or a larger error."""
    import torch

    from moe_registry.execution.weights import torch_dtype

    expected = (tokens, layer.hidden_size)
    if not isinstance(out, torch.Tensor):
        return {"status": "wrong", "message": f"forward returned a {type(out).__name__}, not a tensor"}
    if tuple(out.shape) != expected:
        return {"status": "wrong", "message": f"output shape {list(out.shape)}, expected {list(expected)}"}
    if out.dtype != torch_dtype(layer):
        return {"status": "wrong", "message": f"output dtype {out.dtype}, expected {torch_dtype(layer)} (layer dtype)"}
    out32, ref32 = out.float(), ref.float()
    if not bool(torch.isfinite(out32).all()):
        bad = int((~torch.isfinite(out32)).sum())
        return {"status": "wrong", "message": f"non-finite output ({bad} NaN/inf values)", "rel_error": None}
    diff = out32 - ref32
    denom = float(ref32.norm())
    rel = float(diff.norm()) / denom if denom > 0 else float(diff.norm())
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    result = {"rel_error": rel, "max_abs_error": max_abs}
    if rel <= tolerance:
        return {"status": "passed", **result}
    return {"status": "wrong", "message": f"relative error {rel:.3g} > tolerance {tolerance:g}", **result}
