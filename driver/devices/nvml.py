"""Discovery of real GPUs through NVML (the ``nvidia-ml-py`` package, ``import pynvml``).

Only the identity of a GPU (handle and UUID) is mandatory. Every other fact degrades to ``None`` when the
GPU, driver or library does not support the call: older drivers lack functions (``FunctionNotFound``),
consumer GPUs lack NVLink or MIG (``NotSupported``). Such degradations are logged at debug level, naming the
call; unexpected NVML errors on optional facts are logged as warnings and degrade the same way.

The backend takes the NVML module as a parameter (default ``pynvml``), so tests drive the real code paths
with a pure-Python stand-in. PCIe root and NUMA node come from sysfs (root overridable for tests).
"""

from __future__ import annotations

import ctypes
import math
import uuid as uuidlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from driver.devices.backend import BackendError
from driver.devices.model import (
    PCIE_ROOT_RE,
    FabricInfo,
    Gpu,
    Inventory,
    MigDevice,
    MigPlacement,
    NvLink,
    RemoteType,
    normalize_pci_bus_id,
)
from driver.log import get_logger

log = get_logger(__name__)

# Errors meaning "this GPU/driver cannot answer that", as opposed to a failure worth a warning.
_UNSUPPORTED_ERRORS = (
    "NVMLError_NotSupported",
    "NVMLError_FunctionNotFound",
    "NVMLError_NotFound",
    "NVMLError_InvalidArgument",
    "NVMLError_NoPermission",
    "NVMLError_NoData",
    "NVMLError_ArgumentVersionMismatch",
)

_ARCHITECTURES = {
    "NVML_DEVICE_ARCH_KEPLER": "Kepler",
    "NVML_DEVICE_ARCH_MAXWELL": "Maxwell",
    "NVML_DEVICE_ARCH_PASCAL": "Pascal",
    "NVML_DEVICE_ARCH_VOLTA": "Volta",
    "NVML_DEVICE_ARCH_TURING": "Turing",
    "NVML_DEVICE_ARCH_AMPERE": "Ampere",
    "NVML_DEVICE_ARCH_ADA": "Ada Lovelace",
    "NVML_DEVICE_ARCH_HOPPER": "Hopper",
    "NVML_DEVICE_ARCH_BLACKWELL": "Blackwell",
    "NVML_DEVICE_ARCH_RUBIN": "Rubin",
}

_BRANDS = {
    "NVML_BRAND_QUADRO": "Quadro",
    "NVML_BRAND_TESLA": "Tesla",
    "NVML_BRAND_NVS": "NVS",
    "NVML_BRAND_GRID": "Grid",
    "NVML_BRAND_GEFORCE": "GeForce",
    "NVML_BRAND_TITAN": "Titan",
    "NVML_BRAND_NVIDIA_VAPPS": "NvidiaVApps",
    "NVML_BRAND_NVIDIA_VPC": "NvidiaVPC",
    "NVML_BRAND_NVIDIA_VCS": "NvidiaVCS",
    "NVML_BRAND_NVIDIA_VWS": "NvidiaVWS",
    "NVML_BRAND_NVIDIA_CLOUD_GAMING": "NvidiaCloudGaming",
    "NVML_BRAND_QUADRO_RTX": "QuadroRTX",
    "NVML_BRAND_NVIDIA_RTX": "NvidiaRTX",
    "NVML_BRAND_NVIDIA": "Nvidia",
    "NVML_BRAND_GEFORCE_RTX": "GeForceRTX",
    "NVML_BRAND_TITAN_RTX": "TitanRTX",
}

_REMOTE_TYPES: dict[str, RemoteType] = {
    "NVML_NVLINK_DEVICE_TYPE_GPU": "gpu",
    "NVML_NVLINK_DEVICE_TYPE_SWITCH": "switch",
}

# Newest struct first; older drivers reject a newer struct version or lack the versioned function.
_FABRIC_QUERIES = (
    ("nvmlDeviceGetGpuFabricInfoV", "c_nvmlGpuFabricInfo_v3_t"),
    ("nvmlDeviceGetGpuFabricInfoV", "c_nvmlGpuFabricInfoV_t"),
    ("nvmlDeviceGetGpuFabricInfo", "c_nvmlGpuFabricInfo_t"),
)

_NVML_HINT = "is the NVIDIA driver installed and libnvidia-ml.so.1 on the library path?"


def cuda_version_string(value: int) -> str:
    """NVML encodes the CUDA driver version as ``1000*major + 10*minor``: 12090 -> ``12.9``."""
    return f"{value // 1000}.{(value % 1000) // 10}"


