"""Where the NVIDIA driver's user-space files live under a driver root (``/`` or ``/run/nvidia/driver``)."""

from __future__ import annotations

import os
from pathlib import Path

#: Library directories, in the order distributions use them (relative to the driver root); the last two
#: are where GPU container images and some cloud images keep the driver (CUDA images set
#: LD_LIBRARY_PATH=/usr/local/nvidia/lib64, so mounting at the same path works there).
LIB_DIRS = (
    "usr/lib64",
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib64",
    "usr/lib",
    "usr/local/nvidia/lib64",
    "usr/local/nvidia/lib",
)
#: Tool directories.
BIN_DIRS = ("usr/bin", "usr/local/nvidia/bin")

NVML_SONAME = "libnvidia-ml.so.1"


def find_library(driver_root: str | os.PathLike[str], soname: str = NVML_SONAME) -> Path | None:
    """The first ``soname`` under the driver root's library directories, or None."""
    for rel_dir in LIB_DIRS:
        candidate = Path(driver_root, rel_dir, soname)
        if candidate.exists():
            return candidate
    return None
