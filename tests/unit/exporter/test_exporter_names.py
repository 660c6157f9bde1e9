"""The metric spec against what is rendered: names, types, units, help, labels, promtool, the docs and
the AI-conformance test's auto-detection.

The snapshot comes from the real collector over fake GPUs (a DGX H100 with two GPUs in MIG mode) with
simulated load, a kubelet answer with a shared GPU, an exclusive GPU and a device-plugin GPU, traced processes
(one outside Kubernetes), a second shared GPU with an untraceable process, a MIG device held through a claim,
one GPU with a failed read and an injected XID, so every family of the spec has samples.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families as parse_text

from driver.devices.fake import FakeBackend, load_named_profile
from driver.devices.fake_events import inject_xid
from driver.devices.model import Gpu, mig_device_name
from driver.devices.telemetry import GpuTelemetry
from driver.exporter import names as n
from driver.exporter.attribution import ContainerKey
from driver.exporter.collector import Collector, GpuSnapshot, Settings, Snapshot
from driver.exporter.podresources import ClaimDevice, ContainerResources, DeviceResolver
from driver.exporter.render import Renderer
from driver.exporter.xids import XidCounter
from tests.support import paths

parse_openmetrics: Callable[[str], Iterable[Metric]] = openmetrics_parser.text_string_to_metric_families
DOCS = paths.DOCS / "metrics.md"
DRIVER = "gpu.accel-dra.dev"
NODE = "node-1"
GiB = 1 << 30
OPENMETRICS = "application/openmetrics-text; version=1.0.0"

# -- the AI-conformance test's auto-detection (conformance-metrics reference, section 1.5) -----------------

DEVICE_LABELS = {
    "gpu",
    "UUID",
    "uuid",
    "device_id",
    "dev_id",
    "card_id",
    "GPU_I_ID",
    "minor_number",
    "pci_bus_id",
}
MEMORY_PATTERNS = ("fb_used", "mem_used", "memory_used", "vram_used", "hbm_used")


def per_accelerator_families(text: str) -> dict[str, int]:
    """Family name -> number of samples that count as per-accelerator (empty labels and NaN dropped)."""
    found: dict[str, int] = {}
    for family in parse_text(text):
        for sample in family.samples:
            labels = {k for k, v in sample.labels.items() if v}
            if labels & DEVICE_LABELS and not math.isnan(sample.value):
                found[family.name] = found.get(family.name, 0) + 1
    return found


def conformance_detect(text: str) -> dict[str, list[str]]:
    families = per_accelerator_families(text)
    return {
        "utilization": sorted(name for name in families if "util" in name),
        "memory": sorted(name for name in families if any(p in name for p in MEMORY_PATTERNS)),
        "temperature": sorted(name for name in families if re.search("temp|temperature", name)),
        "power": sorted(name for name in families if re.search("power|watt|energy", name)),
    }


# -- a snapshot with every family populated -----------------------------------------------------------------


class Allocations:
    def __init__(self, containers: list[ContainerResources]) -> None:
        self.containers = containers

    async def list(self) -> list[ContainerResources]:
        return self.containers

    async def close(self) -> None:
        pass


class FailingPower:
    """Wraps a telemetry source: one GPU's power read fails."""

    def __init__(self, inner: FakeBackend, uuid: str) -> None:
        self.inner, self.uuid = inner, uuid

    def sample(self, uuid: str) -> GpuTelemetry:
        t = self.inner.sample(uuid)
        if uuid != self.uuid:
            return t
        return dataclasses.replace(
            t, power_watts=None, errors=MappingProxyType({"power": "nvmlDeviceGetPowerUsage: Unknown Error"})
        )


def write_cgroup(proc_root: Path, pid: int, pod_uid: str, container_id: str) -> None:
    path = proc_root / str(pid) / "cgroup"
    path.parent.mkdir(parents=True, exist_ok=True)
    slice_uid = pod_uid.replace("-", "_")
    path.write_text(
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{slice_uid}.slice/"
        f"cri-containerd-{container_id}.scope\n"
    )


