"""Name matching shared by the quantization formats: ``re:`` patterns, globs over a module name
and its ancestors, each format's rule for plain names, and the matching budget of one plan. Which
format uses which rule, and the engine code each mirrors: :mod:`moe_registry.quant_config`.

A model repository's config is untrusted input, so matching must take linear time whatever the
pattern says. ``re:`` patterns and globs run on RE2 (the ``google-re2`` package, imported only when
a config has a pattern): its automata match in time linear in the name, with no backtracking.
Globs are translated to RE2 with exactly ``fnmatch.fnmatchcase``'s meaning (:func:`glob_regex`). A
pattern RE2 does not run (a lookaround, a backreference) is a one-line error naming the field.

Without google-re2, Python's ``re`` runs a pattern only inside a subset proven not to backtrack
catastrophically (:func:`_fallback_problem`): no lookaround, backreference or atomic group, no
variable repeat or alternation inside a repeated group, and at most ``MAX_FALLBACK_CHOICES`` (1)
choice point (a variable repeat, ``?`` included, or an alternation) besides one loop at the very
end. A backtracking matcher then tries at most ``c`` alternatives at that choice point (``c`` <=
name length + 1, or the number of branches) times the final loop's ``n + 1``, each followed by a
deterministic walk of the pattern: O(n^2 * m) steps for a name of n and a pattern of m characters,
whatever the pattern. Globs fall back to ``fnmatch`` (atomic groups since Python 3.11: no
catastrophic backtracking).

Bounds, checked when the config is parsed: every pattern and glob at most ``MAX_PATTERN_CHARS``
characters; at most ``MAX_PATTERN_CHECKS`` pattern entries (``re:``, globs, GPTQ ``dynamic`` keys)
x MoE layers and ``MAX_NAME_CHECKS`` name entries x MoE layers per plan; the config nested at most
``MAX_QUANT_DEPTH`` levels and never containing itself. benchmarks/bench_worst_inputs.py times the
worst admitted inputs.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .base import QuantConfigError

MAX_PATTERN_CHARS = 256
MAX_FALLBACK_CHOICES = 1  # Python re fallback only (no google-re2)
# Matching work per plan: entries are matched against every MoE layer's name and its ancestors.
MAX_PATTERN_CHECKS = 2**13  # re: / glob entries (and GPTQ ``dynamic`` keys) x MoE layers
MAX_NAME_CHECKS = 2**19  # all name entries x MoE layers
MAX_QUANT_DEPTH = 64  # a quantization config nests a few levels; a dict built in Python may contain itself
WILDCARDS = "*?["


def ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["a.b.c", "a.b", "a"]``: the name and every enclosing module."""
    return list(_ancestors(name))


@functools.lru_cache(maxsize=256)
def _ancestors(name: str) -> tuple[str, ...]:  # cached: every entry of a config asks for the same names
    parts = name.split(".")
    return tuple(".".join(parts[:i]) for i in range(len(parts), 0, -1))


# --- Engines -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _re2() -> Any:
    """The ``re2`` module of google-re2, or None when it is not installed (imported on first use:
    a config without patterns never loads it)."""
    try:
        import re2  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return None
    return re2


def engine() -> str:
    """The engine patterns run on here: "re2", or "python-re" (the proven-safe subset)."""
    return "re2" if _re2() is not None else "python-re"


