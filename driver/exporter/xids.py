"""XID events counted by the exporter itself, per GPU and XID code, through the device backend's health source.

The kubelet plugin's health monitor decides what an XID *means* (taints, the health stream); the exporter only
counts them, so it needs neither the plugin nor its state file. It watches with its own source (NVML: its own
event set; fake GPUs: the injected faults, read-only). Events of a MIG device count for its GPU. Like NVML after
a restart, a new source reports only what happens from its start on: the counters count from the exporter's
start.

:meth:`XidCounter.poll` drains the events that arrived since the previous call without waiting; the collector
calls it once per sampling round in a thread of its own, so an event stream that hangs stalls only itself.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import MappingProxyType

from driver.devices.events import HealthSource, HealthSourceError, XidEvent
from driver.devices.model import Inventory
from driver.log import get_logger

log = get_logger(__name__)

#: Events read per poll at most (NVML hands them over one by one); the rest wait for the next round.
MAX_EVENTS_PER_POLL = 256


class XidCounter:
    """XID events per (GPU UUID, code) and the last code per GPU, for the GPUs whose events can be watched."""

    def __init__(self, source: HealthSource, inventory: Inventory) -> None:
        self._source = source
        self._gpu_of = {u: g.uuid for g in inventory.gpus for u in (g.uuid, *(m.uuid for m in g.mig_devices))}
        self._lock = threading.Lock()
        self._counts: dict[str, dict[int, int]] = {}
        self._last: dict[str, int] = {}
        self._monitorable: frozenset[str] = frozenset()
        self._broken = False
        self._started = False

    def poll(self) -> None:
        """Start watching on the first call; then read the events that are waiting (blocking NVML calls)."""
        if not self._started:
            self._started = True
            try:
                unmonitored = self._source.start()
            except Exception as err:  # a source that cannot start: no XID series, the rest goes on
                log.warning("xid events cannot be watched", error=str(err))
                return
            self._monitorable = frozenset(self._gpu_of.values()) - set(unmonitored)
            with self._lock:
                for gpu in self._monitorable:
                    self._counts.setdefault(gpu, {})
                    self._last.setdefault(gpu, 0)
        if not self._monitorable:
            return
        try:
            for _ in range(MAX_EVENTS_PER_POLL):
                events = self._source.wait(0.0)
                if not events:
                    break
                self._count([e for e in events if isinstance(e, XidEvent)])
        except HealthSourceError as err:
            if not self._broken:
                log.warning("xid event stream broke; counting resumes when it works again", error=str(err))
            self._broken = True
            return
        if self._broken:
            log.info("xid event stream works again")
        self._broken = False

    def _count(self, events: list[XidEvent]) -> None:
        with self._lock:
            for event in events:
                gpu = self._gpu_of.get(event.uuid)
                if gpu is None:
                    continue
                counts = self._counts.setdefault(gpu, {})
                counts[event.xid] = counts.get(event.xid, 0) + 1
                self._last[gpu] = event.xid

    def counts(self, gpu: str) -> Mapping[int, int] | None:
        """XID code -> events of the GPU; ``None`` while its events are not watched."""
        if self._broken or gpu not in self._monitorable:
            return None
        with self._lock:
            return MappingProxyType(dict(self._counts.get(gpu, {})))

    def last(self, gpu: str) -> int | None:
        """The last XID code of the GPU (0: none yet); ``None`` while its events are not watched."""
        if self._broken or gpu not in self._monitorable:
            return None
        with self._lock:
            return self._last.get(gpu, 0)

    def close(self) -> None:
        self._source.close()
