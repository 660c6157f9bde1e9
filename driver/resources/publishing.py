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

An API server with the feature gate off drops these fields (a list attribute then has no value and the slice
is refused); :mod:`driver.resources.apiprobe` asks the server before they are used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from driver.devices.model import Device, Inventory
from driver.resources.attributes import STANDARD_DOMAIN, device_entry, format_quantity

NUMA_NODE = f"{STANDARD_DOMAIN}/numaNode"


@dataclass(frozen=True)
class PublishOptions:
    """Per-node publishing choices (from flags); the defaults publish the standard profile alone."""

    #: ``numaNode`` as a list of the GPU's near NUMA nodes.
    list_attributes: bool = False
    #: Host memory (bytes) each pod that uses a device needs; None: not declared.
    host_memory_per_pod: int | None = None

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
    return entry


def publish_entries(
    devices: Iterable[Device], inventory: Inventory, driver_name: str, options: PublishOptions
) -> list[dict[str, Any]]:
    return [publish_entry(d, inventory, driver_name, options) for d in devices]
