"""Dynamic MIG on a real MIG-capable GPU: NVML's profile and placement tables against the fake backend's,
the instance calls of the NVML backend, and the plugin creating and destroying an instance for a claim.

Needs a GPU with MIG mode already enabled (the tests never change MIG mode: ``nvidia-smi -i N -mig 1``) and
root (creating instances needs the MIG configuration capability). The instance tests use only placements no
existing instance touches and destroy only what they created; the plugin test runs only on a GPU without any
instance, because a plugin in dynamic mode removes instances no claim holds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driver.devices.mig import GpuInstance, MigError
from driver.devices.migtables import TABLES, table_for_product
from driver.devices.model import Gpu, MigPlacement, MigProfile
from driver.devices.nvml import NvmlBackend
from driver.kube.client import KubeClient
from driver.sim.apiserver import SimApiServer
from driver.sim.kubelet import SimKubelet
from driver.state.api import ClaimRef
from driver.state.devnodes import mig_minor, parse_mig_minors
from tests.gpu.conftest import DRIVER_ROOT
from tests.gpu.test_plugin_real import current_slices
from tests.integration.conftest import NODE, NodeDirs, StartPlugin, create_allocated_claim
from tests.support.cdi_rules import assert_valid_cdi

pytestmark = pytest.mark.gpu

DRIVER = "gpu.accel-dra.dev"
MIG_MINORS = Path("/proc/driver/nvidia-caps/mig-minors")


@pytest.fixture(scope="module")
def backend() -> Iterator[NvmlBackend]:
    nvml = NvmlBackend(driver_root=DRIVER_ROOT if DRIVER_ROOT != "/" else None)
    yield nvml
    nvml.close()


@pytest.fixture(scope="module")
def mig_gpu(backend: NvmlBackend) -> Gpu:
    """A GPU with MIG mode enabled and MIG profiles, one without instances where there is one."""
    candidates = [g for g in backend.discover().gpus if g.mig_enabled and g.mig_profiles]
    if not candidates:
        pytest.skip("no GPU has MIG mode enabled (the tests never change MIG mode: nvidia-smi -i N -mig 1)")
    return next((g for g in candidates if not g.mig_devices), candidates[0])


def comparable(profile: MigProfile) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(profile).items() if k != "index"}


def test_nvml_profiles_and_placements_are_what_the_fake_tables_say(mig_gpu: Gpu) -> None:
    """Every profile has placements; on an A100 or H100 the whole table is NVML's (the fake GPUs' rules)."""
    assert all(p.placements for p in mig_gpu.mig_profiles), mig_gpu.mig_profiles
    print(json.dumps([comparable(p) for p in mig_gpu.mig_profiles], default=str, indent=1))
    table = table_for_product(mig_gpu.product_name)
    if table is None:
        pytest.skip(f"{mig_gpu.product_name}: no fake table describes it (profiles printed above)")
    found = {p.name: comparable(p) for p in mig_gpu.mig_profiles}
    expected = {p.name: comparable(p) for p in TABLES[table]}
    assert found == expected, f"{mig_gpu.product_name} differs from driver/devices/migtables.py ({table})"


def free_slot(backend: NvmlBackend, gpu: Gpu) -> tuple[MigProfile, MigPlacement]:
    """The smallest profile at a placement no existing GPU instance touches."""
    taken = {
        s
        for i in backend.gpu_instances(gpu.uuid)
        for s in range(i.placement.start, i.placement.start + i.placement.size)
    }
    for profile in sorted(gpu.mig_profiles, key=lambda p: (p.compute_slices, p.memory_bytes, p.index)):
        for placement in profile.placements:
            if not taken & set(range(placement.start, placement.start + placement.size)):
                return profile, placement
    pytest.skip(f"GPU {gpu.uuid}: every placement is taken by existing instances")


def test_the_nvml_backend_creates_and_destroys_an_instance(backend: NvmlBackend, mig_gpu: Gpu) -> None:
    profile, placement = free_slot(backend, mig_gpu)
    try:
        created = backend.create_gpu_instance(mig_gpu.uuid, profile, placement)
    except MigError as err:
        if "Permission" in str(err):
            pytest.skip(f"creating MIG instances needs root and the MIG configuration capability: {err}")
        raise
    try:
        assert (created.placement, created.profile_id, created.devices) == (placement, profile.id, ())
        mig = backend.create_compute_instance(mig_gpu.uuid, created)
        assert mig.uuid.startswith("MIG-")
        assert (mig.profile, mig.gpu_instance_id, mig.placement) == (profile.name, created.id, placement)
        (listed,) = [i for i in backend.gpu_instances(mig_gpu.uuid) if i.id == created.id]
        assert listed.devices == (mig,)
        # The exporter's next reading lists it.
        assert mig.uuid in {m.uuid for m in backend.sample(mig_gpu.uuid).mig_devices or ()}
        # The capability numbers the driver assigned are those the simulated nodes use.
        if MIG_MINORS.exists():
            minors = parse_mig_minors(MIG_MINORS.read_text())
            assert mig_gpu.minor is not None and mig.compute_instance_id is not None
            prefix = f"gpu{mig_gpu.minor}/gi{created.id}"
            assert minors[f"{prefix}/access"] == mig_minor(mig_gpu.minor, created.id)
            assert minors[f"{prefix}/ci{mig.compute_instance_id}/access"] == mig_minor(
                mig_gpu.minor, created.id, mig.compute_instance_id
            )
        backend.destroy_compute_instance(mig_gpu.uuid, created.id, mig.compute_instance_id or 0)
    finally:
        with_ci = [i for i in backend.gpu_instances(mig_gpu.uuid) if i.id == created.id]
        for instance in with_ci:
            for device in instance.devices:
                backend.destroy_compute_instance(mig_gpu.uuid, instance.id, device.compute_instance_id or 0)
            backend.destroy_gpu_instance(mig_gpu.uuid, instance.id)
    assert all(i.id != created.id for i in backend.gpu_instances(mig_gpu.uuid))


def instances(backend: NvmlBackend, gpu: Gpu) -> list[GpuInstance]:
    return backend.gpu_instances(gpu.uuid)


async def test_the_plugin_creates_the_instance_of_a_claim_and_destroys_it(
    *,
    backend: NvmlBackend,
    mig_gpu: Gpu,
    apiserver: SimApiServer,
    kube: KubeClient,
    kubelet: SimKubelet,
    start_plugin: StartPlugin,
    node_dirs: NodeDirs,
) -> None:
    if instances(backend, mig_gpu):
        pytest.skip(f"GPU {mig_gpu.uuid} has MIG instances; a plugin in dynamic mode would destroy them")
    profile, placement = free_slot(backend, mig_gpu)
    process = await start_plugin(
        backend="nvml",
        extra=("--driver-root", DRIVER_ROOT, "--mig-mode", f"static,{mig_gpu.pci_bus_id}=dynamic"),
    )
    await process.wait_log("registered with kubelet", timeout=60)
    slices = await apiserver.wait_for(lambda _store: current_slices(apiserver), timeout=30)
    assert slices is not None
    name = f"{mig_gpu.name}-mig-{profile.name.replace('.', '-').replace('+', '-')}-{placement.start}"
    assert name in {d["name"] for s in slices for d in s["spec"].get("devices") or []}
    claim = await create_allocated_claim(
        kube, "mig-validation", [{"request": "gpu", "driver": DRIVER, "pool": NODE, "device": name}]
    )
    ref = ClaimRef(claim["metadata"]["namespace"], claim["metadata"]["uid"], claim["metadata"]["name"])
    try:
        await kubelet.prepare(DRIVER, [ref])
        (instance,) = instances(backend, mig_gpu)
        assert (instance.placement, instance.profile_id) == (placement, profile.id)
        spec = json.loads((node_dirs.cdi / f"k8s.{DRIVER}-gpu_{ref.uid}.json").read_text())
        assert_valid_cdi(spec)
        nodes = [n["path"] for n in spec["devices"][0]["containerEdits"]["deviceNodes"]]
        if MIG_MINORS.exists():  # the capability numbers of the instance (a host with MIG has the file)
            assert any(p.startswith("/dev/nvidia-caps/nvidia-cap") for p in nodes), nodes
        assert f"={instance.devices[0].uuid}" in " ".join(spec["devices"][0]["containerEdits"]["env"])
    finally:
        await kubelet.unprepare(DRIVER, [ref])
    assert instances(backend, mig_gpu) == []
    assert await process.terminate() == 0, process.output()
