"""Another local user against the plugin: while the plugin starts (under a umask of 0, the worst it can
inherit) and serves, an unprivileged process keeps trying to connect to its sockets, read its checkpoint,
take its lock, and plant files in its directories. None of it may succeed, and nothing the plugin creates
may be writable by others.

Runs as root and switches the probe to ``nobody`` (uid 65534) with setuid; skipped where that is impossible.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from driver.state.checkpoint import CHECKPOINT_FILE
from driver.state.lock import LOCK_FILE_NAME
from tests.chaos.conftest import Chaos
from tests.chaos.harness import DRIVER, ChaosError, ChaosNode, umask

NOBODY = 65534

# The probe: a loop of everything another user might try, until the stop file appears. Prints what worked.
PROBE = r"""
import json, os, socket, sys, time
paths = json.loads(sys.argv[1])
stop, deadline = paths["stop"], time.monotonic() + 120
worked, tries = [], 0
def attempt(what, action):
    try:
        action()
        worked.append(what)
    except OSError:
        pass
def connect(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    finally:
        s.close()
def plant(directory):
    name = os.path.join(directory, "k8s.%s-gpu_intruder-%d.json" % (paths["driver"], os.getpid()))
    with open(name, "w") as f:
        f.write("{}")
print("ready", flush=True)
while not os.path.exists(stop) and time.monotonic() < deadline:
    tries += 1
    for sock in paths["sockets"]:
        attempt("connect " + sock, lambda: connect(sock))
    attempt("read checkpoint", lambda: open(paths["checkpoint"], "rb").close())
    attempt("open lock", lambda: open(paths["lock"], "r+b").close())
    attempt("plant a spec", lambda: plant(paths["cdi"]))
    attempt("plant in the plugin dir", lambda: plant(paths["plugin_dir"]))
print(json.dumps({"tries": tries, "worked": sorted(set(worked))}))
"""


def as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def probe_interpreter() -> tuple[str | None, str]:
    """A Python that ``nobody`` may run (this one may live in root's home), or None and why not."""
    if os.geteuid() != 0:
        return (
            None,
            f"the probe runs as another user: that needs root (setuid); tests run as uid {os.geteuid()}",
        )
    for candidate in dict.fromkeys([sys.executable, "/usr/bin/python3", shutil.which("python3") or ""]):
        try:
            ran = subprocess.run(
                [candidate, "-c", "pass"], preexec_fn=as_nobody, capture_output=True, check=False
            )
        except OSError:
            continue
        if ran.returncode == 0:
            return candidate, ""
    return (
        None,
        "no Python interpreter that user nobody (65534) may run (the test's lives under a private home)",
    )


def writable_by_others(*roots: Path) -> list[str]:
    found = []
    for root in roots:
        for directory, dirs, files in os.walk(root):
            for name in [*dirs, *files]:
                path = Path(directory, name)
                mode = path.lstat().st_mode
                if not stat.S_ISLNK(mode) and mode & 0o002:
                    found.append(f"{path} ({oct(stat.S_IMODE(mode))})")
    return found


async def test_another_user_gets_nothing(node: ChaosNode, chaos: Chaos) -> None:
    python, reason = probe_interpreter()
    if python is None:
        pytest.skip(reason)
    rng = chaos.rng
    claims = await node.create_claims(rng, 4)
    # Only the plugin's own modes may protect it: its directory is open for traversal, and the CDI
    # directory does not exist yet (the plugin creates it, with its parents, at the first prepare).
    node.plugin_dir.mkdir(mode=0o755)
    node.plugin_dir.chmod(0o755)
    node.cdi.rmdir()
    node.cdi = node.root / "run" / "cdi"
    paths = {
        "stop": str(node.root / "stop"),
        "sockets": [str(node.plugin_dir / "dra.sock"), str(node.registry / f"{DRIVER}-reg.sock")],
        "checkpoint": str(node.plugin_dir / CHECKPOINT_FILE),
        "lock": str(node.plugin_dir / LOCK_FILE_NAME),
        "cdi": str(node.cdi),
        "plugin_dir": str(node.plugin_dir),
        "driver": DRIVER,
    }
    for _ in range(chaos.count(3)):
        chaos.case()
        Path(paths["stop"]).unlink(missing_ok=True)
        probe = await asyncio.create_subprocess_exec(
            python, "-c", PROBE, json.dumps(paths), stdout=asyncio.subprocess.PIPE, preexec_fn=as_nobody
        )
        assert probe.stdout is not None
        assert await probe.stdout.readline() == b"ready\n"  # probing before the plugin starts
        with umask(0):
            await node.start(wait=False)
        await node.wait_serving()
        answer = await node.call("prepare", [c.ref for c in rng.sample(claims, 2)])
        assert answer.ok
        Path(paths["stop"]).touch()
        out, _ = await probe.communicate()
        report = json.loads(out)
        if report["worked"]:
            raise ChaosError(f"another user succeeded in {report['worked']} ({report['tries']} tries)")
        if report["tries"] < 2:
            raise ChaosError(f"the probe hardly ran ({report['tries']} tries)")
        exposed = writable_by_others(node.plugin_dir, node.registry, node.root / "run")
        if exposed:
            raise ChaosError(f"writable by other users: {exposed}")
        node.check()
        await (node.stop() if rng.random() < 0.5 else node.kill())
