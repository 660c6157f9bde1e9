"""The cases of the API-fault chaos (tests/chaos/test_api_server_faults.py against the sim API server,
tests/realk8s/test_chaos.py against a real one): a broken API server (or what stands in front of it) while
the plugin publishes, prepares and sweeps -- malformed bodies, wrong content types, 404s without details,
409/429/5xx, slow answers, cut answers and watch streams, other objects, outages.

Every case arms random faults on random requests, does one thing the node does (prepare claims, unprepare,
have the kubelet wipe the slices, force-delete a claim's pod and the claim), and then, with the faults
over, requires within a bounded time: the plugin serving and its slices published, claims deleted from the
API swept, claims that still exist still prepared, and the node invariants.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from driver.kube.client import RESOURCE_CLAIMS, RESOURCE_SLICES
from tests.chaos.conftest import Chaos
from tests.chaos.harness import DRIVER, ChaosError, ChaosNode, Claim
from tests.chaos.invariants import prepared
from tests.support.faultproxy import ALL_FAULTS, WATCH, Fault

#: (method, path regex, watch) of the requests a fault can hit.
TARGETS: dict[str, tuple[str, str, bool | None]] = {
    "claim-get": ("GET", r"/resourceclaims/[^/]+$", False),
    "claim-status": ("PATCH", r"/resourceclaims/[^/]+/status$", False),
    "slice-list": ("GET", r"/resourceslices$", False),
    "slice-watch": ("GET", r"/resourceslices$", True),
    "slice-write": ("*", r"/resourceslices(/[^/]+)?$", False),
    "node-get": ("GET", r"/nodes/[^/]+$", False),  # the plugin gets its own Node only
    "node-watch": ("GET", r"/nodes$", True),
    "version": ("GET", r"^/version$", False),
    "anything": ("*", "", None),
}
SWEEP_INTERVAL = "1"


@dataclass
class Model:
    claims: list[Claim]
    prepared: set[str]
    deleted: set[str]


def arm(node: ChaosNode, rng: random.Random, targets: tuple[str, ...]) -> list[Fault]:
    assert node.proxy is not None
    faults = []
    for _ in range(rng.randint(1, 3)):
        target = rng.choice(targets)
        method, path, watch = TARGETS[target]
        kind = rng.choice(WATCH) if watch else rng.choice(ALL_FAULTS)
        delay = rng.uniform(0.05, 2.0) if kind == "slow" else 0.0
        fault = Fault(kind, path, method=method, remaining=rng.randint(1, 2), watch=watch, delay=delay)
        faults.append(node.proxy.add(fault))
    return faults


async def prepare_some(node: ChaosNode, rng: random.Random, model: Model) -> None:
    live = [c for c in model.claims if c.uid not in model.deleted]
    picked = rng.sample(live, rng.randint(1, min(3, len(live))))
    answer = await node.call("prepare", [c.ref for c in picked])
    if answer.ok:
        model.prepared |= set(answer.devices)
        for claim in picked:
            error = answer.errors.get(claim.uid, "")
            # A claim's status PATCH or a slow answer never fails a claim; a conflict is the only reason.
            if error and "already prepared for claim" not in error:
                raise ChaosError(f"prepare of {claim} failed: {error}")
    elif answer.code != grpc.StatusCode.FAILED_PRECONDITION:
        raise ChaosError(f"prepare: {answer.code.name}: {answer.details}")


async def unprepare_some(node: ChaosNode, rng: random.Random, model: Model) -> None:
    held = [c for c in model.claims if c.uid in model.prepared]
    if not held:
        return
    picked = rng.sample(held, rng.randint(1, min(2, len(held))))
    answer = await node.call("unprepare", [c.ref for c in picked])
    if not answer.ok or answer.errors:
        raise ChaosError(f"unprepare needs no API call, yet failed: {answer}")
    model.prepared -= {c.uid for c in picked}


async def wipe_slices(node: ChaosNode, rng: random.Random, model: Model) -> None:
    await node.kube.delete_collection(
        RESOURCE_SLICES, field_selector=f"spec.nodeName={node.node},spec.driver={DRIVER}"
    )


async def delete_claim(node: ChaosNode, rng: random.Random, model: Model) -> None:
    """A force-deleted pod: the kubelet never unprepares; the claim goes. The sweeper must clean up."""
    held = [c for c in model.claims if c.uid in model.prepared and c.uid not in model.deleted]
    if not held:
        return
    claim = rng.choice(held)
    await node.kube.delete(RESOURCE_CLAIMS, claim.name, claim.namespace)
    model.deleted.add(claim.uid)


async def restart(node: ChaosNode, rng: random.Random, model: Model) -> None:
    """The plugin restarts (upgrade, OOM kill) while the API server misbehaves: it must start and serve."""
    if rng.random() < 0.5:
        await node.stop()
    else:
        await node.kill()
    await node.start("--sweep-interval", SWEEP_INTERVAL)


async def outage(node: ChaosNode, rng: random.Random, model: Model) -> None:
    assert node.proxy is not None
    node.proxy.outage = True
    try:
        await prepare_some(node, rng, model)
        await asyncio.sleep(rng.uniform(0.1, 1.5))  # how long the API server stays away
    finally:
        node.proxy.outage = False


SWEEPER = ("claim-get", "anything")
PUBLISHER = ("slice-list", "slice-watch", "slice-write", "node-get", "anything")
#: What a case does, and the requests it makes the plugin send (a fault elsewhere would not be hit).
ACTIONS: tuple[tuple[Callable[[ChaosNode, random.Random, Model], Awaitable[None]], tuple[str, ...]], ...] = (
    (prepare_some, ("claim-get", "claim-status", *SWEEPER)),
    (unprepare_some, SWEEPER),
    (wipe_slices, PUBLISHER),
    (delete_claim, SWEEPER),
    (restart, tuple(TARGETS)),
    (outage, ("anything",)),
)
#: How long armed faults stay armed after the action, at most (they are cleared once all were hit).
EXPOSURE_S = 1.5


async def exposed(node: ChaosNode, faults: list[Fault]) -> None:
    """Leave the faults armed until each was hit as often as armed, or the exposure time is over."""
    assert node.proxy is not None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(EXPOSURE_S):
            for fault in faults:
                await node.proxy.wait_hit(fault, fault.hits + (fault.remaining or 0), timeout=EXPOSURE_S)


async def settle(node: ChaosNode, model: Model, untouched: Callable[[], Awaitable[None]]) -> None:
    """With the faults over: the plugin serves and has published its slices, claims that are gone are
    swept, the others stay prepared, other slices were not touched (``untouched`` raises otherwise), and
    the node's files hold together."""
    assert node.proxy is not None
    node.proxy.clear()
    await node.wait_published()
    await node.wait_serving()
    gone = model.deleted & model.prepared
    await node.wait_logged(lambda: not prepared(node.plugin_dir) & gone, f"sweeping {sorted(gone)}")
    model.prepared -= gone
    await untouched()
    node.check()
    held = prepared(node.plugin_dir)
    if held != model.prepared:
        raise ChaosError(f"checkpoint holds {sorted(held)}, the kubelet was told {sorted(model.prepared)}")


async def run_cases(
    node: ChaosNode, chaos: Chaos, model: Model, cases: int, untouched: Callable[[], Awaitable[None]]
) -> None:
    """``cases`` random cases on a started, published node; then the plugin must have logged no
    unexpected error and stop cleanly."""
    rng = chaos.rng
    for _ in range(cases):
        chaos.case()
        action, targets = rng.choice(ACTIONS)
        faults = arm(node, rng, targets)
        await action(node, rng, model)
        await exposed(node, faults)
        await settle(node, model, untouched)
        if len([c for c in model.claims if c.uid not in model.deleted]) < 4:
            model.claims += await node.create_claims(rng, 3, prefix="more")
    assert node.proxy is not None
    injected = sum(n for kind, n in node.proxy.answered.items() if kind)
    print(f"faults answered: {dict(node.proxy.answered)}; swept: {len(model.deleted)}")
    if not injected:
        raise ChaosError("no fault was ever hit: the case mix is broken")
    if node.tracebacks():
        raise ChaosError(
            "unexpected errors logged:\n" + "\n".join(node.tracebacks()) + "\n" + node.log_tail(80)
        )
    await node.stop()
