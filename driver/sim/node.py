"""A simulated node: the kubelet's pod lifecycle around DRA, on top of the plugin manager and the runtime.

For every pod bound to this node, the node agent does what the kubelet does (1.34/1.35):

1. resolve the pod's claims (``resourceClaimName`` or ``status.resourceClaimStatuses``), GET each, check
   the pod is in ``status.reservedFor``, and call ``NodePrepareResources`` once per driver for the claims
   of that driver -- through the real plugin's socket. A failure is recorded as a
   ``FailedPrepareDynamicResources`` event and retried with backoff; the pod stays ``ContainerCreating``;
   Claims live in a node-wide cache (as the kubelet's claim info cache): a claim is marked prepared only
   once every driver of its allocation answered, and a prepared claim is not prepared again for a second pod;
2. run the init containers to completion, one after the other (a sidecar -- an init container with
   ``restartPolicy: Always`` -- is started and kept running instead), then start each container with the CDI
   device ids of the claims/requests it references (``resources.claims[{name, request}]``; a device whose
   ``request_names`` is empty serves every request), and report status (phase, ``initContainerStatuses`` and
   ``containerStatuses`` with ``containerd://`` ids);
3. keep the PodResources state current for the exporter (regular containers and sidecars, each with every
   device of each claim it references; a pod that finished is no longer listed), and expose container logs
   through the API server;
4. when the pod finishes or is deleted: stop containers and call ``NodeUnprepareResources`` (every driver of
   the claim) for claims no other pod on this node still references. A failed unprepare keeps the claim
   cached, is reported as a ``FailedUnprepareDynamicResources`` event naming the claim and driver, and is
   retried with backoff (10 s doubling up to the kubelet's 60 s reconcile period; configurable);
   a pod marked for deletion stays Terminating until all its claims are unprepared, then is removed
   (grace period 0);
5. with the ``ResourceHealthStatus`` gate, report each container's devices' health from the plugin's health
   stream in ``containerStatuses[].allocatedResourcesStatus`` (``name: claim:<entry>[/<request>]``,
   ``resources[{resourceID: <first CDI id>, health}]``), and report again when that health changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver.allocation.extended import container_requests
from driver.kube.client import NODES, PODS, RESOURCE_CLAIMS, ApiError, KubeClient
from driver.log import get_logger
from driver.sim import events
from driver.sim.deviceplugin import DevicePluginError, SimDevicePlugin
from driver.sim.informer import WorkQueue, watch_forever
from driver.sim.kubelet import KubeletError, SimKubelet
from driver.sim.podresources import ClaimDevice, ClaimResources, PodResourcesState
from driver.sim.runtime import ContainerCreateError, ContainerHandle, ContainerSpec, SimRuntime
from driver.sim.timestamps import now, transition_time
from driver.state.api import ClaimRef, PreparedDevice
from driver.tasks import cancel_and_wait

log = get_logger(__name__)

JSON = dict[str, Any]
LogSink = Callable[[str, str, str, Path], None]
"""``sink(namespace, pod, container, log_path)``: make a container's log readable through the API."""

RETRY_INITIAL = 0.5
RETRY_MAX = 10.0
# A pod whose sync failed (its claims could not be prepared) is synced again after the kubelet's pod worker
# backoff: 10 s plus up to half of that again (jitter); or at once when the pod changes.
PREPARE_RETRY = 10.0
PREPARE_RETRY_JITTER = 0.5
# A failed unprepare is retried by the pod worker (10 s backoff) and the DRA reconcile loop (every 60 s).
UNPREPARE_RETRY_INITIAL = 10.0
UNPREPARE_RETRY_MAX = 60.0


@dataclass
class ClaimInfo:
    """The node's cache entry for one ResourceClaim (the kubelet's claim info cache)."""

    ref: ClaimRef
    drivers: dict[str, list[PreparedDevice]]  # every driver of the allocation -> devices it prepared
    pods: set[str] = field(default_factory=set)  # UIDs of the pods on this node that reference it
    prepared: bool = False  # every driver's NodePrepareResources succeeded

    def devices(self) -> list[tuple[str, PreparedDevice]]:
        return [(driver, d) for driver, devices in self.drivers.items() for d in devices]


