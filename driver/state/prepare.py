"""The node-state preparer: crash-safe prepare and unprepare of claims.

Prepare of one call's claims, in phases (the caller holds the node lock):

1. plan each claim (pure): local devices, opaque config, CDI names -- a bad claim fails here and nothing is
   touched; an interrupted earlier attempt (``PrepareStarted``) is rolled back;
2. overlap guard: a device already prepared for another claim, or taken by an earlier claim of this call,
   fails this one (admin access aside), and so does a dynamic MIG device on memory slices another claim
   holds;
3. checkpoint ``PrepareStarted`` for every claim that passed and changes the node beyond its own files: a
   time-slicing config or a dynamic MIG device (intent recorded before such a side effect); a claim whose
   only traces are its CDI spec and metadata files is not recorded here;
4. per claim: apply the sharing config (time slicing), create the instances of its dynamic MIG devices
   (``driver.state.mig``), write the device metadata files, then the claim's CDI spec that mounts them;
5. checkpoint ``PrepareCompleted`` for every claim that got its spec.

The checkpoint is written at most once per phase for the whole call, not per claim: a call with 1,000 claims
writes it twice, well inside the kubelet's deadline, and a call of claims without side effects beyond their
files writes it once. A crash anywhere leaves either no trace, files of claims without a checkpoint entry
(which the next start or sweeper pass removes: a spec no entry names is an orphan), or ``PrepareStarted``
entries that the kubelet's retry rolls back and redoes (or the sweeper removes once the claim is gone). The start writes an
empty checkpoint on a fresh node (any operation, when it finds it deleted with no spec), so the files a crash leaves before the first ``PrepareCompleted`` are
orphans too, never the proof of a prepared claim that a missing checkpoint is rebuilt from. A repeated
Prepare of a completed claim answers the same CDI ids and re-writes the spec if it is missing (a reboot
wipes ``/var/run/cdi``).

Unprepare of one call's claims: per claim reset sharing, remove the spec and destroy its dynamic MIG
instances, then drop all their entries in one checkpoint write -- each step idempotent, so a crash in
between is finished by the kubelet's retry. An unknown claim succeeds (after removing a spec file left for
it, if any).

The checkpoint is re-read at the start of every operation because another plugin instance sharing the plugin
directory (rolling update) may have changed it; the node lock makes that safe. A missing or corrupt
checkpoint while this driver's CDI specs exist is rebuilt from them: never a fresh start that would hand
their devices out again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from driver.crash import crash_point
from driver.devices.model import Inventory
from driver.fsutil import remove_stale_temporaries
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
from driver.state.devnodes import DeviceNodes
from driver.state.driverfiles import DriverFile
from driver.state.lock import NodeLock
from driver.state.metadata import ClaimMetadataWriter
from driver.state.mig import DynamicMig
from driver.state.opaque import ConfigError, carries_config
from driver.state.plan import ClaimPlan, PlanError, plan_claim
from driver.state.sharing import TimeSlicer, apply_logged

log = get_logger(__name__)

DEFAULT_INTERVAL = "Default"


#: Calls of at most this many claims, none with a sharing config, run on the event loop: a claim costs well
#: under a millisecond of file work (no fsync by default), less than handing the call to a worker thread and
#: back, which on a busy node means two thread wake-ups. Larger calls (a kubelet restart re-preparing a
#: node's pods) and time-slicing changes (nvidia-smi, up to seconds per GPU) go to a thread, so the health
#: stream and /metrics keep being served.
INLINE_CLAIMS = 8

T = TypeVar("T")
A = TypeVar("A")


async def _run(on_loop: bool, work: Callable[[A], T], arg: A) -> T:
    return work(arg) if on_loop else await asyncio.to_thread(work, arg)


class OverlapError(ValueError):
    """A device of the claim is already prepared for another claim."""


class UnprepareError(RuntimeError):
    """A claim could not be unprepared; the message names it."""


@dataclass
class _PrepareCall:
    """What one prepare call decided so far, claim by claim."""

    results: dict[str, PrepareResult] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    #: Claims to prepare now (passed planning and the overlap guard), in call order.
    fresh: list[ClaimPlan] = field(default_factory=list)
    #: Claims already prepared: answered again.
    repeats: list[tuple[ClaimPlan, ClaimRecord]] = field(default_factory=list)
    #: Claims answered with their devices, by UID, in call order.
    completed: dict[str, ClaimPlan] = field(default_factory=dict)
    #: Claims whose CDI spec this call wrote.
    specs_written: list[str] = field(default_factory=list)

    def fail(self, ref: ClaimRef, error: str) -> None:
        self.results[ref.uid] = PrepareResult(error=error)
        self.completed.pop(ref.uid, None)

    def complete(self, plan: ClaimPlan) -> None:
        self.results[plan.ref.uid] = PrepareResult(devices=plan.prepared_devices())
        self.completed[plan.ref.uid] = plan

    def succeeded(self) -> list[ClaimPlan]:
        return list(self.completed.values())


class DeviceHolders:
    """Which claims hold which devices: the completed claims of a checkpoint, plus the claims of the call
    in progress once they pass the guard. Built once per call, so checking 1,000 claims stays linear.

    Only completed claims hold devices (containers start only after a successful prepare). Admin-access
    results never conflict; two results carrying (different) share ids are separate allocations of a
    device that allows several -- unless they ask for different time slices: a GPU has one.
    """

    def __init__(self, cp: Checkpoint) -> None:
        self._held: dict[tuple[str, str], list[tuple[ClaimRecord, DeviceRecord]]] = {}
        for record in cp.claims.values():
            if record.completed:
                self._add(record)

    def _add(self, record: ClaimRecord) -> None:
        for held in record.devices:
            if not held.admin_access:
                self._held.setdefault((held.pool, held.device), []).append((record, held))

    def add(self, record: ClaimRecord) -> None:
        """A claim of the call in progress holds its devices from here on (whatever its state says)."""
        self._add(record)

    def conflict(self, plan: ClaimPlan) -> str | None:
        """Why ``plan`` would hand a device to a second claim, or None."""
        for wanted in plan.devices:
            if wanted.result.admin_access:
                continue
            for other, held in self._held.get((wanted.result.pool, wanted.result.device), ()):
                if other.uid == plan.ref.uid:
                    continue
                shares = (wanted.result.share_id, held.share_id)
                if None not in shares and shares[0] != shares[1]:
                    if None not in (wanted.sharing, held.sharing) and wanted.sharing != held.sharing:
                        return (
                            f"claim {plan.ref}: device {held.device} (pool {held.pool}) is shared with claim "
                            f"{other}, which runs it with {held.sharing}; this claim asks for {wanted.sharing}, "
                            "and a GPU has one time slice"
                        )
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
        metadata: ClaimMetadataWriter | None = None,
        mig: DynamicMig | None = None,
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
        #: Device metadata files (KEP-5304) mounted into containers; None: never written nor cleaned up.
        self.metadata = metadata
        self.mig = mig
        #: None: no recovery ran (a preparer used without :meth:`start`); False: the last one failed part
        #: way, and the next node-locked operation runs it again; True: done.
        self._recovered: bool | None = None
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
        on_loop = len(claims) <= INLINE_CLAIMS and not any(carries_config(c, self.driver) for c in claims)
        results, plans = await _run(on_loop, self.prepare_sync, claims)
        if self.status is not None:
            fetched = {claim_ref(c).uid: c for c in claims}  # as just read: spares the writer a GET
            for plan in plans:
                self.status.submit(plan.ref, plan.device_statuses(), known=fetched.get(plan.ref.uid))
        return results

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, str]:
        # The checkpoint as last seen says whether a time slice is to be reset (a claim another plugin
        # instance prepared meanwhile is only found under the lock; it just costs the loop a pause).
        known = self.store.last.claims
        on_loop = len(claims) <= INLINE_CLAIMS and not any(
            d.sharing for ref in claims if (r := known.get(ref.uid)) for d in r.devices
        )
        return await _run(on_loop, self.unprepare_sync, claims)

    async def close(self) -> None:
        if self.status is not None:
            await self.status.close()

    # -- synchronous core (caller holds the node lock) ---------------------------------------------

    def recover(self) -> None:
        """Settle what a crash or reboot left. A failure (a full disk, say) does not stop the plugin: the
        next node-locked operation (prepare, unprepare, sweeper pass) runs the whole recovery again, until
        it completes; meanwhile every operation loads -- and, if need be, rebuilds -- the checkpoint, and
        fails by claim."""
        try:
            self._recover()
        except OSError as err:
            self._recovered = False
            log.error(
                "node state recovery incomplete; the next prepare, unprepare or claim sweep retries it",
                error=str(err),
            )
        else:
            self._recovered = True

    def _finish_recovery(self) -> None:
        """Under the node lock: retry a start-up recovery that failed part way (one flag test otherwise)."""
        if self._recovered is False:
            log.info("retrying the node state recovery")
            self.recover()

    def _recover(self) -> None:
        self._remove_temporaries()
        self.specs.set_aside_junk()
        cp = self.checkpoint()
        self._remove_orphans(cp)
        if self.mig is not None:
            self.mig.reconcile(cp)
        started = [str(r) for r in cp.claims.values() if not r.completed]
        log.info(
            "node state loaded",
            checkpoint=str(self.store.path),
            prepared=sum(1 for r in cp.claims.values() if r.completed),
            interrupted=",".join(started) or "-",
        )

    def _remove_temporaries(self) -> None:
        """Under the node lock: the temporary files of spec and checkpoint writes are those of killed writers."""
        for name in self.specs.remove_temporaries() + remove_stale_temporaries(
            self.store.directory, CHECKPOINT_FILE
        ):
            log.info("removed leftover temporary file", file=name)

    def _remove_orphans(self, cp: Checkpoint) -> None:
        """Remove the CDI specs and metadata files of claims without an entry in ``cp``, a checkpoint read
        under the node lock. Every writer of these files holds the lock from before its first file to the
        save that records the claim, so none of them is in flight: such files are left by a crash (this
        process's or another instance's, during a rolling update) or a failed rollback."""
        for uid in self.specs.claim_uids():
            if uid not in cp.claims:
                self.specs.remove(uid)
                log.warning("removed CDI spec of a claim this node does not have prepared", claim_uid=uid)
        for uid in self.metadata.store.claim_uids() if self.metadata is not None else ():
            if uid not in cp.claims:
                self._remove_metadata(uid)
                log.warning(
                    "removed device metadata of a claim this node does not have prepared", claim_uid=uid
                )

    def checkpoint(self) -> Checkpoint:
        """The current checkpoint, after handling a reboot, corruption or migration found on load. A
        missing checkpoint with no CDI specs is written empty at once (at start, or whenever it is found
        deleted): from then on a spec without checkpoint entry is an orphan to remove, never the trace of
        a lost checkpoint that would be rebuilt from it as prepared."""
        cp, event = self.store.load()
        if event == LoadEvent.REBOOTED:
            for uid in self.specs.claim_uids():
                self.specs.remove(uid)
            self.store.save(cp)
        elif event == LoadEvent.CORRUPT:
            cp = self._rebuild(cp)
            self.store.save(cp)
        elif event == LoadEvent.MISSING and self.specs.claim_uids():
            # Deleted by hand or lost: the specs prove claims are prepared here, so this is no fresh node.
            log.warning("checkpoint is missing but CDI specs exist; rebuilding", path=str(self.store.path))
            cp = self._rebuild(cp)
            self.store.save(cp)
        elif event in (LoadEvent.MIGRATED, LoadEvent.MISSING):
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
        """Prepare one call's claims (module docstring: the phases); one result per claim UID."""
        call = _PrepareCall()
        try:
            self._finish_recovery()
            cp = self.checkpoint()
        except Exception as err:
            log.exception("prepare failed: node state unreadable")
            for ref in map(claim_ref, claims):
                call.fail(ref, f"claim {ref}: prepare failed: node state: {err}")
            return call.results, []
        loaded = cp
        cp = self._plan_all(cp, claims, call)
        if cp != loaded:  # new claims recorded as started, interrupted ones rolled back
            try:
                self.store.save(cp)
            except Exception as err:
                log.exception("prepare failed: checkpoint not written")
                for plan in call.fresh:
                    call.fail(plan.ref, f"claim {plan.ref}: prepare failed: checkpoint not written: {err}")
                call.fresh, cp = [], loaded
            else:
                crash_point("prepare:started")
        done = self._without_lost_specs(self._apply_all(cp, call), cp, call)
        if done != cp:
            try:
                self.store.save(done)
            except Exception as err:
                log.exception("prepare failed: checkpoint not written")
                self._abandon(call, f"prepare failed: checkpoint not written: {err}")
                return call.results, call.succeeded()
        crash_point("prepare:completed")
        if log.is_debug():  # the call's answered line (info) names its claims; this adds their devices
            for plan in call.fresh:
                if plan.ref.uid in call.completed:
                    log.debug(
                        "claim prepared",
                        claim=str(plan.ref),
                        devices=",".join(d.device.name for d in plan.unique_devices()) or "-",
                        cdi_spec=str(self.specs.path(plan.ref.uid)) if plan.devices else "-",
                    )
        return call.results, call.succeeded()

    def _plan_all(self, cp: Checkpoint, claims: Sequence[Claim], call: _PrepareCall) -> Checkpoint:
        """Phases 1 and 2: plan, roll back interrupted attempts, guard overlaps. Returns the checkpoint to
        write before any side effect: interrupted attempts dropped, claims with side effects beyond their
        files recorded as ``PrepareStarted``."""
        holders = DeviceHolders(cp)
        started: list[ClaimRecord] = []  # every claim of the call that passed, for the MIG guard
        intents: list[ClaimRecord] = []  # those of them recorded before their side effects
        for claim in claims:
            ref = claim_ref(claim)
            if ref.uid in call.seen:
                continue  # the same claim twice in one call: answered once
            call.seen.add(ref.uid)
            with bind(claim=str(ref)):
                try:
                    plan = plan_claim(claim, driver=self.driver, pool=self.pool, inventory=self.inventory)
                    record = cp.claims.get(ref.uid)
                    if record is not None and record.completed:
                        call.repeats.append((self._check_repeat(plan, record), record))
                        continue
                    if record is not None:
                        log.info("rolling back an interrupted prepare")
                        self._undo(cp, record)
                        cp = cp.without(ref.uid)
                    conflict = holders.conflict(plan) or (
                        self.mig.conflict(cp, plan, also=started) if self.mig is not None else None
                    )
                    if conflict:
                        raise OverlapError(conflict)
                except (PlanError, ConfigError, OverlapError) as err:
                    log.warning("claim rejected", error=str(err))
                    call.fail(ref, str(err))
                    continue
                except Exception as err:
                    log.exception("prepare failed")
                    call.fail(ref, f"claim {ref}: prepare failed: {err}")
                    continue
            crash_point("prepare:overlap-checked")
            record = plan.record(ClaimState.PREPARE_STARTED)
            holders.add(record)
            call.fresh.append(plan)
            started.append(record)
            if self._needs_intent(plan):
                intents.append(record)
        return cp.with_claims(intents)

    def _needs_intent(self, plan: ClaimPlan) -> bool:
        """Whether preparing ``plan`` changes the node beyond its CDI spec and device metadata files: a time
        slice (nvidia-smi) or a dynamic MIG instance. Only such a claim is recorded as ``PrepareStarted``
        before its side effects; for the others a crash leaves files without a checkpoint entry, which the
        next start or sweeper pass removes (module docstring)."""
        return any(
            (d.config is not None and d.config.time_slicing is not None)
            or (self.mig is not None and self.mig.slot_of(d.device.name) is not None)
            for d in plan.devices
        )

    def _apply_all(self, cp: Checkpoint, call: _PrepareCall) -> Checkpoint:
        """Phase 4: sharing config, MIG instances and CDI spec per claim. Returns the checkpoint to write as
        done."""
        completed: list[ClaimRecord] = []
        failed: list[str] = []
        for plan in call.fresh:
            with bind(claim=str(plan.ref)):
                try:
                    applied = self._apply_sharing(plan)
                    crash_point("prepare:config-applied")
                    # The metadata, the spec and the status writer name the instances made here.
                    made = self._materialize(plan)
                    mounts = self.metadata.write(made) if self.metadata is not None else {}
                    spec = made.spec(self.nodes, self.common_edits, mounts)
                    if spec is not None:
                        self.specs.write(plan.ref.uid, spec)
                        call.specs_written.append(plan.ref.uid)
                    crash_point("prepare:cdi-written")
                except Exception as err:
                    log.exception("prepare failed")
                    self._undo_quietly(cp, plan.record(ClaimState.PREPARE_STARTED))
                    failed.append(plan.ref.uid)
                    call.fail(plan.ref, f"claim {plan.ref}: prepare failed: {err}")
                    continue
            completed.append(made.record(ClaimState.PREPARE_COMPLETED, applied))
            call.complete(made)
        cp = cp.with_claims(completed).without(*failed)
        for plan, record in call.repeats:
            with bind(claim=str(plan.ref)):
                try:
                    made = self._materialize(plan)  # created again if a GPU reset lost it
                    cp = self._repeat(cp, made, record)
                except Exception as err:
                    log.exception("prepare failed")
                    call.fail(plan.ref, f"claim {plan.ref}: prepare failed: {err}")
                    continue
            call.complete(made)
        return cp

    def _without_lost_specs(self, done: Checkpoint, cp: Checkpoint, call: _PrepareCall) -> Checkpoint:
        """Fail the claims whose spec this call wrote and that is gone before they are recorded. Only a process
        working on the node state without holding the node lock removes it (another instance's start-up, with
        the lock file deleted under this one); answered prepared, such a claim's containers would fail on a
        CDI id nothing resolves, and the kubelet does not prepare it again."""
        for uid in call.specs_written:
            plan = call.completed.get(uid)
            if plan is None or self.specs.exists(uid):
                continue
            log.error(
                "CDI spec removed while its claim was being prepared: is a process using the node state "
                "without the node lock?",
                claim=str(plan.ref),
                cdi_spec=str(self.specs.path(uid)),
                lock=str(self.lock.path),
            )
            self._undo_quietly(cp, plan.record(ClaimState.PREPARE_STARTED))
            call.fail(
                plan.ref,
                f"claim {plan.ref}: prepare failed: its CDI spec {self.specs.path(uid)} was removed before the "
                f"claim was recorded (another process working on the node state without the lock "
                f"{self.lock.path}?)",
            )
            done = done.without(uid)
        return done

    def _materialize(self, plan: ClaimPlan) -> ClaimPlan:
        """The plan with the MIG instances of its dynamic MIG devices, created or taken over."""
        return self.mig.materialize(plan) if self.mig is not None else plan

    def _abandon(self, call: _PrepareCall, error: str) -> None:
        """The final checkpoint write failed: undo this call's new claims (best effort; whatever is left,
        the kubelet's retry rolls back through a ``PrepareStarted`` entry or rewrites, and the next start or
        sweeper pass removes the files of a claim without entry)."""
        cp = self.store.last
        for plan in call.fresh:
            if plan.ref.uid in call.completed:
                self._undo_quietly(cp, plan.record(ClaimState.PREPARE_STARTED))
                call.fail(plan.ref, f"claim {plan.ref}: {error}")
        with contextlib.suppress(Exception):
            self.store.save(cp.without(*(p.ref.uid for p in call.fresh)))

    def _undo_quietly(self, cp: Checkpoint, record: ClaimRecord) -> None:
        try:
            self._undo(cp, record)
        except Exception as err:
            log.warning(
                "rollback after failed prepare incomplete; the next attempt finishes it",
                claim=str(record),
                error=str(err),
            )

    def unprepare_sync(self, refs: Sequence[ClaimRef]) -> dict[str, str]:
        return self._unprepare(refs)[0]

    def _check_repeat(self, plan: ClaimPlan, record: ClaimRecord) -> ClaimPlan:
        recorded = sorted({d.device for d in record.devices})
        planned = sorted({d.result.device for d in plan.devices})
        if recorded != planned:
            raise PlanError(
                f"claim {plan.ref} is prepared with devices {recorded}, but its allocation names {planned}"
            )
        return plan

    def _repeat(self, cp: Checkpoint, plan: ClaimPlan, record: ClaimRecord) -> Checkpoint:
        """A completed claim asked for again: fill in what a rebuilt or migrated entry lacked, re-create a
        missing spec."""
        applied = {d.device: d.sharing_applied for d in record.devices}
        fresh = plan.record(ClaimState.PREPARE_COMPLETED, applied)
        mounts = self.metadata.ensure(plan) if self.metadata is not None else {}
        spec = plan.spec(self.nodes, self.common_edits, mounts)
        if spec is not None and not self.specs.exists(plan.ref.uid):
            self.specs.write(plan.ref.uid, spec)
            log.info("CDI spec was missing; re-created", cdi_spec=str(self.specs.path(plan.ref.uid)))
        return cp.with_claim(fresh) if fresh != record else cp

    def unprepare_one(self, ref: ClaimRef) -> bool:
        """Undo ``ref``; return whether it was prepared (a missing claim is fine). Raises on failure."""
        errors, prepared = self._unprepare([ref])
        if errors[ref.uid]:
            raise UnprepareError(errors[ref.uid])
        return ref.uid in prepared

    def _unprepare(self, refs: Sequence[ClaimRef]) -> tuple[dict[str, str], set[str]]:
        """Per claim: reset sharing, remove the spec; then drop every entry in one checkpoint write.
        Returns the error per claim UID ("" on success) and the UIDs that were prepared."""
        errors: dict[str, str] = {}
        try:
            self._finish_recovery()
            cp = self.checkpoint()
        except Exception as err:
            log.exception("unprepare failed: node state unreadable")
            return {ref.uid: f"claim {ref}: unprepare failed: node state: {err}" for ref in refs}, set()
        dropped: list[ClaimRef] = []
        for ref in refs:
            with bind(claim=str(ref)):
                try:
                    if self._unprepare_files(cp, ref):
                        dropped.append(ref)
                        cp = cp.without(ref.uid)  # later claims of the call must not count it
                    errors[ref.uid] = ""
                except Exception as err:
                    log.exception("unprepare failed")
                    errors[ref.uid] = f"claim {ref}: unprepare failed: {err}"
        if dropped:
            try:
                self.store.save(cp)
            except Exception as err:
                log.exception("unprepare failed: checkpoint not written")
                for ref in dropped:
                    errors[ref.uid] = f"claim {ref}: unprepare failed: checkpoint not written: {err}"
                return errors, set()
            crash_point("unprepare:completed")
        for ref in dropped:
            log.debug("claim unprepared", claim=str(ref))
        return errors, {ref.uid for ref in dropped}

    def _unprepare_files(self, cp: Checkpoint, ref: ClaimRef) -> bool:
        """Reset sharing and remove the spec of ``ref``; return whether it has a checkpoint entry."""
        record = cp.claims.get(ref.uid)
        if record is None:
            if self.specs.remove(ref.uid):
                log.warning("removed CDI spec of a claim without checkpoint entry")
            self._remove_metadata(ref.uid)
            return False
        self._reset_sharing(cp, record)
        crash_point("unprepare:sharing-reset")
        self.specs.remove(ref.uid)
        crash_point("unprepare:cdi-removed")
        self._remove_metadata(ref.uid)
        if self.mig is not None:
            self.mig.release(cp, record)
        return True

    def _undo(self, cp: Checkpoint, record: ClaimRecord) -> None:
        self._reset_sharing(cp, record)
        self.specs.remove(record.uid)
        self._remove_metadata(record.uid)
        if self.mig is not None:
            self.mig.release(cp, record)

    def _remove_metadata(self, uid: str) -> None:
        """After the spec that mounts them: a container is never given a mount of a missing file."""
        if self.metadata is not None:
            self.metadata.store.remove(uid)

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

    def sweep_orphans(self) -> list[ClaimRecord]:
        """The node-locked part of a sweeper pass: remove the files of claims without checkpoint entry
        (an instance killed mid-prepare during a rolling update leaves them, and the running one may never
        restart) and return the checkpoint's entries, for the sweeper to check against the API server."""
        self._finish_recovery()
        self._remove_temporaries()
        cp = self.checkpoint()
        self._remove_orphans(cp)
        return list(cp.claims.values())

    def prepared_device_count(self) -> int:
        """Devices of completed claims, as of the checkpoint last read or written; no I/O, no lock needed."""
        return sum(len(r.devices) for r in self.store.last.claims.values() if r.completed)
