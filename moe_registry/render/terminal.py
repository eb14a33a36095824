"""The console every command prints to, and the escaping of plugin- and config-supplied text."""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

# --- Escaping plugin- and config-supplied text -------------------------------------------------

# C0 (but \t, \n), DEL, C1, Unicode line separators and bidi overrides: a plugin name or a config
# string must never move the cursor, clear the screen, set the window title or reorder a line.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_OR_NEWLINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape_char(match: "re.Match[str]") -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters written as visible escapes (``\\x1b``); newlines and tabs
    kept only with ``keep_newlines`` (multi-line Markdown), so one-line messages stay one line."""
    return (_CONTROL if keep_newlines else _CONTROL_OR_NEWLINE).sub(_escape_char, text)


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
