"""accel-dra on a real test cluster (tests/support/realk8s.py), installed the way the Helm chart installs it.

Every object of the chart's render that the cluster serves is applied (RBAC, the ValidatingAdmissionPolicy,
DeviceClasses, the ServiceAccount, the DaemonSet -- whose pods never land: no hollow node carries the GPU
labels of its node affinity). The plugin then runs on each hollow node as a local process with the
arguments of the chart's DaemonSet rendered for that node (its kubelet directory, a fake GPU profile),
authenticated as the chart's ServiceAccount with a token bound to the node -- so it holds exactly the
permissions the chart grants, and the admission policy sees the node name a DaemonSet pod's token carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from driver.kube.client import NAMESPACES, NODES, ApiError, KubeClient, ResourceType
from driver.kube.discovery import NotServedError, resource_type
from tests.support import chart
from tests.support.processes import accel_dra
from tests.support.realk8s import Cluster, Component, run_async

DRIVER = "gpu.accel-dra.dev"
NAMESPACE = chart.NAMESPACE
SERVICE_ACCOUNT = f"system:serviceaccount:{chart.NAMESPACE}:{chart.RELEASE}"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"

#: The fake GPU profile each hollow node's plugin serves: together they satisfy every example. node-2's
#: GPU 0 has hand-made MIG instances (static), its GPUs 1 (A100) and 2 (H100) are in dynamic MIG mode.
PROFILES: Mapping[str, str] = {"node-1": "dgx-h100", "node-2": "mig-dynamic"}
MIG_GPUS: Mapping[str, Mapping[str, str]] = {"node-2": {"0000:0f:00.0": "dynamic", "0000:47:00.0": "dynamic"}}


def mig_mode(node: str) -> str:
    """The ``--mig-mode`` the chart gives ``node``'s plugin (as ``accel-dra discover`` takes it)."""
    return ",".join(["static", *(f"{gpu}={mode}" for gpu, mode in sorted(MIG_GPUS.get(node, {}).items()))])


JSON = dict[str, Any]
SERVICE_ACCOUNTS = ResourceType("", "v1", "serviceaccounts", "ServiceAccount", namespaced=True)


def node_values(cluster: Cluster, node: str, profiles: Mapping[str, str] = PROFILES) -> JSON:
    """Chart values that point the DaemonSet at a hollow node's directories and fake GPUs."""
    hollow = cluster.nodes[node]
    return {
        "backend": f"fake:{profiles[node]}",
        "kubeletDir": str(hollow.root),
        "cdiDir": str(hollow.cdi_dir),
        "logFormat": "text",
        # Two plugins share the machine; the metrics have their own tests.
        "plugin": {"metricsPort": 0, "mig": {"mode": "static", "gpus": dict(MIG_GPUS.get(node, {}))}},
    }


def container_args(
    cluster: Cluster,
    node: str,
    container: str,
    values: Mapping[str, Any] | None = None,
    profiles: Mapping[str, str] = PROFILES,
) -> list[str]:
    """A container's arguments from the chart's DaemonSet rendered for ``node`` (with ``values`` on top)."""
    rendered = chart.render(_merged(node_values(cluster, node, profiles), values or {}))
    daemonset = chart.find(rendered, "DaemonSet")
    (found,) = [c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == container]
    return [str(a) for a in found["args"]]


def _merged(base: Mapping[str, Any], top: Mapping[str, Any]) -> JSON:
    out = dict(base)
    for key, value in top.items():
        out[key] = (
            _merged(out[key], value)
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
            else value
        )
    return out


def exporter_args(cluster: Cluster, node: str, listen: str) -> list[str]:
    """The exporter container's arguments for ``node``, listening on ``listen`` and reading this machine's
    /proc (the container mounts the host's at /host/proc)."""
    overrides = {"--listen": listen, "--proc-root": "/proc"}
    out = []
    for arg in container_args(cluster, node, "exporter"):
        flag = arg.split("=", 1)[0]
        out.append(f"{flag}={overrides[flag]}" if flag in overrides else arg)
    return out


