"""The metric spec, as data: every series the exporter and the kubelet plugin expose.

One :class:`MetricSpec` per family gives its exposed name, type, unit, help, label names, the values of its
enumerated labels, and where it comes from (OpenTelemetry ``hw.*`` instrument or, for what the convention
lacks, an OTel-style name; the NVML call; the dcgm-exporter field). The
renderers build their families from these entries only, and ``docs/metrics.md`` holds tables generated
from them (``python -m driver.exporter.names --write docs/metrics.md``; a test fails when they differ).

Naming rules (OpenTelemetry hardware conventions in Prometheus form): the OTel name with dots replaced by
``_``, the unit word appended (``_bytes``, ``_watts``, ``_ratio`` for unit ``1`` gauges as the OTLP
translator does), ``_total`` on counters. Series the conventions do not define are prefixed ``accel_dra_``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from driver.devices.telemetry import ACTIVITIES, CLOCK_EVENT_REASONS, FIELDS

MetricType = Literal["gauge", "counter", "info", "histogram"]

#: Labels that identify the physical GPU on every per-GPU series. ``uuid`` and ``pci_bus_id`` are the
#: keys the AI-conformance test recognises as "per accelerator"; ``hw_id`` is the OTel identity.
IDENTITY_LABELS = ("hw_id", "uuid", "pci_bus_id", "hw_model", "hw_vendor")
#: Labels naming who holds a GPU (empty, i.e. absent, where they do not apply: a device-plugin
#: allocation has no claim).
ATTRIBUTION_LABELS = (
    "namespace",
    "pod",
    "container",
    "resource_claim_namespace",
    "resource_claim",
    "dra_driver",
    "dra_pool",
    "dra_device",
)

#: Labels that identify a MIG device on its series: its parent GPU's identity (``uuid`` is the GPU's, as in
#: dcgm-exporter), its own DRA device name as ``hw_id``, the parent's as ``hw_parent`` (OTel ``hw.parent``),
#: its UUID and its profile.
MIG_IDENTITY_LABELS = (*IDENTITY_LABELS, "hw_parent", "mig_uuid", "mig_profile")
#: Labels naming the MIG device a container holds (empty for a whole GPU).
HELD_DEVICE_LABELS = ("mig_uuid", "mig_profile")
#: Who is charged for GPU time.
CHARGEBACK_LABELS = (
    "namespace",
    "pod",
    "resource_claim_namespace",
    "resource_claim",
    "device_class",
    "hw_model",
    "k8s_node_name",
)

Group = Literal["gpu", "mig", "container", "chargeback", "exporter", "plugin"]


@dataclass(frozen=True)
class MetricSpec:
    #: The name as it is queried: counters end in ``_total``, info series in ``_info``.
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    #: Unit word, also the name's suffix before ``_total`` (OpenMetrics requires it); "" when none.
    unit: str = ""
    group: Group = "gpu"
    #: Enumerated label values (documentation and tests).
    values: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    otel: str = ""
    #: For families the OpenTelemetry convention does not define: the name an OTel instrument would have.
    otel_style: str = ""
    #: The UCUM unit of the OTel instrument (``1``, ``By``, ``By/s``, ``s``, ``{row}``...).
    ucum: str = ""
    #: Where the value comes from (the NVML call, or the exporter's own bookkeeping).
    source: str = ""
    dcgm: str = ""

    @property
    def family(self) -> str:
        """The family name prometheus_client takes (without ``_total`` / ``_info``)."""
        if self.type == "counter":
            return self.name.removesuffix("_total")
        if self.type == "info":
            return self.name.removesuffix("_info")
        return self.name

    @property
    def family_without_unit(self) -> str:
        """The family name minus the unit suffix (prometheus_client appends ``unit`` itself)."""
        return self.family.removesuffix(f"_{self.unit}") if self.unit else self.family


def _gpu(*extra: str) -> tuple[str, ...]:
    return IDENTITY_LABELS + extra


def _values(**values: Sequence[str]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({k: tuple(v) for k, v in values.items()})


HW_TYPE = _values(hw_type=["gpu"])

HW_STATES = ("ok", "degraded", "failed", "predicted_failure")
ATTRIBUTION_MODES = ("exclusive", "process", "shared")
READ_ERROR_REASONS = ("error", "timeout", "lost")
READ_ERROR_FIELDS = (*FIELDS, "sample")

GPU_UTILIZATION = MetricSpec(
    "hw_gpu_utilization_ratio",
    "gauge",
    "Fraction of time the GPU spent on a task over the last sampling window.",
    _gpu("hw_gpu_task"),
    unit="ratio",
    values=_values(hw_gpu_task=["general", "encoder", "decoder"]),
    otel="hw.gpu.utilization",
    dcgm="DCGM_FI_DEV_GPU_UTIL, DCGM_FI_DEV_ENC_UTIL, DCGM_FI_DEV_DEC_UTIL (percent ÷ 100)",
)
GPU_MEMORY_USAGE = MetricSpec(
    "hw_gpu_memory_usage_bytes",
    "gauge",
    "GPU memory in use.",
    _gpu(),
    unit="bytes",
    otel="hw.gpu.memory.usage",
    dcgm="DCGM_FI_DEV_FB_USED (MiB * 2^20)",
)
GPU_MEMORY_LIMIT = MetricSpec(
    "hw_gpu_memory_limit_bytes",
    "gauge",
    "Size of the GPU memory.",
    _gpu(),
    unit="bytes",
    otel="hw.gpu.memory.limit",
    dcgm="DCGM_FI_DEV_FB_FREE + _FB_USED + _FB_RESERVED",
)
GPU_MEMORY_UTILIZATION = MetricSpec(
    "hw_gpu_memory_utilization_ratio",
    "gauge",
    "Fraction of the GPU memory in use.",
    _gpu(),
    unit="ratio",
    otel="hw.gpu.memory.utilization",
    dcgm="DCGM_FI_DEV_FB_USED / total (not DCGM_FI_DEV_MEM_COPY_UTIL, which is memory bandwidth)",
)
GPU_IO = MetricSpec(
    "hw_gpu_io_bytes_total",
    "counter",
    "Bytes received and transmitted by the GPU, per interconnect.",
    _gpu("network_io_direction", "interconnect"),
    unit="bytes",
    values=_values(network_io_direction=["receive", "transmit"], interconnect=["pcie", "nvlink"]),
    otel="hw.gpu.io",
    dcgm="DCGM_FI_PROF_PCIE_RX_BYTES / _TX_BYTES (rates), DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
)
POWER = MetricSpec(
    "hw_power_watts",
    "gauge",
    "Instantaneous power drawn by the GPU board.",
    _gpu("hw_type"),
    unit="watts",
    values=HW_TYPE,
    otel="hw.power",
    dcgm="DCGM_FI_DEV_POWER_USAGE",
)
ENERGY = MetricSpec(
    "hw_energy_joules_total",
    "counter",
    "Energy consumed by the GPU since the driver was loaded.",
    _gpu("hw_type"),
    unit="joules",
    values=HW_TYPE,
    otel="hw.energy",
    dcgm="DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION (mJ ÷ 1000)",
)
TEMPERATURE = MetricSpec(
    "hw_temperature_celsius",
    "gauge",
    "Temperature of a GPU sensor.",
    _gpu("hw_type", "hw_sensor_location"),
    unit="celsius",
    values=_values(hw_type=["gpu"], hw_sensor_location=["gpu", "memory"]),
    otel="hw.temperature",
    dcgm="DCGM_FI_DEV_GPU_TEMP, DCGM_FI_DEV_MEMORY_TEMP",
)
ERRORS = MetricSpec(
    "hw_errors_total",
    "counter",
    "Errors of the GPU: memory (ECC) errors since the driver was loaded; XID events the health monitor recorded.",
    _gpu("hw_type", "error_type"),
    values=_values(hw_type=["gpu"], error_type=["corrected", "uncorrected", "xid"]),
    otel="hw.errors",
    dcgm="DCGM_FI_DEV_ECC_SBE_VOL_TOTAL, DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
)
STATUS = MetricSpec(
    "hw_status",
    "gauge",
    "1 for the GPU's current state, 0 for the others.",
    _gpu("hw_type", "hw_state"),
    values=_values(hw_type=["gpu"], hw_state=HW_STATES),
    otel="hw.status",
    dcgm="(DCGM health watches)",
)
CLOCK = MetricSpec(
    "accel_dra_gpu_clock_hertz",
    "gauge",
    "Current clock frequency of a GPU clock domain.",
    _gpu("clock"),
    unit="hertz",
    values=_values(clock=["sm", "memory"]),
    dcgm="DCGM_FI_DEV_SM_CLOCK, DCGM_FI_DEV_MEM_CLOCK (MHz * 10^6)",
)
GPU_INFO = MetricSpec(
    "accel_dra_gpu_info",
    "info",
    "Static facts of a GPU; value 1.",
    _gpu(
        "hw_type",
        "hw_driver_version",
        "cuda_driver_version",
        "architecture",
        "compute_capability",
        "mig_mode",
        "k8s_node_name",
        "nvml_index",
        "nvml_pci_bus_id",
    ),
    values=_values(hw_type=["gpu"], mig_mode=["enabled", "disabled", "unsupported"]),
    otel_style="accel_dra.gpu.info",
    source="nvmlDeviceGetIndex order, nvmlDeviceGetPciInfo (.busId), nvmlSystemGetDriverVersion",
    dcgm="gpu, pci_bus_id, device, modelName, DCGM_FI_DRIVER_VERSION labels",
)
MEMORY_USED_ALIAS = MetricSpec(
    "accel_dra_gpu_memory_used_bytes",
    "gauge",
    "GPU memory in use; the same value as hw_gpu_memory_usage_bytes under a name AI-conformance "
    "auto-detection recognises.",
    _gpu(),
    unit="bytes",
    dcgm="DCGM_FI_DEV_FB_USED (MiB * 2^20)",
)
READ_ERRORS = MetricSpec(
    "accel_dra_gpu_read_errors_total",
    "counter",
    "Telemetry reads that failed, per field (field=sample: the whole GPU could not be read).",
    _gpu("field", "reason"),
    values=_values(field=READ_ERROR_FIELDS, reason=READ_ERROR_REASONS),
)
ALLOCATION_INFO = MetricSpec(
    "accel_dra_gpu_allocation_info",
    "info",
    "One series per container holding the GPU or one of its MIG devices (through a ResourceClaim or a device "
    "plugin); value 1.",
    _gpu(*ATTRIBUTION_LABELS, *HELD_DEVICE_LABELS),
    group="container",
)
CONTAINER_UTILIZATION = MetricSpec(
    "accel_dra_container_gpu_utilization_ratio",
    "gauge",
    "Fraction of time the device (GPU or MIG device) ran this container's work (see the attribution label for "
    "how it was split).",
    _gpu(*ATTRIBUTION_LABELS, *HELD_DEVICE_LABELS, "attribution"),
    unit="ratio",
    group="container",
    values=_values(attribution=ATTRIBUTION_MODES),
)
CONTAINER_MEMORY = MetricSpec(
    "accel_dra_container_gpu_memory_usage_bytes",
    "gauge",
    "Device memory held by this container's processes (see the attribution label for how it was split).",
    _gpu(*ATTRIBUTION_LABELS, *HELD_DEVICE_LABELS, "attribution"),
    unit="bytes",
    group="container",
    values=_values(attribution=ATTRIBUTION_MODES),
)
EXPORTER_INFO = MetricSpec(
    "accel_dra_exporter_info",
    "info",
    "The exporter's version, device backend and node; value 1.",
    ("version", "backend", "k8s_node_name"),
    group="exporter",
)
EXPORTER_SAMPLES = MetricSpec(
    "accel_dra_exporter_samples_total",
    "counter",
    "Sampling rounds completed.",
    group="exporter",
)
EXPORTER_LAST_SAMPLE = MetricSpec(
    "accel_dra_exporter_last_sample_timestamp_seconds",
    "gauge",
    "Unix time of the sampling round these values come from.",
    unit="seconds",
    group="exporter",
)
EXPORTER_POD_RESOURCES_UP = MetricSpec(
    "accel_dra_exporter_pod_resources_up",
    "gauge",
    "1 when the last kubelet PodResources List succeeded, 0 when it failed (attribution then uses the last "
    "good answer).",
    group="exporter",
)
EXPORTER_ATTRIBUTION_ERRORS = MetricSpec(
    "accel_dra_exporter_attribution_errors_total",
    "counter",
    "Failures of the sources used for attribution.",
    ("source",),
    group="exporter",
    values=_values(source=["pod_resources", "kubernetes", "cgroup", "xid_events"]),
)


def _mig(*extra: str) -> tuple[str, ...]:
    return MIG_IDENTITY_LABELS + extra


ACTIVITY_VALUES = _values(activity=ACTIVITIES)
IO_VALUES = _values(network_io_direction=["receive", "transmit"], interconnect=["pcie", "nvlink"])
GPM_DCGM = (
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE (graphics), _SM_ACTIVE (sm), _SM_OCCUPANCY (sm_occupancy), "
    "_PIPE_TENSOR_ACTIVE (tensor), _DRAM_ACTIVE (dram), _PIPE_FP64_ACTIVE, _PIPE_FP32_ACTIVE, _PIPE_FP16_ACTIVE"
)

MEMORY_COPY_UTILIZATION = MetricSpec(
    "accel_dra_gpu_memory_copy_utilization_ratio",
    "gauge",
    "Fraction of the sampling window device memory was being read or written (memory bandwidth, not capacity).",
    _gpu(),
    unit="ratio",
    otel_style="accel_dra.gpu.memory_copy.utilization",
    ucum="1",
    source="nvmlDeviceGetUtilizationRates (.memory)",
    dcgm="DCGM_FI_DEV_MEM_COPY_UTIL (percent ÷ 100)",
)
ACTIVITY = MetricSpec(
    "accel_dra_gpu_activity_ratio",
    "gauge",
    "GPU Performance Monitoring activity over the last sampling window: graphics/compute engine busy, SMs "
    "busy, warp occupancy, tensor, DRAM bandwidth and FP pipes (GPUs with GPM, Hopper and newer; not in MIG "
    "mode, see accel_dra_mig_activity_ratio).",
    _gpu("activity"),
    unit="ratio",
    values=ACTIVITY_VALUES,
    otel_style="accel_dra.gpu.activity",
    ucum="1",
    source="nvmlGpmSampleGet + nvmlGpmMetricsGet (NVML_GPM_METRIC_GRAPHICS_UTIL, _SM_UTIL, _SM_OCCUPANCY, "
    "_ANY_TENSOR_UTIL, _DRAM_BW_UTIL, _FP64_UTIL, _FP32_UTIL, _FP16_UTIL)",
    dcgm=GPM_DCGM,
)
IO_THROUGHPUT = MetricSpec(
    "accel_dra_gpu_io_throughput_bytes_per_second",
    "gauge",
    "PCIe and NVLink throughput over the last sampling window, as GPU Performance Monitoring measures it "
    "(GPUs with GPM, not in MIG mode).",
    _gpu("network_io_direction", "interconnect"),
    unit="bytes_per_second",
    values=IO_VALUES,
    otel_style="accel_dra.gpu.io.throughput",
    ucum="By/s",
    source="nvmlGpmMetricsGet (NVML_GPM_METRIC_PCIE_RX_PER_SEC, _PCIE_TX_PER_SEC, _NVLINK_TOTAL_RX_PER_SEC, "
    "_NVLINK_TOTAL_TX_PER_SEC; MiB/s * 2^20)",
    dcgm="DCGM_FI_PROF_PCIE_RX_BYTES, _PCIE_TX_BYTES, DCGM_FI_PROF_NVLINK_RX_BYTES, _NVLINK_TX_BYTES",
)
REMAPPED_ROWS = MetricSpec(
    "accel_dra_gpu_memory_remapped_rows",
    "gauge",
    "Memory rows the GPU has remapped to spare rows because of correctable / uncorrectable errors (kept "
    "across reboots; GPUs with a row remapper).",
    _gpu("cause"),
    values=_values(cause=["correctable", "uncorrectable"]),
    otel_style="accel_dra.gpu.memory.remapped_rows",
    ucum="{row}",
    source="nvmlDeviceGetRemappedRows (corrRows, uncRows)",
    dcgm="DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS, DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
)
ROW_REMAP_PENDING = MetricSpec(
    "accel_dra_gpu_memory_row_remap_pending",
    "gauge",
    "1 while a row remap waits for the next GPU reset to take effect, else 0.",
    _gpu(),
    otel_style="accel_dra.gpu.memory.row_remap_pending",
    ucum="1",
    source="nvmlDeviceGetRemappedRows (isPending)",
    dcgm="DCGM_FI_DEV_ROW_REMAP_PENDING",
)
ROW_REMAP_FAILED = MetricSpec(
    "accel_dra_gpu_memory_row_remap_failed",
    "gauge",
    "1 when a row remap failed (the GPU has no spare row left and needs service), else 0.",
    _gpu(),
    otel_style="accel_dra.gpu.memory.row_remap_failed",
    ucum="1",
    source="nvmlDeviceGetRemappedRows (failureOccurred)",
    dcgm="DCGM_FI_DEV_ROW_REMAP_FAILURE",
)
PCIE_REPLAYS = MetricSpec(
    "accel_dra_gpu_pcie_replays_total",
    "counter",
    "PCIe link-level replays (retransmissions) since the driver was loaded.",
    _gpu(),
    otel_style="accel_dra.gpu.pcie.replays",
    ucum="{replay}",
    source="nvmlDeviceGetPcieReplayCounter",
    dcgm="DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
)
CLOCK_EVENTS = MetricSpec(
    "accel_dra_gpu_clock_event_active",
    "gauge",
    "1 for each reason that currently holds the clocks below their maximum (NVML clocks event reasons, "
    "formerly throttle reasons), 0 for the others.",
    _gpu("reason"),
    values=_values(reason=[name for _, name in CLOCK_EVENT_REASONS]),
    otel_style="accel_dra.gpu.clock.event",
    ucum="1",
    source="nvmlDeviceGetCurrentClocksEventReasons (nvmlDeviceGetCurrentClocksThrottleReasons before R535)",
    dcgm="DCGM_FI_DEV_CLOCK_THROTTLE_REASONS (bitmask)",
)
XID_ERRORS = MetricSpec(
    "accel_dra_gpu_xid_errors_total",
    "counter",
    "XID events the driver reported for the GPU or one of its MIG devices since the exporter started, by "
    "XID code.",
    _gpu("xid"),
    otel_style="accel_dra.gpu.xid_errors",
    ucum="{event}",
    source="nvmlEventSetWait (nvmlEventTypeXidCriticalError), the exporter's own event set",
    dcgm="(DCGM_FI_DEV_XID_ERRORS holds the last code only)",
)
LAST_XID = MetricSpec(
    "accel_dra_gpu_last_xid_code",
    "gauge",
    "The code of the last XID event since the exporter started; 0 while none came (present only while XID "
    "events are watched).",
    _gpu(),
    otel_style="accel_dra.gpu.last_xid_code",
    ucum="1",
    source="nvmlEventSetWait (nvmlEventTypeXidCriticalError)",
    dcgm="DCGM_FI_DEV_XID_ERRORS",
)
MIG_INFO = MetricSpec(
    "accel_dra_mig_info",
    "info",
    "Static facts of a MIG device of a MIG-enabled GPU; value 1.",
    _mig("gpu_instance_id", "compute_instance_id", "placement_start", "placement_size", "k8s_node_name"),
    group="mig",
    otel_style="accel_dra.mig.info",
    source="nvmlDeviceGetMigDeviceHandleByIndex, nvmlGpuInstanceGetInfo",
    dcgm="GPU_I_PROFILE, GPU_I_ID labels",
)
MIG_MEMORY_USAGE = MetricSpec(
    "accel_dra_mig_memory_usage_bytes",
    "gauge",
    "Memory in use in a MIG device.",
    _mig(),
    unit="bytes",
    group="mig",
    otel_style="accel_dra.mig.memory.usage",
    ucum="By",
    source="nvmlDeviceGetMemoryInfo (MIG device handle)",
    dcgm="DCGM_FI_DEV_FB_USED with GPU_I_ID (MiB * 2^20)",
)
MIG_MEMORY_LIMIT = MetricSpec(
    "accel_dra_mig_memory_limit_bytes",
    "gauge",
    "Size of a MIG device's memory.",
    _mig(),
    unit="bytes",
    group="mig",
    otel_style="accel_dra.mig.memory.limit",
    ucum="By",
    source="nvmlDeviceGetMemoryInfo (MIG device handle)",
    dcgm="DCGM_FI_DEV_FB_FREE + _FB_USED with GPU_I_ID",
)
MIG_ACTIVITY = MetricSpec(
    "accel_dra_mig_activity_ratio",
    "gauge",
    "GPU Performance Monitoring activity of a MIG device, relative to the device (GPUs with GPM, Hopper and "
    "newer; NVML has no other utilization for MIG devices).",
    _mig("activity"),
    unit="ratio",
    group="mig",
    values=ACTIVITY_VALUES,
    otel_style="accel_dra.mig.activity",
    ucum="1",
    source="nvmlGpmMigSampleGet + nvmlGpmMetricsGet",
    dcgm=GPM_DCGM + " with GPU_I_ID",
)
GPU_ALLOCATED_SECONDS = MetricSpec(
    "accel_dra_gpu_allocated_seconds_total",
    "counter",
    "GPU time held: seconds a device was allocated, times its share of a GPU (1 for a whole GPU, its memory "
    "share for a MIG device or a share of a GPU shared by memory), split evenly among the containers holding "
    "it (a share: among its claim's); counts from the exporter's start.",
    CHARGEBACK_LABELS,
    unit="seconds",
    group="chargeback",
    otel_style="accel_dra.gpu.allocated",
    ucum="s",
    source="PodResources List and the device's share, integrated by the exporter at each sampling round",
)
GPU_USED_SECONDS = MetricSpec(
    "accel_dra_gpu_used_seconds_total",
    "counter",
    "GPU time used: the held share times the utilization attributed to the container, integrated over time "
    "(a shared device's unattributed use is split evenly among its holders); counts from the exporter's start.",
    CHARGEBACK_LABELS,
    unit="seconds",
    group="chargeback",
    otel_style="accel_dra.gpu.used",
    ucum="s",
    source="the container utilization series above, integrated by the exporter at each sampling round",
)

PLUGIN_OPERATIONS = MetricSpec(
    "accel_dra_plugin_requests_total",
    "counter",
    "NodePrepareResources / NodeUnprepareResources calls, by result (a call the kubelet abandoned before its answer counts as an error).",
    ("operation", "result"),
    group="plugin",
    values=_values(operation=["prepare", "unprepare"], result=["success", "error"]),
)
PLUGIN_DURATION = MetricSpec(
    "accel_dra_plugin_request_duration_seconds",
    "histogram",
    "Time to answer a NodePrepareResources / NodeUnprepareResources call.",
    ("operation",),
    unit="seconds",
    group="plugin",
    values=_values(operation=["prepare", "unprepare"]),
)
PLUGIN_IN_FLIGHT = MetricSpec(
    "accel_dra_plugin_requests_in_flight",
    "gauge",
    "Calls being answered now.",
    ("operation",),
    group="plugin",
    values=_values(operation=["prepare", "unprepare"]),
)
PLUGIN_PREPARED_DEVICES = MetricSpec(
    "accel_dra_plugin_prepared_devices",
    "gauge",
    "Devices currently prepared for claims on this node.",
    group="plugin",
)
PLUGIN_SLICE_WRITES = MetricSpec(
    "accel_dra_plugin_slice_writes_total",
    "counter",
    "ResourceSlice writes to the API server.",
    ("verb",),
    group="plugin",
    values=_values(verb=["create", "update", "delete"]),
)
PLUGIN_API_ERRORS = MetricSpec(
    "accel_dra_plugin_api_errors_total",
    "counter",
    "Failed API server calls (slice publishing, claim reads), by HTTP status, malformed answer or error class.",
    ("kind",),
    group="plugin",
)
PLUGIN_INFO = MetricSpec(
    "accel_dra_plugin_info",
    "info",
    "The plugin's version and driver name; value 1.",
    ("version", "dra_driver"),
    group="plugin",
)

GPU_METRICS: tuple[MetricSpec, ...] = (
    GPU_UTILIZATION,
    GPU_MEMORY_USAGE,
    GPU_MEMORY_LIMIT,
    GPU_MEMORY_UTILIZATION,
    GPU_IO,
    POWER,
    ENERGY,
    TEMPERATURE,
    ERRORS,
    STATUS,
    CLOCK,
    GPU_INFO,
    MEMORY_USED_ALIAS,
    READ_ERRORS,
)
#: Health and activity readings beyond the OpenTelemetry convention (docs/metrics.md, "Health and activity").
HEALTH_METRICS: tuple[MetricSpec, ...] = (
    MEMORY_COPY_UTILIZATION,
    ACTIVITY,
    IO_THROUGHPUT,
    REMAPPED_ROWS,
    ROW_REMAP_PENDING,
    ROW_REMAP_FAILED,
    PCIE_REPLAYS,
    CLOCK_EVENTS,
    XID_ERRORS,
    LAST_XID,
)
MIG_METRICS: tuple[MetricSpec, ...] = (MIG_INFO, MIG_MEMORY_USAGE, MIG_MEMORY_LIMIT, MIG_ACTIVITY)
CONTAINER_METRICS: tuple[MetricSpec, ...] = (ALLOCATION_INFO, CONTAINER_UTILIZATION, CONTAINER_MEMORY)
CHARGEBACK_METRICS: tuple[MetricSpec, ...] = (GPU_ALLOCATED_SECONDS, GPU_USED_SECONDS)
EXPORTER_METRICS: tuple[MetricSpec, ...] = (
    EXPORTER_INFO,
    EXPORTER_SAMPLES,
    EXPORTER_LAST_SAMPLE,
    EXPORTER_POD_RESOURCES_UP,
    EXPORTER_ATTRIBUTION_ERRORS,
)
#: Everything ``accel-dra exporter`` serves.
EXPORTER_ALL: tuple[MetricSpec, ...] = (
    GPU_METRICS + HEALTH_METRICS + MIG_METRICS + CONTAINER_METRICS + CHARGEBACK_METRICS + EXPORTER_METRICS
)
#: Everything the kubelet plugin serves on its metrics port.
PLUGIN_METRICS: tuple[MetricSpec, ...] = (
    PLUGIN_OPERATIONS,
    PLUGIN_DURATION,
    PLUGIN_IN_FLIGHT,
    PLUGIN_PREPARED_DEVICES,
    PLUGIN_SLICE_WRITES,
    PLUGIN_API_ERRORS,
    PLUGIN_INFO,
)

#: What to pass to the upstream AI-conformance test (``-metrics-utilization-metric`` /
#: ``-metrics-memory-metric``).
CONFORMANCE_UTILIZATION_METRIC = GPU_UTILIZATION.name
CONFORMANCE_MEMORY_METRIC = GPU_MEMORY_USAGE.name


def by_name(specs: Iterable[MetricSpec] = EXPORTER_ALL + PLUGIN_METRICS) -> dict[str, MetricSpec]:
    """Spec entries by exposed name (``hw_energy_joules_total``, ``accel_dra_gpu_info``)."""
    return {spec.name: spec for spec in specs}


# -- documentation ------------------------------------------------------------------------------------


def _labels_cell(spec: MetricSpec) -> str:
    parts: list[str] = []
    rest = list(spec.labels)
    if spec.labels[: len(MIG_IDENTITY_LABELS)] == MIG_IDENTITY_LABELS:
        parts.append("*MIG identity*")
        rest = rest[len(MIG_IDENTITY_LABELS) :]
    elif spec.labels[: len(IDENTITY_LABELS)] == IDENTITY_LABELS:
        parts.append("*identity*")
        rest = rest[len(IDENTITY_LABELS) :]
    if tuple(rest[: len(ATTRIBUTION_LABELS)]) == ATTRIBUTION_LABELS:
        parts.append("*attribution*")
        rest = rest[len(ATTRIBUTION_LABELS) :]
    for label in rest:
        values = spec.values.get(label)
        parts.append(f"`{label}`" + (f" ({', '.join(values)})" if values else ""))
    return ", ".join(parts) or "—"


def _otel_cell(spec: MetricSpec) -> str:
    if spec.otel:
        return f"`{spec.otel}`"
    if spec.otel_style:
        return f"`{spec.otel_style}`" + (f" ({spec.ucum})" if spec.ucum else "") + " *OTel-style*"
    return "—"


def spec_table(specs: Sequence[MetricSpec], *, sources: bool = True, calls: bool = False) -> str:
    """A Markdown table of the given families (``calls``: with the NVML call each comes from)."""
    head = ["Name", "Type", "Unit", "Labels", "Meaning"]
    head += ["OpenTelemetry"] if sources else []
    head += ["Source"] if calls else []
    head += ["dcgm-exporter"] if sources else []
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for spec in specs:
        cells = [f"`{spec.name}`", spec.type, spec.unit or "—", _labels_cell(spec), spec.help]
        cells += [_otel_cell(spec)] if sources else []
        cells += [spec.source or "—"] if calls else []
        cells += [spec.dcgm or "—"] if sources else []
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def generated_blocks() -> dict[str, str]:
    """Marker name -> generated Markdown, for the ``<!-- BEGIN GENERATED: name -->`` blocks of the docs."""
    from driver.exporter import dcgm  # the docs only; the exporter and the plugin never load it

    return {
        "gpu-metrics": spec_table(GPU_METRICS),
        "health-metrics": spec_table(HEALTH_METRICS, calls=True),
        "mig-metrics": spec_table(MIG_METRICS, calls=True),
        "container-metrics": spec_table(CONTAINER_METRICS, sources=False),
        "chargeback-metrics": spec_table(CHARGEBACK_METRICS, sources=False),
        "dcgm-migration": dcgm.doc_table(),
        "exporter-metrics": spec_table(EXPORTER_METRICS, sources=False),
        "plugin-metrics": spec_table(PLUGIN_METRICS, sources=False),
    }


def _block_re(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN GENERATED: {re.escape(name)} -->\n)(.*?)(<!-- END GENERATED: {re.escape(name)} -->)",
        re.DOTALL,
    )


def _replacement(body: str) -> Callable[[re.Match[str]], str]:
    return lambda match: match.group(1) + body + "\n" + match.group(3)


def update_document(text: str) -> str:
    """``text`` with every generated block replaced by the current spec; raises when a marker is missing."""
    for name, body in generated_blocks().items():
        pattern = _block_re(name)
        if not pattern.search(text):
            raise ValueError(
                f"no '<!-- BEGIN GENERATED: {name} -->' ... '<!-- END GENERATED: {name} -->' block"
            )
        text = pattern.sub(_replacement(body), text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check or rewrite the generated metric tables of a doc.")
    parser.add_argument("document", help="Markdown file with GENERATED blocks, e.g. docs/metrics.md")
    parser.add_argument("--write", action="store_true", help="rewrite the file instead of checking it")
    args = parser.parse_args(argv)
    path = Path(args.document)
    current = path.read_text(encoding="utf-8")
    updated = update_document(current)
    if args.write:
        path.write_text(updated, encoding="utf-8")
        return 0
    if updated != current:
        print(f"{path}: generated metric tables are stale; run with --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
