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
``re:`` patterns are everywhere Python regexes applied with ``re.match`` (anchored at the start,
not at the end), as compressed-tensors and vLLM ``_is_equal_or_regex_match`` do. Which patterns
are accepted (a subset that cannot backtrack catastrophically) and how much matching one plan may
do: :mod:`moe_registry.quant_config.patterns`.

ModelOpt (``hf_quant_config.json`` ``quantization.exclude_modules``, or the flat
``quantization_config.ignore``)
    Globs (``*`` matches any run of characters, dots included: SGLang
    ``ModelOptQuantConfig.is_layer_excluded`` turns ``*`` into ``.*`` and full-matches; we use
    ``fnmatch.fnmatchcase``, which does the same for these patterns). A pattern excludes the MoE
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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..schemas.quant import QuantKind, QuantScheme
from .base import (
    InconsistentMoEQuant,
    OverrideQuant,
    PlanError,
    QuantConfig,
    QuantConfigError,
    UnknownQuantMethod,
    UnsupportedQuantScheme,
    _as_list,
    _int,
    _scheme,
    unquantized_scheme,
)
from .patterns import (
    MAX_NAME_CHECKS,
    MAX_PATTERN_CHARS,
    MAX_PATTERN_LOOPS,
    MAX_REGEX_CHECKS,
    _ancestor_plain,
    _excludes,
    _fp8_plain,
    _modelopt_plain,
    _regex_match,
    _substring_plain,
    ancestors,
    check_matching_budget,
    check_pattern,
)

__all__ = [
    "CompressedTensorsQuant",
    "Fp8Quant",
    "InconsistentMoEQuant",
    "MAX_NAME_CHECKS",
    "MAX_PATTERN_CHARS",
    "MAX_PATTERN_LOOPS",
    "MAX_REGEX_CHECKS",
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
    "check_matching_budget",
    "check_pattern",
    "override_quant",
    "parse_quant_config",
    "unquantized_scheme",
]


SUPPORTED_METHODS = ("modelopt", "compressed-tensors", "gptq", "awq", "fp8", "mxfp4")

_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


# ModelOpt quant_algo -> our scheme (None: a known algorithm with no QuantScheme yet).
# NVFP4_AWQ is NVFP4 for the experts kernels (TensorRT-LLM MoEProblem treats it so).
_MODELOPT_ALGOS: dict[str, QuantKind | None] = {
    "NVFP4": QuantKind.NVFP4,
    "NVFP4_AWQ": QuantKind.NVFP4,
    "FP8": QuantKind.FP8,
    "FP8_BLOCK_SCALES": QuantKind.FP8_BLOCK,
    "W4A16_AWQ": QuantKind.INT4_W4A16,
    "W4A8_AWQ": QuantKind.INT4_FP8,
    "W4A16_MXFP4": QuantKind.MXFP4,
    "W4A8_MXFP4_MXFP8": QuantKind.MXFP4_MXFP8,
    "FP8_PER_CHANNEL_PER_TOKEN": None,
    "FP8_PB_WO": None,
    "MXFP8": None,
    "W4A8_MXFP4_FP8": None,
    "W8A16": None,
    "W8A8_SQ_PER_CHANNEL": None,
}


