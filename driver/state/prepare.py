"""The node-state preparer: crash-safe prepare and unprepare of claims.

Prepare, per claim (the caller holds the node lock):

1. plan (pure): local devices, opaque config, CDI names -- a bad claim fails here and nothing is touched;
2. checkpoint ``PrepareStarted`` (intent recorded before any side effect);
3. overlap guard: a device already prepared for another claim fails this one (admin access aside);
4. apply the sharing config (time slicing);
5. write the claim's CDI spec;
6. checkpoint ``PrepareCompleted``.

A crash anywhere leaves either no trace, or a ``PrepareStarted`` entry that the kubelet's retry rolls back and
redoes (or the sweeper removes once the claim is gone). A repeated Prepare of a completed claim answers the
same CDI ids and re-writes the spec if it is missing (a reboot wipes ``/var/run/cdi``).

Unprepare: reset sharing, remove the spec, drop the entry -- each step idempotent, so a crash in between is
finished by the kubelet's retry. An unknown claim succeeds (after removing a spec file left for it, if any).

The checkpoint is re-read at the start of every operation because another plugin instance sharing the plugin
directory (rolling update) may have changed it; the node lock makes that safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from driver.devices.model import Inventory
from driver.log import bind, get_logger
from driver.state.api import Claim, ClaimRef, PrepareResult, claim_ref
from driver.state.cdi import CdiStore, env_name, merge_edits, qualified_id
from driver.state.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointStore,
    ClaimRecord,
    ClaimState,
    DeviceRecord,
    LoadEvent,
)
from driver.state.claimstatus import ClaimStatusWriter
from driver.state.crash import crash_point
from driver.state.devnodes import DeviceNodes
from driver.state.driverfiles import DriverFile
from driver.state.fsutil import remove_stale_temporaries
from driver.state.lock import NodeLock
from driver.state.opaque import ConfigError
from driver.state.plan import ClaimPlan, PlanError, plan_claim
from driver.state.sharing import TimeSlicer, apply_logged

log = get_logger(__name__)

DEFAULT_INTERVAL = "Default"


class OverlapError(ValueError):
    """A device of the claim is already prepared for another claim."""


def find_overlap(cp: Checkpoint, plan: ClaimPlan) -> str | None:
    """Why ``plan`` would hand a device to a second claim, or None.

    Only completed claims hold devices (containers start only after a successful prepare). Admin-access
    results never conflict; two results carrying (different) share ids are separate allocations of a device
    that allows several.
    """
    mine = {(d.result.pool, d.result.device): d for d in plan.devices if not d.result.admin_access}
    for other in cp.claims.values():
        if other.uid == plan.ref.uid or not other.completed:
            continue
        for held in other.devices:
            wanted = mine.get((held.pool, held.device))
            if wanted is None or held.admin_access:
                continue
            shares = (wanted.result.share_id, held.share_id)
            if None not in shares and shares[0] != shares[1]:
                continue
            return (
                f"claim {plan.ref}: device {held.device} (pool {held.pool}) is already prepared for claim "
                f"{other}; a device is never given to two claims unless one of them has admin access"
            )
    return None


def _non_default(sharing: str | None) -> bool:
    return sharing is not None and not sharing.endswith(f":{DEFAULT_INTERVAL}")


def _still_needed(cp: Checkpoint, leaving: str, device: DeviceRecord) -> bool:
    """Whether a claim other than ``leaving`` asks for a non-default time slice on ``device``'s GPU."""
    return any(
        _non_default(d.sharing)
        for other in cp.claims.values()
        if other.uid != leaving
        for d in other.devices
        if (d.pool, d.device) == (device.pool, device.device)
    )


def record_from_spec(uid: str, spec: Mapping[str, Any] | None, driver: str, pool: str) -> ClaimRecord | None:
    """Rebuild a completed claim entry from its CDI spec (after a corrupt checkpoint); None if unusable."""
    if not spec:
        return None
    devices: list[DeviceRecord] = []
    namespace = name = ""
    for entry in spec.get("devices") or ():
        cdi_name = str(entry.get("name", ""))
        if not cdi_name.startswith(f"{uid}-"):
            return None
        device = cdi_name[len(uid) + 1 :]
        env = dict(
            str(e).split("=", 1)
            for e in (entry.get("containerEdits") or {}).get("env") or ()
            if "=" in str(e)
        )
        base = env_name(device)
        sharing = env.get(f"{base}_SHARING")
        namespace, _, name = env.get(f"{base}_CLAIM", "/").partition("/")
        devices.append(
            DeviceRecord(
                request="",
                pool=pool,
                device=device,
                uuid=env.get(base, ""),
                admin_access=env.get(f"{base}_ADMIN_ACCESS") == "true",
                cdi_ids=(qualified_id(driver, cdi_name),),
                sharing=sharing,
                # Unknown after a rebuild: assume the GPU took the setting, so unprepare resets it.
                sharing_applied=_non_default(sharing),
            )
        )
    if not devices:
        return None
    return ClaimRecord(uid, namespace, name, ClaimState.PREPARE_COMPLETED, tuple(devices))


