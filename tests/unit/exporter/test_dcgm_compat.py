"""The dcgm-exporter compatibility rules, by ``promtool test rules`` on two scrapes of a sandbox node.

The node: a DGX H100 with two GPUs in MIG mode (fake GPUs with simulated load), a GPU shared by two pods, a
GPU held through a DRA claim, one through a device plugin, MIG devices held by claims (one by two pods), and
an XID. The exporter is scraped twice, one minute apart on a test clock; the scrapes are promtool's input.

The expected series come from :func:`dcgm_reference`, an independent model of what dcgm-exporter shows for
the same node: one series per GPU (or GPU instance on a MIG-enabled GPU) and holder, dcgm's labels, dcgm's
units, computed from the exporter's own readings (the snapshot) rather than from its series. Every
``DCGM_FI_*`` series the rules record must equal the model's, names, labels and values; then the queries of
a typical dcgm-exporter dashboard return the same answers on both.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families as parse_text

from driver.devices.fake import FakeBackend, load_named_profile
from driver.devices.fake_events import inject_xid
from driver.devices.model import Gpu, MigDevice, nvml_pci_bus_id
from driver.devices.telemetry import CLOCK_EVENT_REASONS, GpuTelemetry, MigTelemetry
from driver.exporter import dcgm
from driver.exporter.attribution import ContainerKey
from driver.exporter.collector import Collector, GpuSnapshot, Settings, Snapshot
from driver.exporter.podresources import ClaimDevice, ContainerResources, DeviceResolver
from driver.exporter.render import Renderer
from driver.exporter.xids import XidCounter
from tests.support import paths

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
)

ROOT = paths.REPO
DRIVER = "gpu.accel-dra.dev"
NODE = "node-1"
GiB = 1 << 30
MiB = 1 << 20
Labels = dict[str, str]
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Allocations:
    def __init__(self, containers: list[ContainerResources]) -> None:
        self.containers = containers

    async def list(self) -> list[ContainerResources]:
        return self.containers

    async def close(self) -> None:
        pass


def write_procs(state: Path, uuid: str, pid: int, utilization: float, memory: int, **extra: float) -> None:
    path = state / "gpus" / uuid / "procs" / f"{pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "utilization": utilization, "memory_bytes": memory, **extra}))


@pytest.fixture
def sleepers() -> Iterator[list[int]]:
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(3)]
    yield [p.pid for p in procs]
    for p in procs:
        p.kill()
        p.wait()


@dataclasses.dataclass
class Scrapes:
    first: str
    second: str
    snapshot: Snapshot
    before: Snapshot


@pytest.fixture
async def scrapes(tmp_path: Path, sleepers: list[int]) -> AsyncIterator[Scrapes]:
    profile = load_named_profile("dgx-h100-mig", node_name=NODE)
    inventory = profile.inventory
    state = tmp_path / "state"
    clock = Clock()
    backend = FakeBackend(profile, state_dir=state, clock=clock)
    gpus = inventory.gpus
    mig6, mig7 = gpus[6].mig_devices, gpus[7].mig_devices
    a, b, c = sleepers
    write_procs(state, gpus[0].uuid, a, 0.37, 7 * GiB, encoder=0.12)
    write_procs(state, gpus[1].uuid, b, 0.6, 20 * GiB, tensor=0.45, dram=0.33)
    write_procs(state, mig7[0].uuid, c, 0.81, 11 * GiB)
    write_procs(state, mig6[3].uuid, a, 0.2, GiB)

    def claim(ns: str, name: str, device: str) -> tuple[ClaimDevice, ...]:
        return (ClaimDevice(ns, name, DRIVER, NODE, device),)

    big = inventory.device(f"{gpus[7].name}-mig-3g-40gb-4")
    small = inventory.device(f"{gpus[6].name}-mig-1g-10gb-3")
    assert big is not None and small is not None
    allocations = Allocations(
        [
            ContainerResources("ml", "shared-0", "main", claim_devices=claim("ml", "pair", gpus[0].name)),
            ContainerResources("ml", "shared-1", "main", claim_devices=claim("ml", "pair", gpus[0].name)),
            ContainerResources("ml", "train", "trainer", claim_devices=claim("ml", "big", gpus[1].name)),
            ContainerResources("legacy", "infer", "server", device_ids=(("nvidia.com/gpu", gpus[2].uuid),)),
            ContainerResources("tune", "tuner", "main", claim_devices=claim("tune", "slice", big.name)),
            ContainerResources("tune", "a", "main", claim_devices=claim("tune", "small", small.name)),
            ContainerResources("tune", "b", "main", claim_devices=claim("tune", "small", small.name)),
        ]
    )
    collector = Collector(
        inventory,
        backend,
        DeviceResolver(inventory, DRIVER, NODE),
        settings=Settings(interval=60, sample_timeout=600),
        pod_resources=allocations,
        containers={"c" * 64: ContainerKey("ml", "train", "trainer")}.get,
        node_name=NODE,
        backend_name="fake:dgx-h100-mig",
        clock=clock,
        wall_clock=clock,
        xids=XidCounter(backend.health_source(inventory, read_only=True), inventory),
    )
    await collector.start()
    inject_xid(state, gpus[3].uuid, 79)
    inject_xid(state, mig7[1].uuid, 31)
    await collector.tick()
    before = collector.snapshot
    first = Renderer(lambda: before).render("")[0].decode()
    clock.now += 60
    await collector.tick()
    snapshot = collector.snapshot
    second = Renderer(lambda: snapshot).render("")[0].decode()
    try:
        yield Scrapes(first, second, snapshot, before)
    finally:
        await collector.stop()


# -- the reference: what dcgm-exporter shows for this node --------------------------------------------


def _round(value: float) -> float:
    return math.floor(value + 0.5)  # PromQL's round(), half up


def _entities(snap: Snapshot) -> Iterator[tuple[int, GpuSnapshot, MigDevice | None, Labels]]:
    """dcgm's entities: each GPU, or each GPU instance of a MIG-enabled GPU, with its identity labels."""
    for index, g in enumerate(snap.gpus):
        gpu: Gpu = g.gpu
        base = {
            "gpu": str(index),
            "UUID": gpu.uuid,
            "pci_bus_id": nvml_pci_bus_id(gpu.pci_bus_id or ""),
            "device": f"nvidia{index}",
            "modelName": gpu.product_name or "",
            "Hostname": snap.node_name,
            "DCGM_FI_DRIVER_VERSION": snap.driver_version,
        }
        if not gpu.mig_enabled:
            yield index, g, None, base
            continue
        for mig in gpu.mig_devices:
            yield (
                index,
                g,
                mig,
                base | {"GPU_I_PROFILE": mig.profile or "", "GPU_I_ID": str(mig.gpu_instance_id)},
            )


