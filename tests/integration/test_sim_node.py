"""The sim node's pod lifecycle around DRA, against fake plugins on real sockets and the sim API server.

Each test runs the node (kubelet emulator + runtime + PodResources server) for ``node-1`` and hand-built DRA
plugins for two drivers whose answers the test controls, and observes what a user would: pod objects,
events, container output, the PodResources socket and the calls the plugins received.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

import driver.sim.node as node_module
from driver._proto.dra.v1 import api_pb2 as v1
from driver._proto.dra.v1 import api_pb2_grpc as v1_grpc
from driver._proto.pluginregistration.v1 import api_pb2 as reg
from driver._proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from driver._proto.podresources.v1 import api_pb2 as pr
from driver._proto.podresources.v1 import api_pb2_grpc as pr_grpc
from driver.kube.client import EVENTS, PODS, RESOURCE_CLAIMS, KubeClient
from driver.sim.apiserver import SimApiServer
from driver.sim.node import SimNode
from driver.sim.podresources import PodResourcesServer, PodResourcesState
from driver.sim.runtime import SimRuntime
from tests.integration.conftest import NODE, NodeDirs, create_allocated_claim

A = "a.example.com"
B = "b.example.com"


@dataclass
class FakeDriver:
    """A DRA plugin whose prepare/unprepare answers the test switches; it records every call."""

    name: str
    devices: dict[str, tuple[str, ...]]  # device -> request names it serves
    fail_prepare: str = ""
    fail_unprepare: str = ""
    prepared: list[list[str]] = field(default_factory=list)  # claim UIDs per call
    unprepared: list[list[str]] = field(default_factory=list)
    unprepare_calls: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def NodePrepareResources(self, request: Any, context: Any) -> Any:
        self.prepared.append([c.uid for c in request.claims])
        response = v1.NodePrepareResourcesResponse()
        for claim in request.claims:
            entry = response.claims[claim.uid]
            if self.fail_prepare:
                entry.error = self.fail_prepare
                continue
            for device, requests in self.devices.items():
                entry.devices.add(
                    request_names=list(requests),
                    pool_name=NODE,
                    device_name=device,
                    cdi_device_ids=[f"{self.name}/gpu={device}"],
                )
        return response

    async def NodeUnprepareResources(self, request: Any, context: Any) -> Any:
        response = v1.NodeUnprepareResourcesResponse()
        for claim in request.claims:
            response.claims[claim.uid].error = self.fail_unprepare
        async with self.unprepare_calls:
            self.unprepared.append([c.uid for c in request.claims])
            self.unprepare_calls.notify_all()
        return response

    async def wait_unprepared(self, count: int) -> None:
        async with asyncio.timeout(10), self.unprepare_calls:
            await self.unprepare_calls.wait_for(lambda: len(self.unprepared) >= count)


class Registration:
    def __init__(self, name: str, endpoint: str) -> None:
        self.info = reg.PluginInfo(
            type="DRAPlugin", name=name, endpoint=endpoint, supported_versions=["v1.DRAPlugin"]
        )

    async def GetInfo(self, request: Any, context: Any) -> Any:
        return self.info

    async def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:
        return reg.RegistrationStatusResponse()


async def serve_driver(dirs: NodeDirs, fake: FakeDriver) -> list[grpc.aio.Server]:
    """The plugin's DRA and registration servers, and a CDI spec with one env variable per device."""
    dra_socket = str(dirs.plugins / f"{fake.name}.sock")
    dra = grpc.aio.server()
    v1_grpc.add_DRAPluginServicer_to_server(fake, dra)
    dra.add_insecure_port(f"unix://{dra_socket}")
    registration = grpc.aio.server()
    reg_grpc.add_RegistrationServicer_to_server(Registration(fake.name, dra_socket), registration)
    registration.add_insecure_port(f"unix://{dirs.registry}/{fake.name}-reg.sock")
    spec = {
        "cdiVersion": "0.6.0",
        "kind": f"{fake.name}/gpu",
        "devices": [
            {"name": d, "containerEdits": {"env": [f"DEVICE_{d.upper()}={fake.name}"]}} for d in fake.devices
        ],
    }
    (dirs.cdi / f"{fake.name}.json").write_text(json.dumps(spec))
    await dra.start()
    await registration.start()
    return [dra, registration]


