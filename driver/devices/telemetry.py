"""Per-GPU telemetry: what a device backend reports when the exporter samples it.

A backend that can sample implements :class:`TelemetrySource` next to
:class:`~driver.devices.backend.DeviceBackend`; callers test for it with ``isinstance``. One call reads one
physical GPU, so a GPU whose reads hang or fail cannot hold up the others.

Every reading is optional: ``None`` means "this GPU, driver or library cannot say" (the field is left out
of the metrics, never shown as 0). A read that *failed* (as opposed to being unsupported) is listed in
:attr:`GpuTelemetry.errors` with the field's name, so the exporter can count it and mark the GPU degraded.
Cumulative readings (energy, I/O bytes, ECC errors, PCIe replays) only go up while the driver stays loaded.

A MIG-enabled GPU is read as NVML answers for one: no GPU-wide utilization (NVML does not support it in MIG
mode) and no per-process SM share; each MIG device has its own :class:`MigTelemetry` (memory always, activity
where the GPU has GPM: Hopper and newer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from driver.devices.model import MigDevice

#: Field names used in :attr:`GpuTelemetry.errors` (and as the ``field`` label of read-error counters).
FIELDS = (
    "utilization",
    "encoder_utilization",
    "decoder_utilization",
    "memory",
    "power",
    "energy",
    "temperature",
    "memory_temperature",
    "sm_clock",
    "memory_clock",
    "pcie_io",
    "nvlink_io",
    "ecc",
    "processes",
    "remapped_rows",
    "pcie_replays",
    "clock_events",
    "gpm",
    "mig",
)

#: GPM activity readings (fractions 0..1 of the sampling window), the keys of ``activity`` mappings.
ACTIVITIES = ("graphics", "sm", "sm_occupancy", "tensor", "dram", "fp64", "fp32", "fp16")
#: GPM throughput readings, the keys of ``io_throughput`` mappings: (interconnect, direction).
THROUGHPUTS = (("pcie", "receive"), ("pcie", "transmit"), ("nvlink", "receive"), ("nvlink", "transmit"))
#: NVML clocks event ("throttle") reasons by bit, as ``nvmlDeviceGetCurrentClocksEventReasons`` reports them.
CLOCK_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One process using a GPU: its host PID, the GPU memory it holds and its share of SM time."""

    pid: int
    memory_bytes: int | None = None
    #: Fraction (0..1) of the sampling window the GPU's SMs ran this process's kernels.
    sm_utilization: float | None = None


def _empty() -> Mapping[str, float]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class MigTelemetry:
    """One reading of one MIG device (a GPU instance + compute instance) of a MIG-enabled GPU."""

    uuid: str
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    #: GPM activity of the instance (keys from :data:`ACTIVITIES`), relative to the instance; empty when the
    #: GPU has no GPM (before Hopper).
    activity: Mapping[str, float] = field(default_factory=_empty)
    #: ``None``: the processes cannot be listed; ``()``: none.
    processes: tuple[ProcessSample, ...] | None = None

    @property
    def utilization(self) -> float | None:
        """Fraction of time the instance ran work (GPM graphics activity), the instance's analogue of
        NVML's GPU utilization; ``None`` without GPM."""
        return self.activity.get("graphics")


@dataclass(frozen=True, slots=True)
class GpuTelemetry:
    """One reading of one physical GPU (MIG devices are read through their parent)."""

    uuid: str
    #: Fractions 0..1 of the sampling window.
    utilization: float | None = None
    encoder_utilization: float | None = None
    decoder_utilization: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    #: Cumulative since the driver was loaded.
    energy_joules: float | None = None
    temperature_celsius: float | None = None
    memory_temperature_celsius: float | None = None
    sm_clock_hertz: float | None = None
    memory_clock_hertz: float | None = None
    #: Cumulative bytes, received / transmitted by the GPU.
    pcie_rx_bytes: int | None = None
    pcie_tx_bytes: int | None = None
    nvlink_rx_bytes: int | None = None
    nvlink_tx_bytes: int | None = None
    #: Cumulative (volatile) ECC error counts.
    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None
    #: ``None``: the backend cannot list processes; ``()``: no process uses the GPU.
    processes: tuple[ProcessSample, ...] | None = None
    #: Fraction of the sampling window device memory was read or written (NVML ``utilization.memory``).
    memory_copy_utilization: float | None = None
    #: Rows remapped since manufacture because of correctable / uncorrectable errors; a remap waiting for
    #: the next GPU reset; a remap that failed (the GPU must be serviced).
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    row_remap_pending: bool | None = None
    row_remap_failure: bool | None = None
    #: PCIe link-level retries since the driver was loaded.
    pcie_replays: int | None = None
    #: Bitmask of the active clocks event reasons (see :data:`CLOCK_EVENT_REASONS`).
    clock_event_reasons: int | None = None
    #: GPM activity of the whole GPU (keys from :data:`ACTIVITIES`); empty without GPM or in MIG mode.
    activity: Mapping[str, float] = field(default_factory=_empty)
    #: GPM throughput in bytes per second, by (interconnect, direction) from :data:`THROUGHPUTS`.
    io_throughput: Mapping[tuple[str, str], float] = field(default_factory=lambda: MappingProxyType({}))
    #: One reading per MIG device of a MIG-enabled GPU.
    mig: tuple[MigTelemetry, ...] = ()
    #: The MIG devices the GPU had when it was read (instances come and go with dynamic MIG); ``None``
    #: when the backend does not re-read them.
    mig_devices: tuple[MigDevice, ...] | None = None
    #: Field name (see :data:`FIELDS`) -> error text, for reads that failed in this sample.
    errors: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def memory_utilization(self) -> float | None:
        """Used / total memory, when both are known."""
        if self.memory_used_bytes is None or not self.memory_total_bytes:
            return None
        return min(1.0, self.memory_used_bytes / self.memory_total_bytes)


class TelemetryError(Exception):
    """The GPU cannot be read at all (lost, unknown UUID, backend closed); names the GPU."""


@runtime_checkable
class TelemetrySource(Protocol):
    """A backend that can read GPU telemetry. Implementations must be safe to call from worker threads,
    one call per GPU at a time."""

    def sample(self, uuid: str) -> GpuTelemetry:
        """Read the GPU with this UUID. Raises :class:`TelemetryError` when nothing can be read."""
        ...
