"""The sim kubelet's PodResources v1 server (``PodResourcesLister`` on a unix socket).

:class:`PodResourcesState` is what the kubelet knows about running containers: per pod (namespace, name)
and container, the device-plugin devices (``resource_name`` + ids) and the DRA devices of its claims
(claim name/namespace, and per device driver, pool, device and CDI ids). The sim kubelet updates it as
containers start and stop; :class:`PodResourcesServer` answers from it:

- ``List``: every active pod with at least one container, containers in the order they were set (the kubelet
  lists active pods only: a pod marked inactive with :meth:`PodResourcesState.set_active`, e.g. one whose
  containers all completed, is left out);
- ``Get``: one pod, active or not; for an unknown one a plain error (gRPC ``UNKNOWN``, as the kubelet's
  ``pod <name> in namespace <namespace> not found``);
- ``GetAllocatableResources``: the device-plugin devices declared with :meth:`PodResourcesState.set_allocatable`
  (DRA devices are not part of this call upstream either).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from driver._proto.podresources.v1 import api_pb2 as pb
from driver._proto.podresources.v1 import api_pb2_grpc as pb_grpc
from driver.log import get_logger
from driver.state.api import PreparedDevice

log = get_logger(__name__)


@dataclass(frozen=True)
class ClaimDevice:
    driver: str
    pool: str
    device: str
    cdi_devices: tuple[str, ...] = ()
    #: The allocation's share of a device allocated more than once (consumable capacity).
    share_id: str | None = None


@dataclass(frozen=True)
class ClaimResources:
    """One claim as a container sees it: its name/namespace and the devices prepared for it."""

    name: str
    namespace: str
    devices: tuple[ClaimDevice, ...]

    @classmethod
    def from_prepared(
        cls, namespace: str, name: str, driver: str, prepared: Iterable[PreparedDevice]
    ) -> ClaimResources:
        """From what the driver's NodePrepareResources returned for the claim."""
        return cls(
            name,
            namespace,
            tuple(
                ClaimDevice(driver, d.pool_name, d.device_name, tuple(d.cdi_device_ids), d.share_id)
                for d in prepared
            ),
        )


@dataclass(frozen=True)
class _Container:
    devices: tuple[tuple[str, tuple[str, ...]], ...]
    claims: tuple[ClaimResources, ...]


class PodResourcesState:
    """Thread-safe, in-memory pods -> containers -> devices."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], dict[str, _Container]] = {}
        self._allocatable: tuple[tuple[str, tuple[str, ...]], ...] = ()
        self._inactive: set[tuple[str, str]] = set()

    def set_container(
        self,
        namespace: str,
        pod: str,
        container: str,
        *,
        devices: Mapping[str, Sequence[str]] | None = None,
        claims: Sequence[ClaimResources] = (),
    ) -> None:
        """Record (or replace) what one container holds. ``devices``: resource name -> device ids."""
        entry = _Container(
            tuple((name, tuple(ids)) for name, ids in (devices or {}).items()),
            tuple(claims),
        )
        with self._lock:
            self._pods.setdefault((namespace, pod), {})[container] = entry
            self._inactive.discard((namespace, pod))

    def set_active(self, namespace: str, pod: str, active: bool) -> None:
        """Mark a pod (in)active: an inactive pod (terminal) is left out of ``List`` but still answers ``Get``."""
        with self._lock:
            if active:
                self._inactive.discard((namespace, pod))
            else:
                self._inactive.add((namespace, pod))

    def remove_container(self, namespace: str, pod: str, container: str) -> None:
        with self._lock:
            containers = self._pods.get((namespace, pod), {})
            containers.pop(container, None)
            if not containers:
                self._pods.pop((namespace, pod), None)
                self._inactive.discard((namespace, pod))

    def remove_pod(self, namespace: str, pod: str) -> None:
        with self._lock:
            self._pods.pop((namespace, pod), None)
            self._inactive.discard((namespace, pod))

    def set_allocatable(self, devices: Mapping[str, Sequence[str]]) -> None:
        with self._lock:
            self._allocatable = tuple((name, tuple(ids)) for name, ids in devices.items())

    def pods(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._pods)

    def _pod_message(self, key: tuple[str, str], containers: Mapping[str, _Container]) -> pb.PodResources:
        return pb.PodResources(
            namespace=key[0],
            name=key[1],
            containers=[
                pb.ContainerResources(
                    name=name,
                    devices=[pb.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in c.devices],
                    dynamic_resources=[
                        pb.DynamicResource(
                            claim_name=claim.name,
                            claim_namespace=claim.namespace,
                            claim_resources=[
                                pb.ClaimResource(
                                    driver_name=d.driver,
                                    pool_name=d.pool,
                                    device_name=d.device,
                                    cdi_devices=[pb.CDIDevice(name=cdi) for cdi in d.cdi_devices],
                                    share_id=d.share_id,
                                )
                                for d in claim.devices
                            ],
                        )
                        for claim in c.claims
                    ],
                )
                for name, c in containers.items()
            ],
        )

    def list_response(self) -> pb.ListPodResourcesResponse:
        with self._lock:
            pods = [
                self._pod_message(key, dict(containers))
                for key, containers in self._pods.items()
                if key not in self._inactive
            ]
        return pb.ListPodResourcesResponse(pod_resources=pods)

    def get_response(self, namespace: str, pod: str) -> pb.GetPodResourcesResponse | None:
        with self._lock:
            containers = self._pods.get((namespace, pod))
            message = None if containers is None else self._pod_message((namespace, pod), dict(containers))
        return None if message is None else pb.GetPodResourcesResponse(pod_resources=message)

    def allocatable_response(self) -> pb.AllocatableResourcesResponse:
        with self._lock:
            devices = [pb.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in self._allocatable]
        return pb.AllocatableResourcesResponse(devices=devices)


class _Servicer(pb_grpc.PodResourcesListerServicer):  # type: ignore[misc]
    def __init__(self, state: PodResourcesState) -> None:
        self._state = state

    async def List(self, request: pb.ListPodResourcesRequest, context: Any) -> pb.ListPodResourcesResponse:
        return self._state.list_response()

    async def Get(self, request: pb.GetPodResourcesRequest, context: Any) -> pb.GetPodResourcesResponse:
        response = self._state.get_response(request.pod_namespace, request.pod_name)
        if response is not None:
            return response
        # The kubelet returns a plain Go error here, which gRPC sends as UNKNOWN.
        await context.abort(
            grpc.StatusCode.UNKNOWN, f"pod {request.pod_name} in namespace {request.pod_namespace} not found"
        )
        raise AssertionError("unreachable: abort raises")

    async def GetAllocatableResources(
        self, request: pb.AllocatableResourcesRequest, context: Any
    ) -> pb.AllocatableResourcesResponse:
        return self._state.allocatable_response()


class PodResourcesServer:
    """Serves a :class:`PodResourcesState` on a unix socket (created 0600; an old socket is replaced)."""

    def __init__(self, state: PodResourcesState, socket_path: str) -> None:
        self.state = state
        self.socket_path = os.path.abspath(socket_path)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.socket_path), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        server = grpc.aio.server()
        pb_grpc.add_PodResourcesListerServicer_to_server(_Servicer(self.state), server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        await server.start()
        os.chmod(self.socket_path, 0o600)
        self._server = server
        log.info("pod resources server listening", socket=self.socket_path)

    async def stop(self, grace: float = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    async def __aenter__(self) -> PodResourcesServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
