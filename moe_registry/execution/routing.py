"""Router logits -> (top-k weights, expert ids) for every ``RoutingMethod``, in float32.

Names and semantics follow FlashInfer / TensorRT-LLM ``RoutingMethodType`` (TRT-LLM
``_torch/modules/fused_moe/routing.py``); DeepSeek-V3 follows transformers ``modeling_deepseek_v3.py``
``DeepseekV3TopkRouter``, Llama-4 transformers ``Llama4Router``. The ids are global expert ids in
``[0, E)`` over all ``layer.num_experts`` experts.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..schemas.layer import LayerSpec, RoutingMethod

# TRT-LLM's and transformers' renormalisation epsilon: keeps a zero sum finite, invisible otherwise.
_RENORM_EPS = 1e-20

# When neither the call nor the layer names a method: softmax -> top-k -> renormalise, the
# routing of Mixtral and Qwen3 and the one FlashInfer's CUTLASS tests use as their reference
# (flashinfer-moe-api.md section 5). A layer from a model config should name its method.
DEFAULT_ROUTING = RoutingMethod.SOFTMAX_TOPK_RENORM

# Whether each method renormalises the chosen weights; None: the caller decides (DeepSeek's
# norm_topk_prob). A fixed method refuses a contradicting ``renormalize`` instead of ignoring it.
_RENORMALIZES: dict[RoutingMethod, bool | None] = {
    RoutingMethod.SOFTMAX_TOPK: False,
    RoutingMethod.TOPK_SOFTMAX: True,  # a softmax over the k sums to 1 by construction
    RoutingMethod.SOFTMAX_TOPK_RENORM: True,
    RoutingMethod.DEEPSEEK_V3: None,
    RoutingMethod.LLAMA4: False,
    RoutingMethod.SIGMOID_RENORM: True,
    RoutingMethod.SIGMOID: False,
    RoutingMethod.MINIMAX2: True,
}
_BIASED = {RoutingMethod.DEEPSEEK_V3, RoutingMethod.MINIMAX2}  # take a selection-only correction bias
_SCALED = {RoutingMethod.DEEPSEEK_V3, RoutingMethod.MINIMAX2}  # take routed_scaling_factor


def _renorm(w: torch.Tensor) -> torch.Tensor:
    return w / (w.sum(dim=-1, keepdim=True) + _RENORM_EPS)


def _deepseek_v3_ids(scores: torch.Tensor, bias: torch.Tensor, top_k: int, n_group: int,
                     topk_group: int) -> torch.Tensor:
    """Group-limited selection on ``sigmoid + bias``: rank groups by the sum of their two best
    biased scores, keep ``topk_group`` groups, take the top-k experts inside them."""
    T, E = scores.shape
    biased = scores + bias
    if n_group > 1:
        groups = biased.view(T, n_group, E // n_group)
        group_scores = groups.topk(2, dim=-1).values.sum(dim=-1)  # [T, n_group]
        keep = group_scores.topk(topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        # -inf, as TRT-LLM does: transformers fills 0.0, which differs only when a kept
        # expert's biased score is negative, and then would pick an expert of a dropped group.
        biased = groups.masked_fill(~group_mask.unsqueeze(-1), float("-inf")).view(T, E)
    return biased.topk(top_k, dim=-1).indices


def route(router_logits: torch.Tensor, layer: LayerSpec, *, method: RoutingMethod | str | None = None,
          correction_bias: torch.Tensor | None = None, n_group: int | None = None,
          topk_group: int | None = None, routed_scaling_factor: float = 1.0,
          renormalize: bool | None = None,
          custom: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] | None = None,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``router_logits [T, E]`` -> ``(topk_weights [T, k] float32, topk_ids [T, k] int32)``.

    ``method`` defaults to ``layer.routing``, then to ``DEFAULT_ROUTING`` (softmax_topk_renorm).
    ``correction_bias [E]`` (DeepSeek ``e_score_correction_bias``; deepseek_v3 and minimax2 only)
    shifts selection but never the weights. ``n_group`` / ``topk_group`` (deepseek_v3; default 1 /
    1, no group limit). ``routed_scaling_factor`` multiplies the final weights (deepseek_v3 and
    minimax2; 2.5 for DeepSeek-V3). ``renormalize``: None keeps the method's definition; for
    deepseek_v3 it is ``norm_topk_prob`` (default True); other methods refuse a contradicting value.
    ``custom(logits, top_k) -> (weights, ids)`` for ``RoutingMethod.CUSTOM``.
    """
    if not isinstance(layer, LayerSpec):
        raise ValueError(f"route needs a LayerSpec, got {type(layer).__name__}")
    if not isinstance(router_logits, torch.Tensor):
        raise ValueError(f"router_logits: expected a torch.Tensor [T, {layer.num_experts}], "
                         f"got {type(router_logits).__name__}")
    if method is None:
        method = layer.routing or DEFAULT_ROUTING
    elif not isinstance(method, RoutingMethod):
        try:
            method = RoutingMethod(method)
        except ValueError:
            valid = ", ".join(m.value for m in RoutingMethod)
            raise ValueError(f"unknown routing method {method!r}; valid: {valid}") from None
    k, E = layer.top_k, layer.num_experts
    if router_logits.dim() != 2 or router_logits.shape[1] != E:
        raise ValueError(f"router_logits: expected shape [T, {E}] (all experts of the layer), "
                         f"got {list(router_logits.shape)}")
    if not router_logits.is_floating_point():
        raise ValueError(f"router_logits: expected a floating dtype, got {router_logits.dtype}")
    if router_logits.device.type == "cpu" and not bool(
            torch.isfinite(torch.Tensor.as_subclass(router_logits, torch.Tensor)).all()):  # a GPU check would sync
        raise ValueError("router_logits: expected finite values, got NaN or infinity")
    _check_params(method, correction_bias, n_group, topk_group, routed_scaling_factor, renormalize, custom, E, k)
    logits = router_logits.float()

    if method is RoutingMethod.CUSTOM:
        assert custom is not None  # _check_params refused a missing one
        return _custom(custom, logits, k)
    if method is RoutingMethod.SOFTMAX_TOPK:
        weights, ids = logits.softmax(dim=-1).topk(k, dim=-1)
    elif method is RoutingMethod.TOPK_SOFTMAX:  # gpt-oss GptOssTopKRouter
        values, ids = logits.topk(k, dim=-1)
        weights = values.softmax(dim=-1)
    elif method is RoutingMethod.SOFTMAX_TOPK_RENORM:
        weights, ids = logits.softmax(dim=-1).topk(k, dim=-1)
        weights = _renorm(weights)
    elif method is RoutingMethod.LLAMA4:
        # Llama4Router: top-k on the raw logits, then sigmoid of the chosen logits (no renorm).
        values, ids = logits.topk(k, dim=-1)
        weights = torch.sigmoid(values)
    elif method in (RoutingMethod.SIGMOID, RoutingMethod.SIGMOID_RENORM):
        weights, ids = torch.sigmoid(logits).topk(k, dim=-1)
        if method is RoutingMethod.SIGMOID_RENORM:
            weights = _renorm(weights)
    elif method in (RoutingMethod.DEEPSEEK_V3, RoutingMethod.MINIMAX2):
        # Both: sigmoid scores; selection on scores + bias; weights are the *unbiased* scores of
        # the chosen experts, renormalised, times the scaling factor. MiniMax2 is the
        # single-group case (TRT-LLM MiniMaxM2MoeRoutingMethod: "Sigmoid -> RoutingBiasAdd ->
        # TopK -> Renormalize(without bias)").
        scores = torch.sigmoid(logits)
        bias = (torch.zeros(E, device=logits.device) if correction_bias is None
                else correction_bias.to(logits.device, torch.float32))
        if method is RoutingMethod.DEEPSEEK_V3:
            ids = _deepseek_v3_ids(scores, bias, k, n_group or 1, topk_group or 1)
        else:
            ids = (scores + bias).topk(k, dim=-1).indices
        weights = scores.gather(1, ids)
        if renormalize is not False:
            weights = _renorm(weights)
        weights = weights * routed_scaling_factor
    else:  # pragma: no cover - every enum member is handled above
        raise NotImplementedError(f"routing method {method.value!r} has no reference implementation")
    return weights.float().contiguous(), ids.to(torch.int32).contiguous()


