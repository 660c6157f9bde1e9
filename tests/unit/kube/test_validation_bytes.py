"""Attribute string limits count UTF-8 bytes, as the API server's Go ``len`` does."""

from __future__ import annotations

from driver.kube.api.resourceslice import validate_resource_slice
from driver.resources.attributes import PROFILE, check_device_profile

TM = "\u2122"  # three bytes in UTF-8


def slice_with(value: str) -> dict[str, object]:
    device = {"name": "gpu-0", "attributes": {"productName": {"string": value}}}
    spec = {
        "driver": "gpu.example.com",
        "nodeName": "n",
        "pool": {"name": "n", "generation": 0, "resourceSliceCount": 1},
        "devices": [device],
    }
    return {"metadata": {"name": "s"}, "spec": spec}


def test_a_string_of_63_characters_but_65_bytes_is_too_long() -> None:
    value = "A" * 62 + TM
    assert len(value) == 63
    errors = validate_resource_slice(slice_with(value))
    assert [str(e) for e in errors] == [
        "spec.devices[0].attributes[productName].string: Too long: may not be more than 64 bytes"
    ]


def test_64_bytes_are_allowed() -> None:
    assert validate_resource_slice(slice_with("A" * 61 + TM)) == []
    assert validate_resource_slice(slice_with("A" * 64)) == []


def test_the_profile_check_counts_bytes_too() -> None:
    assert any(spec.name == "productName" for spec in PROFILE)
    device = {"name": "gpu-0", "attributes": {"productName": {"string": "A" * 62 + TM}}}
    findings = [f for f in check_device_profile(device, "gpu.example.com") if f.attribute == "productName"]
    assert [f.problem for f in findings] == ["value longer than 64 bytes"]