async def full_snapshot(tmp_path: Path) -> AsyncIterator[Snapshot]:
    profile = load_named_profile("dgx-h100-mig", node_name=NODE)
    inventory = profile.inventory
    state, proc_root = tmp_path / "state", tmp_path / "proc"
    backend = FakeBackend(profile, state_dir=state)
    shared, exclusive, plugin_gpu, faulty = inventory.gpus[:4]
    pid = os.getpid()
    procs = state / "gpus" / shared.uuid / "procs" / f"{pid}.json"
    procs.write_text(f'{{"pid": {pid}, "utilization": 0.5, "memory_bytes": {2 * GiB}}}')
    write_cgroup(proc_root, pid, "7d3f0a52-9a51-4a51-8d0e-2a6c1f0b9e11", "c" * 64)
    # A second process traced outside Kubernetes (a host process): it counts for no consumer.
    parent = os.getppid()
    (state / "gpus" / shared.uuid / "procs" / f"{parent}.json").write_text(
        f'{{"pid": {parent}, "utilization": 0.1, "memory_bytes": {GiB}}}'
    )
    (proc_root / str(parent)).mkdir(parents=True)
    (proc_root / str(parent) / "cgroup").write_text("0::/user.slice/user-1000.slice/session-2.scope\n")
    # A second shared GPU whose only process has an unreadable cgroup file: an attribution error, and
    # both consumers are shown the whole GPU (attribution="shared").
    untraced = inventory.gpus[4]
    (state / "gpus" / untraced.uuid / "procs" / "1.json").write_text(
        f'{{"pid": 1, "utilization": 0.25, "memory_bytes": {GiB}}}'
    )
    (proc_root / "1" / "cgroup").mkdir(parents=True)
    claim = ClaimDevice("team-a", "shared-gpu", DRIVER, NODE, shared.name)
    claim2 = ClaimDevice("team-d", "shared-gpu", DRIVER, NODE, untraced.name)
    mig_gpu = inventory.gpus[7]
    mig = inventory.device(f"{mig_gpu.name}-mig-3g-40gb-4")
    assert mig is not None and mig.mig is not None
    tuner = subprocess.Popen(["sleep", "600"])  # the MIG device's workload, traced to its holder
    (state / "gpus" / mig.mig.uuid / "procs" / f"{tuner.pid}.json").write_text(
        f'{{"pid": {tuner.pid}, "utilization": 0.75, "memory_bytes": {4 * GiB}}}'
    )
    write_cgroup(proc_root, tuner.pid, "0b7e5e1c-3d55-4c1d-9a0e-6f0d6a7c2b10", "e" * 64)
    allocations = Allocations(
        [
            ContainerResources("team-a", "trainer-0", "main", claim_devices=(claim,)),
            ContainerResources("team-a", "trainer-1", "main", claim_devices=(claim,)),
            ContainerResources(
                "team-b",
                "infer",
                "server",
                claim_devices=(ClaimDevice("team-b", "gpu", DRIVER, NODE, exclusive.name),),
            ),
            ContainerResources("team-c", "legacy", "app", device_ids=(("nvidia.com/gpu", plugin_gpu.uuid),)),
            ContainerResources("team-d", "worker-0", "main", claim_devices=(claim2,)),
            ContainerResources("team-d", "worker-1", "main", claim_devices=(claim2,)),
            ContainerResources(
                "team-e",
                "tuner",
                "main",
                claim_devices=(ClaimDevice("team-e", "slice", DRIVER, NODE, mig.name, "mig.accel-dra.dev"),),
            ),
        ]
    )
    containers = {
        "c" * 64: ContainerKey("team-a", "trainer-0", "main"),
        "e" * 64: ContainerKey("team-e", "tuner", "main"),
    }
    collector = Collector(
        inventory,
        FailingPower(backend, faulty.uuid),
        DeviceResolver(inventory, DRIVER, NODE),
        settings=Settings(interval=60, sample_timeout=10, proc_root=str(proc_root)),
        pod_resources=allocations,
        containers=containers.get,
        node_name=NODE,
        backend_name="fake:dgx-h100-mig",
        xids=XidCounter(backend.health_source(inventory, read_only=True), inventory),
    )
    await collector.start()
    inject_xid(state, exclusive.uuid, 13)
    await collector.tick()  # the XID, and the GPU time held since the first round
    try:
        yield collector.snapshot
    finally:
        await collector.stop()
        tuner.kill()
        tuner.wait()


@pytest.fixture
async def snapshot(tmp_path: Path) -> AsyncIterator[Snapshot]:
    async for snap in full_snapshot(tmp_path):
        yield snap


@pytest.fixture
def text(snapshot: Snapshot) -> str:
    body, content_type = Renderer(lambda: snapshot).render("")
    assert content_type.startswith("text/plain; version=0.0.4")
    return body.decode()


