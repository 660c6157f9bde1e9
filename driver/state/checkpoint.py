"""The node's record of prepared claims: a versioned, checksummed JSON file in the plugin directory.

Layout (version 2, the current one)::

    {"kind": "AccelDraCheckpoint", "version": 2, "checksum": "sha256:<hex>",
     "data": {"nodeBootID": "<boot id>",
              "claims": {"<claim uid>": {"uid", "namespace", "name", "state", "configDigest",
                                         "devices": [{"request", "pool", "device", "uuid", "adminAccess",
                                                      "shareID", "cdiDeviceIDs", "sharing",
                                                      "sharingApplied"}]}}}}

Design points (docs/node-state.md has the operator's view):

* The checksum covers a *canonical* serialization (sorted keys, no whitespace) of the whole document minus
  the ``checksum`` field, computed over the JSON as parsed -- unknown fields included. A newer writer that
  adds an optional field therefore never breaks an older reader's check, and formatting is irrelevant.
* Unknown fields (written by a newer version) are kept in ``extra`` and written back unchanged.
* Older versions are migrated in memory by a chain of functions; the next write stores the current version.
* A file that cannot be read, parsed or verified is *corrupt*: a copy is kept aside (``checkpoint.json.corrupt-
  <time>``) and the caller gets an empty checkpoint to rebuild. The corrupt file itself stays in place until
  the rebuilt checkpoint atomically replaces it, so a crash before that finds it corrupt again and rebuilds
  again. Nothing here raises on bad content.
* Something other than a regular file at the path (a directory, FIFO, symbolic link, socket, device) is never
  opened for reading -- a FIFO would block forever -- and cannot be replaced atomically: it is renamed aside
  (``checkpoint.json.corrupt-<time>``) and reported corrupt.
* A *missing* file is reported as such; the caller must not take it for a fresh node while CDI specs exist
  (:meth:`driver.state.prepare.NodePreparer.checkpoint` rebuilds from them).
* Fields are decoded strictly: a value of the wrong type (``"adminAccess": "false"``) makes the document
  corrupt, even under a valid checksum, rather than being coerced into something it does not say.
* ``nodeBootID`` differing from the running boot id means the node rebooted: prepared state is void.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from driver.fsutil import NotRegularFileError, atomic_write, read_regular, set_aside
from driver.log import get_logger

log = get_logger(__name__)

CHECKPOINT_FILE = "checkpoint.json"
KIND = "AccelDraCheckpoint"
CURRENT_VERSION = 2
DEFAULT_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
#: How many moved-aside corrupt checkpoints are kept for inspection.
KEEP_CORRUPT = 5

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


class ClaimState(enum.StrEnum):
    PREPARE_STARTED = "PrepareStarted"
    PREPARE_COMPLETED = "PrepareCompleted"


class LoadEvent(enum.StrEnum):
    """What :meth:`CheckpointStore.load` found."""

    MISSING = "missing"  # no file yet: a fresh node
    LOADED = "loaded"
    MIGRATED = "migrated"  # an older version, converted
    NEWER = "newer"  # written by a newer version; read what we know, keep the rest
    CORRUPT = "corrupt"  # copy kept aside; empty checkpoint returned, the caller rebuilds and saves
    REBOOTED = "rebooted"  # boot id changed; prepared state dropped


@dataclass(frozen=True)
class DeviceRecord:
    request: str
    pool: str
    device: str
    uuid: str = ""
    admin_access: bool = False
    share_id: str | None = None
    cdi_ids: tuple[str, ...] = ()
    #: ``TimeSlicing:<Interval>`` when a sharing config applies to this device.
    sharing: str | None = None
    #: Whether the sharing setting was applied to the hardware (else only recorded).
    sharing_applied: bool = False
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)


@dataclass(frozen=True)
class ClaimRecord:
    uid: str
    namespace: str
    name: str
    state: ClaimState
    devices: tuple[DeviceRecord, ...] = ()
    config_digest: str = ""
    extra: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    @property
    def completed(self) -> bool:
        return self.state == ClaimState.PREPARE_COMPLETED

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} ({self.uid})"


@dataclass(frozen=True)
class Checkpoint:
    boot_id: str
    claims: Mapping[str, ClaimRecord] = field(default_factory=_empty)
    #: Unknown fields of ``data`` and of the document, preserved for newer versions.
    extra_data: Mapping[str, Any] = field(default_factory=_empty, compare=False)
    extra_top: Mapping[str, Any] = field(default_factory=_empty, compare=False)

    def with_claim(self, record: ClaimRecord) -> Checkpoint:
        return self.with_claims([record])

    def with_claims(self, records: Iterable[ClaimRecord]) -> Checkpoint:
        added = {r.uid: r for r in records}
        return replace(self, claims=MappingProxyType({**self.claims, **added})) if added else self

    def without(self, *uids: str) -> Checkpoint:
        gone = set(uids)
        if not gone & self.claims.keys():
            return self
        return replace(self, claims=MappingProxyType({k: v for k, v in self.claims.items() if k not in gone}))


# -- serialization (pure) -----------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """The byte form checksums are computed over: independent of key order and whitespace."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def checksum(document: Mapping[str, Any]) -> str:
    body = {k: v for k, v in document.items() if k != "checksum"}
    return _digest(canonical_json(body))


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _device_json(d: DeviceRecord) -> dict[str, Any]:
    out: dict[str, Any] = dict(d.extra)
    out.update(
        request=d.request,
        pool=d.pool,
        device=d.device,
        uuid=d.uuid,
        adminAccess=d.admin_access,
        cdiDeviceIDs=list(d.cdi_ids),
    )
    if d.share_id is not None:
        out["shareID"] = d.share_id
    if d.sharing is not None:
        out["sharing"] = d.sharing
        out["sharingApplied"] = d.sharing_applied
    return out


