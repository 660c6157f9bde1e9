"""Who holds a GPU: finished pods and admin-access devices are not holders; DeviceClasses come from the claim."""

from __future__ import annotations

import asyncio
from typing import Any

from driver.exporter.holders import PENDING, ClaimFacts, ClaimIndex, claim_facts, holders
from driver.exporter.podresources import ClaimDevice, ContainerResources
from driver.kube.client import ApiError

DRIVER = "gpu.accel-dra.dev"


def claim(requests: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "c"},
        "spec": {"devices": {"requests": requests}},
        "status": {"allocation": {"devices": {"results": results}}},
    }


def result(request: str, device: str, **extra: Any) -> dict[str, Any]:
    return {"request": request, "driver": DRIVER, "pool": "node-1", "device": device, **extra}


def test_claim_facts_for_every_request_shape() -> None:
    facts = claim_facts(
        claim(
            [
                {"name": "gpu", "exactly": {"deviceClassName": "gpu.accel-dra.dev"}},
                {"name": "watch", "exactly": {"deviceClassName": "gpu.accel-dra.dev", "adminAccess": True}},
                {
                    "name": "any",
                    "firstAvailable": [
                        {"name": "big", "deviceClassName": "gpu.accel-dra.dev"},
                        {"name": "small", "deviceClassName": "mig.accel-dra.dev"},
                    ],
                },
                {"name": "old", "deviceClassName": "legacy.example.com"},  # the v1beta1 shape
            ],
            [
                result("gpu", "gpu-0"),
                result("watch", "gpu-1", adminAccess=True),
                result("any/small", "gpu-2-mig-1g-5gb-2"),
                result("old", "gpu-3"),
                result("watch", "gpu-4", adminAccess=False),  # the result says no: the result wins
            ],
        )
    )
    assert facts.admin == {(DRIVER, "node-1", "gpu-1")}
    assert dict(facts.device_class) == {
        (DRIVER, "node-1", "gpu-0"): "gpu.accel-dra.dev",
        (DRIVER, "node-1", "gpu-1"): "gpu.accel-dra.dev",
        (DRIVER, "node-1", "gpu-2-mig-1g-5gb-2"): "mig.accel-dra.dev",
        (DRIVER, "node-1", "gpu-3"): "legacy.example.com",
        (DRIVER, "node-1", "gpu-4"): "gpu.accel-dra.dev",
    }
    # The request asks for admin access and the result does not say: admin access.
    assert claim_facts(claim([{"name": "w", "exactly": {"adminAccess": True}}], [result("w", "g")])).admin
    assert claim_facts({"spec": "garbage", "status": {"allocation": []}}) == ClaimFacts()


def container(pod: str, *devices: str, plugin: tuple[tuple[str, str], ...] = ()) -> ContainerResources:
    return ContainerResources(
        "ns",
        pod,
        "main",
        device_ids=plugin,
        claim_devices=tuple(ClaimDevice("ns", f"{pod}-claim", DRIVER, "node-1", d) for d in devices),
    )


def test_finished_and_deleted_pods_hold_nothing() -> None:
    phases = {"run": "Running", "init": "Pending", "done": "Succeeded", "crashed": "Failed", "gone": "Gone"}
    allocations = [container(p, "gpu-0") for p in (*phases, "unknown")]
    kept = holders(allocations, lambda _ns, pod: phases.get(pod), lambda _ns, _name: None)
    assert [c.pod for c in kept] == ["run", "init", "unknown"]
    # Without a pod index nothing can be told: the kubelet's answer stands.
    assert holders(allocations, None, lambda _ns, _name: None) == allocations


def test_admin_access_devices_are_not_held_and_classes_are_filled_in() -> None:
    facts = ClaimFacts(
        admin=frozenset({(DRIVER, "node-1", "gpu-1")}),
        device_class={(DRIVER, "node-1", "gpu-0"): "gpu.accel-dra.dev"},
    )
    allocations = [
        container("a", "gpu-0", "gpu-1"),
        container("watcher", "gpu-1"),
        container("mixed", "gpu-1", plugin=(("nvidia.com/gpu", "GPU-x"),)),
    ]
    kept = holders(allocations, None, lambda _ns, _name: facts)
    assert [(c.pod, [(d.device, d.device_class) for d in c.claim_devices], c.device_ids) for c in kept] == [
        ("a", [("gpu-0", "gpu.accel-dra.dev")], ()),
        ("mixed", [], (("nvidia.com/gpu", "GPU-x"),)),
    ]


def test_a_claims_shares_of_a_gpu_shared_by_memory_reach_its_holders() -> None:
    facts = claim_facts(
        claim(
            [{"name": "gpu", "exactly": {"deviceClassName": "gpu.accel-dra.dev"}}],
            [
                result("gpu", "gpu-0", shareID="s-1", consumedCapacity={"memory": "8Gi"}),
                result("gpu", "gpu-0", shareID="s-2", consumedCapacity={"memory": "512Mi"}),
                result("gpu", "gpu-1", consumedCapacity={"memory": "80Gi"}),  # no share: the whole GPU
                result("gpu", "gpu-2", shareID="s-3", consumedCapacity={"memory": "lots"}),
            ],
        )
    )
    assert dict(facts.consumed_memory) == {(DRIVER, "node-1", "gpu-0"): (8 << 30) + (512 << 20)}
    (kept,) = holders([container("p", "gpu-0", "gpu-1")], None, lambda _ns, _name: facts)
    assert [(d.device, d.consumed_memory_bytes) for d in kept.claim_devices] == [
        ("gpu-0", (8 << 30) + (512 << 20)),
        ("gpu-1", None),
    ]


class Kube:
    def __init__(self, answers: dict[tuple[str, str], Any]) -> None:
        self.answers = answers
        self.gets: list[tuple[str, str]] = []

    async def get(self, rt: Any, name: str, namespace: str | None = None) -> Any:
        assert rt.plural == "resourceclaims" and namespace is not None
        self.gets.append((namespace, name))
        answer = self.answers[(namespace, name)]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def settle(index: ClaimIndex) -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_claims_are_fetched_once_while_held_and_failures_retried() -> None:
    admin = claim([{"name": "w", "exactly": {"adminAccess": True}}], [result("w", "gpu-1")])
    kube = Kube(
        {
            ("ns", "watch"): admin,
            ("ns", "deleted"): ApiError(404, "NotFound", "gone"),
            ("ns", "flaky"): ApiError(500, "InternalError", "try again"),
        }
    )
    errors: list[str] = []
    index = ClaimIndex(kube, errors.append)  # type: ignore[arg-type]
    keys = {("ns", "watch"), ("ns", "deleted"), ("ns", "flaky")}
    index.want(keys)
    assert index.facts("ns", "watch") == PENDING  # the round does not wait for the GET
    await settle(index)
    facts = index.facts("ns", "watch")
    assert facts is not None and facts.admin == {(DRIVER, "node-1", "gpu-1")}
    assert index.facts("ns", "deleted") == ClaimFacts()
    assert index.facts("ns", "flaky") is None and len(errors) == 1
    index.want(keys)
    assert index.facts("ns", "flaky") is None  # a retry after a failure is not pending: counted as held
    await settle(index)
    assert sorted(kube.gets) == sorted([*keys, ("ns", "flaky")])  # only the failed one again
    # A released claim is forgotten; one of the same name later is fetched anew.
    index.want({("ns", "deleted")})
    assert index.facts("ns", "watch") is None
    index.want(keys)
    await settle(index)
    assert kube.gets.count(("ns", "watch")) == 2
    await index.close()