@dataclass
class PodState:
    uid: str
    namespace: str
    name: str
    claims: dict[str, ClaimInfo] = field(default_factory=dict)  # pod claim entry name -> claim
    containers: dict[str, ContainerHandle] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    started: bool = False
    finished: bool = False
    failures: int = 0
    watchers: list[asyncio.Task[None]] = field(default_factory=list)
    pod: JSON = field(default_factory=dict)  # the pod as it was started
    init_failed: bool = False
    deleting: bool = False  # forget the pod once its claims are unprepared
    remove: bool = False  # ... and delete the pod object (it was marked for deletion)
    unprepare_failures: int = 0
    release_pending: bool = False  # a retry of the release is scheduled
    restarting: set[str] = field(default_factory=set)  # containers waiting for their restart


def _serves(device: PreparedDevice, request: str) -> bool:
    """Whether a prepared device goes to a container that references ``request`` of its claim."""
    return not request or not device.request_names or request in device.request_names


#: The key of a pod's extended-resource claim among its claims (no pod claim entry can be named so).
EXTENDED_ENTRY = "<extended resources>"


def extended_mappings(pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
    """Request name -> resource name of the pod's extended-resource claim, for ``container``
    (``status.extendedResourceClaimStatus.requestMappings`` of resources the container asks for)."""
    status = (pod.get("status") or {}).get("extendedResourceClaimStatus") or {}
    wanted = set(container_requests(container))
    return {
        str(m.get("requestName")): str(m.get("resourceName"))
        for m in status.get("requestMappings") or []
        if m.get("containerName") == container.get("name") and m.get("resourceName") in wanted
    }


def _claim_refs(container: Mapping[str, Any], extended: Sequence[str]) -> list[Mapping[str, Any]]:
    """The container's ``resources.claims``, and its requests of the extended-resource claim."""
    refs: list[Mapping[str, Any]] = list((container.get("resources") or {}).get("claims") or [])
    return refs + [{"name": EXTENDED_ENTRY, "request": r} for r in extended]


def container_cdi_ids(
    container: Mapping[str, Any], claims: Mapping[str, ClaimInfo], extended: Sequence[str] = ()
) -> list[str]:
    """The CDI ids the kubelet passes to the runtime for one container (deduplicated, in order)."""
    ids: dict[str, None] = {}
    for ref in _claim_refs(container, extended):
        claim = claims.get(ref.get("name", ""))
        if claim is None:
            continue
        request = ref.get("request") or ""
        for _, device in claim.devices():
            if _serves(device, request):
                ids.update(dict.fromkeys(device.cdi_device_ids))
    return list(ids)


def _container_claims(
    container: Mapping[str, Any], claims: Mapping[str, ClaimInfo], extended: Sequence[str] = ()
) -> list[ClaimResources]:
    """PodResources ``dynamic_resources`` of one container, as the kubelet's GetDynamicResources builds them:
    one entry per ``resources.claims`` reference, and the extended-resource claim when the container has
    requests in it, with every device of the claim (all drivers; the request is not applied here, unlike
    for CDI injection)."""
    out: list[ClaimResources] = []
    refs = list((container.get("resources") or {}).get("claims") or [])
    for ref in refs + ([{"name": EXTENDED_ENTRY}] if extended else []):
        claim = claims.get(ref.get("name", ""))
        if claim is None or not claim.prepared:
            continue
        devices = tuple(
            ClaimDevice(driver, d.pool_name, d.device_name, tuple(d.cdi_device_ids), d.share_id)
            for driver, d in claim.devices()
        )
        out.append(ClaimResources(claim.ref.name, claim.ref.namespace, devices))
    return out


def _is_sidecar(container: Mapping[str, Any]) -> bool:
    """An init container that keeps running next to the main containers (``restartPolicy: Always``)."""
    return container.get("restartPolicy") == "Always"


def _env(container: Mapping[str, Any], pod: Mapping[str, Any], node: str) -> dict[str, str]:
    """Container env with the downward-API field refs the sandbox needs."""
    meta = pod["metadata"]
    fields = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": node,
    }
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif (ref := (var.get("valueFrom") or {}).get("fieldRef")) and ref.get("fieldPath") in fields:
            env[var["name"]] = fields[ref["fieldPath"]]
    return env


