"""The run's log: every line a probe writes, recorded with the test it belongs to, in ``go test -v`` style.

While the run goes, lines are appended to ``results/run.log`` and flushed, so an interrupted run still
leaves its log. Each line is also kept as a :class:`Record` naming its test, what it is (a test starting, a
test's result, or output) and when it was written. From these records the evidence files are rendered
afterwards for any subset of the probes (:mod:`driver.conformance.gotest`): ``e2e.log`` as ``go test -v``
prints it, ``results.json`` as ``go test -json`` prints it, and ``junit.xml``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from driver.conformance.model import Outcome

Kind = Literal["output", "run", "result"]
RESULT_WORDS: dict[Outcome, str] = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}


@dataclass(frozen=True)
class Record:
    #: The line as ``e2e.log`` shows it (without the line break).
    text: str
    #: The test the line belongs to (``TestX`` or ``TestX/Check``); None for lines of the run itself.
    test: str | None = None
    kind: Kind = "output"
    #: Seconds since the epoch when the line was written.
    time: float = 0.0
    outcome: Outcome | None = None
    #: A result's test duration in seconds.
    elapsed: float = 0.0


def depth(test: str) -> int:
    """How deep a test is nested: 0 for ``TestX``, 1 for ``TestX/Check``."""
    return test.count("/")


class E2ELog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: list[Record] = []
        self._file: TextIO | None = None
        self._start = time.monotonic()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", encoding="utf-8")

    def _add(self, record: Record) -> None:
        self.records.append(record)
        if self._file is not None:
            self._file.write(record.text + "\n")
            self._file.flush()

    def write(self, text: str = "", test: str | None = None) -> None:
        """Output lines (of ``test``, or of the run when None)."""
        for line in text.splitlines() or [""]:
            self._add(Record(line, test, "output", time.time()))

    def note(self, text: str, indent: int = 4, test: str | None = None) -> None:
        """An indented output line with the seconds since the run started."""
        elapsed = time.monotonic() - self._start
        prefix = " " * indent
        lines = text.splitlines() or [""]
        self.write(f"{prefix}[{elapsed:7.2f}s] {lines[0]}", test)
        for line in lines[1:]:
            self.write(f"{prefix}            {line}", test)

    def run(self, test: str) -> None:
        """``=== RUN   TestX``: a test (or subtest) starts."""
        self._add(Record(f"=== RUN   {test}", test, "run", time.time()))

    def result(self, test: str, outcome: Outcome, seconds: float) -> None:
        """``--- PASS: TestX (1.23s)``, indented by four spaces per level of nesting, as go test prints it."""
        line = f"{' ' * 4 * depth(test)}--- {RESULT_WORDS[outcome]}: {test} ({seconds:.2f}s)"
        self._add(Record(line, test, "result", time.time(), outcome, seconds))

    @property
    def lines(self) -> int:
        return len(self.records)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
