"""The GPU sharing strategies of ``gpu_sharing``: time slicing, hardware partitions, consumable capacity.

The requirement asks for "at least one GPU sharing strategy", so each strategy is a check of its own and
the probe needs one of them to pass (:attr:`~driver.conformance.model.Probe.required_any`); a strategy the
vendor file does not name, or the cluster does not offer (no DeviceClass, no such devices), is skipped with
that reason, never failed. What each check shows:

* ``TimeSlicing``: one claim carrying the vendor's time-slicing configuration, two pods using it that run at
  the same time, both seeing the same single device; the allocation carries the configuration to the
  driver, and each container was given the setting (the vendor's ``showCommand``). Without a way to show the
  setting in a container the check is skipped after the pods ran: a shared claim and its configuration in
  the allocation are what Kubernetes gives any driver, so they show nothing of the driver's time slicing.
* ``Partitions``: two pods, each with a claim of its own from the partitions' DeviceClass, get two distinct
  partitions of one physical device (the same parent attribute), run at the same time, and each container
  sees exactly its own partition.
* ``ConsumableCapacity``: two pods, each with a claim of its own asking for part of a capacity of one
  device that allows multiple allocations, get that same device with distinct share ids and the part
  consumed as the allocation result says, and see the same device; a third claim that would exceed the
  capacity stays unschedulable, in the scheduler's words.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from driver.conformance import devices as devlib
from driver.conformance import pods as podlib
from driver.conformance.context import PodRun, ProbeContext, pod_claims
from driver.conformance.model import CheckFailedError, CheckSkippedError
from driver.conformance.probes.common import (
    allocated,
    attribute_selector,
    capacity_selector,
    driver_devices,
    driver_pools,
    granted_devices,
    ready_nodes,
    unique,
)
from driver.conformance.vendor import PCI_BUS_ID, Vendor
from driver.kube.client import DEVICE_CLASSES, PODS, RESOURCE_CLAIM_TEMPLATES, RESOURCE_CLAIMS, ApiError
from driver.quantity import format_quantity, parse_quantity

JSON = dict[str, Any]
#: Consumer ("pod P container C") -> what it printed.
Consumers = dict[str, podlib.Output]
TIME_SLICING, PARTITIONS, CAPACITY = "TimeSlicing", "Partitions", "ConsumableCapacity"
STRATEGIES = (TIME_SLICING, PARTITIONS, CAPACITY)


# -- what every sharing check uses --------------------------------------------------------------------


def same_device(outputs: Mapping[str, podlib.Output]) -> str:
    """The one device every consumer sees, or a failure naming what each saw."""
    seen = {who: tuple(sorted(o.identities or o.devices)) for who, o in outputs.items()}
    counts = {who: o.count for who, o in outputs.items()}
    if any(c != 1 for c in counts.values()) or len(set(seen.values())) != 1:
        shown = "; ".join(f"{who} sees {o.describe()}" for who, o in outputs.items())
        raise CheckFailedError(f"the consumers of one device do not see the same single device: {shown}")
    return next(iter(seen.values()))[0]


def consumer(ctx: ProbeContext, name: str, claims: tuple[str, ...], *extra: str) -> podlib.Container:
    """A container that lists its devices, runs ``extra`` and then the health command (when there is one)."""
    script = podlib.script(podlib.device_script(ctx.vendor), *extra, podlib.health_script(ctx.vendor))
    return podlib.Container(name, script, claims, ctx.vendor.health.image)


def outputs_of(runs: Sequence[PodRun], container: str = "probe") -> Consumers:
    return {f"pod {r.name} container {container}": r.outputs[container] for r in runs}


@contextlib.asynccontextmanager
async def started(
    ctx: ProbeContext, bodies: Sequence[JSON], *, unschedulable_fails: bool = True
) -> AsyncIterator[list[PodRun]]:
    """Create every pod before waiting for any (they must run side by side), yield their runs, and delete
    them whatever happens (they hold devices the next checks need).

    The strategies' claims ask for what the check found free, so an Unschedulable verdict on them ends the
    check at once (``unschedulable_fails``) instead of waiting out the pod timeout. Their claims are deleted
    and waited for until deallocated: the next check must not find their devices still held.
    """
    names = [b["metadata"]["name"] for b in bodies]
    try:
        for body in bodies:
            await ctx.create(PODS, body)
        yield [await ctx.wait_output(name, unschedulable_fails=unschedulable_fails) for name in names]
    finally:
        await released(ctx, names)


async def released(ctx: ProbeContext, names: Sequence[str]) -> None:
    """Delete pods, then their claims, and wait until the claims are deallocated."""
    claims: list[str] = []
    for name in names:
        with contextlib.suppress(ApiError):  # never created, or gone already
            claims += [c for c in pod_claims(await ctx.get_pod(name)) if c not in claims]
    await ctx.delete_pods(names)
    await ctx.release_claims(claims)


def reserved_for_all(claim: Mapping[str, Any], runs: Sequence[PodRun]) -> None:
    """The claim is reserved for every pod that shares it."""
    reserved = {r.get("uid") for r in (claim.get("status") or {}).get("reservedFor") or []}
    if not {r.pod["metadata"]["uid"] for r in runs} <= reserved:
        raise CheckFailedError(
            f"claim {claim['metadata']['name']} is not reserved for every pod that uses it "
            f"(reservedFor: {sorted(map(str, reserved))})"
        )


async def running_together(ctx: ProbeContext, runs: Sequence[PodRun]) -> None:
    """Every pod is still Running now that all have printed their results: they ran at the same time."""
    for run in runs:
        phase = ((await ctx.get_pod(run.name)).get("status") or {}).get("phase")
        if phase != "Running":
            raise CheckFailedError(
                f"pod {run.name} is {phase} while the others run: the pods did not run at the same time"
            )


async def schedulable_devices(ctx: ProbeContext) -> list[devlib.Device]:
    """The driver's devices a pod can be scheduled to: on a Ready, schedulable node (or on none in
    particular)."""
    nodes = {n["metadata"]["name"] for n in await ready_nodes(ctx)}
    return [d for d in await driver_devices(ctx) if not d.node or d.node in nodes]


DeviceKey = tuple[str, str, str]


async def allocations(ctx: ProbeContext) -> dict[DeviceKey, list[JSON]]:
    """Every allocation result in the cluster, by the device it names (other workloads hold devices too)."""
    held: dict[DeviceKey, list[JSON]] = {}
    for claim in (await ctx.kube.list(RESOURCE_CLAIMS)).get("items") or []:
        for result in allocated(claim):
            key = (str(result.get("driver")), str(result.get("pool")), str(result.get("device")))
            held.setdefault(key, []).append(result)
    return held


def key_of(device: devlib.Device) -> DeviceKey:
    return device.driver, device.pool, device.name


async def require_class(ctx: ProbeContext, name: str, strategy: str) -> None:
    try:
        await ctx.kube.get(DEVICE_CLASSES, name)
    except ApiError as err:
        if err.not_found:
            raise CheckSkippedError(
                f"DeviceClass {name} does not exist: the platform does not offer {strategy} through it"
            ) from None
        raise


# -- time slicing -------------------------------------------------------------------------------------


def _show_script(command: str) -> str:
    return "\n".join(
        [
            f"shown=$( {{ {command} ; }} 2>/dev/null | head -n 1 )",
            'echo "RESULT: SHARING=$shown"',
        ]
    )


def config_entry(driver: str, parameters: Mapping[str, Any], request: str = "gpu") -> JSON:
    return {"requests": [request], "opaque": {"driver": driver, "parameters": dict(parameters)}}


def carried_config(claim: Mapping[str, Any], driver: str, parameters: Mapping[str, Any]) -> bool:
    """Whether the claim's allocation hands the driver these opaque parameters."""
    allocation = (claim.get("status") or {}).get("allocation") or {}
    for entry in (allocation.get("devices") or {}).get("config") or []:
        opaque = entry.get("opaque") or {}
        if opaque.get("driver") == driver and opaque.get("parameters") == dict(parameters):
            return True
    return False


