"""Device nodes found only in a driver root mounted at another path get the host's path as ``hostPath``:
the container runtime reads ``hostPath`` on the host, where the plugin's mount point does not exist."""

from __future__ import annotations

import os
from pathlib import Path

from driver.devices.fake import load_named_profile
from driver.state.devnodes import HostDeviceNodes


def test_nodes_under_the_driver_root_point_at_its_host_path(tmp_path: Path) -> None:
    host, mounted = tmp_path / "host", tmp_path / "driver-root"
    (host / "dev").mkdir(parents=True)
    (mounted / "dev").mkdir(parents=True)
    os.symlink("/dev/null", host / "dev/nvidiactl")
    os.symlink("/dev/zero", mounted / "dev/nvidia-uvm")  # only in the containerized driver's tree
    os.symlink("/dev/zero", mounted / "dev/nvidia0")
    nodes = HostDeviceNodes(
        driver_root=str(mounted),
        dev_root=str(host),
        proc_root=str(tmp_path / "proc"),
        host_driver_root="/run/nvidia/driver",
    )
    paths = {n["path"]: n.get("hostPath") for n in nodes.control_nodes()}
    assert paths == {
        "/dev/nvidiactl": str(host / "dev/nvidiactl"),  # host /dev as seen here: unchanged
        "/dev/nvidia-uvm": "/run/nvidia/driver/dev/nvidia-uvm",
    }
    gpu = next(
        d for d in load_named_profile("pcie-l4x4", node_name="n").inventory.devices if d.gpu.minor == 0
    )
    assert nodes.device_nodes(gpu)[0]["hostPath"] == "/run/nvidia/driver/dev/nvidia0"


def test_a_driver_root_that_is_the_host_root_needs_no_host_path(tmp_path: Path) -> None:
    mounted = tmp_path / "driver-root"  # the host's / mounted into the plugin's container
    (mounted / "dev").mkdir(parents=True)
    os.symlink("/dev/zero", mounted / "dev/nvidia-uvm")
    nodes = HostDeviceNodes(
        driver_root=str(mounted),
        dev_root=str(tmp_path / "empty"),
        proc_root=str(tmp_path / "proc"),
        host_driver_root="/",
    )
    assert [n for n in nodes.control_nodes() if n["path"] == "/dev/nvidia-uvm"] == [
        {
            "path": "/dev/nvidia-uvm",
            "type": "c",
            "major": os.major(os.stat("/dev/zero").st_rdev),
            "minor": os.minor(os.stat("/dev/zero").st_rdev),
        }
    ]
