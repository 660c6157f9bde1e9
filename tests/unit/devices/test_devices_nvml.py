"""The NVML backend, driven through a pure-Python stand-in for the ``pynvml`` module.

``FakeNvml`` serves an :class:`Inventory` through the pynvml function signatures and return types (the real
pynvml ctypes structs, error classes and constants), so the backend runs its real code paths: PCI
normalisation, sysfs lookups, NVLink and fabric queries, MIG enumeration and every degradation.
The test then checks that the backend reconstructs the inventory it was served, and what it does when
calls are unsupported, missing from the library, or missing from the Python bindings.
"""

from __future__ import annotations

import ctypes
import logging
import os
import uuid as uuidlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pynvml
import pytest

from driver.devices.backend import BackendError, open_backend
from driver.devices.fake import load_named_profile
from driver.devices.fakemig import FakeMig
from driver.devices.mig import GpuInstance, MigError
from driver.devices.model import Gpu, Inventory, MigDevice, MigPlacement, MigProfile, NvLink
from driver.devices.nvml import NvmlBackend, cuda_version_string, near_numa_nodes_from_sysfs
from driver.resources.attributes import device_entry

ARCHITECTURES = {
    "Ampere": pynvml.NVML_DEVICE_ARCH_AMPERE,
    "Ada Lovelace": pynvml.NVML_DEVICE_ARCH_ADA,
    "Hopper": pynvml.NVML_DEVICE_ARCH_HOPPER,
    "Blackwell": pynvml.NVML_DEVICE_ARCH_BLACKWELL,
}
BRANDS = {"Nvidia": pynvml.NVML_BRAND_NVIDIA, "Tesla": pynvml.NVML_BRAND_TESLA}
REMOTE_TYPES = {
    "gpu": pynvml.NVML_NVLINK_DEVICE_TYPE_GPU,
    "switch": pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH,
    "unknown": pynvml.NVML_NVLINK_DEVICE_TYPE_UNKNOWN,
}
CI_SLICES_BY_PROFILE_INDEX = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7}


def nvml_bus_id(bus_id: str) -> bytes:
    """How NVML spells a PCI address: 8-digit domain, upper case."""
    domain, rest = bus_id.split(":", 1)
    return f"{int(domain, 16):08X}:{rest.upper()}".encode()


