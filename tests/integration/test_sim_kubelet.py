"""The kubelet emulator against hand-built plugins on real unix sockets: it must judge like the kubelet."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from driver._proto.dra.v1 import api_pb2 as v1
from driver._proto.dra.v1 import api_pb2_grpc as v1_grpc
from driver._proto.dra.v1beta1 import api_pb2 as v1beta1
from driver._proto.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc
from driver._proto.pluginregistration.v1 import api_pb2 as reg
from driver._proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from driver.sim.kubelet import KubeletError, SimKubelet
from driver.state.api import ClaimRef

DRIVER = "gpu.example.com"


@dataclass
class FakeRegistration:
    info: Any
    statuses: list[tuple[bool, str]] = field(default_factory=list)
    notified: asyncio.Event = field(default_factory=asyncio.Event)

    async def GetInfo(self, request: Any, context: Any) -> Any:
        return self.info

    async def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:
        self.statuses.append((request.plugin_registered, request.error))
        self.notified.set()
        return reg.RegistrationStatusResponse()


@dataclass
class FakeDra:
    """Answers NodePrepareResources with whatever ``answer`` builds, recording which API version was used."""

    pb: Any
    answer: Callable[[Any, Any], Any]
    used: list[str] = field(default_factory=list)

    async def NodePrepareResources(self, request: Any, context: Any) -> Any:
        self.used.append(self.pb.__name__)
        return self.answer(self.pb, request)

    async def NodeUnprepareResources(self, request: Any, context: Any) -> Any:
        self.used.append(self.pb.__name__)
        response = self.pb.NodeUnprepareResourcesResponse()
        for claim in request.claims:
            response.claims[claim.uid].error = ""
        return response


def echo(pb: Any, request: Any) -> Any:
    response = pb.NodePrepareResourcesResponse()
    for claim in request.claims:
        response.claims[claim.uid].devices.add(
            request_names=["gpu"],
            pool_name="n1",
            device_name="gpu-0",
            cdi_device_ids=[f"x.com/gpu={claim.uid}"],
        )
    return response


@pytest.fixture
def dirs() -> Any:
    # Short paths: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="adra-", dir="/tmp") as root:
        registry = Path(root, "registry")
        plugins = Path(root, "plugins")
        registry.mkdir()
        plugins.mkdir()
        yield registry, plugins


_started: list[grpc.aio.Server] = []


@pytest.fixture(autouse=True)
async def _stop_fakes() -> AsyncIterator[None]:
    yield
    while _started:
        await _started.pop().stop(0)


@dataclass
class FakePlugin:
    registration: FakeRegistration
    dra: list[FakeDra]
    servers: list[grpc.aio.Server]
    reg_socket: str
    dra_socket: str


async def start_fake(
    registry: Path,
    plugins: Path,
    *,
    versions: list[str],
    plugin_type: str = "DRAPlugin",
    endpoint: str | None = None,
    answer: Callable[[Any, Any], Any] = echo,
    name: str = "a",
) -> FakePlugin:
    dra_socket = str(plugins / f"{name}.sock")
    reg_socket = str(registry / f"{DRIVER}-{name}-reg.sock")
    dra_server = grpc.aio.server()
    fakes = [FakeDra(v1, answer), FakeDra(v1beta1, answer)]
    v1_grpc.add_DRAPluginServicer_to_server(fakes[0], dra_server)
    v1beta1_grpc.add_DRAPluginServicer_to_server(fakes[1], dra_server)
    dra_server.add_insecure_port(f"unix://{dra_socket}")
    await dra_server.start()
    info = reg.PluginInfo(
        type=plugin_type,
        name=DRIVER,
        endpoint=dra_socket if endpoint is None else endpoint,
        supported_versions=versions,
    )
    registration = FakeRegistration(info)
    reg_server = grpc.aio.server()
    reg_grpc.add_RegistrationServicer_to_server(registration, reg_server)
    reg_server.add_insecure_port(f"unix://{reg_socket}")
    await reg_server.start()
    _started.extend([dra_server, reg_server])
    return FakePlugin(registration, fakes, [dra_server, reg_server], reg_socket, dra_socket)


@pytest.fixture
async def kubelet(dirs: Any) -> AsyncIterator[SimKubelet]:
    async with SimKubelet(str(dirs[0])) as k:
        yield k


async def stop(plugin: FakePlugin) -> None:
    """Stop a fake plugin; grpc removes its socket files, which the kubelet sees as deregistration."""
    for server in plugin.servers:
        await server.stop(0)


CLAIM = ClaimRef("default", "uid-1", "claim-1")


@pytest.mark.parametrize(
    ("versions", "known", "expected_module"),
    [
        (["v1.DRAPlugin", "v1beta1.DRAPlugin"], None, v1.__name__),
        (["v1beta1.DRAPlugin", "v1.DRAPlugin"], None, v1beta1.__name__),
        (["v1.DRAPlugin", "v1beta1.DRAPlugin"], ("v1beta1.DRAPlugin",), v1beta1.__name__),
        (["v9.Nope", "v1.DRAPlugin"], None, v1.__name__),
    ],
)
async def test_picks_first_version_of_the_plugin_list_that_it_knows(
    dirs: Any, versions: list[str], known: tuple[str, ...] | None, expected_module: str
) -> None:
    registry, plugins = dirs
    kubelet = SimKubelet(str(registry), **({"known_versions": known} if known else {}))
    plugin = await start_fake(registry, plugins, versions=versions)
    async with kubelet:
        await kubelet.wait_registered(DRIVER)
        await asyncio.wait_for(plugin.registration.notified.wait(), 5)
        assert plugin.registration.statuses == [(True, "")]
        out = await kubelet.prepare(DRIVER, [CLAIM])
        assert out["uid-1"][0].cdi_device_ids == ("x.com/gpu=uid-1",)
    used = [u for fake in plugin.dra for u in fake.used]
    assert used == [expected_module]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"versions": []}, "empty list for supported versions"),
        ({"versions": ["v1alpha3.NodeService"]}, "none of the versions supported by the plugin"),
        (
            {"versions": ["v1.DRAPlugin"], "plugin_type": "CSIPlugin"},
            "no handler registered for plugin type: CSIPlugin",
        ),
    ],
)
async def test_rejects_bad_plugins_and_tells_them_why(
    dirs: Any, kubelet: SimKubelet, kwargs: dict[str, Any], error: str
) -> None:
    plugin = await start_fake(*dirs, **kwargs)
    await asyncio.wait_for(plugin.registration.notified.wait(), 5)
    registered, message = plugin.registration.statuses[0]
    assert not registered
    assert error in message
    assert kubelet.instances(DRIVER) == []
    with pytest.raises(KubeletError, match="not registered"):
        await kubelet.prepare(DRIVER, [CLAIM])


async def test_empty_endpoint_means_the_registration_socket(dirs: Any, kubelet: SimKubelet) -> None:
    plugin = await start_fake(*dirs, versions=["v1.DRAPlugin"], endpoint="")
    (instance,) = await kubelet.wait_registered(DRIVER)
    assert instance.endpoint == plugin.reg_socket


async def test_ignores_dot_files_and_non_sockets_and_watches_subdirectories(
    dirs: Any, kubelet: SimKubelet
) -> None:
    registry, plugins = dirs
    (registry / "notes.txt").write_text("not a socket")
    hidden = socket.socket(socket.AF_UNIX)
    hidden.bind(str(registry / ".hidden-reg.sock"))
    sub = registry / "nested"
    sub.mkdir()
    plugin = await start_fake(sub, plugins, versions=["v1.DRAPlugin"])
    (instance,) = await kubelet.wait_registered(DRIVER)
    assert instance.registration_socket == plugin.reg_socket
    assert {r.socket for r in kubelet.records} == {plugin.reg_socket}
    hidden.close()


async def test_socket_removal_deregisters(dirs: Any, kubelet: SimKubelet) -> None:
    plugin = await start_fake(*dirs, versions=["v1.DRAPlugin"])
    await kubelet.wait_registered(DRIVER)
    os.unlink(plugin.reg_socket)
    await kubelet.wait_for(lambda k: not k.instances(DRIVER))


async def test_two_instances_calls_go_to_the_newest(dirs: Any, kubelet: SimKubelet) -> None:
    old = await start_fake(*dirs, versions=["v1.DRAPlugin"], name="old")
    await kubelet.wait_registered(DRIVER, 1)
    new = await start_fake(*dirs, versions=["v1.DRAPlugin"], name="new")
    await kubelet.wait_registered(DRIVER, 2)
    await kubelet.prepare(DRIVER, [CLAIM])
    assert new.dra[0].used and not old.dra[0].used
    await stop(new)
    assert not os.path.exists(new.reg_socket)
    await kubelet.wait_for(lambda k: len(k.instances(DRIVER)) == 1)
    await kubelet.prepare(DRIVER, [CLAIM])
    assert old.dra[0].used


async def test_same_endpoint_twice_is_rejected(dirs: Any, kubelet: SimKubelet) -> None:
    registry, plugins = dirs
    first = await start_fake(registry, plugins, versions=["v1.DRAPlugin"], name="one")
    await kubelet.wait_registered(DRIVER)
    second = await start_fake(
        registry, plugins, versions=["v1.DRAPlugin"], name="two", endpoint=first.dra_socket
    )
    await asyncio.wait_for(second.registration.notified.wait(), 5)
    assert second.registration.statuses[0][0] is False
    assert "already registered" in second.registration.statuses[0][1]


def unknown_uid(pb: Any, request: Any) -> Any:
    response = echo(pb, request)
    response.claims["someone-else"].error = ""
    return response


def skip_all(pb: Any, request: Any) -> Any:
    return pb.NodePrepareResourcesResponse()


def per_claim_error(pb: Any, request: Any) -> Any:
    response = pb.NodePrepareResourcesResponse()
    for claim in request.claims:
        response.claims[claim.uid].error = "no such device gpu-7"
    return response


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (unknown_uid, "returned result for unknown claim UID someone-else"),
        (skip_all, "skipped 1 ResourceClaims"),
        (per_claim_error, "NodePrepareResources failed for ResourceClaim claim-1: no such device gpu-7"),
    ],
)
async def test_judges_prepare_answers_like_the_kubelet(
    dirs: Any, kubelet: SimKubelet, answer: Callable[[Any, Any], Any], message: str
) -> None:
    await start_fake(*dirs, versions=["v1.DRAPlugin"], answer=answer)
    await kubelet.wait_registered(DRIVER)
    with pytest.raises(KubeletError, match=message):
        await kubelet.prepare(DRIVER, [CLAIM])


async def test_grpc_errors_fail_the_call(dirs: Any, kubelet: SimKubelet) -> None:
    def boom(pb: Any, request: Any) -> Any:
        raise RuntimeError("exploded")

    await start_fake(*dirs, versions=["v1.DRAPlugin"], answer=boom)
    await kubelet.wait_registered(DRIVER)
    with pytest.raises(KubeletError, match="NodePrepareResources: UNKNOWN"):
        await kubelet.prepare(DRIVER, [CLAIM])


async def test_failed_registration_is_retried(dirs: Any, kubelet: SimKubelet) -> None:
    plugin = await start_fake(*dirs, versions=[])
    await asyncio.wait_for(plugin.registration.notified.wait(), 5)
    plugin.registration.info.supported_versions.append("v1.DRAPlugin")
    await kubelet.wait_registered(DRIVER, timeout=10)
    assert plugin.registration.statuses[0][0] is False
    assert plugin.registration.statuses[-1] == (True, "")


async def test_stop_while_a_removed_plugin_is_being_deregistered_ends_the_watcher(dirs: Any) -> None:
    """The registry watcher deregisters a plugin whose socket went (the sandbox stops its driver first): it
    cancels the plugin's connection monitor and waits for it. A stop that comes just then must still end the
    watcher; it used to swallow that cancellation along with the monitor's, poll on, and leave stop() (and the
    sandbox's shutdown) waiting forever."""
    kubelet = SimKubelet(str(dirs[0]))
    await kubelet.start()
    plugin = await start_fake(*dirs, versions=["v1.DRAPlugin"])
    await kubelet.wait_registered(DRIVER)
    (monitor,) = [t for t in asyncio.all_tasks() if t.get_name() == f"connection-{DRIVER}"]
    os.unlink(plugin.reg_socket)
    # The watcher notices, cancels the monitor and waits for it; a cancel request fires no event, so look
    # at every turn of the loop (the monitor takes one more turn to finish: the window cannot be missed).
    while not monitor.cancelling():  # noqa: ASYNC110
        await asyncio.sleep(0)
    assert not monitor.done() and kubelet.instances(DRIVER)  # still in the middle of deregistering
    stopping = asyncio.create_task(kubelet.stop())
    done, _ = await asyncio.wait([stopping], timeout=30)  # a bound for the failure only: it ends at once
    assert stopping in done, "SimKubelet.stop() still waits for its registry watcher"
    assert kubelet.instances(DRIVER) == []