@dataclass
class Node:
    apiserver: SimApiServer
    kube: KubeClient
    node: SimNode
    drivers: dict[str, FakeDriver]
    pod_resources_socket: str

    async def create_pod(
        self,
        name: str,
        claims: dict[str, str],
        containers: list[dict[str, Any]],
        *,
        init_containers: list[dict[str, Any]] | None = None,
        restart_policy: str = "Never",
    ) -> dict[str, Any]:
        """A pod bound to the node whose claims (entry -> ResourceClaim name) are reserved for it."""
        spec: dict[str, Any] = {
            "nodeName": NODE,
            "restartPolicy": restart_policy,
            "resourceClaims": [{"name": e, "resourceClaimName": c} for e, c in claims.items()],
            "containers": containers,
        }
        if init_containers:
            spec["initContainers"] = [{"image": "busybox", **c} for c in init_containers]
        spec["containers"] = [{"image": "busybox", **c} for c in containers]
        pod = await self.kube.create(PODS, {"metadata": {"name": name}, "spec": spec}, "default")
        for claim_name in claims.values():
            claim = await self.kube.get(RESOURCE_CLAIMS, claim_name, "default")
            claim["status"].setdefault("reservedFor", []).append(
                {"resource": "pods", "name": name, "uid": pod["metadata"]["uid"]}
            )
            await self.kube.update(RESOURCE_CLAIMS, claim, "default", subresource="status")
        return pod

    async def wait_pod(self, name: str, predicate: Any) -> dict[str, Any]:
        def check(_store: Any) -> Any:
            pod = self.apiserver.get_object(PODS, name, "default")
            return pod if pod is not None and predicate(pod) else None

        result: dict[str, Any] = await self.apiserver.wait_for(check)
        return result

    async def list_pod_resources(self) -> dict[str, dict[str, list[tuple[str, str, str]]]]:
        """PodResources List over the socket: pod -> container -> (claim, driver, device)."""
        async with grpc.aio.insecure_channel(f"unix://{self.pod_resources_socket}") as channel:
            answer = await pr_grpc.PodResourcesListerStub(channel).List(
                pr.ListPodResourcesRequest(), timeout=5
            )
        return {
            p.name: {
                c.name: [
                    (d.claim_name, r.driver_name, r.device_name)
                    for d in c.dynamic_resources
                    for r in d.claim_resources
                ]
                for c in p.containers
            }
            for p in answer.pod_resources
        }


@pytest.fixture
async def sim(node_dirs: NodeDirs, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Node]:
    monkeypatch.setattr(node_module, "RETRY_INITIAL", 0.02)  # a pod seen before its reservation retries soon
    apiserver = SimApiServer(graceful_pod_deletion=True)
    await apiserver.start()
    kubeconfig = node_dirs.root / "kubeconfig"
    apiserver.write_kubeconfig(str(kubeconfig))
    kube = await KubeClient.connect(str(kubeconfig))
    drivers = {
        A: FakeDriver(A, {"a0": ("first",), "a1": ("second",)}),
        B: FakeDriver(B, {"b0": ()}),
    }
    servers = [s for fake in drivers.values() for s in await serve_driver(node_dirs, fake)]
    state = PodResourcesState()
    socket_path = str(node_dirs.root / "pod-resources.sock")
    pod_resources = PodResourcesServer(state, socket_path)
    await pod_resources.start()
    node = SimNode(
        name=NODE,
        kube=kube,
        registry_dir=str(node_dirs.registry),
        runtime=SimRuntime([node_dirs.cdi], isolation="off"),
        containers_dir=node_dirs.root / "containers",
        pod_resources=state,
        unprepare_retry_initial=0.02,
        unprepare_retry_max=0.1,
        prepare_retry=0.02,
    )
    await node.start()
    await node.kubelet.wait_registered(A)
    await node.kubelet.wait_registered(B)
    try:
        yield Node(apiserver, kube, node, drivers, socket_path)
    finally:
        await node.stop()
        await pod_resources.stop()
        for server in servers:
            await server.stop(0)
        await kube.close()
        await apiserver.stop()