def pcie_root_from_sysfs(sysfs_root: Path, pci_bus_id: str) -> str | None:
    """First path component under ``<sysfs>/devices`` of the resolved ``bus/pci/devices/<bdf>`` link."""
    try:
        target = (sysfs_root / "bus" / "pci" / "devices" / pci_bus_id).resolve(strict=True)
        relative = target.relative_to((sysfs_root / "devices").resolve(strict=True))
    except (OSError, ValueError):
        return None
    root = relative.parts[0] if relative.parts else ""
    return root if PCIE_ROOT_RE.match(root) else None


def numa_node_from_sysfs(sysfs_root: Path, pci_bus_id: str) -> int | None:
    """The raw ``numa_node`` value (``-1`` = no affinity), ``None`` when sysfs does not say."""
    try:
        text = (sysfs_root / "bus" / "pci" / "devices" / pci_bus_id / "numa_node").read_text()
        return int(text.strip())
    except (OSError, ValueError):
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return text.strip() or None


class NvmlBackend:
    """:class:`~driver.devices.backend.DeviceBackend` over NVML. Initialises NVML on construction."""

    def __init__(self, sysfs_root: str | Path = "/sys", nvml: Any = None) -> None:
        if nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                raise BackendError(f"NVML is not available: nvidia-ml-py is not installed ({exc})") from exc
            nvml = pynvml
        self._nvml = nvml
        self._sysfs = Path(sysfs_root)
        self._unsupported: tuple[type[BaseException], ...] = tuple(
            getattr(nvml, name) for name in _UNSUPPORTED_ERRORS if hasattr(nvml, name)
        )
        self._missing: set[str] = set()  # functions the library lacks; not called again
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise BackendError(f"NVML is not available: {exc} ({_NVML_HINT})") from exc
        self._open = True

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            log.warning("nvml shutdown failed", error=str(exc))

    def discover(self) -> Inventory:
        if not self._open:
            raise BackendError("NVML backend is closed")
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
        except self._nvml.NVMLError as exc:
            raise BackendError(f"NVML cannot enumerate GPUs: {exc} ({_NVML_HINT})") from exc
        gpus = [gpu for index in range(count) if (gpu := self._gpu(index)) is not None]
        cuda = self._call("nvmlSystemGetCudaDriverVersion")
        return Inventory(
            gpus=tuple(gpus),
            driver_version=_text(self._call("nvmlSystemGetDriverVersion")),
            cuda_driver_version=cuda_version_string(int(cuda)) if cuda else None,
        )

    # -- NVML call helpers --------------------------------------------------------------------------

    def _is(self, exc: BaseException, name: str) -> bool:
        cls = getattr(self._nvml, name, None)
        return isinstance(cls, type) and isinstance(exc, cls)

    def _call(self, fn_name: str, *args: Any, device: str = "", quiet: bool = False) -> Any:
        """Call an optional NVML function; ``None`` when it is missing, unsupported or fails."""
        fn = getattr(self._nvml, fn_name, None)
        if fn is None or fn_name in self._missing:
            return None
        try:
            return fn(*args)
        except self._unsupported as exc:
            if self._is(exc, "NVMLError_FunctionNotFound"):
                self._missing.add(fn_name)
            if not quiet:
                log.debug("nvml call unsupported", call=fn_name, device=device, error=str(exc))
        except self._nvml.NVMLError as exc:
            log.warning("nvml call failed", call=fn_name, device=device, error=str(exc))
        return None

    def _enum(self, table: Mapping[str, str], value: Any) -> str | None:
        if value is None:
            return None
        names = {
            getattr(self._nvml, const): name for const, name in table.items() if hasattr(self._nvml, const)
        }
        return names.get(int(value))

    # -- one GPU ------------------------------------------------------------------------------------

    def _gpu(self, index: int) -> Gpu | None:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpu_uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        except nvml.NVMLError as exc:
            log.warning("gpu skipped: its identity cannot be read", index=index, error=str(exc))
            return None
        if not gpu_uuid:
            log.warning("gpu skipped: empty UUID", index=index)
            return None
        ref = gpu_uuid
        pci = self._call("nvmlDeviceGetPciInfo", handle, device=ref)
        bus_id = normalize_pci_bus_id(_text(pci.busId)) if pci is not None else None
        memory = self._call("nvmlDeviceGetMemoryInfo", handle, device=ref)
        capability = self._call("nvmlDeviceGetCudaComputeCapability", handle, device=ref)
        minor = self._call("nvmlDeviceGetMinorNumber", handle, device=ref)
        mig_enabled, mig_devices = self._mig(handle, ref)
        return Gpu(
            uuid=gpu_uuid,
            product_name=_text(self._call("nvmlDeviceGetName", handle, device=ref)),
            brand=self._enum(_BRANDS, self._call("nvmlDeviceGetBrand", handle, device=ref)),
            architecture=self._enum(
                _ARCHITECTURES, self._call("nvmlDeviceGetArchitecture", handle, device=ref)
            ),
            compute_capability=f"{capability[0]}.{capability[1]}" if capability else None,
            memory_bytes=int(memory.total) if memory is not None else None,
            pci_bus_id=bus_id,
            pcie_root=pcie_root_from_sysfs(self._sysfs, bus_id) if bus_id else None,
            numa_node=self._numa_node(handle, bus_id, ref),
            minor=int(minor) if minor is not None else None,
            mig_enabled=mig_enabled,
            mig_devices=mig_devices,
            nvlinks=self._nvlinks(handle, ref),
            fabric=self._fabric(handle, ref),
        )

    def _numa_node(self, handle: Any, bus_id: str | None, ref: str) -> int | None:
        raw = numa_node_from_sysfs(self._sysfs, bus_id) if bus_id else None
        if raw is None:
            raw = self._call("nvmlDeviceGetNumaNodeId", handle, device=ref)
        return int(raw) if raw is not None and int(raw) >= 0 else None

    # -- NVLink and fabric --------------------------------------------------------------------------

    def _nvlinks(self, handle: Any, ref: str) -> tuple[NvLink, ...] | None:
        """All links NVML reports; ``()`` when the GPU has none, ``None`` when NVML cannot tell."""
        nvml = self._nvml
        if (
            getattr(nvml, "nvmlDeviceGetNvLinkState", None) is None
            or "nvmlDeviceGetNvLinkState" in self._missing
        ):
            return None
        links: list[NvLink] = []
        unsupported = 0
        for index in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
            try:
                state = nvml.nvmlDeviceGetNvLinkState(handle, index)
            except self._unsupported as exc:
                if self._is(exc, "NVMLError_FunctionNotFound"):
                    self._missing.add("nvmlDeviceGetNvLinkState")
                    log.debug(
                        "nvml call unsupported", call="nvmlDeviceGetNvLinkState", device=ref, error=str(exc)
                    )
                    return None
                unsupported += 1  # links beyond the GPU's count, or no NVLink at all
                continue
            except nvml.NVMLError as exc:
                log.warning("nvml call failed", call="nvmlDeviceGetNvLinkState", device=ref, error=str(exc))
                return None
            links.append(self._link(handle, index, bool(state), ref))
        if unsupported:
            log.debug("nvlink links not reported", device=ref, links=unsupported)
        return tuple(links)

    def _link(self, handle: Any, index: int, active: bool, ref: str) -> NvLink:
        if not active:
            return NvLink(index=index, state="inactive")
        pci = self._call("nvmlDeviceGetNvLinkRemotePciInfo", handle, index, device=ref)
        remote_type = self._call("nvmlDeviceGetNvLinkRemoteDeviceType", handle, index, device=ref)
        kind = self._enum(_REMOTE_TYPES, remote_type)
        return NvLink(
            index=index,
            state="active",
            remote_pci_bus_id=normalize_pci_bus_id(_text(pci.busId)) if pci is not None else None,
            remote_type="gpu" if kind == "gpu" else "switch" if kind == "switch" else "unknown",
        )

    def _fabric(self, handle: Any, ref: str) -> FabricInfo | None:
        nvml = self._nvml
        for fn_name, struct_name in _FABRIC_QUERIES:
            fn, struct_type = getattr(nvml, fn_name, None), getattr(nvml, struct_name, None)
            if fn is None or struct_type is None or fn_name in self._missing:
                continue
            info = struct_type()
            try:
                fn(handle, ctypes.pointer(info))
            except self._unsupported as exc:
                if self._is(exc, "NVMLError_FunctionNotFound"):
                    self._missing.add(fn_name)
                    continue
                if self._is(exc, "NVMLError_ArgumentVersionMismatch"):
                    continue
                log.debug("nvml call unsupported", call=fn_name, device=ref, error=str(exc))
                return None
            except nvml.NVMLError as exc:
                log.warning("nvml call failed", call=fn_name, device=ref, error=str(exc))
                return None
            return self._fabric_from(info, ref)
        return None

    def _fabric_from(self, info: Any, ref: str) -> FabricInfo | None:
        completed = getattr(self._nvml, "NVML_GPU_FABRIC_STATE_COMPLETED", 3)
        if info.state != completed or info.status != getattr(self._nvml, "NVML_SUCCESS", 0):
            log.debug("fabric registration not completed", device=ref, state=info.state, status=info.status)
            return None
        raw = bytes(info.clusterUuid)
        if not any(raw):  # an all-zero cluster UUID names no fabric: cliques would collide across racks
            return None
        return FabricInfo(cluster_uuid=str(uuidlib.UUID(bytes=raw)), clique_id=int(info.cliqueId))

    # -- MIG ----------------------------------------------------------------------------------------

    def _mig(self, handle: Any, ref: str) -> tuple[bool | None, tuple[MigDevice, ...]]:
        nvml = self._nvml
        mode = self._call("nvmlDeviceGetMigMode", handle, device=ref)
        if mode is None:
            return None, ()
        if mode[0] != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
            return False, ()
        profiles = self._gi_profiles(handle)
        devices: list[MigDevice] = []
        for index in range(int(self._call("nvmlDeviceGetMaxMigDeviceCount", handle, device=ref) or 0)):
            try:
                mig_handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)
            except self._unsupported:
                continue  # an empty MIG slot
            except nvml.NVMLError as exc:
                log.warning(
                    "nvml call failed", call="nvmlDeviceGetMigDeviceHandleByIndex", device=ref, error=str(exc)
                )
                continue
            mig = self._mig_device(handle, mig_handle, profiles, ref)
            if mig is not None:
                devices.append(mig)
        return True, tuple(devices)

    def _gi_profiles(self, handle: Any) -> dict[int, tuple[str, int]]:
        """GPU-instance profile id -> (name like ``1g.5gb``, compute slice count) for this GPU."""
        table: dict[int, tuple[str, int]] = {}
        for index in range(int(getattr(self._nvml, "NVML_GPU_INSTANCE_PROFILE_COUNT", 0))):
            info = self._call("nvmlDeviceGetGpuInstanceProfileInfo", handle, index, quiet=True)
            if info is None:
                continue
            name = (_text(getattr(info, "name", None)) or "").removeprefix("MIG ").strip()
            if not name:  # v1 struct without a name: build it the way NVIDIA does (memory rounded up)
                name = f"{info.sliceCount}g.{math.ceil(int(info.memorySizeMB) / 1024)}gb"
            table[int(info.id)] = (name, int(info.sliceCount))
        return table

    def _mig_device(
        self, parent: Any, handle: Any, profiles: dict[int, tuple[str, int]], ref: str
    ) -> MigDevice | None:
        mig_uuid = _text(self._call("nvmlDeviceGetUUID", handle, device=ref))
        if not mig_uuid:
            log.warning("mig device skipped: no UUID", device=ref)
            return None
        memory = self._call("nvmlDeviceGetMemoryInfo", handle, device=mig_uuid)
        gi_id = self._call("nvmlDeviceGetGpuInstanceId", handle, device=mig_uuid)
        ci_id = self._call("nvmlDeviceGetComputeInstanceId", handle, device=mig_uuid)
        placement, profile = None, None
        gi = (
            self._call("nvmlDeviceGetGpuInstanceById", parent, gi_id, device=mig_uuid)
            if gi_id is not None
            else None
        )
        gi_info = self._call("nvmlGpuInstanceGetInfo", gi, device=mig_uuid) if gi is not None else None
        if gi_info is not None:
            placement = MigPlacement(start=int(gi_info.placement.start), size=int(gi_info.placement.size))
            gi_profile = profiles.get(int(gi_info.profileId))
            if gi_profile is not None:
                profile = gi_profile[0]
                ci_slices = self._ci_slices(gi, ci_id, mig_uuid) if ci_id is not None else None
                if ci_slices is not None and ci_slices < gi_profile[1]:
                    profile = f"{ci_slices}c.{profile}"
        return MigDevice(
            uuid=mig_uuid,
            profile=profile,
            memory_bytes=int(memory.total) if memory is not None else None,
            gpu_instance_id=int(gi_id) if gi_id is not None else None,
            compute_instance_id=int(ci_id) if ci_id is not None else None,
            placement=placement,
        )

    def _ci_slices(self, gi: Any, ci_id: int, ref: str) -> int | None:
        """Compute-slice count of a compute instance, to tell a ``1c.2g.10gb`` CI from a full one."""
        ci = self._call("nvmlGpuInstanceGetComputeInstanceById", gi, ci_id, device=ref)
        info = self._call("nvmlComputeInstanceGetInfo", ci, device=ref) if ci is not None else None
        if info is None:
            return None
        shared = getattr(self._nvml, "NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED", 0)
        for index in range(int(getattr(self._nvml, "NVML_COMPUTE_INSTANCE_PROFILE_COUNT", 0))):
            profile = self._call(
                "nvmlGpuInstanceGetComputeInstanceProfileInfo", gi, index, shared, quiet=True
            )
            if profile is not None and int(profile.id) == int(info.profileId):
                return int(profile.sliceCount)
        return None
