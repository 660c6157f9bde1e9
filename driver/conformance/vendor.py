"""Vendor settings: everything the probes need to know about one accelerator vendor's stack.

Nothing in the probes names a vendor; they read a :class:`Vendor`. A vendor file (YAML, schema in
``vendor.schema.json``) starts from the neutral base -- a driver name, a DeviceClass and device-node globs,
and nothing else: no tool, no environment, no metrics Service, no attribute names -- unless it names a
``preset:`` to start from (``accel-dra``, ``nvidia``, ``amd``, ``intel``, and the sandbox's ``sandbox``,
``sandbox-amd``, ``sandbox-intel``). Command-line flags go on top. The presets carry each vendor's real
names: DRA driver and attributes, device nodes, tools, node labels, the device plugin's extended resource.
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
from typing import Any, Literal

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
#: The Kubernetes standard attribute for a device's PCI address (every DRA GPU driver publishes it).
PCI_BUS_ID = "resource.kubernetes.io/pciBusID"
_GLOB_RE = re.compile(r"^/[A-Za-z0-9_./\-\[\]*?]+$")
#: Reaches each visible GPU through the driver (NVML); fails with "No devices were found" when there is none.
_SMI_HEALTH = "nvidia-smi --query-gpu=uuid,utilization.gpu,memory.used --format=csv,noheader"
_NVIDIA_ENV = {"NVIDIA_VISIBLE_DEVICES": "all"}
_AMD_SMI_DRIVER_VERSION = "amd-smi version | sed -n 's/.*amdgpu version: *\\([0-9][0-9.]*\\).*/\\1/p'"
_SMI_CUDA = "nvidia-smi | sed -n 's/.*CUDA Version: *\\([0-9][0-9.]*\\).*/\\1/p' | head -n 1"
#: GPU feature discovery's node labels (what upstream's test falls back to without DRA attributes).
_GFD_DRIVER_LABEL = "nvidia.com/cuda.driver-version.full"
_GFD_RUNTIME_LABEL = "nvidia.com/cuda.runtime-version.full"
Allocation = Literal["dra", "device-plugin", "auto"]
ALLOCATIONS = ("dra", "device-plugin", "auto")


class VendorError(Exception):
    """A vendor file or preset is unknown or invalid."""


@dataclass(frozen=True)
class Versions:
    #: Device attributes carrying the driver (and runtime) version, the first one a device has counts.
    driver_attributes: tuple[str, ...] = ()
    runtime_attributes: tuple[str, ...] = ()
    #: Node labels carrying them, read where the devices publish no version attribute (or in device-plugin
    #: mode, where there are no devices in the API).
    driver_labels: tuple[str, ...] = ()
    runtime_labels: tuple[str, ...] = ()
    #: Shell snippets run in a container given an accelerator; each prints one version (first line counts).
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
    """A workload that keeps the accelerator it was given busy until it is stopped (or for ``seconds``)."""

    image: str | None = None
    command: str | None = None
    seconds: int = 120


@dataclass(frozen=True)
class Health:
    """A short command that uses the accelerator it was given and exits 0 when it works (a health probe)."""

    image: str | None = None
    command: str | None = None


@dataclass(frozen=True)
class Sandboxing:
    """``workload_sandboxing``: RuntimeClasses to try (empty: every RuntimeClass whose handler is a known
    sandbox -- gVisor's ``runsc``, Kata Containers' ``kata*``)."""

    runtime_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Autoscaling:
    """``pod_autoscaling``: an HPA on a per-pod accelerator metric served by the custom-metrics API."""

    #: The metric's name in ``custom.metrics.k8s.io`` (``pods/<metric>``); None: the first ``util`` one.
    metric: str | None = None
    #: The HPA's ``averageValue`` target; the load must drive the metric above it.
    target: str = "0.5"
    max_replicas: int = 2


@dataclass(frozen=True)
class Gang:
    """``gang_scheduling``: where the platform's gang scheduler takes workloads (Kueue: a namespace with a
    LocalQueue, and the label that names it)."""

    namespace: str | None = None
    #: ``key=value`` labels that hand a Job to the gang scheduler (``kueue.x-k8s.io/queue-name=e2e-lq``).
    job_labels: tuple[str, ...] = ()
    pods: int = 2
    #: Seconds during which no pod of a Job that cannot fit whole may run.
    negative_window: float = 30.0


@dataclass(frozen=True)
class TimeSlicing:
    """``gpu_sharing`` by time slicing: a claim passes the driver this opaque configuration, and the pods that
    share the claim's device take turns on it."""

    #: The opaque ``parameters`` of the claim's config entry for the driver (None: not offered).
    config: Mapping[str, Any] | None = None
    #: The DeviceClass to ask (None: the vendor's ``deviceClass``).
    device_class: str | None = None
    #: Prints the setting a container was given (first line counts); None: not visible in a container.
    show_command: str | None = None
    #: Text the shown setting must contain.
    expect: str | None = None


