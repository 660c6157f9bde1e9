"""What must hold on a node after every chaos case, whatever was done to it.

- never one device prepared for two claims, unless one has admin access or both carry different share ids
  (in the checkpoint, and in the CDI specs the runtime reads);
- no leaked or missing CDI spec: a spec for every completed claim and a completed claim for every spec;
- the checkpoint verifies and agrees with the specs (same devices, same claim);
- no temporary file left behind, state files not open to other users;
- on GPUs in dynamic MIG mode, a MIG instance exactly for every slot a completed claim holds: none that no
  claim holds (a prepare or unprepare cut short must not leak one), none missing, and the claim's spec
  names it; right after a start (before the kubelet retries anything) at least none that no completed
  claim holds;
- right after a start, no CDI spec without checkpoint entry (an orphan of a crash the start removes).

Checked from the files alone, never through the plugin.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from driver.devices.mig import MigControl
from driver.devices.model import Inventory, MigPlacement
from driver.state.cdi import env_name
from driver.state.checkpoint import CHECKPOINT_FILE, Checkpoint, CorruptCheckpointError, decode


def _specs(cdi_dir: Path, driver: str) -> tuple[dict[str, Any], list[str]]:
    """Regular spec files of ``driver`` by claim UID, and problems with them."""
    prefix = f"k8s.{driver}-gpu_"
    specs: dict[str, Any] = {}
    problems: list[str] = []
    for path in cdi_dir.iterdir() if cdi_dir.is_dir() else ():
        if not (path.name.startswith(prefix) and path.name.endswith(".json")):
            continue
        if not stat.S_ISREG(path.lstat().st_mode):
            problems.append(f"{path.name} is not a regular file but is named like a spec")
            continue
        try:
            specs[path.name[len(prefix) : -len(".json")]] = json.loads(path.read_bytes())
        except ValueError as exc:
            problems.append(f"{path.name} is not valid JSON: {exc}")
    return specs, problems


def _checkpoint(plugin_dir: Path) -> tuple[Checkpoint | None, list[str]]:
    path = plugin_dir / CHECKPOINT_FILE
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None, []
    if not stat.S_ISREG(st.st_mode):
        return None, [f"{path.name} is not a regular file"]
    problems = [f"{path.name} has mode {oct(st.st_mode & 0o777)}"] if st.st_mode & 0o077 else []
    try:
        cp, _ = decode(path.read_bytes())
    except CorruptCheckpointError as exc:
        return None, [*problems, f"{path.name} does not verify: {exc}"]
    return cp, problems


def _spec_devices(spec: Mapping[str, Any], uid: str) -> dict[str, bool]:
    """Device name -> admin access, from the CDI device names ``<uid>-<device>`` and their env."""
    out: dict[str, bool] = {}
    for entry in spec.get("devices") or ():
        name = str(entry.get("name", ""))
        device = name[len(uid) + 1 :] if name.startswith(f"{uid}-") else f"?{name}"
        env = (entry.get("containerEdits") or {}).get("env") or []
        out[device] = f"{env_name(device)}_ADMIN_ACCESS=true" in env
    return out


def node_problems(plugin_dir: Path, cdi_dir: Path, driver: str, *, settled: bool = True) -> list[str]:
    """Everything wrong with the node's state; ``settled``: no prepare may be left half done."""
    specs, problems = _specs(cdi_dir, driver)
    cp, cp_problems = _checkpoint(plugin_dir)
    problems += cp_problems
    claims = dict(cp.claims) if cp is not None else {}
    completed = {uid for uid, r in claims.items() if r.completed}
    if settled:
        problems += [f"claim {claims[uid]} is still PrepareStarted" for uid in claims if uid not in completed]
    problems += [
        f"CDI spec of claim {uid} leaked: no completed checkpoint entry"
        for uid in specs
        if uid not in completed
    ]
    problems += [
        f"CDI spec of prepared claim {claims[uid]} is missing" for uid in completed if uid not in specs
    ]
    # One device, one claim (admin access and distinct share ids aside), in the checkpoint ...
    holders: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
    for uid in sorted(completed):
        for d in claims[uid].devices:
            if not d.admin_access:
                holders.setdefault((d.pool, d.device), []).append((uid, d.share_id))
    for (pool, device), held in holders.items():
        shares = [s for _, s in held]
        if len(held) > 1 and (None in shares or len(set(shares)) != len(shares)):
            problems.append(f"device {pool}/{device} is prepared for {[u for u, _ in held]}")
    # ... and in the specs, which is what containers get.
    by_device: dict[str, list[str]] = {}
    for uid, spec in specs.items():
        devices = _spec_devices(spec, uid)
        for device, admin in devices.items():
            if not admin:
                by_device.setdefault(device, []).append(uid)
        if uid in completed:
            recorded = sorted({d.device for d in claims[uid].devices})
            if sorted(devices) != recorded:
                problems.append(f"CDI spec of {claims[uid]} lists {sorted(devices)}, checkpoint {recorded}")
    shared = {d.device for r in claims.values() for d in r.devices if d.share_id is not None}
    for device, uids in by_device.items():
        if len(uids) > 1 and device not in shared:
            problems.append(f"device {device} is in the CDI specs of {sorted(uids)}")
    for directory in (plugin_dir, cdi_dir):
        if directory.is_dir():
            problems += [
                f"temporary file left: {p.name}"
                for p in directory.iterdir()
                if p.name.endswith(".tmp") and stat.S_ISREG(p.lstat().st_mode)
            ]
    return problems


