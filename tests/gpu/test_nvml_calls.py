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