@pytest.fixture
def openmetrics(snapshot: Snapshot) -> str:
    body, content_type = Renderer(lambda: snapshot).render(OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    return body.decode()


# -- the spec itself --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", n.EXPORTER_ALL + n.PLUGIN_METRICS, ids=lambda s: s.name)
def test_spec_entries_follow_the_naming_rules(spec: n.MetricSpec) -> None:
    assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name)
    assert spec.name.endswith("_total") == (spec.type == "counter")
    assert spec.name.endswith("_info") == (spec.type == "info")
    if spec.unit:
        assert spec.family.endswith(f"_{spec.unit}")
    assert len(set(spec.labels)) == len(spec.labels)
    assert set(spec.values) <= set(spec.labels)
    assert spec.help.endswith(".") and (spec.help[0].isupper() or spec.help[0].isdigit())
    assert spec.name.startswith(("hw_", "accel_dra_")) and (bool(spec.otel) == spec.name.startswith("hw_"))
    if spec in n.HEALTH_METRICS + n.MIG_METRICS + n.CHARGEBACK_METRICS:
        # Beyond the convention: each reading says what an OTel instrument would be called and where it is read.
        assert spec.otel_style.startswith("accel_dra.") and spec.source
        assert spec.family.startswith(spec.otel_style.replace(".", "_")) or spec.type == "info"
    if spec.group in ("gpu", "container"):
        assert spec.labels[: len(n.IDENTITY_LABELS)] == n.IDENTITY_LABELS
    if spec.group == "mig":
        assert spec.labels[: len(n.MIG_IDENTITY_LABELS)] == n.MIG_IDENTITY_LABELS
    if spec.group == "container":
        assert set(n.ATTRIBUTION_LABELS) <= set(spec.labels)
    elif spec.group == "chargeback":
        assert spec.labels == n.CHARGEBACK_LABELS and spec.unit == "seconds" and spec.type == "counter"
    else:
        assert not {"namespace", "pod", "container", "resource_claim"} & set(spec.labels)
    if spec.otel in ("hw.power", "hw.energy", "hw.errors", "hw.status", "hw.temperature"):
        assert "hw_type" in spec.labels  # shared with other hardware: the convention requires hw.type


def test_otel_names_translate_as_the_prometheus_compatibility_spec_says() -> None:
    words = {"bytes": "By", "watts": "W", "joules": "J", "celsius": "Cel", "ratio": "1", "": "1"}
    for spec in n.GPU_METRICS:
        if not spec.otel:
            continue
        base = spec.otel.replace(".", "_")
        expected = f"{base}_{spec.unit}" if spec.unit else base
        assert spec.family == expected, spec.name
        assert spec.unit in words


def test_docs_tables_are_generated_from_the_spec() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert n.update_document(text) == text, "run: python -m driver.exporter.names --write docs/metrics.md"
    for spec in n.EXPORTER_ALL + n.PLUGIN_METRICS:
        assert f"`{spec.name}`" in text
    assert f"-metrics-utilization-metric {n.CONFORMANCE_UTILIZATION_METRIC}" in text
    assert f"-metrics-memory-metric {n.CONFORMANCE_MEMORY_METRIC}" in text


