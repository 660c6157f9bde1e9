"""The measurements. Each takes the shared :class:`Cluster` and :class:`Dirs` and returns plain JSON.

The kubelet side of the DRA calls is a minimal ``grpc.aio`` client in the bench process, on one channel kept
open (as the kubelet keeps its connection). What the plugin itself spends is read from its own log line
(``prepare answered ... ms=``, measured inside the gRPC handler around the claim GET, the node lock, the
checkpoint writes and the CDI write); the client-side figures add the gRPC round trip over the unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from benchlib import harness as h
from benchlib.stats import across_runs, distribution, scalar_runs, slope_per_1000
from driver._proto.dra.v1 import api_pb2 as dra
from driver._proto.dra.v1 import api_pb2_grpc as dra_grpc
from driver.kube.client import PODS, RESOURCE_CLAIMS, KubeClient
from driver.sim.podresources import ClaimDevice, ClaimResources, PodResourcesServer, PodResourcesState
from driver.state.api import ClaimRef

JSON = dict[str, Any]

_ANSWERED = {
    "prepare": re.compile(r'event="prepare answered".*\bms=([\d.]+)'),
    "unprepare": re.compile(r'event="unprepare answered".*\bms=([\d.]+)'),
}


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does (``--quick`` shrinks everything)."""

    latency_runs: int
    latency_calls: int  # prepare+unprepare pairs per run, 1 GPU
    latency_calls_8: int  # the same for 1 claim / 8 GPUs
    warmup: int
    churn_claims: int
    start_runs: int
    idle_seconds: float
    fresh_scrapes: int
    scrape_runs: int
    health_settle: float  # seconds watched for further slice writes after a health change
    explain_nodes: int  # nodes (8 GPUs each) in the `accel-dra explain` dump
    explain_runs: int  # runs of each explain command (the best is kept)
    batch_claims: int = 1000  # claims in one prepare call and one unprepare call

    @classmethod
    def full(cls) -> Sizes:
        return cls(5, 400, 200, 30, 10_000, 7, 60.0, 60, 1, 12.0, 5000, 3, 1000)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(2, 40, 20, 5, 300, 2, 4.0, 6, 1, 3.0, 1000, 1, 1000)

    @classmethod
    def smoke(cls) -> Sizes:
        """Every measurement once, tiny: keeps the harness from rotting (tests/integration/test_bench_smoke.py)."""
        return cls(1, 4, 2, 2, 16, 1, 0.5, 2, 1, 0.5, 20, 1, 8)


# -- the kubelet side ---------------------------------------------------------------------------------


class DraClient:
    """NodePrepareResources / NodeUnprepareResources (v1) over the plugin's unix socket, as the kubelet calls them."""

    def __init__(self, socket_path: Path) -> None:
        self.channel = grpc.aio.insecure_channel(f"unix://{socket_path}")
        self.stub = dra_grpc.DRAPluginStub(self.channel)

    async def ready(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), timeout)

    @staticmethod
    def _claims(refs: Sequence[ClaimRef]) -> list[Any]:
        return [dra.Claim(namespace=r.namespace, uid=r.uid, name=r.name) for r in refs]

    async def prepare(self, refs: Sequence[ClaimRef]) -> None:
        response = await self.stub.NodePrepareResources(
            dra.NodePrepareResourcesRequest(claims=self._claims(refs)), timeout=45
        )
        for ref in refs:
            entry = response.claims[ref.uid]
            if entry.error or not entry.devices:
                raise RuntimeError(f"prepare {ref}: {entry.error or 'no devices'}")

    async def unprepare(self, refs: Sequence[ClaimRef]) -> None:
        response = await self.stub.NodeUnprepareResources(
            dra.NodeUnprepareResourcesRequest(claims=self._claims(refs)), timeout=45
        )
        for ref in refs:
            if response.claims[ref.uid].error:
                raise RuntimeError(f"unprepare {ref}: {response.claims[ref.uid].error}")

    async def empty_prepare(self) -> None:
        await self.stub.NodePrepareResources(dra.NodePrepareResourcesRequest(), timeout=45)

    async def empty_unprepare(self) -> None:
        await self.stub.NodeUnprepareResources(dra.NodeUnprepareResourcesRequest(), timeout=45)

    async def close(self) -> None:
        await self.channel.close()