async def time_slicing(ctx: ProbeContext, consumers: Consumers) -> None:
    async with ctx.check(TIME_SLICING) as check:
        vendor, setting = ctx.vendor, ctx.vendor.sharing.time_slicing
        if setting.config is None:
            raise CheckSkippedError(
                f"vendor {vendor.name} names no time-slicing configuration (sharing.timeSlicing.config): "
                "the suite does not know how to ask the driver for it"
            )
        device_class = setting.device_class or vendor.device_class
        await require_class(ctx, device_class, "time slicing")
        claim_name = unique("time-sliced")
        spec = podlib.claim_spec([podlib.request(replace(vendor, device_class=device_class))])
        spec["devices"]["config"] = [config_entry(vendor.driver_name, setting.config)]
        await ctx.create(RESOURCE_CLAIMS, podlib.resource_claim(claim_name, spec))
        show = (_show_script(setting.show_command),) if setting.show_command else ()
        bodies = [
            podlib.pod(vendor, name, [consumer(ctx, "probe", ("gpu",), *show)], claims={"gpu": claim_name})
            for name in (unique("time-sliced"), unique("time-sliced"))
        ]
        async with started(ctx, bodies) as runs:
            await running_together(ctx, runs)
            claim = await ctx.kube.get(RESOURCE_CLAIMS, claim_name, ctx.namespace)
        outputs = outputs_of(runs)
        device = same_device(outputs)
        reserved_for_all(claim, runs)
        if not carried_config(claim, vendor.driver_name, setting.config):
            raise CheckFailedError(
                f"the allocation of claim {claim_name} does not carry the time-slicing configuration to "
                f"{vendor.driver_name} (status.allocation.devices.config)"
            )
        consumers.update(outputs)
        names = " and ".join(r.name for r in runs)
        ran = (
            f"pods {names} ran at the same time on {device} through claim {claim_name}, and kube-scheduler "
            f"handed {_describe(setting.config)} to {vendor.driver_name} in its allocation"
        )
        if not setting.show_command:
            raise not_shown(
                ctx,
                f"{ran}; but no container can show the setting it was given (sharing.timeSlicing.showCommand "
                "is not set), and every other fact here is one Kubernetes produces for any driver (a shared "
                "claim, its config copied into the allocation): time slicing is not counted as shown",
            )
        check.message = f"{ran}{_check_shown(outputs, setting.show_command, setting.expect)}"


