"""Crash churn: prepares and unprepares of random claims (some fighting over one GPU) while the plugin is
SIGKILLed at random moments and at named steps, restarted, and the kubelet retries -- as on a node whose
plugin is OOM-killed or whose container runtime restarts it.

After every case: the invariants of :mod:`tests.chaos.invariants`, and the checkpoint holds exactly the
claims the kubelet was told are prepared. The same churn runs on an A100 in dynamic MIG mode, where every
prepare creates an instance and every unprepare destroys one: crashes between those steps (``mig:*``) must
leave no instance that no prepared claim holds.
"""

from __future__ import annotations

import asyncio
import random
import signal

import grpc

from tests.chaos.conftest import Chaos
from tests.chaos.harness import Answer, ChaosError, ChaosNode, Claim
from tests.chaos.invariants import prepared

MAX_RESTARTS = 12


def crash_env(rng: random.Random, steps: tuple[str, ...]) -> str | None:
    """Half the restarts carry a named crash step (the n-th time it is reached)."""
    if rng.random() < 0.5:
        return None
    return f"{rng.choice(steps)}#{rng.randint(1, 3)}"


async def restart(node: ChaosNode, rng: random.Random) -> None:
    """Start the plugin until one instance serves; an instance may die at its crash step while starting."""
    for _ in range(MAX_RESTARTS):
        crash = crash_env(rng, node.machine.crash_steps)
        await node.start(crash_at=crash, wait=False)
        try:
            await node.wait_serving()
        except AssertionError:
            assert node.process is not None
            if node.process.output_ended:  # died while starting: its exit code comes right after
                await node.process.wait(timeout=20)
            if node.alive():
                raise
            if node.process.proc.returncode != -signal.SIGKILL:
                raise ChaosError(f"plugin exited {node.process.proc.returncode}\n{node.log_tail()}") from None
        else:
            node.check_started()
            return
    await node.start()
    node.check_started()


async def kill_after(node: ChaosNode, delay: float) -> None:
    """SIGKILL the plugin at a random moment inside the call (the channel stays open, as the kubelet's)."""
    await asyncio.sleep(delay)  # the randomness of the moment is the point
    assert node.process is not None
    await node.process.kill()


async def call_until_answered(node: ChaosNode, rng: random.Random, op: str, claims: list[Claim]) -> Answer:
    refs = [c.ref for c in claims]
    for attempt in range(MAX_RESTARTS):
        if not node.alive():
            await restart(node, rng)
        killer = None
        if attempt == 0 and rng.random() < 0.3:
            killer = asyncio.create_task(kill_after(node, rng.uniform(0.0, 0.06)))
        answer = await node.call(op, refs, check=killer is None)
        if killer is not None:
            await killer
        if answer.ok or answer.code == grpc.StatusCode.FAILED_PRECONDITION:
            return answer
        if node.alive() and killer is None:
            # Not killed: only a crash step may have cut the call short.
            assert node.process is not None
            await node.process.wait(timeout=20)
        await node.kill()
    raise ChaosError(f"{op} of {[c.name for c in claims]} never answered\n{node.log_tail()}")


def refused(error: str) -> bool:
    """A claim the plugin rightly refuses: its device -- or, dynamic MIG, its memory slices -- taken by
    another claim, or a MIG instance the GPU has no room for (engines, instance count: counters the
    scheduler would have kept apart, which claims of this test ignore)."""
    return "prepared for claim" in error or "Insufficient Resources" in error


async def test_crash_churn(node: ChaosNode, chaos: Chaos) -> None:
    await churn(node, chaos, chaos.count(40))


async def test_crash_churn_dynamic_mig(mig_node: ChaosNode, chaos: Chaos) -> None:
    await churn(mig_node, chaos, chaos.count(25))


async def churn(node: ChaosNode, chaos: Chaos, cases: int) -> None:
    rng = chaos.rng
    # A third with a time slice: their prepare records intent first, the others' only writes the spec.
    claims = await node.create_claims(rng, 10, time_sliced=0.3)
    model: set[str] = set()  # what the kubelet was told is prepared
    await node.start()
    await node.wait_published()
    for _ in range(cases):
        chaos.case()
        held = [c for c in claims if c.uid in model]
        if held and rng.random() < 0.45:
            op, picked = "unprepare", rng.sample(held, rng.randint(1, min(3, len(held))))
        else:
            op, picked = "prepare", rng.sample(claims, rng.randint(1, 3))
        answer = await call_until_answered(node, rng, op, picked)
        if op == "prepare":
            model |= set(answer.devices)
            for claim in picked:
                error = answer.errors.get(claim.uid, "")
                if error and not refused(error):
                    raise ChaosError(f"prepare of {claim} failed unexpectedly: {error}")
        else:
            if answer.errors:
                raise ChaosError(f"unprepare failed: {answer.errors}")
            model -= {c.uid for c in picked}
        node.check()
        if prepared(node.plugin_dir) != model:
            raise ChaosError(
                f"checkpoint holds {sorted(prepared(node.plugin_dir))}, the kubelet was told {sorted(model)}"
            )
    await node.wait_published()
    await node.stop()