@dataclass(frozen=True)
class ModelOptQuant(QuantConfig):
    algo: str = "NVFP4"
    group_size: int | None = None
    exclude: tuple[str, ...] = ()
    # MIXED_PRECISION: layer name -> (algo, group_size)
    layers: tuple[tuple[str, str | None, int | None], ...] = ()  # (name, quant_algo, group_size)

    def _algo_scheme(self, algo: str | None, group_size: int | None, where: str) -> QuantScheme:
        if algo is None or algo.upper() in ("NONE", ""):
            return self.unquantized
        key = algo.upper()
        if key not in _MODELOPT_ALGOS:
            raise UnsupportedQuantScheme(
                f"{where}: unknown ModelOpt quant_algo {algo!r}; known: {', '.join(_MODELOPT_ALGOS)}")
        kind = _MODELOPT_ALGOS[key]
        if kind is None:
            raise UnsupportedQuantScheme(f"{where}: ModelOpt quant_algo {algo} has no moe-registry scheme yet")
        return _scheme(f"{where} ({algo})", kind=kind, group_size=group_size)

    def scheme_for(self, name: str) -> QuantScheme:
        if any(_excludes(pattern, name, _modelopt_plain) for pattern in self.exclude):
            return self.unquantized
        if self.algo.upper() != "MIXED_PRECISION":
            return self._algo_scheme(self.algo, self.group_size, self.source)
        exact = [(a, g) for n, a, g in self.layers if n == name]
        inside = {(a, g) for n, a, g in self.layers if n.startswith(name + ".")}
        if exact:
            algo, gs = exact[0]
        elif len(inside) == 1:
            algo, gs = next(iter(inside))
        elif inside:
            found = ", ".join(sorted(str(a) for a, _ in inside))
            raise InconsistentMoEQuant(
                f"{name}: MIXED_PRECISION quantized_layers give its experts different algorithms ({found})")
        else:
            return self.unquantized
        return self._algo_scheme(algo, gs, f"{self.source} quantized_layers[{name!r}]")


@dataclass(frozen=True)
class _CTGroup:
    name: str
    targets: tuple[str, ...]
    weights: Mapping[str, Any] | None
    input_activations: Mapping[str, Any] | None


_CT_CLASS_TARGETS = frozenset({"Linear", "FusedMoE"})


@dataclass(frozen=True)
class CompressedTensorsQuant(QuantConfig):
    groups: tuple[_CTGroup, ...] = ()
    ignore: tuple[str, ...] = ()

    def _group_for(self, proj: str) -> _CTGroup | None:
        for entry in self.ignore:
            if entry == proj or (entry.startswith("re:") and _regex_match(entry[3:], proj)):
                return None
        for group in self.groups:  # names (exact or re:) first ...
            for target in group.targets:
                if target == proj or (target.startswith("re:") and _regex_match(target[3:], proj)):
                    return group
        for group in self.groups:  # ... then class names
            if any(t in _CT_CLASS_TARGETS for t in group.targets):
                return group
        return None

    def _group_scheme(self, group: _CTGroup) -> QuantScheme:
        where = f"{self.source} config_groups[{group.name!r}]"
        w = group.weights
        if not w:
            return self.unquantized
        bits = _int(w.get("num_bits"), f"{where} weights.num_bits")
        wtype = str(w.get("type", "int")).lower()
        strategy = str(w.get("strategy") or "").lower()
        gs = _int(w.get("group_size"), f"{where} weights.group_size")
        a = group.input_activations or None
        a_bits = _int(a.get("num_bits"), f"{where} input_activations.num_bits") if a else None
        a_type = str(a.get("type", "int")).lower() if a else None
        desc = f"{wtype}{bits} weights ({strategy or 'no strategy'})" + (
            f", {a_type}{a_bits} activations" if a else ", 16-bit activations")
        if wtype == "float" and bits == 4:
            if gs == 32:  # MX: e8m0 scale per 32
                if a is None:
                    return _scheme(where, kind=QuantKind.MXFP4)
                if a_type == "float" and a_bits == 8:
                    return _scheme(where, kind=QuantKind.MXFP4_MXFP8)
            else:  # NVFP4: e4m3 scale per 16 (strategy tensor_group)
                if a is None:
                    return _scheme(where, kind=QuantKind.NVFP4_W4A16, group_size=gs)
                if a_type == "float" and a_bits == 4:
                    return _scheme(where, kind=QuantKind.NVFP4, group_size=gs)
        elif wtype == "float" and bits == 8 and a_type == "float" and a_bits == 8:
            if strategy == "tensor":
                return _scheme(where, kind=QuantKind.FP8)
            if strategy == "block":
                block = w.get("block_structure")
                if list(block or []) != [128, 128]:
                    raise UnsupportedQuantScheme(f"{where}: FP8 block_structure {block!r}; only [128, 128] is supported")
                return _scheme(where, kind=QuantKind.FP8_BLOCK)
        elif wtype == "int" and bits == 4 and strategy in ("group", "channel"):
            group_size = -1 if strategy == "channel" else gs
            zero_point = w.get("symmetric") is False
            act_order = str(w.get("actorder") or "").lower() in ("group", "dynamic")
            if a is None:
                return _scheme(where, kind=QuantKind.INT4_W4A16, group_size=group_size, zero_point=zero_point,
                               act_order=act_order)
            if a_type == "float" and a_bits == 8:
                return _scheme(where, kind=QuantKind.INT4_FP8, group_size=group_size, zero_point=zero_point,
                               act_order=act_order)
        raise UnsupportedQuantScheme(f"{where}: compressed-tensors {desc} has no moe-registry scheme")

    def scheme_for(self, name: str) -> QuantScheme:
        projections = [f"{name}.0.{p}" for p in _PROJECTIONS]
        groups = [self._group_for(p) for p in projections]
        if len({g.name if g else None for g in groups}) > 1:
            shown = ", ".join(f"{p.rsplit('.', 1)[1]}: {g.name if g else 'ignored'}" for p, g in zip(projections, groups))
            raise InconsistentMoEQuant(
                f"{name}: all MoE projections need the same quantization scheme, found {shown}")
        return self.unquantized if groups[0] is None else self._group_scheme(groups[0])


