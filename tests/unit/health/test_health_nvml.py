"""The NVML health source against a stand-in for the pynvml module (its real error classes and constants):
event set creation and registration, waiting, translation of XID/ECC/MIG events, probes, degradation."""

from __future__ import annotations

import queue
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from driver.devices.backend import HealthCapable
from driver.devices.events import HealthSourceError, ProbeError, ProbeNow, XidEvent
from driver.devices.fake import load_named_profile
from driver.devices.nvml import NvmlBackend
from driver.devices.nvml_events import ALL_INSTANCES, NvmlHealthSource

INVENTORY = load_named_profile("pcie-l4x4").inventory
UUIDS = [g.uuid for g in INVENTORY.gpus]
MIG = load_named_profile("mig-a100").inventory
XID = pynvml.nvmlEventTypeXidCriticalError
DBE = pynvml.nvmlEventTypeDoubleBitEccError
SBE = pynvml.nvmlEventTypeSingleBitEccError


class EventNvml:
    """Just the NVML calls the health source makes; everything else is pynvml's."""

    def __init__(
        self,
        supported: dict[str, int] | None = None,
        *,
        create_error: Exception | None = None,
        register_error: dict[str, Exception] | None = None,
        without: tuple[str, ...] = (),
    ) -> None:
        self.supported = supported or {}
        self.create_error = create_error
        self.register_error = register_error or {}
        self.registered: dict[str, int] = {}
        self.events: queue.Queue[Any] = queue.Queue()
        self.lost: set[str] = set()
        self.freed = 0
        for name in without:
            setattr(self, name, None)

    def __getattr__(self, name: str) -> Any:
        return getattr(pynvml, name)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> tuple[str, str]:
        if uuid in self.lost:
            raise pynvml.NVMLError_GpuIsLost()
        return ("handle", uuid)

    def nvmlDeviceGetSupportedEventTypes(self, handle: tuple[str, str]) -> int:
        value = self.supported.get(handle[1], XID | DBE | SBE)
        if value < 0:
            raise pynvml.NVMLError_NotSupported()
        return value

    def nvmlEventSetCreate(self) -> str:
        if self.create_error is not None:
            raise self.create_error
        return "event-set"

    def nvmlDeviceRegisterEvents(self, handle: tuple[str, str], mask: int, event_set: str) -> None:
        assert event_set == "event-set"
        if handle[1] in self.register_error:
            raise self.register_error[handle[1]]
        self.registered[handle[1]] = mask

    def nvmlEventSetWait_v2(self, event_set: str, timeout_ms: int) -> Any:
        try:
            item = self.events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise pynvml.NVMLError_Timeout() from None
        if isinstance(item, Exception):
            raise item
        return item

    def nvmlEventSetFree(self, event_set: str) -> None:
        self.freed += 1

    def nvmlDeviceGetUUID(self, handle: tuple[str, str]) -> str:
        return handle[1]

    def nvmlDeviceGetMemoryInfo(self, handle: tuple[str, str]) -> Any:
        if handle[1] in self.lost:
            raise pynvml.NVMLError_GpuIsLost()
        return SimpleNamespace(total=1, used=0, free=1)


def event(uuid: str, kind: int, data: int = 0, gi: int = ALL_INSTANCES, ci: int = ALL_INSTANCES) -> Any:
    return SimpleNamespace(
        device=("handle", uuid), eventType=kind, eventData=data, gpuInstanceId=gi, computeInstanceId=ci
    )


def started(nvml: EventNvml, inventory: Any = INVENTORY) -> tuple[NvmlHealthSource, dict[str, str]]:
    source = NvmlHealthSource(nvml, inventory)
    return source, dict(source.start())


def test_registers_the_supported_subset_of_xid_and_double_bit_ecc_events() -> None:
    nvml = EventNvml({UUIDS[1]: XID | SBE})
    _, unmonitored = started(nvml)
    assert unmonitored == {}
    assert nvml.registered[UUIDS[0]] == XID | DBE
    assert nvml.registered[UUIDS[1]] == XID, "unsupported and unwanted types are masked out"