class SimNode:
    def __init__(
        self,
        *,
        name: str,
        kube: KubeClient,
        registry_dir: str,
        runtime: SimRuntime,
        containers_dir: Path,
        proc_root: Path | None = None,
        pod_resources: PodResourcesState | None = None,
        log_sink: LogSink | None = None,
        wiping_delay: float = 30.0,
        unprepare_retry_initial: float = UNPREPARE_RETRY_INITIAL,
        unprepare_retry_max: float = UNPREPARE_RETRY_MAX,
        device_plugin: SimDevicePlugin | None = None,
        prepare_retry: float = PREPARE_RETRY,
    ) -> None:
        self.name = name
        self.prepare_retry = prepare_retry
        self.device_plugin = device_plugin
        self.kube = kube
        self.runtime = runtime
        self.containers_dir = containers_dir
        self.proc_root = proc_root
        self.pod_resources = pod_resources or PodResourcesState()
        self.log_sink = log_sink
        self.unprepare_retry_initial = unprepare_retry_initial
        self.unprepare_retry_max = unprepare_retry_max
        self.kubelet = SimKubelet(registry_dir, kube=kube, node_name=name, wiping_delay=wiping_delay)
        self.kubelet.health_listeners.append(self._on_health_change)
        self.pods: dict[str, PodState] = {}
        self.claims: dict[str, ClaimInfo] = {}  # claim UID -> cache entry, until unprepared
        self._queue = WorkQueue(self._sync, f"node-{name}")
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.kubelet.start()
        if self.device_plugin is not None:  # the device manager reports the plugin's units
            await self.kube.patch(
                NODES, self.name, {"status": self.device_plugin.node_status()}, subresource="status"
            )
        self._tasks.append(asyncio.create_task(self._queue.run(), name=f"node-{self.name}-queue"))
        self._tasks.append(
            asyncio.create_task(
                watch_forever(self.kube, PODS, self._on_pod, field_selector=f"spec.nodeName={self.name}"),
                name=f"node-{self.name}-pods",
            )
        )

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        for state in list(self.pods.values()):
            await self._stop_containers(state)
        await self.kubelet.stop()

    def _on_health_change(self, driver: str) -> None:
        for state in self.pods.values():
            if (
                state.started
                and not state.finished
                and any(driver in c.drivers for c in state.claims.values())
            ):
                self._queue.add(f"health:{state.uid}")

    def _on_pod(self, event: str, pod: JSON) -> None:
        meta = pod["metadata"]
        if event == "DELETED":
            self._queue.add(f"gone:{meta['uid']}")
        else:
            self._queue.add(f"{meta['namespace']}/{meta['name']}/{meta['uid']}")

    # -- sync ------------------------------------------------------------------------------------

    async def _sync(self, key: str) -> None:
        if key.startswith("health:"):
            state = self.pods.get(key[7:])
            if state is not None and state.started and not state.finished:
                await self._report(state.pod, state)
            return
        if key.startswith("release:"):
            state = self.pods.get(key[8:])
            if state is not None:
                state.release_pending = False
                await self._release(state)
            return
        if key.startswith("gone:"):
            state = self.pods.get(key[5:])
            if state is not None:
                await self._teardown(state, remove=False)
            return
        namespace, name, uid = key.split("/", 2)
        try:
            pod = await self.kube.get(PODS, name, namespace)
        except ApiError as err:
            if err.not_found:
                await self._sync(f"gone:{uid}")
                return
            raise
        if pod["metadata"]["uid"] != uid:
            return
        state = self.pods.setdefault(uid, PodState(uid, namespace, name))
        if pod["metadata"].get("deletionTimestamp"):
            await self._teardown(state, remove=True)
            return
        if state.finished or state.started:
            return
        state.pod = pod
        await self._start_pod(pod, state)

    async def _start_pod(self, pod: JSON, state: PodState) -> None:
        try:
            await self._prepare(pod, state)
        except (KubeletError, ApiError, _NotReadyError) as err:
            state.failures += 1
            delay = self.prepare_retry * (1 + PREPARE_RETRY_JITTER * random.random())
            message = f"Failed to prepare dynamic resources: {err}"
            await self._event(pod, "Warning", "FailedPrepareDynamicResources", message)
            await self._set_waiting(pod, "ContainerCreating", str(err))
            log.warning(
                "pod not started; retrying",
                pod=f"{state.namespace}/{state.name}",
                error=str(err),
                retry_in_s=delay,
            )
            asyncio.get_running_loop().call_later(
                delay, self._queue.add, f"{state.namespace}/{state.name}/{state.uid}"
            )
            return
        state.started = True
        await self._run_containers(pod, state)

    def _claim_info(self, claim: JSON) -> ClaimInfo:
        """The cache entry of a claim, created with every driver of its allocation."""
        meta = claim["metadata"]
        info = self.claims.get(meta["uid"])
        if info is None:
            results = ((claim["status"].get("allocation") or {}).get("devices") or {}).get("results") or []
            drivers: dict[str, list[PreparedDevice]] = {
                d: [] for d in dict.fromkeys(r["driver"] for r in results)
            }
            info = ClaimInfo(ClaimRef(meta["namespace"], meta["uid"], meta["name"]), drivers)
            self.claims[meta["uid"]] = info
        return info

    async def _prepare(self, pod: JSON, state: PodState) -> None:
        """NodePrepareResources for the pod's claims that are not prepared yet, batched per driver.

        Every driver must be registered before any call is made; a claim is marked prepared only once all of
        its drivers succeeded, so a retry after a partial failure asks every driver again."""
        pending: dict[str, ClaimInfo] = {}
        for entry, claim_name in _pod_claims(pod):
            claim = await self.kube.get(RESOURCE_CLAIMS, claim_name, state.namespace)
            reserved = (claim.get("status") or {}).get("reservedFor") or []
            if not any(r.get("uid") == state.uid for r in reserved):
                raise _NotReadyError(
                    f"pod is not in the reservedFor of ResourceClaim {state.namespace}/{claim_name}"
                )
            info = self._claim_info(claim)
            info.pods.add(state.uid)
            state.claims[entry] = info
            if not info.prepared:
                pending[info.ref.uid] = info
        batches = _batches(pending.values())
        for driver in batches:
            self.kubelet.pick(driver)
        for driver, refs in batches.items():
            prepared = await self.kubelet.prepare(driver, refs)
            for ref in refs:
                pending[ref.uid].drivers[driver] = prepared[ref.uid]
        for info in pending.values():
            info.prepared = True

    async def _run_containers(self, pod: JSON, state: PodState) -> None:
        spec = pod["spec"]
        for init in spec.get("initContainers") or []:
            handle = await self._start_container(pod, state, init)
            if handle is not None and _is_sidecar(init):
                continue
            if handle is not None:
                await self._report(pod, state)
            if handle is None or await handle.wait() != 0:
                state.init_failed = True
                await self._finish(pod, state)
                return
        for container in spec.get("containers") or []:
            await self._start_container(pod, state, container)
        await self._report(pod, state)
        for container in [*_sidecars(pod), *(spec.get("containers") or [])]:
            if container["name"] in state.containers:
                state.watchers.append(asyncio.create_task(self._watch_container(pod, state, container)))

    async def _start_container(self, pod: JSON, state: PodState, container: JSON) -> ContainerHandle | None:
        name = container["name"]
        command = [*(container.get("command") or []), *(container.get("args") or [])]
        plugin_devices: dict[str, list[str]] = {}
        mappings = extended_mappings(pod, container)
        extended = list(mappings)
        cdi_ids = container_cdi_ids(container, state.claims, extended)
        plugin = self.device_plugin
        count = container_requests(container).get(plugin.resource, 0) if plugin is not None else 0
        if plugin is not None and plugin.resource in mappings.values():
            count = 0  # the scheduler gave it through DRA
        if plugin is not None and count:
            try:
                uuids = plugin.allocate(state.uid, name, count)
            except DevicePluginError as err:
                await self._event(pod, "Warning", "UnexpectedAdmissionError", str(err))
                await self._set_waiting(pod, "UnexpectedAdmissionError", str(err))
                return None
            plugin_devices[plugin.resource] = uuids
            cdi_ids += plugin.cdi_ids(uuids)
        spec = ContainerSpec(
            name=name,
            command=command or ["true"],
            sandbox_dir=self.containers_dir / f"{state.namespace}_{state.name}_{state.uid[:8]}" / name,
            env=_env(container, pod, self.name),
            working_dir=container.get("workingDir"),
            cdi_devices=cdi_ids,
            pod_uid=state.uid,
            pod_name=state.name,
            pod_namespace=state.namespace,
            proc_root=self.proc_root,
        )
        try:
            handle = await self.runtime.run_container(spec)
        except ContainerCreateError as err:
            await self._event(pod, "Warning", "Failed", str(err))
            await self._set_waiting(pod, "CreateContainerError", str(err))
            return None
        state.containers[name] = handle
        if self.log_sink is not None:
            self.log_sink(state.namespace, state.name, name, handle.log_path)
        if _listed(pod, container):
            self.pod_resources.set_container(
                state.namespace,
                state.name,
                name,
                devices=plugin_devices,
                claims=_container_claims(container, state.claims, extended),
            )
        return handle

    async def _watch_container(self, pod: JSON, state: PodState, container: JSON) -> None:
        name = container["name"]
        code = await state.containers[name].wait()
        policy = "Always" if _is_sidecar(container) else pod["spec"].get("restartPolicy", "Always")
        if (policy == "Always" or (policy == "OnFailure" and code != 0)) and not state.finished:
            state.restarts[name] = state.restarts.get(name, 0) + 1
            state.restarting.add(name)
            try:
                await asyncio.sleep(min(RETRY_MAX, RETRY_INITIAL * 2 ** state.restarts[name]))
                if state.finished:
                    return
                handle = await self._start_container(pod, state, container)
            finally:
                state.restarting.discard(name)
            if handle is not None:
                await self._report(pod, state)
                await self._watch_container(pod, state, container)
            return
        if state.finished:
            return
        await self._report(pod, state)
        main = [
            state.containers[c["name"]]
            for c in pod["spec"].get("containers") or []
            if c["name"] in state.containers
        ]
        if not state.restarting and all(not h.running for h in main):
            await self._finish(pod, state)

    async def _finish(self, pod: JSON, state: PodState) -> None:
        """The pod is done: stop its sidecars and release devices (the pod object stays, like a Job's pod)."""
        state.finished = True
        sidecars = [state.containers[c["name"]] for c in _sidecars(pod) if c["name"] in state.containers]
        await asyncio.gather(*(h.terminate(grace=5.0) for h in sidecars if h.running))
        await self._report(pod, state)
        # The kubelet lists active pods only: a finished pod leaves PodResources List.
        self.pod_resources.set_active(state.namespace, state.name, False)
        await self._release(state)

    # -- teardown --------------------------------------------------------------------------------

    async def _teardown(self, state: PodState, *, remove: bool) -> None:
        state.finished = True
        state.deleting = True
        state.remove = state.remove or remove
        await self._stop_containers(state)
        await self._release(state)

    async def _stop_containers(self, state: PodState) -> None:
        for task in state.watchers:
            task.cancel()
        await asyncio.gather(*(h.terminate(grace=5.0) for h in state.containers.values() if h.running))
        self.pod_resources.remove_pod(state.namespace, state.name)

    async def _release(self, state: PodState) -> None:
        """Unprepare the pod's claims; retried with backoff until that succeeded. Only then is a deleted pod
        forgotten and its object removed: until then it stays Terminating, as with the kubelet."""
        if self.device_plugin is not None:
            self.device_plugin.release(state.uid)
        if not await self._unprepare(state):
            if not state.release_pending:
                state.unprepare_failures += 1
                delay = min(
                    self.unprepare_retry_max,
                    self.unprepare_retry_initial * 2 ** (state.unprepare_failures - 1),
                )
                state.release_pending = True
                asyncio.get_running_loop().call_later(delay, self._queue.add, f"release:{state.uid}")
            return
        state.unprepare_failures = 0
        if not state.deleting:
            return
        self.pods.pop(state.uid, None)
        if state.remove:
            with contextlib.suppress(ApiError):
                await self.kube.delete(
                    PODS, state.name, state.namespace, uid=state.uid, grace_period_seconds=0
                )

    async def _unprepare(self, state: PodState) -> bool:
        """NodeUnprepareResources (every driver of each claim) for the pod's claims that no other pod on this
        node references; a claim still referenced only loses this pod's reference. True once the pod holds
        no claim any more; on a failure the claims stay cached (and referenced) for the retry."""
        releasing: dict[str, ClaimInfo] = {}
        for info in state.claims.values():
            if self.claims.get(info.ref.uid) is not info:
                continue
            if info.pods - {state.uid}:
                info.pods.discard(state.uid)
            else:
                releasing[info.ref.uid] = info
        for driver, refs in _batches(releasing.values()).items():
            try:
                await self.kubelet.unprepare(driver, refs)
            except KubeletError as err:
                claims = ", ".join(f"{r.namespace}/{r.name}" for r in refs)
                message = f"unprepare of ResourceClaim {claims} with driver {driver} failed: {err}"
                log.warning(
                    "unprepare failed; retrying",
                    pod=f"{state.namespace}/{state.name}",
                    claims=claims,
                    driver=driver,
                    error=str(err),
                )
                await self._event(_pod_ref(state), "Warning", "FailedUnprepareDynamicResources", message)
                return False
        for uid, info in releasing.items():
            self.claims.pop(uid, None)
            info.pods.discard(state.uid)
            info.prepared = False
        state.claims.clear()
        return True

    # -- status ----------------------------------------------------------------------------------

    async def _report(self, pod: JSON, state: PodState) -> None:
        spec = pod["spec"]
        inits = [c for c in spec.get("initContainers") or [] if c["name"] in state.containers]
        mains = [c for c in spec.get("containers") or [] if c["name"] in state.containers]
        init_statuses = [self._status_of(c, state) for c in inits]
        statuses = [self._status_of(c, state) for c in mains]
        main_handles = [state.containers[c["name"]] for c in mains]
        phase = _phase(main_handles, len(spec.get("containers") or []), state.init_failed)
        unready = [c["name"] for c in spec.get("containers") or [] if not self._running(state, c["name"])]
        unready += [c["name"] for c in inits if _is_sidecar(c) and not self._running(state, c["name"])]
        pending_inits = [
            c["name"] for c in spec.get("initContainers") or [] if not main_handles and not _is_sidecar(c)
        ]
        status: JSON = {
            "phase": phase,
            "hostIP": "10.0.0.1",
            "startTime": (pod.get("status") or {}).get("startTime") or now(),
            "containerStatuses": statuses,
            "conditions": pod_conditions(
                await self._current(pod),
                sandbox=True,
                pending_inits=pending_inits,
                unready=unready,
                completed=phase in ("Succeeded", "Failed"),
            ),
            "observedGeneration": pod["metadata"].get("generation"),
        }
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        with contextlib.suppress(ApiError):
            await self.kube.patch(PODS, state.name, {"status": status}, state.namespace, subresource="status")

    @staticmethod
    def _running(state: PodState, name: str) -> bool:
        handle = state.containers.get(name)
        return handle is not None and handle.running

    async def _current(self, pod: JSON) -> JSON:
        """The pod as the API server has it now (its conditions' transition times), else as given."""
        try:
            return await self.kube.get(PODS, pod["metadata"]["name"], pod["metadata"]["namespace"])
        except ApiError:
            return pod

    def _status_of(self, container: Mapping[str, Any], state: PodState) -> JSON:
        status = self._container_status(container["name"], state.containers[container["name"]], state)
        resources = self._resources_status(container, state)
        if resources:
            status["allocatedResourcesStatus"] = resources
        return status

    def _container_status(self, name: str, handle: ContainerHandle, state: PodState) -> JSON:
        record = handle.record
        if handle.running:
            current: JSON = {"running": {"startedAt": record.get("startedAt") or now()}}
        else:
            code = handle.exit_code or 0
            current = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": record.get("startedAt") or now(),
                    "finishedAt": record.get("finishedAt") or now(),
                    "containerID": f"containerd://{handle.id}",
                }
            }
        return {
            "name": name,
            "containerID": f"containerd://{handle.id}",
            "image": "sandbox",
            "imageID": "",
            "ready": handle.running,
            "started": handle.running,
            "restartCount": state.restarts.get(name, 0),
            "state": current,
        }

    def _resources_status(self, container: Mapping[str, Any], state: PodState) -> list[JSON]:
        """``allocatedResourcesStatus`` of one container: its claims' devices and their health."""
        if not self.kubelet.resource_health_status:
            return []
        out: list[JSON] = []
        for ref in (container.get("resources") or {}).get("claims") or []:
            claim = state.claims.get(ref.get("name", ""))
            if claim is None:
                continue
            request = ref.get("request") or ""
            out.append(
                {
                    "name": f"claim:{ref['name']}" + (f"/{request}" if request else ""),
                    "resources": [
                        {
                            "resourceID": d.cdi_device_ids[0]
                            if d.cdi_device_ids
                            else f"{driver}/{d.pool_name}/{d.device_name}",
                            "health": self.kubelet.device_health(driver, d.pool_name, d.device_name),
                            **self._health_message(driver, d),
                        }
                        for driver, d in claim.devices()
                        if _serves(d, request)
                    ],
                }
            )
        return out

    def _health_message(self, driver: str, device: PreparedDevice) -> JSON:
        """``message``: what the plugin said with the device's health (kept while the report is current)."""
        record = self.kubelet.health_record(driver, device.pool_name, device.device_name)
        health = self.kubelet.device_health(driver, device.pool_name, device.device_name)
        if record is None or not record.message or health == "Unknown":
            return {}
        return {"message": record.message}

    async def _set_waiting(self, pod: JSON, reason: str, message: str) -> None:
        statuses = [
            {
                "name": c["name"],
                "ready": False,
                "restartCount": 0,
                "image": "sandbox",
                "imageID": "",
                "state": {"waiting": {"reason": reason, "message": message}},
            }
            for c in pod["spec"].get("containers") or []
        ]
        # The pod's sandbox is created only after its claims are prepared (PodReadyToStartContainers).
        conditions = pod_conditions(
            await self._current(pod),
            sandbox=reason != "ContainerCreating",
            pending_inits=[c["name"] for c in pod["spec"].get("initContainers") or [] if not _is_sidecar(c)],
            unready=[c["name"] for c in pod["spec"].get("containers") or []],
            completed=False,
        )
        status = {
            "phase": "Pending",
            "containerStatuses": statuses,
            "conditions": conditions,
            "observedGeneration": pod["metadata"].get("generation"),
        }
        with contextlib.suppress(ApiError):
            await self.kube.patch(
                PODS,
                pod["metadata"]["name"],
                {"status": status},
                pod["metadata"]["namespace"],
                subresource="status",
            )

    async def _event(self, pod: JSON, kind: str, reason: str, message: str) -> None:
        event = events.component_event(pod, kind, reason, message, component=events.KUBELET, host=self.name)
        await events.record(self.kube, event)


