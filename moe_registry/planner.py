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
  (Gemma) / ``hidden_act``, through :meth:`Activation.parse`.
* Which layers are MoE, first rule whose key is present: ``hybrid_override_pattern`` (Nemotron-H:
  ``E`` positions) or ``layers_block_type`` (``"moe"`` entries); ``enable_moe_block`` (Gemma 4: all
  layers); ``moe_layers``, else ``interleave_moe_layer_step`` s -> ``range(s-1, L, s)`` (Llama 4);
  ``first_k_dense_replace`` k / ``moe_layer_freq`` f -> ``i >= k and i % f == 0`` (DeepSeek, GLM,
  Kimi remote code); ``decoder_sparse_step`` s / ``mlp_only_layers`` -> ``i not in mlp_only_layers
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
from .schemas.activation import Activation, SwigluOAIParams
from .schemas.device import DeviceSpec, get_device
from .schemas.layer import MAX_LAYERS, LayerSpec, ParallelConfig, RoutingMethod
from .schemas.quant import QuantScheme
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
        raise MalformedConfig(f"{where} is not valid JSON: {' '.join(str(exc).split())}") from None
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

_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
_TOPK_KEYS = ("num_experts_per_tok", "top_k_experts", "experts_per_token")
_ACT_KEYS = ("mlp_hidden_act", "hidden_activation", "hidden_act")
_DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16",
           "float32": "fp32", "fp32": "fp32", "float": "fp32"}

_FAMILIES = {
    "gemma4": "gemma4", "gemma4_text": "gemma4",
    "llama4": "llama4", "llama4_text": "llama4",
    "mixtral": "mixtral",
    "qwen2_moe": "qwen", "qwen3_moe": "qwen", "qwen3_vl_moe_text": "qwen", "qwen3_next": "qwen",
    "deepseek_v2": "deepseek", "deepseek_v3": "deepseek", "kimi_k2": "deepseek", "glm4_moe": "deepseek",
    "gpt_oss": "gpt_oss",
    "nemotron_h": "nemotron_h",
}
# transformers config-class defaults, used when a config leaves the activation out
_DEFAULT_ACT = {"gemma4": "gelu_pytorch_tanh", "nemotron_h": "relu2", "deepseek": "silu", "qwen": "silu",
                "mixtral": "silu", "llama4": "silu"}


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


def _name_template(family: str, wrapper: str | None) -> str:
    if family == "gemma4":
        return "model.language_model.layers.{i}.experts" if wrapper else "model.layers.{i}.experts"
    if family == "llama4":
        return "language_model.model.layers.{i}.feed_forward.experts" if wrapper else "model.layers.{i}.feed_forward.experts"
    if family == "mixtral":
        return "model.layers.{i}.block_sparse_moe.experts"
    if family == "nemotron_h":
        return "backbone.layers.{i}.mixer.experts"
    if wrapper == "kimi_k25":
        return "language_model.model.layers.{i}.mlp.experts"
    if wrapper:  # transformers >= 4.52 multimodal layout (Qwen3-VL-MoE, ...)
        return "model.language_model.layers.{i}.mlp.experts"
    return "model.layers.{i}.mlp.experts"


def _routing(family: str, cfg: Mapping[str, Any]) -> tuple[RoutingMethod | None, bool]:
    """(routing method, apply_router_weight_on_input)."""
    if family == "qwen":
        renorm = bool(cfg.get("norm_topk_prob", False))
        return (RoutingMethod.SOFTMAX_TOPK_RENORM if renorm else RoutingMethod.SOFTMAX_TOPK), False
    if family == "mixtral":
        return RoutingMethod.SOFTMAX_TOPK_RENORM, False
    if family == "deepseek":
        if str(cfg.get("scoring_func", "sigmoid")).lower() == "softmax":
            return RoutingMethod.CUSTOM, False  # DeepSeek-V2 group-limited softmax: no kernel enum
        return RoutingMethod.DEEPSEEK_V3, False
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
                notes: list[str]) -> tuple[Activation, SwigluOAIParams | None, bool]:
    """(activation, its parameters, expert biases)."""
    if family == "gpt_oss":
        limit = r.cfg.get("swiglu_limit", 7.0)
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise MalformedConfig(f"{r.where}: swiglu_limit must be a number, got {limit!r}")
        if not (isinstance(limit, float) or abs(limit) < 2**53) or not math.isfinite(limit) or limit <= 0:
            raise MalformedConfig(f"{r.where}: swiglu_limit must be a finite positive number, got {limit!r}")
        notes.append(f"gpt-oss experts run swigluoai (alpha 1.702, limit {float(limit):g}, interleaved gate/up, "
                     f"up + 1) with biases, whatever hidden_act says ({r.cfg.get('hidden_act')!r})")
        return Activation.SWIGLUOAI, SwigluOAIParams(limit=float(limit), interleaved=True), True
    found = r.first(_ACT_KEYS)
    if found is None:
        if family not in _DEFAULT_ACT:
            raise MalformedConfig(f"{r.where} has no {' / '.join(_ACT_KEYS)}")
        found = ("default", _DEFAULT_ACT[family])
        notes.append(f"{r.where} gives no activation; the {model_type} default {found[1]!r} is assumed")
    if not isinstance(found[1], str):
        raise MalformedConfig(f"{r.where}: {found[0]} must be a string, got {found[1]!r}")
    try:
        return Activation.parse(found[1]), None, False
    except ValueError as exc:
        raise MalformedConfig(f"{r.where}: {found[0]}: {exc}") from None


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
                               f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    msg = str(err.get("msg", exc)).removeprefix("Value error, ")
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {msg}" if loc else msg


