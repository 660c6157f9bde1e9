"""``accel-dra health clear|status`` (operators, with their kubeconfig) and ``accel-dra sim inject`` (sandbox).

``health clear DEVICE... [--node NODE]`` annotates the node (:mod:`driver.health.clearing`); the plugin there
clears the devices' XID and lost marks and republishes their slices. Without ``--node`` the node is found
from the ResourceSlices (it must be the only node publishing a device of that name). The command then
waits until the slices no longer carry ``xid``/``gpu-lost`` taints for the devices (``--timeout``).

``health status`` lists the devices whose slices carry health taints, and the devices DeviceTaintRules taint
(``resource.k8s.io/v1`` since 1.37, ``v1beta2`` in 1.36 -- the version the server serves is asked for): the
scheduler applies both, so both take a device out of service. ``health clear`` cannot lift a rule's taint
(a rule is an administrator's object); it says which rule still blocks a device and fails.

``sim inject --gpu UUID|DEVICE (--xid N | --lost | --clear)`` writes a simulated GPU's faults file.

Flags are declared here without heavy imports; the Kubernetes client is imported when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from driver import flags

if TYPE_CHECKING:
    from driver.kube.client import KubeClient

JSON = dict[str, Any]
POLL_SECONDS = 0.25


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")


def _error(text: str) -> None:
    sys.stderr.write(f"accel-dra: {text}\n")


# -- health clear / status -------------------------------------------------------------------------------


def add_clear_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "devices", nargs="+", metavar="DEVICE", help="DRA device name(s), e.g. gpu-0000-3b-00-0"
    )
    parser.add_argument("--node", help="the node the devices are on (default: found from the ResourceSlices)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the taints to go from the slices (0: do not wait)",
    )
    flags.add_driver_arguments(parser)
    flags.add_kube_arguments(parser)


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", help="only this node")
    flags.add_driver_arguments(parser)
    flags.add_kube_arguments(parser)


def device_taints(slices: Sequence[Mapping[str, Any]], driver: str) -> dict[tuple[str, str], list[JSON]]:
    """(node, device) -> the health taints the device carries, for every device of the driver."""
    from driver.health.taints import is_health_taint

    found: dict[tuple[str, str], list[JSON]] = {}
    for item in slices:
        spec = item.get("spec") or {}
        if spec.get("driver") != driver:
            continue
        for device in spec.get("devices") or []:
            taints = [t for t in device.get("taints") or [] if is_health_taint(t, driver)]
            found[(str(spec.get("nodeName") or ""), str(device.get("name")))] = taints
    return found


def show_taint(taint: Mapping[str, Any]) -> str:
    value = taint.get("value")
    return f"{taint.get('key')}{'=' + str(value) if value else ''}:{taint.get('effect')}"


# Effects that keep pods off a device; ``None`` is informational.
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class RuleTaints:
    """What DeviceTaintRules do to the driver's devices: (node, device) -> (rule name, taint) pairs."""

    by_device: dict[tuple[str, str], list[tuple[str, JSON]]] = field(default_factory=dict)
    #: Why the rules could not be read ("" when they were, or the server has none).
    unreadable: str = ""

    def shown(self, key: tuple[str, str]) -> list[str]:
        return [f"{show_taint(t)} (DeviceTaintRule {rule})" for rule, t in self.by_device.get(key, [])]

    def blocking(self, key: tuple[str, str]) -> list[str]:
        return [
            f"{show_taint(t)} (DeviceTaintRule {rule})"
            for rule, t in self.by_device.get(key, [])
            if t.get("effect") in BLOCKING_EFFECTS
        ]


