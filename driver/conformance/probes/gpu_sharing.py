"""``gpu_sharing``: one claim, one device, several consumers (static sharing through DRA).

Checks: two containers of one pod that reference the same claim see the same single device; two pods that
reference the same ResourceClaim run at the same time, both are in the claim's ``reservedFor``, and both see
the same single device.
"""

from __future__ import annotations

from driver.conformance import pods as podlib
from driver.conformance.context import ProbeContext
from driver.conformance.model import CheckFailedError, Probe
from driver.conformance.probes.common import one_device_template, unique
from driver.kube.client import PODS, RESOURCE_CLAIMS


def _same_device(outputs: dict[str, podlib.Output]) -> str:
    """The one device every consumer sees, or a failure naming what each saw."""
    seen = {who: tuple(sorted(o.identities or o.devices)) for who, o in outputs.items()}
    counts = {who: o.count for who, o in outputs.items()}
    if any(c != 1 for c in counts.values()) or len(set(seen.values())) != 1:
        shown = "; ".join(f"{who} sees {o.describe()}" for who, o in outputs.items())
        raise CheckFailedError(f"the consumers of one claim do not see the same single device: {shown}")
    return next(iter(seen.values()))[0]


async def _containers(ctx: ProbeContext) -> None:
    async with ctx.check("TwoContainersOneClaim") as check:
        template = await one_device_template(ctx, "shared")
        name = unique("shared-containers")
        script = podlib.script(podlib.device_script(ctx.vendor))
        body = podlib.pod(
            ctx.vendor,
            name,
            [podlib.Container("first", script, ("gpu",)), podlib.Container("second", script, ("gpu",))],
            templates={"gpu": template},
        )
        run = await ctx.run_pod(body)
        await ctx.delete_pods([name])
        device = _same_device({f"container {c}": o for c, o in run.outputs.items()})
        check.message = f"both containers of pod {name} see {device}"


async def _pods(ctx: ProbeContext) -> None:
    async with ctx.check("TwoPodsOneClaim") as check:
        claim_name = unique("shared")
        spec = podlib.claim_spec([podlib.request(ctx.vendor)])
        await ctx.create(RESOURCE_CLAIMS, podlib.resource_claim(claim_name, spec))
        names = [unique("sharing-pod"), unique("sharing-pod")]
        script = podlib.script(podlib.device_script(ctx.vendor))
        for name in names:  # both exist before either is waited on: they must run side by side
            body = podlib.pod(
                ctx.vendor, name, [podlib.Container("probe", script, ("gpu",))], claims={"gpu": claim_name}
            )
            await ctx.create(PODS, body)
        runs = [await ctx.wait_output(name) for name in names]
        claim = await ctx.kube.get(RESOURCE_CLAIMS, claim_name, ctx.namespace)
        reserved = {r.get("uid") for r in (claim.get("status") or {}).get("reservedFor") or []}
        await ctx.delete_pods(names)
        uids = {r.pod["metadata"]["uid"] for r in runs}
        if not uids <= reserved:
            raise CheckFailedError(
                f"claim {claim_name} is not reserved for both pods (reservedFor: {sorted(reserved)})"
            )
        device = _same_device({f"pod {r.name}": r.outputs["probe"] for r in runs})
        check.message = f"pods {names[0]} and {names[1]} share claim {claim_name} and both see {device}"


async def run(ctx: ProbeContext) -> None:
    await _containers(ctx)
    await _pods(ctx)


PROBE = Probe(
    name="gpu_sharing",
    test="TestGPUSharing",
    title="One claim shared by containers and by pods",
    requirements=("gpu_sharing",),
    run=run,
)
