"""The sandbox container runtime with real processes, mount namespaces, device nodes, hooks and files.

CDI specs are hand-written here (the project's CDI writer is tested on its own). Every test checks on the
way out that the host's mount table, /dev and the directories containers overlay are exactly as before.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import driver
from driver.devices.backend import open_backend
from driver.sim.driverroot import create_driver_root
from driver.sim.runtime import (
    ContainerCreateError,
    ContainerHandle,
    ContainerSpec,
    SimRuntime,
    isolation_available,
)

KIND = "k8s.gpu.accel-dra.dev/gpu"
PROJECT = str(Path(driver.__file__).resolve().parent.parent)
LIB_DIR = "/usr/lib/x86_64-linux-gnu" if os.path.isdir("/usr/lib/x86_64-linux-gnu") else "/usr/lib"
ISOLATION = isolation_available()
needs_isolation = pytest.mark.skipif(not ISOLATION, reason="mount namespaces not permitted here")


# --- fixtures ---------------------------------------------------------------------------------------------


def _host_state() -> dict[str, Any]:
    if shutil.which("findmnt"):
        mounts = subprocess.run(
            ["findmnt", "-rn", "-o", "TARGET,FSTYPE,SOURCE"], capture_output=True, text=True, check=True
        ).stdout
    else:
        mounts = Path("/proc/self/mountinfo").read_text()
    return {
        "mounts": sorted(mounts.splitlines()),
        "/dev": sorted(os.listdir("/dev")),
        "/usr/bin": sorted(os.listdir("/usr/bin")),
        LIB_DIR: sorted(os.listdir(LIB_DIR)),
    }


@pytest.fixture(autouse=True)
def host_unchanged() -> Iterator[None]:
    before = _host_state()
    yield
    after = _host_state()
    for key in before:
        assert after[key] == before[key], f"the host's {key} changed"


@dataclass
class Sandbox:
    root: Path
    cdi: Path
    proc: Path
    state: Path

    def spec_file(self, name: str, spec: dict[str, Any]) -> Path:
        path = self.cdi / name
        path.write_text(json.dumps(spec))
        return path


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with tempfile.TemporaryDirectory(prefix="adra-rt-", dir="/tmp") as root:
        box = Sandbox(Path(root), Path(root, "cdi"), Path(root, "proc"), Path(root, "fake-state"))
        for path in (box.cdi, box.proc, box.state):
            path.mkdir()
        yield box


Run = Callable[..., Any]


@pytest.fixture
async def run(sandbox: Sandbox) -> AsyncIterator[Run]:
    """Start a container in the sandbox; every container still running is killed at the end."""
    handles: list[ContainerHandle] = []

    async def start(
        name: str,
        command: list[str],
        devices: tuple[str, ...] = (),
        runtime: SimRuntime | None = None,
        **kw: Any,
    ) -> ContainerHandle:
        rt = runtime or SimRuntime([sandbox.cdi])
        spec = ContainerSpec(
            name=name,
            command=command,
            sandbox_dir=sandbox.root / "containers" / "pod" / name,
            cdi_devices=devices,
            pod_uid=kw.pop("pod_uid", "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"),
            pod_name="pod",
            pod_namespace="default",
            proc_root=sandbox.proc,
            **kw,
        )
        handle = await rt.run_container(spec)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        await handle.terminate(grace=0)


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():  # noqa: ASYNC110 - files and logs written by other processes: nothing to await
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def node(path: str, minor: int, major: int = 195) -> dict[str, Any]:
    return {"path": path, "type": "c", "major": major, "minor": minor}


def claim_spec(claim: str, minors: list[int], spec_edits: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "cdiVersion": "0.5.0",
        "kind": KIND,
        "containerEdits": spec_edits
        if spec_edits is not None
        else {"env": [f"CLAIM_{claim.upper()}=present"], "deviceNodes": [node("/dev/nvidiactl", 255)]},
        "devices": [
            {
                "name": f"{claim}-gpu{m}",
                "containerEdits": {
                    "env": [f"ACCEL_DRA_DEVICE_GPU{m}=GPU-{m}"],
                    "deviceNodes": [node(f"/dev/nvidia{m}", m)],
                },
            }
            for m in minors
        ],
    }


def ids(claim: str, *minors: int) -> tuple[str, ...]:
    return tuple(f"{KIND}={claim}-gpu{m}" for m in minors)


# --- isolation ------------------------------------------------------------------------------------------


@needs_isolation
async def test_container_sees_exactly_its_cdi_device_nodes(sandbox: Sandbox, run: Run) -> None:
    sandbox.spec_file("claim-a.json", claim_spec("a", [0, 3]))
    handle = await run("main", ["sh", "-c", "ls -1 /dev/nvidia*; env"], ids("a", 0, 3))
    assert await handle.wait() == 0
    lines = handle.log_text().splitlines()
    assert [line for line in lines if line.startswith("/dev/")] == [
        "/dev/nvidia0",
        "/dev/nvidia3",
        "/dev/nvidiactl",
    ]
    assert {"ACCEL_DRA_DEVICE_GPU0=GPU-0", "ACCEL_DRA_DEVICE_GPU3=GPU-3", "CLAIM_A=present"} <= set(lines)

    record = handle.record
    json.dumps(record)  # what the demo prints must serialise
    assert record["isolated"] is True
    assert [(n["path"], n["major"], n["minor"], n["created"]) for n in record["deviceNodes"]] == [
        ("/dev/nvidiactl", 195, 255, "mknod"),
        ("/dev/nvidia0", 195, 0, "mknod"),
        ("/dev/nvidia3", 195, 3, "mknod"),
    ]
    assert record["exitCode"] == 0 and re.fullmatch("[0-9a-f]{64}", record["id"])


@needs_isolation
async def test_container_without_devices_sees_no_gpu_nodes(run: Run) -> None:
    handle = await run("plain", ["sh", "-c", "ls /dev/nvidia* 2>&1; ls /dev"])
    assert await handle.wait() == 0
    log = handle.log_text()
    assert "No such file" in log
    assert {"null", "zero", "urandom", "tty", "pts", "shm"} <= set(log.split())
    assert not any(name.startswith("nvidia") for name in log.split())


@needs_isolation
async def test_two_running_containers_see_different_devices(sandbox: Sandbox, run: Run) -> None:
    sandbox.spec_file("claim-a.json", claim_spec("a", [1]))
    sandbox.spec_file("claim-b.json", claim_spec("b", [2, 5]))
    command = ["sh", "-c", "ls -1 /dev/ | grep '^nvidia[0-9]' | tr '\\n' ' '; echo; exec sleep 300"]
    first = await run("first", command, ids("a", 1))
    second = await run("second", command, ids("b", 2, 5))
    await eventually(
        lambda: first.log_text().endswith("\n") and second.log_text().endswith("\n"), "both listings"
    )
    assert first.running and second.running
    assert first.log_text().split() == ["nvidia1"]
    assert second.log_text().split() == ["nvidia2", "nvidia5"]
    assert await first.terminate(grace=5) == 128 + signal.SIGTERM
    assert await second.terminate(grace=5) == 128 + signal.SIGTERM


@needs_isolation
async def test_missing_mount_targets_are_overlaid_and_read_only(sandbox: Sandbox, run: Run) -> None:
    source = sandbox.root / "libfake.so.1"
    source.write_text("fake library\n")
    target = f"{LIB_DIR}/libaccel-dra-test.so.1"
    sandbox.spec_file(
        "claim.json",
        claim_spec(
            "a",
            [0],
            {
                "mounts": [
                    {
                        "hostPath": str(source),
                        "containerPath": target,
                        "options": ["ro", "nosuid", "nodev", "bind"],
                    }
                ]
            },
        ),
    )
    script = f"cat {target}; echo x > {target} 2>&1 || echo write-refused; touch {LIB_DIR}/scratch-file && echo overlay-writable"
    handle = await run("libs", ["sh", "-c", script], ids("a", 0))
    assert await handle.wait() == 0
    log = handle.log_text()
    assert "fake library" in log and "write-refused" in log and "overlay-writable" in log
    assert handle.record["overlays"] == [LIB_DIR]
    assert handle.record["mounts"][0]["mounted"] == "bind"
    assert not os.path.exists(target) and not os.path.exists(f"{LIB_DIR}/scratch-file")


async def test_isolation_off_runs_on_the_host_view_and_says_so(sandbox: Sandbox, run: Run) -> None:
    sandbox.spec_file("claim.json", claim_spec("a", [0], {"env": ["SPEC_ENV=1"]}))
    runtime = SimRuntime([sandbox.cdi], isolation="off")
    handle = await run(
        "unisolated", ["sh", "-c", "echo $ACCEL_DRA_DEVICE_GPU0 $SPEC_ENV"], ids("a", 0), runtime=runtime
    )
    assert await handle.wait() == 0
    assert handle.log_text().strip() == "GPU-0 1"
    record = handle.record
    assert record["isolated"] is False
    assert record["deviceNodes"][0]["created"] == "no: not isolated"


@needs_isolation
async def test_required_isolation_is_honoured(sandbox: Sandbox, run: Run) -> None:
    runtime = SimRuntime([sandbox.cdi], isolation="required")
    handle = await run("strict", ["true"], runtime=runtime)
    assert await handle.wait() == 0
    assert handle.record["isolated"] is True


# --- CDI resolution failures ---------------------------------------------------------------------------


async def test_unresolvable_device_fails_creation(sandbox: Sandbox, run: Run) -> None:
    sandbox.spec_file("claim.json", claim_spec("a", [0]))
    sandbox.spec_file("broken.json", {**claim_spec("b", [1]), "unexpected": True})
    marker = sandbox.root / "ran"
    with pytest.raises(
        ContainerCreateError, match=f"unresolvable CDI devices {KIND}=b-gpu1, {KIND}=zz-gpu9$"
    ):
        await run("bad", ["touch", str(marker)], (*ids("a", 0), *ids("b", 1), *ids("zz", 9)))
    assert not marker.exists()
    # The broken file does not stop containers using the good one.
    handle = await run("good", ["sh", "-c", "echo $ACCEL_DRA_DEVICE_GPU0"], ids("a", 0))
    assert await handle.wait() == 0 and handle.log_text().strip() == "GPU-0"


# --- hooks ---------------------------------------------------------------------------------------------

HOOK_PROGRAM = r"""
import json, os, sys
state = json.load(sys.stdin)
# The environment the hook was given (Python itself may add LC_CTYPE to os.environ).
names = sorted(e.split(b"=")[0].decode() for e in open("/proc/self/environ", "rb").read().split(b"\0") if e)
with open(os.environ["LOG"], "a") as log:
    print(sys.argv[1], state["status"], state["pid"], os.path.exists("/dev/accel-dra-hooktest"),
          ",".join(names), os.environ["WHO"], file=log)
