"""Dynamic MIG in the node state, in-process on real files: the cases a kubelet cannot easily produce --
claims that raced, admin access, a GPU reset, a rebuilt checkpoint, an instance someone else made."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from driver.devices.backend import open_backend
from driver.devices.fake import FakeBackend
from driver.devices.migmode import apply_mig_modes, parse_mig_modes
from driver.devices.model import Inventory
from driver.state.cdi import env_name
from driver.state.checkpoint import CheckpointStore, ClaimState
from driver.state.mig import DynamicMig
from driver.state.prepare import NodePreparer
from tests.support.preparers import node_preparer
from tests.unit.state.test_prepare import DRIVER, Crash, FakeSlicer, claim, crash_at, prepare, ref

__all__ = ["crash_at"]  # a fixture

A100 = "gpu-0000-0f-00-0"
SLOT = f"{A100}-mig-2g-10gb-2"


@dataclasses.dataclass
class MigNode:
    root: Path
    backend: FakeBackend
    inventory: Inventory

    def preparer(self) -> NodePreparer:
        return node_preparer(
            self.root, self.inventory, slicer=FakeSlicer(), mig=DynamicMig(self.backend, self.inventory)
        )

    def placements(self) -> list[tuple[int, int]]:
        gpu = self.inventory.gpus[1].uuid
        return sorted((i.placement.start, i.placement.size) for i in self.backend.gpu_instances(gpu))


@pytest.fixture
def node(tmp_path: Path) -> MigNode:
    backend = open_backend("fake:mig-dynamic", node_name="node-1", state_dir=str(tmp_path / "state"))
    assert isinstance(backend, FakeBackend)
    inventory = apply_mig_modes(backend.discover(), parse_mig_modes("static,0000:0f:00.0=dynamic"))
    return MigNode(tmp_path, backend, inventory)


def test_a_claim_with_admin_access_creates_nothing_and_sees_the_instance_there_is(node: MigNode) -> None:
    p = node.preparer()
    admin = prepare(p, claim("adm", SLOT, admin=True))
    assert admin["adm"].error == ""
    assert node.placements() == []
    spec = node.root / "cdi" / f"k8s.{DRIVER}-gpu_adm.json"
    assert "nvidia-cap" not in spec.read_text()  # the GPU only: no instance to give access to
    assert prepare(p, claim("user", SLOT))["user"].error == ""
    assert prepare(p, claim("adm2", SLOT, admin=True))["adm2"].error == ""
    assert "nvidia-cap" in (node.root / "cdi" / f"k8s.{DRIVER}-gpu_adm2.json").read_text()
    # Admin access to a slot overlapping another claim's instance: nothing to see, nothing refused.
    overlapping = prepare(p, claim("adm3", f"{A100}-mig-4g-20gb-0", admin=True))
    assert overlapping["adm3"].error == ""
    # Unpreparing the admin claims leaves the user's instance alone.
    p.unprepare_sync([ref(claim("adm", SLOT)), ref(claim("adm2", SLOT)), ref(claim("adm3", SLOT))])
    assert node.placements() == [(2, 2)]


def test_an_instance_nobody_holds_in_the_way_fails_the_claim_naming_it(node: MigNode) -> None:
    gpu = node.inventory.gpus[1]
    four = next(p for p in gpu.mig_profiles if p.name == "4g.20gb")
    node.backend.create_gpu_instance(gpu.uuid, four, four.placements[0])  # made by hand after the start
    out = prepare(node.preparer(), claim("c", SLOT))
    assert re.search(
        r"memory slices 2-3 for .*2g-10gb-2 are taken by GPU instance 1 .* no claim", out["c"].error
    )
    # The next start removes it; then the claim prepares.
    node.preparer().recover()
    assert node.placements() == []
    assert prepare(node.preparer(), claim("c", SLOT))["c"].error == ""


def test_a_gpu_reset_loses_the_instance_and_the_next_prepare_recreates_it(node: MigNode) -> None:
    c = claim("c", SLOT)
    first = prepare(node.preparer(), c)
    (instance,) = node.backend.gpu_instances(node.inventory.gpus[1].uuid)
    old = instance.devices[0].uuid
    gpu = node.inventory.gpus[1].uuid
    node.backend.destroy_compute_instance(gpu, instance.id, 0)
    node.backend.destroy_gpu_instance(gpu, instance.id)
    again = prepare(node.preparer(), c)
    assert again["c"].error == "" and again == first  # the same CDI ids for the kubelet
    (recreated,) = node.backend.gpu_instances(gpu)
    new = recreated.devices[0].uuid
    assert new != old
    cp, _ = CheckpointStore(node.root / "plugin", "boot-1").load()
    assert cp.claims["c"].devices[0].uuid == new


def test_a_checkpoint_rebuilt_from_specs_still_guards_and_releases_the_instance(node: MigNode) -> None:
    c = claim("c", SLOT)
    prepare(node.preparer(), c)
    (node.root / "plugin" / "checkpoint.json").write_text("{corrupt")
    racer = prepare(node.preparer(), claim("racer", f"{A100}-mig-4g-20gb-0"))
    assert "which device" in racer["racer"].error and "prepared for claim" in racer["racer"].error
    env = (node.root / "cdi" / f"k8s.{DRIVER}-gpu_c.json").read_text()
    assert env_name(SLOT) in env
    node.preparer().unprepare_sync([ref(c)])
    assert node.placements() == []


def test_an_interrupted_prepare_released_later_keeps_the_instance_another_claim_now_holds(
    node: MigNode,
) -> None:
    """A prepare crashed after creating the instance, the pod went away, the slot went to another claim that
    was prepared (its instance taken over) -- then the sweeper unprepares the first: the instance stays."""
    p = node.preparer()
    store = CheckpointStore(node.root / "plugin", "boot-1")
    first = claim("first", SLOT)
    prepare(p, first)
    cp, _ = store.load()
    record = cp.claims["first"]
    store.save(cp.with_claim(dataclasses.replace(record, state=ClaimState.PREPARE_STARTED)))
    assert prepare(node.preparer(), claim("second", SLOT))["second"].error == ""
    assert node.placements() == [(2, 2)]
    node.preparer().unprepare_sync([ref(first)])
    assert node.placements() == [(2, 2)]
    node.preparer().unprepare_sync([ref(claim("second", SLOT))])
    assert node.placements() == []


def test_the_guard_counts_claims_the_caller_says_hold_their_devices(node: MigNode) -> None:
    """A call preparing several claims passes the earlier ones of the call as holders."""
    from driver.state.checkpoint import ClaimState
    from driver.state.plan import plan_claim

    first = plan_claim(claim("first", SLOT), driver=DRIVER, pool="node-1", inventory=node.inventory)
    second = plan_claim(
        claim("second", f"{A100}-mig-4g-20gb-0"), driver=DRIVER, pool="node-1", inventory=node.inventory
    )
    mig = DynamicMig(node.backend, node.inventory)
    empty = CheckpointStore(node.root / "plugin", "boot-1").empty()
    assert mig.conflict(empty, second) is None
    started = first.record(ClaimState.PREPARE_STARTED)
    assert "memory slices 0-3" in (mig.conflict(empty, second, also=[started]) or "")


def test_two_claims_of_one_call_on_overlapping_slices_get_one_instance(node: MigNode) -> None:
    """The overlap guard counts the earlier claims of the call, which are not completed yet."""
    out = prepare(node.preparer(), claim("first", SLOT), claim("second", f"{A100}-mig-4g-20gb-0"))
    assert out["first"].error == ""
    assert "memory slices 0-3" in out["second"].error and "first" in out["second"].error
    assert node.placements() == [(2, 2)]
    cp, _ = CheckpointStore(node.root / "plugin", "boot-1").load()
    assert sorted(cp.claims) == ["first"]


def test_a_dynamic_mig_claim_is_recorded_as_started_before_its_instance_is_made(
    node: MigNode, crash_at: set[str]
) -> None:
    """A MIG instance is a side effect beyond the claim's files: a crash after creating it must leave an
    entry that the retry (or the sweeper) rolls back through, never an instance no entry names."""
    p = node.preparer()
    p.recover()
    crash_at.add("prepare:started")
    with pytest.raises(Crash):
        prepare(p, claim("c", SLOT))
    cp, _ = CheckpointStore(node.root / "plugin", "boot-1").load()
    assert {uid: r.state for uid, r in cp.claims.items()} == {"c": ClaimState.PREPARE_STARTED}
    assert node.placements() == []
    crash_at.clear()
    assert prepare(node.preparer(), claim("c", SLOT))["c"].error == ""
    assert node.placements() == [(2, 2)]