def pod_conditions(
    pod: Mapping[str, Any],
    *,
    sandbox: bool,
    pending_inits: Sequence[str],
    unready: Sequence[str],
    completed: bool,
) -> list[JSON]:
    """The kubelet's pod conditions, in its order: ``PodReadyToStartContainers`` (the sandbox exists),
    ``Initialized``, ``Ready``, ``ContainersReady``, ``PodScheduled``; each with ``lastProbeTime: null``, a
    ``lastTransitionTime`` that moves only when its status changes, and the pod generation it describes."""
    previous = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
    generation = (pod.get("metadata") or {}).get("generation")

    def condition(kind: str, ok: bool, reason: str = "", message: str = "") -> JSON:
        status = "True" if ok else "False"
        out: JSON = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": transition_time(previous.get(kind), status),
            "observedGeneration": generation,
        }
        if not ok and reason:
            out["reason"] = reason
            out["message"] = message
        return out

    if completed:
        not_ready = ("PodCompleted", "")
    else:
        not_ready = ("ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
    return [
        condition("PodReadyToStartContainers", sandbox),
        condition(
            "Initialized",
            not pending_inits,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(pending_inits)}]",
        ),
        condition("Ready", not unready and not completed, *not_ready),
        condition("ContainersReady", not unready and not completed, *not_ready),
        condition("PodScheduled", True),
    ]