@dataclass(frozen=True)
class Partitions:
    """``gpu_sharing`` by hardware partitions (MIG, partitionable devices): each partition its own device."""

    #: The DeviceClass of the partitions (None: not offered).
    device_class: str | None = None
    #: The attribute naming the physical device a partition belongs to.
    parent_attribute: str = "parentUUID"
    #: Prints the ids of the partitions a container sees, one a line (compared with ``identity_attribute``).
    identity_command: str | None = None
    identity_attribute: str | None = None


@dataclass(frozen=True)
class CapacitySharing:
    """``gpu_sharing`` by consumable capacity: devices with ``allowMultipleAllocations`` that several claims
    get at once, each consuming part of a capacity."""

    #: The capacity the claims ask a part of (None: not offered).
    capacity: str | None = None
    #: The DeviceClass to ask (None: the vendor's ``deviceClass``).
    device_class: str | None = None


@dataclass(frozen=True)
class Sharing:
    """The sharing strategies the platform offers, each shown by a check of ``gpu_sharing``."""

    time_slicing: TimeSlicing = field(default_factory=TimeSlicing)
    partitions: Partitions = field(default_factory=Partitions)
    capacity: CapacitySharing = field(default_factory=CapacitySharing)


@dataclass(frozen=True)
class Vendor:
    name: str
    driver_name: str
    device_class: str
    #: Device nodes that stand for accelerators in a container; the first glob's matches are counted (one
    #: per accelerator), every glob must match nothing where no accelerator was given.
    device_globs: tuple[str, ...]
    probe_image: str = "ubuntu:24.04"
    tolerations: tuple[Mapping[str, Any], ...] = ()
    #: ``dra``: probes claim devices through the DeviceClass; ``device-plugin``: they request
    #: ``extended_resource`` in their limits; ``auto``: DRA when the DeviceClass and devices exist.
    allocation: Allocation = "dra"
    extended_resource: str | None = None
    #: Prints one accelerator id per line in a container (compared with ``identity_attribute``).
    identity_command: str | None = None
    identity_attribute: str | None = None
    memory_capacity: str | None = None
    product_attribute: str | None = None
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
    sandboxing: Sandboxing = field(default_factory=Sandboxing)
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    gang: Gang = field(default_factory=Gang)
    sharing: Sharing = field(default_factory=Sharing)
    #: Requirement id -> why it does not apply to this platform (written as N/A with these notes).
    not_applicable: Mapping[str, str] = field(default_factory=dict)
    #: Drivers whose devices the attribute-profile probe checks (default: ``driver_name``); "*" for all.
    profile_drivers: tuple[str, ...] = ()
    #: Seconds a probe pod may take to start and print its result (image pulls on a fresh node).
    pod_timeout: float = 300.0

    def __post_init__(self) -> None:
        if not self.device_globs:
            raise VendorError(f"vendor {self.name}: deviceGlobs names no device node")
        for glob in self.device_globs:
            if not _GLOB_RE.match(glob):
                raise VendorError(
                    f"vendor {self.name}: device glob {glob!r} must be an absolute path glob "
                    "(letters, digits, / . _ - [ ] * ? only)"
                )
        if self.allocation not in ALLOCATIONS:
            raise VendorError(
                f"vendor {self.name}: allocation {self.allocation!r} is not one of {ALLOCATIONS}"
            )
        if self.allocation in ("device-plugin", "auto") and not self.extended_resource:
            raise VendorError(
                f"vendor {self.name}: allocation {self.allocation} needs extendedResource (e.g. nvidia.com/gpu)"
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
    """Driver and CUDA versions of an NVIDIA GPU: published as attributes of ``driver`` (or as GPU feature
    discovery's node labels), read by nvidia-smi."""
    return Versions(
        driver_attributes=("driverVersion", f"{driver}/driverVersion"),
        runtime_attributes=("cudaDriverVersion", f"{driver}/cudaDriverVersion"),
        driver_labels=(_GFD_DRIVER_LABEL,),
        runtime_labels=(_GFD_RUNTIME_LABEL,),
        driver_command="nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1",
        runtime_command=_SMI_CUDA,
        tool="nvidia-smi",
    )


def _nvidia_base(name: str, driver: str) -> Vendor:
    """What every NVIDIA stack shares: device nodes, nvidia-smi, the container toolkit's environment."""
    return Vendor(
        name=name,
        driver_name=driver,
        device_class=driver,
        device_globs=("/dev/nvidia[0-9]*",),
        extended_resource="nvidia.com/gpu",
        identity_command="nvidia-smi --query-gpu=uuid --format=csv,noheader",
        identity_attribute="uuid",
        memory_capacity="memory",
        product_attribute="productName",
        versions=_smi_versions(driver),
        health=Health(command=_SMI_HEALTH),
        bypass_env=dict(_NVIDIA_ENV),
    )


#: The MIG devices a container sees, as ``nvidia-smi -L`` lists them (``MIG 1g.5gb Device 0: (UUID: MIG-...)``).
_SMI_MIG_UUIDS = "nvidia-smi -L | sed -n 's/.*(UUID: \\(MIG-[^)]*\\)).*/\\1/p'"


def _mig_partitions(driver: str) -> Partitions:
    """MIG devices through the driver's ``mig.<domain>`` DeviceClass, each naming its GPU in ``parentUUID``."""
    _, _, domain = driver.partition(".")
    return Partitions(
        device_class=f"mig.{domain or driver}",
        parent_attribute="parentUUID",
        identity_command=_SMI_MIG_UUIDS,
        identity_attribute="uuid",
    )


def _accel_dra_sharing() -> Sharing:
    """accel-dra: ``GpuConfig`` time slicing (containers are told it in ``ACCEL_DRA_DEVICE_<NAME>_SHARING``),
    static and dynamic MIG, and GPUs shared by memory (``--shared-gpus``)."""
    config = {
        "apiVersion": "gpu.accel-dra.dev/v1",
        "kind": "GpuConfig",
        "sharing": {"strategy": "TimeSlicing", "timeSlicing": {"interval": "Long"}},
    }
    return Sharing(
        time_slicing=TimeSlicing(
            config=config,
            show_command="env | sed -n 's/^ACCEL_DRA_DEVICE_.*_SHARING=//p'",
            expect="TimeSlicing:Long",
        ),
        partitions=_mig_partitions(DEFAULT_DRIVER_NAME),
        capacity=CapacitySharing(capacity="memory"),
    )


def _accel_dra() -> Vendor:
    return dataclasses.replace(
        _nvidia_base("accel-dra", DEFAULT_DRIVER_NAME),
        interconnect_attribute="nvlinkDomain",
        sharing=_accel_dra_sharing(),
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
    )


def _nvidia() -> Vendor:
    """NVIDIA's DRA driver (``gpu.nvidia.com``) with the GPU Operator's DCGM exporter."""
    return dataclasses.replace(
        _nvidia_base("nvidia", "gpu.nvidia.com"),
        tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        # Time slicing (GpuConfig resource.nvidia.com/v1beta1) is behind the driver's alpha gate
        # TimeSlicingSettings, so it is not preset; consumable shares need its ConsumableShares gate and
        # --consumable-shares=memory (devices without allowMultipleAllocations: the check skips).
        sharing=Sharing(
            partitions=_mig_partitions("gpu.nvidia.com"), capacity=CapacitySharing(capacity="memory")
        ),
        metrics=Metrics(
            namespace="gpu-operator",
            service="nvidia-dcgm-exporter",
            port=9400,
            utilization="DCGM_FI_DEV_GPU_UTIL",
            memory="DCGM_FI_DEV_FB_USED",
            temperature="DCGM_FI_DEV_GPU_TEMP",
            power="DCGM_FI_DEV_POWER_USAGE",
        ),
    )


def _amd() -> Vendor:
    """AMD's DRA driver (``gpu.amd.com``): a render node and ``/dev/kfd`` per container, no ``uuid``
    attribute (devices are told apart by their PCI address, which ``amd-smi list`` prints as ``BDF``), the
    amdgpu kernel module's version as ``driverVersion`` (and the node labeller's label), ROCm's device-metrics
    exporter (its Service name depends on the GPU operator's DeviceConfig, so it is not preset)."""
    return Vendor(
        name="amd",
        driver_name="gpu.amd.com",
        device_class="gpu.amd.com",
        device_globs=("/dev/dri/renderD*", "/dev/kfd"),
        extended_resource="amd.com/gpu",
        identity_command="amd-smi list | sed -n 's/^ *BDF: *//p'",
        identity_attribute=PCI_BUS_ID,
        memory_capacity="memory",
        product_attribute="productName",
        versions=Versions(
            driver_attributes=("driverVersion", "gpu.amd.com/driverVersion"),
            driver_labels=("amd.com/gpu.driver-version",),
            driver_command="cat /sys/module/amdgpu/version",
            tool="the amdgpu module (/sys/module/amdgpu/version)",
        ),
        metrics=Metrics(
            port=5000,
            utilization="gpu_gfx_activity",
            memory="gpu_used_vram",
            temperature="gpu_junction_temperature",
            power="gpu_package_power",
            identity_labels=(*DEFAULT_IDENTITY_LABELS, "gpu_id"),
        ),
        health=Health(command="amd-smi list"),
        bypass_env={"AMD_VISIBLE_DEVICES": "all"},
    )


def _intel() -> Vendor:
    """Intel's GPU DRA driver (``gpu.intel.com``): a card and a render node per container; ``model``,
    ``family``, ``pciId`` and the standard PCI attributes, no version attribute, no ``uuid`` and no tool in a
    plain image (identity and version checks need a vendor file that names one); XPU Manager metrics."""
    return Vendor(
        name="intel",
        driver_name="gpu.intel.com",
        device_class="gpu.intel.com",
        device_globs=("/dev/dri/renderD*", "/dev/dri/card*"),
        extended_resource="gpu.intel.com/i915",
        memory_capacity="memory",
        product_attribute="model",
        metrics=Metrics(utilization="xpum_engine_group_ratio", memory="xpum_memory_used_bytes"),
    )


def _sandboxed(base: Vendor, name: str, **changes: Any) -> Vendor:
    """A preset in the accel-dra sandbox: containers run host binaries, the load is simulated."""
    load = (
        f"exec {shlex.quote(sys.executable)} -m driver sim gpu-load --utilization 0.9 --memory 4Gi "
        "--seconds 120"
    )
    return dataclasses.replace(
        base,
        name=name,
        probe_image="sandbox",
        load=Load(image="sandbox", command=load, seconds=120),
        pod_timeout=60.0,
        **changes,
    )


def _sandbox() -> Vendor:
    """This driver in the sandbox."""
    return _sandboxed(_accel_dra(), "sandbox")


def _sandbox_amd() -> Vendor:
    """The sandbox's AMD-shaped driver: the amd preset, with the sandbox's amd-smi stand-in reporting the
    driver version (a sandbox node has no amdgpu module). The sandbox's metrics solution is accel-dra's
    exporter for every shape (it attributes the shaped driver's devices through their pciBusID)."""
    base = _amd()
    return _sandboxed(
        base,
        "sandbox-amd",
        versions=dataclasses.replace(base.versions, driver_command=_AMD_SMI_DRIVER_VERSION, tool="amd-smi"),
        metrics=_accel_dra().metrics,
    )


def _sandbox_intel() -> Vendor:
    """The sandbox's Intel-shaped driver: the intel preset; metrics from accel-dra's exporter."""
    return _sandboxed(_intel(), "sandbox-intel", metrics=_accel_dra().metrics)


PRESETS = {
    "accel-dra": _accel_dra,
    "nvidia": _nvidia,
    "amd": _amd,
    "intel": _intel,
    "sandbox": _sandbox,
    "sandbox-amd": _sandbox_amd,
    "sandbox-intel": _sandbox_intel,
}


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
    "deviceGlobs": "device_globs",
    "probeImage": "probe_image",
    "allocation": "allocation",
    "extendedResource": "extended_resource",
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
    "driverLabels": "driver_labels",
    "runtimeLabels": "runtime_labels",
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
#: Nested settings: file key -> (Vendor field, file key -> dataclass field).
_GROUPS: dict[str, tuple[str, dict[str, str]]] = {
    "versions": ("versions", _VERSIONS),
    "metrics": ("metrics", _METRICS),
    "load": ("load", {"image": "image", "command": "command", "seconds": "seconds"}),
    "health": ("health", {"image": "image", "command": "command"}),
    "workloadSandboxing": ("sandboxing", {"runtimeClasses": "runtime_classes"}),
    "podAutoscaling": (
        "autoscaling",
        {"metric": "metric", "target": "target", "maxReplicas": "max_replicas"},
    ),
    "gangScheduling": (
        "gang",
        {
            "namespace": "namespace",
            "jobLabels": "job_labels",
            "pods": "pods",
            "negativeWindowSeconds": "negative_window",
        },
    ),
}


def _tuples(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _renamed(data: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    return _tuples({names[k]: v for k, v in data.items() if k in names})


def _neutral(data: Mapping[str, Any], source: str) -> Vendor:
    """The base of a vendor file without ``preset``: only what the file says (schema: driverName and
    deviceGlobs are then required)."""
    driver = str(data["driverName"])
    return Vendor(
        name=Path(source).stem if source != "<vendor>" else driver,
        driver_name=driver,
        device_class=str(data.get("deviceClass") or driver),
        device_globs=tuple(_globs(data)),
    )


def _globs(data: Mapping[str, Any]) -> list[str]:
    globs = data.get("deviceGlobs", data.get("deviceGlob"))
    return [globs] if isinstance(globs, str) else list(globs or [])


_SHARING: dict[str, tuple[str, dict[str, str]]] = {
    "timeSlicing": (
        "time_slicing",
        {
            "config": "config",
            "deviceClass": "device_class",
            "showCommand": "show_command",
            "expect": "expect",
        },
    ),
    "partitions": (
        "partitions",
        {
            "deviceClass": "device_class",
            "parentAttribute": "parent_attribute",
            "identityCommand": "identity_command",
            "identityAttribute": "identity_attribute",
        },
    ),
    "capacity": ("capacity", {"capacity": "capacity", "deviceClass": "device_class"}),
}


def _sharing(base: Sharing, data: Mapping[str, Any]) -> Sharing:
    """The file's ``sharing`` settings over the base's; a strategy set to null is not offered."""
    changes: dict[str, Any] = {}
    for key, (attribute, names) in _SHARING.items():
        if key not in data:
            continue
        current = getattr(base, attribute)
        value = data[key]
        changes[attribute] = (
            type(current)() if value is None else dataclasses.replace(current, **_renamed(value, names))
        )
    return dataclasses.replace(base, **changes)


def vendor_from_mapping(data: Mapping[str, Any], source: str = "<vendor>") -> Vendor:
    """A vendor from a vendor file's contents (validated): the neutral base or ``preset``, then the file's
    own settings on top."""
    _validate(data, source)
    try:
        base = preset(str(data["preset"])) if "preset" in data else _neutral(data, source)
        changes: dict[str, Any] = _renamed(data, _TOP)
        if "deviceGlob" in data or "deviceGlobs" in data:
            changes["device_globs"] = tuple(_globs(data))
        if "driverName" in data and "deviceClass" not in data:
            changes["device_class"] = data["driverName"]
        for key, (attribute, names) in _GROUPS.items():
            if key in data:
                changes[attribute] = dataclasses.replace(
                    getattr(base, attribute), **_renamed(data[key], names)
                )
        if "bypassEnv" in data:
            changes["bypass_env"] = {str(k): str(v) for k, v in data["bypassEnv"].items()}
        if "tolerations" in data:
            changes["tolerations"] = tuple(dict(t) for t in data["tolerations"])
        if "notApplicable" in data:
            changes["not_applicable"] = dict(data["notApplicable"])
        if "sharing" in data:
            changes["sharing"] = _sharing(base.sharing, data["sharing"])
        if "profileDrivers" in data:
            changes["profile_drivers"] = tuple(data["profileDrivers"])
        changes.setdefault("name", Path(source).stem if source != "<vendor>" else base.name)
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
    if isinstance(top.get("device_globs"), (list, str)):
        top["device_globs"] = tuple(
            [top["device_globs"]] if isinstance(top["device_globs"], str) else top["device_globs"]
        )
    if "driver_name" in top and "device_class" not in top and vendor.device_class == vendor.driver_name:
        top["device_class"] = top["driver_name"]
    return dataclasses.replace(vendor, **top)
