"""Checkpoint content that parses as JSON but cannot be checksummed is corrupt too, never an exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from driver.state.checkpoint import CHECKPOINT_FILE, CheckpointStore, LoadEvent

HEAD = b'{"kind":"AccelDraCheckpoint","version":2,"checksum":"x","data":'


@pytest.mark.parametrize(
    "content",
    [
        HEAD + b"NaN}",  # Python's json accepts NaN/Infinity, but they have no canonical form
        HEAD + b"-Infinity}",
        HEAD + b"1e999}",  # parses as inf
        HEAD + b'"\\ud800"}',  # a lone surrogate cannot be encoded as UTF-8
        HEAD + b'{"claims":{"a":{"devices":[{"adminAccess":NaN}]}}}}',
        b'{"kind":"AccelDraCheckpoint","version":2,"checksum":"\xff"}',
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the parser's recursion limit
    ],
    ids=["nan", "-inf", "1e999", "surrogate", "nested-nan", "bad-utf8", "deep"],
)
def test_undecodable_content_is_corrupt_and_kept(tmp_path: Path, content: bytes) -> None:
    (tmp_path / CHECKPOINT_FILE).write_bytes(content)
    cp, event = CheckpointStore(tmp_path, "boot-1").load()
    assert (event, dict(cp.claims)) == (LoadEvent.CORRUPT, {})
    (aside,) = tmp_path.glob(f"{CHECKPOINT_FILE}.corrupt-*")
    assert aside.read_bytes() == content
    assert aside.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == content, "replaced only by the rebuilt checkpoint"


def test_a_rebuilt_checkpoint_replaces_the_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_FILE).write_bytes(HEAD + b"NaN}")
    store = CheckpointStore(tmp_path, "boot-1")
    cp, _ = store.load()
    store.save(cp)
    assert CheckpointStore(tmp_path, "boot-1").load()[1] == LoadEvent.LOADED
    assert len(list(tmp_path.glob(f"{CHECKPOINT_FILE}.corrupt-*"))) == 1
