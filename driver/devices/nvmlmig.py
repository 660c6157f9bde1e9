"""MIG through NVML: profiles and placements of a GPU, and the instance calls of dynamic MIG.

The pynvml calls (nvidia-ml-py 13.x names):

* profiles: ``nvmlDeviceGetGpuInstanceProfileInfo(handle, NVML_GPU_INSTANCE_PROFILE_*)`` for every index
  (unsupported indexes answer ``NotSupported``), placements with
  ``nvmlDeviceGetGpuInstancePossiblePlacements(handle, profileId, array | None, byref(count))``;
* listing: ``nvmlDeviceGetGpuInstances(handle, profileId, array, byref(count))`` and
  ``nvmlGpuInstanceGetInfo``; the compute instances come from the GPU's MIG device handles (one per compute
  instance, with their UUIDs);
* creating: ``nvmlDeviceCreateGpuInstanceWithPlacement(handle, profileId, byref(placement))``, then
  ``nvmlGpuInstanceCreateComputeInstance(gi, ciProfileId)`` with the compute-instance profile that spans the
  whole GPU instance (``nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, index, SHARED)`` whose
  ``sliceCount`` equals the GPU instance's -- not the smallest one, which would leave compute unused);
* destroying: ``nvmlComputeInstanceDestroy`` (``InUse`` while processes run), then ``nvmlGpuInstanceDestroy``.

These calls need root and the MIG configuration capability (``/dev/nvidia-caps/nvidia-cap1``); the plugin's
container is privileged on real GPUs. tests/gpu/test_mig_dynamic.py runs them on a real MIG-capable GPU.
"""

from __future__ import annotations

import ctypes
import math
from typing import TYPE_CHECKING, Any

from driver.devices.mig import GpuInstance, MigError
from driver.devices.model import MigDevice, MigPlacement, MigProfile
from driver.log import get_logger

if TYPE_CHECKING:
    from driver.devices.nvml import NvmlBackend

log = get_logger(__name__)

#: Enough for any GPU's placements of one profile (A100/H100 have at most 7) when NVML cannot count first.
_MAX_PLACEMENTS = 32


def _text(value: Any) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")
    return text.strip()


