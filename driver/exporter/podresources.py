"""The kubelet PodResources v1 API: which container holds which device, resolved to this node's GPUs.

:class:`PodResourcesClient` calls ``List`` on the kubelet's socket
(``/var/lib/kubelet/pod-resources/kubelet.sock``) and flattens the answer into :class:`ContainerResources`.
:class:`DeviceResolver` turns those into :class:`~driver.exporter.attribution.Consumer` entries per GPU:

- DRA devices of this driver (``driver``, ``pool`` = the node, ``device``) through the driver's own device
  naming (:attr:`driver.devices.model.Device.name`: a GPU or one of its MIG devices);
- DRA devices of other drivers through the node's ResourceSlices (optional, :class:`SliceLookup`): the
  device's ``uuid`` / ``parentUUID`` or ``resource.kubernetes.io/pciBusID`` attribute names the GPU;
- device-plugin devices by id: a GPU or MIG UUID (``::N`` time-slicing replica suffixes are dropped), a
  device name, a PCI address, an NVML index (``0``; ``0:3`` for the MIG device in slot 3, NVIDIA's device
  plugin with ``DEVICE_ID_STRATEGY=index``) or GKE's device-node names (``nvidia0``, ``nvidia0/gi2`` for GPU
  instance 2 of the GPU at ``/dev/nvidia0``, ``nvidia0/vgpu1`` for a time-shared replica).

A device resolves to its GPU and, for a MIG device, the MIG device's UUID, so that its usage is read from
the MIG device itself.

Devices that resolve to no GPU of this node (NICs, other vendors' accelerators) are ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from driver._proto.podresources.v1 import api_pb2 as pb
from driver._proto.podresources.v1 import api_pb2_grpc as pb_grpc
from driver.devices.model import Inventory, full_mig_slot, normalize_pci_bus_id
from driver.exporter.attribution import Consumer

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
# The kubelet's own limit for this API's messages.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_REPLICA_SUFFIX = re.compile(r"::\d+$")
_INDEX_ID = re.compile(r"^(\d+)(?::(\d+))?$")
_GKE_ID = re.compile(r"^nvidia(\d+)(?:/gi(\d+))?(?:/vgpu\d+)?$")


class PodResourcesError(Exception):
    """The kubelet's PodResources API could not be read; names the socket."""


@dataclass(frozen=True, slots=True)
class ClaimDevice:
    """One DRA device allocated through a claim, as PodResources reports it."""

    claim_namespace: str
    claim_name: str
    driver: str
    pool: str
    device: str
    #: The DeviceClass its request named ("" until looked up, see ``driver.exporter.holders``).
    device_class: str = ""
    #: The memory its share holds, for a GPU shared by memory (looked up like the DeviceClass).
    consumed_memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class ContainerResources:
    """The devices one container holds: device-plugin ``(resource_name, device_id)`` pairs and DRA devices."""

    namespace: str
    pod: str
    container: str
    device_ids: tuple[tuple[str, str], ...] = ()
    claim_devices: tuple[ClaimDevice, ...] = ()


def from_list_response(response: pb.ListPodResourcesResponse) -> list[ContainerResources]:
    """Flatten a ``List`` answer (pure; also used for ``Get`` answers)."""
    out: list[ContainerResources] = []
    for pod in response.pod_resources:
        for container in pod.containers:
            device_ids = tuple(
                (devices.resource_name, device_id)
                for devices in container.devices
                for device_id in devices.device_ids
            )
            claim_devices = tuple(
                ClaimDevice(
                    claim_namespace=dynamic.claim_namespace or pod.namespace,
                    claim_name=dynamic.claim_name,
                    driver=resource.driver_name,
                    pool=resource.pool_name,
                    device=resource.device_name,
                )
                for dynamic in container.dynamic_resources
                for resource in dynamic.claim_resources
            )
            if device_ids or claim_devices:
                out.append(
                    ContainerResources(pod.namespace, pod.name, container.name, device_ids, claim_devices)
                )
    return out


def _target(socket_path: str) -> str:
    return f"unix://{os.path.abspath(socket_path)}"


