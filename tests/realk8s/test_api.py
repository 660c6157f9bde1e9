"""What the project reads from the API server, read from the real one: served versions (discovery) and
lists exactly as the API returns them, fed to ``accel-dra validate`` and ``accel-dra explain``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from driver.kube.client import DEVICE_CLASSES, DEVICE_TAINT_RULES, RESOURCE_SLICES, KubeClient
from driver.kube.discovery import served_type
from tests.support.chart import DEPLOY
from tests.support.processes import accel_dra
from tests.support.realk8s import Cluster
from tests.support.realk8s_driver import Driver

pytestmark = pytest.mark.realk8s


async def test_device_taint_rules_are_found_at_the_version_the_server_serves(realk8s: Cluster) -> None:
    async with await KubeClient.connect(str(realk8s.kubeconfig)) as kube:
        found = await served_type(kube, DEVICE_TAINT_RULES)
        assert found.version == ("v1beta2" if realk8s.minor == 36 else "v1")
        assert (await kube.list(found))["items"] == []


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(accel_dra(*args), capture_output=True, text=True, check=False, timeout=120)


def save(cluster: Cluster, path: str, to: Path) -> Path:
    """The API's answer to ``GET path``, byte for byte (a typed list: its items carry no kind)."""
    with cluster.admin_open(path) as response:
        to.write_bytes(response.read())
    return to


@pytest.mark.usefixtures("accel_dra")
def test_validate_checks_the_slices_of_a_list_from_the_api(realk8s: Cluster, tmp_path: Path) -> None:
    listing = save(realk8s, RESOURCE_SLICES.path(), tmp_path / "slices.json")
    items = json.loads(listing.read_text())["items"]
    assert items and "kind" not in items[0], "the API's list items carry a kind: this test tests nothing"
    done = cli("validate", str(listing))
    assert done.returncode == 0, done.stdout + done.stderr
    devices = sum(len(s["spec"].get("devices") or []) for s in items)  # counters-only slices have none
    assert any(s["spec"].get("sharedCounters") for s in items), (
        "no partitionable devices: node-2's dynamic GPUs"
    )
    assert done.stdout.strip() == f"{len(items)} ResourceSlice(s), {devices} device(s) checked: OK"


def test_explain_reads_lists_from_the_api(realk8s: Cluster, accel_dra: Driver, tmp_path: Path) -> None:
    slices = save(realk8s, RESOURCE_SLICES.path(), tmp_path / "slices.json")
    classes = save(realk8s, DEVICE_CLASSES.path(), tmp_path / "classes.json")
    claim = DEPLOY / "examples" / "gpu-test1" / "gpu-test1.yaml"
    done = cli("explain", str(claim), "--slices", str(slices), "--class", str(classes), "-o", "json")
    assert done.returncode == 0, done.stderr
    assert "without kind" not in done.stderr
    # node-2's GPUs in dynamic MIG mode are offered whole too (as their full-size MIG instance).
    assert sorted(json.loads(done.stdout)["allocatableOn"]) == ["node-1", "node-2"]
