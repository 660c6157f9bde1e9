"""Crash and reboot safety of prepare/unprepare with real plugin processes.

The plugin kills itself with SIGKILL at a named step (``ACCEL_DRA_CRASH_AT``), is started again, and the
kubelet retries the call, as a real kubelet does. After every case exactly the expected CDI specs exist, the
checkpoint verifies and holds exactly the prepared claims, and no device is prepared for two claims.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

from driver.kube.client import RESOURCE_CLAIMS, KubeClient
from driver.sim.kubelet import KubeletError, SimKubelet
from driver.state import metadata
from driver.state.checkpoint import CheckpointStore, ClaimState, LoadEvent
from tests.integration.conftest import NodeDirs, StartPlugin
from tests.integration.node_state_claims import (
    DRIVER,
    GPU0,
    GPU1,
    allocated_claim,
    gpu_config,
    opaque,
    ref,
    result,
)
from tests.support.cdi_rules import assert_valid_cdi
from tests.support.processes import Process

STARTED, COMPLETED = ClaimState.PREPARE_STARTED, ClaimState.PREPARE_COMPLETED
# (crash step, (the victim claim's checkpoint state right after the crash, whether its CDI spec exists then,
# the other claim's state, whether its spec exists)). The batch is [other, victim]; ``#n`` counts how often
# the process reached the step (other reaches each per-claim step once before the victim; the start writes
# the fresh node's empty checkpoint, ``checkpoint:tmp-written#1``). The other claim has nothing but its spec
# to write, so it is never recorded as started: a crash leaves at most its spec, an orphan the start removes.
# The victim has a time slice to set: with it, the call records it ``PrepareStarted`` first.
PREPARE_CASES_TIME_SLICED = [
    ("prepare:overlap-checked#2", (None, False, None, False)),
    ("checkpoint:tmp-written#2", (None, False, None, False)),
    ("prepare:started", (STARTED, False, None, False)),
    ("prepare:config-applied#2", (STARTED, False, None, True)),
    ("prepare:cdi-written#1", (STARTED, False, None, True)),
    ("cdi:tmp-written#2", (STARTED, False, None, True)),
    ("prepare:cdi-written#2", (STARTED, True, None, True)),
    ("checkpoint:tmp-written#3", (STARTED, True, None, True)),
    ("prepare:completed", (COMPLETED, True, COMPLETED, True)),
]
# Both claims with nothing but a spec: one checkpoint write, after both specs.
PREPARE_CASES_SPEC_ONLY = [
    ("prepare:overlap-checked#2", (None, False, None, False)),
    ("prepare:config-applied#2", (None, False, None, True)),
    ("cdi:tmp-written#2", (None, False, None, True)),
    ("prepare:cdi-written#2", (None, True, None, True)),
    ("checkpoint:tmp-written#2", (None, True, None, True)),
    ("prepare:completed", (COMPLETED, True, COMPLETED, True)),
]
PREPARE_CASES = [
    *((step, "Long", after) for step, after in PREPARE_CASES_TIME_SLICED),
    *((step, None, after) for step, after in PREPARE_CASES_SPEC_ONLY),
]
# Both claims are prepared first (the start's write, then two for the call, as the victim has a time slice),
# then the victim is unprepared.
UNPREPARE_CASES = [
    ("unprepare:sharing-reset", COMPLETED, True),
    ("unprepare:cdi-removed", COMPLETED, False),
    ("checkpoint:tmp-written#4", COMPLETED, False),
    ("unprepare:completed", None, False),
]


async def allocated(kube: KubeClient, name: str, device: str, interval: str | None = None) -> dict[str, Any]:
    config = [opaque(gpu_config(interval))] if interval else []
    return await allocated_claim(kube, name, [result("gpu", device)], config=config)


class Node:
    def __init__(
        self, dirs: NodeDirs, start_plugin: StartPlugin, kubelet: SimKubelet, boot_id: str = "boot-1"
    ) -> None:
        self.dirs = dirs
        self.start_plugin = start_plugin
        self.kubelet = kubelet
        self.boot_file = dirs.root / "boot_id"
        self.boot_file.write_text(boot_id + "\n")

    async def plugin(self, crash_at: str | None = None, *extra: str, pod_uid: str | None = None) -> Process:
        env = {"ACCEL_DRA_CRASH_AT": crash_at} if crash_at else None
        process = await self.start_plugin(
            extra=("--boot-id-file", str(self.boot_file), *extra), env=env, pod_uid=pod_uid
        )
        await process.wait_log("registered with kubelet")
        return process

    async def crashed(self, process: Process) -> None:
        """Wait for the SIGKILL. The dead instance's socket file stays behind, as on a node; the restarted
        plugin replaces it and the kubelet re-registers it (``start`` waits for that)."""
        assert await process.wait() == -signal.SIGKILL

    def specs(self) -> dict[str, dict[str, Any]]:
        return self.dirs.cdi_specs(DRIVER)

    def checkpoint(self) -> dict[str, ClaimState]:
        store = CheckpointStore(self.dirs.plugin_dir(DRIVER), self.boot_file.read_text().strip())
        cp, event = store.load()
        assert event in (LoadEvent.LOADED, LoadEvent.MISSING), f"checkpoint did not verify: {event}"
        owners: dict[str, str] = {}
        for record in cp.claims.values():
            for device in record.devices:
                if record.completed and not device.admin_access:
                    assert device.device not in owners, f"{device.device} prepared for two claims"
                    owners[device.device] = record.uid
        return {uid: r.state for uid, r in cp.claims.items()}

    def assert_prepared(self, *claims: dict[str, Any]) -> None:
        uids = {c["metadata"]["uid"] for c in claims}
        specs = self.specs()
        assert set(specs) == uids
        for spec in specs.values():
            assert_valid_cdi(spec)
        assert self.checkpoint() == dict.fromkeys(uids, ClaimState.PREPARE_COMPLETED)
        assert not [
            p.name
            for d in (self.dirs.cdi, self.dirs.plugin_dir(DRIVER))
            for p in d.iterdir()
            if p.name.endswith(".tmp")
        ]


@pytest.fixture
def node(node_dirs: NodeDirs, start_plugin: StartPlugin, kubelet: SimKubelet) -> Node:
    return Node(node_dirs, start_plugin, kubelet)


@pytest.mark.parametrize(("step", "interval", "after"), PREPARE_CASES)
async def test_crash_during_prepare_converges_on_retry(
    node: Node,
    kube: KubeClient,
    step: str,
    interval: str | None,
    after: tuple[ClaimState | None, bool, ClaimState | None, bool],
) -> None:
    state, spec, other_state, other_spec = after
    other = await allocated(kube, "other", GPU1)
    claim = await allocated(kube, "victim", GPU0, interval)
    uid, other_uid = claim["metadata"]["uid"], other["metadata"]["uid"]
    process = await node.plugin(crash_at=step)
    with pytest.raises(KubeletError, match="UNAVAILABLE"):
        await node.kubelet.prepare(DRIVER, [ref(other), ref(claim)])
    await node.crashed(process)
    # It died where it was told to: both claims are where the step says.
    after_crash = node.checkpoint()
    assert after_crash.get(uid) == state
    assert after_crash.get(other_uid) == other_state
    assert (uid in node.specs()) == spec
    assert (other_uid in node.specs()) == other_spec
    await node.plugin()
    # The start removed every spec without checkpoint entry (a started claim's waits for the retry).
    assert set(node.specs()) <= set(node.checkpoint())
    prepared = await node.kubelet.prepare(DRIVER, [ref(other), ref(claim)])
    assert prepared[uid][0].cdi_device_ids == (f"k8s.{DRIVER}/gpu={uid}-{GPU0}",)
    node.assert_prepared(other, claim)
    env = node.specs()[uid]["devices"][0]["containerEdits"]["env"]
    assert ("ACCEL_DRA_DEVICE_GPU_0000_01_00_0_SHARING=TimeSlicing:Long" in env) == (interval is not None)


@pytest.mark.parametrize(("step", "state", "spec"), UNPREPARE_CASES)
async def test_crash_during_unprepare_converges_on_retry(
    node: Node, kube: KubeClient, step: str, state: ClaimState | None, spec: bool
) -> None:
    other = await allocated(kube, "other", GPU1)
    claim = await allocated(kube, "victim", GPU0, "Short")
    uid = claim["metadata"]["uid"]
    process = await node.plugin(crash_at=step)
    await node.kubelet.prepare(DRIVER, [ref(other), ref(claim)])
    node.assert_prepared(other, claim)
    with pytest.raises(KubeletError, match="UNAVAILABLE"):
        await node.kubelet.unprepare(DRIVER, [ref(claim)])
    await node.crashed(process)
    assert node.checkpoint().get(uid) == state
    assert (uid in node.specs()) == spec
    await node.plugin()
    await node.kubelet.unprepare(DRIVER, [ref(claim)])
    node.assert_prepared(other)
    # The GPU is free again for a new claim.
    newcomer = await allocated(kube, "newcomer", GPU0)
    await node.kubelet.prepare(DRIVER, [ref(newcomer)])
    node.assert_prepared(other, newcomer)


@pytest.mark.parametrize(
    ("interval", "recorded", "cleaned_by"),
    [
        # Recorded as started: the start keeps it (the kubelet may retry), the sweeper finds it gone.
        ("Long", {STARTED}, "unprepared claim that no longer exists"),
        # Only its spec was written: no entry, so the start removes the spec.
        (None, set(), "removed CDI spec of a claim this node does not have prepared"),
    ],
)
async def test_a_crashed_prepare_of_a_claim_that_then_goes_away_leaves_nothing(
    node: Node, kube: KubeClient, interval: str | None, recorded: set[ClaimState], cleaned_by: str
) -> None:
    claim = await allocated(kube, "short-lived", GPU0, interval)
    process = await node.plugin(crash_at="prepare:cdi-written")
    with pytest.raises(KubeletError, match="UNAVAILABLE"):
        await node.kubelet.prepare(DRIVER, [ref(claim)])
    await node.crashed(process)
    assert set(node.checkpoint().values()) == recorded
    assert set(node.specs()) == {claim["metadata"]["uid"]}
    await kube.delete(RESOURCE_CLAIMS, "short-lived", "default")
    restarted = await node.plugin()
    await restarted.wait_log(cleaned_by)
    assert node.specs() == {}
    assert node.checkpoint() == {}


async def test_a_running_instance_removes_what_an_instance_killed_mid_prepare_left(
    node: Node, kube: KubeClient
) -> None:
    """Rolling update: the new pod runs (it started before the crash, so its start removed nothing); the old
    one is killed after writing a claim's spec and metadata and before recording the claim, and never comes
    back. The new pod's next sweeper pass removes the files."""
    claim = await allocated(kube, "left-behind", GPU0)
    new = await node.plugin(None, "--sweep-interval", "0.2", pod_uid="22222222-bbbb")
    # Registered last, the old pod gets the kubelet's call.
    old = await node.plugin("prepare:cdi-written", pod_uid="11111111-aaaa")
    with pytest.raises(KubeletError, match="UNAVAILABLE"):
        await node.kubelet.prepare(DRIVER, [ref(claim)])
    await node.crashed(old)
    uid = claim["metadata"]["uid"]
    await new.wait_log(f"removed CDI spec of a claim this node does not have prepared.*{uid}")
    await new.wait_log(f"removed device metadata of a claim this node does not have prepared.*{uid}")
    assert node.specs() == {}
    assert not (node.dirs.plugin_dir(DRIVER) / metadata.SUBDIR / uid).exists()
    assert node.checkpoint() == {}


