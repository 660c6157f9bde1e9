"""NVML telemetry (``NvmlBackend.sample``) through a pure-Python pynvml stand-in.

``TelemetryNvml`` extends the discovery fake of test_devices_nvml with the telemetry calls, returning the
real pynvml structs; each GPU's readings are plain numbers in NVML's own units (percent, mW, mJ, MHz, KiB),
so the tests check the conversions, the per-field degradation and the lost-GPU case.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from driver.devices.fake import load_named_profile
from driver.devices.model import Inventory
from driver.devices.nvml import NvmlBackend
from driver.devices.telemetry import ProcessSample, TelemetryError, TelemetrySource
from tests.unit.test_devices_nvml import FakeNvml

PERCENT = 100
MiB = 1 << 20


@dataclass
class Readings:
    """One GPU's answers, in NVML units."""

    util: int = 40
    memory_util: int = 10
    encoder: int = 5
    decoder: int = 7
    memory_used: int = 2048 * MiB
    power_mw: int = 250_500
    energy_mj: int = 1_234_567
    temperature: int = 61
    memory_temperature: int = 70
    sm_mhz: int = 1755
    memory_mhz: int = 2619
    pcie_rx: int = 10_000
    pcie_tx: int = 5_000
    nvlink_rx_kib: int = 300
    nvlink_tx_kib: int = 200
    ecc_corrected: int = 3
    ecc_uncorrected: int = 0
    #: (pid, used memory or None)
    processes: list[tuple[int, int | None]] = field(default_factory=lambda: [(4242, 1024 * MiB)])
    #: (pid, smUtil %, timeStamp us)
    process_samples: list[tuple[int, int, int]] = field(
        default_factory=lambda: [(4242, 30, 10), (4242, 50, 20)]
    )
    #: NVML field id -> return code for that value (default success)
    field_status: dict[int, int] = field(default_factory=dict)
    #: function name -> exception raised for this GPU only
    errors: dict[str, BaseException] = field(default_factory=dict)


