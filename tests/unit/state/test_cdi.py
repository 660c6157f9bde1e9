"""CDI specs: minimal versions, names, content for GPUs and MIG devices, device nodes and driver files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from driver.devices.fake import load_named_profile
from driver.state import cdi
from driver.state.devnodes import (
    HostDeviceNodes,
    SimulatedDeviceNodes,
    parse_mig_minors,
    parse_proc_devices_major,
)
from driver.state.driverfiles import MOUNT_OPTIONS, discover_driver_files, library_dir_of
from driver.state.plan import plan_claim
from tests.support.cdi_rules import assert_valid_cdi, cdi_problems

DRIVER = "gpu.accel-dra.dev"
UID = "3f2b8a5e-1c4d-4e6f-9a7b-2c1d0e9f8a7b"


def spec_with(*, edits: dict[str, Any] | None = None, name: str = "dev", **top: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "cdiVersion": "0.3.0",
        "kind": "vendor.com/gpu",
        "devices": [{"name": name, "containerEdits": edits or {"env": ["A=1"]}}],
    }
    spec.update(top)
    return spec


@pytest.mark.parametrize(
    ("spec", "version"),
    [
        (spec_with(), "0.3.0"),
        (spec_with(edits={"mounts": [{"hostPath": "/a", "containerPath": "/a", "type": "bind"}]}), "0.4.0"),
        (spec_with(edits={"mounts": [{"hostPath": "/a", "containerPath": "/a"}]}), "0.3.0"),
        (spec_with(edits={"deviceNodes": [{"path": "/dev/x", "hostPath": "/run/dev/x"}]}), "0.5.0"),
        (spec_with(name="3f2b-gpu-0"), "0.5.0"),
        (spec_with(annotations={"a": "b"}), "0.6.0"),
        (spec_with(kind="vendor.com/gpu.big"), "0.6.0"),
        (spec_with(containerEdits={"additionalGids": [44]}), "0.7.0"),
        (spec_with(edits={"intelRdt": {"closID": "x"}}), "0.7.0"),
        (spec_with(edits={"netDevices": [{"hostInterfaceName": "eth1", "name": "net1"}]}), "1.1.0"),
        (spec_with(edits={"intelRdt": {"enableMonitoring": True}}), "1.1.0"),
        # The highest requirement wins.
        (spec_with(name="0dev", annotations={"a": "b"}), "0.6.0"),
    ],
)
def test_minimum_version(spec: dict[str, Any], version: str) -> None:
    assert cdi.minimum_version(spec) == version


def test_names_follow_the_contract() -> None:
    assert cdi.kind(DRIVER) == "k8s.gpu.accel-dra.dev/gpu"
    assert cdi.spec_file_name(DRIVER, UID) == f"k8s.gpu.accel-dra.dev-gpu_{UID}.json"
    name = cdi.device_name(UID, "gpu-0000-01-00-0")
    assert name == f"{UID}-gpu-0000-01-00-0"
    assert cdi.qualified_id(DRIVER, name) == f"k8s.gpu.accel-dra.dev/gpu={UID}-gpu-0000-01-00-0"
    assert cdi.valid_kind(cdi.kind(DRIVER))
    assert cdi.valid_device_name(name)
    assert cdi.env_name("gpu-0000-07-00-0-mig-1g-5gb-2") == "ACCEL_DRA_DEVICE_GPU_0000_07_00_0_MIG_1G_5GB_2"
    assert not cdi.valid_kind("k8s.x/")
    assert not cdi.valid_device_name("-a")


def test_the_rules_catch_broken_specs() -> None:
    assert cdi_problems(spec_with()) == []
    assert any("cdiVersion" in p for p in cdi_problems(spec_with(name="0dev")))  # needs 0.5.0
    assert cdi_problems({**spec_with(), "devices": []})
    assert cdi_problems(spec_with(kind="nokind"))
    assert cdi_problems(spec_with(edits={"deviceNodes": [{"path": "/dev/x", "major": 1}]}))
    assert cdi_problems(spec_with(edits={"mounts": [{"hostPath": "/a"}]}))
    assert cdi_problems(spec_with(edits={"unknownEdit": []}))


def claim(results: list[dict[str, Any]], uid: str = UID) -> dict[str, Any]:
    return {
        "metadata": {"name": "train", "namespace": "ml", "uid": uid},
        "status": {"allocation": {"devices": {"results": results}}},
    }


def result(device: str, request: str = "gpu", **extra: Any) -> dict[str, Any]:
    return {"request": request, "driver": DRIVER, "pool": "node-1", "device": device, **extra}


def test_a_gpu_claim_spec() -> None:
    inventory = load_named_profile("pcie-l4x4", node_name="node-1").inventory
    gpu = inventory.devices[2]
    plan = plan_claim(
        claim([result(gpu.name, adminAccess=True)]), driver=DRIVER, pool="node-1", inventory=inventory
    )
    common = {
        "mounts": [
            {"hostPath": "/r/usr/bin/nvidia-smi", "containerPath": "/usr/bin/nvidia-smi", "options": ["ro"]}
        ]
    }
    spec = plan.spec(
        SimulatedDeviceNodes(),
        cdi.merge_edits({"deviceNodes": SimulatedDeviceNodes().control_nodes()}, common),
    )
    assert spec is not None
    assert_valid_cdi(spec)
    assert spec["kind"] == "k8s.gpu.accel-dra.dev/gpu"
    assert spec["cdiVersion"] == "0.5.0"  # the claim UID starts with a digit
    (device,) = spec["devices"]
    assert device["name"] == f"{UID}-{gpu.name}"
    edits = device["containerEdits"]
    assert edits["deviceNodes"] == [
        {"path": f"/dev/nvidia{gpu.gpu.minor}", "type": "c", "major": 195, "minor": gpu.gpu.minor}
    ]
    env = cdi.env_name(gpu.name)
    assert edits["env"] == [
        f"{env}={gpu.uuid}",
        f"{env}_CLAIM=ml/train",
        f"{env}_CLAIM_UID={UID}",
        f"{env}_ADMIN_ACCESS=true",
    ]
    control = {n["path"]: n for n in spec["containerEdits"]["deviceNodes"]}
    assert set(control) == {
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia-modeset",
    }
    assert (control["/dev/nvidiactl"]["major"], control["/dev/nvidiactl"]["minor"]) == (195, 255)
    # No host node to stat: simulated nodes carry numbers (a runtime would fail to stat a missing node).
    assert all("major" in node for node in control.values())
    assert (control["/dev/nvidia-uvm"]["major"], control["/dev/nvidia-uvm-tools"]["minor"]) == (511, 1)
    assert spec["containerEdits"]["mounts"] == common["mounts"]


def test_a_letter_uid_keeps_the_base_version() -> None:
    inventory = load_named_profile("pcie-l4x4", node_name="node-1").inventory
    plan = plan_claim(
        claim([result(inventory.devices[0].name)], uid="a1b2"),
        driver=DRIVER,
        pool="node-1",
        inventory=inventory,
    )
    spec = plan.spec(SimulatedDeviceNodes(), {})
    assert spec is not None
    assert_valid_cdi(spec)
    assert spec["cdiVersion"] == "0.3.0"
    assert "containerEdits" not in spec


def test_mig_devices_get_their_capability_nodes(tmp_path: Path) -> None:
    inventory = load_named_profile("mig-a100", node_name="node-1").inventory
    mig = next(d for d in inventory.devices if d.mig is not None and d.mig.gpu_instance_id == 9)
    proc = tmp_path / "proc"
    (proc / "driver/nvidia-caps").mkdir(parents=True)
    (proc / "driver/nvidia-caps/mig-minors").write_text(
        "config 1\nmonitor 2\ngpu0/gi9/access 84\ngpu0/gi9/ci0/access 85\n"
    )
    (proc / "devices").write_text(
        "Character devices:\n  1 mem\n195 nvidia\n237 nvidia-caps\n\nBlock devices:\n  8 sd\n"
    )
    nodes = HostDeviceNodes(
        driver_root=str(tmp_path / "root"), dev_root=str(tmp_path / "host"), proc_root=str(proc)
    )
    assert nodes.device_nodes(mig) == [
        {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0},
        {"path": "/dev/nvidia-caps/nvidia-cap84", "type": "c", "major": 237, "minor": 84},
        {"path": "/dev/nvidia-caps/nvidia-cap85", "type": "c", "major": 237, "minor": 85},
    ]
    plan = plan_claim(claim([result(mig.name)]), driver=DRIVER, pool="node-1", inventory=inventory)
    spec = plan.spec(nodes, {})
    assert spec is not None
    assert_valid_cdi(spec)
    env = cdi.env_name(mig.name)
    assert f"{env}={mig.uuid}" in spec["devices"][0]["containerEdits"]["env"]
    # Without the proc files (fake profiles): the parent GPU's node only.
    bare = HostDeviceNodes(
        driver_root=str(tmp_path / "root"), dev_root=str(tmp_path / "host"), proc_root=str(tmp_path / "none")
    )
    assert bare.device_nodes(mig) == [{"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}]


def test_proc_parsers() -> None:
    assert parse_mig_minors("gpu1/gi2/access 21\nbroken\n") == {"gpu1/gi2/access": 21}
    text = "Character devices:\n  4 tty\n508 nvidia-uvm\n\nBlock devices:\n508 nvidia-uvm\n"
    assert parse_proc_devices_major(text, "nvidia-uvm") == 508
    assert parse_proc_devices_major(text, "nvidia-caps") is None


def test_host_control_nodes_are_those_that_exist_with_their_real_numbers(tmp_path: Path) -> None:
    host, root = tmp_path / "host", tmp_path / "driver"
    (host / "dev").mkdir(parents=True)
    (root / "dev").mkdir(parents=True)
    # Stand-ins for the NVIDIA nodes: links to real character devices, so stat reports real numbers.
    os.symlink("/dev/null", host / "dev/nvidiactl")
    os.symlink("/dev/zero", root / "dev/nvidia-uvm")  # only in a containerized driver root
    (host / "dev/nvidia-modeset").write_text("")  # not a character device: ignored
    null, zero = os.stat("/dev/null").st_rdev, os.stat("/dev/zero").st_rdev
    nodes = HostDeviceNodes(driver_root=str(root), dev_root=str(host), proc_root=str(tmp_path))
    assert nodes.control_nodes() == [
        {
            "path": "/dev/nvidiactl",
            "type": "c",
            "hostPath": str(host / "dev/nvidiactl"),
            "major": os.major(null),
            "minor": os.minor(null),
        },
        {
            "path": "/dev/nvidia-uvm",
            "type": "c",
            "hostPath": str(root / "dev/nvidia-uvm"),
            "major": os.major(zero),
            "minor": os.minor(zero),
        },
    ]


def make_driver_root(root: Path) -> None:
    lib64 = root / "usr/lib64"
    lib32 = root / "usr/lib"
    bin_dir = root / "usr/bin"
    for d in (lib64, lib32, bin_dir):
        d.mkdir(parents=True)
    for stem in ("libcuda", "libnvidia-ml", "libnvidia-ptxjitcompiler", "libnvidia-nvvm"):
        (lib64 / f"{stem}.so.580.65.06").write_text(stem)
        os.symlink(f"{stem}.so.580.65.06", lib64 / f"{stem}.so.1")
        (lib32 / f"{stem}.so.580.65.06").write_text("32-bit")  # shadowed by lib64
    os.symlink("libcuda.so.1", lib64 / "libcuda.so")  # development link: not mounted
    # An absolute link target refers to the driver root, not the host.
    (lib64 / "libnvidia-cfg.so.580.65.06").write_text("cfg")
    os.symlink("/usr/lib64/libnvidia-cfg.so.580.65.06", lib64 / "libnvidia-cfg.so.1")
    os.symlink("libnvidia-gone.so.1", lib64 / "libnvidia-allocator.so.1")  # dangling: skipped
    (lib64 / "libunrelated.so.1").write_text("")
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    (bin_dir / "other-tool").write_text("")


def test_driver_files_are_found_under_the_driver_root(tmp_path: Path) -> None:
    root = tmp_path / "driver-root"
    make_driver_root(root)
    files = discover_driver_files(root)
    found = {f.container_path: f.host_path for f in files}
    lib = f"{root}/usr/lib64"
    assert found == {
        "/usr/bin/nvidia-smi": f"{root}/usr/bin/nvidia-smi",
        "/usr/lib64/libcuda.so.1": f"{lib}/libcuda.so.580.65.06",
        "/usr/lib64/libcuda.so.580.65.06": f"{lib}/libcuda.so.580.65.06",
        "/usr/lib64/libnvidia-cfg.so.1": f"{lib}/libnvidia-cfg.so.580.65.06",
        "/usr/lib64/libnvidia-cfg.so.580.65.06": f"{lib}/libnvidia-cfg.so.580.65.06",
        "/usr/lib64/libnvidia-ml.so.1": f"{lib}/libnvidia-ml.so.580.65.06",
        "/usr/lib64/libnvidia-ml.so.580.65.06": f"{lib}/libnvidia-ml.so.580.65.06",
        "/usr/lib64/libnvidia-nvvm.so.1": f"{lib}/libnvidia-nvvm.so.580.65.06",
        "/usr/lib64/libnvidia-nvvm.so.580.65.06": f"{lib}/libnvidia-nvvm.so.580.65.06",
        "/usr/lib64/libnvidia-ptxjitcompiler.so.1": f"{lib}/libnvidia-ptxjitcompiler.so.580.65.06",
        "/usr/lib64/libnvidia-ptxjitcompiler.so.580.65.06": f"{lib}/libnvidia-ptxjitcompiler.so.580.65.06",
    }
    for f in files:
        assert stat.S_ISREG(os.lstat(f.host_path).st_mode), "mount sources are regular files"
        assert f.mount() == {
            "hostPath": f.host_path,
            "containerPath": f.container_path,
            "options": list(MOUNT_OPTIONS),
        }
    assert library_dir_of(files, "libnvidia-ml") == lib


def test_debian_layout_and_an_empty_root(tmp_path: Path) -> None:
    root = tmp_path / "deb"
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    (libdir / "libcuda.so.550.54.15").write_text("")
    os.symlink("libcuda.so.550.54.15", libdir / "libcuda.so.1")
    assert [f.container_path for f in discover_driver_files(root)] == [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15",
    ]
    assert discover_driver_files(tmp_path / "missing") == ()


def test_gpu_image_layout_under_usr_local_nvidia(tmp_path: Path) -> None:
    """GPU container images and some cloud images keep the driver in /usr/local/nvidia."""
    root = tmp_path / "img"
    libdir = root / "usr/local/nvidia/lib64"
    libdir.mkdir(parents=True)
    (libdir / "libcuda.so.580.65.06").write_text("")
    os.symlink("libcuda.so.580.65.06", libdir / "libcuda.so.1")
    (root / "usr/local/nvidia/bin").mkdir(parents=True)
    (root / "usr/local/nvidia/bin/nvidia-smi").write_text("")
    assert [f.container_path for f in discover_driver_files(root)] == [
        "/usr/local/nvidia/bin/nvidia-smi",
        "/usr/local/nvidia/lib64/libcuda.so.1",
        "/usr/local/nvidia/lib64/libcuda.so.580.65.06",
    ]


def test_files_are_mounted_from_the_host_path_when_the_root_is_mounted_elsewhere(tmp_path: Path) -> None:
    """The chart mounts the host's / at /driver-root: specs must name host paths, tools run from here."""
    root = tmp_path / "driver-root"
    make_driver_root(root)
    files = discover_driver_files(root, "/")
    smi = next(f for f in files if f.container_path == "/usr/bin/nvidia-smi")
    assert smi.host_path == "/usr/bin/nvidia-smi"
    assert smi.local_path == f"{root}/usr/bin/nvidia-smi"
    assert library_dir_of(files, "libnvidia-ml") == f"{root}/usr/lib64"


def test_the_store_writes_lists_and_removes(tmp_path: Path) -> None:
    store = cdi.CdiStore(tmp_path / "cdi", DRIVER)
    spec = spec_with()
    path = store.write(UID, spec)
    assert path.name == cdi.spec_file_name(DRIVER, UID)
    assert json.loads(path.read_text()) == spec
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    (tmp_path / "cdi" / "k8s.other.dev-gpu_x.json").write_text("{}")  # another driver's spec
    assert store.claim_uids() == [UID]
    assert store.read(UID) == spec
    assert store.remove(UID) is True
    assert store.remove(UID) is False
    assert store.claim_uids() == []
    assert (tmp_path / "cdi" / "k8s.other.dev-gpu_x.json").exists()
