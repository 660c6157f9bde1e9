"""A :class:`~driver.exporter.collector.Snapshot` as Prometheus text or OpenMetrics (names from ``names.py``).

The encoder is our own rather than prometheus_client's generic one: the families and labels are fixed by the
spec, so each sample is one formatted line, about ten times faster than the generic path. That keeps an
uncached scrape of eight GPUs with attribution well under the 5 ms target (a new snapshot arrives every
interval, so most scrapes are uncached). Content negotiation is prometheus_client's; tests parse the output
with prometheus_client's parsers, ``promtool`` and a real Prometheus. Rendered bodies are cached per
snapshot and format.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.exposition import choose_encoder

from driver.devices.model import Gpu, MigDevice, mig_device_name, nvml_pci_bus_id
from driver.devices.telemetry import CLOCK_EVENT_REASONS, GpuTelemetry, MigTelemetry
from driver.exporter import names as n
from driver.exporter.collector import GpuSnapshot, Snapshot

GPU_VENDOR = "NVIDIA"
OPENMETRICS = "application/openmetrics-text"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


@functools.lru_cache(maxsize=16384)
def _label_block(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """``{name="value",...}``; cached: the same label sets come back in every snapshot, and formatting them
    was most of a render's time."""
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)) + "}"


class Family:
    """One family's samples as pre-formatted ``{labels} value`` strings, in the spec's label order."""

    def __init__(self, spec: n.MetricSpec) -> None:
        self.spec = spec
        self.samples: list[tuple[str, float]] = []

    def add(self, labels: Mapping[str, str | None], value: float) -> None:
        names = self.spec.labels
        self.samples.append((_label_block(names, tuple(labels.get(name) or "" for name in names)), value))

    def add_row(self, values: tuple[str, ...], value: float) -> None:
        self.samples.append((_label_block(self.spec.labels, values), value))

    def encode(self, openmetrics: bool) -> Iterator[str]:
        spec = self.spec
        exposed = spec.family if openmetrics else spec.name
        kind = spec.type if openmetrics or spec.type != "info" else "gauge"
        help_text = spec.help.replace("\\", "\\\\").replace("\n", "\\n")
        if openmetrics:
            help_text = help_text.replace('"', '\\"')
        yield f"# HELP {exposed} {help_text}\n# TYPE {exposed} {kind}\n"
        if openmetrics and spec.unit:
            yield f"# UNIT {exposed} {spec.unit}\n"
        for labels, value in self.samples:
            yield f"{spec.name}{labels} {_number(value)}\n"


class Families:
    """Families being filled, in spec order; label values are given by name and checked against the spec."""

    def __init__(self, specs: Iterable[n.MetricSpec]) -> None:
        self._families = {spec.name: Family(spec) for spec in specs}
        self._allowed = {name: frozenset(f.spec.labels) for name, f in self._families.items()}

    def add(self, spec: n.MetricSpec, value: float | None, labels: Mapping[str, str | None]) -> None:
        if value is None:
            return
        if not self._allowed[spec.name].issuperset(labels):
            unknown = set(labels) - set(spec.labels)
            raise ValueError(f"{spec.name}: labels {sorted(unknown)} are not in the spec")
        self._families[spec.name].add(labels, float(value))

    def row(self, spec: n.MetricSpec, value: float | None, values: tuple[str, ...]) -> None:
        """A sample given by its label values in the spec's order (the fast path of the per-GPU series)."""
        if value is None:
            return
        if len(values) != len(spec.labels):
            raise ValueError(f"{spec.name}: {len(values)} label values for labels {spec.labels}")
        self._families[spec.name].add_row(values, float(value))

    def __iter__(self) -> Iterator[Family]:
        return iter(self._families.values())


def encode(families: Iterable[Family], openmetrics: bool) -> bytes:
    """The exposition of ``families``: Prometheus text 0.0.4, or OpenMetrics 1.0 (ending in ``# EOF``)."""
    chunks = [chunk for family in families for chunk in family.encode(openmetrics)]
    if openmetrics:
        chunks.append("# EOF\n")
    return "".join(chunks).encode()


Row = tuple[str, ...]


def identity(gpu: Gpu) -> Row:
    """Values of :data:`driver.exporter.names.IDENTITY_LABELS`: every per-GPU row starts with them."""
    return (gpu.name, gpu.uuid, gpu.pci_bus_id or "", gpu.product_name or "", GPU_VENDOR)


