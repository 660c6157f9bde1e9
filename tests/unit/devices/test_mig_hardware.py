"""MIG hardware facts: the profile tables, the fake GPUs' instance rules, NVML's MIG calls, the MIG modes."""

from __future__ import annotations

import json
from pathlib import Path

import pynvml
import pytest

from driver.devices.backend import open_backend
from driver.devices.fake import FakeBackend, ProfileError, parse_profile
from driver.devices.mig import MigControl, MigError
from driver.devices.migmode import MigModes, apply_mig_modes, parse_mig_modes
from driver.devices.migtables import TABLES, table_for_product
from driver.devices.model import (
    Gpu,
    Inventory,
    MigPlacement,
    dynamic_devices,
    full_mig_slot,
    mig_compute_slices,
    mig_memory_slices,
)
from driver.devices.nvml import NvmlBackend
from tests.support import paths
from tests.unit.devices.test_devices_nvml import FakeNvml, make_sysfs

MiB = 1 << 20


def dynamic_backend(tmp_path: Path | None = None) -> FakeBackend:
    backend = open_backend("fake:mig-dynamic", node_name="n", state_dir=str(tmp_path) if tmp_path else None)
    assert isinstance(backend, FakeBackend)
    return backend


def a100(backend: FakeBackend) -> Gpu:
    return backend.discover().gpus[1]


# -- the tables ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_table_cuts_8_memory_and_7_compute_slices(table: str) -> None:
    gpu = Gpu(uuid="GPU-x", mig_enabled=True, mig_profiles=TABLES[table])
    assert (mig_memory_slices(gpu), mig_compute_slices(gpu)) == (8, 7)
    full = full_mig_slot(gpu)
    assert full is not None and full.profile.name.startswith("7g.") and full.placement == MigPlacement(0, 8)
    for profile in TABLES[table]:
        sizes = {p.size for p in profile.placements}
        assert len(sizes) == 1, profile.name  # one placement size per profile
        assert all(p.start >= 0 and p.start + p.size <= 8 for p in profile.placements)
        assert profile.instance_count <= len(profile.placements)
        assert profile.name.startswith(f"{profile.compute_slices}g.")
        # A full-size instance has every engine the smaller ones take.
        assert all(n <= full.profile.engines()[e] for e, n in profile.engines().items())