class FakeNvml:
    """A stand-in for the ``pynvml`` module that serves an inventory.

    - ``unsupported``: function names that raise ``NVMLError_NotSupported``;
    - ``not_in_library``: names that raise ``NVMLError_FunctionNotFound`` (an older driver);
    - ``not_in_bindings``: names the Python module lacks (an older nvidia-ml-py);
    - ``lost``: GPU indexes whose UUID read fails with ``NVMLError_GpuIsLost``.
    Everything else (constants, error classes, structs) is the real pynvml's.
    """

    def __init__(
        self,
        inventory: Inventory,
        *,
        unsupported: Iterable[str] = (),
        not_in_library: Iterable[str] = (),
        not_in_bindings: Iterable[str] = (),
        lost: Iterable[int] = (),
        init_error: BaseException | None = None,
        fabric_struct_version: int = 3,
        fabric_state: int = pynvml.NVML_GPU_FABRIC_STATE_COMPLETED,
        mig_profile_names: bool = True,
    ) -> None:
        self.inventory = inventory
        self.gpus = list(inventory.gpus)
        self.unsupported = set(unsupported)
        self.not_in_library = set(not_in_library)
        self.lost = set(lost)
        self.init_error = init_error
        self.fabric_struct_version = fabric_struct_version
        self.fabric_state = fabric_state
        self.mig_profile_names = mig_profile_names
        self.calls: list[str] = []
        self.initialised = 0
        self.mig = FakeMig(inventory.gpus, None)
        for name in not_in_bindings:
            setattr(self, name, None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("nvml") and not name.isupper():
            raise AttributeError(name)  # a function this fake does not implement
        return getattr(pynvml, name)

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if name in self.not_in_library:
            raise pynvml.NVMLError_FunctionNotFound()
        if name in self.unsupported:
            raise pynvml.NVMLError_NotSupported()
        if not self.initialised:
            raise pynvml.NVMLError_Uninitialized()

    def _gpu(self, handle: tuple[Any, ...]) -> Gpu:
        return self.gpus[int(handle[1])]

    # -- library ------------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise self.init_error
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        assert self.inventory.driver_version
        return self.inventory.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        assert self.inventory.cuda_driver_version
        major, minor = self.inventory.cuda_driver_version.split(".")
        return int(major) * 1000 + int(minor) * 10

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> tuple[Any, ...]:
        self._enter("nvmlDeviceGetHandleByIndex")
        if index >= len(self.gpus):
            raise pynvml.NVMLError_InvalidArgument()
        return ("gpu", index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> tuple[Any, ...]:
        self._enter("nvmlDeviceGetHandleByUUID")
        for index, gpu in enumerate(self.gpus):
            if gpu.uuid == uuid:
                return ("gpu", index)
            for mig_index, mig in enumerate(self._migs(index)):
                if mig.uuid == uuid:
                    return ("mig", index, mig_index)
        raise pynvml.NVMLError_NotFound()

    # -- per device ---------------------------------------------------------------------------------

    def nvmlDeviceGetUUID(self, handle: tuple[Any, ...]) -> str:
        self._enter("nvmlDeviceGetUUID")
        if handle[0] == "mig":
            return self._mig(handle).uuid
        if handle[1] in self.lost:
            raise pynvml.NVMLError_GpuIsLost()
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: tuple[Any, ...]) -> str:
        self._enter("nvmlDeviceGetName")
        return self._gpu(handle).product_name or ""

    def nvmlDeviceGetBrand(self, handle: tuple[Any, ...]) -> int:
        self._enter("nvmlDeviceGetBrand")
        brand = self._gpu(handle).brand
        return int(BRANDS[brand] if brand else pynvml.NVML_BRAND_UNKNOWN)

    def nvmlDeviceGetArchitecture(self, handle: tuple[Any, ...]) -> int:
        self._enter("nvmlDeviceGetArchitecture")
        arch = self._gpu(handle).architecture
        return int(ARCHITECTURES[arch] if arch else pynvml.NVML_DEVICE_ARCH_UNKNOWN)

    def nvmlDeviceGetCudaComputeCapability(self, handle: tuple[Any, ...]) -> tuple[int, int]:
        self._enter("nvmlDeviceGetCudaComputeCapability")
        cc = self._gpu(handle).compute_capability
        if cc is None:
            raise pynvml.NVMLError_NotSupported()
        major, minor = cc.split(".")
        return int(major), int(minor)

    def nvmlDeviceGetMemoryInfo(self, handle: tuple[Any, ...]) -> Any:
        self._enter("nvmlDeviceGetMemoryInfo")
        total = self._mig(handle).memory_bytes if handle[0] == "mig" else self._gpu(handle).memory_bytes
        if total is None:
            raise pynvml.NVMLError_NotSupported()
        return pynvml.c_nvmlMemory_t(total=total, free=total, used=0)

    def nvmlDeviceGetPciInfo(self, handle: tuple[Any, ...]) -> Any:
        self._enter("nvmlDeviceGetPciInfo")
        info = pynvml.nvmlPciInfo_t()
        info.busId = nvml_bus_id(self._gpu(handle).pci_bus_id or "")
        return info

    def nvmlDeviceGetMinorNumber(self, handle: tuple[Any, ...]) -> int:
        self._enter("nvmlDeviceGetMinorNumber")
        return self._gpu(handle).minor or 0

    def nvmlDeviceGetNumaNodeId(self, handle: tuple[Any, ...]) -> int:
        self._enter("nvmlDeviceGetNumaNodeId")
        numa = self._gpu(handle).numa_node
        return -1 if numa is None else numa

    # -- NVLink and fabric --------------------------------------------------------------------------

    def _link(self, handle: tuple[Any, ...], link: int) -> NvLink:
        links = self._gpu(handle).nvlinks
        if not links:
            raise pynvml.NVMLError_NotSupported()
        if link >= len(links):
            raise pynvml.NVMLError_InvalidArgument()
        return links[link]

    def nvmlDeviceGetNvLinkState(self, handle: tuple[Any, ...], link: int) -> int:
        self._enter("nvmlDeviceGetNvLinkState")
        return int(self._link(handle, link).active)

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: tuple[Any, ...], link: int) -> Any:
        self._enter("nvmlDeviceGetNvLinkRemotePciInfo")
        remote = self._link(handle, link).remote_pci_bus_id
        if remote is None:
            raise pynvml.NVMLError_NotSupported()  # NVSwitches that are not host PCI devices
        info = pynvml.nvmlPciInfo_t()
        info.busId = nvml_bus_id(remote)
        return info

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle: tuple[Any, ...], link: int) -> int:
        self._enter("nvmlDeviceGetNvLinkRemoteDeviceType")
        return int(REMOTE_TYPES[self._link(handle, link).remote_type])

    def _fill_fabric(self, name: str, handle: tuple[Any, ...], pointer: Any, versioned: bool) -> int:
        self._enter(name)
        info = pointer.contents
        if versioned and info.version != getattr(pynvml, f"nvmlGpuFabricInfo_v{self.fabric_struct_version}"):
            raise pynvml.NVMLError_ArgumentVersionMismatch()
        fabric = self._gpu(handle).fabric
        if fabric is None:
            raise pynvml.NVMLError_NotSupported()
        info.clusterUuid[:] = list(uuidlib.UUID(fabric.cluster_uuid).bytes)
        info.cliqueId = fabric.clique_id
        info.state = self.fabric_state
        info.status = pynvml.NVML_SUCCESS
        return int(pynvml.NVML_SUCCESS)

    def nvmlDeviceGetGpuFabricInfoV(self, handle: tuple[Any, ...], pointer: Any) -> int:
        return self._fill_fabric("nvmlDeviceGetGpuFabricInfoV", handle, pointer, versioned=True)

    def nvmlDeviceGetGpuFabricInfo(self, handle: tuple[Any, ...], pointer: Any) -> int:
        return self._fill_fabric("nvmlDeviceGetGpuFabricInfo", handle, pointer, versioned=False)

    # -- MIG ----------------------------------------------------------------------------------------
    # The MIG state is a FakeMig (the fake backend's MIG hardware, which enforces NVML's rules): discovery
    # reads it, the creation and destruction calls change it. GPU-instance handles come back from NVML in
    # ctypes arrays, so they are real pointers here, encoding (GPU index, GPU instance id).

    def _migs(self, gpu_index: int) -> tuple[MigDevice, ...]:
        gpu = self.gpus[gpu_index]
        return self.mig.devices(gpu.uuid) if gpu.mig_enabled else ()

    def _mig(self, handle: tuple[Any, ...]) -> MigDevice:
        return self._migs(int(handle[1]))[int(handle[2])]

    def _profile_rows(self, gpu: Gpu) -> list[MigProfile]:
        """The GPU's profiles; a GPU without a table gets one per profile its MIG devices use."""
        if gpu.mig_profiles:
            return list(gpu.mig_profiles)
        names = sorted({(m.profile or "").split("c.", 1)[-1] for m in gpu.mig_devices})
        return [
            MigProfile(name, i, 100 + i, int(name.split("g.")[0]), 0, (), 1) for i, name in enumerate(names)
        ]

    @staticmethod
    def gi_handle(gpu_index: int, gi: int) -> Any:
        return ctypes.cast(ctypes.c_void_p(0x10000 + gpu_index * 256 + gi), pynvml.c_nvmlGpuInstance_t)

    @staticmethod
    def _gi_of(handle: Any) -> tuple[int, int]:
        """(GPU index, GPU instance id) of a GPU-instance handle (a tuple or a pointer)."""
        if isinstance(handle, tuple):
            return int(handle[1]), int(handle[2])
        code = ctypes.cast(handle, ctypes.c_void_p).value or 0
        return (code - 0x10000) // 256, (code - 0x10000) % 256

    def _instance(self, handle: Any) -> tuple[Gpu, GpuInstance]:
        index, gi = self._gi_of(handle)
        gpu = self.gpus[index]
        found = next((i for i in self.mig.gpu_instances(gpu.uuid) if i.id == gi), None)
        if found is None:
            raise pynvml.NVMLError_NotFound()
        return gpu, found

    def _profile_id(self, gpu: Gpu, instance: GpuInstance) -> int:
        if instance.profile_id >= 0:
            return instance.profile_id
        profile = (instance.devices[0].profile or "").split("c.", 1)[-1] if instance.devices else ""
        return next(p.id for p in self._profile_rows(gpu) if p.name == profile)

    def _nvml_error(self, error: MigError) -> BaseException:
        if error.in_use:
            return pynvml.NVMLError_InUse()
        if error.not_found:
            return pynvml.NVMLError_NotFound()
        return pynvml.NVMLError_InsufficientResources()

    def nvmlDeviceGetMigMode(self, handle: tuple[Any, ...]) -> list[int]:
        self._enter("nvmlDeviceGetMigMode")
        enabled = self._gpu(handle).mig_enabled
        if enabled is None:
            raise pynvml.NVMLError_NotSupported()
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if enabled else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: tuple[Any, ...]) -> int:
        self._enter("nvmlDeviceGetMaxMigDeviceCount")
        return 2 * max(7, len(self._migs(int(handle[1])))) + 1

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: tuple[Any, ...], index: int) -> tuple[Any, ...]:
        self._enter("nvmlDeviceGetMigDeviceHandleByIndex")
        # MIG slots are sparse on real GPUs: empty ones answer NOT_FOUND.
        if index % 2 == 0 or index // 2 >= len(self._migs(int(handle[1]))):
            raise pynvml.NVMLError_NotFound()
        return ("mig", handle[1], index // 2)

    def nvmlDeviceGetGpuInstanceId(self, handle: tuple[Any, ...]) -> int:
        self._enter("nvmlDeviceGetGpuInstanceId")
        return self._mig(handle).gpu_instance_id or 0

    def nvmlDeviceGetComputeInstanceId(self, handle: tuple[Any, ...]) -> int:
        self._enter("nvmlDeviceGetComputeInstanceId")
        return self._mig(handle).compute_instance_id or 0

    def nvmlDeviceGetGpuInstanceById(self, handle: tuple[Any, ...], gi_id: int) -> tuple[Any, ...]:
        self._enter("nvmlDeviceGetGpuInstanceById")
        self._instance(("gi", handle[1], gi_id))
        return ("gi", handle[1], gi_id)

    def nvmlGpuInstanceGetInfo(self, gi: Any) -> Any:
        self._enter("nvmlGpuInstanceGetInfo")
        gpu, instance = self._instance(gi)
        info = pynvml.c_nvmlGpuInstanceInfo_t()
        info.id, info.profileId = instance.id, self._profile_id(gpu, instance)
        info.placement.start, info.placement.size = instance.placement.start, instance.placement.size
        return info

    def nvmlDeviceGetGpuInstanceProfileInfo(
        self, handle: tuple[Any, ...], index: int, version: int = 2
    ) -> Any:
        self._enter("nvmlDeviceGetGpuInstanceProfileInfo")
        profile = next((p for p in self._profile_rows(self._gpu(handle)) if p.index == index), None)
        if profile is None:
            raise pynvml.NVMLError_NotSupported()
        info = pynvml.c_nvmlGpuInstanceProfileInfo_v2_t()
        info.id, info.sliceCount, info.instanceCount = (
            profile.id,
            profile.compute_slices,
            profile.instance_count,
        )
        info.memorySizeMB = profile.memory_bytes >> 20 or {"1g.5gb": 4864, "2g.10gb": 9856}.get(
            profile.name, 0
        )
        info.multiprocessorCount, info.copyEngineCount = profile.multiprocessors, profile.copy_engines
        info.decoderCount, info.encoderCount = profile.decoders, profile.encoders
        info.jpegCount, info.ofaCount = profile.jpeg_engines, profile.ofa_engines
        if self.mig_profile_names:
            info.name = f"MIG {profile.name}".encode()
        return info

    def nvmlDeviceGetGpuInstancePossiblePlacements(
        self, handle: tuple[Any, ...], profile_id: int, placements: Any, count: Any
    ) -> int:
        self._enter("nvmlDeviceGetGpuInstancePossiblePlacements")
        profile = next(p for p in self._profile_rows(self._gpu(handle)) if p.id == profile_id)
        count._obj.value = len(profile.placements)  # byref(c_uint): the count is an output
        for i, placement in enumerate(profile.placements if placements is not None else ()):
            placements[i].start, placements[i].size = placement.start, placement.size
        return pynvml.NVML_SUCCESS

    def nvmlDeviceGetGpuInstances(
        self, handle: tuple[Any, ...], profile_id: int, instances: Any, count: Any
    ) -> int:
        self._enter("nvmlDeviceGetGpuInstances")
        gpu = self._gpu(handle)
        mine = [i for i in self.mig.gpu_instances(gpu.uuid) if self._profile_id(gpu, i) == profile_id]
        assert len(mine) <= len(instances), "array smaller than the profile's instance count"
        for n, instance in enumerate(mine):
            instances[n] = self.gi_handle(int(handle[1]), instance.id)
        count._obj.value = len(mine)
        return pynvml.NVML_SUCCESS

    def nvmlDeviceCreateGpuInstanceWithPlacement(
        self, handle: tuple[Any, ...], profile_id: int, placement: Any
    ) -> tuple[Any, ...]:
        self._enter("nvmlDeviceCreateGpuInstanceWithPlacement")
        where = placement._obj  # byref(c_nvmlGpuInstancePlacement_t), as the C API takes a pointer
        assert isinstance(where, pynvml.c_nvmlGpuInstancePlacement_t)
        gpu = self._gpu(handle)
        profile = next(p for p in self._profile_rows(gpu) if p.id == profile_id)
        try:
            created = self.mig.create_gpu_instance(gpu.uuid, profile, MigPlacement(where.start, where.size))
        except MigError as err:
            raise self._nvml_error(err) from None
        return ("gi", handle[1], created.id)

    def nvmlGpuInstanceCreateComputeInstance(self, gi: Any, ci_profile_id: int) -> tuple[Any, ...]:
        self._enter("nvmlGpuInstanceCreateComputeInstance")
        gpu, instance = self._instance(gi)
        slices = next(p.compute_slices for p in self._profile_rows(gpu) if p.id == instance.profile_id)
        assert CI_SLICES_BY_PROFILE_INDEX[ci_profile_id] == slices, "a compute instance smaller than its GI"
        try:
            device = self.mig.create_compute_instance(gpu.uuid, instance)
        except MigError as err:
            raise self._nvml_error(err) from None
        index, gi_id = self._gi_of(gi)
        return ("ci", index, gi_id, device.compute_instance_id)

    def nvmlComputeInstanceDestroy(self, ci: tuple[Any, ...]) -> int:
        self._enter("nvmlComputeInstanceDestroy")
        try:
            self.mig.destroy_compute_instance(self.gpus[ci[1]].uuid, ci[2], ci[3])
        except MigError as err:
            raise self._nvml_error(err) from None
        return pynvml.NVML_SUCCESS

    def nvmlGpuInstanceDestroy(self, gi: Any) -> int:
        self._enter("nvmlGpuInstanceDestroy")
        index, gi_id = self._gi_of(gi)
        try:
            self.mig.destroy_gpu_instance(self.gpus[index].uuid, gi_id)
        except MigError as err:
            raise self._nvml_error(err) from None
        return pynvml.NVML_SUCCESS

    def nvmlGpuInstanceGetComputeInstanceById(self, gi: Any, ci_id: int) -> tuple[Any, ...]:
        self._enter("nvmlGpuInstanceGetComputeInstanceById")
        _, instance = self._instance(gi)
        if not any(d.compute_instance_id == ci_id for d in instance.devices):
            raise pynvml.NVMLError_NotFound()
        index, gi_id = self._gi_of(gi)
        return ("ci", index, gi_id, ci_id)

    def nvmlComputeInstanceGetInfo(self, ci: tuple[Any, ...]) -> Any:
        self._enter("nvmlComputeInstanceGetInfo")
        _, instance = self._instance(("gi", ci[1], ci[2]))
        mig = next(d for d in instance.devices if d.compute_instance_id == ci[3])
        assert mig.profile is not None
        slices = int(mig.profile.split("c.")[0]) if "c." in mig.profile else int(mig.profile.split("g.")[0])
        info = pynvml.c_nvmlComputeInstanceInfo_t()
        info.id = ci[3]
        info.profileId = next(i for i, s in CI_SLICES_BY_PROFILE_INDEX.items() if s == slices)
        return info

    def nvmlGpuInstanceGetComputeInstanceProfileInfo(
        self, gi: Any, index: int, engine: int, version: int = 2
    ) -> Any:
        self._enter("nvmlGpuInstanceGetComputeInstanceProfileInfo")
        if index not in CI_SLICES_BY_PROFILE_INDEX:
            raise pynvml.NVMLError_NotSupported()
        info = pynvml.c_nvmlComputeInstanceProfileInfo_v2_t()
        info.id, info.sliceCount = index, CI_SLICES_BY_PROFILE_INDEX[index]
        return info


def make_sysfs(root: Path, inventory: Inventory, *, numa_files: bool = True) -> Path:
    """A sysfs tree like the kernel's: device directories under devices/, relative links in bus/pci/."""
    links = root / "bus" / "pci" / "devices"
    links.mkdir(parents=True)
    for gpu in inventory.gpus:
        assert gpu.pci_bus_id
        if gpu.pcie_root:
            domain = gpu.pcie_root[3:7]
            device_dir = (
                root / "devices" / gpu.pcie_root / f"{domain}:{gpu.pcie_root[8:]}:01.0" / gpu.pci_bus_id
            )
        else:
            device_dir = root / "devices" / "platform" / "soc" / gpu.pci_bus_id
        device_dir.mkdir(parents=True)
        if numa_files:
            (device_dir / "numa_node").write_text(f"{-1 if gpu.numa_node is None else gpu.numa_node}\n")
        (links / gpu.pci_bus_id).symlink_to(os.path.relpath(device_dir, links))
    write_numa_topology(root, inventory)
    return root


def write_numa_topology(root: Path, inventory: Inventory) -> None:
    """Node distance tables and CPU lists as the kernel shows them: two sockets, the NUMA nodes a GPU is
    near (``numa_nodes``) at distance 11 from each other, other nodes of its socket at 12 (none here), nodes
    of the other socket at 21. One CPU per node; socket = node // (nodes per socket)."""
    nodes = sorted({n for g in inventory.gpus for n in g.near_numa_nodes})
    if not nodes:
        return
    count = max(nodes) + 1
    groups = {n: set(g.near_numa_nodes) for g in inventory.gpus for n in g.near_numa_nodes}
    per_socket = max(1, count // 2)
    for node in range(count):
        near = groups.get(node, {node})
        row = [10 if i == node else 11 if i in near else 21 for i in range(count)]
        directory = root / "devices" / "system" / "node" / f"node{node}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "distance").write_text(" ".join(map(str, row)) + "\n")
        (directory / "cpulist").write_text(f"{node}\n")
        topology = root / "devices" / "system" / "cpu" / f"cpu{node}" / "topology"
        topology.mkdir(parents=True, exist_ok=True)
        (topology / "physical_package_id").write_text(f"{node // per_socket}\n")


def nvml_discover(tmp_path: Path, inventory: Inventory, **fake: Any) -> tuple[Inventory, FakeNvml]:
    nvml = FakeNvml(inventory, **fake)
    backend = NvmlBackend(sysfs_root=make_sysfs(tmp_path / "sys", inventory), nvml=nvml)
    try:
        return backend.discover(), nvml
    finally:
        backend.close()


@pytest.mark.parametrize(
    "profile", ["dgx-h100", "pcie-l4x4", "pcie-l40s-snc", "nvlink-pairs", "nvl72-tray", "mig-a100"]
)
def test_backend_reads_back_what_nvml_serves(profile: str, tmp_path: Path) -> None:
    expected = load_named_profile(profile).inventory
    found, nvml = nvml_discover(tmp_path, expected)
    assert found == expected
    assert found.topology.domains == expected.topology.domains
    assert [d.name for d in found.devices] == [d.name for d in expected.devices]
    assert nvml.initialised == 0  # shut down again


def test_cuda_version_encoding() -> None:
    assert [cuda_version_string(v) for v in (12090, 13000, 11080, 12020)] == ["12.9", "13.0", "11.8", "12.2"]


def test_unsupported_calls_degrade_to_unknown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = load_named_profile("nvlink-pairs").inventory
    unsupported = {
        "nvmlDeviceGetBrand",
        "nvmlDeviceGetArchitecture",
        "nvmlDeviceGetCudaComputeCapability",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetMinorNumber",
        "nvmlSystemGetCudaDriverVersion",
    }
    with caplog.at_level(logging.DEBUG, logger="driver.devices.nvml"):
        found, _ = nvml_discover(
            tmp_path,
            expected,
            unsupported=unsupported,
            not_in_library={"nvmlDeviceGetNvLinkRemoteDeviceType"},
        )
    for gpu in found.gpus:
        assert (gpu.brand, gpu.architecture, gpu.compute_capability, gpu.memory_bytes, gpu.minor) == (
            None,
        ) * 5
        assert gpu.mig_enabled is None
        assert gpu.product_name == "NVIDIA A100 80GB PCIe"
        assert {link.remote_type for link in gpu.nvlinks or ()} == {"unknown"}
    assert found.cuda_driver_version is None
    # The remote PCI addresses still pair the GPUs up.
    assert found.topology.domains == expected.topology.domains
    unsupported_logged = {
        getattr(r, "fields", {}).get("call")
        for r in caplog.records
        if r.levelno == logging.DEBUG and r.getMessage() == "nvml call unsupported"
    }
    assert unsupported_logged >= unsupported | {"nvmlDeviceGetNvLinkRemoteDeviceType"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_function_missing_from_the_library_is_not_called_again(tmp_path: Path) -> None:
    expected = load_named_profile("dgx-h100").inventory
    _, nvml = nvml_discover(tmp_path, expected, not_in_library={"nvmlDeviceGetNvLinkRemoteDeviceType"})
    assert nvml.calls.count("nvmlDeviceGetNvLinkRemoteDeviceType") == 1


def test_nvlink_state_unavailable_means_unknown_links(tmp_path: Path) -> None:
    expected = load_named_profile("dgx-h100").inventory
    found, nvml = nvml_discover(tmp_path, expected, not_in_library={"nvmlDeviceGetNvLinkState"})
    assert {g.nvlinks for g in found.gpus} == {None}
    assert found.topology.domains == ()
    assert nvml.calls.count("nvmlDeviceGetNvLinkState") == 1
    attributes = device_entry(found.devices[0], found, "gpu.example.com")["attributes"]
    assert "nvlinkActiveLinks" not in attributes
    assert "nvlinkDomain" not in attributes


def test_older_bindings_without_optional_functions(tmp_path: Path) -> None:
    expected = load_named_profile("nvl72-tray").inventory
    found, nvml = nvml_discover(
        tmp_path,
        expected,
        not_in_bindings={
            "nvmlDeviceGetGpuFabricInfoV",
            "nvmlDeviceGetNvLinkRemoteDeviceType",
            "nvmlDeviceGetNumaNodeId",
        },
    )
    # Fabric info comes from the legacy call; the clique still defines the domain.
    assert [g.fabric for g in found.gpus] == [g.fabric for g in expected.gpus]
    assert found.topology.domains == expected.topology.domains
    assert "nvmlDeviceGetGpuFabricInfo" in nvml.calls


def test_fabric_struct_version_fallback(tmp_path: Path) -> None:
    expected = load_named_profile("nvl72-tray").inventory
    found, nvml = nvml_discover(tmp_path, expected, fabric_struct_version=2)
    assert [g.fabric for g in found.gpus] == [g.fabric for g in expected.gpus]
    assert "nvmlDeviceGetGpuFabricInfo" not in nvml.calls


def test_fabric_not_yet_registered_is_not_reported(tmp_path: Path) -> None:
    expected = load_named_profile("nvl72-tray").inventory
    found, _ = nvml_discover(tmp_path, expected, fabric_state=pynvml.NVML_GPU_FABRIC_STATE_IN_PROGRESS)
    assert {g.fabric for g in found.gpus} == {None}
    # Without a clique the GPUs still share the switch domain of this node.
    (domain,) = found.topology.domains
    assert domain.id.startswith("nvlink-")
    assert "fabricCliqueID" not in device_entry(found.devices[0], found, "gpu.example.com")["attributes"]


def test_lost_gpu_is_skipped_and_others_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = load_named_profile("pcie-l4x4").inventory
    with caplog.at_level(logging.WARNING, logger="driver.devices.nvml"):
        found, _ = nvml_discover(tmp_path, expected, lost={1})
    assert [g.uuid for g in found.gpus] == [g.uuid for i, g in enumerate(expected.gpus) if i != 1]
    assert any(r.getMessage() == "gpu skipped: its identity cannot be read" for r in caplog.records)


def test_numa_and_pcie_root_fallbacks(tmp_path: Path) -> None:
    gpus = (
        Gpu(
            uuid="GPU-a",
            pci_bus_id="0000:3b:00.0",
            pcie_root="pci0000:3a",
            numa_node=1,
            minor=0,
            product_name="X",
        ),
        Gpu(uuid="GPU-b", pci_bus_id="0000:5e:00.0", numa_node=None, minor=1, product_name="X"),
    )
    inventory = Inventory(gpus=gpus, driver_version="580.65.06", cuda_driver_version="12.9")
    nvml = FakeNvml(inventory)
    sysfs = make_sysfs(tmp_path / "sys", inventory, numa_files=False)
    backend = NvmlBackend(sysfs_root=sysfs, nvml=nvml)
    found = backend.discover()
    backend.close()
    # No numa_node file: NVML's answer is used; -1 means none. A device outside a pciDDDD:BB root has no pcieRoot.
    assert [(g.numa_node, g.pcie_root) for g in found.gpus] == [(1, "pci0000:3a"), (None, None)]
    assert nvml.calls.count("nvmlDeviceGetNumaNodeId") == 2


def test_near_numa_nodes_follow_the_distance_table(tmp_path: Path) -> None:
    """Sub-NUMA clustering: a node's equally near sibling on the same socket counts, nodes of the other
    socket (even at the same distance) and farther ones do not; a CPU-less node (GPU memory) of unknown
    socket at the smallest distance counts."""
    root = tmp_path / "sys"
    table = {
        0: "10 11 21 21 11",
        1: "11 10 21 21 20",
        2: "21 21 10 11 21",
        3: "21 21 11 10 21",
        4: "11 20 21 21 10",
    }
    sockets = {0: 0, 1: 0, 2: 1, 3: 1}
    for node, row in table.items():
        directory = root / "devices" / "system" / "node" / f"node{node}"
        directory.mkdir(parents=True)
        (directory / "distance").write_text(row + "\n")
        if node in sockets:
            (directory / "cpulist").write_text(f"{node * 8}-{node * 8 + 7}\n")
            topology = root / "devices" / "system" / "cpu" / f"cpu{node * 8}" / "topology"
            topology.mkdir(parents=True)
            (topology / "physical_package_id").write_text(f"{sockets[node]}\n")
    assert near_numa_nodes_from_sysfs(root, 0) == (0, 1, 4)
    assert near_numa_nodes_from_sysfs(root, 1) == (1, 0)
    assert near_numa_nodes_from_sysfs(root, 3) == (3, 2)
    assert near_numa_nodes_from_sysfs(root, 7) == (7,), "no table: the node alone"
    # Another socket at the smallest distance is not near.
    (root / "devices" / "system" / "node" / "node2" / "distance").write_text("11 21 10 21 21\n")
    assert near_numa_nodes_from_sysfs(root, 2) == (2,)


def test_sysfs_numa_minus_one_is_unknown(tmp_path: Path) -> None:
    inventory = Inventory(
        gpus=(Gpu(uuid="GPU-a", pci_bus_id="0000:3b:00.0", pcie_root="pci0000:3a", minor=0),),
        driver_version="1.0",
        cuda_driver_version="12.9",
    )
    found, nvml = nvml_discover(tmp_path, inventory)
    assert found.gpus[0].numa_node is None
    assert "nvmlDeviceGetNumaNodeId" not in nvml.calls  # sysfs answered (-1)


def test_mig_profiles_with_partial_compute_instances(tmp_path: Path) -> None:
    migs = (
        MigDevice(
            uuid="MIG-11111111-1111-1111-1111-111111111111",
            profile="1c.3g.20gb",
            memory_bytes=20096 << 20,
            gpu_instance_id=2,
            compute_instance_id=0,
            placement=MigPlacement(4, 4),
        ),
        MigDevice(
            uuid="MIG-22222222-2222-2222-2222-222222222222",
            profile="2g.10gb",
            memory_bytes=9984 << 20,
            gpu_instance_id=3,
            compute_instance_id=0,
            placement=MigPlacement(0, 2),
        ),
    )
    gpu = Gpu(uuid="GPU-a", pci_bus_id="0000:07:00.0", minor=0, mig_enabled=True, mig_devices=migs)
    inventory = Inventory(gpus=(gpu,), driver_version="580.65.06", cuda_driver_version="12.9")
    found, _ = nvml_discover(tmp_path, inventory)
    assert found.gpus[0].mig_devices == migs
    assert [d.name for d in found.devices] == [
        "gpu-0000-07-00-0-mig-1c-3g-20gb-4-c0",
        "gpu-0000-07-00-0-mig-2g-10gb-0",
    ]


def test_mig_profile_name_derived_when_nvml_gives_none(tmp_path: Path) -> None:
    expected = load_named_profile("mig-a100").inventory
    found, _ = nvml_discover(tmp_path, expected, mig_profile_names=False)
    assert [m.profile for m in found.gpus[0].mig_devices] == [m.profile for m in expected.gpus[0].mig_devices]


def test_mig_details_unsupported_still_lists_devices(tmp_path: Path) -> None:
    expected = load_named_profile("mig-a100").inventory
    found, _ = nvml_discover(tmp_path, expected, unsupported={"nvmlDeviceGetGpuInstanceById"})
    migs = found.gpus[0].mig_devices
    assert [m.uuid for m in migs] == [m.uuid for m in expected.gpus[0].mig_devices]
    assert {(m.profile, m.placement) for m in migs} == {(None, None)}
    assert all(d.name.startswith("gpu-0000-07-00-0-mig-gi") for d in found.devices)


def test_init_failure_is_a_backend_error() -> None:
    inventory = Inventory(gpus=())
    with pytest.raises(BackendError) as info:
        NvmlBackend(nvml=FakeNvml(inventory, init_error=pynvml.NVMLError_LibraryNotFound()))
    assert str(info.value) == (
        "NVML is not available: NVML Shared Library Not Found "
        "(is the NVIDIA driver installed and libnvidia-ml.so.1 on the library path?)"
    )
    with pytest.raises(BackendError, match="NVML is not available: Driver Not Loaded"):
        NvmlBackend(nvml=FakeNvml(inventory, init_error=pynvml.NVMLError_DriverNotLoaded()))


def test_enumeration_failure_is_a_backend_error(tmp_path: Path) -> None:
    nvml = FakeNvml(Inventory(gpus=()), unsupported={"nvmlDeviceGetCount"})
    backend = NvmlBackend(sysfs_root=tmp_path, nvml=nvml)
    with pytest.raises(BackendError, match="NVML cannot enumerate GPUs"):
        backend.discover()
    backend.close()


def test_close_is_idempotent(tmp_path: Path) -> None:
    nvml = FakeNvml(load_named_profile("pcie-l4x4").inventory)
    backend = NvmlBackend(sysfs_root=tmp_path, nvml=nvml)
    backend.close()
    backend.close()
    assert nvml.calls.count("nvmlShutdown") == 1
    with pytest.raises(BackendError, match="closed"):
        backend.discover()


def test_open_backend_passes_options(tmp_path: Path) -> None:
    inventory = load_named_profile("pcie-l4x4").inventory
    nvml = FakeNvml(inventory)
    backend = open_backend("nvml", nvml=nvml, sysfs_root=make_sysfs(tmp_path / "sys", inventory))
    assert backend.discover() == inventory
    backend.close()


def test_real_pynvml_without_a_driver_raises_backend_error() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("NVML is usable on this machine; tests/gpu covers it")
    with pytest.raises(BackendError, match=r"libnvidia-ml\.so\.1 on the library path"):
        open_backend("nvml")
