"""Model planner: a Hugging Face config (and its quantization config) -> one LayerSpec per MoE layer
-> one Selection per distinct layer.

``plan_model(source)`` accepts a bundled preset name (or its Hugging Face id), a model directory
(``config.json``, optionally ``hf_quant_config.json`` / ``quantize_config.json``) or a path to a
``config.json``. It never imports torch and never reads weights: everything comes from the config.

Reading a config
----------------
* Multimodal wrappers (Gemma 4, Llama 4, Kimi-K2.5) keep the language model in ``text_config``;
  it is used whenever it holds the MoE keys.
* Aliases (TensorRT-LLM ``derive_moe_layer_shapes`` keeps the same lists): experts
  ``num_local_experts`` / ``num_experts`` / ``n_routed_experts``; top-k ``num_experts_per_tok`` /
  ``top_k_experts`` / ``experts_per_token``; expert width ``moe_intermediate_size``, else
  ``intermediate_size``; activation ``mlp_hidden_act`` (Nemotron-H) / ``hidden_activation``
  (Gemma) / ``hidden_act``, through :meth:`Activation.parse`, else the transformers default of the
  ``model_type`` (with a note). ERNIE-4.5 ``moe_num_experts`` / ``moe_k``; Hunyuan ``moe_topk`` and
  per-layer lists (one value per layer) for the experts, top-k and width; DBRX's ``d_model`` /
  ``n_layers`` / ``ffn_config`` are read as the common keys (:func:`_dbrx_view`). ERNIE-4.5-VL's
  text/vision expert lists are refused with the reason.
* ``moe_latent_size`` (Nemotron 3 Super LatentMoE): the experts' hidden size is the latent width.
  ``swiglu_limit``: SwiGLU becomes ``silu_clamp`` with that limit (DeepSeek-V4). ``expert_dtype
  "fp4"`` (DeepSeek-V4): routed experts are ``mxfp4_mxfp8`` whatever the block-FP8 config says.
  bf16 models planned on NVIDIA SM < 80 are planned in fp16, as vLLM's ``--dtype auto`` does.
* Which layers are MoE, first rule whose key is present: ``hybrid_override_pattern`` (Nemotron-H:
  ``E`` positions) or ``layers_block_type`` (``"moe"`` entries); ``enable_moe_block`` (Gemma 4: all
  layers); ``moe_layers``, else ``interleave_moe_layer_step`` s -> ``range(s-1, L, s)`` (Llama 4);
  ``moe_layer_freq`` as a list -> ``list[i] == 1`` (MiMo-V2-Flash); ``expert_layer_period`` p /
  ``expert_layer_offset`` o -> ``i % p == o`` (Jamba); ``moe_layer_start_index`` s /
  ``moe_layer_end_index`` e / ``moe_layer_interval`` n -> ``s <= i <= e and (i+1) % n == 0``
  (ERNIE-4.5); ``first_k_dense_replace`` k / ``moe_layer_freq`` f -> ``i >= k and i % f == 0``
  (DeepSeek, GLM, Kimi remote code); ``decoder_sparse_step`` s / ``mlp_only_layers`` -> ``i not in mlp_only_layers
  and (i+1) % s == 0`` (Qwen2/3-MoE); otherwise every layer (Mixtral, gpt-oss). The DeepSeek MTP
  layer (``num_nextn_predict_layers``) is not a decoder layer and is not planned.
* Layer names are checkpoint module paths, so exclude patterns match them as written:
  ``model.layers.N.mlp.experts`` (Qwen, DeepSeek, GLM, gpt-oss), ``model.layers.N.block_sparse_moe
  .experts`` (Mixtral), ``backbone.layers.N.mixer.experts`` (Nemotron-H),
  ``model.language_model.layers.N.experts`` (Gemma 4), ``language_model.model.layers.N
  .feed_forward.experts`` (Llama 4 multimodal checkpoints; ``model.layers.N.feed_forward.experts``
  for text-only ones), ``language_model.model.layers.N.mlp.experts`` (Kimi-K2.5).
* Routing: Qwen (``norm_topk_prob``) and Mixtral softmax -> top-k -> renormalise; DeepSeek-V3,
  Kimi, GLM-4.5 and Nemotron-H ``deepseek_v3``; Llama 4 ``llama4`` with the weight applied to the
  input; gpt-oss ``topk_softmax``; Gemma 4 ``custom``; unknown families ``None`` (rules abstain).
* gpt-oss: the config says ``hidden_act: silu`` but the experts compute the clamped SwiGLU
  (``swigluoai``, alpha 1.702, ``limit = swiglu_limit``, interleaved gate/up columns, +1 on up)
  with biases (transformers ``modular_gpt_oss.py``).

Quantization comes from ``quantization_config`` (top level, then ``text_config``), else
``hf_quant_config.json``, else ``quantize_config.json`` (vLLM's order); see
:mod:`moe_registry.quant_config` for the formats and their matching rules. ``quant=`` overrides
every MoE layer.

Selection (``select=True``, the default) calls ``moe_registry.selection.select_backend`` once per
distinct layer (``LayerSpec.shape_key()``); every layer with that key shares the Selection. A
``NoEligibleBackend`` is recorded on its layers (``error``, ``rejections``) so the rest of the model
is still planned; a forced backend that cannot run a layer (``BackendNotEligible``) propagates.

Every planning failure is a :class:`PlanError` (a ``ValueError``) with one line that names the
file, key or layer at fault.

Bounds (far above any real model; each exceeded bound is a one-line ``MalformedConfig``): a config
file of at most ``MAX_CONFIG_BYTES`` (8 MiB), JSON nested at most ``MAX_JSON_DEPTH`` (64) levels,
numbers finite (``NaN``, ``Infinity``, ``1e999`` are refused: the output must stay strict JSON), at
most ``MAX_LAYERS`` (256) hidden layers, and the layer sizes of :class:`LayerSpec`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from . import models as _presets
from .errors import one_line, validation_one_line
from .quant_config import (
    InconsistentMoEQuant,
    PlanError,
    QuantConfig,
    QuantConfigError,
    UnknownQuantMethod,
    UnsupportedQuantScheme,
    check_matching_budget,
    override_quant,
    parse_quant_config,
    unquantized_scheme,
)
from .schemas.activation import Activation, SiluClampParams, SwigluOAIParams
from .schemas.device import DeviceSpec, get_device
from .schemas.layer import MAX_LAYERS, LayerSpec, ParallelConfig, RoutingMethod
from .schemas.quant import QuantScheme
from .memory import MemoryFit
from .schemas.selection import Rejection, Selection

__all__ = [
    "ConfigNotFound",
    "InconsistentMoEQuant",
    "InvalidLayer",
    "LayerGroup",
    "LayerPlan",
    "MalformedConfig",
    "ModelPlan",
    "NotAMoEModel",
    "ParallelismError",
    "PlanError",
    "QuantConfigError",
    "SelectionUnavailable",
    "UnknownPreset",
    "UnknownQuantMethod",
    "UnsupportedQuantScheme",
    "list_presets",
    "plan_config",
    "plan_model",
]


# --- Errors ----------------------------------------------------------------------------------


class UnknownPreset(PlanError):
    """Neither a bundled preset, a preset's model id, nor an existing path."""


