"""compressed-tensors (``config_groups`` / ``ignore``), resolved per projection as vLLM does. The
rules: :mod:`moe_registry.quant_config`.
"""

# No `from __future__ import annotations`: string annotations cost a compile() each when pydantic or
# NamedTuple reads them at import, which explain's start-up counts (issue 20).

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

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
from .patterns import _regex_match, check_entries

_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class _CTGroup(NamedTuple):  # not a frozen dataclass: ~4x cheaper to define, and explain's start-up counts (issue 20)
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
        targets = tuple(_as_list(g.get("targets"), f"{source} targets"))
        check_entries(targets, f"{source} config_groups[{gname!r}].targets", globs=False)
        groups.append(_CTGroup(name=str(gname), targets=targets, weights=weights, input_activations=acts))
    fmt = qc.get("format")
    summary = f"compressed-tensors {fmt}" if fmt else "compressed-tensors"
    ignore = tuple(_as_list(qc.get("ignore"), f"{source} ignore"))
    check_entries(ignore, f"{source} ignore", globs=False)  # compressed-tensors: re: or exact names only
    quant = CompressedTensorsQuant(method="compressed-tensors", summary=summary, source=source, unquantized=unq,
                                   groups=tuple(groups), ignore=ignore)
    # Name the schemes in the summary; a group without a scheme fails only if an MoE layer uses it
    # (a mixed-precision checkpoint may hold, say, FP8 per-channel attention next to NVFP4 experts).
    labels = set()
    for g in quant.groups:
        try:
            labels.add(quant._group_scheme(g).label())
        except UnsupportedQuantScheme:
            labels.add(f"{g.name}: no scheme")
    return replace(quant, summary=f"{summary} ({', '.join(sorted(labels))})")
