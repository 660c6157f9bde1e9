"""Partitionable devices of GPUs in dynamic MIG mode: the published counters, the slices that carry them, and
the allocator (kube-scheduler's rules) allocating exactly what the hardware can create."""

from __future__ import annotations

import random
from typing import Any

import pytest

from driver.allocation.allocator import allocate
from driver.devices.backend import open_backend
from driver.devices.fake import FakeBackend
from driver.devices.mig import MigError
from driver.devices.migmode import apply_mig_modes, parse_mig_modes
from driver.devices.model import Device, Inventory
from driver.kube.api.resourceslice import validate_resource_slice
from driver.resources.attributes import check_slice, device_entry
from driver.resources.cli import discovered_slices
from driver.resources.counters import consumes_counters, counter_sets, device_counters, gpu_counters
from driver.resources.deviceclasses import device_classes
from driver.resources.slices import Owner, SharedCounters, plan_sync, split_pool
from tests.unit.resources.test_slices import applied

DRIVER = "gpu.accel-dra.dev"
MODES = "static,0000:0f:00.0=dynamic,0000:47:00.0=dynamic"
A100, H100 = "gpu-0000-0f-00-0", "gpu-0000-47-00-0"
JSON = dict[str, Any]


def inventory() -> Inventory:
    return apply_mig_modes(
        open_backend("fake:mig-dynamic", node_name="node-1").discover(), parse_mig_modes(MODES)
    )


def slices() -> list[JSON]:
    out = discovered_slices("fake:mig-dynamic", DRIVER, "node-1", mig_mode=MODES)
    for n, item in enumerate(out):
        item["metadata"] = {"name": f"slice-{n}"}
    return out


def test_the_published_slices_pass_the_api_servers_rules_and_the_profile() -> None:
    published = slices()
    for item in published:
        assert validate_resource_slice(item) == [], item["spec"].get("sharedCounters")
        assert check_slice(item) == []
    counters, *device_slices = published
    assert [c["name"] for c in counters["spec"]["sharedCounters"]] == [f"{A100}-counters", f"{H100}-counters"]
    assert "devices" not in counters["spec"]
    assert all(len(s["spec"]["devices"]) <= 64 for s in device_slices)
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in published} == {len(published)}


def test_counters_of_a100_and_h100() -> None:
    gpus = {g.name: g for g in inventory().gpus}
    memory = {f"memory-slice-{i}": 1 for i in range(8)}
    assert gpu_counters(gpus[A100]) == {
        **memory,
        "compute-slices": 7,
        "copy-engines": 7,
        "decoders": 5,
        "jpeg-engines": 1,
        "ofa-engines": 1,
    }
    assert gpu_counters(gpus[H100]) == {
        **memory,
        "compute-slices": 7,
        "copy-engines": 8,
        "decoders": 7,
        "jpeg-engines": 7,
        "ofa-engines": 1,
    }
    assert gpu_counters(gpus["gpu-0000-07-00-0"]) == {}  # static: not partitionable


def test_each_device_consumes_its_placement_its_compute_and_its_engines() -> None:
    devices = {d.name: d for d in inventory().devices}
    assert device_counters(devices[f"{A100}-mig-1g-5gb-me-3"]) == {
        "memory-slice-3": 1,
        "compute-slices": 1,
        "copy-engines": 1,
        "decoders": 1,
        "jpeg-engines": 1,
        "ofa-engines": 1,
    }
    assert device_counters(devices[f"{A100}-mig-3g-20gb-4"]) == {
        **{f"memory-slice-{i}": 1 for i in range(4, 8)},
        "compute-slices": 3,
        "copy-engines": 3,
        "decoders": 2,
    }
    assert device_counters(devices[A100]) == gpu_counters(devices[A100].gpu)
    (entry,) = consumes_counters(devices[f"{A100}-mig-1g-5gb-0"])
    assert entry["counterSet"] == f"{A100}-counters"
    assert "consumesCounters" not in device_entry(
        devices["gpu-0000-07-00-0-mig-3g-20gb-4"], inventory(), DRIVER
    )


def fits(devices: list[Device]) -> bool:
    """Whether the devices' counter consumption fits their GPU's counters."""
    total: dict[str, int] = {}
    for d in devices:
        for name, n in device_counters(d).items():
            total[name] = total.get(name, 0) + n
    limits = gpu_counters(devices[0].gpu)
    return all(total[name] <= limits[name] for name in total)


