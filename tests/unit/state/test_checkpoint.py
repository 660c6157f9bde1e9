"""The checkpoint file: atomic writes, checksums, corruption, versions and reboots -- on real files."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from driver.state.checkpoint import (
    CHECKPOINT_FILE,
    CURRENT_VERSION,
    KEEP_CORRUPT,
    Checkpoint,
    CheckpointStore,
    ClaimRecord,
    ClaimState,
    DeviceRecord,
    LoadEvent,
    canonical_json,
    checksum,
    decode,
    encode,
    read_boot_id,
    to_document,
)
from tests.unit.state.test_prepare import Crash, crash_at

__all__ = ["crash_at"]  # a fixture


def record(
    uid: str, device: str = "gpu-0000-01-00-0", state: ClaimState = ClaimState.PREPARE_COMPLETED
) -> ClaimRecord:
    return ClaimRecord(
        uid=uid,
        namespace="default",
        name=f"claim-{uid}",
        state=state,
        devices=(
            DeviceRecord(
                request="gpu",
                pool="node-1",
                device=device,
                uuid="GPU-1",
                cdi_ids=(f"k8s.gpu.accel-dra.dev/gpu={uid}-{device}",),
                sharing="TimeSlicing:Short",
            ),
        ),
        config_digest="sha256:abc",
    )


def saved(tmp_path: Path, *records: ClaimRecord, boot: str = "boot-1") -> CheckpointStore:
    store = CheckpointStore(tmp_path, boot)
    cp = store.empty()
    for r in records:
        cp = cp.with_claim(r)
    store.save(cp)
    return store


def raw(tmp_path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((tmp_path / CHECKPOINT_FILE).read_text())
    return document


def write_raw(tmp_path: Path, document: dict[str, Any], *, seal: bool = True) -> None:
    if seal:
        document["checksum"] = checksum(document)
    (tmp_path / CHECKPOINT_FILE).write_text(json.dumps(document))


def test_round_trip_through_a_fresh_store(tmp_path: Path) -> None:
    saved(tmp_path, record("a"), record("b", "gpu-0000-41-00-0", ClaimState.PREPARE_STARTED))
    cp, event = CheckpointStore(tmp_path, "boot-1").load()
    assert event == LoadEvent.LOADED
    assert cp.claims == {
        "a": record("a"),
        "b": record("b", "gpu-0000-41-00-0", ClaimState.PREPARE_STARTED),
    }
    assert cp.boot_id == "boot-1"
    document = raw(tmp_path)
    assert (document["kind"], document["version"]) == ("AccelDraCheckpoint", CURRENT_VERSION)
    assert document["data"]["claims"]["a"]["state"] == "PrepareCompleted"
    assert document["data"]["claims"]["a"]["uid"] == "a"
    assert stat.S_IMODE(os.stat(tmp_path / CHECKPOINT_FILE).st_mode) == 0o600


def test_missing_file_is_an_empty_checkpoint(tmp_path: Path) -> None:
    cp, event = CheckpointStore(tmp_path / "nowhere", "boot-1").load()
    assert (event, dict(cp.claims), cp.boot_id) == (LoadEvent.MISSING, {}, "boot-1")


def test_a_crash_before_the_rename_keeps_the_old_content(tmp_path: Path, crash_at: set[str]) -> None:
    store = saved(tmp_path, record("a"))
    crash_at.add("checkpoint:tmp-written")
    with pytest.raises(Crash):
        store.save(store.empty().with_claim(record("b")))
    # The new content was complete on disk (in the temporary file), but the checkpoint is the old one.
    temporaries = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(temporaries) == 1
    assert set(CheckpointStore(tmp_path, "boot-1").load()[0].claims) == {"a"}


def test_the_checksum_ignores_formatting(tmp_path: Path) -> None:
    saved(tmp_path, record("a"))
    document = raw(tmp_path)
    # Another writer (or a person with an editor) may format differently and order keys otherwise.
    reordered = dict(reversed(list(document.items())))
    (tmp_path / CHECKPOINT_FILE).write_text(json.dumps(reordered, indent=7))
    cp, event = CheckpointStore(tmp_path, "boot-1").load()
    assert event == LoadEvent.LOADED
    assert set(cp.claims) == {"a"}


@pytest.mark.parametrize(
    "extra_top",
    [{}, {"writtenBy": "accel-dra 9.0"}, {"annotations": {"x": "y"}}, {"checkpointNote": "sorts before"}],
)
def test_the_file_is_the_canonical_form_of_the_document(extra_top: dict[str, Any]) -> None:
    """The checksum is spliced into the body's encoding when it sorts first (top-level keys after it);
    the bytes are those of the whole document's canonical form either way, and they verify."""
    cp = Checkpoint("boot-1", extra_top=extra_top).with_claims([record("a"), record("b")])
    raw_bytes = encode(cp)
    assert raw_bytes == canonical_json(to_document(cp)) + b"\n"
    assert decode(raw_bytes) == (cp, LoadEvent.LOADED)
    assert json.loads(raw_bytes)["checksum"] == checksum(json.loads(raw_bytes))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d["data"]["claims"]["a"].update(name="edited"), "checksum mismatch"),
        (lambda d: d.update(kind="Other"), "kind is 'Other'"),
        (lambda d: d.update(version="two"), "version 'two'"),
    ],
)
def test_a_damaged_checkpoint_is_copied_aside_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Any, reason: str
) -> None:
    saved(tmp_path, record("a"))
    document = raw(tmp_path)
    damage(document)
    write_raw(tmp_path, document, seal=False)
    with caplog.at_level(logging.ERROR):
        cp, event = CheckpointStore(tmp_path, "boot-1").load()
    assert (event, dict(cp.claims)) == (LoadEvent.CORRUPT, {})
    (aside,) = tmp_path.glob(f"{CHECKPOINT_FILE}.corrupt-*")
    assert json.loads(aside.read_text()) == document, "the corrupt file is kept for inspection"
    # The corrupt file stays until a rebuilt checkpoint replaces it: a crash before that must not look like
    # a fresh node.
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == aside.read_bytes()
    (line,) = [r for r in caplog.records if "checkpoint is corrupt" in r.getMessage()]
    assert reason in str(line.__dict__.get("fields", {}).get("reason"))


