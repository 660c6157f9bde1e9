"""The sandbox's container runtime: CDI injection and "containers" that are host processes.

It does what containerd or CRI-O do with CDI devices, minus images:

1. resolve the container's qualified CDI ids (:class:`~driver.sim.cdi_registry.CdiRegistry`);
2. apply the edits as the CDI library applies them to an OCI spec (:func:`apply_edits`): env entries replace
   same-named ones in place, a device node or mount replaces an earlier one at the same container path,
   mounts are ordered by path depth, hooks are grouped by lifecycle point, additional GIDs de-duplicated;
3. plan the container's filesystem view (:func:`plan_filesystem`): a tmpfs ``/dev`` with the standard nodes
   and the CDI device nodes, the CDI mounts, and an overlay (upper layer on a tmpfs) on the parent directory
   of any mount target that does not exist on the host, so the host is never written to;
4. start ``python -m driver.sim.container_init``, which enters a private mount namespace (``unshare``
   through ctypes), makes every mount private, carries out the plan, runs the in-namespace hooks and
   ``execve``\\ s the command; hooks of the runtime namespace (createRuntime, poststart, poststop) run here.

Where namespaces cannot be created (no privilege, no user namespaces) the command runs without isolation
and the record says ``isolated: false``; :class:`SimRuntime` can be told to refuse that instead.

For the exporter's process attribution the runtime writes ``<proc-root>/<pid>/cgroup`` (a kubepods cgroup
path naming the pod UID and container id) for the container's processes, and removes it when they exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import driver
from driver.log import get_logger
from driver.sim.cdi_registry import (
    DEFAULT_SPEC_DIRS,
    CdiError,
    CdiRegistry,
    ContainerEdits,
    DeviceNode,
    Hook,
    Mount,
    UnresolvableDevicesError,
)
from driver.sim.container_init import run_hook
from driver.sim.timestamps import now
from driver.tasks import cancel_and_wait

log = get_logger(__name__)

Isolation = Literal["auto", "required", "off"]
Op = dict[str, Any]

#: containerd's default PATH, behind the sandbox's own interpreter directory (the "image" is the host).
DEFAULT_PATH = os.pathsep.join(
    [
        os.path.dirname(sys.executable),
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
)
#: Nodes every container gets (runc's defaults): name, major, minor.
STANDARD_DEVICES: tuple[tuple[str, int, int], ...] = (
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
)
STANDARD_LINKS: tuple[tuple[str, str], ...] = (
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/dev/ptmx", "pts/ptmx"),
)
RUNTIME_HOOKS = ("prestart", "createRuntime")  # run here, after the namespace exists
CONTAINER_HOOKS = ("createContainer", "startContainer")  # run by the init, inside the namespace
OCI_VERSION = "1.2.0"
#: Put on the init's PYTHONPATH so ``-m driver.sim.container_init`` imports however the package is installed.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(driver.__file__)))


class ContainerCreateError(Exception):
    """The container could not be created or started; the message says why (as a runtime would)."""


def isolation_available() -> bool:
    """Whether containers started from this process get a private mount namespace (root or user namespaces)."""
    probe = "import sys\nfrom driver.sim.container_init import probe_isolation\nsys.exit(0 if probe_isolation() else 1)\n"
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        env={"PYTHONPATH": _PACKAGE_PARENT},
        capture_output=True,
        check=False,
        timeout=30,
    )
    return result.returncode == 0


# --- applying edits (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """The container after CDI injection: what an OCI spec would hold."""

    env: tuple[str, ...]
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    hooks: Mapping[str, tuple[Hook, ...]] = field(default_factory=dict)
    additional_gids: tuple[int, ...] = ()
    net_devices: tuple[dict[str, str], ...] = ()
    intel_rdt: Mapping[str, Any] | None = None


def merge_env(base: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
    """``extra`` entries replace same-named ``base`` entries where they stand; new names are appended."""
    out = list(base)
    index = {item.partition("=")[0]: i for i, item in enumerate(out)}
    for item in extra:
        name = item.partition("=")[0]
        if name in index:
            out[index[name]] = item
        else:
            index[name] = len(out)
            out.append(item)
    return tuple(out)


def _host_device_info(path: str) -> tuple[str, int, int]:
    st = os.lstat(path)
    if stat.S_ISBLK(st.st_mode):
        kind = "b"
    elif stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISFIFO(st.st_mode):
        kind = "p"
    else:
        raise CdiError(f"CDI host device {path!r} is not a device node")
    return kind, os.major(st.st_rdev), os.minor(st.st_rdev)


def fill_device_node(
    node: DeviceNode, host_info: Callable[[str], tuple[str, int, int]] = _host_device_info
) -> DeviceNode:
    """Complete a device node from the host device when the spec leaves type or numbers out (as CDI does)."""
    host_path = node.host_path or node.path
    if node.type and (node.major != 0 or node.type == "p"):
        return DeviceNode(**{**_node_fields(node), "host_path": host_path})
    try:
        kind, major, minor = host_info(host_path)
    except OSError as err:
        raise CdiError(f"failed to stat CDI host device {host_path!r}: {err.strerror}") from None
    if node.type and node.type != kind and not (node.type == "u" and kind == "c"):
        raise CdiError(f"CDI device ({node.path!r}, {host_path!r}), host type mismatch ({node.type}, {kind})")
    fields = {**_node_fields(node), "host_path": host_path, "type": node.type or kind}
    if node.major == 0 and fields["type"] != "p":
        fields["major"], fields["minor"] = major, minor
    return DeviceNode(**fields)


def _node_fields(node: DeviceNode) -> dict[str, Any]:
    return {name: getattr(node, name) for name in DeviceNode.__slots__}


def _depth(path: str) -> int:
    return os.path.normpath(path).count("/")


def apply_edits(
    base_env: Sequence[str],
    edits: ContainerEdits,
    host_info: Callable[[str], tuple[str, int, int]] = _host_device_info,
) -> ContainerConfig:
    """Apply CDI edits to a container whose own environment is ``base_env`` (CDI env wins)."""
    nodes: list[DeviceNode] = []
    for node in edits.device_nodes:
        filled = fill_device_node(node, host_info)
        nodes = [n for n in nodes if n.path != filled.path] + [filled]
    mounts: list[Mount] = []
    for mount in edits.mounts:
        mounts = [m for m in mounts if m.container_path != mount.container_path] + [mount]
    mounts.sort(key=lambda m: _depth(m.container_path))  # stable: equal depths keep their order
    hooks: dict[str, list[Hook]] = {}
    for hook in edits.hooks:
        hooks.setdefault(hook.hook_name, []).append(hook)
    gids: list[int] = []
    for gid in edits.additional_gids:
        if gid != 0 and gid not in gids:
            gids.append(gid)
    return ContainerConfig(
        env=merge_env(base_env, edits.env),
        device_nodes=tuple(nodes),
        mounts=tuple(mounts),
        hooks={name: tuple(items) for name, items in hooks.items()},
        additional_gids=tuple(gids),
        net_devices=tuple(
            {"hostInterfaceName": n.host_interface_name, "name": n.name} for n in edits.net_devices
        ),
        intel_rdt=edits.intel_rdt,
    )


# --- planning the filesystem view (pure, given a probe of the host) ----------------------------------

#: Mount options that are flags (everything else is passed to the filesystem as data).
MOUNT_FLAGS = frozenset(
    {
        "ro",
        "rw",
        "nosuid",
        "suid",
        "nodev",
        "dev",
        "noexec",
        "exec",
        "bind",
        "rbind",
        "sync",
        "async",
        "dirsync",
    }
    | {"noatime", "atime", "nodiratime", "diratime", "relatime", "norelatime", "strictatime", "nostrictatime"}
    | {"private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable"}
)


def host_kind(path: str) -> str | None:
    """``dir``, ``file``, ``other`` or ``None`` (missing): what ``path`` is on the host, symlinks followed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


