"""The bench's world: short node directories, the sim API server, and real plugin/exporter processes.

The sim API server runs on its own event loop in a thread of the bench process (``BackgroundApiServer``), so
the bench can seed thousands of claims without HTTP and read the server's request log (API writes), while
the plugin and the exporter talk to it over real HTTP. The plugin and exporter run as ``python -m driver``
processes, each logging to a file under the work directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from driver.kube.client import NODES, RESOURCE_CLAIMS, RESOURCE_SLICES
from driver.sim.apiserver import BackgroundApiServer, SimApiServer
from driver.sim.store import ObjectStore
from driver.state.api import ClaimRef

DRIVER = "gpu.accel-dra.dev"
NODE = "bench-node"
PROFILE = "dgx-h100"  # 8 GPUs
#: The steady-state node (plugin and exporter side by side): the same 8 GPUs, two of them in MIG mode.
STEADY_PROFILE = "dgx-h100-mig"
NAMESPACE = "default"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: When set (``run.py --profile DIR``), every started process is sampled by py-spy into DIR/<name>.txt.
PROFILE_DIR: Path | None = None
PROFILE_FLAGS: tuple[str, ...] = tuple(os.environ.get("BENCH_PYSPY_FLAGS", "--rate 250").split())


@dataclass(frozen=True)
class Dirs:
    """Node directories under a short /tmp root (unix socket paths are limited to 107 bytes).

    The plugin directory (checkpoint) is on the disk, as ``/var/lib/kubelet`` is; the CDI directory is on a
    tmpfs when there is one, as ``/var/run/cdi`` is on every systemd host (``--cdi-on-disk`` changes that).
    """

    root: Path
    cdi: Path

    @property
    def plugin(self) -> Path:
        return self.root / "p"

    @property
    def registry(self) -> Path:
        return self.root / "r"

    @property
    def fake_state(self) -> Path:
        return self.root / "fake"

    @property
    def proc(self) -> Path:
        return self.root / "proc"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def pod_resources(self) -> Path:
        return self.root / "pr" / "kubelet.sock"

    def fresh_node_state(self) -> None:
        """Forget prepared claims and CDI specs (between runs that must start from an empty node)."""
        for path in (self.plugin, self.cdi):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)


def make_dirs(cdi_on_disk: bool = False) -> Dirs:
    root = Path(tempfile.mkdtemp(prefix="adb-", dir="/tmp"))
    tmpfs = not cdi_on_disk and fs_type("/dev/shm") == "tmpfs"
    cdi = Path(tempfile.mkdtemp(prefix="adb-cdi-", dir="/dev/shm")) if tmpfs else root / "cdi"
    dirs = Dirs(root, cdi)
    for path in (dirs.plugin, dirs.registry, dirs.cdi, dirs.fake_state, dirs.proc, dirs.pod_resources.parent):
        path.mkdir(parents=True, exist_ok=True)
    return dirs


# -- /proc readers ------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident set size (VmRSS) of ``pid`` in MiB."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of ``pid`` in MiB."""
    return _status_kb(pid, "VmHWM") / 1024


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(f"/proc/{pid}/status has no {key}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid``."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15 of stat)