# Engines use 1.0 to 16 (DeepSeek-V3 2.5); a bound keeps the weights finite.
MAX_ROUTED_SCALING = 1e4


def _check_params(method: RoutingMethod, correction_bias: torch.Tensor | None, n_group: int | None,
                  topk_group: int | None, routed_scaling_factor: float, renormalize: bool | None,
                  custom: object, E: int, top_k: int) -> None:
    """Refuse parameters the method would otherwise silently ignore."""
    name = method.value
    if (isinstance(routed_scaling_factor, bool) or not isinstance(routed_scaling_factor, (int, float))
            or not 0 < routed_scaling_factor <= MAX_ROUTED_SCALING):  # False for NaN and inf too
        raise ValueError(f"routed_scaling_factor must be a number in (0, {MAX_ROUTED_SCALING:g}], "
                         f"got {routed_scaling_factor!r}")
    for name, value in (("n_group", n_group), ("topk_group", topk_group)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be an integer or None, got {value!r}")
    if method is RoutingMethod.CUSTOM:
        if custom is None or not callable(custom):
            raise ValueError("routing method custom needs custom=callable(logits, top_k) -> (weights, ids)")
    elif custom is not None:
        raise ValueError(f"custom= is only used by routing method custom, not {name}")
    fixed = _RENORMALIZES.get(method)
    if renormalize is not None and fixed is not None and renormalize != fixed:
        alt = {RoutingMethod.SOFTMAX_TOPK: "softmax_topk_renorm", RoutingMethod.SOFTMAX_TOPK_RENORM: "softmax_topk",
               RoutingMethod.SIGMOID: "sigmoid_renorm", RoutingMethod.SIGMOID_RENORM: "sigmoid"}.get(method)
        hint = f"; use {alt}" if alt else ""
        raise ValueError(f"routing method {name} {'always' if fixed else 'never'} renormalises, "
                         f"got renormalize={renormalize}{hint}")
    if method is RoutingMethod.CUSTOM and renormalize is not None:
        raise ValueError("renormalize= does not apply to routing method custom (the callable decides)")
    if correction_bias is not None:
        if method not in _BIASED:
            raise ValueError(f"correction_bias is used by deepseek_v3 and minimax2 only, not {name}")
        if not isinstance(correction_bias, torch.Tensor) or not correction_bias.is_floating_point():
            raise ValueError(f"correction_bias: expected a floating torch.Tensor [{E}], "
                             f"got {getattr(correction_bias, 'dtype', type(correction_bias).__name__)}")
        if tuple(correction_bias.shape) != (E,):
            raise ValueError(f"correction_bias: expected shape [{E}], got {list(correction_bias.shape)}")
        # A NaN bias would send every token to the same experts with finite weights (issue 23).
        if not bool(torch.isfinite(torch.Tensor.as_subclass(correction_bias, torch.Tensor)).all()):
            raise ValueError("correction_bias: expected finite values, got NaN or infinity")
    if routed_scaling_factor != 1.0 and method not in _SCALED:
        raise ValueError(f"routed_scaling_factor is used by deepseek_v3 and minimax2 only, not {name}")
    if method is not RoutingMethod.DEEPSEEK_V3:
        if n_group is not None or topk_group is not None:
            raise ValueError(f"n_group / topk_group are used by deepseek_v3 only, not {name}")
        return
    groups = 1 if n_group is None else n_group  # 0 is an error, not "unset"
    keep = 1 if topk_group is None else topk_group
    if groups < 1 or E % groups:
        raise ValueError(f"deepseek_v3: n_group={groups} must divide the {E} experts")
    if not 1 <= keep <= groups:
        raise ValueError(f"deepseek_v3: topk_group={keep} must be in [1, n_group={groups}]")
    if groups > 1 and E // groups < 2:
        raise ValueError(f"deepseek_v3: groups score their top-2 experts, so need >= 2 experts per group, "
                         f"got {E // groups}")
    if keep * (E // groups) < top_k:
        raise ValueError(f"deepseek_v3: topk_group={keep} groups of {E // groups} experts cannot hold top_k={top_k}")


def _custom(fn: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]], logits: torch.Tensor,
            k: int) -> tuple[torch.Tensor, torch.Tensor]:
    weights, ids = fn(logits, k)
    T = logits.shape[0]
    for name, t in (("weights", weights), ("ids", ids)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (T, k):
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"custom routing {name}: expected shape [{T}, {k}], got {got}")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"custom routing ids: expected an integer dtype, got {ids.dtype}")
    if ids.numel():
        lo, hi = torch.stack([ids.min(), ids.max()]).tolist()  # one device sync
        if lo < 0 or hi >= logits.shape[1]:
            raise ValueError(f"custom routing ids: expected values in [0, {logits.shape[1]}), got min {lo} max {hi}")
    return weights.float().contiguous(), ids.to(torch.int32).contiguous()