def test_gpus_that_cannot_be_watched_are_unmonitored_and_the_rest_still_are() -> None:
    nvml = EventNvml(
        {UUIDS[0]: DBE, UUIDS[1]: -1},
        register_error={UUIDS[2]: pynvml.NVMLError_NotSupported()},
    )
    _, unmonitored = started(nvml)
    assert unmonitored[UUIDS[0]] == "the GPU does not report XID events"
    assert unmonitored[UUIDS[1]].startswith("cannot read the supported event types")
    assert unmonitored[UUIDS[2]].startswith("cannot register for events")
    assert UUIDS[3] not in unmonitored and UUIDS[3] in nvml.registered


def test_no_event_set_means_every_gpu_is_unmonitored() -> None:
    _, unmonitored = started(EventNvml(create_error=pynvml.NVMLError_Unknown()))
    assert set(unmonitored) == set(UUIDS)
    assert all("cannot create an NVML event set" in r for r in unmonitored.values())


def test_wait_translates_xid_and_ecc_events() -> None:
    nvml = EventNvml()
    source, _ = started(nvml)
    assert source.wait(0.01) == [], "a timeout is no event"
    nvml.events.put(event(UUIDS[2], XID, 79))
    assert source.wait(1) == [XidEvent(UUIDS[2], 79)]
    nvml.events.put(event(UUIDS[0], DBE))
    assert source.wait(1) == [XidEvent(UUIDS[0], 48)]
    nvml.events.put(event(UUIDS[0], SBE))
    assert source.wait(1) == []


def test_an_event_on_a_mig_instance_names_the_mig_device() -> None:
    gpu = MIG.gpus[0]
    mig = gpu.mig_devices[1]
    assert mig.gpu_instance_id is not None and mig.compute_instance_id is not None
    nvml = EventNvml()
    source, _ = started(nvml, MIG)
    nvml.events.put(event(gpu.uuid, XID, 94, mig.gpu_instance_id, mig.compute_instance_id))
    assert source.wait(1) == [XidEvent(mig.uuid, 94)]
    nvml.events.put(event(gpu.uuid, XID, 79))
    assert source.wait(1) == [XidEvent(gpu.uuid, 79)]


def test_a_lost_gpu_during_wait_asks_for_probes_and_other_errors_break_the_stream() -> None:
    nvml = EventNvml()
    source, _ = started(nvml)
    nvml.events.put(pynvml.NVMLError_GpuIsLost())
    assert source.wait(1) == [ProbeNow()]
    nvml.events.put(pynvml.NVMLError_Unknown())
    with pytest.raises(HealthSourceError, match="nvmlEventSetWait failed"):
        source.wait(1)


def test_older_bindings_without_wait_v2_use_nvml_event_set_wait() -> None:
    nvml = EventNvml(without=("nvmlEventSetWait_v2",))
    nvml.nvmlEventSetWait = EventNvml.nvmlEventSetWait_v2.__get__(nvml)  # type: ignore[attr-defined]
    source, _ = started(nvml)
    nvml.events.put(event(UUIDS[1], XID, 31))
    assert source.wait(1) == [XidEvent(UUIDS[1], 31)]


def test_probe_detects_a_lost_gpu() -> None:
    nvml = EventNvml()
    source, _ = started(nvml)
    source.probe(UUIDS[0])
    nvml.lost.add(UUIDS[0])
    with pytest.raises(ProbeError, match="NVML"):
        source.probe(UUIDS[0])


def test_probe_counts_unsupported_answers_as_alive() -> None:
    nvml = EventNvml()
    source, _ = started(nvml)

    def unsupported(handle: Any) -> Any:
        raise pynvml.NVMLError_NotSupported()

    nvml.nvmlDeviceGetMemoryInfo = unsupported  # type: ignore[method-assign]
    source.probe(UUIDS[0])


def test_close_frees_the_event_set_once_and_later_waits_fail() -> None:
    nvml = EventNvml()
    source, _ = started(nvml)
    source.close()
    source.close()
    assert nvml.freed == 1
    with pytest.raises(HealthSourceError, match="closed"):
        source.wait(0.01)


class FakeInitNvml(EventNvml):
    def nvmlInit(self) -> None:
        return None

    def nvmlShutdown(self) -> None:
        return None


def test_the_nvml_backend_offers_this_source() -> None:
    backend = NvmlBackend(nvml=FakeInitNvml())
    assert isinstance(backend, HealthCapable)
    assert isinstance(backend.health_source(INVENTORY), NvmlHealthSource)
    backend.close()
