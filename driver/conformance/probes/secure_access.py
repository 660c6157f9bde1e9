"""``secure_accelerator_access``: containers reach exactly the devices their claims give them.

Checks (device nodes counted with the vendor's glob, ids from the vendor's tool where it has one): the
claiming container sees exactly its allocated device; a pod without a claim on the same node sees none,
while the claiming pod still holds its device; a pod without a claim that sets the environment a runtime
might honour to hand out devices (``NVIDIA_VISIBLE_DEVICES=all``, the vendor's ``bypassEnv``) sees none and
its vendor tool reports none; a second container of a claiming pod that does not reference the claim sees
none.
"""

from __future__ import annotations

from collections.abc import Mapping

from driver.conformance import pods as podlib
from driver.conformance.context import PodRun, ProbeContext
from driver.conformance.model import CheckFailedError, CheckSkippedError, Probe
from driver.conformance.probes.common import (
    allocated,
    driver_devices,
    expect_identities,
    find_device,
    one_device_template,
    unique,
)


async def _positive(ctx: ProbeContext, template: str, held: list[PodRun]) -> None:
    async with ctx.check("PositiveAccessTest") as check:
        name = unique("claimed")
        body = podlib.pod(
            ctx.vendor,
            name,
            [podlib.Container("probe", podlib.script(podlib.device_script(ctx.vendor)), ("gpu",))],
            templates={"gpu": template},
        )
        run = await ctx.run_pod(body)
        held.append(run)
        output = run.outputs["probe"]
        claim = await ctx.claim_for(run.pod, "gpu")
        devices = await driver_devices(ctx)
        mine = [find_device(devices, r) for r in allocated(claim)]
        if output.count != 1:
            raise CheckFailedError(f"the claiming container sees {output.describe()}, expected exactly 1")
        expect_identities(run, "probe", mine, ctx.vendor.identity_attribute)
        shown = f" {mine[0].name}" if mine else ""
        check.message = f"the claiming container on node {run.node} sees exactly its device{shown}"


async def _node_for_negative(ctx: ProbeContext, held: list[PodRun]) -> str:
    if held and held[0].node:
        return held[0].node
    nodes = sorted({d.node for d in await driver_devices(ctx) if d.node})
    if not nodes:
        raise CheckSkippedError("no node with devices of the driver to place the pod on")
    return nodes[0]


async def _negative(ctx: ProbeContext, held: list[PodRun]) -> None:
    async with ctx.check("NegativeIsolationTest") as check:
        node = await _node_for_negative(ctx, held)
        name = unique("unclaimed")
        body = podlib.pod(
            ctx.vendor,
            name,
            [podlib.Container("probe", podlib.script(podlib.device_script(ctx.vendor)))],
            node_name=node,
        )
        run = await ctx.run_pod(body)
        output = run.outputs["probe"]
        await ctx.delete_pods([name])
        if output.count != 0:
            raise CheckFailedError(
                f"a pod without a claim on node {node} sees {output.describe()} "
                "(devices leak to containers that did not claim them)"
            )
        check.message = f"a pod without a claim on node {node} sees no device"


async def _env_bypass(ctx: ProbeContext, held: list[PodRun]) -> None:
    async with ctx.check("EnvVarBypassTest") as check:
        env = dict(ctx.vendor.bypass_env)
        if not env:
            raise CheckSkippedError(
                f"vendor {ctx.vendor.name} names no device-selecting environment (bypassEnv)"
            )
        node = await _node_for_negative(ctx, held)
        name = unique("env-bypass")
        script = podlib.script(podlib.device_script(ctx.vendor, always_identify=True))
        body = podlib.pod(ctx.vendor, name, [podlib.Container("probe", script, env=env)], node_name=node)
        run = await ctx.run_pod(body)
        await ctx.delete_pods([name])
        check.message = env_bypass_verdict(run.outputs["probe"], node, env)


def env_bypass_verdict(output: podlib.Output, node: str, env: Mapping[str, str]) -> str:
    """A pod without a claim that sets ``env`` must see no device node, and its vendor tool no device."""
    shown = " ".join(f"{k}={v}" for k, v in env.items())
    if output.count != 0 or output.identities:
        raise CheckFailedError(
            f"a pod without a claim on node {node} that sets {shown} sees {output.describe()} "
            "(the runtime hands out devices by environment variable, bypassing claims)"
        )
    tool = output.results.get("IDENTITY_ERROR")
    return f"a pod without a claim on node {node} that sets {shown} sees no device" + (
        f" (vendor tool: {tool})" if tool else ""
    )


async def _multi_container(ctx: ProbeContext, template: str) -> None:
    async with ctx.check("MultiContainerIsolationTest") as check:
        name = unique("two-containers")
        body = podlib.pod(
            ctx.vendor,
            name,
            [
                podlib.Container("claiming", podlib.script(podlib.device_script(ctx.vendor)), ("gpu",)),
                podlib.Container("other", podlib.script(podlib.device_script(ctx.vendor))),
            ],
            templates={"gpu": template},
        )
        run = await ctx.run_pod(body)
        await ctx.delete_pods([name])
        claiming, other = run.outputs["claiming"], run.outputs["other"]
        if claiming.count != 1:
            raise CheckFailedError(
                f"the container that references the claim sees {claiming.describe()}, expected 1"
            )
        if other.count != 0:
            raise CheckFailedError(
                f"the container that does not reference the claim sees {other.describe()}, expected none"
            )
        check.message = "only the container that references the claim sees the device"


async def run(ctx: ProbeContext) -> None:
    template = await one_device_template(ctx)
    held: list[PodRun] = []
    await _positive(ctx, template, held)
    await _negative(ctx, held)  # while the claiming pod still holds its device
    await _env_bypass(ctx, held)
    if held:
        await ctx.delete_pods([held[0].name])
    await _multi_container(ctx, template)


PROBE = Probe(
    name="secure_accelerator_access",
    test="TestSecureAcceleratorAccess",
    title="Device access is isolated and mediated by claims",
    requirements=("secure_accelerator_access",),
    run=run,
    # EnvVarBypassTest only applies to vendors whose runtime has such a variable.
    required=("PositiveAccessTest", "NegativeIsolationTest", "MultiContainerIsolationTest"),
)
