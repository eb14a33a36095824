"""What vLLM knows about one MoE layer when it picks the layer's kernel, as plain data, and the same
layer as our :class:`~moe_registry.schemas.layer.LayerSpec` (so the registry answers the question vLLM
answered, through the same ``select_backend`` the CLI uses).

:class:`LayerFacts` is read off vLLM's own objects inside vLLM (:func:`facts_from_vllm`: the
``FusedMoEConfig`` the layer code built, the quant keys its oracle was given, the quant method vLLM
resolved for the layer's prefix); everything after that is torch- and vLLM-free.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from ...schemas.layer import DType, LayerSpec, ParallelConfig
from . import names

_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class LayerFacts:
    """The inputs of vLLM's choice for one layer (sizes global: vLLM's FusedMoEConfig)."""

    prefix: str
    num_experts: int
    top_k: int
    hidden: int
    intermediate: int  # global; per rank: intermediate / tp
    activation: str  # MoEActivation value
    in_dtype: str  # "bfloat16", "float16", "float32"
    routing: str  # RoutingMethodType name
    tp: int
    ep: int
    dp: int
    use_ep: bool
    has_bias: bool = False
    swiglu_limit: float | None = None
    swiglu_alpha: float | None = None
    swiglu_beta: float | None = None
    apply_router_weight_on_input: bool = False
    weight_key: str | None = None  # vLLM's QuantKey constant name (or its str())
    activation_key: str | None = None
    group_size: int | None = None  # integer schemes: the checkpoint's group size
    act_order: bool = False
    quant_method: str | None = None  # the FusedMoEMethodBase class vLLM resolved for the prefix
    moe_backend: str = "auto"  # the layer's --moe-backend as vLLM gave it

    @property
    def index(self) -> int | None:
        match = _LAYER_INDEX.search(self.prefix + ".")
        return int(match.group(1)) if match else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LayerFacts":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def layer_spec(facts: LayerFacts) -> LayerSpec:
    """The layer as our selection sees it; ValueError (one line) where vLLM's layer has no equivalent here."""
    act, params = names.activation(facts.activation, swiglu_limit=facts.swiglu_limit,
                                   swiglu_alpha=facts.swiglu_alpha, swiglu_beta=facts.swiglu_beta)
    quant = names.quant_scheme(facts.weight_key, facts.activation_key, facts.in_dtype, group_size=facts.group_size,
                               act_order=facts.act_order)
    dtype: DType | None = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(facts.in_dtype)  # type: ignore[assignment]
    if dtype is None:
        raise ValueError(f"{facts.prefix}: layer dtype {facts.in_dtype} has no equivalent here")
    # With --enable-expert-parallel vLLM's MoE TP is 1 and EP spans TP x DP (fused_moe/config.py FusedMoEParallelConfig.make).
    parallel = ParallelConfig(tp=facts.tp, ep=facts.ep if facts.use_ep else 1, dp=facts.dp)
    return LayerSpec(name=facts.prefix, index=facts.index, num_experts=facts.num_experts, top_k=facts.top_k,
                     hidden_size=facts.hidden, intermediate_size=facts.intermediate, activation=act,
                     activation_params=params, quant=quant, dtype=dtype, routing=names.routing(facts.routing),
                     bias=facts.has_bias, apply_router_weight_on_input=facts.apply_router_weight_on_input,
                     parallel=parallel)


# --- Inside vLLM ----------------------------------------------------------------------------------


def key_name(key: Any) -> str | None:
    """vLLM's constant name for a QuantKey (``kFp8StaticTensorSym``), else its own ``str()``."""
    if key is None or isinstance(key, str):
        return key
    try:
        from vllm.model_executor.layers.quantization.utils import quant_utils
    except ImportError:  # a vLLM that moved its keys: its own str() still says what the key is
        return str(key)
    for name, value in vars(quant_utils).items():
        if name.startswith("k") and value == key and type(value) is type(key):
            return name
    return str(key)


def _scheme_detail(quant_method: Any) -> tuple[int | None, bool]:
    """(group size, act order) of an integer scheme, from where vLLM's WNA16 methods keep them."""
    group, act_order = None, False
    for holder in (quant_method, getattr(quant_method, "quant_config", None)):
        if holder is None:
            continue
        value = getattr(holder, "group_size", None)
        if isinstance(value, int) and group is None:
            group = value
        for flag in ("desc_act", "has_g_idx", "actorder"):
            value = getattr(holder, flag, None)
            if value is True or (isinstance(value, str) and value in ("group", "dynamic")):
                act_order = True
    return group, act_order


def facts_from_vllm(prefix: str, layer: Any, moe_config: Any, weight_key: Any, activation_key: Any,
                    quant_method: Any) -> LayerFacts:
    pc = moe_config.moe_parallel_config
    group, act_order = _scheme_detail(quant_method)
    return LayerFacts(
        prefix=prefix, num_experts=int(moe_config.num_experts), top_k=int(moe_config.experts_per_token),
        hidden=int(moe_config.hidden_dim), intermediate=int(moe_config.intermediate_size),
        activation=str(moe_config.activation.value), in_dtype=str(moe_config.in_dtype).removeprefix("torch."),
        routing=moe_config.routing_method.name, tp=int(pc.tp_size), ep=int(pc.ep_size), dp=int(pc.dp_size),
        use_ep=bool(pc.use_ep), has_bias=bool(moe_config.has_bias), swiglu_limit=moe_config.swiglu_limit,
        swiglu_alpha=moe_config.swiglu_alpha, swiglu_beta=moe_config.swiglu_beta,
        apply_router_weight_on_input=bool(getattr(layer, "apply_router_weight_on_input", False)),
        weight_key=key_name(weight_key), activation_key=key_name(activation_key), group_size=group,
        act_order=act_order, quant_method=type(quant_method).__name__ if quant_method is not None else None,
        moe_backend=str(moe_config.moe_backend))
