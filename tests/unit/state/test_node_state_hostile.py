"""Node state on a node where things went wrong outside the plugin: files deleted, replaced by directories,
FIFOs or links, values of the wrong type, and very large calls. Nothing may hand a device to two claims,
block start-up, or stop the plugin."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from driver import crash
from driver.state.checkpoint import CHECKPOINT_FILE, CheckpointStore, ClaimState, LoadEvent, checksum
from driver.state.lock import LOCK_FILE_NAME
from tests.unit.state.test_prepare import (
    DRIVER,
    GPU0,
    GPU1,
    Node,
    claim,
    node,
    prepare,
    ref,
    sharing,
    started,
)

__all__ = ["node"]  # fixture


def checkpoint(node: Node) -> Path:
    return node.root / "plugin" / CHECKPOINT_FILE


def spec_file(node: Node, uid: str) -> Path:
    return node.root / "cdi" / f"k8s.{DRIVER}-gpu_{uid}.json"


def assert_guarded(node: Node, holder: str) -> None:
    """``holder`` still holds GPU0: a second claim for it is refused."""
    error = prepare(node.preparer(), claim("intruder", GPU0))["intruder"].error
    assert f"already prepared for claim default/claim-{holder} ({holder})" in error, error
    assert set(node.specs()) == {holder}


def finishes(action: Callable[[], object], unblock: Path | None = None, timeout: float = 20.0) -> None:
    """Run ``action`` in a thread; it must finish (a read of a FIFO without writer never does). ``unblock``
    is a FIFO opened for writing afterwards, so a thread stuck on it can end."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    blocked = thread.is_alive()
    if blocked and unblock is not None:
        fd = os.open(unblock, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(timeout)
    assert not blocked, "blocked (reading a FIFO?)"
    if errors:
        raise errors[0]


# -- a missing checkpoint is not a fresh node ------------------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "dangling-link"])
def test_a_missing_checkpoint_is_rebuilt_from_the_specs(node: Node, how: str) -> None:
    prepare(node.preparer(), claim("a1", GPU0))
    checkpoint(node).unlink()
    if how == "dangling-link":
        checkpoint(node).symlink_to(node.root / "nowhere")
    node.preparer().recover()
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED}
    assert_guarded(node, "a1")


def test_without_specs_a_missing_checkpoint_is_a_fresh_node(node: Node) -> None:
    p = node.preparer()
    p.recover()
    # The start writes the fresh node's empty checkpoint: a spec a crash leaves before the first prepare
    # completes is then an orphan the next start removes, not the trace of a lost checkpoint.
    assert node.records() == {}
    assert checkpoint(node).exists()
    assert prepare(p, claim("a1", GPU0))["a1"].error == ""


# -- junk where state files belong ------------------------------------------------------------------------


def test_a_directory_named_like_a_spec_is_moved_aside(node: Node) -> None:
    prepare(node.preparer(), claim("a1", GPU0))
    junk = spec_file(node, "junk")
    junk.mkdir()
    finishes(node.preparer().recover)
    assert not junk.exists()
    assert [p.name for p in (node.root / "cdi").glob(f"{junk.name}.aside-*")]
    assert_guarded(node, "a1")
    # A claim with that UID can be prepared and unprepared.
    p = node.preparer()
    assert prepare(p, claim("junk", GPU1))["junk"].error == ""
    assert p.unprepare_sync([ref(claim("junk"))]) == {"junk": ""}


def test_a_directory_at_a_claims_spec_path_does_not_fail_unprepare(node: Node) -> None:
    p = node.preparer()
    prepare(p, claim("a1", GPU0))
    spec_file(node, "a1").unlink()
    spec_file(node, "a1").mkdir()
    assert p.unprepare_sync([ref(claim("a1"))]) == {"a1": ""}
    assert node.records() == {}


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink-to-valid-copy"])
def test_a_checkpoint_that_is_not_a_regular_file_is_set_aside_and_rebuilt(node: Node, kind: str) -> None:
    prepare(node.preparer(), claim("a1", GPU0))
    path = checkpoint(node)
    copy = node.root / "copy.json"
    copy.write_bytes(path.read_bytes())
    path.unlink()
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(copy)
    finishes(node.preparer().recover, unblock=path if kind == "fifo" else None)
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED}
    assert path.is_file() and not path.is_symlink()
    assert list(path.parent.glob(f"{CHECKPOINT_FILE}.corrupt-*"))
    assert_guarded(node, "a1")


def test_a_fifo_spec_with_a_corrupt_checkpoint_does_not_block(node: Node) -> None:
    prepare(node.preparer(), claim("a1", GPU0))
    fifo = spec_file(node, "fifo")
    os.mkfifo(fifo)
    checkpoint(node).write_text("garbage")
    finishes(node.preparer().recover, unblock=fifo)
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED}
    assert_guarded(node, "a1")


@pytest.mark.parametrize("kind", ["directory", "fifo", "dangling-link"])
def test_a_lock_file_that_is_not_a_regular_file_is_set_aside(node: Node, kind: str) -> None:
    lock = node.root / LOCK_FILE_NAME
    if kind == "directory":
        lock.mkdir()
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.symlink_to(node.root / "nowhere")
    p = node.preparer()

    async def start() -> None:
        await p.start()
        assert (await p.prepare([claim("a1", GPU0)]))["a1"].error == ""

    finishes(lambda: asyncio.run(start()))
    assert lock.is_file() and not lock.is_symlink()
    assert list(node.root.glob(f"{LOCK_FILE_NAME}.aside-*"))