def _claim_json(c: ClaimRecord) -> dict[str, Any]:
    out: dict[str, Any] = dict(c.extra)
    out.update(
        uid=c.uid,
        namespace=c.namespace,
        name=c.name,
        state=str(c.state),
        configDigest=c.config_digest,
        devices=[_device_json(d) for d in c.devices],
    )
    return out


def to_document(cp: Checkpoint, *, with_checksum: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = dict(cp.extra_data)
    data["nodeBootID"] = cp.boot_id
    data["claims"] = {uid: _claim_json(c) for uid, c in sorted(cp.claims.items())}
    document: dict[str, Any] = dict(cp.extra_top)
    document.update(kind=KIND, version=CURRENT_VERSION, data=data)
    if with_checksum:
        document["checksum"] = checksum(document)
    return document


def encode(cp: Checkpoint) -> bytes:
    """The file's bytes: the canonical form of :func:`to_document` (compact: json's C encoder only serves
    ``indent=None``; indenting took half of a save's CPU time)."""
    document = to_document(cp, with_checksum=False)
    body = canonical_json(document)
    digest = _digest(body)
    if min(document) > "checksum":
        # Sorted keys put the checksum first: the canonical form of the whole document is the body's with
        # it spliced in, so the claims are encoded once, not once for the checksum and once for the file.
        return b'{"checksum":"' + digest.encode() + b'",' + body[1:] + b"\n"
    document["checksum"] = digest
    return canonical_json(document) + b"\n"


class CorruptCheckpointError(ValueError):
    """The document cannot be trusted; the message says why."""


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind):
        raise CorruptCheckpointError(
            f"{where}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}"
        )
    return value


_DEVICE_KEYS = {
    "request",
    "pool",
    "device",
    "uuid",
    "adminAccess",
    "shareID",
    "cdiDeviceIDs",
    "sharing",
    "sharingApplied",
}
_CLAIM_KEYS = {"uid", "namespace", "name", "state", "configDigest", "devices"}


