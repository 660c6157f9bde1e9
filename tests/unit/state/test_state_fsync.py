"""fsync of the node state: off by default (the reliability contract in docs/node-state.md), on with
``--state-fsync on`` or ``STATE_FSYNC=on``. The fsync calls are counted on real files; what a crash leaves
is the crash tests' business (tests/integration/test_node_state_crash.py), which run with the default."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from driver.cli import build_parser
from driver.config import PluginConfig
from driver.devices.backend import capabilities, open_backend
from driver.plugin.preparer import make_preparer
from driver.state.lock import LOCK_FILE_NAME, NodeLock
from driver.state.prepare import NodePreparer
from tests.unit.state.test_prepare import GPU0, Node, claim, prepare, ref


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """fsync calls by kind: ``file`` or ``dir``."""
    counted: Counter[str] = Counter()
    real = os.fsync

    def fsync(fd: int) -> None:
        counted["dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"] += 1
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return counted


def _prepare_and_unprepare(p: NodePreparer) -> None:
    c = claim("a1", GPU0)
    assert prepare(p, c)["a1"].error == ""
    assert p.unprepare_sync([ref(c)]) == {"a1": ""}


def test_prepare_and_unprepare_do_not_fsync_by_default(node: Node, fsyncs: Counter[str]) -> None:
    _prepare_and_unprepare(node.preparer())
    assert fsyncs == Counter()
    assert node.records() == {} and node.specs() == {}


def test_with_fsync_every_write_and_removal_is_synced(node: Node, fsyncs: Counter[str]) -> None:
    p = node.preparer()
    p.store.sync = p.specs.sync = True
    p.recover()  # as a plugin starts: writes a fresh node's empty checkpoint
    fsyncs.clear()
    _prepare_and_unprepare(p)
    # Prepare of a claim with nothing but its spec: the spec and one checkpoint save (file + directory
    # each); unprepare: the spec's removal (directory) and one checkpoint save.
    assert fsyncs == Counter(file=3, dir=4)


def _config(tmp_path: Path, argv: list[str]) -> PluginConfig:
    args = build_parser().parse_args(
        [
            "plugin",
            "--node-name=node-1",
            "--backend=fake:pcie-l4x4",
            f"--plugin-dir={tmp_path / 'plugin'}",
            f"--cdi-dir={tmp_path / 'cdi'}",
            *argv,
        ]
    )
    return PluginConfig.from_args(args)


@pytest.mark.parametrize(
    ("argv", "env", "synced"),
    [
        ([], {}, False),
        (["--state-fsync=on"], {}, True),
        ([], {"STATE_FSYNC": "on"}, True),
        (["--state-fsync=off"], {"STATE_FSYNC": "on"}, False),
    ],
)
def test_the_flag_and_the_environment_reach_the_node_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], synced: bool
) -> None:
    monkeypatch.delenv("STATE_FSYNC", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = _config(tmp_path, argv)
    assert config.state_fsync is synced
    backend: Any = open_backend(config.backend, node_name=config.node_name)
    preparer = make_preparer(
        config, capabilities(backend), backend.discover(), None, NodeLock(tmp_path / LOCK_FILE_NAME)
    )
    assert preparer.metadata is not None
    assert (preparer.store.sync, preparer.specs.sync, preparer.metadata.store.sync) == (synced,) * 3


@pytest.mark.parametrize(
    ("argv", "synced"),
    [
        ([], Counter()),
        # Prepare: the metadata file, the spec, the checkpoint (file + directory each); unprepare: the spec's
        # removal (directory) and the checkpoint.
        (["--state-fsync=on"], Counter(file=4, dir=5)),
    ],
)
def test_the_plugin_s_preparer_syncs_only_with_the_flag_metadata_files_included(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fsyncs: Counter[str],
    argv: list[str],
    synced: Counter[str],
) -> None:
    monkeypatch.delenv("STATE_FSYNC", raising=False)
    config = _config(tmp_path, argv)
    backend: Any = open_backend(config.backend, node_name=config.node_name)
    preparer = make_preparer(
        config, capabilities(backend), backend.discover(), None, NodeLock(tmp_path / LOCK_FILE_NAME)
    )
    assert preparer.metadata is not None and preparer.metadata.enabled
    preparer.recover()
    fsyncs.clear()
    _prepare_and_unprepare(preparer)
    assert fsyncs == synced


def test_a_bad_value_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _config(tmp_path, ["--state-fsync=always"])
    assert "--state-fsync" in capsys.readouterr().err