def _describe(config: Mapping[str, Any]) -> str:
    return f"{config.get('kind', 'a configuration')} {json.dumps(dict(config.get('sharing') or config))}"


def _check_shown(outputs: Consumers, command: str, expect: str | None) -> str:
    """What the containers were told of their setting, checked: the one fact the driver alone produces."""
    wrong = {who: o.results.get("SHARING", "") for who, o in outputs.items()}
    wrong = {who: s for who, s in wrong.items() if not s or (expect and expect not in s)}
    if wrong:
        said = "; ".join(f"{who} shows {s!r}" for who, s in wrong.items())
        raise CheckFailedError(
            f"a container was not given the time-slicing setting (expected {expect or 'any'!r}): {said}"
        )
    sample = next(iter(outputs.values())).results["SHARING"]
    return f"; every container was given {sample!r}"


# -- hardware partitions ------------------------------------------------------------------------------


#: A physical device as partitions name it: (its node, else its pool; the id in the parent attribute). An id
#: is unique within a node only (``pciBusID`` repeats on every node of a homogeneous cluster).
ParentKey = tuple[str, str]


def place(device: devlib.Device) -> str:
    """Where a device is: its node, else its pool (a pool is one node's, or the devices of a fabric)."""
    return device.node or device.pool


def partition_parents(
    devices: Sequence[devlib.Device], attribute: str, identity_attribute: str | None = None
) -> dict[ParentKey, list[devlib.Device]]:
    """Partitions by the physical device they belong to, for the parents that offer at least two. A device
    whose own id is its parent's (the whole device, where one DeviceClass lists it beside its partitions)
    is not a partition of it."""
    parents: dict[ParentKey, list[devlib.Device]] = {}
    for device in devices:
        parent = device.attribute(attribute)
        if parent is None:
            continue
        if identity_attribute and str(device.attribute(identity_attribute)) == str(parent):
            continue
        parents.setdefault((place(device), str(parent)), []).append(device)
    return {p: d for p, d in parents.items() if len(d) >= 2}