class _View:
    """What the container will see at a path while the plan is being built."""

    def __init__(self, probe: Callable[[str], str | None]) -> None:
        self.probe = probe
        self.tmpfs = {"/dev"}
        self.overlays: list[str] = []
        self.created: dict[str, str] = {"/dev": "dir"}
        self.binds: list[tuple[str, str]] = []  # (container dir, host dir), in mount order

    @staticmethod
    def canonical(path: str) -> str:
        path = os.path.normpath(path)
        # /dev is replaced wholesale, so host symlinks under it must not be followed.
        return path if _under(path, "/dev") else os.path.realpath(path)

    def private_root(self, path: str) -> str | None:
        """The tmpfs or overlay that makes creating ``path`` safe, if any (a later bind wins over it)."""
        roots = [(r, "private") for r in (*self.tmpfs, *self.overlays) if _under(path, r)]
        roots += [(c, "bind") for c, _ in self.binds if _under(path, c)]
        if not roots:
            return None
        root, kind = max(roots, key=lambda item: len(item[0]))
        return root if kind == "private" else None

    def kind(self, path: str) -> str | None:
        if path in self.created:
            return self.created[path]
        if any(_under(path, r) for r in self.tmpfs):
            return None
        for container_dir, host_dir in reversed(self.binds):
            if _under(path, container_dir):
                return self.probe(host_dir + path[len(container_dir) :])
        return self.probe(path)

    def existing_ancestor(self, path: str) -> str:
        parent = os.path.dirname(path)
        while parent != "/" and self.kind(parent) != "dir":
            parent = os.path.dirname(parent)
        return parent


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _split_options(options: Iterable[str]) -> tuple[list[str], list[str]]:
    flags = [o for o in options if o in MOUNT_FLAGS]
    data = [o for o in options if o not in MOUNT_FLAGS]
    return flags, data


