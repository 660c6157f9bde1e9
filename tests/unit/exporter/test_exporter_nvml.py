"""NVML telemetry (``NvmlBackend.sample``) through a pure-Python pynvml stand-in.

``TelemetryNvml`` extends the discovery fake of test_devices_nvml with the telemetry calls, returning the
real pynvml structs; each GPU's readings are plain numbers in NVML's own units (percent, mW, mJ, MHz, KiB),
so the tests check the conversions, the per-field degradation and the lost-GPU case.
"""

from __future__ import annotations

import ctypes
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
from tests.unit.devices.test_devices_nvml import FakeNvml

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
    #: (correctable, uncorrectable, pending, failure)
    remapped_rows: tuple[int, int, int, int] = (2, 0, 1, 0)
    pcie_replays: int = 4
    clocks_event_reasons: int = 0x4 | 0x20
    #: GPM metric id -> value (percent or MiB/s); a metric absent here answers NOT_SUPPORTED.
    gpm: dict[int, float] = field(
        default_factory=lambda: {
            pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: 62.0,
            pynvml.NVML_GPM_METRIC_SM_UTIL: 55.0,
            pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: 30.0,
            pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 20.0,
            pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 40.0,
            pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC: 100.0,
            pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC: 50.0,
            pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC: 1000.0,
            pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC: 900.0,
        }
    )
    #: GPU instance id -> GPM metric id -> value
    mig_gpm: dict[int, dict[int, float]] = field(default_factory=dict)
    #: MIG index -> used memory; MIG index -> (pid, used memory)
    mig_memory_used: dict[int, int] = field(default_factory=dict)
    mig_processes: dict[int, list[tuple[int, int | None]]] = field(default_factory=dict)
    #: function name -> exception raised for this GPU only
    errors: dict[str, BaseException] = field(default_factory=dict)


GPM_ARCHITECTURES = {"Hopper", "Blackwell"}
MIG_UNSUPPORTED = {
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetEncoderUtilization",
    "nvmlDeviceGetDecoderUtilization",
    "nvmlDeviceGetProcessUtilization",
}


