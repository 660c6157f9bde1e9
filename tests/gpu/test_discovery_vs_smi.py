"""What ``accel-dra discover --backend nvml`` publishes for the real GPUs, against what nvidia-smi says.

Every attribute a user selects on must agree with nvidia-smi once written the same way: memory in MiB vs
bytes, ``00000000:18:00.0`` vs ``0000:18:00.0``, ``580.65.06`` vs semver ``580.65.6``, ``9.0`` vs ``9.0.0``.
NVLink: active link counts per ``nvidia-smi nvlink -s``, interconnect domains per ``nvidia-smi topo -m``
(GPUs joined by ``NV#`` entries share a domain; a GPU with no NVLink peer and no active link has none, which
is what a single-GPU machine must show).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes.utils import parse_quantity

from tests.gpu import smi
from tests.support.processes import accel_dra

pytestmark = pytest.mark.gpu

DRIVER = "gpu.accel-dra.dev"
NODE = "gpu-validation"
STANDARD = "resource.kubernetes.io"

Device = Mapping[str, Any]


def value(device: Device, key: str) -> Any:
    """An attribute's value (whatever its type), ``None`` when not published."""
    attribute = device.get("attributes", {}).get(key)
    if attribute is None:
        return None
    (inner,) = attribute.values()
    return inner


