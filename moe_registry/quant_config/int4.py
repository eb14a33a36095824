"""GPTQ and AWQ (``quantization_config`` or ``quantize_config.json``): int4 weights with group
scales, ``modules_to_not_convert``, GPTQModel ``dynamic``. The rules: :mod:`moe_registry.quant_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..schemas.quant import QuantKind, QuantScheme
from .base import (
    QuantConfig,
    QuantConfigError,
    UnsupportedQuantScheme,
    _as_list,
    _int,
    _scheme,
)
from .patterns import _excludes, _regex_match, _substring_plain, check_entries, check_pattern


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
    for index, (key, _) in enumerate(dynamic):  # every key is a regex (GPTQModel: -:skip, +:override, bare)
        check_pattern(key[2:] if key.startswith(("-:", "+:")) else key, f"{source} dynamic key #{index}")
    not_convert = tuple(_as_list(qc.get("modules_to_not_convert"), f"{source} modules_to_not_convert"))
    check_entries(not_convert, f"{source} modules_to_not_convert")
    label = f"{method.upper()} int{bits} " + ("per-channel" if group_size == -1 else f"g{group_size}")
    label += ", zero points" if zero_point else ""
    label += ", act_order" if act_order else ""
    return WeightOnlyInt4Quant(method=method, summary=label, source=source, unquantized=unq, bits=bits,
                               group_size=group_size, zero_point=zero_point, act_order=act_order,
                               not_convert=not_convert, dynamic=dynamic)
