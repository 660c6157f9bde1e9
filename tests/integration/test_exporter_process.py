"""The exporter as a real process: CLI flags, /metrics and /healthz, attribution through the sim kubelet's
PodResources socket, a real Prometheus scraping it, and a clean exit on SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families as parse_text

from driver import cli
from driver.devices.fake import load_named_profile
from driver.sim.podresources import ClaimResources, PodResourcesServer, PodResourcesState
from driver.state.api import PreparedDevice
from tests.integration.conftest import NodeDirs
from tests.support.processes import Process, accel_dra

DRIVER = "gpu.accel-dra.dev"
NODE = "node-1"


def exporter_argv(*args: str) -> list[str]:
    """``accel-dra exporter ...`` once the CLI knows the command, else the module entry point."""
    if any(command.name == "exporter" for command in cli.COMMANDS):
        return accel_dra("exporter", *args)
    return [sys.executable, "-m", "driver.exporter", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_exporter(dirs: NodeDirs, socket_path: str, *extra: str) -> tuple[Process, int]:
    process = await Process.start(
        exporter_argv(
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "fake:pcie-l4x4",
            "--node-name",
            NODE,
            "--pod-resources-socket",
            socket_path,
            "--fake-state-dir",
            str(dirs.root / "fake-state"),
            "--kube-api",
            "off",
            "--interval",
            "0.2",
            *extra,
        ),
        name="exporter",
    )
    (line,) = await process.wait_log(r"exporter running", timeout=30)
    match = re.search(r"\bport=(\d+)", line)
    assert match, line
    return process, int(match.group(1))


@pytest.fixture
async def kubelet(node_dirs: NodeDirs) -> AsyncIterator[tuple[PodResourcesState, str]]:
    state = PodResourcesState()
    path = str(node_dirs.root / "pod-resources" / "kubelet.sock")
    server = PodResourcesServer(state, path)
    await server.start()
    yield state, path
    await server.stop()


async def get(url: str, **kw: Any) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, asyncio.timeout(10), http.get(url, **kw) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def test_exporter_process_serves_and_stops_cleanly(
    node_dirs: NodeDirs, kubelet: tuple[PodResourcesState, str]
) -> None:
    state, socket_path = kubelet
    gpu = load_named_profile("pcie-l4x4", node_name=NODE).inventory.gpus[0]  # UUIDs seeded like the plugin's
    state.set_container(
        "ml",
        "trainer",
        "main",
        claims=[
            ClaimResources.from_prepared(
                "ml",
                "gpu",
                DRIVER,
                [PreparedDevice(("gpu",), NODE, gpu.name, (f"k8s.{DRIVER}/gpu=u-{gpu.name}",))],
            )
        ],
    )
    process, port = await start_exporter(node_dirs, socket_path)
    try:
        base = f"http://127.0.0.1:{port}"
        assert (await get(f"{base}/healthz"))[::2] == (200, "ok\n")
        status, content_type, text = await get(f"{base}/metrics")
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        _, om_type, om_text = await get(
            f"{base}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert om_type.startswith("application/openmetrics-text") and om_text.endswith("# EOF\n")
        info = [
            s.labels for f in parse_text(text) for s in f.samples if s.name == "accel_dra_gpu_allocation_info"
        ]
        assert [(i["uuid"], i["pod"], i["resource_claim"], i["dra_device"]) for i in info] == [
            (gpu.uuid, "trainer", "gpu", gpu.name)
        ]
        if shutil.which("promtool"):
            check = await asyncio.create_subprocess_exec(
                "promtool", "check", "metrics", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
            out, _ = await check.communicate(text.encode())
            assert (check.returncode, out) == (0, b"")
    finally:
        code = await process.terminate(signal.SIGTERM)
    assert code == 0, process.output()
    assert process.matching("stopping on signal")


async def test_exporter_process_exits_zero_on_sigint(node_dirs: NodeDirs) -> None:
    process, _ = await start_exporter(node_dirs, "")
    code = await process.terminate(signal.SIGINT)
    assert code == 0, process.output()


async def exit_code(process: Process, timeout: float = 30.0) -> int:
    async with asyncio.timeout(timeout):
        return await process.proc.wait()


async def test_exporter_process_rejects_bad_flags(node_dirs: NodeDirs) -> None:
    process = await Process.start(
        exporter_argv("--interval", "0", "--backend", "fake:pcie-l4x4"), name="exporter"
    )
    await process.wait_log("argument --interval: '0' must be more than 0 seconds")
    assert await exit_code(process) == 2
    process = await Process.start(
        exporter_argv("--backend", "fake:nope", "--listen", "127.0.0.1:0"), name="exporter"
    )
    await process.wait_log("unknown fake device profile 'nope'")
    assert await exit_code(process) == 1


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not installed (Debian package 'prometheus')"
)
async def test_prometheus_scrapes_the_exporter(
    node_dirs: NodeDirs, kubelet: tuple[PodResourcesState, str]
) -> None:
    state, socket_path = kubelet
    gpu = load_named_profile("pcie-l4x4", node_name=NODE).inventory.gpus[1]
    state.set_container("legacy", "inference", "server", devices={"nvidia.com/gpu": [gpu.uuid]})
    exporter, port = await start_exporter(node_dirs, socket_path)
    web_port = free_port()
    config = node_dirs.root / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {"job_name": "accel-dra", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                ],
            }
        )
    )
    prometheus = await Process.start(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={node_dirs.root / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
        ],
        name="prometheus",
    )
    try:
        await prometheus.wait_log(r"Server is ready to receive web requests", timeout=60)
        api = f"http://127.0.0.1:{web_port}/api/v1/query"
        utilization = await query_until(
            api, f'hw_gpu_utilization_ratio{{uuid="{gpu.uuid}",hw_gpu_task="general"}}', prometheus
        )
        ((metric, value),) = [(r["metric"], float(r["value"][1])) for r in utilization]
        assert (metric["pci_bus_id"], metric["hw_id"], metric["job"]) == (
            gpu.pci_bus_id,
            gpu.name,
            "accel-dra",
        )
        assert value == 0.0
        attributed = await query_until(api, "accel_dra_container_gpu_memory_usage_bytes", prometheus)
        assert [
            (r["metric"]["uuid"], r["metric"]["pod"], r["metric"]["attribution"]) for r in attributed
        ] == [(gpu.uuid, "inference", "exclusive")]
        up = await query_until(api, 'up{job="accel-dra"} == 1', prometheus)
        assert len(up) == 1
    finally:
        await prometheus.terminate()
        assert await exporter.terminate() == 0


async def query_until(
    api: str, query: str, prometheus: Process, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Poll Prometheus' query API until the query returns series (scrapes happen every second)."""
    async with aiohttp.ClientSession() as http:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    async with http.get(api, params={"query": query}) as response:
                        body = await response.json()
                    assert body["status"] == "success", body
                    if body["data"]["result"]:
                        return list(body["data"]["result"])
                    await asyncio.sleep(0.25)
        except TimeoutError:
            raise AssertionError(f"Prometheus never returned {query!r}:\n{prometheus.output()}") from None
