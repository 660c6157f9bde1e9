"""Fake device backends: the named profiles, profile files, schema errors, open_backend."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import yaml

from driver.devices.backend import BackendError, DeviceBackend, open_backend
from driver.devices.fake import FakeBackend, ProfileError, named_profiles, profile_schema
from driver.devices.model import Inventory
from driver.resources.attributes import device_entry
from tests.support import paths

DOCS = paths.DOCS
PROFILES = paths.REPO / "driver" / "devices" / "profiles"
MiB = 1 << 20


def discover(spec: str, **options: str) -> Inventory:
    backend = open_backend(spec, **options)
    try:
        return backend.discover()
    finally:
        backend.close()


def test_named_profiles_are_listed() -> None:
    assert named_profiles() == [
        "dgx-h100",
        "dgx-h100-mig",
        "flex170-2",
        "mi300x-4",
        "mig-a100",
        "mig-dynamic",
        "nvl72-tray",
        "nvlink-pairs",
        "pcie-l40s-snc",
        "pcie-l4x4",
    ]


def test_fake_backend_satisfies_the_protocol() -> None:
    backend = open_backend("fake:pcie-l4x4")
    assert isinstance(backend, DeviceBackend)
    assert isinstance(backend, FakeBackend)
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        backend.discover()


def test_dgx_h100() -> None:
    inventory = discover("fake:dgx-h100")
    assert (inventory.driver_version, inventory.cuda_driver_version) == ("580.65.06", "12.9")
    assert [g.pci_bus_id for g in inventory.gpus] == [
        "0000:18:00.0",
        "0000:2a:00.0",
        "0000:3a:00.0",
        "0000:5d:00.0",
        "0000:9a:00.0",
        "0000:ab:00.0",
        "0000:ba:00.0",
        "0000:db:00.0",
    ]
    for gpu in inventory.gpus:
        assert (gpu.product_name, gpu.architecture, gpu.compute_capability) == (
            "NVIDIA H100 80GB HBM3",
            "Hopper",
            "9.0",
        )
        assert gpu.memory_bytes == 81559 * MiB
        assert gpu.active_links == 18
        assert {link.remote_type for link in gpu.nvlinks or ()} == {"switch"}
        assert gpu.mig_enabled is False
    assert [g.numa_node for g in inventory.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len({g.pcie_root for g in inventory.gpus}) == 8
    assert [g.device_node for g in inventory.gpus] == [f"/dev/nvidia{i}" for i in range(8)]
    (domain,) = inventory.topology.domains
    assert set(domain.members) == {g.uuid for g in inventory.gpus}
    assert len(inventory.devices) == 8


def test_pcie_l4x4_has_no_nvlink() -> None:
    inventory = discover("fake:pcie-l4x4")
    assert [(g.product_name, g.architecture, g.compute_capability) for g in inventory.gpus] == [
        ("NVIDIA L4", "Ada Lovelace", "8.9")
    ] * 4
    assert {g.memory_bytes for g in inventory.gpus} == {23034 * MiB}
    assert inventory.topology.domains == ()
    assert [g.active_links for g in inventory.gpus] == [0, 0, 0, 0]
    assert {g.mig_enabled for g in inventory.gpus} == {None}


def test_nvlink_pairs_form_two_domains() -> None:
    inventory = discover("fake:nvlink-pairs")
    by_bus = {g.pci_bus_id: g.uuid for g in inventory.gpus}
    domains = {frozenset(d.members) for d in inventory.topology.domains}
    assert domains == {
        frozenset({by_bus["0000:17:00.0"], by_bus["0000:31:00.0"]}),
        frozenset({by_bus["0000:b1:00.0"], by_bus["0000:ca:00.0"]}),
    }
    assert [g.active_links for g in inventory.gpus] == [12, 12, 12, 12]
    assert {g.product_name for g in inventory.gpus} == {"NVIDIA A100 80GB PCIe"}


def test_nvl72_tray_domain_is_the_fabric_clique() -> None:
    inventory = discover("fake:nvl72-tray")
    assert {(g.product_name, g.architecture, g.compute_capability) for g in inventory.gpus} == {
        ("NVIDIA GB200", "Blackwell", "10.0")
    }
    cliques = {g.fabric.clique for g in inventory.gpus if g.fabric}
    assert len(cliques) == 1
    (domain,) = inventory.topology.domains
    assert domain.id == cliques.pop()
    assert len(domain.members) == 4


def test_mig_a100_publishes_mig_devices_only() -> None:
    inventory = discover("fake:mig-a100")
    (gpu,) = inventory.gpus
    assert gpu.mig_enabled is True
    assert [(d.kind, d.name, d.memory_bytes) for d in inventory.devices] == [
        ("mig", "gpu-0000-07-00-0-mig-1g-5gb-2", 4864 * MiB),
        ("mig", "gpu-0000-07-00-0-mig-1g-5gb-3", 4864 * MiB),
        ("mig", "gpu-0000-07-00-0-mig-2g-10gb-0", 9856 * MiB),
        ("mig", "gpu-0000-07-00-0-mig-3g-20gb-4", 19968 * MiB),
    ]
    assert len({d.uuid for d in inventory.devices}) == 4
    assert all(d.uuid.startswith("MIG-") for d in inventory.devices)


def test_dgx_h100_mig_mixes_whole_gpus_and_mig_devices() -> None:
    inventory = discover("fake:dgx-h100-mig")
    assert [g.mig_enabled for g in inventory.gpus] == [False] * 6 + [True, True]
    kinds = [d.kind for d in inventory.devices]
    assert (kinds.count("gpu"), kinds.count("mig")) == (6, 11)
    assert sorted(m.profile or "" for m in inventory.gpus[7].mig_devices) == [
        "1g.10gb",
        "1g.10gb",
        "2g.20gb",
        "3g.40gb",
    ]
    (domain,) = inventory.topology.domains  # MIG mode does not change the NVLink topology
    assert len(domain.members) == 8


def test_generated_uuids_are_deterministic_and_per_node() -> None:
    a1 = discover("fake:dgx-h100", node_name="node-a")
    a2 = discover("fake:dgx-h100", node_name="node-a")
    b = discover("fake:dgx-h100", node_name="node-b")
    assert [g.uuid for g in a1.gpus] == [g.uuid for g in a2.gpus]
    assert not {g.uuid for g in a1.gpus} & {g.uuid for g in b.gpus}
    assert [d.name for d in a1.devices] == [d.name for d in b.devices]
    assert all(re.match(r"^GPU-[0-9a-f-]{36}$", g.uuid) for g in a1.gpus)


@pytest.mark.parametrize(
    "profile", ["dgx-h100", "dgx-h100-mig", "nvlink-pairs", "nvl72-tray", "mig-a100", "pcie-l4x4"]
)
def test_enumeration_order_does_not_change_names_or_attributes(profile: str, tmp_path: Path) -> None:
    """NVML index order may change across boots: a shuffled profile must publish the same devices."""
    data = yaml.safe_load((PROFILES / f"{profile}.yaml").read_text())
    rng = random.Random(7)
    for index, gpu in enumerate(data["gpus"]):
        gpu.setdefault("minor", index)
        if gpu.get("mig", {}).get("devices"):
            gpu["mig"]["devices"] = rng.sample(gpu["mig"]["devices"], len(gpu["mig"]["devices"]))
    shuffled = dict(data, gpus=rng.sample(data["gpus"], len(data["gpus"])))
    path = tmp_path / f"{profile}.yaml"
    path.write_text(yaml.safe_dump(shuffled))
    original = discover(f"fake:{profile}")
    reordered = discover(f"file:{path}")
    assert [g.uuid for g in reordered.gpus] != [g.uuid for g in original.gpus] or len(original.gpus) == 1

    def published(inventory: Inventory) -> dict[str, object]:
        return {d.name: device_entry(d, inventory, "gpu.example.com") for d in inventory.devices}

    assert published(reordered) == published(original)
    assert reordered.topology.domains == original.topology.domains


MINIMAL = """
gpus:
  - productName: Test GPU
    pciBusID: "0000:01:00.0"
    memory: 16Gi
  - productName: Test GPU
    pciBusID: "0000:02:00.0"
    memory: 17179869184
