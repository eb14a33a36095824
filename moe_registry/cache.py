"""A private on-disk cache of JSON answers that are slow to compute and fixed by their inputs: a
third-party plugin's evaluated declarations (:mod:`moe_registry.registry`) and an installed engine's
executed selection (:mod:`moe_registry.engines.vllm.executed`, :mod:`moe_registry.engines.sglang.executed`).

An entry is named by a hash of its key and stores the whole key: a hash collision, a stale or a
corrupt entry reads as absent (the answer is computed again and rewritten). Writes are atomic. The
directory is ``$XDG_CACHE_HOME/moe-registry`` (else ``~/.cache/moe-registry``), created private,
and refused when it is not this user's or is writable by others. Stdlib only: the registry imports
it on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

FORMAT = 1
MAX_BYTES = 16 * 2**20


def cache_dir() -> Path | None:
    """``$XDG_CACHE_HOME/moe-registry`` (else ``~/.cache/moe-registry``), created private; None
    when it cannot be made, is not a directory of this user's, or is writable by others."""
    base = os.environ.get("XDG_CACHE_HOME") or (os.path.join(os.path.expanduser("~"), ".cache"))
    if not os.path.isabs(base):
        return None
    directory = Path(base) / "moe-registry"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(directory)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return None
    return directory


def stat_line(path: str | os.PathLike[str]) -> str:
    """A file's path, modification time and size: a key part that changes when the file does."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return f"{path} -"
    return f"{path} {st.st_mtime_ns} {st.st_size}"


def _path(kind: str, key: str) -> Path | None:
    directory = cache_dir()
    return None if directory is None else directory / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def read(kind: str, key: str) -> Any | None:
    """The value stored under ``key``; None when absent, unreadable, too big, corrupt or stored for
    another key."""
    path = _path(kind, key)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
                return None
            data = json.loads(f.read(MAX_BYTES + 1))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != key:
        return None
    return data.get("value")


def write(kind: str, key: str, value: Any) -> None:
    """Store ``value`` (JSON-able) under ``key``; a cache that cannot be written is skipped."""
    path = _path(kind, key)
    if path is None:
        return
    import tempfile  # ~8 ms with shutil and random: only when an answer was computed, never on a cache hit

    temp = None
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{kind}-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "key": key, "value": value}, f)
        os.replace(temp, path)  # atomic: a reader sees the old entry or the new one, never half
    except (OSError, ValueError, TypeError, RecursionError):
        if temp is not None:
            try:
                os.unlink(temp)
            except OSError:
                pass