def busy_parents(
    devices: Sequence[devlib.Device], held: Mapping[DeviceKey, Any], identity_attribute: str | None
) -> set[ParentKey]:
    """Physical devices allocated whole right now (their partitions cannot be had beside them): where the
    held devices are and their ids."""
    if not identity_attribute:
        return set()
    return {
        (place(d), str(d.attribute(identity_attribute)))
        for d in devices
        if key_of(d) in held and d.attribute(identity_attribute) is not None
    }


CounterKey = tuple[str, str]  # (pool, counter set)
Counters = dict[str, Decimal]


def _amounts(counters: Mapping[str, Any] | None) -> Counters:
    return {n: parse_quantity(str((v or {}).get("value"))) for n, v in (counters or {}).items()}


def consumption(device: devlib.Device) -> dict[CounterKey, Counters]:
    """What a partitionable device consumes of its pool's counter sets (nothing for other devices)."""
    return {
        (device.pool, str(e.get("counterSet"))): _amounts(e.get("counters"))
        for e in device.raw.get("consumesCounters") or []
    }


def counter_room(pools: Sequence[devlib.Pool], held: Mapping[DeviceKey, Any]) -> dict[CounterKey, Counters]:
    """What is left of each counter set once the devices allocated right now (to any workload) consumed
    theirs: a partition held elsewhere takes its share of the physical device it is cut from."""
    room: dict[CounterKey, Counters] = {}
    for pool in pools:
        for piece in pool.slices:
            for entry in (piece.get("spec") or {}).get("sharedCounters") or []:
                room[(pool.name, str(entry.get("name")))] = _amounts(entry.get("counters"))
    for device in devlib.devices(pools):
        if key_of(device) in held:
            for key, amounts in consumption(device).items():
                left = room.setdefault(key, {})
                for name, value in amounts.items():
                    left[name] = left.get(name, Decimal(0)) - value
    return room


def fit_together(devices: Sequence[devlib.Device], room: Mapping[CounterKey, Counters]) -> bool:
    """Whether these partitionable devices fit side by side in what is left of their counter sets."""
    total: dict[CounterKey, Counters] = {}
    for device in devices:
        for key, amounts in consumption(device).items():
            for name, value in amounts.items():
                total.setdefault(key, {})[name] = total.get(key, {}).get(name, Decimal(0)) + value
    return all(
        key in room and all(value <= room[key].get(name, Decimal(0)) for name, value in amounts.items())
        for key, amounts in total.items()
    )


@dataclass(frozen=True)
class PartitionChoice:
    """The physical device the check takes two partitions of, and the CEL that confines a claim to them."""

    parent: ParentKey
    fitting: list[devlib.Device]
    selectors: list[str]

    @property
    def node(self) -> str:
        """The node the partitions are on ("" when their slices name none)."""
        return self.fitting[0].node


def choose_parent(
    parents: Mapping[ParentKey, Sequence[devlib.Device]],
    attribute: str,
    driver: str,
    capacity: str | None,
    room: Mapping[CounterKey, Counters],
) -> PartitionChoice | None:
    """The first parent (by its id) of which two partitions the selectors let through fit side by side.

    Static partitions (MIG instances that exist already) are devices of their own: any two free ones fit,
    whatever their sizes. Partitionable devices are cut from the parent's counters (``room``: what other
    allocations left of them), so the claims ask for partitions of at most the largest size at which any
    one the scheduler picks first still leaves room for a second.
    """
    for parent, offered in sorted(parents.items()):
        selectors = [attribute_selector(driver, attribute, parent[1])]
        if not any(d.raw.get("consumesCounters") for d in offered):
            if len(offered) >= 2:
                return PartitionChoice(parent, list(offered), selectors)
            continue
        fitting, limit = _fitting_partitions([d for d in offered if fit_together([d], room)], capacity, room)
        if len(fitting) < 2:
            continue
        if limit is not None and capacity:
            selectors.append(
                capacity_selector(driver, capacity, "<=", format_quantity(Decimal(limit), "DecimalSI"))
            )
        return PartitionChoice(parent, fitting, selectors)
    return None


