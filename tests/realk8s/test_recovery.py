"""Recovery with the real kubelet: a plugin killed with SIGKILL and started again keeps what it prepared
and unprepares it later; a kubelet restart wipes the node's slices and the plugin publishes them again."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

import pytest

from driver.kube.client import NAMESPACES, PODS, RESOURCE_CLAIMS, RESOURCE_SLICES, KubeClient
from driver.state.cdi import spec_file_name
from tests.support.realk8s import Cluster
from tests.support.realk8s_driver import (
    DRIVER,
    Driver,
    apply_manifest,
    audit_time,
    claim_and_pod,
    delete_and_wait,
    running,
    wait_for,
)

pytestmark = pytest.mark.realk8s

NAMESPACE = "recovery"
NODE = "node-1"
ONE_GPU = {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}]}


@pytest.fixture
async def admin(realk8s: Cluster, accel_dra: Driver) -> AsyncIterator[KubeClient]:
    async with await KubeClient.connect(str(realk8s.kubeconfig)) as kube:
        if not (await kube.list(NAMESPACES, field_selector=f"metadata.name={NAMESPACE}"))["items"]:
            await apply_manifest(
                kube, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
            )
        yield kube


async def run_on_node(kube: KubeClient, name: str) -> str:
    """Create a one-GPU claim and a pod pinned to node-1; return the claim's UID once the pod runs."""
    claim, pod = claim_and_pod(NAMESPACE, name, ONE_GPU)
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": NODE}
    await kube.create(RESOURCE_CLAIMS, claim, NAMESPACE)
    await kube.create(PODS, pod, NAMESPACE)
    await wait_for(kube, PODS, name, NAMESPACE, running, what=f"pod {name} Running")
    return str((await kube.get(RESOURCE_CLAIMS, name, NAMESPACE))["metadata"]["uid"])


async def test_a_plugin_killed_with_sigkill_recovers(
    realk8s: Cluster, accel_dra: Driver, admin: KubeClient
) -> None:
    cdi = realk8s.nodes[NODE].cdi_dir
    before = await run_on_node(admin, "before-kill")
    assert (cdi / spec_file_name(DRIVER, before)).is_file()

    accel_dra.plugins[NODE].kill()
    since = accel_dra.start_plugin(NODE)
    accel_dra.wait_registered(NODE, since=since)

    after = await run_on_node(admin, "after-restart")
    assert (cdi / spec_file_name(DRIVER, before)).is_file(), "the restart lost a prepared claim's CDI spec"
    assert (cdi / spec_file_name(DRIVER, after)).is_file()
    for name, uid in (("before-kill", before), ("after-restart", after)):
        await delete_and_wait(admin, PODS, name, NAMESPACE)
        assert not (cdi / spec_file_name(DRIVER, uid)).exists(), f"{name}: not unprepared after the restart"
        await delete_and_wait(admin, RESOURCE_CLAIMS, name, NAMESPACE)


async def test_the_plugin_publishes_again_after_the_kubelet_wipes_its_slices(
    realk8s: Cluster, accel_dra: Driver, admin: KubeClient
) -> None:
    """A starting kubelet deletes every ResourceSlice of its node; the plugin must notice and re-create
    them. (A hollow kubelet loses its pods on restart, so none may run on node-1 by now.)"""

    async def slices() -> dict[str, str]:
        listed = await admin.list(RESOURCE_SLICES, field_selector=f"spec.nodeName={NODE}")
        return {
            s["metadata"]["uid"]: s["metadata"]["name"]
            for s in listed["items"]
            if s["spec"]["driver"] == DRIVER
        }

    assert not [p for p in (await admin.list(PODS, field_selector=f"spec.nodeName={NODE}"))["items"]]
    old = await slices()
    assert old
    since = accel_dra.plugins[NODE].log_size()
    restarted = datetime.datetime.now(datetime.UTC)
    realk8s.restart_kubelet(NODE)
    accel_dra.wait_registered(NODE, since=since)
    accel_dra.plugins[NODE].wait_log(r"slices published", since=since)
    wipes = [
        e
        for e in realk8s.audit_events()
        if e.get("user", {}).get("username") == f"system:node:{NODE}"
        and e.get("objectRef", {}).get("resource") == "resourceslices"
        and e.get("verb") in ("delete", "deletecollection")
        and e.get("stage") == "ResponseComplete"
        and audit_time(e) >= restarted
    ]
    assert wipes, "the restarted kubelet did not delete the node's slices"
    new = await slices()
    assert len(new) == len(old) and not set(new) & set(old), "the slices were not re-created"
