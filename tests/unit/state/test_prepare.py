"""The node-state preparer in-process, on real files: prepare, repeat, overlap, rollback, reboot, corruption."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from driver import crash
from driver.devices.fake import load_named_profile
from driver.devices.model import Device
from driver.kube.client import RESOURCE_CLAIMS, ApiError, MalformedAnswerError
from driver.resources.attributes import device_attributes
from driver.state.api import ClaimRef
from driver.state.cdi import CdiStore, env_name
from driver.state.checkpoint import CHECKPOINT_FILE, CheckpointStore, ClaimState
from driver.state.claimstatus import merge_device_statuses
from driver.state.metadata import ClaimMetadataWriter, MetadataStore
from driver.state.opaque import API_VERSION
from driver.state.prepare import NodePreparer
from driver.state.sharing import Outcome
from driver.state.sweeper import ClaimSweeper
from tests.support.apierrors import not_found, page_not_found
from tests.support.cdi_rules import assert_valid_cdi
from tests.support.preparers import node_preparer

DRIVER = "gpu.accel-dra.dev"
INVENTORY = load_named_profile("pcie-l4x4", node_name="node-1").inventory
GPU0, GPU1, GPU2, GPU3 = (d.name for d in INVENTORY.devices)


def _attributes(device: Device) -> dict[str, Any]:
    return device_attributes(device, INVENTORY, DRIVER)


class Crash(BaseException):
    pass


@dataclass
class FakeSlicer:
    supported: bool = True
    calls: list[tuple[str, str]] = field(default_factory=list)

    def apply(self, device: Device, interval: str) -> Outcome:
        self.calls.append((device.name, interval))
        return Outcome(self.supported, "" if self.supported else "not supported")


@dataclass
class Node:
    root: Path
    boot_id: str = "boot-1"
    slicer: FakeSlicer = field(default_factory=FakeSlicer)
    backend_edits: dict[str, Any] = field(default_factory=dict)

    def preparer(self, *, metadata: bool = False) -> NodePreparer:
        """A fresh preparer over the same directories: what a restarted plugin process gets; ``metadata``:
        with device metadata files."""
        return node_preparer(
            self.root,
            INVENTORY,
            boot_id=self.boot_id,
            slicer=self.slicer,
            backend_edits=self.backend_edits,
            metadata=ClaimMetadataWriter(MetadataStore(self.root / "plugin"), _attributes)
            if metadata
            else None,
        )

    def specs(self) -> dict[str, dict[str, Any]]:
        cdi = self.root / "cdi"
        out = {}
        for path in sorted(cdi.glob("*.json")) if cdi.exists() else []:
            out[path.name.split("_", 1)[1].removesuffix(".json")] = json.loads(path.read_text())
        return out

    def records(self) -> dict[str, ClaimState]:
        cp, _ = CheckpointStore(self.root / "plugin", self.boot_id).load()
        return {uid: r.state for uid, r in cp.claims.items()}


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


@pytest.fixture
def crash_at() -> Iterator[set[str]]:
    steps: set[str] = set()

    def hook(step: str) -> None:
        if step in steps:
            raise Crash(step)

    crash.set_crash_hook(hook)
    yield steps
    crash.set_crash_hook(None)


def claim(
    uid: str, *devices: str, admin: bool = False, config: list[Any] | None = None, **meta: Any
) -> dict[str, Any]:
    results = [
        {
            "request": "gpu",
            "driver": DRIVER,
            "pool": meta.pop("pool", "node-1"),
            "device": d,
            "adminAccess": admin,
        }
        for d in devices
    ]
    return {
        "metadata": {"name": meta.pop("name", f"claim-{uid}"), "namespace": "default", "uid": uid},
        "spec": {"devices": {"config": config or []}},
        "status": {"allocation": {"devices": {"results": results}}},
    }


def ref(c: dict[str, Any]) -> ClaimRef:
    m = c["metadata"]
    return ClaimRef(m["namespace"], m["uid"], m["name"])


def prepare(p: NodePreparer, *claims: dict[str, Any]) -> dict[str, Any]:
    results, _ = p.prepare_sync(list(claims))
    return results


def sharing(interval: str, *requests: str) -> list[Any]:
    parameters = {
        "apiVersion": API_VERSION,
        "kind": "GpuConfig",
        "sharing": {"strategy": "TimeSlicing", "timeSlicing": {"interval": interval}},
    }
    return [{"requests": list(requests), "opaque": {"driver": DRIVER, "parameters": parameters}}]


def test_prepare_writes_a_valid_spec_and_records_completion(node: Node) -> None:
    p = node.preparer()
    out = prepare(p, claim("a1", GPU0, GPU1))
    assert out["a1"].error == ""
    assert [d.cdi_device_ids for d in out["a1"].devices] == [
        (f"k8s.{DRIVER}/gpu=a1-{GPU0}",),
        (f"k8s.{DRIVER}/gpu=a1-{GPU1}",),
    ]
    spec = node.specs()["a1"]
    assert_valid_cdi(spec)
    assert [d["name"] for d in spec["devices"]] == [f"a1-{GPU0}", f"a1-{GPU1}"]
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED}


def test_repeated_prepare_answers_the_same_and_recreates_a_lost_spec(node: Node) -> None:
    c = claim("a1", GPU0)
    first = prepare(node.preparer(), c)
    spec = node.specs()["a1"]
    (node.root / "cdi" / f"k8s.{DRIVER}-gpu_a1.json").unlink()
    again = prepare(node.preparer(), c)
    assert again == first
    assert node.specs()["a1"] == spec


def test_a_device_is_never_prepared_for_two_claims(node: Node) -> None:
    p = node.preparer()
    prepare(p, claim("a1", GPU0))
    out = prepare(p, claim("b2", GPU1, GPU0, name="second"))
    assert out["b2"].devices == ()
    assert out["b2"].error == (
        f"claim default/second (b2): device {GPU0} (pool node-1) is already prepared for claim "
        "default/claim-a1 (a1); a device is never given to two claims unless one of them has admin access"
    )
    assert set(node.specs()) == {"a1"}
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED}
    # Once the first claim is unprepared, the device is free.
    assert p.unprepare_sync([ref(claim("a1"))]) == {"a1": ""}
    assert prepare(p, claim("b2", GPU1, GPU0, name="second"))["b2"].error == ""


def test_admin_access_on_either_side_may_share_a_device(node: Node) -> None:
    p = node.preparer()
    prepare(p, claim("a1", GPU0))
    assert prepare(p, claim("m1", GPU0, admin=True))["m1"].error == ""
    prepare(p, claim("m2", GPU1, admin=True))
    assert prepare(p, claim("b1", GPU1))["b1"].error == ""
    env = node.specs()["m1"]["devices"][0]["containerEdits"]["env"]
    assert f"{env_name(GPU0)}_ADMIN_ACCESS=true" in env


def shared(c: dict[str, Any], share: str) -> dict[str, Any]:
    for result in c["status"]["allocation"]["devices"]["results"]:
        result["shareID"] = share
        result["consumedCapacity"] = {"memory": "4Gi"}
    return c


def test_shares_of_a_gpu_are_prepared_side_by_side_with_one_time_slice(node: Node) -> None:
    p = node.preparer()
    assert prepare(p, shared(claim("s1", GPU0, config=sharing("Long")), "share-1"))["s1"].error == ""
    assert prepare(p, shared(claim("s2", GPU0), "share-2"))["s2"].error == ""
    assert prepare(p, shared(claim("s3", GPU0, config=sharing("Long")), "share-3"))["s3"].error == ""
    out = prepare(p, shared(claim("s4", GPU0, config=sharing("Short")), "share-4"))
    assert out["s4"].error == (
        f"claim default/claim-s4 (s4): device {GPU0} (pool node-1) is shared with claim default/claim-s1 (s1), "
        "which runs it with TimeSlicing:Long; this claim asks for TimeSlicing:Short, and a GPU has one time slice"
    )
    assert set(node.specs()) == {"s1", "s2", "s3"}
    assert [d.share_id for d in out["s4"].devices] == []
    env = node.specs()["s2"]["devices"][0]["containerEdits"]["env"]
    assert {f"{env_name(GPU0)}_SHARE_ID=share-2", f"{env_name(GPU0)}_MEMORY=4Gi"} <= set(env)
    # The same share id twice is one allocation handed to two claims: refused like any overlap.
    assert "already prepared for claim" in prepare(p, shared(claim("s5", GPU0), "share-2"))["s5"].error


@pytest.mark.parametrize(
    ("c", "message"),
    [
        (
            claim("x1", "gpu-9999"),
            r"claim default/claim-x1 \(x1\): request 'gpu' was allocated device 'gpu-9999', which this node does not have \(devices: gpu-0000-01-00-0, ",
        ),
        (claim("x2", GPU0, pool="node-2"), r"in pool 'node-2', but this node's pool is 'node-1'"),
        (claim("x3", GPU0, config=sharing("Forever")), r"interval: 'Forever' is not one of"),
    ],
)
def test_bad_claims_fail_alone_and_leave_no_trace(node: Node, c: dict[str, Any], message: str) -> None:
    p = node.preparer()
    out = prepare(p, c, claim("ok", GPU3))
    assert out["ok"].error == ""
    assert out[c["metadata"]["uid"]].devices == ()
    assert out[c["metadata"]["uid"]].error
    assert re.search(message, out[c["metadata"]["uid"]].error), out[c["metadata"]["uid"]].error
    assert set(node.specs()) == {"ok"}
    assert node.records() == {"ok": ClaimState.PREPARE_COMPLETED}


def started(node: Node) -> NodePreparer:
    """A preparer as a plugin process serves it: after its start-up recovery."""
    p = node.preparer()
    p.recover()
    return p


@pytest.mark.parametrize(
    ("step", "recorded", "spec"),
    [
        # The overlap guard runs before anything is recorded.
        ("prepare:overlap-checked", {}, False),
        ("prepare:started", {"a1": ClaimState.PREPARE_STARTED}, False),
        ("prepare:config-applied", {"a1": ClaimState.PREPARE_STARTED}, False),
        ("prepare:cdi-written", {"a1": ClaimState.PREPARE_STARTED}, True),
    ],
)
def test_an_interrupted_prepare_with_a_time_slice_is_rolled_back_and_redone(
    node: Node, crash_at: set[str], step: str, recorded: dict[str, ClaimState], spec: bool
) -> None:
    c = claim("a1", GPU0, config=sharing("Long"))
    crash_at.add(step)
    with pytest.raises(Crash):
        prepare(started(node), c)
    assert node.records() == recorded
    assert ("a1" in node.specs()) == spec
    crash_at.clear()
    restarted = started(node)
    out = prepare(restarted, c)
    assert out["a1"].error == ""
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED}
    assert set(node.specs()) == {"a1"}
    assert node.slicer.calls[-1] == (GPU0, "Long")


@pytest.mark.parametrize(
    ("step", "spec"),
    [
        ("prepare:overlap-checked", False),
        ("prepare:config-applied", False),
        ("cdi:tmp-written", False),
        ("prepare:cdi-written", True),
        ("checkpoint:tmp-written", True),
    ],
)
def test_an_interrupted_prepare_of_a_spec_only_claim_leaves_an_orphan_the_start_removes(
    node: Node, crash_at: set[str], step: str, spec: bool
) -> None:
    """Nothing but files to undo: no ``PrepareStarted`` is written, and the spec a crash leaves has no
    checkpoint entry, so the next start removes it before the kubelet's retry prepares the claim anew."""
    c = claim("a1", GPU0)
    p = started(node)
    crash_at.add(step)
    with pytest.raises(Crash):
        prepare(p, c)
    assert node.records() == {}
    assert ("a1" in node.specs()) == spec
    crash_at.clear()
    restarted = started(node)
    assert node.specs() == {}, "the orphan spec outlived the start"
    assert prepare(restarted, c)["a1"].error == ""
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED}
    assert set(node.specs()) == {"a1"}
    assert node.slicer.calls == []