def cpu_ns(pid: int) -> int:
    """CPU time of ``pid``'s live threads in nanoseconds (``schedstat``: exact, where ``stat`` counts
    10 ms ticks); for the CPU of short windows."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


def remove_dirs(dirs: Dirs) -> None:
    shutil.rmtree(dirs.root, ignore_errors=True)
    shutil.rmtree(dirs.cdi, ignore_errors=True)


def machine(dirs: Dirs) -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    uname = os.uname()
    return {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": f"{uname.sysname} {uname.release}",
        "python": sys.version.split()[0],
        "loadavg": list(os.getloadavg()),
        "plugin_dir_filesystem": fs_type(str(dirs.plugin)),
        "cdi_dir_filesystem": fs_type(str(dirs.cdi)),
    }


def fs_type(path: str) -> str:
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and path.startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


# -- processes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """A source tree whose ``driver`` package the plugin processes run: this checkout, or another revision
    of the project extracted for a side-by-side comparison (``run.py --baseline REV``)."""

    label: str
    path: Path | None = None  # None: the tree the bench runs from
    commit: str = ""
    #: Where the processes import ``driver`` from, as checked by :func:`extract_tree`.
    package: str = ""

    @property
    def suffix(self) -> str:
        return "" if self.path is None else f"-{self.label}"

    def env(self) -> dict[str, str] | None:
        if self.path is None:
            return None
        # PYTHONPATH precedes the editable install's finder; PYTHONSAFEPATH keeps `python -m` from putting
        # the working directory (this checkout) before it.
        return {**os.environ, "PYTHONPATH": str(self.path), "PYTHONSAFEPATH": "1"}

    @property
    def cwd(self) -> str | None:
        return None if self.path is None else str(self.path)

    def describe(self) -> dict[str, str]:
        return {"label": self.label, "commit": self.commit or "working tree", "package": self.package}


CURRENT_TREE = Tree("current")


def extract_tree(repo: Path, rev: str, into: Path) -> Tree:
    """``git archive`` of ``rev`` unpacked under ``into`` (no worktree, nothing in the repository changes)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    target = into / f"tree-{commit[:12]}"
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=repo, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    tree = Tree(f"base-{commit[:7]}", target, commit)
    package = subprocess.run(
        [sys.executable, "-c", "import driver; print(driver.__file__)"],
        env=tree.env(),
        cwd=tree.cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(package).is_relative_to(target):
        raise RuntimeError(f"the plugin of {rev} would import driver from {package}, not from {target}")
    return replace(tree, package=package)


@dataclass
class Proc:
    """A real ``accel-dra`` process logging to a file."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    started: float  # time.monotonic() just before exec
    profiler: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_log(self, pattern: str, timeout: float = 30.0) -> str:
        """The first log line matching ``pattern`` (the log is a file: poll it every 10 ms)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        offset = 0
        pending = ""
        while True:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            pending += chunk.decode(errors="replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                if rx.search(line):
                    return line
            if self.process.returncode is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.process.returncode}):\n{self.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: no log line matching {pattern!r}:\n{self.log_text()[-3000:]}"
                )
            await asyncio.sleep(0.01)

    async def start_profiler(self, label: str = "") -> None:
        """With ``--profile``: sample this process with py-spy from now until :meth:`stop`."""
        if PROFILE_DIR is None or self.profiler is not None:
            return
        out = PROFILE_DIR / f"{self.name}{label}.txt"
        self.profiler = await asyncio.create_subprocess_exec(
            _py_spy(), "record", "--pid", str(self.pid), "--format", "raw", *PROFILE_FLAGS, "--nonblocking",
            "-o", str(out),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    async def stop(self, timeout: float = 10.0) -> None:
        if self.profiler is not None and self.profiler.returncode is None:
            self.profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            await self.profiler.wait()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


def _py_spy() -> str:
    """py-spy from PATH, else the one installed beside this interpreter (the venv's dev extra)."""
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


async def start_process(name: str, args: Sequence[str], log_path: Path, tree: Tree | None = None) -> Proc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "driver",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=tree.env() if tree is not None else None,
            cwd=tree.cwd if tree is not None else None,
        )
    proc = Proc(name, process, log_path, started)
    return proc


def plugin_args(dirs: Dirs, *extra: str, profile: str = PROFILE) -> list[str]:
    """The plugin as the Helm chart runs it: operation metrics on, info logging, fake 8-GPU node."""
    return [
        "plugin",
        "--driver-name", DRIVER,
        "--node-name", NODE,
        "--backend", f"fake:{profile}",
        "--kubeconfig", str(dirs.kubeconfig),
        "--plugin-dir", str(dirs.plugin),
        "--registry-dir", str(dirs.registry),
        "--cdi-dir", str(dirs.cdi),
        "--metrics-listen", "127.0.0.1:0",
        "--fake-state-dir", str(dirs.fake_state),  # simulated load and injected faults, as in the sandbox
        *extra,
    ]  # fmt: skip


def exporter_args(dirs: Dirs, interval: float, *extra: str, profile: str = PROFILE) -> list[str]:
    """The exporter as the chart runs it: PodResources, API server (pods, slices, claims), process
    attribution, its own XID events."""
    return [
        "exporter",
        "--listen", "127.0.0.1:0",
        "--driver-name", DRIVER,
        "--node-name", NODE,
        "--backend", f"fake:{profile}",
        "--kubeconfig", str(dirs.kubeconfig),
        "--kube-api", "on",
        "--pod-resources-socket", str(dirs.pod_resources),
        "--proc-root", str(dirs.proc),
        "--fake-state-dir", str(dirs.fake_state),
        "--interval", str(interval),
        *extra,
    ]  # fmt: skip


