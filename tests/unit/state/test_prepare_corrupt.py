"""Rebuilding a corrupt checkpoint is crash safe, and no content of the file can stop the plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

from driver import crash
from driver.state.checkpoint import CHECKPOINT_FILE, ClaimState
from tests.unit.state.test_prepare import GPU0, GPU1, Crash, Node, claim, crash_at, node, prepare

__all__ = ["crash_at", "node"]  # fixtures


def checkpoint(node: Node) -> Path:
    return node.root / "plugin" / CHECKPOINT_FILE


def test_a_crash_before_the_rebuilt_checkpoint_is_saved_loses_nothing(node: Node, crash_at: set[str]) -> None:
    prepare(node.preparer(), claim("a1", GPU0))
    checkpoint(node).write_text("garbage")
    crash_at.add("checkpoint:tmp-written")  # SIGKILL while writing the rebuilt checkpoint
    with pytest.raises(Crash):
        node.preparer().recover()
    crash_at.clear()

    restarted = node.preparer()
    restarted.recover()  # finds the corrupt file again, not "no checkpoint" (a fresh node)
    assert list(node.specs()) == ["a1"], "the prepared claim's CDI spec was deleted as an orphan"
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED}
    assert (
        "already prepared for claim default/claim-a1 (a1)"
        in prepare(restarted, claim("b1", GPU0))["b1"].error
    )


def test_a_failed_save_of_the_rebuilt_checkpoint_is_retried_by_the_next_operation(node: Node) -> None:
    prepare(node.preparer(), claim("a1", GPU0))
    checkpoint(node).write_text("garbage")
    failures = ["checkpoint:tmp-written"]

    def disk_full(step: str) -> None:
        if step in failures:
            failures.remove(step)
            raise OSError(28, "No space left on device")

    crash.set_crash_hook(disk_full)
    try:
        p = node.preparer()
        assert "No space left on device" in prepare(p, claim("b1", GPU1))["b1"].error
        assert not failures, "the rebuilt checkpoint was never written"
        assert list(node.specs()) == ["a1"]
        assert "already prepared for claim default/claim-a1" in prepare(p, claim("c1", GPU0))["c1"].error
    finally:
        crash.set_crash_hook(None)
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED}


async def test_a_checkpoint_without_canonical_form_is_rebuilt_not_a_crash_loop(node: Node) -> None:
    prepare(node.preparer(), claim("a1", GPU0))
    # Valid JSON for Python's parser, but NaN has no canonical form to checksum (a garbled byte range).
    checkpoint(node).write_bytes(
        checkpoint(node).read_bytes().replace(b'"adminAccess":false', b'"adminAccess":NaN')
    )
    await node.preparer().start()
    await node.preparer().start()  # and a second start is just as fine
    assert node.records() == {"a1": ClaimState.PREPARE_COMPLETED}
    assert (
        "already prepared for claim default/claim-a1"
        in prepare(node.preparer(), claim("b1", GPU0))["b1"].error
    )
