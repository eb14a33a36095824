"""FP8 (per tensor, or 128x128 blocks) and MXFP4 (gpt-oss): float formats whose only per-layer rule
is an exclusion list. The rules: :mod:`moe_registry.quant_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..schemas.quant import QuantKind, QuantScheme
from .base import QuantConfig, QuantConfigError, UnsupportedQuantScheme, _as_list
from .patterns import _ancestor_plain, _excludes, _fp8_plain, check_entries


@dataclass(frozen=True)
class Fp8Quant(QuantConfig):
    block: bool = False
    ignored: tuple[str, ...] = ()
    static_activations: bool = False  # activation_scheme "static": per-tensor activation scales in the checkpoint

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


def _parse_fp8(qc: Mapping[str, Any], source: str, unq: QuantScheme) -> Fp8Quant:
    block = qc.get("weight_block_size")
    if block is not None and not isinstance(block, list):
        raise QuantConfigError(f"{source}: weight_block_size must be a list of two integers, got {block!r}")
    if block is not None and block != [128, 128]:
        raise UnsupportedQuantScheme(f"{source}: FP8 weight_block_size {block}; only [128, 128] is supported")
    ignored_layers = _as_list(qc.get("ignored_layers"), f"{source} ignored_layers")
    not_convert = _as_list(qc.get("modules_to_not_convert"), f"{source} modules_to_not_convert")
    check_entries(ignored_layers, f"{source} ignored_layers")
    check_entries(not_convert, f"{source} modules_to_not_convert")
    ignored = tuple(ignored_layers + not_convert)
    summary = "FP8 128x128 blocks" if block is not None else "FP8 per tensor"
    return Fp8Quant(method="fp8", summary=summary, source=source, unquantized=unq, block=block is not None,
                    ignored=ignored, static_activations=qc.get("activation_scheme") == "static")