def _re2_compile(regex: str, *, full: bool = False) -> Callable[[str], bool] | str:
    """An RE2 matcher (``re.match`` semantics, or ``fullmatch`` when ``full``), or why RE2
    refuses the pattern."""
    re2 = _re2()
    options = re2.Options()
    options.log_errors = False  # RE2 would print parse errors on stderr
    try:
        compiled = re2.compile(regex, options=options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
        return f"is not a pattern RE2 runs in linear time ({text})"
    except (UnicodeError, ValueError, TypeError) as exc:  # a lone surrogate cannot be UTF-8
        return f"cannot be compiled ({type(exc).__name__})"
    if full:
        return lambda name: compiled.fullmatch(name) is not None
    return lambda name: compiled.match(name) is not None


try:  # the stdlib's own regex parser: the pattern is checked as the fallback engine will read it
    from re import _constants as _sre_c, _parser as _sre_parse  # type: ignore[attr-defined]  # Python >= 3.11
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _sre_c  # type: ignore[no-redef, unused-ignore]
    import sre_parse as _sre_parse  # type: ignore[no-redef, unused-ignore]

_REPEATS = tuple(getattr(_sre_c, name) for name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
                 if hasattr(_sre_c, name))
_REFUSED = {_sre_c.ASSERT: "a lookaround", _sre_c.ASSERT_NOT: "a lookaround", _sre_c.GROUPREF: "a backreference",
            _sre_c.GROUPREF_EXISTS: "a backreference"}
if hasattr(_sre_c, "ATOMIC_GROUP"):
    _REFUSED[_sre_c.ATOMIC_GROUP] = "an atomic group"


def _fallback_problem(items: Any, in_repeat: bool, choices: list[str], top: bool = False) -> str | None:
    """Why a parsed pattern is outside the fallback's proven-safe subset (module docstring), or
    None; every choice point found is appended to ``choices``."""
    items = list(items)
    last = len(items) - 1
    while top and last >= 0 and items[last][0] is _sre_c.AT:  # a loop followed only by anchors is final
        last -= 1
    for position, (op, arg) in enumerate(items):
        if op in _REFUSED:
            return _REFUSED[op]
        if op in _REPEATS:
            low, high, body = arg
            if low != high:
                if in_repeat:
                    return "a variable repeat inside a repeated group"
                if not (top and position == last):
                    choices.append("repeat")
            problem = _fallback_problem(body, in_repeat or high > 1, choices)
        elif op is _sre_c.BRANCH:
            if in_repeat:
                return "an alternation inside a repeated group"
            choices.append("alternation")
            problem = next((p for b in arg[1] if (p := _fallback_problem(b, in_repeat, choices))), None)
        elif op is _sre_c.SUBPATTERN:
            problem = _fallback_problem(arg[-1], in_repeat, choices)
        else:
            continue
        if problem:
            return problem
    return None


def _python_compile(regex: str) -> Callable[[str], bool] | str:
    """A Python ``re`` prefix matcher for a pattern inside the proven-safe subset, or why not."""
    try:
        compiled = re.compile(regex)
        parsed = _sre_parse.parse(regex)
    except (re.error, RecursionError, OverflowError) as exc:
        return f"is not a valid pattern ({exc})"
    choices: list[str] = []
    problem = _fallback_problem(parsed, False, choices, top=True)
    if problem is None and len(choices) > MAX_FALLBACK_CHOICES:
        problem = f"{len(choices)} choice points (repeats or alternations; the limit is {MAX_FALLBACK_CHOICES})"
    if problem:
        return (f"has {problem}: without google-re2, moe-registry matches only patterns that cannot backtrack "
                "catastrophically (pip install google-re2)")
    return lambda name: compiled.match(name) is not None


@functools.lru_cache(maxsize=4096)
def _compiled(regex: str) -> Callable[[str], bool] | str:
    return _re2_compile(regex) if _re2() is not None else _python_compile(regex)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "...")


def check_pattern(pattern: str, field: str = "the quantization config") -> Callable[[str], bool]:
    """The matcher of a config-supplied ``re:`` pattern (``re.match`` semantics: anchored at the
    start only); QuantConfigError naming ``field`` when it is too long or cannot run in linear time."""
    return _checked("regex", pattern, field, _compiled)


def _checked(what: str, text: str, field: str,
             compile_: Callable[[str], Callable[[str], bool] | str]) -> Callable[[str], bool]:
    if len(text) > MAX_PATTERN_CHARS:
        raise QuantConfigError(f"{field}: {what} {_shown(text)} is {len(text)} characters; "
                               f"the limit is {MAX_PATTERN_CHARS}")
    matcher = compile_(text)
    if isinstance(matcher, str):
        raise QuantConfigError(f"{field}: {what} {_shown(text)} {matcher}")
    return matcher


# --- Globs ---------------------------------------------------------------------------------------


def _class_items(pat: str, i: int, j: int) -> list[str]:
    """The chunks of the glob class ``pat[i:j]`` exactly as ``fnmatch.translate`` (Python 3.11)
    splits them: joined by a range hyphen, empty ranges removed."""
    chunks = []
    k = i + 2 if pat[i] == "!" else i + 1
    while True:
        k = pat.find("-", k, j)
        if k < 0:
            break
        chunks.append(pat[i:k])
        i = k + 1
        k = k + 3
    chunk = pat[i:j]
    if chunk:
        chunks.append(chunk)
    else:
        chunks[-1] += "-"
    for k in range(len(chunks) - 1, 0, -1):  # remove empty ranges (z-a)
        if chunks[k - 1][-1] > chunks[k][0]:
            chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
            del chunks[k]
    return chunks


def _literal(ch: str) -> str:
    return f"\\x{{{ord(ch):x}}}"


def _class_regex(pat: str, i: int, j: int) -> str:
    """``[...]`` of the glob (contents ``pat[i:j]``) as an RE2 class with every character escaped."""
    if "-" in pat[i:j]:
        chunks = _class_items(pat, i, j)
    else:
        chunks = [pat[i:j]]
    stuff = "-".join(chunks)
    if not stuff:
        return r"[^\x{0}-\x{10ffff}]"  # empty class: never matches (fnmatch's "(?!)")
    if stuff == "!":
        return "."  # negated empty class: any character
    negated = stuff[0] == "!"
    if negated:
        chunks[0] = chunks[0][1:]
    parts = []
    for index, chunk in enumerate(chunks):
        # A chunk's first character ends the range from the previous chunk, its last starts the next.
        body = chunk[1:] if index > 0 else chunk
        if index > 0:
            parts.append(f"{_literal(chunks[index - 1][-1])}-{_literal(chunk[0])}")
        if index < len(chunks) - 1:
            body = body[:-1]
        parts.extend(_literal(c) for c in body)
    return "[" + ("^" if negated else "") + "".join(parts) + "]"


