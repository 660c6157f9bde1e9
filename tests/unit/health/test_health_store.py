"""The health state file: round trip, corrupt files, and the exporter's change-aware reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from driver.health.state import FaultRecord, HealthState
from driver.health.store import (
    StateFileError,
    StateFileReader,
    keep_aside,
    read_state,
    to_json,
    write_state,
)

STATE = HealthState(
    records={
        "GPU-1": FaultRecord(xid=79, xid_fatal=True, xid_at=1.5, xid_events=2),
        "GPU-2": FaultRecord(lost="GPU is lost", lost_at=2.0, passes=1, unmonitored="no XID events"),
    },
    clears={"gpu-0000-3b-00-0": "20250101T000000Z-abcd"},
)


def test_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    write_state(path, STATE)
    assert read_state(path) == STATE
    assert os.stat(path).st_mode & 0o777 == 0o644, "the exporter container reads it"
    assert json.loads(path.read_text())["records"]["GPU-1"]["xidFatal"] is True


def test_a_missing_file_is_an_empty_state(tmp_path: Path) -> None:
    assert read_state(tmp_path / "absent.json") == HealthState()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not JSON"),
        ('{"version": 7}', "not a version 1"),
        ('{"version": 1, "records": {"GPU-1": {"xid": "79"}}}', r"records\[GPU-1\].xid"),
        ('{"version": 1, "records": {"GPU-1": {"xid": true}}}', r"records\[GPU-1\].xid"),
        ('{"version": 1, "clears": {"gpu-0": 5}}', "request ids"),
    ],
)
def test_corrupt_files_are_reported_with_the_field(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "health.json"
    path.write_text(content)
    with pytest.raises(StateFileError, match=problem):
        read_state(path)
    aside = keep_aside(path)
    assert not path.exists() and aside.read_text() == content


def test_reader_follows_changes_and_keeps_the_last_good_state(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    reader = StateFileReader(path)
    assert reader.read() == HealthState()
    write_state(path, STATE)
    assert reader.read() == STATE
    path.write_text("{broken")
    assert reader.read() == STATE and reader.error and "not JSON" in reader.error
    write_state(path, HealthState(clears={"gpu-0": "r"}))
    assert reader.read() == HealthState(clears={"gpu-0": "r"}) and reader.error is None
    path.unlink()
    assert reader.read() == HealthState()


def test_empty_records_are_not_written(tmp_path: Path) -> None:
    assert to_json(HealthState())["records"] == {}