"""


def hook(name: str, log: Path, **kw: Any) -> dict[str, Any]:
    return {
        "hookName": name,
        "path": sys.executable,
        "args": ["python3", "-S", "-c", HOOK_PROGRAM, name],
        "env": [f"LOG={log}", f"WHO=hook-{name}"],
        **kw,
    }


@needs_isolation
async def test_hooks_run_in_order_at_their_lifecycle_points(sandbox: Sandbox, run: Run) -> None:
    log = sandbox.root / "hooks.log"
    names = [
        "poststop",
        "startContainer",
        "poststart",
        "createContainer",
        "createRuntime",
    ]  # order given: any
    sandbox.spec_file(
        "claim.json",
        claim_spec(
            "a",
            [0],
            {
                "deviceNodes": [node("/dev/accel-dra-hooktest", 9, major=1)],
                "hooks": [hook(n, log) for n in names],
            },
        ),
    )
    handle = await run("hooked", ["sh", "-c", f"echo main $$ >> {log}"], ids("a", 0))
    assert await handle.wait() == 0
    entries = [line.split() for line in log.read_text().splitlines()]
    order = [e[0] for e in entries]
    assert order[:3] == ["createRuntime", "createContainer", "startContainer"]
    assert order.index("main") > order.index("startContainer")
    assert order[-1] == "poststop" and "poststart" in order
    by_name = {e[0]: e for e in entries}
    pid = str(handle.pid)
    assert by_name["main"][1] == pid  # exec kept the pid the hooks were told about
    expected = {
        # name: (status, sees the container's /dev)
        "createRuntime": ("creating", "False"),
        "createContainer": ("creating", "True"),
        "startContainer": ("created", "True"),
        "poststart": ("running", "False"),
        "poststop": ("stopped", "False"),
    }
    for name, (status, in_container) in expected.items():
        assert by_name[name][1:4] == [status, pid, in_container], name
        assert by_name[name][4:] == ["LOG,WHO", f"hook-{name}"], "hooks get exactly their own env"
    assert [h["hookName"] for h in handle.record["hooks"]] == [
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ]


@needs_isolation
async def test_failing_create_container_hook_fails_the_start(sandbox: Sandbox, run: Run) -> None:
    failing = {
        "hookName": "createContainer",
        "path": "/bin/sh",
        "args": ["sh", "-c", "echo boom >&2; exit 3"],
    }
    sandbox.spec_file("claim.json", claim_spec("a", [0], {"hooks": [failing]}))
    marker = sandbox.root / "ran"
    with pytest.raises(ContainerCreateError, match="createContainer hook /bin/sh exited with status 3: boom"):
        await run("doomed", ["touch", str(marker)], ids("a", 0))
    assert not marker.exists()
    assert os.listdir(sandbox.proc) == []


async def test_hook_timeout_fails_the_start(sandbox: Sandbox, run: Run) -> None:
    slow = {"hookName": "createRuntime", "path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}
    sandbox.spec_file("claim.json", claim_spec("a", [0], {"hooks": [slow]}))
    with pytest.raises(ContainerCreateError, match="createRuntime hook /bin/sleep timed out after 1s"):
        await run("slow", ["true"], ids("a", 0), runtime=SimRuntime([sandbox.cdi], isolation="off"))


# --- process lifecycle, logs, cgroup files --------------------------------------------------------------


async def test_log_captures_stdout_and_stderr_and_exit_code(run: Run) -> None:
    handle = await run(
        "logger", ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"], working_dir="/tmp"
    )
    assert await handle.wait() == 3
    assert handle.log_text().splitlines() == ["to-stdout", "to-stderr"]
    assert handle.log_path.read_text() == handle.log_text()
    saved = json.loads((handle.spec.sandbox_dir / "record.json").read_text())
    assert saved["exitCode"] == 3 and saved["workingDir"] == "/tmp"


async def test_exec_failure_is_a_create_error(run: Run) -> None:
    with pytest.raises(ContainerCreateError, match="no-such-command-xyz"):
        await run("missing", ["no-such-command-xyz"])


async def test_terminate_escalates_to_sigkill_after_the_grace_period(run: Run) -> None:
    stubborn = await run("stubborn", ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"])
    await eventually(lambda: "ready" in stubborn.log_text(), "the container to start")
    assert await stubborn.terminate(grace=0.5) == 128 + signal.SIGKILL
    polite = await run("polite", ["sleep", "300"])
    assert await polite.terminate(grace=10) == 128 + signal.SIGTERM


async def test_cgroup_files_follow_the_container_processes(sandbox: Sandbox, run: Run) -> None:
    pid_file = sandbox.root / "child.pid"
    handle = await run(
        "tree", ["sh", "-c", f"sleep 300 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; wait"]
    )
    main_file = sandbox.proc / str(handle.pid) / "cgroup"
    expected = (
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0"
        f".slice/cri-containerd-{handle.id}.scope\n"
    )
    assert main_file.read_text() == expected
    await eventually(pid_file.exists, "the child's pid")
    child = int(pid_file.read_text())
    child_file = sandbox.proc / str(child) / "cgroup"
    await eventually(child_file.exists, "the child's cgroup file")
    assert child_file.read_text() == expected
    assert await handle.terminate(grace=5) == 128 + signal.SIGTERM
    assert os.listdir(sandbox.proc) == []
    assert (
        not Path(f"/proc/{child}").exists()
        or "Z" in Path(f"/proc/{child}/stat").read_text().split(")")[1][:3]
    )


# --- the fake driver root inside containers --------------------------------------------------------------


@needs_isolation
async def test_fake_nvidia_smi_in_a_container_sees_only_its_gpus(sandbox: Sandbox, run: Run) -> None:
    inventory = open_backend("fake:dgx-h100").discover()
    root = create_driver_root(sandbox.root / "driver-root", inventory)
    ver = root.driver_version
    ro = ["ro", "nosuid", "nodev", "bind"]
    mounts = [
        {"hostPath": str(lib), "containerPath": f"{LIB_DIR}/{lib.name}", "options": ro}
        for lib in root.libraries
    ] + [{"hostPath": str(root.nvidia_smi), "containerPath": "/usr/bin/nvidia-smi", "options": ro}]
    symlink = {
        "hookName": "createContainer",
        "path": "/bin/ln",
        "args": ["ln", "-s", f"libcuda.so.{ver}", f"{LIB_DIR}/libcuda.so.1"],
    }
    by_minor = {g.minor: g for g in inventory.gpus}
    spec = claim_spec(
        "c", [5, 2], {"deviceNodes": [node("/dev/nvidiactl", 255)], "mounts": mounts, "hooks": [symlink]}
    )
    sandbox.spec_file("claim.json", spec)
    script = (
        "nvidia-smi -L; nvidia-smi --query-gpu=index,uuid,pci.bus_id,driver_version,memory.total"
        " --format=csv,noheader; nvidia-smi | sed -n 3p;"
        f" readlink {LIB_DIR}/libcuda.so.1; (echo x > /usr/bin/nvidia-smi) 2>/dev/null || echo read-only"
    )
    handle = await run("smi", ["sh", "-c", script], ids("c", 5, 2))
    assert await handle.wait() == 0, handle.log_text()
    lines = handle.log_text().splitlines()
    gpu2, gpu5 = by_minor[2], by_minor[5]
    assert lines[:2] == [
        f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {gpu2.uuid})",  # PCI order, numbered from 0 in the container
        f"GPU 1: NVIDIA H100 80GB HBM3 (UUID: {gpu5.uuid})",
    ]
    assert lines[2:4] == [
        f"0, {gpu2.uuid}, 00000000:3A:00.0, 580.65.06, 81559 MiB",
        f"1, {gpu5.uuid}, 00000000:AB:00.0, 580.65.06, 81559 MiB",
    ]
    assert "Driver Version: 580.65.06" in lines[4] and "CUDA Version: 12.9" in lines[4]
    assert lines[5:] == [f"libcuda.so.{ver}", "read-only"]

    # Another container with one of them sees just that one.
    single = await run("smi-one", ["nvidia-smi", "-L"], ids("c", 5))
    assert await single.wait() == 0
    assert single.log_text().splitlines() == [f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {gpu5.uuid})"]


# --- gpu-load -----------------------------------------------------------------------------------------


def load_spec(sandbox: Sandbox, uuid: str) -> dict[str, Any]:
    """Edits as the sandbox writes them: state dir env + read-write mount at spec level, UUID env per device."""
    spec = claim_spec(
        "load",
        [0],
        {
            "env": [f"ACCEL_DRA_FAKE_STATE={sandbox.state}"],
            "mounts": [
                {
                    "hostPath": str(sandbox.state),
                    "containerPath": str(sandbox.state),
                    "options": ["rw", "bind"],
                }
            ],
        },
    )
    spec["devices"][0]["containerEdits"]["env"] = [
        f"ACCEL_DRA_DEVICE_GPU_0000_18_00_0={uuid}",
        "ACCEL_DRA_DEVICE_GPU_0000_18_00_0_CLAIM=default/load",
        "ACCEL_DRA_DEVICE_GPU_0000_18_00_0_CLAIM_UID=1234",
    ]
    return spec


async def test_gpu_load_in_a_container_reports_and_cleans_up(sandbox: Sandbox, run: Run) -> None:
    uuid = "GPU-33ae4595-144c-5ff6-b062-70f60a4476e8"
    sandbox.spec_file("claim.json", load_spec(sandbox, uuid))
    command = [sys.executable, "-m", "driver.sim.workload", "--utilization", "0.5", "--memory", "1Gi"]
    handle = await run("load", command, ids("load", 0), env={"PYTHONPATH": PROJECT})
    procs = sandbox.state / "gpus" / uuid / "procs"
    procs_file = procs / f"{handle.pid}.json"
    await eventually(procs_file.exists, "the procs file")
    assert json.loads(procs_file.read_text()) == {
        "pid": handle.pid,
        "utilization": 0.5,
        "memory_bytes": 2**30,
    }
    assert os.listdir(sandbox.state / "gpus") == [uuid]  # the _CLAIM / _CLAIM_UID values are not GPUs
    assert (sandbox.proc / str(handle.pid) / "cgroup").exists()
    assert await handle.terminate(grace=10) == 0
    assert os.listdir(procs) == []
    assert os.listdir(sandbox.proc) == []
    assert "stopping (SIGTERM)" in handle.log_text()


async def _gpu_load(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "driver.sim.workload",
        *args,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": PROJECT, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_gpu_load_runs_for_its_seconds_then_removes_its_files(sandbox: Sandbox) -> None:
    env = {
        "ACCEL_DRA_FAKE_STATE": str(sandbox.state),
        "ACCEL_DRA_DEVICE_GPU_A": "GPU-a",
        "ACCEL_DRA_DEVICE_MIG_B": "MIG-b",
    }
    proc = await _gpu_load(env, "--seconds", "1", "--encoder", "0.25")
    assert proc.stdout is not None
    first = (await proc.stdout.readline()).decode()
    assert first.startswith("gpu-load: loading GPU-a: utilization 1.00, memory 2147483648 bytes, for 1s")
    payload = json.loads((sandbox.state / "gpus" / "GPU-a" / "procs" / f"{proc.pid}.json").read_text())
    assert payload == {"pid": proc.pid, "utilization": 1.0, "memory_bytes": 2 * 2**30, "encoder": 0.25}
    rest = (await proc.stdout.read()).decode()
    assert await proc.wait() == 0
    assert "loading MIG-b" in rest and "stopping (done)" in rest
    assert [list(p.iterdir()) for p in sandbox.state.glob("gpus/*/procs")] == [[], []]


async def test_gpu_load_without_gpus_fails(sandbox: Sandbox) -> None:
    proc = await _gpu_load({"ACCEL_DRA_DEVICE_X_CLAIM": "ns/c"}, "--seconds", "1")
    out, _ = await proc.communicate()
    assert proc.returncode == 1 and b"no GPUs" in out


async def test_gpu_load_rejects_bad_flags(sandbox: Sandbox) -> None:
    proc = await _gpu_load({"ACCEL_DRA_DEVICE_GPU": "GPU-a"}, "--utilization", "1.5")
    out, _ = await proc.communicate()
    assert proc.returncode == 2 and b"not between 0 and 1" in out
