"""Health state: pure transitions from events, and the per-device view the taints and the stream are built from.

State is kept per UUID (a GPU or one of its MIG devices) in a :class:`FaultRecord`:

- an XID sets the record's XID, unless a fatal one is already recorded and the new one is ignorable (a
  GPU that needs attention stays marked until someone looks); every XID also counts in ``xid_events``;
- a lost GPU (NVML says so, or it does not answer a probe) is marked lost with the first reason seen;
- passing probes count up while something is recorded; with recovery ``probe``, ``recovery_probes``
  passes in a row end the lost mark, with ``probe-all`` they also end the XID mark; ``manual`` never;
- an operator clear resets the XID and lost marks of the records it names and remembers the request id,
  so a request is acted on once (also across restarts);
- ``unmonitored`` says the GPU's events cannot be watched; it is not a fault.

A device's view combines its own record with its GPU's: a lost GPU or a GPU-wide XID affects every MIG
device of that GPU. Records with nothing in them are dropped, so an unchanged state compares equal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Literal

from driver.devices.events import (
    Cleared,
    HealthEvent,
    LostEvent,
    Monitored,
    ProbeNow,
    ProbeOk,
    Unmonitored,
    XidEvent,
)
from driver.devices.model import Device
from driver.health.xid import XidPolicy

RecoveryMode = Literal["manual", "probe", "probe-all"]
RECOVERY_MODES: tuple[RecoveryMode, ...] = ("manual", "probe", "probe-all")
HealthStatus = Literal["healthy", "unhealthy", "unknown"]


@dataclass(frozen=True)
class Policy:
    xids: XidPolicy = field(default_factory=XidPolicy)
    recovery: RecoveryMode = "probe"
    #: Passing probes in a row that end a fault the recovery mode lets probes end.
    recovery_probes: int = 3


@dataclass(frozen=True)
class FaultRecord:
    """What is known to be wrong with one GPU or MIG device. Times are Unix seconds."""

    xid: int | None = None
    xid_fatal: bool = False
    xid_at: float | None = None
    lost: str | None = None
    lost_at: float | None = None
    #: Passing probes in a row since the last fault (counted only while a probe could end a fault).
    passes: int = 0
    unmonitored: str | None = None
    #: Every XID seen since the record was created (the exporter's error counter); never reset.
    xid_events: int = 0

    @property
    def faulty(self) -> bool:
        return self.xid is not None or self.lost is not None

    @property
    def empty(self) -> bool:
        return self == FaultRecord()


@dataclass(frozen=True)
class HealthState:
    records: dict[str, FaultRecord] = field(default_factory=dict)
    #: device name -> id of the last clear request acted on.
    clears: dict[str, str] = field(default_factory=dict)

    def record(self, uuid: str) -> FaultRecord:
        return self.records.get(uuid) or FaultRecord()

    def with_record(self, uuid: str, record: FaultRecord) -> HealthState:
        records = dict(self.records)
        if record.empty:
            records.pop(uuid, None)
        else:
            records[uuid] = record
        return replace(self, records=records)


# -- transitions -----------------------------------------------------------------------------------------


def _on_xid(rec: FaultRecord, xid: int, policy: Policy, now: float) -> FaultRecord:
    fatal = policy.xids.is_fatal(xid)
    rec = replace(rec, xid_events=rec.xid_events + 1, passes=0)
    if rec.xid_fatal and not fatal:
        return rec  # an ignorable XID does not hide a fatal one
    return replace(rec, xid=xid, xid_fatal=fatal, xid_at=now)


def _on_lost(rec: FaultRecord, reason: str, now: float) -> FaultRecord:
    if rec.lost is not None:
        return replace(rec, passes=0)
    return replace(rec, lost=reason, lost_at=now, passes=0)


def _recoverable(rec: FaultRecord, policy: Policy) -> bool:
    if policy.recovery == "manual":
        return False
    return rec.lost is not None or (policy.recovery == "probe-all" and rec.xid is not None)


def _on_probe_ok(rec: FaultRecord, policy: Policy) -> FaultRecord:
    if not _recoverable(rec, policy):
        return rec
    passes = rec.passes + 1
    if passes < policy.recovery_probes:
        return replace(rec, passes=passes)
    rec = replace(rec, lost=None, lost_at=None, passes=0)
    if policy.recovery == "probe-all":
        rec = replace(rec, xid=None, xid_fatal=False, xid_at=None)
    return rec


def _cleared(rec: FaultRecord) -> FaultRecord:
    return replace(rec, xid=None, xid_fatal=False, xid_at=None, lost=None, lost_at=None, passes=0)


def apply(state: HealthState, event: HealthEvent, policy: Policy, now: float | None = None) -> HealthState:
    """The state after ``event`` (``state`` itself when nothing changed)."""
    at = time.time() if now is None else now
    if isinstance(event, Cleared):
        for uuid in event.uuids:
            state = state.with_record(uuid, _cleared(state.record(uuid)))
        return replace(state, clears={**state.clears, event.device: event.request})
    if isinstance(event, ProbeNow):
        return state
    rec = state.record(event.uuid)
    if isinstance(event, XidEvent):
        new = _on_xid(rec, event.xid, policy, at)
    elif isinstance(event, LostEvent):
        new = _on_lost(rec, event.reason, at)
    elif isinstance(event, ProbeOk):
        new = _on_probe_ok(rec, policy)
    elif isinstance(event, Unmonitored):
        new = replace(rec, unmonitored=event.reason)
    elif isinstance(event, Monitored):
        new = replace(rec, unmonitored=None)
    else:  # pragma: no cover - the union is exhaustive
        raise TypeError(f"unknown health event {event!r}")
    return state if new == rec else state.with_record(event.uuid, new)


# -- per-device view -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceHealth:
    """One DRA device's health, combined from its own record and its GPU's."""

    device: str
    lost: str | None = None
    lost_at: float | None = None
    xid: int | None = None
    xid_fatal: bool = False
    xid_at: float | None = None
    unmonitored: str | None = None
    message: str = "healthy"

    @property
    def healthy(self) -> bool:
        return self.lost is None and not (self.xid is not None and self.xid_fatal)

    @property
    def status(self) -> HealthStatus:
        if not self.healthy:
            return "unhealthy"
        return "unknown" if self.unmonitored else "healthy"


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)) if at is not None else "unknown time"


def _worst_xid(records: list[FaultRecord]) -> FaultRecord | None:
    """The record whose XID counts for the device: fatal before ignorable, then the most recent."""
    with_xid = [r for r in records if r.xid is not None]
    return max(with_xid, key=lambda r: (r.xid_fatal, r.xid_at or 0.0), default=None)


def _message(health: DeviceHealth, policy: Policy) -> str:
    parts: list[str] = []
    if health.lost is not None:
        parts.append(f"GPU lost since {_when(health.lost_at)}: {health.lost}")
    if health.xid is not None:
        described = policy.xids.describe(health.xid)
        if health.xid_fatal:
            until = "it recovers" if policy.recovery == "probe-all" else "an operator clears it"
            parts.append(f"{described} at {_when(health.xid_at)}: fatal, not schedulable until {until}")
        else:
            parts.append(f"{described} at {_when(health.xid_at)}: ignorable")
    if health.unmonitored:
        parts.append(f"health events not monitored: {health.unmonitored}")
    return "; ".join(parts) or "healthy"


def device_health(state: HealthState, device: Device, policy: Policy) -> DeviceHealth:
    own = state.record(device.uuid)
    records = [own] if device.mig is None else [state.record(device.gpu.uuid), own]
    lost = next((r for r in records if r.lost is not None), None)
    xid = _worst_xid(records)
    unmonitored = next((r.unmonitored for r in records if r.unmonitored), None)
    health = DeviceHealth(
        device=device.name,
        lost=lost.lost if lost else None,
        lost_at=lost.lost_at if lost else None,
        xid=xid.xid if xid else None,
        xid_fatal=xid.xid_fatal if xid else False,
        xid_at=xid.xid_at if xid else None,
        unmonitored=unmonitored,
    )
    return replace(health, message=_message(health, policy))


def clear_targets(device: Device) -> tuple[str, ...]:
    """The records an operator clear of ``device`` resets: its own and its GPU's (GPU-wide faults affect
    every MIG device of the GPU); clearing a whole GPU also resets its MIG devices' records."""
    if device.mig is not None:
        return (device.gpu.uuid, device.mig.uuid)
    return (device.gpu.uuid, *(m.uuid for m in device.gpu.mig_devices))


