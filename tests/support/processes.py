"""Start real accel-dra processes for tests and wait on what they log, without sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path


class Process:
    """A subprocess whose stderr lines are collected and can be awaited by regular expression."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, args: Sequence[str], *, name: str, env: dict[str, str] | None = None) -> Process:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        return cls(proc, name)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                break
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    @property
    def output_ended(self) -> bool:
        """Its output is closed: the process is exiting (its exit code may not be known yet)."""
        return self._reader.done()

    def output(self) -> str:
        return "\n".join(self.lines)

    def matching(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        return [line for line in self.lines if rx.search(line)]

    async def wait_log(self, pattern: str, timeout: float = 15.0, count: int = 1) -> list[str]:
        """Wait until ``count`` lines match ``pattern``; fail with the whole output if the process exits."""
        rx = re.compile(pattern)

        def found() -> bool:
            return sum(1 for line in self.lines if rx.search(line)) >= count or self._reader.done()

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(found)
        except TimeoutError:
            raise AssertionError(f"{self.name}: no log line matching {pattern!r}:\n{self.output()}") from None
        matches = self.matching(pattern)
        if len(matches) < count:
            raise AssertionError(f"{self.name} exited before logging {pattern!r}:\n{self.output()}")
        return matches

    async def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit by itself; return its exit code."""
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await self._reader
        return code

    async def terminate(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await self._reader
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        await self._reader


def accel_dra(*args: str) -> list[str]:
    """argv for running the CLI from this checkout with the test interpreter."""
    return [sys.executable, "-m", "driver", *args]


def plugin_args(
    *,
    kubeconfig: Path,
    node: str,
    plugin_dir: Path,
    registry_dir: Path,
    cdi_dir: Path,
    driver: str | None = None,
    pod_uid: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    args = [
        "plugin",
        "--node-name",
        node,
        "--kubeconfig",
        str(kubeconfig),
        "--plugin-dir",
        str(plugin_dir),
        "--registry-dir",
        str(registry_dir),
        "--cdi-dir",
        str(cdi_dir),
    ]
    if driver:
        args += ["--driver-name", driver]
    if pod_uid:
        args += ["--pod-uid", pod_uid]
    return accel_dra(*args, *extra)
