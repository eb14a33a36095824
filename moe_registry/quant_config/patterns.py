"""Name matching shared by the quantization formats: ``re:`` patterns, globs over a module name
and its ancestors, each format's rule for plain names, and the matching budget of one plan. Which
format uses which rule, and the engine code each mirrors: :mod:`moe_registry.quant_config`.

Python's regex engine backtracks, so a pattern must stay in a subset that cannot backtrack
catastrophically (checked before first use, :func:`check_pattern`): at most ``MAX_PATTERN_CHARS``
characters, at most ``MAX_PATTERN_LOOPS`` (2) quantifiers that repeat more than once (not counting
loops over digits and a loop at the very end, which cannot backtrack far), no quantifier or
multi-character alternation inside a repeated group (``(a+)+``, ``(a|ab)*``), no backreference;
and at most ``MAX_REGEX_CHECKS`` pattern x MoE-layer pairs per plan (``MAX_NAME_CHECKS`` for all
entries). Real exclusion patterns (``re:.*lm_head``, ``re:model[.]layers[.][0-9]+[.]self_attn.*``)
are far inside it; the worst pattern it admits takes milliseconds on a module name
(benchmarks/bench_worst_inputs.py).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Mapping
from typing import Any

from .base import QuantConfigError


def ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["a.b.c", "a.b", "a"]``: the name and every enclosing module."""
    return list(_ancestors(name))


@functools.lru_cache(maxsize=256)
def _ancestors(name: str) -> tuple[str, ...]:  # cached: every entry of a config asks for the same names
    parts = name.split(".")
    return tuple(".".join(parts[:i]) for i in range(len(parts), 0, -1))


MAX_PATTERN_CHARS = 256
MAX_PATTERN_LOOPS = 2
# Matching work per plan: entries are matched against every MoE layer's name and its ancestors.
MAX_REGEX_CHECKS = 2**13  # ``re:`` entries (and GPTQ ``dynamic`` keys) x MoE layers
MAX_NAME_CHECKS = 2**19  # all name entries x MoE layers

try:  # the stdlib's own regex parser: the pattern is checked as the engine will read it
    from re import _constants as _sre_c, _parser as _sre_parse  # type: ignore[attr-defined]  # Python >= 3.11
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _sre_c  # type: ignore[no-redef, unused-ignore]
    import sre_parse as _sre_parse  # type: ignore[no-redef, unused-ignore]

_REPEATS = tuple(getattr(_sre_c, name) for name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
                 if hasattr(_sre_c, name))


def _digits_only(body: Any) -> bool:
    # A loop over digits backtracks at most over one run of digits (a layer or expert index).
    items = list(body)
    if len(items) != 1:
        return False
    op, arg = items[0]
    if op is _sre_c.IN:
        return all((o is _sre_c.CATEGORY and a is _sre_c.CATEGORY_DIGIT)
                   or (o is _sre_c.RANGE and 48 <= a[0] <= a[1] <= 57) or (o is _sre_c.LITERAL and 48 <= a <= 57)
                   for o, a in arg)
    return op is _sre_c.LITERAL and 48 <= arg <= 57


def _pattern_problem(items: Any, in_loop: bool, loops: list[int], top: bool = False) -> str | None:
    items = list(items)
    # Under re.match a loop at the very end (``.*``, ``.*$``) never backtracks: it is not counted.
    last = len(items) - 1
    while top and last >= 0 and items[last][0] is _sre_c.AT:
        last -= 1
    for position, (op, arg) in enumerate(items):
        if op in _REPEATS:
            low, high, body = arg
            if high > 1:
                if in_loop:
                    return "a quantifier inside a repeated group (nested quantifiers backtrack exponentially)"
                if not _digits_only(body) and not (top and position == last):
                    loops.append(1)
            problem = _pattern_problem(body, in_loop or high > 1, loops)
        elif op is _sre_c.BRANCH:
            if in_loop:
                return "an alternation inside a repeated group (overlapping branches backtrack exponentially)"
            problem = next((p for b in arg[1] if (p := _pattern_problem(b, in_loop, loops))), None)
        elif op is _sre_c.SUBPATTERN:
            problem = _pattern_problem(arg[-1], in_loop, loops)
        elif op in (_sre_c.ASSERT, _sre_c.ASSERT_NOT):
            problem = _pattern_problem(arg[1], in_loop, loops)
        elif op is getattr(_sre_c, "ATOMIC_GROUP", None):
            problem = _pattern_problem(arg, in_loop, loops)
        elif op in (_sre_c.GROUPREF, _sre_c.GROUPREF_EXISTS):
            return "a backreference"
        else:
            continue
        if problem:
            return problem
    return None


