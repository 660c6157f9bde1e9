"""The whole product on one machine: a simulated control plane and node running the real plugin and exporter.

Layout of a sandbox root (a temp dir unless given)::

    kubeconfig          for the sim API server
    registry/           kubelet plugin registry
    plugins/<driver>/   the plugin's DRA socket, checkpoint and lock
    cdi/                CDI specs written by the plugin, read by the sim runtime
    driver-root/        fake NVIDIA user-space files (libraries, nvidia-smi)
    fake-state/         simulated GPU load reported by workloads, read by both backends
    proc/               kubepods cgroup files of container processes (for exporter attribution)
    pod-resources/      the sim kubelet's PodResources socket
    containers/         per-container logs and records
    logs/               plugin.log, exporter.log

In-process: the API server, the ResourceClaim controller, the scheduler and the node (kubelet + runtime).
Separate processes over real sockets: ``accel-dra plugin`` and ``accel-dra exporter``.

``shape`` picks whose DRA driver the node runs (:mod:`driver.sim.shapes`): this project's plugin, or an
in-process stand-in shaped like AMD's or Intel's driver (its slices, device nodes and tool), so the
conformance suite can be run against three vendors' shapes. ``device_plugin`` adds a simulated device
plugin offering the shape's extended resource (:mod:`driver.sim.deviceplugin`). The exporter is the metrics
solution for every shape (it attributes other drivers' devices through their ``pciBusID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from driver import DEFAULT_DRIVER_NAME
from driver.devices.backend import open_backend
from driver.exporter.names import IDENTITY_LABELS
from driver.kube.client import (
    DEVICE_CLASSES,
    NAMESPACES,
    NODES,
    PODS,
    RESOURCE_CLAIM_TEMPLATES,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
    SERVICES,
    ApiError,
    KubeClient,
    ResourceType,
)
from driver.log import get_logger
from driver.resources.deviceclasses import device_classes
from driver.sim.admission import POLICIES, POLICY_BINDINGS
from driver.sim.apiserver import SimApiServer
from driver.sim.controllers import ClaimController, Scheduler
from driver.sim.deviceplugin import SimDevicePlugin
from driver.sim.driverroot import create_driver_root
from driver.sim.kinds import LIST_TYPE_ATTRIBUTES
from driver.sim.node import SimNode
from driver.sim.podresources import PodResourcesServer, PodResourcesState
from driver.sim.rbac import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    ROLE_BINDINGS,
    ROLES,
    new_token,
    service_account,
)
from driver.sim.runtime import ContainerHandle, ContainerSpec, SimRuntime
from driver.sim.shapeddriver import ShapedDriver
from driver.sim.shapes import SHAPES, Shape, device_class
from driver.sim.vendortools import amd_smi_facts, install_amd_smi

log = get_logger(__name__)

JSON = dict[str, Any]
METRICS_NAMESPACE = "accel-dra"
METRICS_SERVICE = "accel-dra-metrics"
METRICS_PORT = 9400

#: Fault injection for the conformance suite's self-tests: each makes the sandbox misbehave the way a
#: broken driver stack would, so that the probe covering it must fail (tests/integration/test_conformance_*).
FAULT_UNLABELLED_METRICS = "unlabelled-metrics"  # the metrics Service drops the per-GPU identity labels
FAULT_LEAKY_RUNTIME = "leaky-runtime"  # containers without a claim get every GPU's device node
FAULT_WRONG_DRIVER_VERSION = "wrong-driver-version"  # the plugin publishes a driverVersion nvidia-smi denies
FAULT_INCOMPLETE_POOL = "incomplete-pool"  # an extra pool of the driver with one of its two slices missing
FAULTS = frozenset(
    {FAULT_UNLABELLED_METRICS, FAULT_LEAKY_RUNTIME, FAULT_WRONG_DRIVER_VERSION, FAULT_INCOMPLETE_POOL}
)
FAULT_DRIVER_VERSION = "535.288.01"

KINDS: dict[str, ResourceType] = {
    rt.kind: rt
    for rt in (PODS, RESOURCE_CLAIMS, RESOURCE_CLAIM_TEMPLATES, DEVICE_CLASSES, NAMESPACES, SERVICES)
}


class SandboxError(RuntimeError):
    pass


@dataclass(frozen=True)
class SandboxConfig:
    profile: str = "dgx-h100"
    driver_name: str = DEFAULT_DRIVER_NAME
    node_name: str = "sandbox-node"
    root: Path | None = None
    exporter: bool = True
    exporter_interval: float = 0.5
    keep: bool = False
    log_level: str = "info"
    extra_plugin_args: tuple[str, ...] = ()
    extra_exporter_args: tuple[str, ...] = ()
    #: Names from :data:`FAULTS` (self-tests of the conformance suite only).
    faults: frozenset[str] = frozenset()
    #: Whose DRA driver the node runs: a key of :data:`driver.sim.shapes.SHAPES`.
    shape: str = "accel-dra"
    #: Also offer the shape's extended resource through a simulated device plugin.
    device_plugin: bool = False
    #: Alpha feature gates on in the API server and the scheduler (:data:`driver.sim.kinds.ALPHA_GATES`).
    feature_gates: frozenset[str] = frozenset()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# The chart rendered with its default values (kept in step with charts/accel-dra by tests/unit/deploy/test_chart.py).
CHART_MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "base" / "accel-dra.yaml"
CHART_NAMESPACE, CHART_SERVICE_ACCOUNT = "accel-dra", "accel-dra"
_ACCESS_TYPES = {
    rt.kind: rt
    for rt in (CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS, ROLES, ROLE_BINDINGS, POLICIES, POLICY_BINDINGS)
}


def chart_access_objects(manifest: Path = CHART_MANIFEST) -> list[tuple[ResourceType, JSON]]:
    """The chart's RBAC objects and admission policy, in order; none where the manifest is not there (the
    sandbox run from an installed package, without the repository)."""
    if not manifest.is_file():
        return []
    documents = yaml.safe_load_all(manifest.read_text())
    kinds = _ACCESS_TYPES
    return [(kinds[d["kind"]], d) for d in documents if isinstance(d, dict) and d.get("kind") in kinds]


class Sandbox:
    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        unknown = sorted(self.config.faults - FAULTS)
        if unknown:
            raise SandboxError(
                f"unknown sandbox fault(s) {', '.join(unknown)}; known: {', '.join(sorted(FAULTS))}"
            )
        if self.config.shape not in SHAPES:
            raise SandboxError(f"unknown sandbox shape {self.config.shape!r}; known: {', '.join(SHAPES)}")
        self.shape: Shape = SHAPES[self.config.shape]
        #: The DRA driver the node runs (this project's, or the shape's stand-in).
        self.driver = self.config.driver_name if self.config.shape == "accel-dra" else self.shape.driver
        self.root = Path(self.config.root or tempfile.mkdtemp(prefix="accel-dra-sandbox-", dir="/tmp"))
        self._owns_root = self.config.root is None
        self.apiserver = SimApiServer(graceful_pod_deletion=True, feature_gates=self.config.feature_gates)
        self.kube: KubeClient | None = None
        self.node: SimNode | None = None
        self.exporter_url = ""
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._stack = contextlib.AsyncExitStack()

    # -- paths -----------------------------------------------------------------------------------

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig (the sandbox's own controllers, tests, kubectl)."""
        return self.path("kubeconfig")

    @property
    def driver_kubeconfig(self) -> Path:
        """The kubeconfig of the plugin and the exporter: the chart's service account, authorised by the
        chart's RBAC as on a cluster; the admin's where the chart's manifest is not at hand."""
        return self.path("driver.kubeconfig")

    @property
    def plugin_dir(self) -> Path:
        return self.path("plugins", self.driver)

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Sandbox:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        cfg = self.config
        for sub in (
            "registry",
            "plugins",
            "cdi",
            "fake-state",
            "proc",
            "pod-resources",
            "containers",
            "logs",
        ):
            self.path(sub).mkdir(parents=True, exist_ok=True)
        await self.apiserver.start()
        self._stack.push_async_callback(self.apiserver.stop)
        self.apiserver.write_kubeconfig(self.kubeconfig)
        self._driver_credentials()
        self.kube = await KubeClient.connect(str(self.kubeconfig))
        self._stack.push_async_callback(self.kube.close)

        backend = open_backend(f"fake:{cfg.profile}", node_name=cfg.node_name)
        try:
            inventory = backend.discover()
            smi = create_driver_root(self.path("driver-root"), inventory).nvidia_smi
        finally:
            backend.close()
        classes = device_classes(cfg.driver_name) if cfg.shape == "accel-dra" else [device_class(self.shape)]
        for each in classes:
            await self.kube.create(DEVICE_CLASSES, each)
        devices = self.shape.devices(inventory, inventory.driver_version or "")
        tool = self._vendor_tool(devices, inventory.driver_version or "") if cfg.shape != "accel-dra" else smi
        state = str(self.path("fake-state"))
        edits = {
            "env": [f"ACCEL_DRA_FAKE_STATE={state}"],
            "mounts": [
                {"hostPath": state, "containerPath": state, "options": ["rw", "nosuid", "nodev", "bind"]}
            ],
        }
        plugin = (
            SimDevicePlugin(
                self.shape.extended_resource,
                devices,
                self.path("cdi"),
                cdi_kind=self.shape.cdi_kind,
                tool=tool,
                extra_edits=edits,
            )
            if cfg.device_plugin
            else None
        )

        resources_state = PodResourcesState()
        server = PodResourcesServer(resources_state, str(self.path("pod-resources", "kubelet.sock")))
        await server.start()
        self._stack.push_async_callback(server.stop)
        self.node = SimNode(
            name=cfg.node_name,
            kube=self.kube,
            registry_dir=str(self.path("registry")),
            runtime=(
                _LeakyRuntime(self.path("cdi"), self.path("cdi-faults"), [g.minor for g in inventory.gpus])
                if FAULT_LEAKY_RUNTIME in cfg.faults
                else SimRuntime([self.path("cdi")])
            ),
            containers_dir=self.path("containers"),
            proc_root=self.path("proc"),
            pod_resources=resources_state,
            log_sink=self.apiserver.pod_logs.set_file,
            device_plugin=plugin,
        )
        await self.node.start()
        self._stack.push_async_callback(self.node.stop)
        labels = dict(self.shape.node_labels(inventory))
        if labels:  # what the vendor's node labeller would add
            await self.kube.patch(NODES, cfg.node_name, {"metadata": {"labels": labels}})
        lists = LIST_TYPE_ATTRIBUTES in self.config.feature_gates
        for controller in (ClaimController(self.kube), Scheduler(self.kube, list_type_attributes=lists)):
            await controller.start()
            self._stack.push_async_callback(controller.stop)

        if cfg.shape == "accel-dra":
            await self._start_plugin()
        else:
            await self._start_shaped_driver(devices, tool, edits)
        if cfg.exporter:
            await self._start_exporter()
        await self.wait_ready()
        if FAULT_INCOMPLETE_POOL in cfg.faults:
            self._publish_incomplete_pool()

    async def stop(self) -> None:
        for name, proc in list(self._processes.items()):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            self._processes.pop(name)
        await self._stack.aclose()
        if self._owns_root and not self.config.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- processes -------------------------------------------------------------------------------

    async def _spawn(self, name: str, args: list[str]) -> None:
        logfile = self.path("logs", f"{name}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "driver",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=logfile,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
        )
        logfile.close()
        self._processes[name] = proc

    def _driver_credentials(self) -> None:
        """Apply the chart's roles, bindings and admission policy and give the driver's processes the chart's
        service account, bound to the sandbox's node."""
        objects = chart_access_objects()
        if not objects:
            log.info("no chart manifest: the driver runs as the admin", manifest=str(CHART_MANIFEST))
            self.apiserver.write_kubeconfig(self.driver_kubeconfig)
            return
        for rt, obj in objects:
            self.apiserver.create(rt, obj, obj.get("metadata", {}).get("namespace"))
        token = new_token()
        node = self.config.node_name
        self.apiserver.add_user(token, service_account(CHART_NAMESPACE, CHART_SERVICE_ACCOUNT, node=node))
        self.apiserver.write_kubeconfig(self.driver_kubeconfig, token=token)

    async def _start_plugin(self) -> None:
        cfg = self.config
        await self._spawn(
            "plugin",
            [
                "plugin",
                "--driver-name", cfg.driver_name,
                "--node-name", cfg.node_name,
                "--kubeconfig", str(self.driver_kubeconfig),
                "--plugin-dir", str(self.plugin_dir),
                "--registry-dir", str(self.path("registry")),
                "--cdi-dir", str(self.path("cdi")),
                "--backend", self._plugin_backend(),
                "--fake-state-dir", str(self.path("fake-state")),
                "--driver-root", str(self.path("driver-root")),
                "--log-level", cfg.log_level,
                *cfg.extra_plugin_args,
            ],
        )  # fmt: skip

    def _vendor_tool(self, devices: list[Any], driver_version: str) -> Path | None:
        """The shape's command-line tool stand-in (AMD: amd-smi), or None."""
        if self.shape.tool != "amd-smi":
            return None
        gpus = [{"index": d.index, "bdf": d.gpu.pci_bus_id, "uuid": d.gpu.uuid} for d in devices]
        return install_amd_smi(self.path("vendor-tools"), amd_smi_facts(gpus, driver_version))

    async def _start_shaped_driver(self, devices: list[Any], tool: Path | None, edits: JSON) -> None:
        assert self.kube is not None
        driver = ShapedDriver(
            shape=self.shape,
            devices=devices,
            kube=self.kube,
            node=self.config.node_name,
            plugin_dir=self.plugin_dir,
            registry_dir=self.path("registry"),
            cdi_dir=self.path("cdi"),
            tool=tool,
            extra_edits=edits,
        )
        await driver.start()
        self._stack.push_async_callback(driver.stop)

    async def _start_exporter(self) -> None:
        cfg = self.config
        assert self.kube is not None
        port = _free_port()
        await self._spawn(
            "exporter",
            [
                "exporter",
                "--listen", f"127.0.0.1:{port}",
                "--driver-name", cfg.driver_name,
                "--node-name", cfg.node_name,
                "--kubeconfig", str(self.driver_kubeconfig),
                "--backend", f"fake:{cfg.profile}",
                "--fake-state-dir", str(self.path("fake-state")),
                "--pod-resources-socket", str(self.path("pod-resources", "kubelet.sock")),
                "--proc-root", str(self.path("proc")),
                "--interval", str(cfg.exporter_interval),
                "--health-state-file", str(self.plugin_dir / "health.json"),
                "--log-level", cfg.log_level,
                *cfg.extra_exporter_args,
            ],
        )  # fmt: skip
        self.exporter_url = f"http://127.0.0.1:{port}"
        # The metrics Service, reachable through the API server's service proxy like on a cluster.
        await self.ensure_namespace(METRICS_NAMESPACE)
        await self.kube.create(
            SERVICES,
            {
                "metadata": {"name": METRICS_SERVICE, "namespace": METRICS_NAMESPACE},
                "spec": {
                    "ports": [{"name": "metrics", "port": METRICS_PORT}],
                    "selector": {"app": "accel-dra"},
                },
            },
            METRICS_NAMESPACE,
        )
        backend = self.exporter_url
        if FAULT_UNLABELLED_METRICS in cfg.faults:
            backend = await self._serve_unlabelled_metrics()
        self.apiserver.register_service_backend(METRICS_NAMESPACE, METRICS_SERVICE, backend)

    # -- fault injection (conformance self-tests) ------------------------------------------------

    def _plugin_backend(self) -> str:
        """``fake:PROFILE``; with FAULT_WRONG_DRIVER_VERSION a copy of the profile claiming another driver."""
        cfg = self.config
        if FAULT_WRONG_DRIVER_VERSION not in cfg.faults:
            return f"fake:{cfg.profile}"
        text = resources.files("driver.devices").joinpath("profiles", f"{cfg.profile}.yaml").read_text()
        path = self.path("fault-profile.yaml")
        path.write_text(
            re.sub(r"^driverVersion:.*$", f'driverVersion: "{FAULT_DRIVER_VERSION}"', text, flags=re.M)
        )
        return f"file:{path}"

    def _publish_incomplete_pool(self) -> None:
        cfg = self.config
        pool = f"{cfg.node_name}-fault-incomplete"
        self.apiserver.create(
            RESOURCE_SLICES,
            {
                "metadata": {"name": f"{pool}-0"},
                "spec": {
                    "driver": cfg.driver_name,
                    "pool": {"name": pool, "generation": 1, "resourceSliceCount": 2},
                    "allNodes": True,
                    "devices": [],
                },
            },
        )

    async def _serve_unlabelled_metrics(self) -> str:
        """A stand-in metrics endpoint: the exporter's series with the identity labels removed."""
        session = aiohttp.ClientSession()
        self._stack.push_async_callback(session.close)
        labels = "|".join(IDENTITY_LABELS)
        pattern = re.compile(rf'\b(?:{labels})="(?:[^"\\]|\\.)*",?')

        async def metrics(_: web.Request) -> web.Response:
            async with session.get(f"{self.exporter_url}/metrics") as upstream:
                text = await upstream.text()
            stripped = pattern.sub("", text).replace(",}", "}").replace("{}", "")
            return web.Response(text=stripped, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        sock = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def process_log(self, name: str) -> str:
        try:
            return self.path("logs", f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _check_processes(self) -> None:
        for name, proc in self._processes.items():
            if proc.returncode is not None:
                raise SandboxError(f"{name} exited with {proc.returncode}:\n{self.process_log(name)[-4000:]}")

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """The plugin is registered, its pool is published, and the exporter answers."""
        assert self.node is not None
        try:
            async with asyncio.timeout(timeout):
                while not self.node.kubelet.instances(self.driver) or not self._pool_published():
                    self._check_processes()
                    await asyncio.sleep(0.1)
                if self.exporter_url:
                    await self._wait_http(f"{self.exporter_url}/healthz")
        except TimeoutError:
            self._check_processes()
            raise SandboxError(
                f"sandbox not ready within {timeout:g}s\n--- plugin log ---\n{self.process_log('plugin')[-4000:]}"
                f"\n--- exporter log ---\n{self.process_log('exporter')[-4000:]}"
            ) from None

    def _pool_published(self) -> bool:
        slices = [
            s
            for s in self.apiserver.objects(RESOURCE_SLICES)
            if s["spec"].get("nodeName") == self.config.node_name and s["spec"]["driver"] == self.driver
        ]
        return bool(slices) and len(slices) == slices[0]["spec"]["pool"]["resourceSliceCount"]

    async def _wait_http(self, url: str) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                self._check_processes()
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)

    # -- using it --------------------------------------------------------------------------------

    async def ensure_namespace(self, name: str) -> None:
        assert self.kube is not None
        with contextlib.suppress(ApiError):
            await self.kube.create(NAMESPACES, {"metadata": {"name": name}})

    async def apply(self, objects: Iterable[Mapping[str, Any]], namespace: str = "default") -> list[JSON]:
        """Create objects (Pods, ResourceClaims, ResourceClaimTemplates, DeviceClasses, Namespaces, Services)."""
        assert self.kube is not None
        created: list[JSON] = []
        for obj in objects:
            rt = KINDS.get(str(obj.get("kind")))
            if rt is None:
                raise SandboxError(f"the sandbox cannot apply kind {obj.get('kind')!r}")
            ns = (obj.get("metadata") or {}).get("namespace") or namespace
            if rt.namespaced:
                await self.ensure_namespace(ns)
            created.append(await self.kube.create(rt, dict(obj), ns if rt.namespaced else None))
        return created

    async def wait_pod(self, namespace: str, name: str, phases: Iterable[str], timeout: float = 30.0) -> JSON:
        """Wait until the pod reaches one of ``phases`` (e.g. Running, Succeeded); returns the pod.

        A pod that ends in a phase not asked for fails the wait at once, with its status.
        """
        wanted = set(phases)

        def reached(store: Any) -> Any:
            pod = self.apiserver.get_object(PODS, name, namespace)
            phase = (pod.get("status") or {}).get("phase") if pod else None
            return pod if phase in wanted or phase in ("Succeeded", "Failed") else None

        try:
            result: JSON = await self.apiserver.wait_for(reached, timeout=timeout)
        except TimeoutError:
            self._check_processes()
            pod = self.apiserver.get_object(PODS, name, namespace)
            raise SandboxError(
                f"pod {namespace}/{name} did not reach {sorted(wanted)}: {pod and pod.get('status')}"
            ) from None
        return result

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        return self.apiserver.pod_logs.get(namespace, pod, container)

    async def scrape(self) -> str:
        """The exporter's /metrics, fetched through the API server's service proxy."""
        assert self.kube is not None
        path = (
            f"/api/v1/namespaces/{METRICS_NAMESPACE}/services/{METRICS_SERVICE}:{METRICS_PORT}/proxy/metrics"
        )
        return await self.kube.request_text("GET", path)


class _LeakyRuntime(SimRuntime):
    """Fault injection (FAULT_LEAKY_RUNTIME): a runtime that gives containers without a claim every GPU."""

    KIND = "fault.accel-dra.dev/leak"

    def __init__(self, cdi_dir: Path, fault_dir: Path, minors: Iterable[int | None]) -> None:
        nodes = [
            {"path": f"/dev/nvidia{m}", "type": "c", "major": 195, "minor": m}
            for m in minors
            if m is not None
        ]
        spec = {
            "cdiVersion": "0.6.0",
            "kind": self.KIND,
            "devices": [{"name": "all", "containerEdits": {"deviceNodes": nodes}}],
        }
        fault_dir.mkdir(parents=True, exist_ok=True)
        (fault_dir / "leak.json").write_text(json.dumps(spec))
        super().__init__([cdi_dir, fault_dir])

    async def run_container(self, spec: ContainerSpec) -> ContainerHandle:
        if not spec.cdi_devices:
            spec = dataclasses.replace(spec, cdi_devices=[f"{self.KIND}=all"])
        return await super().run_container(spec)
