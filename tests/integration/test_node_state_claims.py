"""What a user sees of the node state through the real plugin: per-claim errors for bad input, device
status on the claim, time-slicing config in the container env, and the sweeper cleaning up after claims."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from driver.kube.client import RESOURCE_CLAIMS, RESOURCE_SLICES, KubeClient
from driver.sim.apiserver import SimApiServer
from driver.sim.cdi_registry import CdiRegistry
from driver.sim.kubelet import KubeletError, SimKubelet
from driver.sim.runtime import apply_edits
from driver.state.claimstatus import ClaimStatusWriter, held_until_answered
from tests.integration.conftest import NodeDirs, StartPlugin
from tests.integration.node_state_claims import (
    DRIVER,
    GPU0,
    GPU1,
    GPU2,
    GPU3,
    allocated_claim,
    gpu_config,
    opaque,
    ref,
    result,
)
from tests.support.cdi_rules import assert_valid_cdi
from tests.support.processes import Process


async def running(start_plugin: StartPlugin, *extra: str) -> Process:
    process = await start_plugin(extra=extra)
    await process.wait_log("registered with kubelet")
    return process


def spec_of(node_dirs: NodeDirs, claim: dict[str, Any]) -> dict[str, Any] | None:
    path = node_dirs.cdi / f"k8s.{DRIVER}-gpu_{claim['metadata']['uid']}.json"
    return json.loads(path.read_text()) if path.exists() else None


async def test_bad_claims_get_their_own_errors_and_the_plugin_keeps_serving(
    start_plugin: StartPlugin, kubelet: SimKubelet, kube: KubeClient, node_dirs: NodeDirs
) -> None:
    malformed = await allocated_claim(
        kube, "malformed", [result("gpu", GPU0)], config=[opaque(gpu_config("Fast"))]
    )
    foreign = await allocated_claim(
        kube,
        "foreign",
        [result("gpu", GPU1)],
        config=[opaque({"apiVersion": "resource.nvidia.com/v1beta1", "kind": "GpuConfig"})],
    )
    unknown = await allocated_claim(kube, "unknown", [result("gpu", "gpu-0000-ff-00-0")])
    # A config for another driver is not ours to judge: ignored.
    good = await allocated_claim(
        kube,
        "good",
        [result("gpu", GPU2)],
        config=[opaque({"whatever": True}, driver="net.example.com"), opaque(gpu_config("Medium"))],
    )
    process = await running(start_plugin)
    # One call for all four, read per claim, as the kubelet does.
    instance = kubelet.pick(DRIVER)
    pb = instance.messages
    response = await instance.stub().NodePrepareResources(
        pb.NodePrepareResourcesRequest(
            claims=[
                pb.Claim(namespace="default", uid=c["metadata"]["uid"], name=c["metadata"]["name"])
                for c in (malformed, foreign, unknown, good)
            ]
        ),
        timeout=10,
    )
    errors = {
        c["metadata"]["name"]: response.claims[c["metadata"]["uid"]].error
        for c in (malformed, foreign, unknown, good)
    }
    uid = {c["metadata"]["name"]: c["metadata"]["uid"] for c in (malformed, foreign, unknown, good)}
    assert errors["malformed"] == (
        f"claim default/malformed ({uid['malformed']}): invalid opaque config: "
        "status.allocation.devices.config[0].opaque.parameters.sharing.timeSlicing.interval: "
        "'Fast' is not one of ['Default', 'Short', 'Medium', 'Long']"
    )
    assert errors["foreign"] == (
        f"claim default/foreign ({uid['foreign']}): invalid opaque config: "
        "status.allocation.devices.config[0].opaque.parameters.apiVersion: 'resource.nvidia.com/v1beta1' "
        "is not supported by this driver (expected 'gpu.accel-dra.dev/v1')"
    )
    assert errors["unknown"].startswith(
        f"claim default/unknown ({uid['unknown']}): request 'gpu' was allocated device 'gpu-0000-ff-00-0', "
        "which this node does not have (devices: "
    )
    assert errors["good"] == ""
    assert [d.device_name for d in response.claims[uid["good"]].devices] == [GPU2]
    for bad in (malformed, foreign, unknown):
        assert spec_of(node_dirs, bad) is None
    spec = spec_of(node_dirs, good)
    assert spec is not None
    assert_valid_cdi(spec)
    assert (
        "ACCEL_DRA_DEVICE_GPU_0000_81_00_0_SHARING=TimeSlicing:Medium"
        in spec["devices"][0]["containerEdits"]["env"]
    )
    await process.wait_log(r"time slice recorded, not applied.*interval=Medium.*reason=\"simulated GPU\"")
    # The sandbox's container runtime loads the spec and can apply it (device nodes complete, env set).
    registry = CdiRegistry([str(node_dirs.cdi)])
    registry.refresh()
    assert registry.errors() == {}
    ids = [i for d in response.claims[uid["good"]].devices for i in d.cdi_device_ids]
    applied = apply_edits([], registry.resolve(ids))
    assert {n.path for n in applied.device_nodes} >= {"/dev/nvidia2", "/dev/nvidiactl", "/dev/nvidia-uvm"}
    assert f"ACCEL_DRA_DEVICE_GPU_0000_81_00_0_CLAIM_UID={uid['good']}" in applied.env
    # The kubelet reports the per-claim error; the plugin is still there for the next pod.
    with pytest.raises(
        KubeletError,
        match=r"NodePrepareResources failed for ResourceClaim malformed: claim default/malformed",
    ):
        await kubelet.prepare(DRIVER, [ref(malformed)])
    later = await allocated_claim(kube, "later", [result("gpu", GPU0)])
    await kubelet.prepare(DRIVER, [ref(later)])
    assert process.proc.returncode is None


async def test_prepared_devices_are_written_to_the_claim_status(
    start_plugin: StartPlugin, kubelet: SimKubelet, kube: KubeClient, node_dirs: NodeDirs
) -> None:
    claim = await allocated_claim(
        kube,
        "mixed",
        [result("gpu", GPU3), result("nic", "eth-0", driver="net.example.com")],
        requests=("gpu", "nic"),
    )
    # Another driver already reported its device.
    claim["status"]["devices"] = [
        {"driver": "net.example.com", "pool": "node-1", "device": "eth-0", "data": {"mac": "aa"}}
    ]
    claim = await kube.update(RESOURCE_CLAIMS, claim, "default", subresource="status")
    process = await running(start_plugin)
    await kubelet.prepare(DRIVER, [ref(claim)])
    await process.wait_log("claim device status written")
    stored = await kube.get(RESOURCE_CLAIMS, "mixed", "default")
    entries = {e["driver"]: e for e in stored["status"]["devices"]}
    assert entries["net.example.com"]["data"] == {"mac": "aa"}
    ours = entries[DRIVER]
    assert (ours["pool"], ours["device"]) == ("node-1", GPU3)
    assert ours["data"]["pciBusID"] == "0000:c1:00.0"
    assert ours["data"]["productName"] == "NVIDIA L4"
    # The same UUID the container sees, and the one the ResourceSlice publishes.
    spec = spec_of(node_dirs, claim)
    assert spec is not None
    env = dict(e.split("=", 1) for e in spec["devices"][0]["containerEdits"]["env"])
    assert ours["data"]["uuid"] == env["ACCEL_DRA_DEVICE_GPU_0000_C1_00_0"]
    slices = await kube.list(RESOURCE_SLICES)
    published = {d["name"]: d for s in slices["items"] for d in s["spec"].get("devices", [])}
    assert published[GPU3]["attributes"]["uuid"]["string"] == ours["data"]["uuid"]
    # A repeated prepare does not write again (the status already says it).
    await kubelet.prepare(DRIVER, [ref(claim)])
    await process.wait_log("prepare answered", count=2)
    assert (await kube.get(RESOURCE_CLAIMS, "mixed", "default"))["metadata"]["resourceVersion"] == stored[
        "metadata"
    ]["resourceVersion"]


async def test_the_sweeper_unprepares_claims_that_were_deleted(
    start_plugin: StartPlugin, kubelet: SimKubelet, kube: KubeClient, node_dirs: NodeDirs
) -> None:
    keep = await allocated_claim(kube, "keep", [result("gpu", GPU0)])
    drop = await allocated_claim(kube, "drop", [result("gpu", GPU1)])
    process = await running(start_plugin, "--sweep-interval", "0.2")
    await kubelet.prepare(DRIVER, [ref(keep), ref(drop)])
    # The pod was force-deleted and the claim with it: the kubelet never calls unprepare.
    await kube.delete(RESOURCE_CLAIMS, "drop", "default")
    await process.wait_log(r"unprepared claim that no longer exists.*default/drop")
    assert spec_of(node_dirs, drop) is None
    assert spec_of(node_dirs, keep) is not None
    # Its GPU is free for the next claim.
    again = await allocated_claim(kube, "again", [result("gpu", GPU1)])
    await kubelet.prepare(DRIVER, [ref(again)])


async def test_status_writes_retry_conflicts_and_give_up_quietly_on_a_gone_claim(
    apiserver: SimApiServer, kube: KubeClient, caplog: pytest.LogCaptureFixture
) -> None:
    claim = await allocated_claim(kube, "contended", [result("gpu", GPU0)])
    entry = {"driver": DRIVER, "pool": "node-1", "device": GPU0, "data": {"uuid": "GPU-x"}}
    status_path = r"/resourceclaims/contended/status$"
    apiserver.inject_fault("PATCH", status_path, 409, count=2, reason="Conflict")
    mark = apiserver.request_log.mark()
    writer = ClaimStatusWriter(kube)
    writer.submit(ref(claim), [entry])
    await writer.drain()
    assert [r.status for r in apiserver.request_log.writes(mark, status_path)] == [409, 409, 200]
    stored = await kube.get(RESOURCE_CLAIMS, "contended", "default")
    assert stored["status"]["devices"] == [{**entry, "conditions": None}]  # stored as kube-apiserver does
    # A claim deleted meanwhile: nothing raised, a warning names it.
    await kube.delete(RESOURCE_CLAIMS, "contended", "default")
    with caplog.at_level(logging.WARNING):
        writer.submit(ref(claim), [entry])
        await writer.drain()
    assert any(
        "claim device status not written" in r.getMessage()
        and "default/contended" in str(getattr(r, "fields", {}))
        for r in caplog.records
    )


async def test_status_writes_submitted_while_answering_wait_for_the_release(
    apiserver: SimApiServer, kube: KubeClient
) -> None:
    """The servicer holds a call's status writes until the kubelet has its answer (docs/performance.md)."""
    claim = await allocated_claim(kube, "held", [result("gpu", GPU0)])
    entry = {"driver": DRIVER, "pool": "node-1", "device": GPU0, "data": {"uuid": "GPU-x"}}
    status_path = r"/resourceclaims/held/status$"
    mark = apiserver.request_log.mark()
    writer = ClaimStatusWriter(kube)
    with held_until_answered() as release:
        writer.submit(ref(claim), [entry])
        await writer.drain()  # nothing started, so nothing to wait for
        assert apiserver.request_log.writes(mark, status_path) == []
    release()
    await apiserver.wait_for(lambda _: bool(apiserver.request_log.writes(mark, status_path)), timeout=30)
    await writer.drain()
    assert [r.status for r in apiserver.request_log.writes(mark, status_path)] == [200]
    # Outside any scope a write starts at once.
    await kube.patch(RESOURCE_CLAIMS, "held", {"status": {"devices": []}}, "default", subresource="status")
    mark = apiserver.request_log.mark()
    writer.submit(ref(claim), [entry])
    await writer.drain()
    assert [r.status for r in apiserver.request_log.writes(mark, status_path)] == [200]
