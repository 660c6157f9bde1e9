"""The name rules the driver applies outside the API validators -- the driver name flag, the attribute profile,
node selectors, device names -- are the API layer's (driver.kube.api.names), with the verdicts Kubernetes
gives. Each case names a value at the edge of a rule and says whether it passes.
"""

from __future__ import annotations

from typing import Any

import pytest

from driver.allocation.model import Node, NodeSelectorError, node_selector_matches
from driver.devices.fake import load_named_profile
from driver.flags import ConfigError, check_driver_name
from driver.kube.api.fields import Errors, Path
from driver.kube.api.names import is_dns_label, validate_driver_name
from driver.resources.attributes import check_device_profile, device_attributes

INVENTORY = load_named_profile("pcie-l4x4", node_name="node-1").inventory

DRIVER_NAMES = [
    ("gpu.accel-dra.dev", True),
    ("a" * 63, True),
    ("a" * 64, False),  # driver names stop at 63, not at a subdomain's 253
    ("a." * 31 + "a", True),
    ("Gpu.example.com", False),  # the server lets upper case through; the driver writes its own in lower
    ("-gpu.example.com", False),
    ("gpu..example.com", False),
    ("gpu_example.com", False),
    ("", False),
]


def _flag_accepts(name: str) -> bool:
    try:
        check_driver_name(name)
    except ConfigError:
        return False
    return True


def _profile_accepts(name: str) -> bool:
    try:
        device_attributes(INVENTORY.devices[0], INVENTORY, name)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(("name", "valid"), DRIVER_NAMES)
def test_the_driver_name_flag_and_the_profile_agree(name: str, valid: bool) -> None:
    assert _flag_accepts(name) is valid
    assert _profile_accepts(name) is valid


def test_the_server_checks_driver_names_case_insensitively() -> None:
    out: Errors = []
    validate_driver_name("Gpu.example.com", Path("spec.driver"), out)
    assert out == []


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("gpu.example.com/model", True),
        ("Gpu.example.com/model", False),
        ("a" * 63 + "/model", True),
        ("a" * 64 + "/model", False),
        ("model_2", True),
        ("_" * 32, True),
        ("_" * 33, False),
        ("2model", False),
        ("gpu-index", False),
        ("a/b/model", False),
        ("/model", False),  # the API server: "the domain must not be empty"
    ],
)
def test_the_profile_checks_attribute_keys(key: str, valid: bool) -> None:
    device: dict[str, Any] = {"name": "gpu-0", "attributes": {key: {"int": 1}}}
    bad_key = "not a valid qualified name (C identifier of at most 32 characters, optional domain/)"
    refused = any(f.attribute == key and f.problem == bad_key for f in check_device_profile(device, "x.dev"))
    assert refused is not valid


def _selector_accepts(key: str, value: str) -> bool:
    expression = {"key": key, "operator": "In", "values": [value]}
    try:
        node_selector_matches({"nodeSelectorTerms": [{"matchExpressions": [expression]}]}, Node("n", {}))
    except NodeSelectorError:
        return False
    return True


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("zone", True),
        ("topology.kubernetes.io/zone", True),
        ("Example.com/zone", False),  # the prefix is a lowercase subdomain
        ("a" * 253 + "/zone", True),  # a subdomain's limit is on the whole, not on each label
        ("a" * 254 + "/zone", False),
        ("a." * 126 + "a/zone", True),
        ("a." * 126 + "ab/zone", False),
        ("/zone", False),
        ("example.com/", False),
        ("a/b/zone", False),
        ("Zone_1.x", True),
        ("z" * 63, True),
        ("z" * 64, False),
        ("-zone", False),
        ("", False),
    ],
)
def test_node_selectors_check_label_keys(key: str, valid: bool) -> None:
    assert _selector_accepts(key, "a") is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("", True), ("A-1_b.c", True), ("v" * 63, True), ("v" * 64, False), ("-a", False), ("a b", False)],
)
def test_node_selectors_check_label_values(value: str, valid: bool) -> None:
    assert _selector_accepts("zone", value) is valid


@pytest.mark.parametrize(
    ("name", "valid"),
    [("gpu-0", True), ("0", True), ("g" * 63, True), ("g" * 64, False), ("Gpu-0", False), ("gpu-", False)],
)
def test_device_names_are_dns_labels(name: str, valid: bool) -> None:
    assert is_dns_label(name) is valid