class TelemetryNvml(FakeNvml):
    """FakeNvml plus the telemetry calls. ``hang``: GPU index -> event the GPU's calls wait for."""

    def __init__(self, inventory: Inventory, readings: dict[int, Readings] | None = None, **kw: Any) -> None:
        super().__init__(inventory, **kw)
        self.readings = readings or {}
        self.hang: dict[int, threading.Event] = {}
        self.since: list[int] = []

    def _read(self, name: str, handle: tuple[Any, ...]) -> Readings:
        self._enter(name)
        index = int(handle[1])
        event = self.hang.get(index)
        if event is not None:
            event.wait()
        if index in self.lost:
            raise pynvml.NVMLError_GpuIsLost()
        readings = self.readings.setdefault(index, Readings())
        if name in readings.errors:
            raise readings.errors[name]
        return readings

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> tuple[Any, ...]:
        self._enter("nvmlDeviceGetHandleByUUID")
        for index, gpu in enumerate(self.gpus):
            if gpu.uuid == uuid:
                return ("gpu", index)
        raise pynvml.NVMLError_NotFound()

    def nvmlDeviceGetUtilizationRates(self, handle: tuple[Any, ...]) -> Any:
        r = self._read("nvmlDeviceGetUtilizationRates", handle)
        return pynvml.c_nvmlUtilization_t(gpu=r.util, memory=r.memory_util)

    def nvmlDeviceGetEncoderUtilization(self, handle: tuple[Any, ...]) -> list[int]:
        return [self._read("nvmlDeviceGetEncoderUtilization", handle).encoder, 167000]

    def nvmlDeviceGetDecoderUtilization(self, handle: tuple[Any, ...]) -> list[int]:
        return [self._read("nvmlDeviceGetDecoderUtilization", handle).decoder, 167000]

    def nvmlDeviceGetMemoryInfo(self, handle: tuple[Any, ...]) -> Any:
        if handle[0] != "gpu" or not self.initialised or not self.readings:
            return super().nvmlDeviceGetMemoryInfo(handle)  # discovery
        r = self._read("nvmlDeviceGetMemoryInfo", handle)
        total = self._gpu(handle).memory_bytes or 0
        return pynvml.c_nvmlMemory_t(total=total, free=total - r.memory_used, used=r.memory_used)

    def nvmlDeviceGetPowerUsage(self, handle: tuple[Any, ...]) -> int:
        return self._read("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: tuple[Any, ...]) -> int:
        return self._read("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj

    def nvmlDeviceGetTemperature(self, handle: tuple[Any, ...], sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._read("nvmlDeviceGetTemperature", handle).temperature

    def nvmlDeviceGetClockInfo(self, handle: tuple[Any, ...], clock: int) -> int:
        r = self._read("nvmlDeviceGetClockInfo", handle)
        return {pynvml.NVML_CLOCK_SM: r.sm_mhz, pynvml.NVML_CLOCK_MEM: r.memory_mhz}[clock]

    def nvmlDeviceGetTotalEccErrors(self, handle: tuple[Any, ...], error_type: int, counter: int) -> int:
        r = self._read("nvmlDeviceGetTotalEccErrors", handle)
        assert counter == pynvml.NVML_VOLATILE_ECC
        return r.ecc_corrected if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED else r.ecc_uncorrected

    def nvmlDeviceGetFieldValues(self, handle: tuple[Any, ...], ids: list[Any]) -> Any:
        r = self._read("nvmlDeviceGetFieldValues", handle)
        table = {
            pynvml.NVML_FI_DEV_MEMORY_TEMP: (
                pynvml.NVML_VALUE_TYPE_UNSIGNED_INT,
                "uiVal",
                r.memory_temperature,
            ),
            pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES: (
                pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
                "ullVal",
                r.pcie_rx,
            ),
            pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES: (
                pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
                "ullVal",
                r.pcie_tx,
            ),
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: (
                pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
                "ullVal",
                r.nvlink_rx_kib,
            ),
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: (
                pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
                "ullVal",
                r.nvlink_tx_kib,
            ),
        }
        values = (pynvml.c_nvmlFieldValue_t * len(ids))()
        for out, requested in zip(values, ids, strict=True):
            field_id, scope = requested if isinstance(requested, tuple) else (requested, 0)
            out.fieldId, out.scopeId = field_id, scope
            status = r.field_status.get(field_id, pynvml.NVML_SUCCESS)
            out.nvmlReturn = status
            if status == pynvml.NVML_SUCCESS:
                value_type, member, value = table[field_id]
                out.valueType = value_type
                setattr(out.value, member, value)
        return values

    def nvmlDeviceGetComputeRunningProcesses(self, handle: tuple[Any, ...]) -> list[Any]:
        r = self._read("nvmlDeviceGetComputeRunningProcesses", handle)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in r.processes]

    def nvmlDeviceGetProcessUtilization(self, handle: tuple[Any, ...], since: int) -> list[Any]:
        r = self._read("nvmlDeviceGetProcessUtilization", handle)
        self.since.append(since)
        samples = [
            pynvml.c_nvmlProcessUtilizationSample_t(pid=pid, timeStamp=ts, smUtil=sm)
            for pid, sm, ts in r.process_samples
            if ts > since
        ]
        if not samples:
            raise pynvml.NVMLError_NotFound()
        return samples

    def nvmlDeviceGetPcieThroughput(self, handle: tuple[Any, ...], counter: int) -> int:
        r = self._read("nvmlDeviceGetPcieThroughput", handle)
        return r.pcie_rx if counter == pynvml.NVML_PCIE_UTIL_RX_BYTES else r.pcie_tx


def open_nvml(profile: str = "dgx-h100", **kw: Any) -> tuple[NvmlBackend, TelemetryNvml, Inventory]:
    inventory = load_named_profile(profile).inventory
    nvml = TelemetryNvml(inventory, {i: Readings() for i in range(len(inventory.gpus))}, **kw)
    return NvmlBackend(nvml=nvml), nvml, inventory


def test_nvml_backend_is_a_telemetry_source() -> None:
    backend, _, _ = open_nvml()
    assert isinstance(backend, TelemetrySource)
    assert backend.container_edits() == {}
    backend.close()


def test_readings_are_converted_to_base_units() -> None:
    backend, _, inventory = open_nvml()
    gpu = inventory.gpus[0]
    t = backend.sample(gpu.uuid)
    backend.close()
    assert (t.utilization, t.encoder_utilization, t.decoder_utilization) == (0.40, 0.05, 0.07)
    assert (t.memory_used_bytes, t.memory_total_bytes) == (2048 * MiB, gpu.memory_bytes)
    assert t.memory_utilization == pytest.approx(2048 * MiB / (gpu.memory_bytes or 1))
    assert (t.power_watts, t.energy_joules) == (250.5, 1234.567)
    assert (t.temperature_celsius, t.memory_temperature_celsius) == (61, 70)
    assert (t.sm_clock_hertz, t.memory_clock_hertz) == (1755e6, 2619e6)
    assert (t.pcie_rx_bytes, t.pcie_tx_bytes) == (10_000, 5_000)
    assert (t.nvlink_rx_bytes, t.nvlink_tx_bytes) == (300 * 1024, 200 * 1024)
    assert (t.ecc_corrected, t.ecc_uncorrected) == (3, 0)
    # Mean of the two samples since the last call.
    assert t.processes == (ProcessSample(pid=4242, memory_bytes=1024 * MiB, sm_utilization=0.40),)
    assert t.errors == {}


def test_process_samples_are_read_incrementally() -> None:
    backend, nvml, inventory = open_nvml()
    uuid = inventory.gpus[0].uuid
    backend.sample(uuid)
    second = backend.sample(uuid)
    backend.close()
    # The second call asks only for samples newer than the newest seen; none -> the process ran nothing.
    assert nvml.since == [0, 20]
    assert second.processes == (ProcessSample(4242, 1024 * MiB, 0.0),)


def test_unsupported_readings_are_absent_and_not_errors() -> None:
    unsupported = {
        "nvmlDeviceGetEncoderUtilization",
        "nvmlDeviceGetDecoderUtilization",
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetProcessUtilization",
    }
    backend, nvml, inventory = open_nvml(
        unsupported=unsupported, not_in_library={"nvmlDeviceGetTotalEnergyConsumption"}
    )
    readings = nvml.readings[0]
    readings.field_status = {
        pynvml.NVML_FI_DEV_MEMORY_TEMP: pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: pynvml.NVML_ERROR_NOT_SUPPORTED,
    }
    t = backend.sample(inventory.gpus[0].uuid)
    backend.close()
    assert (t.encoder_utilization, t.decoder_utilization, t.energy_joules) == (None, None, None)
    assert (t.ecc_corrected, t.ecc_uncorrected, t.memory_temperature_celsius) == (None, None, None)
    assert (t.nvlink_rx_bytes, t.nvlink_tx_bytes) == (None, None)
    assert t.processes == (ProcessSample(4242, 1024 * MiB, None),)  # listed, SM share unknown
    assert (t.utilization, t.power_watts, t.pcie_rx_bytes) == (0.40, 250.5, 10_000)
    assert t.errors == {}


def test_pcie_counters_fall_back_to_integrated_throughput() -> None:
    inventory = load_named_profile("dgx-h100").inventory
    nvml = TelemetryNvml(inventory, {0: Readings(pcie_rx=10_000, pcie_tx=5_000)})  # KB/s here
    now = [100.0]
    backend = NvmlBackend(nvml=nvml, clock=lambda: now[0])
    nvml.readings[0].field_status = {
        pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES: pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES: pynvml.NVML_ERROR_NOT_SUPPORTED,
    }
    uuid = inventory.gpus[0].uuid
    first = backend.sample(uuid)
    now[0] += 2
    second = backend.sample(uuid)
    backend.close()
    assert (first.pcie_rx_bytes, first.pcie_tx_bytes) == (0, 0)
    assert (second.pcie_rx_bytes, second.pcie_tx_bytes) == (20_000_000, 10_000_000)
    assert second.errors == {}


def test_a_failing_read_is_recorded_and_the_rest_still_read() -> None:
    backend, nvml, inventory = open_nvml()
    nvml.readings[0].errors = {"nvmlDeviceGetPowerUsage": pynvml.NVMLError_Unknown()}
    nvml.readings[0].field_status = {pynvml.NVML_FI_DEV_MEMORY_TEMP: pynvml.NVML_ERROR_UNKNOWN}
    t = backend.sample(inventory.gpus[0].uuid)
    other = backend.sample(inventory.gpus[1].uuid)
    backend.close()
    assert t.power_watts is None and t.memory_temperature_celsius is None
    assert set(t.errors) == {"power", "memory_temperature"}
    assert "nvmlDeviceGetPowerUsage" in t.errors["power"]
    assert t.utilization == 0.40 and t.temperature_celsius == 61
    assert other.errors == {} and other.power_watts == 250.5


def test_the_whole_field_values_call_failing_marks_its_fields() -> None:
    backend, nvml, inventory = open_nvml()
    nvml.readings[0].errors = {"nvmlDeviceGetFieldValues": pynvml.NVMLError_Unknown()}
    t = backend.sample(inventory.gpus[0].uuid)
    backend.close()
    assert set(t.errors) == {"memory_temperature", "pcie_io", "nvlink_io"}


def test_a_lost_gpu_raises_telemetry_error_naming_it() -> None:
    backend, nvml, inventory = open_nvml()
    nvml.lost.add(2)
    uuid = inventory.gpus[2].uuid
    with pytest.raises(TelemetryError, match=uuid):
        backend.sample(uuid)
    assert backend.sample(inventory.gpus[0].uuid).utilization == 0.40
    with pytest.raises(TelemetryError, match="no handle"):
        backend.sample("GPU-00000000-0000-0000-0000-000000000000")
    backend.close()
    with pytest.raises(TelemetryError, match="closed"):
        backend.sample(inventory.gpus[0].uuid)