class NodePreparer:
    """The :class:`~driver.state.api.Preparer` of a real node (or a simulated one, with real files)."""

    def __init__(
        self,
        *,
        driver: str,
        pool: str,
        inventory: Inventory,
        store: CheckpointStore,
        specs: CdiStore,
        nodes: DeviceNodes,
        driver_files: Sequence[DriverFile],
        slicer: TimeSlicer,
        lock: NodeLock,
        backend_edits: Mapping[str, Any] | None = None,
        status: ClaimStatusWriter | None = None,
    ) -> None:
        self.driver = driver
        self.pool = pool
        self.inventory = inventory
        self.store = store
        self.specs = specs
        self.nodes = nodes
        self.slicer = slicer
        self.lock = lock
        self.status = status
        self.common_edits = merge_edits(
            {"deviceNodes": nodes.control_nodes()},
            {"mounts": [f.mount() for f in driver_files]},
            backend_edits or {},
        )

    # -- async entry points (the Preparer protocol) --------------------------------------------------

    async def start(self) -> None:
        """Settle what a crash or reboot left behind, before serving."""
        await self.lock.run(lambda: asyncio.to_thread(self.recover))

    async def prepare(self, claims: Sequence[Claim]) -> dict[str, PrepareResult]:
        results, plans = await asyncio.to_thread(self.prepare_sync, claims)
        if self.status is not None:
            fetched = {claim_ref(c).uid: c for c in claims}  # as just read: spares the writer a GET
            for plan in plans:
                self.status.submit(plan.ref, plan.device_statuses(), known=fetched.get(plan.ref.uid))
        return results

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, str]:
        return await asyncio.to_thread(self.unprepare_sync, claims)

    async def close(self) -> None:
        if self.status is not None:
            await self.status.close()

    # -- synchronous core (caller holds the node lock) ---------------------------------------------

    def recover(self) -> None:
        for name in self.specs.remove_temporaries() + remove_stale_temporaries(
            self.store.directory, CHECKPOINT_FILE
        ):
            log.info("removed leftover temporary file", file=name)
        cp = self.checkpoint()
        for uid in self.specs.claim_uids():
            if uid not in cp.claims:
                self.specs.remove(uid)
                log.warning("removed CDI spec of a claim this node does not have prepared", claim_uid=uid)
        started = [str(r) for r in cp.claims.values() if not r.completed]
        log.info(
            "node state loaded",
            checkpoint=str(self.store.path),
            prepared=sum(1 for r in cp.claims.values() if r.completed),
            interrupted=",".join(started) or "-",
        )

    def checkpoint(self) -> Checkpoint:
        """The current checkpoint, after handling a reboot, corruption or migration found on load."""
        cp, event = self.store.load()
        if event == LoadEvent.REBOOTED:
            for uid in self.specs.claim_uids():
                self.specs.remove(uid)
            self.store.save(cp)
        elif event == LoadEvent.CORRUPT:
            cp = self._rebuild(cp)
            self.store.save(cp)
        elif event == LoadEvent.MIGRATED:
            self.store.save(cp)
        return cp

    def _rebuild(self, cp: Checkpoint) -> Checkpoint:
        for uid in self.specs.claim_uids():
            record = record_from_spec(uid, self.specs.read(uid), self.driver, self.pool)
            if record is None:
                log.warning("CDI spec unusable for rebuilding the checkpoint; removed", claim_uid=uid)
                self.specs.remove(uid)
                continue
            cp = cp.with_claim(record)
        log.warning("checkpoint rebuilt from CDI specs", claims=len(cp.claims))
        return cp

    def prepare_sync(self, claims: Sequence[Claim]) -> tuple[dict[str, PrepareResult], list[ClaimPlan]]:
        results: dict[str, PrepareResult] = {}
        plans: list[ClaimPlan] = []
        for claim in claims:
            ref = claim_ref(claim)
            with bind(claim=str(ref)):
                try:
                    plan = self._prepare_one(claim)
                except (PlanError, ConfigError, OverlapError) as err:
                    log.warning("claim rejected", error=str(err))
                    results[ref.uid] = PrepareResult(error=str(err))
                    continue
                except Exception as err:
                    log.exception("prepare failed")
                    results[ref.uid] = PrepareResult(error=f"claim {ref}: prepare failed: {err}")
                    continue
            results[ref.uid] = PrepareResult(devices=plan.prepared_devices())
            plans.append(plan)
        return results, plans

    def unprepare_sync(self, refs: Sequence[ClaimRef]) -> dict[str, str]:
        errors: dict[str, str] = {}
        for ref in refs:
            with bind(claim=str(ref)):
                try:
                    self.unprepare_one(ref)
                    errors[ref.uid] = ""
                except Exception as err:
                    log.exception("unprepare failed")
                    errors[ref.uid] = f"claim {ref}: unprepare failed: {err}"
        return errors

    def _prepare_one(self, claim: Claim) -> ClaimPlan:
        plan = plan_claim(claim, driver=self.driver, pool=self.pool, inventory=self.inventory)
        cp = self.checkpoint()
        record = cp.claims.get(plan.ref.uid)
        if record is not None and record.completed:
            return self._repeat(cp, plan, record)
        if record is not None:
            log.info("rolling back an interrupted prepare")
            self._undo(cp, record)
        cp = cp.with_claim(plan.record(ClaimState.PREPARE_STARTED))
        self.store.save(cp)
        crash_point("prepare:started")
        try:
            return self._finish(cp, plan)
        except OverlapError:
            self.store.save(cp.without(plan.ref.uid))
            raise
        except Exception:
            self._abandon(cp, plan)
            raise

    def _finish(self, cp: Checkpoint, plan: ClaimPlan) -> ClaimPlan:
        conflict = find_overlap(cp, plan)
        if conflict:
            raise OverlapError(conflict)
        crash_point("prepare:overlap-checked")
        applied = self._apply_sharing(plan)
        crash_point("prepare:config-applied")
        spec = plan.spec(self.nodes, self.common_edits)
        if spec is not None:
            self.specs.write(plan.ref.uid, spec)
        crash_point("prepare:cdi-written")
        self.store.save(cp.with_claim(plan.record(ClaimState.PREPARE_COMPLETED, applied)))
        crash_point("prepare:completed")
        log.info(
            "claim prepared",
            devices=",".join(d.device.name for d in plan.unique_devices()) or "-",
            cdi_spec=str(self.specs.path(plan.ref.uid)) if spec is not None else "-",
        )
        return plan

    def _abandon(self, cp: Checkpoint, plan: ClaimPlan) -> None:
        """Best-effort rollback after an unexpected error; if it fails too, the retry rolls back."""
        try:
            self._undo(cp, plan.record(ClaimState.PREPARE_STARTED))
            self.store.save(cp.without(plan.ref.uid))
        except Exception as err:
            log.warning(
                "rollback after failed prepare incomplete; the next attempt finishes it", error=str(err)
            )

    def _repeat(self, cp: Checkpoint, plan: ClaimPlan, record: ClaimRecord) -> ClaimPlan:
        recorded = sorted({d.device for d in record.devices})
        planned = sorted({d.result.device for d in plan.devices})
        if recorded != planned:
            raise PlanError(
                f"claim {plan.ref} is prepared with devices {recorded}, but its allocation names {planned}"
            )
        applied = {d.device: d.sharing_applied for d in record.devices}
        fresh = plan.record(ClaimState.PREPARE_COMPLETED, applied)
        if fresh != record:  # a rebuilt or migrated entry: fill in what it lacked
            self.store.save(cp.with_claim(fresh))
        spec = plan.spec(self.nodes, self.common_edits)
        if spec is not None and not self.specs.exists(plan.ref.uid):
            self.specs.write(plan.ref.uid, spec)
            log.info("CDI spec was missing; re-created", cdi_spec=str(self.specs.path(plan.ref.uid)))
        return plan

    def unprepare_one(self, ref: ClaimRef) -> bool:
        """Undo ``ref``; return whether it was prepared (a missing claim is fine)."""
        cp = self.checkpoint()
        record = cp.claims.get(ref.uid)
        if record is None:
            if self.specs.remove(ref.uid):
                log.warning("removed CDI spec of a claim without checkpoint entry")
            return False
        self._reset_sharing(cp, record)
        crash_point("unprepare:sharing-reset")
        self.specs.remove(ref.uid)
        crash_point("unprepare:cdi-removed")
        self.store.save(cp.without(ref.uid))
        crash_point("unprepare:completed")
        log.info("claim unprepared", state=str(record.state))
        return True

    def _undo(self, cp: Checkpoint, record: ClaimRecord) -> None:
        self._reset_sharing(cp, record)
        self.specs.remove(record.uid)

    def _apply_sharing(self, plan: ClaimPlan) -> dict[str, bool]:
        applied: dict[str, bool] = {}
        for d in plan.unique_devices():
            if d.config is not None and d.config.time_slicing is not None:
                applied[d.device.name] = apply_logged(
                    self.slicer, d.device, d.config.time_slicing, str(plan.ref)
                )
        return applied

    def _reset_sharing(self, cp: Checkpoint, record: ClaimRecord) -> None:
        """Put the default time slice back on GPUs this claim changed, once no other claim asks for a
        non-default one there (a claim without sharing config, admin access or not, needs nothing kept).

        An interrupted prepare may have changed the slice before recording it, so it is reset too.
        """
        for d in record.devices:
            if not _non_default(d.sharing) or not (d.sharing_applied or not record.completed):
                continue
            device = self.inventory.device(d.device)
            if device is not None and not _still_needed(cp, record.uid, d):
                apply_logged(self.slicer, device, DEFAULT_INTERVAL, str(record))

    # -- for the sweeper and the metrics ------------------------------------------------------------

    def records(self) -> list[ClaimRecord]:
        return list(self.checkpoint().claims.values())

    def prepared_device_count(self) -> int:
        """Devices of completed claims, as of the checkpoint last read or written; no I/O, no lock needed."""
        return sum(len(r.devices) for r in self.store.last.claims.values() if r.completed)