def _dev_setup(config: ContainerConfig) -> list[Op]:
    cdi_paths = {os.path.normpath(n.path) for n in config.device_nodes}
    ops: list[Op] = [
        {"op": "tmpfs", "target": "/dev", "flags": ["nosuid", "strictatime"], "data": "mode=755,size=65536k"}
    ]
    for path, major, minor in STANDARD_DEVICES:
        if path not in cdi_paths:
            ops.append(
                {"op": "mknod", "path": path, "type": "c", "major": major, "minor": minor, "mode": 0o666}
                | {"host_path": path, "standard": True}
            )
    ops.append({"op": "devpts", "target": "/dev/pts"})
    ops.append(
        {"op": "tmpfs", "target": "/dev/shm", "flags": ["nosuid", "nodev", "noexec"], "data": "mode=1777"}
    )
    ops.extend({"op": "symlink", "path": path, "target": target} for path, target in STANDARD_LINKS)
    return ops


def plan_filesystem(config: ContainerConfig, probe: Callable[[str], str | None] = host_kind) -> list[Op]:
    """The mount-namespace operations that give the container its view, in order.

    ``probe`` tells what a host path is (see :func:`host_kind`). Raises :class:`CdiError` for a mount whose
    source is missing, a target whose type clashes with its source, or a target that would need the host's
    root directory to be overlaid.
    """
    view = _View(probe)
    ops = _dev_setup(config)
    for path, _, _ in STANDARD_DEVICES:
        view.created[path] = "node"
    for path in ("/dev/pts", "/dev/shm"):
        view.created[path] = "dir"
    for path, _ in STANDARD_LINKS:
        view.created[path] = "link"

    for index, mount in enumerate(config.mounts):
        ops.extend(_plan_mount(view, index, mount))
    for index, node in enumerate(config.device_nodes):
        ops.extend(_plan_device(view, index, node))
    return ops