def result(driver: str, device: str, request: str = "gpu") -> dict[str, str]:
    return {"request": request, "driver": driver, "pool": NODE, "device": device}


SLEEPER = {"name": "main", "command": ["sleep", "600"], "resources": {"claims": [{"name": "gpu"}]}}


def running(pod: dict[str, Any]) -> bool:
    return bool(pod.get("status", {}).get("phase") == "Running")


def events(sim: Node, reason: str) -> list[dict[str, Any]]:
    return [e for e in sim.apiserver.objects(EVENTS, "default") if e["reason"] == reason]


async def container_env(sim: Node, pod: dict[str, Any], container: str) -> dict[str, str]:
    """The environment a container printed (``env`` as its first command)."""
    handle = sim.node.pods[pod["metadata"]["uid"]].containers[container]
    for _ in range(500):
        text = handle.log_text()
        if "\nEND\n" in f"\n{text}":
            break
        await asyncio.sleep(0.01)  # a log file has nothing to await on
    lines = handle.log_text().split("END")[0].splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def printing_env(name: str, claims: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "name": name,
        "command": ["sh", "-c", "env; echo END; sleep 600"],
        "resources": {"claims": claims},
    }


# -- 1: a failed unprepare holds the pod in Terminating --------------------------------------------------


async def test_failed_unprepare_is_retried_and_the_pod_stays_terminating_until_it_succeeds(sim: Node) -> None:
    claim = await create_allocated_claim(sim.kube, "one", [result(A, "a0")])
    await sim.create_pod("p", {"gpu": "one"}, [SLEEPER])
    await sim.wait_pod("p", running)
    fake = sim.drivers[A]
    fake.fail_unprepare = "device busy"

    await sim.kube.delete(PODS, "p", "default")
    await fake.wait_unprepared(3)  # retried, not given up
    assert sim.apiserver.get_object(PODS, "p", "default") is not None  # still Terminating
    (event, *_) = events(sim, "FailedUnprepareDynamicResources")
    assert "default/one" in event["message"] and A in event["message"] and "device busy" in event["message"]

    fake.fail_unprepare = ""
    await sim.apiserver.wait_for(lambda _s: sim.apiserver.get_object(PODS, "p", "default") is None)
    assert fake.unprepared[-1] == [claim["metadata"]["uid"]]
    assert not sim.node.claims


# -- 2: PodResources List has active pods only --------------------------------------------------------------


async def test_a_completed_pod_leaves_pod_resources_list(sim: Node) -> None:
    await create_allocated_claim(sim.kube, "job", [result(A, "a0")])
    short = {"name": "main", "command": ["true"], "resources": {"claims": [{"name": "gpu"}]}}
    await sim.create_pod("job", {"gpu": "job"}, [short])
    await sim.wait_pod("job", lambda p: p.get("status", {}).get("phase") == "Succeeded")
    await sim.drivers[A].wait_unprepared(1)
    assert "job" not in await sim.list_pod_resources()


# -- 3: PodResources lists every device of a referenced claim; CDI injection filters by request ---------


async def test_pod_resources_lists_all_devices_of_the_claim_while_cdi_follows_the_request(sim: Node) -> None:
    await create_allocated_claim(
        sim.kube, "pair", [result(A, "a0", "first"), result(A, "a1", "second")], requests=("first", "second")
    )
    pod = await sim.create_pod(
        "pair", {"gpu": "pair"}, [printing_env("one", [{"name": "gpu", "request": "first"}])]
    )
    await sim.wait_pod("pair", running)
    env = await container_env(sim, pod, "one")
    assert "DEVICE_A0" in env and "DEVICE_A1" not in env
    listed = await sim.list_pod_resources()
    assert sorted(listed["pair"]["one"]) == [("pair", A, "a0"), ("pair", A, "a1")]


# -- 7: a claim of two drivers -----------------------------------------------------------------------------