# -- per-GPU view (the exporter) -------------------------------------------------------------------------

GpuCondition = Literal["ok", "degraded", "failed"]


@dataclass(frozen=True)
class GpuHealth:
    """A physical GPU's health as the exporter shows it (``hw_status``, ``hw_errors_total``)."""

    condition: GpuCondition = "ok"
    #: XID events recorded for the GPU and its MIG devices.
    xid_events: int = 0
    reason: str = ""


def gpu_health(state: HealthState, gpu_uuid: str, mig_uuids: tuple[str, ...] = ()) -> GpuHealth:
    """``failed`` when the GPU is lost or has a fatal XID, ``degraded`` when only a MIG device has one."""
    gpu = state.record(gpu_uuid)
    migs = [state.record(u) for u in mig_uuids]
    events = gpu.xid_events + sum(r.xid_events for r in migs)
    if gpu.lost is not None:
        return GpuHealth("failed", events, f"lost: {gpu.lost}")
    if gpu.xid is not None and gpu.xid_fatal:
        return GpuHealth("failed", events, f"fatal XID {gpu.xid}")
    fatal = [r.xid for r in migs if r.xid is not None and r.xid_fatal]
    if fatal:
        return GpuHealth("degraded", events, f"fatal XID {fatal[0]} on a MIG device")
    return GpuHealth("ok", events)