async def start_plugin(
    dirs: h.Dirs, name: str = "plugin", profile: str = h.PROFILE, tree: h.Tree | None = None
) -> tuple[h.Proc, DraClient]:
    proc = await h.start_process(
        name, h.plugin_args(dirs, profile=profile), dirs.root / "logs" / f"{name}.log", tree=tree
    )
    await proc.wait_log(r'event="plugin running"', timeout=60)
    client = DraClient(dirs.plugin / "dra.sock")
    await client.ready()
    return proc, client


def plugin_timings(log_text: str, operation: str) -> list[float]:
    """Handler-side durations (ms) the plugin logged for each answered call, in order."""
    return [float(m.group(1)) for m in _ANSWERED[operation].finditer(log_text)]


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


# -- prepare / unprepare latency ---------------------------------------------------------------------


async def prepare_latency(
    cluster: h.Cluster, dirs: h.Dirs, gpus: int, calls: int, sizes: Sizes, *, trees: Sequence[h.Tree] = ()
) -> JSON:
    """Sequential prepare then unprepare of fresh claims, one plugin process per run, interleaved call by
    call with the floor: an empty NodePrepareResources and NodeUnprepareResources round trip and one claim
    GET with the driver's client. The plugin's CPU is summed over each prepare+unprepare pair, up to the
    claim's status PATCH having reached the API server (work the plugin does for that claim).

    With ``trees`` (the current tree first, then other checkouts of the project), runs alternate between
    the trees; each tree's figures and its ratios to the current tree's land under ``trees``.
    """
    trees = list(trees) or [h.CURRENT_TREE]
    runs: dict[str, list[JSON]] = {t.label: [] for t in trees}
    kube = await KubeClient.connect(str(dirs.kubeconfig))
    try:
        for run in range(sizes.latency_runs):
            for tree in trees if run % 2 == 0 else trees[::-1]:
                runs[tree.label].append(
                    await _latency_run(cluster, dirs, kube, (gpus, calls, run), sizes=sizes, tree=tree)
                )
    finally:
        await kube.close()
    out = _latency_summary(runs[trees[0].label])
    out.update(gpus_per_claim=gpus, calls_per_run=calls, warmup_per_run=sizes.warmup)
    if len(trees) > 1:
        out["trees"] = {}
        for tree in trees:
            summary = _latency_summary(runs[tree.label])
            summary["tree"] = tree.describe()
            out["trees"][tree.label] = summary
    return out


_LATENCY_KEYS = (
    "prepare_client_ms",
    "unprepare_client_ms",
    "prepare_plugin_ms",
    "unprepare_plugin_ms",
    "empty_call_client_ms",
    "empty_unprepare_client_ms",
    "claim_get_ms",
    "floor_ms",
)


def _latency_summary(runs: list[JSON]) -> JSON:
    out: JSON = {key: across_runs([r[key] for r in runs]) for key in _LATENCY_KEYS}
    out["plugin_rss_mb"] = scalar_runs([r["plugin_rss_mb"] for r in runs], 1)
    out["plugin_cpu_ms_per_pair"] = scalar_runs([r["plugin_cpu_ms_per_pair"] for r in runs])
    out["ratios"] = {key: scalar_runs([r["ratios"][key] for r in runs]) for key in runs[0]["ratios"]}
    out["per_run"] = runs
    return out


