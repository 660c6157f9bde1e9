"""The CDI side of a container runtime: load spec files, resolve qualified device names, collect edits.

This follows the CDI reference library (``tags.cncf.io/container-device-interface``, ``pkg/cdi``) that
containerd and CRI-O embed, so the sandbox accepts and rejects exactly what a node would:

* spec directories are scanned in order (default ``/etc/cdi`` then ``/var/run/cdi``); a directory's index is
  its priority, so a later directory overrides an earlier one; subdirectories are skipped and only
  ``*.json`` / ``*.yaml`` files are read; a missing directory is not an error;
* a file is decoded strictly (an unknown field anywhere is an error), its ``cdiVersion`` must be a known
  version and at least the minimum version its content needs, its names must be valid;
* a broken file only loses its own devices: the error is recorded against its path, other files still load;
* the same qualified device in two files: the higher-priority directory wins; within one directory both
  copies are dropped and a "conflicting device" error is recorded against both files;
* resolving a list of qualified ids appends, for each id in order, the spec-level edits of its spec (once
  per spec) and then the device's edits; any unknown id fails the whole request with
  ``unresolvable CDI devices <id>, <id>``.

How edits are then applied to a container (env overrides, de-duplication, mount ordering) lives in
:mod:`driver.sim.runtime`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from driver.log import get_logger

log = get_logger(__name__)

DEFAULT_SPEC_DIRS: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")
SPEC_EXTENSIONS = (".json", ".yaml")

#: Released CDI spec versions, oldest first (the library accepts all of them when reading).
KNOWN_VERSIONS: tuple[str, ...] = (
    "0.1.0",
    "0.2.0",
    "0.3.0",
    "0.4.0",
    "0.5.0",
    "0.6.0",
    "0.7.0",
    "0.8.0",
    "1.0.0",
    "1.1.0",
)
EARLIEST_REQUIRED_VERSION = "0.3.0"

HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
DEVICE_TYPES = ("", "b", "c", "u", "p")


class CdiError(Exception):
    """A CDI spec or edit is invalid; the message names the file, device or field."""


class UnresolvableDevicesError(CdiError):
    """Some requested qualified device ids are not known to the registry."""

    def __init__(self, unresolved: Sequence[str], spec_errors: Mapping[str, Sequence[str]]) -> None:
        # The exact wording of the CDI library (and so of containerd/CRI-O event messages).
        super().__init__(f"unresolvable CDI devices {', '.join(unresolved)}")
        self.unresolved = tuple(unresolved)
        #: Errors of spec files at the time of the request: usually why a device is missing.
        self.spec_errors = {path: list(errs) for path, errs in spec_errors.items()}


# --- the data model -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """``containerEdits.deviceNodes[]``. Zero values mean "not set", as in the Go structs."""

    path: str
    host_path: str = ""
    type: str = ""
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    permissions: str = ""
    uid: int | None = None
    gid: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.host_path:
            out["hostPath"] = self.host_path
        if self.type:
            out["type"] = self.type
        if self.type or self.major or self.minor:
            out["major"], out["minor"] = self.major, self.minor
        if self.file_mode is not None:
            out["fileMode"] = self.file_mode
        if self.permissions:
            out["permissions"] = self.permissions
        if self.uid is not None:
            out["uid"] = self.uid
        if self.gid is not None:
            out["gid"] = self.gid
        return out


@dataclass(frozen=True, slots=True)
class Mount:
    """``containerEdits.mounts[]``."""

    host_path: str
    container_path: str
    options: tuple[str, ...] = ()
    type: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hostPath": self.host_path, "containerPath": self.container_path}
        if self.options:
            out["options"] = list(self.options)
        if self.type:
            out["type"] = self.type
        return out


@dataclass(frozen=True, slots=True)
class Hook:
    """``containerEdits.hooks[]``. ``args`` is a full argv: ``args[0]`` is the program name, as in OCI."""

    hook_name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hookName": self.hook_name, "path": self.path}
        if self.args:
            out["args"] = list(self.args)
        if self.env:
            out["env"] = list(self.env)
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


@dataclass(frozen=True, slots=True)
class NetDevice:
    host_interface_name: str
    name: str


@dataclass(frozen=True, slots=True)
class ContainerEdits:
    """A set of CDI container edits; :meth:`append` concatenates like the library's ``Append``."""

    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    hooks: tuple[Hook, ...] = ()
    additional_gids: tuple[int, ...] = ()
    net_devices: tuple[NetDevice, ...] = ()
    intel_rdt: Mapping[str, Any] | None = None

    def append(self, other: ContainerEdits) -> ContainerEdits:
        return ContainerEdits(
            env=self.env + other.env,
            device_nodes=self.device_nodes + other.device_nodes,
            mounts=self.mounts + other.mounts,
            hooks=self.hooks + other.hooks,
            additional_gids=self.additional_gids + other.additional_gids,
            net_devices=self.net_devices + other.net_devices,
            # A later intelRdt replaces an earlier one.
            intel_rdt=other.intel_rdt if other.intel_rdt is not None else self.intel_rdt,
        )

    def is_empty(self) -> bool:
        return not (
            self.env
            or self.device_nodes
            or self.mounts
            or self.hooks
            or self.additional_gids
            or self.net_devices
            or self.intel_rdt is not None
        )


