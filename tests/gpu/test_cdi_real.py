"""CDI specs for real GPUs: every device node and driver file they name exists on this host.

The node-state preparer is built the way the plugin builds it (``make_preparer`` from plugin flags, the NVML
backend, the host's ``/dev`` and driver files under ``--driver-root``), and prepares one claim holding every
allocatable device of the machine. The spec must then work for a container runtime here: character devices
with the host's numbers, each GPU's node the one the kernel driver gave that GPU (``Minor Number`` in
nvidia-smi), mount sources that are files, and the libraries a CUDA program needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from driver.config import PluginConfig, add_plugin_arguments
from driver.devices.backend import capabilities, open_backend
from driver.devices.model import Device
from driver.plugin.preparer import make_preparer
from driver.state import cdi
from driver.state.api import ClaimRef
from driver.state.lock import LOCK_FILE_NAME, NodeLock
from tests.gpu import hostcheck, smi
from tests.gpu.conftest import DRIVER_ROOT
from tests.support.cdi_rules import assert_valid_cdi

pytestmark = pytest.mark.gpu

DRIVER = "gpu.accel-dra.dev"
NODE = "gpu-validation"
CLAIM = ClaimRef("default", "6f1c2a9e-0d4b-4c55-9e0a-5b7d2f1e8c31", "every-gpu")


def plugin_config(root: Path) -> PluginConfig:
    parser = argparse.ArgumentParser()
    add_plugin_arguments(parser)
    args = parser.parse_args(
        [
            "--node-name",
            NODE,
            "--driver-name",
            DRIVER,
            "--plugin-dir",
            str(root / "plugin"),
            "--cdi-dir",
            str(root / "cdi"),
            "--backend",
            "nvml",
            "--driver-root",
            DRIVER_ROOT,
        ]
    )
    return PluginConfig.from_args(args)


def allocated_claim(devices: tuple[Device, ...]) -> dict[str, Any]:
    """The claim as the scheduler leaves it: one result per device, all on this node's pool."""
    return {
        "metadata": {"namespace": CLAIM.namespace, "name": CLAIM.name, "uid": CLAIM.uid},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": f"gpu{i}", "driver": DRIVER, "pool": NODE, "device": d.name}
                        for i, d in enumerate(devices)
                    ]
                }
            }
        },
    }


def library_hint(spec: dict[str, Any]) -> str:
    return (
        f"mounted: {sorted(hostcheck.container_paths(spec))}; this process loaded NVML from "
        f"{hostcheck.loaded_library()} (set ACCEL_DRA_GPU_DRIVER_ROOT if the driver lives under another root)"
    )


async def test_cdi_spec_for_every_device_exists_on_this_host(
    tmp_path: Path, smi_report: smi.SmiReport
) -> None:
    config = plugin_config(tmp_path)
    Path(config.plugin_dir).mkdir(parents=True)
    backend = open_backend("nvml", driver_root=config.driver_root)
    try:
        inventory = backend.discover()
        lock = NodeLock(Path(config.plugin_dir, LOCK_FILE_NAME))
        preparer = make_preparer(config, capabilities(backend), inventory, None, lock)
        await preparer.start()
        results = await lock.run(lambda: preparer.prepare([allocated_claim(inventory.devices)]))
        result = results[CLAIM.uid]
        assert not result.error, result.error
        assert [d.device_name for d in result.devices] == [d.name for d in inventory.devices]
        spec = preparer.specs.read(CLAIM.uid)
        assert spec is not None, f"no CDI spec at {preparer.specs.path(CLAIM.uid)}"
        assert_valid_cdi(spec)
        assert hostcheck.node_problems(spec) == []
        assert hostcheck.mount_problems(spec) == []
        assert hostcheck.missing_libraries(spec) == [], library_hint(spec)
        for device in inventory.devices:
            name = cdi.device_name(CLAIM.uid, device.name)
            assert hostcheck.device_uuid(spec, name, device.name) == device.uuid
            details = smi_report.gpus[device.gpu.uuid]
            assert details.minor_number is not None, (
                f"nvidia-smi -q shows no minor number for {device.gpu.uuid}"
            )
            assert hostcheck.gpu_node_minors(spec, name) == [details.minor_number], device.name
        errors = await lock.run(lambda: preparer.unprepare([CLAIM]))
        assert errors == {CLAIM.uid: ""}
        assert not preparer.specs.exists(CLAIM.uid)
        await preparer.close()
    finally:
        backend.close()
