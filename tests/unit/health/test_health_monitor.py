"""The health monitor with a scripted source: events, probes (failing, hanging, recovering), a broken event
stream, persistence across restarts, operator clears and a corrupt state file."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
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


class FakeClock:
    """The monitor's clock and sleep: time passes only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self._waiting: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    @property
    def sleepers(self) -> int:
        return sum(1 for _, f in self._waiting if not f.done())

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((self.now + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, future in self._waiting:
            if deadline <= self.now and not future.done():
                future.set_result(None)
        self._waiting = [(d, f) for d, f in self._waiting if not f.done()]


async def until_true(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Yield to the loop and the probe threads until ``predicate`` holds. Probe threads signal nothing a
    test could await, so this polls; no outcome depends on how long anything takes (the timeout only stops
    a broken test from hanging)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (no event to await: the state changes in other threads)
            await asyncio.sleep(0.001)


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    started: list[HealthMonitor] = []

    async def build(
        source: ScriptedSource | None = None, policy: Policy | None = None, clock: FakeClock | None = None
    ) -> Harness:
        source = source or ScriptedSource()
        harness = Harness(None, source)  # type: ignore[arg-type]
        monitor = HealthMonitor(
            INVENTORY,
            source,
            policy or Policy(recovery_probes=2),
            tmp_path / "health.json",
            settings=SETTINGS,
            on_change=harness.on_change,
            clock=clock or time.monotonic,
            sleep=clock.sleep if clock is not None else asyncio.sleep,
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
    clock = FakeClock()
    h = await make(clock=clock)
    h.source.hanging.add(GPU.uuid)
    others = {g.uuid for g in INVENTORY.gpus} - {GPU.uuid}
    round_one = asyncio.create_task(h.monitor.probe_round())
    # The round waits for its timeout only because of the hanging GPU: the others have answered.
    await until_true(lambda: h.monitor.outstanding_probes() == {GPU.uuid} and clock.sleepers == 1)
    assert not round_one.done()
    clock.advance(SETTINGS.probe_timeout)
    await round_one
    assert h.monitor.device(DEVICE).lost == "no answer to a probe within 0.2s"
    assert all(h.monitor.device(d).status == "healthy" for d in INVENTORY.devices if d.gpu.uuid in others)
    # Still hanging: not probed again (the round ends when the others answer), and not reported twice.
    changes = len(h.changes)
    await h.monitor.probe_round()
    assert len(h.changes) == changes and clock.now == SETTINGS.probe_timeout
    h.source.hanging.clear()
    h.source.release.set()
    await until_true(lambda: not h.monitor.outstanding_probes())
    for _ in range(3):
        await h.monitor.probe_round()
    assert h.status() == "healthy"


async def test_a_probe_answering_late_within_the_timeout_is_not_lost(make: Make) -> None:
    """The timeout is measured by the monitor's clock: a probe that answers before it passes is fine."""
    clock = FakeClock()
    h = await make(clock=clock)
    h.source.hanging.add(GPU.uuid)
    probing = asyncio.create_task(h.monitor.probe_round())
    await until_true(lambda: clock.sleepers == 1)
    clock.advance(SETTINGS.probe_timeout / 2)
    h.source.release.set()
    await probing
    assert h.status() == "healthy" and h.changes == []


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