@dataclass(frozen=True)
class WeightOnlyInt4Quant(QuantConfig):
    """GPTQ and AWQ: int4 weights with group scales, 16-bit activations."""

    bits: int = 4
    group_size: int = 128
    zero_point: bool = False
    act_order: bool = False
    not_convert: tuple[str, ...] = ()
    dynamic: tuple[tuple[str, Mapping[str, Any]], ...] = ()

    def scheme_for(self, name: str) -> QuantScheme:
        if any(_excludes(entry, name, _substring_plain) for entry in self.not_convert):
            return self.unquantized
        bits, group_size, zero_point, act_order = self.bits, self.group_size, self.zero_point, self.act_order
        for key, override in self.dynamic:
            if key.startswith("-:"):
                if _regex_match(key[2:], name):
                    return self.unquantized
                continue
            if _regex_match(key.removeprefix("+:"), name):
                where = f"{self.source} dynamic[{key!r}]"
                bits = _int(override.get("bits"), f"{where}.bits", bits)
                group_size = _int(override.get("group_size"), f"{where}.group_size", group_size)
                if "sym" in override:
                    zero_point = not override["sym"]
                if "desc_act" in override:
                    act_order = bool(override["desc_act"])
                break
        if bits == 8 and self.method == "gptq" and not zero_point and not act_order:
            # vLLM auto_gptq.py L98-101 TYPE_MAP: (8, sym) -> uint8b128, run by Marlin MoE (planning-only here).
            return _scheme(self.source, kind=QuantKind.INT8_W8A16, group_size=group_size)
        if bits != 4:
            raise UnsupportedQuantScheme(
                f"{self.source}: {self.method.upper()} {bits}-bit experts ({name}) have no moe-registry scheme; only "
                "4-bit, and symmetric 8-bit GPTQ without desc_act (int8_w8a16)")
        return _scheme(self.source, kind=QuantKind.INT4_W4A16, group_size=group_size, zero_point=zero_point,
                       act_order=act_order)


@dataclass(frozen=True)
class Fp8Quant(QuantConfig):
    block: bool = False
    ignored: tuple[str, ...] = ()

    def scheme_for(self, name: str) -> QuantScheme:
        if any(_excludes(entry, name, _fp8_plain) for entry in self.ignored):
            return self.unquantized
        return QuantScheme(kind=QuantKind.FP8_BLOCK if self.block else QuantKind.FP8)


