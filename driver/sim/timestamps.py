"""The times the sandbox's components write into objects: RFC 3339 in UTC to the second (how the API
server serialises ``metav1.Time``), and a condition's ``lastTransitionTime``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def transition_time(previous: Mapping[str, Any] | None, status: str) -> str:
    """A condition's ``lastTransitionTime``: the ``previous`` condition's while its status stays the same,
    now when it changes (or there was none)."""
    if previous is not None and previous.get("status") == status and previous.get("lastTransitionTime"):
        return str(previous["lastTransitionTime"])
    return now()
