"""NVML GPU Performance Monitoring (GPM): the profiling readings dcgm-exporter needs DCGM for, from NVML alone.

GPM metrics are computed between two samples of the GPU's performance counters. :class:`GpmReader` keeps the
previous sample of each GPU (and, on a MIG-enabled GPU, of each GPU instance: ``nvmlGpmMigSampleGet``) and
asks ``nvmlGpmMetricsGet`` for the metrics between it and a new one, so the first call after start returns
nothing and every later call covers the time since the one before. GPM exists on Hopper and newer; where
``nvmlGpmQueryDeviceSupport`` says no, or a call is missing or unsupported, the readings are simply absent.

Activity metrics come in percent and are returned as fractions 0..1; throughput comes in MiB/s and is
returned in bytes/s.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: Activity reading -> NVML GPM metric constant (percent of the sampling window).
ACTIVITY_METRICS: Mapping[str, str] = {
    "graphics": "NVML_GPM_METRIC_GRAPHICS_UTIL",
    "sm": "NVML_GPM_METRIC_SM_UTIL",
    "sm_occupancy": "NVML_GPM_METRIC_SM_OCCUPANCY",
    "tensor": "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
    "dram": "NVML_GPM_METRIC_DRAM_BW_UTIL",
    "fp64": "NVML_GPM_METRIC_FP64_UTIL",
    "fp32": "NVML_GPM_METRIC_FP32_UTIL",
    "fp16": "NVML_GPM_METRIC_FP16_UTIL",
}
#: (interconnect, direction) -> NVML GPM metric constant (MiB/s).
THROUGHPUT_METRICS: Mapping[tuple[str, str], str] = {
    ("pcie", "receive"): "NVML_GPM_METRIC_PCIE_RX_PER_SEC",
    ("pcie", "transmit"): "NVML_GPM_METRIC_PCIE_TX_PER_SEC",
    ("nvlink", "receive"): "NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC",
    ("nvlink", "transmit"): "NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC",
}
_MiB = 1 << 20


@dataclass(frozen=True)
class GpmReadings:
    activity: Mapping[str, float]
    throughput: Mapping[tuple[str, str], float]


_NONE = GpmReadings({}, {})


class _Slot:
    """The previous sample of one GPU or GPU instance, and a spare buffer for the next one."""

    def __init__(self, previous: Any, spare: Any) -> None:
        self.previous = previous
        self.spare = spare
        self.filled = False


class GpmReader:
    """GPM readings of a node's GPUs through an NVML module; one call per GPU at a time (thread per GPU)."""

    def __init__(
        self,
        nvml: Any,
        unsupported: tuple[type[BaseException], ...],
        on_unsupported: Callable[[str, BaseException], None],
    ) -> None:
        self._nvml = nvml
        self._unsupported = unsupported
        self._on_unsupported = on_unsupported
        self._supported: dict[str, bool] = {}
        self._slots: dict[tuple[str, int | None], _Slot] = {}
        self._lock = threading.Lock()  # guards _slots against close() while a GPU thread samples

    def _has(self, *names: str) -> bool:
        return all(getattr(self._nvml, name, None) is not None for name in names)

    def supported(self, uuid: str, handle: Any) -> bool:
        """Whether the GPU has GPM (asked once per GPU)."""
        known = self._supported.get(uuid)
        if known is not None:
            return known
        answer = False
        if self._has("nvmlGpmQueryDeviceSupport", "nvmlGpmSampleAlloc", "nvmlGpmMetricsGet"):
            try:
                answer = bool(self._nvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
            except self._unsupported as exc:
                self._on_unsupported("nvmlGpmQueryDeviceSupport", exc)
        self._supported[uuid] = answer
        return answer

    def read(self, uuid: str, handle: Any, gpu_instance: int | None = None) -> GpmReadings:
        """Readings since the previous call for this GPU (or its GPU instance ``gpu_instance``).

        Raises the NVML error of a call that failed (not one that is unsupported)."""
        if not self.supported(uuid, handle):
            return _NONE
        nvml = self._nvml
        key = (uuid, gpu_instance)
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc())
        try:
            if gpu_instance is None:
                nvml.nvmlGpmSampleGet(handle, slot.spare)
            else:
                nvml.nvmlGpmMigSampleGet(handle, gpu_instance, slot.spare)
        except self._unsupported as exc:
            self._on_unsupported("nvmlGpmSampleGet", exc)
            return _NONE
        slot.previous, slot.spare = slot.spare, slot.previous
        if not slot.filled:
            slot.filled = True
            return _NONE
        return self._metrics(slot.spare, slot.previous, whole_gpu=gpu_instance is None)

    def _metrics(self, first: Any, second: Any, *, whole_gpu: bool) -> GpmReadings:
        nvml = self._nvml
        wanted: list[tuple[str | tuple[str, str], int]] = [
            (name, int(getattr(nvml, const)))
            for name, const in ACTIVITY_METRICS.items()
            if hasattr(nvml, const)
        ]
        if whole_gpu:
            wanted += [
                (key, int(getattr(nvml, const)))
                for key, const in THROUGHPUT_METRICS.items()
                if hasattr(nvml, const)
            ]
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = int(getattr(nvml, "NVML_GPM_METRICS_GET_VERSION", 1))
        request.numMetrics = len(wanted)
        request.sample1, request.sample2 = first, second
        for i, (_, metric_id) in enumerate(wanted):
            request.metrics[i].metricId = metric_id
        try:
            answer = nvml.nvmlGpmMetricsGet(request)
        except self._unsupported as exc:
            self._on_unsupported("nvmlGpmMetricsGet", exc)
            return _NONE
        success = int(getattr(nvml, "NVML_SUCCESS", 0))
        activity: dict[str, float] = {}
        throughput: dict[tuple[str, str], float] = {}
        for i, (name, _) in enumerate(wanted):
            metric = answer.metrics[i]
            if int(metric.nvmlReturn) != success:
                continue  # this metric is not supported on this GPU or instance
            if isinstance(name, str):
                activity[name] = min(1.0, max(0.0, float(metric.value) / 100.0))
            else:
                throughput[name] = max(0.0, float(metric.value)) * _MiB
        return GpmReadings(activity, throughput)

    def close(self) -> None:
        with self._lock:
            slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            for sample in (slot.previous, slot.spare):
                # Freeing at shutdown: an error leaves nothing to do.
                with contextlib.suppress(Exception):
                    self._nvml.nvmlGpmSampleFree(sample)
