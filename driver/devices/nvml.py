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
import dataclasses
import re
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from driver.devices.backend import BackendError
from driver.devices.gpm import GpmReader, GpmReadings
from driver.devices.layout import find_library
from driver.devices.mig import GpuInstance
from driver.devices.model import (
    PCIE_ROOT_RE,
    FabricInfo,
    Gpu,
    Inventory,
    MigDevice,
    MigPlacement,
    MigProfile,
    NvLink,
    RemoteType,
    normalize_pci_bus_id,
)
from driver.devices.nvmlmig import NvmlMig
from driver.devices.telemetry import GpuTelemetry, MigTelemetry, ProcessSample, TelemetryError
from driver.log import get_logger

if TYPE_CHECKING:
    from driver.devices.events import HealthSource

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

# Errors after which nothing more can be read from a GPU until it is reset.
_LOST_ERRORS = ("NVMLError_GpuIsLost", "NVMLError_ResetRequired")
# scopeId that sums an NVLink field over every link of the GPU.
_ALL_LINKS = 0xFFFFFFFF
# Field values read in one call: (telemetry field, NVML constant, scope id).
_FIELD_QUERIES: tuple[tuple[str, str, int | None], ...] = (
    ("memory_temperature", "NVML_FI_DEV_MEMORY_TEMP", None),
    ("pcie_io", "NVML_FI_DEV_PCIE_COUNT_RX_BYTES", None),
    ("pcie_io", "NVML_FI_DEV_PCIE_COUNT_TX_BYTES", None),
    ("nvlink_io", "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX", _ALL_LINKS),
    ("nvlink_io", "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX", _ALL_LINKS),
)
_VALUE_MEMBERS = {
    "NVML_VALUE_TYPE_DOUBLE": "dVal",
    "NVML_VALUE_TYPE_UNSIGNED_INT": "uiVal",
    "NVML_VALUE_TYPE_UNSIGNED_LONG": "ulVal",
    "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG": "ullVal",
    "NVML_VALUE_TYPE_SIGNED_LONG_LONG": "sllVal",
    "NVML_VALUE_TYPE_SIGNED_INT": "siVal",
    "NVML_VALUE_TYPE_UNSIGNED_SHORT": "usVal",
}


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
    return root if PCIE_ROOT_RE.fullmatch(root) else None


def numa_node_from_sysfs(sysfs_root: Path, pci_bus_id: str) -> int | None:
    """The raw ``numa_node`` value (``-1`` = no affinity), ``None`` when sysfs does not say."""
    try:
        text = (sysfs_root / "bus" / "pci" / "devices" / pci_bus_id / "numa_node").read_text()
        return int(text.strip())
    except (OSError, ValueError):
        return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _socket_of(sysfs_root: Path, node: int) -> int | None:
    """The physical package of a NUMA node's first CPU; None for a node without CPUs (or unknown)."""
    try:
        cpulist = (sysfs_root / "devices" / "system" / "node" / f"node{node}" / "cpulist").read_text().strip()
    except OSError:
        return None
    first = re.match(r"^(\d+)", cpulist)
    if first is None:
        return None
    return _read_int(
        sysfs_root
        / "devices"
        / "system"
        / "cpu"
        / f"cpu{first.group(1)}"
        / "topology"
        / "physical_package_id"
    )


def near_numa_nodes_from_sysfs(sysfs_root: Path, node: int) -> tuple[int, ...]:
    """``node`` and the nodes at the smallest distance from it in the firmware's distance table (SLIT),
    keeping only those on the same socket where the socket is known: the nodes a device attached to ``node``
    is equally close to (sub-NUMA clustering splits a socket into several). ``(node,)`` when the table
    cannot be read."""
    try:
        text = (sysfs_root / "devices" / "system" / "node" / f"node{node}" / "distance").read_text()
        distances = [int(d) for d in text.split()]
    except (OSError, ValueError):
        return (node,)
    others = [d for i, d in enumerate(distances) if i != node]
    if node >= len(distances) or not others:
        return (node,)
    nearest = min(others)
    socket = _socket_of(sysfs_root, node)
    near = [
        i
        for i, d in enumerate(distances)
        if i != node and d == nearest and (socket is None or _socket_of(sysfs_root, i) in (None, socket))
    ]
    return (node, *near)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return text.strip() or None


