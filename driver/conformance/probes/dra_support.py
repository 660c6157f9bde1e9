"""``dra_support``: the DRA API is served and the driver is usable through it.

Checks: the four ``resource.k8s.io/v1`` kinds are served; the vendor's DeviceClass exists; every pool of the
driver is complete at its highest generation and at least one is reachable from a Ready, schedulable node;
a pod whose claim comes from a ResourceClaimTemplate runs and sees exactly one device.
"""

from __future__ import annotations

from driver.conformance import devices as devlib
from driver.conformance import pods as podlib
from driver.conformance.context import ProbeContext
from driver.conformance.model import CheckFailedError, Probe
from driver.conformance.probes.common import driver_pools, one_device_template, ready_nodes, unique
from driver.kube.client import DEVICE_CLASSES, ApiError

RESOURCE_KINDS = ("deviceclasses", "resourceclaims", "resourceclaimtemplates", "resourceslices")


async def _api_served(ctx: ProbeContext) -> None:
    async with ctx.check("ResourceAPIServed") as check:
        ctx.step("reading API discovery for resource.k8s.io/v1")
        try:
            listing = await ctx.kube.request("GET", "/apis/resource.k8s.io/v1")
        except ApiError as err:
            raise CheckFailedError(f"resource.k8s.io/v1 is not served: {err}") from None
        served = {r.get("name") for r in listing.get("resources") or []}
        missing = [k for k in RESOURCE_KINDS if k not in served]
        if missing:
            raise CheckFailedError(f"resource.k8s.io/v1 does not serve {', '.join(missing)}")
        check.message = f"resource.k8s.io/v1 serves {', '.join(RESOURCE_KINDS)}"


async def _device_class(ctx: ProbeContext) -> None:
    async with ctx.check("DeviceClassExists") as check:
        ctx.step(f"getting DeviceClass {ctx.vendor.device_class}")
        try:
            await ctx.kube.get(DEVICE_CLASSES, ctx.vendor.device_class)
        except ApiError as err:
            if err.not_found:
                raise CheckFailedError(f"DeviceClass {ctx.vendor.device_class} does not exist") from None
            raise
        check.message = f"DeviceClass {ctx.vendor.device_class} exists"


async def _pools(ctx: ProbeContext) -> None:
    async with ctx.check("PoolsCompleteAndReachable") as check:
        ctx.step(f"listing the ResourceSlices of {ctx.vendor.driver_name}")
        pools = await driver_pools(ctx)
        nodes = await ready_nodes(ctx)
        ctx.data["pools"] = [
            {"pool": p.name, "generation": p.generation, "slices": len(p.slices), "expected": p.expected}
            for p in pools
        ]
        if not pools:
            raise CheckFailedError(f"driver {ctx.vendor.driver_name} publishes no ResourceSlices")
        for pool in pools:
            ctx.note(pool.describe())
        incomplete = [p.describe() for p in pools if not p.complete]
        if incomplete:
            raise CheckFailedError("incomplete pool(s), which schedulers ignore: " + "; ".join(incomplete))
        usable = 0
        for pool in pools:
            for s in pool.slices:
                reachable = devlib.reachable_nodes(s, nodes)
                if reachable and (s.get("spec") or {}).get("devices"):
                    usable += len(s["spec"]["devices"])
        if not usable:
            raise CheckFailedError(
                f"no device of {ctx.vendor.driver_name} is reachable from a Ready, schedulable node "
                f"(Ready nodes: {', '.join(n['metadata']['name'] for n in nodes) or 'none'})"
            )
        check.message = f"{len(pools)} complete pool(s), {usable} device(s) reachable from Ready nodes"


async def _pod_with_template(ctx: ProbeContext) -> None:
    async with ctx.check("PodWithClaimTemplate") as check:
        template = await one_device_template(ctx)
        name = unique("dra-pod")
        body = podlib.pod(
            ctx.vendor,
            name,
            [podlib.Container("probe", podlib.script(podlib.device_script(ctx.vendor)), ("gpu",))],
            templates={"gpu": template},
        )
        run = await ctx.run_pod(body)
        count = run.outputs["probe"].count
        await ctx.delete_pods([name])
        if count != 1:
            raise CheckFailedError(f"the pod's container sees {count} device(s) instead of exactly 1")
        check.message = f"pod {name} ran on node {run.node} and saw exactly one device"


async def run(ctx: ProbeContext) -> None:
    await _api_served(ctx)
    await _device_class(ctx)
    await _pools(ctx)
    await _pod_with_template(ctx)


PROBE = Probe(
    name="dra_support",
    test="TestDRASupport",
    title="DRA API served, driver pools complete and usable",
    requirements=("dra_support",),
    run=run,
    required=("ResourceAPIServed", "DeviceClassExists", "PoolsCompleteAndReachable", "PodWithClaimTemplate"),
)