def _phase(handles: Sequence[ContainerHandle], expected: int, init_failed: bool) -> str:
    """The pod phase from its main containers (sidecars and init containers do not count once done)."""
    if init_failed:
        return "Failed"
    if len(handles) < expected:
        return "Pending"
    if not handles or any(h.running for h in handles):
        return "Running"
    return "Succeeded" if all(h.exit_code == 0 for h in handles) else "Failed"


def _sidecars(pod: Mapping[str, Any]) -> list[JSON]:
    return [c for c in pod["spec"].get("initContainers") or [] if _is_sidecar(c)]


def _listed(pod: Mapping[str, Any], container: Mapping[str, Any]) -> bool:
    """Whether PodResources lists a container: main containers and sidecars, not run-to-completion inits."""
    return _is_sidecar(container) or container in (pod["spec"].get("containers") or [])


def _batches(claims: Iterable[ClaimInfo]) -> dict[str, list[ClaimRef]]:
    """Claims per driver: a claim spanning several drivers goes to each of them."""
    out: dict[str, list[ClaimRef]] = {}
    for info in claims:
        for driver in info.drivers:
            out.setdefault(driver, []).append(info.ref)
    return out


def _pod_ref(state: PodState) -> JSON:
    """Enough of the pod for an event about it (it may be gone from the API server already)."""
    return {"metadata": {"name": state.name, "namespace": state.namespace, "uid": state.uid}}


class _NotReadyError(Exception):
    """The pod cannot start yet (its claims are not reserved for it); retried."""


def _pod_claims(pod: Mapping[str, Any]) -> Sequence[tuple[str, str]]:
    """(pod claim entry name, ResourceClaim name) for each entry that has a claim."""
    statuses = {
        s["name"]: s.get("resourceClaimName")
        for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []
    }
    out: list[tuple[str, str]] = []
    for entry in (pod.get("spec") or {}).get("resourceClaims") or []:
        name = entry.get("resourceClaimName") or statuses.get(entry["name"])
        if name:
            out.append((entry["name"], name))
        elif entry.get("resourceClaimTemplateName"):
            raise _NotReadyError(f"the ResourceClaim for pod claim {entry['name']} has not been created yet")
    extended = (pod.get("status") or {}).get("extendedResourceClaimStatus") or {}
    if extended.get("resourceClaimName"):
        out.append((EXTENDED_ENTRY, str(extended["resourceClaimName"])))
    return out