def _make_room(view: _View, target: str, what: str) -> list[Op]:
    """Ops that make it safe to create ``target``: nothing under /dev or an overlay, else a new overlay."""
    if view.private_root(target) is not None:
        return []
    ancestor = view.existing_ancestor(target)
    if ancestor == "/":
        raise CdiError(f"{what}: cannot create {target!r} without writing to the host's / (no overlay on /)")
    if any(_under(b, ancestor) for b, _ in view.binds):
        raise CdiError(
            f"{what}: cannot create {target!r}: an overlay on {ancestor!r} would hide earlier mounts"
        )
    view.overlays.append(ancestor)
    return [{"op": "overlay", "target": ancestor, "index": len(view.overlays) - 1}]


def _plan_mount(view: _View, index: int, mount: Mount) -> list[Op]:
    what = f"CDI mount {mount.host_path!r} -> {mount.container_path!r}"
    target = view.canonical(mount.container_path)
    flags, data = _split_options(mount.options)
    is_bind = mount.type == "bind" or "bind" in flags or "rbind" in flags
    if not is_bind and not mount.type:
        raise CdiError(f"{what}: no mount type and no bind option")
    if is_bind:
        source_kind = view.probe(mount.host_path)
        if source_kind is None:
            raise CdiError(f"{what}: source does not exist on the host")
        want = "dir" if source_kind == "dir" else "file"
    else:
        want = "dir"
    ops: list[Op] = []
    existing = view.kind(target)
    if existing is None:
        ops += _make_room(view, target, what)
        ops.append({"op": "create", "path": target, "kind": want, "mount": index})
        view.created[target] = want
    elif (existing == "dir") != (want == "dir"):
        raise CdiError(f"{what}: target is a {existing} but the source is a {want}")
    if is_bind:
        ops.append(
            {"op": "bind", "source": mount.host_path, "target": target, "recursive": "rbind" in flags}
            | {"flags": [f for f in flags if f not in ("bind", "rbind")], "mount": index}
        )
        if want == "dir":
            view.binds.append((target, os.path.realpath(mount.host_path)))
    else:
        ops.append(
            {"op": "mount", "fstype": mount.type, "source": mount.host_path, "target": target}
            | {"flags": flags, "data": ",".join(data), "mount": index}
        )
        view.tmpfs.add(target)  # a fresh filesystem: nothing of the host below it
    return ops


def _plan_device(view: _View, index: int, node: DeviceNode) -> list[Op]:
    path = view.canonical(node.path)
    what = f"CDI device node {node.path!r}"
    existing = view.kind(path)
    ops: list[Op] = []
    if existing is not None and view.private_root(path) is None:
        raise CdiError(f"{what}: {path!r} exists on the host and is not under /dev")
    if existing is None:
        ops += _make_room(view, path, what)
    view.created[path] = "node"
    mode = (node.file_mode if node.file_mode is not None else 0o666) & 0o7777
    ops.append(
        {
            "op": "mknod",
            "path": path,
            "type": node.type,
            "major": node.major,
            "minor": node.minor,
            "mode": mode,
        }
        | {"uid": node.uid, "gid": node.gid, "host_path": node.host_path or node.path, "device": index}
    )
    return ops


# --- running containers -------------------------------------------------------------------------------


@dataclass
class ContainerSpec:
    """What the kubelet asks the runtime for."""

    name: str
    command: Sequence[str]
    #: This container's own directory (e.g. ``<root>/containers/<pod>/<container>``): log, config, record.
    sandbox_dir: Path
    args: Sequence[str] = ()
    env: Mapping[str, str] | Sequence[str] = ()
    working_dir: str | None = None
    cdi_devices: Sequence[str] = ()
    pod_uid: str = ""
    pod_name: str = ""
    pod_namespace: str = "default"
    #: Where ``<pid>/cgroup`` files go (the exporter's ``--proc-root``); ``None``: none are written.
    proc_root: Path | None = None

    def argv(self) -> list[str]:
        return [*self.command, *self.args]

    def env_list(self) -> list[str]:
        if isinstance(self.env, Mapping):
            return [f"{k}={v}" for k, v in self.env.items()]
        return list(self.env)


