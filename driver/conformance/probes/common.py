"""Lookups several probes share: the driver's published pools and devices, one-device claims, allocations."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from driver.conformance import devices as devlib
from driver.conformance import pods as podlib
from driver.conformance.context import PodRun, ProbeContext
from driver.conformance.model import CheckFailedError
from driver.kube.client import NODES, RESOURCE_CLAIM_TEMPLATES, RESOURCE_SLICES

JSON = dict[str, Any]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def driver_pools(ctx: ProbeContext, drivers: Sequence[str] | None = None) -> list[devlib.Pool]:
    """The pools of the vendor's driver (or of ``drivers``; ``["*"]``: every driver)."""
    wanted = list(drivers or [ctx.vendor.driver_name])
    if "*" in wanted:
        slices = (await ctx.kube.list(RESOURCE_SLICES)).get("items") or []
    else:
        slices = []
        for driver in wanted:
            found = await ctx.kube.list(RESOURCE_SLICES, field_selector=f"spec.driver={driver}")
            slices += found.get("items") or []
    return devlib.pools(slices)


async def driver_devices(ctx: ProbeContext) -> list[devlib.Device]:
    """Devices of the vendor's driver in complete pools (the ones a scheduler may allocate)."""
    return devlib.devices(await driver_pools(ctx))


async def all_nodes(ctx: ProbeContext) -> list[JSON]:
    return list((await ctx.kube.list(NODES)).get("items") or [])


async def ready_nodes(ctx: ProbeContext) -> list[JSON]:
    return devlib.ready_nodes(await all_nodes(ctx))


def qualified(driver: str, name: str) -> tuple[str, str]:
    """(domain, identifier) of an attribute or capacity name as CEL addresses it; unqualified names are the
    driver's."""
    domain, _, ident = name.rpartition("/")
    return domain or driver, ident


def attribute_selector(driver: str, attribute: str, value: Any) -> str:
    """CEL selecting the devices whose ``attribute`` has ``value``."""
    domain, ident = qualified(driver, attribute)
    reference = f"device.attributes[{json.dumps(domain)}].{ident}"
    # Guarded: a device of the class without the attribute would be a CEL runtime error, not a mismatch.
    return f"has({reference}) && {reference} == {json.dumps(value)}"


def capacity_selector(driver: str, capacity: str, operator: str, amount: str) -> str:
    """CEL comparing a device's ``capacity`` with a quantity: ``operator`` is ``>=`` (at least) or ``<=``."""
    domain, ident = qualified(driver, capacity)
    return f"device.capacity[{json.dumps(domain)}].{ident}.compareTo(quantity({json.dumps(amount)})) {operator} 0"


def allocated(claim: Mapping[str, Any]) -> list[JSON]:
    """The claim's allocation results (empty when not allocated)."""
    allocation = (claim.get("status") or {}).get("allocation") or {}
    return list((allocation.get("devices") or {}).get("results") or [])


def find_device(devices: Sequence[devlib.Device], result: Mapping[str, Any]) -> devlib.Device:
    for d in devices:
        if (d.driver, d.pool, d.name) == (result.get("driver"), result.get("pool"), result.get("device")):
            return d
    raise CheckFailedError(
        f"allocated device {result.get('driver')}/{result.get('pool')}/{result.get('device')} "
        "is not in any complete pool of the driver"
    )


async def one_device_template(ctx: ProbeContext, prefix: str = "one-device") -> str:
    name = unique(prefix)
    await ctx.create(
        RESOURCE_CLAIM_TEMPLATES,
        podlib.claim_template(name, podlib.claim_spec([podlib.request(ctx.vendor)])),
    )
    return name


def device_plugin(ctx: ProbeContext) -> bool:
    return ctx.vendor.allocation == "device-plugin"


async def one_device(ctx: ProbeContext, prefix: str = "one-device") -> podlib.Grant:
    """One accelerator for a container: a claim from a new template (entry ``gpu``), or in device-plugin
    mode one of the vendor's extended resource."""
    if device_plugin(ctx):
        return podlib.Grant(extended=1)
    return podlib.Grant(templates={"gpu": await one_device_template(ctx, prefix)}, claims=("gpu",))


async def granted_devices(ctx: ProbeContext, run: PodRun, entry: str = "gpu") -> list[devlib.Device]:
    """The devices a pod's claim was allocated (none known in device-plugin mode: no claim names them)."""
    if device_plugin(ctx):
        return []
    claim = await ctx.claim_for(run.pod, entry)
    devices = await driver_devices(ctx)
    return [find_device(devices, r) for r in allocated(claim)]


def expect_identities(
    run: PodRun, container: str, devices: Sequence[devlib.Device], attribute: str | None
) -> None:
    """The container's vendor tool reports exactly the allocated devices' ids (when both are known)."""
    output = run.outputs[container]
    if attribute is None or not output.identities:
        return
    published = sorted(str(d.attribute(attribute)) for d in devices if d.attribute(attribute) is not None)
    if published and sorted(output.identities) != published:
        raise CheckFailedError(
            f"container {container} of pod {run.name} reports devices {sorted(output.identities)}, but its "
            f"claim was allocated {published} ({attribute} attribute)"
        )
