"""``accel-dra plugin-probe`` against a real plugin process: the check the DaemonSet's probes run."""

from __future__ import annotations

import sys

from tests.integration.conftest import NodeDirs, StartPlugin
from tests.support.processes import Process

DRIVER = "gpu.accel-dra.dev"
POD_UID = "0f6b1c52-6a43-4c1e-9a0e-3d1b2c4d5e6f"


async def run_probe(node_dirs: NodeDirs, *args: str, pod_uid: str | None = None) -> tuple[int, str]:
    argv = [
        sys.executable,
        "-m",
        "driver.plugin.probe",
        "--registry-dir",
        str(node_dirs.registry),
        "--plugin-dir",
        str(node_dirs.plugin_dir(DRIVER)),
        "--timeout",
        "5",
        *args,
    ]
    # The probe inherits POD_UID from the plugin container's environment, as a kubelet exec probe does.
    process = await Process.start(argv, name="probe", env={"POD_UID": pod_uid or ""})
    code = await process.wait()
    return code, process.output()


async def test_probe_passes_against_a_serving_plugin_with_pod_uid_sockets(
    start_plugin: StartPlugin, node_dirs: NodeDirs
) -> None:
    plugin = await start_plugin(pod_uid=POD_UID)
    await plugin.wait_log("registration service listening")
    assert (node_dirs.registry / f"{DRIVER}-{POD_UID}-reg.sock").exists()

    code, output = await run_probe(node_dirs, pod_uid=POD_UID)
    assert (code, output) == (0, "")


async def test_probe_fails_naming_the_socket_when_the_paths_differ(
    start_plugin: StartPlugin, node_dirs: NodeDirs
) -> None:
    plugin = await start_plugin(pod_uid=POD_UID)
    await plugin.wait_log("registration service listening")

    # Without the pod UID the probe looks for the plain socket names, which nobody serves.
    code, output = await run_probe(node_dirs)
    assert code == 1
    assert (
        f"registration socket {node_dirs.registry}/{DRIVER}-reg.sock: GetInfo failed: UNAVAILABLE" in output
    )


async def test_probe_rejects_a_plugin_of_another_driver(
    start_plugin: StartPlugin, node_dirs: NodeDirs
) -> None:
    other = "other.example.com"
    plugin = await start_plugin(driver=other)
    await plugin.wait_log("registration service listening")
    # Put the other driver's registration socket where this driver's probe looks.
    (node_dirs.registry / f"{other}-reg.sock").rename(node_dirs.registry / f"{DRIVER}-reg.sock")

    code, output = await run_probe(node_dirs)
    assert code == 1
    assert f"answers as DRAPlugin '{other}', expected DRAPlugin '{DRIVER}'" in output


async def test_probe_fails_after_the_plugin_stopped(start_plugin: StartPlugin, node_dirs: NodeDirs) -> None:
    plugin = await start_plugin()
    await plugin.wait_log("registration service listening")
    assert await run_probe(node_dirs) == (0, "")

    assert await plugin.terminate() == 0
    code, output = await run_probe(node_dirs)
    assert code == 1
    assert "plugin probe failed: registration socket" in output


async def test_probe_checks_the_dra_socket_too(start_plugin: StartPlugin, node_dirs: NodeDirs) -> None:
    plugin = await start_plugin()
    await plugin.wait_log("registration service listening")
    dra_socket = node_dirs.plugin_dir(DRIVER) / "dra.sock"
    dra_socket.rename(dra_socket.with_name("moved.sock"))  # the registration server still answers

    code, output = await run_probe(node_dirs)
    assert code == 1
    assert f"DRA socket {dra_socket}: empty NodePrepareResources failed: UNAVAILABLE" in output