@dataclass(frozen=True)
class Mxfp4Quant(QuantConfig):
    not_convert: tuple[str, ...] = ()

    def scheme_for(self, name: str) -> QuantScheme:
        if any(_excludes(entry, name, _ancestor_plain) for entry in self.not_convert):
            return self.unquantized
        return QuantScheme(kind=QuantKind.MXFP4)


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


def _parse_modelopt(qc: Mapping[str, Any], source: str, unq: QuantScheme) -> ModelOptQuant:
    inner = qc.get("quantization")
    if isinstance(inner, Mapping):  # nested: hf_quant_config.json, or inline {"quantization": {...}}
        body, exclude_key = inner, "exclude_modules"
    else:  # flat converter output: quant_algo + config_groups + ignore
        body, exclude_key = qc, "ignore" if "ignore" in qc else "exclude_modules"
    algo = body.get("quant_algo")
    if algo is not None and not isinstance(algo, str):
        raise QuantConfigError(f"{source}: quant_algo must be a string, got {algo!r}")
    group_size = _int(body.get("group_size"), f"{source} group_size")
    if group_size is None:
        for group in (body.get("config_groups") or {}).values():
            if isinstance(group, Mapping) and isinstance(group.get("weights"), Mapping):
                group_size = _int(group["weights"].get("group_size"), f"{source} config_groups weights.group_size")
                break
    exclude = tuple(_as_list(body.get(exclude_key), f"{source} {exclude_key}"))
    layers: list[tuple[str, str | None, int | None]] = []
    for lname, entry in (body.get("quantized_layers") or {}).items():
        if not isinstance(entry, Mapping):
            raise QuantConfigError(f"{source}: quantized_layers[{lname!r}] must be an object")
        layers.append((lname, entry.get("quant_algo"), _int(entry.get("group_size"), f"{source} quantized_layers group_size")))
    algo_text = str(algo or "NONE").upper()
    gs_text = f" g{group_size}" if group_size and algo_text != "MIXED_PRECISION" else ""
    summary = f"ModelOpt {algo_text}{gs_text}" + (f", {len(exclude)} exclude patterns" if exclude else "")
    quant = ModelOptQuant(method="modelopt", summary=summary, source=source, unquantized=unq,
                          algo=algo_text, group_size=group_size, exclude=exclude, layers=tuple(layers))
    if algo_text not in _MODELOPT_ALGOS and algo_text not in ("MIXED_PRECISION", "NONE"):
        quant._algo_scheme(algo, group_size, source)  # a misspelt algorithm fails at parse time
    return quant


def _parse_compressed_tensors(qc: Mapping[str, Any], source: str, unq: QuantScheme) -> CompressedTensorsQuant:
    raw_groups = qc.get("config_groups")
    if not isinstance(raw_groups, Mapping) or not raw_groups:
        raise QuantConfigError(f"{source}: compressed-tensors config has no config_groups")
    groups = []
    for gname, g in raw_groups.items():
        if not isinstance(g, Mapping):
            raise QuantConfigError(f"{source}: config_groups[{gname!r}] must be an object")
        weights, acts = g.get("weights"), g.get("input_activations")
        for part, value in (("weights", weights), ("input_activations", acts)):
            if value is not None and not isinstance(value, Mapping):
                raise QuantConfigError(f"{source}: config_groups[{gname!r}].{part} must be an object or null")
        groups.append(_CTGroup(name=str(gname), targets=tuple(_as_list(g.get("targets"), f"{source} targets")),
                               weights=weights, input_activations=acts))
    fmt = qc.get("format")
    summary = f"compressed-tensors {fmt}" if fmt else "compressed-tensors"
    quant = CompressedTensorsQuant(method="compressed-tensors", summary=summary, source=source, unquantized=unq,
                                   groups=tuple(groups), ignore=tuple(_as_list(qc.get("ignore"), f"{source} ignore")))
    # Name the schemes in the summary; a group without a scheme fails only if an MoE layer uses it
    # (a mixed-precision checkpoint may hold, say, FP8 per-channel attention next to NVFP4 experts).
    labels = set()
    for g in quant.groups:
        try:
            labels.add(quant._group_scheme(g).label())
        except UnsupportedQuantScheme:
            labels.add(f"{g.name}: no scheme")
    return replace(quant, summary=f"{summary} ({', '.join(sorted(labels))})")