def orphan_specs(plugin_dir: Path, cdi_dir: Path, driver: str) -> list[str]:
    """Specs no checkpoint entry names (started or completed): what a start must have removed."""
    specs, _ = _specs(cdi_dir, driver)
    cp, _ = _checkpoint(plugin_dir)
    claims = cp.claims if cp is not None else {}
    return [
        f"CDI spec of claim {uid} outlived the start: no checkpoint entry"
        for uid in specs
        if uid not in claims
    ]


def prepared(plugin_dir: Path) -> set[str]:
    """UIDs of the claims the checkpoint holds as completed."""
    cp, _ = _checkpoint(plugin_dir)
    return {uid for uid, r in (cp.claims.items() if cp else ()) if r.completed}


def mig_problems(
    plugin_dir: Path,
    cdi_dir: Path,
    driver: str,
    inventory: Inventory,
    hardware: MigControl,
    *,
    settled: bool = True,
) -> list[str]:
    """Instances on the dynamic GPUs of ``inventory`` that do not match the completed claims' slots;
    ``settled=False``: only instances no completed claim holds (an unprepare cut short may have destroyed
    part of a claim's instance, which its retry finishes)."""
    specs, _ = _specs(cdi_dir, driver)
    cp, _ = _checkpoint(plugin_dir)
    held: dict[tuple[str, int, MigPlacement], tuple[str, str]] = {}
    for uid, record in (cp.claims if cp is not None else {}).items():
        for d in record.devices if record.completed else ():
            device = inventory.device(d.device)
            if d.admin_access or device is None or device.slot is None or not device.gpu.mig_dynamic:
                continue
            held[(device.gpu.uuid, device.slot.profile.id, device.slot.placement)] = (uid, d.device)
    problems: list[str] = []
    for gpu in (g for g in inventory.gpus if g.mig_dynamic):
        for instance in hardware.gpu_instances(gpu.uuid):
            where = (
                f"MIG instance {instance.id} (placement {instance.placement.start}:{instance.placement.size})"
            )
            owner = held.pop((gpu.uuid, instance.profile_id, instance.placement), None)
            if owner is None:
                problems.append(f"{where} on GPU {gpu.uuid} is held by no prepared claim")
                continue
            uid, name = owner
            if not settled:
                continue
            env = [
                e
                for entry in (specs.get(uid) or {}).get("devices") or ()
                for e in (entry.get("containerEdits") or {}).get("env") or ()
            ]
            if not instance.devices:
                problems.append(f"{where} of {name} (claim {uid}) has no compute instance")
            elif f"{env_name(name)}={instance.devices[0].uuid}" not in env:
                problems.append(f"CDI spec of claim {uid} does not name {where} of {name}")
    if settled:
        problems += [
            f"MIG instance of {name} for prepared claim {uid} is missing" for uid, name in held.values()
        ]
    return problems
