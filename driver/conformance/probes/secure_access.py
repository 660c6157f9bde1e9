"""``secure_accelerator_access``: containers reach exactly the devices their claims give them.

Checks (device nodes counted with the vendor's globs, ids from the vendor's tool where it has one): the
claiming container sees exactly its allocated device; a pod without a claim on the same node sees none,
while the claiming pod still holds its device; a pod without a claim that sets the environment a runtime
might honour to hand out devices (``NVIDIA_VISIBLE_DEVICES=all``, the vendor's ``bypassEnv``) sees none and
its vendor tool reports none; a second container of a claiming pod that does not reference the claim sees
none. In device-plugin mode the same checks run with the vendor's extended resource (``nvidia.com/gpu: 1``)
in place of a claim.
"""

from __future__ import annotations

from collections.abc import Mapping

from driver.conformance import pods as podlib
from driver.conformance.context import PodRun, ProbeContext
from driver.conformance.model import CheckFailedError, CheckSkippedError, Probe
from driver.conformance.probes.common import (
    device_plugin,
    driver_devices,
    expect_identities,
    granted_devices,
    one_device,
    unique,
)


def _given(ctx: ProbeContext) -> str:
    """How the positive pods got their accelerator, for messages."""
    return f"requests {ctx.vendor.extended_resource}" if device_plugin(ctx) else "claims a device"


async def _positive(ctx: ProbeContext, grant: podlib.Grant, held: list[PodRun]) -> None:
    async with ctx.check("PositiveAccessTest") as check:
        name = unique("claimed")
        script = podlib.script(podlib.device_script(ctx.vendor))
        body = podlib.pod(ctx.vendor, name, [grant.container("probe", script)], templates=grant.templates)
        run = await ctx.run_pod(body)
        held.append(run)
        output = run.outputs["probe"]
        mine = await granted_devices(ctx, run)
        if output.count != 1:
            raise CheckFailedError(
                f"the container that {_given(ctx)} sees {output.describe()}, expected exactly 1"
            )
        expect_identities(run, "probe", mine, ctx.vendor.identity_attribute)
        shown = f" {mine[0].name}" if mine else ""
        ids = f" ({', '.join(output.identities)})" if output.identities else ""
        check.message = (
            f"the container that {_given(ctx)} on node {run.node} sees exactly its device{shown}{ids}"
        )


async def _node_for_negative(ctx: ProbeContext, held: list[PodRun]) -> str:
    if held and held[0].node:
        return held[0].node
    nodes = [] if device_plugin(ctx) else sorted({d.node for d in await driver_devices(ctx) if d.node})
    if not nodes:
        raise CheckSkippedError("no node with accelerators of the vendor to place the pod on")
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
        if not output.sees_nothing:
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
    if not output.sees_nothing or output.identities:
        raise CheckFailedError(
            f"a pod without a claim on node {node} that sets {shown} sees {output.describe()} "
            "(the runtime hands out devices by environment variable, bypassing claims)"
        )
    tool = output.results.get("IDENTITY_ERROR")
    return f"a pod without a claim on node {node} that sets {shown} sees no device" + (
        f" (vendor tool: {tool})" if tool else ""
    )


async def _multi_container(ctx: ProbeContext, grant: podlib.Grant) -> None:
    async with ctx.check("MultiContainerIsolationTest") as check:
        name = unique("two-containers")
        body = podlib.pod(
            ctx.vendor,
            name,
            [
                grant.container("claiming", podlib.script(podlib.device_script(ctx.vendor))),
                podlib.Container("other", podlib.script(podlib.device_script(ctx.vendor))),
            ],
            templates=grant.templates,
        )
        run = await ctx.run_pod(body)
        await ctx.delete_pods([name])
        claiming, other = run.outputs["claiming"], run.outputs["other"]
        if claiming.count != 1:
            raise CheckFailedError(f"the container that {_given(ctx)} sees {claiming.describe()}, expected 1")
        if not other.sees_nothing:
            raise CheckFailedError(
                f"the other container of the pod (no accelerator of its own) sees {other.describe()}, expected none"
            )
        check.message = f"only the container that {_given(ctx)} sees the device"


async def run(ctx: ProbeContext) -> None:
    grant = await one_device(ctx)
    held: list[PodRun] = []
    await _positive(ctx, grant, held)
    await _negative(ctx, held)  # while the claiming pod still holds its device
    await _env_bypass(ctx, held)
    if held:
        await ctx.delete_pods([held[0].name])
    await _multi_container(ctx, grant)


PROBE = Probe(
    name="secure_accelerator_access",
    test="TestSecureAcceleratorAccess",
    title="Device access is isolated and mediated by claims",
    requirements=("secure_accelerator_access",),
    run=run,
    # EnvVarBypassTest only applies to vendors whose runtime has such a variable.
    required=("PositiveAccessTest", "NegativeIsolationTest", "MultiContainerIsolationTest"),
    modes=("dra", "device-plugin"),
)