def _plan(src: _Source, *, device: DeviceSpec | str | None, parallel: ParallelConfig,
          quant: QuantScheme | str | None, select: bool, select_kwargs: dict[str, Any]) -> ModelPlan:
    if not isinstance(parallel, ParallelConfig):
        raise PlanError(f"parallel must be a ParallelConfig, got {type(parallel).__name__}")
    if quant is not None and not isinstance(quant, (QuantScheme, str)):
        raise PlanError(f"quant must be a QuantScheme or a string such as 'nvfp4', got {type(quant).__name__}")
    if device is not None and not isinstance(device, (DeviceSpec, str)):
        raise PlanError(f"device must be a preset name or a DeviceSpec, got {type(device).__name__}")
    config = src.config
    text, wrapper = _pick_text_config(config)
    where = src.source if text is config else f"{src.source} text_config"
    r = _Reader(text, where)
    notes: list[str] = []

    if r.first(_EXPERT_KEYS) is None:
        kind = text.get("model_type") or config.get("model_type") or "unknown model_type"
        raise NotAMoEModel(f"{where} ({kind}) declares no routed experts "
                           f"(none of {', '.join(_EXPERT_KEYS)}); not a MoE model")
    num_experts = r.required_int(_EXPERT_KEYS, minimum=0)
    if num_experts == 0:
        raise NotAMoEModel(f"{where}: {r.first(_EXPERT_KEYS)[0]} is 0; not a MoE model")
    top_k = r.required_int(_TOPK_KEYS)
    hidden = r.required_int(("hidden_size",))
    width = r.required_int(("moe_intermediate_size", "intermediate_size"))
    num_layers = r.required_int(("num_hidden_layers",))
    if num_layers > MAX_LAYERS:
        raise MalformedConfig(f"{where}: num_hidden_layers {num_layers} is above the limit of {MAX_LAYERS}")

    model_type = str(text.get("model_type") or config.get("model_type") or "").lower()
    family = _FAMILIES.get(model_type, "generic")
    if family == "generic":
        notes.append(f"model_type {model_type or '(none)'!r} is not a known MoE family: routing is unknown "
                     "(rules that need it abstain) and layer names assume model.layers.N.mlp.experts")

    indices, rule = _moe_indices(r, num_layers)
    if not indices:
        raise NotAMoEModel(f"{where}: no layer is a MoE layer ({rule})")
    notes.append(f"{len(indices)} of {num_layers} layers are MoE ({rule})")
    if isinstance(device, str):
        try:
            device = get_device(device)
        except ValueError as exc:
            raise PlanError(str(exc)) from None

    activation, act_params, bias = _activation(family, model_type, r, notes)
    routing, weight_on_input = _routing(family, text)
    dtype = _dtype(text, config)

    # Quantization
    if quant is not None:
        qconf: QuantConfig | None = override_quant(quant)
    else:
        qconf = _quant_of(src, config, text, dtype, len(indices))
    unquantized = unquantized_scheme(dtype)

    # Layers
    template = _name_template(family, wrapper)
    specs: list[LayerSpec] = []
    for i in indices:
        name = template.format(i=i)
        scheme = _scheme_for(qconf, name, unquantized)
        try:
            specs.append(LayerSpec(name=name, index=i, num_experts=num_experts, top_k=top_k, hidden_size=hidden,
                                   intermediate_size=width, activation=activation, activation_params=act_params,
                                   quant=scheme, dtype=dtype, routing=routing, bias=bias,
                                   apply_router_weight_on_input=weight_on_input, parallel=parallel))
        except ValidationError as exc:
            cls = ParallelismError if (width % parallel.tp or num_experts % parallel.ep) else InvalidLayer
            raise cls(f"{name} (layer {i}): {_one_line(exc)}") from None

    layers = _select(specs, device, select_kwargs) if select else tuple(LayerPlan(layer=s) for s in specs)
    return ModelPlan(model=src.model, model_id=src.model_id, source=src.source, provenance=src.provenance,
                     device=device, parallel=parallel, quantization=qconf.summary if qconf else unquantized.label(),
                     num_hidden_layers=num_layers, layers=layers, notes=tuple(notes))


