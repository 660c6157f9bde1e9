"""The background sampler: device telemetry + attribution -> an immutable :class:`Snapshot`.

Every ``interval`` seconds the collector asks each GPU's worker thread for a reading, waits a bounded time,
asks the kubelet which containers hold which devices, traces processes to containers, and publishes a new
:class:`Snapshot`. A scrape renders the latest snapshot and never touches NVML or the kubelet.

MIG devices are followed as they come and go (dynamic MIG creates and destroys instances at prepare and
unprepare): each reading of a MIG-enabled GPU lists its MIG devices, and a change re-indexes the devices
for attribution and chargeback before the round's attribution.

One worker thread per GPU, so a GPU whose NVML calls hang stalls only itself: while its request is
outstanding it is not asked again, and once the request is older than ``sample_timeout`` the GPU is shown
``failed`` (its readings are dropped rather than served stale) until it answers again. Worker threads are
daemons, so a call that never returns cannot keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Protocol, cast

from driver import __version__
from driver.devices.model import Gpu, Inventory
from driver.devices.telemetry import GpuTelemetry, TelemetryError, TelemetrySource
from driver.exporter.attribution import OUTSIDE_PODS, ConsumerShare, ContainerKey, OwnerOf, split_gpu
from driver.exporter.cgroups import read_cgroup
from driver.exporter.chargeback import Charge, Chargeback, device_shares, gpu_memory
from driver.exporter.holders import ClaimIndex, holders
from driver.exporter.podresources import ContainerResources, DeviceResolver
from driver.health.state import GpuHealth, gpu_health
from driver.health.store import StateFileReader
from driver.log import get_logger
from driver.tasks import cancel_and_wait
from driver.threads import CallThread, when_done

if TYPE_CHECKING:
    from driver.exporter.xids import XidCounter

log = get_logger(__name__)

HwState = Literal["ok", "degraded", "failed", "predicted_failure"]
ReadErrorKey = tuple[str, str]  # (field, reason)


_SEVERITY: dict[str, int] = {"ok": 0, "predicted_failure": 1, "degraded": 2, "failed": 3}


def _worse(state: HwState, condition: str) -> HwState:
    """The more severe of the telemetry state and the health monitor's condition."""
    return cast(HwState, condition) if _SEVERITY[condition] > _SEVERITY[state] else state