async def apply(kube: KubeClient, objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Create every object whose kind the server serves; returns the kinds it does not serve."""
    skipped = []
    for obj in objects:
        try:
            rt = await resource_type(kube, obj["apiVersion"], obj["kind"])
        except NotServedError:
            skipped.append(f"{obj['apiVersion']}/{obj['kind']}")
            continue
        await kube.create(rt, obj, obj["metadata"].get("namespace") if rt.namespaced else None)
    return skipped


async def node_token(kube: KubeClient, node: str, seconds: int = 24 * 3600) -> str:
    """A token of the chart's ServiceAccount bound to ``node`` (``kubectl create token --bound-object-kind
    Node``): it carries the node's name, as a DaemonSet pod's token does."""
    uid = (await kube.get(NODES, node))["metadata"]["uid"]
    answer = await kube.request(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{chart.RELEASE}/token",
        body={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": seconds,
                "boundObjectRef": {"kind": "Node", "apiVersion": "v1", "name": node, "uid": uid},
            },
        },
    )
    return str(answer["status"]["token"])


@dataclass
class Driver:
    """The chart applied to a cluster and one plugin process per hollow node."""

    cluster: Cluster
    skipped_kinds: list[str] = field(default_factory=list)
    kubeconfigs: dict[str, Path] = field(default_factory=dict)  # node -> the plugin's (token) kubeconfig
    plugins: dict[str, Component] = field(default_factory=dict)
    #: Chart values on top of the tier's (the plugin's flags), and each node's fake GPU profile.
    values: JSON = field(default_factory=dict)
    profiles: Mapping[str, str] = field(default_factory=lambda: dict(PROFILES))

    def install(self) -> None:
        async def install() -> None:
            async with await KubeClient.connect(str(self.cluster.kubeconfig)) as kube:
                await kube.create(NAMESPACES, {"metadata": {"name": NAMESPACE}})
                self.skipped_kinds = await apply(kube, chart.render())
                for node in self.cluster.nodes:
                    token = await node_token(kube, node)
                    path = self.cluster.dir / f"plugin-{node}.kubeconfig"
                    self.kubeconfigs[node] = self.cluster.write_kubeconfig(
                        path, f"plugin-{node}", token=token
                    )

        run_async(install())

    def plugin_dir(self, node: str) -> Path:
        return self.cluster.nodes[node].plugins_dir / DRIVER

    def cdi_specs(self, node: str) -> list[Path]:
        return sorted(self.cluster.nodes[node].cdi_dir.glob("*.json"))

    def start_plugin(self, node: str) -> int:
        """Start (or restart) the node's plugin; returns the log offset where this process's output starts."""
        component = self.plugins.get(node)
        if component is None:
            component = Component(
                f"plugin-{node}",
                accel_dra(*container_args(self.cluster, node, "plugin", self.values, self.profiles)),
                self.cluster.dir / f"plugin-{node}.log",
                env={"NODE_NAME": node, "KUBECONFIG": str(self.kubeconfigs[node])},
            )
            self.plugins[node] = component
        since = component.log_size()
        component.start()
        return since

    def wait_registered(self, node: str, since: int = 0) -> str:
        """The plugin's log line saying the kubelet accepted its registration."""
        return self.plugins[node].wait_log(r"registered with kubelet", since=since)

    def stop(self) -> None:
        for component in self.plugins.values():
            component.stop(grace=10)


def plugin_requests(
    events: Sequence[Mapping[str, Any]], node: str, since: str = "", until: str = ""
) -> list[Mapping[str, Any]]:
    """Audit events of requests the plugin of ``node`` sent (its node-bound token) between two RFC 3339
    timestamps (requests received in ``[since, until)``)."""
    out = []
    for event in events:
        user = event.get("user") or {}
        if user.get("username") != SERVICE_ACCOUNT:
            continue
        if (user.get("extra") or {}).get(NODE_NAME_EXTRA) != [node]:
            continue
        received = str(event.get("requestReceivedTimestamp", ""))
        if (since and received < since) or (until and received >= until):
            continue
        out.append(event)
    return out


def audit_time(event: Mapping[str, Any]) -> datetime.datetime:
    """When the API server received the request of an audit event."""
    return datetime.datetime.fromisoformat(str(event["requestReceivedTimestamp"]).replace("Z", "+00:00"))