def cgroup_path(pod_uid: str, container_id: str) -> str:
    """The cgroup v2 path a best-effort pod's container has under containerd's systemd driver."""
    pod = pod_uid.replace("-", "_")
    return (
        "/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{pod}.slice/cri-containerd-{container_id}.scope"
    )


def _exit_code(returncode: int) -> int:
    # Runtimes report a signal death as 128 + signal number (137 for SIGKILL).
    return 128 - returncode if returncode < 0 else returncode


class _CgroupFiles:
    """``<proc-root>/<pid>/cgroup`` for the container's process tree, kept in step while it runs."""

    def __init__(self, proc_root: Path | None, line: str) -> None:
        self.proc_root = proc_root
        self.line = line
        self.pids: set[int] = set()

    def add(self, pid: int) -> None:
        if self.proc_root is None or pid in self.pids:
            return
        directory = self.proc_root / str(pid)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / ".cgroup.tmp"
        tmp.write_text(self.line)
        tmp.replace(directory / "cgroup")
        self.pids.add(pid)

    def remove(self, pid: int) -> None:
        self.pids.discard(pid)
        if self.proc_root is None:
            return
        directory = self.proc_root / str(pid)
        with contextlib.suppress(FileNotFoundError):
            (directory / "cgroup").unlink()
        with contextlib.suppress(OSError):
            directory.rmdir()

    def sync(self, root_pid: int) -> None:
        """Match the files to the live descendants of ``root_pid`` (pids reused later are not ours)."""
        live = {root_pid, *_descendants(root_pid)} if _alive(root_pid) else set()
        for pid in live - self.pids:
            self.add(pid)
        for pid in self.pids - live:
            self.remove(pid)

    def clear(self) -> None:
        for pid in list(self.pids):
            self.remove(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as handle:
                    children = [int(c) for c in handle.read().split()]
            except OSError:
                continue
            for child in children:
                if child not in found:
                    found.add(child)
                    stack.append(child)
    return found


def _group_members(pgid: int) -> set[int]:
    """Live processes of process group ``pgid`` (the container's init started one)."""
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError):
                if os.getpgid(int(entry)) == pgid and _alive(int(entry)):
                    members.add(int(entry))
    return members


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _wait_gone(pids: set[int], timeout: float = 10.0) -> None:
    """Wait until the killed processes have exited (they are not our children: watch them through pidfds)."""
    loop = asyncio.get_running_loop()
    watched: dict[int, tuple[int, asyncio.Future[None]]] = {}
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve, done)
        watched[pid] = (fd, done)
    try:
        if watched:
            await asyncio.wait([done for _, done in watched.values()], timeout=timeout)
    finally:
        for fd, _ in watched.values():
            loop.remove_reader(fd)
            os.close(fd)
    survivors = sorted(pid for pid, (_, done) in watched.items() if not done.done())
    if survivors:
        log.warning("container processes survived SIGKILL", pids=survivors)


