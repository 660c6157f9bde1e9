"""Structured log lines: key=value (or JSON), bound fields, quoting, exceptions with their traceback."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from driver.log import bind, get_logger, setup


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup("info", "text", stream=out)
    yield out
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_a_line_has_the_event_its_fields_and_the_bound_ones(stream: io.StringIO) -> None:
    log = get_logger("driver.test")
    with bind(request_id="abc123"):
        log.info("claim prepared", claim="default/gpu 1", devices=2, empty="")
    log.debug("not shown")
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("ts=") and line.split()[0].endswith("Z")
    assert line.split(" ", 1)[1] == (
        'level=info logger=driver.test event="claim prepared" request_id=abc123 '
        'claim="default/gpu 1" devices=2 empty=""'
    )


def test_an_exception_adds_its_summary_and_traceback(stream: io.StringIO) -> None:
    log = get_logger("driver.test")
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        log.exception("prepare failed", claim="default/a")
    first, *rest = stream.getvalue().splitlines()
    assert 'error="OSError: [Errno 28] No space left on device"' in first
    assert rest[0] == "Traceback (most recent call last):" and "raise OSError" in "\n".join(rest)


def test_json_lines() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup("info", "json", stream=out)
        get_logger("driver.test").warning("checkpoint is corrupt", path="/x", level="ignored")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    line = json.loads(out.getvalue())
    assert {k: line[k] for k in ("level", "logger", "event", "path")} == {
        "level": "warning",
        "logger": "driver.test",
        "event": "checkpoint is corrupt",
        "path": "/x",
    }
