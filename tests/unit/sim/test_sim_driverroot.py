"""The fake NVIDIA driver root and its nvidia-smi stand-in (run for real: files, symlinks, a subprocess)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from driver.devices.backend import open_backend
from driver.devices.model import Inventory
from driver.sim.driverroot import DriverRoot, create_driver_root, gpu_facts, nvidia_smi_main

DGX = open_backend("fake:dgx-h100").discover()


@pytest.fixture
def root(tmp_path: Path) -> DriverRoot:
    return create_driver_root(tmp_path / "driver-root", DGX)


def smi(root: DriverRoot, dev: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = nvidia_smi_main(list(argv), str(root.facts), dev_dir=str(dev), out=out)
    return code, out.getvalue()


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    """A /dev with the nodes of GPUs minor 1 and 6 (plain files: only existence matters)."""
    path = tmp_path / "dev"
    path.mkdir()
    for name in ("nvidia1", "nvidia6", "nvidiactl"):
        (path / name).touch()
    return path


def test_layout_has_versioned_libraries_with_so1_links_and_an_executable_smi(root: DriverRoot) -> None:
    lib = root.root / "usr/lib/x86_64-linux-gnu"
    names = ["libcuda.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so", "libnvidia-nvvm.so"]
    assert [p.name for p in root.libraries] == [f"{n}.580.65.06" for n in names]
    for name in names:
        assert (lib / f"{name}.580.65.06").is_file()
        assert os.readlink(lib / f"{name}.1") == f"{name}.580.65.06"  # relative, like the driver installer's
    assert root.nvidia_smi == root.root / "usr/bin/nvidia-smi"
    assert os.access(root.nvidia_smi, os.X_OK)
    assert root.nvidia_smi.read_text().splitlines()[0] == f"#!{sys.executable} -S"
    facts = json.loads(root.facts.read_text())
    assert root.facts.parent == root.nvidia_smi.parent
    assert (facts["driverVersion"], facts["cudaVersion"]) == ("580.65.06", "12.9")
    assert [g["pciBusId"] for g in facts["gpus"]][:2] == ["00000000:18:00.0", "00000000:2A:00.0"]
    # Re-creating over an existing root works (the demo may run twice in one directory).
    again = create_driver_root(root.root, DGX)
    assert again.libraries == root.libraries


def test_a_driver_root_needs_a_driver_version() -> None:
    with pytest.raises(ValueError, match="no driver version"):
        gpu_facts(Inventory(gpus=DGX.gpus, driver_version=None))


@pytest.mark.skipif(os.path.exists("/dev/nvidia0"), reason="this host has real NVIDIA device nodes")
def test_generated_script_runs_and_sees_no_gpus_on_a_host_without_device_nodes(root: DriverRoot) -> None:
    result = subprocess.run([str(root.nvidia_smi), "-L"], capture_output=True, text=True, env={}, check=False)
    assert (result.returncode, result.stdout) == (6, "No devices were found\n"), result.stderr


def test_list_shows_only_visible_gpus_numbered_in_pci_order(root: DriverRoot, dev: Path) -> None:
    code, out = smi(root, dev, "-L")
    by_minor = {g.minor: g for g in DGX.gpus}
    assert code == 0
    assert out.splitlines() == [
        f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {by_minor[1].uuid})",
        f"GPU 1: NVIDIA H100 80GB HBM3 (UUID: {by_minor[6].uuid})",
    ]
    (dev / "nvidia6").unlink()
    assert smi(root, dev, "-L")[1].count("GPU ") == 1
    (dev / "nvidia1").unlink()
    assert smi(root, dev, "-L") == (6, "No devices were found\n")


def test_query_formats(root: DriverRoot, dev: Path) -> None:
    fields = "index,uuid,name,memory.total,pci.bus_id,driver_version,compute_cap"
    uuid1 = next(g.uuid for g in DGX.gpus if g.minor == 1)
    code, out = smi(root, dev, f"--query-gpu={fields}", "--format=csv")
    assert code == 0
    assert out.splitlines()[:2] == [
        "index, uuid, name, memory.total [MiB], pci.bus_id, driver_version, compute_cap",
        f"0, {uuid1}, NVIDIA H100 80GB HBM3, 81559 MiB, 00000000:2A:00.0, 580.65.06, 9.0",
    ]
    assert smi(root, dev, "--query-gpu=memory.total,compute_cap", "--format=csv,noheader")[
        1
    ].splitlines() == [
        "81559 MiB, 9.0",
        "81559 MiB, 9.0",
    ]
    assert (
        smi(root, dev, "--query-gpu=memory.total,count", "--format=csv,noheader,nounits")[1]
        == "81559, 2\n" * 2
    )
    header = smi(root, dev, "--query-gpu=memory.total,gpu_uuid", "--format=csv,nounits")[1].splitlines()[0]
    assert header == "memory.total [MiB], gpu_uuid"  # units stay in the header, as with the real tool
    assert (
        smi(root, dev, "-i", "1", "--query-gpu=pci.bus_id", "--format=csv,noheader")[1]
        == "00000000:BA:00.0\n"
    )
    assert smi(root, dev, "-i", uuid1, "--query-gpu=index", "--format=csv,noheader")[1] == "0\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--query-gpu=uuid,bogus", "--format=csv"], 'Field "bogus" is not a valid field to query.'),
        (["--query-gpu=uuid"], "--format option is required"),
        (["--query-gpu=uuid", "--format=xml"], "not a valid format option"),
        (["frobnicate"], "Invalid combination of input arguments"),
    ],
)
def test_bad_arguments_exit_2(root: DriverRoot, dev: Path, argv: list[str], message: str) -> None:
    code, out = smi(root, dev, *argv)
    assert code == 2 and message in out


def test_summary_table_has_the_version_header_and_one_block_per_gpu(root: DriverRoot, dev: Path) -> None:
    code, out = smi(root, dev)
    lines = out.splitlines()
    assert code == 0
    assert "Driver Version: 580.65.06     CUDA Version: 12.9" in lines[2]
    assert lines[2].startswith("| NVIDIA-SMI 580.65.06 ")
    assert {len(line) for line in lines[1:] if line} == {91}  # the real tool's box width
    assert sum("00000000:" in line for line in lines) == 2
    assert "No running processes found" in out


def test_load_comes_from_live_procs_files(
    root: DriverRoot, dev: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uuid = next(g.uuid for g in DGX.gpus if g.minor == 6)
    procs = tmp_path / "state" / "gpus" / uuid / "procs"
    procs.mkdir(parents=True)
    with subprocess.Popen(["true"]) as child:  # a pid that has exited
        child.wait()
    dead_pid = child.pid
    for pid, util, memory in ((os.getpid(), 0.3, 2**30), (dead_pid, 0.5, 2**31)):
        (procs / f"{pid}.json").write_text(
            json.dumps({"pid": pid, "utilization": util, "memory_bytes": memory})
        )
    monkeypatch.setenv("ACCEL_DRA_FAKE_STATE", str(tmp_path / "state"))
    query = smi(
        root, dev, "--query-gpu=index,utilization.gpu,memory.used,memory.free", "--format=csv,noheader"
    )
    assert query[1].splitlines() == ["0, 0 %, 0 MiB, 81559 MiB", "1, 30 %, 1024 MiB, 80535 MiB"]
    table = smi(root, dev)[1]
    assert f" {os.getpid()} " in table and f" {dead_pid} " not in table
    assert "1024MiB /  81559MiB" in table


def test_nvlink_status_and_mig_listing(root: DriverRoot, dev: Path, tmp_path: Path) -> None:
    code, out = smi(root, dev, "nvlink", "-s")
    assert code == 0
    assert out.count("\t Link ") == 36 and "\t Link 17: 26.562 GB/s" in out

    mig = open_backend("fake:mig-a100").discover()
    mig_root = create_driver_root(tmp_path / "mig-root", mig)
    gpu = next(g for g in mig.gpus if g.mig_enabled)
    (dev / f"nvidia{gpu.minor}").touch()
    lines = smi(mig_root, dev, "-L")[1].splitlines()
    start = lines.index(next(line for line in lines if gpu.uuid in line))
    migs = lines[start + 1 : start + 1 + len(gpu.mig_devices)]
    assert [line.split("(UUID: ")[1].rstrip(")") for line in migs] == [m.uuid for m in gpu.mig_devices]
    assert migs[0].startswith(f"  MIG {gpu.mig_devices[0].profile}")
    assert "Device  0:" in migs[0]