@pytest.fixture(scope="module")
def published() -> list[Device]:
    """The devices of every slice ``accel-dra discover`` prints for this machine."""
    done = subprocess.run(
        accel_dra(
            "discover", "--backend", "nvml", "--driver-name", DRIVER, "--node-name", NODE, "-o", "json"
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"accel-dra discover failed:\n{done.stderr}"
    slices = json.loads(done.stdout)["items"]
    devices = [d for s in slices for d in s["spec"]["devices"]]
    assert devices, f"accel-dra discover published no device:\n{done.stdout}"
    return devices


def owner_uuid(device: Device) -> str:
    """The physical GPU a device is on: its own UUID, or its parent's for a MIG device."""
    return str(value(device, "parentUUID") or value(device, "uuid"))


def devices_of(published: list[Device], uuid: str) -> list[Device]:
    return [d for d in published if owner_uuid(d) == uuid]


def whole(published: list[Device]) -> dict[str, Device]:
    """Whole-GPU devices by UUID."""
    return {str(value(d, "uuid")): d for d in published if value(d, "type") == "gpu"}


def test_every_gpu_nvidia_smi_lists_is_published_once(
    published: list[Device], smi_gpus: list[smi.SmiGpu]
) -> None:
    owners = {owner_uuid(d) for d in published}
    assert owners <= {g.uuid for g in smi_gpus}, "published devices on GPUs nvidia-smi does not list"
    # A MIG-enabled GPU with no MIG device configured has nothing to allocate; every other GPU is published.
    unpublished = {g.uuid for g in smi_gpus if g.mig_mode != "Enabled"} - owners
    assert not unpublished, f"GPUs nvidia-smi lists but discovery does not publish: {sorted(unpublished)}"
    names = [d["name"] for d in published]
    assert len(names) == len(set(names)), f"duplicate device names: {names}"
    for gpu in smi_gpus:
        kinds = {value(d, "type") for d in devices_of(published, gpu.uuid)}
        expected = {"mig"} if gpu.mig_mode == "Enabled" else {"gpu"}
        assert kinds <= expected, (gpu.uuid, gpu.mig_mode, kinds)


def test_identity_attributes_match_nvidia_smi(published: list[Device], smi_gpus: list[smi.SmiGpu]) -> None:
    mismatches = []
    for gpu in smi_gpus:
        expected = {
            "productName": gpu.name,
            f"{STANDARD}/pciBusID": smi.k8s_pci_bus_id(gpu.pci_bus_id),
            "driverVersion": smi.semver(gpu.driver_version),
            "cudaComputeCapability": smi.semver(gpu.compute_cap) if gpu.compute_cap else None,
        }
        for device in devices_of(published, gpu.uuid):
            for key, want in expected.items():
                got = value(device, key)
                if got != want:
                    mismatches.append(f"{device['name']}: {key}: published {got!r}, nvidia-smi {want!r}")
    assert not mismatches, "\n".join(mismatches)


def test_whole_gpus_match_nvidia_smi_uuid_name_and_memory(
    published: list[Device], smi_gpus: list[smi.SmiGpu]
) -> None:
    devices = whole(published)
    checked = 0
    for gpu in smi_gpus:
        if gpu.mig_mode == "Enabled":
            continue
        device = devices.get(gpu.uuid)
        assert device is not None, f"GPU {gpu.uuid} ({gpu.pci_bus_id}) is not published as a whole GPU"
        assert device["name"] == smi.device_name(gpu.pci_bus_id, gpu.uuid)
        memory = int(parse_quantity(device["capacity"]["memory"]["value"]))
        # nvidia-smi prints whole MiB (rounded down); the capacity is exact bytes.
        assert memory // 2**20 == gpu.memory_mib, (device["name"], memory, gpu.memory_mib)
        checked += 1
    if not checked:
        pytest.skip("every GPU has MIG enabled: no whole GPU to compare")


def test_driver_wide_versions_and_per_gpu_details_match_nvidia_smi(
    published: list[Device], smi_report: smi.SmiReport
) -> None:
    mismatches = []
    for device in published:
        details = smi_report.gpus.get(owner_uuid(device))
        assert details is not None, f"{device['name']}: nvidia-smi -q has no GPU {owner_uuid(device)}"
        cuda = value(device, "cudaDriverVersion")
        if smi_report.cuda_version and cuda != smi.semver(smi_report.cuda_version):
            mismatches.append(
                f"{device['name']}: cudaDriverVersion {cuda!r}, nvidia-smi {smi_report.cuda_version}"
            )
        if smi_report.driver_version and value(device, "driverVersion") != smi.semver(
            smi_report.driver_version
        ):
            mismatches.append(
                f"{device['name']}: driverVersion differs from -q's {smi_report.driver_version}"
            )
        arch = value(device, "architecture")
        if details.architecture and arch != details.architecture:
            mismatches.append(f"{device['name']}: architecture {arch!r}, nvidia-smi {details.architecture!r}")
        brand = value(device, "brand")
        if details.brand and (brand is None or smi.squash(brand) != smi.squash(details.brand)):
            mismatches.append(f"{device['name']}: brand {brand!r}, nvidia-smi {details.brand!r}")
    assert not mismatches, "\n".join(mismatches)


def test_unstable_ids_are_not_published(published: list[Device]) -> None:
    for device in published:
        assert not {"index", "minor"} & set(device.get("attributes", {})), device["name"]


# -- NVLink -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nvlink_status(nvidia_smi: str) -> dict[str, list[smi.LinkStatus]]:
    # Exit status deliberately ignored: GPUs without NVLink make some drivers exit non-zero with a message.
    return smi.parse_nvlink_status(smi.run_smi(nvidia_smi, "nvlink", "-s", check=False))


@pytest.fixture(scope="module")
def topo(nvidia_smi: str) -> smi.TopoMatrix:
    return smi.parse_topo_matrix(smi.run_smi(nvidia_smi, "topo", "-m"))


def test_active_nvlink_counts_match_nvidia_smi(
    published: list[Device], nvlink_status: dict[str, list[smi.LinkStatus]]
) -> None:
    mismatches = []
    for uuid, device in whole(published).items():
        smi_active = sum(1 for link in nvlink_status.get(uuid, ()) if link.active)
        ours = value(device, "nvlinkActiveLinks")
        # Unpublished means NVML could not tell; acceptable only when nvidia-smi sees no active link either.
        if (ours or 0) != smi_active:
            mismatches.append(
                f"{device['name']}: nvlinkActiveLinks {ours!r}, nvidia-smi nvlink -s {smi_active}"
            )
    assert not mismatches, "\n".join(mismatches)


def test_nvlink_domains_are_the_gpus_topo_joins_by_nvlink(
    published: list[Device], smi_gpus: list[smi.SmiGpu], topo: smi.TopoMatrix
) -> None:
    label = {f"GPU{g.index}": g.uuid for g in smi_gpus}
    assert set(topo.gpus) == set(label), f"topo -m rows {topo.gpus} vs nvidia-smi indexes {sorted(label)}"
    devices = whole(published)  # MIG-enabled GPUs publish no whole device and no domain
    domain = {uuid: value(d, "nvlinkDomain") for uuid, d in devices.items()}
    peers = {uuid: {uuid} for uuid in devices}
    for group in smi.nvlink_groups(topo):
        members = {label[g] for g in group} & set(devices)
        for uuid in members:
            peers[uuid] = members
    problems = []
    for uuid, device in devices.items():
        name, links = device["name"], value(device, "nvlinkActiveLinks") or 0
        mates = {u for u, d in domain.items() if d is not None and d == domain[uuid]} or {uuid}
        if len(peers[uuid]) > 1 and (domain[uuid] is None or mates != peers[uuid]):
            problems.append(
                f"{name}: domain {domain[uuid]} shared with {sorted(mates)}; topo -m peers {sorted(peers[uuid])}"
            )
        if len(peers[uuid]) == 1 and mates != {uuid}:
            problems.append(f"{name}: no NVLink peer in topo -m, but shares domain with {sorted(mates)}")
        if domain[uuid] is not None and not links and not value(device, "fabricCliqueID"):
            problems.append(f"{name}: domain {domain[uuid]} without an active link or fabric clique")
        if domain[uuid] is None and links:
            problems.append(f"{name}: {links} active links but no domain")
        bonded = [n for pair, n in topo.nvlinks.items() if label_of(label, uuid) in pair]
        if bonded and links < max(bonded):
            problems.append(f"{name}: {links} active links, but topo -m shows NV{max(bonded)} to a peer")
    assert not problems, "\n".join(problems)


def label_of(labels: Mapping[str, str], uuid: str) -> str:
    return next(label for label, u in labels.items() if u == uuid)


def test_numa_node_matches_topology(
    published: list[Device], smi_gpus: list[smi.SmiGpu], topo: smi.TopoMatrix
) -> None:
    if not topo.numa_affinity:
        pytest.skip("nvidia-smi topo -m prints no NUMA Affinity column that lines up with its rows")
    devices = whole(published)
    mismatches = []
    for gpu in smi_gpus:
        device = devices.get(gpu.uuid)
        cell = topo.numa_affinity.get(f"GPU{gpu.index}")
        if device is None or cell is None:
            continue
        want = int(cell) if cell.isdigit() else None  # "N/A" (no affinity) or a range: no single node
        got = value(device, f"{STANDARD}/numaNode")
        if (cell.isdigit() or smi.available(cell) is None) and got != want:
            mismatches.append(f"{device['name']}: numaNode {got!r}, topo -m NUMA Affinity {cell!r}")
    assert not mismatches, "\n".join(mismatches)
