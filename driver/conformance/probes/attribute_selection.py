"""Fine-grained requests (``dra_support``): claims that select devices by what they are, not how many.

Checks: a CEL selector on the memory capacity, and one on the product name, get matching devices; a claim
for two devices with ``matchAttribute`` on the interconnect domain gets two connected devices (skipped, with
the reason, when no node has two); a claim no device satisfies stays unallocated, with the scheduler's
reason in the report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from driver.conformance import devices as devlib
from driver.conformance import pods as podlib
from driver.conformance.context import PodRun, ProbeContext
from driver.conformance.model import CheckFailedError, CheckSkippedError, Probe
from driver.conformance.probes.common import (
    allocated,
    attribute_selector,
    capacity_selector,
    driver_devices,
    find_device,
    qualified,
    unique,
)
from driver.kube.client import PODS, RESOURCE_CLAIM_TEMPLATES
from driver.resources.attributes import format_quantity

JSON = dict[str, Any]


def memory_selector(driver: str, capacity: str, at_least: int) -> str:
    return capacity_selector(driver, capacity, ">=", format_quantity(at_least))


def memory_sizes(ctx: ProbeContext, devices: Sequence[devlib.Device]) -> list[int]:
    """The memory capacities the devices publish; skips the check when the vendor names none or none has it."""
    capacity = ctx.vendor.memory_capacity
    if not capacity:
        raise CheckSkippedError(f"vendor {ctx.vendor.name} names no memory capacity (memoryCapacity)")
    sizes = [m for d in devices if (m := d.capacity_bytes(capacity)) is not None]
    if not sizes:
        raise CheckSkippedError(f"no device publishes a {capacity!r} capacity")
    return sizes


async def _claim_and_run(ctx: ProbeContext, prefix: str, spec: JSON, count: int) -> tuple[PodRun, list[JSON]]:
    """Run a pod whose claim (from a template with ``spec``) must give it ``count`` devices."""
    template = unique(prefix)
    await ctx.create(RESOURCE_CLAIM_TEMPLATES, podlib.claim_template(template, spec))
    name = unique(prefix)
    body = podlib.pod(
        ctx.vendor,
        name,
        [podlib.Container("probe", podlib.script(podlib.device_script(ctx.vendor)), ("gpus",))],
        templates={"gpus": template},
    )
    run = await ctx.run_pod(body)
    claim = await ctx.claim_for(run.pod, "gpus")
    results = allocated(claim)
    await ctx.delete_pods([name])
    seen = run.outputs["probe"].count
    if seen != count:
        raise CheckFailedError(f"pod {name} sees {seen} device(s), its claim asked for {count}")
    return run, results


async def _memory(ctx: ProbeContext, devices: Sequence[devlib.Device]) -> None:
    async with ctx.check("SelectByMemoryCapacity") as check:
        sizes = memory_sizes(ctx, devices)
        largest = max(sizes)
        capacity = str(ctx.vendor.memory_capacity)
        selector = memory_selector(ctx.vendor.driver_name, capacity, largest)
        ctx.note(f"selector: {selector}")
        spec = podlib.claim_spec([podlib.request(ctx.vendor, "gpus", selectors=[selector])])
        _, results = await _claim_and_run(ctx, "by-memory", spec, 1)
        got = [find_device(devices, r) for r in results]
        bad = [d.name for d in got if (d.capacity_bytes(capacity) or 0) < largest]
        if bad or not got:
            raise CheckFailedError(
                f"the claim got {bad or 'no devices'}, which do not have {format_quantity(largest)}"
            )
        check.message = f"got {got[0].name} with {got[0].capacity.get(capacity)} memory"


async def _product(ctx: ProbeContext, devices: Sequence[devlib.Device]) -> None:
    async with ctx.check("SelectByProductName") as check:
        attribute = ctx.vendor.product_attribute
        names = Counter(str(d.attribute(attribute)) for d in devices if attribute and d.attribute(attribute))
        if not attribute or not names:
            raise CheckSkippedError(f"no device publishes a product attribute ({attribute!r})")
        product = names.most_common(1)[0][0]
        selector = attribute_selector(ctx.vendor.driver_name, attribute, product)
        ctx.note(f"selector: {selector}")
        spec = podlib.claim_spec([podlib.request(ctx.vendor, "gpus", selectors=[selector])])
        _, results = await _claim_and_run(ctx, "by-product", spec, 1)
        got = [find_device(devices, r) for r in results]
        if not got or any(str(d.attribute(attribute)) != product for d in got):
            raise CheckFailedError(f"the claim for {attribute} == {product!r} got {[d.name for d in got]}")
        check.message = f"got {got[0].name} ({product})"


def connected_groups(devices: Sequence[devlib.Device], attribute: str) -> dict[tuple[str, str], list[str]]:
    """(node, attribute value) -> device names, for values shared by at least two devices of one node."""
    groups: dict[tuple[str, str], list[str]] = {}
    for d in devices:
        value = d.attribute(attribute)
        if value is not None and d.node:
            groups.setdefault((d.node, str(value)), []).append(d.name)
    return {k: v for k, v in groups.items() if len(v) >= 2}


async def _pair(ctx: ProbeContext, devices: Sequence[devlib.Device]) -> None:
    async with ctx.check("MatchAttributeInterconnectPair") as check:
        attribute = ctx.vendor.interconnect_attribute
        if not attribute:
            raise CheckSkippedError(f"vendor {ctx.vendor.name} names no interconnect-domain attribute")
        groups = connected_groups(devices, attribute)
        if not groups:
            raise CheckSkippedError(f"no node has two devices that share a {attribute} value")
        domain, ident = qualified(ctx.vendor.driver_name, attribute)
        spec = podlib.claim_spec(
            [podlib.request(ctx.vendor, "gpus", count=2)],
            [{"requests": ["gpus"], "matchAttribute": f"{domain}/{ident}"}],
        )
        _, results = await _claim_and_run(ctx, "pair", spec, 2)
        got = [find_device(devices, r) for r in results]
        values = {str(d.attribute(attribute)) for d in got}
        if len({d.name for d in got}) != 2 or len(values) != 1:
            raise CheckFailedError(f"the pair claim got {[(d.name, d.attribute(attribute)) for d in got]}")
        check.message = f"got {got[0].name} and {got[1].name}, both in {attribute} {values.pop()}"


async def _impossible(ctx: ProbeContext, devices: Sequence[devlib.Device]) -> None:
    async with ctx.check("UnsatisfiableClaimStaysPending") as check:
        sizes = memory_sizes(ctx, devices)
        selector = memory_selector(ctx.vendor.driver_name, str(ctx.vendor.memory_capacity), 2 * max(sizes))
        ctx.note(f"selector no device satisfies: {selector}")
        template = unique("impossible")
        await ctx.create(
            RESOURCE_CLAIM_TEMPLATES,
            podlib.claim_template(
                template, podlib.claim_spec([podlib.request(ctx.vendor, "gpus", selectors=[selector])])
            ),
        )
        name = unique("impossible")
        body = podlib.pod(
            ctx.vendor,
            name,
            [podlib.Container("probe", podlib.script(podlib.device_script(ctx.vendor)), ("gpus",))],
            templates={"gpus": template},
        )
        await ctx.create(PODS, body)
        reason = await ctx.wait_unschedulable(name, timeout=min(60.0, ctx.vendor.pod_timeout))
        ctx.note(f"scheduler: {reason}")
        pod = await ctx.get_pod(name)
        claim = await ctx.claim_for(pod, "gpus")
        if allocated(claim):
            raise CheckFailedError(f"claim {claim['metadata']['name']} was allocated {allocated(claim)}")
        await ctx.delete_pods([name])
        check.message = f"claim {claim['metadata']['name']} stays unallocated; the scheduler says: {reason}"


async def run(ctx: ProbeContext) -> None:
    ctx.step(f"listing the devices of {ctx.vendor.driver_name}")
    devices = await driver_devices(ctx)
    if not devices:
        async with ctx.check("DevicesPublished"):
            raise CheckFailedError(f"driver {ctx.vendor.driver_name} publishes no devices in complete pools")
        return
    await _memory(ctx, devices)
    await _product(ctx, devices)
    await _pair(ctx, devices)
    await _impossible(ctx, devices)


PROBE = Probe(
    name="attribute_selection",
    test="TestDRAAttributeSelection",
    title="Claims select devices by attributes and capacity",
    requirements=("dra_support",),
    run=run,
)
