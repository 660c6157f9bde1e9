"""Vendor settings: everything the probes need to know about one accelerator vendor's stack.

Nothing in the probes names a vendor; they read a :class:`Vendor`. It comes from a preset (``accel-dra``,
``nvidia``, ``sandbox``), a small YAML file (``preset:`` picks the base, the other keys override it; schema in
``vendor.schema.json``), and command-line flags on top.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from driver import DEFAULT_DRIVER_NAME

#: Label keys the upstream test accepts as naming one accelerator (a sample without one is not per-device).
DEFAULT_IDENTITY_LABELS = (
    "gpu",
    "UUID",
    "uuid",
    "device_id",
    "dev_id",
    "card_id",
    "GPU_I_ID",
    "minor_number",
    "pci_bus_id",
)
_GLOB_RE = re.compile(r"^/[A-Za-z0-9_./\-\[\]*?]+$")
#: Reaches each visible GPU through the driver (NVML); fails with "No devices were found" when there is none.
_SMI_HEALTH = "nvidia-smi --query-gpu=uuid,utilization.gpu,memory.used --format=csv,noheader"
_NVIDIA_ENV = {"NVIDIA_VISIBLE_DEVICES": "all"}
_SMI_CUDA = "nvidia-smi | sed -n 's/.*CUDA Version: *\\([0-9][0-9.]*\\).*/\\1/p' | head -n 1"


class VendorError(Exception):
    """A vendor file or preset is unknown or invalid."""


@dataclass(frozen=True)
class Versions:
    driver_attributes: tuple[str, ...] = ("driverVersion",)
    runtime_attributes: tuple[str, ...] = ()
    #: Shell snippets run in a claimed container; each prints one version (first line counts).
    driver_command: str | None = None
    runtime_command: str | None = None
    #: What the report calls the tool (e.g. "nvidia-smi").
    tool: str = "vendor tool"


@dataclass(frozen=True)
class Metrics:
    namespace: str | None = None
    service: str | None = None
    port: int = 9400
    path: str = "/metrics"
    #: Exact metric names; ``None``: auto-detected like the upstream test.
    utilization: str | None = None
    memory: str | None = None
    temperature: str | None = None
    power: str | None = None
    interconnect: str | None = None
    identity_labels: tuple[str, ...] = DEFAULT_IDENTITY_LABELS
    pod_label: str = "pod"
    namespace_label: str = "namespace"

    @property
    def configured(self) -> bool:
        return bool(self.namespace and self.service)


@dataclass(frozen=True)
class Load:
    """A workload that keeps the claimed accelerator busy until it is stopped (or for ``seconds``)."""

    image: str | None = None
    command: str | None = None
    seconds: int = 120


@dataclass(frozen=True)
class Health:
    """A short command that uses the claimed accelerator and exits 0 when it works (a health probe)."""

    image: str | None = None
    command: str | None = None


@dataclass(frozen=True)
class Vendor:
    name: str
    driver_name: str
    device_class: str
    device_glob: str
    probe_image: str = "ubuntu:24.04"
    tolerations: tuple[Mapping[str, Any], ...] = ()
    #: Prints one accelerator id per line in a container (compared with ``identity_attribute``).
    identity_command: str | None = None
    identity_attribute: str | None = "uuid"
    memory_capacity: str = "memory"
    product_attribute: str | None = "productName"
    #: Devices that share a value of this attribute are connected (NVLink domain, ...); None: not published.
    interconnect_attribute: str | None = None
    versions: Versions = field(default_factory=Versions)
    metrics: Metrics = field(default_factory=Metrics)
    load: Load = field(default_factory=Load)
    #: Run by every consumer of a shared device (gpu_sharing); without it that check is skipped.
    health: Health = field(default_factory=Health)
    #: Environment a runtime might honour to hand out devices without a claim (``NVIDIA_VISIBLE_DEVICES=all``):
    #: a pod without a claim that sets it must still see no device.
    bypass_env: Mapping[str, str] = field(default_factory=dict)
    #: Requirement id -> why it does not apply to this platform (written as N/A with these notes).
    not_applicable: Mapping[str, str] = field(default_factory=dict)
    #: Drivers whose devices the attribute-profile probe checks (default: ``driver_name``); "*" for all.
    profile_drivers: tuple[str, ...] = ()
    #: Seconds a probe pod may take to start and print its result (image pulls on a fresh node).
    pod_timeout: float = 300.0

    def __post_init__(self) -> None:
        if not _GLOB_RE.match(self.device_glob):
            raise VendorError(
                f"vendor {self.name}: deviceGlob {self.device_glob!r} must be an absolute path glob "
                "(letters, digits, / . _ - [ ] * ? only)"
            )

    @property
    def drivers_to_profile(self) -> tuple[str, ...]:
        return self.profile_drivers or (self.driver_name,)

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = _json_ready(dataclasses.asdict(self))
        return summary


def _json_ready(value: Any) -> Any:  # tuples -> lists, mappings -> dicts
    if isinstance(value, Mapping):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


# -- presets -------------------------------------------------------------------------------------------


def _smi_versions(driver: str) -> Versions:
    """Driver and CUDA versions of an NVIDIA GPU: published as attributes of ``driver``, read by nvidia-smi."""
    return Versions(
        driver_attributes=("driverVersion", f"{driver}/driverVersion"),
        runtime_attributes=("cudaDriverVersion", f"{driver}/cudaDriverVersion"),
        driver_command="nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1",
        runtime_command=_SMI_CUDA,
        tool="nvidia-smi",
    )


def _accel_dra() -> Vendor:
    return Vendor(
        name="accel-dra",
        driver_name=DEFAULT_DRIVER_NAME,
        device_class=DEFAULT_DRIVER_NAME,
        device_glob="/dev/nvidia[0-9]*",
        identity_command="nvidia-smi --query-gpu=uuid --format=csv,noheader",
        interconnect_attribute="nvlinkDomain",
        versions=_smi_versions(DEFAULT_DRIVER_NAME),
        metrics=Metrics(
            namespace="accel-dra",
            service="accel-dra-metrics",
            port=9400,
            utilization="hw_gpu_utilization_ratio",
            memory="hw_gpu_memory_usage_bytes",
            temperature="hw_temperature_celsius",
            power="hw_power_watts",
            interconnect="hw_gpu_io_bytes_total",
        ),
        health=Health(command=_SMI_HEALTH),
        bypass_env=dict(_NVIDIA_ENV),
    )


def _nvidia() -> Vendor:
    return Vendor(
        name="nvidia",
        driver_name="gpu.nvidia.com",
        device_class="gpu.nvidia.com",
        device_glob="/dev/nvidia[0-9]*",
        tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        identity_command="nvidia-smi --query-gpu=uuid --format=csv,noheader",
        versions=_smi_versions("gpu.nvidia.com"),
        metrics=Metrics(
            namespace="gpu-operator",
            service="nvidia-dcgm-exporter",
            port=9400,
            utilization="DCGM_FI_DEV_GPU_UTIL",
            memory="DCGM_FI_DEV_FB_USED",
            temperature="DCGM_FI_DEV_GPU_TEMP",
            power="DCGM_FI_DEV_POWER_USAGE",
        ),
        health=Health(command=_SMI_HEALTH),
        bypass_env=dict(_NVIDIA_ENV),
    )


def _sandbox() -> Vendor:
    """This driver in ``accel-dra`` sandbox: containers run host binaries, load is simulated."""
    base = _accel_dra()
    load = (
        f"exec {shlex.quote(sys.executable)} -m driver sim gpu-load --utilization 0.9 --memory 4Gi "
        "--seconds 120"
    )
    return dataclasses.replace(
        base,
        name="sandbox",
        probe_image="sandbox",
        load=Load(image="sandbox", command=load, seconds=120),
        pod_timeout=60.0,
    )


PRESETS = {"accel-dra": _accel_dra, "nvidia": _nvidia, "sandbox": _sandbox}


def preset(name: str) -> Vendor:
    try:
        return PRESETS[name]()
    except KeyError:
        raise VendorError(
            f"unknown vendor preset {name!r}: use one of {', '.join(PRESETS)} or a vendor file"
        ) from None


# -- files ---------------------------------------------------------------------------------------------


@cache
def vendor_schema() -> dict[str, Any]:
    text = resources.files("driver.conformance").joinpath("vendor.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _validate(data: Any, source: str) -> None:
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(vendor_schema()).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.path) or "(top)"
        raise VendorError(f"{source}: {where}: {first.message}")


_TOP = {
    "name": "name",
    "driverName": "driver_name",
    "deviceClass": "device_class",
    "deviceGlob": "device_glob",
    "probeImage": "probe_image",
    "identityCommand": "identity_command",
    "identityAttribute": "identity_attribute",
    "memoryCapacity": "memory_capacity",
    "productAttribute": "product_attribute",
    "interconnectAttribute": "interconnect_attribute",
    "podTimeoutSeconds": "pod_timeout",
}
_VERSIONS = {
    "driverAttributes": "driver_attributes",
    "runtimeAttributes": "runtime_attributes",
    "driverCommand": "driver_command",
    "runtimeCommand": "runtime_command",
    "tool": "tool",
}
_METRICS = {
    "namespace": "namespace",
    "service": "service",
    "port": "port",
    "path": "path",
    "utilization": "utilization",
    "memory": "memory",
    "temperature": "temperature",
    "power": "power",
    "interconnect": "interconnect",
    "identityLabels": "identity_labels",
    "podLabel": "pod_label",
    "namespaceLabel": "namespace_label",
}
_LOAD = {"image": "image", "command": "command", "seconds": "seconds"}
_HEALTH = {"image": "image", "command": "command"}


def _tuples(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _renamed(data: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    return _tuples({names[k]: v for k, v in data.items() if k in names})


def vendor_from_mapping(data: Mapping[str, Any], source: str = "<vendor>") -> Vendor:
    """A vendor from a vendor file's contents (validated): ``preset`` as the base, the rest overriding it."""
    _validate(data, source)
    base = preset(str(data.get("preset", "accel-dra")))
    changes: dict[str, Any] = _renamed(data, _TOP)
    if "driverName" in data and "deviceClass" not in data:
        changes["device_class"] = data["driverName"]
    if "versions" in data:
        changes["versions"] = dataclasses.replace(base.versions, **_renamed(data["versions"], _VERSIONS))
    if "metrics" in data:
        changes["metrics"] = dataclasses.replace(base.metrics, **_renamed(data["metrics"], _METRICS))
    if "load" in data:
        changes["load"] = dataclasses.replace(base.load, **_renamed(data["load"], _LOAD))
    if "health" in data:
        changes["health"] = dataclasses.replace(base.health, **_renamed(data["health"], _HEALTH))
    if "bypassEnv" in data:
        changes["bypass_env"] = {str(k): str(v) for k, v in data["bypassEnv"].items()}
    if "tolerations" in data:
        changes["tolerations"] = tuple(dict(t) for t in data["tolerations"])
    if "notApplicable" in data:
        changes["not_applicable"] = dict(data["notApplicable"])
    if "profileDrivers" in data:
        changes["profile_drivers"] = tuple(data["profileDrivers"])
    changes.setdefault("name", Path(source).stem if source != "<vendor>" else base.name)
    try:
        return dataclasses.replace(base, **changes)
    except VendorError as err:
        raise VendorError(f"{source}: {err}") from None


def load_vendor(spec: str) -> Vendor:
    """A preset name or the path of a vendor YAML file."""
    if spec in PRESETS:
        return preset(spec)
    path = Path(spec)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise VendorError(
            f"{spec}: not a preset ({', '.join(PRESETS)}) and not a readable file: {err.strerror or err}"
        ) from err
    except yaml.YAMLError as err:
        raise VendorError(f"{spec}: not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise VendorError(f"{spec}: a vendor file is a mapping of settings")
    return vendor_from_mapping(data, spec)


def with_overrides(vendor: Vendor, overrides: Mapping[str, Any]) -> Vendor:
    """Apply command-line overrides (dotted names for nested settings: ``metrics.port``); None = unset."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        group, _, name = key.rpartition(".")
        if group:
            nested.setdefault(group, {})[name] = value
        else:
            top[name] = value
    for group, values in nested.items():
        top[group] = dataclasses.replace(getattr(vendor, group), **values)
    if "driver_name" in top and "device_class" not in top and vendor.device_class == vendor.driver_name:
        top["device_class"] = top["driver_name"]
    return dataclasses.replace(vendor, **top)
