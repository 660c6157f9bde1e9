"""Whose DRA driver the sandbox node runs: accel-dra itself, or a stand-in shaped like AMD's or Intel's.

A shape is what a conformance suite meets on a real cluster of that vendor: the driver name and DeviceClass,
the devices' names, attributes and capacities as that vendor's driver publishes them, the device nodes its
CDI specs give a container, its device plugin's extended resource, and its command-line tool. The
stand-ins follow the vendors' published drivers:

* **AMD** (``gpu.amd.com``, ROCm's k8s-gpu-dra-driver): devices ``gpu-<card>-<render>``; attributes
  ``type`` (``amdgpu``), ``deviceID``, ``productName``, ``driverVersion`` (version), ``numaNode`` and the
  standard ``resource.kubernetes.io/pciBusID`` / ``pcieRoot`` -- no ``uuid``; capacities ``memory``,
  ``computeUnits``, ``simdUnits``; a container gets ``/dev/kfd``, ``/dev/dri/card<N>`` and
  ``/dev/dri/renderD<128+N>``; the device plugin's resource is ``amd.com/gpu``; the tool is ``amd-smi``
  (a stand-in answering ``list`` and ``version`` for the GPUs whose render node the caller sees).
* **Intel** (``gpu.intel.com``, intel-resource-drivers-for-kubernetes): devices named after their PCI
  address and device id (``0000-4d-00-0-0x56c0``); attributes ``model``, ``family``, ``pciId``, ``type``
  (``gpu``), ``driver`` (the kernel driver), ``sriov``, the deprecated ``pciAddress`` and the standard PCI
  attributes -- no ``uuid``, ``productName`` or version; capacities ``memory`` and ``millicores``; a
  container gets ``/dev/dri/card<N>`` and ``/dev/dri/renderD<128+N>``; the device plugin's resource is
  ``gpu.intel.com/i915``; no tool.

The GPUs themselves come from a fake device profile (``mi300x-4``, ``flex170-2``), so the exporter -- the
sandbox's metrics solution for every shape -- samples the same simulated load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from driver import DEFAULT_DRIVER_NAME
from driver.devices.model import Gpu, Inventory

JSON = dict[str, Any]
PCI_BUS_ID = "resource.kubernetes.io/pciBusID"
PCIE_ROOT = "resource.kubernetes.io/pcieRoot"
DRM_MAJOR = 226
KFD_MAJOR = 234  # the kfd char device's major as the amdgpu module registers it on common kernels
RENDER_BASE = 128


@dataclass(frozen=True)
class ShapedDevice:
    """One GPU as a vendor-shaped driver publishes and prepares it."""

    name: str
    gpu: Gpu
    #: The GPU's DRM card index (``/dev/dri/card<index>``; render node ``renderD<128+index>``).
    index: int
    attributes: JSON
    capacity: JSON
    #: CDI ``deviceNodes`` a container gets for this GPU.
    device_nodes: list[JSON]


@dataclass(frozen=True)
class Shape:
    name: str
    driver: str
    #: The fake device profile the sandbox uses for this shape unless told otherwise.
    profile: str
    extended_resource: str
    #: The CDI kind of the driver's specs (``amd.com/gpu``).
    cdi_kind: str
    #: The tool stand-in installed into containers that get a GPU (None: no tool).
    tool: str | None
    devices: Callable[[Inventory, str], list[ShapedDevice]]
    #: Node labels the vendor's node labeller would put on the node (driver version and the like).
    node_labels: Callable[[Inventory], Mapping[str, str]]


def _pcie_root(gpu: Gpu) -> JSON:
    return {PCIE_ROOT: {"string": gpu.pcie_root}} if gpu.pcie_root else {}


def _render_node(index: int) -> JSON:
    return {
        "path": f"/dev/dri/renderD{RENDER_BASE + index}",
        "type": "c",
        "major": DRM_MAJOR,
        "minor": RENDER_BASE + index,
    }


def _card_node(index: int) -> JSON:
    return {"path": f"/dev/dri/card{index}", "type": "c", "major": DRM_MAJOR, "minor": index}


def _semver(version: str) -> str:
    parts = [*version.split("."), "0", "0"][:3]
    return ".".join(str(int(p)) for p in parts)


def amd_devices(inventory: Inventory, driver_version: str) -> list[ShapedDevice]:
    out = []
    for index, gpu in enumerate(inventory.gpus):
        attributes: JSON = {
            "type": {"string": "amdgpu"},
            "deviceID": {"string": "0x74a1"},
            "productName": {"string": gpu.product_name or "AMD Instinct"},
            "driverVersion": {"version": _semver(driver_version)},
            PCI_BUS_ID: {"string": gpu.pci_bus_id},
            **_pcie_root(gpu),
        }
        if gpu.numa_node is not None:
            attributes["numaNode"] = {"int": gpu.numa_node}
        cus = 304
        capacity = {
            "memory": {"value": str(gpu.memory_bytes or 0)},
            "computeUnits": {"value": str(cus)},
            "simdUnits": {"value": str(cus * 4)},
        }
        nodes = [
            {"path": "/dev/kfd", "type": "c", "major": KFD_MAJOR, "minor": 0},
            _card_node(index),
            _render_node(index),
        ]
        out.append(
            ShapedDevice(f"gpu-{index}-{RENDER_BASE + index}", gpu, index, attributes, capacity, nodes)
        )
    return out


def intel_devices(inventory: Inventory, driver_version: str) -> list[ShapedDevice]:
    out = []
    for index, gpu in enumerate(inventory.gpus):
        pci_id = "0x56c0"
        bus = gpu.pci_bus_id or f"0000:{index:02x}:00.0"
        attributes: JSON = {
            "model": {"string": (gpu.product_name or "Flex 170").removeprefix("Intel Data Center GPU ")},
            "family": {"string": "Data Center Flex"},
            "driver": {"string": "i915"},
            "sriov": {"bool": False},
            "type": {"string": "gpu"},
            "pciId": {"string": pci_id},
            "pciAddress": {"string": bus},
            PCI_BUS_ID: {"string": bus},
            **_pcie_root(gpu),
        }
        capacity = {
            "memory": {"value": f"{(gpu.memory_bytes or 0) // (1024 * 1024)}Mi"},
            "millicores": {"value": "1k"},
        }
        name = f"{bus.replace(':', '-').replace('.', '-')}-{pci_id}"
        out.append(
            ShapedDevice(name, gpu, index, attributes, capacity, [_card_node(index), _render_node(index)])
        )
    return out


def accel_dra_devices(inventory: Inventory, driver_version: str) -> list[ShapedDevice]:
    """Not a stand-in -- the accel-dra shape runs the real plugin: its whole GPUs, for the device plugin."""
    out = []
    for d in inventory.devices:
        if d.mig is None and d.gpu.device_node and d.gpu.minor is not None:
            node = {"path": d.gpu.device_node, "type": "c", "major": 195, "minor": d.gpu.minor}
            out.append(ShapedDevice(d.name, d.gpu, d.gpu.minor, {}, {}, [node]))
    return out


def _no_labels(inventory: Inventory) -> Mapping[str, str]:
    return {}


def _gfd_labels(inventory: Inventory) -> Mapping[str, str]:
    """NVIDIA GPU feature discovery's version labels (what a device-plugin setup exposes versions with)."""
    labels = {}
    if inventory.driver_version:
        labels["nvidia.com/cuda.driver-version.full"] = inventory.driver_version
    if inventory.cuda_driver_version:
        labels["nvidia.com/cuda.runtime-version.full"] = inventory.cuda_driver_version
    return labels


