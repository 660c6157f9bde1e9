"""The init of a sandbox container: ``python -m driver.sim.container_init <config.json>``.

Started by :class:`driver.sim.runtime.SimRuntime` (which writes the config), it plays the part of runc's
init process:

1. enter a private mount namespace: ``unshare(CLONE_NEWNS)`` through ctypes (Python 3.11 has no
   ``os.unshare``); not root: ``CLONE_NEWUSER | CLONE_NEWNS`` mapping the caller to root; neither permitted:
   carry on without isolation when the config allows it;
2. make every mount ``rprivate`` first, so nothing done here propagates to the host;
3. carry out the planned operations (tmpfs ``/dev``, device nodes, overlays, bind mounts);
4. report ``created`` on the status pipe and wait for ``start`` on the control pipe (the runtime runs the
   createRuntime hooks in between);
5. run the createContainer and startContainer hooks (inside the namespace), then ``execve`` the command:
   the pid stays the same, and the status pipe, being close-on-exec, reports success by closing.

Only the standard library is used, so this starts fast and works with ``python -S``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

#: option -> (flag bits, set?) as mount(8) and runc read them.
FLAGS: dict[str, tuple[int, bool]] = {
    "ro": (MS_RDONLY, True),
    "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True),
    "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True),
    "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True),
    "exec": (MS_NOEXEC, False),
    "sync": (MS_SYNCHRONOUS, True),
    "async": (MS_SYNCHRONOUS, False),
    "dirsync": (MS_DIRSYNC, True),
    "noatime": (MS_NOATIME, True),
    "atime": (MS_NOATIME, False),
    "nodiratime": (MS_NODIRATIME, True),
    "diratime": (MS_NODIRATIME, False),
    "relatime": (MS_RELATIME, True),
    "norelatime": (MS_RELATIME, False),
    "strictatime": (MS_STRICTATIME, True),
    "nostrictatime": (MS_STRICTATIME, False),
}
PROPAGATION = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}
#: Flags of the mount underneath that a bind remount must keep (the kernel refuses to drop them in a
#: user namespace; elsewhere keeping them means a container never gets less restriction than the host).
LOCKED = (
    (os.ST_RDONLY, MS_RDONLY),
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
)
ATIME = ((os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
NODE_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
HOOK_OUTPUT_LIMIT = 4096


class InitError(Exception):
    """A setup step failed; the message names the path and the operation."""


# --- hooks (also used by the runtime for the hooks that run outside the namespace) -------------------


def run_hook(hook: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    """Run one OCI/CDI hook: ``args`` is the full argv, ``env`` the whole environment, the state on stdin.

    Returns a JSON-able result; ``error`` is set when the hook could not run, timed out or failed.
    """
    name, path = hook["hookName"], hook["path"]
    argv = list(hook.get("args") or [path])
    env = dict(item.partition("=")[::2] for item in hook.get("env", ()))
    timeout = hook.get("timeout")
    result: dict[str, Any] = {
        "hookName": name,
        "path": path,
        "args": argv,
        "env": list(hook.get("env", ())),
        "exitCode": None,
        "output": "",
        "error": None,
    }
    try:
        proc = subprocess.run(
            argv,
            executable=path,
            input=json.dumps(state).encode(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=timeout if timeout and timeout > 0 else None,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        result["output"] = _tail(err.output)
        result["error"] = f"{name} hook {path} timed out after {timeout}s"
        return result
    except OSError as err:
        result["error"] = f"{name} hook {path} could not run: {err.strerror}"
        return result
    result["exitCode"] = proc.returncode
    result["output"] = _tail(proc.stdout)
    if proc.returncode != 0:
        last = result["output"].strip().splitlines()[-1:] or [""]
        result["error"] = f"{name} hook {path} exited with status {proc.returncode}: {last[0]}".rstrip(": ")
    return result


def _tail(data: bytes | str | None) -> str:
    if data is None:
        return ""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return text[-HOOK_OUTPUT_LIMIT:]


# --- namespaces and mounts ---------------------------------------------------------------------------


class _Libc:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        self.lib.unshare.argtypes = [ctypes.c_int]

    def unshare(self, flags: int) -> int:
        """0, or the errno of the failure."""
        return 0 if self.lib.unshare(flags) == 0 else ctypes.get_errno()

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        def enc(value: str | None) -> bytes | None:
            return None if value is None else os.fsencode(value)

        if self.lib.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), target)


def enter_namespace(libc: _Libc, mode: str) -> tuple[bool, str | None]:
    """Enter a private mount namespace: (isolated, why not)."""
    if mode == "off":
        return False, "isolation turned off"
    if os.geteuid() == 0:
        code = libc.unshare(CLONE_NEWNS)
    else:
        uid, gid = os.getuid(), os.getgid()
        code = libc.unshare(CLONE_NEWUSER | CLONE_NEWNS)
        if code == 0:
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w", encoding="ascii") as handle:
                    handle.write(text)
    if code != 0:
        return False, f"unshare: {os.strerror(code)}"
    # Before anything else: nothing mounted from here on may propagate back to the host.
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    return True, None


def probe_isolation() -> bool:
    """Whether this process can enter a private mount namespace and mount a tmpfs in it (then exits it)."""
    import tempfile

    libc = _Libc()
    isolated, _ = enter_namespace(libc, "auto")
    if not isolated:
        return False
    with tempfile.TemporaryDirectory(prefix="accel-dra-probe-") as scratch:
        try:
            libc.mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k")
        except OSError:
            return False
        libc.lib.umount2(os.fsencode(scratch), 0)
    return True


def _mount_flags(options: Sequence[str]) -> tuple[int, int]:
    """(mount flags, propagation flags) from option names."""
    flags = propagation = 0
    for option in options:
        if option in FLAGS:
            bits, on = FLAGS[option]
            flags = flags | bits if on else flags & ~bits
        elif option in PROPAGATION:
            propagation |= PROPAGATION[option]
    return flags, propagation


class Setup:
    """Carries out the runtime's plan inside the namespace."""

    def __init__(self, libc: _Libc, scratch_dir: str) -> None:
        self.libc = libc
        self.scratch_dir = scratch_dir
        self.scratch_mounted = False
        # The host's /dev stays reachable through this descriptor after /dev is replaced.
        self.host_dev = os.open("/dev", os.O_RDONLY | os.O_DIRECTORY)

    def run(self, op: Mapping[str, Any]) -> dict[str, Any]:
        kind = op["op"]
        result = {k: v for k, v in op.items() if k in ("op", "target", "path", "mount", "device")}
        try:
            result["how"] = getattr(self, f"_op_{kind}")(op)
        except OSError as err:
            where = op.get("target") or op.get("path")
            raise InitError(f"{kind} {where}: {err.strerror}") from None
        return result

    def _op_tmpfs(self, op: Mapping[str, Any]) -> str:
        os.makedirs(op["target"], exist_ok=True)
        flags, _ = _mount_flags(op.get("flags", ()))
        self.libc.mount("tmpfs", op["target"], "tmpfs", flags, op.get("data") or None)
        return "tmpfs"

    def _op_devpts(self, op: Mapping[str, Any]) -> str:
        os.makedirs(op["target"], exist_ok=True)
        try:
            self.libc.mount(
                "devpts", op["target"], "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"
            )
        except OSError as err:
            return f"skipped: {err.strerror}"  # a container without ptys still runs
        return "devpts"

    def _op_symlink(self, op: Mapping[str, Any]) -> str:
        os.symlink(op["target"], op["path"])
        return "symlink"

    def _op_create(self, op: Mapping[str, Any]) -> str:
        path = op["path"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if op["kind"] == "dir":
            os.makedirs(path, exist_ok=True)
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
        return "created"

    def _op_overlay(self, op: Mapping[str, Any]) -> str:
        target = op["target"]
        if any(c in target for c in ",:\\"):
            raise InitError(f"overlay {target}: paths with ',', ':' or '\\' cannot be overlaid")
        if not self.scratch_mounted:
            # Upper layers live on a tmpfs mounted only in this namespace: nothing reaches the disk.
            os.makedirs(self.scratch_dir, exist_ok=True)
            self.libc.mount("tmpfs", self.scratch_dir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=700")
            self.scratch_mounted = True
        upper = os.path.join(self.scratch_dir, str(op["index"]), "upper")
        work = os.path.join(self.scratch_dir, str(op["index"]), "work")
        os.makedirs(upper)
        os.makedirs(work)
        data = f"lowerdir={target},upperdir={upper},workdir={work}"
        try:
            self.libc.mount("overlay", target, "overlay", 0, data)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.EPERM) or not _in_userns():
                raise
            # Unprivileged overlayfs (user namespaces) keeps its metadata in user.* xattrs.
            self.libc.mount("overlay", target, "overlay", 0, data + ",userxattr")
        return "overlay"

    def _op_bind(self, op: Mapping[str, Any]) -> str:
        source, target = op["source"], op["target"]
        self.libc.mount(source, target, None, MS_BIND | (MS_REC if op.get("recursive") else 0), None)
        self._remount(target, op.get("flags", ()))
        return "rbind" if op.get("recursive") else "bind"

    def _remount(self, target: str, options: Sequence[str]) -> None:
        flags, propagation = _mount_flags(options)
        if flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC):
            current = os.statvfs(target).f_flag
            kept = sum(bit for st_bit, bit in (*LOCKED, *ATIME) if current & st_bit)
            self.libc.mount(None, target, None, MS_REMOUNT | MS_BIND | flags | kept, None)
        if propagation:
            self.libc.mount(None, target, None, propagation, None)

    def _op_mount(self, op: Mapping[str, Any]) -> str:
        flags, propagation = _mount_flags(op.get("flags", ()))
        fstype = str(op["fstype"])
        self.libc.mount(op["source"], op["target"], fstype, flags, op.get("data") or None)
        if propagation:
            self.libc.mount(None, op["target"], None, propagation, None)
        return fstype

    def _op_mknod(self, op: Mapping[str, Any]) -> str:
        path = op["path"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mode = op["mode"]
        try:
            os.mknod(path, mode | NODE_TYPES[op["type"]], os.makedev(op["major"], op["minor"]))
            how = "mknod"
        except PermissionError:
            how = self._node_fallback(path, op.get("host_path") or path)
            if how == "bind":
                return how  # the host's own node: its mode and owner are not ours to change
        os.chmod(path, mode)  # mknod applied the umask
        uid, gid = op.get("uid"), op.get("gid")
        if uid is not None or gid is not None:
            os.chown(path, -1 if uid is None else int(uid), -1 if gid is None else int(gid))
        return how

    def _node_fallback(self, path: str, host_path: str) -> str:
        """mknod not permitted (user namespace): bind the host's node if there is one, else an empty file."""
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
        source = host_path
        if host_path == "/dev" or host_path.startswith("/dev/"):
            source = f"/proc/self/fd/{self.host_dev}/{host_path[len('/dev/') :]}"
        if os.path.exists(source):
            self.libc.mount(source, path, None, MS_BIND, None)
            return "bind"
        return "file"


def _in_userns() -> bool:
    try:
        with open("/proc/self/uid_map", encoding="ascii") as handle:
            return handle.read().split()[:3] != ["0", "0", "4294967295"]
    except OSError:
        return False


# --- the init itself --------------------------------------------------------------------------------


class _Channel:
    def __init__(self, status_fd: int, control_fd: int) -> None:
        self.status_fd = status_fd
        self.control = os.fdopen(control_fd, "r", encoding="ascii")

    def send(self, event: str, **fields: Any) -> None:
        os.write(self.status_fd, (json.dumps({"event": event, **fields}) + "\n").encode())

    def wait_start(self) -> bool:
        return self.control.readline().strip() == "start"

    def close_on_exec(self) -> None:
        os.set_inheritable(self.status_fd, False)
        os.set_inheritable(self.control.fileno(), False)


def _prepare(config: Mapping[str, Any], channel: _Channel) -> None:
    libc = _Libc()
    isolated, reason = enter_namespace(libc, config["isolation"])
    results: list[dict[str, Any]] = []
    if isolated:
        setup = Setup(libc, config["scratch_dir"])
        results = [setup.run(op) for op in config["ops"]]
        os.close(setup.host_dev)
    channel.send("created", isolated=isolated, reason=reason, results=results)


def _run_container_hooks(config: Mapping[str, Any], channel: _Channel) -> None:
    state = dict(config["state"])
    for name, status in (("createContainer", "creating"), ("startContainer", "created")):
        for hook in config["hooks"].get(name, ()):
            result = run_hook(hook, state | {"pid": os.getpid(), "status": status})
            channel.send("hook", result=result)
            if result["error"]:
                raise InitError(result["error"])


def _exec(config: Mapping[str, Any], channel: _Channel) -> None:
    gids = config.get("additional_gids") or []
    if gids and os.geteuid() == 0:
        with contextlib.suppress(OSError):  # refused in a user namespace; recorded by the runtime anyway
            os.setgroups(sorted(set(os.getgroups()) | set(gids)))
    cwd = config["cwd"]
    try:
        os.chdir(cwd)
    except OSError as err:
        raise InitError(f"chdir to cwd ({cwd!r}) set in config.json failed: {err.strerror}") from None
    env = dict(item.partition("=")[::2] for item in config["env"])
    argv = config["argv"]
    if not argv:
        raise InitError("no command given")
    # Python ignores these at startup; an ignored signal would stay ignored across exec.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    channel.send("exec")
    channel.close_on_exec()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as err:
        raise InitError(f"exec: {argv[0]!r}: {err.strerror}") from None


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m driver.sim.container_init CONFIG.json", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as handle:
        config = json.load(handle)
    channel = _Channel(config["status_fd"], config["control_fd"])
    try:
        _prepare(config, channel)
        if not channel.wait_start():
            return 1
        _run_container_hooks(config, channel)
        _exec(config, channel)
    except (InitError, OSError) as err:
        channel.send("error", error=str(err))
        return 127
    return 0  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv))