def _holders(g: GpuSnapshot, mig: MigDevice | None, prefix: str) -> list[Labels]:
    rows = []
    for share in g.shares:
        c = share.consumer
        if c.mig_uuid != (mig.uuid if mig else ""):
            continue
        labels = {f"{prefix}namespace": c.namespace, f"{prefix}pod": c.pod, f"{prefix}container": c.container}
        if c.resource_claim:
            labels |= {
                "dra_claim_name": c.resource_claim,
                "dra_claim_namespace": c.resource_claim_namespace,
                "dra_driver_name": c.dra_driver,
                "dra_pool_name": c.dra_pool,
                "dra_device_name": c.dra_device,
            }
        rows.append(labels)
    return rows or [{}]


def _device_fields(t: GpuTelemetry, before: GpuTelemetry | None) -> dict[str, float | None]:
    """dcgm's device-wide fields of one GPU, in dcgm's units (None: the GPU has no such reading)."""

    def kb_per_s(now: int | None, then: int | None) -> float | None:
        if now is None or then is None:
            return None
        return (now - then) * (60.0 / 60.0) / 60.0 / 1000  # rate over [1m] with two samples 60 s apart

    def pct(value: float | None) -> float | None:
        return None if value is None else _round(value * 100)

    reasons = t.clock_event_reasons
    return {
        "DCGM_FI_DEV_SM_CLOCK": None if t.sm_clock_hertz is None else t.sm_clock_hertz / 1e6,
        "DCGM_FI_DEV_MEM_CLOCK": None if t.memory_clock_hertz is None else t.memory_clock_hertz / 1e6,
        "DCGM_FI_DEV_MEMORY_TEMP": t.memory_temperature_celsius,
        "DCGM_FI_DEV_GPU_TEMP": t.temperature_celsius,
        "DCGM_FI_DEV_POWER_USAGE": t.power_watts,
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": None
        if t.energy_joules is None
        else _round(t.energy_joules * 1000),
        "DCGM_FI_DEV_PCIE_TX_THROUGHPUT": kb_per_s(t.pcie_tx_bytes, before.pcie_tx_bytes if before else None),
        "DCGM_FI_DEV_PCIE_RX_THROUGHPUT": kb_per_s(t.pcie_rx_bytes, before.pcie_rx_bytes if before else None),
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": t.pcie_replays,
        "DCGM_FI_DEV_GPU_UTIL": pct(t.utilization),
        "DCGM_FI_DEV_MEM_COPY_UTIL": pct(t.memory_copy_utilization),
        "DCGM_FI_DEV_ENC_UTIL": pct(t.encoder_utilization),
        "DCGM_FI_DEV_DEC_UTIL": pct(t.decoder_utilization),
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": t.remapped_rows_uncorrectable,
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": t.remapped_rows_correctable,
        "DCGM_FI_DEV_ROW_REMAP_FAILURE": None if t.row_remap_failure is None else int(t.row_remap_failure),
        "DCGM_FI_DEV_ROW_REMAP_PENDING": None if t.row_remap_pending is None else int(t.row_remap_pending),
        "DCGM_FI_PROF_PCIE_TX_BYTES": t.io_throughput.get(("pcie", "transmit")),
        "DCGM_FI_PROF_PCIE_RX_BYTES": t.io_throughput.get(("pcie", "receive")),
        "DCGM_FI_PROF_NVLINK_TX_BYTES": t.io_throughput.get(("nvlink", "transmit")),
        "DCGM_FI_PROF_NVLINK_RX_BYTES": t.io_throughput.get(("nvlink", "receive")),
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": t.ecc_corrected,
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": t.ecc_uncorrected,
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": None
        if reasons is None
        else sum(bit for bit, _ in CLOCK_EVENT_REASONS if reasons & bit),
    }