class AllocationSource(Protocol):
    """Who holds which device (:class:`~driver.exporter.podresources.PodResourcesClient`)."""

    async def list(self) -> list[ContainerResources]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    gpu: Gpu
    #: The latest reading; ``None`` while the GPU cannot be read.
    telemetry: GpuTelemetry | None
    state: HwState
    #: Cumulative failed reads since the exporter started.
    read_errors: Mapping[ReadErrorKey, int]
    shares: tuple[ConsumerShare, ...] = ()
    #: What the plugin's health monitor recorded (``None`` without a health state file).
    health: GpuHealth | None = None
    #: XID code -> events since the exporter started; ``None`` while XID events are not watched.
    xids: Mapping[int, int] | None = None
    #: The last XID code (0: none yet); ``None`` while XID events are not watched.
    last_xid: int | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scrape shows. Immutable; replaced as a whole after each sampling round."""

    seq: int
    #: Unix time the round finished (0 before the first round).
    timestamp: float
    node_name: str
    backend: str
    driver_version: str
    cuda_driver_version: str
    gpus: tuple[GpuSnapshot, ...]
    samples_total: int = 0
    #: ``None`` when no PodResources socket is configured.
    pod_resources_up: bool | None = None
    attribution_errors: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    version: str = __version__
    #: GPU-seconds allocated and used per charge key (``driver.exporter.chargeback``).
    charges: tuple[Charge, ...] = ()


@dataclass(frozen=True)
class Settings:
    interval: float = 1.0
    sample_timeout: float = 5.0
    proc_root: str = "/proc"
    #: The plugin's health state file (``<plugin-dir>/health.json``); "" when not shared with us.
    health_state_file: str = ""
    #: Seconds a chargeback key is kept after its last holder is gone.
    chargeback_retention: float = 900.0


class _Worker:
    """Reads one GPU on request in a thread of its own; at most one request outstanding."""

    def __init__(self, uuid: str, read: Callable[[str], GpuTelemetry]) -> None:
        self.uuid = uuid
        self._thread = CallThread(lambda: read(uuid), name=f"sample-{uuid}")
        self.pending: concurrent.futures.Future[GpuTelemetry] | None = None
        #: The event loop's view of ``pending`` (one per request, cancelled at stop).
        self.waiter: asyncio.Future[None] | None = None
        self.pending_since = 0.0
        self.timed_out = False

    def request(self, now: float) -> concurrent.futures.Future[GpuTelemetry] | None:
        """Ask for a reading unless one is still outstanding; returns the new request."""
        if self.pending is not None:
            return None
        self.pending = self._thread.submit()
        self.waiter = when_done(self.pending)
        self.pending_since = now
        self.timed_out = False
        return self.pending

    def stop(self) -> None:
        # A request still hanging in NVML must not call back into a closed event loop when it returns.
        if self.waiter is not None:
            self.waiter.cancel()
        self._thread.stop()


@dataclass
class _GpuRecord:
    gpu: Gpu
    telemetry: GpuTelemetry | None = None
    state: HwState = "ok"
    read_errors: dict[ReadErrorKey, int] = field(default_factory=dict)

    def count(self, key: ReadErrorKey) -> None:
        self.read_errors[key] = self.read_errors.get(key, 0) + 1


class Collector:
    """Samples the backend in the background and keeps the latest :class:`Snapshot`."""

    def __init__(
        self,
        inventory: Inventory,
        source: TelemetrySource,
        resolver: DeviceResolver,
        *,
        settings: Settings | None = None,
        pod_resources: AllocationSource | None = None,
        containers: Callable[[str], ContainerKey | None] | None = None,
        containers_ready: Callable[[], bool] = lambda: True,
        pod_phase: Callable[[str, str], str | None] | None = None,
        claims: ClaimIndex | None = None,
        xids: XidCounter | None = None,
        node_name: str = "",
        backend_name: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.inventory = inventory
        self.settings = settings or Settings()
        self._resolver = resolver
        self._pod_resources = pod_resources
        self._containers = containers
        self._containers_ready = containers_ready
        self._pod_phase = pod_phase
        self._claims = claims
        self._xids = xids
        self._xid_poller = CallThread(xids.poll, name="xid-events") if xids is not None else None
        self._xid_poll: concurrent.futures.Future[None] | None = None
        self._xid_waiter: asyncio.Future[None] | None = None
        self._shares = device_shares(inventory)
        self._chargeback = Chargeback(
            self._share_of, self.settings.chargeback_retention, memory_of=gpu_memory(inventory)
        )
        self._devices_changed = False
        self._charged_at: float | None = None
        self._clock = clock
        self._wall_clock = wall_clock
        self._records = {gpu.uuid: _GpuRecord(gpu) for gpu in inventory.gpus}
        self._workers = {gpu.uuid: _Worker(gpu.uuid, source.sample) for gpu in inventory.gpus}
        self._allocations: list[ContainerResources] = []
        self._pod_resources_up: bool | None = None
        self._attribution_errors: dict[str, int] = {}
        self._samples = 0
        self._health = (
            StateFileReader(self.settings.health_state_file) if self.settings.health_state_file else None
        )
        self._health_error: str | None = None
        self._last_round = clock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._snapshot = Snapshot(
            seq=0,
            timestamp=0.0,
            node_name=node_name,
            backend=backend_name,
            driver_version=inventory.driver_version or "",
            cuda_driver_version=inventory.cuda_driver_version or "",
            gpus=tuple(GpuSnapshot(r.gpu, None, "ok", MappingProxyType({})) for r in self._records.values()),
        )

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def healthy(self) -> bool:
        """The sampling loop is alive: a round finished recently (GPU failures do not count)."""
        return self._clock() - self._last_round <= max(10.0, 5 * self.settings.interval)

    async def start(self) -> None:
        """Take the first sample (bounded by the timeouts), then keep sampling in the background."""
        await self.tick()
        self._task = asyncio.create_task(self._loop(), name="exporter-sampler")

    async def stop(self) -> None:
        self._stopping.set()
        await cancel_and_wait(self._task)
        for worker in self._workers.values():
            worker.stop()
        if self._xid_poller is not None:
            if self._xid_waiter is not None:
                self._xid_waiter.cancel()  # a poll still in NVML must not call back into a closed loop
            self._xid_poller.stop()
        if self._xids is not None:
            with contextlib.suppress(Exception):
                self._xids.close()
        if self._claims is not None:
            await self._claims.close()
        if self._pod_resources is not None:
            await self._pod_resources.close()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            started = self._clock()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), max(0.0, self.settings.interval - (self._clock() - started))
                )
            if self._stopping.is_set():
                return
            try:
                await self.tick()
            except Exception:
                log.exception("sampling round failed")

    # -- one round ------------------------------------------------------------------------------------

    async def tick(self) -> Snapshot:
        """One sampling round; publishes and returns the new snapshot."""
        await self._read_gpus()
        if self._devices_changed:
            self._follow_devices()
        shares = await self._attribute()
        health = self._read_health()
        self._samples += 1
        self._last_round = self._clock()
        self._charge(shares)
        previous = self._snapshot
        self._snapshot = Snapshot(
            seq=previous.seq + 1,
            timestamp=self._wall_clock(),
            node_name=previous.node_name,
            backend=previous.backend,
            driver_version=previous.driver_version,
            cuda_driver_version=previous.cuda_driver_version,
            gpus=tuple(
                GpuSnapshot(
                    r.gpu,
                    r.telemetry,
                    _worse(r.state, health[uuid].condition) if uuid in health else r.state,
                    MappingProxyType(dict(r.read_errors)),
                    shares.get(uuid, ()),
                    health.get(uuid),
                    self._xids.counts(uuid) if self._xids is not None else None,
                    self._xids.last(uuid) if self._xids is not None else None,
                )
                for uuid, r in self._records.items()
            ),
            samples_total=self._samples,
            pod_resources_up=self._pod_resources_up,
            attribution_errors=MappingProxyType(dict(self._attribution_errors)),
            charges=self._chargeback.charges(),
        )
        return self._snapshot

    def _charge(self, shares: Mapping[str, tuple[ConsumerShare, ...]]) -> None:
        """Count the time since the previous round for this round's holders (at most a few intervals: after a
        stall the holders of the gap are not known)."""
        now = self._clock()
        elapsed = 0.0 if self._charged_at is None else min(now - self._charged_at, 5 * self.settings.interval)
        self._charged_at = now
        self._chargeback.advance(
            now,
            max(0.0, elapsed),
            ((uuid, r.gpu.product_name or "", shares.get(uuid, ())) for uuid, r in self._records.items()),
        )

    async def _read_gpus(self) -> None:
        now = self._clock()
        for worker in self._workers.values():
            worker.request(now)
        waiting = [w.waiter for w in self._workers.values() if w.waiter is not None and not w.waiter.done()]
        if self._xid_poller is not None and (self._xid_poll is None or self._xid_poll.done()):
            self._xid_poll = self._xid_poller.submit()
            self._xid_waiter = when_done(self._xid_poll)
            waiting.append(self._xid_waiter)
        if waiting:
            await asyncio.wait(waiting, timeout=min(self.settings.interval, self.settings.sample_timeout))
        now = self._clock()
        for uuid, worker in self._workers.items():
            self._settle(self._records[uuid], worker, now)

    def _settle(self, record: _GpuRecord, worker: _Worker, now: float) -> None:
        future = worker.pending
        if future is None:
            return
        if not future.done():
            if now - worker.pending_since > self.settings.sample_timeout and not worker.timed_out:
                worker.timed_out = True
                record.count(("sample", "timeout"))
                self._set_state(record, "failed", f"no answer within {self.settings.sample_timeout}s")
                record.telemetry = None
            return
        worker.pending, worker.waiter = None, None
        error = future.exception()
        if error is None:
            telemetry = future.result()
            self._note_mig_devices(record, telemetry)
            for name in telemetry.errors:
                record.count((name, "error"))
            record.telemetry = telemetry
            reason = "; ".join(f"{k}: {v}" for k, v in telemetry.errors.items())
            self._set_state(record, "degraded" if telemetry.errors else "ok", reason)
            return
        record.telemetry = None
        record.count(("sample", "lost" if isinstance(error, TelemetryError) else "error"))
        self._set_state(record, "failed", str(error) or type(error).__name__)

    def _note_mig_devices(self, record: _GpuRecord, telemetry: GpuTelemetry) -> None:
        found = telemetry.mig_devices
        if found is None or found == record.gpu.mig_devices:
            return
        before, after = {m.uuid for m in record.gpu.mig_devices}, {m.uuid for m in found}
        log.info(
            "MIG devices changed",
            gpu=record.gpu.uuid,
            added=",".join(sorted(after - before)) or "-",
            removed=",".join(sorted(before - after)) or "-",
        )
        record.gpu = dataclasses.replace(record.gpu, mig_devices=found)
        self._devices_changed = True

    def _follow_devices(self) -> None:
        """The GPUs' MIG devices changed: index the node's devices again for attribution and chargeback."""
        self._devices_changed = False
        self.inventory = Inventory(
            tuple(r.gpu for r in self._records.values()),
            self.inventory.driver_version,
            self.inventory.cuda_driver_version,
        )
        self._shares = device_shares(self.inventory)
        self._resolver.follow(self.inventory)

    def _share_of(self, gpu: str, mig: str) -> float:
        return self._shares(gpu, mig)

    def _read_health(self) -> dict[str, GpuHealth]:
        """Per-GPU health from the plugin's state file, so hw_status agrees with the taints."""
        if self._health is None:
            return {}
        state = self._health.read()
        if self._health.error != self._health_error:
            self._health_error = self._health.error
            if self._health.error:
                log.warning(
                    "health state file unreadable; showing the last state read", error=self._health.error
                )
        return {
            gpu.uuid: gpu_health(state, gpu.uuid, tuple(m.uuid for m in gpu.mig_devices))
            for gpu in self.inventory.gpus
        }

    def _set_state(self, record: _GpuRecord, state: HwState, reason: str) -> None:
        if state == record.state:
            return
        fields = {"gpu": record.gpu.uuid, "previous": record.state, "state": state}
        if state == "ok":
            log.info("gpu readable again", **fields)
        else:
            log.warning("gpu telemetry impaired", reason=reason, **fields)
        record.state = state

    # -- attribution -----------------------------------------------------------------------------------

    def count_attribution_error(self, source: str) -> None:
        self._attribution_errors[source] = self._attribution_errors.get(source, 0) + 1

    async def _attribute(self) -> dict[str, tuple[ConsumerShare, ...]]:
        if self._pod_resources is not None:
            try:
                self._allocations = await self._pod_resources.list()
                if self._pod_resources_up is False:
                    log.info("kubelet PodResources readable again")
                self._pod_resources_up = True
            except Exception as err:  # PodResourcesError, or anything a broken source throws
                self.count_attribution_error("pod_resources")
                if self._pod_resources_up is not False:
                    log.warning("kubelet PodResources unavailable; keeping the last answer", error=str(err))
                self._pod_resources_up = False
        try:
            consumers = self._resolver.consumers(self._holders())
        except Exception:
            # Better no attribution this round than a wrong one, and the round (telemetry) goes on.
            self.count_attribution_error("resolve")
            log.exception("attribution failed; GPUs shown without consumers this round")
            return {}
        owner_of = self._owner_lookup()
        return {
            uuid: split_gpu(self._records[uuid].telemetry, found, owner_of)
            for uuid, found in consumers.items()
            if uuid in self._records
        }

    def _holders(self) -> list[ContainerResources]:
        """The kubelet's allocations less finished pods and admin-access devices (``driver.exporter.holders``)."""
        claims = self._claims
        if claims is not None:
            claims.want(
                {(d.claim_namespace, d.claim_name) for c in self._allocations for d in c.claim_devices}
            )
        return holders(
            self._allocations,
            self._pod_phase,
            claims.facts if claims is not None else lambda _ns, _name: None,
        )

    def _owner_lookup(self) -> OwnerOf | None:
        """pid -> container, through ``<proc_root>/<pid>/cgroup`` and the node's pods; ``None`` if unknown."""
        containers = self._containers
        if containers is None or not self._containers_ready():
            return None
        cache: dict[int, ContainerKey | None] = {}

        def owner_of(pid: int) -> ContainerKey | None:
            if pid not in cache:
                cache[pid] = self._trace(containers, pid)
            return cache[pid]

        return owner_of

    def _trace(self, containers: Callable[[str], ContainerKey | None], pid: int) -> ContainerKey | None:
        """The container of ``pid``; :data:`OUTSIDE_PODS` for a host process; ``None`` if it cannot be told."""
        try:
            ref = read_cgroup(self.settings.proc_root, pid)
        except FileNotFoundError:
            # The process ended, or --proc-root does not show the host's PIDs: either way it is untraced.
            return None
        except OSError as err:
            self.count_attribution_error("cgroup")
            log.debug("cgroup unreadable", pid=pid, error=str(err))
            return None
        if ref is None:
            return OUTSIDE_PODS
        # A pod-level process (no container id) or a container the pod index does not know yet.
        return containers(ref.container_id) if ref.container_id else None
