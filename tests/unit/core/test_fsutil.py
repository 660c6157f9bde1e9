"""Atomic writes: the temporary file a write goes through, as a killed writer would leave it."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver import crash, fsutil
from driver.fsutil import atomic_write, remove_file, remove_stale_temporaries


class Killed(BaseException):
    pass


@pytest.fixture
def killed_after_temporary() -> Iterator[None]:
    """Every write dies with its temporary file complete, not yet renamed (a SIGKILL's leftover)."""

    def hook(step: str) -> None:
        if step == "state:tmp-written":
            raise Killed(step)

    crash.set_crash_hook(hook)
    yield
    crash.set_crash_hook(None)


@pytest.mark.usefixtures("killed_after_temporary")
def test_each_write_has_its_own_temporary_which_the_start_recognises(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    for content in (b"one", b"two"):
        with pytest.raises(Killed):
            atomic_write(target, content, what="state")
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert len(leftovers) == 2, "two writes of one file in one process shared a temporary name"
    for name in leftovers:
        assert name.startswith(f".state.json.{os.getpid()}-") and name.endswith(".tmp")
    assert not target.exists()
    assert sorted(remove_stale_temporaries(tmp_path, "state.json")) == leftovers
    assert list(tmp_path.iterdir()) == []


def test_a_write_replaces_the_file_and_a_removal_reports_it(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"one", mode=0o640, sync=False)
    atomic_write(target, b"two", mode=0o640, sync=True)
    assert target.read_bytes() == b"two"
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert remove_file(target, sync=True) is True
    assert remove_file(target) is False


def test_a_temporary_name_already_taken_fails_the_write_and_keeps_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writes that drew the same temporary name (never by design: pid, tag and counter keep them apart)
    must not write into one file: the second fails and leaves the first one's temporary alone."""
    monkeypatch.setattr(fsutil, "_tmp_count", itertools.repeat(0))
    target = tmp_path / "state.json"

    def killed(step: str) -> None:
        raise Killed(step)

    crash.set_crash_hook(killed)
    try:
        with pytest.raises(Killed):
            atomic_write(target, b"first", what="state")
    finally:
        crash.set_crash_hook(None)
    (leftover,) = tmp_path.iterdir()
    with pytest.raises(FileExistsError):
        atomic_write(target, b"second", what="state")
    assert leftover.read_bytes() == b"first"
    assert not target.exists()
