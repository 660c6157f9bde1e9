"""Simulated GPU nodes: the ``fake:PROFILE`` and ``file:PATH`` device backends.

A profile is a YAML file (schema: ``profile.schema.json`` beside this module, documented in
docs/fake-devices.md). Named profiles ship in ``profiles/``. Loading validates the schema and the facts the
schema cannot express (duplicates, NVLink peers that do not exist); every error names the file and field.

The backend owns its :class:`FakeProfile`, a plain data object, so that later features (telemetry, XID
and fault injection) can extend it without changing how profiles are loaded.
"""

from __future__ import annotations

import json
import re
import uuid as uuidlib
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from kubernetes.utils import parse_quantity

from driver.devices.backend import BackendError
from driver.devices.model import FabricInfo, Gpu, Inventory, MigDevice, MigPlacement, NvLink

DEFAULT_DRIVER_VERSION = "580.65.06"
DEFAULT_CUDA_DRIVER_VERSION = "12.9"

# Namespace for generated UUIDs; any fixed value works, it only has to never change.
_UUID_NAMESPACE = uuidlib.UUID("5d1f6a3c-8f0b-4e43-9d8e-6a2b4c1e7f90")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ProfileError(BackendError):
    """A fake device profile is missing or invalid; the message names the file and field."""


@dataclass
class FakeProfile:
    """A simulated node: what :class:`FakeBackend` reports. Plain, replaceable data."""

    name: str
    description: str
    source: str
    inventory: Inventory


class FakeBackend:
    """:class:`~driver.devices.backend.DeviceBackend` that reports a :class:`FakeProfile`."""

    def __init__(self, profile: FakeProfile) -> None:
        self.profile = profile
        self.closed = False

    def discover(self) -> Inventory:
        if self.closed:
            raise BackendError(f"fake backend {self.profile.name!r} is closed")
        return self.profile.inventory

    def close(self) -> None:
        self.closed = True


# -- loading ------------------------------------------------------------------------------------------


def _profiles_dir() -> Any:
    return resources.files("driver.devices").joinpath("profiles")


def named_profiles() -> list[str]:
    """Names accepted by ``fake:PROFILE``."""
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in _profiles_dir().iterdir()
        if entry.name.endswith(".yaml")
    )


def load_named_profile(name: str, node_name: str | None = None) -> FakeProfile:
    available = named_profiles()
    if name not in available:
        raise ProfileError(f"unknown fake device profile {name!r}; available: {', '.join(available)}")
    entry = _profiles_dir().joinpath(f"{name}.yaml")
    return parse_profile(entry.read_text(encoding="utf-8"), source=f"fake:{name}", node_name=node_name)


def load_profile_file(path: str | Path, node_name: str | None = None) -> FakeProfile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read device profile: {exc.strerror or exc}") from exc
    return parse_profile(text, source=str(path), node_name=node_name)


@cache
def profile_schema() -> dict[str, Any]:
    """The JSON schema of profile files (for docs and tooling)."""
    schema: dict[str, Any] = json.loads(
        resources.files("driver.devices").joinpath("profile.schema.json").read_text(encoding="utf-8")
    )
    return schema


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(profile_schema())


def parse_profile(text: str, source: str, node_name: str | None = None) -> FakeProfile:
    """Parse and validate one profile document. ``node_name`` seeds generated UUIDs."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{source}: not valid YAML: {exc}") from exc
    errors = sorted(_validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        details = "\n".join(f"  {_field(e)}: {e.message}" for e in errors[:20])
        raise ProfileError(f"{source}: invalid device profile:\n{details}")
    name = data.get("name") or Path(source.removeprefix("fake:")).stem.lower()
    seed = f"{node_name}/{name}" if node_name else name
    _check_references(data, source)
    gpus = tuple(_gpu(raw, index, seed, source) for index, raw in enumerate(data["gpus"]))
    try:
        inventory = Inventory(
            gpus=gpus,
            driver_version=data.get("driverVersion", DEFAULT_DRIVER_VERSION),
            cuda_driver_version=data.get("cudaDriverVersion", DEFAULT_CUDA_DRIVER_VERSION),
        )
    except ValueError as exc:
        raise ProfileError(f"{source}: gpus: {exc}") from exc
    return FakeProfile(
        name=name, description=data.get("description", "").strip(), source=source, inventory=inventory
    )


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(document)"


def _field(error: ValidationError) -> str:
    """The offending field's path, including the name of a missing or unexpected key."""
    parts = list(error.absolute_path)
    schema: Any = error.schema
    expected: Any = error.validator_value
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in expected if k not in error.instance]
        parts += missing[:1]
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(schema.get("properties", {}))
        extra = [k for k in error.instance if k not in known and not str(k).startswith("x-")]
        parts += extra[:1]
    return _path(parts)