def _preload_nvml(nvml: Any, driver_root: str | Path | None) -> None:
    """Load libnvidia-ml from the driver root when it is not on this process's library path.

    In a container the host's driver files are mounted under the driver root, not in the loader's search
    path; pynvml only loads ``libnvidia-ml.so.1`` by name, and skips loading when ``nvmlLib`` is set.
    """
    if driver_root is None or getattr(nvml, "nvmlLib", None) is not None:
        return
    path = find_library(driver_root)
    if path is None:
        return
    try:
        nvml.nvmlLib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise BackendError(f"NVML is not available: cannot load {path}: {exc}") from exc
    log.info("loaded NVML from the driver root", path=str(path))


class NvmlBackend:
    """:class:`~driver.devices.backend.DeviceBackend` over NVML. Initialises NVML on construction."""

    def __init__(
        self,
        sysfs_root: str | Path = "/sys",
        nvml: Any = None,
        clock: Callable[[], float] = time.monotonic,
        driver_root: str | Path | None = None,
    ) -> None:
        if nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                raise BackendError(f"NVML is not available: nvidia-ml-py is not installed ({exc})") from exc
            nvml = pynvml
            _preload_nvml(nvml, driver_root)
        self._nvml = nvml
        self._sysfs = Path(sysfs_root)
        self._unsupported: tuple[type[BaseException], ...] = tuple(
            getattr(nvml, name) for name in _UNSUPPORTED_ERRORS if hasattr(nvml, name)
        )
        self._missing: set[str] = set()  # functions the library lacks; not called again
        # Telemetry state, per GPU UUID (one sample per GPU at a time, see TelemetrySource).
        self._handles: dict[str, Any] = {}
        self._process_stamps: dict[str, int] = {}
        self._pcie_integrals: dict[str, tuple[float, float, float]] = {}
        self._unsupported_seen: set[tuple[str, str]] = set()
        self._clock = clock  # integrates PCIe throughput where NVML has no byte counters
        #: MIG devices of each MIG-enabled GPU, from the last discovery (read per instance).
        self._migs: dict[str, tuple[MigDevice, ...]] = {}
        self.gpm = GpmReader(nvml, self._unsupported, self._gpm_unsupported)
        self.mig = NvmlMig(self)
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise BackendError(f"NVML is not available: {exc} ({_NVML_HINT})") from exc
        self._open = True

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self.gpm.close()
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            log.warning("nvml shutdown failed", error=str(exc))

    def container_edits(self) -> dict[str, Any]:
        return {}

    def health_source(self, inventory: Inventory, *, read_only: bool = False) -> HealthSource:
        """XID and double-bit ECC events and probes through this backend's NVML (``driver.devices.nvml_events``)."""
        from driver.devices.nvml_events import NvmlHealthSource

        return NvmlHealthSource(self._nvml, inventory)

    def discover(self) -> Inventory:
        if not self._open:
            raise BackendError("NVML backend is closed")
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
        except self._nvml.NVMLError as exc:
            raise BackendError(f"NVML cannot enumerate GPUs: {exc} ({_NVML_HINT})") from exc
        gpus = [gpu for index in range(count) if (gpu := self._gpu(index)) is not None]
        self._migs = {g.uuid: g.mig_devices for g in gpus if g.mig_enabled}
        cuda = self._call("nvmlSystemGetCudaDriverVersion")
        return Inventory(
            gpus=tuple(gpus),
            driver_version=_text(self._call("nvmlSystemGetDriverVersion")),
            cuda_driver_version=cuda_version_string(int(cuda)) if cuda else None,
        )

    def sample(self, uuid: str) -> GpuTelemetry:
        """Telemetry of one GPU (:class:`~driver.devices.telemetry.TelemetrySource`).

        Each reading degrades on its own: an unsupported call leaves its field ``None``, a failed one also
        records the error under the field's name. A GPU that is lost or has no handle raises
        :class:`TelemetryError`.
        """
        if not self._open:
            raise TelemetryError(f"NVML backend is closed (GPU {uuid})")
        handle = self._handle(uuid)
        if uuid not in self._migs:
            return _sample_gpu(self, handle, uuid)
        # MIG instances come and go (dynamic MIG): read the ones there are now.
        migs = self._migs[uuid] = self._mig_devices(handle, uuid)
        return dataclasses.replace(_sample_gpu(self, handle, uuid, migs), mig_devices=migs)

    # -- MIG instances (MigControl) -----------------------------------------------------------------

    def gpu_instances(self, gpu_uuid: str) -> list[GpuInstance]:
        return self.mig.gpu_instances(gpu_uuid)

    def create_gpu_instance(self, gpu_uuid: str, profile: MigProfile, placement: MigPlacement) -> GpuInstance:
        return self.mig.create_gpu_instance(gpu_uuid, profile, placement)

    def create_compute_instance(self, gpu_uuid: str, gpu_instance: GpuInstance) -> MigDevice:
        return self.mig.create_compute_instance(gpu_uuid, gpu_instance)

    def destroy_compute_instance(self, gpu_uuid: str, gpu_instance: int, compute_instance: int) -> None:
        self.mig.destroy_compute_instance(gpu_uuid, gpu_instance, compute_instance)

    def destroy_gpu_instance(self, gpu_uuid: str, gpu_instance: int) -> None:
        self.mig.destroy_gpu_instance(gpu_uuid, gpu_instance)

    def _handle(self, uuid: str) -> Any:
        handle = self._handles.get(uuid)
        if handle is None:
            try:
                handle = self._nvml.nvmlDeviceGetHandleByUUID(uuid)
            except self._nvml.NVMLError as exc:
                raise TelemetryError(f"GPU {uuid}: NVML has no handle for it: {exc}") from exc
            self._handles[uuid] = handle
        return handle

    def _gpm_unsupported(self, call: str, exc: BaseException) -> None:
        if self._is(exc, "NVMLError_FunctionNotFound"):
            self._missing.add(call)
        log.debug("nvml gpm unsupported", call=call, error=str(exc))

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
        mig_enabled, mig_devices, mig_profiles = self._mig(handle, ref)
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
            numa_node=(numa := self._numa_node(handle, bus_id, ref)),
            numa_nodes=self._near_numa_nodes(numa),
            minor=int(minor) if minor is not None else None,
            mig_enabled=mig_enabled,
            mig_devices=mig_devices,
            mig_profiles=mig_profiles,
            nvlinks=self._nvlinks(handle, ref),
            fabric=self._fabric(handle, ref),
        )

    def _near_numa_nodes(self, numa_node: int | None) -> tuple[int, ...]:
        """The GPU's equally near NUMA nodes when there are several (``Gpu.numa_nodes``), else ``()``."""
        near = near_numa_nodes_from_sysfs(self._sysfs, numa_node) if numa_node is not None else ()
        return near if len(near) > 1 else ()

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

    def _mig(
        self, handle: Any, ref: str
    ) -> tuple[bool | None, tuple[MigDevice, ...], tuple[MigProfile, ...]]:
        """MIG mode, the MIG devices there are, the GPU-instance profiles (with placements)."""
        mode = self._call("nvmlDeviceGetMigMode", handle, device=ref)
        if mode is None:
            return None, (), ()
        if mode[0] != getattr(self._nvml, "NVML_DEVICE_MIG_ENABLE", 1):
            return False, (), ()
        return True, self._mig_devices(handle, ref), self.mig.profiles(handle, ref)

    def _mig_devices(self, handle: Any, ref: str) -> tuple[MigDevice, ...]:
        """The MIG devices (compute instances) the GPU has now, with their NVML slot."""
        nvml = self._nvml
        profiles = {p.id: (p.name, p.compute_slices) for p in self.mig.profiles(handle, ref)}
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
                devices.append(dataclasses.replace(mig, slot=index))
        return tuple(devices)

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