def _scheme_for(qconf: QuantConfig | None, name: str, unquantized: QuantScheme) -> QuantScheme:
    if qconf is None:
        return unquantized
    try:
        return qconf.scheme_for(name)
    except (TypeError, AttributeError, KeyError, IndexError) as exc:  # a field of an unexpected JSON type
        raise QuantConfigError(f"{qconf.source}: malformed quantization config for {name} "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None


def _select(specs: list[LayerSpec], device: DeviceSpec | None, kwargs: dict[str, Any]) -> tuple[LayerPlan, ...]:
    try:
        from .selection import select_backend
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.selection":
            raise
        raise SelectionUnavailable("backend selection is not available (moe_registry.selection is missing); "
                                   "plan with select=False") from None
    from .errors import NoEligibleBackend

    done: dict[LayerSpec, LayerPlan] = {}
    out = []
    for spec in specs:
        key = spec.shape_key()
        if key not in done:  # identical layers are selected once, without name and index
            try:
                done[key] = LayerPlan(layer=key, selection=select_backend(key, device, **kwargs))
            except NoEligibleBackend as exc:  # recorded, so the other layers are still planned
                lines = str(exc).splitlines()
                done[key] = LayerPlan(layer=key, error=lines[0] if lines else type(exc).__name__,
                                      rejections=tuple(getattr(exc, "rejections", ())))
        out.append(done[key].model_copy(update={"layer": spec}))
    return tuple(out)


# --- Public API ------------------------------------------------------------------------------


def plan_model(source: str | os.PathLike[str], device: DeviceSpec | str | None = None,
               parallel: ParallelConfig = ParallelConfig(), quant: QuantScheme | str | None = None, *,
               select: bool = True, **select_kwargs: Any) -> ModelPlan:
    """Plan every MoE layer of a model.

    ``source``: a bundled preset name (``gemma-4-26b-a4b``) or its Hugging Face id, a model
    directory, or a path to a ``config.json``. ``device``: a DeviceSpec or preset name (``"b200"``),
    None for this machine. ``quant``: a scheme (or ``"nvfp4"``-style string) for every MoE layer,
    overriding the checkpoint's. ``select=False`` builds the LayerSpecs only. Remaining keyword
    arguments (``force``, ``prefer``, ``forbid``, ``policy``) go to ``select_backend``, which runs
    once per distinct layer shape. Raises :class:`PlanError` (one line) on any bad input.
    """
    return _plan(_load(source), device=device, parallel=parallel, quant=quant, select=select,
                 select_kwargs=select_kwargs)


def plan_config(config: Mapping[str, Any], device: DeviceSpec | str | None = None,
                parallel: ParallelConfig = ParallelConfig(), quant: QuantScheme | str | None = None, *,
                name: str = "config", hf_quant_config: Mapping[str, Any] | None = None,
                quantize_config: Mapping[str, Any] | None = None, select: bool = True,
                **select_kwargs: Any) -> ModelPlan:
    """:func:`plan_model` for a config already in memory (companion files given as arguments)."""
    if not isinstance(config, Mapping):
        raise MalformedConfig(f"{name} must be a JSON object, not {type(config).__name__}")
    src = _Source(model=name, source=name, config=dict(config), hf_quant_config=hf_quant_config,
                  hf_quant_source=f"{name} hf_quant_config", quantize_config=quantize_config,
                  quantize_source=f"{name} quantize_config")
    return _plan(src, device=device, parallel=parallel, quant=quant, select=select, select_kwargs=select_kwargs)


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
