"""Attribution end to end: the sim kubelet's PodResources server on a real unix socket, the sim API server
over HTTP, fake GPUs loaded by real processes, and the exporter's HTTP endpoint.

Scenarios: a DRA claim of this driver, a device-plugin allocation, one GPU shared by two pods (split by
process), another driver's DRA device (through its ResourceSlice), pods the kubelet still lists after they
finished, admin-access claims, GPU time per claim, and the PodResources API itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from driver._proto.podresources.v1 import api_pb2 as pb
from driver._proto.podresources.v1 import api_pb2_grpc as pb_grpc
from driver.devices.backend import open_backend
from driver.devices.model import Gpu, Inventory
from driver.exporter.options import ExporterConfig
from driver.exporter.podresources import (
    ClaimDevice,
    ContainerResources,
    PodResourcesClient,
    PodResourcesError,
)
from driver.exporter.server import Exporter, exporter_backend_options
from driver.kube.client import NAMESPACES, PODS, RESOURCE_SLICES, KubeClient
from driver.sim.podresources import ClaimDevice as SimClaimDevice
from driver.sim.podresources import ClaimResources, PodResourcesServer, PodResourcesState
from driver.state.api import PreparedDevice
from tests.integration.conftest import NodeDirs
from tests.support.pods import allocated_claim, running_pod, set_phase

DRIVER = "gpu.accel-dra.dev"
NODE = "node-1"
GiB = 1 << 30
Rows = dict[tuple[str, ...], tuple[float, dict[str, str]]]


def rows(text: str, name: str, *keys: str) -> Rows:
    return {
        tuple(s.labels.get(k, "") for k in keys): (s.value, s.labels)
        for f in parse_text(text)
        for s in f.samples
        if s.name == name
    }


@dataclass
class Sandbox:
    dirs: NodeDirs
    state: PodResourcesState
    socket: str
    fake_state: Path
    proc_root: Path
    server: PodResourcesServer

    def config(self, **overrides: Any) -> ExporterConfig:
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "backend": "fake:dgx-h100",
            "pod_resources_socket": self.socket,
            "node_name": NODE,
            "driver_name": DRIVER,
            "kubeconfig": None,
            "kube_api": "off",
            "interval": 0.05,
            "sample_timeout": 2.0,
            "proc_root": str(self.proc_root),
            "fake_state_dir": str(self.fake_state),
            "driver_root": "/",
            "log_level": "info",
            "log_format": "text",
        }
        return ExporterConfig(**{**values, **overrides})

    def load(self, gpu: Gpu, pid: int, utilization: float, memory: int) -> None:
        path = self.fake_state / "gpus" / gpu.uuid / "procs" / f"{pid}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": pid, "utilization": utilization, "memory_bytes": memory}))

    def cgroup(self, pid: int, pod_uid: str, container_id: str) -> None:
        pod = pod_uid.replace("-", "_")
        self.host_cgroup(
            pid,
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod}.slice/"
            f"cri-containerd-{container_id}.scope",
        )

    def host_cgroup(self, pid: int, path: str = "/user.slice/user-1000.slice/session-1.scope") -> None:
        """``<proc-root>/<pid>/cgroup`` (by default a login session's: a process outside Kubernetes)."""
        file = self.proc_root / str(pid) / "cgroup"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(f"0::{path}\n")


@dataclass
class Running:
    exporter: Exporter
    http: aiohttp.ClientSession

    @property
    def inventory(self) -> Inventory:
        return self.exporter.inventory

    async def scrape(self) -> str:
        assert self.exporter.server is not None
        url = f"http://127.0.0.1:{self.exporter.server.port}/metrics"
        async with asyncio.timeout(5), self.http.get(url) as response:
            assert response.status == 200
            return await response.text()

    async def scrape_until(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        """Poll the exporter until ``predicate`` holds on its output (fails with the last output)."""
        text = ""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    text = await self.scrape()
                    if predicate(text):
                        return text
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"exporter output never matched:\n{text}") from None


StartExporter = Callable[..., Awaitable[Running]]


@pytest.fixture
async def sandbox(node_dirs: NodeDirs) -> AsyncIterator[Sandbox]:
    state = PodResourcesState()
    socket = str(node_dirs.root / "pod-resources" / "kubelet.sock")
    server = PodResourcesServer(state, socket)
    await server.start()
    try:
        yield Sandbox(
            node_dirs, state, socket, node_dirs.root / "fake-state", node_dirs.root / "proc", server
        )
    finally:
        await server.stop()


@pytest.fixture
async def start_exporter(sandbox: Sandbox) -> AsyncIterator[StartExporter]:
    started: list[tuple[Exporter, Any]] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(**overrides: Any) -> Running:
        config = sandbox.config(**overrides)
        backend = open_backend(config.backend, **exporter_backend_options(config))
        exporter = Exporter(config, backend)
        started.append((exporter, backend))
        await exporter.start()
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Running(exporter, session)

    yield start
    for session in sessions:
        await session.close()
    for exporter, backend in started:
        await exporter.stop()
        backend.close()


@pytest.fixture
def sleepers() -> Iterator[Callable[[], int]]:
    procs: list[subprocess.Popen[bytes]] = []

    def spawn() -> int:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        procs.append(proc)
        return proc.pid

    yield spawn
    for proc in procs:
        proc.kill()
        proc.wait()


def prepared(gpu: Gpu) -> PreparedDevice:
    return PreparedDevice(("gpu",), NODE, gpu.name, (f"k8s.{DRIVER}/gpu=uid-1-{gpu.name}",))


# -- scenarios --------------------------------------------------------------------------------------------


async def test_dra_claim_of_this_driver(sandbox: Sandbox, start_exporter: StartExporter) -> None:
    running = await start_exporter()
    gpu = running.inventory.gpus[2]
    sandbox.state.set_container(
        "ml",
        "trainer",
        "main",
        claims=[ClaimResources.from_prepared("ml", "trainer-gpu", DRIVER, [prepared(gpu)])],
    )
    key = ("accel_dra_gpu_allocation_info",)
    text = await running.scrape_until(lambda t: bool(rows(t, *key, "uuid")))
    ((value, labels),) = rows(text, *key, "uuid").values()
    assert value == 1
    assert {k: labels[k] for k in ("uuid", "pci_bus_id", "hw_id")} == {
        "uuid": gpu.uuid,
        "pci_bus_id": gpu.pci_bus_id,
        "hw_id": gpu.name,
    }
    assert {k: labels[k] for k in ("namespace", "pod", "container")} == {
        "namespace": "ml",
        "pod": "trainer",
        "container": "main",
    }
    assert (labels["resource_claim_namespace"], labels["resource_claim"]) == ("ml", "trainer-gpu")
    assert (labels["dra_driver"], labels["dra_pool"], labels["dra_device"]) == (DRIVER, NODE, gpu.name)
    util = rows(text, "accel_dra_container_gpu_utilization_ratio", "uuid", "pod", "attribution")
    assert set(util) == {(gpu.uuid, "trainer", "exclusive")}
    # The whole-GPU series stay unattributed, once per GPU.
    whole = rows(text, "hw_gpu_utilization_ratio", "uuid", "hw_gpu_task")
    assert len(whole) == 3 * len(running.inventory.gpus)
    assert all("pod" not in labels for _, labels in whole.values())

    sandbox.state.remove_pod("ml", "trainer")
    text = await running.scrape_until(lambda t: not rows(t, *key, "uuid"))
    assert not rows(text, "accel_dra_container_gpu_memory_usage_bytes", "uuid")


async def test_device_plugin_allocation(sandbox: Sandbox, start_exporter: StartExporter) -> None:
    running = await start_exporter()
    gpu = running.inventory.gpus[5]
    sandbox.state.set_container(
        "legacy", "inference", "server", devices={"nvidia.com/gpu": [f"{gpu.uuid}::0"]}
    )
    sandbox.state.set_container("legacy", "inference", "proxy", devices={"example.com/nic": ["eth1"]})
    text = await running.scrape_until(lambda t: bool(rows(t, "accel_dra_gpu_allocation_info", "uuid")))
    info = rows(text, "accel_dra_gpu_allocation_info", "uuid", "namespace", "pod", "container")
    assert set(info) == {(gpu.uuid, "legacy", "inference", "server")}
    ((_, labels),) = info.values()
    assert [labels[k] for k in ("resource_claim", "dra_driver", "dra_pool", "dra_device")] == ["", "", "", ""]


async def test_gpu_shared_by_two_pods_is_split_by_process(
    sandbox: Sandbox,
    start_exporter: StartExporter,
    kube: KubeClient,
    kubeconfig: Path,
    sleepers: Callable[[], int],
) -> None:
    await kube.create(NAMESPACES, {"metadata": {"name": "ml"}})
    pods: dict[str, tuple[int, str]] = {}
    for name in ("trainer-a", "trainer-b"):
        uid, container_id = await running_pod(kube, "ml", name, NODE)
        pid = sleepers()
        sandbox.cgroup(pid, uid, container_id)
        pods[name] = (pid, container_id)

    running = await start_exporter(kube_api="on", kubeconfig=str(kubeconfig))
    gpu = running.inventory.gpus[0]
    claim = ClaimResources.from_prepared("ml", "shared-gpu", DRIVER, [prepared(gpu)])
    for name in pods:
        sandbox.state.set_container("ml", name, "main", claims=[claim])
    sandbox.load(gpu, pods["trainer-a"][0], 0.25, 1 * GiB)
    sandbox.load(gpu, pods["trainer-b"][0], 0.5, 3 * GiB)
    sandbox.load(gpu, os.getpid(), 0.125, 2 * GiB)  # a process outside Kubernetes: nobody's
    util_name = "accel_dra_container_gpu_utilization_ratio"

    # Until that process can be traced (no <proc-root>/<pid> entry yet) it could be either pod's:
    # both are shown the whole GPU, flagged shared, rather than a split that undercounts one of them.
    def shown_whole(text: str) -> bool:
        found = rows(text, util_name, "pod", "attribution")
        return set(found) == {("trainer-a", "shared"), ("trainer-b", "shared")} and all(
            v == 0.875 for v, _ in found.values()
        )

    await running.scrape_until(shown_whole)
    sandbox.host_cgroup(os.getpid())

    def split_done(text: str) -> bool:
        found = rows(text, util_name, "pod", "attribution")
        return {k[1] for k in found} == {"process"} and len(found) == 2

    text = await running.scrape_until(split_done)
    util = {k[0]: v for k, (v, _) in rows(text, util_name, "pod", "attribution").items()}
    assert util == {"trainer-a": 0.25, "trainer-b": 0.5}
    memory = rows(text, "accel_dra_container_gpu_memory_usage_bytes", "pod", "attribution")
    assert {k: v for k, (v, _) in memory.items()} == {
        ("trainer-a", "process"): 1 * GiB,
        ("trainer-b", "process"): 3 * GiB,
    }
    # The GPU itself: one series, the sum of everything running on it, no attribution labels.
    ((whole, labels),) = [
        v
        for k, v in rows(text, "hw_gpu_utilization_ratio", "uuid", "hw_gpu_task").items()
        if k == (gpu.uuid, "general")
    ]
    assert whole == 0.875 and "pod" not in labels
    assert len(rows(text, "accel_dra_gpu_allocation_info", "pod")) == 2


async def test_gpu_shared_without_api_access_is_shown_whole(
    sandbox: Sandbox, start_exporter: StartExporter, sleepers: Callable[[], int]
) -> None:
    running = await start_exporter()
    gpu = running.inventory.gpus[1]
    claim = ClaimResources.from_prepared("ml", "shared-gpu", DRIVER, [prepared(gpu)])
    for name in ("a", "b"):
        sandbox.state.set_container("ml", name, "main", claims=[claim])
    sandbox.load(gpu, sleepers(), 0.5, GiB)
    text = await running.scrape_until(
        lambda t: (
            {v for v, _ in rows(t, "accel_dra_container_gpu_utilization_ratio", "pod").values()} == {0.5}
        )
    )
    util = rows(text, "accel_dra_container_gpu_utilization_ratio", "pod", "attribution")
    assert set(util) == {("a", "shared"), ("b", "shared")}


async def test_other_drivers_device_through_its_resource_slice(
    sandbox: Sandbox, start_exporter: StartExporter, kube: KubeClient, kubeconfig: Path
) -> None:
    running = await start_exporter(kube_api="on", kubeconfig=str(kubeconfig))
    gpu = running.inventory.gpus[4]
    await kube.create(NAMESPACES, {"metadata": {"name": "vendor"}})
    await running_pod(kube, "vendor", "job", NODE)
    await kube.create(
        RESOURCE_SLICES,
        {
            "metadata": {"name": f"{NODE}-gpu.nvidia.com-1"},
            "spec": {
                "driver": "gpu.nvidia.com",
                "nodeName": NODE,
                "pool": {"name": NODE, "generation": 1, "resourceSliceCount": 1},
                "devices": [{"name": "gpu-0", "attributes": {"uuid": {"string": gpu.uuid}}}],
            },
        },
    )
    sandbox.state.set_container(
        "vendor",
        "job",
        "main",
        claims=[ClaimResources("claim", "vendor", (SimClaimDevice("gpu.nvidia.com", NODE, "gpu-0"),))],
    )
    text = await running.scrape_until(lambda t: bool(rows(t, "accel_dra_gpu_allocation_info", "uuid")))
    ((_, labels),) = rows(text, "accel_dra_gpu_allocation_info", "uuid").values()
    assert (labels["uuid"], labels["dra_driver"], labels["dra_device"], labels["pod"]) == (
        gpu.uuid,
        "gpu.nvidia.com",
        "gpu-0",
        "job",
    )


async def test_pods_the_kubelet_still_lists_after_they_finished_hold_nothing(
    sandbox: Sandbox, start_exporter: StartExporter, kube: KubeClient, kubeconfig: Path
) -> None:
    await kube.create(NAMESPACES, {"metadata": {"name": "batch"}})
    for name in ("done", "crashed", "deleted", "running"):
        await running_pod(kube, "batch", name, NODE)
    running = await start_exporter(kube_api="on", kubeconfig=str(kubeconfig))
    gpus = running.inventory.gpus
    for gpu, name in zip(gpus, ("done", "crashed", "deleted", "running"), strict=False):
        sandbox.state.set_container("batch", name, "main", devices={"nvidia.com/gpu": [gpu.uuid]})

    def held(pods: set[str]) -> Callable[[str], bool]:
        return lambda text: {k[0] for k in rows(text, "accel_dra_gpu_allocation_info", "pod")} == pods

    await running.scrape_until(held({"done", "crashed", "deleted", "running"}))
    # The kubelet keeps listing them (PodResources is unchanged); the API server knows better.
    await set_phase(kube, "batch", "done", "Succeeded")
    await set_phase(kube, "batch", "crashed", "Failed")
    await kube.delete(PODS, "deleted", "batch")
    text = await running.scrape_until(held({"running"}))
    assert {k[1] for k in rows(text, "accel_dra_gpu_allocated_seconds_total", "namespace", "pod")} >= {
        "running"
    }


async def test_admin_access_claims_are_not_holders(
    sandbox: Sandbox, start_exporter: StartExporter, kube: KubeClient, kubeconfig: Path
) -> None:
    """A monitoring pod's admin-access claim on a GPU another pod holds gets none of its usage or cost."""
    await kube.create(
        NAMESPACES, {"metadata": {"name": "ops", "labels": {"resource.kubernetes.io/admin-access": "true"}}}
    )
    await kube.create(NAMESPACES, {"metadata": {"name": "ml"}})
    await running_pod(kube, "ops", "watcher", NODE)
    await running_pod(kube, "ml", "trainer", NODE)
    running = await start_exporter(kube_api="on", kubeconfig=str(kubeconfig))
    gpu = running.inventory.gpus[2]
    for namespace, name, admin in (("ops", "watch", True), ("ml", "train", False)):
        await allocated_claim(kube, namespace, name, DRIVER, [(DRIVER, NODE, gpu.name)], admin=admin)
    sandbox.state.set_container(
        "ops",
        "watcher",
        "main",
        claims=[ClaimResources.from_prepared("ops", "watch", DRIVER, [prepared(gpu)])],
    )
    sandbox.state.set_container(
        "ml", "trainer", "main", claims=[ClaimResources.from_prepared("ml", "train", DRIVER, [prepared(gpu)])]
    )

    def only_trainer(text: str) -> bool:
        found = rows(text, "accel_dra_container_gpu_utilization_ratio", "pod", "attribution")
        charged = rows(text, "accel_dra_gpu_allocated_seconds_total", "pod", "device_class")
        return set(found) == {("trainer", "exclusive")} and set(charged) == {("trainer", DRIVER)}

    # The trainer is the GPU's only holder: exclusive, charged under the claim's DeviceClass.
    await running.scrape_until(only_trainer)


async def test_shares_of_a_gpu_shared_by_memory_are_charged_their_memory(
    sandbox: Sandbox, start_exporter: StartExporter, kube: KubeClient, kubeconfig: Path
) -> None:
    """Two claims hold shares of one GPU, 60Gi and 20Gi: GPU time is charged 3:1, not evenly."""
    await kube.create(NAMESPACES, {"metadata": {"name": "shares"}})
    running = await start_exporter(kube_api="on", kubeconfig=str(kubeconfig))
    gpu = running.inventory.gpus[3]
    for name, memory in (("big", "60Gi"), ("small", "20Gi")):
        await running_pod(kube, "shares", name, NODE)
        fields = {
            "shareID": f"00000000-0000-4000-8000-00000000000{len(name)}",
            "consumedCapacity": {"memory": memory},
        }
        await allocated_claim(kube, "shares", name, DRIVER, [(DRIVER, NODE, gpu.name)], result_fields=fields)
        sandbox.state.set_container(
            "shares",
            name,
            "main",
            claims=[ClaimResources.from_prepared("shares", name, DRIVER, [prepared(gpu)])],
        )

    def charged(text: str) -> dict[str, float]:
        return {k[0]: v for k, (v, _) in rows(text, "accel_dra_gpu_allocated_seconds_total", "pod").items()}

    first = charged(
        await running.scrape_until(lambda t: all(charged(t).get(p, 0) > 0 for p in ("big", "small")))
    )
    later = charged(
        await running.scrape_until(
            lambda t: charged(t)["small"] > first["small"] and charged(t)["big"] > first["big"]
        )
    )
    # Both were held in every round between the two scrapes: 60Gi against 20Gi.
    assert (later["big"] - first["big"]) / (later["small"] - first["small"]) == pytest.approx(3.0)


async def test_kubelet_restart(sandbox: Sandbox, start_exporter: StartExporter) -> None:
    running = await start_exporter()
    gpu = running.inventory.gpus[0]
    sandbox.state.set_container("ns", "pod", "main", devices={"nvidia.com/gpu": [gpu.uuid]})

    def up(value: float) -> Callable[[str], bool]:
        return lambda text: rows(text, "accel_dra_exporter_pod_resources_up").get(()) == (value, {})

    await running.scrape_until(lambda t: up(1)(t) and bool(rows(t, "accel_dra_gpu_allocation_info", "pod")))
    await sandbox.server.stop()
    text = await running.scrape_until(up(0))
    # The last answer is kept while the kubelet is away.
    assert set(rows(text, "accel_dra_gpu_allocation_info", "pod")) == {("pod",)}
    assert rows(text, "accel_dra_exporter_attribution_errors_total", "source")[("pod_resources",)][0] >= 1
    sandbox.state.remove_pod("ns", "pod")
    await sandbox.server.start()
    text = await running.scrape_until(up(1))
    assert not rows(text, "accel_dra_gpu_allocation_info", "pod")


# -- the PodResources API itself ----------------------------------------------------------------------------


async def test_pod_resources_list_get_and_allocatable(sandbox: Sandbox) -> None:
    state = sandbox.state
    state.set_allocatable({"nvidia.com/gpu": ["GPU-1", "GPU-2"]})
    state.set_container("ns", "p", "a", devices={"nvidia.com/gpu": ["GPU-1"]})
    state.set_container(
        "ns",
        "p",
        "b",
        claims=[
            ClaimResources.from_prepared(
                "ns", "c", DRIVER, [PreparedDevice(("gpu",), NODE, "gpu-0", (f"k8s.{DRIVER}/gpu=u-gpu-0",))]
            )
        ],
    )
    state.set_container("ns", "q", "only", devices={"nvidia.com/gpu": ["GPU-2"]})
    client = PodResourcesClient(sandbox.socket)
    try:
        listed = await client.list()
        assert listed == [
            ContainerResources("ns", "p", "a", device_ids=(("nvidia.com/gpu", "GPU-1"),)),
            ContainerResources(
                "ns", "p", "b", claim_devices=(ClaimDevice("ns", "c", DRIVER, NODE, "gpu-0"),)
            ),
            ContainerResources("ns", "q", "only", device_ids=(("nvidia.com/gpu", "GPU-2"),)),
        ]
        state.remove_container("ns", "q", "only")
        state.remove_pod("ns", "p")
        assert await client.list() == []
    finally:
        await client.close()

    state.set_container("ns", "p", "b", devices={"nvidia.com/gpu": ["GPU-1"]})
    async with grpc.aio.insecure_channel(f"unix://{sandbox.socket}") as channel:
        stub = pb_grpc.PodResourcesListerStub(channel)
        got = await stub.Get(pb.GetPodResourcesRequest(pod_name="p", pod_namespace="ns"), timeout=5)
        assert [c.name for c in got.pod_resources.containers] == ["b"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Get(pb.GetPodResourcesRequest(pod_name="nope", pod_namespace="ns"), timeout=5)
        # The kubelet answers an unknown pod with a plain error (gRPC UNKNOWN) that names it.
        assert err.value.code() == grpc.StatusCode.UNKNOWN
        assert "pod nope in namespace ns not found" in (err.value.details() or "")
        allocatable = await stub.GetAllocatableResources(pb.AllocatableResourcesRequest(), timeout=5)
        assert [(d.resource_name, list(d.device_ids)) for d in allocatable.devices] == [
            ("nvidia.com/gpu", ["GPU-1", "GPU-2"])
        ]
    assert oct(os.stat(sandbox.socket).st_mode & 0o777) == "0o600"


async def test_pod_resources_client_names_the_socket(node_dirs: NodeDirs) -> None:
    missing = str(node_dirs.root / "missing.sock")
    client = PodResourcesClient(missing, timeout=1)
    with pytest.raises(PodResourcesError, match=r"missing\.sock"):
        await client.list()
    await client.close()
