"""dcgm-exporter compatibility: recording rules that produce dcgm-exporter's series from this exporter's.

An operator replacing dcgm-exporter keeps their dashboards and alerts: Prometheus evaluates these rules
and stores ``DCGM_FI_*`` series with dcgm-exporter's names, labels and units, computed from the ``hw_*`` and
``accel_dra_*`` series. The rules are data (:data:`FIELDS`); ``charts/accel-dra/rules/`` holds the rule files
generated from them (``python -m driver.exporter.dcgm --write``; a test fails when they are stale), which
the chart ships as a PrometheusRule, and docs/metrics.md the table.

What dcgm-exporter's series look like, and what the rules reproduce:

- one series per *entity*: a GPU, or on a MIG-enabled GPU each GPU instance (dcgm-exporter's default
  device selection), with the labels ``gpu`` (NVML index), ``UUID`` (the GPU's), ``pci_bus_id`` (NVML's
  ``00000000:1B:00.0``), ``device`` (``nvidia<index>``), ``modelName``, ``Hostname`` (the node),
  ``DCGM_FI_DRIVER_VERSION`` and, for a GPU instance, ``GPU_I_PROFILE`` and ``GPU_I_ID``; device-wide
  readings (temperature, power, clocks, errors) carry the GPU's value on each of its instances;
- units: percent for utilization, MiB for memory, MHz for clocks, mJ for energy, ratios for profiling;
- with Kubernetes attribution: ``namespace``, ``pod``, ``container`` of the container holding the entity
  and, for DRA claims, ``dra_claim_name``, ``dra_claim_namespace``, ``dra_driver_name``, ``dra_pool_name``,
  ``dra_device_name``. A device held by several containers gets one series per container, as with
  dcgm-exporter's ``--kubernetes-virtual-gpus`` (without it dcgm-exporter keeps one arbitrary pod).

Two helper rules build the entity labels once per evaluation (``accel_dra:dcgm_entity:info``) and join the
holders (``accel_dra:dcgm_series:info``); every field then multiplies that with its value.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from driver.devices.telemetry import CLOCK_EVENT_REASONS

Scope = Literal["gpu", "entity"]

ENTITY_INFO = "accel_dra:dcgm_entity:info"
SERIES_INFO = "accel_dra:dcgm_series:info"
#: dcgm-exporter's identity labels, in the order it writes them.
DCGM_LABELS = (
    "gpu",
    "UUID",
    "pci_bus_id",
    "device",
    "modelName",
    "Hostname",
    "DCGM_FI_DRIVER_VERSION",
    "GPU_I_PROFILE",
    "GPU_I_ID",
)
#: Our attribution label -> dcgm-exporter's DRA attribute.
DRA_LABELS = (
    ("resource_claim", "dra_claim_name"),
    ("resource_claim_namespace", "dra_claim_namespace"),
    ("dra_driver", "dra_driver_name"),
    ("dra_pool", "dra_pool_name"),
    ("dra_device", "dra_device_name"),
)
POD_LABELS = ("namespace", "pod", "container")
MiB = 1 << 20


@dataclass(frozen=True)
class Field:
    """One dcgm-exporter series and how it is computed."""

    name: str
    #: How dcgm-exporter declares it (its counters CSV).
    type: Literal["gauge", "counter"]
    #: dcgm-exporter's unit.
    unit: str
    #: A PromQL expression with one series per GPU (``scope="gpu"``: device-wide, repeated on every GPU
    #: instance of a MIG-enabled GPU) or per GPU and MIG device (``scope="entity"``).
    expr: str
    scope: Scope
    #: The series it comes from, for the docs.
    source: str
    #: In dcgm-exporter's default counters (``etc/default-counters.csv``); otherwise an opt-in field.
    default: bool = True
    note: str = ""


def _bits() -> str:
    terms = [
        f'sum by (uuid) (accel_dra_gpu_clock_event_active{{reason="{reason}"}}) * {bit}'
        for bit, reason in CLOCK_EVENT_REASONS
    ]
    return "\n  + ".join(terms)


def _activity(name: str) -> str:
    return f'accel_dra_gpu_activity_ratio{{activity="{name}"}} or accel_dra_mig_activity_ratio{{activity="{name}"}}'


FIELDS: tuple[Field, ...] = (
    Field(
        "DCGM_FI_DEV_SM_CLOCK",
        "gauge",
        "MHz",
        'accel_dra_gpu_clock_hertz{clock="sm"} / 1e6',
        "gpu",
        'accel_dra_gpu_clock_hertz{clock="sm"} ÷ 10^6',
    ),
    Field(
        "DCGM_FI_DEV_MEM_CLOCK",
        "gauge",
        "MHz",
        'accel_dra_gpu_clock_hertz{clock="memory"} / 1e6',
        "gpu",
        'accel_dra_gpu_clock_hertz{clock="memory"} ÷ 10^6',
    ),
    Field(
        "DCGM_FI_DEV_MEMORY_TEMP",
        "gauge",
        "°C",
        'hw_temperature_celsius{hw_type="gpu", hw_sensor_location="memory"}',
        "gpu",
        'hw_temperature_celsius{hw_sensor_location="memory"}',
        note="absent on GDDR boards, as with dcgm-exporter",
    ),
    Field(
        "DCGM_FI_DEV_GPU_TEMP",
        "gauge",
        "°C",
        'hw_temperature_celsius{hw_type="gpu", hw_sensor_location="gpu"}',
        "gpu",
        'hw_temperature_celsius{hw_sensor_location="gpu"}',
    ),
    Field("DCGM_FI_DEV_POWER_USAGE", "gauge", "W", 'hw_power_watts{hw_type="gpu"}', "gpu", "hw_power_watts"),
    Field(
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "counter",
        "mJ",
        'round(hw_energy_joules_total{hw_type="gpu"} * 1000)',
        "gpu",
        "hw_energy_joules_total * 1000",
    ),
    Field(
        "DCGM_FI_DEV_PCIE_TX_THROUGHPUT",
        "counter",
        "KB/s",
        'rate(hw_gpu_io_bytes_total{interconnect="pcie", network_io_direction="transmit"}[1m]) / 1000',
        "gpu",
        'rate(hw_gpu_io_bytes_total{interconnect="pcie",network_io_direction="transmit"}[1m]) ÷ 1000',
        note="DCGM's value is NVML's PCIe throughput in KB/s (dcgm-exporter declares it a counter); here the "
        "mean over the last minute",
    ),
    Field(
        "DCGM_FI_DEV_PCIE_RX_THROUGHPUT",
        "counter",
        "KB/s",
        'rate(hw_gpu_io_bytes_total{interconnect="pcie", network_io_direction="receive"}[1m]) / 1000',
        "gpu",
        'rate(hw_gpu_io_bytes_total{interconnect="pcie",network_io_direction="receive"}[1m]) ÷ 1000',
        note="as DCGM_FI_DEV_PCIE_TX_THROUGHPUT",
    ),
    Field(
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "counter",
        "count",
        "accel_dra_gpu_pcie_replays_total",
        "gpu",
        "accel_dra_gpu_pcie_replays_total",
    ),
    Field(
        "DCGM_FI_DEV_GPU_UTIL",
        "gauge",
        "%",
        'round(hw_gpu_utilization_ratio{hw_gpu_task="general"} * 100)',
        "gpu",
        'hw_gpu_utilization_ratio{hw_gpu_task="general"} * 100',
        note="absent on MIG-enabled GPUs: NVML has no utilization there (dcgm-exporter shows none either)",
    ),
    Field(
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "gauge",
        "%",
        "round(accel_dra_gpu_memory_copy_utilization_ratio * 100)",
        "gpu",
        "accel_dra_gpu_memory_copy_utilization_ratio * 100",
    ),
    Field(
        "DCGM_FI_DEV_ENC_UTIL",
        "gauge",
        "%",
        'round(hw_gpu_utilization_ratio{hw_gpu_task="encoder"} * 100)',
        "gpu",
        'hw_gpu_utilization_ratio{hw_gpu_task="encoder"} * 100',
    ),
    Field(
        "DCGM_FI_DEV_DEC_UTIL",
        "gauge",
        "%",
        'round(hw_gpu_utilization_ratio{hw_gpu_task="decoder"} * 100)',
        "gpu",
        'hw_gpu_utilization_ratio{hw_gpu_task="decoder"} * 100',
    ),
    Field(
        "DCGM_FI_DEV_XID_ERRORS",
        "gauge",
        "XID code",
        "accel_dra_gpu_last_xid_code",
        "gpu",
        "accel_dra_gpu_last_xid_code",
        note="the value; the err_code/err_msg labels of newer dcgm-exporter versions are not produced (use "
        "accel_dra_gpu_xid_errors_total{xid})",
    ),
    Field(
        "DCGM_FI_DEV_FB_FREE",
        "gauge",
        "MiB",
        f"floor((hw_gpu_memory_limit_bytes - hw_gpu_memory_usage_bytes) / {MiB})\n"
        f"  or floor((accel_dra_mig_memory_limit_bytes - accel_dra_mig_memory_usage_bytes) / {MiB})",
        "entity",
        "(limit - usage) ÷ 2^20, per GPU or MIG device",
    ),
    Field(
        "DCGM_FI_DEV_FB_USED",
        "gauge",
        "MiB",
        f"floor(hw_gpu_memory_usage_bytes / {MiB}) or floor(accel_dra_mig_memory_usage_bytes / {MiB})",
        "entity",
        "hw_gpu_memory_usage_bytes or accel_dra_mig_memory_usage_bytes ÷ 2^20",
    ),
    Field(
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "counter",
        "rows",
        'accel_dra_gpu_memory_remapped_rows{cause="uncorrectable"}',
        "gpu",
        'accel_dra_gpu_memory_remapped_rows{cause="uncorrectable"}',
    ),
    Field(
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "counter",
        "rows",
        'accel_dra_gpu_memory_remapped_rows{cause="correctable"}',
        "gpu",
        'accel_dra_gpu_memory_remapped_rows{cause="correctable"}',
    ),
    Field(
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "gauge",
        "0/1",
        "accel_dra_gpu_memory_row_remap_failed",
        "gpu",
        "accel_dra_gpu_memory_row_remap_failed",
    ),
    Field(
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "gauge",
        "ratio",
        _activity("graphics"),
        "entity",
        'accel_dra_gpu_activity_ratio{activity="graphics"}, per MIG device accel_dra_mig_activity_ratio',
        note="needs GPM (Hopper and newer); DCGM also profiles older GPUs, which have no NVML source",
    ),
    Field(
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "gauge",
        "ratio",
        _activity("tensor"),
        "entity",
        'activity="tensor" (GPM any tensor pipe; DCGM counts the HMMA pipe)',
        note="needs GPM",
    ),
    Field(
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "gauge",
        "ratio",
        _activity("dram"),
        "entity",
        'activity="dram"',
        note="needs GPM",
    ),
    Field(
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "gauge",
        "bytes/s",
        'accel_dra_gpu_io_throughput_bytes_per_second{interconnect="pcie", network_io_direction="transmit"}',
        "gpu",
        'accel_dra_gpu_io_throughput_bytes_per_second{interconnect="pcie",network_io_direction="transmit"}',
        note="needs GPM; not per GPU instance",
    ),
    Field(
        "DCGM_FI_PROF_PCIE_RX_BYTES",
        "gauge",
        "bytes/s",
        'accel_dra_gpu_io_throughput_bytes_per_second{interconnect="pcie", network_io_direction="receive"}',
        "gpu",
        'accel_dra_gpu_io_throughput_bytes_per_second{interconnect="pcie",network_io_direction="receive"}',
        note="needs GPM; not per GPU instance",
    ),
    Field(
        "DCGM_FI_PROF_SM_ACTIVE",
        "gauge",
        "ratio",
        _activity("sm"),
        "entity",
        'activity="sm"',
        default=False,
        note="needs GPM",
    ),
    Field(
        "DCGM_FI_PROF_SM_OCCUPANCY",
        "gauge",
        "ratio",
        _activity("sm_occupancy"),
        "entity",
        'activity="sm_occupancy"',
        default=False,
        note="needs GPM",
    ),
    Field(
        "DCGM_FI_PROF_PIPE_FP64_ACTIVE",
        "gauge",
        "ratio",
        _activity("fp64"),
        "entity",
        'activity="fp64"',
        default=False,
        note="needs GPM",
    ),
    Field(
        "DCGM_FI_PROF_PIPE_FP32_ACTIVE",
        "gauge",
        "ratio",
        _activity("fp32"),
        "entity",
        'activity="fp32"',
        default=False,
        note="needs GPM",
    ),
    Field(
        "DCGM_FI_PROF_PIPE_FP16_ACTIVE",
        "gauge",
        "ratio",
        _activity("fp16"),
        "entity",
        'activity="fp16"',
        default=False,
        note="needs GPM",
    ),
    Field(
        "DCGM_FI_PROF_NVLINK_TX_BYTES",
        "gauge",
        "bytes/s",
        'accel_dra_gpu_io_throughput_bytes_per_second{interconnect="nvlink", network_io_direction="transmit"}',
        "gpu",
        'accel_dra_gpu_io_throughput_bytes_per_second{interconnect="nvlink",network_io_direction="transmit"}',
        default=False,
        note="needs GPM; GPUs with NVLink",
    ),
    Field(
        "DCGM_FI_PROF_NVLINK_RX_BYTES",
        "gauge",
        "bytes/s",
        'accel_dra_gpu_io_throughput_bytes_per_second{interconnect="nvlink", network_io_direction="receive"}',
        "gpu",
        'accel_dra_gpu_io_throughput_bytes_per_second{interconnect="nvlink",network_io_direction="receive"}',
        default=False,
        note="needs GPM; GPUs with NVLink",
    ),
    Field(
        "DCGM_FI_DEV_FB_TOTAL",
        "gauge",
        "MiB",
        f"floor(hw_gpu_memory_limit_bytes / {MiB}) or floor(accel_dra_mig_memory_limit_bytes / {MiB})",
        "entity",
        "hw_gpu_memory_limit_bytes or accel_dra_mig_memory_limit_bytes ÷ 2^20",
        default=False,
    ),
    Field(
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        "counter",
        "count",
        'hw_errors_total{hw_type="gpu", error_type="corrected"}',
        "gpu",
        'hw_errors_total{error_type="corrected"}',
        default=False,
    ),
    Field(
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "counter",
        "count",
        'hw_errors_total{hw_type="gpu", error_type="uncorrected"}',
        "gpu",
        'hw_errors_total{error_type="uncorrected"}',
        default=False,
    ),
    Field(
        "DCGM_FI_DEV_ROW_REMAP_PENDING",
        "gauge",
        "0/1",
        "accel_dra_gpu_memory_row_remap_pending",
        "gpu",
        "accel_dra_gpu_memory_row_remap_pending",
        default=False,
    ),
    Field(
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
        "gauge",
        "bitmask",
        _bits(),
        "gpu",
        "accel_dra_gpu_clock_event_active, one bit per reason",
        default=False,
    ),
)

#: dcgm-exporter default fields with no source here, and why (docs/metrics.md).
UNSOURCED: tuple[tuple[str, str], ...] = (
    (
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
        "DCGM's own NVLink bandwidth counter, in DCGM's units; use "
        'rate(hw_gpu_io_bytes_total{interconnect="nvlink"}[5m]) or DCGM_FI_PROF_NVLINK_*_BYTES',
    ),
    ("DCGM_FI_DEV_VGPU_LICENSE_STATUS", "vGPU licensing: not applicable to GPUs passed to Kubernetes whole"),
)


def _label_replace(expr: str, target: str, source: str, replacement: str = "$1", regex: str = "(.*)") -> str:
    return f'label_replace({expr}, "{target}", "{replacement}", "{source}", "{regex}")'


def entity_info_expr() -> str:
    """One series per dcgm entity (a GPU, or a GPU instance of a MIG-enabled GPU) with dcgm's labels."""
    expr = (
        '\n      accel_dra_gpu_info{mig_mode!="enabled"}\n    or\n'
        "      accel_dra_mig_info * on (uuid) group_left (nvml_index, nvml_pci_bus_id, hw_driver_version)\n"
        "        accel_dra_gpu_info\n  "
    )
    for target, source, replacement, regex in (
        ("gpu", "nvml_index", "$1", "(.*)"),
        ("UUID", "uuid", "$1", "(.*)"),
        ("pci_bus_id", "nvml_pci_bus_id", "$1", "(.*)"),
        ("device", "nvml_index", "nvidia$1", "(.+)"),
        ("modelName", "hw_model", "$1", "(.*)"),
        ("Hostname", "k8s_node_name", "$1", "(.*)"),
        ("DCGM_FI_DRIVER_VERSION", "hw_driver_version", "$1", "(.*)"),
        ("GPU_I_PROFILE", "mig_profile", "$1", "(.*)"),
        ("GPU_I_ID", "gpu_instance_id", "$1", "(.*)"),
    ):
        expr = _label_replace(expr, target, source, replacement, regex)
    ours = (
        "hw_id, hw_model, hw_vendor, hw_type, hw_driver_version, cuda_driver_version, architecture, "
        "compute_capability, mig_mode, k8s_node_name, nvml_index, nvml_pci_bus_id, hw_parent, mig_profile, "
        "gpu_instance_id, compute_instance_id, placement_start, placement_size"
    )
    return f"max without ({ours}) (\n  {expr}\n)"