@dataclass(frozen=True, slots=True)
class CdiSpec:
    """One loaded spec file."""

    path: str
    priority: int
    version: str
    kind: str
    vendor: str
    cls: str
    edits: ContainerEdits
    devices: Mapping[str, ContainerEdits] = field(default_factory=lambda: MappingProxyType({}))

    def qualified_name(self, device: str) -> str:
        return f"{self.kind}={device}"


@dataclass(frozen=True, slots=True)
class CdiDevice:
    name: str
    spec: CdiSpec
    edits: ContainerEdits

    @property
    def qualified_name(self) -> str:
        return self.spec.qualified_name(self.name)


# --- names (pkg/parser) ---------------------------------------------------------------------------------

_VENDOR_CLASS_MIDDLE = re.compile(r"^[A-Za-z0-9_.-]*$")
_DEVICE_MIDDLE = re.compile(r"^[A-Za-z0-9_.:-]*$")


def _is_letter(c: str) -> bool:
    return ("A" <= c <= "Z") or ("a" <= c <= "z")


def _is_alnum(c: str) -> bool:
    return _is_letter(c) or ("0" <= c <= "9")


def validate_vendor_or_class(name: str, what: str) -> None:
    """Vendor and class: start with a letter, end with a letter or digit, ``[A-Za-z0-9_.-]`` between."""
    if not name:
        raise CdiError(f"invalid {what}: empty name")
    if not _is_letter(name[0]):
        raise CdiError(f"invalid {what} {name!r}: should start with a letter")
    if not _VENDOR_CLASS_MIDDLE.match(name[1:-1]):
        raise CdiError(f"invalid {what} {name!r}: only letters, digits, '_', '-' and '.' are allowed")
    if not _is_alnum(name[-1]):
        raise CdiError(f"invalid {what} {name!r}: should end with a letter or digit")


def validate_device_name(name: str) -> None:
    """Device name: starts and ends with a letter or digit, ``[A-Za-z0-9_.:-]`` between."""
    if not name:
        raise CdiError("invalid (empty) device name")
    if not _is_alnum(name[0]):
        raise CdiError(f"invalid device name {name!r}: should start with a letter or digit")
    if len(name) > 1 and (not _DEVICE_MIDDLE.match(name[1:-1]) or not _is_alnum(name[-1])):
        raise CdiError(
            f"invalid device name {name!r}: only letters, digits, '_', '-', '.' and ':' are allowed, "
            "ending with a letter or digit"
        )


def parse_qualifier(kind: str) -> tuple[str, str]:
    """``vendor/class`` -> (vendor, class); ``("", kind)`` when it is not of that form."""
    vendor, sep, cls = kind.partition("/")
    if not sep or not vendor or not cls:
        return "", kind
    return vendor, cls


