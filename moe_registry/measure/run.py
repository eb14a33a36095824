"""`moe-registry run`: one layer of a preset, at its real shape, on this machine.

Builds random weights of the layer's shape (quantized like the checkpoint), selects a backend for
this machine, runs it, and reports the backend, the time per forward and the error against the
reference backend on the same (dequantized) weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..planner import plan_model
from ..schemas.layer import LayerSpec, RoutingMethod
from . import timing

# Routers that need checkpoint tensors (DeepSeek's correction bias, Gemma 4's per-expert scale)
# are replaced by softmax top-k renormalised: the experts' kernel sees the same kind of input.
_SELF_CONTAINED = {RoutingMethod.SOFTMAX_TOPK, RoutingMethod.TOPK_SOFTMAX, RoutingMethod.SOFTMAX_TOPK_RENORM,
                   RoutingMethod.LLAMA4, RoutingMethod.SIGMOID, RoutingMethod.SIGMOID_RENORM}


def forward_flop_per_token(spec: Any) -> float:
    """The experts' GEMM work of one token of ``spec`` (both GEMMs, every chosen expert), twice:
    the backend's forward and the reference's."""
    return 2 * 2.0 * spec.top_k * spec.hidden_size * (spec.gemm1_rows + spec.local_intermediate_size)


def host_bytes_estimate(spec: LayerSpec) -> int:
    """About the memory one `run` of this layer takes: its random fp32 weights before quantizing, the
    reference's fp32 copy and the backend's own copy (Gemma 4 NvFP4, E128 H2816 I704: 9.14 GB by this
    rule, 9.6 GB measured on a CPU)."""
    return 3 * spec.expert_weight_bytes(held_bits=32)


def run_preset_layer(preset: str, *, layer: int = 0, tokens: int = 64, torch_device: str | None = None, seed: int = 0,
                     force: str | None = None, quant: str | None = None, repeats: int = 20,
                     policy: Any = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    # Bounds first, torch-free: a refused run costs no torch import and builds nothing.
    timing.check_run_size(tokens, repeats)
    plan = plan_model(preset, quant=quant, select=False)
    by_index = {lp.layer.index: lp.layer for lp in plan.layers if lp.layer.index is not None}
    if layer not in by_index:
        moe = sorted(by_index)
        raise ValueError(f"layer {layer} of {plan.model} is not an MoE layer; MoE layers: "
                         f"{moe[0]}-{moe[-1]} ({len(moe)})" if moe else f"{plan.model} has no MoE layers")
    spec = by_index[layer]
    flop = forward_flop_per_token(spec)
    if torch_device == "cpu":
        timing.check_run_size(tokens, repeats, flop_per_token=flop, cpu=True)
    import torch

    from ..backends.reference.kernel import ReferenceExperts
    from ..execution import build_experts, random_weights, route
    from ..selection import select_backend

    dev = timing.torch_device(torch_device)
    timing.check_run_size(tokens, repeats, flop_per_token=flop, cpu=dev.type == "cpu")
    say = progress or (lambda line: None)
    from ..memory import gb

    say(f"{spec.name}: about {gb(host_bytes_estimate(spec))} of {'host' if dev.type == 'cpu' else 'device'} memory "
        f"(fp32 weights, the reference's copy and the backend's)")

    # Select for this machine (device=None: detected, packages checked); a CPU run on a GPU
    # machine plans for the CPU instead.
    from ..environment import detect_device as detect

    target = "cpu" if dev.type == "cpu" and detect().vendor != "cpu" else None
    selection = select_backend(spec, target, force=force, policy=policy)
    say(f"backend {selection.backend} ({selection.decided_by}); building random weights on {dev.type}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    weights = random_weights(spec, device=dev, seed=seed)
    hidden = torch.randn(tokens, spec.hidden_size, generator=generator).to(dev, torch.bfloat16)
    logits = torch.randn(tokens, spec.num_experts, generator=generator).to(dev)
    method = spec.routing if spec.routing in _SELF_CONTAINED else RoutingMethod.SOFTMAX_TOPK_RENORM
    topk_weights, topk_ids = route(logits, spec, method=method)

    experts = build_experts(selection, weights)
    reference = ReferenceExperts(spec, weights)
    say(f"first forward of {tokens} tokens (a JIT compile may run now), then {repeats} timed")
    t_first = time.perf_counter()
    out = experts(hidden, topk_weights, topk_ids)  # warm-up (and first-use setup, e.g. a JIT compile)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t_first = time.perf_counter() - t_first
    # The first call above was the warm-up; exactly ``repeats`` timed calls follow.
    timed = timing.time_calls(lambda: experts(hidden, topk_weights, topk_ids), [()], dev, warmup=0,
                              max_reps=repeats, budget_s=None)
    say("reference forward (fp32) to compare")
    ref = reference(hidden, topk_weights, topk_ids).float()
    diff = (out.float() - ref)
    rel = (diff.norm() / ref.norm().clamp_min(1e-30)).item()
    return {
        "model": plan.model, "layer": spec.name, "tokens": tokens,
        "shape": (f"E={spec.num_experts} top{spec.top_k} H={spec.hidden_size} I={spec.intermediate_size} "
                  f"{spec.activation.value} {spec.quant.label()} {spec.dtype}"), "parallel": "unsharded (one process)",
        "device": (str(torch.device(torch_device)) if torch_device else dev.type)
                  + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        "backend": selection.backend, "decided_by": selection.decided_by, "fingerprint": selection.fingerprint,
        # Which kernel serves decode (T <= 64, graphed) and which serves prefill: one backend for both unless
        # a measured policy (--costs) chose per phase.
        **{f"serves_{phase}": backend for phase, backend in _serves(selection).items()},
        "routing": method.value + ("" if method == spec.routing
                                   else f" (stand-in for {spec.routing.value if spec.routing else 'unknown'})"),
        "median_us": round(timed.median_us, 2), "p10_us": round(timed.p10_us, 2), "p90_us": round(timed.p90_us, 2),
        "repeats": repeats,
        "rel_error_vs_reference": float(f"{rel:.3e}"),
        "max_abs_error_vs_reference": float(f"{diff.abs().max().item():.3e}"),
        "first_call_s": round(t_first, 3),
        "notes": [n.message for n in selection.notes] + (
            [f"the first forward took {t_first:.2f} s (kernel JIT compile or first-use setup included; "
             f"the median excludes it)"] if t_first > 1.0 else [])
        + ([timing.noise_warning(1, 1)] if timing.noisy(timed.p10_us, timed.p90_us) else []),
    }


def _serves(selection: Any) -> dict[str, str]:
    by_phase = {p.phase: p.backend for p in selection.phases}
    return {phase: by_phase.get(phase, selection.backend) for phase in ("decode", "prefill")}
