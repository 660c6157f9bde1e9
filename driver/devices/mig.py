"""Creating and destroying MIG instances: the backend capability dynamic MIG needs.

A backend that can partition GPUs implements :class:`MigControl` beside
:class:`~driver.devices.backend.DeviceBackend` (NVML: ``driver.devices.nvmlmig``; the fake backend:
``driver.devices.fakemig``). The calls are the hardware's own steps -- a GPU instance at a placement, then a
compute instance inside it; compute instances, then the GPU instance -- so the node state can record and
repair progress between them (``driver.state.mig``). Every call names one GPU by UUID and is made by one
thread at a time per node (the plugin's node lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from driver.devices.backend import BackendError
from driver.devices.model import MigDevice, MigPlacement, MigProfile


class MigError(BackendError):
    """A MIG call failed; the message names the GPU, the call and NVML's answer."""

    def __init__(self, message: str, *, in_use: bool = False, not_found: bool = False) -> None:
        super().__init__(message)
        #: Processes still run on the instance (NVML ``ERROR_IN_USE``): it cannot be destroyed now.
        self.in_use = in_use
        #: The instance does not exist (any more).
        self.not_found = not_found


@dataclass(frozen=True, slots=True)
class GpuInstance:
    """A GPU instance as the GPU reports it, with the MIG devices (compute instances) inside it."""

    id: int
    profile_id: int
    placement: MigPlacement
    #: ``()``: no compute instance yet (creation was interrupted after the GPU instance).
    devices: tuple[MigDevice, ...] = ()


@runtime_checkable
class MigControl(Protocol):
    """A backend that creates and destroys MIG instances on MIG-enabled GPUs."""

    def gpu_instances(self, gpu_uuid: str) -> list[GpuInstance]:
        """Every GPU instance of the GPU, with its compute instances."""
        ...

    def create_gpu_instance(self, gpu_uuid: str, profile: MigProfile, placement: MigPlacement) -> GpuInstance:
        """A GPU instance of ``profile`` at ``placement``; :class:`MigError` when it does not fit."""
        ...

    def create_compute_instance(self, gpu_uuid: str, gpu_instance: GpuInstance) -> MigDevice:
        """The compute instance that spans the whole GPU instance; returns the MIG device it makes."""
        ...

    def destroy_compute_instance(self, gpu_uuid: str, gpu_instance: int, compute_instance: int) -> None:
        """Destroy one compute instance (``MigError.in_use`` while processes run on it)."""
        ...

    def destroy_gpu_instance(self, gpu_uuid: str, gpu_instance: int) -> None:
        """Destroy a GPU instance that has no compute instance left."""
        ...