@functools.lru_cache(maxsize=1024)
def check_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a config-supplied ``re:`` pattern if it is inside the safe subset (module docstring);
    raise QuantConfigError saying why not."""
    shown = pattern if len(pattern) <= 80 else pattern[:80] + "..."
    if len(pattern) > MAX_PATTERN_CHARS:
        raise QuantConfigError(f"regex {shown!r} in the quantization config is {len(pattern)} characters; "
                               f"the limit is {MAX_PATTERN_CHARS}")
    try:
        compiled = re.compile(pattern)
        parsed = _sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise QuantConfigError(f"invalid regex {shown!r} in the quantization config: {exc}") from None
    loops: list[int] = []
    problem = _pattern_problem(parsed, False, loops, top=True)
    if problem is None and len(loops) > MAX_PATTERN_LOOPS:
        problem = f"{len(loops)} repeating quantifiers (the limit is {MAX_PATTERN_LOOPS})"
    if problem:
        raise QuantConfigError(f"regex {shown!r} in the quantization config has {problem}; "
                               "moe-registry accepts only patterns that cannot backtrack catastrophically")
    return compiled


def _name_entries(qc: Any) -> tuple[int, int]:
    """(name entries, regex entries) in a raw quantization config: every string in a list and every
    key of a ``dynamic`` object may be matched against every MoE layer (counted generously)."""
    names = regexes = 0
    stack = [qc]
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            dynamic = value.get("dynamic")
            if isinstance(dynamic, Mapping):
                names += len(dynamic)
                regexes += len(dynamic)
            stack.extend(value.values())
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    names += 1
                    regexes += item.startswith("re:")
                else:
                    stack.append(item)
    return names, regexes


def check_matching_budget(qc: Any, moe_layers: int, source: str) -> None:
    """Refuse a config whose name entries x MoE layers would take more than about a second to
    match (``MAX_NAME_CHECKS``, ``MAX_REGEX_CHECKS``); real configs are far below both."""
    names, regexes = _name_entries(qc)
    if names * moe_layers > MAX_NAME_CHECKS:
        raise QuantConfigError(f"{source}: {names} module-name entries x {moe_layers} MoE layers is above the "
                               f"matching limit of {MAX_NAME_CHECKS}")
    if regexes * moe_layers > MAX_REGEX_CHECKS:
        raise QuantConfigError(f"{source}: {regexes} re: patterns x {moe_layers} MoE layers is above the "
                               f"matching limit of {MAX_REGEX_CHECKS}")


def _regex_match(pattern: str, name: str) -> bool:
    return check_pattern(pattern).match(name) is not None


def _has_wildcard(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _glob_excludes(pattern: str, name: str) -> bool:
    """ModelOpt / TensorRT-LLM exclusion: ``re:`` regex, or a glob against the name and ancestors."""
    if pattern.startswith("re:"):
        return any(_regex_match(pattern[3:], n) for n in _ancestors(name))
    candidates = [pattern]
    if pattern.endswith(".*"):
        candidates.append(pattern[:-2])  # a trailing ".*" also names the parent itself
    return any(fnmatch.fnmatchcase(n, p) for n in _ancestors(name) for p in candidates)


def _excludes(entry: str, name: str, plain) -> bool:
    """``re:`` and wildcard entries use :func:`_glob_excludes`; plain names use the format's rule."""
    if entry.startswith("re:") or _has_wildcard(entry):
        return _glob_excludes(entry, name)
    return plain(entry, name)


def _modelopt_plain(entry: str, name: str) -> bool:
    # the name or an ancestor, or a sub-module of the fused layer (``<name>.0.w1``: vLLM experts rule)
    return _ancestor_plain(entry, name) or entry.startswith(name + ".")


def _substring_plain(entry: str, name: str) -> bool:
    return entry in name  # vLLM is_layer_skipped_awq / MoeWNA16 is_layer_skipped_quant


def _fp8_plain(entry: str, name: str) -> bool:
    return entry == name or ("experts" in entry and name in entry)  # vLLM is_layer_skipped, experts branch


def _ancestor_plain(entry: str, name: str) -> bool:
    return entry in _ancestors(name)
