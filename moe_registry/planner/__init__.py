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
non-finite numbers (``NaN``, ``Infinity``, ``1e999``, which Python's json module and transformers read) refused
where the planner uses one (an integer key, ``swiglu_limit``) and never carried into the output, at
most ``MAX_LAYERS`` (256) hidden layers, and the layer sizes of :class:`LayerSpec`.

Modules, each importing only those before it: ``results`` (the plan and the errors), ``sources``
(loading a source), ``reading`` (the config's keys), ``plan`` (LayerSpecs and selection); this one is
the public API.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from .. import models as _presets
from ..environment import Environment
from ..quant_config import (
    InconsistentMoEQuant,
    PlanError,
    QuantConfigError,
    UnknownQuantMethod,
    UnsupportedQuantScheme,
)
from ..schemas.activation import Activation, SiluClampParams, SwigluOAIParams
from ..schemas.device import DeviceSpec
from ..schemas.layer import LayerSpec, ParallelConfig
from ..schemas.quant import QuantScheme
from .plan import _check_arguments, _Layout, _plan, _read
from .reading import _dtype, _pick_text_config, _quant_of
from .results import (
    ConfigNotFound,
    InvalidLayer,
    LayerGroup,
    LayerPlan,
    MalformedConfig,
    ModelPlan,
    NotAMoEModel,
    ParallelismError,
    SelectionUnavailable,
    UnknownPreset,
)
from .sources import MAX_CONFIG_BYTES, MAX_JSON_DEPTH, _from_preset, _load, _Source

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_JSON_DEPTH",
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


_ONE_GPU = ParallelConfig()  # frozen: one shared default is safe


# --- Public API ------------------------------------------------------------------------------


def plan_model(source: str | os.PathLike[str], device: DeviceSpec | str | None = None,
               parallel: ParallelConfig = _ONE_GPU, quant: QuantScheme | str | None = None, *,
               select: bool = True, memory: str = "prefer", environment: Environment | None = None,
               **select_kwargs: Any) -> ModelPlan:
    """Plan every MoE layer of a model.

    ``source``: a bundled preset name (``gemma-4-26b-a4b``) or its Hugging Face id, a model
    directory, or a path to a ``config.json``. ``device``: a DeviceSpec or preset name (``"b200"``),
    None for this machine. ``quant``: a scheme (or ``"nvfp4"``-style string) for every MoE layer,
    overriding the checkpoint's. ``select=False`` builds the LayerSpecs only. Remaining keyword
    arguments (``force``, ``prefer``, ``forbid``, ``policy``) go to ``select_backend``, which runs
    once per distinct layer shape. ``memory``: how the whole-model expert weights per GPU are fitted
    to the device (``prefer``, ``strict``, ``report``; see :mod:`moe_registry.memory`), reported in
    ``ModelPlan.memory``. ``environment``: the machine the kernels will run on, as for
    ``select_backend`` (its device when ``device`` is None); left out, this machine is detected.
    Raises :class:`PlanError` (one line) on any bad input.
    """
    return _plan(_load(source), device=device, parallel=parallel, quant=quant, select=select,
                 select_kwargs=_with_environment(select_kwargs, environment), memory_mode=memory)


def _planner(source: str | os.PathLike[str], device: DeviceSpec | str | None, quant: QuantScheme | str | None, *,
             memory: str, environment: Environment | None = None,
             **select_kwargs: Any) -> Callable[[ParallelConfig], ModelPlan]:
    """``lambda parallel: plan_model(source, device, parallel, quant, ...)`` that reads ``source``
    (its config, its quantization config, each layer's scheme) once, at its first call, for all the
    layouts it plans: ``explain`` plans the model, then each layout it suggests."""
    select_kwargs = _with_environment(select_kwargs, environment)
    read: list[_Layout] = []

    def plan_on(parallel: ParallelConfig) -> ModelPlan:
        src = None if read else _load(source)  # plan_model's order: the source, the arguments, then the config
        _check_arguments(device, parallel, quant)
        if src is not None:
            read.append(_read(src, device, quant))
        return read[0](parallel, True, select_kwargs, memory)

    return plan_on


def _with_environment(select_kwargs: dict[str, Any], environment: Environment | None) -> dict[str, Any]:
    return select_kwargs if environment is None else {**select_kwargs, "environment": environment}


def plan_config(config: Mapping[str, Any], device: DeviceSpec | str | None = None,
                parallel: ParallelConfig = _ONE_GPU, quant: QuantScheme | str | None = None, *,
                name: str = "config", hf_quant_config: Mapping[str, Any] | None = None,
                quantize_config: Mapping[str, Any] | None = None, select: bool = True, memory: str = "prefer",
                environment: Environment | None = None, **select_kwargs: Any) -> ModelPlan:
    """:func:`plan_model` for a config already in memory (companion files given as arguments)."""
    if not isinstance(config, Mapping):
        raise MalformedConfig(f"{name} must be a JSON object, not {type(config).__name__}")
    src = _Source(model=name, source=name, config=dict(config), hf_quant_config=hf_quant_config,
                  hf_quant_source=f"{name} hf_quant_config", quantize_config=quantize_config,
                  quantize_source=f"{name} quantize_config")
    return _plan(src, device=device, parallel=parallel, quant=quant, select=select,
                 select_kwargs=_with_environment(select_kwargs, environment), memory_mode=memory)


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
                 parallel: ParallelConfig = _ONE_GPU) -> LayerSpec:
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
    return LayerSpec.model_validate(dict(
        num_experts=experts, top_k=top_k, hidden_size=hidden, intermediate_size=intermediate, activation=act,
        quant=quant or "bf16", dtype=dtype or "bf16", routing=routing, bias=bias,
        apply_router_weight_on_input=router_weight_on_input, parallel=parallel, activation_params=params))
