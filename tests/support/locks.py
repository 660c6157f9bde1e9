"""Looking at the node lock from outside, as another plugin instance would."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def lock_is_free(path: Path) -> bool:
    """Whether another plugin instance could take the lock now (flock is per open file description)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
