"""The sandbox scheduler's NodeResourcesFit for a device plugin's units: a pod needs what its long-lived
containers (sidecars included) hold together, or its largest init container that runs to completion, on top
of what the node's other active pods hold -- kube-scheduler's sum, the one ``driver.allocation.extended``
computes for the claims DRA backs."""

from __future__ import annotations

from typing import Any, cast

import pytest

from driver.kube.client import KubeClient, ResourceType
from driver.sim.controllers import Scheduler

GPU = "nvidia.com/gpu"
NODE = {"metadata": {"name": "node-1"}, "status": {"allocatable": {GPU: "2"}}}


def container(name: str, gpus: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "resources": {"limits": {GPU: str(gpus)}}, **extra}


def pod(
    uid: str, *containers: dict[str, Any], inits: tuple[dict[str, Any], ...] = (), phase: str = "Running"
) -> Any:
    return {
        "metadata": {"name": uid, "namespace": "default", "uid": uid},
        "spec": {"nodeName": "node-1", "containers": list(containers), "initContainers": list(inits)},
        "status": {"phase": phase},
    }


class NodePods:
    """The one list call the fit check makes: the pods bound to the node."""

    def __init__(self, *pods: Any) -> None:
        self.pods = list(pods)

    async def list(self, rt: ResourceType, **_: Any) -> dict[str, Any]:
        return {"items": self.pods}


async def shortage(incoming: Any, *others: Any) -> str:
    scheduler = Scheduler(cast(KubeClient, NodePods(incoming, *others)))
    return await scheduler._extended_shortage(incoming, NODE, set())


SIDECAR_POD = pod("new", container("main", 1), inits=(container("proxy", 1, restartPolicy="Always"),))


@pytest.mark.parametrize(
    ("incoming", "others", "verdict"),
    [
        (pod("new", container("main", 2)), (), ""),
        (pod("new", container("main", 1)), (pod("old", container("main", 1)),), ""),
        (pod("new", container("main", 2)), (pod("old", container("main", 1)),), f"Insufficient {GPU}"),
        # A finished pod holds nothing.
        (pod("new", container("main", 2)), (pod("old", container("main", 1), phase="Succeeded"),), ""),
        # An init container that runs to completion hands its GPUs on to the containers after it...
        (pod("new", container("main", 1), inits=(container("setup", 2),)), (), ""),
        (
            pod("new", container("main", 1), inits=(container("setup", 2),)),
            (pod("old", container("main", 1)),),
            f"Insufficient {GPU}",
        ),
        # ... a sidecar keeps its own while the containers run: 1 + 1 on a node where another pod holds 1.
        (SIDECAR_POD, (), ""),
        (SIDECAR_POD, (pod("old", container("main", 1)),), f"Insufficient {GPU}"),
    ],
)
async def test_a_device_plugins_units_fit_as_kube_scheduler_counts_them(
    incoming: Any, others: tuple[Any, ...], verdict: str
) -> None:
    assert await shortage(incoming, *others) == verdict