def test_table_facts_of_the_a100_40gb() -> None:
    by_name = {p.name: p for p in TABLES["a100-40gb"]}
    assert {n: (p.id, p.memory_bytes // MiB, len(p.placements)) for n, p in by_name.items()} == {
        "1g.5gb": (19, 4864, 7),
        "1g.5gb+me": (20, 4864, 7),
        "1g.10gb": (15, 9856, 4),
        "2g.10gb": (14, 9856, 3),
        "3g.20gb": (9, 19968, 2),
        "4g.20gb": (5, 19968, 1),
        "7g.40gb": (0, 40192, 1),
    }
    assert [p.start for p in by_name["3g.20gb"].placements] == [0, 4]
    assert by_name["1g.5gb+me"].instance_count == 1 and by_name["1g.5gb+me"].ofa_engines == 1


def test_tables_are_chosen_by_product_name() -> None:
    assert table_for_product("NVIDIA A100-SXM4-40GB") == "a100-40gb"
    assert table_for_product("NVIDIA A100-SXM4-80GB") == "a100-80gb"
    assert table_for_product("NVIDIA A100 80GB PCIe") == "a100-80gb"
    assert table_for_product("NVIDIA H100 80GB HBM3") == "h100-80gb"
    assert table_for_product("NVIDIA L4") is None


def test_a_dynamic_gpu_offers_the_whole_gpu_and_every_placement() -> None:
    gpu = a100(dynamic_backend())
    devices = dynamic_devices(gpu)
    assert [d.name for d in devices][:3] == [
        "gpu-0000-0f-00-0",
        "gpu-0000-0f-00-0-mig-1g-5gb-0",
        "gpu-0000-0f-00-0-mig-1g-5gb-1",
    ]
    assert len(devices) == 1 + 7 + 3 + 2 + 1 + 1 + 7 + 4
    whole = devices[0]
    assert whole.kind == "gpu" and whole.memory_bytes == 40192 * MiB and whole.uuid == gpu.uuid
    slot = next(d for d in devices if d.name.endswith("-mig-1g-10gb-6"))
    assert slot.kind == "mig" and slot.memory_bytes == 9856 * MiB
    assert slot.slot is not None and list(slot.slot.memory_slices) == [6, 7]


def test_a_profile_file_naming_a_profile_its_gpu_lacks_is_refused() -> None:
    text = """
gpus:
  - productName: NVIDIA A100-SXM4-40GB
    pciBusID: "0000:07:00.0"
    memory: 40960Mi
    mig:
      enabled: true
      devices:
        - {profile: 1g.10gb+me, memory: 9856Mi, gpuInstance: 7, computeInstance: 0, placement: {start: 0, size: 1}}
"""
    with pytest.raises(ProfileError, match=r"mig.devices\[0\].profile: '1g.10gb\+me' is not a MIG profile"):
        parse_profile(text, "t.yaml")


# -- the fake GPUs' instance rules ---------------------------------------------------------------------------


def profile_named(gpu: Gpu, name: str) -> object:
    return next(p for p in gpu.mig_profiles if p.name == name)


def create(backend: FakeBackend, name: str, start: int) -> object:
    gpu = a100(backend)
    profile = next(p for p in gpu.mig_profiles if p.name == name)
    placement = next(p for p in profile.placements if p.start == start)
    instance = backend.create_gpu_instance(gpu.uuid, profile, placement)
    return backend.create_compute_instance(gpu.uuid, instance)


def test_the_fake_backend_is_a_mig_control() -> None:
    assert isinstance(dynamic_backend(), MigControl)
    assert isinstance(NvmlBackend(nvml=FakeNvml(Inventory(gpus=()))), MigControl)


def test_instances_go_only_where_nvml_would_put_them() -> None:
    backend = dynamic_backend()
    gpu = a100(backend)
    three = next(p for p in gpu.mig_profiles if p.name == "3g.20gb")
    with pytest.raises(MigError, match=r"Invalid Argument \(3g.20gb cannot start at memory slice 2\)"):
        backend.create_gpu_instance(gpu.uuid, three, MigPlacement(2, 4))
    create(backend, "3g.20gb", 4)
    create(backend, "1g.5gb", 0)
    with pytest.raises(MigError, match=r"Insufficient Resources \(4g.20gb at 0: memory slices taken by GPU"):
        create(backend, "4g.20gb", 0)
    create(backend, "2g.10gb", 2)
    assert sorted(i.placement.start for i in backend.gpu_instances(gpu.uuid)) == [0, 2, 4]


def test_only_one_media_extension_instance_fits() -> None:
    backend = dynamic_backend()
    create(backend, "1g.5gb+me", 0)
    with pytest.raises(MigError, match=r"at most 1 1g.5gb\+me instance"):
        create(backend, "1g.5gb+me", 1)


def test_gpu_instance_ids_come_from_nvmls_ranges_and_uuids_change_per_creation() -> None:
    backend = dynamic_backend()
    first = create(backend, "1g.5gb", 0)
    second = create(backend, "1g.5gb", 1)
    big = create(backend, "3g.20gb", 4)
    assert [first.gpu_instance_id, second.gpu_instance_id, big.gpu_instance_id] == [7, 8, 1]
    uuid = first.uuid
    backend.destroy_compute_instance(a100(backend).uuid, 7, 0)
    backend.destroy_gpu_instance(a100(backend).uuid, 7)
    assert create(backend, "1g.5gb", 0).uuid != uuid


def test_instances_are_shared_through_the_state_dir_and_reported_everywhere(tmp_path: Path) -> None:
    plugin, exporter = dynamic_backend(tmp_path), dynamic_backend(tmp_path)
    mig = create(plugin, "2g.10gb", 4)
    gpu = a100(exporter)
    assert gpu.mig_devices == (mig,)
    assert [d.name for d in exporter.discover().devices if d.gpu.uuid == gpu.uuid] == [
        "gpu-0000-0f-00-0-mig-2g-10gb-4"
    ]
    reading = exporter.sample(gpu.uuid)
    assert reading.mig_devices == (mig,) and [m.uuid for m in reading.mig] == [mig.uuid]
    state = json.loads((tmp_path / "mig" / f"{gpu.uuid}.json").read_text())
    assert state["instances"][0]["profile"] == "2g.10gb"
    assert (tmp_path / "gpus" / mig.uuid / "procs").is_dir()  # where workloads on it report load


def test_a_busy_compute_instance_and_a_gpu_instance_with_one_cannot_be_destroyed(tmp_path: Path) -> None:
    backend = dynamic_backend(tmp_path)
    mig = create(backend, "1g.5gb", 3)
    uuid = a100(backend).uuid
    (tmp_path / "gpus" / mig.uuid / "procs" / "1.json").write_text(json.dumps({"pid": 1}))
    with pytest.raises(MigError, match="In use by another client") as info:
        backend.destroy_compute_instance(uuid, mig.gpu_instance_id, 0)
    assert info.value.in_use
    with pytest.raises(MigError, match="still has compute instances"):
        backend.destroy_gpu_instance(uuid, mig.gpu_instance_id)
    (tmp_path / "gpus" / mig.uuid / "procs" / "1.json").unlink()
    backend.destroy_compute_instance(uuid, mig.gpu_instance_id, 0)
    backend.destroy_gpu_instance(uuid, mig.gpu_instance_id)
    with pytest.raises(MigError) as gone:
        backend.destroy_gpu_instance(uuid, mig.gpu_instance_id)
    assert gone.value.not_found
    assert not (tmp_path / "gpus" / mig.uuid).exists()


def test_a_gpu_without_mig_has_no_instance_calls() -> None:
    backend = open_backend("fake:dgx-h100")
    assert isinstance(backend, FakeBackend)
    with pytest.raises(MigError, match="MIG calls: Not Supported"):
        backend.gpu_instances(backend.discover().gpus[0].uuid)


# -- NVML's calls -------------------------------------------------------------------------------------------


def nvml_backend(tmp_path: Path) -> tuple[NvmlBackend, FakeNvml, Gpu]:
    inventory = dynamic_backend().discover()
    nvml = FakeNvml(inventory)
    backend = NvmlBackend(sysfs_root=make_sysfs(tmp_path / "sys", inventory), nvml=nvml)
    return backend, nvml, inventory.gpus[2]  # the H100


def test_nvml_discovery_reads_profiles_and_placements(tmp_path: Path) -> None:
    backend, _, h100 = nvml_backend(tmp_path)
    found = backend.discover()
    assert found.gpus[2].mig_profiles == TABLES["h100-80gb"]
    assert found.gpus[2].mig_profiles == h100.mig_profiles


def test_nvml_creates_the_full_compute_instance_and_destroys_in_order(tmp_path: Path) -> None:
    backend, nvml, h100 = nvml_backend(tmp_path)
    backend.discover()
    two = next(p for p in h100.mig_profiles if p.name == "2g.20gb")
    nvml.calls.clear()
    gi = backend.create_gpu_instance(h100.uuid, two, MigPlacement(2, 2))
    assert (gi.placement, gi.profile_id, gi.devices) == (MigPlacement(2, 2), 14, ())
    mig = backend.create_compute_instance(h100.uuid, gi)
    assert (mig.profile, mig.gpu_instance_id, mig.compute_instance_id) == ("2g.20gb", gi.id, 0)
    assert "nvmlGpuInstanceCreateComputeInstance" in nvml.calls  # with the 2-slice profile (asserted there)
    (listed,) = backend.gpu_instances(h100.uuid)
    assert listed.devices == (mig,) and listed.placement == MigPlacement(2, 2)
    # The exporter's next reading sees the new MIG device.
    assert [m.uuid for m in backend.sample(h100.uuid).mig_devices or ()] == [mig.uuid]
    nvml.calls.clear()
    backend.destroy_compute_instance(h100.uuid, gi.id, 0)
    backend.destroy_gpu_instance(h100.uuid, gi.id)
    assert [c for c in nvml.calls if "Destroy" in c] == [
        "nvmlComputeInstanceDestroy",
        "nvmlGpuInstanceDestroy",
    ]
    assert backend.gpu_instances(h100.uuid) == []
    backend.close()


def test_nvml_errors_become_mig_errors_naming_gpu_and_call(tmp_path: Path) -> None:
    backend, _, h100 = nvml_backend(tmp_path)
    three = next(p for p in h100.mig_profiles if p.name == "3g.40gb")
    backend.create_gpu_instance(h100.uuid, three, MigPlacement(0, 4))
    with pytest.raises(MigError, match=rf"GPU {h100.uuid}: nvmlDeviceCreateGpuInstanceWithPlacement: "):
        backend.create_gpu_instance(h100.uuid, three, MigPlacement(0, 4))
    with pytest.raises(MigError) as info:
        backend.destroy_gpu_instance(h100.uuid, 13)
    assert info.value.not_found
    assert isinstance(info.value.__cause__, pynvml.NVMLError_NotFound)
    backend.close()


# -- modes ----------------------------------------------------------------------------------------------------


def test_mig_mode_flag_syntax() -> None:
    assert parse_mig_modes("dynamic") == MigModes("dynamic")
    modes = parse_mig_modes("static, 0000:0F:00.0=dynamic,GPU-ABC=off")
    assert modes.default == "static" and dict(modes.per_gpu) == {"0000:0f:00.0": "dynamic", "gpu-abc": "off"}
    assert str(modes) == "static,0000:0f:00.0=dynamic,gpu-abc=off"
    assert parse_mig_modes("") == MigModes()
    for bad, error in [
        ("dynamc", "'dynamc' is not a MIG mode"),
        ("static,dynamic", "only the first entry may be a mode alone"),
        ("static,nvidia0=dynamic", "neither a GPU UUID"),
        ("static,0000:0f:00.0=dynamic,0000:0f:00.0=off", "given twice"),
    ]:
        with pytest.raises(ValueError, match=error):
            parse_mig_modes(bad)


def test_modes_decide_what_each_gpu_offers(caplog: pytest.LogCaptureFixture) -> None:
    inventory = dynamic_backend().discover()

    def names(inv: Inventory) -> list[str]:
        return sorted({d.name.split("-mig-")[0] + ("/mig" if "-mig-" in d.name else "") for d in inv.devices})

    assert names(inventory) == ["gpu-0000-07-00-0/mig"]  # static: only the hand-made instances
    dynamic = apply_mig_modes(inventory, parse_mig_modes("dynamic"))
    assert [g.mig_dynamic for g in dynamic.gpus] == [True, True, True]
    off = apply_mig_modes(inventory, parse_mig_modes("off,0000:47:00.0=dynamic"))
    assert names(off) == ["gpu-0000-47-00-0", "gpu-0000-47-00-0/mig"]
    # A GPU without MIG cannot be dynamic: offered whole, with a warning.
    l4 = open_backend("fake:pcie-l4x4").discover()
    assert apply_mig_modes(l4, parse_mig_modes("dynamic")) == l4
    assert "dynamic MIG needs MIG mode enabled" in caplog.text
    apply_mig_modes(l4, parse_mig_modes("static,0000:99:00.0=dynamic"))
    assert "MIG mode set for a GPU this node does not have" in caplog.text


def test_docs_show_the_tables() -> None:
    from driver.devices.migtables import markdown_table

    doc = (paths.DOCS / "mig.md").read_text()
    for table in TABLES:
        assert markdown_table(table) in doc, f"docs/mig.md: regenerate the {table} table"
