"""Paths that come from users and model repositories: read only regular files (a FIFO, a device or
a directory is refused before anything waits on it), with a size limit checked before and while
reading; output paths checked before any work starts, so a run never ends on an unwritable one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import UnusablePath


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: str | os.PathLike[str], *, limit: int, what: str) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes; else UnusablePath
    (one line naming ``what``). FileNotFoundError propagates: a caller names the missing file."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnusablePath(f"{what} {os.fspath(path)} is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise UnusablePath(f"{os.fspath(path)} is larger than {limit} bytes (the limit for a {what})")
        os.set_blocking(f.fileno(), True)
        data = f.read(limit + 1) or b""  # /proc files report size 0: the read is bounded too
    if len(data) > limit:
        raise UnusablePath(f"{os.fspath(path)} is larger than {limit} bytes (the limit for a {what})")
    return data


def check_output_path(path: str | os.PathLike[str], *, what: str) -> None:
    """Refuse, before any work, an output path that is a directory or not a regular file, or whose
    directory cannot hold a new file (tried: a temporary file is created and removed there, which
    also catches /proc and read-only mounts). Missing parent directories are created later."""
    target = Path(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UnusablePath(f"{what} {target}: {exc.strerror or exc}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UnusablePath(f"{what} {target} is {_kind(st.st_mode)}; give a regular file name")
    parent = target.absolute().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UnusablePath(f"{what} {target}: cannot create files in {existing or parent}")
    if existing == parent:
        import tempfile  # only here: the planner reads configs with this module on its default path

        try:
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".moe-registry-check-"):
                pass
        except OSError as exc:
            raise UnusablePath(f"{what} {target}: cannot create files in {parent} ({exc.strerror or exc})") from None
    if st is not None and not os.access(target, os.W_OK):
        raise UnusablePath(f"{what} {target} is not writable")