def test_docs_check_command(tmp_path: Path) -> None:
    stale = tmp_path / "metrics.md"
    stale.write_text(
        DOCS.read_text(encoding="utf-8").replace("`hw_power_watts` | gauge", "`hw_power` | gauge")
    )
    assert n.main([str(stale)]) == 1
    assert n.main([str(stale), "--write"]) == 0
    assert n.main([str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == DOCS.read_text(encoding="utf-8")


# -- the rendered output against the spec ----------------------------------------------------------------


def _families(specs: Iterable[n.MetricSpec]) -> Mapping[str, n.MetricSpec]:
    return {spec.family: spec for spec in specs}


def test_openmetrics_output_matches_the_spec(openmetrics: str) -> None:
    specs = _families(n.EXPORTER_ALL)
    seen: set[str] = set()
    for family in parse_openmetrics(openmetrics):
        spec = specs.get(family.name)
        assert spec is not None, f"{family.name} is not in the spec"
        seen.add(family.name)
        assert (family.type, family.unit, family.documentation) == (spec.type, spec.unit, spec.help)
        assert family.samples, f"{spec.name} has no samples in the full snapshot"
        for sample in family.samples:
            assert set(sample.labels) == set(spec.labels), f"{spec.name}: {sample.labels}"
            for label, allowed in spec.values.items():
                assert sample.labels[label] in allowed, f"{spec.name}: {label}={sample.labels[label]}"
            assert not math.isnan(sample.value)
    assert seen == set(specs)


def test_every_gpu_series_is_identified(text: str, snapshot: Snapshot) -> None:
    gpus = {g.gpu.uuid: g.gpu for g in snapshot.gpus}
    migs = {m.uuid: (g.gpu, m) for g in snapshot.gpus for m in g.gpu.mig_devices}
    for family in parse_text(text):
        for sample in family.samples:
            if "uuid" not in sample.labels:
                continue
            gpu = gpus[sample.labels["uuid"]]
            hw_id = gpu.name
            if family.name.startswith("accel_dra_mig_"):
                parent, mig = migs[sample.labels["mig_uuid"]]
                assert parent == gpu and sample.labels["hw_parent"] == gpu.name
                assert sample.labels["mig_profile"] == mig.profile
                hw_id = mig_device_name(gpu, mig)
            assert (sample.labels["hw_id"], sample.labels["pci_bus_id"], sample.labels["hw_model"]) == (
                hw_id,
                gpu.pci_bus_id,
                gpu.product_name,
            )
            assert sample.labels["hw_vendor"] == "NVIDIA"


def test_whole_gpu_series_exist_once_per_gpu(text: str, snapshot: Snapshot) -> None:
    per_gpu: dict[str, list[str]] = {}
    for family in parse_text(text):
        if family.name == "hw_gpu_memory_usage_bytes":
            for sample in family.samples:
                per_gpu.setdefault(sample.labels["uuid"], []).append(sample.name)
    assert sorted(per_gpu) == sorted(g.gpu.uuid for g in snapshot.gpus)
    assert {len(v) for v in per_gpu.values()} == {1}


def test_status_and_read_errors_show_the_failing_read(text: str, snapshot: Snapshot) -> None:
    faulty = snapshot.gpus[3].gpu.uuid
    status = {
        (s.labels["uuid"], s.labels["hw_state"]): s.value
        for f in parse_text(text)
        if f.name == "hw_status"
        for s in f.samples
    }
    assert status[(faulty, "degraded")] == 1 and status[(faulty, "ok")] == 0
    assert all(status[(g.gpu.uuid, "ok")] == 1 for g in snapshot.gpus if g.gpu.uuid != faulty)
    assert sum(status.values()) == len(snapshot.gpus)
    errors = [s for f in parse_text(text) if f.name == "accel_dra_gpu_read_errors" for s in f.samples]
    assert [(s.labels["uuid"], s.labels["field"], s.labels["reason"], s.value) for s in errors] == [
        (faulty, "power", "error", snapshot.samples_total)  # once per round
    ]
    power = {s.labels["uuid"] for f in parse_text(text) if f.name == "hw_power_watts" for s in f.samples}
    assert faulty not in power and len(power) == len(snapshot.gpus) - 1


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
)
def test_promtool_check_metrics_is_clean(text: str) -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_rendering_is_cached_per_snapshot(snapshot: Snapshot) -> None:
    current = [snapshot]
    renderer = Renderer(lambda: current[0])
    first, _ = renderer.render("")
    assert renderer.render("")[0] is first
    current[0] = dataclasses.replace(snapshot, seq=snapshot.seq + 1, samples_total=snapshot.samples_total + 1)
    assert renderer.render("")[0] != first


# -- AI conformance ---------------------------------------------------------------------------------------


def test_ai_conformance_auto_detection_finds_utilization_and_memory(text: str) -> None:
    found = conformance_detect(text)
    assert n.CONFORMANCE_UTILIZATION_METRIC in found["utilization"]
    assert n.MEMORY_USED_ALIAS.name in found["memory"]
    assert n.TEMPERATURE.name in found["temperature"]
    assert {n.POWER.name, n.ENERGY.family} <= set(found["power"])


def test_ai_conformance_explicit_names_are_per_accelerator(text: str, snapshot: Snapshot) -> None:
    families = per_accelerator_families(text)
    gpus = len(snapshot.gpus)
    whole = len([g for g in snapshot.gpus if not g.gpu.mig_enabled])
    # general, encoder, decoder; none for a MIG-enabled GPU (NVML has no utilization for it).
    assert families[n.CONFORMANCE_UTILIZATION_METRIC] == 3 * whole
    assert families[n.CONFORMANCE_MEMORY_METRIC] == gpus


async def test_ai_conformance_detection_before_any_pod_exists() -> None:
    """An idle node (no allocation, no attribution source) still passes auto-detection."""
    backend = FakeBackend(load_named_profile("pcie-l4x4"))
    inventory = backend.discover()
    collector = Collector(inventory, backend, DeviceResolver(inventory, DRIVER))
    await collector.start()
    try:
        text = Renderer(lambda: collector.snapshot).render("")[0].decode()
    finally:
        await collector.stop()
    found = conformance_detect(text)
    assert found["utilization"] and found["memory"]
    assert "accel_dra_container_gpu_utilization_ratio" not in per_accelerator_families(text)


def test_attributed_series(text: str, snapshot: Snapshot) -> None:
    shared, exclusive, plugin_gpu = (g.gpu.uuid for g in snapshot.gpus[:3])
    rows = {
        (f.name, s.labels["uuid"], s.labels["pod"]): (s.value, s.labels)
        for f in parse_text(text)
        if f.name.startswith("accel_dra_container_gpu_")
        for s in f.samples
    }
    util, mem = "accel_dra_container_gpu_utilization_ratio", "accel_dra_container_gpu_memory_usage_bytes"
    # Shared claim: trainer-0's process is traced (0.5, 2 GiB); trainer-1 runs nothing; the host process
    # counts for nobody.
    assert rows[(util, shared, "trainer-0")][0] == 0.5
    assert rows[(mem, shared, "trainer-0")][0] == 2 * GiB
    assert rows[(util, shared, "trainer-1")][0] == 0.0
    assert rows[(util, shared, "trainer-0")][1]["attribution"] == "process"
    labels = rows[(util, exclusive, "infer")][1]
    assert (labels["attribution"], labels["resource_claim"], labels["dra_device"]) == (
        "exclusive",
        "gpu",
        snapshot.gpus[1].gpu.name,
    )
    plugin = rows[(util, plugin_gpu, "legacy")][1]
    assert (plugin["namespace"], plugin["container"], plugin["resource_claim"], plugin["dra_driver"]) == (
        "team-c",
        "app",
        "",
        "",
    )
    untraced = snapshot.gpus[4].gpu.uuid
    whole = snapshot.gpus[4].telemetry
    assert whole is not None
    for pod in ("worker-0", "worker-1"):
        assert rows[(util, untraced, pod)][0] == whole.utilization
        assert rows[(mem, untraced, pod)][0] == whole.memory_used_bytes
        assert rows[(util, untraced, pod)][1]["attribution"] == "shared"
    mig_gpu = snapshot.gpus[7]
    assert mig_gpu.telemetry is not None
    (mig_reading,) = [
        m for m in mig_gpu.telemetry.mig if m.memory_used_bytes and m.memory_used_bytes > 4 * GiB
    ]
    tuner = rows[(util, mig_gpu.gpu.uuid, "tuner")]
    # The MIG device's own readings (GPM activity, its memory), not the GPU's.
    assert tuner[0] == 0.75 and rows[(mem, mig_gpu.gpu.uuid, "tuner")][0] == mig_reading.memory_used_bytes
    assert (tuner[1]["mig_uuid"], tuner[1]["mig_profile"], tuner[1]["attribution"]) == (
        mig_reading.uuid,
        "3g.40gb",
        "exclusive",
    )
    assert {k[1] for k in rows} == {shared, exclusive, plugin_gpu, untraced, mig_gpu.gpu.uuid}
    assert snapshot.attribution_errors == {"cgroup": snapshot.samples_total}  # once per round


def test_xids_are_counted_by_code(text: str, snapshot: Snapshot) -> None:
    exclusive = snapshot.gpus[1].gpu.uuid
    xids = {
        (s.labels["uuid"], s.labels["xid"]): s.value
        for f in parse_text(text)
        if f.name == "accel_dra_gpu_xid_errors"
        for s in f.samples
    }
    assert xids == {(exclusive, "13"): 1}
    last = {
        s.labels["uuid"]: s.value
        for f in parse_text(text)
        if f.name == "accel_dra_gpu_last_xid_code"
        for s in f.samples
    }
    assert last[exclusive] == 13 and {v for k, v in last.items() if k != exclusive} == {0}
    assert len(last) == len(snapshot.gpus)


@pytest.mark.parametrize("accept", ["", OPENMETRICS])
def test_label_values_and_help_are_escaped(accept: str) -> None:
    odd = 'Board "X" \\ rev\nB'
    gpu = Gpu(uuid="GPU-1", product_name=odd, pci_bus_id="0000:01:00.0", memory_bytes=GiB)
    snap = Snapshot(
        seq=1,
        timestamp=1.5,
        node_name=NODE,
        backend="file:x",
        driver_version="1",
        cuda_driver_version="12.9",
        gpus=(GpuSnapshot(gpu, GpuTelemetry(uuid="GPU-1", power_watts=12.25), "ok", MappingProxyType({})),),
    )
    body = Renderer(lambda: snap).render(accept)[0].decode()
    parse = parse_openmetrics if accept else parse_text
    power = [s for f in parse(body) for s in f.samples if s.name == "hw_power_watts"]
    assert [(s.labels["hw_model"], s.value) for s in power] == [(odd, 12.25)]