def _fitting_partitions(
    free: Sequence[devlib.Device], capacity: str | None, room: Mapping[CounterKey, Counters]
) -> tuple[list[devlib.Device], int | None]:
    """The partitionable devices up to the largest size (by ``capacity``) at which each has a partner that
    fits beside it, and that size; without a known size every free one must have a partner."""

    def paired(devices: Sequence[devlib.Device]) -> bool:
        return len(devices) >= 2 and all(
            any(fit_together([a, b], room) for b in devices if b is not a) for a in devices
        )

    sized = [(d, d.capacity_bytes(capacity) if capacity else None) for d in free]
    known = sorted({size for _, size in sized if size is not None}, reverse=True)
    for limit in known:
        candidates = [d for d, size in sized if size is not None and size <= limit]
        if paired(candidates):
            return candidates, limit
    return (list(free), None) if not known and paired(free) else ([], None)


async def partitions(ctx: ProbeContext, consumers: Consumers) -> None:
    async with ctx.check(PARTITIONS) as check:
        vendor, setting = ctx.vendor, ctx.vendor.sharing.partitions
        if not setting.device_class:
            raise CheckSkippedError(
                f"vendor {vendor.name} names no DeviceClass of hardware partitions (sharing.partitions)"
            )
        await require_class(ctx, setting.device_class, "hardware partitions")
        held = await allocations(ctx)
        devices = await schedulable_devices(ctx)
        free = [d for d in devices if key_of(d) not in held]
        parents = partition_parents(free, setting.parent_attribute, vendor.identity_attribute)
        for parent in busy_parents(devices, held, vendor.identity_attribute):
            parents.pop(parent, None)
        room = counter_room(await driver_pools(ctx), held)
        choice = choose_parent(
            parents, setting.parent_attribute, vendor.driver_name, vendor.memory_capacity, room
        )
        if choice is None:
            if partition_parents(devices, setting.parent_attribute, vendor.identity_attribute):
                raise not_shown(
                    ctx,
                    f"{vendor.driver_name} publishes partitions (devices naming their parent in attribute "
                    f"{setting.parent_attribute}) on a Ready, schedulable node, but no physical device has two "
                    "free ones that fit side by side: its partitions are in use",
                )
            raise CheckSkippedError(
                f"{vendor.driver_name} publishes no physical device with two partitions (devices naming "
                f"their parent in attribute {setting.parent_attribute}) on a Ready, schedulable node: MIG or "
                "partitioning is not set up"
            )
        selectors = choice.selectors
        partition_class = replace(vendor, device_class=setting.device_class)
        templates = []
        for _ in range(2):
            template = unique("partition")
            body = podlib.claim_spec([podlib.request(partition_class, selectors=selectors)])
            await ctx.create(RESOURCE_CLAIM_TEMPLATES, podlib.claim_template(template, body))
            templates.append(template)
        # The whole device's id command (nvidia-smi --query-gpu=uuid) prints the *parent's* id in a partition's
        # container: only a command that lists partitions can show which one a container got.
        seer = replace(vendor, identity_command=setting.identity_command)
        script = podlib.script(podlib.device_script(seer), podlib.health_script(vendor))
        bodies = [
            podlib.on_node(
                podlib.pod(
                    vendor,
                    unique("partition"),
                    [podlib.Container("probe", script, ("gpu",), vendor.health.image)],
                    templates={"gpu": t},
                ),
                choice.node,
            )
            for t in templates
        ]
        async with started(ctx, bodies) as runs:
            await running_together(ctx, runs)
            got = [await granted_devices(ctx, run) for run in runs]
        message = distinct_partitions(
            runs, got, setting.parent_attribute, setting.identity_attribute, setting.identity_command
        )
        if not setting.identity_command:
            message += (
                "; what each container sees of its partition was not checked (sharing.partitions.identityCommand "
                "is not set)"
            )
        consumers.update(outputs_of(runs))
        check.message = message