def _flag(raw: Mapping[str, Any], key: str, where: str) -> bool:
    """A boolean field: absent is false, anything but ``true``/``false`` is corruption."""
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise CorruptCheckpointError(f"{where}.{key}: expected bool, got {type(value).__name__} {value!r}")
    return value


def _optional_str(raw: Mapping[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    return None if value is None else str(_expect(value, str, f"{where}.{key}"))


def _device_from(raw: Any, where: str) -> DeviceRecord:
    _expect(raw, dict, where)
    ids = _expect(raw.get("cdiDeviceIDs", []), list, f"{where}.cdiDeviceIDs")
    return DeviceRecord(
        request=_expect(raw.get("request", ""), str, f"{where}.request"),
        pool=_expect(raw.get("pool"), str, f"{where}.pool"),
        device=_expect(raw.get("device"), str, f"{where}.device"),
        uuid=_expect(raw.get("uuid", ""), str, f"{where}.uuid"),
        admin_access=_flag(raw, "adminAccess", where),
        share_id=_optional_str(raw, "shareID", where),
        cdi_ids=tuple(_expect(i, str, f"{where}.cdiDeviceIDs[]") for i in ids),
        sharing=_optional_str(raw, "sharing", where),
        sharing_applied=_flag(raw, "sharingApplied", where),
        extra=MappingProxyType({k: v for k, v in raw.items() if k not in _DEVICE_KEYS}),
    )


def _claim_from(uid: str, raw: Any) -> ClaimRecord:
    where = f"data.claims[{uid}]"
    _expect(raw, dict, where)
    try:
        state = ClaimState(raw.get("state"))
    except ValueError:
        raise CorruptCheckpointError(f"{where}.state: unknown state {raw.get('state')!r}") from None
    devices = _expect(raw.get("devices", []), list, f"{where}.devices")
    return ClaimRecord(
        uid=uid,
        namespace=_expect(raw.get("namespace"), str, f"{where}.namespace"),
        name=_expect(raw.get("name"), str, f"{where}.name"),
        state=state,
        devices=tuple(_device_from(d, f"{where}.devices[{i}]") for i, d in enumerate(devices)),
        config_digest=_expect(raw.get("configDigest", ""), str, f"{where}.configDigest"),
        extra=MappingProxyType({k: v for k, v in raw.items() if k not in _CLAIM_KEYS}),
    )


def _migrate_v1(document: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept claims as a list and devices as ``pool/device`` strings, without config digests."""
    data = _expect(document.get("data"), dict, "data")
    claims: dict[str, Any] = {}
    for i, raw in enumerate(_expect(data.get("claims", []), list, "data.claims")):
        _expect(raw, dict, f"data.claims[{i}]")
        uid = _expect(raw.get("uid"), str, f"data.claims[{i}].uid")
        devices = []
        for j, entry in enumerate(_expect(raw.get("devices", []), list, f"data.claims[{i}].devices")):
            pool, sep, device = _expect(entry, str, f"data.claims[{i}].devices[{j}]").partition("/")
            if not sep:
                raise CorruptCheckpointError(
                    f"data.claims[{i}].devices[{j}]: expected pool/device, got {entry!r}"
                )
            devices.append({"pool": pool, "device": device, "request": "", "cdiDeviceIDs": []})
        ids = raw.get("cdiDeviceIDs", [])
        for d in devices:  # v1 listed the claim's CDI ids together; the CDI device name is <uid>-<device>
            d["cdiDeviceIDs"] = [
                i for i in ids if isinstance(i, str) and i.partition("=")[2] == f"{uid}-{d['device']}"
            ]
        rest = {k: v for k, v in raw.items() if k not in ("devices", "cdiDeviceIDs")}
        claims[uid] = {**rest, "devices": devices, "configDigest": ""}
    new_data = {k: v for k, v in data.items() if k not in ("claims", "bootID")}
    new_data.update(nodeBootID=data.get("bootID", ""), claims=claims)
    return {**document, "version": 2, "data": new_data}


#: version -> function returning the document in version + 1.
MIGRATIONS: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _migrate_v1}


def decode(raw: bytes) -> tuple[Checkpoint, LoadEvent]:
    """Parse and verify a checkpoint file's bytes. Raises :class:`CorruptCheckpointError`, and only that."""
    try:
        return _decode(raw)
    except CorruptCheckpointError:
        raise
    except Exception as exc:  # pure code over the file's bytes: whatever fails, the content is to blame
        # e.g. NaN or 1e999 (no canonical form to checksum), a lone surrogate escape, nesting too deep
        raise CorruptCheckpointError(f"cannot be decoded: {type(exc).__name__}: {exc}") from None


def _decode(raw: bytes) -> tuple[Checkpoint, LoadEvent]:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"not valid JSON: {exc}") from None
    _expect(document, dict, "document")
    if document.get("kind") != KIND:
        raise CorruptCheckpointError(f"kind is {document.get('kind')!r}, expected {KIND!r}")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CorruptCheckpointError(f"version {version!r} is not a positive integer")
    if document.get("checksum") != checksum(document):
        raise CorruptCheckpointError(f"checksum mismatch: file says {document.get('checksum')!r}")
    event = LoadEvent.LOADED
    if version > CURRENT_VERSION:
        event = LoadEvent.NEWER
    while version < CURRENT_VERSION:
        document = MIGRATIONS[version](document)
        version, event = document["version"], LoadEvent.MIGRATED
    data = _expect(document.get("data"), dict, "data")
    claims = _expect(data.get("claims", {}), dict, "data.claims")
    cp = Checkpoint(
        boot_id=_expect(data.get("nodeBootID", ""), str, "data.nodeBootID"),
        claims=MappingProxyType({uid: _claim_from(uid, c) for uid, c in claims.items()}),
        extra_data=MappingProxyType({k: v for k, v in data.items() if k not in ("nodeBootID", "claims")}),
        extra_top=MappingProxyType(
            {k: v for k, v in document.items() if k not in ("kind", "version", "checksum", "data")}
        ),
    )
    return cp, event


# -- the file ---------------------------------------------------------------------------------------------


def read_boot_id(path: str | os.PathLike[str] = DEFAULT_BOOT_ID_FILE) -> str:
    """The running boot's id, or "" when unknown (then reboots cannot be detected and nothing is dropped)."""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        log.warning("cannot read boot id; reboot detection is off", path=str(path), error=str(exc))
        return ""


class CheckpointStore:
    """Loads and saves ``<plugin-dir>/checkpoint.json``.

    Several plugin instances may share the plugin directory (rolling update), so callers load the file at
    the start of every operation (under the node lock). Reading a few kilobytes is cheap; parsing is skipped
    while the bytes are the ones last read or written.
    """

    def __init__(self, directory: str | os.PathLike[str], boot_id: str, *, sync: bool = False) -> None:
        """``sync``: fsync each save (off by default: a reboot voids the checkpoint, see fsutil)."""
        self.directory = Path(directory)
        self.sync = sync
        self.path = self.directory / CHECKPOINT_FILE
        self.boot_id = boot_id
        self._cached: tuple[bytes, Checkpoint] | None = None
        #: The checkpoint as last loaded (after reboot/corruption handling) or saved by this process.
        self.last: Checkpoint = self.empty()

    def empty(self) -> Checkpoint:
        return Checkpoint(boot_id=self.boot_id)

    def load(self) -> tuple[Checkpoint, LoadEvent]:
        cp, event = self._load()
        self.last = cp
        return cp, event

    def _load(self) -> tuple[Checkpoint, LoadEvent]:
        try:
            raw, st = read_regular(self.path)
        except FileNotFoundError:
            self._cached = None
            return self.empty(), LoadEvent.MISSING
        except NotRegularFileError as exc:
            return self._not_a_file(exc)
        except OSError as exc:
            return self._corrupt(f"cannot read: {exc}", None)
        if st.st_mode & 0o077:
            self._tighten(st.st_mode)
        if self._cached is not None and self._cached[0] == raw:
            return self._cached[1], LoadEvent.LOADED
        try:
            cp, event = decode(raw)
        except CorruptCheckpointError as exc:
            return self._corrupt(str(exc), raw)
        if self.boot_id and cp.boot_id and cp.boot_id != self.boot_id:
            log.warning(
                "node rebooted since the checkpoint was written; dropping prepared state",
                path=str(self.path),
                checkpoint_boot_id=cp.boot_id,
                boot_id=self.boot_id,
                claims=len(cp.claims),
            )
            self._cached = None
            return replace(cp, boot_id=self.boot_id, claims=_EMPTY), LoadEvent.REBOOTED
        if event == LoadEvent.NEWER:
            log.warning(
                "checkpoint was written by a newer version; unknown fields are kept", path=str(self.path)
            )
        elif event == LoadEvent.MIGRATED:
            log.info(
                "checkpoint migrated from an older version", path=str(self.path), version=CURRENT_VERSION
            )
        if not cp.boot_id:
            cp = replace(cp, boot_id=self.boot_id)
        self._cached = (raw, cp)
        return cp, event

    def save(self, cp: Checkpoint) -> None:
        raw = encode(cp)
        try:
            atomic_write(self.path, raw, mode=0o600, what="checkpoint", sync=self.sync)
        except FileNotFoundError:  # the plugin directory is gone (deleted by hand): made again
            self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            atomic_write(self.path, raw, mode=0o600, what="checkpoint", sync=self.sync)
        self._cached = (raw, cp)
        self.last = cp

    def _tighten(self, mode: int) -> None:
        """Other users must not read or change the node's record of prepared claims."""
        try:
            os.chmod(self.path, 0o600, follow_symlinks=False)
        except OSError as exc:
            log.error("cannot restrict the checkpoint's mode", path=str(self.path), error=str(exc))
            return
        log.warning(
            "checkpoint was open to other users; mode set to 0600",
            path=str(self.path),
            mode=oct(mode & 0o777),
        )

    def _not_a_file(self, exc: NotRegularFileError) -> tuple[Checkpoint, LoadEvent]:
        """Move the intruder aside so the rebuilt checkpoint can take its place."""
        self._cached = None
        try:
            aside = set_aside(self.path, "corrupt")
        except OSError as err:
            log.error(
                "cannot move the checkpoint path aside", path=str(self.path), kind=exc.kind, error=str(err)
            )
            aside = None
        log.error(
            "checkpoint is not a regular file; moved aside, continuing from an empty state",
            path=str(self.path),
            kind=exc.kind,
            moved_to=str(aside) if aside else None,
        )
        return self.empty(), LoadEvent.CORRUPT

    def _corrupt(self, reason: str, raw: bytes | None) -> tuple[Checkpoint, LoadEvent]:
        """Keep a copy of the corrupt bytes for inspection; the file itself stays until a save replaces it."""
        self._cached = None
        aside = (
            self.directory
            / f"{CHECKPOINT_FILE}.corrupt-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{time.time_ns() % 10**9:09d}"
        )
        copied: str | None = None
        if raw is not None:
            try:
                _write_copy(aside, raw)
                copied = str(aside)
            except OSError as exc:
                log.error("cannot keep a copy of the corrupt checkpoint", path=str(aside), error=str(exc))
        log.error(
            "checkpoint is corrupt; copy kept aside, continuing from an empty state",
            path=str(self.path),
            copied_to=copied,
            reason=reason,
        )
        self._prune_corrupt()
        return self.empty(), LoadEvent.CORRUPT

    def _prune_corrupt(self) -> None:
        old = sorted(self.directory.glob(f"{CHECKPOINT_FILE}.corrupt-*"))
        for path in old[:-KEEP_CORRUPT]:
            with contextlib.suppress(OSError):
                path.unlink()


def _write_copy(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