def test_a_checkpoint_deleted_while_running_is_written_again_before_the_next_spec(
    node: Node, crash_at: set[str]
) -> None:
    """Deleted while the plugin runs, on a node with no claims: the next operation writes it again (empty)
    before any spec, so a spec-only prepare interrupted after that leaves an orphan the start removes,
    not a spec the checkpoint would be rebuilt from as a prepared claim."""
    p = started(node)
    (node.root / "plugin" / CHECKPOINT_FILE).unlink()
    crash_at.add("prepare:cdi-written")
    with pytest.raises(Crash):
        prepare(p, claim("a1", GPU0))
    crash_at.clear()
    assert (node.root / "plugin" / CHECKPOINT_FILE).exists()
    restarted = started(node)
    assert node.specs() == {} and node.records() == {}
    assert prepare(restarted, claim("c1", GPU0))["c1"].error == ""


def test_an_interrupted_spec_only_prepare_with_its_checkpoint_lost_is_held_as_prepared(
    node: Node, crash_at: set[str]
) -> None:
    """The checkpoint gone too (deleted by hand, or lost with a power loss while the CDI directory
    persists): the spec is the only trace, the claim is rebuilt from it and held as prepared -- its device
    guarded -- and the kubelet's retry gets the answer a completed prepare gives."""
    c = claim("a1", GPU0)
    first = prepare(started(node), claim("b1", GPU1))  # the node has a checkpoint, with another claim
    crash_at.add("prepare:cdi-written")
    with pytest.raises(Crash):
        prepare(started(node), c)
    crash_at.clear()
    (node.root / "plugin" / CHECKPOINT_FILE).unlink()
    restarted = started(node)
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED, "b1": ClaimState.PREPARE_COMPLETED}
    assert "already prepared for claim" in prepare(restarted, claim("c1", GPU0))["c1"].error
    again = prepare(restarted, c)["a1"]
    assert again.error == ""
    assert again.devices[0].cdi_device_ids == (f"k8s.{DRIVER}/gpu=a1-{GPU0}",)
    assert first["b1"].error == "" and set(node.specs()) == {"a1", "b1"}


