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
from tests.support import paths


def test_presets_describe_their_driver_stacks() -> None:
    ours, nvidia, sandbox = load_vendor("accel-dra"), load_vendor("nvidia"), load_vendor("sandbox")
    assert (ours.driver_name, ours.device_class) == ("gpu.accel-dra.dev", "gpu.accel-dra.dev")
    assert ours.metrics.utilization == "hw_gpu_utilization_ratio"
    assert ours.interconnect_attribute == "nvlinkDomain"
    assert ours.load.command is None  # a real cluster needs a vendor-provided load
    assert (nvidia.driver_name, nvidia.device_class, nvidia.device_globs) == (
        "gpu.nvidia.com",
        "gpu.nvidia.com",
        ("/dev/nvidia[0-9]*",),
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
    assert set(PRESETS) == {"accel-dra", "nvidia", "amd", "intel", "sandbox", "sandbox-amd", "sandbox-intel"}
    assert nvidia.extended_resource == "nvidia.com/gpu"
    assert nvidia.versions.driver_labels == ("nvidia.com/cuda.driver-version.full",)


def test_amd_and_intel_presets_use_their_drivers_names() -> None:
    amd, intel = load_vendor("amd"), load_vendor("intel")
    assert (amd.driver_name, amd.extended_resource) == ("gpu.amd.com", "amd.com/gpu")
    assert amd.device_globs == (
        "/dev/dri/renderD*",
        "/dev/kfd",
    )  # a render node counted, kfd must be absent too
    assert amd.identity_attribute == "resource.kubernetes.io/pciBusID"  # AMD's driver publishes no uuid
    assert amd.versions.driver_labels == ("amd.com/gpu.driver-version",)
    assert amd.bypass_env == {"AMD_VISIBLE_DEVICES": "all"}
    assert "gpu_id" in amd.metrics.identity_labels
    assert (intel.driver_name, intel.extended_resource) == ("gpu.intel.com", "gpu.intel.com/i915")
    assert intel.device_globs == ("/dev/dri/renderD*", "/dev/dri/card*")
    assert intel.product_attribute == "model" and intel.identity_command is None
    assert intel.versions.driver_attributes == () and intel.bypass_env == {}
    for name in ("amd", "intel"):
        assert "nvidia" not in str(load_vendor(name).summary()).lower()  # nothing inherited from NVIDIA


def test_a_vendor_file_without_preset_starts_from_nothing(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text("driverName: gpu.acme.example\ndeviceGlobs: ['/dev/acme[0-9]*', /dev/acmectl]\n")
    vendor = load_vendor(str(path))
    assert (vendor.name, vendor.driver_name, vendor.device_class) == (
        "acme",
        "gpu.acme.example",
        "gpu.acme.example",
    )
    assert vendor.device_globs == ("/dev/acme[0-9]*", "/dev/acmectl")
    assert vendor.identity_command is None and vendor.bypass_env == {} and vendor.health.command is None
    assert vendor.versions.driver_attributes == () and vendor.versions.tool == "vendor tool"
    assert not vendor.metrics.configured and vendor.interconnect_attribute is None
    assert vendor.product_attribute is None and vendor.memory_capacity is None


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
        ("preset: nvidia\nmetrics: {port: '9400'}\n", r"metrics\.port: '9400' is not of type 'integer'"),
        (
            "preset: nvidia\ncolour: blue\n",
            r"\(top\): Additional properties are not allowed \('colour' was unexpected\)",
        ),
        (
            "preset: nvidia\ndeviceGlob: '/dev/nvidia*; rm -rf /'\n",
            "device glob .* must be an absolute path glob",
        ),
        ("preset: rocm\n", r"preset: 'rocm' is not one of"),
        ("driverName: gpu.acme.example\n", r"\(top\): .* is not valid under any of the given schemas"),
        ("deviceGlobs: [/dev/x]\n", r"'driverName' is a required property"),
        ("preset: nvidia\nallocation: device-plugin\nextendedResource: null\n", "needs extendedResource"),
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
            "device_globs": ["/dev/dri/renderD*", "/dev/kfd"],
            "allocation": "device-plugin",
        },
    )
    assert vendor.device_globs == ("/dev/dri/renderD*", "/dev/kfd")
    assert (vendor.allocation, vendor.extended_resource) == ("device-plugin", "nvidia.com/gpu")
    assert (vendor.driver_name, vendor.device_class) == ("gpu.other.example", "gpu.other.example")
    assert vendor.metrics.port == 9500 and vendor.metrics.service == "accel-dra-metrics"
    assert vendor.load.command == "exec burn"
    assert vendor.probe_image == "ubuntu:24.04"


def test_every_vendor_setting_is_documented() -> None:
    from driver.conformance.vendor import vendor_schema

    doc = (paths.DOCS / "conformance.md").read_text()
    schema = vendor_schema()
    names = set(schema["properties"])
    for value in schema["properties"].values():
        names |= set(value.get("properties") or {})
    assert sorted(n for n in names if f"{n}:" not in doc and f"`{n}`" not in doc) == []
    for preset in PRESETS:
        assert f"`{preset}`" in doc


def test_the_documented_vendor_files_load() -> None:
    import re

    import yaml

    from driver.conformance.vendor import vendor_from_mapping

    doc = (paths.DOCS / "conformance.md").read_text()
    files = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    files = [f for f in files if isinstance(f, dict) and ("preset" in f or "driverName" in f)]
    assert len(files) == 2  # the annotated one and the small one
    vendors = [vendor_from_mapping(f) for f in files]
    partitions = vendors[0].sharing.partitions
    assert partitions.identity_command == "nvidia-smi -L | sed -n 's/.*(UUID: \\(MIG-[^)]*\\)).*/\\1/p'"
    assert vendors[0].sharing.time_slicing.config == {
        "apiVersion": "resource.nvidia.com/v1beta1",
        "kind": "GpuConfig",
        "sharing": {"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Long"}},
    }
    assert vendors[1].device_globs == ("/dev/acme[0-9]*", "/dev/acmectl")
