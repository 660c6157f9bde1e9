"""The gpu test set's own helpers, on any machine: nvidia-smi parsers, printed-form conversions, the NVML
report's log summary and the CDI host checks. (Not marked ``gpu``: these need no GPU, so they run in CI and
a GPU session does not spend its time finding a parser bug.)

Sample outputs follow the layouts nvidia-smi prints (tab-separated ``topo -m`` matrix, indented ``Link N:``
lines); UUIDs and numbers are made up.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driver.devices.model import Gpu, Inventory
from driver.devices.nvml import NvmlBackend
from driver.log import setup
from tests.gpu import hostcheck, nvml_report, smi
from tests.unit.devices.test_devices_nvml import FakeNvml

UUID0 = "GPU-4b5e3e2a-8d0e-4c6f-9a51-2f7c0d9e1b34"
UUID1 = "GPU-0c1d2e3f-1111-2222-3333-444455556666"


def test_query_csv_rows_become_gpus() -> None:
    text = (
        f"0, {UUID0}, NVIDIA H100 80GB HBM3, 81559, 00000000:18:00.0, 580.65.06, 9.0, Disabled\n"
        f"1, {UUID1}, NVIDIA L4, 23034, 00000000:3B:00.0, 580.65.06, 8.9, [N/A]\n"
    )
    first, second = smi.parse_query_csv(text)
    assert first == smi.SmiGpu(
        0, UUID0, "NVIDIA H100 80GB HBM3", 81559, "00000000:18:00.0", "580.65.06", "9.0", "Disabled"
    )
    assert (second.index, second.pci_bus_id, second.compute_cap, second.mig_mode) == (
        1,
        "00000000:3B:00.0",
        "8.9",
        None,
    )


def test_query_csv_rejects_rows_it_cannot_read() -> None:
    with pytest.raises(smi.SmiError, match="fields"):
        smi.parse_query_csv("0, GPU-x, name\n")
    with pytest.raises(smi.SmiError, match=r"memory\.total"):
        smi.parse_query_csv(f"0, {UUID0}, H100, [N/A], 00000000:18:00.0, 580.65.06, 9.0, Disabled\n")


def test_printed_forms_convert_to_published_forms() -> None:
    assert smi.k8s_pci_bus_id("00000000:3B:00.0") == "0000:3b:00.0"
    assert smi.k8s_pci_bus_id("0000:c1:00.1") == "0000:c1:00.1"
    assert smi.k8s_pci_bus_id("10000:01:00.0") is None  # Intel VMD domain: no standard form
    assert smi.device_name("00000000:18:00.0", UUID0) == "gpu-0000-18-00-0"
    assert smi.device_name("10000:01:00.0", UUID0) == "gpu-4b5e3e2a-8d0e-4c6f-9a51-2f7c0d9e1b34"
    assert smi.semver("580.65.06") == "580.65.6"
    assert smi.semver("9.0") == "9.0.0"
    assert smi.semver("13") == "13.0.0"
    assert smi.squash("NVIDIA RTX") == smi.squash("NvidiaRTX")
    assert smi.available("[Not Supported]") is None and smi.available(" 7 ") == "7"
    for bad in ("580.65.06-beta", "1.2.3.4"):
        with pytest.raises(smi.SmiError):
            smi.semver(bad)
    with pytest.raises(smi.SmiError):
        smi.k8s_pci_bus_id("18:00.0")


def test_query_xml_gives_versions_and_per_gpu_details() -> None:
    text = f"""<?xml version="1.0" ?>
