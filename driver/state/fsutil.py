"""Durable file operations: a file is either fully there with its new content, or not changed at all.

A write goes to a temporary file in the same directory, is fsynced, renamed over the target and the
directory is fsynced, so a crash (or power loss) at any point leaves the old or the new content, never a
torn file. Temporary names start with ``.`` and end in ``.tmp``: container runtimes only load ``.json`` and
``.yaml`` CDI specs, so a half-written spec is never picked up.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from driver.state.crash import crash_point


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600, what: str = "file") -> None:
    """Replace ``path`` with ``data`` atomically and durably (crash step ``<what>:tmp-written``)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb", closefd=True) as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)  # O_CREAT applies the umask; the mode must be exact
        crash_point(f"{what}:tmp-written")
        os.replace(tmp, target)
    except Exception:  # not BaseException: a kill leaves the temporary behind, removed at the next start
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def remove_durably(path: str | os.PathLike[str]) -> bool:
    """Delete ``path`` (a missing file is fine); return whether it existed."""
    target = Path(path)
    try:
        target.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(target.parent)
    return True


def remove_stale_temporaries(directory: str | os.PathLike[str], prefix: str) -> list[str]:
    """Delete ``.<prefix>*.tmp`` leftovers of writes interrupted by a crash; return their names."""
    removed: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.name.startswith(f".{prefix}") and entry.name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed
