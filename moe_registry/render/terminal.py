"""The console every command prints to, and the escaping of plugin- and config-supplied text."""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

# --- Escaping plugin- and config-supplied text -------------------------------------------------

# C0 (but \t, \n), DEL, C1, Unicode line separators and bidi overrides: a plugin name or a config
# string must never move the cursor, clear the screen, set the window title or reorder a line.
# Translation tables, not a regex: a character class reaching past U+00FF compiles to a 64 K-entry
# map, ~3 M instructions per pattern at every start (issue 20's start-up target).
_CONTROL_CODES = (*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029,
                  *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_ESCAPES = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _CONTROL_CODES}
_ESCAPES_WITH_NEWLINES = {**_ESCAPES, 0x09: "\\x09", 0x0A: "\\x0a"}


def escape_control(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters written as visible escapes (``\\x1b``); newlines and tabs
    kept only with ``keep_newlines`` (multi-line Markdown), so one-line messages stay one line."""
    return text.translate(_ESCAPES if keep_newlines else _ESCAPES_WITH_NEWLINES)


@functools.lru_cache(maxsize=1)
def _safe_console_class():
    from rich.console import Console

    class SafeConsole(Console):
        """Every string rich renders (print arguments, table cells and titles) goes through
        ``render_str``: escape control characters there, before rich adds its own styling codes."""

        def render_str(self, text: str, **kwargs: Any):
            return super().render_str(escape_control(text, keep_newlines=True), **kwargs)

        def on_broken_pipe(self) -> None:
            # rich would raise SystemExit(1); the CLI treats a closed pipe as a normal end.
            self.quiet = True
            raise BrokenPipeError

    return SafeConsole


def safe_console(**kwargs: Any) -> "Console":
    return _safe_console_class()(**kwargs)


def console() -> "Console":
    """The console every command prints to. Pipes and NO_COLOR get plain text (rich honours both).
    The width is the terminal's, else COLUMNS, else 80 (rich reads COLUMNS too); text is wrapped to
    it, never cut. Control characters in plugin- and config-supplied strings are escaped and a
    closed pipe ends quietly (:func:`safe_console`)."""
    return safe_console(width=_width(), soft_wrap=False, highlight=False)


def _width() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return max(columns, 40)
    if sys.stdout.isatty():
        return max(os.get_terminal_size(sys.stdout.fileno()).columns, 40)
    return 80


# --- Plain text without rich ----------------------------------------------------------------------
# `explain` and `select` lay their text out here (no rich import on their path: it is most of the
# CLI's start-up time). Lines never end in spaces; words are never cut, so an id or a shape such as
# ``H2880->2944`` stays whole; only a word wider than its column is folded.


def wrap(text: str, width: int, *, indent: str = "", first: str = "") -> list[str]:
    """``text`` wrapped at spaces to ``width``: the first line starts with ``first``, the rest with
    ``indent``. Embedded newlines start new lines."""
    out: list[str] = []
    for paragraph in text.split("\n"):
        line = first if not out else indent
        start = len(line)
        for word in paragraph.split(" "):
            if not word:
                continue
            while len(word) > width - len(indent) and len(line) == len(indent if out else first):
                room = max(width - len(line), 1)
                out.append(line + word[:room])
                word, line = word[room:], indent
            if len(line) > start and len(line) + 1 + len(word) > width:
                out.append(line.rstrip())
                line = indent
                start = len(line)
            line += (" " if len(line) > start else "") + word
        out.append(line.rstrip())
        first = indent
    return out


def _cell_lines(text: str, width: int) -> list[str]:
    return wrap(text, width) or [""]


def _longest_word(text: str) -> int:
    return max((len(w) for w in text.split()), default=0)


def table(headers: list[str], rows: list[list[str]], width: int, *, fixed: tuple[int, ...] = (),
          rule: str = "\u2500") -> list[str]:
    """A plain table: one space between columns, a rule under the header, cells wrapped at spaces.
    Columns shrink (the most wrappable first) to fit ``width`` but never below their longest word;
    ``fixed`` columns never wrap."""
    cols = len(headers)
    natural = [max([len(line) for r in [headers] + rows for line in r[c].split("\n")] or [0]) for c in range(cols)]
    floor = [natural[c] if c in fixed else max([_longest_word(r[c]) for r in [headers] + rows] + [1])
             for c in range(cols)]
    widths = natural[:]
    while sum(widths) + cols - 1 > width:
        shrinkable = [c for c in range(cols) if widths[c] > floor[c]]
        if not shrinkable:
            break
        c = max(shrinkable, key=lambda i: (widths[i] - floor[i], widths[i]))
        widths[c] -= 1
    out = []
    for i, row in enumerate([headers] + rows):
        cells = [_cell_lines(row[c], widths[c]) for c in range(cols)]
        for k in range(max(len(x) for x in cells)):
            parts = [(cells[c][k] if k < len(cells[c]) else "").ljust(widths[c]) for c in range(cols)]
            out.append(" ".join(parts).rstrip())
        if i == 0:
            out.append(rule * min(sum(widths) + cols - 1, width))
    return out


def width() -> int:
    """The width text is wrapped to: the terminal's, else COLUMNS, else 80."""
    return _width()


terminal_width = width


def write_lines(lines: list[str]) -> None:
    """Print lines to stdout with control characters escaped (a closed pipe raises BrokenPipeError,
    which the CLI treats as a normal end)."""
    sys.stdout.write("".join(escape_control(line) + "\n" for line in lines))