PROF = {
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "graphics",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "tensor",
    "DCGM_FI_PROF_DRAM_ACTIVE": "dram",
    "DCGM_FI_PROF_SM_ACTIVE": "sm",
    "DCGM_FI_PROF_SM_OCCUPANCY": "sm_occupancy",
    "DCGM_FI_PROF_PIPE_FP64_ACTIVE": "fp64",
    "DCGM_FI_PROF_PIPE_FP32_ACTIVE": "fp32",
    "DCGM_FI_PROF_PIPE_FP16_ACTIVE": "fp16",
}


def _entity_fields(reading: GpuTelemetry | MigTelemetry) -> dict[str, float | None]:
    """dcgm's per-entity fields: memory in MiB, profiling ratios of the GPU or the GPU instance."""
    used, total = reading.memory_used_bytes, reading.memory_total_bytes
    fields: dict[str, float | None] = {
        "DCGM_FI_DEV_FB_USED": None if used is None else used // MiB,
        "DCGM_FI_DEV_FB_FREE": None if used is None or total is None else (total - used) // MiB,
        "DCGM_FI_DEV_FB_TOTAL": None if total is None else total // MiB,
    }
    fields |= {name: reading.activity.get(activity) for name, activity in PROF.items()}
    return fields


def dcgm_reference(snap: Snapshot, before: Snapshot, prefix: str = "") -> Series:
    expected: Series = {}
    earlier = {g.gpu.uuid: g.telemetry for g in before.gpus}
    for _, g, mig, labels in _entities(snap):
        t = g.telemetry
        assert t is not None
        values = _device_fields(t, earlier[g.gpu.uuid])
        values["DCGM_FI_DEV_XID_ERRORS"] = g.last_xid
        reading: GpuTelemetry | MigTelemetry = (
            t if mig is None else next(m for m in t.mig if m.uuid == mig.uuid)
        )
        values |= _entity_fields(reading)
        for holder in _holders(g, mig, prefix):
            for name, value in values.items():
                if value is not None:
                    expected[(name, tuple(sorted((labels | holder).items())))] = float(value)
    return expected


# -- promtool ---------------------------------------------------------------------------------------------


def _input_series(first: str, second: str) -> list[dict[str, str]]:
    """promtool input: the first scrape at 0m, the second at 1m (a series absent in one is '_' there)."""

    def samples(text: str) -> dict[str, float]:
        out = {}
        for family in parse_text(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()) if v)
                out[f"{s.name}{{{labels}}}"] = s.value
        return out

    a, b = samples(first), samples(second)
    return [
        {"series": key, "values": " ".join("_" if v is None else repr(v) for v in (a.get(key), b.get(key)))}
        for key in sorted(set(a) | set(b))
    ]


def _promql_tests(expected: Series, names: list[str]) -> list[dict[str, Any]]:
    tests = []
    for name in names:
        samples = [
            {"labels": name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}", "value": value}
            for (metric, labels), value in sorted(expected.items())
            if metric == name
        ]
        tests.append({"expr": name, "eval_time": "1m", "exp_samples": samples})
    return tests


