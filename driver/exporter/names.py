"""The metric spec, as data: every series the exporter and the kubelet plugin expose.

One :class:`MetricSpec` per family gives its exposed name, type, unit, help, label names, the values of its
enumerated labels, and where it comes from (OpenTelemetry ``hw.*`` instrument, dcgm-exporter field). The
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

from driver.devices.telemetry import FIELDS

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

Group = Literal["gpu", "container", "exporter", "plugin"]


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
    ),
    values=_values(hw_type=["gpu"], mig_mode=["enabled", "disabled", "unsupported"]),
    dcgm="DCGM_FI_DRIVER_VERSION and modelName labels",
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
    "One series per container holding the GPU (through a ResourceClaim or a device plugin); value 1.",
    _gpu(*ATTRIBUTION_LABELS),
    group="container",
)
CONTAINER_UTILIZATION = MetricSpec(
    "accel_dra_container_gpu_utilization_ratio",
    "gauge",
    "Fraction of time the GPU ran this container's work (see the attribution label for how it was split).",
    _gpu(*ATTRIBUTION_LABELS, "attribution"),
    unit="ratio",
    group="container",
    values=_values(attribution=ATTRIBUTION_MODES),
)
CONTAINER_MEMORY = MetricSpec(
    "accel_dra_container_gpu_memory_usage_bytes",
    "gauge",
    "GPU memory held by this container's processes (see the attribution label for how it was split).",
    _gpu(*ATTRIBUTION_LABELS, "attribution"),
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
    values=_values(source=["pod_resources", "kubernetes", "cgroup"]),
)

PLUGIN_OPERATIONS = MetricSpec(
    "accel_dra_plugin_requests_total",
    "counter",
    "NodePrepareResources / NodeUnprepareResources calls answered, by result.",
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
    "Failed API server calls, by HTTP status or error class.",
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
CONTAINER_METRICS: tuple[MetricSpec, ...] = (ALLOCATION_INFO, CONTAINER_UTILIZATION, CONTAINER_MEMORY)
EXPORTER_METRICS: tuple[MetricSpec, ...] = (
    EXPORTER_INFO,
    EXPORTER_SAMPLES,
    EXPORTER_LAST_SAMPLE,
    EXPORTER_POD_RESOURCES_UP,
    EXPORTER_ATTRIBUTION_ERRORS,
)
#: Everything ``accel-dra exporter`` serves.
EXPORTER_ALL: tuple[MetricSpec, ...] = GPU_METRICS + CONTAINER_METRICS + EXPORTER_METRICS
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
    if spec.labels[: len(IDENTITY_LABELS)] == IDENTITY_LABELS:
        parts.append("*identity*")
        rest = rest[len(IDENTITY_LABELS) :]
    if tuple(rest[: len(ATTRIBUTION_LABELS)]) == ATTRIBUTION_LABELS:
        parts.append("*attribution*")
        rest = rest[len(ATTRIBUTION_LABELS) :]
    for label in rest:
        values = spec.values.get(label)
        parts.append(f"`{label}`" + (f" ({', '.join(values)})" if values else ""))
    return ", ".join(parts) or "—"


def spec_table(specs: Sequence[MetricSpec], *, sources: bool = True) -> str:
    """A Markdown table of the given families."""
    head = ["Name", "Type", "Unit", "Labels", "Meaning"] + (
        ["OpenTelemetry", "dcgm-exporter"] if sources else []
    )
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for spec in specs:
        cells = [f"`{spec.name}`", spec.type, spec.unit or "—", _labels_cell(spec), spec.help]
        if sources:
            cells += [f"`{spec.otel}`" if spec.otel else "—", spec.dcgm or "—"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def generated_blocks() -> dict[str, str]:
    """Marker name -> generated Markdown, for the ``<!-- BEGIN GENERATED: name -->`` blocks of the docs."""
    return {
        "gpu-metrics": spec_table(GPU_METRICS),
        "container-metrics": spec_table(CONTAINER_METRICS, sources=False),
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
