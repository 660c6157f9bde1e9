"""Files of claims without checkpoint entry (orphans) on a running node: a claim with nothing but its CDI spec
and metadata files is recorded only after writing them, so an instance killed in between leaves them behind.
Every sweeper pass removes them under the node lock, never those of a prepare in flight."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading

import pytest

from driver import crash
from driver.state import metadata
from driver.state.api import ClaimRef
from driver.state.checkpoint import CHECKPOINT_FILE, ClaimState, canonical_json, checksum
from driver.state.prepare import NodePreparer
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


@pytest.mark.parametrize("step", ["cdi:tmp-written", "checkpoint:tmp-written"])
async def test_a_sweeper_pass_removes_the_temporaries_of_a_killed_instance(
    node: Node, crash_at: set[str], step: str
) -> None:
    new = started(node)
    crash_at.add(step)
    with pytest.raises(Crash):
        prepare(node.preparer(), claim("x1", GPU0))
    crash_at.clear()

    def leftovers() -> list[str]:
        return [p.name for d in (node.root / "cdi", node.root / "plugin") for p in d.glob(".*.tmp")]

    assert len(leftovers()) == 1
    await ClaimSweeper(new, ClaimGetter({}), interval=600).sweep()
    assert leftovers() == []
    assert node.specs() == {}


def running_beside_a_killed_instance(node: Node, crash_at: set[str]) -> NodePreparer:
    """A started instance (with metadata files); another one is then killed after writing ``x1``'s spec and
    metadata and before recording the claim."""
    running = node.preparer(metadata=True)
    running.recover()
    crash_at.add("prepare:cdi-written")
    with pytest.raises(Crash):
        prepare(node.preparer(metadata=True), claim("x1", GPU0))
    crash_at.clear()
    assert set(node.specs()) == {"x1"} and metadata_dirs(node) == {"x1"}
    return running


async def test_a_sweeper_pass_removes_orphan_metadata(node: Node, crash_at: set[str]) -> None:
    new = running_beside_a_killed_instance(node, crash_at)
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


def full_disk(*_: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def io_error(*_: object) -> list[str]:
    raise OSError(errno.EIO, "Input/output error")


def orphan_of_a_crash(node: Node, crash_at: set[str]) -> None:
    """A spec-only claim killed after its spec: ``x1``'s spec without checkpoint entry."""
    crash_at.add("prepare:cdi-written")
    with pytest.raises(Crash):
        prepare(started(node), claim("x1", GPU0))
    crash_at.clear()
    assert set(node.specs()) == {"x1"}


def v1_checkpoint(node: Node) -> None:
    """The checkpoint as the first checkpoint version wrote it: loading it migrates it, and saves."""
    doc: dict[str, object] = {"kind": "AccelDraCheckpoint", "version": 1}
    doc["data"] = {"bootID": node.boot_id, "claims": []}
    doc["checksum"] = checksum(doc)
    (node.root / "plugin" / CHECKPOINT_FILE).write_bytes(canonical_json(doc))


