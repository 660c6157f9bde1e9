"""Alpha ResourceSlice fields behind flags: numaNode as a list (list-type attributes) and the host memory a
pod needs (node allocatable resources) -- what is published, what the profile and the API rules accept."""

from __future__ import annotations

from typing import Any

import pytest

from driver.devices.fake import load_named_profile
from driver.kube.api.resourceslice import validate_resource_slice
from driver.resources.attributes import check_device_profile
from driver.resources.publishing import NUMA_NODE, PublishOptions, publish_entries
from driver.sim.kinds import drop_disabled_slice_fields
from tests.support.deploy_checks import one_slice

DRIVER = "gpu.accel-dra.dev"
JSON = dict[str, Any]


def entries(profile: str, options: PublishOptions) -> list[JSON]:
    inventory = load_named_profile(profile).inventory
    return publish_entries(inventory.devices, inventory, DRIVER, options)


def test_numa_node_is_the_list_of_near_nodes_when_asked() -> None:
    on = PublishOptions(list_attributes=True)
    assert [e["attributes"][NUMA_NODE] for e in entries("pcie-l40s-snc", on)] == [
        {"ints": [0, 1]},
        {"ints": [1, 0]},
        {"ints": [2, 3]},
        {"ints": [3, 2]},
    ]
    # A GPU near one node publishes the list form too: one type for the attribute on every device.
    assert {str(e["attributes"][NUMA_NODE]) for e in entries("dgx-h100", on)} == {
        "{'ints': [0]}",
        "{'ints': [1]}",
    }
    assert [e["attributes"][NUMA_NODE] for e in entries("pcie-l40s-snc", PublishOptions())] == [
        {"int": n} for n in (0, 1, 2, 3)
    ]
    # MIG devices carry their GPU's nodes; a GPU without NUMA affinity has no attribute at all.
    assert all(e["attributes"][NUMA_NODE] == {"ints": [0]} for e in entries("mig-a100", on))


def test_host_memory_per_pod_is_declared_on_every_device() -> None:
    published = entries("mig-a100", PublishOptions(host_memory_per_pod=3 << 30))
    assert {str(e["nodeAllocatableResources"]) for e in published} == {
        "{'memory': {'overhead': {'perPod': '3Gi'}}}"
    }
    assert "nodeAllocatableResources" not in entries("mig-a100", PublishOptions())[0]


@pytest.mark.parametrize("profile", ["pcie-l40s-snc", "dgx-h100", "mig-a100"])
def test_what_is_published_passes_the_api_rules_and_the_profile(profile: str) -> None:
    published = entries(profile, PublishOptions(list_attributes=True, host_memory_per_pod=1 << 30))
    assert [str(e) for e in validate_resource_slice(one_slice(published))] == []
    assert [f for e in published for f in check_device_profile(e, DRIVER)] == []


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        ({NUMA_NODE: {"strings": ["0"]}}, "must be a list of int (ints), is strings"),
        ({NUMA_NODE: {"ints": []}}, "ints must be a non-empty list"),
        ({NUMA_NODE: {"ints": [0, -1]}}, "ints item -1: negative NUMA node"),
        ({"nvlinkActiveLinks": {"ints": [18]}}, "must be a single int, is a list (ints)"),
    ],
)
def test_the_profile_allows_the_list_form_for_numa_node_only(attributes: JSON, problem: str) -> None:
    device = entries("dgx-h100", PublishOptions())[0]
    device["attributes"].update(attributes)
    problems = [f.problem for f in check_device_profile(device, DRIVER)]
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_the_api_rules_for_node_allocatable_resources() -> None:
    device = {
        "name": "d",
        "capacity": {"memory": {"value": "1Gi"}},
        "nodeAllocatableResources": {
            "memory": {"overhead": {}},
            "nvidia.com/gpu": {"overhead": {"perPod": "1"}},
            "cpu": {"mapping": {"capacityKey": "cores"}},
            "hugepages-2Mi": {},
            "ephemeral-storage": {"overhead": {"perPod": "-1"}},
        },
    }
    errors = sorted(str(e) for e in validate_resource_slice(one_slice([device])))
    assert errors == sorted(
        [
            'spec.devices[0].nodeAllocatableResources[cpu].mapping.capacityKey: Not found: "cores"',
            "spec.devices[0].nodeAllocatableResources[cpu].mapping.capacityMultiplier: Required value: "
            "capacityMultiplier is required when capacityKey is set",
            'spec.devices[0].nodeAllocatableResources[ephemeral-storage]: Invalid value: "ephemeral-storage": '
            "must be a node allocatable resource name",
            'spec.devices[0].nodeAllocatableResources[ephemeral-storage].overhead.perPod: Invalid value: "-1": '
            "must be non-negative",
            "spec.devices[0].nodeAllocatableResources[hugepages-2Mi]: Required value: at least one of mapping or "
            "overhead must be set",
            'spec.devices[0].nodeAllocatableResources[memory].overhead: Invalid value: "": at least one of perPod '
            "or perContainer must be set",
            'spec.devices[0].nodeAllocatableResources[nvidia.com/gpu]: Invalid value: "nvidia.com/gpu": must be a '
            "node allocatable resource name",
        ]
    )


def test_a_server_without_the_gates_drops_the_fields_unless_already_in_use() -> None:
    published = entries("pcie-l40s-snc", PublishOptions(list_attributes=True, host_memory_per_pod=1 << 30))
    dropped = one_slice([dict(d, attributes=dict(d["attributes"])) for d in published])
    drop_disabled_slice_fields(dropped, None, frozenset())
    device = dropped["spec"]["devices"][0]
    assert device["attributes"][NUMA_NODE] == {} and "nodeAllocatableResources" not in device
    assert any("exactly one value must be specified" in str(e) for e in validate_resource_slice(dropped))
    kept = one_slice(published)
    drop_disabled_slice_fields(kept, one_slice(published), frozenset())  # in use in the stored object
    assert kept == one_slice(published)
    drop_disabled_slice_fields(
        kept, None, frozenset({"DRAListTypeAttributes", "DRANodeAllocatableResources"})
    )
    assert kept == one_slice(published)


def test_options_without_what_the_server_drops() -> None:
    both = PublishOptions(list_attributes=True, host_memory_per_pod=5)
    assert both.without(list_attributes=True) == PublishOptions(host_memory_per_pod=5)
    assert both.without(host_memory=True) == PublishOptions(list_attributes=True)
    assert PublishOptions().without(list_attributes=True, host_memory=True) == PublishOptions()