class ConfigNotFound(PlanError):
    """A path that does not exist, or a directory without ``config.json``."""


class MalformedConfig(PlanError):
    """Not JSON, not an object, or a required key missing or of the wrong type."""


class NotAMoEModel(PlanError):
    """The config declares no routed experts, or no layer is a MoE layer."""


class ParallelismError(PlanError):
    """TP does not divide the expert width, or EP does not divide the expert count."""


class InvalidLayer(PlanError):
    """A MoE layer the schema rejects for another reason (top-k above the expert count, ...)."""


class SelectionUnavailable(PlanError):
    """``select=True`` but ``moe_registry.selection`` is not there."""


# --- Results ---------------------------------------------------------------------------------


class LayerPlan(BaseModel):
    """One MoE layer and the backend chosen for it (``selection`` None when planned with
    ``select=False``, or when no backend can run it: then ``error`` is the one-line message of the
    ``NoEligibleBackend`` and ``rejections`` every reason it carried)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layer: LayerSpec
    selection: Selection | None = None
    error: str | None = None
    rejections: tuple[Rejection, ...] = ()


class LayerGroup(BaseModel):
    """Consecutive MoE layers with the same shape key (hence the same selection)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    indices: tuple[int, ...]
    names: tuple[str, ...]
    layer: LayerSpec  # the shape key: name and index cleared
    selection: Selection | None = None
    error: str | None = None
    rejections: tuple[Rejection, ...] = ()

    @property
    def first(self) -> int:
        return self.indices[0]

    @property
    def last(self) -> int:
        return self.indices[-1]

    @property
    def count(self) -> int:
        return len(self.indices)

    @property
    def contiguous(self) -> bool:
        return self.last - self.first + 1 == self.count

    def label(self) -> str:
        """``layer 5``, ``layers 3-60 (58)``; hybrid models list a non-contiguous set as
        ``layers 1-51 (23 of them)``."""
        if self.count == 1:
            return f"layer {self.first}"
        if self.contiguous:
            return f"layers {self.first}-{self.last} ({self.count})"
        return f"layers {self.first}-{self.last} ({self.count} of them)"


