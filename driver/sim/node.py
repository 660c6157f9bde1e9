"""A simulated node: the kubelet's pod lifecycle around DRA, on top of the plugin manager and the runtime.

For every pod bound to this node, the node agent does what the kubelet does (1.34/1.35):

1. resolve the pod's claims (``resourceClaimName`` or ``status.resourceClaimStatuses``), GET each, check
   the pod is in ``status.reservedFor``, and call ``NodePrepareResources`` once per driver for the claims
   of that driver -- through the real plugin's socket. A failure is recorded as a
   ``FailedPrepareDynamicResources`` event and retried with backoff; the pod stays ``ContainerCreating``;
2. start each container with the CDI device ids of the claims/requests it references
   (``resources.claims[{name, request}]``; a device whose ``request_names`` is empty serves every request),
   init containers first, and report status (phase, containerStatuses with ``containerd://`` ids);
3. keep the PodResources state current for the exporter, and expose container logs through the API server;
4. when the pod finishes or is deleted: stop containers and call ``NodeUnprepareResources`` for claims no
   other live pod on this node still uses; a pod marked for deletion is then removed (grace period 0);
5. with the ``ResourceHealthStatus`` gate, report each container's devices' health from the plugin's health
   stream in ``containerStatuses[].allocatedResourcesStatus`` (``name: claim:<entry>[/<request>]``,
   ``resources[{resourceID: <first CDI id>, health}]``), and report again when that health changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver.kube.client import EVENTS, PODS, RESOURCE_CLAIMS, ApiError, KubeClient
from driver.log import get_logger
from driver.sim.informer import WorkQueue, watch_forever
from driver.sim.kubelet import KubeletError, SimKubelet
from driver.sim.podresources import ClaimResources, PodResourcesState
from driver.sim.runtime import ContainerCreateError, ContainerHandle, ContainerSpec, SimRuntime
from driver.state.api import ClaimRef, PreparedDevice

log = get_logger(__name__)

JSON = dict[str, Any]
LogSink = Callable[[str, str, str, Path], None]
"""``sink(namespace, pod, container, log_path)``: make a container's log readable through the API."""

RETRY_INITIAL = 0.5
RETRY_MAX = 10.0


@dataclass
class PreparedClaim:
    ref: ClaimRef
    driver: str
    devices: list[PreparedDevice]


@dataclass
class PodState:
    uid: str
    namespace: str
    name: str
    claims: dict[str, PreparedClaim] = field(default_factory=dict)  # pod claim entry name -> claim
    containers: dict[str, ContainerHandle] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    started: bool = False
    finished: bool = False
    failures: int = 0
    watchers: list[asyncio.Task[None]] = field(default_factory=list)
    pod: JSON = field(default_factory=dict)  # the pod as it was started


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def container_cdi_ids(container: Mapping[str, Any], claims: Mapping[str, PreparedClaim]) -> list[str]:
    """The CDI ids the kubelet passes to the runtime for one container (deduplicated, in order)."""
    ids: dict[str, None] = {}
    for ref in (container.get("resources") or {}).get("claims") or []:
        claim = claims.get(ref.get("name", ""))
        if claim is None:
            continue
        request = ref.get("request") or ""
        for device in claim.devices:
            if not request or not device.request_names or request in device.request_names:
                ids.update(dict.fromkeys(device.cdi_device_ids))
    return list(ids)