def rule_taints(
    rules: Sequence[Mapping[str, Any]], slices: Sequence[Mapping[str, Any]], driver: str
) -> RuleTaints:
    """Which of the driver's devices in ``slices`` the ``rules`` taint (as the scheduler applies them)."""
    from driver.allocation.pools import device_rule_taints

    found: dict[tuple[str, str], list[tuple[str, JSON]]] = {}
    for item in slices:
        spec = item.get("spec") or {}
        if spec.get("driver") != driver:
            continue
        pool = str((spec.get("pool") or {}).get("name") or "")
        for device in spec.get("devices") or []:
            name = str(device.get("name"))
            taints = device_rule_taints(rules, driver, pool, name)
            if taints:
                found[(str(spec.get("nodeName") or ""), name)] = [(t.rule, t.taint) for t in taints]
    return RuleTaints(found)


async def _rule_taints(kube: KubeClient, slices: Sequence[Mapping[str, Any]], driver: str) -> RuleTaints:
    from driver.kube.client import DEVICE_TAINT_RULES, ApiError
    from driver.kube.discovery import list_served

    try:
        rules = await list_served(kube, DEVICE_TAINT_RULES)
    except ApiError as err:
        if err.status != 403:
            raise
        return RuleTaints(unreadable=f"cannot read DeviceTaintRules ({err}); showing slice taints only")
    return rule_taints(rules, slices, driver)


async def _slices(kube: KubeClient, driver: str, node: str | None = None) -> list[JSON]:
    from driver.kube.client import RESOURCE_SLICES

    selector = f"spec.driver={driver}" + (f",spec.nodeName={node}" if node else "")
    listed = await kube.list(RESOURCE_SLICES, field_selector=selector)
    return list(listed.get("items") or [])


def _blocking(taints: Sequence[Mapping[str, Any]], driver: str) -> list[JSON]:
    """The taints a clear removes (``unmonitored`` is a condition, not a fault)."""
    from driver.health.taints import LOST, XID, taint_key

    keys = {taint_key(driver, LOST), taint_key(driver, XID)}
    return [dict(t) for t in taints if t.get("key") in keys]


def _pick_node(known: Mapping[tuple[str, str], Any], devices: Sequence[str]) -> str:
    nodes = sorted({node for (node, name) in known if name in devices})
    if len(nodes) != 1:
        where = f"on nodes {', '.join(nodes)}" if nodes else "on no node"
        raise LookupError(f"device(s) {', '.join(devices)} published {where}: pass --node")
    return nodes[0]


async def clear(
    kube: KubeClient, driver: str, devices: Sequence[str], node: str | None, timeout: float
) -> int:
    from driver.health.clearing import clear_annotation, new_request_id
    from driver.kube.client import NODES

    known = device_taints(await _slices(kube, driver, node), driver)
    node = node or _pick_node(known, devices)
    missing = [d for d in devices if (node, d) not in known]
    if missing:
        _error(f"node {node} publishes no device {', '.join(missing)} of driver {driver}")
        return 1
    request = new_request_id()
    annotations = {clear_annotation(driver, d): request for d in devices}
    await kube.patch(NODES, node, {"metadata": {"annotations": annotations}})
    _print(f"clear requested on node {node} for {', '.join(devices)} (request {request})")
    deadline = time.monotonic() + timeout
    while True:
        current = device_taints(await _slices(kube, driver, node), driver)
        left = {d: _blocking(current.get((node, d), []), driver) for d in devices}
        left = {d: t for d, t in left.items() if t}
        if not left:
            _print("cleared: " + ", ".join(devices))
            return _still_ruled(
                await _rule_taints(kube, await _slices(kube, driver, node), driver), node, devices
            )
        if time.monotonic() >= deadline:
            for device, taints in sorted(left.items()):
                shown = ", ".join(show_taint(t) for t in taints)
                _error(
                    f"{node}/{device} still tainted after {timeout:g}s: {shown} (does the GPU still fail?)"
                )
            return 1
        await asyncio.sleep(POLL_SECONDS)


