"""The hardware model: PCI normalisation, stable names, interconnect domains."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver.devices.model import (
    FabricInfo,
    Gpu,
    Inventory,
    MigDevice,
    MigPlacement,
    NvLink,
    build_topology,
    local_domain_id,
    mig_device_name,
    normalize_pci_bus_id,
)
from driver.kube.api.names import is_dns_label


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("00000000:3B:00.0", "0000:3b:00.0"),
        (b"00000000:3B:00.0", "0000:3b:00.0"),
        ("0000:3b:00.0", "0000:3b:00.0"),
        ("00000008:01:00.0", "0008:01:00.0"),
        ("0:1:2.3", "0000:01:02.3"),
        ("00010000:01:00.0", None),  # VMD domain: no 4-digit form
        ("0000:3b:00", None),
        ("garbage", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_pci_bus_id(raw: str | bytes | None, expected: str | None) -> None:
    assert normalize_pci_bus_id(raw) == expected


def test_gpu_name_comes_from_the_pci_address() -> None:
    assert Gpu(uuid="GPU-1", pci_bus_id="0000:3b:00.0").name == "gpu-0000-3b-00-0"


def test_gpu_without_pci_address_is_named_after_its_uuid() -> None:
    gpu = Gpu(uuid="GPU-8C1F0A2B-0000-1111-2222-333344445555")
    assert gpu.name == "gpu-8c1f0a2b-0000-1111-2222-333344445555"
    assert is_dns_label(gpu.name)


@given(
    domain=st.integers(0, 0xFFFF),
    bus=st.integers(0, 0xFF),
    dev=st.integers(0, 0x1F),
    fn=st.integers(0, 7),
)
def test_every_pci_address_gives_a_dns_label(domain: int, bus: int, dev: int, fn: int) -> None:
    nvml_form = f"{domain:08X}:{bus:02X}:{dev:02X}.{fn}"
    gpu = Gpu(uuid="GPU-x", pci_bus_id=normalize_pci_bus_id(nvml_form))
    assert is_dns_label(gpu.name)
    assert gpu.name == f"gpu-{domain:04x}-{bus:02x}-{dev:02x}-{fn}"


def test_mig_names_use_profile_and_placement() -> None:
    parent = Gpu(uuid="GPU-p", pci_bus_id="0000:07:00.0")
    full = MigDevice(
        uuid="MIG-a",
        profile="1g.5gb",
        gpu_instance_id=9,
        compute_instance_id=0,
        placement=MigPlacement(start=2, size=1),
    )
    shared = MigDevice(
        uuid="MIG-b",
        profile="1c.3g.20gb",
        gpu_instance_id=2,
        compute_instance_id=1,
        placement=MigPlacement(start=4, size=4),
    )
    no_placement = MigDevice(uuid="MIG-c", profile="1g.5gb", gpu_instance_id=9, compute_instance_id=0)
    plus_me = MigDevice(uuid="MIG-d", profile="1g.10gb+me", placement=MigPlacement(start=6, size=1))
    assert mig_device_name(parent, full) == "gpu-0000-07-00-0-mig-1g-5gb-2"
    assert mig_device_name(parent, shared) == "gpu-0000-07-00-0-mig-1c-3g-20gb-4-c1"
    assert mig_device_name(parent, no_placement) == "gpu-0000-07-00-0-mig-gi9-ci0"
    assert mig_device_name(parent, plus_me) == "gpu-0000-07-00-0-mig-1g-10gb-me-6"
    assert mig_device_name(parent, MigDevice(uuid="MIG-E1")) == "mig-e1"


def _switch_gpu(bus: str, uuid: str, links: int = 18) -> Gpu:
    return Gpu(
        uuid=uuid, pci_bus_id=bus, nvlinks=tuple(NvLink(i, "active", None, "switch") for i in range(links))
    )


def _bridge(bus: str, uuid: str, peer: str, links: int = 4, remote_type: str = "gpu") -> Gpu:
    return Gpu(
        uuid=uuid,
        pci_bus_id=bus,
        nvlinks=tuple(NvLink(i, "active", peer, remote_type) for i in range(links)),  # type: ignore[arg-type]
    )


def test_switch_attached_gpus_form_one_domain() -> None:
    gpus = [_switch_gpu(f"0000:{i:02x}:00.0", f"GPU-{i}") for i in range(4)]
    topology = build_topology(gpus)
    assert len(topology.domains) == 1
    assert set(topology.domains[0].members) == {g.uuid for g in gpus}
    assert topology.domains[0].id == local_domain_id(g.uuid for g in gpus)


def test_bridged_pairs_form_one_domain_per_pair_even_without_remote_type() -> None:
    # Older drivers cannot tell the remote device type; the remote PCI address still identifies the peer.
    gpus = [
        _bridge("0000:17:00.0", "GPU-a", "0000:31:00.0", remote_type="unknown"),
        _bridge("0000:31:00.0", "GPU-b", "0000:17:00.0", remote_type="unknown"),
        _bridge("0000:b1:00.0", "GPU-c", "0000:ca:00.0"),
        _bridge("0000:ca:00.0", "GPU-d", "0000:b1:00.0"),
    ]
    topology = build_topology(gpus)
    assert sorted(d.members for d in topology.domains) == [("GPU-a", "GPU-b"), ("GPU-c", "GPU-d")]


def test_unknown_links_to_a_shared_endpoint_join_a_domain() -> None:
    gpus = [_bridge(f"0000:{i:02x}:00.0", f"GPU-{i}", "0000:f0:00.0", remote_type="unknown") for i in (1, 2)]
    assert [d.members for d in build_topology(gpus).domains] == [("GPU-1", "GPU-2")]


def test_gpus_without_active_links_have_no_domain() -> None:
    idle = Gpu(
        uuid="GPU-idle", pci_bus_id="0000:01:00.0", nvlinks=(NvLink(0, "inactive"), NvLink(1, "inactive"))
    )
    unknown = Gpu(uuid="GPU-unknown", pci_bus_id="0000:02:00.0", nvlinks=None)
    none = Gpu(uuid="GPU-none", pci_bus_id="0000:03:00.0")
    topology = build_topology([idle, unknown, none])
    assert topology.domains == ()
    assert topology.domain_of("GPU-idle") is None
    assert (idle.active_links, unknown.active_links, none.active_links) == (0, None, 0)


def test_a_link_to_a_gpu_without_active_links_does_not_pull_it_in() -> None:
    linked = _bridge("0000:17:00.0", "GPU-a", "0000:31:00.0")
    dark = Gpu(uuid="GPU-b", pci_bus_id="0000:31:00.0", nvlinks=(NvLink(0, "inactive"),))
    topology = build_topology([linked, dark])
    assert [d.members for d in topology.domains] == [("GPU-a",)]
    assert topology.domain_of("GPU-b") is None


def test_fabric_cliques_define_the_domain() -> None:
    fabric = FabricInfo(cluster_uuid="3f2a9c1e-6b7d-4e58-9a0c-d41b8e27f5a6", clique_id=7)
    gpus = [
        Gpu(
            uuid=f"GPU-{i}",
            pci_bus_id=f"000{i}:01:00.0",
            nvlinks=tuple(NvLink(k, "active", None, "switch") for k in range(18)),
            fabric=fabric,
        )
        for i in range(4)
    ]
    topology = build_topology(gpus)
    assert [(d.id, len(d.members)) for d in topology.domains] == [(fabric.clique, 4)]
    assert fabric.clique == "3f2a9c1e-6b7d-4e58-9a0c-d41b8e27f5a6.7"


def test_domain_id_does_not_depend_on_enumeration_order() -> None:
    gpus = [_switch_gpu(f"0000:{i:02x}:00.0", f"GPU-{i}") for i in range(8)]
    forward = build_topology(gpus)
    backward = build_topology(list(reversed(gpus)))
    assert forward.domains == backward.domains


def test_inventory_lists_mig_devices_instead_of_their_parent() -> None:
    mig = MigDevice(uuid="MIG-1", profile="1g.5gb", placement=MigPlacement(0, 1))
    migged = Gpu(uuid="GPU-a", pci_bus_id="0000:07:00.0", mig_enabled=True, mig_devices=(mig,))
    capable = Gpu(uuid="GPU-b", pci_bus_id="0000:08:00.0", mig_enabled=False)
    inventory = Inventory(gpus=(capable, migged))
    assert [d.name for d in inventory.devices] == ["gpu-0000-07-00-0-mig-1g-5gb-0", "gpu-0000-08-00-0"]
    assert [(d.kind, d.uuid) for d in inventory.devices] == [("mig", "MIG-1"), ("gpu", "GPU-b")]
    assert inventory.device("gpu-0000-08-00-0") is not None
    assert inventory.gpu("GPU-a") is migged


def test_inventory_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="duplicate UUID 'GPU-a'"):
        Inventory(
            gpus=(Gpu(uuid="GPU-a", pci_bus_id="0000:01:00.0"), Gpu(uuid="GPU-a", pci_bus_id="0000:02:00.0"))
        )
    with pytest.raises(ValueError, match="duplicate GPU name 'gpu-0000-01-00-0'"):
        Inventory(
            gpus=(Gpu(uuid="GPU-a", pci_bus_id="0000:01:00.0"), Gpu(uuid="GPU-b", pci_bus_id="0000:01:00.0"))
        )


def test_model_is_immutable() -> None:
    gpu = Gpu(uuid="GPU-a")
    with pytest.raises(AttributeError):
        gpu.uuid = "GPU-b"  # type: ignore[misc]
    assert gpu.device_node is None
    assert Gpu(uuid="GPU-a", minor=3).device_node == "/dev/nvidia3"