def _signal_tree(pid: int, pids: Iterable[int], sig: int) -> None:
    """Signal the container's process group and any descendants that left it (like a pid-namespace kill)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    for other in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(other, sig)


@dataclass
class _Container:
    """Internal state of one container, shared by the runtime and its handle."""

    spec: ContainerSpec
    id: str
    config: ContainerConfig
    record: dict[str, Any]
    cgroups: _CgroupFiles
    pid: int = 0

    def state(self, status: str) -> dict[str, Any]:
        """The OCI state document hooks read on stdin."""
        spec = self.spec
        return {
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": status,
            "pid": self.pid,
            "bundle": str(spec.sandbox_dir),
            "annotations": {
                "io.kubernetes.pod.uid": spec.pod_uid,
                "io.kubernetes.pod.name": spec.pod_name,
                "io.kubernetes.pod.namespace": spec.pod_namespace,
                "io.kubernetes.container.name": spec.name,
            },
        }

    def save_record(self) -> None:
        with contextlib.suppress(OSError):
            tmp = self.spec.sandbox_dir / ".record.json.tmp"
            tmp.write_text(json.dumps(self.record, indent=2))
            tmp.replace(self.spec.sandbox_dir / "record.json")


class ContainerHandle:
    """A running (or finished) container."""

    def __init__(
        self, runtime: SimRuntime, container: _Container, process: asyncio.subprocess.Process
    ) -> None:
        self.id = container.id
        self.spec = container.spec
        self.pid = process.pid
        self._runtime = runtime
        self._container = container
        self._process = process
        self.exit_code: int | None = None
        #: Set once the poststart hooks ran: poststop must come after them, however fast the command exits.
        self._started = asyncio.Event()
        self._mirror = asyncio.create_task(self._mirror_cgroups(), name=f"cgroups[{self.spec.name}]")
        self._reaper = asyncio.create_task(self._reap(), name=f"reaper[{self.spec.name}]")

    @property
    def log_path(self) -> Path:
        return self.spec.sandbox_dir / "log"

    @property
    def record(self) -> dict[str, Any]:
        """What the container saw (env, device nodes, mounts, hooks, isolation) and how it ended. JSON-able."""
        return copy.deepcopy(self._container.record)

    @property
    def running(self) -> bool:
        return not self._reaper.done()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait(self) -> int:
        """Wait for the container to exit (and its poststop hooks to run); its exit code."""
        return await asyncio.shield(self._reaper)

    async def terminate(self, grace: float = 30.0) -> int:
        """SIGTERM the container's process, SIGKILL everything after ``grace`` seconds; its exit code."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    return await self.wait()
            except TimeoutError:
                _signal_tree(self.pid, self._container.cgroups.pids, signal.SIGKILL)
        return await self.wait()

    async def _mirror_cgroups(self) -> None:
        while True:
            await asyncio.sleep(self._runtime.cgroup_sync_interval)
            self._container.cgroups.sync(self.pid)

    async def _reap(self) -> int:
        returncode = await self._process.wait()
        await cancel_and_wait(self._mirror)
        cgroups = self._container.cgroups
        # The main process is gone: like a pid namespace's init, take the rest of the container with it.
        leftovers = cgroups.pids - {self.pid}
        _signal_tree(self.pid, leftovers, signal.SIGKILL)
        await _wait_gone(leftovers | _group_members(self.pid))
        cgroups.clear()
        code = _exit_code(returncode)
        self.exit_code = code
        record = self._container.record
        record["exitCode"] = code
        record["finishedAt"] = now()
        await self._started.wait()
        await self._runtime._run_hooks(self._container, ("poststop",), "stopped", fatal=False)
        self._container.save_record()
        log.info(
            "container exited", container=self.spec.name, pod=self.spec.pod_name, id=self.id[:12], code=code
        )
        return code