@pytest.mark.parametrize("then", ["prepare", "unprepare", "sweep"])
async def test_a_start_up_recovery_that_failed_part_way_is_finished_by_the_next_operation(
    node: Node,
    crash_at: set[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    then: str,
) -> None:
    """An upgrade on a full disk: the migrated checkpoint cannot be saved at start, so the start stops before
    removing the orphan. The next node-locked operation runs the recovery again, and it completes."""
    orphan_of_a_crash(node, crash_at)
    v1_checkpoint(node)
    p = node.preparer()
    with monkeypatch.context() as patch:
        patch.setattr(p.store, "save", full_disk)
        with caplog.at_level(logging.ERROR, "driver.state.prepare"):
            p.recover()
    assert (
        "node state recovery incomplete; the next prepare, unprepare or claim sweep retries it" in caplog.text
    )
    assert set(node.specs()) == {"x1"}
    if then == "prepare":
        assert prepare(p, claim("y1", GPU1))["y1"].error == ""
    elif then == "unprepare":
        assert p.unprepare_sync([ClaimRef("default", "z1", "claim-z1")]) == {"z1": ""}
    else:
        await ClaimSweeper(p, ClaimGetter({}), interval=600).sweep()
    assert "x1" not in node.specs()
    assert "x1" not in node.records()


def test_the_recovery_is_retried_until_it_completes_and_then_no_more(
    node: Node, crash_at: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    orphan_of_a_crash(node, crash_at)
    p = node.preparer()
    listed: list[int] = []

    def failing_twice() -> list[str]:
        listed.append(1)
        if len(listed) <= 2:
            io_error()
        return []

    monkeypatch.setattr(p.specs, "remove_temporaries", failing_twice)
    p.recover()  # the start: fails
    assert prepare(p, claim("y1", GPU1))["y1"].error == ""  # the retry fails too; the prepare does not
    assert set(node.specs()) == {"x1", "y1"}
    assert p.unprepare_sync([ClaimRef("default", "y1", "claim-y1")]) == {"y1": ""}  # this retry completes
    assert node.specs() == {}
    assert prepare(p, claim("y2", GPU1))["y2"].error == ""
    assert len(listed) == 3  # nothing more to retry


def test_a_spec_removed_by_a_process_without_the_lock_fails_the_claim(node: Node) -> None:
    """The lock file was deleted while this instance held it: another instance locks a new file and its
    start-up removes this call's spec (no entry yet) as an orphan. The claim fails (the kubelet retries)
    instead of being answered prepared without its spec."""
    preparing = started(node)
    starting = node.preparer()

    def at_step(step: str) -> None:
        if step == "prepare:cdi-written":
            starting.recover()

    crash.set_crash_hook(at_step)
    try:
        out = prepare(preparing, claim("x1", GPU0))
    finally:
        crash.set_crash_hook(None)
    assert (
        "its CDI spec" in out["x1"].error and "was removed before the claim was recorded" in out["x1"].error
    )
    assert node.records() == {}
    assert node.specs() == {}
    # The kubelet's retry prepares it.
    assert prepare(preparing, claim("x1", GPU0))["x1"].error == ""
    assert set(node.specs()) == {"x1"}


@pytest.mark.parametrize("config", [None, sharing("Long")], ids=["spec-only", "time-sliced"])
def test_a_failed_final_checkpoint_save_leaves_no_file_of_the_claim(
    node: Node, monkeypatch: pytest.MonkeyPatch, config: list[object] | None
) -> None:
    """The save that records the claims prepared fails (a full disk): their files are removed again and no
    entry is left, so nothing remains for a later start or sweep to find."""
    p = node.preparer(metadata=True)
    p.recover()
    save, saves = p.store.save, []

    def final_save_fails(cp: object) -> None:
        saves.append(cp)
        if any(r.completed for r in cp.claims.values()):  # type: ignore[attr-defined]
            full_disk()
        save(cp)  # type: ignore[arg-type]

    monkeypatch.setattr(p.store, "save", final_save_fails)
    out = prepare(p, claim("x1", GPU0, config=config))
    assert "prepare failed: checkpoint not written: [Errno 28] No space left on device" in out["x1"].error
    assert node.specs() == {}
    assert metadata_dirs(node) == set()
    assert node.records() == {}
    assert node.slicer.calls[-1:] == ([(GPU0, "Default")] if config else [])


def test_unprepare_of_a_claim_without_entry_removes_its_spec_and_metadata(
    node: Node, crash_at: set[str]
) -> None:
    """The kubelet unprepares a claim an instance was killed preparing: its files are the only trace."""
    p = running_beside_a_killed_instance(node, crash_at)
    assert p.unprepare_sync([ClaimRef("default", "x1", "claim-x1")]) == {"x1": ""}
    assert node.specs() == {}
    assert metadata_dirs(node) == set()
