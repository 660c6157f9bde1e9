"""A broken API server (or what stands in front of it) while the plugin publishes, prepares and sweeps,
against the sim API server: the cases of tests/chaos/api_faults.py, with slices of another node and of
another driver in the store that the plugin must never touch."""

from __future__ import annotations

from driver.kube.client import NODES, RESOURCE_SLICES
from tests.chaos.api_faults import SWEEP_INTERVAL, Model, run_cases
from tests.chaos.conftest import Chaos
from tests.chaos.harness import DRIVER, NODE, ChaosError, ChaosNode


def foreign_slices(node: ChaosNode) -> set[tuple[str, str, str]]:
    """(name, uid, resourceVersion) of the slices that are not this plugin's: never to be touched."""
    return {
        (s["metadata"]["name"], s["metadata"]["uid"], s["metadata"]["resourceVersion"])
        for s in node.sim.objects(RESOURCE_SLICES)
        if s["spec"].get("nodeName") != NODE or s["spec"].get("driver") != DRIVER
    }


def add_foreign_slices(node: ChaosNode) -> None:
    """Another node's slice of this driver and another driver's slice of this node, as in a cluster."""
    node.sim.create(NODES, {"metadata": {"name": "node-2"}})
    for name, driver, on in (("node-2-ours", DRIVER, "node-2"), ("node-1-theirs", "net.example.com", NODE)):
        node.sim.create(
            RESOURCE_SLICES,
            {
                "metadata": {"name": name},
                "spec": {
                    "driver": driver,
                    "nodeName": on,
                    "pool": {"name": on, "generation": 1, "resourceSliceCount": 1},
                    "devices": [{"name": "dev-0"}],
                },
            },
        )


async def test_api_server_faults(proxied_node: ChaosNode, chaos: Chaos) -> None:
    node = proxied_node
    model = Model(await node.create_claims(chaos.rng, 8), set(), set())
    add_foreign_slices(node)
    foreign = foreign_slices(node)

    async def untouched() -> None:
        if foreign_slices(node) != foreign:
            raise ChaosError(f"other slices were touched: {sorted(foreign - foreign_slices(node))}")

    await node.start("--sweep-interval", SWEEP_INTERVAL)
    await node.wait_published()
    await run_cases(node, chaos, model, chaos.count(20), untouched)