"""


def test_minimal_profile_file_gets_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mini.yaml"
    path.write_text(MINIMAL)
    inventory = discover(f"file:{path}")
    assert (inventory.driver_version, inventory.cuda_driver_version) == ("580.65.06", "12.9")
    assert [g.memory_bytes for g in inventory.gpus] == [16 << 30, 16 << 30]
    assert [g.minor for g in inventory.gpus] == [0, 1]
    assert [g.brand for g in inventory.gpus] == [None, None]
    assert inventory.topology.domains == ()


def _error_for(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        open_backend(f"file:{path}")
    message = str(info.value)
    assert str(path) in message
    return message


@pytest.mark.parametrize(
    ("replace", "field"),
    [
        (("    memory: 16Gi\n", ""), "gpus[0].memory"),
        (
            ('    pciBusID: "0000:01:00.0"', '    pciBusID: "0000:01:00.0"\n    numaNode: zero'),
            "gpus[0].numaNode",
        ),
        (
            ('    pciBusID: "0000:01:00.0"', '    pciBusID: "0000:01:00.0"\n    colour: green'),
            "gpus[0].colour",
        ),
        (('"0000:01:00.0"', '"0000:3B:00.0"'), "gpus[0].pciBusID"),
        (("memory: 16Gi", "memory: lots"), "gpus[0].memory"),
        (("gpus:", "gpus:\n  - 3"), "gpus[0]"),
        (
            (
                '    pciBusID: "0000:02:00.0"',
                '    pciBusID: "0000:02:00.0"\n    nvlinks: [{count: 4, remoteType: gpu}]',
            ),
            "gpus[1].nvlinks[0].remotePciBusID",
        ),
        (
            ('    pciBusID: "0000:02:00.0"', '    pciBusID: "0000:02:00.0"\n    mig: {devices: []}'),
            "gpus[1].mig.enabled",
        ),
    ],
)
def test_schema_errors_name_file_and_field(tmp_path: Path, replace: tuple[str, str], field: str) -> None:
    message = _error_for(tmp_path, MINIMAL.replace(*replace))
    assert f"  {field}: " in message


def test_semantic_errors_name_file_and_field(tmp_path: Path) -> None:
    duplicate = MINIMAL.replace('"0000:02:00.0"', '"0000:01:00.0"')
    assert "gpus[1].pciBusID: '0000:01:00.0' is already used by gpus[0].pciBusID" in _error_for(
        tmp_path, duplicate
    )
    minors = MINIMAL.replace("    memory: 16Gi\n", "    memory: 16Gi\n    minor: 1\n")
    assert "gpus[1].minor: 1 is already used by gpus[0].minor" in _error_for(tmp_path, minors)
    dangling = MINIMAL.replace(
        "    memory: 16Gi\n",
        '    memory: 16Gi\n    nvlinks: [{remoteType: gpu, remotePciBusID: "0000:09:00.0"}]\n',
    )
    assert (
        "gpus[0].nvlinks[0].remotePciBusID: no GPU in this profile has PCI address 0000:09:00.0"
        in _error_for(tmp_path, dangling)
    )
    disabled = MINIMAL.replace(
        "    memory: 16Gi\n",
        "    memory: 16Gi\n    mig:\n      enabled: false\n      devices:\n"
        "        - {profile: 1g.5gb, memory: 4864Mi, gpuInstance: 1, computeInstance: 0,"
        " placement: {start: 0, size: 1}}\n",
    )
    assert "gpus[0].mig.devices: MIG devices listed but mig.enabled is false" in _error_for(
        tmp_path, disabled
    )
    assert "not valid YAML" in _error_for(tmp_path, "gpus: [unclosed")


def test_open_backend_errors(tmp_path: Path) -> None:
    for spec in ("bogus", "fake:", "file:", "nvml:extra", ""):
        with pytest.raises(BackendError, match="unknown device backend"):
            open_backend(spec)
    with pytest.raises(BackendError, match=r"unknown fake device profile 'dgx-a100'; available: dgx-h100, "):
        open_backend("fake:dgx-a100")
    with pytest.raises(BackendError, match=r"nope\.yaml: cannot read device profile"):
        open_backend(f"file:{tmp_path / 'nope.yaml'}")
    with pytest.raises(BackendError, match="does not take option"):
        open_backend("fake:dgx-h100", sysfs_root="/sys")
    with pytest.raises(BackendError, match="does not take option"):
        open_backend("nvml", node_name="a")


def _schema_properties(schema: dict[str, object]) -> set[str]:
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    names.update(value)
                walk(value)

    walk(schema)
    return names


def test_fake_devices_doc_covers_schema_and_profiles() -> None:
    doc = (DOCS / "fake-devices.md").read_text()
    undocumented = sorted(name for name in _schema_properties(profile_schema()) if f"`{name}`" not in doc)
    assert undocumented == []
    assert [name for name in named_profiles() if f"`{name}`" not in doc] == []


@pytest.mark.parametrize("name", named_profiles())
def test_bundled_profiles_pass_the_schema(name: str) -> None:
    """Bundled profiles skip the runtime schema check (it keeps jsonschema out of sandbox processes), so it
    is done here."""
    from importlib import resources

    from driver.devices.fake import parse_profile

    text = resources.files("driver.devices").joinpath(f"profiles/{name}.yaml").read_text()
    assert parse_profile(text, source=f"fake:{name}", check_schema=True).inventory.gpus
