"""Test hooks of the sandbox API server: injected faults, the request log, pod logs.

None of this exists in a real kube-apiserver; integration tests use it to provoke errors (a 409 on the
next slice update, a 500 on a list) and to observe traffic ("no writes while idle").
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: str
    status: int
    time: float

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS


class RequestLog:
    """Every request the server answered, in order (including faulted and rejected ones)."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def add(self, method: str, path: str, query: str, status: int) -> None:
        self.records.append(RequestRecord(method, path, query, status, time.monotonic()))

    def mark(self) -> int:
        """A position to pass to :meth:`since` / :meth:`writes` later."""
        return len(self.records)

    def since(self, mark: int = 0) -> list[RequestRecord]:
        return self.records[mark:]

    def writes(self, mark: int = 0, path_regex: str | None = None) -> list[RequestRecord]:
        """Write requests (POST/PUT/PATCH/DELETE) since ``mark``, optionally only paths matching a regex."""
        pattern = re.compile(path_regex) if path_regex else None
        return [r for r in self.since(mark) if r.is_write and (pattern is None or pattern.search(r.path))]

    def clear(self) -> None:
        self.records.clear()


@dataclass
class Fault:
    """Answer the next ``remaining`` requests matching ``method`` and ``path_regex`` with ``status``."""

    method: str  # "*" for any
    path_regex: str
    status: int
    remaining: int
    reason: str | None = None
    message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and self.method in ("*", method.upper())
            and bool(re.search(self.path_regex, path))
        )


class FaultInjector:
    def __init__(self) -> None:
        self.faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        re.compile(fault.path_regex)  # fail early on a bad pattern
        self.faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        """The first armed fault matching the request, consumed once; None when the request may pass."""
        for fault in self.faults:
            if fault.matches(method, path):
                fault.remaining -= 1
                fault.hits += 1
                return fault
        return None

    def clear(self) -> None:
        self.faults.clear()


class PodLogs:
    """Container logs by (namespace, pod, container): text held in memory or a file read on each request."""

    def __init__(self) -> None:
        self._logs: dict[tuple[str, str, str], str | Path] = {}

    def set(self, namespace: str, pod: str, container: str, text: str) -> None:
        self._logs[(namespace, pod, container)] = text

    def append(self, namespace: str, pod: str, container: str, text: str) -> None:
        current = self._logs.get((namespace, pod, container), "")
        if isinstance(current, Path):
            current = _read(current)
        self._logs[(namespace, pod, container)] = current + text

    def set_file(self, namespace: str, pod: str, container: str, path: str | Path) -> None:
        self._logs[(namespace, pod, container)] = Path(path)

    def get(self, namespace: str, pod: str, container: str) -> str:
        source = self._logs.get((namespace, pod, container), "")
        return _read(source) if isinstance(source, Path) else source


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def tail(text: str, query: dict[str, Any]) -> str:
    """Apply ``tailLines`` and ``limitBytes`` as the kubelet does."""
    lines = query.get("tailLines")
    if lines not in (None, ""):
        count = int(lines)
        kept = text.splitlines(keepends=True)
        text = "".join(kept[-count:]) if count > 0 else ""
    limit = query.get("limitBytes")
    if limit not in (None, ""):
        text = text.encode()[: int(limit)].decode(errors="ignore")
    return text
