"""MIG mode per GPU: which devices the plugin offers for a MIG-capable GPU (docs/mig.md).

* ``static`` (the default): what is there -- the instances an administrator created (mig-parted, the GPU
  Operator), or the whole GPU when MIG is disabled;
* ``dynamic``: the driver owns the GPU's partitioning -- the GPU is offered whole and as every (profile,
  placement) of its MIG profiles, all consuming one counter set, and instances are created when a claim is
  prepared and destroyed when it is unprepared. Needs MIG mode enabled (``nvidia-smi -i N -mig 1``);
* ``off``: no MIG devices; the whole GPU when MIG is disabled, nothing when it is enabled (a GPU in MIG mode
  runs no work outside instances).

The flag's syntax is ``MODE[,GPU=MODE...]``: a default for every GPU, then overrides by PCI address
(``0000:3b:00.0``) or UUID. The plugin never switches a GPU's MIG mode itself: that needs the GPU idle and,
on A100, a reset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from driver.devices.model import Gpu, Inventory, full_mig_slot, normalize_pci_bus_id
from driver.log import get_logger

log = get_logger(__name__)

MigMode = Literal["static", "dynamic", "off"]
MIG_MODES: tuple[MigMode, ...] = ("static", "dynamic", "off")


def _empty() -> Mapping[str, MigMode]:
    return MappingProxyType({})


@dataclass(frozen=True)
class MigModes:
    """A default mode and per-GPU overrides (keys: normalised PCI address or lower-case UUID)."""

    default: MigMode = "static"
    per_gpu: Mapping[str, MigMode] = field(default_factory=_empty)

    def mode(self, gpu: Gpu) -> MigMode:
        for key in (gpu.pci_bus_id, gpu.uuid.lower()):
            if key and key in self.per_gpu:
                return self.per_gpu[key]
        return self.default

    def __str__(self) -> str:
        return ",".join([self.default, *(f"{k}={v}" for k, v in sorted(self.per_gpu.items()))])


def _mode(text: str, where: str) -> MigMode:
    value = text.strip().lower()
    for mode in MIG_MODES:
        if value == mode:
            return mode
    raise ValueError(f"{where}: {text!r} is not a MIG mode ({', '.join(MIG_MODES)})")


def _gpu_key(text: str) -> str:
    key = text.strip()
    if key.lower().startswith("gpu-"):
        return key.lower()
    pci = normalize_pci_bus_id(key)
    if pci is None:
        raise ValueError(f"{key!r} is neither a GPU UUID (GPU-...) nor a PCI address (0000:3b:00.0)")
    return pci


def parse_mig_modes(text: str) -> MigModes:
    """``static`` / ``dynamic,0000:3b:00.0=static`` -> :class:`MigModes`; ``ValueError`` naming the part."""
    parts = [p for p in (part.strip() for part in text.split(",")) if p]
    if not parts:
        return MigModes()
    default: MigMode = "static"
    per_gpu: dict[str, MigMode] = {}
    for index, part in enumerate(parts):
        key, sep, value = part.partition("=")
        if not sep:
            if index:
                raise ValueError(f"{part!r}: only the first entry may be a mode alone (MODE[,GPU=MODE...])")
            default = _mode(part, "default")
            continue
        gpu = _gpu_key(key)
        if gpu in per_gpu:
            raise ValueError(f"{key.strip()!r} is given twice")
        per_gpu[gpu] = _mode(value, key.strip())
    return MigModes(default, MappingProxyType(per_gpu))


def apply_mig_modes(inventory: Inventory, modes: MigModes) -> Inventory:
    """The inventory the plugin offers: each GPU as its MIG mode says (warnings name GPUs that cannot)."""
    known = {k for g in inventory.gpus for k in (g.pci_bus_id, g.uuid.lower()) if k}
    for key in sorted(set(modes.per_gpu) - known):
        log.warning("MIG mode set for a GPU this node does not have", gpu=key, mode=modes.per_gpu[key])
    gpus = tuple(_apply(gpu, modes.mode(gpu)) for gpu in inventory.gpus)
    if gpus == inventory.gpus:
        return inventory
    return Inventory(gpus, inventory.driver_version, inventory.cuda_driver_version)


def _apply(gpu: Gpu, mode: MigMode) -> Gpu:
    if mode == "static":
        return gpu
    if mode == "off":
        if gpu.mig_enabled:
            log.warning(
                "GPU has MIG enabled but its MIG mode is off: nothing of it is offered "
                "(disable MIG on it, or choose static or dynamic)",
                gpu=gpu.uuid,
                pci_bus_id=gpu.pci_bus_id,
            )
            return dataclasses.replace(gpu, mig_devices=())
        return gpu
    if not gpu.mig_enabled:
        log.warning(
            "dynamic MIG needs MIG mode enabled on the GPU (nvidia-smi -i <index> -mig 1); offered whole",
            gpu=gpu.uuid,
            pci_bus_id=gpu.pci_bus_id,
            mig="unsupported" if gpu.mig_enabled is None else "disabled",
        )
        return gpu
    if full_mig_slot(gpu) is None:
        log.warning(
            "NVML lists no MIG profiles and placements for the GPU; its instances are offered as they are",
            gpu=gpu.uuid,
            pci_bus_id=gpu.pci_bus_id,
        )
        return gpu
    return dataclasses.replace(gpu, mig_dynamic=True)
