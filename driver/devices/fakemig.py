"""MIG instances of simulated GPUs, created and destroyed under the rules NVML enforces.

A fake GPU with MIG enabled starts with the instances its profile lists; :class:`FakeMig` then creates and
destroys instances as NVML would on the real product (``driver.devices.migtables``):

* a GPU instance only at one of its profile's placements, only where its memory slices are free, only while
  the GPU's compute slices, engines and the profile's instance count allow -- otherwise
  ``Insufficient Resources``, NVML's answer;
* GPU-instance ids from the ranges NVML uses on A100/H100 (full GPU 0, 3g/4g 1-2, 2g 3-6, 1g 7-14), the
  lowest free one; one full-size compute instance (id 0) per GPU instance;
* a new MIG UUID for every compute instance created (NVML's change on every creation too);
* a compute instance with live processes (simulated workloads' procs files) cannot be destroyed
  (``In use by another client``), nor a GPU instance that still has a compute instance.

With a state directory the instances live in ``<state>/mig/<gpu uuid>.json`` (replaced atomically), so the
plugin that creates them and the exporter that reads them see the same hardware, and a plugin restarted
after a crash finds what it created; without one they live in this process only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from driver.devices.mig import GpuInstance, MigError
from driver.devices.model import Gpu, MigDevice, MigPlacement, MigProfile, mig_compute_slices
from driver.fsutil import atomic_write

_UUID_NAMESPACE = uuidlib.UUID("0c5f3d1e-64b2-4b8e-9a37-b4f0c1d2e3a4")
#: GPU-instance ids NVML hands out on A100/H100, by the profile's compute slices.
_GI_IDS = {7: range(0, 1), 4: range(1, 3), 3: range(1, 3), 2: range(3, 7), 1: range(7, 15)}
_SLICES_RE = re.compile(r"^(?:\d+c\.)?(\d+)g\.")


@dataclass(frozen=True)
class _Instance:
    gi: int
    profile_id: int
    profile: str
    placement: MigPlacement
    devices: tuple[MigDevice, ...]

    def public(self) -> GpuInstance:
        return GpuInstance(self.gi, self.profile_id, self.placement, self.devices)


def _device_json(d: MigDevice) -> dict[str, Any]:
    assert d.placement is not None
    return {
        "uuid": d.uuid,
        "profile": d.profile,
        "memory": d.memory_bytes,
        "gi": d.gpu_instance_id,
        "ci": d.compute_instance_id,
        "start": d.placement.start,
        "size": d.placement.size,
        "slot": d.slot,
    }


def _device_from(raw: dict[str, Any]) -> MigDevice:
    return MigDevice(
        uuid=str(raw["uuid"]),
        profile=raw.get("profile"),
        memory_bytes=raw.get("memory"),
        gpu_instance_id=int(raw["gi"]),
        compute_instance_id=int(raw["ci"]),
        placement=MigPlacement(int(raw["start"]), int(raw["size"])),
        slot=raw.get("slot"),
    )


def _compute_slices(profile: str | None) -> int:
    match = _SLICES_RE.match(profile or "")
    return int(match.group(1)) if match else 0


class FakeMig:
    """The MIG instances of a fake node's GPUs (a :class:`~driver.devices.mig.MigControl`)."""

    def __init__(self, gpus: Iterable[Gpu], state_dir: Path | None) -> None:
        self._gpus = {g.uuid: g for g in gpus if g.mig_enabled}
        self._dir = state_dir / "mig" if state_dir is not None else None
        self._lock = threading.Lock()
        self._memory: dict[str, tuple[int, list[_Instance]]] = {}

    # -- reading -----------------------------------------------------------------------------------------

    def devices(self, gpu_uuid: str) -> tuple[MigDevice, ...]:
        """The MIG devices the GPU has now, in slot order (what discovery and telemetry report)."""
        if gpu_uuid not in self._gpus:
            return ()
        _, instances = self._load(gpu_uuid)
        found = [d for i in instances for d in i.devices]
        return tuple(sorted(found, key=lambda d: (d.slot if d.slot is not None else 1 << 30, d.uuid)))

    def gpu_instances(self, gpu_uuid: str) -> list[GpuInstance]:
        self._gpu(gpu_uuid)
        return [i.public() for i in self._load(gpu_uuid)[1]]

    # -- changing ----------------------------------------------------------------------------------------

    def create_gpu_instance(self, gpu_uuid: str, profile: MigProfile, placement: MigPlacement) -> GpuInstance:
        gpu = self._gpu(gpu_uuid)
        known = next((p for p in gpu.mig_profiles if p.id == profile.id), None)
        if known is None:
            raise MigError(
                f"GPU {gpu_uuid}: nvmlDeviceCreateGpuInstanceWithPlacement: Not Supported "
                f"(no profile id {profile.id})"
            )
        if placement not in known.placements:
            raise MigError(
                f"GPU {gpu_uuid}: nvmlDeviceCreateGpuInstanceWithPlacement: Invalid Argument "
                f"({known.name} cannot start at memory slice {placement.start})"
            )
        with self._lock:
            serial, instances = self._load(gpu_uuid)
            problem = self._no_room(gpu, known, placement, instances)
            if problem:
                raise MigError(
                    f"GPU {gpu_uuid}: nvmlDeviceCreateGpuInstanceWithPlacement: Insufficient "
                    f"Resources ({known.name} at {placement.start}: {problem})"
                )
            used = {i.gi for i in instances}
            gi = next((n for n in _GI_IDS.get(known.compute_slices, range(15)) if n not in used), None)
            if gi is None:
                raise MigError(
                    f"GPU {gpu_uuid}: nvmlDeviceCreateGpuInstanceWithPlacement: Insufficient "
                    f"Resources (no free GPU instance id)"
                )
            created = _Instance(gi, known.id, known.name, placement, ())
            self._store(gpu_uuid, serial, [*instances, created])
        return created.public()

    def create_compute_instance(self, gpu_uuid: str, gpu_instance: GpuInstance) -> MigDevice:
        gpu = self._gpu(gpu_uuid)
        with self._lock:
            serial, instances = self._load(gpu_uuid)
            found = next((i for i in instances if i.gi == gpu_instance.id), None)
            if found is None:
                raise MigError(f"GPU {gpu_uuid}: GPU instance {gpu_instance.id} not found", not_found=True)
            if found.devices:
                raise MigError(
                    f"GPU {gpu_uuid}: nvmlGpuInstanceCreateComputeInstance: Insufficient "
                    f"Resources (GPU instance {found.gi} already has its compute instance)"
                )
            profile = next(p for p in gpu.mig_profiles if p.id == found.profile_id)
            slots = {d.slot for i in instances for d in i.devices}
            device = MigDevice(
                uuid=f"MIG-{uuidlib.uuid5(_UUID_NAMESPACE, f'{gpu_uuid}/{found.gi}/0/{serial}')}",
                profile=profile.name,
                memory_bytes=profile.memory_bytes,
                gpu_instance_id=found.gi,
                compute_instance_id=0,
                placement=found.placement,
                slot=next(n for n in range(len(slots) + 1) if n not in slots),
            )
            self._store(
                gpu_uuid,
                serial + 1,
                [replace(i, devices=(device,)) if i.gi == found.gi else i for i in instances],
            )
        if self._dir is not None:  # where simulated workloads on the new device report their load
            (self._dir.parent / "gpus" / device.uuid / "procs").mkdir(parents=True, exist_ok=True)
        return device

    def destroy_compute_instance(self, gpu_uuid: str, gpu_instance: int, compute_instance: int) -> None:
        self._gpu(gpu_uuid)
        with self._lock:
            serial, instances = self._load(gpu_uuid)
            found = next((i for i in instances if i.gi == gpu_instance), None)
            device = (
                next((d for d in found.devices if d.compute_instance_id == compute_instance), None)
                if found is not None
                else None
            )
            if found is None or device is None:
                raise MigError(
                    f"GPU {gpu_uuid}: compute instance {compute_instance} of GPU instance {gpu_instance} "
                    "not found",
                    not_found=True,
                )
            if self._busy(device.uuid):
                raise MigError(
                    f"GPU {gpu_uuid}: nvmlComputeInstanceDestroy: In use by another client (processes run on "
                    f"MIG device {device.uuid})",
                    in_use=True,
                )
            rest = tuple(d for d in found.devices if d is not device)
            self._store(gpu_uuid, serial, [replace(i, devices=rest) if i is found else i for i in instances])
        if self._dir is not None:
            shutil.rmtree(self._dir.parent / "gpus" / device.uuid, ignore_errors=True)

    def destroy_gpu_instance(self, gpu_uuid: str, gpu_instance: int) -> None:
        self._gpu(gpu_uuid)
        with self._lock:
            serial, instances = self._load(gpu_uuid)
            found = next((i for i in instances if i.gi == gpu_instance), None)
            if found is None:
                raise MigError(f"GPU {gpu_uuid}: GPU instance {gpu_instance} not found", not_found=True)
            if found.devices:
                raise MigError(
                    f"GPU {gpu_uuid}: nvmlGpuInstanceDestroy: In use by another client (GPU instance "
                    f"{gpu_instance} still has compute instances)",
                    in_use=True,
                )
            self._store(gpu_uuid, serial, [i for i in instances if i is not found])

    # -- rules -------------------------------------------------------------------------------------------

    def _no_room(
        self, gpu: Gpu, profile: MigProfile, placement: MigPlacement, instances: list[_Instance]
    ) -> str | None:
        wanted = set(range(placement.start, placement.start + placement.size))
        for other in instances:
            taken = range(other.placement.start, other.placement.start + other.placement.size)
            if wanted & set(taken):
                return f"memory slices taken by GPU instance {other.gi} ({other.profile})"
        profiles = {p.id: p for p in gpu.mig_profiles}
        used = sum(_compute_slices(i.profile) for i in instances)
        if used + profile.compute_slices > mig_compute_slices(gpu):
            return f"{used} of {mig_compute_slices(gpu)} compute slices in use"
        if sum(1 for i in instances if i.profile_id == profile.id) >= profile.instance_count:
            return f"at most {profile.instance_count} {profile.name} instance(s)"
        totals = max(gpu.mig_profiles, key=lambda p: p.compute_slices).engines()
        for engine, need in profile.engines().items():
            held = sum(
                p.engines()[engine] for i in instances if (p := profiles.get(i.profile_id)) is not None
            )
            if need and held + need > totals[engine]:
                return f"{held} of {totals[engine]} {engine} in use"
        return None

    def _busy(self, mig_uuid: str) -> bool:
        if self._dir is None:
            return False
        procs = self._dir.parent / "gpus" / mig_uuid / "procs"
        for path in procs.glob("*.json") if procs.is_dir() else ():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                if pid_alive(int(json.loads(path.read_text(encoding="utf-8"))["pid"])):
                    return True
        return False

    # -- storage -----------------------------------------------------------------------------------------

    def _gpu(self, gpu_uuid: str) -> Gpu:
        gpu = self._gpus.get(gpu_uuid)
        if gpu is None:
            raise MigError(f"GPU {gpu_uuid}: MIG calls: Not Supported (no such GPU, or MIG mode disabled)")
        return gpu

    def _initial(self, gpu: Gpu) -> list[_Instance]:
        """The instances the profile file lists: one GPU instance per (GPU instance id), as created by hand."""
        by_gi: dict[int, list[MigDevice]] = {}
        for device in gpu.mig_devices:
            if device.gpu_instance_id is not None and device.placement is not None:
                by_gi.setdefault(device.gpu_instance_id, []).append(device)
        ids = {p.name: p.id for p in gpu.mig_profiles}
        out = []
        for gi, devices in sorted(by_gi.items()):
            first = devices[0]
            name = re.sub(r"^\d+c\.", "", first.profile or "")
            assert first.placement is not None
            out.append(_Instance(gi, ids.get(name, -1), name, first.placement, tuple(devices)))
        return out

    def _path(self, gpu_uuid: str) -> Path | None:
        return self._dir / f"{gpu_uuid}.json" if self._dir is not None else None

    def _load(self, gpu_uuid: str) -> tuple[int, list[_Instance]]:
        path = self._path(gpu_uuid)
        if path is None:
            return self._memory.get(gpu_uuid) or (0, self._initial(self._gpus[gpu_uuid]))
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return 0, self._initial(self._gpus[gpu_uuid])
        instances = [
            _Instance(
                gi=int(i["gi"]),
                profile_id=int(i["profileId"]),
                profile=str(i["profile"]),
                placement=MigPlacement(int(i["start"]), int(i["size"])),
                devices=tuple(_device_from(d) for d in i.get("devices", [])),
            )
            for i in raw["instances"]
        ]
        return int(raw.get("serial", 0)), instances

    def _store(self, gpu_uuid: str, serial: int, instances: list[_Instance]) -> None:
        path = self._path(gpu_uuid)
        if path is None:
            self._memory[gpu_uuid] = (serial, instances)
            return
        body = {
            "serial": serial,
            "instances": [
                {
                    "gi": i.gi,
                    "profileId": i.profile_id,
                    "profile": i.profile,
                    "start": i.placement.start,
                    "size": i.placement.size,
                    "devices": [_device_json(d) for d in i.devices],
                }
                for i in sorted(instances, key=lambda i: i.gi)
            ],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(
            path, json.dumps(body, indent=1).encode() + b"\n", mode=0o644, what="fake-mig", sync=False
        )


def pid_alive(pid: int) -> bool:
    """Whether a process exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