def parse_qualified_name(device: str) -> tuple[str, str, str]:
    """``vendor/class=name`` -> (vendor, class, name); raises :class:`CdiError` naming what is wrong."""
    qualifier, sep, name = device.partition("=")
    vendor, cls = parse_qualifier(qualifier) if sep and qualifier and name else ("", "")
    if device.startswith("/") or not vendor:
        raise CdiError(f"unqualified device {device!r}: expected vendor/class=name")
    validate_vendor_or_class(vendor, "vendor")
    validate_vendor_or_class(cls, "class")
    validate_device_name(name)
    return vendor, cls, name


# --- strict decoding (the library uses a strict YAML/JSON unmarshal) -----------------------------------

_Decoder = Callable[[Any, str], Any]


def _want_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise CdiError(f"{where}: expected a string, got {_type_name(value)}")
    return value


def _want_int(lo: int, hi: int) -> _Decoder:
    def decode(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CdiError(f"{where}: expected an integer, got {_type_name(value)}")
        if not lo <= value <= hi:
            raise CdiError(f"{where}: {value} is out of range [{lo}, {hi}]")
        return value

    return decode


def _want_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise CdiError(f"{where}: expected a boolean, got {_type_name(value)}")
    return value


def _list_of(item: _Decoder) -> _Decoder:
    def decode(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise CdiError(f"{where}: expected a list, got {_type_name(value)}")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]

    return decode


def _map_of_str(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise CdiError(f"{where}: expected a mapping, got {_type_name(value)}")
    return {_want_str(k, f"{where} key"): _want_str(v, f"{where}.{k}") for k, v in value.items()}


def _object(fields: Mapping[str, _Decoder]) -> _Decoder:
    by_fold = {name.lower(): name for name in fields}

    def decode(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise CdiError(f"{where or 'spec'}: expected a mapping, got {_type_name(value)}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            # Go's encoding/json matches field names case-insensitively; the library inherits that.
            name = key if key in fields else by_fold.get(str(key).lower())
            path = f"{where}.{key}" if where else str(key)
            if name is None:
                raise CdiError(f"unknown field {path!r}")
            if item is not None:  # JSON null leaves a Go field at its zero value
                out[name] = fields[name](item, path)
        return out

    return decode


_INT64 = _want_int(-(2**63), 2**63 - 1)
_UINT32 = _want_int(0, 2**32 - 1)
_STRINGS = _list_of(_want_str)

_DEVICE_NODE = _object(
    {
        "path": _want_str,
        "hostPath": _want_str,
        "type": _want_str,
        "major": _INT64,
        "minor": _INT64,
        "fileMode": _UINT32,
        "permissions": _want_str,
        "uid": _UINT32,
        "gid": _UINT32,
    }
)
_MOUNT = _object({"hostPath": _want_str, "containerPath": _want_str, "options": _STRINGS, "type": _want_str})
_HOOK = _object(
    {"hookName": _want_str, "path": _want_str, "args": _STRINGS, "env": _STRINGS, "timeout": _INT64}
)
_NET_DEVICE = _object({"hostInterfaceName": _want_str, "name": _want_str})
_INTEL_RDT = _object(
    {
        "closID": _want_str,
        "l3CacheSchema": _want_str,
        "memBwSchema": _want_str,
        "schemata": _STRINGS,
        "enableMonitoring": _want_bool,
    }
)
_EDITS = _object(
    {
        "env": _STRINGS,
        "deviceNodes": _list_of(_DEVICE_NODE),
        "netDevices": _list_of(_NET_DEVICE),
        "hooks": _list_of(_HOOK),
        "mounts": _list_of(_MOUNT),
        "intelRdt": _INTEL_RDT,
        "additionalGids": _list_of(_UINT32),
    }
)
_DEVICE = _object({"name": _want_str, "annotations": _map_of_str, "containerEdits": _EDITS})
_SPEC = _object(
    {
        "cdiVersion": _want_str,
        "kind": _want_str,
        "annotations": _map_of_str,
        "devices": _list_of(_DEVICE),
        "containerEdits": _EDITS,
    }
)


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _edits_from(raw: Mapping[str, Any]) -> ContainerEdits:
    return ContainerEdits(
        env=tuple(raw.get("env", ())),
        device_nodes=tuple(
            DeviceNode(
                path=d.get("path", ""),
                host_path=d.get("hostPath", ""),
                type=d.get("type", ""),
                major=d.get("major", 0),
                minor=d.get("minor", 0),
                file_mode=d.get("fileMode"),
                permissions=d.get("permissions", ""),
                uid=d.get("uid"),
                gid=d.get("gid"),
            )
            for d in raw.get("deviceNodes", ())
        ),
        mounts=tuple(
            Mount(
                host_path=m.get("hostPath", ""),
                container_path=m.get("containerPath", ""),
                options=tuple(m.get("options", ())),
                type=m.get("type", ""),
            )
            for m in raw.get("mounts", ())
        ),
        hooks=tuple(
            Hook(
                hook_name=h.get("hookName", ""),
                path=h.get("path", ""),
                args=tuple(h.get("args", ())),
                env=tuple(h.get("env", ())),
                timeout=h.get("timeout"),
            )
            for h in raw.get("hooks", ())
        ),
        additional_gids=tuple(raw.get("additionalGids", ())),
        net_devices=tuple(
            NetDevice(n.get("hostInterfaceName", ""), n.get("name", "")) for n in raw.get("netDevices", ())
        ),
        intel_rdt=MappingProxyType(dict(raw["intelRdt"])) if "intelRdt" in raw else None,
    )


# --- validation ---------------------------------------------------------------------------------------


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def minimum_required_version(raw: Mapping[str, Any]) -> str:
    """The oldest spec version that can express ``raw`` (a decoded spec), as the library computes it."""
    devices = raw.get("devices", [])
    all_edits = [d.get("containerEdits", {}) for d in devices] + [raw.get("containerEdits", {})]
    vendor, cls = parse_qualifier(raw.get("kind", ""))

    def rdt_v110(edits: Mapping[str, Any]) -> bool:
        rdt = edits.get("intelRdt")
        return rdt is not None and ("schemata" in rdt or bool(rdt.get("enableMonitoring")))

    if any(rdt_v110(e) or e.get("netDevices") for e in all_edits):
        return "1.1.0"
    if any(e.get("intelRdt") is not None or e.get("additionalGids") for e in all_edits):
        return "0.7.0"
    if raw.get("annotations") or any(d.get("annotations") for d in devices) or (vendor and "." in cls):
        return "0.6.0"
    if any(d.get("name", "")[:1] and not _is_letter(d["name"][0]) for d in devices) or any(
        n.get("hostPath") for e in all_edits for n in e.get("deviceNodes", ())
    ):
        return "0.5.0"
    if any(m.get("type") for e in all_edits for m in e.get("mounts", ())):
        return "0.4.0"
    return EARLIEST_REQUIRED_VERSION


def _validate_version(raw: Mapping[str, Any]) -> str:
    version = str(raw.get("cdiVersion", "")).removeprefix("v")
    if version not in KNOWN_VERSIONS:
        raise CdiError(
            f"invalid version {raw.get('cdiVersion', '')!r}: known versions are {', '.join(KNOWN_VERSIONS)}"
        )
    required = minimum_required_version(raw)
    if _version_key(required) > _version_key(version):
        raise CdiError(
            f"the spec version must be at least v{required} for the fields it uses (it says {version})"
        )
    return version


def _validate_env(env: Iterable[str], where: str) -> None:
    for item in env:
        if item.find("=") <= 0:
            raise CdiError(f"{where}: invalid environment variable {item!r} (want NAME=value)")


def validate_edits(edits: ContainerEdits, where: str) -> None:
    """The library's per-edit checks; ``where`` names the spec-level or device edits in the message."""
    _validate_env(edits.env, where)
    for node in edits.device_nodes:
        if not node.path:
            raise CdiError(f"{where}: device node with an empty path")
        if node.type not in DEVICE_TYPES:
            raise CdiError(f"{where}: device {node.path!r}: invalid type {node.type!r}")
        if node.major < 0 or node.minor < 0:
            raise CdiError(
                f"{where}: device {node.path!r}: invalid (negative) device number {node.major}:{node.minor}"
            )
        if node.permissions not in ("", "none") and node.permissions.strip("rwm"):
            raise CdiError(f"{where}: device {node.path!r}: invalid permissions {node.permissions!r}")
    for hook in edits.hooks:
        if hook.hook_name not in HOOK_NAMES:
            raise CdiError(f"{where}: invalid hook name {hook.hook_name!r}")
        if not hook.path:
            raise CdiError(f"{where}: invalid hook {hook.hook_name!r} with empty path")
        _validate_env(hook.env, f"{where}: hook {hook.hook_name!r}")
    for mount in edits.mounts:
        if not mount.host_path:
            raise CdiError(f"{where}: invalid mount, empty host path")
        if not mount.container_path:
            raise CdiError(f"{where}: invalid mount, empty container path")
    if edits.intel_rdt is not None:
        clos = str(edits.intel_rdt.get("closID", ""))
        if clos != "/" and (len(clos) >= 4096 or clos in (".", "..") or "/" in clos or "\n" in clos):
            raise CdiError(f"{where}: invalid intelRdt closID {clos!r}")
    hosts: set[str] = set()
    names: set[str] = set()
    for net in edits.net_devices:
        if not net.host_interface_name or not net.name:
            raise CdiError(f"{where}: invalid net device, empty hostInterfaceName or name")
        if net.host_interface_name in hosts or net.name in names:
            raise CdiError(f"{where}: duplicate net device {net.host_interface_name!r} -> {net.name!r}")
        hosts.add(net.host_interface_name)
        names.add(net.name)


def parse_spec(data: str, path: str, priority: int = 0) -> CdiSpec:
    """Decode and validate one spec file's content. Raises :class:`CdiError` naming the file."""
    try:
        loaded = _load_document(data, path)
        raw = _SPEC(loaded, "")
        version = _validate_version(raw)
        kind = raw.get("kind", "")
        vendor, cls = parse_qualifier(kind)
        validate_vendor_or_class(vendor, "vendor")
        validate_vendor_or_class(cls, "class")
        edits = _edits_from(raw.get("containerEdits", {}))
        validate_edits(edits, "spec containerEdits")
        devices: dict[str, ContainerEdits] = {}
        for index, dev in enumerate(raw.get("devices", [])):
            name = dev.get("name", "")
            where = f"device {name!r}" if name else f"devices[{index}]"
            validate_device_name(name)
            if "containerEdits" not in dev:
                raise CdiError(f"{where}: containerEdits is required")
            dev_edits = _edits_from(dev["containerEdits"])
            if dev_edits.is_empty():
                raise CdiError(f"{where}: empty container edits")
            validate_edits(dev_edits, where)
            if name in devices:
                raise CdiError(f"invalid spec, multiple device {name!r}")
            devices[name] = dev_edits
        if not devices:
            raise CdiError("invalid spec, no devices")
    except CdiError as err:
        raise CdiError(f"CDI spec {path}: {err}") from None
    return CdiSpec(
        path=path,
        priority=priority,
        version=version,
        kind=kind,
        vendor=vendor,
        cls=cls,
        edits=edits,
        devices=MappingProxyType(devices),
    )


def _load_document(data: str, path: str) -> Any:
    # The library parses every spec as YAML (JSON being a subset); JSON first is just faster.
    if path.endswith(".json"):
        try:
            return json.loads(data)
        except ValueError:
            pass
    try:
        loaded = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        raise CdiError(f"failed to parse: {err}") from None
    if loaded is None:
        raise CdiError("no spec data")
    return loaded


# --- the registry (pkg/cdi cache) -------------------------------------------------------------------------


class CdiRegistry:
    """Specs loaded from the spec directories, refreshed on demand (a runtime re-reads before each start)."""

    def __init__(self, spec_dirs: Sequence[str | os.PathLike[str]] = DEFAULT_SPEC_DIRS) -> None:
        self.spec_dirs: tuple[str, ...] = (
            tuple(os.path.normpath(os.fspath(d)) for d in spec_dirs) or DEFAULT_SPEC_DIRS
        )
        self._devices: dict[str, CdiDevice] = {}
        self._specs: list[CdiSpec] = []
        self._errors: dict[str, list[str]] = {}
        # path -> (stat signature, spec or error): unchanged files are not parsed again.
        self._parsed: dict[str, tuple[tuple[int, int, int, int], CdiSpec | CdiError]] = {}

    def refresh(self) -> None:
        """Rescan every spec directory."""
        devices: dict[str, CdiDevice] = {}
        conflicts: set[str] = set()
        errors: dict[str, list[str]] = {}
        specs: list[CdiSpec] = []
        seen: set[str] = set()
        for priority, directory in enumerate(self.spec_dirs):
            for path in _spec_files(directory):
                seen.add(path)
                loaded = self._load(path, priority)
                if isinstance(loaded, CdiError):
                    errors.setdefault(path, []).append(str(loaded))
                    continue
                specs.append(loaded)
                for name, edits in loaded.devices.items():
                    device = CdiDevice(name=name, spec=loaded, edits=edits)
                    qualified = device.qualified_name
                    other = devices.get(qualified)
                    if other is not None and other.spec.priority >= loaded.priority:
                        if other.spec.priority == loaded.priority:
                            # Same directory: neither copy can be trusted.
                            message = (
                                f"conflicting device {qualified!r} (specs {path!r}, {other.spec.path!r})"
                            )
                            for p in (path, other.spec.path):
                                errors.setdefault(p, []).append(message)
                            conflicts.add(qualified)
                        continue
                    devices[qualified] = device
        # As in the library, a name that conflicted anywhere is dropped, even if a later directory set it.
        for qualified in conflicts:
            devices.pop(qualified, None)
        self._parsed = {p: v for p, v in self._parsed.items() if p in seen}
        self._devices, self._specs, self._errors = devices, specs, errors
        for path, errs in errors.items():
            log.debug("cdi spec error", path=path, error="; ".join(errs))

    def _load(self, path: str, priority: int) -> CdiSpec | CdiError:
        try:
            st = os.stat(path)
            signature = (st.st_ino, st.st_size, st.st_mtime_ns, priority)
            cached = self._parsed.get(path)
            if cached is not None and cached[0] == signature:
                return cached[1]
            with open(path, encoding="utf-8") as handle:
                data = handle.read()
        except (OSError, UnicodeDecodeError) as err:
            return CdiError(f"CDI spec {path}: failed to read: {err}")
        try:
            result: CdiSpec | CdiError = parse_spec(data, path, priority)
        except CdiError as err:
            result = err
        self._parsed[path] = (signature, result)
        return result

    def device_names(self) -> list[str]:
        return sorted(self._devices)

    def device(self, qualified: str) -> CdiDevice | None:
        return self._devices.get(qualified)

    def specs(self) -> list[CdiSpec]:
        return list(self._specs)

    def errors(self) -> dict[str, list[str]]:
        """Per spec file: why it (or some of its devices) could not be used at the last refresh."""
        return {path: list(errs) for path, errs in self._errors.items()}

    def resolve(self, qualified_ids: Sequence[str]) -> ContainerEdits:
        """The edits for ``qualified_ids``, in injection order. Raises :class:`UnresolvableDevicesError`."""
        edits = ContainerEdits()
        applied_specs: set[str] = set()
        unresolved: list[str] = []
        for qualified in qualified_ids:
            device = self._devices.get(qualified)
            if device is None:
                unresolved.append(qualified)
                continue
            if device.spec.path not in applied_specs:
                applied_specs.add(device.spec.path)
                edits = edits.append(device.spec.edits)
            edits = edits.append(device.edits)
        if unresolved:
            raise UnresolvableDevicesError(unresolved, self._errors)
        return edits


def _spec_files(directory: str) -> list[str]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as err:
        log.warning("cdi spec dir unreadable", dir=directory, error=str(err))
        return []
    files = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) or not entry.name.endswith(SPEC_EXTENSIONS):
            continue
        files.append(os.path.join(directory, entry.name))
    return files


__all__ = [
    "DEFAULT_SPEC_DIRS",
    "CdiDevice",
    "CdiError",
    "CdiRegistry",
    "CdiSpec",
    "ContainerEdits",
    "DeviceNode",
    "Hook",
    "Mount",
    "NetDevice",
    "UnresolvableDevicesError",
    "parse_qualified_name",
    "parse_spec",
]