def glob_regex(pat: str) -> str:
    """``fnmatch.fnmatchcase``'s meaning of the glob ``pat`` as an RE2 pattern for a full match:
    ``*`` any run, ``?`` one character, ``[...]`` / ``[!...]`` classes with ranges, an unclosed
    ``[`` literal, everything else literal. Linear in the glob's length."""
    closing = [-1] * (len(pat) + 1)  # closing[p]: the first "]" at or after p (one backward pass)
    for p in range(len(pat) - 1, -1, -1):
        closing[p] = p if pat[p] == "]" else closing[p + 1]
    out = ["(?s)"]
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        i += 1
        if c == "*":
            if out[-1] != ".*":
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pat[j] == "!":
                j += 1
            if j < n and pat[j] == "]":
                j += 1
            j = closing[j] if j < n else -1
            if j < 0:
                out.append(_literal("["))
            else:
                out.append(_class_regex(pat, i, j))
                i = j + 1
        else:
            out.append(_literal(c) if not (c.isalnum() or c == "_") else c)
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _compiled_glob(pat: str) -> Callable[[str], bool] | str:
    if _re2() is None:
        return lambda name: fnmatch.fnmatchcase(name, pat)
    return _re2_compile(glob_regex(pat), full=True)


def check_glob(pat: str, field: str = "the quantization config") -> Callable[[str], bool]:
    """The full-match matcher of a config-supplied glob; QuantConfigError naming ``field`` when it
    is longer than ``MAX_PATTERN_CHARS``."""
    return _checked("glob", pat, field, _compiled_glob)


# --- What one config may ask for -------------------------------------------------------------------


def is_pattern(entry: str) -> bool:
    """Whether a name entry is matched as a pattern (``re:``, or a glob) rather than as a name."""
    return entry.startswith("re:") or any(ch in entry for ch in WILDCARDS)


def check_entries(entries: Iterable[str], field: str, *, globs: bool = True) -> None:
    """Compile every pattern among a config field's entries now, so that an entry that is too long
    or that RE2 cannot run fails at parse time, naming the field and the entry's index."""
    for index, entry in enumerate(entries):
        where = f"{field}[{index}]"
        if entry.startswith("re:"):
            check_pattern(entry[3:], where)
        elif globs and any(ch in entry for ch in WILDCARDS):
            check_glob(entry, where)


def _name_entries(qc: Any, source: str) -> tuple[int, int]:
    """(name entries, pattern entries) in a raw quantization config: every string in a list and
    every key of a ``dynamic`` object may be matched against every MoE layer (counted generously).
    Each object is walked once (a dict built in Python may contain itself); a config nested deeper
    than ``MAX_QUANT_DEPTH`` is refused."""
    names = patterns = 0
    stack = [(qc, 1)]
    seen: set[int] = set()
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, (Mapping, list)) or id(value) in seen:
            continue
        if depth > MAX_QUANT_DEPTH:
            raise QuantConfigError(f"{source} is nested more than {MAX_QUANT_DEPTH} levels deep")
        seen.add(id(value))
        if isinstance(value, Mapping):
            dynamic = value.get("dynamic")
            if isinstance(dynamic, Mapping):
                names += len(dynamic)
                patterns += len(dynamic)
            stack.extend((child, depth + 1) for child in value.values())
            continue
        for item in value:
            if isinstance(item, str):
                names += 1
                patterns += is_pattern(item)
            else:
                stack.append((item, depth + 1))
    return names, patterns


def check_matching_budget(qc: Any, moe_layers: int, source: str) -> None:
    """Refuse a config whose name entries x MoE layers would take more than about a second to
    match (``MAX_NAME_CHECKS``, ``MAX_PATTERN_CHECKS``); real configs are far below both."""
    names, patterns = _name_entries(qc, source)
    if names * moe_layers > MAX_NAME_CHECKS:
        raise QuantConfigError(f"{source}: {names} module-name entries x {moe_layers} MoE layers is above the "
                               f"matching limit of {MAX_NAME_CHECKS}")
    if patterns * moe_layers > MAX_PATTERN_CHECKS:
        raise QuantConfigError(f"{source}: {patterns} patterns (re: and globs) x {moe_layers} MoE layers is above "
                               f"the matching limit of {MAX_PATTERN_CHECKS}")


# --- Matching ------------------------------------------------------------------------------------


def _regex_match(pattern: str, name: str) -> bool:
    return check_pattern(pattern)(name)


def _glob_excludes(pattern: str, name: str) -> bool:
    """ModelOpt / TensorRT-LLM exclusion: ``re:`` regex, or a glob against the name and ancestors."""
    if pattern.startswith("re:"):
        matches = check_pattern(pattern[3:])
        return any(matches(n) for n in _ancestors(name))
    candidates = [check_glob(pattern)]
    if pattern.endswith(".*"):
        candidates.append(check_glob(pattern[:-2]))  # a trailing ".*" also names the parent itself
    return any(match(n) for n in _ancestors(name) for match in candidates)


def _excludes(entry: str, name: str, plain: Callable[[str, str], bool]) -> bool:
    """``re:`` and wildcard entries use :func:`_glob_excludes`; plain names use the format's rule."""
    if is_pattern(entry):
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
