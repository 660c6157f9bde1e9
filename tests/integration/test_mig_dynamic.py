"""Dynamic MIG with real plugin processes: instances created at prepare, destroyed at unprepare, and no
instance left that no claim holds, whatever step a crash (SIGKILL) interrupts.

The plugin runs the fake ``mig-dynamic`` machine with GPUs 1 (A100-40GB) and 2 (H100) in dynamic mode; the
fake GPUs keep their instances under the state directory, where the test reads them as the hardware.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from driver.devices.backend import open_backend
from driver.devices.fake import FakeBackend
from driver.devices.mig import GpuInstance
from driver.kube.client import RESOURCE_CLAIMS, KubeClient
from driver.sim.kubelet import KubeletError, SimKubelet
from driver.state.checkpoint import CheckpointStore, ClaimState, LoadEvent
from tests.integration.conftest import NodeDirs, StartPlugin
from tests.integration.node_state_claims import DRIVER, allocated_claim, ref, result
from tests.support.cdi_rules import assert_valid_cdi
from tests.support.processes import Process

A100, H100 = "gpu-0000-0f-00-0", "gpu-0000-47-00-0"
MODES = "static,0000:0f:00.0=dynamic,0000:47:00.0=dynamic"
SLOT = f"{A100}-mig-3g-20gb-4"

# (crash step, the claim's checkpoint state right after the crash). One claim per call: the checkpoint is
# written by the start (a fresh node's empty one), twice by a prepare (a MIG instance is a side effect
# beyond the claim's files, so its intent is recorded first) and once more by the unprepare.
PREPARE_STEPS = [
    ("checkpoint:tmp-written#2", None),
    ("prepare:started", ClaimState.PREPARE_STARTED),
    ("mig:gpu-instance-created", ClaimState.PREPARE_STARTED),
    ("mig:compute-instance-created", ClaimState.PREPARE_STARTED),
    ("cdi:tmp-written", ClaimState.PREPARE_STARTED),
    ("prepare:cdi-written", ClaimState.PREPARE_STARTED),
    ("checkpoint:tmp-written#3", ClaimState.PREPARE_STARTED),
    ("prepare:completed", ClaimState.PREPARE_COMPLETED),
]
UNPREPARE_STEPS = [
    ("unprepare:cdi-removed", ClaimState.PREPARE_COMPLETED),
    ("mig:compute-instance-destroyed", ClaimState.PREPARE_COMPLETED),
    ("mig:gpu-instance-destroyed", ClaimState.PREPARE_COMPLETED),
    ("checkpoint:tmp-written#4", ClaimState.PREPARE_COMPLETED),
    ("unprepare:completed", None),
]


class MigNode:
    def __init__(self, dirs: NodeDirs, start_plugin: StartPlugin, kubelet: SimKubelet) -> None:
        self.dirs = dirs
        self.start_plugin = start_plugin
        self.kubelet = kubelet
        self.state = dirs.root / "fake-state"
        self.boot_file = dirs.root / "boot_id"
        self.boot_file.write_text("boot-1\n")
        backend = open_backend("fake:mig-dynamic", node_name="node-1", state_dir=str(self.state))
        assert isinstance(backend, FakeBackend)
        self.hardware = backend
        self.uuids = {g.name: g.uuid for g in backend.discover().gpus}

    async def plugin(self, crash_at: str | None = None) -> Process:
        process = await self.start_plugin(
            backend="fake:mig-dynamic",
            extra=(
                "--mig-mode",
                MODES,
                "--fake-state-dir",
                str(self.state),
                "--boot-id-file",
                str(self.boot_file),
            ),
            env={"ACCEL_DRA_CRASH_AT": crash_at} if crash_at else None,
        )
        await process.wait_log("registered with kubelet")
        return process

    def instances(self, gpu: str = A100) -> list[GpuInstance]:
        return self.hardware.gpu_instances(self.uuids[gpu])

    def specs(self) -> dict[str, dict[str, Any]]:
        return self.dirs.cdi_specs(DRIVER)

    def checkpoint(self) -> dict[str, ClaimState]:
        cp, event = CheckpointStore(self.dirs.plugin_dir(DRIVER), "boot-1").load()
        assert event in (LoadEvent.LOADED, LoadEvent.MISSING), event
        return {uid: r.state for uid, r in cp.claims.items()}


@pytest.fixture
def node(node_dirs: NodeDirs, start_plugin: StartPlugin, kubelet: SimKubelet) -> MigNode:
    return MigNode(node_dirs, start_plugin, kubelet)


async def claim_for(kube: KubeClient, name: str, *devices: str) -> dict[str, Any]:
    return await allocated_claim(
        kube,
        name,
        [result(f"r{i}", d) for i, d in enumerate(devices)],
        requests=tuple(f"r{i}" for i in range(len(devices))),
    )


def device_edits(spec: dict[str, Any]) -> dict[str, Any]:
    (device,) = spec["devices"]
    return dict(device["containerEdits"])


async def test_prepare_creates_the_instance_and_unprepare_destroys_it(
    node: MigNode, kube: KubeClient
) -> None:
    await node.plugin()
    claim = await claim_for(kube, "mig", SLOT)
    uid = claim["metadata"]["uid"]
    assert node.instances() == []
    await node.kubelet.prepare(DRIVER, [ref(claim)])
    (instance,) = node.instances()
    assert (instance.placement.start, instance.placement.size) == (4, 4)
    (mig,) = instance.devices
    assert mig.profile == "3g.20gb" and mig.memory_bytes == 19968 << 20
    spec = node.specs()[uid]
    assert_valid_cdi(spec)
    edits = device_edits(spec)
    # The parent GPU's node and the instance's access capabilities (GPU instance, compute instance).
    gi, ci = mig.gpu_instance_id, mig.compute_instance_id
    assert gi is not None and ci is not None
    assert [n["path"] for n in edits["deviceNodes"]] == [
        "/dev/nvidia1",
        f"/dev/nvidia-caps/nvidia-cap{3 + 135 + gi * 9}",
        f"/dev/nvidia-caps/nvidia-cap{3 + 135 + gi * 9 + 1 + ci}",
    ]
    assert f"ACCEL_DRA_DEVICE_{SLOT.upper().replace('-', '_')}={mig.uuid}" in edits["env"]
    status = (await kube.get(RESOURCE_CLAIMS, "mig", "default"))["status"]
    await node.kubelet.unprepare(DRIVER, [ref(claim)])
    assert node.instances() == []
    assert node.specs() == {}
    assert node.checkpoint() == {}
    assert status["allocation"]["devices"]["results"][0]["device"] == SLOT


async def test_the_claim_status_names_the_created_instance(node: MigNode, kube: KubeClient) -> None:
    process = await node.plugin()
    claim = await claim_for(kube, "status", f"{H100}-mig-1g-10gb-6")
    await node.kubelet.prepare(DRIVER, [ref(claim)])
    (instance,) = node.instances(H100)
    (mig,) = instance.devices
    await process.wait_log("claim device status written")
    (entry,) = (await kube.get(RESOURCE_CLAIMS, "status", "default"))["status"]["devices"]
    assert entry["data"] == {
        "uuid": mig.uuid,
        "pciBusID": "0000:47:00.0",
        "productName": "NVIDIA H100 80GB HBM3",
        "parentUUID": node.uuids[H100],
        "migProfile": "1g.10gb",
    }


async def test_the_whole_gpu_of_a_dynamic_gpu_is_its_full_instance(node: MigNode, kube: KubeClient) -> None:
    await node.plugin()
    claim = await claim_for(kube, "whole", H100)
    await node.kubelet.prepare(DRIVER, [ref(claim)])
    (instance,) = node.instances(H100)
    assert (instance.placement.start, instance.placement.size) == (0, 8)
    assert instance.devices[0].profile == "7g.80gb"
    await node.kubelet.unprepare(DRIVER, [ref(claim)])
    assert node.instances(H100) == []


async def test_two_claims_get_instances_side_by_side_and_overlaps_are_refused(
    node: MigNode, kube: KubeClient
) -> None:
    await node.plugin()
    first = await claim_for(kube, "first", SLOT)
    second = await claim_for(kube, "second", f"{A100}-mig-2g-10gb-0", f"{A100}-mig-1g-5gb-2")
    await node.kubelet.prepare(DRIVER, [ref(first), ref(second)])
    assert sorted((i.placement.start, i.placement.size) for i in node.instances()) == [(0, 2), (2, 1), (4, 4)]
    # An allocation that raced (the scheduler's counters forbid it): 4g.20gb at 0 overlaps both.
    racer = await claim_for(kube, "racer", f"{A100}-mig-4g-20gb-0")
    with pytest.raises(KubeletError, match=r"memory slices 0-3 of GPU .* which device .* prepared for claim"):
        await node.kubelet.prepare(DRIVER, [ref(racer)])
    assert len(node.instances()) == 3
    await node.kubelet.unprepare(DRIVER, [ref(first), ref(second), ref(racer)])
    assert node.instances() == []


async def test_an_instance_no_claim_holds_is_destroyed_at_start(node: MigNode, kube: KubeClient) -> None:
    # Left by someone (or a plugin whose checkpoint is gone): the plugin owns dynamic GPUs.
    profile = next(p for p in node.hardware.discover().gpus[1].mig_profiles if p.name == "2g.10gb")
    made = node.hardware.create_gpu_instance(node.uuids[A100], profile, profile.placements[1])
    node.hardware.create_compute_instance(node.uuids[A100], made)
    process = await node.plugin()
    await process.wait_log("MIG instance destroyed.*no claim holds it")
    assert node.instances() == []
    # The static GPU's hand-made instances are not the plugin's business.
    assert len(node.hardware.gpu_instances(node.uuids["gpu-0000-07-00-0"])) == 4


@pytest.mark.parametrize(("step", "state"), PREPARE_STEPS)
async def test_a_crash_during_prepare_leaves_no_instance_behind(
    node: MigNode, kube: KubeClient, step: str, state: ClaimState | None
) -> None:
    claim = await claim_for(kube, "victim", SLOT)
    uid = claim["metadata"]["uid"]
    process = await node.plugin(crash_at=step)
    with pytest.raises(KubeletError, match="UNAVAILABLE"):
        await node.kubelet.prepare(DRIVER, [ref(claim)])
    assert await process.wait() == -signal.SIGKILL
    assert node.checkpoint() == ({} if state is None else {uid: state})
    # Restarted: an interrupted prepare's instance is rolled back; a completed one is kept.
    await node.plugin()
    assert len(node.instances()) == (1 if state == ClaimState.PREPARE_COMPLETED else 0)
    # The kubelet's retry converges on one instance, the one the CDI spec names.
    await node.kubelet.prepare(DRIVER, [ref(claim)])
    (instance,) = node.instances()
    assert f"={instance.devices[0].uuid}" in " ".join(device_edits(node.specs()[uid])["env"])
    assert node.checkpoint() == {uid: ClaimState.PREPARE_COMPLETED}
    await node.kubelet.unprepare(DRIVER, [ref(claim)])
    assert node.instances() == []


@pytest.mark.parametrize(("step", "state"), UNPREPARE_STEPS)
async def test_a_crash_during_unprepare_leaves_no_instance_behind(
    node: MigNode, kube: KubeClient, step: str, state: ClaimState | None
) -> None:
    claim = await claim_for(kube, "victim", SLOT)
    uid = claim["metadata"]["uid"]
    process = await node.plugin(crash_at=step)
    await node.kubelet.prepare(DRIVER, [ref(claim)])
    with pytest.raises(KubeletError, match="UNAVAILABLE"):
        await node.kubelet.unprepare(DRIVER, [ref(claim)])
    assert await process.wait() == -signal.SIGKILL
    assert node.checkpoint() == ({} if state is None else {uid: state})
    await node.plugin()
    # The kubelet retries until the unprepare succeeds.
    await node.kubelet.unprepare(DRIVER, [ref(claim)])
    assert node.instances() == []
    assert node.specs() == {}
    assert node.checkpoint() == {}


async def test_an_interrupted_prepare_of_a_claim_that_then_goes_away_leaves_nothing(
    node: MigNode, kube: KubeClient
) -> None:
    claim = await claim_for(kube, "short-lived", SLOT)
    process = await node.plugin(crash_at="mig:compute-instance-created")
    with pytest.raises(KubeletError, match="UNAVAILABLE"):
        await node.kubelet.prepare(DRIVER, [ref(claim)])
    assert await process.wait() == -signal.SIGKILL
    assert len(node.instances()) == 1
    await kube.delete(RESOURCE_CLAIMS, "short-lived", "default")
    restarted = await node.plugin()
    await restarted.wait_log("unprepared claim that no longer exists")
    assert node.instances() == []
    assert node.checkpoint() == {}


async def test_an_instance_in_use_is_not_destroyed_and_unprepare_fails_until_it_is_free(
    node: MigNode, kube: KubeClient, tmp_path: Path
) -> None:
    await node.plugin()
    claim = await claim_for(kube, "busy", SLOT)
    await node.kubelet.prepare(DRIVER, [ref(claim)])
    (instance,) = node.instances()
    # A process still runs on the MIG device (a simulated workload's procs file, with a live PID).
    procs = node.state / "gpus" / instance.devices[0].uuid / "procs"
    (procs / "1.json").write_text(json.dumps({"pid": 1, "utilization": 0.5}))
    with pytest.raises(KubeletError, match=r"unprepare failed.*In use by another client"):
        await node.kubelet.unprepare(DRIVER, [ref(claim)])
    assert len(node.instances()) == 1
    (procs / "1.json").unlink()
    await node.kubelet.unprepare(DRIVER, [ref(claim)])
    assert node.instances() == []
