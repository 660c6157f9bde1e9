"""The standard attribute profile: which attributes and capacities an accelerator device publishes.

The profile is data (:data:`PROFILE`). It drives both directions:

- :func:`device_entry` / :func:`device_attributes` / :func:`device_capacity` turn one device of an
  :class:`~driver.devices.model.Inventory` into the ``resource.k8s.io/v1`` ResourceSlice JSON;
- :func:`check_device_profile` / :func:`check_slice` check any vendor's published devices against it.

Attributes in the driver's own domain are published unqualified (``uuid``); Kubernetes standard attributes
are qualified (``resource.kubernetes.io/pciBusID``). Unknown values are omitted, never published empty.
Unstable ids (``index``, ``minor``) are never attributes: they change with enumeration order and reboots.
docs/attributes.md carries the table :func:`profile_markdown_table` renders (a test keeps them equal).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from driver.devices.model import PCI_BUS_ID_RE, PCIE_ROOT_RE, Device, Gpu, Inventory
from driver.kube.api.names import is_driver_name, is_identifier
from driver.log import get_logger
from driver.quantity import canonical, parse_quantity
from driver.resources.counters import consumes_counters
from driver.semver import is_semver

log = get_logger(__name__)

AttrType = Literal["string", "int", "bool", "version", "capacity"]
AppliesTo = Literal["gpu", "mig", "both"]

STANDARD_DOMAIN = "resource.kubernetes.io"
MAX_STRING = 64  # Kubernetes limit for string and version attribute values
MAX_ATTRIBUTES = 32  # attributes + capacities per device
UNSTABLE_IDS = ("index", "minor")

_NUMERIC_VERSION_RE = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?$")
_VALUE_KEYS = ("string", "int", "bool", "version")
_LIST_KEYS = ("strings", "ints", "bools", "versions")


@dataclass(frozen=True, slots=True)
class AttributeSpec:
    """One attribute (or capacity) of the profile."""

    #: The C identifier, at most 32 characters.
    name: str
    #: The key as published: ``name`` for the driver's domain, ``<domain>/<name>`` otherwise.
    key: str
    type: AttrType
    required: bool
    applies_to: AppliesTo
    description: str
    example: str
    #: May also be published as a list of its type (list-type attributes, alpha).
    list_allowed: bool = False

    def __post_init__(self) -> None:
        if not is_identifier(self.name) or self.key.rpartition("/")[2] != self.name:
            raise ValueError(
                f"attribute spec {self.key!r}: ID must be a C identifier of at most 32 characters"
            )

    @property
    def domain(self) -> str | None:
        """The qualifying domain, ``None`` for the driver's own domain."""
        return self.key.rpartition("/")[0] or None

    def applies(self, kind: str) -> bool:
        return self.applies_to in ("both", kind)

    def qualified(self, driver_name: str) -> str:
        """The fully qualified name, as CEL and ``matchAttribute`` spell it."""
        return self.key if self.domain else f"{driver_name}/{self.name}"


_Row = tuple[str, AttrType, bool, AppliesTo, str, str]