def promtool(tmp_path: Path, rule_file: Path, scrapes: Scrapes, tests: list[dict[str, Any]]) -> None:
    spec = {
        "rule_files": [str(rule_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _input_series(scrapes.first, scrapes.second),
                "promql_expr_test": tests,
            }
        ],
    }
    path = tmp_path / "dcgm-test.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@pytest.mark.parametrize(("relative", "prefix"), dcgm.RULE_FILES)
def test_recording_rules_give_dcgm_exporters_series(
    tmp_path: Path, scrapes: Scrapes, relative: str, prefix: str
) -> None:
    expected = dcgm_reference(scrapes.snapshot, scrapes.before, prefix)
    names = [f.name for f in dcgm.FIELDS]
    produced = {name for name, _ in expected}
    # The scenario exercises every field the rules record, and the MIG and holder cases.
    assert produced == set(names)
    assert any(dict(labels).get("GPU_I_ID") and dict(labels).get(f"{prefix}pod") for _, labels in expected)
    promtool(tmp_path, ROOT / relative, scrapes, _promql_tests(expected, names))


def test_a_dcgm_dashboards_queries_answer_the_same(tmp_path: Path, scrapes: Scrapes) -> None:
    """Queries of the kind dcgm dashboards run, on the recorded series, against the reference model."""
    expected = dcgm_reference(scrapes.snapshot, scrapes.before)

    def values(name: str, **match: str) -> list[tuple[dict[str, str], float]]:
        return [
            (dict(labels), v)
            for (n, labels), v in expected.items()
            if n == name and all(dict(labels).get(k) == want for k, want in match.items())
        ]

    def by(name: str, label: str, agg: Any, **match: str) -> list[dict[str, Any]]:
        groups: dict[str, list[float]] = {}
        for labels, v in values(name, **match):
            groups.setdefault(labels.get(label, ""), []).append(v)
        return [
            {"labels": f'{{{label}="{key}"}}' if key else "{}", "value": agg(vs)}
            for key, vs in sorted(groups.items())
        ]

    host = {"Hostname": NODE}
    tests = [
        {
            # Rounded: PromQL averages incrementally, which differs from sum/len in the last bits.
            "expr": f'round(avg by (gpu) (DCGM_FI_DEV_GPU_TEMP{{Hostname="{NODE}"}}), 0.001)',
            "exp_samples": by(
                "DCGM_FI_DEV_GPU_TEMP",
                "gpu",
                lambda v: math.floor(sum(v) / len(v) * 1000 + 0.5) / 1000,
                **host,
            ),
        },
        {
            "expr": f'max by (gpu) (DCGM_FI_DEV_POWER_USAGE{{Hostname="{NODE}"}})',
            "exp_samples": by("DCGM_FI_DEV_POWER_USAGE", "gpu", max, **host),
        },
        {
            "expr": "max by (gpu) (DCGM_FI_DEV_GPU_UTIL)",
            "exp_samples": by("DCGM_FI_DEV_GPU_UTIL", "gpu", max),
        },
        {
            "expr": "sum by (namespace) (DCGM_FI_DEV_FB_USED)",
            "exp_samples": by("DCGM_FI_DEV_FB_USED", "namespace", sum),
        },
        {
            "expr": 'max by (pod) (DCGM_FI_PROF_GR_ENGINE_ACTIVE{GPU_I_PROFILE="3g.40gb"})',
            "exp_samples": by("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "pod", max, GPU_I_PROFILE="3g.40gb"),
        },
        {
            "expr": "count by (modelName) (DCGM_FI_DEV_SM_CLOCK)",
            "exp_samples": by("DCGM_FI_DEV_SM_CLOCK", "modelName", len),
        },
        {
            "expr": "max by (gpu) (DCGM_FI_DEV_XID_ERRORS) > 0",
            "exp_samples": [s for s in by("DCGM_FI_DEV_XID_ERRORS", "gpu", max) if s["value"] > 0],
        },
    ]
    for test in tests:
        test["eval_time"] = "1m"
        assert test["exp_samples"], test["expr"]
    promtool(tmp_path, ROOT / dcgm.RULE_FILES[0][0], scrapes, tests)


def test_rule_files_are_generated_from_the_table() -> None:
    assert dcgm.main(["--root", str(ROOT)]) == 0, "run: python -m driver.exporter.dcgm --write"


def test_rule_files_are_valid_for_promtool() -> None:
    for relative, _ in dcgm.RULE_FILES:
        result = subprocess.run(
            ["promtool", "check", "rules", str(ROOT / relative)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_migration_table_covers_every_field() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    for field in dcgm.FIELDS:
        assert f"`{field.name}`" in doc
    for name, _ in dcgm.UNSOURCED:
        assert f"`{name}`" in doc
    assert os.path.exists(ROOT / dcgm.RULE_FILES[0][0])