async def test_reboot_drops_state_and_prepare_recreates_the_spec(node: Node, kube: KubeClient) -> None:
    claim = await allocated(kube, "survivor", GPU0)
    stale = await allocated(kube, "stale", GPU1)
    first = await node.plugin()
    await node.kubelet.prepare(DRIVER, [ref(claim), ref(stale)])
    node.assert_prepared(claim, stale)
    assert await first.terminate() == 0
    # Reboot: new boot id; /var/run/cdi is a tmpfs, so the survivor's spec is gone. The stale one is left to
    # show that specs of a previous boot are removed even where the CDI dir persists.
    node.boot_file.write_text("boot-2\n")
    (node.dirs.cdi / f"k8s.{DRIVER}-gpu_{claim['metadata']['uid']}.json").unlink()
    second = await node.plugin()
    await second.wait_log("node rebooted since the checkpoint was written")
    assert node.specs() == {}
    assert node.checkpoint() == {}
    # The kubelet re-prepares the pods it restarts after the reboot.
    prepared = await node.kubelet.prepare(DRIVER, [ref(claim)])
    uid = claim["metadata"]["uid"]
    assert prepared[uid][0].cdi_device_ids == (f"k8s.{DRIVER}/gpu={uid}-{GPU0}",)
    node.assert_prepared(claim)
    cp, _ = CheckpointStore(node.dirs.plugin_dir(DRIVER), "boot-2").load()
    assert cp.boot_id == "boot-2"


async def test_a_corrupt_checkpoint_does_not_stop_the_plugin(node: Node, kube: KubeClient) -> None:
    claim = await allocated(kube, "kept", GPU0)
    first = await node.plugin()
    await node.kubelet.prepare(DRIVER, [ref(claim)])
    assert await first.terminate() == 0
    checkpoint = node.dirs.plugin_dir(DRIVER) / "checkpoint.json"
    checkpoint.write_text(checkpoint.read_text().replace("PrepareCompleted", "PrepareCompleteD"))
    second = await node.plugin()
    await second.wait_log("checkpoint is corrupt; copy kept aside")
    await second.wait_log("checkpoint rebuilt from CDI specs")
    assert len(list(node.dirs.plugin_dir(DRIVER).glob("checkpoint.json.corrupt-*"))) == 1
    # Rebuilt from the CDI spec: the device stays guarded, and the kubelet's retry is answered as before.
    intruder = await allocated(kube, "intruder", GPU0)
    with pytest.raises(KubeletError, match=r"already prepared for claim default/kept"):
        await node.kubelet.prepare(DRIVER, [ref(intruder)])
    await node.kubelet.prepare(DRIVER, [ref(claim)])
    node.assert_prepared(claim)
