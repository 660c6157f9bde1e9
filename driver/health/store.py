"""The health state file: ``<plugin-dir>/health.json``, written atomically by the plugin, read by the exporter.

XID events are not delivered again after a restart, so the file is what keeps a taint in place across
plugin restarts and upgrades. Format (camelCase, version 1)::

    {"version": 1,
     "records": {"<uuid>": {"xid": 79, "xidFatal": true, "xidAt": 1.7e9, "lost": null, "lostAt": null,
                            "passes": 0, "unmonitored": null, "xidEvents": 1}},
     "clears": {"<device>": "<request id>"}}

A file that cannot be parsed is reported as :class:`StateFileError`; the plugin keeps it aside (``.corrupt``)
and starts from an empty state, the exporter keeps showing what it read last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from driver.fsutil import atomic_write
from driver.health.state import FaultRecord, HealthState

STATE_FILE_NAME = "health.json"
FORMAT_VERSION = 1
#: Readable by the exporter container (no secrets in it); the plugin directory itself stays root-only.
FILE_MODE = 0o644

_NONE = type(None)
# (attribute, JSON key, accepted JSON types)
_FIELDS: tuple[tuple[str, str, tuple[type, ...]], ...] = (
    ("xid", "xid", (int, _NONE)),
    ("xid_fatal", "xidFatal", (bool,)),
    ("xid_at", "xidAt", (int, float, _NONE)),
    ("lost", "lost", (str, _NONE)),
    ("lost_at", "lostAt", (int, float, _NONE)),
    ("passes", "passes", (int,)),
    ("unmonitored", "unmonitored", (str, _NONE)),
    ("xid_events", "xidEvents", (int,)),
)


class StateFileError(ValueError):
    """The health state file exists but is not a valid state; the message names the file and field."""


def to_json(state: HealthState) -> dict[str, Any]:
    records = {
        uuid: {key: getattr(rec, attr) for attr, key, _ in _FIELDS}
        for uuid, rec in sorted(state.records.items())
    }
    return {"version": FORMAT_VERSION, "records": records, "clears": dict(sorted(state.clears.items()))}


def _record(raw: Any, where: str) -> FaultRecord:
    if not isinstance(raw, dict):
        raise StateFileError(f"{where}: not an object")
    values: dict[str, Any] = {}
    defaults = FaultRecord()
    for attr, key, expected in _FIELDS:
        value = raw.get(key, getattr(defaults, attr))
        # bool is an int in Python; only the boolean field may hold one.
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            raise StateFileError(f"{where}.{key}: unexpected value {value!r}")
        values[attr] = value
    return FaultRecord(**values)


def from_json(data: Any, source: str = "health state") -> HealthState:
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise StateFileError(f"{source}: not a version {FORMAT_VERSION} health state")
    records_raw, clears_raw = data.get("records") or {}, data.get("clears") or {}
    if not isinstance(records_raw, dict) or not isinstance(clears_raw, dict):
        raise StateFileError(f"{source}: records and clears must be objects")
    records = {str(uuid): _record(raw, f"{source}: records[{uuid}]") for uuid, raw in records_raw.items()}
    if not all(isinstance(v, str) for v in clears_raw.values()):
        raise StateFileError(f"{source}: clears: request ids must be strings")
    return HealthState(records={k: v for k, v in records.items() if not v.empty}, clears=dict(clears_raw))


def read_state(path: str | os.PathLike[str]) -> HealthState:
    """The state in ``path``; an empty state when the file does not exist."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return HealthState()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StateFileError(f"{path}: not JSON: {exc}") from exc
    return from_json(data, str(path))


def write_state(path: str | os.PathLike[str], state: HealthState) -> None:
    data = json.dumps(to_json(state), indent=1, sort_keys=False).encode() + b"\n"
    atomic_write(path, data, mode=FILE_MODE, what="health-state")


def keep_aside(path: str | os.PathLike[str]) -> Path:
    """Move a corrupt file out of the way (``<name>.corrupt``) so the next write starts clean."""
    target = Path(path)
    aside = target.with_name(target.name + ".corrupt")
    os.replace(target, aside)
    return aside


class StateFileReader:
    """Re-reads the state file when it changed (by inode, mtime and size); keeps the last good state."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self.state = HealthState()
        self.error: str | None = None

    def read(self) -> HealthState:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self.state, self.error = None, HealthState(), None
            return self.state
        except OSError as err:
            self.error = f"{self.path}: {err.strerror or err}"
            return self.state
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self.state, self.error = read_state(self.path), None
            except (StateFileError, OSError) as err:
                self.error = str(err)
                return self.state
            self._stamp = stamp
        return self.state
