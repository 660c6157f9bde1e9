"""``e2e.log``: the run as it happens, in ``go test -v`` style, written line by line.

Lines are flushed as they are written, so an interrupted run still leaves its log. The writer counts lines
so each probe's block can be cited as ``file://results/e2e.log#L<first>-L<last>``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TextIO


class E2ELog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lines = 0
        self._file: TextIO | None = None
        self._start = time.monotonic()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", encoding="utf-8")
        self.text: list[str] = []

    def write(self, text: str = "") -> None:
        for line in text.splitlines() or [""]:
            self.lines += 1
            self.text.append(line)
            if self._file is not None:
                self._file.write(line + "\n")
        if self._file is not None:
            self._file.flush()

    def note(self, text: str, indent: int = 4) -> None:
        """An indented line with the seconds since the run started."""
        elapsed = time.monotonic() - self._start
        prefix = " " * indent
        lines = text.splitlines() or [""]
        self.write(f"{prefix}[{elapsed:7.2f}s] {lines[0]}")
        for line in lines[1:]:
            self.write(f"{prefix}            {line}")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
