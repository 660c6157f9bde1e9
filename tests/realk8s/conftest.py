"""The driver on the session's real cluster (the ``realk8s`` fixture of tests/conftest.py).

``accel_dra`` installs the chart and starts the plugin on both hollow nodes: node-1 serves fake
``dgx-h100`` GPUs, node-2 fake ``mig-a100`` ones. node-2 is cordoned until ``node2_in_service`` is first
requested, so that every test before then keeps the scheduler away from it and node-2's plugin stays idle:
the 60 s idle window that test_idle.py checks in the audit log passes while the other tests run.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from driver.kube.client import NODES, RESOURCE_SLICES, KubeClient
from tests.support.realk8s import START_TIMEOUT, Cluster, run_async, running_cluster, wait_until
from tests.support.realk8s_driver import DRIVER, Driver, audit_time, plugin_requests

IDLE_NODE = "node-2"
IDLE_WINDOW = datetime.timedelta(seconds=60)


@dataclass
class IdleWindow:
    """From ``start`` on, the plugin of ``node`` has nothing to do until node-2 goes into service."""

    node: str
    start: datetime.datetime

    @property
    def end(self) -> datetime.datetime:
        return self.start + IDLE_WINDOW


@pytest.fixture
async def admin(realk8s: Cluster) -> AsyncIterator[KubeClient]:
    """A client with the cluster's admin credentials."""
    async with await KubeClient.connect(str(realk8s.kubeconfig)) as kube:
        yield kube


async def set_unschedulable(cluster: Cluster, node: str, unschedulable: bool) -> None:
    async with await KubeClient.connect(str(cluster.kubeconfig)) as kube:
        await kube.patch(NODES, node, {"spec": {"unschedulable": unschedulable or None}})


def published(cluster: Cluster, node: str) -> bool:
    """Every slice of the node's pool is in the API server (``resourceSliceCount`` of them)."""
    listed = cluster.get(f"{RESOURCE_SLICES.path()}?fieldSelector=spec.nodeName={node}") or {}
    ours = [s for s in listed.get("items") or [] if s["spec"]["driver"] == DRIVER]
    return bool(ours) and len(ours) == ours[0]["spec"]["pool"]["resourceSliceCount"]


@contextlib.contextmanager
def driver_on_a_cluster_of_its_own(
    binary: Path,
    node: str,
    *,
    values: Mapping[str, Any],
    profiles: Mapping[str, str],
    feature_gates: Sequence[str] = (),
) -> Iterator[Driver]:
    """A fresh cluster whose ``node`` runs the plugin with chart ``values`` (flags the session's cluster
    does not use), once the node's slices are published."""
    with running_cluster(binary, feature_gates) as cluster:
        driver = Driver(cluster, values=dict(values), profiles=profiles)
        driver.install()
        driver.start_plugin(node)
        driver.wait_registered(node)
        driver.plugins[node].wait(lambda: published(cluster, node), f"{node}'s slices", interval=0.2)
        yield driver
        driver.stop()


def settled(cluster: Cluster, node: str) -> datetime.datetime | None:
    """When the node's plugin reached its steady state: both its watches (its slices, its Node) are open.
    The time of the last request it sent by then, or None before."""
    events = plugin_requests(cluster.audit_events(), node)
    watching = {
        (e["objectRef"]["resource"])
        for e in events
        if e.get("verb") == "watch" and e.get("stage") == "ResponseStarted"
    }
    if not {"resourceslices", "nodes"} <= watching:
        return None
    return max(audit_time(e) for e in events)


IDLE: pytest.StashKey[IdleWindow] = pytest.StashKey()


@pytest.fixture(scope="session")
def accel_dra(request: pytest.FixtureRequest, realk8s: Cluster) -> Iterator[Driver]:
    driver = Driver(realk8s)
    driver.install()
    run_async(set_unschedulable(realk8s, IDLE_NODE, True))
    for node in realk8s.nodes:
        driver.start_plugin(node)
    for node in realk8s.nodes:
        driver.wait_registered(node)
        driver.plugins[node].wait(lambda n=node: published(realk8s, n), f"the slices of {node}", interval=0.2)  # type: ignore[misc]
    start = wait_until(
        lambda: settled(realk8s, IDLE_NODE), START_TIMEOUT, "the plugin's watches", interval=0.2
    )
    request.config.stash[IDLE] = IdleWindow(IDLE_NODE, start + datetime.timedelta(microseconds=1))
    yield driver
    driver.stop()


@dataclass
class IdleReport:
    window: IdleWindow
    requests: list[Mapping[str, Any]]  # of node-2's plugin, received within the window


@pytest.fixture(scope="session")
def idle_report(request: pytest.FixtureRequest, realk8s: Cluster, accel_dra: Driver) -> IdleReport:
    """The requests node-2's plugin sent during its idle window, waiting out what is left of the window."""
    window = request.config.stash[IDLE]
    left = (window.end - datetime.datetime.now(datetime.UTC)).total_seconds()
    if left > 0:
        # The one real wait of the tier: nothing can announce that no request will come.
        wait_until(
            lambda: datetime.datetime.now(datetime.UTC) >= window.end, left + 5, "the idle window", 0.5
        )
    events = plugin_requests(realk8s.audit_events(), window.node)
    return IdleReport(window, [e for e in events if window.start <= audit_time(e) < window.end])


@pytest.fixture(scope="session")
def node2_in_service(realk8s: Cluster, accel_dra: Driver, idle_report: IdleReport) -> str:
    """node-2, schedulable again once its idle window is over."""
    run_async(set_unschedulable(realk8s, IDLE_NODE, False))
    return IDLE_NODE