def describe_requests(events: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(
        f"{e.get('requestReceivedTimestamp')} {e.get('verb')} {e.get('requestURI')} -> "
        f"{(e.get('responseStatus') or {}).get('code')}"
        for e in events
    )


# -- waiting on the API server -------------------------------------------------------------------------


async def wait_for(
    kube: KubeClient,
    rt: ResourceType,
    name: str,
    namespace: str | None,
    predicate: Callable[[JSON | None], bool],
    *,
    what: str,
    timeout: float = 120.0,
) -> JSON | None:
    """The object (None: it does not exist) once ``predicate`` holds for it, following a watch of it."""
    selector = f"metadata.name={name}"
    current: JSON | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                listed = await kube.list(rt, namespace, field_selector=selector)
                items = listed.get("items") or []
                current = items[0] if items else None
                if predicate(current):
                    return current
                version = listed["metadata"]["resourceVersion"]
                with contextlib.suppress(ApiError):  # 410 Gone and the like: list again
                    async for event in kube.watch(
                        rt, namespace, field_selector=selector, resource_version=version, timeout_seconds=60
                    ):
                        if event.type == "BOOKMARK":
                            continue
                        current = None if event.type == "DELETED" else event.object
                        if predicate(current):
                            return current
    except TimeoutError:
        state = json.dumps((current or {}).get("status"), indent=1)[:2000] if current else "absent"
        raise AssertionError(
            f"timed out after {timeout:.0f} s waiting for {what}; last seen: {state}"
        ) from None


def condition(obj: JSON | None, kind: str) -> JSON | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


def scheduling_decided(pod: JSON | None) -> bool:
    """The scheduler placed the pod, or said it cannot (``PodScheduled=False``, reason Unschedulable)."""
    scheduled = condition(pod, "PodScheduled")
    return bool(
        pod
        and (
            (pod.get("spec") or {}).get("nodeName")
            or (scheduled and scheduled.get("reason") == "Unschedulable")
        )
    )


def running(pod: JSON | None) -> bool:
    return bool(pod and (pod.get("status") or {}).get("phase") == "Running")


async def apply_manifest(kube: KubeClient, objects: Sequence[Mapping[str, Any]]) -> None:
    """Apply a manifest like ``kubectl apply`` would: namespaces first, and pods only once their namespace's
    default ServiceAccount exists (the ServiceAccount admission plugin refuses them before)."""
    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    await apply(kube, namespaces)
    for ns in namespaces:
        name = ns["metadata"]["name"]
        await wait_for(kube, SERVICE_ACCOUNTS, "default", name, bool, what=f"ServiceAccount {name}/default")
    await apply(kube, [o for o in objects if o["kind"] != "Namespace"])


async def delete_namespace(kube: KubeClient, name: str, timeout: float = 120.0) -> None:
    """Delete a namespace and wait until it is gone (its pods unprepared and removed by the kubelet)."""
    with contextlib.suppress(ApiError):
        await kube.delete(NAMESPACES, name)
    await wait_for(
        kube, NAMESPACES, name, None, lambda o: o is None, what=f"namespace {name} gone", timeout=timeout
    )


@dataclass(frozen=True)
class Answer:
    status: int
    body: JSON
    warnings: list[str]


async def send(
    kube: KubeClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    params: Sequence[tuple[str, str]] = (),
    content_type: str = "application/json",
) -> Answer:
    """One request, with the status, the decoded body and the ``Warning`` headers the server sent (which
    :class:`KubeClient` does not surface)."""
    headers = {
        "Accept": "application/json",
        "Content-Type": content_type,
        **(await kube.connection.auth()),
    }
    connector = aiohttp.TCPConnector(ssl=kube.connection.ssl)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(
            method,
            kube.host + path,
            params=list(params),
            headers=headers,
            data=json.dumps(body, separators=(",", ":")) if body else None,
        ) as response,
    ):
        raw = await response.read()
        return Answer(response.status, json.loads(raw) if raw else {}, response.headers.getall("Warning", []))


async def subject_access(
    kube: KubeClient, user: str, groups: Sequence[str], attributes: Mapping[str, str]
) -> tuple[bool, str]:
    """Whether ``user`` may do what ``attributes`` (a SubjectAccessReview's resourceAttributes) say, and why."""
    review = await kube.request(
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        body={
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": list(groups), "resourceAttributes": dict(attributes)},
        },
    )
    status = review.get("status") or {}
    return bool(status.get("allowed")), str(status.get("reason") or status.get("evaluationError") or "")


#: The groups a ServiceAccount token authenticates with.
SERVICE_ACCOUNT_GROUPS = (
    "system:serviceaccounts",
    f"system:serviceaccounts:{NAMESPACE}",
    "system:authenticated",
)