async def _latency_run(
    cluster: h.Cluster,
    dirs: h.Dirs,
    kube: KubeClient,
    shape: tuple[int, int, int],
    *,
    sizes: Sizes,
    tree: h.Tree,
) -> JSON:
    """One plugin process of ``tree``: ``shape`` is (GPUs per claim, measured calls, run number)."""
    gpus, calls, run = shape
    dirs.fresh_node_state()
    prefix = f"lat{gpus}-{run}{tree.suffix}"
    refs = cluster.create_claims(prefix, sizes.warmup + calls, h.device_names()[:gpus])
    proc, client = await start_plugin(dirs, f"plugin-{prefix}", tree=tree)
    samples: dict[str, list[float]] = {k: [] for k in ("prepare", "unprepare", "empty", "empty_un", "get")}
    cpu_ns = 0
    try:
        for ref in refs[: sizes.warmup]:
            await _pair(cluster, client, ref)
        await proc.start_profiler()
        for ref in refs[sizes.warmup :]:
            cpu_before = h.cpu_ns(proc.pid)
            prepared, unprepared = await _pair(cluster, client, ref)
            cpu_ns += h.cpu_ns(proc.pid) - cpu_before
            samples["prepare"].append(prepared)
            samples["unprepare"].append(unprepared)
            started = time.perf_counter()
            await client.empty_prepare()
            samples["empty"].append(_ms(started))
            started = time.perf_counter()
            await client.empty_unprepare()
            samples["empty_un"].append(_ms(started))
            started = time.perf_counter()
            await kube.get(RESOURCE_CLAIMS, ref.name, ref.namespace)
            samples["get"].append(_ms(started))
        rss = h.rss_mb(proc.pid)
    finally:
        await client.close()
        await proc.stop()
    text = proc.log_text()
    result: JSON = {
        "tree": tree.label,
        "prepare_client_ms": distribution(samples["prepare"]),
        "unprepare_client_ms": distribution(samples["unprepare"]),
        # Logged in call order: warm-up, then measured calls and empty calls alternating.
        "prepare_plugin_ms": distribution(_measured(plugin_timings(text, "prepare")[sizes.warmup :])),
        "unprepare_plugin_ms": distribution(_measured(plugin_timings(text, "unprepare")[sizes.warmup :])),
        "empty_call_client_ms": distribution(samples["empty"]),
        "empty_unprepare_client_ms": distribution(samples["empty_un"]),
        "claim_get_ms": distribution(samples["get"]),
        # The floor of one prepare, sample by sample: the empty round trip next to it plus the claim GET.
        "floor_ms": distribution(e + g for e, g in zip(samples["empty"], samples["get"], strict=True)),
        "plugin_cpu_ms_per_pair": round(cpu_ns / 1e6 / calls, 3),
        "plugin_rss_mb": round(rss, 1),
    }
    floor_p50 = result["empty_call_client_ms"]["p50"] + result["claim_get_ms"]["p50"]
    result["ratios"] = {
        "prepare_p50_over_floor": round(result["prepare_client_ms"]["p50"] / floor_p50, 3),
        "prepare_p99_over_floor_p99": round(
            result["prepare_client_ms"]["p99"] / result["floor_ms"]["p99"], 3
        ),
        "unprepare_p50_over_empty_unprepare": round(
            result["unprepare_client_ms"]["p50"] / result["empty_unprepare_client_ms"]["p50"], 3
        ),
        "unprepare_p50_over_empty_prepare": round(
            result["unprepare_client_ms"]["p50"] / result["empty_call_client_ms"]["p50"], 3
        ),
    }
    return result


def _measured(timings: list[float]) -> list[float]:
    """The handler timings of the measured calls: every second logged one (the others are empty calls)."""
    return timings[0::2]


