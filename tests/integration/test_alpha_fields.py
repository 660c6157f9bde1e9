"""Alpha ResourceSlice fields end to end: the plugin asks the API server (dry run) whether it keeps them,
publishes them where it does and falls back -- saying why -- where it does not; the sandbox allocates by
list-type numaNode with the gate on."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from driver.kube.client import RESOURCE_CLAIMS, RESOURCE_SLICES, KubeClient
from driver.resources.apiprobe import supported
from driver.resources.publishing import NUMA_NODE, PublishOptions
from driver.sim.apiserver import SimApiServer
from driver.sim.kinds import ALPHA_GATES
from driver.sim.kubelet import SimKubelet
from driver.sim.sandbox import Sandbox, SandboxConfig
from tests.integration.conftest import NODE, NodeDirs
from tests.integration.test_publishing import node_slices, published
from tests.support.processes import Process, plugin_args

DRIVER = "gpu.accel-dra.dev"
FLAGS = ("--list-attributes", "on", "--host-memory-per-pod", "2Gi")
JSON = dict[str, Any]


@contextlib.asynccontextmanager
async def cluster(
    node_dirs: NodeDirs, gates: frozenset[str], version: str = "v1.37.2"
) -> AsyncIterator[tuple[SimApiServer, Path]]:
    async with SimApiServer(feature_gates=gates, kubernetes_version=version) as server:
        kubeconfig = server.write_kubeconfig(node_dirs.root / f"kubeconfig-{len(gates)}")
        yield server, kubeconfig


@pytest.mark.parametrize("gates", [ALPHA_GATES, frozenset()], ids=["gates on", "gates off"])
async def test_the_probe_asks_the_server_without_writing(node_dirs: NodeDirs, gates: frozenset[str]) -> None:
    wanted = PublishOptions(list_attributes=True, host_memory_per_pod=1 << 30)
    async with (
        cluster(node_dirs, gates) as (server, kubeconfig),
        await KubeClient.connect(str(kubeconfig)) as kube,
    ):
        kept = await supported(kube, DRIVER, NODE, wanted)
        assert kept == (wanted if gates else PublishOptions())
        assert server.objects(RESOURCE_SLICES) == [], "a dry run stores nothing"
        writes = [r for r in server.request_log.records if r.method == "POST"]
        assert len(writes) == 2 and all("dryRun=All" in r.query for r in writes)
        # Nothing asked, nothing sent.
        assert await supported(kube, DRIVER, NODE, PublishOptions()) == PublishOptions()
        assert len([r for r in server.request_log.records if r.method == "POST"]) == 2


async def test_list_attributes_need_kubernetes_1_37(node_dirs: NodeDirs) -> None:
    """1.36 keeps list values with its gate on, but its scheduler's CEL fails on such devices: not asked."""
    wanted = PublishOptions(list_attributes=True, host_memory_per_pod=1 << 30)
    async with (
        cluster(node_dirs, ALPHA_GATES, "v1.36.3") as (server, kubeconfig),
        await KubeClient.connect(str(kubeconfig)) as kube,
    ):
        assert await supported(kube, DRIVER, NODE, wanted) == PublishOptions(host_memory_per_pod=1 << 30)
        assert len([r for r in server.request_log.records if r.method == "POST"]) == 1


@pytest.mark.parametrize("gates", [ALPHA_GATES, frozenset()], ids=["gates on", "gates off"])
async def test_the_plugin_publishes_the_fields_only_where_the_server_keeps_them(
    node_dirs: NodeDirs, gates: frozenset[str]
) -> None:
    async with (
        cluster(node_dirs, gates) as (server, kubeconfig),
        await KubeClient.connect(str(kubeconfig)) as kube,
        SimKubelet(str(node_dirs.registry), kube=kube, node_name=NODE),
    ):
        args = plugin_args(
            kubeconfig=kubeconfig,
            node=NODE,
            plugin_dir=node_dirs.plugin_dir(DRIVER),
            registry_dir=node_dirs.registry,
            cdi_dir=node_dirs.cdi,
            extra=("--backend", "fake:pcie-l40s-snc", *FLAGS),
        )
        process = await Process.start(args, name="plugin-alpha")
        try:
            await published(server, 4, process)
            devices = {d["name"]: d for s in node_slices(None, server) for d in s["spec"]["devices"]}
            first = devices["gpu-0000-19-00-0"]
            if gates:
                assert first["attributes"][NUMA_NODE] == {"ints": [0, 1]}
                assert first["nodeAllocatableResources"] == {"memory": {"overhead": {"perPod": "2Gi"}}}
                assert not [line for line in process.lines if "level=error" in line]
            else:
                assert first["attributes"][NUMA_NODE] == {"int": 0}
                assert "nodeAllocatableResources" not in first
                for gate in ("DRAListTypeAttributes", "DRANodeAllocatableResources"):
                    await process.wait_log(f"level=error.*feature gate on.*feature={gate}")
        finally:
            await process.kill()


async def test_the_sandbox_matches_numa_node_lists_with_the_gate_on() -> None:
    """Two GPUs with matchAttribute on numaNode: the lists of one socket's GPUs share a node, the other
    socket's do not -- so the pair is always one socket's. With the gate off, no pair matches at all."""
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "pair", "namespace": "default"},
        "spec": {
            "devices": {
                "requests": [
                    {"name": "gpus", "exactly": {"deviceClassName": "gpu.accel-dra.dev", "count": 2}}
                ],
                "constraints": [{"requests": ["gpus"], "matchAttribute": NUMA_NODE}],
            }
        },
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pair", "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "resourceClaims": [{"name": "gpus", "resourceClaimName": "pair"}],
            "containers": [
                {
                    "name": "ctr",
                    "image": "x",
                    "command": ["sleep", "60"],
                    "resources": {"claims": [{"name": "gpus"}]},
                }
            ],
        },
    }
    config = SandboxConfig(
        profile="pcie-l40s-snc", exporter=False, feature_gates=ALPHA_GATES, extra_plugin_args=FLAGS
    )
    async with Sandbox(config) as box:
        await box.apply([claim, pod])
        await box.wait_pod("default", "pair", ["Running"])
        (stored,) = box.apiserver.objects(RESOURCE_CLAIMS, "default")
        devices = sorted(r["device"] for r in stored["status"]["allocation"]["devices"]["results"])
        assert devices in (["gpu-0000-19-00-0", "gpu-0000-3b-00-0"], ["gpu-0000-99-00-0", "gpu-0000-bb-00-0"])
