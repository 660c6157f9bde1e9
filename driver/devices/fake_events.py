"""Fault injection for fake GPUs: ``<state>/gpus/<uuid>/faults.json``, and the health source that reads it.

The file describes what is wrong with a simulated GPU (or MIG device)::

    {"lost": false, "xids": [{"seq": 1, "xid": 79}, {"seq": 2, "xid": 13}]}

``xids`` is a log: each injected XID gets the next ``seq``; the source reports entries newer than the ones
it has seen, and, like NVML after a restart, never reports entries that were there when it started.
``lost`` is a condition: the GPU fell off the bus; probes fail (and the fake backend's telemetry fails)
until it is cleared. ``accel-dra sim inject`` writes these files; writes are atomic (rename).

``<state>/devices.json`` maps the DRA device names of the node to UUIDs, so the injection command accepts
either; the source writes it when it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driver.devices.events import HealthEvent, LostEvent, ProbeError, XidEvent
from driver.devices.model import Inventory
from driver.fsutil import atomic_write
from driver.log import get_logger

log = get_logger(__name__)

FAULTS_FILE = "faults.json"
INDEX_FILE = "devices.json"
LOST_REASON = "GPU has fallen off the bus (simulated)"
#: Injected XIDs kept in a faults file (older ones were reported long ago).
MAX_XID_LOG = 64


class FaultError(ValueError):
    """A GPU to inject into cannot be found, or the faults file cannot be written; names both."""


@dataclass(frozen=True)
class Faults:
    lost: bool = False
    #: (seq, xid), oldest first.
    xids: tuple[tuple[int, int], ...] = ()

    @property
    def last_seq(self) -> int:
        return self.xids[-1][0] if self.xids else 0

    def to_json(self) -> dict[str, Any]:
        return {"lost": self.lost, "xids": [{"seq": s, "xid": x} for s, x in self.xids]}


def faults_path(state_dir: str | os.PathLike[str], uuid: str) -> Path:
    return Path(state_dir) / "gpus" / uuid / FAULTS_FILE


def read_faults(path: Path) -> Faults:
    """The faults in ``path``; none when it is missing or unreadable (a writer replaces it atomically)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        xids = tuple(sorted((int(e["seq"]), int(e["xid"])) for e in data.get("xids") or []))
        return Faults(lost=bool(data.get("lost", False)), xids=xids)
    except FileNotFoundError:
        return Faults()
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("fake faults file ignored", path=str(path), error=str(exc))
        return Faults()


def gpu_lost(state_dir: Path, uuid: str) -> bool:
    """Whether the simulated GPU has fallen off the bus (cheap when there is no faults file)."""
    path = faults_path(state_dir, uuid)
    return path.exists() and read_faults(path).lost


def _write(path: Path, faults: Faults) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if faults == Faults():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        atomic_write(path, json.dumps(faults.to_json()).encode() + b"\n", mode=0o644, what="fake-faults")
    except OSError as exc:
        raise FaultError(f"{path}: cannot write faults: {exc.strerror or exc}") from exc


def inject_xid(state_dir: str | os.PathLike[str], uuid: str, xid: int) -> Faults:
    path = faults_path(state_dir, uuid)
    current = read_faults(path)
    entries = (*current.xids, (current.last_seq + 1, xid))[-MAX_XID_LOG:]
    faults = Faults(lost=current.lost, xids=entries)
    _write(path, faults)
    return faults


def set_lost(state_dir: str | os.PathLike[str], uuid: str, lost: bool = True) -> Faults:
    path = faults_path(state_dir, uuid)
    current = read_faults(path)
    # Keep the XID log when the GPU comes back: a source compares sequence numbers with it.
    faults = Faults(lost=lost, xids=current.xids)
    _write(path, faults)
    return faults


# -- device names -> UUIDs -----------------------------------------------------------------------------


def write_index(state_dir: Path, inventory: Inventory) -> None:
    """Add this node's devices to ``<state>/devices.json`` (several simulated nodes may share a state dir)."""
    path = state_dir / INDEX_FILE
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    for device in inventory.devices:
        index[device.name] = {"uuid": device.uuid, "gpu": device.gpu.uuid}
    for gpu in inventory.gpus:
        index.setdefault(gpu.name, {"uuid": gpu.uuid, "gpu": gpu.uuid})
    atomic_write(path, json.dumps(index, indent=1, sort_keys=True).encode(), mode=0o644, what="fake-index")


def resolve(state_dir: str | os.PathLike[str], name: str) -> tuple[str, str]:
    """``(uuid, gpu uuid)`` for a GPU/MIG UUID or a DRA device name of a simulated node."""
    root = Path(state_dir)
    try:
        index: dict[str, dict[str, str]] = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    if name in index:
        return index[name]["uuid"], index[name]["gpu"]
    for entry in index.values():
        if name in (entry.get("uuid"), entry.get("gpu")):
            return entry["uuid"], entry["gpu"]
    if (root / "gpus" / name).is_dir():
        return name, name
    known = ", ".join(sorted(index)) or "none (is the plugin running with this --fake-state-dir?)"
    raise FaultError(f"no simulated GPU or device {name!r} under {root}; known devices: {known}")


# -- the source ----------------------------------------------------------------------------------------


class FakeHealthSource:
    """:class:`~driver.devices.events.HealthSource` over the faults files of one simulated node."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        inventory: Inventory,
        poll_interval: float = 0.1,
        *,
        write_index: bool = True,
    ):
        self._root = Path(state_dir)
        self._write_index = write_index
        self._inventory = inventory
        self._poll = poll_interval
        self._uuids = [u for g in inventory.gpus for u in (g.uuid, *(m.uuid for m in g.mig_devices))]
        self._gpu_of = {u: g.uuid for g in inventory.gpus for u in (g.uuid, *(m.uuid for m in g.mig_devices))}
        self._seen: dict[str, int] = {}
        self._lost: dict[str, bool] = {}
        self._stamps: dict[str, tuple[int, int, int] | None] = {}
        self._closed = threading.Event()

    def start(self) -> Mapping[str, str]:
        if self._write_index:
            write_index(self._root, self._inventory)
        for uuid in self._uuids:
            self._seen[uuid] = read_faults(faults_path(self._root, uuid)).last_seq
            self._lost[uuid] = False  # a GPU lost before the start is reported by the first scan
            self._stamps[uuid] = None
        return {}

    def _stamp(self, path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _scan(self) -> list[HealthEvent]:
        events: list[HealthEvent] = []
        for uuid in self._uuids:
            path = faults_path(self._root, uuid)
            stamp = self._stamp(path)
            if stamp == self._stamps.get(uuid):
                continue  # unchanged (or still absent)
            self._stamps[uuid] = stamp
            faults = read_faults(path)
            events += [XidEvent(uuid, xid) for seq, xid in faults.xids if seq > self._seen.get(uuid, 0)]
            self._seen[uuid] = max(self._seen.get(uuid, 0), faults.last_seq)
            if faults.lost and not self._lost.get(uuid):
                events.append(LostEvent(self._gpu_of[uuid], LOST_REASON))
            self._lost[uuid] = faults.lost
        return events

    def wait(self, timeout: float) -> list[HealthEvent]:
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            events = self._scan()
            remaining = deadline - time.monotonic()
            if events or remaining <= 0:
                return events
            self._closed.wait(min(self._poll, remaining))
        return []

    def probe(self, uuid: str) -> None:
        if read_faults(faults_path(self._root, self._gpu_of.get(uuid, uuid))).lost:
            raise ProbeError(LOST_REASON)

    def close(self) -> None:
        self._closed.set()