# -- the API server -------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """The sim API server in a background thread, with this bench's Node registered."""

    dirs: Dirs
    background: BackgroundApiServer = field(default_factory=BackgroundApiServer)

    def start(self) -> None:
        server = self.background.start()
        server.write_kubeconfig(self.dirs.kubeconfig)
        self.call(lambda s: s.create(NODES, {"metadata": {"name": NODE}}))
        self.call(lambda s: s.allow_admin_access(NAMESPACE))  # the batch's claims have admin access

    def stop(self) -> None:
        self.background.stop()

    def call(self, func: Callable[[SimApiServer], Any], timeout: float = 60.0) -> Any:
        return self.background.call(func, timeout)

    async def acall(self, func: Callable[[SimApiServer], Any], timeout: float = 60.0) -> Any:
        return await asyncio.to_thread(self.call, func, timeout)

    async def wait_for(self, predicate: Callable[[ObjectStore], Any], timeout: float = 30.0) -> Any:
        return await asyncio.to_thread(self.background.wait_for, predicate, timeout)

    def slices(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.call(lambda s: s.objects(RESOURCE_SLICES))
        return [o for o in items if o.get("spec", {}).get("nodeName") == NODE]

    def delete_slices(self) -> None:
        def delete(server: SimApiServer) -> None:
            spec = server.registry.spec_for(RESOURCE_SLICES.group, RESOURCE_SLICES.version, "resourceslices")
            assert spec is not None
            for obj in server.objects(RESOURCE_SLICES):
                server.registry.delete(spec, "", obj["metadata"]["name"])

        self.call(delete)

    def write_marks(self) -> int:
        mark: int = self.call(lambda s: s.request_log.mark())
        return mark

    def writes_since(self, mark: int) -> list[tuple[str, str, int]]:
        records = self.call(lambda s: s.request_log.writes(mark))
        return [(r.method, r.path, r.status) for r in records]

    def requests_since(self, mark: int) -> list[tuple[str, str, int, float]]:
        records = self.call(lambda s: s.request_log.since(mark))
        return [(r.method, r.path, r.status, r.time) for r in records]

    def create_claims(
        self, prefix: str, count: int, devices: Sequence[str], admin: bool = False
    ) -> list[ClaimRef]:
        """``count`` claims allocated to ``devices`` (all of them, one request), created without HTTP;
        ``admin``: with admin access, so any number of them can be prepared at once."""
        refs: list[ClaimRef] = []
        batch = 500
        for start in range(0, count, batch):
            names = [f"{prefix}-{i}" for i in range(start, min(count, start + batch))]
            refs += self.call(functools.partial(_allocated_claims, names=names, devices=devices, admin=admin))
        return refs


def _allocated_claims(
    server: SimApiServer, names: Sequence[str], devices: Sequence[str], admin: bool
) -> list[ClaimRef]:
    return [_allocated_claim(server, name, devices, admin) for name in names]


def _allocated_claim(server: SimApiServer, name: str, devices: Sequence[str], admin: bool) -> ClaimRef:
    request = "gpus"
    body = {
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": request,
                        "exactly": {
                            "deviceClassName": DRIVER,
                            "allocationMode": "ExactCount",
                            "count": len(devices),
                        },
                    }
                ]
            }
        },
    }
    claim = server.create(RESOURCE_CLAIMS, body, NAMESPACE)
    claim["status"] = {
        "allocation": {
            "devices": {
                "results": [
                    {"request": request, "driver": DRIVER, "pool": NODE, "device": d}
                    | ({"adminAccess": True} if admin else {})
                    for d in devices
                ]
            }
        }
    }
    spec = server.registry.spec_for(RESOURCE_CLAIMS.group, RESOURCE_CLAIMS.version, "resourceclaims")
    assert spec is not None
    server.registry.update(spec, NAMESPACE, name, claim, subresource="status")
    meta = claim["metadata"]
    return ClaimRef(NAMESPACE, meta["uid"], meta["name"])


def device_names() -> list[str]:
    """The DRA device names of the fake profile, as the plugin publishes them."""
    from driver.devices.fake import load_named_profile

    inventory = load_named_profile(PROFILE, node_name=NODE).inventory
    return [d.name for d in inventory.devices]