class ModelPlan(BaseModel):
    """Every MoE layer of one model under one device and parallel layout."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model: str  # preset name, or the model directory's name
    model_id: str | None = None  # Hugging Face id when known
    source: str  # "preset gemma-4-26b-a4b" or the config path
    provenance: str | None = None  # a preset's _source
    device: DeviceSpec | None = None  # None: this machine (selection detects it)
    parallel: ParallelConfig = ParallelConfig()
    quantization: str = "none"  # one-line summary of the quantization config (or the override)
    num_hidden_layers: int
    layers: tuple[LayerPlan, ...]
    notes: tuple[str, ...] = ()
    memory: MemoryFit | None = None  # whole-model expert weights per GPU vs the device (None: select=False)

    @property
    def layer_specs(self) -> tuple[LayerSpec, ...]:
        return tuple(p.layer for p in self.layers)

    def groups(self) -> tuple[LayerGroup, ...]:
        """Runs of consecutive MoE layers with the same ``shape_key()`` (and so the same backend)."""
        out: list[LayerGroup] = []
        run: list[LayerPlan] = []

        def close() -> None:
            if run:
                head = run[0]
                out.append(LayerGroup(indices=tuple(p.layer.index for p in run),
                                      names=tuple(p.layer.name for p in run), layer=head.layer.shape_key(),
                                      selection=head.selection, error=head.error, rejections=head.rejections))
                run.clear()

        for plan in self.layers:
            if run and plan.layer.shape_key() != run[0].layer.shape_key():
                close()
            run.append(plan)
        close()
        return tuple(out)


# --- Loading a source ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    model: str
    source: str
    config: dict[str, Any]
    model_id: str | None = None
    provenance: str | None = None
    quantized_from: str | None = None
    hf_quant_config: Any = None
    hf_quant_source: str = ""
    quantize_config: Any = None
    quantize_source: str = ""


MAX_CONFIG_BYTES = 8 * 2**20  # real config.json / quant configs are kilobytes; the largest ~1 MiB
MAX_JSON_DEPTH = 64  # real configs nest about 6 levels


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range (not a finite double)")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259)")


def _depth_exceeds(data: Any, limit: int) -> bool:
    stack = [(data, 1)]
    while stack:  # iterative: a deep document must not exhaust the Python stack here either
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return False


def _parse_json(text: str, where: str) -> Any:
    if len(text) > MAX_CONFIG_BYTES:
        raise MalformedConfig(f"{where} is {len(text)} characters; the limit is {MAX_CONFIG_BYTES}")
    try:
        data = json.loads(text, parse_float=_finite_float, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise MalformedConfig(f"{where} is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise MalformedConfig(f"{where} is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)") from None
    except ValueError as exc:  # non-finite numbers, integers over Python's digit limit
        raise MalformedConfig(f"{where} is not valid JSON: {one_line(exc, typed=False)}") from None
    if _depth_exceeds(data, MAX_JSON_DEPTH):
        raise MalformedConfig(f"{where} is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)")
    return data


def _read_json(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded: a FIFO or /dev/zero must not hang or fill memory
        if len(raw) > MAX_CONFIG_BYTES:
            raise MalformedConfig(f"{path} is larger than {MAX_CONFIG_BYTES} bytes (the limit for a config file)")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigNotFound(f"no such file: {path}") from None
    except UnicodeDecodeError:
        raise MalformedConfig(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigNotFound(f"cannot read {path}: {exc.strerror or exc}") from None
    return _parse_json(text, str(path))


def _from_path(path: Path) -> _Source:
    config_path = path / "config.json" if path.is_dir() else path
    if path.is_dir() and not config_path.is_file():
        raise ConfigNotFound(f"{path} has no config.json")
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise MalformedConfig(f"{config_path} must hold a JSON object, not {type(config).__name__}")
    directory = config_path.parent
    companions = {}
    for fname in ("hf_quant_config.json", "quantize_config.json"):
        candidate = directory / fname
        if candidate.is_file() and candidate != config_path:
            companions[fname] = (_read_json(candidate), str(candidate))
    hf = companions.get("hf_quant_config.json", (None, ""))
    gptq = companions.get("quantize_config.json", (None, ""))
    name = directory.name if path.is_dir() or config_path.name == "config.json" else config_path.stem
    return _Source(model=name or str(config_path), source=str(config_path), config=config,
                   model_id=config.get("_name_or_path") if isinstance(config.get("_name_or_path"), str) else None,
                   hf_quant_config=hf[0], hf_quant_source=hf[1], quantize_config=gptq[0], quantize_source=gptq[1])


def _from_preset(name: str) -> _Source:
    text = _presets.preset_text(name)
    if text is None:  # pragma: no cover - names come from preset_names()
        raise UnknownPreset(f"no bundled preset {name!r}")
    data = _parse_json(text, f"preset {name}")
    if not isinstance(data, dict):
        raise MalformedConfig(f"preset {name} must hold a JSON object")
    config = {k: v for k, v in data.items() if not k.startswith(_presets.META_PREFIX)}
    return _Source(model=name, source=f"preset {name}", config=config, model_id=data.get("_model_id"),
                   provenance=data.get("_source"), quantized_from=data.get("_quantized_from"),
                   hf_quant_config=data.get("_hf_quant_config"),
                   hf_quant_source=f"preset {name} hf_quant_config.json")


def _find_preset(text: str) -> str | None:
    key = text.strip().lower().removesuffix(".json")
    names = _presets.preset_names()
    if key in names:
        return key
    for name in names:  # a preset's Hugging Face id works too ("Qwen/Qwen3-30B-A3B")
        model_id = (_presets.load_preset(name) or {}).get("_model_id")
        if isinstance(model_id, str) and model_id.lower() == key:
            return name
    return None


def _load(source: str | os.PathLike[str]) -> _Source:
    if not isinstance(source, (str, os.PathLike)):
        raise UnknownPreset(f"model source must be a preset name or a path, not {type(source).__name__}")
    text = os.fspath(source)
    if not isinstance(text, str) or not text.strip():
        raise UnknownPreset("empty model source; give a preset name, a model directory or a config.json path")
    if "\0" in text:
        raise ConfigNotFound("model source contains a NUL character")
    try:
        path = Path(text).expanduser()
        exists = path.exists()
    except (OSError, RuntimeError) as exc:  # name too long, unknown ~user
        raise ConfigNotFound(f"cannot use {text[:80]!r} as a path: {getattr(exc, 'strerror', None) or exc}") from None
    if exists:
        return _from_path(path)
    preset = _find_preset(text)
    if preset is not None:
        return _from_preset(preset)
    looks_like_path = (text.endswith(".json") or text.startswith((".", "/", "~")) or text.count("/") > 1
                       or (os.sep != "/" and os.sep in text))
    if looks_like_path:
        raise ConfigNotFound(f"no such file or directory: {text}")
    raise UnknownPreset(f"{text!r} is neither a bundled preset (or a preset's Hugging Face id) nor an existing "
                        f"model directory or config.json; presets: {', '.join(_presets.preset_names())}")


# --- Reading the config ----------------------------------------------------------------------

_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOPK_KEYS = ("num_experts_per_tok", "top_k_experts", "experts_per_token", "moe_k", "moe_topk")
_WIDTH_KEYS = ("moe_intermediate_size", "intermediate_size")
_ACT_KEYS = ("mlp_hidden_act", "hidden_activation", "hidden_act")
_DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16",
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


def _dtype(text: Mapping[str, Any], config: Mapping[str, Any]) -> str:
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
    if value not in _EXPERT_DTYPES:
        raise MalformedConfig(f"{r.where}: expert_dtype must be one of {', '.join(_EXPERT_DTYPES)}, got {value!r}")
    if _EXPERT_DTYPES[value] is None:
        return None
    notes.append("expert_dtype fp4: routed experts are MXFP4 with MXFP8 activations (vLLM falls back to BF16 "
                 "activations when no backend runs MXFP8 ones: --quant mxfp4 plans that)")
    return QuantScheme.parse(_EXPERT_DTYPES[value])


def _heads(r: _Reader) -> tuple[int | None, int | None]:
    heads = r.cfg.get("num_attention_heads")
    kv = r.cfg.get("num_key_value_heads", heads)
    ok = [v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None for v in (heads, kv)]
    return ok[0], ok[1] if ok[0] else None


def _plan(src: _Source, *, device: DeviceSpec | str | None, parallel: ParallelConfig,
          quant: QuantScheme | str | None, select: bool, select_kwargs: dict[str, Any],
          memory_mode: str = "prefer") -> ModelPlan:
    if not isinstance(parallel, ParallelConfig):
        raise PlanError(f"parallel must be a ParallelConfig, got {type(parallel).__name__}")
    if quant is not None and not isinstance(quant, (QuantScheme, str)):
        raise PlanError(f"quant must be a QuantScheme or a string such as 'nvfp4', got {type(quant).__name__}")
    if device is not None and not isinstance(device, (DeviceSpec, str)):
        raise PlanError(f"device must be a preset name or a DeviceSpec, got {type(device).__name__}")
    config = src.config
    text, wrapper = _pick_text_config(config)
    where = src.source if text is config else f"{src.source} text_config"
    model_type = str(text.get("model_type") or config.get("model_type") or "").lower()
    if model_type == "dbrx":
        text = _dbrx_view(text, where)
    r = _Reader(text, where)
    notes: list[str] = []

    for key, refuse in _REFUSED_KEYS.items():
        reason = refuse(text.get(key))
        if reason:
            raise MalformedConfig(f"{where}: {reason}")
    if r.first(_EXPERT_KEYS) is None:
        kind = model_type or "unknown model_type"
        raise NotAMoEModel(f"{where} ({kind}) declares no routed experts "
                           f"(none of {', '.join(_EXPERT_KEYS)}); not a MoE model")
    num_layers = r.required_int(("num_hidden_layers",))
    if num_layers > MAX_LAYERS:
        raise MalformedConfig(f"{where}: num_hidden_layers {num_layers} is above the limit of {MAX_LAYERS}")
    expert_key, experts = r.per_layer(_EXPERT_KEYS, num_layers, minimum=0)
    if not any(experts):
        raise NotAMoEModel(f"{where}: {expert_key} is 0; not a MoE model")
    _, top_ks = r.per_layer(_TOPK_KEYS, num_layers)
    _, widths = r.per_layer(_WIDTH_KEYS, num_layers)
    hidden = r.required_int(("hidden_size",))
    latent = r.cfg.get("moe_latent_size")
    if latent is not None:
        # Nemotron 3 Super LatentMoE: fc1_latent_proj (hidden -> latent) runs before the experts and
        # fc2_latent_proj after, so the expert GEMMs see the latent width (vLLM nemotron_h.py NemotronHMoE).
        latent = r.integer("moe_latent_size", latent, minimum=1)
        notes.append(f"moe_latent_size {latent}: experts take the {latent}-wide latent, not hidden_size {hidden} "
                     "(the latent projections run outside the experts)")
        hidden = latent

    family = _FAMILIES.get(model_type, "generic")
    if family == "generic":
        notes.append(f"model_type {model_type or '(none)'!r} is not a known MoE family: routing is unknown "
                     "(rules that need it abstain) and layer names assume model.layers.N.mlp.experts")

    indices, rule = _moe_indices(r, num_layers)
    indices = [i for i in indices if experts[i] > 1]  # Jamba-style lists give dense layers 1 expert
    if not indices:
        raise NotAMoEModel(f"{where}: no layer is a MoE layer ({rule})")
    notes.append(f"{len(indices)} of {num_layers} layers are MoE ({rule})")
    if isinstance(text.get("num_hash_layers"), int) and text["num_hash_layers"] > 0:
        notes.append(f"the first {text['num_hash_layers']} MoE layers route by a token-id hash table (custom routing)")
    if isinstance(device, str):
        try:
            device = get_device(device)
        except ValueError as exc:
            raise PlanError(str(exc)) from None

    activation, act_params, bias = _activation(family, model_type, r, notes)
    routing, weight_on_input = _routing(family, text)
    dtype = _dtype(text, config)
    no_bf16 = device is not None and device.vendor == "nvidia" and device.sm is not None and device.sm < 80
    if dtype == "bf16" and no_bf16:
        # vLLM 0.33.0 config/model.py _resolve_auto_dtype + platforms/cuda.py supported_dtypes: no bf16 below SM80
        notes.append(f"{device.label()} has no bf16: planned in fp16, as engines run it (vLLM --dtype auto)")
        dtype = "fp16"

    # Quantization
    if quant is not None:
        qconf: QuantConfig | None = override_quant(quant)
        expert_scheme = None
    else:
        qconf = _quant_of(src, config, text, dtype, len(indices))
        expert_scheme = _expert_dtype(r, qconf, notes)
    unquantized = unquantized_scheme(dtype)
    attention_heads, kv_heads = _heads(r)

    # Layers
    template = _name_template(model_type, family, wrapper)
    specs: list[LayerSpec] = []
    for i in indices:
        name = template.format(i=i)
        scheme = _scheme_for(qconf, name, unquantized)
        if expert_scheme is not None and scheme != unquantized:
            scheme = expert_scheme
        try:
            specs.append(LayerSpec(name=name, index=i, num_experts=experts[i], top_k=top_ks[i], hidden_size=hidden,
                                   intermediate_size=widths[i], activation=activation, activation_params=act_params,
                                   quant=scheme, dtype=dtype, routing=routing, bias=bias,
                                   apply_router_weight_on_input=weight_on_input, parallel=parallel,
                                   attention_heads=attention_heads, kv_heads=kv_heads))
        except ValidationError as exc:
            cls = ParallelismError if (widths[i] % parallel.tp or experts[i] % parallel.ep) else InvalidLayer
            raise cls(f"{name} (layer {i}): {validation_one_line(exc, first_only=True)}") from None

    summary = qconf.summary if qconf else unquantized.label()
    if expert_scheme is not None:
        summary += f"; routed experts {expert_scheme.label()} (expert_dtype fp4)"
    memory = None
    if select:
        layers, memory = _select(specs, device, select_kwargs, memory_mode)
    else:
        layers = tuple(LayerPlan(layer=s) for s in specs)
    return ModelPlan(model=src.model, model_id=src.model_id, source=src.source, provenance=src.provenance,
                     device=device, parallel=parallel, quantization=summary,
                     num_hidden_layers=num_layers, layers=layers, notes=tuple(notes), memory=memory)


def _scheme_for(qconf: QuantConfig | None, name: str, unquantized: QuantScheme) -> QuantScheme:
    if qconf is None:
        return unquantized
    try:
        return qconf.scheme_for(name)
    except (TypeError, AttributeError, KeyError, IndexError) as exc:  # a field of an unexpected JSON type
        raise QuantConfigError(f"{qconf.source}: malformed quantization config for {name} "
                               f"({one_line(exc)})") from None


def _select(specs: list[LayerSpec], device: DeviceSpec | None, kwargs: dict[str, Any],
            memory_mode: str) -> tuple[tuple[LayerPlan, ...], "MemoryFit | None"]:
    try:
        from .selection import select_backend
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.selection":
            raise
        raise SelectionUnavailable("backend selection is not available (moe_registry.selection is missing); "
                                   "plan with select=False") from None
    from .errors import NoEligibleBackend
    from .memory import MEMORY_MODES, fit
    from .schemas.device import detect

    if memory_mode not in MEMORY_MODES:
        raise PlanError(f"unknown memory mode {memory_mode!r}; one of {', '.join(MEMORY_MODES)}")

    counts: dict[LayerSpec, int] = {}
    for spec in specs:  # identical layers are selected once, without name and index
        counts[spec.shape_key()] = counts.get(spec.shape_key(), 0) + 1

    results: dict[tuple[LayerSpec, tuple], Selection | NoEligibleBackend] = {}

    def select_key(key: LayerSpec, extra: tuple = ()) -> Selection | NoEligibleBackend:
        if (key, extra) not in results:
            try:
                more = {"extra_reasons": extra} if extra else {}
                results[key, extra] = select_backend(key, device, **more, **kwargs)
            except NoEligibleBackend as exc:  # recorded, so the other layers are still planned
                results[key, extra] = exc
        return results[key, extra]

    # Memory fit is a function of the whole plan: it adds memory_exceeded reasons, then selection reruns.
    target = device if device is not None else detect()
    extras, memory = fit(counts, lambda k, e: (r if isinstance(r := select_key(k, e), Selection) else None),
                         target, memory_mode)  # type: ignore[arg-type]
    done: dict[LayerSpec, LayerPlan] = {}
    for key in counts:
        result = select_key(key, extras[key])
        if isinstance(result, Selection):
            done[key] = LayerPlan(layer=key, selection=result)
        else:
            lines = str(result).splitlines()
            done[key] = LayerPlan(layer=key, error=lines[0] if lines else type(result).__name__,
                                  rejections=tuple(getattr(result, "rejections", ())))
    return tuple(done[spec.shape_key()].model_copy(update={"layer": spec}) for spec in specs), memory


# --- Public API ------------------------------------------------------------------------------


def plan_model(source: str | os.PathLike[str], device: DeviceSpec | str | None = None,
               parallel: ParallelConfig = ParallelConfig(), quant: QuantScheme | str | None = None, *,
               select: bool = True, memory: str = "prefer", **select_kwargs: Any) -> ModelPlan:
    """Plan every MoE layer of a model.

    ``source``: a bundled preset name (``gemma-4-26b-a4b``) or its Hugging Face id, a model
    directory, or a path to a ``config.json``. ``device``: a DeviceSpec or preset name (``"b200"``),
    None for this machine. ``quant``: a scheme (or ``"nvfp4"``-style string) for every MoE layer,
    overriding the checkpoint's. ``select=False`` builds the LayerSpecs only. Remaining keyword
    arguments (``force``, ``prefer``, ``forbid``, ``policy``) go to ``select_backend``, which runs
    once per distinct layer shape. ``memory``: how the whole-model expert weights per GPU are fitted
    to the device (``prefer``, ``strict``, ``report``; see :mod:`moe_registry.memory`), reported in
    ``ModelPlan.memory``. Raises :class:`PlanError` (one line) on any bad input.
    """
    return _plan(_load(source), device=device, parallel=parallel, quant=quant, select=select,
                 select_kwargs=select_kwargs, memory_mode=memory)


def plan_config(config: Mapping[str, Any], device: DeviceSpec | str | None = None,
                parallel: ParallelConfig = ParallelConfig(), quant: QuantScheme | str | None = None, *,
                name: str = "config", hf_quant_config: Mapping[str, Any] | None = None,
                quantize_config: Mapping[str, Any] | None = None, select: bool = True, memory: str = "prefer",
                **select_kwargs: Any) -> ModelPlan:
    """:func:`plan_model` for a config already in memory (companion files given as arguments)."""
    if not isinstance(config, Mapping):
        raise MalformedConfig(f"{name} must be a JSON object, not {type(config).__name__}")
    src = _Source(model=name, source=name, config=dict(config), hf_quant_config=hf_quant_config,
                  hf_quant_source=f"{name} hf_quant_config", quantize_config=quantize_config,
                  quantize_source=f"{name} quantize_config")
    return _plan(src, device=device, parallel=parallel, quant=quant, select=select, select_kwargs=select_kwargs,
                 memory_mode=memory)


def list_presets() -> dict[str, str]:
    """Bundled presets: name -> ``"<model id>; <quantization>"`` (for ``moe-registry models``)."""
    out = {}
    for name in _presets.preset_names():
        src = _from_preset(name)
        text, _ = _pick_text_config(src.config)
        qconf = _quant_of(src, src.config, text, _dtype(text, src.config))
        model = src.model_id or (f"{src.quantized_from} (quantized export)" if src.quantized_from else name)
        out[name] = f"{model}; {qconf.summary if qconf else _dtype(text, src.config)}"
    return out


def single_layer(*, experts: int, top_k: int, hidden: int, intermediate: int, activation: str = "silu",
                 quant: QuantScheme | str | None = None, dtype: str | None = None, swiglu_limit: float | None = None,
                 routing: str | None = None, bias: bool = False, router_weight_on_input: bool = False,
                 parallel: ParallelConfig = ParallelConfig()) -> LayerSpec:
    """One MoE layer from its shape: the one spelling behind `moe-registry select` and `bench layer`
    (flags or ``layer:experts=..,top_k=..``). ``swiglu_limit``: the clamp of swigluoai / silu_clamp
    (a config's ``swiglu_limit``; silu_clamp needs it). ValueError (one line) on a bad combination."""
    act = Activation.parse(activation)
    if swiglu_limit is not None and act not in (Activation.SWIGLUOAI, Activation.SILU_CLAMP):
        raise ValueError(f"--swiglu-limit applies to swigluoai and silu_clamp, not {act.value}")
    if act is Activation.SILU_CLAMP and swiglu_limit is None:
        raise ValueError("silu_clamp needs --swiglu-limit (the config's swiglu_limit)")
    params = (SwigluOAIParams() if swiglu_limit is None else SwigluOAIParams(limit=swiglu_limit)) \
        if act is Activation.SWIGLUOAI else SiluClampParams(limit=swiglu_limit) if swiglu_limit is not None else None
    return LayerSpec(
        num_experts=experts, top_k=top_k, hidden_size=hidden, intermediate_size=intermediate, activation=act,
        quant=quant or "bf16", dtype=dtype or "bf16", routing=routing, bias=bias,
        apply_router_weight_on_input=router_weight_on_input, parallel=parallel, activation_params=params)