def test_a_directory_named_like_a_temporary_does_not_stop_start_up(node: Node) -> None:
    (node.root / "cdi").mkdir()
    (node.root / "cdi" / f".k8s.{DRIVER}-gpu_x.json.1-ab.tmp").mkdir()
    (node.root / "plugin").mkdir()
    (node.root / "plugin" / f".{CHECKPOINT_FILE}.1-ab.tmp").mkdir()
    node.preparer().recover()


def test_a_checkpoint_open_to_other_users_is_restricted(node: Node) -> None:
    prepare(node.preparer(), claim("a1", GPU0))
    checkpoint(node).chmod(0o666)
    node.preparer().recover()
    assert checkpoint(node).stat().st_mode & 0o777 == 0o600


# -- strict decoding ----------------------------------------------------------------------------------------


def rewrite(node: Node, change: Callable[[dict[str, object]], None]) -> None:
    """Change the checkpoint and give it a valid checksum, as a buggy or older writer might have."""
    document = json.loads(checkpoint(node).read_text())
    change(document)
    document["checksum"] = checksum(document)
    checkpoint(node).write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("field", "value"),
    [("adminAccess", "false"), ("adminAccess", 0), ("sharingApplied", "no"), ("shareID", 7)],
)
def test_a_value_of_the_wrong_type_is_corruption_not_a_guess(node: Node, field: str, value: object) -> None:
    prepare(node.preparer(), claim("a1", GPU0))

    def set_field(document: dict[str, object]) -> None:
        device = document["data"]["claims"]["a1"]["devices"][0]  # type: ignore[index]
        device[field] = value

    rewrite(node, set_field)
    assert CheckpointStore(node.root / "plugin", node.boot_id).load()[1] == LoadEvent.CORRUPT
    assert_guarded(node, "a1")  # rebuilt from the spec: a1 holds GPU0, without admin access


def test_an_allocation_whose_admin_access_is_not_a_boolean_is_refused(node: Node) -> None:
    p = node.preparer()
    prepare(p, claim("a1", GPU0))
    liar = claim("b1", GPU0)
    liar["status"]["allocation"]["devices"]["results"][0]["adminAccess"] = "false"
    error = prepare(p, liar)["b1"].error
    assert "results[0].adminAccess: expected bool, got str" in error
    assert set(node.specs()) == {"a1"}


# -- large calls --------------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint_writes() -> Iterator[list[str]]:
    writes: list[str] = []

    def count(step: str) -> None:
        if step == "checkpoint:tmp-written":
            writes.append(step)

    crash.set_crash_hook(count)
    yield writes
    crash.set_crash_hook(None)


@pytest.mark.parametrize(
    ("config", "writes"),
    [
        # Only CDI specs to write: PrepareCompleted for all, once.
        (None, 1),
        # A time slice to set on every GPU: PrepareStarted for all, then PrepareCompleted for all.
        (sharing("Long"), 2),
    ],
)
def test_one_checkpoint_write_per_phase_however_many_claims(
    node: Node, checkpoint_writes: list[str], config: list[Any] | None, writes: int
) -> None:
    claims = [claim(f"c{i:04d}", (GPU0, GPU1)[i % 2], admin=True, config=config) for i in range(300)]
    p = started(node)
    checkpoint_writes.clear()  # the start's own write of a fresh node's empty checkpoint
    results, _ = p.prepare_sync(claims)
    assert [uid for uid, r in results.items() if r.error] == []
    assert len(checkpoint_writes) == writes
    assert len(node.specs()) == 300
    checkpoint_writes.clear()
    errors = p.unprepare_sync([ref(c) for c in claims])
    assert set(errors.values()) == {""}
    assert len(checkpoint_writes) == 1
    assert node.records() == {} and node.specs() == {}


def test_claims_of_one_call_never_share_a_device(node: Node) -> None:
    out = prepare(node.preparer(), claim("a1", GPU0), claim("b1", GPU1, GPU0), claim("c1", GPU1))
    assert out["a1"].error == ""
    assert "already prepared for claim default/claim-a1 (a1)" in out["b1"].error
    assert out["c1"].error == ""
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED, "c1": ClaimState.PREPARE_COMPLETED}


def test_a_full_disk_fails_each_claim_by_name_and_leaves_nothing_half_done(node: Node) -> None:
    p = node.preparer()
    prepare(p, claim("a1", GPU0))

    def disk_full(step: str) -> None:
        if step == "cdi:tmp-written":
            raise OSError(28, "No space left on device")

    crash.set_crash_hook(disk_full)
    try:
        out = prepare(p, claim("b1", GPU1), claim("a1", GPU0))
    finally:
        crash.set_crash_hook(None)
    assert out["b1"].error.startswith("claim default/claim-b1 (b1): prepare failed: ")
    assert "No space left on device" in out["b1"].error
    assert out["a1"].error == ""  # already prepared: answered again
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED}
    assert set(node.specs()) == {"a1"}