def test_a_call_of_both_kinds_records_intent_only_for_the_claim_with_side_effects(
    node: Node, crash_at: set[str]
) -> None:
    """One call, a spec-only claim and a time-sliced one: a crash after both specs are written leaves the
    time-sliced claim ``PrepareStarted`` (rolled back by the retry) and the other one no entry (its spec
    removed by the start); the retry prepares both."""
    plain, sliced = claim("a1", GPU0), claim("b1", GPU1, config=sharing("Short"))
    p = started(node)
    crash_at.add("prepare:cdi-written")
    with pytest.raises(Crash):
        prepare(p, plain, sliced)
    assert node.records() == {"b1": ClaimState.PREPARE_STARTED}
    assert set(node.specs()) == {"a1"}  # the crash came at the first claim's spec
    crash_at.clear()
    restarted = started(node)
    assert node.specs() == {}
    out = prepare(restarted, plain, sliced)
    assert out["a1"].error == "" and out["b1"].error == ""
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED, "b1": ClaimState.PREPARE_COMPLETED}
    assert set(node.specs()) == {"a1", "b1"}


def test_an_interrupted_unprepare_is_finished_by_the_retry(node: Node, crash_at: set[str]) -> None:
    c = claim("a1", GPU0)
    prepare(node.preparer(), c)
    crash_at.add("unprepare:cdi-removed")
    with pytest.raises(Crash):
        node.preparer().unprepare_sync([ref(c)])
    assert node.specs() == {}
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED}
    crash_at.clear()
    assert node.preparer().unprepare_sync([ref(c)]) == {"a1": ""}
    assert node.records() == {}