async def _pair(cluster: h.Cluster, client: DraClient, ref: ClaimRef) -> tuple[float, float]:
    """Prepare then unprepare ``ref`` (kubelet-side ms of each). Between the two, wait until the claim's
    device status PATCH, written once the prepare's answer is out, has reached the API server: a kubelet
    unprepares a claim once its pods are done, not within the millisecond after preparing it, so the
    unprepare -- like the empty one it is compared with -- is timed without that PATCH in flight in the
    plugin and in the API server (which shares this process with the client)."""
    started = time.perf_counter()
    await client.prepare([ref])
    prepared = _ms(started)
    await cluster.wait_for(functools.partial(_status_written, ref=ref), timeout=30)
    started = time.perf_counter()
    await client.unprepare([ref])
    unprepared = _ms(started)
    return prepared, unprepared


def _status_written(store: Any, ref: ClaimRef) -> bool:
    claim = store.get(RESOURCE_CLAIMS, ref.namespace, ref.name)
    return bool(claim and (claim.get("status") or {}).get("devices"))


async def claim_get_latency(cluster: h.Cluster, dirs: h.Dirs, count: int = 200) -> JSON:
    """One GET of a ResourceClaim from the sim API server with the driver's own client (part of prepare)."""
    (ref,) = cluster.create_claims("get", 1, h.device_names()[:1])
    kube = await KubeClient.connect(str(dirs.kubeconfig))
    try:
        for _ in range(20):
            await kube.get(RESOURCE_CLAIMS, ref.name, ref.namespace)
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            await kube.get(RESOURCE_CLAIMS, ref.name, ref.namespace)
            samples.append(_ms(started))
    finally:
        await kube.close()
    return distribution(samples)


# -- churn --------------------------------------------------------------------------------------------


