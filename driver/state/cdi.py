"""Per-claim CDI specs: names, content, the minimal ``cdiVersion``, and the spec directory.

One transient spec per claim, ``<cdi-dir>/k8s.<driver>-gpu_<claimUID>.json``, kind ``k8s.<driver>/gpu``, one
CDI device per allocated device named ``<claimUID>-<device>`` (a name is never reused for other content, so
runtimes that cache specs cannot hand out a stale one). Qualified id: ``k8s.<driver>/gpu=<claimUID>-<device>``.

* device edits: the device's nodes and env identifying the device and its claim (names below);
* spec-level edits (applied when any device of the spec is used): control nodes, driver files, and what the
  device backend contributes (the fake backend's state directory).

Env per device, ``NAME`` = device name upper-cased with every non-alphanumeric character replaced by ``_``::

    ACCEL_DRA_DEVICE_<NAME>=<gpu or MIG uuid>
    ACCEL_DRA_DEVICE_<NAME>_CLAIM=<namespace>/<claimName>
    ACCEL_DRA_DEVICE_<NAME>_CLAIM_UID=<claimUID>
    ACCEL_DRA_DEVICE_<NAME>_ADMIN_ACCESS=true            (admin-access results only)
    ACCEL_DRA_DEVICE_<NAME>_SHARING=TimeSlicing:<Interval>  (when a sharing config applies)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driver.fsutil import (
    NotRegularFileError,
    atomic_write,
    check_regular,
    read_regular,
    remove_file,
    remove_stale_temporaries,
    set_aside,
)
from driver.log import get_logger

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

JSON = dict[str, Any]

log = get_logger(__name__)

CDI_CLASS = "gpu"
ENV_PREFIX = "ACCEL_DRA_DEVICE_"

#: (version, predicate over the spec) in ascending order; the minimum version is the highest that applies.
_BASE_VERSION = "0.3.0"


def vendor(driver: str) -> str:
    return f"k8s.{driver}"


def kind(driver: str) -> str:
    return f"{vendor(driver)}/{CDI_CLASS}"


def spec_file_name(driver: str, claim_uid: str) -> str:
    """The transient spec name the CDI library would generate: ``<vendor>-<class>_<id>.json``."""
    return f"{vendor(driver)}-{CDI_CLASS}_{claim_uid.replace('/', '_')}.json"


def device_name(claim_uid: str, device: str) -> str:
    return f"{claim_uid}-{device}"


def qualified_id(driver: str, name: str) -> str:
    return f"{kind(driver)}={name}"


def env_name(device: str) -> str:
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", device.upper())


@dataclass(frozen=True)
class DeviceIdentity:
    """What the env of one CDI device says."""

    device: str
    uuid: str
    claim_namespace: str
    claim_name: str
    claim_uid: str
    admin_access: bool = False
    sharing: str | None = None
    #: A share of a GPU shared by memory: its id and the memory it holds (the allocation's quantity).
    share_id: str | None = None
    memory: str | None = None


def device_env(d: DeviceIdentity) -> list[str]:
    base = env_name(d.device)
    env = [
        f"{base}={d.uuid}",
        f"{base}_CLAIM={d.claim_namespace}/{d.claim_name}",
        f"{base}_CLAIM_UID={d.claim_uid}",
    ]
    if d.admin_access:
        env.append(f"{base}_ADMIN_ACCESS=true")
    if d.sharing:
        env.append(f"{base}_SHARING={d.sharing}")
    if d.share_id:
        env.append(f"{base}_SHARE_ID={d.share_id}")
    if d.memory:
        env.append(f"{base}_MEMORY={d.memory}")
    return env


# -- names (the CDI parser's rules) ------------------------------------------------------------------------

_VENDOR_CLASS_RE = re.compile(r"^[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_DEVICE_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")


def valid_kind(value: str) -> bool:
    vendor_part, sep, class_part = value.partition("/")
    return (
        bool(sep)
        and bool(_VENDOR_CLASS_RE.fullmatch(vendor_part))
        and bool(_VENDOR_CLASS_RE.fullmatch(class_part))
    )


def valid_device_name(value: str) -> bool:
    return bool(_DEVICE_NAME_RE.fullmatch(value))


# -- minimal version --------------------------------------------------------------------------------------


def _all_edits(spec: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    if isinstance(spec.get("containerEdits"), Mapping):
        yield spec["containerEdits"]
    for device in spec.get("devices") or ():
        if isinstance(device.get("containerEdits"), Mapping):
            yield device["containerEdits"]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def minimum_version(spec: Mapping[str, Any]) -> str:
    """The lowest ``cdiVersion`` that can express ``spec`` (as the CDI library's MinimumRequiredVersion).

    0.4.0: ``mounts[].type``; 0.5.0: ``deviceNodes[].hostPath`` or a device name not starting with a letter;
    0.6.0: annotations, or a ``.`` in the class part of the kind; 0.7.0: ``additionalGids`` or ``intelRdt``;
    1.1.0: ``netDevices``, ``intelRdt.schemata`` or ``intelRdt.enableMonitoring``.
    """
    edits = list(_all_edits(spec))
    devices = list(spec.get("devices") or ())
    required = [_BASE_VERSION]
    if any(m.get("type") for e in edits for m in e.get("mounts") or ()):
        required.append("0.4.0")
    if any(n.get("hostPath") for e in edits for n in e.get("deviceNodes") or ()) or any(
        not str(d.get("name", "a"))[:1].isalpha() for d in devices
    ):
        required.append("0.5.0")
    class_part = str(spec.get("kind", "")).partition("/")[2]
    if spec.get("annotations") or any(d.get("annotations") for d in devices) or "." in class_part:
        required.append("0.6.0")
    if any(e.get("additionalGids") or e.get("intelRdt") for e in edits):
        required.append("0.7.0")
    rdt = [e.get("intelRdt") or {} for e in edits]
    if any(e.get("netDevices") for e in edits) or any(
        r.get("schemata") or r.get("enableMonitoring") for r in rdt
    ):
        required.append("1.1.0")
    return max(required, key=_version_key)


@cache
def _spec_validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator  # only checks use it; the plugin never loads it

    text = resources.files("driver.state").joinpath("cdi_spec.schema.json").read_text(encoding="utf-8")
    return Draft202012Validator(json.loads(text))


def spec_problems(spec: Mapping[str, Any]) -> list[str]:
    """Where ``spec`` breaks the CDI rules (``cdi_spec.schema.json``, unique names, minimal version)."""
    problems = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(spec)'}: {e.message}"
        for e in _spec_validator().iter_errors(spec)
    ]
    if problems:
        return problems
    names = [d["name"] for d in spec["devices"]]
    if len(set(names)) != len(names):
        problems.append(f"devices: duplicate names in {names}")
    needed = minimum_version(spec)
    if spec["cdiVersion"] != needed:
        problems.append(f"cdiVersion: {spec['cdiVersion']} is not the minimum the content needs ({needed})")
    return problems


# -- spec content (pure) -----------------------------------------------------------------------------------


def merge_edits(*parts: Mapping[str, Any]) -> JSON:
    """Concatenate the list fields of several containerEdits (empty fields dropped)."""
    out: JSON = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                out.setdefault(key, []).extend(value)
            elif value:
                out[key] = value
    return {k: v for k, v in out.items() if v}


@dataclass(frozen=True)
class CdiDevice:
    name: str
    edits: Mapping[str, Any]


def claim_spec(driver: str, devices: Sequence[CdiDevice], common_edits: Mapping[str, Any]) -> JSON:
    """The spec document for one claim, with its minimal version."""
    spec: JSON = {
        "cdiVersion": _BASE_VERSION,
        "kind": kind(driver),
        "devices": [{"name": d.name, "containerEdits": dict(d.edits)} for d in devices],
    }
    if common_edits:
        spec["containerEdits"] = dict(common_edits)
    spec["cdiVersion"] = minimum_version(spec)
    return spec


def encode_spec(spec: Mapping[str, Any]) -> bytes:
    # Compact: json's C encoder only serves ``indent=None`` (indenting made encoding 10x slower).
    return json.dumps(spec, separators=(",", ":")).encode() + b"\n"


# -- the spec directory ------------------------------------------------------------------------------------


class CdiStore:
    """This driver's per-claim spec files in one CDI directory.

    Only regular files count as specs. Anything else under a spec's name (a directory, FIFO, symbolic link,
    socket) is renamed aside to ``<name>.aside-<time>`` -- which no runtime loads and no listing here
    returns -- when it is found, so it can neither block start-up nor stand in for a spec.
    """

    def __init__(self, directory: str | os.PathLike[str], driver: str, *, sync: bool = False) -> None:
        """``sync``: fsync each write and removal (off by default: a reboot voids prepared claims)."""
        self.directory = Path(directory)
        self.sync = sync
        self.driver = driver
        self._prefix = f"{vendor(driver)}-{CDI_CLASS}_"

    def path(self, claim_uid: str) -> Path:
        return self.directory / spec_file_name(self.driver, claim_uid)

    def exists(self, claim_uid: str) -> bool:
        return self._regular(self.path(claim_uid))

    def write(self, claim_uid: str, spec: Mapping[str, Any]) -> Path:
        path = self.path(claim_uid)
        self._regular(path)
        raw = encode_spec(spec)
        # Specs hold no secrets and the container runtime reads them: world-readable like the CDI library's.
        try:
            atomic_write(path, raw, mode=0o644, what="cdi", sync=self.sync)
        except FileNotFoundError:  # the directory does not exist yet (or was deleted): made, then again
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(path, raw, mode=0o644, what="cdi", sync=self.sync)
        return path

    def remove(self, claim_uid: str) -> bool:
        path = self.path(claim_uid)
        return self._regular(path) and remove_file(path, sync=self.sync)

    def claim_uids(self) -> list[str]:
        """UIDs of the claims that have a spec file here (regular files only)."""
        return sorted(uid for uid, regular in self._named_entries() if regular)

    def set_aside_junk(self) -> list[str]:
        """Move everything named like a spec that is not a regular file aside; return the claim UIDs."""
        junk = [uid for uid, regular in self._named_entries() if not regular]
        for uid in junk:
            self._regular(self.path(uid))
        return junk

    def read(self, claim_uid: str) -> JSON | None:
        path = self.path(claim_uid)
        if not self._regular(path):
            return None
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(read_regular(path)[0])
            if isinstance(data, dict):
                return data
        return None

    def remove_temporaries(self) -> list[str]:
        return remove_stale_temporaries(self.directory, self._prefix)

    def _named_entries(self) -> list[tuple[str, bool]]:
        """(claim UID, is a regular file) for every entry named like one of our specs."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.error("cannot list the CDI directory", directory=str(self.directory), error=str(exc))
            return []
        return [
            (e.name[len(self._prefix) : -len(".json")], e.is_file(follow_symlinks=False))
            for e in entries
            if e.name.startswith(self._prefix) and e.name.endswith(".json")
        ]

    def _regular(self, path: Path) -> bool:
        """Whether a regular file is at ``path``; anything else there is moved aside first."""
        try:
            return check_regular(path) is not None
        except NotRegularFileError as exc:
            aside = set_aside(path)
            log.warning(
                "moved aside what is not a CDI spec file", path=str(path), kind=exc.kind, moved_to=str(aside)
            )
            return False
