"""Per-GPU telemetry: what a device backend reports when the exporter samples it.

A backend that can sample implements :class:`TelemetrySource` next to
:class:`~driver.devices.backend.DeviceBackend`; callers test for it with ``isinstance``. One call reads one
physical GPU, so a GPU whose reads hang or fail cannot hold up the others.

Every reading is optional: ``None`` means "this GPU, driver or library cannot say" (the field is left out
of the metrics). A read that *failed* (as opposed to being unsupported) is listed in
:attr:`GpuTelemetry.errors` with the field's name, so the exporter can count it and mark the GPU degraded.
Cumulative readings (energy, I/O bytes, ECC errors) only go up while the driver stays loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

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
)


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One process using a GPU: its host PID, the GPU memory it holds and its share of SM time."""

    pid: int
    memory_bytes: int | None = None
    #: Fraction (0..1) of the sampling window the GPU's SMs ran this process's kernels.
    sm_utilization: float | None = None


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