def series_info_expr(pod_label_prefix: str = "") -> str:
    """The entities, once per container holding them (with pod and DRA labels), or once when unheld."""
    held = (
        f"\n        {ENTITY_INFO}\n      * on (uuid, mig_uuid) group_right ({', '.join(DCGM_LABELS)})\n"
        "        accel_dra_gpu_allocation_info\n    "
    )
    for ours, theirs in DRA_LABELS:
        held = _label_replace(held, theirs, ours)
    drop = ["hw_id", "hw_model", "hw_vendor", "mig_profile", *(ours for ours, _ in DRA_LABELS)]
    if pod_label_prefix:
        for label in POD_LABELS:
            held = _label_replace(held, pod_label_prefix + label, label)
        drop += POD_LABELS
    return f"  max without ({', '.join(drop)}) (\n    {held}\n  )\nor on (uuid, mig_uuid)\n  {ENTITY_INFO}"


def field_expr(field: Field) -> str:
    on = "uuid" if field.scope == "gpu" else "uuid, mig_uuid"
    value = field.expr.replace("\n", "\n      ")
    return f"max without (uuid, mig_uuid) (\n    {SERIES_INFO}\n  * on ({on}) group_left ()\n    (\n      {value}\n    )\n)"


def rule_groups(pod_label_prefix: str = "") -> dict[str, object]:
    """The rule file (``groups:``): helpers first, so every field sees this evaluation's entities."""
    rules: list[dict[str, str]] = [
        {"record": ENTITY_INFO, "expr": entity_info_expr()},
        {"record": SERIES_INFO, "expr": series_info_expr(pod_label_prefix)},
    ]
    rules += [{"record": field.name, "expr": field_expr(field)} for field in FIELDS]
    return {"groups": [{"name": "accel-dra-dcgm-compatibility", "rules": rules}]}


