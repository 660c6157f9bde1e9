"""Fixtures for integration tests: the sim API server over HTTP, short node directories, real processes."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from driver.kube.client import RESOURCE_CLAIMS, KubeClient
from driver.sim.apiserver import SimApiServer
from driver.sim.kubelet import SimKubelet
from tests.support import draoracle
from tests.support.processes import Process, plugin_args


@dataclass(frozen=True)
class NodeDirs:
    root: Path
    plugins: Path
    registry: Path
    cdi: Path

    def plugin_dir(self, driver: str) -> Path:
        return self.plugins / driver

    def cdi_specs(self, driver: str) -> dict[str, dict[str, Any]]:
        """The CDI spec files ``driver``'s plugin wrote, by claim UID."""
        prefix = f"k8s.{driver}-gpu_"
        return {
            p.name[len(prefix) : -len(".json")]: json.loads(p.read_text())
            for p in self.cdi.iterdir()
            if p.name.startswith(prefix) and p.name.endswith(".json")
        }


@pytest.fixture(scope="module")
def oracle() -> Any:
    """``draoracle.run`` (Kubernetes' own DRA code), built if need be; the test skips without Go."""
    try:
        draoracle.binary()
    except draoracle.OracleUnavailableError as exc:
        pytest.skip(str(exc))
    return draoracle.run


@pytest.fixture
def node_dirs() -> Iterator[NodeDirs]:
    # Unix socket paths are limited to 107 bytes, so stay well clear of pytest's long tmp paths.
    with tempfile.TemporaryDirectory(prefix="adra-", dir="/tmp") as root:
        dirs = NodeDirs(Path(root), Path(root, "plugins"), Path(root, "registry"), Path(root, "cdi"))
        for d in (dirs.plugins, dirs.registry, dirs.cdi):
            d.mkdir()
        yield dirs


@pytest.fixture
async def apiserver() -> AsyncIterator[SimApiServer]:
    server = SimApiServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def kubeconfig(apiserver: SimApiServer, node_dirs: NodeDirs) -> Path:
    path = node_dirs.root / "kubeconfig"
    apiserver.write_kubeconfig(str(path))
    return path


@pytest.fixture
async def kube(kubeconfig: Path) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(str(kubeconfig))
    yield client
    await client.close()


StartPlugin = Callable[..., Awaitable[Process]]

NODE = "node-1"


@pytest.fixture
async def kubelet(kube: KubeClient, node_dirs: NodeDirs) -> AsyncIterator[SimKubelet]:
    """The sim kubelet of ``node-1``: registers the Node and wipes its slices, as a real kubelet starting."""
    async with SimKubelet(str(node_dirs.registry), kube=kube, node_name=NODE) as k:
        yield k


@pytest.fixture
async def start_plugin(kubeconfig: Path, node_dirs: NodeDirs) -> AsyncIterator[StartPlugin]:
    """Start ``accel-dra plugin`` processes for node ``node-1``; all are killed at teardown."""
    started: list[Process] = []

    async def start(
        *,
        driver: str = "gpu.accel-dra.dev",
        pod_uid: str | None = None,
        backend: str = "fake:pcie-l4x4",
        extra: tuple[str, ...] = (),
        **kw: Any,
    ) -> Process:
        args = plugin_args(
            kubeconfig=kw.pop("kubeconfig", kubeconfig),
            node=NODE,
            plugin_dir=kw.pop("plugin_dir", node_dirs.plugin_dir(driver)),
            registry_dir=node_dirs.registry,
            cdi_dir=node_dirs.cdi,
            driver=driver,
            pod_uid=pod_uid,
            extra=("--backend", backend, *extra),
        )
        process = await Process.start(args, name=f"plugin[{pod_uid or driver}]", env=kw.pop("env", None))
        started.append(process)
        return process

    yield start
    for process in started:
        await process.kill()


async def create_allocated_claim(
    kube: KubeClient,
    name: str,
    results: list[dict[str, Any]],
    namespace: str = "default",
    requests: tuple[str | dict[str, Any], ...] = ("gpu",),
) -> dict[str, Any]:
    """Create a ResourceClaim and write an allocation into its status, as the scheduler would.

    ``requests`` are request names (one GPU each) or full request objects.
    """
    claim = await kube.create(
        RESOURCE_CLAIMS,
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "devices": {
                    "requests": [
                        r
                        if isinstance(r, dict)
                        else {"name": r, "exactly": {"deviceClassName": "gpu.accel-dra.dev"}}
                        for r in requests
                    ]
                }
            },
        },
        namespace,
    )
    claim["status"] = {"allocation": {"devices": {"results": results}}}
    return await kube.update(RESOURCE_CLAIMS, claim, namespace, subresource="status")