# -- accel-dra explain ---------------------------------------------------------------------------------


def explain(cluster: Cluster, claims: Path) -> JSON:
    """``accel-dra explain CLAIMS --kubeconfig ... -o json``, as a user runs it."""
    result = subprocess.run(
        [*accel_dra("explain", str(claims), "--kubeconfig", str(cluster.kubeconfig), "-o", "json")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode in (0, 1), f"explain failed ({result.returncode}): {result.stderr}"
    report: JSON = json.loads(result.stdout)
    assert result.returncode == (0 if report["allocatable"] else 1)
    return report


async def expected_nodes(request: Any, kube: KubeClient, report: JSON) -> set[str]:
    r"""The nodes the scheduler may use for what explain ``report``\ s on: those explain finds allocatable
    that are in service. When only a node kept out of service (node-2 during its idle window) would do,
    it is brought into service first (the ``node2_in_service`` fixture of tests/realk8s)."""
    schedulable = await schedulable_nodes(kube)
    if report["allocatable"] and not set(report["allocatableOn"]) & schedulable:
        request.getfixturevalue("node2_in_service")
        schedulable = await schedulable_nodes(kube)
    return set(report["allocatableOn"]) & schedulable


async def schedulable_nodes(kube: KubeClient) -> set[str]:
    return {
        n["metadata"]["name"] for n in (await kube.list(NODES))["items"] if not n["spec"].get("unschedulable")
    }


def explained_devices(report: JSON, node: str, claim: str) -> dict[tuple[str, str], JSON]:
    """(request, device id) -> explain's verdict for ``claim`` on ``node``."""
    (node_report,) = [n for n in report["nodes"] if n["node"] == node]
    (claim_report,) = [c for c in node_report["claims"] if c["claim"] == claim]
    return {(r["request"], d["device"]): d for r in claim_report["requests"] for d in r["devices"]}


# -- workloads -------------------------------------------------------------------------------------------


def claim_and_pod(namespace: str, name: str, devices: Mapping[str, Any]) -> tuple[JSON, JSON]:
    """A ResourceClaim with ``spec.devices`` and a pod (one container) that uses it, both named ``name``."""
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"devices": dict(devices)},
    }
    container = {
        "name": "ctr",
        "image": "registry.k8s.io/pause:3.10",
        "resources": {"claims": [{"name": "c"}]},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"resourceClaims": [{"name": "c", "resourceClaimName": name}], "containers": [container]},
    }
    return claim, pod


async def delete_and_wait(kube: KubeClient, rt: ResourceType, name: str, namespace: str | None) -> None:
    with contextlib.suppress(ApiError):  # already gone (a garbage collector was first)
        await kube.delete(rt, name, namespace)
    await wait_for(kube, rt, name, namespace, lambda o: o is None, what=f"{rt.kind} {name} gone")


def exporter_on(driver: Driver, node: str) -> tuple[Component, str]:
    """The exporter of ``node`` as the chart runs it, with the plugin's credentials, on a free port of the
    cluster's address (not started yet), and the URL of its /metrics."""
    cluster = driver.cluster
    with socket.socket() as probe:
        probe.bind((cluster.ip, 0))
        listen = f"{cluster.ip}:{probe.getsockname()[1]}"
    component = Component(
        f"exporter-{node}",
        accel_dra(*exporter_args(cluster, node, listen)),
        cluster.dir / f"exporter-{node}.log",
        env={"NODE_NAME": node, "KUBECONFIG": str(driver.kubeconfigs[node])},
    )
    return component, f"http://{listen}/metrics"


async def scrape_until(
    url: str, exporter: Component, found: Callable[[list[Sample]], bool], what: str, timeout: float = 60
) -> list[Sample]:
    """The exporter's samples, polled until ``found`` says they show what the test waits for."""
    text = ""
    async with aiohttp.ClientSession() as http:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while exporter.running:
                    try:
                        async with http.get(url) as response:
                            text = await response.text()
                    except aiohttp.ClientConnectionError:
                        text = ""  # not listening yet
                    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
                    if samples and found(samples):
                        return samples
                    await asyncio.sleep(0.2)
    raise AssertionError(f"exporter: no {what}; log:\n{exporter.tail()}\nmetrics:\n{text[-3000:]}")
