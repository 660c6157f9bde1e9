"""The real plugin process on a real GPU: publish, prepare, unprepare, against the sim API server and kubelet.

``accel-dra plugin --backend nvml`` publishes this machine's GPUs; the test allocates one of them (by the
device name in the published slice) to a claim, has the sim kubelet call NodePrepareResources over the
plugin's socket, checks the CDI spec it wrote against this host, then unprepares.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from driver.kube.client import RESOURCE_SLICES, KubeClient
from driver.sim.apiserver import SimApiServer
from driver.sim.kubelet import SimKubelet
from driver.state.api import ClaimRef
from tests.gpu import hostcheck, smi
from tests.gpu.conftest import DRIVER_ROOT
from tests.integration.conftest import NODE, NodeDirs, StartPlugin, create_allocated_claim
from tests.support.cdi_rules import assert_valid_cdi
from tests.support.processes import Process

pytestmark = pytest.mark.gpu

DRIVER = "gpu.accel-dra.dev"


def current_slices(server: SimApiServer) -> list[dict[str, Any]] | None:
    """The node's slices once the newest pool generation is complete, else ``None``."""
    slices = [
        s
        for s in server.objects(RESOURCE_SLICES)
        if s["spec"].get("nodeName") == NODE and s["spec"]["driver"] == DRIVER
    ]
    if not slices:
        return None
    generation = max(s["spec"]["pool"]["generation"] for s in slices)
    current = [s for s in slices if s["spec"]["pool"]["generation"] == generation]
    return current if len(current) == current[0]["spec"]["pool"]["resourceSliceCount"] else None


async def published_devices(server: SimApiServer, process: Process) -> list[dict[str, Any]]:
    try:
        slices = await server.wait_for(lambda _store: current_slices(server), timeout=30)
    except TimeoutError:
        raise AssertionError(f"the plugin published no complete pool:\n{process.output()}") from None
    assert slices is not None
    return [d for s in slices for d in s["spec"]["devices"]]


def attribute(device: dict[str, Any], key: str) -> Any:
    entry = device.get("attributes", {}).get(key)
    return next(iter(entry.values())) if entry else None


async def test_plugin_prepares_and_unprepares_a_real_gpu(
    *,
    apiserver: SimApiServer,
    kube: KubeClient,
    kubelet: SimKubelet,
    start_plugin: StartPlugin,
    node_dirs: NodeDirs,
    whole_gpu: smi.SmiGpu,
    smi_report: smi.SmiReport,
) -> None:
    process = await start_plugin(backend="nvml", extra=("--driver-root", DRIVER_ROOT, "--log-level", "debug"))
    await kubelet.wait_registered(DRIVER, timeout=60)
    await process.wait_log("registered with kubelet", timeout=60)
    devices = await published_devices(apiserver, process)
    device = next((d for d in devices if attribute(d, "uuid") == whole_gpu.uuid), None)
    assert device is not None, (
        f"GPU {whole_gpu.uuid} is not in the published slices: {[d['name'] for d in devices]}"
    )

    claim = await create_allocated_claim(
        kube,
        "gpu-validation",
        [{"request": "gpu", "driver": DRIVER, "pool": NODE, "device": device["name"]}],
    )
    meta = claim["metadata"]
    ref = ClaimRef(meta["namespace"], meta["uid"], meta["name"])
    prepared = await kubelet.prepare(DRIVER, [ref])
    (result,) = prepared[ref.uid]
    cdi_name = f"{ref.uid}-{device['name']}"
    assert (result.device_name, result.pool_name) == (device["name"], NODE)
    assert result.cdi_device_ids == (f"k8s.{DRIVER}/gpu={cdi_name}",)

    spec_path = node_dirs.cdi / f"k8s.{DRIVER}-gpu_{ref.uid}.json"
    spec = json.loads(spec_path.read_text())
    assert_valid_cdi(spec)
    assert hostcheck.node_problems(spec) == []
    assert hostcheck.mount_problems(spec) == []
    assert hostcheck.missing_libraries(spec) == [], (
        f"mounted: {sorted(hostcheck.container_paths(spec))}; NVML loaded here from {hostcheck.loaded_library()}"
    )
    assert hostcheck.device_uuid(spec, cdi_name, device["name"]) == whole_gpu.uuid
    minor = smi_report.gpus[whole_gpu.uuid].minor_number
    assert hostcheck.gpu_node_minors(spec, cdi_name) == [minor]

    await kubelet.unprepare(DRIVER, [ref])
    assert not spec_path.exists()
    await process.wait_log(r"unprepare answered\".* claims=1 failed=0 ")
    # Kept in the test's output (and the validation's pytest.log) for the record, whoever logged them.
    print("plugin warnings:", *process.matching(r"level=(warning|error)"), sep="\n")
    # Warnings from device code on a real GPU mean an NVML call failed unexpectedly (not merely unsupported).
    assert process.matching(r"level=(warning|error) logger=driver\.devices") == []
    assert await process.terminate() == 0, process.output()