async def churn(cluster: h.Cluster, dirs: h.Dirs, claims: int) -> JSON:
    """Prepare+unprepare ``claims`` distinct claims back to back; RSS sampled along the way."""
    devices = h.device_names()
    dirs.fresh_node_state()
    refs: list[ClaimRef] = []
    for i, device in enumerate(devices):  # spread the claims over the eight GPUs
        count = claims // len(devices) + (1 if i < claims % len(devices) else 0)
        refs += cluster.create_claims(f"churn-{i}", count, [device])
    proc, client = await start_plugin(dirs, "plugin-churn")
    step = max(1, claims // 40)
    points: list[tuple[int, float]] = []
    try:
        await proc.start_profiler()
        cpu_before = h.cpu_seconds(proc.pid)
        started = time.perf_counter()
        for i, ref in enumerate(refs, 1):
            await client.prepare([ref])
            await client.unprepare([ref])
            if i % step == 0:
                points.append((i, h.rss_mb(proc.pid)))
        elapsed = time.perf_counter() - started
        cpu = h.cpu_seconds(proc.pid) - cpu_before
        peak = h.peak_rss_mb(proc.pid)
    finally:
        await client.close()
        await proc.stop()
    # Growth is judged after the first tenth (imports, caches and the allocator settle first).
    settled = [(i, rss) for i, rss in points if i >= claims // 10]
    xs, ys = [float(i) for i, _ in settled], [rss for _, rss in settled]
    growth = ys[-1] - ys[0] if ys else 0.0
    return {
        "claims": claims,
        "seconds": round(elapsed, 2),
        "claims_per_s": round(claims / elapsed, 1),
        "plugin_cpu_ms_per_claim": round(cpu * 1000 / claims, 3),
        "rss_mb_first": round(points[0][1], 1),
        "rss_mb_last": round(points[-1][1], 1),
        "rss_mb_peak": round(peak, 1),
        "rss_growth_mb_after_first_tenth": round(growth, 2),
        "rss_slope_mb_per_1000_claims": round(slope_per_1000(xs, ys), 3),
        "rss_series": [[i, round(rss, 1)] for i, rss in points],
    }


# -- many claims in one call ------------------------------------------------------------------------


KUBELET_DEADLINE_S = 45.0


async def batch(cluster: h.Cluster, dirs: h.Dirs, claims: int) -> JSON:
    """One NodePrepareResources with ``claims`` claims, then one NodeUnprepareResources with all of them
    (the kubelet's deadline for each is 45 s). Admin-access claims, so all fit on the eight GPUs."""
    devices = h.device_names()
    dirs.fresh_node_state()
    refs = cluster.create_claims("batch", claims, devices[:1], admin=True)
    proc, client = await start_plugin(dirs, "plugin-batch")
    try:
        started = time.perf_counter()
        await client.prepare(refs)
        prepare_s = time.perf_counter() - started
        started = time.perf_counter()
        await client.unprepare(refs)
        unprepare_s = time.perf_counter() - started
    finally:
        await client.close()
        await proc.stop()
    return {
        "claims": claims,
        "prepare_s": round(prepare_s, 4),
        "unprepare_s": round(unprepare_s, 4),
        "prepare_share_of_deadline": round(prepare_s / KUBELET_DEADLINE_S, 3),
        "unprepare_share_of_deadline": round(unprepare_s / KUBELET_DEADLINE_S, 3),
    }


# -- start -> first slice -----------------------------------------------------------------------------


async def start_to_slice(cluster: h.Cluster, dirs: h.Dirs, runs: int) -> JSON:
    """From exec of ``accel-dra plugin`` to its first ResourceSlice (all 8 GPUs) being stored."""
    wanted = len(h.device_names())
    totals: list[float] = []
    first_logs: list[float] = []
    for run in range(runs):
        cluster.delete_slices()
        dirs.fresh_node_state()
        proc = await h.start_process(
            "plugin-start", h.plugin_args(dirs), dirs.root / "logs" / f"plugin-start-{run}.log"
        )
        try:

            def published(store: Any, started: float = proc.started) -> float | None:
                key = "resourceslices.resource.k8s.io"
                for obj in store.list(key, None):
                    spec = obj.get("spec", {})
                    if spec.get("nodeName") == h.NODE and len(spec.get("devices", [])) == wanted:
                        return time.monotonic() - started
                return None

            totals.append(await cluster.wait_for(published, timeout=60))
            first_logs.append(await _first_log_seconds(proc))
            await proc.wait_log(r'event="plugin running"', timeout=60)
        finally:
            await proc.stop()
    imports = await _import_seconds("import driver.plugin.app")
    return {
        "gpus": wanted,
        "seconds": scalar_runs(totals),
        "first_log_line_s": scalar_runs(first_logs),
        "import_plugin_modules_s": imports,
    }


async def _first_log_seconds(proc: h.Proc) -> float:
    """Seconds from exec to the first log line (interpreter start plus imports), from the line's timestamp."""
    line = await proc.wait_log(r"^ts=", timeout=30)
    stamp = line.split()[0].removeprefix("ts=").rstrip("Z")
    wall = time.mktime(time.strptime(stamp.split(".")[0], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    wall += int(stamp.split(".")[1]) / 1000
    exec_wall = time.time() - (time.monotonic() - proc.started)
    return round(wall - exec_wall, 3)


async def _import_seconds(statement: str, repeats: int = 3) -> JSON:
    """Wall time of a fresh interpreter running ``statement`` (byte code already compiled)."""
    import sys

    values = []
    for _ in range(repeats):
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", statement)
        await proc.wait()
        values.append(time.perf_counter() - started)
    return scalar_runs(values)


# -- steady state: exporter, RSS, API writes --------------------------------------------------------


@dataclass
class Workload:
    """Pods on the MIG node: two per whole GPU (sharing it) and one per MIG device, each with a live process
    the exporter can trace to its container."""

    state: PodResourcesState
    server: PodResourcesServer
    sleepers: list[asyncio.subprocess.Process]

    @property
    def pods(self) -> int:
        return len(self.sleepers)

    async def stop(self) -> None:
        for proc in self.sleepers:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        await self.server.stop()


async def start_workload(cluster: h.Cluster, dirs: h.Dirs) -> Workload:
    from driver.devices.fake import load_named_profile

    devices = load_named_profile(h.STEADY_PROFILE, node_name=h.NODE).inventory.devices
    state = PodResourcesState()
    server = PodResourcesServer(state, str(dirs.pod_resources))
    await server.start()
    sleepers: list[asyncio.subprocess.Process] = []
    holders = [(d, copy) for d in devices for copy in range(1 if d.mig else 2)]
    for i, (device, _) in enumerate(holders):
        pod, pod_uid, container_id = f"train-{i}", str(uuid.uuid4()), secrets.token_hex(32)
        sleeper = await asyncio.create_subprocess_exec("sleep", "3600")
        sleepers.append(sleeper)
        cluster.call(functools.partial(_running_pod, name=pod, pod_uid=pod_uid, container_id=container_id))
        cgroup = dirs.proc / str(sleeper.pid) / "cgroup"
        cgroup.parent.mkdir(parents=True, exist_ok=True)
        cgroup.write_text(
            "0::/kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-pod{pod_uid.replace('-', '_')}.slice/cri-containerd-{container_id}.scope\n"
        )
        procs = dirs.fake_state / "gpus" / device.uuid / "procs"
        procs.mkdir(parents=True, exist_ok=True)
        memory = (5 if device.mig else 20) * 2**30
        (procs / f"{sleeper.pid}.json").write_text(
            json.dumps({"pid": sleeper.pid, "utilization": 0.4, "memory_bytes": memory})
        )
        claim = ClaimResources(
            f"{pod}-gpu",
            h.NAMESPACE,
            (ClaimDevice(h.DRIVER, h.NODE, device.name, (f"k8s.{h.DRIVER}/gpu={pod_uid}-{device.name}",)),),
        )
        state.set_container(h.NAMESPACE, pod, "main", claims=[claim])
    return Workload(state, server, sleepers)


def _running_pod(server: Any, name: str, pod_uid: str, container_id: str) -> None:
    body = {
        "metadata": {"name": name, "namespace": h.NAMESPACE, "uid": pod_uid},
        "spec": {"nodeName": h.NODE, "containers": [{"name": "main", "image": "bench"}]},
    }
    pod = server.create(PODS, body, h.NAMESPACE)
    pod["status"] = {
        "phase": "Running",
        "containerStatuses": [{"name": "main", "containerID": f"containerd://{container_id}", "ready": True}],
    }
    spec = server.registry.spec_for("", "v1", "pods")
    server.registry.update(spec, h.NAMESPACE, name, pod, subresource="status")


async def _scrape(session: aiohttp.ClientSession, url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    async with session.get(url) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
    return _ms(started), body


_SAMPLES_RE = re.compile(rb"^accel_dra_exporter_samples_total (\S+)$", re.MULTILINE)
_POD_RE = re.compile(rb'pod="(train-\d+)"')


async def steady_state(cluster: h.Cluster, dirs: h.Dirs, sizes: Sizes) -> JSON:
    """Plugin and exporter side by side on an 8-GPU node, two GPUs in MIG mode (11 MIG devices), 23 attributed
    pods: idle CPU, API writes, ``/metrics`` latency and both processes' RSS."""
    cluster.delete_slices()
    dirs.fresh_node_state()
    workload = await start_workload(cluster, dirs)
    plugin, client = await start_plugin(dirs, "plugin-steady", h.STEADY_PROFILE)
    exporter = await h.start_process(
        "exporter", h.exporter_args(dirs, 1.0, profile=h.STEADY_PROFILE), dirs.root / "logs" / "exporter.log"
    )
    try:
        line = await exporter.wait_log(r'event="exporter running"', timeout=60)
        port = int(re.search(r"\bport=(\d+)", line).group(1))  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        await cluster.wait_for(lambda store: len(h_slices(store)) > 0, timeout=30)
        async with aiohttp.ClientSession() as session:
            await _wait_attributed(session, f"{url}/metrics", workload.pods)
            # Idle: nothing changes; count API writes and CPU of both processes.
            await asyncio.sleep(2.0)  # let start-up writes (slice publish echoes) settle
            mark = cluster.write_marks()
            cpu_p, cpu_e = h.cpu_seconds(plugin.pid), h.cpu_seconds(exporter.pid)
            idle_started = time.perf_counter()
            await asyncio.sleep(sizes.idle_seconds)
            idle = time.perf_counter() - idle_started
            cpu_p, cpu_e = h.cpu_seconds(plugin.pid) - cpu_p, h.cpu_seconds(exporter.pid) - cpu_e
            writes = cluster.writes_since(mark)
            requests = cluster.requests_since(mark)
            await exporter.start_profiler()
            scrape = await _scrape_series(session, f"{url}/metrics", sizes.fresh_scrapes)
            healthz = [(await _scrape(session, f"{url}/healthz"))[0] for _ in range(50)]
            body = (await _scrape(session, f"{url}/metrics"))[1]
        rss = {"plugin": h.rss_mb(plugin.pid), "exporter": h.rss_mb(exporter.pid)}
        peak = {"plugin": h.peak_rss_mb(plugin.pid), "exporter": h.peak_rss_mb(exporter.pid)}
    finally:
        await client.close()
        for proc in (exporter, plugin):
            await proc.stop()
        await workload.stop()
    return {
        "idle_seconds": round(idle, 1),
        "api_writes_idle": len(writes),
        "api_write_requests": [f"{m} {p} {s}" for m, p, s in writes],
        "api_requests_idle": len(requests),
        "exporter_cpu_percent_of_core_idle": round(100 * cpu_e / idle, 2),
        "plugin_cpu_percent_of_core_idle": round(100 * cpu_p / idle, 2),
        "scrape_fresh_ms": distribution(scrape["fresh"]),
        "scrape_cached_ms": distribution(scrape["cached"]),
        "healthz_ms": distribution(healthz),
        "metrics_body_bytes": len(body),
        "metrics_series": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
        "attributed_pods": len(set(_POD_RE.findall(body))),
        "profile": h.STEADY_PROFILE,
        "rss_mb": {k: round(v, 1) for k, v in rss.items()},
        "peak_rss_mb": {k: round(v, 1) for k, v in peak.items()},
    }


def h_slices(store: Any) -> list[JSON]:
    return [
        o for o in store.list("resourceslices.resource.k8s.io", None) if o["spec"].get("nodeName") == h.NODE
    ]


async def _wait_attributed(
    session: aiohttp.ClientSession, url: str, pods: int, timeout: float = 30.0
) -> None:
    """Until a scrape shows the pods (PodResources, pods from the API and cgroups all joined)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, body = await _scrape(session, url)
        if len(set(_POD_RE.findall(body))) >= pods:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{url}: the {pods} pods never showed up in the metrics")


async def _scrape_series(
    session: aiohttp.ClientSession, url: str, fresh_wanted: int
) -> dict[str, list[float]]:
    """Scrape about 5 times per sampling interval; a scrape that sees a new sample count rendered afresh."""
    fresh: list[float] = []
    cached: list[float] = []
    last = _sample_count((await _scrape(session, url))[1])
    while len(fresh) < fresh_wanted:
        await asyncio.sleep(0.19)
        ms, body = await _scrape(session, url)
        seq = _sample_count(body)
        (fresh if seq != last else cached).append(ms)
        last = seq
    return {"fresh": fresh, "cached": cached or fresh}


def _sample_count(body: bytes) -> bytes:
    match = _SAMPLES_RE.search(body)
    if match is None:
        raise RuntimeError("/metrics has no accel_dra_exporter_samples_total")
    return match.group(1)


# -- device health ------------------------------------------------------------------------------------


def health_change_supported() -> bool:
    """Whether this tree can inject a device health change (``accel-dra sim inject``)."""
    from driver import cli

    _, commands = cli.GROUPS.get("sim", ("", ()))
    return any(c.name == "inject" for c in commands)
