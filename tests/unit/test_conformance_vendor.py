"""Vendor settings: presets, vendor files (validated against the schema) and command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from driver.conformance.vendor import (
    DEFAULT_IDENTITY_LABELS,
    PRESETS,
    VendorError,
    load_vendor,
    with_overrides,
)


def test_presets_describe_their_driver_stacks() -> None:
    ours, nvidia, sandbox = load_vendor("accel-dra"), load_vendor("nvidia"), load_vendor("sandbox")
    assert (ours.driver_name, ours.device_class) == ("gpu.accel-dra.dev", "gpu.accel-dra.dev")
    assert ours.metrics.utilization == "hw_gpu_utilization_ratio"
    assert ours.interconnect_attribute == "nvlinkDomain"
    assert ours.load.command is None  # a real cluster needs a vendor-provided load
    assert (nvidia.driver_name, nvidia.device_class, nvidia.device_glob) == (
        "gpu.nvidia.com",
        "gpu.nvidia.com",
        "/dev/nvidia[0-9]*",
    )
    assert (nvidia.metrics.utilization, nvidia.metrics.memory) == (
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
    )
    assert (nvidia.metrics.namespace, nvidia.metrics.service, nvidia.metrics.port) == (
        "gpu-operator",
        "nvidia-dcgm-exporter",
        9400,
    )
    assert nvidia.tolerations[0]["key"] == "nvidia.com/gpu"
    assert nvidia.interconnect_attribute is None and nvidia.load.command is None
    assert sandbox.driver_name == ours.driver_name
    assert sandbox.load.command is not None and "gpu-load" in sandbox.load.command
    assert set(PRESETS) == {"accel-dra", "nvidia", "sandbox"}


def test_a_vendor_file_overrides_its_preset(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(
        "preset: nvidia\n"
        "driverName: gpu.acme.example\n"
        "metrics: {namespace: monitoring, service: acme-exporter, utilization: null}\n"
        "load: {image: registry.example/burn:1, command: 'exec /burn --seconds 60'}\n"
        "notApplicable: {gpu_sharing: 'the hardware has no sharing mode'}\n"
        "profileDrivers: ['*']\n"
    )
    vendor = load_vendor(str(path))
    assert vendor.name == "acme"
    assert (vendor.driver_name, vendor.device_class) == ("gpu.acme.example", "gpu.acme.example")
    assert (vendor.metrics.namespace, vendor.metrics.service) == ("monitoring", "acme-exporter")
    assert vendor.metrics.utilization is None  # auto-detect
    assert vendor.metrics.memory == "DCGM_FI_DEV_FB_USED"  # from the preset
    assert vendor.metrics.identity_labels == DEFAULT_IDENTITY_LABELS
    assert (vendor.load.image, vendor.load.command) == ("registry.example/burn:1", "exec /burn --seconds 60")
    assert vendor.not_applicable == {"gpu_sharing": "the hardware has no sharing mode"}
    assert vendor.drivers_to_profile == ("*",)
    assert vendor.versions.tool == "nvidia-smi"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("metrics: {port: '9400'}\n", r"metrics\.port: '9400' is not of type 'integer'"),
        ("colour: blue\n", r"\(top\): Additional properties are not allowed \('colour' was unexpected\)"),
        ("deviceGlob: '/dev/nvidia*; rm -rf /'\n", "deviceGlob .* must be an absolute path glob"),
        ("preset: amd\n", r"preset: 'amd' is not one of"),
        ("- a list\n", "a vendor file is a mapping"),
    ],
)
def test_bad_vendor_files_name_the_setting(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(content)
    with pytest.raises(VendorError, match=message):
        load_vendor(str(path))


def test_unknown_presets_and_missing_files_are_reported() -> None:
    with pytest.raises(VendorError, match=r"not a preset .* and not a readable file"):
        load_vendor("/nonexistent/vendor.yaml")


def test_command_line_overrides() -> None:
    vendor = with_overrides(
        load_vendor("accel-dra"),
        {
            "driver_name": "gpu.other.example",
            "metrics.port": 9500,
            "load.command": "exec burn",
            "probe_image": None,
        },
    )
    assert (vendor.driver_name, vendor.device_class) == ("gpu.other.example", "gpu.other.example")
    assert vendor.metrics.port == 9500 and vendor.metrics.service == "accel-dra-metrics"
    assert vendor.load.command == "exec burn"
    assert vendor.probe_image == "ubuntu:24.04"
