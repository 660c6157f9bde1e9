"""The exporter against a hostile node: a kubelet whose PodResources answers are garbage, lies (devices of
other pools and drivers, unknown devices), errors or hang; NVML calls that fail or hang per GPU; an API
server that misbehaves (malformed answers, outages, other nodes' objects). Each round changes the faults at
random; whatever happens, ``/metrics`` and ``/healthz`` answer at once, GPUs that cannot be read show as
failed and the others as ok, and every attributed row names a GPU that its pod really holds on this node.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driver._proto.podresources.v1 import api_pb2 as pb
from driver.devices.fake import FakeBackend, load_named_profile
from driver.devices.model import Inventory
from driver.devices.telemetry import GpuTelemetry, TelemetryError
from driver.exporter.options import ExporterConfig
from driver.exporter.server import Exporter
from driver.kube.client import NAMESPACES, PODS
from driver.sim.apiserver import SimApiServer
from tests.chaos.conftest import Chaos
from tests.chaos.harness import DRIVER, NODE, ChaosError
from tests.support.faultproxy import ALL_FAULTS, WATCH, FaultProxy

PROFILE = "dgx-h100"
PODS_PER_NODE = 4
#: A kubelet that never answers costs the exporter its client timeout (2 s) per round, not more.
ROUND_BOUND_S = 10.0
Row = tuple[str, str, str, str, str, str, str]  # uuid, namespace, pod, container, claim, pool, device


# -- the kubelet ---------------------------------------------------------------------------------------


@dataclass
class Kubelet:
    """A PodResources server whose answer the test picks: the truth, lies, garbage, an error or nothing."""

    truth: list[tuple[str, str, str, str, str]] = field(
        default_factory=list
    )  # ns, pod, container, claim, device
    mode: str = "truth"
    lies: list[tuple[str, str, str, str, str, str, str]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def answer(self) -> pb.ListPodResourcesResponse:
        pods: dict[tuple[str, str], pb.PodResources] = {}

        def add(row: tuple[str, str, str, str, str, str, str]) -> None:
            ns, pod, container, claim, driver, pool, device = row
            entry = pods.setdefault((ns, pod), pb.PodResources(name=pod, namespace=ns))
            holder = next((c for c in entry.containers if c.name == container), None)
            if holder is None:
                holder = entry.containers.add(name=container)
            holder.dynamic_resources.add(
                claim_name=claim,
                claim_namespace=ns,
                claim_resources=[pb.ClaimResource(driver_name=driver, pool_name=pool, device_name=device)],
            )

        for ns, pod, container, claim, device in self.truth:
            add((ns, pod, container, claim, DRIVER, NODE, device))
        if self.mode == "lie":
            for lie in self.lies:
                add(lie)
        return pb.ListPodResourcesResponse(pod_resources=list(pods.values()))

    async def handle(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if self.mode == "garbage":
            return b"\x0a\xff\xff\xff\xff\x0f"
        if self.mode == "error":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet is restarting")
        if self.mode == "hang":
            await asyncio.sleep(30)  # beyond the exporter's 2 s: it must give up, not wait
        return self.answer().SerializeToString()


@pytest.fixture
async def kubelet_socket() -> AsyncIterator[tuple[Kubelet, str]]:
    kubelet = Kubelet()
    with tempfile.TemporaryDirectory(prefix="adra-pr-", dir="/tmp") as root:
        path = os.path.join(root, "kubelet.sock")
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "v1.PodResourcesLister",
            {
                "List": grpc.unary_unary_rpc_method_handler(
                    kubelet.handle, request_deserializer=bytes, response_serializer=bytes
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"unix://{path}")
        await server.start()
        yield kubelet, path
        await server.stop(None)


# -- NVML ----------------------------------------------------------------------------------------------


class ChaoticTelemetry(FakeBackend):
    """The fake backend whose reads fail or hang per GPU, as the test says."""

    def __init__(self, inventory_backend: FakeBackend) -> None:
        super().__init__(inventory_backend.profile)
        self.modes: dict[str, str] = {}
        self.gate = threading.Event()

    def sample(self, uuid: str) -> GpuTelemetry:
        mode = self.modes.get(uuid, "ok")
        if mode == "fail":
            raise TelemetryError(f"GPU {uuid}: NVML_ERROR_GPU_IS_LOST (injected)")
        if mode == "raise":
            raise RuntimeError("NVML_ERROR_UNKNOWN (injected)")
        if mode == "hang":
            self.gate.wait(30)  # released at the end of the round: the worker thread must not matter
            raise TelemetryError("hung (injected)")
        return super().sample(uuid)


# -- the test -------------------------------------------------------------------------------------------


def metric_rows(text: str, name: str) -> list[dict[str, str]]:
    return [s.labels for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


@dataclass
class Rig:
    inventory: Inventory
    kubelet: Kubelet
    telemetry: ChaoticTelemetry
    proxy: FaultProxy
    exporter: Exporter
    http: aiohttp.ClientSession
    served: set[Row] = field(default_factory=set)
    ticked: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def get(self, path: str) -> tuple[int, str]:
        assert self.exporter.server is not None
        url = f"http://127.0.0.1:{self.exporter.server.port}{path}"
        try:
            async with asyncio.timeout(5), self.http.get(url) as response:
                return response.status, await response.text()
        except TimeoutError:
            raise ChaosError(f"GET {path} did not answer within 5 s: a scrape must never wait") from None

    def watch_rounds(self) -> None:
        """Let :meth:`rounds` wake up whenever the sampler finishes a round."""
        collector = self.exporter.collector
        assert collector is not None
        tick = collector.tick

        async def counted() -> Any:
            snapshot = await tick()
            async with self.ticked:
                self.ticked.notify_all()
            return snapshot

        collector.tick = counted  # type: ignore[method-assign]

    async def rounds(self, count: int = 2) -> None:
        """Until the sampler finished ``count`` more rounds."""
        collector = self.exporter.collector
        assert collector is not None
        target = collector.snapshot.seq + count
        async with asyncio.timeout(ROUND_BOUND_S * count), self.ticked:
            await self.ticked.wait_for(lambda: collector.snapshot.seq >= target)


def device_gpu(inventory: Inventory) -> dict[str, str]:
    return {d.name: d.gpu.uuid for d in inventory.devices}


async def test_exporter_chaos(
    kubelet_socket: tuple[Kubelet, str],
    apiserver: SimApiServer,
    node_root: Path,
    chaos: Chaos,
) -> None:
    rng = chaos.rng
    kubelet, socket_path = kubelet_socket
    fake = load_named_profile(PROFILE, node_name=NODE)
    telemetry = ChaoticTelemetry(FakeBackend(fake))
    inventory = telemetry.discover()
    gpu_of = device_gpu(inventory)
    await seed_pods(apiserver)
    async with FaultProxy(apiserver.url) as proxy, aiohttp.ClientSession() as http:
        config = ExporterConfig(
            listen="127.0.0.1:0",
            backend=f"fake:{PROFILE}",
            pod_resources_socket=socket_path,
            node_name=NODE,
            driver_name=DRIVER,
            kubeconfig=str(proxy.write_kubeconfig(node_root / "exporter-kubeconfig")),
            kube_api="on",
            interval=0.05,
            sample_timeout=0.5,
            proc_root=str(node_root / "proc"),
            fake_state_dir=None,
            driver_root="/",
            log_level="info",
            log_format="text",
        )
        exporter = Exporter(config, telemetry)
        await exporter.start()
        rig = Rig(inventory, kubelet, telemetry, proxy, exporter, http)
        rig.watch_rounds()
        try:
            for _ in range(chaos.count(25)):
                chaos.case()
                await one_round(rig, rng, gpu_of)
        finally:
            telemetry.gate.set()
            await exporter.stop()


async def seed_pods(apiserver: SimApiServer) -> None:
    """Pods of this node (the kubelet's answers name them; one the API server does not have counts as gone)
    and of another (what a server ignoring the field selector sends too)."""
    apiserver.create(NAMESPACES, {"metadata": {"name": "ml"}})
    for node, prefix in ((NODE, "mine"), ("node-2", "theirs")):
        for i in range(PODS_PER_NODE):
            apiserver.create(
                PODS,
                {
                    "metadata": {"name": f"{prefix}-{i}", "namespace": "ml"},
                    "spec": {"nodeName": node, "containers": [{"name": "main", "image": "x"}]},
                },
                "ml",
            )


def reshuffle(rig: Rig, rng: random.Random, gpu_of: dict[str, str]) -> None:
    devices = sorted(gpu_of)
    rig.kubelet.truth = [
        ("ml", f"mine-{i}", "main", f"claim-{i}", device)
        for i, device in enumerate(rng.sample(devices, rng.randint(0, PODS_PER_NODE)))
    ]
    lies = []
    for ns, pod, container, claim, device in rig.kubelet.truth:
        lies += [
            (ns, pod, container, claim, DRIVER, "node-2", device),  # another node's pool
            (ns, pod, container, claim, "other.example.com", NODE, device),  # another driver's device
            (ns, pod, container, claim, DRIVER, NODE, "gpu-does-not-exist"),
            (ns, pod, container, claim, DRIVER, NODE, ""),
        ]
    rig.kubelet.lies = rng.sample(lies, min(len(lies), rng.randint(0, 4)))
    rig.kubelet.mode = rng.choice(["truth", "truth", "lie", "garbage", "error", "hang"])
    rig.telemetry.gate.clear()
    rig.telemetry.modes = {
        gpu.uuid: rng.choice(["ok", "ok", "ok", "fail", "raise", "hang"]) for gpu in rig.inventory.gpus
    }
    rig.proxy.clear()
    if rng.random() < 0.2:
        rig.proxy.outage = True
    for _ in range(rng.randint(0, 3)):
        watch = rng.random() < 0.3
        rig.proxy.inject(
            rng.choice(WATCH if watch else ALL_FAULTS),
            r"/(pods|resourceslices)$",
            remaining=rng.randint(1, 5),
            watch=watch,
        )


async def one_round(rig: Rig, rng: random.Random, gpu_of: dict[str, str]) -> None:
    reshuffle(rig, rng, gpu_of)
    if rig.kubelet.mode in ("truth", "lie"):
        rig.served |= {(gpu_of[d], ns, pod, c, claim, NODE, d) for ns, pod, c, claim, d in rig.kubelet.truth}
    problems: list[str] = ["no round yet"]
    for _ in range(CONVERGE_ROUNDS):
        await rig.rounds()
        status, text = await rig.get("/metrics")
        health, _ = await rig.get("/healthz")
        if status != 200 or health != 200:
            raise ChaosError(f"/metrics answered {status}, /healthz {health}")
        check_attribution(rig, text, gpu_of)  # must hold at every moment
        problems = converged(rig, text, gpu_of)  # must hold once the new faults took effect
        if not problems:
            break
    rig.telemetry.gate.set()
    if problems:
        raise ChaosError(f"after the faults changed, within {CONVERGE_ROUNDS} rounds: {problems}")


# Rounds (0.05 s apart) a fault change may take to show: the API client retries a transient error itself
# (three tries, 0.2/0.4/0.8 s apart, or the server's Retry-After up to 5 s) before the resolver gives up, so
# attribution can lag by up to ~6 s of rounds. Ten rounds were shorter than one retry schedule.
CONVERGE_ROUNDS = 120


def attributed(text: str) -> set[Row]:
    return {
        (
            r["uuid"],
            r["namespace"],
            r["pod"],
            r["container"],
            r["resource_claim"],
            r["dra_pool"],
            r["dra_device"],
        )
        for r in metric_rows(text, "accel_dra_gpu_allocation_info")
        if r.get("dra_driver") == DRIVER
    }


def check_attribution(rig: Rig, text: str, gpu_of: dict[str, str]) -> None:
    for row in metric_rows(text, "accel_dra_gpu_allocation_info"):
        if row.get("dra_driver") not in ("", DRIVER):
            raise ChaosError(f"a GPU attributed through another driver's device it does not have: {row}")
        if row.get("dra_driver") != DRIVER:
            continue
        if row.get("dra_pool") != NODE or gpu_of.get(row.get("dra_device", "")) != row["uuid"]:
            raise ChaosError(f"GPU {row['uuid']} attributed through a device that is not it: {row}")
    wrong = attributed(text) - rig.served
    if wrong:
        raise ChaosError(f"attributed to pods that never held those GPUs: {sorted(wrong)}")


def states(text: str) -> dict[str, str]:
    return {
        s.labels["uuid"]: s.labels["hw_state"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "hw_status" and s.value == 1 and s.labels.get("uuid")
    }


def converged(rig: Rig, text: str, gpu_of: dict[str, str]) -> list[str]:
    problems = []
    shown = states(text)
    for gpu in rig.inventory.gpus:
        mode = rig.telemetry.modes.get(gpu.uuid, "ok")
        want = "ok" if mode == "ok" else "failed"
        if shown.get(gpu.uuid) != want:
            problems.append(f"GPU {gpu.uuid} ({mode}) shows {shown.get(gpu.uuid)!r}, not {want!r}")
    if rig.kubelet.mode in ("truth", "lie"):
        # With a kubelet that answers, attribution is exactly its valid rows.
        want_rows = {(gpu_of[d], ns, pod, c, claim, NODE, d) for ns, pod, c, claim, d in rig.kubelet.truth}
        if attributed(text) != want_rows:
            problems.append(f"attributed {sorted(attributed(text))}, the kubelet says {sorted(want_rows)}")
    return problems
