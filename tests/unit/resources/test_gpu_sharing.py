"""Sharing GPUs by memory (consumable capacity): which GPUs are published shareable, with what request
policy, and what a share's container is told."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from driver.devices.fake import load_named_profile
from driver.devices.migmode import apply_mig_modes, parse_mig_modes
from driver.kube.api.resourceslice import validate_resource_slice
from driver.resources.publishing import PublishOptions, SharedGpus, memory_request_policy, publish_entries
from driver.state.plan import plan_claim
from tests.support.deploy_checks import one_slice

DRIVER = "gpu.accel-dra.dev"
GIB = 1 << 30
JSON = dict[str, Any]


def entries(profile: str, *selectors: str, step: int = GIB) -> list[JSON]:
    inventory = load_named_profile(profile, node_name="node-1").inventory
    shared = SharedGpus(frozenset(selectors), step)
    return publish_entries(inventory.devices, inventory, DRIVER, PublishOptions(shared=shared))


@pytest.mark.parametrize(
    ("memory", "step", "policy"),
    [
        (80 * GIB, GIB, {"default": "80Gi", "validRange": {"min": "1Gi", "step": "1Gi"}}),
        (23034 << 20, GIB, {"default": "22Gi", "validRange": {"min": "1Gi", "step": "1Gi"}}),
        (23034 << 20, 5 * GIB, {"default": "20Gi", "validRange": {"min": "5Gi", "step": "5Gi"}}),
        (23034 << 20, 512 << 20, {"default": "22Gi", "validRange": {"min": "512Mi", "step": "512Mi"}}),
        (3 * GIB, 2 * GIB, None),  # one step: nothing to share
    ],
)
def test_the_request_policy_gives_whole_steps_and_the_whole_gpu_by_default(
    memory: int, step: int, policy: JSON | None
) -> None:
    assert memory_request_policy(memory, step) == policy


def test_chosen_gpus_are_shareable_and_pass_the_api_servers_rules() -> None:
    published = entries("pcie-l4x4", "gpu-0000-01-00-0", "0000:41:00.0")
    shared = [e["name"] for e in published if e.get("allowMultipleAllocations")]
    assert shared == ["gpu-0000-01-00-0", "gpu-0000-41-00-0"]
    assert "requestPolicy" not in published[2]["capacity"]["memory"]
    assert validate_resource_slice(one_slice(published)) == []
    everything = entries("dgx-h100", "all")
    assert all(e["allowMultipleAllocations"] for e in everything)
    assert validate_resource_slice(one_slice(everything)) == []


def test_mig_devices_and_gpus_with_mig_on_are_never_shared() -> None:
    inventory = load_named_profile("mig-a100", node_name="node-1").inventory
    shared = SharedGpus(frozenset({"all", inventory.devices[0].uuid}))
    assert not any(shared.selects(d) for d in inventory.devices)
    assert shared.unmatched(inventory.devices) == [inventory.devices[0].uuid]
    assert not any(e.get("allowMultipleAllocations") for e in entries("mig-a100", "all"))


def test_gpus_in_dynamic_mig_mode_and_their_slots_are_never_shared() -> None:
    found = load_named_profile("mig-dynamic", node_name="node-1").inventory
    inventory = apply_mig_modes(found, parse_mig_modes("static,0000:0f:00.0=dynamic,0000:47:00.0=dynamic"))
    dynamic = [d for d in inventory.devices if d.gpu.mig_dynamic]
    assert len(dynamic) > 2 and any(d.kind == "gpu" for d in dynamic)
    gpus = {d.gpu for d in dynamic}
    selectors = {"all"} | {g.uuid for g in gpus} | {g.pci_bus_id for g in gpus}
    shared = SharedGpus(frozenset(selectors), GIB)
    assert not any(shared.selects(d) for d in inventory.devices)
    assert shared.unmatched(inventory.devices) == sorted(selectors - {"all"})
    published = publish_entries(inventory.devices, inventory, DRIVER, PublishOptions(shared=shared))
    assert not any("allowMultipleAllocations" in e for e in published)
    # A slot is exclusive even where NVML would not say MIG is on.
    (whole,) = [d for d in dynamic if d.kind == "gpu" and d.gpu.pci_bus_id == "0000:47:00.0"]
    unknown = dataclasses.replace(whole, gpu=dataclasses.replace(whole.gpu, mig_enabled=None))
    assert not shared.selects(unknown)


def test_a_shares_container_is_told_its_share_and_memory() -> None:
    inventory = load_named_profile("pcie-l4x4", node_name="node-1").inventory
    device = inventory.devices[0].name
    claim = {
        "metadata": {"name": "c", "namespace": "ns", "uid": "9a7e0c2d-1b1f-4c8e-8a44-2d1f5b6c7d8e"},
        "spec": {"devices": {}},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {
                            "request": "gpu",
                            "driver": DRIVER,
                            "pool": "node-1",
                            "device": device,
                            "shareID": "3f1c2b4a-5d6e-4f70-8a91-b2c3d4e5f607",
                            "consumedCapacity": {"memory": "8Gi"},
                        }
                    ]
                }
            }
        },
    }
    plan = plan_claim(claim, driver=DRIVER, pool="node-1", inventory=inventory)
    (prepared,) = plan.prepared_devices()
    assert prepared.share_id == "3f1c2b4a-5d6e-4f70-8a91-b2c3d4e5f607"
    (planned,) = plan.devices
    env = plan.identity(planned)
    assert (env.share_id, env.memory) == ("3f1c2b4a-5d6e-4f70-8a91-b2c3d4e5f607", "8Gi")