<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">
<nvidia_smi_log>
\t<driver_version>580.65.06</driver_version>
\t<cuda_version>13.0</cuda_version>
\t<attached_gpus>2</attached_gpus>
\t<gpu id="00000000:18:00.0">
\t\t<product_name>NVIDIA H100 80GB HBM3</product_name>
\t\t<product_brand>NVIDIA</product_brand>
\t\t<product_architecture>Hopper</product_architecture>
\t\t<uuid>{UUID0}</uuid>
\t\t<minor_number>3</minor_number>
\t</gpu>
\t<gpu id="00000000:3B:00.0">
\t\t<product_brand>NVIDIA RTX</product_brand>
\t\t<uuid>{UUID1}</uuid>
\t\t<minor_number>N/A</minor_number>
\t</gpu>
</nvidia_smi_log>
"""
    report = smi.parse_query_xml(text)
    assert (report.driver_version, report.cuda_version) == ("580.65.06", "13.0")
    assert report.gpus[UUID0] == smi.SmiGpuDetails(UUID0, "NVIDIA", "Hopper", 3)
    assert report.gpus[UUID1] == smi.SmiGpuDetails(UUID1, "NVIDIA RTX", None, None)
    with pytest.raises(smi.SmiError, match="XML"):
        smi.parse_query_xml("Failed to initialize NVML")


def test_nvlink_status_counts_links_per_gpu() -> None:
    text = (
        f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {UUID0})\n"
        "\t Link 0: 26.562 GB/s\n"
        "\t Link 1: <inactive>\n"
        "\t Link 2: 26.562 GB/s\n"
        f"GPU 1: NVIDIA L4 (UUID: {UUID1})\n"
        "NVML: Unable to retrieve NVLink information as all links are inActive\n"
    )
    links = smi.parse_nvlink_status(text)
    assert [(link.index, link.active) for link in links[UUID0]] == [(0, True), (1, False), (2, True)]
    assert links[UUID1] == []
    assert smi.parse_nvlink_status("") == {}


def test_topo_matrix_with_nics_and_a_legend() -> None:
    text = (
        "\tGPU0\tGPU1\tGPU2\tGPU3\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\n"
        "GPU0\t X \tNV6\tNV6\tSYS\tPIX\t0-15\t0\t\tN/A\n"
        "GPU1\tNV6\t X \tNV6\tSYS\tSYS\t0-15\t0\t\tN/A\n"
        "GPU2\tNV6\tNV6\t X \tSYS\tSYS\t16-31\t1\t\tN/A\n"
        "GPU3\tSYS\tSYS\tSYS\t X \tSYS\t16-31\t1\t\tN/A\n"
        "NIC0\tPIX\tSYS\tSYS\tSYS\t X \n"
        "\n"
        "Legend:\n\n"
        "  X    = Self\n"
        "  NV#  = Connection traversing a bonded set of # NVLinks\n"
        "\nNIC Legend:\n\n  NIC0: mlx5_0\n"
    )
    topo = smi.parse_topo_matrix(text)
    assert topo.gpus == ("GPU0", "GPU1", "GPU2", "GPU3")
    assert topo.nvlinks == {
        frozenset(("GPU0", "GPU1")): 6,
        frozenset(("GPU0", "GPU2")): 6,
        frozenset(("GPU1", "GPU2")): 6,
    }
    assert topo.numa_affinity == {"GPU0": "0", "GPU1": "0", "GPU2": "1", "GPU3": "1"}
    assert smi.nvlink_groups(topo) == [frozenset(("GPU0", "GPU1", "GPU2"))]


def test_topo_matrix_of_one_gpu_has_no_nvlink_group() -> None:
    topo = smi.parse_topo_matrix(
        "\x1b[4m\tGPU0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\nGPU0\t X \t0-15\t0\t\tN/A\n"
    )
    assert (topo.gpus, dict(topo.nvlinks), smi.nvlink_groups(topo)) == (("GPU0",), {}, [])
    assert topo.numa_affinity == {"GPU0": "0"}


def test_bridged_pairs_form_separate_groups() -> None:
    text = (
        "\tGPU0\tGPU1\tGPU2\tGPU3\tCPU Affinity\tNUMA Affinity\n"
        "GPU0\t X \tNV4\tPHB\tPHB\t0-7\tN/A\n"
        "GPU1\tNV4\t X \tPHB\tPHB\t0-7\tN/A\n"
        "GPU2\tPHB\tPHB\t X \tNV4\t0-7\tN/A\n"
        "GPU3\tPHB\tPHB\tNV4\t X \t0-7\tN/A\n"
    )
    groups = smi.nvlink_groups(smi.parse_topo_matrix(text))
    assert sorted(map(sorted, groups)) == [["GPU0", "GPU1"], ["GPU2", "GPU3"]]
    with pytest.raises(smi.SmiError, match="GPU0"):
        smi.parse_topo_matrix("No devices were found\n")


# -- the NVML report --------------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The driver's JSON log of this test, as a real process writes it; the root logger is restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    setup("debug", "json", stream=buffer)
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_report_lists_unsupported_calls_once_per_call(tmp_path: Path, json_log: io.StringIO) -> None:
    gpus = (Gpu(uuid=UUID0, pci_bus_id="0000:18:00.0", minor=0), Gpu(uuid=UUID1, pci_bus_id="0000:3b:00.0"))
    fake = FakeNvml(Inventory(gpus=gpus, driver_version="580.65.06", cuda_driver_version="13.0"))
    fake.unsupported.add("nvmlDeviceGetBrand")
    backend = NvmlBackend(sysfs_root=tmp_path, nvml=fake)
    try:
        backend.discover()
    finally:
        backend.close()
    unsupported, failed = nvml_report.summarize(json_log.getvalue() + "not json\n")
    brand = next(e for e in unsupported if e["call"] == "nvmlDeviceGetBrand")
    assert sorted(brand["devices"]) == sorted((UUID0, UUID1))
    assert len(brand["errors"]) == 1
    assert failed == []


def test_report_keeps_failed_calls() -> None:
    line = (
        '{"ts": "t", "level": "warning", "logger": "driver.devices.nvml", "event": "nvml call failed", '
        '"call": "nvmlDeviceGetPciInfo", "device": "GPU-x", "error": "Unknown Error"}\n'
        '{"ts": "t", "level": "warning", "logger": "driver.exporter.collector", "event": "other"}\n'
    )
    assert nvml_report.summarize(line) == (
        [],
        [
            {
                "level": "warning",
                "event": "nvml call failed",
                "call": "nvmlDeviceGetPciInfo",
                "device": "GPU-x",
                "error": "Unknown Error",
            }
        ],
    )


# -- host checks of a CDI spec ----------------------------------------------------------------------


def test_host_checks_find_missing_and_wrong_files(tmp_path: Path) -> None:
    library = tmp_path / "libcuda.so.1"
    library.write_bytes(b"")
    null = os.stat("/dev/null")
    cuda_mount = {"hostPath": str(library), "containerPath": "/usr/lib64/libcuda.so.1"}
    spec: dict[str, Any] = {
        "containerEdits": {
            "deviceNodes": [
                {
                    "path": "/dev/null",
                    "type": "c",
                    "major": os.major(null.st_rdev),
                    "minor": os.minor(null.st_rdev),
                },
                {"path": "/dev/zero", "type": "c", "major": 1, "minor": 99},
                {"path": str(tmp_path / "nvidia-nope"), "type": "c"},
                {"path": "/dev/nvidia0", "hostPath": str(library), "type": "c"},
            ],
            "mounts": [
                cuda_mount,
                {"hostPath": str(tmp_path), "containerPath": "/usr/lib64/libnvidia-ml.so.1"},
                {"hostPath": str(tmp_path / "gone"), "containerPath": "/usr/bin/nvidia-smi"},
            ],
        },
        "devices": [
            {
                "name": "uid-gpu-0000-18-00-0",
                "containerEdits": {
                    "env": [
                        f"ACCEL_DRA_DEVICE_GPU_0000_18_00_0={UUID0}",
                        "ACCEL_DRA_DEVICE_GPU_0000_18_00_0_CLAIM=a/b",
                    ],
                    "deviceNodes": [{"path": "/dev/nvidia250", "type": "c", "major": 195, "minor": 250}],
                },
            }
        ],
    }
    nodes = hostcheck.node_problems(spec)
    assert len(nodes) == 4, nodes  # wrong numbers, missing, a regular file, and the absent /dev/nvidia250
    assert any("/dev/zero is (1, 5) on the host" in p for p in nodes)
    mounts = hostcheck.mount_problems(spec)
    assert [p.split(": ", 1)[1] for p in mounts] == [
        f"mount source {tmp_path} is not a regular file",
        f"mount source {tmp_path / 'gone'} does not exist",
    ]
    assert hostcheck.missing_libraries(spec) == []
    only_cuda = {"containerEdits": {"mounts": [cuda_mount]}}
    assert hostcheck.missing_libraries(only_cuda) == ["libnvidia-ml.so.1"]
    assert hostcheck.device_uuid(spec, "uid-gpu-0000-18-00-0", "gpu-0000-18-00-0") == UUID0
    assert hostcheck.gpu_node_minors(spec, "uid-gpu-0000-18-00-0") == [250]
    assert hostcheck.gpu_node_minors(spec, "other") == []
