"""What the user sees while the suite runs: the current probe, its step, elapsed time and timeout.

On a terminal one status line is redrawn twice a second; elsewhere (CI logs) each probe start, step and
result is printed once, on its own line.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TextIO

from driver.conformance.model import ProbeResult

_SYMBOL = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}


class Progress:
    def __init__(self, out: TextIO | None, total: int) -> None:
        self.out = out
        self.total = total
        self.interactive = bool(out is not None and out.isatty())
        self._index = 0
        self._name = ""
        self._timeout = 0.0
        self._step = ""
        self._started = 0.0
        self._ticker: asyncio.Task[None] | None = None

    def _print(self, text: str) -> None:
        if self.out is None:
            return
        if self.interactive:
            self.out.write("\r\033[K")
        self.out.write(text + "\n")
        self.out.flush()

    def message(self, text: str) -> None:
        self._print(text)

    def start(self, index: int, name: str, timeout: float) -> None:
        self._index, self._name, self._timeout = index, name, timeout
        self._step = "starting"
        self._started = time.monotonic()
        if self.interactive:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        else:
            self._print(f"[{index}/{self.total}] {name} (timeout {timeout:g}s)")

    def step(self, text: str) -> None:
        self._step = text
        if not self.interactive and self._name:
            self._print(f"    {time.monotonic() - self._started:6.1f}s  {text}")

    def _line(self) -> str:
        elapsed = time.monotonic() - self._started
        return (
            f"[{self._index}/{self.total}] {self._name}  {elapsed:5.1f}s / {self._timeout:g}s  {self._step}"
        )[:160]

    async def _tick(self) -> None:
        assert self.out is not None
        while True:
            self.out.write("\r\033[K" + self._line())
            self.out.flush()
            await asyncio.sleep(0.5)

    async def end(self, result: ProbeResult) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        self._name = ""
        verdict = _SYMBOL[result.outcome]
        self._print(
            f"[{self._index}/{self.total}] {verdict} {result.test} ({result.duration:.1f}s): {result.message}"
        )