def _parse_int4(qc: Mapping[str, Any], method: str, source: str, unq: QuantScheme) -> WeightOnlyInt4Quant:
    bits = _int(qc.get("bits", qc.get("w_bit")), f"{source} bits", 4)
    group_size = _int(qc.get("group_size", qc.get("q_group_size")), f"{source} group_size", 128)
    if group_size == 0 or group_size < -1:
        raise UnsupportedQuantScheme(f"{source}: group_size {group_size} is not valid (positive, or -1 per channel)")
    if method == "awq":
        zero_point, act_order = bool(qc.get("zero_point", True)), False
    else:
        zero_point, act_order = qc.get("sym", True) is False, bool(qc.get("desc_act", False))
    dynamic_raw = qc.get("dynamic") or {}
    if not isinstance(dynamic_raw, Mapping):
        raise QuantConfigError(f"{source}: dynamic must be an object of regex -> override")
    dynamic = tuple((str(k), v if isinstance(v, Mapping) else {}) for k, v in dynamic_raw.items())
    not_convert = tuple(_as_list(qc.get("modules_to_not_convert"), f"{source} modules_to_not_convert"))
    label = f"{method.upper()} int{bits} " + ("per-channel" if group_size == -1 else f"g{group_size}")
    label += ", zero points" if zero_point else ""
    label += ", act_order" if act_order else ""
    return WeightOnlyInt4Quant(method=method, summary=label, source=source, unquantized=unq, bits=bits,
                               group_size=group_size, zero_point=zero_point, act_order=act_order,
                               not_convert=not_convert, dynamic=dynamic)


def _parse_fp8(qc: Mapping[str, Any], source: str, unq: QuantScheme) -> Fp8Quant:
    block = qc.get("weight_block_size")
    if block is not None and not isinstance(block, list):
        raise QuantConfigError(f"{source}: weight_block_size must be a list of two integers, got {block!r}")
    if block is not None and block != [128, 128]:
        raise UnsupportedQuantScheme(f"{source}: FP8 weight_block_size {block}; only [128, 128] is supported")
    ignored = tuple(_as_list(qc.get("ignored_layers"), f"{source} ignored_layers")
                    + _as_list(qc.get("modules_to_not_convert"), f"{source} modules_to_not_convert"))
    summary = "FP8 128x128 blocks" if block is not None else "FP8 per tensor"
    return Fp8Quant(method="fp8", summary=summary, source=source, unquantized=unq, block=block is not None,
                    ignored=ignored)


def parse_quant_config(qc: Any, *, source: str, dtype: str = "bf16") -> QuantConfig:
    """Parse one quantization config object (``quantization_config``, ``hf_quant_config.json``,
    ``quantize_config.json``). ``dtype`` ("bf16"/"fp16") is the scheme of unquantized layers."""
    if not isinstance(qc, Mapping):
        raise QuantConfigError(f"{source} must be a JSON object, got {type(qc).__name__}")
    unq = unquantized_scheme(dtype)
    method = _method_of(qc)
    if method == "modelopt":
        return _parse_modelopt(qc, source, unq)
    if method == "compressed-tensors":
        return _parse_compressed_tensors(qc, source, unq)
    if method in ("gptq", "awq"):
        return _parse_int4(qc, method, source, unq)
    if method == "fp8":
        return _parse_fp8(qc, source, unq)
    if method == "mxfp4":
        not_convert = tuple(_as_list(qc.get("modules_to_not_convert"), f"{source} modules_to_not_convert"))
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
    return OverrideQuant(method="override", summary=f"{scheme.label()} (override)", source="quant=", scheme=scheme)