class _Literal(str):
    """A string YAML writes as a literal block (PromQL keeps its line breaks)."""


def _dump(data: object) -> str:
    # PyYAML only here: the exporter imports this module (names.py, for the docs table) and must not load it.
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def literal(dumper: yaml.SafeDumper, text: _Literal) -> Any:
        return dumper.represent_scalar("tag:yaml.org,2002:str", str(text), style="|")

    Dumper.add_representer(_Literal, literal)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, width=120)


HEADER = (
    "# Generated by `python -m driver.exporter.dcgm --write` from driver/exporter/dcgm.py; do not edit.\n"
    "# Recording rules that produce dcgm-exporter's series (names, labels, units) from accel-dra's\n"
    '# (docs/metrics.md, "Migrating from dcgm-exporter").{variant}\n'
)


def rule_file(pod_label_prefix: str = "") -> str:
    data = rule_groups(pod_label_prefix)
    for group in data["groups"]:  # type: ignore[attr-defined]
        for rule in group["rules"]:
            rule["expr"] = _Literal(rule["expr"])
    variant = (
        f"\n# Variant: pod labels named {pod_label_prefix}namespace, {pod_label_prefix}pod, "
        f"{pod_label_prefix}container (dcgm-exporter scraped without honorLabels)."
        if pod_label_prefix
        else ""
    )
    body = _dump(data)
    return HEADER.format(variant=variant) + body