def test_unknown_claims_unprepare_cleanly_and_lose_leftover_specs(node: Node) -> None:
    p = node.preparer()
    assert p.unprepare_sync([ClaimRef("default", "ghost", "ghost")]) == {"ghost": ""}
    CdiStore(node.root / "cdi", DRIVER).write("ghost", {"cdiVersion": "0.3.0"})
    assert p.unprepare_sync([ClaimRef("default", "ghost", "ghost")]) == {"ghost": ""}
    assert node.specs() == {}


def test_reboot_drops_state_and_specs_then_prepare_recreates(node: Node) -> None:
    c = claim("a1", GPU0)
    prepare(node.preparer(), c)
    node.boot_id = "boot-2"
    p = node.preparer()
    p.recover()
    assert node.specs() == {}
    assert node.records() == {}
    assert prepare(p, c)["a1"].error == ""
    assert set(node.specs()) == {"a1"}
    cp, _ = CheckpointStore(node.root / "plugin", "boot-2").load()
    assert cp.boot_id == "boot-2"


def test_a_corrupt_checkpoint_is_rebuilt_from_the_specs(node: Node) -> None:
    p = node.preparer()
    prepare(p, claim("a1", GPU0, GPU1, name="train"), claim("b2", GPU2, admin=True))
    (node.root / "plugin" / CHECKPOINT_FILE).write_text(
        '{"kind": "AccelDraCheckpoint", "version": 2, "checksum": "x"}'
    )
    restarted = node.preparer()
    restarted.recover()
    assert list((node.root / "plugin").glob(f"{CHECKPOINT_FILE}.corrupt-*"))
    cp, _ = CheckpointStore(node.root / "plugin", node.boot_id).load()
    a1 = cp.claims["a1"]
    assert (a1.namespace, a1.name, a1.state) == ("default", "train", ClaimState.PREPARE_COMPLETED)
    assert [d.device for d in a1.devices] == [GPU0, GPU1]
    assert cp.claims["b2"].devices[0].admin_access
    # The rebuilt state still guards the devices, and the kubelet's retry gets the same answer.
    assert (
        "already prepared for claim default/train (a1)" in prepare(restarted, claim("c3", GPU1))["c3"].error
    )
    assert prepare(restarted, claim("a1", GPU0, GPU1, name="train"))["a1"].error == ""
    assert (
        CheckpointStore(node.root / "plugin", node.boot_id).load()[0].claims["a1"].devices[0].request == "gpu"
    )


