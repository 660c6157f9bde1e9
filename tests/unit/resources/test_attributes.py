"""The standard attribute profile: what devices publish, and the checker for any driver's devices."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driver.devices.fake import load_named_profile
from driver.devices.model import FabricInfo, Gpu, Inventory, NvLink
from driver.resources import attributes
from driver.resources.attributes import (
    PROFILE,
    AttributeSpec,
    check_device_profile,
    check_slice,
    device_attributes,
    device_capacity,
    device_entry,
    format_quantity,
    profile_markdown_table,
    to_semver,
)
from tests.support import paths

DRIVER = "gpu.accel-dra.dev"
DOCS = paths.DOCS
K8S = "resource.kubernetes.io"
# The API server's check for version attributes (semver 2.0.0), restated here independently.
STRICT_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)


def entries(profile: str) -> dict[str, dict[str, Any]]:
    inventory = load_named_profile(profile).inventory
    return {d.name: device_entry(d, inventory, DRIVER) for d in inventory.devices}


def attr(entry: dict[str, Any], key: str) -> Any:
    value = entry["attributes"].get(key)
    return None if value is None else next(iter(value.values()))


def test_dgx_h100_attributes() -> None:
    devices = entries("dgx-h100")
    first = devices["gpu-0000-18-00-0"]
    assert first["attributes"] | {"uuid": None} == {
        "type": {"string": "gpu"},
        "uuid": None,
        "productName": {"string": "NVIDIA H100 80GB HBM3"},
        "brand": {"string": "Nvidia"},
        "architecture": {"string": "Hopper"},
        "driverVersion": {"version": "580.65.6"},
        "cudaDriverVersion": {"version": "12.9.0"},
        "cudaComputeCapability": {"version": "9.0.0"},
        f"{K8S}/pciBusID": {"string": "0000:18:00.0"},
        f"{K8S}/pcieRoot": {"string": "pci0000:15"},
        f"{K8S}/numaNode": {"int": 0},
        "nvlinkDomain": first["attributes"]["nvlinkDomain"],
        "nvlinkActiveLinks": {"int": 18},
    }
    assert first["capacity"] == {"memory": {"value": "81559Mi"}}
    assert len({attr(e, "nvlinkDomain") for e in devices.values()}) == 1
    assert [attr(e, f"{K8S}/numaNode") for e in devices.values()] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert all(attr(e, "fabricCliqueID") is None for e in devices.values())


def test_nvlink_pairs_share_a_domain_per_pair() -> None:
    devices = entries("nvlink-pairs")
    domains = [attr(e, "nvlinkDomain") for e in devices.values()]  # ordered by PCI address
    assert domains[0] == domains[1] != domains[2] == domains[3]
    assert {attr(e, "nvlinkActiveLinks") for e in devices.values()} == {12}


def test_pcie_gpus_publish_zero_links_and_no_domain() -> None:
    for entry in entries("pcie-l4x4").values():
        assert attr(entry, "nvlinkActiveLinks") == 0
        assert "nvlinkDomain" not in entry["attributes"]
        assert attr(entry, "architecture") == "Ada Lovelace"
        assert attr(entry, "cudaComputeCapability") == "8.9.0"
        assert entry["capacity"] == {"memory": {"value": "23034Mi"}}


def test_nvl72_publishes_the_fabric_clique() -> None:
    for entry in entries("nvl72-tray").values():
        assert attr(entry, "fabricCliqueID") == "3f2a9c1e-6b7d-4e58-9a0c-d41b8e27f5a6.32766"
        assert attr(entry, "nvlinkDomain") == attr(entry, "fabricCliqueID")
        assert attr(entry, "cudaComputeCapability") == "10.0.0"


def test_mig_devices_carry_parent_profile_and_own_memory() -> None:
    inventory = load_named_profile("mig-a100").inventory
    parent = inventory.gpus[0]
    devices = entries("mig-a100")
    assert {name: (attr(e, "profile"), e["capacity"]["memory"]["value"]) for name, e in devices.items()} == {
        "gpu-0000-07-00-0-mig-1g-5gb-2": ("1g.5gb", "4864Mi"),
        "gpu-0000-07-00-0-mig-1g-5gb-3": ("1g.5gb", "4864Mi"),
        "gpu-0000-07-00-0-mig-2g-10gb-0": ("2g.10gb", "9856Mi"),
        "gpu-0000-07-00-0-mig-3g-20gb-4": ("3g.20gb", "19968Mi"),
    }
    for entry in devices.values():
        assert attr(entry, "type") == "mig"
        assert attr(entry, "parentUUID") == parent.uuid
        assert attr(entry, "uuid").startswith("MIG-")
        assert attr(entry, f"{K8S}/pciBusID") == "0000:07:00.0"
        assert attr(entry, "productName") == "NVIDIA A100-SXM4-40GB"
        assert not {"nvlinkDomain", "nvlinkActiveLinks", "fabricCliqueID"} & set(entry["attributes"])


@pytest.mark.parametrize("profile", ["dgx-h100", "pcie-l4x4", "nvlink-pairs", "nvl72-tray", "mig-a100"])
def test_every_published_device_passes_the_checker(profile: str) -> None:
    for name, entry in entries(profile).items():
        assert check_device_profile(entry, DRIVER) == [], name
        keys = [*entry["attributes"], *entry["capacity"]]
        assert not {"index", "minor"} & set(keys)
        assert len(keys) <= 32


def test_unknown_values_are_omitted() -> None:
    gpu = Gpu(uuid="GPU-a", product_name="", nvlinks=None)
    inventory = Inventory(gpus=(gpu,))
    assert device_attributes(gpu, inventory, DRIVER) == {
        "type": {"string": "gpu"},
        "uuid": {"string": "GPU-a"},
    }
    assert device_capacity(gpu, inventory, DRIVER) == {}
    assert "capacity" not in device_entry(gpu, inventory, DRIVER)
    findings = {
        (f.attribute, f.problem) for f in check_device_profile(device_entry(gpu, inventory, DRIVER), DRIVER)
    }
    assert findings == {
        ("productName", "required attribute is missing"),
        ("driverVersion", "required attribute is missing"),
        (f"{K8S}/pciBusID", "required attribute is missing"),
        ("memory", "required capacity is missing"),
    }


def test_unpublishable_values_are_omitted() -> None:
    gpu = Gpu(uuid="GPU-a", product_name="x" * 65, compute_capability="sm_90")
    inventory = Inventory(gpus=(gpu,), driver_version="R580 beta")
    published = device_attributes(gpu, inventory, DRIVER)
    assert not {"productName", "driverVersion", "cudaComputeCapability"} & set(published)


def test_driver_name_must_be_a_dns_subdomain() -> None:
    gpu = Gpu(uuid="GPU-a")
    with pytest.raises(ValueError, match="not a DNS subdomain"):
        device_attributes(gpu, Inventory(gpus=(gpu,)), "GPU_Driver")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("580.65.06", "580.65.6"),
        ("12.9", "12.9.0"),
        ("9.0", "9.0.0"),
        ("10", "10.0.0"),
        ("550.54.15", "550.54.15"),
        ("1.2.3-rc.1+build.5", "1.2.3-rc.1+build.5"),
        ("v1.2.3", None),
        ("01.2.3-x", None),
        ("580.65.06.01", None),
        ("", None),
        (None, None),
    ],
)
def test_to_semver(raw: str | None, expected: str | None) -> None:
    assert to_semver(raw) == expected
    if expected:
        assert STRICT_SEMVER.match(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (80 << 30, "80Gi"),
        (81559 << 20, "81559Mi"),
        (1536 << 20, "1536Mi"),
        (2 << 40, "2Ti"),
        (1024, "1Ki"),
        (1000, "1k"),  # the API server's canonical form; "1000" would read back as "1k"
        (1500000, "1500k"),
        (1536, "1536"),
        (85520809985, "85520809985"),
        (0, "0"),
    ],
)
def test_format_quantity(value: int, expected: str) -> None:
    from kubernetes.utils import parse_quantity

    assert format_quantity(value) == expected
    assert parse_quantity(expected) == value


gpu_values = st.builds(
    Gpu,
    uuid=st.from_regex(r"GPU-[0-9a-f]{8}", fullmatch=True),
    product_name=st.one_of(st.none(), st.text(max_size=80)),
    brand=st.one_of(st.none(), st.text(max_size=10)),
    architecture=st.one_of(st.none(), st.sampled_from(["Hopper", "Ada Lovelace", ""])),
    compute_capability=st.one_of(
        st.none(), st.from_regex(r"\d{1,2}\.\d{1,2}", fullmatch=True), st.text(max_size=5)
    ),
    memory_bytes=st.one_of(st.none(), st.integers(0, 1 << 50)),
    pci_bus_id=st.one_of(st.none(), st.just("0000:3b:00.0")),
    pcie_root=st.one_of(st.none(), st.just("pci0000:3a")),
    numa_node=st.one_of(st.none(), st.integers(0, 7)),
    nvlinks=st.one_of(
        st.none(),
        st.lists(
            st.builds(
                NvLink,
                index=st.integers(0, 17),
                state=st.sampled_from(["active", "inactive"]),
                remote_type=st.just("switch"),
            ),
            max_size=4,
        ).map(tuple),
    ),
    fabric=st.one_of(
        st.none(),
        st.builds(FabricInfo, cluster_uuid=st.uuids().map(str), clique_id=st.integers(0, 2**32 - 1)),
    ),
)


@settings(max_examples=200)
@given(
    gpu=gpu_values,
    driver_version=st.one_of(st.none(), st.text(max_size=12)),
    cuda=st.one_of(st.none(), st.from_regex(r"\d{1,2}\.\d", fullmatch=True)),
)
def test_whatever_is_published_is_valid(gpu: Gpu, driver_version: str | None, cuda: str | None) -> None:
    """Any model values give attributes the API server and the checker accept; only absences are reported."""
    inventory = Inventory(gpus=(gpu,), driver_version=driver_version, cuda_driver_version=cuda)
    entry = device_entry(gpu, inventory, DRIVER)
    for value in entry["attributes"].values():
        ((kind, inner),) = value.items()
        assert inner != ""
        if kind == "version":
            assert STRICT_SEMVER.match(inner)
    problems = [f for f in check_device_profile(entry, DRIVER) if not f.problem.startswith("required")]
    assert problems == []


# -- the checker on other drivers' devices ------------------------------------------------------------

GOOD: dict[str, Any] = {
    "name": "gpu-0",
    "attributes": {
        "type": {"string": "gpu"},
        "uuid": {"string": "GPU-4b5e3e2a-8d0e-4c6f-9a51-2f7c0d9e1b34"},
        "productName": {"string": "NVIDIA A100-SXM4-40GB"},
        "driverVersion": {"version": "580.126.20"},
        "cudaComputeCapability": {"version": "8.0.0"},
        f"{K8S}/pciBusID": {"string": "0000:07:00.0"},
        f"{K8S}/pcieRoot": {"string": "pci0000:00"},
    },
    "capacity": {"memory": {"value": "40Gi"}},
}


def findings_for(device: dict[str, Any], driver: str = "gpu.nvidia.com") -> set[tuple[str, str, str]]:
    return {(f.device, f.attribute, f.problem) for f in check_device_profile(device, driver)}


def mutated(**changes: Any) -> dict[str, Any]:
    device = copy.deepcopy(GOOD)
    for name, value in changes.items():
        section = "capacity" if name == "memory" else "attributes"
        key = name.replace("__", "/").replace("K8S", K8S)
        if value is None:
            device[section].pop(key)
        else:
            device[section][key] = value
    return device


def test_a_compliant_device_has_no_findings() -> None:
    assert findings_for(GOOD) == set()


@pytest.mark.parametrize(
    ("changes", "attribute", "problem"),
    [
        ({"uuid": None}, "uuid", "required attribute is missing"),
        ({"memory": None}, "memory", "required capacity is missing"),
        ({"K8S__pciBusID": None}, f"{K8S}/pciBusID", "required attribute is missing"),
        ({"productName": {"int": 3}}, "productName", "must be a string attribute, is int"),
        (
            {"driverVersion": {"string": "580.65.06"}},
            "driverVersion",
            "must be a version attribute, is string",
        ),
        (
            {"driverVersion": {"version": "580.65.06"}},
            "driverVersion",
            "not a strict semantic version (MAJOR.MINOR.PATCH, no leading zeros): '580.65.06'",
        ),
        (
            {"cudaComputeCapability": {"version": "8.0"}},
            "cudaComputeCapability",
            "not a strict semantic version (MAJOR.MINOR.PATCH, no leading zeros): '8.0'",
        ),
        (
            # The API server matches the whole string: a trailing newline is not part of a version.
            {"cudaComputeCapability": {"version": "8.0.0\n"}},
            "cudaComputeCapability",
            "not a strict semantic version (MAJOR.MINOR.PATCH, no leading zeros): '8.0.0\\n'",
        ),
        (
            {"K8S__pciBusID": {"string": "00000000:07:00.0"}},
            f"{K8S}/pciBusID",
            "malformed PCI address '00000000:07:00.0': expected lowercase dddd:bb:dd.f",
        ),
        (
            {"K8S__pciBusID": {"string": "0000:3B:00.0"}},
            f"{K8S}/pciBusID",
            "malformed PCI address '0000:3B:00.0': expected lowercase dddd:bb:dd.f",
        ),
        (
            {"K8S__pcieRoot": {"string": "0000:00"}},
            f"{K8S}/pcieRoot",
            "malformed PCIe root '0000:00': expected pci<domain>:<bus> (pci0000:00)",
        ),
        (
            {"K8S__numaNode": {"int": -1}},
            f"{K8S}/numaNode",
            "negative NUMA node -1: omit the attribute when there is no affinity",
        ),
        ({"K8S__numaNode": {"int": True}}, f"{K8S}/numaNode", "int value is not an integer: True"),
        ({"index": {"int": 0}}, "index", "unstable id published as an attribute (changes across reboots)"),
        (
            {"gpu.nvidia.com__minor": {"int": 0}},
            "gpu.nvidia.com/minor",
            "unstable id published as an attribute (changes across reboots)",
        ),
        (
            {"brand": {"string": "Nvidia", "int": 1}},
            "brand",
            "must set exactly one of string, int, bool, version; has ['string', 'int']",
        ),
        ({"brand": {"string": ""}}, "brand", "string value must be a non-empty string: ''"),
        ({"brand": "Nvidia"}, "brand", "not a DeviceAttribute object: 'Nvidia'"),
        ({"memory": {"value": "lots"}}, "memory", "not a quantity: 'lots'"),
        ({"memory": {"value": "-1Gi"}}, "memory", "negative quantity"),
        (
            {"gpu-index": {"int": 0}},
            "gpu-index",
            "not a valid qualified name (C identifier of at most 32 characters, optional domain/)",
        ),
        (
            {"a" * 33: {"int": 0}},
            "a" * 33,
            "not a valid qualified name (C identifier of at most 32 characters, optional domain/)",
        ),
    ],
)
def test_checker_findings(changes: dict[str, Any], attribute: str, problem: str) -> None:
    assert findings_for(mutated(**changes)) == {("gpu-0", attribute, problem)}


def test_driver_domain_attributes_may_be_qualified() -> None:
    device = copy.deepcopy(GOOD)
    device["attributes"] = {
        (k if "/" in k else f"gpu.amd.com/{k}"): v for k, v in device["attributes"].items()
    }
    device["capacity"] = {"gpu.amd.com/memory": device["capacity"]["memory"]}
    assert findings_for(device, "gpu.amd.com") == set()
    # ... but only with the slice's own driver name.
    assert ("gpu-0", "uuid", "required attribute is missing") in findings_for(device, "gpu.intel.com")


def test_mig_devices_need_parent_and_profile() -> None:
    device = mutated(type={"string": "mig"})
    assert findings_for(device) == {
        ("gpu-0", "parentUUID", "required attribute is missing"),
        ("gpu-0", "profile", "required attribute is missing"),
    }


def test_v1beta1_devices_are_checked_too() -> None:
    legacy: dict[str, Any] = {"name": "gpu-0", "basic": {k: v for k, v in GOOD.items() if k != "name"}}
    assert findings_for(legacy) == set()
    del legacy["basic"]["capacity"]
    assert findings_for(legacy) == {("gpu-0", "memory", "required capacity is missing")}


def test_too_many_attributes() -> None:
    device = mutated(**{f"extra{i}": {"int": i} for i in range(30)})
    assert ("gpu-0", "*", "more than 32 attributes and capacities") in findings_for(device)


def test_check_slice_uses_the_slices_driver() -> None:
    bad = mutated(index={"int": 1})
    bad["name"] = "gpu-1"
    slice_json = {"spec": {"driver": "gpu.nvidia.com", "devices": [GOOD, bad]}}
    assert [str(f) for f in check_slice(slice_json)] == [
        "gpu-1: index: unstable id published as an attribute (changes across reboots)"
    ]


# -- the profile data ---------------------------------------------------------------------------------


def test_profile_is_complete_and_consistent() -> None:
    names = [spec.name for spec in PROFILE]
    assert len(names) == len(set(names))
    assert set(names) == set(attributes._VALUES)
    assert not set(attributes.UNSTABLE_IDS) & set(names)
    assert len(PROFILE) <= 32
    for spec in PROFILE:
        assert spec.domain in (None, K8S)
        assert spec.qualified(DRIVER) == (spec.key if spec.domain else f"{DRIVER}/{spec.name}")


@pytest.mark.parametrize("key", ["pci-bus-id", "x" * 33, "example.com/9lives", ""])
def test_attribute_ids_must_be_c_identifiers(key: str) -> None:
    with pytest.raises(ValueError, match="C identifier"):
        AttributeSpec(key.rpartition("/")[2], key, "string", False, "gpu", "", "")


def test_docs_table_matches_the_profile() -> None:
    doc = (DOCS / "attributes.md").read_text()
    assert profile_markdown_table() in doc
