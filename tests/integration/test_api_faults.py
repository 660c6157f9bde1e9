"""The real plugin process behind a fault-injecting proxy: answers an API server (or what stands in front of
it) should never send must not stop publishing, free a claim in use, or fail a call without naming the
claim.
"""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from driver.kube.client import NODES, RESOURCE_SLICES, KubeClient
from driver.sim.apiserver import SimApiServer
from driver.sim.kubelet import KubeletError, SimKubelet
from tests.integration.conftest import NODE, NodeDirs, StartPlugin
from tests.integration.node_state_claims import DRIVER, GPU0, allocated_claim, ref, result
from tests.support.faultproxy import FaultProxy
from tests.support.processes import Process

SLICES = r"^/apis/resource\.k8s\.io/v1/resourceslices$"
NODE_GET = rf"^/api/v1/nodes/{NODE}$"
GPUS = 4  # fake:pcie-l4x4


@dataclass
class Rig:
    """The sim API server and kubelet, and a plugin that reaches the API server through the proxy."""

    apiserver: SimApiServer
    kube: KubeClient  # direct, not through the proxy
    kubelet: SimKubelet
    proxy: FaultProxy
    dirs: NodeDirs
    start_plugin: StartPlugin

    async def plugin(self) -> Process:
        kubeconfig = self.proxy.write_kubeconfig(self.dirs.root / "proxied-kubeconfig")
        process = await self.start_plugin(kubeconfig=kubeconfig)
        await process.wait_log("registered with kubelet")
        return process


@pytest.fixture
async def rig(
    apiserver: SimApiServer,
    kube: KubeClient,
    kubelet: SimKubelet,
    node_dirs: NodeDirs,
    start_plugin: StartPlugin,
) -> AsyncIterator[Rig]:
    async with FaultProxy(apiserver.url) as proxy:
        yield Rig(apiserver, kube, kubelet, proxy, node_dirs, start_plugin)


def published_devices(apiserver: SimApiServer) -> int:
    return sum(
        len(s["spec"].get("devices") or [])
        for s in apiserver.objects(RESOURCE_SLICES)
        if s["spec"].get("nodeName") == NODE
    )


async def wait_published(apiserver: SimApiServer, timeout: float = 30.0) -> None:
    await apiserver.wait_for(lambda _store: published_devices(apiserver) == GPUS, timeout)


# -- the publisher never stops on a bad answer -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "path"),
    [("html", SLICES), ("empty-object", SLICES), ("empty-object", NODE_GET), ("not-json", SLICES)],
    ids=["slices-html", "slices-empty-object", "node-empty-object", "slices-not-json"],
)
async def test_publishing_survives_a_malformed_answer(rig: Rig, fault: str, path: str) -> None:
    process = await rig.plugin()
    await wait_published(rig.apiserver)
    armed = rig.proxy.inject(fault, path, remaining=3)
    # Someone (the kubelet at its start) wipes the node's slices: the plugin must put them back, through the
    # malformed answers.
    await rig.kube.delete_collection(RESOURCE_SLICES, field_selector=f"spec.nodeName={NODE}")
    await rig.proxy.wait_hit(armed, 3)
    await wait_published(rig.apiserver)
    await process.wait_log("slice sync failed; retrying")
    assert not process.matching("Traceback")
    assert await process.terminate() == 0


async def test_publishing_resumes_after_an_outage(rig: Rig) -> None:
    process = await rig.plugin()
    await wait_published(rig.apiserver)
    rig.proxy.outage = True
    await rig.kube.delete_collection(RESOURCE_SLICES, field_selector=f"spec.nodeName={NODE}")
    await process.wait_log("watch failed; listing again")
    rig.proxy.outage = False
    await wait_published(rig.apiserver, timeout=60.0)
    assert await process.terminate() == 0


# -- when in doubt, keep the claim -----------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["bare-404", "status-404-no-details", "empty-object", "html"])
async def test_the_sweeper_keeps_a_claim_the_api_server_does_not_clearly_deny(rig: Rig, fault: str) -> None:
    held = await allocated_claim(rig.kube, "held", [result("gpu", GPU0)])
    first = await rig.plugin()
    await rig.kubelet.prepare(DRIVER, [ref(held)])
    assert await first.terminate() == 0
    # Restarted while the API server answers GETs of that claim with something that proves nothing.
    rig.proxy.inject(fault, r"/resourceclaims/held$", remaining=None)
    second = await rig.plugin()
    await second.wait_log("claim sweep done")
    assert second.matching("claim sweep: cannot check claim; kept")
    assert not second.matching("unprepared claim that no longer exists")
    spec = rig.dirs.cdi / f"k8s.{DRIVER}-gpu_{held['metadata']['uid']}.json"
    assert spec.is_file()
    newcomer = await allocated_claim(rig.kube, "newcomer", [result("gpu", GPU0)])
    with pytest.raises(KubeletError, match=r"already prepared for claim default/held"):
        await rig.kubelet.prepare(DRIVER, [ref(newcomer)])


# -- every failed claim is named ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("not-json", r"200 MalformedAnswer: answer is not JSON"),
        ("html", r"answer is text/html, not JSON"),
        ("empty-object", r"answer is None None, not resource\.k8s\.io/v1 ResourceClaim"),
        ("other-object", r"answer is the object 'someone-else'"),
        ("reset", r"API server unreachable"),
        ("internal-error", r"500 InternalError"),
    ],
)
async def test_a_bad_claim_answer_fails_prepare_naming_the_claim(rig: Rig, fault: str, says: str) -> None:
    claim = await allocated_claim(rig.kube, "named", [result("gpu", GPU0)])
    process = await rig.plugin()
    rig.proxy.inject(fault, r"/resourceclaims/named$", remaining=None)
    with pytest.raises(KubeletError, match=r"FAILED_PRECONDITION") as failed:
        await rig.kubelet.prepare(DRIVER, [ref(claim)])
    message = str(failed.value)
    assert "get ResourceClaim default/named: " in message, message
    assert re.search(says, message), message
    # The kubelet's retry, with the API server answering properly again, succeeds.
    rig.proxy.clear()
    assert (await rig.kubelet.prepare(DRIVER, [ref(claim)]))[claim["metadata"]["uid"]]
    assert await process.terminate(signal.SIGTERM) == 0


async def test_a_server_that_ignores_the_field_selector_does_not_make_the_plugin_touch_other_slices(
    rig: Rig,
) -> None:
    rig.apiserver.create(NODES, {"metadata": {"name": "node-2"}})
    foreign = rig.apiserver.create(
        RESOURCE_SLICES,
        {
            "metadata": {"name": "node-2-slice"},
            "spec": {
                "driver": DRIVER,
                "nodeName": "node-2",
                "pool": {"name": "node-2", "generation": 1, "resourceSliceCount": 1},
                "devices": [{"name": "gpu-0"}],
            },
        },
    )
    rig.proxy.inject("ignore-selector", SLICES, remaining=None, watch=None)
    process = await rig.plugin()
    await wait_published(rig.apiserver)
    await rig.kube.delete_collection(RESOURCE_SLICES, field_selector=f"spec.nodeName={NODE}")
    await wait_published(rig.apiserver)
    assert rig.apiserver.get_object(RESOURCE_SLICES, "node-2-slice") == foreign
    assert await process.terminate() == 0
