"""The chart's dashboard, alerts and dcgm-exporter rules on a real Prometheus scraping two sandbox nodes.

Two exporters (node-1: a DGX H100 with two GPUs in MIG mode; node-2: four L4s) over fake GPUs with simulated
load, the sim kubelet's PodResources, pods and claims in the sim API server and traced processes. Prometheus
scrapes them as the Prometheus Operator would from the chart's ServiceMonitor (the Operator's target labels
included) and evaluates the chart's PrometheusRule (alerts and dcgm compatibility).

Then every panel query of charts/accel-dra/dashboards/accel-dra-gpus.json runs against it, for all nodes and
for one, and the answers are checked against the exporters' own numbers: the two sums that used to be wrong
(a shared GPU's memory counted once per container; shared GPUs left out of utilization by namespace), the
node filter of the workload panels, GPU-seconds held per namespace, the labels GPU series end up with, the
dcgm-exporter series of a MIG device's holder, and alerts on a lost GPU and an XID.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families as parse_text

from driver.devices.backend import open_backend
from driver.devices.fake_events import inject_xid, set_lost
from driver.devices.model import Inventory
from driver.exporter.options import ExporterConfig
from driver.exporter.server import Exporter, exporter_backend_options
from driver.kube.client import NAMESPACES, KubeClient
from driver.sim.podresources import ClaimDevice as SimClaimDevice
from driver.sim.podresources import ClaimResources, PodResourcesServer, PodResourcesState
from tests.integration.conftest import NodeDirs
from tests.support.chart import CHART, find, helm_missing, render
from tests.support.pods import allocated_claim, running_pod
from tests.support.processes import Process
from tests.support.promoperator import discovered, scrape_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None, reason="prometheus not installed (Debian package)"
    ),
    pytest.mark.skipif(bool(helm_missing()), reason=helm_missing() or ""),
]

DRIVER = "gpu.accel-dra.dev"
GPU_CLASS = "gpu.accel-dra.dev"
MIG_CLASS = "mig.accel-dra.dev"
GiB = 1 << 30
MiB = 1 << 20
#: Panels whose sources this sandbox does not run: the kubelet plugin's metrics, and clocks held down by
#: something else than idleness (fake GPUs never are).
NO_SOURCE_HERE = {
    "DRA call latency p99",
    "Failed DRA calls",
    "Prepared devices",
    "ResourceSlice writes",
    "API errors",
    "Clocks held down (besides idle)",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    name: str
    exporter: Exporter
    state: PodResourcesState
    fake_state: Path
    proc_root: Path

    @property
    def inventory(self) -> Inventory:
        return self.exporter.inventory

    @property
    def address(self) -> str:
        assert self.exporter.server is not None
        return f"127.0.0.1:{self.exporter.server.port}"


@dataclass
class Sandbox:
    nodes: dict[str, Node]
    kube: KubeClient
    sleepers: list[subprocess.Popen[bytes]]

    async def pod(
        self,
        node: str,
        namespace: str,
        name: str,
        *,
        load: tuple[str, float, int] | None = None,
        traced: bool = True,
    ) -> None:
        """A Running pod; ``load``: its process runs on device UUID at (utilization, memory)."""
        uid, container_id = await running_pod(self.kube, namespace, name, node)
        if load is None:
            return
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        self.sleepers.append(proc)
        n = self.nodes[node]
        device, utilization, memory = load
        procs = n.fake_state / "gpus" / device / "procs" / f"{proc.pid}.json"
        procs.parent.mkdir(parents=True, exist_ok=True)
        procs.write_text(json.dumps({"pid": proc.pid, "utilization": utilization, "memory_bytes": memory}))
        if traced:
            cgroup = n.proc_root / str(proc.pid) / "cgroup"
            cgroup.parent.mkdir(parents=True, exist_ok=True)
            cgroup.write_text(
                f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/cri-containerd-{container_id}.scope\n"
            )

    async def claim(
        self, node: str, namespace: str, name: str, device: str, *, pods: list[str], cls: str
    ) -> None:
        await allocated_claim(self.kube, namespace, name, cls, [(DRIVER, node, device)])
        resources = ClaimResources(name, namespace, (SimClaimDevice(DRIVER, node, device),))
        for pod in pods:
            self.nodes[node].state.set_container(namespace, pod, "main", claims=[resources])


async def start_node(
    name: str, profile: str, dirs: NodeDirs, kubeconfig: Path
) -> tuple[Node, PodResourcesServer]:
    root = dirs.root / name
    state = PodResourcesState()
    server = PodResourcesServer(state, str(root / "pod-resources.sock"))
    await server.start()
    config = ExporterConfig(
        listen="127.0.0.1:0",
        backend=f"fake:{profile}",
        pod_resources_socket=str(root / "pod-resources.sock"),
        node_name=name,
        driver_name=DRIVER,
        kubeconfig=str(kubeconfig),
        kube_api="on",
        interval=0.5,
        sample_timeout=5.0,
        proc_root=str(root / "proc"),
        fake_state_dir=str(root / "fake-state"),
        driver_root="/",
        log_level="warning",
        log_format="text",
    )
    backend = open_backend(config.backend, **exporter_backend_options(config))
    exporter = Exporter(config, backend)
    return Node(name, exporter, state, root / "fake-state", root / "proc"), server


@pytest.fixture
async def sandbox(node_dirs: NodeDirs, kube: KubeClient, kubeconfig: Path) -> AsyncIterator[Sandbox]:
    nodes: dict[str, Node] = {}
    servers: list[PodResourcesServer] = []
    for name, profile in (("node-1", "dgx-h100-mig"), ("node-2", "pcie-l4x4")):
        (node_dirs.root / name).mkdir()
        node, server = await start_node(name, profile, node_dirs, kubeconfig)
        nodes[name] = node
        servers.append(server)
    box = Sandbox(nodes, kube, [])
    try:
        await populate(box)
        for node in nodes.values():
            await node.exporter.start()
        # After the start: like NVML, the exporter only hears of XIDs that happen while it listens.
        inject_xid(nodes["node-1"].fake_state, nodes["node-1"].inventory.gpus[5].uuid, 48)
        yield box
    finally:
        for node in nodes.values():
            await node.exporter.stop()
            node.exporter.backend.close()  # type: ignore[attr-defined]
        for server in servers:
            await server.stop()
        for proc in box.sleepers:
            proc.kill()
            proc.wait()


async def populate(box: Sandbox) -> None:
    """The workloads. node-1: an exclusive GPU, a GPU two pods share split by process, a GPU two pods share
    with an untraced process (the case the old panels counted twice and left out), a MIG device, a device
    plugin GPU by NVML index (and, once running, an XID); node-2: one exclusive GPU of another namespace and
    a lost GPU."""
    for namespace in ("ml", "team", "tune", "legacy", "other"):
        await box.kube.create(NAMESPACES, {"metadata": {"name": namespace}})
    n1, n2 = box.nodes["node-1"].inventory.gpus, box.nodes["node-2"].inventory.gpus
    big = next(m for m in n1[7].mig_devices if m.profile == "3g.40gb")
    big_name = f"{n1[7].name}-mig-3g-40gb-4"
    await box.pod("node-1", "ml", "train-0", load=(n1[0].uuid, 0.6, 20 * GiB))
    await box.claim("node-1", "ml", "train", n1[0].name, pods=["train-0"], cls=GPU_CLASS)
    await box.pod("node-1", "ml", "pair-a", load=(n1[1].uuid, 0.25, 1 * GiB))
    await box.pod("node-1", "ml", "pair-b", load=(n1[1].uuid, 0.5, 3 * GiB))
    await box.claim("node-1", "ml", "pair", n1[1].name, pods=["pair-a", "pair-b"], cls=GPU_CLASS)
    await box.pod("node-1", "team", "nb-a", load=(n1[2].uuid, 0.4, 8 * GiB), traced=False)
    await box.pod("node-1", "team", "nb-b")
    await box.claim("node-1", "team", "nb", n1[2].name, pods=["nb-a", "nb-b"], cls=GPU_CLASS)
    await box.pod("node-1", "tune", "tuner", load=(big.uuid, 0.8, 10 * GiB))
    await box.claim("node-1", "tune", "slice", big_name, pods=["tuner"], cls=MIG_CLASS)
    await box.pod("node-1", "legacy", "infer", load=(n1[3].uuid, 0.3, 2 * GiB))
    box.nodes["node-1"].state.set_container("legacy", "infer", "main", devices={"nvidia.com/gpu": ["3"]})
    await box.pod("node-2", "other", "job", load=(n2[0].uuid, 0.5, 4 * GiB))
    await box.claim("node-2", "other", "job", n2[0].name, pods=["job"], cls=GPU_CLASS)
    set_lost(box.nodes["node-2"].fake_state, n2[3].uuid)


# -- Prometheus --------------------------------------------------------------------------------------------


def prometheus_config(box: Sandbox, tmp: Path) -> Path:
    """Scrape configs from the chart's ServiceMonitor, rules from its PrometheusRule (alerts and dcgm)."""
    objects = render(
        {
            "plugin": {"enabled": False},
            "metrics": {
                "serviceMonitor": {"enabled": True},
                "prometheusRule": {"enabled": True, "dcgmCompatibility": {"enabled": True}},
            },
        }
    )
    monitor, service = find(objects, "ServiceMonitor"), find(objects, "Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    targets = [
        (
            node.address,
            discovered(
                namespace="accel-dra",
                service=service["metadata"]["name"],
                pod=f"accel-dra-{node.name}",
                container="exporter",
                node=node.name,
                port="metrics",
                labels=service["metadata"]["labels"],
            ),
        )
        for node in box.nodes.values()
    ]
    rules = tmp / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": find(objects, "PrometheusRule")["spec"]["groups"]}))
    config = tmp / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [scrape_config(monitor, endpoint, targets)],
            }
        )
    )
    return config


