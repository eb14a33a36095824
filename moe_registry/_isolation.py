"""Running third-party code (plugin imports, hooks, requirement probes) so that it cannot take the
registry down.

Out of process (:func:`run_in_child`, entry-point plugins and their requirement probes): the code
runs in a child Python process under one total time budget (``$MOE_REGISTRY_PLUGIN_TIMEOUT``,
default 1 s, counted from when the child is ready to run it); a child that exits, hangs, is killed,
or prints (at the Python or the file-descriptor level) cannot touch this process, and what it did
that a well-behaved plugin does not (atexit handlers, signal handlers, non-daemon threads, replaced
``sys.stdout``) is reported. The child dies with its parent (``PR_SET_PDEATHSIG`` on Linux).

In process (:func:`guarded_call`, plugin objects a library caller hands to ``Registry(plugins=)``
and the built-in probes): every exception (``SystemExit`` and ``KeyboardInterrupt`` included) is
caught, a call that runs past the time limit is abandoned (a daemon thread: Python cannot kill a
thread), and Python-level writes to ``sys.stdout`` / ``sys.stderr`` are captured.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import one_line

ENV_TIMEOUT = "MOE_REGISTRY_PLUGIN_TIMEOUT"
DEFAULT_TIMEOUT_S = 1.0
MAX_TIMEOUT_S = 3600.0
MAX_CAPTURED_CHARS = 200  # of a plugin's output, quoted in its problem report
MAX_CHILD_OUTPUT = 64 * 1024  # bytes of a child's stray output kept (the rest is read and dropped)
MAX_CHILD_ANSWER = 16 * 2**20  # bytes of a child's answer (64 declarations are well under 1 MiB)
CHILD_START_LIMIT_S = 60.0  # for the child's interpreter and our imports, before the budget starts
_ENV_PARENT = "MOE_REGISTRY_CHILD_OF"  # the pid that spawned a child (die_with_parent)
# Written by the child on stderr once it is ready: what came before is the child's own start-up.
_OUTPUT_STARTS = b"\0moe-registry: plugin output follows\0\n"


def plugin_timeout() -> float:
    """Seconds one plugin may take, in total, for its import and hook (and, separately, for all of
    its requirement probes): ``$MOE_REGISTRY_PLUGIN_TIMEOUT`` or 1 s. A plugin's declarations are
    data: it imports its kernel library lazily, when a layer is built, and its answer is cached."""
    text = os.environ.get(ENV_TIMEOUT)
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if 0 < value <= MAX_TIMEOUT_S else DEFAULT_TIMEOUT_S


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



# --- Out of process ------------------------------------------------------------------------------


@dataclass
class ChildOutcome:
    """What a child said: ``messages`` (every JSON message it wrote, in order), ``error`` (one line
    when it did not finish: timed out, exited, killed), ``output`` (its stray output, cut), and
    ``stage`` (the last stage it reported: "ready", then whatever the handler announced)."""

    messages: list[Any] = field(default_factory=list)
    error: str | None = None
    output: str = ""
    stage: str = "start"

    @property
    def side_effects(self) -> list[str]:
        found = [m.get("side_effects") for m in self.messages if isinstance(m, dict)]
        return [str(x) for effects in found if isinstance(effects, list) for x in effects]

    @property
    def result(self) -> Any:
        done = [m["result"] for m in self.messages if isinstance(m, dict) and "result" in m]
        return done[-1] if done else None


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``); a
    no-op elsewhere. Call it first thing in a spawned child; ``parent``: the pid that spawned it,
    so that a parent that died before this call is noticed too (the child is then re-parented)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _drain(stream: Any, keep: int, into: list[bytes]) -> None:
    kept = 0
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            return
        if kept < keep:
            into.append(chunk[: keep - kept])
            kept += len(into[-1])


def _read_messages(stream: Any, outcome: ChildOutcome, ready: threading.Event) -> None:
    size = 0
    for raw in stream:
        size += len(raw)
        if size > MAX_CHILD_ANSWER:
            outcome.error = f"answered more than {MAX_CHILD_ANSWER} bytes"
            break
        try:
            message = json.loads(raw)
        except ValueError:
            continue  # nothing but the handler writes here; a torn line is dropped
        outcome.messages.append(message)
        if isinstance(message, dict) and isinstance(message.get("stage"), str):
            outcome.stage = message["stage"]
            if message["stage"] == "ready":
                ready.set()
    ready.set()
    _drain(stream, 0, [])


def run_in_child(module: str, request: dict[str, Any], *, timeout: float | None = None) -> ChildOutcome:
    """Run ``python -m module`` (whose ``__main__`` calls :func:`child_main`) on ``request`` under a
    total budget of ``timeout`` seconds (default :func:`plugin_timeout`) from when it is ready."""
    return run_children(module, [request], timeout=timeout)[0]


def run_children(module: str, requests: list[dict[str, Any]], *, timeout: float | None = None) -> list[ChildOutcome]:
    """:func:`run_in_child` for several requests at once, one child each, in parallel."""
    limit = plugin_timeout() if timeout is None else timeout
    children: list[tuple[Any, ChildOutcome, Any, list[threading.Thread], list[bytes]]] = []
    for request in requests:
        outcome = ChildOutcome()
        try:
            # The child finds this package (and the plugin) on this process's sys.path, as it is now.
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONUNBUFFERED": "1",
                   _ENV_PARENT: str(os.getpid())}
            proc = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, env=env)
        except OSError as exc:
            outcome.error = f"could not start a child process: {one_line(exc)}"
            children.append((None, outcome, None, [], []))
            continue
        ready = threading.Event()
        chatter: list[bytes] = []
        readers = [threading.Thread(target=_read_messages, args=(proc.stdout, outcome, ready), daemon=True),
                   threading.Thread(target=_drain, args=(proc.stderr, MAX_CHILD_OUTPUT, chatter), daemon=True)]
        for reader in readers:
            reader.start()
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({**request, "path": list(sys.path)}).encode())
            proc.stdin.close()
        except OSError:
            pass  # the child died at once: its exit code says so below
        children.append((proc, outcome, ready, readers, chatter))
    started = time.monotonic()
    for proc, outcome, ready, readers, chatter in children:
        if proc is None:
            continue
        ready.wait(max(0.0, started + CHILD_START_LIMIT_S - time.monotonic()))
        ready_at = time.monotonic()
        try:
            proc.wait(timeout=max(0.0, min(ready_at, started + CHILD_START_LIMIT_S) + limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            if outcome.error is None:
                outcome.error = f"timed out after {limit:g} s (limit: ${ENV_TIMEOUT})"
        for reader in readers:
            reader.join(timeout=2.0)
        output = b"".join(chatter)
        outcome.output = output.split(_OUTPUT_STARTS, 1)[-1].decode("utf-8", "replace")
        failed = [m["error"] for m in outcome.messages if isinstance(m, dict) and isinstance(m.get("error"), str)]
        if outcome.error is None and failed:
            outcome.error = failed[-1]
        if outcome.error is None and outcome.result is None:
            code = proc.returncode
            outcome.error = (f"killed by signal {-code}" if code is not None and code < 0
                             else f"exited with code {code} before answering")
    return [outcome for _, outcome, *_ in children]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and anything it spawned
    except (OSError, AttributeError):
        proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _side_effects_baseline() -> dict[str, Any]:
    import atexit

    handlers = {}
    for sig in signal.valid_signals():
        try:
            handlers[sig] = signal.getsignal(sig)
        except (ValueError, OSError):
            continue
    ncallbacks = getattr(atexit, "_ncallbacks", lambda: 0)
    return {"atexit": ncallbacks(), "signals": handlers, "stdout": sys.stdout, "stderr": sys.stderr,
            "threads": set(threading.enumerate())}


def _side_effects(before: dict[str, Any]) -> list[str]:
    """What the plugin code left behind that a declaration should not: each one line."""
    import atexit

    found = []
    added = getattr(atexit, "_ncallbacks", lambda: 0)() - before["atexit"]
    if added > 0:
        found.append(f"registered {added} atexit handler(s)")
    changed = []
    for sig, handler in before["signals"].items():
        try:
            if signal.getsignal(sig) != handler:
                changed.append(signal.Signals(sig).name)
        except (ValueError, OSError):
            continue
    if changed:
        found.append(f"installed signal handler(s) for {', '.join(changed)}")
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is not before[name]:
            found.append(f"replaced sys.{name}")
    threads = [t.name for t in threading.enumerate() if t not in before["threads"] and not t.daemon and t.is_alive()]
    if threads:
        found.append(f"left non-daemon thread(s) running ({', '.join(threads[:3])})")
    return found


def child_main(handler: Callable[[dict[str, Any], Callable[[Any], None]], Any]) -> None:
    """The child's side of :func:`run_in_child`: read the request, run ``handler(request, say)``
    (``say(message)`` sends a JSON message now: a stage ``{"stage": ...}`` or partial results),
    send ``{"result": ..., "side_effects": [...]}``, and leave at once with ``os._exit`` (no atexit
    handler or non-daemon thread of the plugin runs). The plugin's writes, to ``sys.stdout`` or to
    file descriptor 1, go to the captured stderr; the answer has a descriptor of its own."""
    die_with_parent(int(os.environ.get(_ENV_PARENT, "0")) or None)
    answer = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    encode = json.JSONEncoder(allow_nan=False).encode  # bound now: plugin code may replace json.dumps
    exit_now, write, flush = os._exit, answer.write, answer.flush

    def say(message: Any) -> None:
        write(encode(message) + "\n")
        flush()

    request = json.loads(sys.stdin.read())
    sys.path[:] = [p for p in request.get("path", sys.path) if isinstance(p, str)]
    before = _side_effects_baseline()
    sys.stderr.flush()
    os.write(2, _OUTPUT_STARTS)
    say({"stage": "ready"})
    try:
        result = handler(request, say)
        message = {"result": result, "side_effects": _side_effects(before)}
        say(message)
    except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt from a plugin too
        say({"error": one_line(exc), "side_effects": _side_effects(before)})
    exit_now(0)
