"""Structured logging: one line per event, key=value (or JSON), with a request id per gRPC call.

Usage::

    log = get_logger(__name__)
    log.info("claim prepared", claim="default/gpu-1", devices=2)

Fields bound with :func:`bind` (for example the request id of the current gRPC call) are added to every
line logged inside that context, including lines from helpers that know nothing about the request.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "log_context", default=MappingProxyType({})
)

_RESERVED = ("ts", "level", "logger", "event")


def new_request_id() -> str:
    """A short random id; unique enough to correlate the lines of one call."""
    return uuid.uuid4().hex[:12]


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add fields to every log line emitted inside the block (async-safe via contextvars)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields.update(getattr(record, "fields", {}))
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info).strip().splitlines()[-1]
            fields["traceback"] = self.formatException(record.exc_info)
        if self.as_json:
            return json.dumps(fields, default=str)
        tb = fields.pop("traceback", None)
        line = " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        return f"{line}\n{tb}" if tb else line


class Logger:
    """A thin wrapper over :mod:`logging` that takes an event name plus keyword fields."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            merged = {**_context.get(), **{k: v for k, v in fields.items() if k not in _RESERVED}}
            # The record is made here, without logging's search of the caller's file and line (a walk up
            # the stack per line): no format of ours prints them, and a prepare logs several lines.
            record = self._logger.makeRecord(
                self._logger.name,
                level,
                "",
                0,
                event,
                (),
                sys.exc_info() if exc_info else None,
                extra={"fields": merged},
            )
            self._logger.handle(record)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, False, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log at error level with the active exception's summary and traceback."""
        self._log(logging.ERROR, event, True, fields)

    def is_debug(self) -> bool:
        return self._logger.isEnabledFor(logging.DEBUG)


def get_logger(name: str) -> Logger:
    return Logger(name)


def setup(level: str = "info", fmt: str = "text", stream: Any = None) -> None:
    """Configure the root logger once per process (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(as_json=(fmt == "json")))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Thread and process names are in no line of ours; looking them up is work on every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Libraries we depend on are chatty at info level; their warnings still come through.
    for noisy in ("aiohttp.access", "kubernetes", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
