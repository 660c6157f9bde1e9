"""What a health source reports, and the interface every source (NVML, fake) implements.

Events name the GPU or MIG device by UUID. A source only reports what it observed; deciding what an event
means (fatal or not, when a fault is over) is :mod:`driver.health.state`'s job.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: The XID the driver reports for a double-bit (uncorrectable) ECC error; NVML ECC events map to it.
XID_DOUBLE_BIT_ECC = 48


@dataclass(frozen=True)
class XidEvent:
    """The driver reported XID ``xid`` for this GPU or MIG device (double-bit ECC errors arrive as XID 48)."""

    uuid: str
    xid: int


@dataclass(frozen=True)
class LostEvent:
    """The GPU is gone: NVML says it is lost, or it does not answer a probe (``reason`` says which)."""

    uuid: str
    reason: str


@dataclass(frozen=True)
class ProbeOk:
    """A periodic probe of the GPU succeeded."""

    uuid: str


@dataclass(frozen=True)
class Unmonitored:
    """Events of this GPU cannot be watched (unsupported, or the event stream broke)."""

    uuid: str
    reason: str


@dataclass(frozen=True)
class Monitored:
    """Events of this GPU are watched (again)."""

    uuid: str


@dataclass(frozen=True)
class ProbeNow:
    """Something happened that the source cannot pin on one GPU: probe them all at once."""


@dataclass(frozen=True)
class Cleared:
    """An operator cleared ``device`` (request id ``request``); ``uuids`` are the records it resets."""

    device: str
    uuids: tuple[str, ...]
    request: str


HealthEvent = XidEvent | LostEvent | ProbeOk | Unmonitored | Monitored | ProbeNow | Cleared


class ProbeError(Exception):
    """The GPU did not pass a probe; the message says what failed."""


class HealthSourceError(Exception):
    """The source's event stream broke (it may work again later)."""


@runtime_checkable
class HealthSource(Protocol):
    """Where hardware health events come from. ``wait`` and ``probe`` are called from worker threads."""

    def start(self) -> Mapping[str, str]:
        """Begin watching; return ``uuid -> reason`` for the GPUs whose events cannot be watched."""
        ...

    def wait(self, timeout: float) -> list[HealthEvent]:
        """Block up to ``timeout`` seconds for events; ``[]`` when none came. Raises
        :class:`HealthSourceError` when the stream broke."""
        ...

    def probe(self, uuid: str) -> None:
        """Check that the GPU still answers; raise :class:`ProbeError` when it does not."""
        ...

    def close(self) -> None:
        """Stop watching (idempotent)."""
        ...


class QuietSource:
    """A source with nothing to report and GPUs that always answer (a fake backend without a state dir)."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def start(self) -> Mapping[str, str]:
        return {}

    def wait(self, timeout: float) -> list[HealthEvent]:
        self._closed.wait(timeout)
        return []

    def probe(self, uuid: str) -> None:
        return None

    def close(self) -> None:
        self._closed.set()
