"""Health events of real GPUs through NVML: one event set for XID and double-bit ECC events, and probes.

``start`` creates an NVML event set and registers every GPU for the event types it supports out of
``XidCriticalError | DoubleBitEccError``. A GPU that supports no XID events (or refuses registration) is
reported unmonitored; the others are still watched, and probes run for all of them. ``wait`` is one
``nvmlEventSetWait_v2`` call (run in a worker thread); an event names the GPU by handle and, on a MIG-enabled
GPU, the GPU/compute instance, which maps it to the MIG device (``0xFFFFFFFF`` = the whole GPU).

``probe`` reads the GPU's memory info: a GPU that fell off the bus answers ``GPU_IS_LOST`` (or needs a reset);
"not supported" answers count as alive.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from driver.devices.events import (
    XID_DOUBLE_BIT_ECC,
    HealthEvent,
    HealthSourceError,
    ProbeError,
    ProbeNow,
    XidEvent,
)
from driver.devices.model import Inventory
from driver.log import get_logger

log = get_logger(__name__)

ALL_INSTANCES = 0xFFFFFFFF
# Defaults match the values in pynvml, for modules that lack the constants.
_XID_EVENT = ("nvmlEventTypeXidCriticalError", 0x8)
_DBE_EVENT = ("nvmlEventTypeDoubleBitEccError", 0x2)
# Answers meaning "this GPU or driver cannot do that", as opposed to a failure.
_UNSUPPORTED = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NoPermission")
_LOST = ("NVMLError_GpuIsLost", "NVMLError_ResetRequired")


def _text(value: Any) -> str:
    return (value.decode(errors="replace") if isinstance(value, bytes) else str(value)).strip()


class NvmlHealthSource:
    """:class:`~driver.devices.events.HealthSource` over an NVML module (``pynvml`` or a test stand-in)."""

    def __init__(self, nvml: Any, inventory: Inventory) -> None:
        self._nvml = nvml
        self._gpus = [g.uuid for g in inventory.gpus]
        self._mig = {
            (g.uuid, m.gpu_instance_id, m.compute_instance_id): m.uuid
            for g in inventory.gpus
            for m in g.mig_devices
            if m.gpu_instance_id is not None and m.compute_instance_id is not None
        }
        self._handles: dict[str, Any] = {}
        self._event_set: Any = None
        self._lock = threading.Lock()  # the event set is not freed while a wait is in progress
        self._xid = int(getattr(nvml, _XID_EVENT[0], _XID_EVENT[1]))
        self._dbe = int(getattr(nvml, _DBE_EVENT[0], _DBE_EVENT[1]))

    def _is(self, exc: BaseException, names: tuple[str, ...]) -> bool:
        return any(
            isinstance(exc, cls) for n in names if isinstance(cls := getattr(self._nvml, n, None), type)
        )

    def _handle(self, uuid: str) -> Any:
        handle = self._handles.get(uuid)
        if handle is None:
            handle = self._nvml.nvmlDeviceGetHandleByUUID(uuid)
            self._handles[uuid] = handle
        return handle

    # -- events ---------------------------------------------------------------------------------------

    def start(self) -> Mapping[str, str]:
        nvml = self._nvml
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            reason = f"cannot create an NVML event set: {exc}"
            log.warning("gpu health events unavailable", error=reason)
            return dict.fromkeys(self._gpus, reason)
        unmonitored: dict[str, str] = {}
        for uuid in self._gpus:
            problem = self._register(uuid)
            if problem is not None:
                unmonitored[uuid] = problem
                log.warning("gpu health events unavailable", gpu=uuid, reason=problem)
        return unmonitored

    def _register(self, uuid: str) -> str | None:
        """Register the GPU's supported event types; the reason when XID events cannot be watched."""
        nvml = self._nvml
        try:
            handle = self._handle(uuid)
            supported = int(nvml.nvmlDeviceGetSupportedEventTypes(handle))
        except nvml.NVMLError as exc:
            return f"cannot read the supported event types: {exc}"
        mask = supported & (self._xid | self._dbe)
        if not mask & self._xid:
            return "the GPU does not report XID events"
        try:
            nvml.nvmlDeviceRegisterEvents(handle, mask, self._event_set)
        except nvml.NVMLError as exc:
            return f"cannot register for events: {exc}"
        if not mask & self._dbe:
            log.info("gpu reports no double-bit ECC events; watching XIDs only", gpu=uuid)
        return None

    def wait(self, timeout: float) -> list[HealthEvent]:
        nvml = self._nvml
        fn = getattr(nvml, "nvmlEventSetWait_v2", None) or nvml.nvmlEventSetWait
        with self._lock:
            if self._event_set is None:
                raise HealthSourceError("the NVML event set is closed")
            try:
                data = fn(self._event_set, max(1, int(timeout * 1000)))
            except nvml.NVMLError as exc:
                if self._is(exc, ("NVMLError_Timeout",)):
                    return []
                if self._is(exc, _LOST):
                    return [ProbeNow()]  # some GPU is lost; the event does not say which
                raise HealthSourceError(f"nvmlEventSetWait failed: {exc}") from exc
        return self._translate(data)

    def _translate(self, data: Any) -> list[HealthEvent]:
        try:
            gpu = _text(self._nvml.nvmlDeviceGetUUID(data.device))
        except self._nvml.NVMLError as exc:
            log.warning("gpu event without a readable UUID; probing all GPUs", error=str(exc))
            return [ProbeNow()]
        gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
        uuid = gpu if gi == ALL_INSTANCES else self._mig.get((gpu, gi, ci), gpu)
        kind = int(data.eventType)
        if kind & self._xid:
            return [XidEvent(uuid, int(data.eventData))]
        if kind & self._dbe:
            return [XidEvent(uuid, XID_DOUBLE_BIT_ECC)]
        return []

    # -- probes ---------------------------------------------------------------------------------------

    def probe(self, uuid: str) -> None:
        nvml = self._nvml
        try:
            nvml.nvmlDeviceGetMemoryInfo(self._handle(uuid))
        except nvml.NVMLError as exc:
            if self._is(exc, _UNSUPPORTED):
                return
            raise ProbeError(f"NVML: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            event_set, self._event_set = self._event_set, None
        if event_set is not None:
            try:
                self._nvml.nvmlEventSetFree(event_set)
            except self._nvml.NVMLError as exc:
                log.debug("nvml event set free failed", error=str(exc))
