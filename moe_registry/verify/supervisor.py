"""The probe's supervisor: runs one backend's job in subprocess workers
(``python -m moe_registry.verify.worker``), reads their JSON lines, and restarts a fresh worker at
the next combination after a crash (segfault, abort), a CUDA error or a timeout; or runs the job in
this process (``--in-process``, for debugging: a crash then ends the probe)."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

ResultCallback = Callable[[int, dict[str, Any]], None]

_SIGNALS = {getattr(signal, name): name for name in ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGILL", "SIGFPE", "SIGKILL")
            if hasattr(signal, name)}


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0 and -code in _SIGNALS:
        return f"exit code {code}, {_SIGNALS[-code]}"
    return f"exit code {code}"


def _last_stderr_line(path: Path) -> str:
    """The most telling last line of a worker's stderr: skips traceback frames and faulthandler's
    thread / module listings, so "Fatal Python error: Aborted" or the exception line comes back."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "no stderr"
    skip = ("Current thread", "Thread 0x", "Extension modules", "Stack (most recent", "Traceback (most recent")
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line[:1].isspace() or line.startswith(skip):
            continue
        return line if len(line) <= 300 else line[:297] + "..."
    return lines[-1].strip()[:300] if lines else "no stderr output"


def _worker_env() -> dict[str, str]:
    """This process's environment, with its sys.path in PYTHONPATH: plugins (entry points and their
    modules) found here are found by the worker too."""
    env = dict(os.environ)
    entries = [p for p in sys.path if p and os.path.isdir(p)]
    if env.get("PYTHONPATH"):
        entries.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _read_lines(stream: Any, q: "queue.Queue[str | None]") -> None:
    try:
        for line in stream:
            q.put(line)
    finally:
        q.put(None)


@dataclasses.dataclass
class JobOutcome:
    restarts: int = 0
    failure: str = ""  # the whole backend could not run (adapter not importable, worker cannot start)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def run_isolated(job: dict[str, Any], on_result: ResultCallback, *, timeout_s: float,
                  startup_s: float) -> JobOutcome:
    """Run a job in subprocess workers, restarting after crashes, CUDA errors and timeouts."""
    combos = job["combos"]
    n = len(combos)
    outcome = JobOutcome()
    start = 0
    worker = 0
    with tempfile.TemporaryDirectory(prefix="moe-registry-probe-") as tmp:
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        env = _worker_env()
        while start < n:
            stderr_path = Path(tmp) / f"stderr-{worker}.txt"
            with open(stderr_path, "w", encoding="utf-8") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "moe_registry.verify.worker", str(job_path), str(start)],
                    stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env, text=True,
                    encoding="utf-8", errors="replace")
            lines: queue.Queue[str | None] = queue.Queue()
            reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
            reader.start()
            next_index, hello, cuda_exit, timed_out = start, False, False, False
            while True:
                wait = timeout_s + (0 if hello else startup_s)
                try:
                    line = lines.get(timeout=wait)
                except queue.Empty:
                    timed_out = True
                    proc.kill()
                    break
                if line is None:
                    break
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                kind = event.get("event")
                if kind == "hello":
                    if event.get("error"):
                        outcome.failure = f"adapter not importable: {event['error']}"
                        break
                    hello = True
                    outcome.info = {k: v for k, v in event.items() if k not in ("event", "pid")}
                elif kind == "result":
                    index = int(event["index"])
                    on_result(index, {**event, "worker": worker})
                    next_index = index + 1
                elif kind == "exit":
                    cuda_exit = True
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            reader.join(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
            if outcome.failure:
                return outcome
            if next_index >= n:
                break
            if not hello and not timed_out:
                outcome.failure = f"worker failed to start ({_exit_text(code)}; {_last_stderr_line(stderr_path)})"
                return outcome
            if timed_out:
                on_result(next_index, {"status": "raised", "worker": worker, "message": (
                    f"timed out: no result after {wait:g} s (worker killed)")})
                next_index += 1
            elif not cuda_exit:
                on_result(next_index, {"status": "raised", "worker": worker, "message": (
                    f"worker crashed ({_exit_text(code)}; {_last_stderr_line(stderr_path)})")})
                next_index += 1
            start = next_index
            if start < n:
                worker += 1
                outcome.restarts += 1
    return outcome


def run_in_process(job: dict[str, Any], on_result: ResultCallback) -> JobOutcome:
    from .worker import run_job

    outcome = JobOutcome()

    def emit(event: dict[str, Any]) -> None:
        if event.get("event") == "hello":
            if event.get("error"):
                outcome.failure = f"adapter not importable: {event['error']}"
            else:
                outcome.info = {k: v for k, v in event.items() if k not in ("event", "pid")}
        elif event.get("event") == "result":
            on_result(int(event["index"]), {**event, "worker": None})

    run_job(job, 0, emit, stop_on_cuda_error=False)
    return outcome
