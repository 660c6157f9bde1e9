"""ACCEL_DRA_CRASH_AT, read once when the process starts: the n-th arrival at a step kills the process with
SIGKILL; other steps and other arrivals pass."""

from __future__ import annotations

import signal
import subprocess
import sys

from driver.crash import _parse

SCRIPT = """
from driver.crash import crash_point
for step in ("a", "b", "a", "b", "a"):
    print(step, flush=True)
    crash_point(step)
print("survived", flush=True)
"""


def run(wanted: str) -> subprocess.CompletedProcess[str]:
    env = {"ACCEL_DRA_CRASH_AT": wanted} if wanted else {}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        check=False,
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )


def test_the_nth_arrival_at_a_step_kills() -> None:
    done = run("b#2")
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split() == ["a", "b", "a", "b"]


def test_without_the_variable_nothing_happens() -> None:
    done = run("")
    assert done.returncode == 0 and done.stdout.split()[-1] == "survived"


def test_several_entries_for_one_step() -> None:
    assert _parse(" a#3, b ,a#1,,c#x") == {"a": {1, 3}, "b": {1}, "c": {1}}
    assert run("a#3,c").stdout.split() == ["a", "b", "a", "b", "a"]