@dataclass
class Prometheus:
    url: str
    process: Process
    http: aiohttp.ClientSession

    async def query(self, expr: str) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/api/v1/query", params={"query": expr}) as response:
            body = await response.json()
        assert body["status"] == "success", (expr, body)
        return list(body["data"]["result"])

    async def until(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = await self.query(expr)
                    if found:
                        return found
                    await asyncio.sleep(0.5)  # Prometheus scrapes every second; polling is its API
        except TimeoutError:
            raise AssertionError(f"Prometheus never answered {expr!r}:\n{self.process.output()}") from None


@pytest.fixture
async def prometheus(sandbox: Sandbox, node_dirs: NodeDirs) -> AsyncIterator[Prometheus]:
    port = free_port()
    process = await Process.start(
        [
            "prometheus",
            f"--config.file={prometheus_config(sandbox, node_dirs.root)}",
            f"--storage.tsdb.path={node_dirs.root / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        name="prometheus",
    )
    try:
        await process.wait_log(r"Server is ready to receive web requests", timeout=60)
        async with aiohttp.ClientSession() as http:
            prom = Prometheus(f"http://127.0.0.1:{port}", process, http)
            # Every workload attributed, on both nodes, with two scrapes for rates.
            await prom.until('count(accel_dra_gpu_allocation_info{pod="tuner"}) > 0')
            await prom.until("count(rate(accel_dra_gpu_allocated_seconds_total[1m]) > 0) >= 8")
            await prom.until('count(DCGM_FI_DEV_FB_USED{pod="tuner"})')
            # Rates over Grafana's rate interval (10 s here) need that much data.
            await prom.until("min(count_over_time(accel_dra_exporter_samples_total[15s])) >= 12")
            yield prom
    finally:
        await process.terminate()


# -- the exporters' own numbers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


async def exporter_samples(box: Sandbox) -> dict[str, list[Sample]]:
    """Each node's /metrics, parsed (empty labels dropped, as Prometheus drops them)."""
    out: dict[str, list[Sample]] = {}
    async with aiohttp.ClientSession() as http:
        for node in box.nodes.values():
            async with http.get(f"http://{node.address}/metrics") as response:
                text = await response.text()
            out[node.name] = [
                Sample(s.name, {k: v for k, v in s.labels.items() if v}, s.value)
                for family in parse_text(text)
                for s in family.samples
            ]
    return out


def grouped_recipe(samples: list[Sample], name: str, key: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """The docs' recipe on the exporter's rows: per (key, device), attributed rows summed, shared rows once."""
    per_device: dict[tuple[tuple[str, ...], str, str], tuple[str, list[float]]] = {}
    for s in samples:
        if s.name != name:
            continue
        device = (tuple(s.labels.get(k, "") for k in key), s.labels["uuid"], s.labels.get("mig_uuid", ""))
        mode = s.labels["attribution"]
        per_device.setdefault(device, (mode, []))[1].append(s.value)
    totals: dict[tuple[str, ...], float] = {}
    for (group, _, _), (mode, values) in per_device.items():
        totals[group] = totals.get(group, 0.0) + (max(values) if mode == "shared" else sum(values))
    return totals


def panel_targets() -> Iterator[tuple[str, str]]:
    dashboard = json.loads((CHART / "dashboards" / "accel-dra-gpus.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def substitute(expr: str, node: str) -> str:
    """Grafana's variables: the node, a range and a rate interval the young sandbox has data for."""
    return expr.replace("$node", node).replace("$__range", "1m").replace("$__rate_interval", "10s")


def result_map(result: list[dict[str, Any]], *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(k, "") for k in keys): float(r["value"][1]) for r in result}


# -- the tests ------------------------------------------------------------------------------------------------


async def check_every_panel_answers_for_all_nodes_and_for_one(
    sandbox: Sandbox, prometheus: Prometheus
) -> None:
    answered: dict[str, int] = {}
    for title, expr in panel_targets():
        everything = await prometheus.query(substitute(expr, ".*"))
        answered[title] = answered.get(title, 0) + len(everything)
        one = await prometheus.query(substitute(expr, "node-2"))
        nodes = {r["metric"].get("k8s_node_name") for r in one} - {None}
        assert nodes <= {"node-2"}, f"{title} ignores the node filter: {nodes}"
    silent = sorted(title for title, count in answered.items() if not count)
    assert silent == sorted(NO_SOURCE_HERE), "panels without data"


async def check_workload_panels_match_the_exporters_numbers(sandbox: Sandbox, prometheus: Prometheus) -> None:
    panels = dict(panel_targets())
    own = await exporter_samples(sandbox)
    every = own["node-1"] + own["node-2"]

    # GPU memory by ResourceClaim: the claim two pods share on a GPU whose process cannot be split counts
    # the GPU once (it used to count it once per pod: twice the memory the GPU holds).
    memory = result_map(
        await prometheus.query(substitute(panels["GPU memory by ResourceClaim"], ".*")),
        "resource_claim_namespace",
        "resource_claim",
    )
    expected = grouped_recipe(
        every, "accel_dra_container_gpu_memory_usage_bytes", ("resource_claim_namespace", "resource_claim")
    )
    assert memory == pytest.approx(expected)
    gpu2 = sandbox.nodes["node-1"].inventory.gpus[2]
    held = next(
        s.value
        for s in own["node-1"]
        if s.name == "hw_gpu_memory_usage_bytes" and s.labels["uuid"] == gpu2.uuid
    )
    assert memory[("team", "nb")] == held
    assert memory[("ml", "pair")] == 4 * GiB  # split by process: each pod's own memory

    # GPU utilization by namespace: shared GPUs are in it, once (they used to be left out).
    util = result_map(
        await prometheus.query(substitute(panels["GPU utilization by namespace"], ".*")), "namespace"
    )
    assert util == pytest.approx(
        grouped_recipe(every, "accel_dra_container_gpu_utilization_ratio", ("namespace",))
    )
    assert util[("team",)] == pytest.approx(0.4)
    assert util[("ml",)] == pytest.approx(0.6 + 0.25 + 0.5)
    assert util[("tune",)] == pytest.approx(0.8)  # the MIG device's own (GPM) utilization

    # The node filter: node-2's workloads only.
    only = result_map(
        await prometheus.query(substitute(panels["GPU utilization by namespace"], "node-2")), "namespace"
    )
    assert only == pytest.approx({("other",): 0.5})
    claims = result_map(
        await prometheus.query(substitute(panels["GPU memory by ResourceClaim"], "node-2")), "resource_claim"
    )
    assert set(claims) == {("job",)}

    # GPUs held by namespace, in GPU-equivalents: a MIG device is its share of the GPU; a GPU two pods
    # share is held once.
    (held_expr, _busy_expr) = [e for t, e in panel_targets() if t == "GPUs held by namespace"]
    held_by = result_map(await prometheus.query(substitute(held_expr, ".*")), "namespace")
    inventory = sandbox.nodes["node-1"].inventory
    big = next(m for m in inventory.gpus[7].mig_devices if m.profile == "3g.40gb")
    share = (big.memory_bytes or 0) / (inventory.gpus[7].memory_bytes or 1)
    expected_held = {("ml",): 2.0, ("team",): 1.0, ("tune",): share, ("legacy",): 1.0, ("other",): 1.0}
    assert set(held_by) == set(expected_held)
    for key, value in expected_held.items():
        assert held_by[key] == pytest.approx(value, rel=0.2), key


async def check_gpu_panels_match_the_exporters_numbers(sandbox: Sandbox, prometheus: Prometheus) -> None:
    panels = dict(panel_targets())
    own = await exporter_samples(sandbox)
    for title, name, match in (
        ("GPU utilization", "hw_gpu_utilization_ratio", {"hw_gpu_task": "general"}),
        ("GPU memory used", "hw_gpu_memory_usage_bytes", {}),
        ("Power", "hw_power_watts", {}),
    ):
        got = result_map(await prometheus.query(substitute(panels[title], ".*")), "k8s_node_name", "hw_id")
        want = {
            (node, s.labels["hw_id"]): s.value
            for node, samples in own.items()
            for s in samples
            if s.name == name and match.items() <= s.labels.items()
        }
        assert got == want, title
    # MIG-enabled GPUs have no utilization (as with NVML); their MIG devices have their own memory series.
    mig_memory = result_map(
        await prometheus.query(substitute(panels["MIG device memory used"], "node-1")), "hw_id"
    )
    assert len(mig_memory) == 11


async def check_gpu_series_keep_only_their_own_labels(sandbox: Sandbox, prometheus: Prometheus) -> None:
    """The Operator labels each target with the exporter pod's namespace/pod/container: none of that may
    reach GPU series, and attributed series keep their consumers' labels, not exported_* copies."""
    for series in await prometheus.query("hw_power_watts"):
        labels = series["metric"]
        assert not {"namespace", "pod", "container"} & set(labels), labels
        assert labels["node"] in ("node-1", "node-2") and labels["job"] == "accel-dra-metrics"
    rows = await prometheus.query('accel_dra_gpu_allocation_info{pod="tuner"}')
    assert [(r["metric"]["namespace"], r["metric"]["container"]) for r in rows] == [("tune", "main")]
    assert not await prometheus.query('{__name__=~".+", exported_namespace=~".+"}')


async def check_dcgm_exporter_series_and_alerts(sandbox: Sandbox, prometheus: Prometheus) -> None:
    own = await exporter_samples(sandbox)
    (tuner,) = await prometheus.query('DCGM_FI_DEV_FB_USED{pod="tuner"}')
    mig_memory = next(
        s.value
        for s in own["node-1"]
        if s.name == "accel_dra_mig_memory_usage_bytes" and s.labels["mig_profile"] == "3g.40gb"
    )
    labels = tuner["metric"]
    assert float(tuner["value"][1]) == mig_memory // MiB
    assert (labels["GPU_I_PROFILE"], labels["namespace"], labels["Hostname"], labels["gpu"]) == (
        "3g.40gb",
        "tune",
        "node-1",
        "7",
    )
    assert labels["dra_claim_name"] == "slice" and labels["pci_bus_id"] == "00000000:DB:00.0"
    util = result_map(await prometheus.query('DCGM_FI_DEV_GPU_UTIL{Hostname="node-1"}'), "gpu", "pod")
    assert util[("0", "train-0")] == 60.0 and util[("3", "infer")] == 30.0
    assert not [k for k in util if k[0] in ("6", "7")]  # MIG-enabled: no utilization
    # Alerts: another XID of the code seen before Prometheus started (a code new since then only counts once
    # Prometheus has ten minutes of data), and the GPU node-2 lost (pending: it fires after 2 minutes).
    inject_xid(sandbox.nodes["node-1"].fake_state, sandbox.nodes["node-1"].inventory.gpus[5].uuid, 48)
    (xid,) = await prometheus.until('ALERTS{alertname="AccelDraGPUXidErrors", alertstate="firing"}')
    assert (xid["metric"]["xid"], xid["metric"]["k8s_node_name"]) == ("48", "node-1")
    (lost,) = await prometheus.until('ALERTS{alertname="AccelDraGPUFailed"}')
    assert lost["metric"]["uuid"] == sandbox.nodes["node-2"].inventory.gpus[3].uuid
    (last,) = await prometheus.until('DCGM_FI_DEV_XID_ERRORS{gpu="5", Hostname="node-1"} > 0')
    assert math.isclose(float(last["value"][1]), 48)


async def test_dashboard_alerts_and_dcgm_rules_on_a_real_prometheus(
    sandbox: Sandbox, prometheus: Prometheus
) -> None:
    """One sandbox and one Prometheus (a minute to set up) for all the checks, in this order: the last one
    injects an XID."""
    await check_every_panel_answers_for_all_nodes_and_for_one(sandbox, prometheus)
    await check_workload_panels_match_the_exporters_numbers(sandbox, prometheus)
    await check_gpu_panels_match_the_exporters_numbers(sandbox, prometheus)
    await check_gpu_series_keep_only_their_own_labels(sandbox, prometheus)
    await check_dcgm_exporter_series_and_alerts(sandbox, prometheus)
