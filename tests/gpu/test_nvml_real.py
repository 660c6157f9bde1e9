"""The NVML backend on real GPUs (skipped where NVML is absent)."""

from __future__ import annotations

import re

import pynvml
import pytest

from driver.devices.backend import open_backend
from driver.devices.model import PCI_BUS_ID_RE
from driver.kube.api.names import is_dns_label
from driver.resources.attributes import check_device_profile, device_entry

pytestmark = pytest.mark.gpu

DRIVER = "gpu.accel-dra.dev"


def test_discovers_every_gpu_nvml_sees() -> None:
    backend = open_backend("nvml")
    try:
        inventory = backend.discover()
    finally:
        backend.close()
        backend.close()  # idempotent

    pynvml.nvmlInit()
    try:
        count = pynvml.nvmlDeviceGetCount()
        uuids = {pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)}
    finally:
        pynvml.nvmlShutdown()
    assert {g.uuid for g in inventory.gpus} == uuids
    assert inventory.driver_version
    assert inventory.cuda_driver_version and re.match(r"^\d+\.\d+$", inventory.cuda_driver_version)
    for gpu in inventory.gpus:
        assert gpu.uuid.startswith("GPU-")
        assert gpu.pci_bus_id and PCI_BUS_ID_RE.match(gpu.pci_bus_id)
        assert gpu.memory_bytes and gpu.memory_bytes > 0
        assert gpu.product_name
        assert gpu.minor is not None
        assert is_dns_label(gpu.name)


def test_real_devices_pass_the_attribute_profile() -> None:
    backend = open_backend("nvml")
    try:
        inventory = backend.discover()
    finally:
        backend.close()
    assert inventory.devices
    for device in inventory.devices:
        entry = device_entry(device, inventory, DRIVER)
        assert check_device_profile(entry, DRIVER) == [], entry


def test_discovery_is_repeatable() -> None:
    backend = open_backend("nvml")
    try:
        first, second = backend.discover(), backend.discover()
    finally:
        backend.close()
    assert first == second
    assert first.topology.domains == second.topology.domains