async def test_a_claim_of_two_drivers_is_prepared_and_unprepared_by_both(sim: Node) -> None:
    claim = await create_allocated_claim(
        sim.kube, "both", [result(A, "a0", "first"), result(B, "b0", "other")], requests=("first", "other")
    )
    uid = claim["metadata"]["uid"]
    sim.drivers[A].devices = {"a0": ("first",)}
    sim.drivers[B].fail_prepare = "not yet"
    pod = await sim.create_pod("both", {"gpu": "both"}, [printing_env("main", [{"name": "gpu"}])])
    await sim.apiserver.wait_for(lambda _s: events(sim, "FailedPrepareDynamicResources"))
    sim.drivers[B].fail_prepare = ""
    await sim.wait_pod("both", running)

    env = await container_env(sim, pod, "main")
    assert env["DEVICE_A0"] == A and env["DEVICE_B0"] == B
    listed = await sim.list_pod_resources()
    assert sorted(listed["both"]["main"]) == [("both", A, "a0"), ("both", B, "b0")]

    await sim.kube.delete(PODS, "both", "default")
    await sim.apiserver.wait_for(lambda _s: sim.apiserver.get_object(PODS, "both", "default") is None)
    assert sim.drivers[A].unprepared == [[uid]]
    assert sim.drivers[B].unprepared == [[uid]]


async def test_a_shared_claim_is_unprepared_once_by_its_last_pod(sim: Node) -> None:
    claim = await create_allocated_claim(sim.kube, "shared", [result(A, "a0"), result(B, "b0")])
    await sim.create_pod("first", {"gpu": "shared"}, [SLEEPER])
    await sim.create_pod("second", {"gpu": "shared"}, [SLEEPER])
    await sim.wait_pod("first", running)
    await sim.wait_pod("second", running)
    assert len(sim.drivers[A].prepared) == 1 and len(sim.drivers[B].prepared) == 1

    await sim.kube.delete(PODS, "first", "default")
    await sim.apiserver.wait_for(lambda _s: sim.apiserver.get_object(PODS, "first", "default") is None)
    assert sim.drivers[A].unprepared == [] and sim.drivers[B].unprepared == []
    await sim.kube.delete(PODS, "second", "default")
    await sim.apiserver.wait_for(lambda _s: sim.apiserver.get_object(PODS, "second", "default") is None)
    uid = claim["metadata"]["uid"]
    assert sim.drivers[A].unprepared == [[uid]] and sim.drivers[B].unprepared == [[uid]]


# -- 6: init containers -------------------------------------------------------------------------------------


async def test_init_containers_run_first_and_only_sidecars_are_listed(sim: Node) -> None:
    await create_allocated_claim(sim.kube, "init", [result(A, "a0")])
    uses_gpu = {"claims": [{"name": "gpu"}]}
    inits = [
        {"name": "setup", "command": ["true"], "resources": uses_gpu},
        {"name": "sidecar", "command": ["sleep", "600"], "restartPolicy": "Always", "resources": uses_gpu},
    ]
    await sim.create_pod("init", {"gpu": "init"}, [SLEEPER], init_containers=inits, restart_policy="Always")
    pod = await sim.wait_pod("init", running)

    status = pod["status"]
    assert [c["name"] for c in status["containerStatuses"]] == ["main"]
    by_name = {c["name"]: c for c in status["initContainerStatuses"]}
    assert list(by_name) == ["setup", "sidecar"]
    assert by_name["setup"]["state"]["terminated"]["reason"] == "Completed"
    assert "running" in by_name["sidecar"]["state"]
    listed = await sim.list_pod_resources()
    assert list(listed["init"]) == ["sidecar", "main"]


# -- 8: PodResources Get of an unknown pod ------------------------------------------------------------------


async def test_pod_resources_get_of_an_unknown_pod_is_a_plain_error(sim: Node) -> None:
    async with grpc.aio.insecure_channel(f"unix://{sim.pod_resources_socket}") as channel:
        stub = pr_grpc.PodResourcesListerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Get(pr.GetPodResourcesRequest(pod_name="nope", pod_namespace="default"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert err.value.details() == "pod nope in namespace default not found"