def _amd_labels(inventory: Inventory) -> Mapping[str, str]:
    return {"amd.com/gpu.driver-version": inventory.driver_version} if inventory.driver_version else {}


SHAPES: Mapping[str, Shape] = {
    "accel-dra": Shape(
        "accel-dra",
        DEFAULT_DRIVER_NAME,
        "dgx-h100-mig",
        "nvidia.com/gpu",
        "k8s.device-plugin.sandbox/gpu",
        None,
        accel_dra_devices,
        _gfd_labels,
    ),
    "amd": Shape(
        "amd", "gpu.amd.com", "mi300x-4", "amd.com/gpu", "amd.com/gpu", "amd-smi", amd_devices, _amd_labels
    ),
    "intel": Shape(
        "intel",
        "gpu.intel.com",
        "flex170-2",
        "gpu.intel.com/i915",
        "intel.com/gpu",
        None,
        intel_devices,
        _no_labels,
    ),
}


def resource_slice(shape: Shape, node: str, devices: list[ShapedDevice]) -> JSON:
    """The node's one ResourceSlice, as the vendor's driver publishes it (one pool named after the node)."""
    return {
        "metadata": {"generateName": f"{node}-{shape.driver}-"},
        "spec": {
            "driver": shape.driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {"name": d.name, "attributes": d.attributes, "capacity": d.capacity} for d in devices
            ],
        },
    }


def device_class(shape: Shape) -> JSON:
    """The DeviceClass the vendor's chart installs (named after the driver)."""
    return {
        "metadata": {"name": shape.driver},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{shape.driver}"'}}]},
    }
