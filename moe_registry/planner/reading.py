"""Reading a Hugging Face config: families and layer names, which layers are MoE, routing,
activation, dtype, quantization (config and expert dtype) and attention heads, each with a one-line
:class:`MalformedConfig` naming the key at fault."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import one_line
from ..quant_config import (
    QuantConfig,
    QuantConfigError,
    check_matching_budget,
    parse_quant_config,
)
from ..schemas.activation import Activation, SiluClampParams, SwigluOAIParams
from ..schemas.layer import DType, RoutingMethod
from ..schemas.quant import QuantScheme
from .results import MalformedConfig
from .sources import _Source

_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOPK_KEYS = ("num_experts_per_tok", "top_k_experts", "experts_per_token", "moe_k", "moe_topk")
_WIDTH_KEYS = ("moe_intermediate_size", "intermediate_size")
_ACT_KEYS = ("mlp_hidden_act", "hidden_activation", "hidden_act")
_DTYPES: dict[str, DType] = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16",
           "float32": "fp32", "fp32": "fp32", "float": "fp32"}

# model_type -> (family, experts module path). A family fixes routing; the path is the checkpoint's,
# so exclude patterns match it as written.
_MLP = "model.layers.{i}.mlp.experts"
_MODEL_TYPES: dict[str, tuple[str, str]] = {
    "gemma4": ("gemma4", "model.layers.{i}.experts"), "gemma4_text": ("gemma4", "model.layers.{i}.experts"),
    "llama4": ("llama4", "model.layers.{i}.feed_forward.experts"),
    "llama4_text": ("llama4", "model.layers.{i}.feed_forward.experts"),
    "mixtral": ("mixtral", "model.layers.{i}.block_sparse_moe.experts"),
    "qwen2_moe": ("qwen", _MLP), "qwen3_moe": ("qwen", _MLP), "qwen3_vl_moe_text": ("qwen", _MLP),
    "qwen3_next": ("qwen", _MLP), "olmoe": ("qwen", _MLP),  # OLMoE: softmax, top-k, norm_topk_prob
    "deepseek_v2": ("deepseek", _MLP), "deepseek_v3": ("deepseek", _MLP), "kimi_k2": ("deepseek", _MLP),
    "glm4_moe": ("deepseek", _MLP), "mimo_v2_flash": ("deepseek", _MLP),
    "mimo_v2": ("deepseek", _MLP), "deepseek_v4": ("deepseek", "layers.{i}.ffn.experts"),  # V4: native names
    "gpt_oss": ("gpt_oss", _MLP),
    "nemotron_h": ("nemotron_h", "backbone.layers.{i}.mixer.experts"),
    "jamba": ("jamba", "model.layers.{i}.feed_forward.experts"),
    "dbrx": ("dbrx", "transformer.blocks.{i}.ffn.experts"),
    "phimoe": ("phimoe", "model.layers.{i}.block_sparse_moe.experts"),
    "granitemoe": ("granite", "model.layers.{i}.block_sparse_moe"),
    "granitemoeshared": ("granite", "model.layers.{i}.block_sparse_moe"),
    "granitemoehybrid": ("granite", "model.layers.{i}.block_sparse_moe"),
    "ernie4_5_moe": ("ernie", _MLP),
    "hunyuan_v1_moe": ("hunyuan", _MLP),
}
_FAMILIES = {model_type: family for model_type, (family, _) in _MODEL_TYPES.items()}
# transformers config-class defaults of the activation, used when a config leaves it out
# (configuration_<model>.py ``hidden_act`` / ``mlp_hidden_act`` / ``hidden_activation`` defaults).
_DEFAULT_ACT = {"gemma4": "gelu_pytorch_tanh", "gemma4_text": "gelu_pytorch_tanh", "nemotron_h": "relu2",
                **{t: "silu" for t in ("deepseek_v2", "deepseek_v3", "deepseek_v4", "kimi_k2", "glm4_moe",
                                       "mimo_v2_flash", "mimo_v2", "qwen2_moe", "qwen3_moe", "qwen3_vl_moe_text",
                                       "qwen3_next",
                                       "olmoe", "mixtral", "llama4", "llama4_text", "jamba", "dbrx", "phimoe",
                                       "granitemoe", "granitemoeshared", "granitemoehybrid", "ernie4_5_moe",
                                       "hunyuan_v1_moe", "minimax_m2")}}
# Keys some families use that this planner does not model; refused with the reason.
_REFUSED_KEYS = {
    "moe_num_experts": lambda v: isinstance(v, list) and (
        "ERNIE-4.5-VL lists text and vision experts separately (moe_num_experts is a list); "
        "multimodal expert groups are not planned"),
}


def _dbrx_view(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """DBRX keeps its MoE keys in ``ffn_config`` and its sizes under other names (transformers
    ``configuration_dbrx.py``: d_model, n_layers, n_heads, attn_config.kv_n_heads, ffn_config.moe_num_experts /
    moe_top_k / ffn_hidden_size / ffn_act_fn / moe_normalize_expert_weights): the same config in the common keys."""
    ffn, attn = cfg.get("ffn_config"), cfg.get("attn_config") or {}
    if not isinstance(ffn, dict) or not isinstance(attn, dict):
        raise MalformedConfig(f"{where}: DBRX ffn_config and attn_config must be objects")
    act = ffn.get("ffn_act_fn") or {"name": "silu"}  # DbrxFFNConfig default
    view = {k: v for k, v in cfg.items() if k not in ("ffn_config", "attn_config")}
    view.update({"hidden_size": cfg.get("d_model"), "num_hidden_layers": cfg.get("n_layers"),
                 "num_attention_heads": cfg.get("n_heads"), "num_key_value_heads": attn.get("kv_n_heads"),
                 "num_local_experts": ffn.get("moe_num_experts"), "num_experts_per_tok": ffn.get("moe_top_k"),
                 "intermediate_size": ffn.get("ffn_hidden_size"),
                 "hidden_act": act.get("name") if isinstance(act, dict) else act,
                 "moe_normalize_expert_weights": ffn.get("moe_normalize_expert_weights", 1)})
    return view


class _Reader:
    """Typed access to one config object, with one-line errors naming the key."""

    def __init__(self, cfg: Mapping[str, Any], where: str):
        self.cfg, self.where = cfg, where

    def first(self, keys: tuple[str, ...]) -> tuple[str, Any] | None:
        for key in keys:
            if self.cfg.get(key) is not None:
                return key, self.cfg[key]
        return None

    def integer(self, key: str, value: Any, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise MalformedConfig(f"{self.where}: {key} must be an integer >= {minimum}, got {value!r}")
        return value

    def required_int(self, keys: tuple[str, ...], minimum: int = 1) -> int:
        found = self.first(keys)
        if found is None:
            raise MalformedConfig(f"{self.where} has no {' / '.join(keys)}")
        return self.integer(found[0], found[1], minimum)

    def per_layer(self, keys: tuple[str, ...], num_layers: int, minimum: int = 1) -> tuple[str, list[int]]:
        """An integer, or a list of one per layer (Hunyuan's ``moe_topk``, ``moe_intermediate_size``):
        (key, value of every layer)."""
        found = self.first(keys)
        if found is None:
            raise MalformedConfig(f"{self.where} has no {' / '.join(keys)}")
        key, value = found
        if isinstance(value, list):
            if len(value) != num_layers:
                raise MalformedConfig(f"{self.where}: {key} lists {len(value)} values for {num_layers} layers")
            return key, [self.integer(key, v, minimum) for v in value]
        return key, [self.integer(key, value, minimum)] * num_layers

    def int_list(self, key: str) -> list[int]:
        value = self.cfg.get(key)
        if not isinstance(value, list):
            raise MalformedConfig(f"{self.where}: {key} must be a list of integers, got {value!r}")
        return [self.integer(key, v) for v in value]


def _moe_indices(r: _Reader, num_layers: int) -> tuple[list[int], str]:
    cfg = r.cfg
    if cfg.get("hybrid_override_pattern") is not None:
        pattern = cfg["hybrid_override_pattern"]
        if not isinstance(pattern, str) or len(pattern) != num_layers:
            raise MalformedConfig(f"{r.where}: hybrid_override_pattern must be a string of num_hidden_layers "
                                  f"({num_layers}) characters, got {pattern!r}")
        return [i for i, c in enumerate(pattern) if c == "E"], "hybrid_override_pattern 'E' positions"
    if isinstance(cfg.get("layers_block_type"), list):
        kinds = cfg["layers_block_type"]
        if len(kinds) != num_layers:
            raise MalformedConfig(f"{r.where}: layers_block_type has {len(kinds)} entries for {num_layers} layers")
        return [i for i, k in enumerate(kinds) if k == "moe"], "layers_block_type 'moe' entries"
    if "enable_moe_block" in cfg:
        return (list(range(num_layers)) if cfg["enable_moe_block"] else []), "enable_moe_block"
    if cfg.get("moe_layers") is not None:
        indices = sorted(set(r.int_list("moe_layers")))
        if indices and indices[-1] >= num_layers:
            raise MalformedConfig(f"{r.where}: moe_layers names layer {indices[-1]} of {num_layers}")
        return indices, "moe_layers"
    if cfg.get("interleave_moe_layer_step") is not None:
        step = r.integer("interleave_moe_layer_step", cfg["interleave_moe_layer_step"])
        return (list(range(step - 1, num_layers, step)) if step else []), f"interleave_moe_layer_step={step}"
    if isinstance(cfg.get("moe_layer_freq"), list):  # MiMo-V2-Flash (vLLM mimo_v2.py is_moe_layer)
        flags = cfg["moe_layer_freq"]
        if len(flags) != num_layers or any(f not in (0, 1) or isinstance(f, float) for f in flags):
            raise MalformedConfig(f"{r.where}: moe_layer_freq as a list needs one 0 or 1 per layer "
                                  f"({num_layers}), got {len(flags)} entries")
        return [i for i, f in enumerate(flags) if f], "moe_layer_freq list (1 = MoE)"
    if cfg.get("expert_layer_period") is not None or cfg.get("expert_layer_offset") is not None:
        # Jamba (transformers configuration_jamba.py layers_num_experts; defaults period 2, offset 1)
        period = r.integer("expert_layer_period", cfg.get("expert_layer_period", 2), minimum=1)
        offset = r.integer("expert_layer_offset", cfg.get("expert_layer_offset", 1))
        if offset >= period:
            raise MalformedConfig(f"{r.where}: expert_layer_offset {offset} must be below expert_layer_period {period}")
        return [i for i in range(num_layers) if i % period == offset], \
            f"expert_layer_period={period}, expert_layer_offset={offset}"
    if any(cfg.get(k) is not None for k in ("moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval")):
        # ERNIE-4.5 (vLLM ernie45_moe.py Ernie4_5_MoeDecoderLayer; end -1 means the last layer)
        for key in ("moe_layer_start_index", "moe_layer_end_index"):
            if isinstance(cfg.get(key), list):
                raise MalformedConfig(f"{r.where}: {key} is a list (ERNIE-4.5-VL text and vision experts); "
                                      "multimodal expert groups are not planned")
        start = r.integer("moe_layer_start_index", cfg.get("moe_layer_start_index", 0))
        end = cfg.get("moe_layer_end_index", -1)
        end = num_layers - 1 if end == -1 else r.integer("moe_layer_end_index", end)
        step = r.integer("moe_layer_interval", cfg.get("moe_layer_interval", 1), minimum=1)
        return [i for i in range(num_layers) if start <= i <= end and (i + 1) % step == 0], \
            f"moe_layer_start_index={start}, moe_layer_end_index={end}, moe_layer_interval={step}"
    if cfg.get("first_k_dense_replace") is not None or cfg.get("moe_layer_freq") is not None:
        k = r.integer("first_k_dense_replace", cfg.get("first_k_dense_replace", 0) or 0)
        freq = r.integer("moe_layer_freq", cfg.get("moe_layer_freq", 1) or 1, minimum=1)
        return [i for i in range(num_layers) if i >= k and i % freq == 0], \
            f"first_k_dense_replace={k}, moe_layer_freq={freq}"
    if cfg.get("decoder_sparse_step") is not None or cfg.get("mlp_only_layers") is not None:
        step = r.integer("decoder_sparse_step", cfg.get("decoder_sparse_step", 1) or 1, minimum=1)
        dense = set(r.int_list("mlp_only_layers")) if cfg.get("mlp_only_layers") is not None else set()
        return [i for i in range(num_layers) if i not in dense and (i + 1) % step == 0], \
            f"decoder_sparse_step={step}, mlp_only_layers={sorted(dense)}"
    return list(range(num_layers)), "every layer"


def _name_template(model_type: str, family: str, wrapper: str | None) -> str:
    template = _MODEL_TYPES.get(model_type, ("generic", _MLP))[1]
    if family == "gemma4":
        return "model.language_model.layers.{i}.experts" if wrapper else template
    if family == "llama4":
        return "language_model.model.layers.{i}.feed_forward.experts" if wrapper else template
    if wrapper == "kimi_k25":
        return "language_model.model.layers.{i}.mlp.experts"
    if wrapper and template == _MLP:  # transformers >= 4.52 multimodal layout (Qwen3-VL-MoE, ...)
        return "model.language_model.layers.{i}.mlp.experts"
    return template


def _routing(family: str, cfg: Mapping[str, Any]) -> tuple[RoutingMethod | None, bool]:
    """(routing method, apply_router_weight_on_input)."""
    if family == "qwen":
        renorm = bool(cfg.get("norm_topk_prob", False))
        return (RoutingMethod.SOFTMAX_TOPK_RENORM if renorm else RoutingMethod.SOFTMAX_TOPK), False
    if family == "mixtral":
        return RoutingMethod.SOFTMAX_TOPK_RENORM, False
    if family == "deepseek":
        if str(cfg.get("scoring_func", "sigmoid")).lower() != "sigmoid":
            # DeepSeek-V2 group-limited softmax, DeepSeek-V4 sqrtsoftplus (and hash) routing: no kernel enum
            return RoutingMethod.CUSTOM, False
        return RoutingMethod.DEEPSEEK_V3, False
    if family == "jamba":  # JambaSparseMoeBlock: softmax over all experts, top-k, no renormalisation
        return RoutingMethod.SOFTMAX_TOPK, False
    if family == "dbrx":  # DbrxRouter: softmax, top-k, p-norm renormalisation when moe_normalize_expert_weights
        renorm = cfg.get("moe_normalize_expert_weights") == 1
        return (RoutingMethod.SOFTMAX_TOPK_RENORM if renorm else RoutingMethod.SOFTMAX_TOPK), False
    if family == "granite":  # GraniteMoeTopKGating: top-k logits, softmax over the k
        return RoutingMethod.TOPK_SOFTMAX, False
    if family in ("phimoe", "ernie"):  # sparsemixer / softmax with correction bias: no kernel enum
        return RoutingMethod.CUSTOM, False
    if family == "nemotron_h":
        return RoutingMethod.DEEPSEEK_V3, False
    if family == "llama4":
        return RoutingMethod.LLAMA4, True
    if family == "gpt_oss":
        return RoutingMethod.TOPK_SOFTMAX, False
    if family == "gemma4":
        return RoutingMethod.CUSTOM, False
    return None, False


def _activation(family: str, model_type: str, r: _Reader,
                notes: list[str]) -> tuple[Activation, SwigluOAIParams | SiluClampParams | None, bool]:
    """(activation, its parameters, expert biases)."""
    limit = r.cfg.get("swiglu_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0
                              or limit != limit or limit == float("inf")):
        raise MalformedConfig(f"{r.where}: swiglu_limit must be a finite positive number, got {limit!r}")
    if family == "gpt_oss":
        limit = 7.0 if limit is None else limit
        notes.append(f"gpt-oss experts run swigluoai (alpha 1.702, limit {float(limit):g}, interleaved gate/up, "
                     f"up + 1) with biases, whatever hidden_act says ({r.cfg.get('hidden_act')!r})")
        return Activation.SWIGLUOAI, SwigluOAIParams(limit=float(limit), interleaved=True), True
    found = r.first(_ACT_KEYS)
    if found is None:
        if model_type not in _DEFAULT_ACT:
            raise MalformedConfig(f"{r.where} has no {' / '.join(_ACT_KEYS)} and model_type {model_type or '(none)'!r} "
                                  "has no known default; add hidden_act to the config")
        found = ("default", _DEFAULT_ACT[model_type])
        notes.append(f"no activation in the config: {found[1]!r} assumed (transformers' {model_type} default)")
    if not isinstance(found[1], str):
        raise MalformedConfig(f"{r.where}: {found[0]} must be a string, got {found[1]!r}")
    try:
        act = Activation.parse(found[1])
    except ValueError as exc:
        raise MalformedConfig(f"{r.where}: {found[0]}: {exc}") from None
    if limit is None:
        return act, None, False
    if act is not Activation.SILU:
        raise MalformedConfig(f"{r.where}: swiglu_limit {limit:g} with {found[0]} {found[1]!r}: a clamped "
                              "activation other than SwiGLU is not known")
    # DeepSeek-V4 Expert.forward / vLLM SiluAndMulWithClamp: silu(min(gate, l)) * clamp(up, -l, l)
    notes.append(f"swiglu_limit {float(limit):g}: the experts run clamped SwiGLU (silu_clamp)")
    return Activation.SILU_CLAMP, SiluClampParams(limit=float(limit)), False


def _pick_text_config(config: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(config holding the language model, wrapper model_type or None)."""
    text = config.get("text_config")
    if isinstance(text, dict) and any(k in text for k in _EXPERT_KEYS + ("num_hidden_layers",)):
        return text, str(config.get("model_type") or "wrapper")
    return config, None


def _quant_source(src: _Source, config: dict[str, Any], text: dict[str, Any]) -> tuple[Any, str] | None:
    if config.get("quantization_config") is not None:
        return config["quantization_config"], f"{src.source} quantization_config"
    if text is not config and text.get("quantization_config") is not None:
        return text["quantization_config"], f"{src.source} text_config.quantization_config"
    if src.hf_quant_config is not None:
        return src.hf_quant_config, src.hf_quant_source
    if src.quantize_config is not None:
        return src.quantize_config, src.quantize_source
    return None


def _dtype(text: Mapping[str, Any], config: Mapping[str, Any]) -> DType:
    for cfg in (text, config):
        for key in ("dtype", "torch_dtype"):
            value = cfg.get(key)
            if isinstance(value, str):
                return _DTYPES.get(value.removeprefix("torch.").lower(), "bf16")
    return "bf16"


def _quant_of(src: _Source, config: dict[str, Any], text: dict[str, Any], dtype: str,
              moe_layers: int = 1) -> QuantConfig | None:
    found = _quant_source(src, config, text)
    if found is None:
        return None
    check_matching_budget(found[0], moe_layers, found[1])
    try:
        return parse_quant_config(found[0], source=found[1], dtype=dtype)
    except (TypeError, AttributeError, KeyError, IndexError) as exc:  # a field of an unexpected JSON type
        raise QuantConfigError(f"{found[1]}: malformed quantization config "
                               f"({one_line(exc)})") from None


_EXPERT_DTYPES = {"fp4": "mxfp4_mxfp8", "fp8": None}


def _expert_dtype(r: _Reader, qconf: QuantConfig | None, notes: list[str]) -> QuantScheme | None:
    """DeepSeek-V4 ``expert_dtype``: "fp4" makes the routed experts MXFP4 (e8m0 scale per 32) while the
    quantization_config (block FP8) covers the rest; the checkpoint asks for MXFP8 activations
    (vLLM 0.33.0 models/deepseek_v4/quant_config.py get_quant_method: Mxfp4MoEMethod(activation_key=
    kMxfp8Dynamic)). "fp8": the quantization_config's block FP8 applies (DeepSeek-V4-Flash-Base)."""
    value = r.cfg.get("expert_dtype")
    if value is None or qconf is None:
        return None
    if not isinstance(value, str) or value not in _EXPERT_DTYPES:  # a list or dict is unhashable
        raise MalformedConfig(f"{r.where}: expert_dtype must be one of {', '.join(_EXPERT_DTYPES)}, got {value!r}")
    kind = _EXPERT_DTYPES[value]
    if kind is None:
        return None
    notes.append("expert_dtype fp4: routed experts are MXFP4 with MXFP8 activations (vLLM falls back to BF16 "
                 "activations when no backend runs MXFP8 ones: --quant mxfp4 plans that)")
    return QuantScheme.parse(kind)


def _heads(r: _Reader) -> tuple[int | None, int | None]:
    heads = r.cfg.get("num_attention_heads")
    kv = r.cfg.get("num_key_value_heads", heads)
    ok = [v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None for v in (heads, kv)]
    return ok[0], ok[1] if ok[0] else None
