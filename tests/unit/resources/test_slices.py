"""Slice splitting and the sync plan (the Go helper's ResourceSlice controller rules)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from driver.resources.slices import Owner, plan_sync, split_devices

DRIVER = "gpu.accel-dra.dev"
OWNER = Owner("node-1", "node-uid-1")


def dev(i: int, **extra: Any) -> dict[str, Any]:
    return {"name": f"gpu-{i:03d}", "attributes": {"index": {"int": i}}, **extra}


def applied(plan: Any, existing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the API server holds after the plan runs (names for created slices are made up)."""
    deleted = {o["metadata"]["name"] for o in plan.deletes}
    updated = {o["metadata"]["name"]: o for o in plan.updates}
    out = [updated.get(o["metadata"]["name"], o) for o in existing if o["metadata"]["name"] not in deleted]
    for n, obj in enumerate(plan.creates):
        created = copy.deepcopy(obj)
        created["metadata"]["name"] = f"created-{len(existing)}-{n}"
        out.append(created)
    return out


def publish(
    existing: list[dict[str, Any]], devices: list[dict[str, Any]]
) -> tuple[Any, list[dict[str, Any]]]:
    plan = plan_sync(existing, split_devices(devices), driver=DRIVER, owner=OWNER)
    return plan, applied(plan, existing)


def test_first_publication_creates_one_owned_slice() -> None:
    plan, _state = publish([], [dev(1), dev(0)])
    assert (len(plan.creates), plan.updates, plan.deletes, plan.generation) == (1, [], [], 1)
    obj = plan.creates[0]
    assert obj["metadata"]["generateName"] == "node-1-gpu.accel-dra.dev-"
    assert obj["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "node-uid-1", "controller": True}
    ]
    spec = obj["spec"]
    assert spec["pool"] == {"name": "node-1", "generation": 1, "resourceSliceCount": 1}
    assert spec["nodeName"] == "node-1" and spec["driver"] == DRIVER
    assert [d["name"] for d in spec["devices"]] == ["gpu-000", "gpu-001"]


def test_nothing_changed_means_no_writes() -> None:
    _, state = publish([], [dev(i) for i in range(300)])
    plan, _ = publish(state, [dev(i) for i in range(300)])
    assert plan.writes == 0


def test_one_changed_slice_keeps_the_generation() -> None:
    _, state = publish([], [dev(0), dev(1)])
    plan, _ = publish(state, [dev(0), dev(1, attributes={"index": {"int": 7}})])
    assert (len(plan.updates), plan.creates, plan.deletes, plan.generation) == (1, [], [], 1)


def test_split_respects_the_128_and_64_limits() -> None:
    assert [len(c) for c in split_devices([dev(i) for i in range(300)])] == [128, 128, 44]
    tainted = [dev(i) for i in range(130)]
    tainted[5]["taints"] = [{"key": "x", "effect": "NoSchedule"}]
    assert [len(c) for c in split_devices(tainted)] == [64, 64, 2]
    assert split_devices([]) == [[]]


def test_resplit_bumps_generation_and_rewrites_everything_at_it() -> None:
    devices = [dev(i) for i in range(200)]
    _, state = publish([], devices)
    devices[3]["taints"] = [{"key": "gpu.accel-dra.dev/xid", "value": "79", "effect": "NoSchedule"}]
    plan, state = publish(state, devices)
    assert plan.generation == 2
    assert {o["spec"]["pool"]["generation"] for o in state} == {2}
    assert {o["spec"]["pool"]["resourceSliceCount"] for o in state} == {4}
    assert sorted(len(o["spec"]["devices"]) for o in state) == [8, 64, 64, 64]


def test_deleted_slice_is_recreated_with_a_new_generation() -> None:
    _, state = publish([], [dev(i) for i in range(200)])
    survivor = [s for s in state if len(s["spec"]["devices"]) == 128]
    plan, after = publish(survivor, [dev(i) for i in range(200)])
    assert len(plan.creates) == 1 and plan.generation == 2
    assert {o["spec"]["pool"]["generation"] for o in after} == {2}


def test_obsolete_generations_and_unmatched_slices_are_deleted() -> None:
    _, state = publish([], [dev(0)])
    old = copy.deepcopy(state[0])
    old["metadata"]["name"] = "leftover"
    old["spec"]["pool"]["generation"] = 0
    plan, _after = publish([*state, old], [dev(0)])
    assert [o["metadata"]["name"] for o in plan.deletes] == ["leftover"]
    assert plan.updates == [] and plan.creates == []


def test_server_defaulted_taint_timestamps_are_not_changes() -> None:
    devices = [dev(0, taints=[{"key": "k", "value": "v", "effect": "NoSchedule"}])]
    _, state = publish([], devices)
    state[0]["spec"]["devices"][0]["taints"][0]["timeAdded"] = "2026-11-22T10:00:00Z"
    plan, _ = publish(state, devices)
    assert plan.writes == 0


@given(st.lists(st.integers(0, 400), max_size=3, min_size=1))
def test_any_sequence_of_device_counts_converges_in_one_sync(counts: list[int]) -> None:
    state: list[dict[str, Any]] = []
    for count in counts:
        devices = [dev(i) for i in range(count)]
        _, state = publish(state, devices)
        assert publish(state, devices)[0].writes == 0
        generation = max(o["spec"]["pool"]["generation"] for o in state)
        current = [o for o in state if o["spec"]["pool"]["generation"] == generation]
        assert len(current) == current[0]["spec"]["pool"]["resourceSliceCount"]
        assert sorted(d["name"] for o in current for d in o["spec"]["devices"]) == sorted(
            d["name"] for d in devices
        )
