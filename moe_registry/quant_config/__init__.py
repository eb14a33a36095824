"""Checkpoint quantization configs -> the QuantScheme of each MoE experts layer.

A checkpoint says how it is quantized in one of five formats; each format names the layers it
leaves unquantized in its own matching language. This package reads the format and answers one
question per MoE layer: ``resolve(config).scheme_for("model.layers.3.mlp.experts")``. An
excluded MoE layer gets the model's unquantized scheme (bf16, or fp16 for fp16 checkpoints),
as engines give an excluded ``FusedMoE`` the unquantized MoE method (SGLang ``modelopt_quant.py``:
"Falls back to default unquantized MoE"). No torch here.

Names are *checkpoint* module paths (``model.language_model.layers.3.experts``), the names the
patterns in the file were written against, not an engine's runtime prefixes.

Matching rules, per format, and the engine code each mirrors
-------------------------------------------------------------
``re:`` patterns are everywhere regexes applied with ``re.match`` semantics (anchored at the start,
not at the end), as compressed-tensors and vLLM ``_is_equal_or_regex_match`` do; they run on RE2
(linear time; a pattern RE2 cannot run, such as a lookahead, is an error naming its field). The
engine, the bounds and how much matching one plan may do: :mod:`moe_registry.quant_config.patterns`.

ModelOpt (``hf_quant_config.json`` ``quantization.exclude_modules``, or the flat
``quantization_config.ignore``)
    Globs (``*`` matches any run of characters, dots included: SGLang
    ``ModelOptQuantConfig.is_layer_excluded`` turns ``*`` into ``.*`` and full-matches; we use
    ``fnmatch.fnmatchcase``'s meaning, which does the same for these patterns, run on RE2). A pattern excludes the MoE
    layer when it full-matches the experts module name **or any ancestor** of it
    (``model.layers.3.mlp`` excludes ``model.layers.3.mlp.experts``; TensorRT-LLM
    ``QuantConfig.is_module_excluded_from_quantization`` walks ancestors), and a trailing ``.*``
    also matches the parent itself (TensorRT-LLM). A wildcard-free entry naming something *inside*
    the experts module (``model.layers.3.mlp.experts.0.w1``) excludes the whole fused layer, as
    vLLM ``is_layer_skipped`` does for prefixes containing ``experts`` (a fused MoE cannot be half
    quantized). ``MIXED_PRECISION``: ``quantized_layers[<experts name>]`` gives the layer's
    algorithm; failing that, entries under it (per-expert or per-projection) must all agree;
    a layer with no entry is unquantized (TensorRT-LLM ``_build_modelopt_quant_config`` builds one
    QuantConfig per entry). A ``quant_algo`` without ``quant_method`` is still ModelOpt (vLLM has
    been seen to load such a checkpoint as unquantized and run out of memory).

compressed-tensors (``config_groups`` / ``ignore``)
    Resolved like vLLM ``CompressedTensorsMoEMethod.get_moe_method``: the three projections
    ``<experts>.0.gate_proj``, ``.0.up_proj``, ``.0.down_proj`` are each resolved, and all three
    must agree, else :class:`InconsistentMoEQuant` (vLLM: "All MoE projections need to have same
    quantization scheme but found multiple"). For one projection: an ``ignore`` entry that equals
    the name or ``re:``-matches it leaves it unquantized; otherwise the first group target that
    equals the name or ``re:``-matches it wins, and only then a class-name target (vLLM
    ``find_matched_target``: name matches before class matches). Expert projections are
    ``Linear`` modules, and vLLM adds ``FusedMoE`` wherever ``Linear`` is targeted
    (``_add_fused_moe_to_target_scheme_map``), so the class names ``Linear`` and ``FusedMoE``
    match; other class names (``Embedding``, ``Conv2d``) never do.

GPTQ / AWQ (``quantization_config`` or ``quantize_config.json``)
    ``modules_to_not_convert`` entries are substrings of the experts module name (vLLM
    ``is_layer_skipped_awq`` / MoeWNA16 ``is_layer_skipped_quant``: ``module_name in prefix``), so
    AWQ's usual ``["gate"]`` (the router) does not touch ``model.layers.3.mlp.experts``; an entry
    with ``*`` is a glob as for ModelOpt (TensorRT-LLM merges ``modules_to_not_convert`` into
    ``exclude_modules``). GPTQModel ``dynamic``: keys ``-:<regex>`` skip, ``+:<regex>`` (or a
    bare regex) override ``bits`` / ``group_size`` / ``sym`` / ``desc_act``; the first key whose
    regex ``re.match``-es the experts module name decides (vLLM ``get_dynamic_override``, applied
    to the FusedMoE prefix by ``get_moe_quant_method``).

FP8 (``quant_method: fp8``)
    ``weight_block_size: [128, 128]`` -> ``fp8_block``; absent -> ``fp8`` (per tensor); other
    block shapes are rejected. ``ignored_layers`` and ``modules_to_not_convert``: globs as for
    ModelOpt, otherwise vLLM ``is_layer_skipped`` for experts (the experts name equals an entry,
    or is a substring of an entry that contains ``experts``).

MXFP4 (``quant_method: mxfp4``, gpt-oss)
    Experts only: every MoE layer is ``mxfp4`` unless ``modules_to_not_convert`` excludes it
    (globs as for ModelOpt, wildcard-free entries by equality with the name or an ancestor).
    vLLM's and older SGLang's ``Mxfp4Config.from_config`` ignore the list; transformers honours it.

Anything else (``bitsandbytes``, ``quark``, ...) raises :class:`UnknownQuantMethod`; a known format
whose parameters have no :class:`QuantScheme` (int8, FP8 per channel, MXFP8 weights) raises
:class:`UnsupportedQuantScheme`. Every error is one line and derives from ``ValueError``.

Modules: ``base`` (:class:`QuantConfig`, the errors, helpers every parser shares), ``patterns``
(name matching), one per format family (``modelopt``, ``compressed_tensors``, ``int4`` for GPTQ
and AWQ, ``fp8`` for FP8 and MXFP4), ``override`` (``--quant``); this one picks the format and
parses it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..schemas.quant import QuantScheme
from .base import (
    InconsistentMoEQuant,
    PlanError,
    QuantConfig,
    QuantConfigError,
    UnknownQuantMethod,
    UnsupportedQuantScheme,
    _as_list,
    unquantized_scheme,
)
from .patterns import (
    MAX_FALLBACK_CHOICES,
    MAX_NAME_CHECKS,
    MAX_PATTERN_CHARS,
    MAX_PATTERN_CHECKS,
    MAX_QUANT_DEPTH,
    ancestors,
    check_entries,
    check_glob,
    check_matching_budget,
    check_pattern,
    glob_regex,
)

__all__ = [
    "CompressedTensorsQuant",
    "Fp8Quant",
    "InconsistentMoEQuant",
    "MAX_FALLBACK_CHOICES",
    "MAX_NAME_CHECKS",
    "MAX_PATTERN_CHARS",
    "MAX_PATTERN_CHECKS",
    "MAX_QUANT_DEPTH",
    "ModelOptQuant",
    "Mxfp4Quant",
    "OverrideQuant",
    "PlanError",
    "QuantConfig",
    "QuantConfigError",
    "SUPPORTED_METHODS",
    "UnknownQuantMethod",
    "UnsupportedQuantScheme",
    "WeightOnlyInt4Quant",
    "ancestors",
    "check_entries",
    "check_glob",
    "check_matching_budget",
    "check_pattern",
    "glob_regex",
    "override_quant",
    "parse_quant_config",
    "unquantized_scheme",
]


SUPPORTED_METHODS = ("modelopt", "compressed-tensors", "gptq", "awq", "fp8", "mxfp4")

# A config is in one format, so only that format's module is imported (parse_quant_config): the four
# of them, with their dataclasses, cost ~8 ms at import, which every `explain` would pay. Their
# classes are still reachable from here, on first access (PEP 562).
_FORMAT_CLASSES = {
    "CompressedTensorsQuant": "compressed_tensors",
    "Fp8Quant": "fp8",
    "Mxfp4Quant": "fp8",
    "WeightOnlyInt4Quant": "int4",
    "ModelOptQuant": "modelopt",
    "OverrideQuant": "override",
}


def __getattr__(name: str) -> Any:
    module = _FORMAT_CLASSES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


if TYPE_CHECKING:
    from .compressed_tensors import CompressedTensorsQuant
    from .fp8 import Fp8Quant, Mxfp4Quant
    from .int4 import WeightOnlyInt4Quant
    from .modelopt import ModelOptQuant
    from .override import OverrideQuant


# --- Parsing ----------------------------------------------------------------------------------


def _method_of(qc: Mapping[str, Any]) -> str:
    method = qc.get("quant_method")
    if method is None:
        producer = qc.get("producer")
        if "quant_algo" in qc or "quantization" in qc or (isinstance(producer, Mapping)
                                                          and producer.get("name") == "modelopt"):
            return "modelopt"
        if "bits" in qc or "w_bit" in qc:  # AutoGPTQ quantize_config.json has no quant_method
            return "gptq"
        return ""
    method = str(method).strip().lower().replace("_", "-")
    if method.startswith("modelopt"):
        return "modelopt"
    return method


def parse_quant_config(qc: Any, *, source: str, dtype: str = "bf16") -> QuantConfig:
    """Parse one quantization config object (``quantization_config``, ``hf_quant_config.json``,
    ``quantize_config.json``). ``dtype`` ("bf16"/"fp16") is the scheme of unquantized layers."""
    if not isinstance(qc, Mapping):
        raise QuantConfigError(f"{source} must be a JSON object, got {type(qc).__name__}")
    unq = unquantized_scheme(dtype)
    method = _method_of(qc)
    if method == "modelopt":
        from .modelopt import _parse_modelopt

        return _parse_modelopt(qc, source, unq)
    if method == "compressed-tensors":
        from .compressed_tensors import _parse_compressed_tensors

        return _parse_compressed_tensors(qc, source, unq)
    if method in ("gptq", "awq"):
        from .int4 import _parse_int4

        return _parse_int4(qc, method, source, unq)
    if method == "fp8":
        from .fp8 import _parse_fp8

        return _parse_fp8(qc, source, unq)
    if method == "mxfp4":
        from .fp8 import Mxfp4Quant

        not_convert = tuple(_as_list(qc.get("modules_to_not_convert"), f"{source} modules_to_not_convert"))
        check_entries(not_convert, f"{source} modules_to_not_convert")
        return Mxfp4Quant(method="mxfp4", summary="MXFP4 experts", source=source, unquantized=unq,
                          not_convert=not_convert)
    shown = repr(qc.get("quant_method")) if qc.get("quant_method") is not None else "(no quant_method)"
    raise UnknownQuantMethod(
        f"{source}: unknown quantization method {shown}; supported: {', '.join(SUPPORTED_METHODS)}")


def override_quant(scheme: QuantScheme | str) -> OverrideQuant:
    """The ``--quant`` override: one scheme for every MoE layer."""
    if isinstance(scheme, str):
        try:
            scheme = QuantScheme.parse(scheme)
        except ValueError as exc:
            raise UnsupportedQuantScheme(f"--quant {scheme!r}: {exc}") from None
    if not isinstance(scheme, QuantScheme):
        raise UnsupportedQuantScheme(f"quant must be a QuantScheme or a string, got {type(scheme).__name__}")
    from .override import OverrideQuant

    return OverrideQuant(method="override", summary=f"{scheme.label()} (override)", source="quant=", scheme=scheme)