class TelemetryNvml(FakeNvml):
    """FakeNvml plus the telemetry calls. ``hang``: GPU index -> event the GPU's calls wait for.

    GPM samples are real ``c_nvmlGpmSample_t`` pointers whose address identifies them; each records which
    GPU (and GPU instance) it was taken from and when, so ``nvmlGpmMetricsGet`` can check that its two
    samples belong together and come in order."""

    def __init__(self, inventory: Inventory, readings: dict[int, Readings] | None = None, **kw: Any) -> None:
        super().__init__(inventory, **kw)
        self.readings = readings or {}
        self.hang: dict[int, threading.Event] = {}
        self.since: list[int] = []
        self.samples: dict[int, tuple[int, int | None, int]] = {}
        self.allocated = 0
        self.freed = 0
        self.clock = 0

    def _read(self, name: str, handle: tuple[Any, ...]) -> Readings:
        self._enter(name)
        index = int(handle[1])
        event = self.hang.get(index)
        if event is not None:
            event.wait()
        if index in self.lost:
            raise pynvml.NVMLError_GpuIsLost()
        readings = self.readings.setdefault(index, Readings())
        if handle[0] == "gpu" and self._gpu(handle).mig_enabled and name in MIG_UNSUPPORTED:
            raise pynvml.NVMLError_NotSupported()  # what NVML answers for a MIG-enabled GPU
        if name in readings.errors:
            raise readings.errors[name]
        return readings

    def nvmlDeviceGetUtilizationRates(self, handle: tuple[Any, ...]) -> Any:
        r = self._read("nvmlDeviceGetUtilizationRates", handle)
        return pynvml.c_nvmlUtilization_t(gpu=r.util, memory=r.memory_util)

    def nvmlDeviceGetEncoderUtilization(self, handle: tuple[Any, ...]) -> list[int]:
        return [self._read("nvmlDeviceGetEncoderUtilization", handle).encoder, 167000]

    def nvmlDeviceGetDecoderUtilization(self, handle: tuple[Any, ...]) -> list[int]:
        return [self._read("nvmlDeviceGetDecoderUtilization", handle).decoder, 167000]

    def nvmlDeviceGetMemoryInfo(self, handle: tuple[Any, ...]) -> Any:
        if not self.initialised or not self.readings:
            return super().nvmlDeviceGetMemoryInfo(handle)  # discovery
        if handle[0] == "mig":
            r = self._read("nvmlDeviceGetMemoryInfo", handle)
            if int(handle[2]) not in r.mig_memory_used:
                return super().nvmlDeviceGetMemoryInfo(handle)  # discovery
            total = self._mig(handle).memory_bytes or 0
            used = r.mig_memory_used[int(handle[2])]
            return pynvml.c_nvmlMemory_t(total=total, free=total - used, used=used)
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
        listed = r.mig_processes.get(int(handle[2]), []) if handle[0] == "mig" else r.processes
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in listed]

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

    def nvmlDeviceGetRemappedRows(self, handle: tuple[Any, ...]) -> tuple[int, int, int, int]:
        return self._read("nvmlDeviceGetRemappedRows", handle).remapped_rows

    def nvmlDeviceGetPcieReplayCounter(self, handle: tuple[Any, ...]) -> int:
        return self._read("nvmlDeviceGetPcieReplayCounter", handle).pcie_replays

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: tuple[Any, ...]) -> int:
        return self._read("nvmlDeviceGetCurrentClocksEventReasons", handle).clocks_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: tuple[Any, ...]) -> int:
        return self._read("nvmlDeviceGetCurrentClocksThrottleReasons", handle).clocks_event_reasons

    # -- GPM ------------------------------------------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, handle: tuple[Any, ...]) -> Any:
        self._enter("nvmlGpmQueryDeviceSupport")
        return pynvml.c_nvmlGpmSupport_t(
            isSupportedDevice=int(self._gpu(handle).architecture in GPM_ARCHITECTURES)
        )

    def nvmlGpmSampleAlloc(self) -> Any:
        self._enter("nvmlGpmSampleAlloc")
        self.allocated += 1
        return ctypes.cast(ctypes.c_void_p(0x1000 + self.allocated), pynvml.c_nvmlGpmSample_t)

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        self.freed += 1

    def _take(self, sample: Any, gpu: int, instance: int | None) -> Any:
        self.clock += 1
        self.samples[ctypes.cast(sample, ctypes.c_void_p).value or 0] = (gpu, instance, self.clock)
        return sample

    def nvmlGpmSampleGet(self, handle: tuple[Any, ...], sample: Any) -> Any:
        self._read("nvmlGpmSampleGet", handle)
        return self._take(sample, int(handle[1]), None)

    def nvmlGpmMigSampleGet(self, handle: tuple[Any, ...], gpu_instance: int, sample: Any) -> Any:
        self._read("nvmlGpmMigSampleGet", handle)
        return self._take(sample, int(handle[1]), gpu_instance)

    def nvmlGpmMetricsGet(self, request: Any) -> Any:
        self._enter("nvmlGpmMetricsGet")
        first = self.samples[ctypes.cast(request.sample1, ctypes.c_void_p).value or 0]
        second = self.samples[ctypes.cast(request.sample2, ctypes.c_void_p).value or 0]
        assert first[:2] == second[:2] and first[2] < second[2], (first, second)
        assert request.version == pynvml.NVML_GPM_METRICS_GET_VERSION
        gpu, instance, _ = second
        readings = self.readings[gpu]
        values = readings.gpm if instance is None else readings.mig_gpm.get(instance, {})
        for i in range(request.numMetrics):
            metric = request.metrics[i]
            if metric.metricId in values:
                metric.value, metric.nvmlReturn = values[metric.metricId], pynvml.NVML_SUCCESS
            else:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return request


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


