"""ModelOpt (``hf_quant_config.json`` ``quantization``, or the flat ``quant_algo`` form): algorithms,
exclude patterns, ``MIXED_PRECISION``. The rules: :mod:`moe_registry.quant_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..schemas.quant import QuantKind, QuantScheme
from .base import (
    InconsistentMoEQuant,
    QuantConfig,
    QuantConfigError,
    UnsupportedQuantScheme,
    _as_list,
    _int,
    _scheme,
)
from .patterns import _excludes, _modelopt_plain, check_entries

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


def _parse_modelopt(qc: Mapping[str, Any], source: str, unq: QuantScheme) -> ModelOptQuant:
    inner = qc.get("quantization")
    if inner is not None and not isinstance(inner, Mapping):
        raise QuantConfigError(f"{source}: quantization must be an object, got {type(inner).__name__}")
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
    check_entries(exclude, f"{source} {exclude_key}")
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