def _still_ruled(rules: RuleTaints, node: str, devices: Sequence[str]) -> int:
    """1 when a DeviceTaintRule keeps a cleared device out of service (a clear cannot lift it)."""
    if rules.unreadable:
        _error(rules.unreadable)
    ruled = {d: rules.blocking((node, d)) for d in devices}
    for device, taints in sorted(ruled.items()):
        if taints:
            _error(
                f"{node}/{device} is still tainted by {', '.join(taints)}: delete or change the rule "
                "to put it back in service"
            )
    return 1 if any(ruled.values()) else 0


async def status(kube: KubeClient, driver: str, node: str | None) -> int:
    slices = await _slices(kube, driver, node)
    found = device_taints(slices, driver)
    rules = await _rule_taints(kube, slices, driver)
    if rules.unreadable:
        _error(rules.unreadable)
    shown = {
        key: [show_taint(t) for t in taints] + rules.shown(key)
        for key, taints in sorted(found.items())
        if taints or rules.by_device.get(key)
    }
    if not shown:
        _print(f"no health taints or DeviceTaintRule taints on {len(found)} device(s) of {driver}")
        return 0
    width = max(len(n) for n, _ in shown)
    for (name_node, device), taints in shown.items():
        _print(f"{name_node:<{width}}  {device}  {', '.join(taints)}")
    return 0


async def _with_kube(args: argparse.Namespace, work: Any) -> int:
    from driver.kube.client import ApiError, KubeClient
    from driver.kube.connection import KubeConfigError

    try:
        kube = await KubeClient.connect(args.kubeconfig)
    except KubeConfigError as err:
        _error(f"cannot configure the Kubernetes client: {err}")
        return 2
    try:
        code: int = await work(kube)
        return code
    except ApiError as err:
        _error(f"API server: {err}")
        return 1
    except LookupError as err:
        _error(str(err))
        return 1
    finally:
        await kube.close()


def run_clear(args: argparse.Namespace) -> int:
    driver = flags.check_driver_name(args.driver_name)
    return asyncio.run(
        _with_kube(args, lambda kube: clear(kube, driver, args.devices, args.node, args.timeout))
    )


def run_status(args: argparse.Namespace) -> int:
    driver = flags.check_driver_name(args.driver_name)
    return asyncio.run(_with_kube(args, lambda kube: status(kube, driver, args.node)))


# -- sim inject ------------------------------------------------------------------------------------------


def add_inject_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("ACCEL_DRA_FAKE_STATE"),
        help="the fake backend's state dir (env ACCEL_DRA_FAKE_STATE), as given to the plugin",
    )
    parser.add_argument(
        "--gpu", required=True, metavar="UUID|DEVICE", help="GPU or MIG UUID, or DRA device name"
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--xid", type=int, metavar="N", help="report XID N (double-bit ECC is XID 48)")
    what.add_argument("--lost", action="store_true", help="the GPU falls off the bus")
    what.add_argument("--clear", action="store_true", help="the simulated GPU works again (taints stay)")


def run_inject(args: argparse.Namespace) -> int:
    from driver.devices.fake_events import FaultError, inject_xid, resolve, set_lost
    from driver.health.xid import MAX_XID

    if not args.state_dir:
        _error("--state-dir (or env ACCEL_DRA_FAKE_STATE) is required")
        return 2
    try:
        uuid, gpu = resolve(args.state_dir, args.gpu)
        if args.xid is not None:
            if not 0 < args.xid <= MAX_XID:
                _error(f"--xid {args.xid} is out of range 1..{MAX_XID}")
                return 2
            inject_xid(args.state_dir, uuid, args.xid)
            _print(f"XID {args.xid} injected on {uuid}")
        elif args.lost:
            set_lost(args.state_dir, gpu, True)
            _print(f"GPU {gpu} fell off the bus")
        else:
            for target in dict.fromkeys((gpu, uuid)):
                set_lost(args.state_dir, target, False)
            _print(f"GPU {gpu} works again")
    except FaultError as err:
        _error(str(err))
        return 1
    return 0
