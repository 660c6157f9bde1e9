"""The API-fault chaos (tests/chaos/api_faults.py) against the real kube-apiserver of the session's cluster.

A plugin serves a node of its own (``chaos-node``: a Node object without a kubelet, cordoned, so nothing
else lands there) with the chart's ServiceAccount and a token bound to that Node -- the permissions and the
admission policy of a deployed plugin -- and reaches the API server through the fault proxy, which passes
its token on over TLS. The test plays the kubelet over the plugin's DRA socket, as the sim chaos does, and
writes the claims' allocations as the scheduler would. After every case, with the faults over, within a
bounded time: the slices as the real API server stores them are exactly what the plugin discovers (one
complete pool generation, owned by the Node), claims deleted from the API are swept, the others stay
prepared, other slices (node-1's and node-2's, another driver's on this node) are untouched, and the node
invariants hold.

Seeded like tests/chaos (``CHAOS_SEED`` replays, ``CHAOS_SCALE`` multiplies the cases); a failure names the
seed and the command that replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from driver.kube.client import NAMESPACES, NODES, RESOURCE_SLICES, ApiError, KubeClient
from driver.resources.cli import discovered_slices
from tests.chaos.api_faults import SWEEP_INTERVAL, Model, run_cases
from tests.chaos.conftest import SCALE, SEED, Chaos
from tests.chaos.harness import DRIVER, PROFILE, SETTLE_S, ChaosError, ChaosNode
from tests.support.faultproxy import FaultProxy
from tests.support.realk8s import Cluster
from tests.support.realk8s_driver import Driver, node_token

pytestmark = pytest.mark.realk8s

NODE = "chaos-node"
#: The claims' namespace, labelled so that claims may be allocated with admin access.
NAMESPACE = "chaos"
#: Cases at CHAOS_SCALE=1: about 20 s on a busy 2-core machine.
CASES = 8
JSON = dict[str, Any]
REFUSED = re.compile(r": (403|422) [A-Z]")


@pytest.fixture
def chaos(request: pytest.FixtureRequest) -> Chaos:
    """The test's generator, from the seed and its own name (as tests/chaos derives it)."""
    name = request.node.nodeid
    digest = hashlib.sha256(f"{SEED}:{name}".encode()).digest()
    return Chaos(name, random.Random(int.from_bytes(digest[:8], "big")))


def replay_note() -> str:
    return (
        f"chaos seed {SEED}, scale {SCALE:g}; replay: CHAOS_SEED={SEED} CHAOS_SCALE={SCALE:g} "
        ".venv/bin/python -m pytest tests/realk8s/test_chaos.py"
    )


class RealChaosNode(ChaosNode):
    """A chaos node whose API server is a real one: the Node and the published slices are read from it."""

    def __init__(self, root: Path, kube: KubeClient, proxy: FaultProxy, node_uid: str) -> None:
        super().__init__(root, None, kube, proxy, node=NODE, namespace=NAMESPACE)
        self.node_uid = node_uid
        self.expected = discovered_slices(f"fake:{PROFILE}", DRIVER, NODE)

    async def register_node(self) -> None:
        """The Node exists before the token bound to it: see the ``chaos_node`` fixture."""

    def problems(self, stored: Mapping[str, JSON]) -> list[str]:
        """What is wrong with the node's slices of this driver as the API server stores them."""
        ours = [s for s in stored.values() if s["spec"].get("driver") == DRIVER]
        if not ours:
            return ["no slice"]
        found: list[str] = []
        generations = {s["spec"]["pool"]["generation"] for s in ours}
        if len(generations) != 1:
            found.append(f"pool generations {sorted(generations)}")
        if any(s["spec"]["pool"]["resourceSliceCount"] != len(ours) for s in ours):
            found.append(f"{len(ours)} slices, the pool says otherwise")
        devices = sorted((d for s in ours for d in s["spec"].get("devices") or ()), key=lambda d: d["name"])
        wanted = sorted(
            (d for s in self.expected for d in s["spec"].get("devices") or ()), key=lambda d: d["name"]
        )
        if devices != wanted:
            found.append(f"devices {[d['name'] for d in devices]}, discovered {[d['name'] for d in wanted]}")
        for item in ours:
            owners = [(o["kind"], o["name"], o["uid"]) for o in item["metadata"].get("ownerReferences") or ()]
            if owners != [("Node", NODE, self.node_uid)]:
                found.append(f"{item['metadata']['name']} is owned by {owners}")
        return found

    async def wait_published(self, timeout: float = SETTLE_S) -> None:
        """Until the stored slices are right, following a watch of the node's slices."""
        selector = f"spec.nodeName={NODE}"
        stored: dict[str, JSON] = {}
        try:
            async with asyncio.timeout(timeout):
                while True:
                    listed = await self.kube.list(RESOURCE_SLICES, field_selector=selector)
                    stored = {s["metadata"]["name"]: s for s in listed["items"]}
                    if not self.problems(stored):
                        return
                    with contextlib.suppress(ApiError):  # 410 Gone and the like: list again
                        async for event in self.kube.watch(
                            RESOURCE_SLICES,
                            field_selector=selector,
                            resource_version=listed["metadata"]["resourceVersion"],
                            timeout_seconds=60,
                        ):
                            if event.type == "BOOKMARK":
                                continue
                            name = event.object["metadata"]["name"]
                            if event.type == "DELETED":
                                stored.pop(name, None)
                            else:
                                stored[name] = event.object
                            if not self.problems(stored):
                                return
        except TimeoutError:
            raise ChaosError(
                f"slices not published right within {timeout} s: {self.problems(stored)}\n{self.log_tail()}"
            ) from None


