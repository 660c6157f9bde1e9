"""The health monitor with a scripted source: events, probes (failing, hanging, recovering), a broken event
stream, persistence across restarts, operator clears and a corrupt state file."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import pytest

from driver.devices.events import HealthEvent, HealthSourceError, ProbeError, XidEvent
from driver.devices.fake import load_named_profile
from driver.health.monitor import HealthMonitor, MonitorSettings
from driver.health.state import HealthState, Policy
from driver.health.store import read_state

INVENTORY = load_named_profile("pcie-l4x4").inventory
GPU = INVENTORY.gpus[0]
DEVICE = INVENTORY.devices[0]
assert DEVICE.gpu == GPU
# No periodic rounds: the tests call probe_round() themselves.
SETTINGS = MonitorSettings(probe_interval=3600, probe_timeout=0.2, wait_timeout=0.05)


class ScriptedSource:
    """Events and probe answers a test controls."""

    def __init__(self, unmonitored: Mapping[str, str] | None = None, start_error: Exception | None = None):
        self.queue: queue.Queue[list[HealthEvent] | Exception] = queue.Queue()
        self.unmonitored = dict(unmonitored or {})
        self.start_error = start_error
        self.failing: dict[str, str] = {}
        self.hanging: set[str] = set()
        self.release = threading.Event()
        self.closed = False

    def start(self) -> Mapping[str, str]:
        if self.start_error is not None:
            raise self.start_error
        return self.unmonitored

    def wait(self, timeout: float) -> list[HealthEvent]:
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if isinstance(item, Exception):
            raise item
        return item

    def probe(self, uuid: str) -> None:
        if uuid in self.hanging:
            self.release.wait()
        if uuid in self.failing:
            raise ProbeError(self.failing[uuid])

    def close(self) -> None:
        self.closed = True
        self.release.set()


class Harness:
    def __init__(self, monitor: HealthMonitor, source: ScriptedSource) -> None:
        self.monitor = monitor
        self.source = source
        self.changes: list[HealthState] = []
        self._changed = asyncio.Event()

    def on_change(self, state: HealthState) -> None:
        self.changes.append(state)
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def status(self) -> str:
        return self.monitor.device(DEVICE).status


Make = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    started: list[HealthMonitor] = []

    async def build(source: ScriptedSource | None = None, policy: Policy | None = None) -> Harness:
        source = source or ScriptedSource()
        harness = Harness(None, source)  # type: ignore[arg-type]
        monitor = HealthMonitor(
            INVENTORY,
            source,
            policy or Policy(recovery_probes=2),
            tmp_path / "health.json",
            settings=SETTINGS,
            on_change=harness.on_change,
        )
        harness.monitor = monitor
        await monitor.start()
        started.append(monitor)
        return harness

    yield build
    for monitor in started:
        await monitor.stop()


async def test_an_event_is_applied_persisted_and_announced_once(make: Make, tmp_path: Path) -> None:
    h = await make()
    assert h.status() == "healthy" and h.changes == []
    h.source.queue.put([XidEvent(GPU.uuid, 79)])
    await h.until(lambda: h.status() == "unhealthy")
    assert len(h.changes) == 1
    assert read_state(tmp_path / "health.json").record(GPU.uuid).xid == 79


async def test_a_failing_probe_marks_the_gpu_lost_and_passing_ones_recover_it(
    make: Make,
) -> None:
    h = await make()
    h.source.failing[GPU.uuid] = "NVML: GPU is lost"
    await h.monitor.probe_round()
    assert h.status() == "unhealthy"
    assert h.monitor.device(DEVICE).lost == "NVML: GPU is lost"
    del h.source.failing[GPU.uuid]
    await h.monitor.probe_round()
    assert h.status() == "unhealthy", "one passing probe is not enough (recovery_probes=2)"
    await h.monitor.probe_round()
    assert h.status() == "healthy"


async def test_a_hanging_probe_counts_as_lost_without_holding_up_the_others(
    make: Make,
) -> None:
    h = await make()
    h.source.hanging.add(GPU.uuid)
    other = INVENTORY.devices[1]
    await h.monitor.probe_round()
    assert h.monitor.device(DEVICE).lost == "no answer to a probe within 0.2s"
    assert h.monitor.device(other).status == "healthy"
    # Still hanging: not probed again, and not reported twice.
    changes = len(h.changes)
    await h.monitor.probe_round()
    assert len(h.changes) == changes
    h.source.hanging.clear()
    h.source.release.set()
    for _ in range(3):
        await h.monitor.probe_round()
    assert h.status() == "healthy"


async def test_a_source_that_cannot_start_leaves_every_gpu_unmonitored(
    make: Make,
) -> None:
    h = await make(ScriptedSource(start_error=RuntimeError("NVML event set: Unknown Error")))
    health = h.monitor.device(DEVICE)
    assert health.status == "unknown" and "Unknown Error" in health.message
    h.source.failing[GPU.uuid] = "lost"
    await h.monitor.probe_round()
    assert h.status() == "unhealthy", "probes keep running without events"


async def test_unsupported_gpus_are_unmonitored_the_others_are_watched(
    make: Make,
) -> None:
    h = await make(ScriptedSource(unmonitored={GPU.uuid: "the GPU does not report XID events"}))
    assert h.status() == "unknown"
    assert h.monitor.device(INVENTORY.devices[1]).status == "healthy"


async def test_a_broken_event_stream_is_retried_and_marks_gpus_unmonitored_meanwhile(
    make: Make,
) -> None:
    h = await make()
    h.source.queue.put(HealthSourceError("nvmlEventSetWait failed: Unknown Error"))
    await h.until(lambda: h.status() == "unknown")
    assert "Unknown Error" in h.monitor.device(DEVICE).message
    h.source.queue.put([XidEvent(GPU.uuid, 13)])
    await h.until(lambda: h.status() == "healthy" and h.monitor.device(DEVICE).xid == 13)


async def test_state_survives_a_restart_and_a_clear_is_acted_on_once(
    make: Make,
) -> None:
    first = await make()
    first.source.queue.put([XidEvent(GPU.uuid, 94)])
    await first.until(lambda: first.status() == "unhealthy")
    await first.monitor.stop()

    second = await make()
    assert second.status() == "unhealthy", "XIDs are not redelivered: the file keeps the fault"
    assert second.monitor.clear(DEVICE.name, "req-1")
    assert second.status() == "healthy"
    second.source.queue.put([XidEvent(GPU.uuid, 79)])
    await second.until(lambda: second.status() == "unhealthy")
    assert not second.monitor.clear(DEVICE.name, "req-1"), "the same request is not acted on twice"
    assert not second.monitor.clear("gpu-unknown", "req-2")
    await second.monitor.stop()

    third = await make()
    assert not third.monitor.clear(DEVICE.name, "req-1")
    assert third.status() == "unhealthy"


async def test_a_corrupt_state_file_is_kept_aside(make: Make, tmp_path: Path) -> None:
    (tmp_path / "health.json").write_text("{garbage")
    h = await make()
    assert h.status() == "healthy"
    assert (tmp_path / "health.json.corrupt").read_text() == "{garbage"


async def test_stop_closes_the_source(make: Make) -> None:
    h = await make()
    await h.monitor.stop()
    assert h.source.closed
