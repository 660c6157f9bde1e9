"""The plugin process publishes its GPUs as ResourceSlices in the sim API server and keeps them there."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from driver.kube.client import NODES, RESOURCE_SLICES, KubeClient
from driver.sim.apiserver import SimApiServer
from driver.sim.kubelet import SimKubelet
from tests.integration.conftest import NODE, NodeDirs, StartPlugin
from tests.support.processes import Process

DRIVER = "gpu.accel-dra.dev"
SLICES_PATH = r"^/apis/resource\.k8s\.io/v1/resourceslices"
# The plugin runs with its real node-state preparer (the interim in-memory one and its flag are gone).
PREPARER: tuple[str, ...] = ()


def node_slices(store: Any, server: SimApiServer) -> list[dict[str, Any]]:
    return [
        s
        for s in server.objects(RESOURCE_SLICES)
        if s["spec"].get("nodeName") == NODE and s["spec"]["driver"] == DRIVER
    ]


def pool_complete(server: SimApiServer, devices: int) -> bool:
    """All slices of the highest generation are present and together hold ``devices`` devices."""
    slices = node_slices(None, server)
    if not slices:
        return False
    generation = max(s["spec"]["pool"]["generation"] for s in slices)
    current = [s for s in slices if s["spec"]["pool"]["generation"] == generation]
    return (
        len(current) == len(slices) == current[0]["spec"]["pool"]["resourceSliceCount"]
        and sum(len(s["spec"]["devices"]) for s in current) == devices
    )


async def published(
    server: SimApiServer, devices: int, process: Process, timeout: float = 15.0
) -> list[dict[str, Any]]:
    try:
        await server.wait_for(lambda _store: pool_complete(server, devices), timeout=timeout)
    except TimeoutError as err:
        raise AssertionError(f"{devices} devices not published: {err}\n{process.output()}") from None
    return node_slices(None, server)


async def test_publishes_owned_slices_with_the_profile_devices(
    apiserver: SimApiServer, kubelet: SimKubelet, start_plugin: StartPlugin
) -> None:
    process = await start_plugin(backend="fake:dgx-h100", extra=PREPARER)
    (slice_obj,) = await published(apiserver, 8, process)
    node = apiserver.get_object(NODES, NODE)
    assert node is not None
    meta = slice_obj["metadata"]
    assert meta["name"].startswith(f"{NODE}-{DRIVER}-")
    assert meta["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node["metadata"]["uid"], "controller": True}
    ]
    spec = slice_obj["spec"]
    assert spec["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 1}
    products = {d["attributes"]["productName"]["string"] for d in spec["devices"]}
    assert products == {"NVIDIA H100 80GB HBM3"}
    domains = {d["attributes"]["nvlinkDomain"]["string"] for d in spec["devices"]}
    assert len(domains) == 1


async def test_deleted_slices_come_back_within_five_seconds(
    apiserver: SimApiServer, kube: KubeClient, kubelet: SimKubelet, start_plugin: StartPlugin
) -> None:
    process = await start_plugin(backend="fake:dgx-h100", extra=PREPARER)
    await published(apiserver, 8, process)
    # What the kubelet does when it restarts: wipe all of the node's slices.
    await kube.delete_collection(RESOURCE_SLICES, field_selector=f"spec.nodeName={NODE}")
    assert node_slices(None, apiserver) == []
    loop = asyncio.get_running_loop()
    started = loop.time()
    (slice_obj,) = await published(apiserver, 8, process, timeout=5.0)
    assert loop.time() - started <= 5.0
    assert slice_obj["spec"]["pool"]["generation"] >= 1


@pytest.mark.slow
async def test_no_writes_while_idle(
    apiserver: SimApiServer, kubelet: SimKubelet, start_plugin: StartPlugin
) -> None:
    process = await start_plugin(backend="fake:dgx-h100", extra=PREPARER)
    await published(apiserver, 8, process)
    mark = apiserver.request_log.mark()
    await asyncio.sleep(30.0)  # the idle window itself is what is being measured
    assert apiserver.request_log.writes(mark) == []


def big_profile(path: Path, gpus: int) -> Path:
    """A fake node with more GPUs than one slice holds, written in the user-facing profile format."""
    l4 = {
        "productName": "NVIDIA L4",
        "brand": "Nvidia",
        "architecture": "Ada Lovelace",
        "computeCapability": "8.9",
        "memory": "23034Mi",
    }
    profile = {
        "name": "big",
        "driverVersion": "580.65.06",
        "cudaDriverVersion": "12.9",
        "gpus": [
            {**l4, "minor": i, "pciBusID": f"0000:{0x10 + i // 32:02x}:{i % 32:02x}.0"} for i in range(gpus)
        ],
    }
    path.write_text(yaml.safe_dump(profile))
    return path


async def test_generation_bumps_when_the_device_set_is_resplit(
    apiserver: SimApiServer, kubelet: SimKubelet, start_plugin: StartPlugin, node_dirs: NodeDirs
) -> None:
    profile = big_profile(node_dirs.root / "big.yaml", 130)
    first = await start_plugin(backend=f"file:{profile}", extra=PREPARER)
    slices = await published(apiserver, 130, first)
    assert sorted(len(s["spec"]["devices"]) for s in slices) == [2, 128]
    assert {s["spec"]["pool"]["generation"] for s in slices} == {1}
    await first.terminate()
    # Same node, smaller machine: the old slices must be replaced by one slice at a higher generation.
    second = await start_plugin(backend="fake:pcie-l4x4", extra=PREPARER)
    (slice_obj,) = await published(apiserver, 4, second)
    assert slice_obj["spec"]["pool"] == {"name": NODE, "generation": 2, "resourceSliceCount": 1}


async def test_rides_out_conflicts_and_server_errors(
    apiserver: SimApiServer, kube: KubeClient, kubelet: SimKubelet, start_plugin: StartPlugin
) -> None:
    apiserver.inject_fault("POST", SLICES_PATH, 500, count=2)
    apiserver.inject_fault("GET", r"^/api/v1/nodes/", 503, count=1)
    process = await start_plugin(backend="fake:pcie-l4x4", extra=PREPARER)
    await published(apiserver, 4, process)
    await process.wait_log("slice sync failed; retrying")
    # Someone else rewrites our slice; our corrective updates first hit conflicts, then win.
    (slice_obj,) = node_slices(None, apiserver)
    tampered = {**slice_obj, "spec": {**slice_obj["spec"], "devices": slice_obj["spec"]["devices"][:2]}}
    await kube.update(RESOURCE_SLICES, tampered)
    apiserver.inject_fault("PUT", SLICES_PATH, 409, count=2, reason="Conflict")
    await published(apiserver, 4, process)
    await process.wait_log(r"slice sync failed; retrying.*409", count=1)


async def test_kubelet_wipes_slices_after_the_driver_is_gone_unless_it_returns(
    apiserver: SimApiServer, kube: KubeClient, node_dirs: NodeDirs, start_plugin: StartPlugin
) -> None:
    async with SimKubelet(str(node_dirs.registry), kube=kube, node_name=NODE, wiping_delay=1.0) as kubelet:
        first = await start_plugin(backend="fake:pcie-l4x4", extra=PREPARER)
        await published(apiserver, 4, first)
        await first.terminate()
        await kubelet.wait_for(lambda k: not k.instances(DRIVER))
        # A new instance within the delay cancels the wipe ...
        second = await start_plugin(backend="fake:pcie-l4x4", extra=PREPARER)
        await kubelet.wait_registered(DRIVER)
        mark = apiserver.request_log.mark()
        await asyncio.sleep(1.5)  # longer than the wiping delay
        assert not [r for r in apiserver.request_log.since(mark) if r.method == "DELETE"]
        # ... while a driver that stays away loses its slices.
        await second.terminate()
        await apiserver.wait_for(lambda _s: not node_slices(None, apiserver), timeout=10)


async def test_slices_follow_a_re_registered_node(
    apiserver: SimApiServer, kube: KubeClient, kubelet: SimKubelet, start_plugin: StartPlugin
) -> None:
    """Regression: the owner UID was cached, so slices re-created after a Node was re-registered pointed at
    the old Node and would be garbage collected again."""
    process = await start_plugin(backend="fake:pcie-l4x4")
    await published(apiserver, 4, process)
    node = apiserver.get_object(NODES, NODE)
    assert node is not None
    await kube.delete(NODES, NODE)  # garbage collection takes the node's slices with it
    recreated = await kube.create(NODES, {"metadata": {"name": NODE, "labels": node["metadata"]["labels"]}})
    assert recreated["metadata"]["uid"] != node["metadata"]["uid"]

    def owned_by_new_node(_store: Any) -> bool:
        slices = node_slices(None, apiserver)
        return bool(slices) and all(
            s["metadata"]["ownerReferences"][0]["uid"] == recreated["metadata"]["uid"] for s in slices
        )

    await apiserver.wait_for(owned_by_new_node, timeout=10)


async def test_the_echoes_of_its_own_writes_cause_no_relist(
    apiserver: SimApiServer, kube: KubeClient, kubelet: SimKubelet, start_plugin: StartPlugin
) -> None:
    """Regression: every watch event, the echoes of the publisher's own creates and updates included,
    triggered a re-list. With two slices (a dynamic MIG GPU's counters and its devices) written a moment
    apart under load, the echoes fell into two debounce windows and an idle plugin listed twice after each
    publication. A slice deleted by someone else still brings exactly one re-list, and its repair none."""
    echoed = "own writes; no resync"
    process = await start_plugin(
        backend="fake:mig-dynamic",
        extra=("--mig-mode", "static,0000:47:00.0=dynamic", "--log-level", "debug"),
    )

    def complete(_store: Any) -> list[dict[str, Any]] | None:
        slices = node_slices(None, apiserver)
        counts = {s["spec"]["pool"]["resourceSliceCount"] for s in slices}
        return slices if counts == {len(slices)} and len(slices) == 2 else None

    slices = await apiserver.wait_for(complete, timeout=15)
    (devices,) = [s for s in slices if s["spec"].get("devices")]
    published_before = len(await process.wait_log("slices published"))
    echoes_before = len(process.matching(echoed))
    mark = apiserver.request_log.mark()
    await kube.delete(RESOURCE_SLICES, devices["metadata"]["name"])  # the kubelet wiping it, say
    await process.wait_log("slices published", count=published_before + 1)
    writes = [r for r in apiserver.request_log.writes(mark) if r.method in ("POST", "PUT")]
    assert writes, apiserver.request_log.since(mark)
    # The repair's own writes echo back: wait until the publisher has recognised every one of them.
    judged = 0
    while judged < len(writes):
        lines = (await process.wait_log(echoed, count=echoes_before + 1))[echoes_before:]
        echoes_before += len(lines)
        judged += sum(int(line.split("events=")[1].split()[0]) for line in lines)
    relists = [
        r
        for r in apiserver.request_log.since(mark)
        if r.method == "GET" and r.path.endswith("/resourceslices") and "watch" not in r.query
    ]
    assert len(relists) == 1, relists
