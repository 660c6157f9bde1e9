"""Crash injection for the node-state crash tests.

``ACCEL_DRA_CRASH_AT=<step>[#<n>][,...]`` makes the process kill itself with SIGKILL when it reaches one of
the named steps (the ``n``-th time it gets there, default the first), exactly as an OOM kill or node crash
would: no cleanup, no ``finally`` blocks. Steps are named where they are reached (``prepare:started``,
``unprepare:cdi-removed``, ...; docs/node-state.md lists them). The variable is read once, at import (the
tests set it for the process they start); unset, the normal case, a step costs one comparison.

In-process tests install a hook with :func:`set_crash_hook` that raises instead of killing.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

CRASH_ENV = "ACCEL_DRA_CRASH_AT"

_hook: Callable[[str], None] | None = None
_reached: dict[str, int] = {}


def set_crash_hook(hook: Callable[[str], None] | None) -> None:
    """Call ``hook(step)`` at every step instead of consulting the environment (tests only)."""
    global _hook  # noqa: PLW0603 - a process-wide test switch, like the environment variable it replaces
    _hook = hook


def _parse(value: str | None) -> dict[str, set[int]]:
    """``step[#n],...`` -> {step: {n, ...}}."""
    wanted: dict[str, set[int]] = {}
    for entry in (value or "").split(","):
        name, _, nth = entry.strip().partition("#")
        if name:
            wanted.setdefault(name, set()).add(int(nth) if nth.isdigit() else 1)
    return wanted


_wanted = _parse(os.environ.get(CRASH_ENV))


def crash_point(step: str) -> None:
    if _hook is not None:
        _hook(step)
        return
    if not _wanted or step not in _wanted:
        return
    _reached[step] = _reached.get(step, 0) + 1
    if _reached[step] in _wanted[step]:
        os.kill(os.getpid(), signal.SIGKILL)
