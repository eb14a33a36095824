"""Running third-party code (plugin imports, hooks, requirement probes) so that it cannot take the
registry down: every exception (``SystemExit`` and ``KeyboardInterrupt`` included) is caught, a
call that runs past a time limit is abandoned, and what the code writes to ``sys.stdout`` /
``sys.stderr`` is captured instead of corrupting the CLI's output (``--json`` stays valid).

The time limit is a thread with a timeout: Python cannot kill a thread, so a call that times out is
left running as a daemon thread (it dies with the process) and its later output is discarded.
Output written at the file-descriptor level (``os.write(1, ...)``, C extensions) is not captured.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .errors import one_line

ENV_TIMEOUT = "MOE_REGISTRY_PLUGIN_TIMEOUT"
DEFAULT_TIMEOUT_S = 5.0
MAX_CAPTURED_CHARS = 200  # of a plugin's output, quoted in its problem report


def plugin_timeout() -> float:
    """Seconds one plugin call (import, hook, requirement probe) may take: ``$MOE_REGISTRY_PLUGIN_TIMEOUT``
    or 5 s (a plugin imports its kernel library lazily, when a layer is built)."""
    text = os.environ.get(ENV_TIMEOUT)
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if 0 < value < float("inf") else DEFAULT_TIMEOUT_S


@dataclass
class Outcome:
    value: Any = None
    error: str | None = None  # one line: what went wrong, None when the call returned
    output: str = ""  # what the call wrote to stdout/stderr


class _Router(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: writes from a guarded thread go to that thread's buffer
    (or nowhere once it timed out); every other thread writes through to the real stream."""

    def __init__(self, real: Any):
        self.real = real
        self.sinks: dict[int, io.StringIO | None] = {}
        self.users = 0  # guarded calls in progress; the router is removed when none is left

    def write(self, text: str) -> int:
        ident = threading.get_ident()
        if ident in self.sinks:
            sink = self.sinks[ident]
            if sink is not None:
                sink.write(text)
            return len(text)
        return self.real.write(text)

    def flush(self) -> None:
        if threading.get_ident() not in self.sinks:
            self.real.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return bool(getattr(self.real, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self.real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.real, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


_lock = threading.Lock()


def _acquire(stream_name: str) -> _Router:
    with _lock:
        current = getattr(sys, stream_name)
        if not isinstance(current, _Router):
            current = _Router(current)
            setattr(sys, stream_name, current)
        current.users += 1
        return current


def _release(stream_name: str, router: _Router) -> None:
    # Put the real stream back once no guarded call runs and no abandoned one may still write.
    with _lock:
        router.users -= 1
        if router.users == 0 and not router.sinks and getattr(sys, stream_name) is router:
            setattr(sys, stream_name, router.real)


def _forget_abandoned(ident: int, routers: tuple[_Router, _Router]) -> None:
    # An abandoned call that finally returns: drop its sink, and the router if nothing else needs it.
    with _lock:
        for name, r in zip(("stdout", "stderr"), routers):
            if ident in r.sinks and r.sinks[ident] is None:
                del r.sinks[ident]
                if r.users == 0 and not r.sinks and getattr(sys, name) is r:
                    setattr(sys, name, r.real)


def guarded_call(fn: Callable[[], Any], *, timeout: float | None = None) -> Outcome:
    """Run ``fn()`` in a daemon thread for at most ``timeout`` seconds (default
    :func:`plugin_timeout`), catching every exception and capturing its Python-level output."""
    limit = plugin_timeout() if timeout is None else timeout
    routers = (_acquire("stdout"), _acquire("stderr"))
    buffer = io.StringIO()
    result = Outcome()
    started = threading.Event()

    def target() -> None:
        ident = threading.get_ident()
        for r in routers:
            r.sinks[ident] = buffer
        started.set()
        try:
            result.value = fn()
        except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt from a plugin too
            result.error = one_line(exc)
        finally:
            _forget_abandoned(ident, routers)

    thread = threading.Thread(target=target, name="moe-registry-plugin", daemon=True)
    thread.start()
    thread.join(limit)
    started.wait()
    ident = thread.ident
    assert ident is not None  # the thread has started
    if thread.is_alive():
        for r in routers:
            r.sinks[ident] = None  # later output of the abandoned call is dropped
        outcome = Outcome(error=f"timed out after {limit:g} s (limit: ${ENV_TIMEOUT})", output=buffer.getvalue())
    else:
        for r in routers:
            r.sinks.pop(ident, None)
        result.output = buffer.getvalue()
        outcome = result
    for name, r in zip(("stdout", "stderr"), routers):
        _release(name, r)
    return outcome


def quote_output(text: str) -> str:
    """A plugin's captured output as one short quoted line, for a problem report."""
    text = " ".join(text.split())
    if len(text) > MAX_CAPTURED_CHARS:
        text = text[:MAX_CAPTURED_CHARS] + "..."
    return repr(text)
