"""The real plugin process on real unix sockets, driven by the kubelet emulator, claims from the sim API server.

These cover the kubelet-facing contract: registration, both DRA API versions, every prepare/unprepare rule,
rolling-update instances sharing a plugin dir, SIGTERM cleanup and long socket paths.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import grpc
import pytest

from driver import __version__
from driver._proto.pluginregistration.v1 import api_pb2 as reg
from driver._proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from driver.kube.client import RESOURCE_CLAIMS, KubeClient
from driver.sim.kubelet import KubeletError, SimKubelet
from driver.state.api import ClaimRef
from tests.integration.conftest import NODE, NodeDirs, StartPlugin, create_allocated_claim
from tests.support.processes import Process, accel_dra

DRIVER = "gpu.accel-dra.dev"
# Device names of the fake:pcie-l4x4 profile the plugin runs with (named after their PCI addresses).
GPU0, GPU1, GPU2, GPU3 = "gpu-0000-01-00-0", "gpu-0000-41-00-0", "gpu-0000-81-00-0", "gpu-0000-c1-00-0"

SHARE_ID = "a5b0c1de-0000-4000-8000-000000000001"  # the API server wants a lower-case UUID


def result(request: str, device: str, driver: str = DRIVER, **extra: Any) -> dict[str, Any]:
    return {"request": request, "driver": driver, "pool": "node-1", "device": device, **extra}


def ref(claim: dict[str, Any]) -> ClaimRef:
    m = claim["metadata"]
    return ClaimRef(m["namespace"], m["uid"], m["name"])


def spec_path(node_dirs: NodeDirs, claim: dict[str, Any]) -> Path:
    return node_dirs.cdi / f"k8s.{DRIVER}-gpu_{claim['metadata']['uid']}.json"


async def running_plugin(start_plugin: StartPlugin, kubelet: SimKubelet, **kw: Any) -> Process:
    process = await start_plugin(**kw)
    await kubelet.wait_registered(DRIVER, count=len(kubelet.instances(DRIVER)) + 1)
    await process.wait_log("registered with kubelet")
    return process


async def test_registration_handshake(
    start_plugin: StartPlugin, node_dirs: NodeDirs, kube: KubeClient
) -> None:
    async with SimKubelet(str(node_dirs.registry), kube=kube, node_name=NODE) as kubelet:
        process = await running_plugin(start_plugin, kubelet)
        (instance,) = kubelet.instances(DRIVER)
        # The kubelet opens the health stream after the registration: it must still be there to do so.
        await process.wait_log("kubelet health stream opened.*service=v1.DRAResourceHealth")
    dra_socket = node_dirs.plugin_dir(DRIVER) / "dra.sock"
    reg_socket = node_dirs.registry / f"{DRIVER}-reg.sock"
    assert instance.endpoint == str(dra_socket)
    # The health stream (docs/health.md) is advertised after the DRA services, in both versions; the
    # kubelet (as 1.37's) opens v1.
    assert instance.supported_versions == [
        "v1.DRAPlugin",
        "v1beta1.DRAPlugin",
        "v1.DRAResourceHealth",
        "v1alpha1.DRAResourceHealth",
    ]
    assert instance.version == "v1.DRAPlugin"
    assert instance.health_version == "v1.DRAResourceHealth"
    assert instance.registration_socket == str(reg_socket)
    for path in (dra_socket, reg_socket):
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) & 0o077 == 0, f"{path} is accessible to group/other"
    # The DRA socket answers before the kubelet can learn about it from the registration socket.
    order = [line for line in process.lines if "service listening" in line]
    assert ["DRA" in order[0], "registration" in order[1]] == [True, True]


async def test_rejected_registration_is_logged_and_answered_with_an_error(
    start_plugin: StartPlugin, node_dirs: NodeDirs, kube: KubeClient
) -> None:
    process = await start_plugin()
    await process.wait_log("registration service listening")
    channel = grpc.aio.insecure_channel(f"unix://{node_dirs.registry}/{DRIVER}-reg.sock")
    stub = reg_grpc.RegistrationStub(channel)
    info = await stub.GetInfo(reg.InfoRequest(), timeout=5)
    assert (info.type, info.name) == ("DRAPlugin", DRIVER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.NotifyRegistrationStatus(
            reg.RegistrationStatus(plugin_registered=False, error="version skew"), timeout=5
        )
    assert "version skew" in (err.value.details() or "")
    await channel.close()
    await process.wait_log(r"kubelet rejected registration.*version skew")


@pytest.mark.parametrize(
    ("known", "expected"),
    [(("v1.DRAPlugin", "v1beta1.DRAPlugin"), "v1.DRAPlugin"), (("v1beta1.DRAPlugin",), "v1beta1.DRAPlugin")],
)
async def test_prepare_and_unprepare_over_each_api_version(
    start_plugin: StartPlugin, node_dirs: NodeDirs, kube: KubeClient, known: tuple[str, ...], expected: str
) -> None:
    prioritized = {
        "name": "gpu",
        "firstAvailable": [
            {"name": "large", "deviceClassName": "gpu.accel-dra.dev"},
            {"name": "small", "deviceClassName": "gpu.accel-dra.dev"},
        ],
    }
    claim = await create_allocated_claim(
        kube,
        "c1",
        [result("gpu/large", GPU0, shareID=SHARE_ID), result("gpu/large", GPU1)],
        requests=(prioritized,),
    )
    async with SimKubelet(
        str(node_dirs.registry), known_versions=known, kube=kube, node_name=NODE
    ) as kubelet:
        process = await running_plugin(start_plugin, kubelet)
        assert kubelet.pick(DRIVER).version == expected
        prepared = await kubelet.prepare(DRIVER, [ref(claim)])
        devices = prepared[claim["metadata"]["uid"]]
        assert [(d.device_name, d.request_names) for d in devices] == [
            (GPU0, ("gpu",)),
            (GPU1, ("gpu",)),
        ]
        uid = claim["metadata"]["uid"]
        assert devices[0].cdi_device_ids == (f"k8s.{DRIVER}/gpu={uid}-{GPU0}",)
        # share_id only exists in v1; v1beta1 drops it on the wire.
        assert devices[0].share_id == (SHARE_ID if expected == "v1.DRAPlugin" else None)
        assert spec_path(node_dirs, claim).exists()
        await kubelet.unprepare(DRIVER, [ref(claim)])
        assert not spec_path(node_dirs, claim).exists()
    api = expected.split(".", maxsplit=1)[0]
    refs = f"claim_refs=default/c1:{uid}"
    (prepared_line,) = await process.wait_log(rf'event="prepare answered".*api={api}.* failed=0 .*{refs}')
    (unprepared_line,) = await process.wait_log(rf'event="unprepare answered".*api={api}.* failed=0 .*{refs}')
    # One line per call at info level, carrying the call's request id.
    for line in (prepared_line, unprepared_line):
        request_id = re.search(r"request_id=([0-9a-f]{12}) ", line)
        assert request_id is not None, line
        assert process.matching(f"request_id={request_id[1]} ") == [line]


async def test_results_for_other_drivers_are_ignored(
    start_plugin: StartPlugin, node_dirs: NodeDirs, kube: KubeClient
) -> None:
    claim = await create_allocated_claim(
        kube,
        "mixed",
        [result("nic", "eth-0", driver="net.example.com"), result("gpu", GPU3)],
        requests=("gpu", "nic"),
    )
    async with SimKubelet(str(node_dirs.registry), kube=kube, node_name=NODE) as kubelet:
        await running_plugin(start_plugin, kubelet)
        prepared = await kubelet.prepare(DRIVER, [ref(claim)])
    assert [d.device_name for d in prepared[claim["metadata"]["uid"]]] == [GPU3]


async def test_claim_checks_fail_the_whole_call_naming_the_claim(
    start_plugin: StartPlugin, node_dirs: NodeDirs, kube: KubeClient
) -> None:
    good = await create_allocated_claim(kube, "good", [result("gpu", GPU0)])
    unallocated = await kube.create(
        RESOURCE_CLAIMS,
        {
            "metadata": {"name": "pending", "namespace": "default"},
            "spec": {
                "devices": {
                    "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.accel-dra.dev"}}]
                }
            },
        },
        "default",
    )
    async with SimKubelet(str(node_dirs.registry), kube=kube, node_name=NODE) as kubelet:
        await running_plugin(start_plugin, kubelet)
        with pytest.raises(KubeletError, match=r"default/missing.*not found"):
            await kubelet.prepare(DRIVER, [ref(good), ClaimRef("default", "uid-x", "missing")])
        with pytest.raises(KubeletError, match=r"default/pending .* is not allocated"):
            await kubelet.prepare(DRIVER, [ref(good), ref(unallocated)])
        with pytest.raises(
            KubeletError, match=r"default/good got replaced: UID is .*, kubelet asked for stale-uid"
        ):
            await kubelet.prepare(DRIVER, [ClaimRef("default", "stale-uid", "good")])


async def test_empty_requests_and_unknown_unprepare_succeed(
    start_plugin: StartPlugin, node_dirs: NodeDirs, kube: KubeClient
) -> None:
    async with SimKubelet(str(node_dirs.registry), kube=kube, node_name=NODE) as kubelet:
        await running_plugin(start_plugin, kubelet)
        assert await kubelet.prepare(DRIVER, []) == {}
        await kubelet.unprepare(DRIVER, [])
        await kubelet.unprepare(DRIVER, [ClaimRef("default", "never-prepared", "ghost")])


async def test_calls_wait_for_the_node_lock(
    start_plugin: StartPlugin, node_dirs: NodeDirs, kube: KubeClient
) -> None:
    claim = await create_allocated_claim(kube, "c1", [result("gpu", GPU0)])
    lock_path = node_dirs.plugin_dir(DRIVER) / "serialize.lock"
    async with SimKubelet(str(node_dirs.registry), kube=kube, node_name=NODE) as kubelet:
        process = await running_plugin(start_plugin, kubelet)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # another instance is busy
        try:
            call = asyncio.create_task(kubelet.prepare(DRIVER, [ref(claim)]))
            await process.wait_log("waiting for the node lock")
            done, _ = await asyncio.wait({call}, timeout=0.5)
            assert not done, "prepare ran while another process held serialize.lock"
        finally:
            os.close(fd)
        assert claim["metadata"]["uid"] in await call


async def test_two_instances_share_a_plugin_dir(
    start_plugin: StartPlugin, node_dirs: NodeDirs, kube: KubeClient
) -> None:
    claim = await create_allocated_claim(kube, "c1", [result("gpu", GPU0)])
    async with SimKubelet(str(node_dirs.registry), kube=kube, node_name=NODE) as kubelet:
        old = await running_plugin(start_plugin, kubelet, pod_uid="11111111-aaaa")
        new = await running_plugin(start_plugin, kubelet, pod_uid="22222222-bbbb")
        sockets = {(i.registration_socket, i.endpoint) for i in kubelet.instances(DRIVER)}
        plugin_dir = node_dirs.plugin_dir(DRIVER)
        assert sockets == {
            (f"{node_dirs.registry}/{DRIVER}-11111111-aaaa-reg.sock", f"{plugin_dir}/dra-11111111-aaaa.sock"),
            (f"{node_dirs.registry}/{DRIVER}-22222222-bbbb-reg.sock", f"{plugin_dir}/dra-22222222-bbbb.sock"),
        }
        # The kubelet calls the newest instance it is connected to: wait for that connection, or a busy
        # machine hands the prepare to the old instance.
        (newest,) = [i for i in kubelet.instances(DRIVER) if i.endpoint.endswith("dra-22222222-bbbb.sock")]
        await newest.channel.channel_ready()
        await kubelet.prepare(DRIVER, [ref(claim)])
        await new.wait_log("prepare answered")
        assert spec_path(node_dirs, claim).exists()
        # The new instance goes away mid-flight; the old one serves the unprepare from the shared checkpoint.
        assert await new.terminate() == 0
        await kubelet.wait_for(lambda k: len(k.instances(DRIVER)) == 1)
        await kubelet.unprepare(DRIVER, [ref(claim)])
        await old.wait_log(r"unprepare answered\".* claims=1 failed=0 ")
        assert not spec_path(node_dirs, claim).exists()
        assert os.path.exists(f"{plugin_dir}/dra-11111111-aaaa.sock")


async def test_sigterm_removes_sockets_and_exits_zero_quickly(
    start_plugin: StartPlugin, node_dirs: NodeDirs, kube: KubeClient
) -> None:
    other = node_dirs.registry / "other.example.com-reg.sock"
    async with SimKubelet(str(node_dirs.registry), kube=kube, node_name=NODE) as kubelet:
        process = await running_plugin(start_plugin, kubelet)
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(other))  # another plugin's socket must survive
        loop = asyncio.get_running_loop()
        started = loop.time()
        code = await process.terminate(signal.SIGTERM, timeout=2.0)
        assert code == 0
        assert loop.time() - started < 2.0
        await kubelet.wait_for(lambda k: not k.instances(DRIVER))
    assert not (node_dirs.registry / f"{DRIVER}-reg.sock").exists()
    assert not (node_dirs.plugin_dir(DRIVER) / "dra.sock").exists()
    assert other.exists()
    sock.close()


async def test_stale_socket_at_own_path_is_replaced(
    start_plugin: StartPlugin, node_dirs: NodeDirs, kube: KubeClient
) -> None:
    plugin_dir = node_dirs.plugin_dir(DRIVER)
    plugin_dir.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(plugin_dir / "dra.sock"))
    stale.close()  # left behind by a killed process
    async with SimKubelet(str(node_dirs.registry), kube=kube, node_name=NODE) as kubelet:
        process = await running_plugin(start_plugin, kubelet)
    await process.wait_log("removing stale socket")


async def test_long_paths_use_short_socket_names(
    start_plugin: StartPlugin, node_dirs: NodeDirs, kube: KubeClient
) -> None:
    driver = "gpu.a-very-long-driver-name.example.com"
    uid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    plugin_dir = node_dirs.plugins / ("p" * 40)
    async with SimKubelet(str(node_dirs.registry), kube=kube, node_name=NODE) as kubelet:
        process = await start_plugin(driver=driver, pod_uid=uid, plugin_dir=plugin_dir)
        (instance,) = await kubelet.wait_registered(driver)
        await process.wait_log("registered with kubelet")
    for path in (instance.endpoint, instance.registration_socket):
        assert uid not in path
        assert len(os.fsencode(path)) <= 107
    assert Path(instance.endpoint).parent == plugin_dir


async def test_version_flag() -> None:
    process = await Process.start(accel_dra("--version"), name="version")
    assert await process.wait() == 0
    assert process.lines == [f"accel-dra {__version__}"]
