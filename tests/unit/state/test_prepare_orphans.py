"""Files of claims without checkpoint entry (orphans) on a running node: a claim with nothing but its CDI spec
and metadata files is recorded only after writing them, so an instance killed in between leaves them behind.
Every sweeper pass removes them under the node lock, never those of a prepare in flight."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from driver import crash
from driver.state import metadata
from driver.state.api import ClaimRef
from driver.state.checkpoint import ClaimState
from driver.state.sweeper import ClaimSweeper
from tests.unit.state.test_prepare import (
    GPU0,
    GPU1,
    ClaimGetter,
    Crash,
    Node,
    claim,
    crash_at,
    node,
    prepare,
    sharing,
    started,
)

__all__ = ["crash_at", "node"]  # fixtures


def metadata_dirs(node: Node) -> set[str]:
    root = node.root / "plugin" / metadata.SUBDIR
    return {p.name for p in root.iterdir()} if root.exists() else set()


@pytest.mark.parametrize("config", [None, sharing("Long")], ids=["spec-only", "time-sliced"])
async def test_a_running_instance_sweeps_what_a_killed_one_left(
    node: Node, crash_at: set[str], config: list[object] | None
) -> None:
    """Rolling update: the new instance has started; the old one is killed mid-prepare and never comes back.
    The new one's next sweeper pass removes the files, whether or not the claim was recorded as started."""
    new = started(node)
    old = node.preparer()
    crash_at.add("prepare:cdi-written")
    with pytest.raises(Crash):
        prepare(old, claim("x1", GPU0, config=config))
    crash_at.clear()
    assert set(node.specs()) == {"x1"}
    await ClaimSweeper(new, ClaimGetter({}), interval=600).sweep()
    assert node.specs() == {}
    assert node.records() == {}
    # The device is free again.
    assert prepare(new, claim("y1", GPU0))["y1"].error == ""


async def test_a_sweeper_pass_removes_orphan_metadata(node: Node, crash_at: set[str]) -> None:
    new = node.preparer(metadata=True)
    new.recover()
    crash_at.add("prepare:cdi-written")
    with pytest.raises(Crash):
        prepare(node.preparer(metadata=True), claim("x1", GPU0))
    crash_at.clear()
    assert metadata_dirs(node) == {"x1"}
    await ClaimSweeper(new, ClaimGetter({}), interval=600).sweep()
    assert metadata_dirs(node) == set()
    assert node.specs() == {}


class _Logged(logging.Handler):
    """Sets an event when a given message is logged (from any thread)."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.message:
            self.seen.set()


async def test_a_sweeper_pass_never_removes_the_spec_of_a_prepare_in_flight(
    node: Node, crash_at: set[str]
) -> None:
    """Another instance has written a spec-only claim's spec and not yet recorded it: it holds the node lock,
    so the pass waits for it and then finds the claim recorded."""
    sweeping = started(node)
    preparing = node.preparer()  # its own open of the lock file: what another process has
    waiting = _Logged("waiting for the node lock, which another process holds")
    lock_log = logging.getLogger("driver.state.lock")
    level = lock_log.level
    lock_log.addHandler(waiting)
    lock_log.setLevel(logging.INFO)
    sweeps: list[list[ClaimRef]] = []
    c = claim("x1", GPU1, name="kept")

    def sweep_in_another_thread() -> None:
        getter = ClaimGetter({("default", "kept"): c})
        sweeps.append(asyncio.run(ClaimSweeper(sweeping, getter, interval=600).sweep()))

    sweeper = threading.Thread(target=sweep_in_another_thread)

    def at_step(step: str) -> None:
        if step == "prepare:cdi-written":
            sweeper.start()
            assert waiting.seen.wait(30), "the sweeper pass did not wait for the node lock"

    crash.set_crash_hook(at_step)
    try:
        out = await preparing.lock.run(lambda: asyncio.to_thread(preparing.prepare_sync, [c]))
    finally:
        crash.set_crash_hook(None)
        lock_log.removeHandler(waiting)
        lock_log.setLevel(level)
        sweeper.join(30)
    assert out[0]["x1"].error == ""
    assert node.records() == {"x1": ClaimState.PREPARE_COMPLETED}
    assert set(node.specs()) == {"x1"}
    assert sweeps == [[]]  # the pass ran after the prepare and found the claim recorded and in use
