"""Health taints: keys, effects and limits per API server version; slice splitting once devices are tainted."""

from __future__ import annotations

from typing import Any

import pytest

from driver.devices.fake import load_named_profile
from driver.health.state import DeviceHealth
from driver.health.taints import TaintRules, device_taints, is_health_taint
from driver.kube.api.resourceslice import validate_resource_slice
from driver.resources.attributes import device_entry
from driver.resources.slices import Owner, plan_sync, slice_spec, split_devices

DRIVER = "gpu.accel-dra.dev"
V134 = TaintRules.for_version(1, 34)
V135 = TaintRules.for_version(1, 35)
EVERYTHING = DeviceHealth("gpu-0", lost="lost", xid=79, xid_fatal=True, unmonitored="no events")


def keys(taints: list[dict[str, Any]]) -> list[tuple[str, str | None, str]]:
    return [(t["key"], t.get("value"), t["effect"]) for t in taints]


def test_taints_on_1_35() -> None:
    assert keys(device_taints(EVERYTHING, DRIVER, V135)) == [
        (f"{DRIVER}/gpu-lost", None, "NoSchedule"),
        (f"{DRIVER}/xid", "79", "NoSchedule"),
        (f"{DRIVER}/unmonitored", None, "None"),
    ]
    ignorable = DeviceHealth("gpu-0", xid=13, xid_fatal=False)
    assert keys(device_taints(ignorable, DRIVER, V135)) == [(f"{DRIVER}/xid", "13", "None")]
    assert device_taints(DeviceHealth("gpu-0"), DRIVER, V135) == []


def test_1_34_has_no_none_effect() -> None:
    assert keys(device_taints(EVERYTHING, DRIVER, V134)) == [
        (f"{DRIVER}/gpu-lost", None, "NoSchedule"),
        (f"{DRIVER}/xid", "79", "NoSchedule"),
    ]
    assert device_taints(DeviceHealth("gpu-0", xid=13), DRIVER, V134) == []
    assert device_taints(DeviceHealth("gpu-0", unmonitored="x"), DRIVER, V134) == []


def test_the_per_device_limit_keeps_the_most_important_taints() -> None:
    assert keys(device_taints(EVERYTHING, DRIVER, TaintRules(allow_none_effect=True, max_per_device=1))) == [
        (f"{DRIVER}/gpu-lost", None, "NoSchedule")
    ]
    assert len(device_taints(EVERYTHING, DRIVER, V134)) <= V134.max_per_device == 4
    assert V135.max_per_device == 16


@pytest.mark.parametrize(
    ("info", "rules"),
    [
        ({"major": "1", "minor": "35", "gitVersion": "v1.35.0"}, V135),
        ({"major": "1", "minor": "34", "gitVersion": "v1.34.2"}, V134),
        ({"major": "1", "minor": "36+", "gitVersion": "v1.36.1-eks-1"}, V135),
        ({"gitVersion": "v1.35.3"}, V135),
        ({"major": "", "minor": "", "gitVersion": "v1.34.0-gke.1"}, V134),
        ({}, V134),
    ],
)
def test_rules_from_the_version_endpoint(info: dict[str, str], rules: TaintRules) -> None:
    assert TaintRules.from_version_info(info) == rules


def test_only_our_keys_are_health_taints() -> None:
    assert is_health_taint({"key": f"{DRIVER}/xid"}, DRIVER)
    assert not is_health_taint({"key": "example.com/maintenance"}, DRIVER)
    assert not is_health_taint({"key": "gpu.other.dev/xid"}, DRIVER)


def tainted_entries(count: int, tainted: set[int]) -> list[dict[str, Any]]:
    profile = load_named_profile("dgx-h100").inventory
    base = device_entry(profile.devices[0], profile, DRIVER)
    entries = []
    for i in range(count):
        entry = {**base, "name": f"gpu-{i:03d}"}
        if i in tainted:
            entry["taints"] = device_taints(EVERYTHING, DRIVER, V135)
        entries.append(entry)
    return entries


def test_one_tainted_device_splits_a_100_device_pool_at_64() -> None:
    assert [len(s) for s in split_devices(tainted_entries(100, set()))] == [100]
    assert [len(s) for s in split_devices(tainted_entries(100, {70}))] == [64, 36]


def test_tainted_slices_pass_api_validation() -> None:
    parts = split_devices(tainted_entries(100, {3, 70}))
    for i, devices in enumerate(parts):
        obj = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": f"node-1-{DRIVER}-{i}"},
            "spec": slice_spec(DRIVER, "node-1", 1, len(parts), devices),
        }
        assert validate_resource_slice(obj) == []


def test_a_taint_change_is_one_update_and_server_timestamps_are_not_a_change() -> None:
    owner = Owner("node-1", "uid-1")
    before = split_devices(tainted_entries(8, set()))
    existing = [
        {"metadata": {"name": "s-0"}, "spec": slice_spec(DRIVER, "node-1", 1, 1, before[0])},
    ]
    plan = plan_sync(existing, split_devices(tainted_entries(8, {2})), driver=DRIVER, owner=owner)
    assert (len(plan.updates), len(plan.creates), len(plan.deletes)) == (1, 0, 0)
    stored = plan.updates[0]
    for device in stored["spec"]["devices"]:
        for taint in device.get("taints") or []:
            taint["timeAdded"] = "2025-01-01T00:00:00Z"  # what the API server fills in
    assert plan_sync([stored], split_devices(tainted_entries(8, {2})), driver=DRIVER, owner=owner).writes == 0