def mig_identity(gpu: Gpu, mig: MigDevice) -> Row:
    """Values of :data:`driver.exporter.names.MIG_IDENTITY_LABELS`."""
    return (
        mig_device_name(gpu, mig),
        gpu.uuid,
        gpu.pci_bus_id or "",
        gpu.product_name or "",
        GPU_VENDOR,
        gpu.name,
        mig.uuid,
        mig.profile or "",
    )


def _mig_mode(gpu: Gpu) -> str:
    return "unsupported" if gpu.mig_enabled is None else "enabled" if gpu.mig_enabled else "disabled"


def _telemetry(f: Families, ident: Row, t: GpuTelemetry) -> None:
    f.row(n.GPU_UTILIZATION, t.utilization, (*ident, "general"))
    f.row(n.GPU_UTILIZATION, t.encoder_utilization, (*ident, "encoder"))
    f.row(n.GPU_UTILIZATION, t.decoder_utilization, (*ident, "decoder"))
    f.row(n.GPU_MEMORY_USAGE, t.memory_used_bytes, ident)
    f.row(n.MEMORY_USED_ALIAS, t.memory_used_bytes, ident)
    f.row(n.GPU_MEMORY_LIMIT, t.memory_total_bytes, ident)
    f.row(n.GPU_MEMORY_UTILIZATION, t.memory_utilization, ident)
    f.row(n.GPU_IO, t.pcie_rx_bytes, (*ident, "receive", "pcie"))
    f.row(n.GPU_IO, t.pcie_tx_bytes, (*ident, "transmit", "pcie"))
    f.row(n.GPU_IO, t.nvlink_rx_bytes, (*ident, "receive", "nvlink"))
    f.row(n.GPU_IO, t.nvlink_tx_bytes, (*ident, "transmit", "nvlink"))
    typed = (*ident, "gpu")
    f.row(n.POWER, t.power_watts, typed)
    f.row(n.ENERGY, t.energy_joules, typed)
    f.row(n.TEMPERATURE, t.temperature_celsius, (*typed, "gpu"))
    f.row(n.TEMPERATURE, t.memory_temperature_celsius, (*typed, "memory"))
    f.row(n.ERRORS, t.ecc_corrected, (*typed, "corrected"))
    f.row(n.ERRORS, t.ecc_uncorrected, (*typed, "uncorrected"))
    f.row(n.CLOCK, t.sm_clock_hertz, (*ident, "sm"))
    f.row(n.CLOCK, t.memory_clock_hertz, (*ident, "memory"))
    _health(f, ident, t)


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _health(f: Families, ident: Row, t: GpuTelemetry) -> None:
    f.row(n.MEMORY_COPY_UTILIZATION, t.memory_copy_utilization, ident)
    for name, value in t.activity.items():
        f.row(n.ACTIVITY, value, (*ident, name))
    for (link, direction), rate in t.io_throughput.items():
        f.row(n.IO_THROUGHPUT, rate, (*ident, direction, link))
    f.row(n.REMAPPED_ROWS, t.remapped_rows_correctable, (*ident, "correctable"))
    f.row(n.REMAPPED_ROWS, t.remapped_rows_uncorrectable, (*ident, "uncorrectable"))
    f.row(n.ROW_REMAP_PENDING, _flag(t.row_remap_pending), ident)
    f.row(n.ROW_REMAP_FAILED, _flag(t.row_remap_failure), ident)
    f.row(n.PCIE_REPLAYS, t.pcie_replays, ident)
    if t.clock_event_reasons is not None:
        for bit, reason in CLOCK_EVENT_REASONS:
            f.row(n.CLOCK_EVENTS, 1 if t.clock_event_reasons & bit else 0, (*ident, reason))


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


def _mig(f: Families, snap: Snapshot, gpu: Gpu, readings: dict[str, MigTelemetry]) -> None:
    for mig in gpu.mig_devices:
        ident = mig_identity(gpu, mig)
        placement = mig.placement
        info = (
            _text(mig.gpu_instance_id),
            _text(mig.compute_instance_id),
            _text(placement.start if placement else None),
            _text(placement.size if placement else None),
            snap.node_name,
        )
        f.row(n.MIG_INFO, 1, (*ident, *info))
        t = readings.get(mig.uuid)
        if t is None:
            continue
        f.row(n.MIG_MEMORY_USAGE, t.memory_used_bytes, ident)
        f.row(n.MIG_MEMORY_LIMIT, t.memory_total_bytes, ident)
        for name, value in t.activity.items():
            f.row(n.MIG_ACTIVITY, value, (*ident, name))