def _check_references(data: dict[str, Any], source: str) -> None:
    """Uniqueness and NVLink peers: facts a JSON schema cannot state."""
    first_seen: dict[tuple[str, Any], str] = {}
    gpus: list[dict[str, Any]] = data["gpus"]
    for index, gpu in enumerate(gpus):
        minor = gpu.get("minor", index)
        for key, value in (("pciBusID", gpu["pciBusID"]), ("uuid", gpu.get("uuid")), ("minor", minor)):
            here = f"gpus[{index}].{key}"
            if value is not None and (key, value) in first_seen:
                raise ProfileError(f"{source}: {here}: {value!r} is already used by {first_seen[key, value]}")
            first_seen.setdefault((key, value), here)
        mig = gpu.get("mig") or {}
        if mig.get("devices") and not mig.get("enabled"):
            raise ProfileError(
                f"{source}: gpus[{index}].mig.devices: MIG devices listed but mig.enabled is false"
            )
    buses = {gpu["pciBusID"] for gpu in gpus}
    for index, gpu in enumerate(gpus):
        for link_index, link in enumerate(gpu.get("nvlinks") or []):
            remote = link.get("remotePciBusID")
            if link.get("remoteType") == "gpu" and remote not in buses:
                raise ProfileError(
                    f"{source}: gpus[{index}].nvlinks[{link_index}].remotePciBusID: "
                    f"no GPU in this profile has PCI address {remote}"
                )


def _bytes(value: int | str, source: str, where: str) -> int:
    try:
        quantity = parse_quantity(value)
    except ValueError as exc:
        raise ProfileError(f"{source}: {where}: not a quantity: {value!r}") from exc
    if quantity != quantity.to_integral_value():
        raise ProfileError(f"{source}: {where}: not a whole number of bytes: {value!r}")
    return int(Decimal(quantity))


def _derived_uuid(prefix: str, *parts: str) -> str:
    return f"{prefix}-{uuidlib.uuid5(_UUID_NAMESPACE, '/'.join(parts))}"


def _gpu(raw: dict[str, Any], index: int, seed: str, source: str) -> Gpu:
    where = f"gpus[{index}]"
    gpu_uuid = raw.get("uuid") or _derived_uuid("GPU", seed, raw["pciBusID"])
    mig = raw.get("mig")
    fabric = raw.get("fabric")
    return Gpu(
        uuid=gpu_uuid,
        product_name=raw["productName"],
        brand=raw.get("brand"),
        architecture=raw.get("architecture"),
        compute_capability=raw.get("computeCapability"),
        memory_bytes=_bytes(raw["memory"], source, f"{where}.memory"),
        pci_bus_id=raw["pciBusID"],
        pcie_root=raw.get("pcieRoot"),
        numa_node=raw.get("numaNode"),
        minor=raw.get("minor", index),
        mig_enabled=None if mig is None else bool(mig["enabled"]),
        mig_devices=tuple(
            _mig(m, gpu_uuid, source, f"{where}.mig.devices[{i}]")
            for i, m in enumerate((mig or {}).get("devices", []))
        ),
        nvlinks=None if raw.get("nvlinks", []) is None else _links(raw.get("nvlinks", [])),
        fabric=None
        if fabric is None
        else FabricInfo(cluster_uuid=fabric["clusterUUID"], clique_id=fabric["cliqueID"]),
    )


def _links(groups: list[dict[str, Any]]) -> tuple[NvLink, ...]:
    links: list[NvLink] = []
    for group in groups:
        for _ in range(group.get("count", 1)):
            links.append(
                NvLink(
                    index=len(links),
                    state=group.get("state", "active"),
                    remote_pci_bus_id=group.get("remotePciBusID"),
                    remote_type=group.get("remoteType", "unknown"),
                )
            )
    return tuple(links)


def _mig(raw: dict[str, Any], parent_uuid: str, source: str, where: str) -> MigDevice:
    gi, ci = raw["gpuInstance"], raw["computeInstance"]
    return MigDevice(
        uuid=raw.get("uuid") or _derived_uuid("MIG", parent_uuid, str(gi), str(ci)),
        profile=raw["profile"],
        memory_bytes=_bytes(raw["memory"], source, f"{where}.memory"),
        gpu_instance_id=gi,
        compute_instance_id=ci,
        placement=MigPlacement(start=raw["placement"]["start"], size=raw["placement"]["size"]),
    )