class _Reads:
    """The reads of one telemetry sample: unsupported -> ``None``; failed -> ``None`` and noted in ``errors``;
    a lost GPU raises :class:`TelemetryError` (nothing else will answer)."""

    def __init__(self, backend: NvmlBackend, uuid: str) -> None:
        self.backend = backend
        self.nvml = backend._nvml
        self.uuid = uuid
        self.errors: dict[str, str] = {}

    def unsupported(self, call: str, exc: BaseException) -> None:
        if self.backend._is(exc, "NVMLError_FunctionNotFound"):
            self.backend._missing.add(call)
        if (call, self.uuid) not in self.backend._unsupported_seen:
            self.backend._unsupported_seen.add((call, self.uuid))
            log.debug("nvml telemetry unsupported", call=call, device=self.uuid, error=str(exc))

    def failed(self, field: str, call: str, exc: BaseException) -> None:
        if any(self.backend._is(exc, name) for name in _LOST_ERRORS):
            raise TelemetryError(f"GPU {self.uuid} cannot be read: {call}: {exc}") from exc
        self.errors.setdefault(field, f"{call}: {exc}")

    def call(self, field: str, call: str, *args: Any) -> Any:
        fn = getattr(self.nvml, call, None)
        if fn is None or call in self.backend._missing:
            return None
        try:
            return fn(*args)
        except self.backend._unsupported as exc:
            self.unsupported(call, exc)
        except self.nvml.NVMLError as exc:
            self.failed(field, call, exc)
        return None

    def const(self, name: str, default: int) -> int:
        return int(getattr(self.nvml, name, default))