def distinct_partitions(
    runs: Sequence[PodRun],
    got: Sequence[Sequence[devlib.Device]],
    parent_attribute: str,
    identity_attribute: str | None,
    identity_command: str | None = None,
) -> str:
    """Two pods hold distinct partitions of one parent, and each container sees exactly its own (when an id
    command can tell: one that fails in a container fails the check, it shows nothing)."""
    for run, devices in zip(runs, got, strict=True):
        if len(devices) != 1:
            raise CheckFailedError(f"pod {run.name}'s claim was allocated {len(devices)} devices, not one")
    first, second = got[0][0], got[1][0]
    if (first.pool, first.name) == (second.pool, second.name):
        raise CheckFailedError(f"both pods' claims were allocated the same partition {first.name}")
    parents = {(place(d), str(d.attribute(parent_attribute))) for d in (first, second)}
    if len(parents) != 1:
        raise CheckFailedError(
            f"partitions {first.name} and {second.name} belong to different devices "
            f"({' and '.join(f'{p[1]} on {p[0]}' for p in sorted(parents))})"
        )
    seen: list[str] = []
    for run, device in zip(runs, (first, second), strict=True):
        output = run.outputs["probe"]
        if not output.count:
            raise CheckFailedError(f"pod {run.name} sees no accelerator: {output.describe()}")
        if identity_command and not output.identities:
            raise CheckFailedError(
                f"the partition id command `{identity_command}` showed nothing in pod {run.name}: "
                f"{output.results.get('IDENTITY_ERROR') or 'it printed no id'}"
            )
        if output.identities:
            expected = device.attribute(identity_attribute) if identity_attribute else None
            if len(output.identities) != 1 or (expected is not None and output.identities != [str(expected)]):
                raise CheckFailedError(
                    f"pod {run.name} was given partition {device.name}"
                    f"{f' ({expected})' if expected is not None else ''} but sees {output.identities}"
                )
            seen.append(output.identities[0])
    if len(seen) == 2 and seen[0] == seen[1]:
        raise CheckFailedError(f"both pods see the same partition {seen[0]}")
    shown = f"; they see {seen[0]} and {seen[1]} respectively" if len(seen) == 2 else ""
    dynamic = (
        " (partitionable devices: each consumes counters of the device it is cut from)"
        if first.raw.get("consumesCounters") and second.raw.get("consumesCounters")
        else ""
    )
    return (
        f"pods {runs[0].name} and {runs[1].name} ran at the same time on partitions {first.name} and "
        f"{second.name} of one device ({parent_attribute} {parents.pop()[1]}){dynamic}, each with a claim of "
        f"its own{shown}"
    )


# -- consumable capacity ------------------------------------------------------------------------------


def shareable(devices: Sequence[devlib.Device], capacity: str) -> list[devlib.Device]:
    """Devices that several claims may be allocated at once, with the capacity they share."""
    return [
        d
        for d in devices
        if d.raw.get("allowMultipleAllocations") is True and d.capacity_bytes(capacity) is not None
    ]


def _policy(device: devlib.Device, capacity: str) -> JSON:
    body = device.raw.get("basic", device.raw)
    entry = (body.get("capacity") or {}).get(capacity) or (body.get("capacity") or {}).get(
        f"{device.driver}/{capacity}"
    )
    return dict((entry or {}).get("requestPolicy") or {})