class SimRuntime:
    """Creates containers from :class:`ContainerSpec`\\ s, injecting CDI devices from ``cdi_dirs``.

    ``isolation``: ``auto`` (private mount namespace when the kernel allows it, else run unisolated and
    record ``isolated: false``), ``required`` (fail instead) or ``off``.
    """

    def __init__(
        self,
        cdi_dirs: Sequence[str | os.PathLike[str]] = DEFAULT_SPEC_DIRS,
        *,
        isolation: Isolation = "auto",
        create_timeout: float = 120.0,
        cgroup_sync_interval: float = 0.2,
    ) -> None:
        self.registry = CdiRegistry(cdi_dirs)
        self.isolation = isolation
        self.create_timeout = create_timeout
        self.cgroup_sync_interval = cgroup_sync_interval

    async def run_container(self, spec: ContainerSpec) -> ContainerHandle:
        """Create and start a container; raises :class:`ContainerCreateError` when that fails."""
        container_id = secrets.token_hex(32)
        spec.sandbox_dir.mkdir(parents=True, exist_ok=True)
        config = self._configure(spec)
        try:
            ops = plan_filesystem(config)
        except CdiError as err:
            raise ContainerCreateError(f"failed to create container {spec.name!r}: {err}") from None
        container = _Container(
            spec=spec,
            id=container_id,
            config=config,
            record=_new_record(spec, container_id, config),
            cgroups=_CgroupFiles(spec.proc_root, f"0::{cgroup_path(spec.pod_uid, container_id)}\n"),
        )
        process, status_read, control_write = await self._spawn_init(container, ops)
        container.pid = process.pid
        try:
            async with asyncio.timeout(self.create_timeout):
                await self._start(container, process, status_read, control_write)
        except BaseException as err:
            _signal_tree(process.pid, container.cgroups.pids, signal.SIGKILL)
            await process.wait()
            container.cgroups.clear()
            container.record["error"] = str(err)
            container.save_record()
            if isinstance(err, TimeoutError):
                raise ContainerCreateError(
                    f"container {spec.name!r} did not start within {self.create_timeout:g}s"
                ) from None
            raise
        finally:
            os.close(control_write)
        handle = ContainerHandle(self, container, process)
        try:
            await self._run_hooks(container, ("poststart",), "running", fatal=False)
        finally:
            handle._started.set()
        container.save_record()
        log.info(
            "container started",
            container=spec.name,
            pod=f"{spec.pod_namespace}/{spec.pod_name}",
            id=container_id[:12],
            pid=process.pid,
            isolated=container.record["isolated"],
            cdi_devices=len(spec.cdi_devices),
        )
        return handle

    def _configure(self, spec: ContainerSpec) -> ContainerConfig:
        self.registry.refresh()
        try:
            edits = self.registry.resolve(list(spec.cdi_devices))
        except UnresolvableDevicesError as err:
            for path, errors in err.spec_errors.items():
                log.warning("cdi spec ignored", path=path, error="; ".join(errors))
            raise ContainerCreateError(f"CDI device injection failed: {err}") from err
        base = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={spec.pod_name or spec.name}"]
        try:
            return apply_edits(merge_env(base, spec.env_list()), edits)
        except CdiError as err:
            raise ContainerCreateError(f"CDI device injection failed: {err}") from None

    async def _spawn_init(
        self, container: _Container, ops: list[Op]
    ) -> tuple[asyncio.subprocess.Process, int, int]:
        spec, config = container.spec, container.config
        status_read, status_write = os.pipe()
        control_read, control_write = os.pipe()
        init_config = {
            "id": container.id,
            "isolation": self.isolation,
            "argv": spec.argv(),
            "env": list(config.env),
            "cwd": spec.working_dir or "/",
            "additional_gids": list(config.additional_gids),
            "ops": ops,
            "scratch_dir": str(spec.sandbox_dir / "scratch"),
            "hooks": {name: [h.to_json() for h in config.hooks.get(name, ())] for name in CONTAINER_HOOKS},
            "state": container.state("creating"),
            "status_fd": status_write,
            "control_fd": control_read,
        }
        config_path = spec.sandbox_dir / "config.json"
        config_path.write_text(json.dumps(init_config, indent=2))
        init_env = {"PYTHONPATH": _PACKAGE_PARENT, "PATH": os.environ.get("PATH", DEFAULT_PATH)}
        log_fd = os.open(spec.sandbox_dir / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-S",
                "-m",
                "driver.sim.container_init",
                str(config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                env=init_env,
                pass_fds=(status_write, control_read),
                start_new_session=True,  # its own process group: the container's processes, killable at once
            )
        except BaseException:
            for fd in (status_read, control_write):
                os.close(fd)
            raise
        finally:
            for fd in (log_fd, status_write, control_read):
                os.close(fd)
        return process, status_read, control_write

    async def _start(
        self, container: _Container, process: asyncio.subprocess.Process, status_read: int, control_write: int
    ) -> None:
        """Drive the init through create -> createRuntime hooks -> start -> exec."""
        name, record = container.spec.name, container.record
        record["pid"] = process.pid
        container.cgroups.add(process.pid)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(status_read, "rb", buffering=0)
        )
        try:
            last = ""
            while line := await reader.readline():
                event = json.loads(line)
                last = event["event"]
                if last == "created":
                    _note_created(record, event)
                    if not event["isolated"] and self.isolation == "required":
                        raise ContainerCreateError(
                            f"container {name!r}: isolation required but unavailable: {event.get('reason')}"
                        )
                    await self._run_hooks(container, RUNTIME_HOOKS, "creating", fatal=True)
                    os.write(control_write, b"start\n")
                elif last == "hook":
                    record["hooks"].append(event["result"])
                elif last == "error":
                    raise ContainerCreateError(f"failed to start container {name!r}: {event['error']}")
            if last != "exec":
                await process.wait()
                tail = _tail(container.spec.sandbox_dir / "log")
                raise ContainerCreateError(
                    f"failed to start container {name!r}: init exited ({process.returncode}) before exec"
                    + (f": {tail}" if tail else "")
                )
            record["startedAt"] = now()
        finally:
            transport.close()

    async def _run_hooks(
        self, container: _Container, names: Sequence[str], status: str, *, fatal: bool
    ) -> None:
        """Run the runtime-namespace hooks of ``names``, in order; a failure is fatal only before start."""
        for name in names:
            for hook in container.config.hooks.get(name, ()):
                result = await asyncio.to_thread(run_hook, hook.to_json(), container.state(status))
                container.record["hooks"].append(result)
                if result.get("error"):
                    if fatal:
                        raise ContainerCreateError(
                            f"failed to start container {container.spec.name!r}: {result['error']}"
                        )
                    log.warning(
                        "hook failed", container=container.spec.name, hook=name, error=result["error"]
                    )