@pytest.mark.parametrize("gpu", [A100, H100])
def test_counters_allow_exactly_what_the_hardware_can_create(gpu: str) -> None:
    """Random sequences of slots: a slot fits the counters beside the ones taken iff the (fake) hardware
    creates its instance beside theirs -- the counters model placements, compute slices and engines."""
    rng = random.Random(19)
    for _ in range(60):
        backend = open_backend("fake:mig-dynamic", node_name="node-1")
        assert isinstance(backend, FakeBackend)
        slots = [d for d in inventory().devices if d.gpu.name == gpu and d.slot is not None]
        rng.shuffle(slots)
        taken: list[Device] = []
        for device in slots:
            assert device.slot is not None
            try:
                backend.create_gpu_instance(device.gpu.uuid, device.slot.profile, device.slot.placement)
                created = True
            except MigError:
                created = False
            assert fits([*taken, device]) == created, (device.name, [t.name for t in taken])
            if created:
                taken.append(device)


def mig_claim(name: str, profile: str, count: int = 1, klass: str = "mig.accel-dra.dev") -> JSON:
    selector = f'device.attributes["{DRIVER}"].profile == "{profile}"' if profile else "true"
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "r",
                        "exactly": {
                            "deviceClassName": klass,
                            "count": count,
                            "selectors": [{"cel": {"expression": selector}}],
                        },
                    }
                ]
            }
        },
    }


def devices_of(claims: list[JSON]) -> list[str] | None:
    result = allocate(claims, slices(), device_classes(DRIVER), "node-1")
    if not result.ok:
        return None
    return sorted(r["device"] for a in result.allocations for r in a.allocation["devices"]["results"])


def test_the_scheduler_packs_instances_that_can_coexist() -> None:
    # Two 3g.20gb fit on each dynamic A100 (placements 0 and 4), plus the hand-made one on GPU 0.
    assert devices_of([mig_claim("a", "3g.20gb", 3)]) == [
        "gpu-0000-07-00-0-mig-3g-20gb-4",
        f"{A100}-mig-3g-20gb-0",
        f"{A100}-mig-3g-20gb-4",
    ]
    assert devices_of([mig_claim("a", "3g.20gb", 4)]) is None
    # The GPU's one JPEG/OFA engine: a single +me instance (on A100 the H100's are named 1g.10gb+me).
    assert devices_of([mig_claim("a", "1g.5gb+me", 1)]) == [f"{A100}-mig-1g-5gb-me-0"]
    assert devices_of([mig_claim("a", "1g.5gb+me", 2)]) is None
    # 1g.10gb: seven on the H100 (one memory slice each), four on the A100 (two slices each), no more.
    assert len(devices_of([mig_claim("a", "1g.10gb", 11)]) or []) == 11
    assert devices_of([mig_claim("a", "1g.10gb", 12)]) is None


def test_the_whole_gpu_and_its_mig_devices_exclude_each_other() -> None:
    whole = mig_claim("whole", "", klass="gpu.accel-dra.dev")
    assert devices_of([whole]) == [A100]
    both = devices_of([mig_claim("whole", "", 2, klass="gpu.accel-dra.dev"), mig_claim("m", "4g.40gb")])
    assert both is None  # two whole GPUs leave no room for the H100's 4g.40gb
    assert devices_of([whole, mig_claim("m", "4g.40gb")]) == [A100, f"{H100}-mig-4g-40gb-0"]


def test_counter_slices_are_planned_like_device_slices() -> None:
    owner = Owner("node-1", "uid")
    inv = inventory()
    devices = [device_entry(d, inv, DRIVER) for d in inv.devices]
    sets = counter_sets(inv)
    first = plan_sync([], split_pool(devices, sets), driver=DRIVER, owner=owner)
    stored = applied(first, [])
    assert ("sharedCounters" in stored[0]["spec"], "devices" in stored[0]["spec"]) == (True, False)
    assert plan_sync(stored, split_pool(devices, sets), driver=DRIVER, owner=owner).writes == 0
    # One counter value changes: only the counters slice is rewritten, at the same generation.
    changed = [{**sets[0], "counters": {**sets[0]["counters"], "decoders": {"value": "4"}}}, *sets[1:]]
    plan = plan_sync(stored, split_pool(devices, changed), driver=DRIVER, owner=owner)
    assert (len(plan.updates), plan.creates, plan.deletes) == (1, [], [])
    assert "devices" not in plan.updates[0]["spec"]
    # More than 8 counter sets take more than one counters slice.
    many = [{"name": f"gpu-{i}-counters", "counters": {"c": {"value": "1"}}} for i in range(9)]
    chunks = split_pool([], many)
    assert [len(c.sets) for c in chunks if isinstance(c, SharedCounters)] == [8, 1]
    assert split_pool([], []) == [[]]