def _container_claims(
    container: Mapping[str, Any], claims: Mapping[str, PreparedClaim]
) -> list[ClaimResources]:
    out: list[ClaimResources] = []
    for ref in (container.get("resources") or {}).get("claims") or []:
        claim = claims.get(ref.get("name", ""))
        if claim is None:
            continue
        request = ref.get("request") or ""
        devices = [
            d for d in claim.devices if not request or not d.request_names or request in d.request_names
        ]
        out.append(ClaimResources.from_prepared(claim.ref.namespace, claim.ref.name, claim.driver, devices))
    return out


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
    ) -> None:
        self.name = name
        self.kube = kube
        self.runtime = runtime
        self.containers_dir = containers_dir
        self.proc_root = proc_root
        self.pod_resources = pod_resources or PodResourcesState()
        self.log_sink = log_sink
        self.kubelet = SimKubelet(registry_dir, kube=kube, node_name=name, wiping_delay=wiping_delay)
        self.kubelet.health_listeners.append(self._on_health_change)
        self.pods: dict[str, PodState] = {}
        self._queue = WorkQueue(self._sync, f"node-{name}")
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.kubelet.start()
        self._tasks.append(asyncio.create_task(self._queue.run(), name=f"node-{self.name}-queue"))
        self._tasks.append(
            asyncio.create_task(
                watch_forever(self.kube, PODS, self._on_pod, field_selector=f"spec.nodeName={self.name}"),
                name=f"node-{self.name}-pods",
            )
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for state in list(self.pods.values()):
            await self._stop_containers(state)
        await self.kubelet.stop()

    def _on_health_change(self, driver: str) -> None:
        for state in self.pods.values():
            if (
                state.started
                and not state.finished
                and any(c.driver == driver for c in state.claims.values())
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
            delay = min(RETRY_MAX, RETRY_INITIAL * 2 ** (state.failures - 1))
            await self._event(pod, "Warning", "FailedPrepareDynamicResources", str(err))
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

    async def _prepare(self, pod: JSON, state: PodState) -> None:
        """NodePrepareResources for every claim not prepared yet, batched per driver."""
        by_driver: dict[str, list[tuple[str, JSON]]] = {}
        for entry, claim_name in _pod_claims(pod):
            if entry in state.claims:
                continue
            claim = await self.kube.get(RESOURCE_CLAIMS, claim_name, state.namespace)
            reserved = (claim.get("status") or {}).get("reservedFor") or []
            if not any(r.get("uid") == state.uid for r in reserved):
                raise _NotReadyError(
                    f"pod is not in the reservedFor of ResourceClaim {state.namespace}/{claim_name}"
                )
            results = ((claim["status"].get("allocation") or {}).get("devices") or {}).get("results") or []
            for driver in dict.fromkeys(r["driver"] for r in results):
                by_driver.setdefault(driver, []).append((entry, claim))
        for driver, claims in by_driver.items():
            refs = [
                ClaimRef(c["metadata"]["namespace"], c["metadata"]["uid"], c["metadata"]["name"])
                for _, c in claims
            ]
            prepared = await self.kubelet.prepare(driver, refs)
            for (entry, _), ref in zip(claims, refs, strict=True):
                existing = state.claims.get(entry)
                devices = (existing.devices if existing else []) + prepared[ref.uid]
                state.claims[entry] = PreparedClaim(ref, driver, devices)

    async def _run_containers(self, pod: JSON, state: PodState) -> None:
        spec = pod["spec"]
        for init in spec.get("initContainers") or []:
            handle = await self._start_container(pod, state, init)
            if handle is None or await handle.wait() != 0:
                await self._finish(pod, state)
                return
        for container in spec.get("containers") or []:
            await self._start_container(pod, state, container)
        await self._report(pod, state)
        for name in list(state.containers):
            state.watchers.append(asyncio.create_task(self._watch_container(pod, state, name)))

    async def _start_container(self, pod: JSON, state: PodState, container: JSON) -> ContainerHandle | None:
        name = container["name"]
        command = [*(container.get("command") or []), *(container.get("args") or [])]
        spec = ContainerSpec(
            name=name,
            command=command or ["true"],
            sandbox_dir=self.containers_dir / f"{state.namespace}_{state.name}_{state.uid[:8]}" / name,
            env=_env(container, pod, self.name),
            working_dir=container.get("workingDir"),
            cdi_devices=container_cdi_ids(container, state.claims),
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
        self.pod_resources.set_container(
            state.namespace, state.name, name, claims=_container_claims(container, state.claims)
        )
        return handle

    async def _watch_container(self, pod: JSON, state: PodState, name: str) -> None:
        code = await state.containers[name].wait()
        policy = pod["spec"].get("restartPolicy", "Always")
        if (policy == "Always" or (policy == "OnFailure" and code != 0)) and not state.finished:
            state.restarts[name] = state.restarts.get(name, 0) + 1
            await asyncio.sleep(min(RETRY_MAX, RETRY_INITIAL * 2 ** state.restarts[name]))
            if state.finished:
                return
            container = next(c for c in pod["spec"]["containers"] if c["name"] == name)
            if await self._start_container(pod, state, container) is not None:
                await self._report(pod, state)
                await self._watch_container(pod, state, name)
            return
        await self._report(pod, state)
        if all(not h.running for h in state.containers.values()):
            await self._finish(pod, state)

    async def _finish(self, pod: JSON, state: PodState) -> None:
        """All containers are done: release devices (the pod object stays, like a completed Job pod)."""
        await self._report(pod, state)
        state.finished = True
        await self._unprepare(state)

    # -- teardown --------------------------------------------------------------------------------

    async def _teardown(self, state: PodState, *, remove: bool) -> None:
        state.finished = True
        await self._stop_containers(state)
        await self._unprepare(state)
        self.pods.pop(state.uid, None)
        if remove:
            with contextlib.suppress(ApiError):
                await self.kube.delete(
                    PODS, state.name, state.namespace, uid=state.uid, grace_period_seconds=0
                )

    async def _stop_containers(self, state: PodState) -> None:
        for task in state.watchers:
            task.cancel()
        await asyncio.gather(*(h.terminate(grace=5.0) for h in state.containers.values() if h.running))
        self.pod_resources.remove_pod(state.namespace, state.name)

    async def _unprepare(self, state: PodState) -> None:
        """Unprepare claims no other live pod on this node still uses (the last user triggers it)."""
        in_use = {
            c.ref.uid
            for other in self.pods.values()
            if other is not state and not other.finished
            for c in other.claims.values()
        }
        by_driver: dict[str, list[ClaimRef]] = {}
        for claim in state.claims.values():
            if claim.ref.uid not in in_use:
                by_driver.setdefault(claim.driver, []).append(claim.ref)
        for driver, refs in by_driver.items():
            try:
                await self.kubelet.unprepare(driver, refs)
            except KubeletError as err:
                log.warning("unprepare failed", pod=f"{state.namespace}/{state.name}", error=str(err))
                continue
        state.claims.clear()

    # -- status ----------------------------------------------------------------------------------

    async def _report(self, pod: JSON, state: PodState) -> None:
        statuses = [self._container_status(name, handle, state) for name, handle in state.containers.items()]
        specs = {c["name"]: c for key in ("initContainers", "containers") for c in pod["spec"].get(key) or []}
        for status in statuses:
            resources = self._resources_status(specs.get(status["name"]) or {}, state)
            if resources:
                status["allocatedResourcesStatus"] = resources
        running = any(h.running for h in state.containers.values())
        phase = _phase(list(state.containers.values()))
        ready = "True" if running and all(h.running for h in state.containers.values()) else "False"
        status = {
            "phase": phase,
            "hostIP": "10.0.0.1",
            "startTime": (pod.get("status") or {}).get("startTime") or _now(),
            "containerStatuses": statuses,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready},
            ],
        }
        with contextlib.suppress(ApiError):
            await self.kube.patch(PODS, state.name, {"status": status}, state.namespace, subresource="status")

    def _container_status(self, name: str, handle: ContainerHandle, state: PodState) -> JSON:
        record = handle.record
        if handle.running:
            current: JSON = {"running": {"startedAt": record.get("startedAt") or _now()}}
        else:
            code = handle.exit_code or 0
            current = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": record.get("startedAt") or _now(),
                    "finishedAt": record.get("finishedAt") or _now(),
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
            devices = [
                d for d in claim.devices if not request or not d.request_names or request in d.request_names
            ]
            out.append(
                {
                    "name": f"claim:{ref['name']}" + (f"/{request}" if request else ""),
                    "resources": [
                        {
                            "resourceID": d.cdi_device_ids[0]
                            if d.cdi_device_ids
                            else f"{claim.driver}/{d.pool_name}/{d.device_name}",
                            "health": self.kubelet.device_health(claim.driver, d.pool_name, d.device_name),
                        }
                        for d in devices
                    ],
                }
            )
        return out

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
        with contextlib.suppress(ApiError):
            await self.kube.patch(
                PODS,
                pod["metadata"]["name"],
                {"status": {"phase": "Pending", "containerStatuses": statuses}},
                pod["metadata"]["namespace"],
                subresource="status",
            )

    async def _event(self, pod: JSON, kind: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": self.name},
            "firstTimestamp": _now(),
            "lastTimestamp": _now(),
            "count": 1,
        }
        with contextlib.suppress(ApiError):
            await self.kube.create(EVENTS, event, meta["namespace"])


def _phase(handles: Sequence[ContainerHandle]) -> str:
    if not handles or any(h.running for h in handles):
        return "Running"
    return "Succeeded" if all(h.exit_code == 0 for h in handles) else "Failed"


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
    return out