def test_recover_removes_orphaned_specs_and_temporaries(node: Node) -> None:
    store = CdiStore(node.root / "cdi", DRIVER)
    store.write("orphan", {"cdiVersion": "0.3.0"})
    (node.root / "cdi" / f".k8s.{DRIVER}-gpu_x.json.123.tmp").write_text("half")
    (node.root / "cdi" / "k8s.other.dev-gpu_y.json").write_text("{}")
    node.preparer().recover()
    assert sorted(p.name for p in (node.root / "cdi").iterdir()) == ["k8s.other.dev-gpu_y.json"]


def test_time_slicing_is_applied_recorded_and_reset(node: Node) -> None:
    p = node.preparer()
    c = claim("a1", GPU0, GPU1, config=sharing("Short"))
    assert prepare(p, c)["a1"].error == ""
    assert sorted(node.slicer.calls) == [(GPU0, "Short"), (GPU1, "Short")]
    env = node.specs()["a1"]["devices"][0]["containerEdits"]["env"]
    assert f"{env_name(GPU0)}_SHARING=TimeSlicing:Short" in env
    cp, _ = CheckpointStore(node.root / "plugin", node.boot_id).load()
    assert {(d.sharing, d.sharing_applied) for d in cp.claims["a1"].devices} == {("TimeSlicing:Short", True)}
    # Another claim asking for a non-default interval still holds GPU1: its interval stays.
    prepare(p, claim("m1", GPU1, admin=True, config=sharing("Short")))
    node.slicer.calls.clear()
    p.unprepare_sync([ref(c)])
    assert node.slicer.calls == [(GPU0, "Default")]


def test_unsupported_time_slicing_is_recorded_not_failed(node: Node) -> None:
    node.slicer.supported = False
    p = node.preparer()
    assert prepare(p, claim("a1", GPU0, config=sharing("Long")))["a1"].error == ""
    cp, _ = CheckpointStore(node.root / "plugin", node.boot_id).load()
    assert (cp.claims["a1"].devices[0].sharing, cp.claims["a1"].devices[0].sharing_applied) == (
        "TimeSlicing:Long",
        False,
    )
    node.slicer.calls.clear()
    p.unprepare_sync([ref(claim("a1"))])
    assert node.slicer.calls == [], "nothing to reset where nothing was applied"