def _percent(value: Any) -> float | None:
    return None if value is None else min(1.0, max(0.0, float(value) / 100.0))


def _sample_gpu(
    backend: NvmlBackend, handle: Any, uuid: str, migs: tuple[MigDevice, ...] = ()
) -> GpuTelemetry:
    reads = _Reads(backend, uuid)
    util = reads.call("utilization", "nvmlDeviceGetUtilizationRates", handle)
    encoder = reads.call("encoder_utilization", "nvmlDeviceGetEncoderUtilization", handle)
    decoder = reads.call("decoder_utilization", "nvmlDeviceGetDecoderUtilization", handle)
    memory = reads.call("memory", "nvmlDeviceGetMemoryInfo", handle)
    power_mw = reads.call("power", "nvmlDeviceGetPowerUsage", handle)
    energy_mj = reads.call("energy", "nvmlDeviceGetTotalEnergyConsumption", handle)
    temperature = reads.call(
        "temperature", "nvmlDeviceGetTemperature", handle, reads.const("NVML_TEMPERATURE_GPU", 0)
    )
    sm_mhz = reads.call("sm_clock", "nvmlDeviceGetClockInfo", handle, reads.const("NVML_CLOCK_SM", 1))
    mem_mhz = reads.call("memory_clock", "nvmlDeviceGetClockInfo", handle, reads.const("NVML_CLOCK_MEM", 2))
    volatile = reads.const("NVML_VOLATILE_ECC", 0)
    corrected = reads.call(
        "ecc",
        "nvmlDeviceGetTotalEccErrors",
        handle,
        reads.const("NVML_MEMORY_ERROR_TYPE_CORRECTED", 0),
        volatile,
    )
    uncorrected = reads.call(
        "ecc",
        "nvmlDeviceGetTotalEccErrors",
        handle,
        reads.const("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
        volatile,
    )
    remapped = reads.call("remapped_rows", "nvmlDeviceGetRemappedRows", handle)
    replays = reads.call("pcie_replays", "nvmlDeviceGetPcieReplayCounter", handle)
    fields = _field_values(reads, handle)
    pcie_rx, pcie_tx = (
        fields.get("NVML_FI_DEV_PCIE_COUNT_RX_BYTES"),
        fields.get("NVML_FI_DEV_PCIE_COUNT_TX_BYTES"),
    )
    if pcie_rx is None and pcie_tx is None and "pcie_io" not in reads.errors:
        pcie_rx, pcie_tx = _pcie_from_throughput(backend, reads, handle)
    nvlink_rx = fields.get("NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX")
    nvlink_tx = fields.get("NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX")
    gpm = _gpm(backend, reads, handle) if not migs else None
    return GpuTelemetry(
        uuid=uuid,
        utilization=_percent(getattr(util, "gpu", None)),
        encoder_utilization=_percent(encoder[0]) if encoder else None,
        decoder_utilization=_percent(decoder[0]) if decoder else None,
        memory_used_bytes=int(memory.used) if memory is not None else None,
        memory_total_bytes=int(memory.total) if memory is not None else None,
        power_watts=power_mw / 1000.0 if power_mw is not None else None,
        energy_joules=energy_mj / 1000.0 if energy_mj is not None else None,
        temperature_celsius=float(temperature) if temperature is not None else None,
        memory_temperature_celsius=fields.get("NVML_FI_DEV_MEMORY_TEMP"),
        sm_clock_hertz=sm_mhz * 1e6 if sm_mhz is not None else None,
        memory_clock_hertz=mem_mhz * 1e6 if mem_mhz is not None else None,
        pcie_rx_bytes=int(pcie_rx) if pcie_rx is not None else None,
        pcie_tx_bytes=int(pcie_tx) if pcie_tx is not None else None,
        # NVML counts NVLink data in KiB.
        nvlink_rx_bytes=int(nvlink_rx) * 1024 if nvlink_rx is not None else None,
        nvlink_tx_bytes=int(nvlink_tx) * 1024 if nvlink_tx is not None else None,
        ecc_corrected=int(corrected) if corrected is not None else None,
        ecc_uncorrected=int(uncorrected) if uncorrected is not None else None,
        processes=_processes(backend, reads, handle),
        memory_copy_utilization=_percent(getattr(util, "memory", None)),
        remapped_rows_correctable=int(remapped[0]) if remapped is not None else None,
        remapped_rows_uncorrectable=int(remapped[1]) if remapped is not None else None,
        row_remap_pending=bool(remapped[2]) if remapped is not None else None,
        row_remap_failure=bool(remapped[3]) if remapped is not None else None,
        pcie_replays=int(replays) if replays is not None else None,
        clock_event_reasons=_clock_event_reasons(reads, handle),
        activity=MappingProxyType(dict(gpm.activity)) if gpm else MappingProxyType({}),
        io_throughput=MappingProxyType(dict(gpm.throughput)) if gpm else MappingProxyType({}),
        mig=tuple(_sample_mig(backend, reads, handle, mig) for mig in migs),
        errors=MappingProxyType(dict(reads.errors)),
    )


def _clock_event_reasons(reads: _Reads, handle: Any) -> int | None:
    """The clocks event reasons bitmask; the older "throttle reasons" call where the new one is missing."""
    for call in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        if getattr(reads.nvml, call, None) is None or call in reads.backend._missing:
            continue
        value = reads.call("clock_events", call, handle)
        if value is not None:
            return int(value)
        if call not in reads.backend._missing:
            return None  # unsupported or failed: the older call would say the same
    return None


def _gpm(
    backend: NvmlBackend, reads: _Reads, handle: Any, gpu_instance: int | None = None
) -> GpmReadings | None:
    try:
        return backend.gpm.read(reads.uuid, handle, gpu_instance)
    except reads.nvml.NVMLError as exc:
        reads.failed("gpm", "nvmlGpmMetricsGet", exc)
        return None


def _sample_mig(backend: NvmlBackend, reads: _Reads, parent: Any, mig: MigDevice) -> MigTelemetry:
    """Memory and processes through the MIG device's own handle; activity through GPM of its GPU instance."""
    try:
        handle = backend._handle(mig.uuid)
    except TelemetryError as exc:
        reads.errors.setdefault("mig", str(exc))
        return MigTelemetry(uuid=mig.uuid)
    memory = reads.call("mig", "nvmlDeviceGetMemoryInfo", handle)
    running = reads.call("mig", "nvmlDeviceGetComputeRunningProcesses", handle)
    gpm = _gpm(backend, reads, parent, mig.gpu_instance_id) if mig.gpu_instance_id is not None else None
    return MigTelemetry(
        uuid=mig.uuid,
        memory_used_bytes=int(memory.used) if memory is not None else None,
        memory_total_bytes=int(memory.total) if memory is not None else None,
        activity=MappingProxyType(dict(gpm.activity)) if gpm else MappingProxyType({}),
        # NVML keeps no per-process SM share of MIG devices.
        processes=None if running is None else tuple(_process(p, None) for p in running),
    )


def _field_values(reads: _Reads, handle: Any) -> dict[str, float]:
    """One ``nvmlDeviceGetFieldValues`` call; each value carries its own status."""
    nvml = reads.nvml
    queries = [(f, c, scope) for f, c, scope in _FIELD_QUERIES if hasattr(nvml, c)]
    ids = [getattr(nvml, c) if scope is None else (getattr(nvml, c), scope) for _, c, scope in queries]
    call = "nvmlDeviceGetFieldValues"
    fn = getattr(nvml, call, None)
    if not ids or fn is None or call in reads.backend._missing:
        return {}
    try:
        values = fn(handle, ids)
    except reads.backend._unsupported as exc:
        reads.unsupported(call, exc)
        return {}
    except nvml.NVMLError as exc:
        for field in dict.fromkeys(f for f, _, _ in queries):
            reads.failed(field, call, exc)
        return {}
    members = {getattr(nvml, k): v for k, v in _VALUE_MEMBERS.items() if hasattr(nvml, k)}
    found: dict[str, float] = {}
    for (field, const, _), value in zip(queries, values, strict=False):
        status = int(value.nvmlReturn)
        if status == int(getattr(nvml, "NVML_SUCCESS", 0)):
            member = members.get(int(value.valueType))
            if member is not None:
                found[const] = getattr(value.value, member)
            continue
        error = nvml.NVMLError(status)
        if isinstance(error, reads.backend._unsupported):
            reads.unsupported(f"nvmlDeviceGetFieldValues({const})", error)
        else:
            reads.failed(field, f"nvmlDeviceGetFieldValues({const})", error)
    return found


def _pcie_from_throughput(
    backend: NvmlBackend, reads: _Reads, handle: Any
) -> tuple[float | None, float | None]:
    """Older GPUs only report PCIe throughput (KB/s over a short window): integrate it into byte counters."""
    rx_rate = reads.call(
        "pcie_io", "nvmlDeviceGetPcieThroughput", handle, reads.const("NVML_PCIE_UTIL_RX_BYTES", 1)
    )
    tx_rate = reads.call(
        "pcie_io", "nvmlDeviceGetPcieThroughput", handle, reads.const("NVML_PCIE_UTIL_TX_BYTES", 0)
    )
    if rx_rate is None or tx_rate is None:
        return None, None
    now = backend._clock()
    last, rx, tx = backend._pcie_integrals.get(reads.uuid, (now, 0.0, 0.0))
    elapsed = max(0.0, now - last)
    rx, tx = rx + float(rx_rate) * 1000 * elapsed, tx + float(tx_rate) * 1000 * elapsed
    backend._pcie_integrals[reads.uuid] = (now, rx, tx)
    return rx, tx


def _processes(backend: NvmlBackend, reads: _Reads, handle: Any) -> tuple[ProcessSample, ...] | None:
    running = reads.call("processes", "nvmlDeviceGetComputeRunningProcesses", handle)
    if running is None:
        return None
    shares = _process_utilization(backend, reads, handle)
    return tuple(_process(p, None if shares is None else shares.get(int(p.pid), 0.0)) for p in running)


def _process(proc: Any, sm_utilization: float | None) -> ProcessSample:
    used = getattr(proc, "usedGpuMemory", None)
    return ProcessSample(
        pid=int(proc.pid), memory_bytes=int(used) if used is not None else None, sm_utilization=sm_utilization
    )


def _process_utilization(backend: NvmlBackend, reads: _Reads, handle: Any) -> dict[int, float] | None:
    """Mean SM share per PID over the samples NVML took since the previous call; ``None`` if unsupported."""
    nvml = reads.nvml
    call = "nvmlDeviceGetProcessUtilization"
    fn = getattr(nvml, call, None)
    if fn is None or call in backend._missing:
        return None
    since = backend._process_stamps.get(reads.uuid, 0)
    try:
        samples = fn(handle, since)
    except backend._unsupported as exc:
        if backend._is(exc, "NVMLError_NotFound"):
            return {}  # no sample newer than `since`: nothing ran
        reads.unsupported(call, exc)
        return None
    except nvml.NVMLError as exc:
        reads.failed("processes", call, exc)
        return None
    per_pid: dict[int, list[float]] = {}
    for sample in samples:
        per_pid.setdefault(int(sample.pid), []).append(float(sample.smUtil))
        since = max(since, int(sample.timeStamp))
    backend._process_stamps[reads.uuid] = since
    return {pid: min(1.0, sum(v) / len(v) / 100.0) for pid, v in per_pid.items()}
