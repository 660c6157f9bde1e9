"""File operations for state files: a file is either fully there with its new content, or not changed at all.

A write goes to a temporary file in the same directory and is renamed over the target, so a process killed
at any point leaves the old or the new content, never a torn file: the page cache keeps what was written,
whatever happens to the process. With ``sync`` the temporary file is fsynced before the rename and the
directory after it, so the same holds across a power loss or kernel crash. The node state (checkpoint, CDI
specs) does not sync by default: every event that loses unsynced data is a reboot, and a reboot voids
prepared state anyway (docs/node-state.md has the argument). Temporary names start with ``.`` and end in
``.tmp``: container runtimes only load ``.json`` and ``.yaml`` CDI specs, so a half-written spec is never
picked up.

Reads open regular files only (:func:`read_regular`): a FIFO would block the reader forever, and a
directory, link or device is no state file of ours. Whatever else is found where a state file belongs is
renamed aside (:func:`set_aside`), never deleted: it is evidence, and it may not be ours.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import stat
import time
from pathlib import Path

from driver.crash import crash_point

#: Temporary names: ``.<name>.<pid>-<tag><n>.tmp``. The pid and a counter keep them apart within a node
#: (no random draw, a syscall, per write); the tag, drawn once, between plugins of two pid namespaces.
_TMP_TAG = secrets.token_hex(4)
_tmp_count = itertools.count()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], data: bytes, mode: int = 0o600, what: str = "file", *, sync: bool = True
) -> None:
    """Replace ``path`` with ``data`` atomically (crash step ``<what>:tmp-written``); with ``sync``, also
    durably across a power loss."""
    target = os.fspath(path)
    directory, name = os.path.split(target)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{_TMP_TAG}{next(_tmp_count):x}.tmp")
    # O_EXCL: a name already taken (two writers that drew the same one) fails loudly, never shares a file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            _write_all(fd, data)
            if sync:
                os.fsync(fd)
            os.fchmod(fd, mode)  # O_CREAT applies the umask; the mode must be exact
        finally:
            os.close(fd)
        crash_point(f"{what}:tmp-written")
        os.replace(tmp, target)
    except Exception:  # not BaseException: a kill leaves the temporary behind, removed at the next start
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        fsync_dir(directory or ".")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def remove_file(path: str | os.PathLike[str], *, sync: bool = True) -> bool:
    """Delete ``path`` (a missing file is fine; with ``sync`` the directory is fsynced); return whether it
    existed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    if sync:
        fsync_dir(os.path.dirname(os.fspath(path)) or ".")
    return True


def remove_stale_temporaries(directory: str | os.PathLike[str], prefix: str) -> list[str]:
    """Delete ``.<prefix>*.tmp`` leftovers of writes interrupted by a crash; return their names."""
    removed: list[str] = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(directory):
            # A directory by that name is no temporary of ours (and cannot be unlinked): left alone.
            if (
                entry.name.startswith(f".{prefix}")
                and entry.name.endswith(".tmp")
                and not entry.is_dir(follow_symlinks=False)
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed


class NotRegularFileError(OSError):
    """A state file's path holds something else: a directory, FIFO, socket, device or symbolic link."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        super().__init__(f"{path} is a {kind}, not a regular file")
        self.path = str(path)
        self.kind = kind


def file_kind(mode: int) -> str:
    """What an ``lstat`` mode describes, in words."""
    kinds = (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def check_regular(path: str | os.PathLike[str]) -> os.stat_result | None:
    """``lstat`` of ``path``: None when nothing is there; :class:`NotRegularFileError` when it is not a
    regular file (links are not followed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(path, file_kind(st.st_mode))
    return st


def read_regular(path: str | os.PathLike[str]) -> tuple[bytes, os.stat_result]:
    """The content and status of the regular file at ``path``, never blocking and never following a link.

    Raises :class:`FileNotFoundError` when nothing is there, :class:`NotRegularFileError` for anything but
    a regular file, other :class:`OSError` for what the kernel refuses.
    """
    if check_regular(path) is None:
        raise FileNotFoundError(2, "No such file or directory", str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a link since the lstat
            raise NotRegularFileError(path, "symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):  # replaced since the lstat
            raise NotRegularFileError(path, file_kind(st.st_mode))
        return f.read(), st


def set_aside(path: str | os.PathLike[str], tag: str = "aside") -> Path | None:
    """Rename whatever is at ``path`` to ``<name>.<tag>-<time>`` in the same directory; return the new
    path, or None when nothing was there any more."""
    source = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = source.with_name(f"{source.name}.{tag}-{stamp}-{time.time_ns() % 10**9:09d}")
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return None
    return target
