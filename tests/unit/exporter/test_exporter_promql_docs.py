"""The PromQL examples of docs/metrics.md, evaluated by ``promtool test rules`` on a rendered scrape.

The scrape covers each attribution rule: a GPU split by process where one container holds two MIG devices
(two rows), a GPU shared by two pods with an untraced process, and a GPU one container holds through two
claims. The expected answers are the per-container truths of that scenario, worked out by hand.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from driver.devices.fake import load_named_profile
from driver.devices.telemetry import GpuTelemetry, ProcessSample
from driver.exporter.attribution import OUTSIDE_PODS, Consumer, ContainerKey, split
from driver.exporter.collector import GpuSnapshot, Snapshot
from driver.exporter.render import Renderer
from tests.support import paths

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
)

DOCS = paths.DOCS / "metrics.md"
DRIVER = "gpu.accel-dra.dev"
NODE = "node-1"
GiB = 1 << 30


def doc_query(comment_prefix: str) -> str:
    """The PromQL example under the comment starting with ``comment_prefix`` (up to the next blank line)."""
    blocks = re.findall(r"```promql\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert blocks, "docs/metrics.md has no promql block"
    for example in (e for block in blocks for e in re.split(r"\n\s*\n", block)):
        lines = example.strip().splitlines()
        if lines and lines[0].startswith(comment_prefix):
            return " ".join(line.strip() for line in lines if not line.lstrip().startswith("#"))
    raise AssertionError(f"no PromQL example starting with {comment_prefix!r} in {DOCS}")


def scrape() -> str:
    gpus = load_named_profile("dgx-h100", node_name=NODE).inventory.gpus

    def claim(ns: str, pod: str, name: str, device: str) -> Consumer:
        return Consumer(ns, pod, "main", ns, name, DRIVER, NODE, device)

    split_gpu = (
        claim("team-a", "train-0", "mig", "gpu-0-mig-1"),
        claim("team-a", "train-0", "mig", "gpu-0-mig-2"),
        claim("team-b", "infer", "mig", "gpu-0-mig-3"),
    )
    shared_gpu = (claim("team-a", "nb-0", "nb", "gpu-1"), claim("team-a", "nb-1", "nb", "gpu-1"))
    exclusive_gpu = (
        claim("team-b", "big", "c1", "gpu-2-mig-1"),
        claim("team-b", "big", "c2", "gpu-2-mig-2"),
    )
    owners = {
        10: ContainerKey("team-a", "train-0", "main"),
        20: ContainerKey("team-b", "infer", "main"),
        30: OUTSIDE_PODS,  # pid 40 is untraced
    }
    readings = (
        (
            split_gpu,
            GpuTelemetry(
                gpus[0].uuid,
                utilization=0.85,
                memory_used_bytes=5 * GiB,
                processes=(
                    ProcessSample(10, 3 * GiB, 0.5),
                    ProcessSample(20, 1 * GiB, 0.25),
                    ProcessSample(30, 1 * GiB, 0.1),
                ),
            ),
        ),
        (
            shared_gpu,
            GpuTelemetry(
                gpus[1].uuid,
                utilization=0.8,
                memory_used_bytes=8 * GiB,
                processes=(ProcessSample(40, 8 * GiB, 0.8),),
            ),
        ),
        (exclusive_gpu, GpuTelemetry(gpus[2].uuid, utilization=0.6, memory_used_bytes=6 * GiB, processes=())),
    )
    snapshot = Snapshot(
        seq=1,
        timestamp=0.0,
        node_name=NODE,
        backend="fake:dgx-h100",
        driver_version="",
        cuda_driver_version="",
        gpus=tuple(
            GpuSnapshot(gpu, t, "ok", MappingProxyType({}), split(t, consumers, owners.get))
            for gpu, (consumers, t) in zip(gpus, readings, strict=False)
        ),
    )
    return Renderer(lambda: snapshot).render("")[0].decode()


def evaluate(tmp_path: Path, text: str, expr: str, expected: Mapping[str, float]) -> None:
    """Assert that ``expr`` over the container series of ``text`` gives exactly ``expected``."""
    series = [
        {
            "series": s.name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()) if v) + "}",
            "values": repr(s.value),
        }
        for family in parse_text(text)
        if family.name.startswith("accel_dra_container_gpu_")
        for s in family.samples
    ]
    spec = {
        "rule_files": [],
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "0m",
                        "exp_samples": [{"labels": k, "value": v} for k, v in expected.items()],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "test.yml"
    path.write_text(json.dumps(spec), encoding="utf-8")  # JSON is YAML
    result = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{expr}\n{result.stdout}{result.stderr}"


def test_utilization_per_namespace_counts_each_container_once(tmp_path: Path) -> None:
    expr = doc_query("# GPU utilization per namespace")
    # team-a: train-0's process (0.5) + the shared GPU once, in full (0.8); team-b: infer (0.25) + big (0.6).
    evaluate(tmp_path, scrape(), expr, {'{namespace="team-a"}': 1.3, '{namespace="team-b"}': 0.85})


def test_memory_per_claim_counts_each_container_once(tmp_path: Path) -> None:
    expr = doc_query("# Memory of each claim")
    expected = {
        '{resource_claim_namespace="team-a", resource_claim="mig"}': 3 * GiB,
        '{resource_claim_namespace="team-b", resource_claim="mig"}': 1 * GiB,
        '{resource_claim_namespace="team-a", resource_claim="nb"}': 8 * GiB,
        # One container holds the GPU through two claims: an even share each.
        '{resource_claim_namespace="team-b", resource_claim="c1"}': 3 * GiB,
        '{resource_claim_namespace="team-b", resource_claim="c2"}': 3 * GiB,
    }
    evaluate(tmp_path, scrape(), expr, expected)


def test_monthly_chargeback_recipe_survives_exporter_restarts(tmp_path: Path) -> None:
    """The month's GPU-hours per namespace from the chargeback counters, through an exporter restart."""
    recipe = doc_query("# GPU-hours held per namespace").replace("@ 1796083200", "@ 2592000")  # 30 days
    expr = f"round({recipe}, 0.001)"
    labels = 'device_class="gpu.accel-dra.dev", hw_model="H100", k8s_node_name="node-1"'
    series = [
        # A whole GPU all month; the exporter restarted on day 10 and was down for an hour (a reset).
        {
            "series": f'accel_dra_gpu_allocated_seconds_total{{namespace="ml", pod="train", {labels}}}',
            "values": "0+3600x240 0+3600x479",
        },
        # Half a GPU (shared with another namespace's pod) for 100 hours, then released.
        {
            "series": f'accel_dra_gpu_allocated_seconds_total{{namespace="web", pod="serve", {labels}}}',
            "values": "0+1800x100",
        },
    ]
    spec = {
        "rule_files": [],
        "tests": [
            {
                "interval": "1h",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "720h",
                        "exp_samples": [
                            # 720 hours less the hour the exporter was down; nothing counted twice.
                            {"labels": '{namespace="ml", hw_model="H100"}', "value": 719},
                            # 50 hours; increase() extrapolates half a scrape interval past the series'
                            # last sample at the rate it grew: 50 / 100 h * 0.5 h (with 30 s scrapes: 15 s).
                            {"labels": '{namespace="web", hw_model="H100"}', "value": 50.25},
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "chargeback.yml"
    path.write_text(json.dumps(spec), encoding="utf-8")
    result = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{expr}\n{result.stdout}{result.stderr}"