#: Generated rule files, relative to the repository root: (path, pod label prefix).
RULE_FILES = (
    ("charts/accel-dra/rules/dcgm-compatibility.yaml", ""),
    ("charts/accel-dra/rules/dcgm-compatibility-exported-labels.yaml", "exported_"),
)


def doc_table() -> str:
    """docs/metrics.md: every dcgm-exporter field, where it comes from, and the ones with no source."""
    rows = [
        "| dcgm-exporter | Type | Unit | In its default set | From accel-dra | Per GPU instance (MIG) | Notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in FIELDS:
        per_instance = "own value" if f.scope == "entity" else "the GPU's value"
        rows.append(
            f"| `{f.name}` | {f.type} | {f.unit} | {'yes' if f.default else 'no'} | `{f.source}` | "
            f"{per_instance} | {f.note or '—'} |"
        )
    for name, why in UNSOURCED:
        rows.append(f"| `{name}` | — | — | yes | *no source here* | — | {why} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check or rewrite the dcgm-exporter compatibility rule files."
    )
    parser.add_argument("--root", default=".", help="repository root (default: the current directory)")
    parser.add_argument("--write", action="store_true", help="rewrite the files instead of checking them")
    args = parser.parse_args(argv)
    stale = []
    for relative, prefix in RULE_FILES:
        path = Path(args.root) / relative
        wanted = rule_file(prefix)
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(wanted, encoding="utf-8")
        elif not path.exists() or path.read_text(encoding="utf-8") != wanted:
            stale.append(relative)
    if stale:
        print(f"stale: {', '.join(stale)}; run: python -m driver.exporter.dcgm --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