@pytest.mark.parametrize(
    "content", [b"", b'{"kind": "AccelDraCheckpoint", "vers', b"\xff\xfe garbage", b"[]"]
)
def test_unparseable_files_are_corrupt_not_fatal(tmp_path: Path, content: bytes) -> None:
    (tmp_path / CHECKPOINT_FILE).write_bytes(content)
    cp, event = CheckpointStore(tmp_path, "boot-1").load()
    assert (event, dict(cp.claims)) == (LoadEvent.CORRUPT, {})
    assert len(list(tmp_path.glob(f"{CHECKPOINT_FILE}.corrupt-*"))) == 1


def test_only_the_latest_corrupt_copies_are_kept(tmp_path: Path) -> None:
    for _ in range(KEEP_CORRUPT + 3):
        (tmp_path / CHECKPOINT_FILE).write_text("not json")
        CheckpointStore(tmp_path, "boot-1").load()
    assert len(list(tmp_path.glob(f"{CHECKPOINT_FILE}.corrupt-*"))) == KEEP_CORRUPT


def test_unknown_fields_of_a_newer_version_are_read_and_kept(tmp_path: Path) -> None:
    saved(tmp_path, record("a"))
    document = raw(tmp_path)
    document["version"] = CURRENT_VERSION + 1
    document["writtenBy"] = "accel-dra 9.0"
    document["data"]["nodeFeatures"] = ["x"]
    document["data"]["claims"]["a"]["priority"] = 5
    document["data"]["claims"]["a"]["devices"][0]["numa"] = 1
    write_raw(tmp_path, document)
    store = CheckpointStore(tmp_path, "boot-1")
    cp, event = store.load()
    assert event == LoadEvent.NEWER
    assert cp.claims["a"] == record("a")
    # Written back (as this version) with everything it did not understand.
    store.save(cp.with_claim(record("b")))
    again = raw(tmp_path)
    assert again["version"] == CURRENT_VERSION
    assert again["writtenBy"] == "accel-dra 9.0"
    assert again["data"]["nodeFeatures"] == ["x"]
    assert again["data"]["claims"]["a"]["priority"] == 5
    assert again["data"]["claims"]["a"]["devices"][0]["numa"] == 1
    assert CheckpointStore(tmp_path, "boot-1").load()[1] == LoadEvent.LOADED


def test_version_1_is_migrated(tmp_path: Path) -> None:
    v1 = {
        "kind": "AccelDraCheckpoint",
        "version": 1,
        "data": {
            "bootID": "boot-1",
            "claims": [
                {
                    "uid": "u1",
                    "namespace": "default",
                    "name": "c1",
                    "state": "PrepareCompleted",
                    "devices": ["node-1/gpu-a", "node-1/gpu-a-b"],
                    "cdiDeviceIDs": [
                        "k8s.gpu.accel-dra.dev/gpu=u1-gpu-a",
                        "k8s.gpu.accel-dra.dev/gpu=u1-gpu-a-b",
                    ],
                }
            ],
        },
    }
    write_raw(tmp_path, v1)
    cp, event = CheckpointStore(tmp_path, "boot-1").load()
    assert event == LoadEvent.MIGRATED
    claim = cp.claims["u1"]
    assert (claim.namespace, claim.name, claim.state) == ("default", "c1", ClaimState.PREPARE_COMPLETED)
    assert [(d.pool, d.device, d.cdi_ids) for d in claim.devices] == [
        ("node-1", "gpu-a", ("k8s.gpu.accel-dra.dev/gpu=u1-gpu-a",)),
        ("node-1", "gpu-a-b", ("k8s.gpu.accel-dra.dev/gpu=u1-gpu-a-b",)),
    ]
    assert cp.boot_id == "boot-1"


def test_a_different_boot_id_drops_prepared_state(tmp_path: Path) -> None:
    saved(tmp_path, record("a"), boot="boot-1")
    cp, event = CheckpointStore(tmp_path, "boot-2").load()
    assert (event, dict(cp.claims), cp.boot_id) == (LoadEvent.REBOOTED, {}, "boot-2")
    # Same boot: kept. Unknown boot id (cannot be read): kept, nothing is dropped on a guess.
    assert set(CheckpointStore(tmp_path, "boot-1").load()[0].claims) == {"a"}
    assert set(CheckpointStore(tmp_path, "").load()[0].claims) == {"a"}


def test_boot_id_is_read_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "boot_id").write_text("6f1c\n")
    assert read_boot_id(tmp_path / "boot_id") == "6f1c"
    assert read_boot_id(tmp_path / "missing") == ""


def test_a_changed_file_is_reread(tmp_path: Path) -> None:
    store = saved(tmp_path, record("a"))
    assert set(store.load()[0].claims) == {"a"}
    # Another plugin instance sharing the plugin dir writes.
    other = CheckpointStore(tmp_path, "boot-1")
    other.save(other.load()[0].without("a").with_claim(record("b")))
    assert set(store.load()[0].claims) == {"b"}


def test_records_compare_without_unknown_fields() -> None:
    cp = Checkpoint(boot_id="x").with_claim(record("a"))
    assert cp.without("a").claims == {}
    assert cp.without("zzz").claims == {"a": record("a")}