def _gpu(f: Families, snap: Snapshot, g: GpuSnapshot, index: int) -> None:
    gpu = g.gpu
    ident = identity(gpu)
    f.row(
        n.GPU_INFO,
        1,
        (
            *ident,
            "gpu",
            snap.driver_version,
            snap.cuda_driver_version,
            gpu.architecture or "",
            gpu.compute_capability or "",
            _mig_mode(gpu),
            snap.node_name,
            str(index),
            nvml_pci_bus_id(gpu.pci_bus_id) if gpu.pci_bus_id else "",
        ),
    )
    for state in n.HW_STATES:
        f.row(n.STATUS, 1 if state == g.state else 0, (*ident, "gpu", state))
    for (name, reason), count in sorted(g.read_errors.items()):
        f.row(n.READ_ERRORS, count, (*ident, name, reason))
    if g.health is not None:
        f.row(n.ERRORS, g.health.xid_events, (*ident, "gpu", "xid"))
    for xid, count in sorted((g.xids or {}).items()):
        f.row(n.XID_ERRORS, count, (*ident, str(xid)))
    f.row(n.LAST_XID, g.last_xid, ident)
    if g.telemetry is not None:
        _telemetry(f, ident, g.telemetry)
    _mig(f, snap, gpu, {m.uuid: m for m in g.telemetry.mig} if g.telemetry is not None else {})
    profiles = {m.uuid: m.profile or "" for m in gpu.mig_devices}
    for share in g.shares:
        c = share.consumer
        who = (*ident, *c.label_values(), c.mig_uuid, profiles.get(c.mig_uuid, ""))
        f.row(n.ALLOCATION_INFO, 1, who)
        f.row(n.CONTAINER_UTILIZATION, share.utilization, (*who, share.utilization_mode))
        f.row(n.CONTAINER_MEMORY, share.memory_bytes, (*who, share.memory_mode))


def families(snap: Snapshot) -> list[Family]:
    """Every family of :data:`driver.exporter.names.EXPORTER_ALL` for one snapshot (empty ones included)."""
    f = Families(n.EXPORTER_ALL)
    f.add(
        n.EXPORTER_INFO,
        1,
        {"version": snap.version, "backend": snap.backend, "k8s_node_name": snap.node_name},
    )
    f.add(n.EXPORTER_SAMPLES, snap.samples_total, {})
    if snap.timestamp:
        f.add(n.EXPORTER_LAST_SAMPLE, snap.timestamp, {})
    if snap.pod_resources_up is not None:
        f.add(n.EXPORTER_POD_RESOURCES_UP, 1 if snap.pod_resources_up else 0, {})
    for source, count in sorted(snap.attribution_errors.items()):
        f.add(n.EXPORTER_ATTRIBUTION_ERRORS, count, {"source": source})
    for index, g in enumerate(snap.gpus):
        _gpu(f, snap, g, index)
    for charge in snap.charges:
        key = (*charge.key, snap.node_name)
        f.row(n.GPU_ALLOCATED_SECONDS, charge.allocated_seconds, key)
        f.row(n.GPU_USED_SECONDS, charge.used_seconds, key)
    return list(f)


class Renderer:
    """Renders the current snapshot for an ``Accept`` header, caching per (snapshot, content type)."""

    def __init__(self, current: Callable[[], Snapshot]) -> None:
        self._current = current
        self._lock = threading.Lock()
        self._seq = -1
        self._families: list[Family] = []
        self._cache: dict[str, bytes] = {}

    def render(self, accept: str = "") -> tuple[bytes, str]:
        _, content_type = choose_encoder(accept)
        snap = self._current()
        with self._lock:
            if snap.seq != self._seq:
                self._seq, self._families, self._cache = snap.seq, families(snap), {}
            body = self._cache.get(content_type)
            if body is None:
                body = self._cache[content_type] = encode(
                    self._families, content_type.startswith(OPENMETRICS)
                )
        return body, content_type
