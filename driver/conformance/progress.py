"""What the user sees while the suite runs: where the run is, how long it has taken, what it waits for.

Each line names the probe and its position among all probes (``[3/9]``), the probe's elapsed time and
timeout, the whole run's elapsed time, the current step and -- while a pod is pending -- the reason the
cluster gives. On a terminal one status line is redrawn twice a second; elsewhere (CI logs) each probe
start, step, new pending reason and result is printed once, on its own line.
"""

from __future__ import annotations

import asyncio
import time
from typing import TextIO

from driver.conformance.model import ProbeResult
from driver.tasks import cancel_and_wait

_SYMBOL = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}
WIDTH = 200


def clock(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    def __init__(self, out: TextIO | None, total: int) -> None:
        self.out = out
        self.total = total
        self.interactive = bool(out is not None and out.isatty())
        self._index = 0
        self._name = ""
        self._timeout = 0.0
        self._step = ""
        self._waiting = ""
        self._started = 0.0
        self._run_started = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None

    def _print(self, text: str) -> None:
        if self.out is None:
            return
        if self.interactive:
            self.out.write("\r\033[K")
        self.out.write(text + "\n")
        self.out.flush()

    def _position(self) -> str:
        return f"[{self._index}/{self.total}]"

    def message(self, text: str) -> None:
        self._print(text)

    def start(self, index: int, name: str, timeout: float) -> None:
        self._index, self._name, self._timeout = index, name, timeout
        self._step, self._waiting = "starting", ""
        self._started = time.monotonic()
        if self.interactive:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        else:
            run = clock(time.monotonic() - self._run_started)
            self._print(f"{self._position()} {name} (timeout {timeout:g}s; run so far {run})")

    def step(self, text: str) -> None:
        self._step, self._waiting = text, ""
        if not self.interactive and self._name:
            self._print(f"    {time.monotonic() - self._started:6.1f}s  {text}")

    def waiting(self, why: str) -> None:
        """The reason the current wait is still waiting (shown once per change)."""
        if why == self._waiting:
            return
        self._waiting = why
        if not self.interactive and self._name:
            self._print(f"    {time.monotonic() - self._started:6.1f}s    pending: {why}")

    def _line(self) -> str:
        now = time.monotonic()
        pending = f" | pending: {self._waiting}" if self._waiting else ""
        return (
            f"{self._position()} {self._name}  {now - self._started:5.1f}s / {self._timeout:g}s  "
            f"(run {clock(now - self._run_started)})  {self._step}{pending}"
        )[:WIDTH]

    async def _tick(self) -> None:
        assert self.out is not None
        while True:
            self.out.write("\r\033[K" + self._line())
            self.out.flush()
            await asyncio.sleep(0.5)

    async def end(self, result: ProbeResult) -> None:
        if self._ticker is not None:
            await cancel_and_wait(self._ticker)
            self._ticker = None
        self._name = ""
        verdict = _SYMBOL[result.outcome]
        run = clock(time.monotonic() - self._run_started)
        self._print(
            f"{self._position()} {verdict} {result.test} ({result.duration:.1f}s; run {run}): {result.message}"
        )
