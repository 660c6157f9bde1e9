"""The health monitor: runs a :class:`~driver.devices.events.HealthSource`, applies its events, keeps the state.

Threads, because NVML blocks: one daemon thread waits for events, one daemon thread per GPU answers probes
(a GPU whose NVML calls hang stalls only its own prober, and a hung call cannot keep the process from
exiting). Everything they report is handed to the event loop, where :func:`driver.health.state.apply`
computes the new state; a changed state is written to the state file first, then ``on_change`` runs.

Failures never stop the plugin: a source that cannot start or whose event stream breaks marks the GPUs
``unmonitored`` (the event wait is retried with backoff and the mark goes away when it works again);
probes keep running either way. A state file that cannot be written is logged; the state stays in memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from driver.devices.events import (
    Cleared,
    HealthEvent,
    HealthSource,
    HealthSourceError,
    LostEvent,
    Monitored,
    ProbeError,
    ProbeNow,
    ProbeOk,
    Unmonitored,
)
from driver.devices.model import Device, Inventory
from driver.health.state import DeviceHealth, HealthState, Policy, apply, clear_targets, device_health
from driver.health.store import StateFileError, keep_aside, read_state, write_state
from driver.log import get_logger
from driver.tasks import cancel_and_wait
from driver.threads import CallThread, in_daemon_thread, when_done

log = get_logger(__name__)

MAX_RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class MonitorSettings:
    probe_interval: float = 5.0
    #: A probe not answered within this time counts as a lost GPU.
    probe_timeout: float = 5.0
    #: Longest single event wait (bounds how long stopping takes).
    wait_timeout: float = 1.0


class _Prober:
    """Probes one GPU on request in a thread of its own; at most one probe outstanding."""

    def __init__(self, uuid: str, probe: Callable[[str], None]) -> None:
        self.uuid = uuid
        self._thread = CallThread(lambda: probe(uuid), name=f"probe-{uuid}")
        self.pending: concurrent.futures.Future[None] | None = None
        self.since = 0.0
        self.overdue = False

    def request(self, now: float) -> concurrent.futures.Future[None]:
        self.pending = self._thread.submit()
        self.since, self.overdue = now, False
        return self.pending

    def stop(self) -> None:
        self._thread.stop()


class HealthMonitor:
    """Per-device health of one node, from a source, persisted in ``state_file``."""

    def __init__(
        self,
        inventory: Inventory,
        source: HealthSource,
        policy: Policy,
        state_file: str | Path,
        *,
        settings: MonitorSettings | None = None,
        on_change: Callable[[HealthState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``clock`` and ``sleep`` measure and wait out the probe timeout (tests pass a fake clock)."""
        self.inventory = inventory
        self.source = source
        self.policy = policy
        self.state_file = Path(state_file)
        self.settings = settings or MonitorSettings()
        self.on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self.state = HealthState()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._probe_now = asyncio.Event()
        self._gpus = [g.uuid for g in inventory.gpus]
        self._probers: dict[str, _Prober] = {}  # started with the monitor
        self._probing: asyncio.Task[None] | None = None
        self._pump: threading.Thread | None = None
        self._watched: set[str] = set()

    # -- state ---------------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the persisted state; a corrupt file is kept aside and the state starts empty."""
        try:
            self.state = read_state(self.state_file)
        except StateFileError as err:
            aside = keep_aside(self.state_file)
            log.error(
                "health state file corrupt; starting from a clean state", error=str(err), kept=str(aside)
            )
            self.state = HealthState()
        except OSError as err:
            log.error("health state file unreadable; starting from a clean state", error=str(err))
            self.state = HealthState()

    def submit(self, events: Iterable[HealthEvent]) -> None:
        """Apply events (on the event loop); persist and notify when the state changed."""
        new = self.state
        for event in events:
            if isinstance(event, ProbeNow):
                self._probe_now.set()
            new = apply(new, event, self.policy)
        if new == self.state:
            return
        try:
            write_state(self.state_file, new)
        except OSError as err:
            log.error("health state not persisted", file=str(self.state_file), error=str(err))
        self._log_changes(self.state, new)
        self.state = new
        if self.on_change is not None:
            self.on_change(new)

    def _log_changes(self, old: HealthState, new: HealthState) -> None:
        for device in self.inventory.devices:
            before, after = device_health(old, device, self.policy), device_health(new, device, self.policy)
            if (before.status, before.message) != (after.status, after.message):
                emit = log.info if after.status == "healthy" else log.warning
                emit("device health changed", device=device.name, health=after.status, reason=after.message)

    def device(self, device: Device) -> DeviceHealth:
        return device_health(self.state, device, self.policy)

    def devices(self) -> list[DeviceHealth]:
        return [self.device(d) for d in self.inventory.devices]

    def clear(self, device_name: str, request: str) -> bool:
        """An operator clear of ``device_name``; ``False`` when the device is unknown or the request was
        acted on already."""
        device = self.inventory.device(device_name)
        if device is None or self.state.clears.get(device_name) == request:
            return False
        log.info("device health cleared by operator", device=device_name, request=request)
        self.submit([Cleared(device_name, clear_targets(device), request)])
        return True

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.load()
        self._probers = {uuid: _Prober(uuid, self.source.probe) for uuid in self._gpus}
        try:
            unmonitored: Mapping[str, str] = await asyncio.wrap_future(
                in_daemon_thread(self.source.start, "health-source-start")
            )
        except Exception as err:
            log.exception("gpu health monitoring unavailable")
            unmonitored = dict.fromkeys(self._gpus, f"health monitoring failed to start: {err}")
        self._watched = set(self._gpus) - set(unmonitored)
        self.submit(
            [Unmonitored(u, r) for u, r in unmonitored.items()] + [Monitored(u) for u in self._watched]
        )
        if self._watched:
            self._pump = threading.Thread(target=self._pump_events, name="health-events", daemon=True)
            self._pump.start()
        # One round now, so a GPU lost while the plugin was down is known before the first publish.
        await self.probe_round()
        self._probing = asyncio.create_task(self._probe_loop(), name="health-probes")

    async def stop(self) -> None:
        self._stopping.set()
        await cancel_and_wait(self._probing)
        for prober in self._probers.values():
            prober.stop()
        # Closing ends a wait in progress (or waits for an NVML call to return); it must not hold up the
        # shutdown for longer than one wait.
        closing = asyncio.wrap_future(in_daemon_thread(self.source.close, "health-source-close"))
        if self._pump is not None:
            await asyncio.to_thread(self._pump.join, self.settings.wait_timeout + 1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(closing, self.settings.wait_timeout + 1.0)

    # -- events (worker thread) ----------------------------------------------------------------------

    def _post(self, events: list[HealthEvent]) -> None:
        if events and self._loop is not None and not self._stopping.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed under us at shutdown
                self._loop.call_soon_threadsafe(self.submit, events)

    def _pump_events(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                events = self.source.wait(self.settings.wait_timeout)
            except Exception as err:
                failures += 1
                reason = str(err) if isinstance(err, HealthSourceError) else f"{type(err).__name__}: {err}"
                if failures == 1:
                    log.error("gpu health event stream broke; retrying", error=reason)
                    self._post([Unmonitored(u, reason) for u in sorted(self._watched)])
                self._stopping.wait(min(MAX_RETRY_SECONDS, 0.5 * 2 ** (failures - 1)))
                continue
            if failures:
                failures = 0
                log.info("gpu health event stream works again")
                events = [Monitored(u) for u in sorted(self._watched)] + events
            self._post(events)
            if any(isinstance(e, ProbeNow) for e in events):
                # A lost GPU can make every wait return at once: probe, but do not spin.
                self._stopping.wait(self.settings.wait_timeout)

    # -- probes (event loop + prober threads) --------------------------------------------------------

    async def _probe_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._probe_now.wait(), self.settings.probe_interval)
            self._probe_now.clear()
            try:
                await self.probe_round()
            except Exception:
                log.exception("health probe round failed")

    async def probe_round(self) -> None:
        """Probe every GPU whose previous probe has finished; report results and overdue probes."""
        now = self._clock()
        started = [p.request(now) for p in self._probers.values() if p.pending is None]
        if started:
            await self._until_done_or_timeout(started)
        self.submit(self._probe_results(self._clock()))

    async def _until_done_or_timeout(self, futures: list[concurrent.futures.Future[None]]) -> None:
        answered = asyncio.ensure_future(asyncio.wait([when_done(f) for f in futures]))
        timeout = asyncio.ensure_future(self._sleep(self.settings.probe_timeout))
        try:
            await asyncio.wait({answered, timeout}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (answered, timeout):
                waiter.cancel()

    def outstanding_probes(self) -> set[str]:
        """UUIDs of the GPUs whose latest probe has not answered yet."""
        return {uuid for uuid, p in self._probers.items() if p.pending is not None and not p.pending.done()}

    def _probe_results(self, now: float) -> list[HealthEvent]:
        events: list[HealthEvent] = []
        for uuid, prober in self._probers.items():
            future = prober.pending
            if future is None:
                continue
            if not future.done():
                if now - prober.since >= self.settings.probe_timeout and not prober.overdue:
                    prober.overdue = True
                    reason = f"no answer to a probe within {self.settings.probe_timeout:g}s"
                    events.append(LostEvent(uuid, reason))
                continue
            prober.pending = None
            error = future.exception()
            if error is None:
                events.append(ProbeOk(uuid))
            elif isinstance(error, ProbeError):
                events.append(LostEvent(uuid, str(error) or "probe failed"))
            else:
                log.error("health probe raised", gpu=uuid, error=f"{type(error).__name__}: {error}")
        return events