# fmt: off
_ROWS: tuple[_Row, ...] = (
    # key, type, required, devices, description, example
    ("type", "string", True, "both", "`gpu` for a whole GPU, `mig` for a MIG device.", "gpu"),
    ("uuid", "string", True, "both",
     "NVML UUID of the GPU or MIG device. Absent on a dynamic MIG device: its instance, and so its UUID, "
     "only exists once a claim is prepared (the claim's `status.devices` then has it).",
     "GPU-4b5e3e2a-8d0e-4c6f-9a51-2f7c0d9e1b34"),
    ("productName", "string", True, "both", "Product name as NVML reports it.", "NVIDIA H100 80GB HBM3"),
    ("brand", "string", False, "both", "NVML brand.", "Nvidia"),
    ("architecture", "string", False, "both", "GPU architecture.", "Hopper"),
    ("driverVersion", "version", True, "both", "Kernel driver version, semver-normalised.", "580.65.6"),
    ("cudaDriverVersion", "version", False, "both", "Highest CUDA version the driver supports.", "12.9.0"),
    ("cudaComputeCapability", "version", False, "both", "CUDA compute capability.", "9.0.0"),
    (f"{STANDARD_DOMAIN}/pciBusID", "string", True, "both",
     "PCI address `dddd:bb:dd.f` (the parent GPU's for MIG).", "0000:18:00.0"),
    (f"{STANDARD_DOMAIN}/pcieRoot", "string", False, "both",
     "PCIe root complex `pci<domain>:<bus>`; match it with a NIC's.", "pci0000:15"),
    (f"{STANDARD_DOMAIN}/numaNode", "int", False, "both",
     "NUMA node of the PCI device; with `--list-attributes`, the list of nodes it is equally close to.", "0"),
    ("nvlinkDomain", "string", False, "gpu",
     "Interconnect domain: GPUs that reach each other over NVLink/NVSwitch share it. Absent without "
     "active NVLink.", "nvlink-46bdb603b8276ba1"),
    ("nvlinkActiveLinks", "int", False, "gpu", "Number of active NVLink links (0 without NVLink).", "18"),
    ("fabricCliqueID", "string", False, "gpu",
     "Multi-node NVLink fabric clique `<clusterUUID>.<cliqueID>`, when the GPU is registered.",
     "3f2a9c1e-6b7d-4e58-9a0c-d41b8e27f5a6.32766"),
    ("parentUUID", "string", True, "mig", "UUID of the GPU a MIG device belongs to.",
     "GPU-4b5e3e2a-8d0e-4c6f-9a51-2f7c0d9e1b34"),
    ("profile", "string", True, "mig", "MIG profile.", "1g.5gb"),
    ("memory", "capacity", True, "both", "Device memory in bytes (the MIG device's own for MIG).", "80Gi"),
)
# fmt: on

#: The profile, in publishing order.
#: Attributes the profile allows as lists too: the NUMA nodes a device is equally close to.
LIST_ATTRIBUTES = frozenset({f"{STANDARD_DOMAIN}/numaNode"})

PROFILE: tuple[AttributeSpec, ...] = tuple(
    AttributeSpec(
        key.rpartition("/")[2], key, type_, required, applies, description, example, key in LIST_ATTRIBUTES
    )
    for key, type_, required, applies, description, example in _ROWS
)

_Value = str | int | bool | None


def _nvlink_domain(device: Device, inventory: Inventory) -> _Value:
    domain = inventory.topology.domain_of(device.gpu.uuid)
    return domain.id if domain else None


def _fabric_clique(device: Device, inventory: Inventory) -> _Value:
    return device.gpu.fabric.clique if device.gpu.fabric else None


# How each profile entry is read from the model. Kept beside PROFILE; a test checks they cover each other.
_VALUES: Mapping[str, Callable[[Device, Inventory], _Value]] = {
    "type": lambda d, inv: d.kind,
    # A dynamic MIG slot has no instance yet, so no UUID of its own.
    "uuid": lambda d, inv: None if d.kind == "mig" and d.mig is None else d.uuid,
    "productName": lambda d, inv: d.gpu.product_name,
    "brand": lambda d, inv: d.gpu.brand,
    "architecture": lambda d, inv: d.gpu.architecture,
    "driverVersion": lambda d, inv: inv.driver_version,
    "cudaDriverVersion": lambda d, inv: inv.cuda_driver_version,
    "cudaComputeCapability": lambda d, inv: d.gpu.compute_capability,
    "pciBusID": lambda d, inv: d.gpu.pci_bus_id,
    "pcieRoot": lambda d, inv: d.gpu.pcie_root,
    "numaNode": lambda d, inv: d.gpu.numa_node,
    "nvlinkDomain": _nvlink_domain,
    "nvlinkActiveLinks": lambda d, inv: d.gpu.active_links,
    "fabricCliqueID": _fabric_clique,
    "parentUUID": lambda d, inv: d.gpu.uuid if d.kind == "mig" else None,
    "profile": lambda d, inv: d.mig.profile if d.mig else d.slot.profile.name if d.slot else None,
    "memory": lambda d, inv: d.memory_bytes,
}