class NvmlMig:
    """The :class:`~driver.devices.mig.MigControl` calls of an :class:`NvmlBackend`."""

    def __init__(self, backend: NvmlBackend) -> None:
        self._backend = backend
        self._nvml = backend._nvml
        #: Profiles per GPU UUID: fixed for a GPU, read once.
        self._profiles: dict[str, tuple[MigProfile, ...]] = {}

    # -- profiles --------------------------------------------------------------------------------------

    def profiles(self, handle: Any, ref: str) -> tuple[MigProfile, ...]:
        """Every GPU-instance profile NVML lists for the GPU (MIG mode enabled), with its placements."""
        cached = self._profiles.get(ref)
        if cached is not None:
            return cached
        found: list[MigProfile] = []
        for index in range(int(getattr(self._nvml, "NVML_GPU_INSTANCE_PROFILE_COUNT", 0))):
            info = self._backend._call("nvmlDeviceGetGpuInstanceProfileInfo", handle, index, quiet=True)
            if info is None:
                continue
            name = _text(getattr(info, "name", b"")).removeprefix("MIG ").strip()
            if not name:  # v1 struct without a name: build it the way NVIDIA does (memory rounded up)
                name = f"{info.sliceCount}g.{math.ceil(int(info.memorySizeMB) / 1024)}gb"
            found.append(
                MigProfile(
                    name=name,
                    index=index,
                    id=int(info.id),
                    compute_slices=int(info.sliceCount),
                    memory_bytes=int(info.memorySizeMB) << 20,
                    placements=self._placements(handle, int(info.id), ref),
                    instance_count=int(info.instanceCount),
                    multiprocessors=int(info.multiprocessorCount),
                    copy_engines=int(info.copyEngineCount),
                    decoders=int(info.decoderCount),
                    encoders=int(info.encoderCount),
                    jpeg_engines=int(info.jpegCount),
                    ofa_engines=int(info.ofaCount),
                )
            )
        profiles = tuple(found)
        if profiles:
            self._profiles[ref] = profiles
        return profiles

    def _placements(self, handle: Any, profile_id: int, ref: str) -> tuple[MigPlacement, ...]:
        nvml = self._nvml
        call = "nvmlDeviceGetGpuInstancePossiblePlacements"
        if getattr(nvml, call, None) is None or call in self._backend._missing:
            return ()
        count = ctypes.c_uint(0)
        try:
            getattr(nvml, call)(handle, profile_id, None, ctypes.byref(count))
        except nvml.NVMLError:
            count = ctypes.c_uint(_MAX_PLACEMENTS)  # no counting call: ask with a large array
        array = (nvml.c_nvmlGpuInstancePlacement_t * max(1, count.value))()
        try:
            getattr(nvml, call)(handle, profile_id, array, ctypes.byref(count))
        except self._backend._unsupported as exc:
            if self._backend._is(exc, "NVMLError_FunctionNotFound"):
                self._backend._missing.add(call)
            log.debug("nvml call unsupported", call=call, device=ref, error=str(exc))
            return ()
        except nvml.NVMLError as exc:
            log.warning("nvml call failed", call=call, device=ref, profile=profile_id, error=str(exc))
            return ()
        return tuple(MigPlacement(int(array[i].start), int(array[i].size)) for i in range(count.value))

    # -- MigControl ------------------------------------------------------------------------------------

    def gpu_instances(self, gpu_uuid: str) -> list[GpuInstance]:
        handle = self._gpu(gpu_uuid)
        devices = self._backend._mig_devices(handle, gpu_uuid)
        found: list[GpuInstance] = []
        for profile in self.profiles(handle, gpu_uuid):
            array = (self._nvml.c_nvmlGpuInstance_t * max(1, profile.instance_count))()
            count = ctypes.c_uint(0)
            self._do(gpu_uuid, "nvmlDeviceGetGpuInstances", handle, profile.id, array, ctypes.byref(count))
            for i in range(count.value):
                info = self._do(gpu_uuid, "nvmlGpuInstanceGetInfo", array[i])
                gi = int(info.id)
                found.append(
                    GpuInstance(
                        id=gi,
                        profile_id=int(info.profileId),
                        placement=MigPlacement(int(info.placement.start), int(info.placement.size)),
                        devices=tuple(d for d in devices if d.gpu_instance_id == gi),
                    )
                )
        return sorted(found, key=lambda g: g.id)

    def create_gpu_instance(self, gpu_uuid: str, profile: MigProfile, placement: MigPlacement) -> GpuInstance:
        handle = self._gpu(gpu_uuid)
        where = self._nvml.c_nvmlGpuInstancePlacement_t()
        where.start, where.size = placement.start, placement.size
        gi = self._do(
            gpu_uuid, "nvmlDeviceCreateGpuInstanceWithPlacement", handle, profile.id, ctypes.byref(where)
        )
        info = self._do(gpu_uuid, "nvmlGpuInstanceGetInfo", gi)
        return GpuInstance(
            int(info.id),
            int(info.profileId),
            MigPlacement(int(info.placement.start), int(info.placement.size)),
        )

    def create_compute_instance(self, gpu_uuid: str, gpu_instance: GpuInstance) -> MigDevice:
        handle = self._gpu(gpu_uuid)
        gi = self._do(gpu_uuid, "nvmlDeviceGetGpuInstanceById", handle, gpu_instance.id)
        slices = next(
            (p.compute_slices for p in self.profiles(handle, gpu_uuid) if p.id == gpu_instance.profile_id),
            None,
        )
        ci_profile = self._full_compute_profile(gi, slices, gpu_uuid)
        ci = self._do(gpu_uuid, "nvmlGpuInstanceCreateComputeInstance", gi, ci_profile)
        ci_id = int(self._do(gpu_uuid, "nvmlComputeInstanceGetInfo", ci).id)
        for device in self._backend._mig_devices(handle, gpu_uuid):
            if (device.gpu_instance_id, device.compute_instance_id) == (gpu_instance.id, ci_id):
                return device
        raise MigError(
            f"GPU {gpu_uuid}: compute instance {ci_id} of GPU instance {gpu_instance.id} was created but "
            "has no MIG device handle"
        )

    def _full_compute_profile(self, gi: Any, slices: int | None, gpu_uuid: str) -> int:
        """The compute-instance profile id whose slices equal the GPU instance's (lowest index first)."""
        shared = int(getattr(self._nvml, "NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED", 0))
        best: tuple[int, int] | None = None  # (slices, id) of the largest profile seen
        for index in range(int(getattr(self._nvml, "NVML_COMPUTE_INSTANCE_PROFILE_COUNT", 0))):
            info = self._backend._call(
                "nvmlGpuInstanceGetComputeInstanceProfileInfo", gi, index, shared, quiet=True
            )
            if info is None:
                continue
            if slices is not None and int(info.sliceCount) == slices:
                return int(info.id)
            if best is None or int(info.sliceCount) > best[0]:
                best = (int(info.sliceCount), int(info.id))
        if best is None:
            raise MigError(f"GPU {gpu_uuid}: no compute-instance profile for the GPU instance")
        return best[1]

    def destroy_compute_instance(self, gpu_uuid: str, gpu_instance: int, compute_instance: int) -> None:
        handle = self._gpu(gpu_uuid)
        gi = self._do(gpu_uuid, "nvmlDeviceGetGpuInstanceById", handle, gpu_instance)
        ci = self._do(gpu_uuid, "nvmlGpuInstanceGetComputeInstanceById", gi, compute_instance)
        self._do(gpu_uuid, "nvmlComputeInstanceDestroy", ci)

    def destroy_gpu_instance(self, gpu_uuid: str, gpu_instance: int) -> None:
        handle = self._gpu(gpu_uuid)
        gi = self._do(gpu_uuid, "nvmlDeviceGetGpuInstanceById", handle, gpu_instance)
        self._do(gpu_uuid, "nvmlGpuInstanceDestroy", gi)

    # -- helpers ---------------------------------------------------------------------------------------

    def _gpu(self, gpu_uuid: str) -> Any:
        return self._do(gpu_uuid, "nvmlDeviceGetHandleByUUID", gpu_uuid)

    def _do(self, gpu_uuid: str, call: str, *args: Any) -> Any:
        """A required MIG call: any NVML error becomes a :class:`MigError` naming the GPU and the call."""
        fn = getattr(self._nvml, call, None)
        if fn is None:
            raise MigError(f"GPU {gpu_uuid}: {call}: not in this nvidia-ml-py")
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            raise MigError(
                f"GPU {gpu_uuid}: {call}: {exc}",
                in_use=self._backend._is(exc, "NVMLError_InUse"),
                not_found=self._backend._is(exc, "NVMLError_NotFound"),
            ) from exc
