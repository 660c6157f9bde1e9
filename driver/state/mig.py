"""Dynamic MIG on the node: the instances of prepared claims, created, destroyed and repaired.

A device of a GPU in dynamic MIG mode names a MIG slot (profile + placement, ``Device.slot``). Its instance
exists exactly while a claim holding the device is prepared:

* **prepare**: after the claim's ``PrepareStarted`` entry is written (the intent: the checkpoint names the
  device, and its name the GPU, profile and placement), the GPU instance is created at the placement, then
  the compute instance spanning it; the MIG device they make goes into the CDI spec (device nodes, UUID).
  An instance already at that placement with that profile is taken over (a retry after a crash);
* **unprepare** (and the rollback of an interrupted prepare): compute instance, then GPU instance are
  destroyed -- unless another checkpointed claim holds a device on those memory slices;
* **start**: every instance on a dynamic GPU that no completed claim holds is destroyed -- leftovers of a
  prepare that was interrupted, of an unprepare cut short, of anyone else. Nothing survives that no claim
  holds, whatever step a crash hit.

Steps (``ACCEL_DRA_CRASH_AT``): ``mig:gpu-instance-created``, ``mig:compute-instance-created``,
``mig:compute-instance-destroyed``, ``mig:gpu-instance-destroyed``.

Two claims never hold overlapping memory slices of one GPU: :meth:`DynamicMig.conflict` extends the
preparer's overlap guard from device names to placements (the scheduler's counters already keep them apart;
the guard holds even when an allocation raced, kubernetes/kubernetes#136269).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from driver.crash import crash_point
from driver.devices.mig import GpuInstance, MigControl, MigError
from driver.devices.model import Device, Inventory, MigDevice, MigPlacement, MigSlot
from driver.log import get_logger
from driver.state.checkpoint import Checkpoint, ClaimRecord
from driver.state.plan import ClaimPlan

log = get_logger(__name__)


def _overlap(a: MigSlot, b: MigSlot) -> bool:
    return bool(set(a.memory_slices) & set(b.memory_slices))


def _slices(slot: MigSlot) -> str:
    last = slot.placement.start + slot.placement.size - 1
    return f"{slot.placement.start}" if last == slot.placement.start else f"{slot.placement.start}-{last}"


class DynamicMig:
    """The MIG instances behind the dynamic MIG devices of a node's prepared claims."""

    def __init__(self, control: MigControl, inventory: Inventory) -> None:
        self.control = control
        self.inventory = inventory

    def slot_of(self, name: str) -> tuple[Device, MigSlot] | None:
        device = self.inventory.device(name)
        if device is None or device.slot is None or not device.gpu.mig_dynamic:
            return None
        return device, device.slot

    def _held(self, records: Iterable[ClaimRecord]) -> Iterator[tuple[ClaimRecord, Device, MigSlot]]:
        """(claim, device, slot) for every dynamic device the records hold (admin access holds nothing)."""
        for record in records:
            for name in dict.fromkeys(d.device for d in record.devices if not d.admin_access):
                found = self.slot_of(name)
                if found is not None:
                    yield record, *found

    # -- guard -------------------------------------------------------------------------------------------

    def conflict(self, cp: Checkpoint, plan: ClaimPlan, also: Iterable[ClaimRecord] = ()) -> str | None:
        """Why ``plan`` would share memory slices with a device another prepared claim holds, or None.
        ``also``: claims that hold their devices though not completed yet (earlier claims of the same call)."""
        wanted = [
            (d.result.device, found)
            for d in plan.devices
            if not d.result.admin_access and (found := self.slot_of(d.result.device)) is not None
        ]
        if not wanted:
            return None
        held = [*(r for r in cp.claims.values() if r.completed), *also]
        others = [r for r in held if r.uid != plan.ref.uid]
        for record, device, slot in self._held(others):
            for name, (mine, my_slot) in wanted:
                if mine.gpu.uuid == device.gpu.uuid and _overlap(slot, my_slot):
                    return (
                        f"claim {plan.ref}: device {name} needs memory slices {_slices(my_slot)} of GPU "
                        f"{mine.gpu.uuid}, which device {device.name} prepared for claim {record} holds; "
                        "a MIG instance is never given to two claims"
                    )
        return None

    # -- prepare -----------------------------------------------------------------------------------------

    def materialize(self, plan: ClaimPlan) -> ClaimPlan:
        """Create (or take over) the instance of every dynamic device of the claim; the plan's devices then
        carry their MIG devices. A device the claim only has admin access to gets no instance: it sees the
        instance another claim prepared, if there is one."""
        wanted = {
            d.device.name for d in plan.devices if not d.result.admin_access and self.slot_of(d.device.name)
        }
        made: dict[str, MigDevice] = {}
        for planned in plan.unique_devices():
            found = self.slot_of(planned.device.name)
            if found is None:
                continue
            device, slot = found
            mig = (
                self._ensure(device, slot, str(plan.ref))
                if device.name in wanted
                else self._existing(device, slot)
            )
            if mig is not None:
                made[device.name] = mig
        if not made:
            return plan
        return dataclasses.replace(
            plan,
            devices=tuple(
                dataclasses.replace(d, device=dataclasses.replace(d.device, mig=made[d.device.name]))
                if d.device.name in made
                else d
                for d in plan.devices
            ),
        )

    def _instance_at(self, device: Device, slot: MigSlot, strict: bool = True) -> GpuInstance | None:
        """The GPU instance of the slot, or None; ``strict``: MigError when another instance sits on its
        slices."""
        for instance in self.control.gpu_instances(device.gpu.uuid):
            theirs = MigSlot(slot.profile, instance.placement)
            if instance.placement == slot.placement and instance.profile_id == slot.profile.id:
                return instance
            if strict and _overlap(theirs, slot):
                raise MigError(
                    f"GPU {device.gpu.uuid}: memory slices {_slices(slot)} for {device.name} are taken by GPU "
                    f"instance {instance.id} (profile id {instance.profile_id}, placement "
                    f"{instance.placement.start}:{instance.placement.size}) that no claim of this node holds; "
                    "the plugin removes such instances when it starts"
                )
        return None

    def _existing(self, device: Device, slot: MigSlot) -> MigDevice | None:
        instance = self._instance_at(device, slot, strict=False)
        return instance.devices[0] if instance is not None and instance.devices else None

    def _ensure(self, device: Device, slot: MigSlot, claim: str) -> MigDevice:
        gpu = device.gpu.uuid
        instance = self._instance_at(device, slot)
        if instance is None:
            instance = self.control.create_gpu_instance(gpu, slot.profile, slot.placement)
            crash_point("mig:gpu-instance-created")
        if instance.devices:
            return instance.devices[0]
        mig = self.control.create_compute_instance(gpu, instance)
        crash_point("mig:compute-instance-created")
        log.info(
            "MIG instance created",
            claim=claim,
            device=device.name,
            gpu=gpu,
            profile=slot.profile.name,
            placement=f"{slot.placement.start}:{slot.placement.size}",
            gpu_instance=mig.gpu_instance_id,
            compute_instance=mig.compute_instance_id,
            mig_uuid=mig.uuid,
        )
        return mig

    # -- unprepare ---------------------------------------------------------------------------------------

    def release(self, cp: Checkpoint, record: ClaimRecord) -> None:
        """Destroy the instances of ``record``'s dynamic devices that no other checkpointed claim needs."""
        others = list(self._held(r for r in cp.claims.values() if r.uid != record.uid))
        for _, device, slot in self._held([record]):
            keeper = next(
                (r for r, d, s in others if d.gpu.uuid == device.gpu.uuid and _overlap(s, slot)), None
            )
            if keeper is not None:
                log.info(
                    "MIG instance kept: another claim holds its slices", device=device.name, claim=str(keeper)
                )
                continue
            instance = self._instance_at(device, slot)
            if instance is not None:
                self._destroy(device.gpu.uuid, instance, f"claim {record}", device.name)

    def _destroy(self, gpu: str, instance: GpuInstance, why: str, device: str = "") -> None:
        for mig in instance.devices:
            assert mig.compute_instance_id is not None
            try:
                self.control.destroy_compute_instance(gpu, instance.id, mig.compute_instance_id)
            except MigError as err:
                if not err.not_found:
                    raise
            crash_point("mig:compute-instance-destroyed")
        try:
            self.control.destroy_gpu_instance(gpu, instance.id)
        except MigError as err:
            if not err.not_found:
                raise
        crash_point("mig:gpu-instance-destroyed")
        log.info(
            "MIG instance destroyed",
            reason=why,
            device=device or "-",
            gpu=gpu,
            gpu_instance=instance.id,
            placement=f"{instance.placement.start}:{instance.placement.size}",
            mig_uuid=",".join(m.uuid for m in instance.devices) or "-",
        )

    # -- start -------------------------------------------------------------------------------------------

    def reconcile(self, cp: Checkpoint) -> None:
        """Destroy every instance of a dynamic GPU that no completed claim holds (interrupted prepares,
        interrupted unprepares, instances made by anyone else). An instance still in use is left, logged."""
        held: dict[tuple[str, int, MigPlacement], str] = {}
        for _, device, slot in self._held(r for r in cp.claims.values() if r.completed):
            held[(device.gpu.uuid, slot.profile.id, slot.placement)] = device.name
        started = {
            (device.gpu.uuid, slot.profile.id, slot.placement)
            for _, device, slot in self._held(r for r in cp.claims.values() if not r.completed)
        }
        for gpu in (g for g in self.inventory.gpus if g.mig_dynamic):
            try:
                instances = self.control.gpu_instances(gpu.uuid)
            except MigError as err:
                log.error(
                    "MIG instances cannot be listed; leftovers stay until the next start", error=str(err)
                )
                continue
            present = set()
            for instance in instances:
                key = (gpu.uuid, instance.profile_id, instance.placement)
                if key in held:
                    present.add(key)
                    continue
                why = "rolled back: its prepare was interrupted" if key in started else "no claim holds it"
                try:
                    self._destroy(gpu.uuid, instance, why)
                except MigError as err:
                    log.error("MIG instance no claim holds cannot be destroyed", gpu=gpu.uuid, error=str(err))
            for key, name in held.items():
                if key[0] == gpu.uuid and key not in present:
                    log.warning(
                        "MIG instance of a prepared claim is gone (GPU reset?); the claim's next prepare "
                        "creates it again",
                        device=name,
                        gpu=gpu.uuid,
                    )
