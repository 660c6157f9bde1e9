"""A full disk under the plugin directory and the CDI directory (a small tmpfs, filled up to a random last
few pages): every claim gets a clean error naming it or succeeds, nothing is half written, a restart on a
full disk (even with a corrupt checkpoint) still serves and publishes, and once space is back the kubelet's
retries converge.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from driver.kube.client import KubeClient
from driver.sim.apiserver import SimApiServer
from driver.state.checkpoint import CHECKPOINT_FILE
from tests.chaos.conftest import Chaos
from tests.chaos.harness import ChaosError, ChaosNode, Claim
from tests.chaos.invariants import node_problems, prepared

PAGE = 4096
SIZE = 1024 * 1024
ENOSPC = "No space left on device"
#: Sweeps (which load the checkpoint, and rebuild it when it is corrupt) every second.
SWEEPING = ("--sweep-interval", "1")


def unverified(node: ChaosNode) -> bool:
    return any("does not verify" in p for p in node_problems(node.plugin_dir, node.cdi, "gpu.accel-dra.dev"))


@pytest.fixture
def small_disk(node_root: Path) -> Iterator[Path]:
    mount = node_root / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            f"disk-full cases need to mount a small tmpfs, which is not permitted here: {done.stderr.strip()}"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def fill(disk: Path, rng: random.Random) -> Path:
    """Leave 0-3 free pages on ``disk``; return the filler file."""
    filler = disk / "filler"
    free = os.statvfs(disk)
    left = rng.randint(0, 3) * PAGE
    size = max(0, free.f_bavail * free.f_frsize - left)
    with open(filler, "ab") as out, contextlib.suppress(OSError):
        out.write(b"\0" * size)
    return filler


def check_full(node: ChaosNode) -> None:
    """On a full disk an unprepare may stop after removing a spec, and a corrupt checkpoint cannot be
    replaced by its rebuilt form (the plugin rebuilds it in memory at every operation, from the specs):
    the rules that must hold are those on the specs, which are what containers get."""
    problems = node_problems(node.plugin_dir, node.cdi, "gpu.accel-dra.dev", settled=False)
    unverified = any("does not verify" in p for p in problems)
    problems = [
        p
        for p in problems
        if "is missing" not in p and not (unverified and ("does not verify" in p or "leaked" in p))
    ]
    if problems:
        raise ChaosError(
            "node state broken on a full disk:\n  " + "\n  ".join(problems) + "\n" + node.log_tail()
        )


async def test_disk_full(small_disk: Path, apiserver: SimApiServer, kube: KubeClient, chaos: Chaos) -> None:
    rng = chaos.rng
    node = ChaosNode(small_disk / "node", apiserver, kube, None)
    await node.register_node()
    try:
        claims = await node.create_claims(rng, 8)
        await node.start(*SWEEPING)
        model: set[str] = set()
        for _ in range(chaos.count(10)):
            chaos.case()
            filler = fill(small_disk, rng)
            pending: list[tuple[str, Claim]] = []
            for _ in range(rng.randint(1, 3)):
                await full_disk_step(node, rng, claims, model, pending)
                check_full(node)
            filler.unlink()
            # Space is back: the next sweep rewrites a checkpoint it could not replace, and the kubelet's
            # retries converge.
            await node.wait_logged(lambda: not unverified(node), "the checkpoint repaired with space back")
            for op, claim in pending:
                answer = await node.call(op, [claim.ref])
                if answer.errors.get(claim.uid, "") and "already prepared" not in answer.errors[claim.uid]:
                    raise ChaosError(f"{op} of {claim} still fails with space back: {answer.errors}")
                if op == "prepare":
                    model |= set(answer.devices)
                else:
                    model.discard(claim.uid)
            await node.wait_published()
            node.check()
            if prepared(node.plugin_dir) != model:
                raise ChaosError(f"checkpoint {sorted(prepared(node.plugin_dir))} != told {sorted(model)}")
        await node.stop()
    finally:
        await node.kill()


async def full_disk_step(
    node: ChaosNode,
    rng: random.Random,
    claims: list[Claim],
    model: set[str],
    pending: list[tuple[str, Claim]],
) -> None:
    what = rng.choice(["prepare", "prepare", "unprepare", "restart", "restart-corrupt"])
    if what.startswith("restart"):
        await node.kill()
        if what == "restart-corrupt":
            path = node.plugin_dir / CHECKPOINT_FILE
            if path.exists():
                path.write_bytes(path.read_bytes()[:10])  # shrinks: fits on a full disk
        await node.start(*SWEEPING)  # must serve even when recovery cannot write
        return
    held = [c for c in claims if c.uid in model]
    if what == "unprepare" and held:
        claim = rng.choice(held)
        answer = await node.call("unprepare", [claim.ref])
        error = answer.errors.get(claim.uid, "")
        if error and ENOSPC not in error:
            raise ChaosError(f"unprepare of {claim} failed, not for space: {error}")
        if error:
            pending.append(("unprepare", claim))
        else:
            model.discard(claim.uid)
        return
    picked = rng.sample(claims, rng.randint(1, 3))
    answer = await node.call("prepare", [c.ref for c in picked])
    if answer.code != grpc.StatusCode.OK:
        raise ChaosError(f"prepare: {answer.code.name}: {answer.details}")
    model |= set(answer.devices)
    for claim in picked:
        error = answer.errors.get(claim.uid, "")
        if error and "already prepared" not in error and ENOSPC not in error:
            raise ChaosError(f"prepare of {claim} failed, not for space: {error}")
        if error and ENOSPC in error:
            pending.append(("prepare", claim))
