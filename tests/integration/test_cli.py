"""The command line as a user runs it: real subprocesses, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def accel_dra(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driver", *args],
        check=False,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_nvml_backend_without_nvml_fails_clearly(tmp_path: Path) -> None:
    result = accel_dra("discover", "--backend", "nvml")
    assert result.returncode == 1
    assert "NVML is not available" in result.stderr
    plugin = accel_dra(
        "plugin",
        "--backend",
        "nvml",
        "--node-name",
        "n1",
        "--kubeconfig",
        str(tmp_path / "missing"),
        "--plugin-dir",
        str(tmp_path / "p"),
        "--registry-dir",
        str(tmp_path / "r"),
    )
    assert plugin.returncode == 1
    assert "NVML is not available" in plugin.stderr


def test_unknown_backend_is_named() -> None:
    result = accel_dra("discover", "--backend", "magic")
    assert result.returncode == 1
    assert "unknown device backend 'magic'" in result.stderr


def test_discover_output_passes_validate(tmp_path: Path) -> None:
    result = accel_dra("discover", "--backend", "fake:dgx-h100", "--node-name", "gpu-node-1", "-o", "json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    (slice_obj,) = listing["items"]
    assert slice_obj["spec"]["pool"]["name"] == "gpu-node-1"
    assert len(slice_obj["spec"]["devices"]) == 8
    dump = tmp_path / "slices.json"
    dump.write_text(result.stdout)
    check = accel_dra("validate", str(dump))
    assert check.returncode == 0, check.stdout
    assert check.stdout.strip() == "1 ResourceSlice(s), 8 device(s) checked: OK"


def test_validate_reads_the_items_of_a_list_from_the_api(tmp_path: Path) -> None:
    """``GET /apis/resource.k8s.io/v1/resourceslices`` answers a ResourceSliceList whose items carry no kind."""
    listing = json.loads(accel_dra("discover", "--backend", "fake:pcie-l4x4", "-o", "json").stdout)
    items = [{k: v for k, v in s.items() if k not in ("kind", "apiVersion")} for s in listing["items"]]
    dump = tmp_path / "slices.json"
    dump.write_text(
        json.dumps({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSliceList", "items": items})
    )
    check = accel_dra("validate", str(dump))
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "1 ResourceSlice(s), 4 device(s) checked: OK"


def vendor_slice() -> dict[str, object]:
    """Another vendor's v1beta1 slice with typical mistakes."""
    return {
        "apiVersion": "resource.k8s.io/v1beta1",
        "kind": "ResourceSlice",
        "metadata": {"name": "n1-gpu.example.com-abcde"},
        "spec": {
            "driver": "gpu.example.com",
            "nodeName": "n1",
            "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {
                    "name": "gpu-0",
                    "basic": {
                        "attributes": {
                            "index": {"int": 0},
                            "uuid": {"string": "GPU-1"},
                            "productName": {"string": "Example"},
                            "type": {"string": "gpu"},
                            "driverVersion": {"version": "580.65.06"},
                        },
                        "capacity": {"memory": {"value": "80Gi"}},
                    },
                }
            ],
        },
    }


def test_validate_reports_every_problem_with_device_and_attribute(tmp_path: Path) -> None:
    dump = tmp_path / "vendor.yaml"
    dump.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [vendor_slice()]}))
    result = accel_dra("validate", str(dump))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any("attributes[driverVersion].version" in line and "580.65.06" in line for line in lines)
    assert any("device gpu-0: index: unstable id" in line for line in lines)
    assert any(
        "device gpu-0: resource.kubernetes.io/pciBusID: required attribute is missing" in line
        for line in lines
    )
    assert all(
        line.startswith(f"{dump}: ResourceSlice n1-gpu.example.com-abcde (driver gpu.example.com)")
        for line in lines[:-1]
    )
    assert lines[-1].endswith("problem(s)")


def test_validate_api_rules_only_and_stdin() -> None:
    result = accel_dra("validate", "--skip-profile", "-", stdin=json.dumps(vendor_slice()))
    assert result.returncode == 1
    assert "profile" not in result.stdout
    assert "semver" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"), [("{{{", "not valid YAML/JSON"), ("kind: Pod\n", "no ResourceSlice")]
)
def test_validate_input_errors_exit_2(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    result = accel_dra("validate", str(bad))
    assert result.returncode == 2
    assert message in result.stderr


def test_missing_file_exit_2(tmp_path: Path) -> None:
    result = accel_dra("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr


def test_deviceclasses_lists_the_mig_profiles_in_use(tmp_path: Path) -> None:
    dump = tmp_path / "slices.yaml"
    dump.write_text(accel_dra("discover", "--backend", "fake:mig-a100", "--node-name", "n1").stdout)
    values = accel_dra("deviceclasses", str(dump))
    assert values.returncode == 0, values.stderr
    assert yaml.safe_load(values.stdout) == {
        "deviceClasses": {"migProfiles": {"enabled": True, "profiles": ["1g.5gb", "2g.10gb", "3g.20gb"]}}
    }
    objects = accel_dra("deviceclasses", str(dump), "-o", "yaml")
    classes = {c["metadata"]["name"]: c["spec"] for c in yaml.safe_load(objects.stdout)["items"]}
    assert classes["2g.10gb.mig.accel-dra.dev"]["extendedResourceName"] == "nvidia.com/mig-2g.10gb"
    assert len(classes) == 5
    whole = tmp_path / "whole.yaml"
    whole.write_text(accel_dra("discover", "--backend", "fake:dgx-h100", "--node-name", "n1").stdout)
    none = accel_dra("deviceclasses", str(whole))
    assert none.returncode == 0 and "no MIG device of driver gpu.accel-dra.dev" in none.stderr


def test_explain_names_an_extended_resource_nothing_provides(tmp_path: Path) -> None:
    slices = tmp_path / "slices.yaml"
    slices.write_text(accel_dra("discover", "--backend", "fake:dgx-h100", "--node-name", "n1").stdout)
    pod = tmp_path / "pod.yaml"
    container = {"name": "c", "image": "x", "resources": {"limits": {"example.com/fpga": 1}}}
    pod.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "namespace": "ns"},
                "spec": {"containers": [container]},
            }
        )
    )
    result = accel_dra("explain", str(pod), "--slices", str(slices))
    assert result.returncode == 2
    assert "pod p: Insufficient example.com/fpga" in result.stderr


def without_sandbox_extra(*args: str) -> subprocess.CompletedProcess[str]:
    """``accel-dra ARGS`` in a Python where the sandbox extra's packages cannot be imported."""
    code = (
        "import sys\n"
        "from driver.cli import SANDBOX_MODULES, main\n"
        "sys.modules.update(dict.fromkeys(SANDBOX_MODULES))\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ("demo",),
        ("sim", "apiserver", "--help"),
        ("sim", "gpu-load", "--seconds", "1"),
        ("conformance", "run", "--sandbox", "--checklist", "missing.yaml", "--out", "out"),
    ],
)
def test_sandbox_commands_without_the_sandbox_extra_say_how_to_install_it(args: tuple[str, ...]) -> None:
    result = without_sandbox_extra(*args)
    assert result.returncode == 2, result.stderr
    assert "pip install 'accel-dra[sandbox]'" in result.stderr


def test_production_commands_work_without_the_sandbox_extra() -> None:
    for args in (
        ("plugin", "--help"),
        ("exporter", "--help"),
        ("validate", "--help"),
        ("health", "clear", "-h"),
    ):
        result = without_sandbox_extra(*args)
        assert result.returncode == 0, (args, result.stderr)