class PodResourcesClient:
    """An async client of the kubelet's PodResourcesLister (``List`` only is needed)."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float = 2.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    def _connect(self) -> Any:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                _target(self.socket_path),
                options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
            )
            self._stub = pb_grpc.PodResourcesListerStub(self._channel)
        return self._stub

    async def list(self) -> list[ContainerResources]:
        """Every container with devices on this node; raises :class:`PodResourcesError`, and only that."""
        try:
            response = await self._connect().List(pb.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError as err:
            # Reconnect from scratch next time: a channel left in reconnect backoff would keep failing for
            # minutes after a restarted kubelet is back.
            await self.close()
            raise PodResourcesError(
                f"PodResources List on {self.socket_path} failed: {err.code().name}: {err.details()}"
            ) from err
        except Exception as err:  # whatever the channel does with a broken peer, it is the kubelet's answer
            await self.close()
            raise PodResourcesError(f"PodResources List on {self.socket_path} failed: {err!r}") from err
        # gRPC hands over None when the answer's bytes do not decode as the message.
        if not isinstance(response, pb.ListPodResourcesResponse):
            await self.close()
            raise PodResourcesError(f"PodResources List on {self.socket_path}: the answer does not decode")
        return from_list_response(response)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel, self._stub = None, None


# -- resolving devices to GPUs --------------------------------------------------------------------------


class SliceLookup(Protocol):
    """The node's ResourceSlices: a device's entry (``spec.devices[]`` JSON) by driver, pool and name."""

    def device(self, driver: str, pool: str, name: str) -> Mapping[str, Any] | None: ...


def _attribute(attributes: Any, name: str) -> str | None:
    """A string attribute by its unqualified name, whatever its domain (``uuid`` or ``gpu.x.com/uuid``)."""
    if not isinstance(attributes, Mapping):
        return None
    for key, value in attributes.items():
        if (
            isinstance(key, str)
            and key.rsplit("/", 1)[-1] == name
            and isinstance(value, Mapping)
            and isinstance(value.get("string"), str)
        ):
            return str(value["string"])
    return None


#: A device of this node: (GPU UUID, MIG device UUID or "" for the whole GPU).
DeviceRef = tuple[str, str]


class DeviceResolver:
    """Maps allocated devices to GPUs (and MIG devices) of this node's inventory."""

    def __init__(
        self,
        inventory: Inventory,
        driver_name: str,
        pool_name: str | None = None,
        slices: SliceLookup | None = None,
    ) -> None:
        self.driver_name = driver_name
        self.pool_name = pool_name
        self.slices = slices
        self.follow(inventory)

    def follow(self, inventory: Inventory) -> None:
        """Index the node's devices as they are now (MIG instances come and go with dynamic MIG)."""
        self._by_name: dict[str, DeviceRef] = {
            d.name: (d.gpu.uuid, d.mig.uuid if d.mig else "") for d in inventory.devices
        }
        self._by_name.update({g.name: (g.uuid, "") for g in inventory.gpus})
        self._by_uuid: dict[str, DeviceRef] = {g.uuid.lower(): (g.uuid, "") for g in inventory.gpus}
        self._by_uuid.update(
            {m.uuid.lower(): (g.uuid, m.uuid) for g in inventory.gpus for m in g.mig_devices}
        )
        self._by_pci: dict[str, DeviceRef] = {
            g.pci_bus_id: (g.uuid, "") for g in inventory.gpus if g.pci_bus_id
        }
        # NVML index = enumeration order; MIG devices by their NVML slot (NVIDIA's device plugin ids).
        self._by_index: dict[str, DeviceRef] = {str(i): (g.uuid, "") for i, g in enumerate(inventory.gpus)}
        self._by_index.update(
            {
                f"{i}:{m.slot}": (g.uuid, m.uuid)
                for i, g in enumerate(inventory.gpus)
                for m in g.mig_devices
                if m.slot is not None
            }
        )
        # GKE names GPUs after their device node and MIG devices after their GPU instance.
        self._by_minor: dict[tuple[int, int | None], DeviceRef] = {
            (g.minor, None): (g.uuid, "") for g in inventory.gpus if g.minor is not None
        }
        self._by_minor.update(
            {
                (g.minor, m.gpu_instance_id): (g.uuid, m.uuid)
                for g in inventory.gpus
                for m in reversed(g.mig_devices)  # the first compute instance of a GPU instance wins
                if g.minor is not None and m.gpu_instance_id is not None
            }
        )
        # A whole GPU in dynamic MIG mode runs as its full-size instance: the device name means that instance.
        for gpu in inventory.gpus:
            full = full_mig_slot(gpu)
            whole = next((m for m in gpu.mig_devices if full and m.placement == full.placement), None)
            if whole is not None:
                self._by_name[gpu.name] = (gpu.uuid, whole.uuid)

    def device_for_id(self, device_id: str) -> DeviceRef | None:
        """A device-plugin id, UUID, device name, PCI address, NVML index or GKE name -> the device."""
        text = _REPLICA_SUFFIX.sub("", device_id.strip())
        found = self._by_uuid.get(text.lower()) or self._by_name.get(text) or self._by_index.get(text)
        if found is None and (gke := _GKE_ID.match(text)):
            instance = gke.group(2)
            found = self._by_minor.get((int(gke.group(1)), int(instance) if instance else None))
        if found is None and _INDEX_ID.match(text) is None:
            pci = normalize_pci_bus_id(text)
            found = self._by_pci.get(pci) if pci else None
        return found

    def device_for_claim_device(self, driver: str, pool: str, device: str) -> DeviceRef | None:
        if driver == self.driver_name and (self.pool_name is None or pool == self.pool_name):
            found = self._by_name.get(device)
            if found is not None:
                return found
        entry = self.slices.device(driver, pool, device) if self.slices is not None else None
        if entry is None:
            return None
        attributes = entry.get("attributes")
        for name in ("uuid", "parentUUID", "pciBusID"):
            value = _attribute(attributes, name)
            found = self.device_for_id(value) if value else None
            if found is not None:
                return found
        return None

    def consumers(self, containers: Iterable[ContainerResources]) -> dict[str, tuple[Consumer, ...]]:
        """GPU UUID -> its consumers (sorted, without duplicates), each naming the MIG device it holds."""
        found: dict[str, set[Consumer]] = {}
        for c in containers:
            for resource, device_id in c.device_ids:
                ref = self.device_for_id(device_id)
                if ref is not None:
                    found.setdefault(ref[0], set()).add(
                        Consumer(c.namespace, c.pod, c.container, mig_uuid=ref[1], device_class=resource)
                    )
            for d in c.claim_devices:
                ref = self.device_for_claim_device(d.driver, d.pool, d.device)
                if ref is not None:
                    found.setdefault(ref[0], set()).add(
                        Consumer(
                            c.namespace,
                            c.pod,
                            c.container,
                            d.claim_namespace,
                            d.claim_name,
                            d.driver,
                            d.pool,
                            d.device,
                            mig_uuid=ref[1],
                            device_class=d.device_class,
                            share_memory_bytes=d.consumed_memory_bytes,
                        )
                    )
        return {gpu: tuple(sorted(consumers)) for gpu, consumers in found.items()}
