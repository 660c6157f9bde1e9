"""No NVML call fails unexpectedly on this machine, and the readings the exporter is judged on exist.

Runs ``python -m tests.gpu.nvml_report`` (discovery plus telemetry samples of every GPU with debug logging)
as its own process. Unsupported calls are allowed -- the backend degrades those facts to unknown, and
hack/gpu-validate.sh lists them in the summary -- but a call that *fails* means the backend calls NVML in a
way this driver does not accept (wrong struct version, wrong argument), and that is a bug.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu

#: Readings every datacenter or workstation GPU reports; the exporter test relies on them.
ESSENTIAL = ("utilization", "memory_used_bytes", "memory_total_bytes", "power_watts", "energy_joules")


def test_nvml_reads_do_not_fail_and_essential_readings_exist() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.gpu.nvml_report"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    print("unsupported NVML calls:", json.dumps(report["unsupported"], indent=1))
    assert report["failed"] == []
    assert report["telemetry_errors"] == {}
    for gpu in report["gpus"]:
        if gpu["mig_enabled"]:
            continue  # utilization is not reported for a MIG-enabled GPU as a whole
        unknown = report["unknown_telemetry"][gpu["uuid"]]
        assert isinstance(unknown, list), f"{gpu['uuid']} could not be sampled: {unknown}"
        assert not set(ESSENTIAL) & set(unknown), (gpu["uuid"], unknown)


#: GPUs with GPU Performance Monitoring (NVML GPM): the profiling readings dcgm-exporter needs DCGM for.
GPM_ARCHITECTURES = ("Hopper", "Blackwell", "Rubin")


def test_gpm_activity_on_gpus_that_have_it() -> None:
    """After two samples a Hopper-or-newer GPU reports SM and tensor activity (per MIG device in MIG mode);
    older GPUs report none, and nothing is shown as 0 instead."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.gpu.nvml_report", "--samples", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for gpu in report["gpus"]:
        activity = report["activity"][gpu["uuid"]]
        if gpu["architecture"] not in GPM_ARCHITECTURES:
            assert activity["gpu"] == [] and all(v == [] for v in activity["mig"].values()), gpu
        elif gpu["mig_enabled"]:
            assert activity["gpu"] == [] and all("graphics" in v for v in activity["mig"].values()), gpu
        else:
            assert {"graphics", "sm", "tensor", "dram"} <= set(activity["gpu"]), gpu
            assert {"pcie/receive", "pcie/transmit"} <= set(activity["throughput"]), gpu