async def foreign_slices(kube: KubeClient) -> set[tuple[str, str, str]]:
    """(name, uid, resourceVersion) of every slice that is not the chaos plugin's."""
    listed = (await kube.list(RESOURCE_SLICES))["items"]
    return {
        (s["metadata"]["name"], s["metadata"]["uid"], s["metadata"]["resourceVersion"])
        for s in listed
        if s["spec"].get("nodeName") != NODE or s["spec"].get("driver") != DRIVER
    }


def theirs(node_uid: str) -> JSON:
    """Another driver's slice of the chaos node (owned by it, so it goes with the Node)."""
    return {
        "metadata": {
            "name": f"{NODE}-net",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid}],
        },
        "spec": {
            "driver": "net.example.com",
            "nodeName": NODE,
            "pool": {"name": NODE, "generation": 1, "resourceSliceCount": 1},
            "devices": [{"name": "nic-0"}],
        },
    }


@pytest.fixture
async def chaos_node(realk8s: Cluster, accel_dra: Driver) -> AsyncIterator[RealChaosNode]:
    """The chaos node, its plugin's proxied kubeconfig, another driver's slice on it, the claims'
    namespace; all gone after."""
    async with await KubeClient.connect(str(realk8s.kubeconfig)) as admin:
        labels = {"resource.kubernetes.io/admin-access": "true"}
        await admin.create(NAMESPACES, {"metadata": {"name": NAMESPACE, "labels": labels}})
        node = await admin.create(NODES, {"metadata": {"name": NODE}, "spec": {"unschedulable": True}})
        uid = node["metadata"]["uid"]
        state: RealChaosNode | None = None
        try:
            await admin.create(RESOURCE_SLICES, theirs(uid))
            upstream = ssl.create_default_context(cafile=str(realk8s.pki / "ca.crt"))
            token = await node_token(admin, NODE, seconds=3600)
            with tempfile.TemporaryDirectory(prefix="adra-chaos-", dir="/tmp") as root:
                async with FaultProxy(realk8s.server, upstream_ssl=upstream, token=token) as proxy:
                    state = RealChaosNode(Path(root) / "node", admin, proxy, uid)
                    try:
                        yield state
                    finally:
                        await state.kill()
        finally:
            await admin.delete_collection(RESOURCE_SLICES, field_selector=f"spec.nodeName={NODE}")
            await admin.delete(NODES, NODE)
            await admin.delete(NAMESPACES, NAMESPACE)  # and its claims


async def test_api_server_faults_on_a_real_api_server(chaos_node: RealChaosNode, chaos: Chaos) -> None:
    node = chaos_node
    try:
        model = Model(await node.create_claims(chaos.rng, 8), set(), set())
        foreign = await foreign_slices(node.kube)

        async def untouched() -> None:
            now = await foreign_slices(node.kube)
            if now != foreign:
                raise ChaosError(f"other slices were touched: {sorted(foreign ^ now)}")

        await node.start("--sweep-interval", SWEEP_INTERVAL)
        await node.wait_published()
        await run_cases(node, chaos, model, chaos.count(CASES), untouched)
        # The proxy never answers 403 or 422 (``<verb> <object>: 403 Forbidden: ...`` in an error): one in
        # the log is the real API server refusing what the plugin sent, or the plugin's permissions.
        assert node.process is not None
        refused = [line for line in node.process.lines if REFUSED.search(line)]
        if refused:
            raise ChaosError("the API server refused the plugin:\n" + "\n".join(refused))
    except BaseException as exc:
        exc.add_note(replay_note())
        raise