def test_health_registers_and_gpm_readings() -> None:
    backend, nvml, inventory = open_nvml()
    uuid = inventory.gpus[0].uuid
    first = backend.sample(uuid)
    second = backend.sample(uuid)
    backend.close()
    # GPM needs two samples: the first reading has none.
    assert first.activity == {} and first.io_throughput == {}
    assert second.activity == {
        "graphics": 0.62,
        "sm": 0.55,
        "sm_occupancy": 0.30,
        "tensor": 0.20,
        "dram": 0.40,
    }  # FP64/32/16 answer NOT_SUPPORTED here: absent, not 0
    assert second.io_throughput == {
        ("pcie", "receive"): 100 * MiB,
        ("pcie", "transmit"): 50 * MiB,
        ("nvlink", "receive"): 1000 * MiB,
        ("nvlink", "transmit"): 900 * MiB,
    }
    assert second.memory_copy_utilization == 0.10
    assert (
        second.remapped_rows_correctable,
        second.remapped_rows_uncorrectable,
        second.row_remap_pending,
        second.row_remap_failure,
    ) == (2, 0, True, False)
    assert (second.pcie_replays, second.clock_event_reasons) == (4, 0x24)
    assert second.errors == {}
    assert nvml.freed == nvml.allocated == 2


def test_unsupported_health_and_gpm_readings_are_absent() -> None:
    backend, nvml, inventory = open_nvml(
        "nvlink-pairs",  # Ampere: no GPM
        unsupported={"nvmlDeviceGetRemappedRows", "nvmlDeviceGetPcieReplayCounter"},
        not_in_library={"nvmlDeviceGetCurrentClocksEventReasons"},  # an older driver
    )
    uuid = inventory.gpus[0].uuid
    backend.sample(uuid)
    t = backend.sample(uuid)
    assert (t.remapped_rows_correctable, t.row_remap_failure, t.pcie_replays) == (None, None, None)
    assert t.clock_event_reasons == 0x24  # from the older throttle-reasons call
    assert t.activity == {} and t.io_throughput == {} and t.errors == {}
    assert "nvmlGpmSampleGet" not in nvml.calls and nvml.allocated == 0
    backend.close()
    both = open_nvml(
        unsupported={"nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"}
    )
    assert both[0].sample(both[2].gpus[0].uuid).clock_event_reasons is None
    both[0].close()


def test_a_failing_gpm_call_is_an_error_of_its_field() -> None:
    backend, nvml, inventory = open_nvml()
    uuid = inventory.gpus[0].uuid
    backend.sample(uuid)
    nvml.readings[0].errors = {"nvmlGpmSampleGet": pynvml.NVMLError_Unknown()}
    t = backend.sample(uuid)
    backend.close()
    assert t.activity == {} and set(t.errors) == {"gpm"}


def test_mig_enabled_gpu_reads_per_instance() -> None:
    inventory = load_named_profile("dgx-h100-mig").inventory
    gpu = inventory.gpus[7]
    big = gpu.mig_devices[0]
    assert big.profile == "3g.40gb" and big.gpu_instance_id == 2
    readings = Readings(
        mig_memory_used={0: 3 * 1024 * MiB, 1: 0},
        mig_processes={0: [(4242, 3 * 1024 * MiB)]},
        mig_gpm={
            2: {pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: 75.0, pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 50.0}
        },
    )
    nvml = TelemetryNvml(inventory, {i: Readings() for i in range(8)} | {7: readings})
    backend = NvmlBackend(nvml=nvml)
    assert [g.mig_devices for g in backend.discover().gpus] == [g.mig_devices for g in inventory.gpus]
    backend.sample(gpu.uuid)
    t = backend.sample(gpu.uuid)
    backend.close()
    # What NVML does not report in MIG mode is absent: GPU-wide utilization, per-process SM share, GPM of
    # the whole GPU.
    assert (t.utilization, t.encoder_utilization, t.memory_copy_utilization) == (None, None, None)
    assert t.processes == (ProcessSample(4242, 1024 * MiB, None),)
    assert t.activity == {} and t.io_throughput == {}
    by_uuid = {m.uuid: m for m in t.mig}
    assert list(by_uuid) == [m.uuid for m in gpu.mig_devices]
    first = by_uuid[big.uuid]
    assert (first.memory_used_bytes, first.memory_total_bytes) == (3 * 1024 * MiB, big.memory_bytes)
    assert first.processes == (ProcessSample(4242, 3 * 1024 * MiB, None),)
    assert first.activity == {"graphics": 0.75, "tensor": 0.5} and first.utilization == 0.75
    # Instances without GPM answers have no activity; each instance was sampled with its own GI id.
    assert by_uuid[gpu.mig_devices[1].uuid].activity == {}
    assert {instance for _, instance, _ in nvml.samples.values()} == {2, 3, 9, 10}
    assert t.errors == {}
