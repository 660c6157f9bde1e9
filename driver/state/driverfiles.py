"""Finding the NVIDIA driver's user-space files (libraries and tools) under the driver root.

The driver root is ``/`` when the driver is installed on the host, or where a driver container exposes its
root filesystem (``/run/nvidia/driver`` with the GPU Operator). The scan runs once at plugin start; the
result is the list of read-only bind mounts every prepared claim's CDI spec carries:
``hostPath = <driver-root>/<rel>`` mounted at ``/<rel>`` in the container.

Libraries are looked up in the usual library directories, the first directory that has a library wins (on
multilib systems ``/usr/lib64`` holds the 64-bit build and ``/usr/lib`` the 32-bit one). Both the versioned
file (``libcuda.so.580.65.06``) and its soname link (``libcuda.so.1``) are mounted; a link is resolved inside
the driver root (an absolute link target in a driver container refers to that container's root, not the
host's), so the mount source is always a regular file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from driver.devices.layout import BIN_DIRS, LIB_DIRS

#: Compute-relevant driver libraries (sonames without ``.so.*``).
LIBRARIES = (
    "libcuda",
    "libcudadebugger",
    "libnvidia-ml",
    "libnvidia-ptxjitcompiler",
    "libnvidia-nvvm",
    "libnvidia-opencl",
    "libnvidia-cfg",
    "libnvidia-allocator",
    "libnvidia-gpucomp",
)
TOOLS = (
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
)

MOUNT_OPTIONS = ("ro", "nosuid", "nodev", "bind")
_MAX_LINKS = 16


@dataclass(frozen=True, order=True)
class DriverFile:
    #: Path in the container, also the file's path relative to the driver root (with a leading ``/``).
    container_path: str
    #: Where the file's content lives on the host (under the driver root, links resolved).
    host_path: str
    #: Where this process reads it: the driver root as mounted into the plugin's container.
    local_path: str

    def mount(self) -> dict[str, object]:
        return {
            "hostPath": self.host_path,
            "containerPath": self.container_path,
            "options": list(MOUNT_OPTIONS),
        }


def resolve_in_root(root: Path, rel: PurePosixPath) -> PurePosixPath | None:
    """Follow symlinks of ``root/rel`` as if ``root`` were ``/``; the relative path of a regular file, or None."""
    current = rel
    for _ in range(_MAX_LINKS):
        host = root / current
        try:
            if not host.is_symlink():
                return current if host.is_file() else None
            target = PurePosixPath(os.readlink(host))
        except OSError:
            return None
        joined = target if target.is_absolute() else PurePosixPath("/") / current.parent / target
        normalized = _normalize(joined)
        if normalized is None:
            return None
        current = normalized
    return None


def _normalize(path: PurePosixPath) -> PurePosixPath | None:
    parts: list[str] = []
    for part in path.parts[1:]:
        if part == "..":
            if parts:
                parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return PurePosixPath(*parts) if parts else None


def _library_pattern(stem: str) -> re.Pattern[str]:
    # libcuda.so.1 and libcuda.so.580.65.06; not the unversioned development link libcuda.so.
    return re.compile(rf"^{re.escape(stem)}\.so\.\d+(\.\d+)*$")


def _files(root: Path, host_root: Path, rel_dir: str, names: list[str]) -> list[DriverFile]:
    out = []
    for name in sorted(names):
        rel = PurePosixPath(rel_dir, name)
        real = resolve_in_root(root, rel)
        if real is not None:
            out.append(
                DriverFile(
                    container_path=f"/{rel}", host_path=str(host_root / real), local_path=str(root / real)
                )
            )
    return out


def discover_driver_files(
    driver_root: str | os.PathLike[str], host_driver_root: str | os.PathLike[str] | None = None
) -> tuple[DriverFile, ...]:
    """Scan ``driver_root`` for the known libraries and tools (sorted by container path).

    ``host_driver_root`` is where that tree is on the host when it is mounted elsewhere in the plugin's
    container (the host's ``/`` cannot be mounted at ``/``); CDI specs name host paths.
    """
    root = Path(driver_root)
    host_root = Path(host_driver_root if host_driver_root is not None else driver_root)
    found: dict[str, DriverFile] = {}
    patterns = {stem: _library_pattern(stem) for stem in LIBRARIES}
    seen_dirs: set[str] = set()
    done: set[str] = set()
    for rel_dir in LIB_DIRS:
        directory = root / rel_dir
        try:
            real_dir = os.path.realpath(directory)
            entries = os.listdir(directory)
        except OSError:
            continue
        if real_dir in seen_dirs:  # /lib64 -> /usr/lib64 and the like
            continue
        seen_dirs.add(real_dir)
        here: set[str] = set()
        for stem, pattern in patterns.items():
            if stem in done:
                continue
            names = [e for e in entries if pattern.match(e)]
            files = _files(root, host_root, rel_dir, names)
            for f in files:
                found[f.container_path] = f
            if files:
                here.add(stem)
        done |= here
    for rel_dir in BIN_DIRS:
        present = [t for t in TOOLS if os.path.lexists(root / rel_dir / t)]
        for f in _files(root, host_root, rel_dir, present):
            found[f.container_path] = f
    return tuple(sorted(found.values()))


def library_dir_of(files: tuple[DriverFile, ...], stem: str) -> str | None:
    """The host directory holding ``stem`` (for tools that need ``LD_LIBRARY_PATH``), or None."""
    for f in files:
        if PurePosixPath(f.container_path).name.startswith(f"{stem}.so."):
            return str(PurePosixPath(f.local_path).parent)
    return None