def _tail(path: Path, limit: int = 400) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - limit))
            return handle.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _new_record(spec: ContainerSpec, container_id: str, config: ContainerConfig) -> dict[str, Any]:
    return {
        "id": container_id,
        "name": spec.name,
        "pod": {"uid": spec.pod_uid, "name": spec.pod_name, "namespace": spec.pod_namespace},
        "command": spec.argv(),
        "workingDir": spec.working_dir or "/",
        "cdiDevices": list(spec.cdi_devices),
        "env": list(config.env),
        "deviceNodes": [n.to_json() | {"created": None} for n in config.device_nodes],
        "mounts": [m.to_json() | {"mounted": None} for m in config.mounts],
        "overlays": [],
        "additionalGids": list(config.additional_gids),
        "netDevices": list(config.net_devices),
        "hooks": [],
        "isolated": None,
        "pid": None,
        "cgroup": f"0::{cgroup_path(spec.pod_uid, container_id)}",
        "startedAt": None,
        "finishedAt": None,
        "exitCode": None,
    }


def _note_created(record: dict[str, Any], event: Mapping[str, Any]) -> None:
    """Fold the init's per-operation results into the record."""
    record["isolated"] = bool(event["isolated"])
    if not event["isolated"]:
        record["isolationError"] = event.get("reason")
        for entry in (*record["deviceNodes"], *record["mounts"]):
            entry["created" if "created" in entry else "mounted"] = "no: not isolated"
    for result in event.get("results", []):
        if "device" in result:
            record["deviceNodes"][result["device"]]["created"] = result["how"]
        elif "mount" in result and result["op"] in ("bind", "mount"):
            record["mounts"][result["mount"]]["mounted"] = result["how"]
        elif result["op"] == "overlay":
            record["overlays"].append(result["target"])