def test_backend_edits_go_to_the_spec_level(node: Node) -> None:
    node.backend_edits = {
        "env": ["ACCEL_DRA_FAKE_STATE=/s"],
        "mounts": [{"hostPath": "/s", "containerPath": "/s", "options": ["rw", "bind"]}],
    }
    prepare(node.preparer(), claim("a1", GPU0))
    spec = node.specs()["a1"]
    assert_valid_cdi(spec)
    assert spec["containerEdits"]["env"] == ["ACCEL_DRA_FAKE_STATE=/s"]
    assert spec["containerEdits"]["mounts"] == node.backend_edits["mounts"]
    assert len(spec["containerEdits"]["deviceNodes"]) == 4


def test_device_status_merge_keeps_other_drivers_and_fields() -> None:
    other = {"driver": "net.example.com", "pool": "p", "device": "eth0", "data": {"mac": "x"}}
    old_ours = {
        "driver": DRIVER,
        "pool": "node-1",
        "device": GPU0,
        "data": {"uuid": "old"},
        "conditions": [{"type": "Ready"}],
    }
    ours = [
        {"driver": DRIVER, "pool": "node-1", "device": GPU0, "data": {"uuid": "new"}},
        {"driver": DRIVER, "pool": "node-1", "device": GPU1, "data": {"uuid": "u1"}},
    ]
    assert merge_device_statuses([other, old_ours], ours) == [
        other,
        {**old_ours, "data": {"uuid": "new"}},
        ours[1],
    ]
    assert merge_device_statuses([*ours], ours) == ours


class ClaimGetter:
    def __init__(self, claims: dict[tuple[str, str], Any]) -> None:
        self.claims = claims

    async def get_claim(self, namespace: str, name: str) -> Any:
        found = self.claims.get((namespace, name))
        if isinstance(found, ApiError):
            raise found
        if found is None:
            raise not_found(RESOURCE_CLAIMS, name)
        return found


async def test_sweeper_unprepares_claims_that_are_gone_or_replaced(node: Node) -> None:
    p = node.preparer()
    kept, gone, replaced, unknown = claim("k1", GPU0), claim("g1", GPU1), claim("r1", GPU2), claim("e1", GPU3)
    prepare(p, kept, gone, replaced, unknown)
    getter = ClaimGetter(
        {
            ("default", "claim-k1"): kept,
            ("default", "claim-r1"): {"metadata": {"uid": "r1-new"}},
            ("default", "claim-e1"): ApiError(500, "InternalError", "etcd timeout"),
        }
    )
    swept = await ClaimSweeper(p, getter, interval=600).sweep()
    assert sorted(r.uid for r in swept) == ["g1", "r1"]
    assert set(node.records()) == {"k1", "e1"}
    assert set(node.specs()) == {"k1", "e1"}


@pytest.mark.parametrize(
    "answer",
    [
        page_not_found(),  # an API server without resource.k8s.io/v1, or a proxy's error page
        ApiError(404, "NotFound", "not found"),  # a 404 Status without details
        not_found(RESOURCE_CLAIMS, "another-claim"),  # a Status naming something else
        MalformedAnswerError(200, "answer is text/html, not JSON", about="GET resourceclaims default/x"),
        {"metadata": {}},  # an answer without a UID proves nothing
    ],
    ids=["page-not-found", "404-without-details", "404-naming-another-object", "malformed", "no-uid"],
)
async def test_sweeper_keeps_claims_unless_the_api_server_says_they_are_gone(node: Node, answer: Any) -> None:
    p = node.preparer()
    prepare(p, claim("k1", GPU0))
    swept = await ClaimSweeper(p, ClaimGetter({("default", "claim-k1"): answer}), interval=600).sweep()
    assert swept == []
    assert node.records() == {"k1": ClaimState.PREPARE_COMPLETED}
    assert set(node.specs()) == {"k1"}
    # The device stays guarded.
    assert "already prepared for claim default/claim-k1" in prepare(p, claim("b1", GPU0))["b1"].error