# -- value formatting ---------------------------------------------------------------------------------


def to_semver(raw: str | None) -> str | None:
    """Normalise a version to strict semver: ``580.65.06`` -> ``580.65.6``, ``12.9`` -> ``12.9.0``.

    ``None`` when the text is not a version.
    """
    if raw is None:
        return None
    text = raw.strip()
    match = _NUMERIC_VERSION_RE.fullmatch(text)
    if match:
        return ".".join(str(int(part)) if part else "0" for part in match.groups())
    return text if is_semver(text) and len(text) <= MAX_STRING else None


def format_quantity(value: int) -> str:
    """Exact bytes as the API server stores them: the largest binary suffix that divides, else the
    server's canonical decimal form (``1000000`` -> ``1M``), so what we publish reads back unchanged."""
    for suffix, shift in (("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)):
        if value and value % (1 << shift) == 0:
            return f"{value >> shift}{suffix}"
    return canonical(value)


def _encode(spec: AttributeSpec, value: _Value, device: str) -> dict[str, Any] | None:
    """The DRA ``DeviceAttribute`` for a value, ``None`` when unknown or not publishable."""
    if value is None:
        return None
    if spec.type == "int" and isinstance(value, int) and not isinstance(value, bool):
        return {"int": value}
    if spec.type == "bool" and isinstance(value, bool):
        return {"bool": value}
    if spec.type == "version" and isinstance(value, str):
        version = to_semver(value)
        if version is None:
            log.warning("attribute omitted: not a version", device=device, attribute=spec.key, value=value)
            return None
        return {"version": version}
    if spec.type == "string" and isinstance(value, str) and value:
        if len(value.encode()) > MAX_STRING:  # the API server counts UTF-8 bytes
            log.warning("attribute omitted: value too long", device=device, attribute=spec.key, value=value)
            return None
        return {"string": value}
    return None


def _as_device(device: Device | Gpu) -> Device:
    return device if isinstance(device, Device) else Device(name=device.name, gpu=device)


def _check_driver_name(driver_name: str) -> None:
    if not is_driver_name(driver_name):
        raise ValueError(f"driver name {driver_name!r} is not a DNS subdomain of at most 63 characters")


def device_attributes(
    device: Device | Gpu, inventory: Inventory, driver_name: str
) -> dict[str, dict[str, Any]]:
    """The ``attributes`` map of one device. Driver-domain keys (``driver_name``) are written unqualified."""
    _check_driver_name(driver_name)
    dev = _as_device(device)
    attributes: dict[str, dict[str, Any]] = {}
    for spec in PROFILE:
        if spec.type == "capacity" or not spec.applies(dev.kind):
            continue
        encoded = _encode(spec, _VALUES[spec.name](dev, inventory), dev.name)
        if encoded is not None:
            attributes[spec.key] = encoded
    return attributes


def device_capacity(
    device: Device | Gpu, inventory: Inventory, driver_name: str
) -> dict[str, dict[str, str]]:
    """The ``capacity`` map of one device (``memory`` in bytes, when known)."""
    _check_driver_name(driver_name)
    dev = _as_device(device)
    capacity: dict[str, dict[str, str]] = {}
    for spec in PROFILE:
        if spec.type != "capacity" or not spec.applies(dev.kind):
            continue
        value = _VALUES[spec.name](dev, inventory)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            capacity[spec.key] = {"value": format_quantity(value)}
    return capacity


def device_entry(device: Device | Gpu, inventory: Inventory, driver_name: str) -> dict[str, Any]:
    """One ``spec.devices[]`` entry of a ResourceSlice: name, attributes, capacity, and for the devices of a
    GPU in dynamic MIG mode the counters they consume (``driver.resources.counters``).

    Empty maps are left out, as the API server drops them (``omitempty``): sending ``attributes: {}`` would
    make every comparison with the stored slice a difference.
    """
    dev = _as_device(device)
    entry: dict[str, Any] = {"name": dev.name}
    attributes = device_attributes(dev, inventory, driver_name)
    if attributes:
        entry["attributes"] = attributes
    capacity = device_capacity(dev, inventory, driver_name)
    if capacity:
        entry["capacity"] = capacity
    consumption = consumes_counters(dev)
    if consumption:
        entry["consumesCounters"] = consumption
    return entry


# -- checking any driver's devices --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """One way a published device departs from the profile."""

    device: str
    attribute: str
    problem: str

    def __str__(self) -> str:
        return f"{self.device}: {self.attribute}: {self.problem}"


def _lookup(values: Mapping[str, Any], name: str, domain: str | None, driver_name: str) -> tuple[str, Any]:
    """Find an attribute by its standard key, or unqualified / qualified with the driver's name."""
    candidates = [f"{domain}/{name}"] if domain else [name, f"{driver_name}/{name}"]
    for key in candidates:
        if key in values:
            return key, values[key]
    return candidates[0], None


def _is_qualified_name(key: str) -> bool:
    domain, slash, ident = key.rpartition("/")
    return is_identifier(ident) and (not slash or is_driver_name(domain))


def _check_attribute(spec: AttributeSpec, key: str, value: Any) -> str | None:
    """The problem with one published attribute value, or ``None``."""
    if not isinstance(value, Mapping):
        return f"not a DeviceAttribute object: {value!r}"
    present = [k for k in (*_VALUE_KEYS, *_LIST_KEYS) if k in value]
    if len(present) != 1:
        return f"must set exactly one of {', '.join(_VALUE_KEYS)}; has {present or 'none'}"
    if present[0] in _LIST_KEYS:
        return _check_list_attribute(spec, present[0], value[present[0]])
    kind, inner = present[0], value[present[0]]
    if kind != spec.type:
        return f"must be a {spec.type} attribute, is {kind}"
    if kind == "int" and (not isinstance(inner, int) or isinstance(inner, bool)):
        return f"int value is not an integer: {inner!r}"
    if kind in ("string", "version") and (not isinstance(inner, str) or not inner):
        return f"{kind} value must be a non-empty string: {inner!r}"
    if kind in ("string", "version") and len(inner.encode()) > MAX_STRING:
        return f"value longer than {MAX_STRING} bytes"
    if kind == "version" and not is_semver(inner):
        return f"not a strict semantic version (MAJOR.MINOR.PATCH, no leading zeros): {inner!r}"
    if spec.name == "pciBusID" and not PCI_BUS_ID_RE.fullmatch(inner):
        return f"malformed PCI address {inner!r}: expected lowercase dddd:bb:dd.f"
    if spec.name == "pcieRoot" and not PCIE_ROOT_RE.fullmatch(inner):
        return f"malformed PCIe root {inner!r}: expected pci<domain>:<bus> (pci0000:00)"
    if spec.name == "numaNode" and inner < 0:
        return f"negative NUMA node {inner}: omit the attribute when there is no affinity"
    return None


def _check_list_attribute(spec: AttributeSpec, kind: str, values: Any) -> str | None:
    """A list-type value (``DRAListTypeAttributes``): allowed where the profile says the attribute may be a
    list, each item checked as the scalar would be."""
    if not spec.list_allowed:
        return f"must be a single {spec.type}, is a list ({kind})"
    if kind != f"{spec.type}s":
        return f"must be a list of {spec.type} ({spec.type}s), is {kind}"
    if not isinstance(values, list) or not values:
        return f"{kind} must be a non-empty list: {values!r}"
    for item in values:
        problem = _check_attribute(spec, spec.key, {spec.type: item})
        if problem:
            return f"{kind} item {item!r}: {problem}"
    return None


def _check_capacity(value: Any) -> str | None:
    if not isinstance(value, Mapping) or "value" not in value:
        return f"not a DeviceCapacity object: {value!r}"
    try:
        quantity = parse_quantity(value["value"])
    except (ValueError, TypeError):
        return f"not a quantity: {value['value']!r}"
    return "negative quantity" if quantity < 0 else None


def check_device_profile(device_json: Mapping[str, Any], driver_name: str) -> list[Finding]:
    """Check one published device (``resource.k8s.io/v1`` or ``v1beta1`` shape) against the profile."""
    name = str(device_json.get("name") or "<unnamed device>")
    body = device_json.get("basic", device_json)  # v1beta1 nests the fields under "basic"
    attributes: Mapping[str, Any] = body.get("attributes") or {}
    capacity: Mapping[str, Any] = body.get("capacity") or {}
    findings = [
        Finding(
            name, key, "not a valid qualified name (C identifier of at most 32 characters, optional domain/)"
        )
        for key in [*attributes, *capacity]
        if not _is_qualified_name(key)
    ]
    if len(attributes) + len(capacity) > MAX_ATTRIBUTES:
        findings.append(Finding(name, "*", f"more than {MAX_ATTRIBUTES} attributes and capacities"))
    _, type_value = _lookup(attributes, "type", None, driver_name)
    kind = "mig" if isinstance(type_value, Mapping) and type_value.get("string") == "mig" else "gpu"
    for spec in PROFILE:
        if not spec.applies(kind):
            continue
        values = capacity if spec.type == "capacity" else attributes
        key, value = _lookup(values, spec.name, spec.domain, driver_name)
        if value is None:
            # A partitionable MIG device (instance created at prepare) has no UUID to publish yet.
            dynamic = spec.name == "uuid" and kind == "mig" and bool(body.get("consumesCounters"))
            if spec.required and not dynamic:
                what = "capacity" if spec.type == "capacity" else "attribute"
                findings.append(Finding(name, key, f"required {what} is missing"))
            continue
        problem = _check_capacity(value) if spec.type == "capacity" else _check_attribute(spec, key, value)
        if problem:
            findings.append(Finding(name, key, problem))
    for unstable in UNSTABLE_IDS:
        key, value = _lookup(attributes, unstable, None, driver_name)
        if value is not None:
            findings.append(
                Finding(name, key, "unstable id published as an attribute (changes across reboots)")
            )
    return findings


def check_slice(slice_json: Mapping[str, Any]) -> list[Finding]:
    """Check every device of a ResourceSlice, under the slice's own driver name."""
    spec = slice_json.get("spec") or {}
    driver_name = str(spec.get("driver", ""))
    findings: list[Finding] = []
    for device in spec.get("devices") or []:
        findings.extend(check_device_profile(device, driver_name))
    return findings


# -- documentation ------------------------------------------------------------------------------------


def profile_markdown_table() -> str:
    """The profile as the Markdown table in docs/attributes.md."""
    rows = [
        "| Key | Kind | Type | Required | Devices | Description | Example |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in PROFILE:
        kind = "capacity" if spec.type == "capacity" else "attribute"
        value_type = "quantity" if spec.type == "capacity" else spec.type
        applies = {"both": "gpu, mig", "gpu": "gpu", "mig": "mig"}[spec.applies_to]
        rows.append(
            f"| `{spec.key}` | {kind} | {value_type} | {'yes' if spec.required else 'no'} | {applies} "
            f"| {spec.description} | `{spec.example}` |"
        )
    return "\n".join(rows) + "\n"
