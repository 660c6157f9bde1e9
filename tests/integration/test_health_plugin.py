"""Device health in the plugin process (fake backend): inject -> taint, restart, clear, recovery, version rules.

Faults are injected with ``accel-dra sim inject`` and cleared with ``accel-dra health clear``, as a user does;
everything is observed through the sim API server, the sim kubelet's health stream and the state file.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from driver.health.clearing import clear_annotation
from driver.kube.client import DEVICE_TAINT_RULES, NODES, RESOURCE_SLICES, KubeClient
from driver.sim.apiserver import SimApiServer
from driver.sim.kubelet import SimKubelet
from tests.integration.conftest import NODE, NodeDirs, StartPlugin
from tests.integration.test_publishing import SLICES_PATH, big_profile, node_slices, published
from tests.support.processes import Process, accel_dra, plugin_args

DRIVER = "gpu.accel-dra.dev"
XID_KEY = f"{DRIVER}/xid"
LOST_KEY = f"{DRIVER}/gpu-lost"
# Fast probes so lost/recovered GPUs show within a test's patience; events are polled every 0.1 s anyway.
FAST = ("--health-probe-interval", "0.1", "--health-recovery-probes", "2")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(accel_dra(*args), capture_output=True, text=True, timeout=60, check=False)


async def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args)


async def inject(state: Path, gpu: str, *what: str) -> None:
    result = await run_cli("sim", "inject", "--state-dir", str(state), "--gpu", gpu, *what)
    assert result.returncode == 0, result.stderr


def devices(server: SimApiServer) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in node_slices(None, server) for d in s["spec"]["devices"]}


def taints(server: SimApiServer, device: str) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in t.items() if k != "timeAdded"}
        for t in devices(server).get(device, {}).get("taints") or []
    ]


async def until_taints(
    server: SimApiServer, device: str, expected: list[dict[str, Any]], timeout: float
) -> None:
    try:
        await server.wait_for(lambda _s: taints(server, device) == expected, timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"{device}: taints {taints(server, device)}, expected {expected}") from None


def message(kubelet: SimKubelet, device: str) -> str:
    record = kubelet.health_record(DRIVER, NODE, device)
    return record.message if record else ""


def xid_taint(xid: int, effect: str = "NoSchedule") -> dict[str, Any]:
    return {"key": XID_KEY, "value": str(xid), "effect": effect}


def health_file(node_dirs: NodeDirs) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((node_dirs.plugin_dir(DRIVER) / "health.json").read_text())
    return data


async def start(
    start_plugin: StartPlugin, node_dirs: NodeDirs, *extra: str, backend: str = "fake:dgx-h100"
) -> Process:
    state = node_dirs.root / "fake-state"
    return await start_plugin(backend=backend, extra=("--fake-state-dir", str(state), *FAST, *extra))


async def test_an_xid_taints_the_device_with_one_slice_write_and_a_restart_keeps_it(
    apiserver: SimApiServer,
    kubelet: SimKubelet,
    kube: KubeClient,
    start_plugin: StartPlugin,
    node_dirs: NodeDirs,
) -> None:
    state = node_dirs.root / "fake-state"
    process = await start(start_plugin, node_dirs)
    await published(apiserver, 8, process)
    first, second = sorted(devices(apiserver))[:2]
    mark = apiserver.request_log.mark()

    await inject(state, first, "--xid", "79")
    await until_taints(apiserver, first, [xid_taint(79)], timeout=2.0)
    # A second change on another device; once it is visible, the first change's write has long settled.
    await inject(state, second, "--xid", "13")
    await until_taints(apiserver, second, [xid_taint(13, "None")], timeout=2.0)
    writes = apiserver.request_log.writes(mark, SLICES_PATH)
    assert [w.method for w in writes] == ["PUT", "PUT"], "one slice update per health change"
    assert taints(apiserver, first) == [xid_taint(79)], "an ignorable XID elsewhere changes nothing here"

    # The sim kubelet hears it on the health stream too.
    await kubelet.wait_for(lambda k: k.device_health(DRIVER, NODE, first) == "Unhealthy")
    record = kubelet.health_record(DRIVER, NODE, first)
    assert record is not None and "XID 79 (GPU has fallen off the bus)" in record.message
    assert record.timeout == 30
    assert kubelet.device_health(DRIVER, NODE, second) == "Healthy"

    # Restart after the kubelet wiped the slices: the taint comes back from the state file, and the XID
    # already reported is not reported (counted) again.
    await process.terminate()
    await kube.delete_collection(RESOURCE_SLICES, field_selector=f"spec.nodeName={NODE}")
    restarted = await start(start_plugin, node_dirs)
    await published(apiserver, 8, restarted)
    assert taints(apiserver, first) == [xid_taint(79)]
    records = health_file(node_dirs)["records"]
    assert sum(r["xidEvents"] for r in records.values()) == 2


async def test_health_clear_restores_the_device_once_per_request(
    apiserver: SimApiServer,
    kubelet: SimKubelet,
    start_plugin: StartPlugin,
    node_dirs: NodeDirs,
    kubeconfig: Path,
) -> None:
    state = node_dirs.root / "fake-state"
    process = await start(start_plugin, node_dirs)
    await published(apiserver, 8, process)
    device = sorted(devices(apiserver))[3]
    await inject(state, device, "--xid", "48")
    await until_taints(apiserver, device, [xid_taint(48)], timeout=5.0)

    result = await run_cli("health", "clear", device, "--kubeconfig", str(kubeconfig), "--timeout", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"clear requested on node {NODE}" in result.stdout
    assert taints(apiserver, device) == []
    node = apiserver.get_object(NODES, NODE)
    assert node is not None and clear_annotation(DRIVER, device) in node["metadata"]["annotations"]
    await kubelet.wait_for(lambda k: k.device_health(DRIVER, NODE, device) == "Healthy")

    # A new fault after the clear taints again; the old annotation is not acted on a second time, not
    # even after a restart.
    await inject(state, device, "--xid", "94")
    await until_taints(apiserver, device, [xid_taint(94)], timeout=5.0)
    await process.terminate()
    restarted = await start(start_plugin, node_dirs)
    await restarted.wait_log("device health monitoring running")
    await published(apiserver, 8, restarted)
    assert taints(apiserver, device) == [xid_taint(94)]

    status = await run_cli("health", "status", "--kubeconfig", str(kubeconfig))
    assert status.returncode == 0 and f"{device}  {XID_KEY}=94:NoSchedule" in status.stdout


@pytest.mark.usefixtures("kubelet")  # registers the Node
async def test_health_status_and_clear_take_device_taint_rules_into_account(
    apiserver: SimApiServer,
    kube: KubeClient,
    start_plugin: StartPlugin,
    node_dirs: NodeDirs,
    kubeconfig: Path,
) -> None:
    state = node_dirs.root / "fake-state"
    process = await start(start_plugin, node_dirs)
    await published(apiserver, 8, process)
    ruled, informational, healthy = sorted(devices(apiserver))[:3]
    for name, device, effect in (("drain", ruled, "NoSchedule"), ("note", informational, "None")):
        await kube.create(
            DEVICE_TAINT_RULES,
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "DeviceTaintRule",
                "metadata": {"name": name},
                "spec": {
                    "deviceSelector": {"driver": DRIVER, "pool": NODE, "device": device},
                    "taint": {"key": "example.com/maintenance", "value": name, "effect": effect},
                },
            },
        )
    await inject(state, ruled, "--xid", "48")
    await until_taints(apiserver, ruled, [xid_taint(48)], timeout=5.0)

    status = await run_cli("health", "status", "--kubeconfig", str(kubeconfig))
    assert status.returncode == 0, status.stderr
    lines = {line.split()[1]: line for line in status.stdout.splitlines()}
    assert (
        f"{XID_KEY}=48:NoSchedule, example.com/maintenance=drain:NoSchedule (DeviceTaintRule drain)"
        in (lines[ruled])
    )
    assert "example.com/maintenance=note:None (DeviceTaintRule note)" in lines[informational]
    assert healthy not in lines

    # The clear lifts the XID, but the rule still keeps the device out of service: said, and a failure.
    result = await run_cli("health", "clear", ruled, "--kubeconfig", str(kubeconfig), "--timeout", "20")
    assert result.returncode == 1, result.stdout + result.stderr
    assert taints(apiserver, ruled) == []
    assert (
        f"{NODE}/{ruled} is still tainted by example.com/maintenance=drain:NoSchedule (DeviceTaintRule drain)"
        in (result.stderr)
    )
    # An informational rule does not keep a device out of service.
    result = await run_cli(
        "health", "clear", informational, "--kubeconfig", str(kubeconfig), "--timeout", "5"
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_a_lost_gpu_is_tainted_and_recovers_by_probes(
    apiserver: SimApiServer, kubelet: SimKubelet, start_plugin: StartPlugin, node_dirs: NodeDirs
) -> None:
    state = node_dirs.root / "fake-state"
    process = await start(start_plugin, node_dirs)
    await published(apiserver, 8, process)
    device = sorted(devices(apiserver))[5]
    await inject(state, device, "--lost")
    await until_taints(apiserver, device, [{"key": LOST_KEY, "effect": "NoSchedule"}], timeout=5.0)
    await kubelet.wait_for(lambda k: k.device_health(DRIVER, NODE, device) == "Unhealthy")
    record = kubelet.health_record(DRIVER, NODE, device)
    assert record is not None and "fallen off the bus" in record.message
    assert all(not taints(apiserver, d) for d in devices(apiserver) if d != device), "the others keep working"

    await inject(state, device, "--clear")
    await until_taints(apiserver, device, [], timeout=10.0)
    await kubelet.wait_for(lambda k: k.device_health(DRIVER, NODE, device) == "Healthy")


async def test_a_kubelet_that_knows_only_v1alpha1_gets_the_same_stream(
    apiserver: SimApiServer, kube: KubeClient, start_plugin: StartPlugin, node_dirs: NodeDirs
) -> None:
    """A 1.36 kubelet opens v1alpha1.DRAResourceHealth: the same devices, health and messages."""
    async with SimKubelet(
        str(node_dirs.registry),
        kube=kube,
        node_name=NODE,
        known_health_versions=("v1alpha1.DRAResourceHealth",),
    ) as kubelet:
        state = node_dirs.root / "fake-state"
        process = await start(start_plugin, node_dirs)
        await published(apiserver, 8, process)
        await process.wait_log("kubelet health stream opened.*service=v1alpha1.DRAResourceHealth")
        device = sorted(devices(apiserver))[0]
        await kubelet.wait_for(lambda k: k.device_health(DRIVER, NODE, device) == "Healthy")
        await inject(state, device, "--xid", "79")
        await kubelet.wait_for(lambda k: k.device_health(DRIVER, NODE, device) == "Unhealthy")
        assert "XID 79" in message(kubelet, device)


async def test_on_kubernetes_1_34_ignorable_xids_are_not_tainted(node_dirs: NodeDirs) -> None:
    """1.34 has no ``None`` effect: a fatal XID still taints, an ignorable one shows only in the stream."""
    async with SimApiServer(kubernetes_version="v1.34.2") as server:
        kubeconfig = server.write_kubeconfig(node_dirs.root / "kubeconfig-134")
        async with (
            await KubeClient.connect(str(kubeconfig)) as kube,
            SimKubelet(str(node_dirs.registry), kube=kube, node_name=NODE) as kubelet,
        ):
            state = node_dirs.root / "fake-state"
            args = plugin_args(
                kubeconfig=kubeconfig,
                node=NODE,
                plugin_dir=node_dirs.plugin_dir(DRIVER),
                registry_dir=node_dirs.registry,
                cdi_dir=node_dirs.cdi,
                extra=("--backend", "fake:pcie-l4x4", "--fake-state-dir", str(state), *FAST),
            )
            process = await Process.start(args, name="plugin-1.34")
            try:
                await published(server, 4, process)
                first, second = sorted(devices(server))[:2]
                await inject(state, first, "--xid", "31")
                await kubelet.wait_for(lambda k: "XID 31" in message(k, first))
                assert taints(server, first) == []
                assert kubelet.device_health(DRIVER, NODE, first) == "Healthy"
                await inject(state, second, "--xid", "79")
                await until_taints(server, second, [xid_taint(79)], timeout=5.0)
            finally:
                await process.kill()


async def test_slices_split_at_64_devices_once_a_device_is_tainted(
    apiserver: SimApiServer, kubelet: SimKubelet, start_plugin: StartPlugin, node_dirs: NodeDirs
) -> None:
    profile = big_profile(node_dirs.root / "big.yaml", 100)
    process = await start(start_plugin, node_dirs, backend=f"file:{profile}")
    slices = await published(apiserver, 100, process)
    assert [len(s["spec"]["devices"]) for s in slices] == [100]
    device = sorted(devices(apiserver))[70]
    await inject(node_dirs.root / "fake-state", device, "--xid", "79")
    await until_taints(apiserver, device, [xid_taint(79)], timeout=5.0)
    slices = await published(apiserver, 100, process)
    assert sorted(len(s["spec"]["devices"]) for s in slices) == [36, 64]


def test_sim_inject_names_unknown_gpus(tmp_path: Path) -> None:
    result = cli("sim", "inject", "--state-dir", str(tmp_path), "--gpu", "gpu-nope", "--xid", "79")
    assert result.returncode == 1
    assert "no simulated GPU or device 'gpu-nope'" in result.stderr


@pytest.mark.parametrize("args", [("--xid", "0"), ("--xid", "70000")])
def test_sim_inject_rejects_impossible_xids(tmp_path: Path, args: tuple[str, ...]) -> None:
    (tmp_path / "gpus" / "GPU-1").mkdir(parents=True)
    result = cli("sim", "inject", "--state-dir", str(tmp_path), "--gpu", "GPU-1", *args)
    assert result.returncode == 2 and "out of range" in result.stderr
