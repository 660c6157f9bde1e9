"""What the plugin publishes for its devices beyond the standard profile: the operator's choices (flags) for
alpha API features, narrowed to what the API server keeps.

- **List-type attributes** (KEP-5491, alpha, ``DRAListTypeAttributes``): ``resource.kubernetes.io/numaNode``
  as a list (``ints``) -- the GPU's NUMA node first, then the nodes it is equally close to (sub-NUMA
  clustering) -- so that ``matchAttribute`` finds a CPU or NIC of any of them (a non-empty intersection).
  Every GPU then publishes the list form, a single node included: one attribute, one type, for CEL.
- **Node allocatable resources** (KEP-5517, alpha, ``DRANodeAllocatableResources``, the 1.37 API): the host
  memory each pod using the device needs (CUDA contexts, pinned staging buffers), as
  ``nodeAllocatableResources: {memory: {overhead: {perPod: ...}}}``; the scheduler counts it against the
  node's allocatable memory and the kubelet adds it to the pod's cgroup.

Beside them, **sharing by consumable capacity** (KEP-5075, beta and on in 1.36 and 1.37): GPUs chosen by the
operator (``--shared-gpus``) are published with ``allowMultipleAllocations: true`` and a ``requestPolicy`` on
their ``memory`` capacity, so several claims get one GPU, each with its share of the memory
(docs/sharing.md). MIG devices, and GPUs with MIG on, are never shared this way: MIG is the partitioning.

An API server with the feature gate off drops the alpha fields (a list attribute then has no value and the slice
is refused); :mod:`driver.resources.apiprobe` asks the server before they are used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from driver.devices.model import Device, Inventory
from driver.log import get_logger
from driver.resources.attributes import STANDARD_DOMAIN, device_entry, format_quantity

log = get_logger(__name__)

NUMA_NODE = f"{STANDARD_DOMAIN}/numaNode"
GIB = 1 << 30


@dataclass(frozen=True)
class SharedGpus:
    """Which whole GPUs are published for sharing by memory, and the memory granularity of a share."""

    #: Device names, GPU UUIDs or PCI bus ids; ``all`` selects every GPU.
    selectors: frozenset[str] = field(default_factory=frozenset)
    #: A share's memory is a multiple of this (bytes); a claim that asks for none gets the whole GPU's worth.
    step: int = GIB

    def selects(self, device: Device) -> bool:
        # A MIG device, or any device of a GPU with MIG on (its dynamic MIG slots included: each is an
        # instance made for one claim, and the whole GPU consumes its counters), is held by one claim.
        if (
            device.mig is not None
            or device.slot is not None
            or device.gpu.mig_enabled
            or device.gpu.mig_dynamic
        ):
            return False
        ids = {device.name, device.uuid, device.gpu.pci_bus_id}
        return "all" in self.selectors or not ids.isdisjoint(self.selectors)

    def unmatched(self, devices: Iterable[Device]) -> list[str]:
        """Selectors no shareable GPU answers to (a typo, a MIG device): the operator should hear of them."""
        ids = {i for d in devices if self.selects(d) for i in (d.name, d.uuid, d.gpu.pci_bus_id)}
        return sorted(s for s in self.selectors if s != "all" and s not in ids)


def shared_gpus(selectors: frozenset[str], step: int, inventory: Inventory) -> SharedGpus | None:
    """The operator's ``--shared-gpus`` for this node; logs selectors that match no shareable GPU."""
    if not selectors:
        return None
    shared = SharedGpus(selectors, step)
    for selector in shared.unmatched(inventory.devices):
        log.warning(
            "--shared-gpus names no GPU of this node that can be shared (MIG devices and GPUs with MIG on "
            "cannot)",
            selector=selector,
        )
    for device in inventory.devices:
        memory = device.memory_bytes
        if shared.selects(device) and (memory is None or memory_request_policy(memory, step) is None):
            log.warning("GPU not shared: its memory is unknown or less than two steps", device=device.name)
    return shared


def memory_request_policy(memory: int, step: int) -> dict[str, Any] | None:
    """``capacity.memory.requestPolicy`` for a GPU of ``memory`` bytes shared in ``step`` units: shares of
    ``step``, ``2*step``, ... (a request is rounded up to the next one); the default, for claims that ask for
    no memory, is all the whole steps the GPU has -- nothing else fits beside such a claim. ``None`` where the
    GPU holds fewer than two steps: sharing it would not share anything."""
    whole = memory // step * step
    if whole < 2 * step:
        return None
    q = format_quantity
    return {"default": q(whole), "validRange": {"min": q(step), "step": q(step)}}


@dataclass(frozen=True)
class PublishOptions:
    """Per-node publishing choices (from flags); the defaults publish the standard profile alone."""

    #: ``numaNode`` as a list of the GPU's near NUMA nodes.
    list_attributes: bool = False
    #: Host memory (bytes) each pod that uses a device needs; None: not declared.
    host_memory_per_pod: int | None = None
    #: GPUs shared by memory capacity; None: every device is allocated to one claim at a time.
    shared: SharedGpus | None = None

    def without(self, *, list_attributes: bool = False, host_memory: bool = False) -> PublishOptions:
        """These options minus features the API server does not keep."""
        return replace(
            self,
            list_attributes=self.list_attributes and not list_attributes,
            host_memory_per_pod=None if host_memory else self.host_memory_per_pod,
        )


def node_allocatable_resources(host_memory_per_pod: int) -> dict[str, Any]:
    """``Device.nodeAllocatableResources`` declaring ``host_memory_per_pod`` bytes per pod."""
    return {"memory": {"overhead": {"perPod": format_quantity(host_memory_per_pod)}}}


def publish_entry(
    device: Device, inventory: Inventory, driver_name: str, options: PublishOptions
) -> dict[str, Any]:
    """One ``spec.devices[]`` entry: the standard profile plus what ``options`` turn on."""
    entry = device_entry(device, inventory, driver_name)
    near = device.gpu.near_numa_nodes
    if options.list_attributes and near and NUMA_NODE in entry.get("attributes", {}):
        entry["attributes"][NUMA_NODE] = {"ints": list(near)}
    if options.host_memory_per_pod is not None:
        entry["nodeAllocatableResources"] = node_allocatable_resources(options.host_memory_per_pod)
    if options.shared is not None and options.shared.selects(device):
        share_by_memory(entry, device, options.shared.step)
    return entry


def share_by_memory(entry: dict[str, Any], device: Device, step: int) -> None:
    """Make ``entry`` allocatable to several claims at once, each consuming part of its memory."""
    memory = device.memory_bytes
    policy = memory_request_policy(memory, step) if memory is not None else None
    if policy is None or "memory" not in entry.get("capacity", {}):
        return
    entry["allowMultipleAllocations"] = True
    entry["capacity"]["memory"]["requestPolicy"] = policy


def publish_entries(
    devices: Iterable[Device], inventory: Inventory, driver_name: str, options: PublishOptions
) -> list[dict[str, Any]]:
    return [publish_entry(d, inventory, driver_name, options) for d in devices]