def half_share(total: int, policy: Mapping[str, Any]) -> Decimal | None:
    """The largest amount the request policy allows that is at most half of ``total`` (two fit); None
    when the smallest allowed amount is more than that."""
    half = Decimal(total) / 2
    if policy.get("validValues"):
        values = sorted(parse_quantity(v) for v in policy["validValues"])
        fitting = [v for v in values if v <= half]
        return fitting[-1] if fitting else None
    valid = policy.get("validRange") or {}
    low = parse_quantity(valid["min"]) if valid.get("min") else Decimal(1)
    step = parse_quantity(valid["step"]) if valid.get("step") else None
    high = min(half, parse_quantity(valid["max"])) if valid.get("max") else half
    if low > high:
        return None
    if step:
        return low + ((high - low) // step) * step
    return high.to_integral_value(rounding="ROUND_FLOOR")


def free_capacity(device: devlib.Device, capacity: str, results: Sequence[Mapping[str, Any]]) -> int:
    """What is left of a shareable device's capacity after the shares already allocated; a result without
    consumedCapacity (an exclusive allocation) leaves nothing."""
    left = Decimal(device.capacity_bytes(capacity) or 0)
    for result in results:
        consumed = _consumed(result, capacity, device.driver)
        if consumed is None:
            return 0
        left -= consumed
    return max(0, int(left))


def _pin(device: devlib.Device, vendor: Vendor) -> str | None:
    """CEL selecting this one device by an id it publishes (its identity attribute, else its PCI address)."""
    for attribute in (vendor.identity_attribute, PCI_BUS_ID):
        if attribute and device.attribute(attribute) is not None:
            return attribute_selector(device.driver, attribute, device.attribute(attribute))
    return None


def _consumed(result: Mapping[str, Any], capacity: str, driver: str) -> Decimal | None:
    consumed = result.get("consumedCapacity") or {}
    raw = consumed.get(capacity, consumed.get(f"{driver}/{capacity}"))
    return parse_quantity(raw) if raw is not None else None


async def consumable_capacity(ctx: ProbeContext, consumers: Consumers) -> None:
    async with ctx.check(CAPACITY) as check:
        vendor, setting = ctx.vendor, ctx.vendor.sharing.capacity
        if not setting.capacity:
            raise CheckSkippedError(
                f"vendor {vendor.name} names no capacity to share (sharing.capacity.capacity)"
            )
        device_class = setting.device_class or vendor.device_class
        await require_class(ctx, device_class, "sharing by consumable capacity")
        offered = shareable(await schedulable_devices(ctx), setting.capacity)
        if not offered:
            raise CheckSkippedError(
                f"{vendor.driver_name} publishes no device that allows multiple allocations with a "
                f"{setting.capacity} capacity on a Ready, schedulable node: sharing by consumable capacity "
                "is not set up"
            )
        held = await allocations(ctx)
        room = {key_of(d): free_capacity(d, setting.capacity, held.get(key_of(d), ())) for d in offered}
        target = max(offered, key=lambda d: room[key_of(d)])  # the emptiest: others' shares count
        total = room[key_of(target)]
        share = half_share(total, _policy(target, setting.capacity))
        pin = _pin(target, vendor)
        if share is None or pin is None:
            raise not_shown(
                ctx,
                f"device {target.name} has no room for two more claims of its {setting.capacity} "
                f"({format_quantity(Decimal(total), 'BinarySI')} free)"
                if share is None
                else f"device {target.name} publishes no id to select it by",
            )
        amount = format_quantity(share, "BinarySI")
        share_class = replace(vendor, device_class=device_class)

        async def share_claim() -> str:
            request = podlib.request(share_class, selectors=[pin])
            request["exactly"]["capacity"] = {"requests": {setting.capacity: amount}}
            name = unique("capacity-share")
            await ctx.create(RESOURCE_CLAIMS, podlib.resource_claim(name, podlib.claim_spec([request])))
            return name

        claims = [await share_claim(), await share_claim()]
        bodies = [
            podlib.on_node(
                podlib.pod(
                    vendor, unique("capacity-share"), [consumer(ctx, "probe", ("gpu",))], claims={"gpu": c}
                ),
                target.node,
            )
            for c in claims
        ]
        async with started(ctx, bodies) as runs:
            await running_together(ctx, runs)
            results = [allocated(await ctx.kube.get(RESOURCE_CLAIMS, c, ctx.namespace)) for c in claims]
            over = await _over_capacity(ctx, share, share_claim, target.node) if 3 * share > total else ""
        outputs = outputs_of(runs)
        _same_shared_device(claims, results, target, setting.capacity, share)
        device = same_device(outputs)
        consumers.update(outputs)
        check.message = (
            f"pods {runs[0].name} and {runs[1].name}, each with a claim of its own asking for {amount} of "
            f"{setting.capacity}, ran at the same time on device {target.name} ({device}); each allocation "
            f"result carries its own share id and consumedCapacity {setting.capacity}={amount} "
            f"(of {format_quantity(Decimal(total), 'BinarySI')} free){over}"
        )


def _same_shared_device(
    claims: Sequence[str],
    results: Sequence[Sequence[Mapping[str, Any]]],
    target: devlib.Device,
    capacity: str,
    share: Decimal,
) -> None:
    share_ids = set()
    for claim, result in zip(claims, results, strict=True):
        if len(result) != 1 or (result[0].get("pool"), result[0].get("device")) != (target.pool, target.name):
            got = [f"{r.get('pool')}/{r.get('device')}" for r in result]
            raise CheckFailedError(f"claim {claim} was allocated {got}, not device {target.name}")
        consumed = _consumed(result[0], capacity, target.driver)
        if consumed != share:
            raise CheckFailedError(
                f"claim {claim}'s allocation result shows consumedCapacity {capacity}={consumed}, "
                f"not the {share} bytes it asked for"
            )
        share_ids.add(result[0].get("shareID"))
    if None in share_ids or len(share_ids) != 2:
        raise CheckFailedError(
            f"the two claims of device {target.name} do not carry distinct share ids ({sorted(map(str, share_ids))})"
        )


async def _over_capacity(
    ctx: ProbeContext, share: Decimal, share_claim: Callable[[], Awaitable[str]], node: str
) -> str:
    """A third share that does not fit beside the two stays unschedulable: the scheduler's words."""
    claim = await share_claim()
    name = unique("capacity-over")
    body = podlib.pod(ctx.vendor, name, [consumer(ctx, "probe", ("gpu",))], claims={"gpu": claim})
    await ctx.create(PODS, podlib.on_node(body, node))
    try:
        verdict = await ctx.wait_unschedulable(name, timeout=min(60.0, ctx.vendor.pod_timeout))
        # Any reason keeps a pod pending (an untolerated taint too): only an unallocated claim the scheduler
        # speaks of shows the capacity is what stops it.
        if (
            allocated(await ctx.kube.get(RESOURCE_CLAIMS, claim, ctx.namespace))
            or "claim" not in verdict.lower()
        ):
            raise CheckFailedError(
                f"pod {name} stays unschedulable, but not for want of capacity: its claim {claim} "
                f"{'was allocated' if 'claim' in verdict.lower() else 'is not what the scheduler names'}; "
                f"the scheduler says: {verdict}"
            )
    finally:
        await released(ctx, [name])
    ctx.note(f"a third claim of {format_quantity(share, 'BinarySI')} stays pending: {verdict}")
    return f"; a third claim that would exceed it stays unschedulable: {verdict!r}"


#: ``ProbeContext.data`` key: the strategies the platform offers that a check skipped all the same.
_OFFERED_NOT_SHOWN = "offered_not_shown"


def not_shown(ctx: ProbeContext, why: str) -> CheckSkippedError:
    """The skip of a strategy the platform offers but the check could not show (its devices in use, no room
    left, the setting not visible in a container): the report must not call it "not offered"."""
    if ctx.current is not None:
        ctx.data.setdefault(_OFFERED_NOT_SHOWN, []).append(ctx.current.name)
    return CheckSkippedError(why)


def verdict(outcome: str, offered: bool) -> str:
    if outcome == "skipped":
        return "not shown (skipped)" if offered else "not offered"
    return {"passed": "shown", "failed": "FAILED"}[outcome]


def summary(ctx: ProbeContext) -> list[JSON]:
    """What each strategy's check showed (or why it could not), for the report."""
    checks = {c.name: c for c in ctx.checks}
    offered = set(ctx.data.get(_OFFERED_NOT_SHOWN) or ())
    return [
        {
            "strategy": name,
            "outcome": checks[name].outcome,
            "verdict": verdict(checks[name].outcome, name in offered),
            "shown": checks[name].message,
        }
        for name in STRATEGIES
        if name in checks
    ]
