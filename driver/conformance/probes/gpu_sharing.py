"""``gpu_sharing``: one claim, one device, several consumers that all use it (static sharing through DRA),
and the platform's sharing strategies (:mod:`.sharing_strategies`), of which at least one must be shown.

Checks: two containers of one pod that reference the same claim see the same single device; two pods that
reference the same ResourceClaim run at the same time, both are in the claim's ``reservedFor``, and both see
the same single device; every one of those consumers ran the vendor's health command (``nvidia-smi``, a
CUDA sample) on the shared device while the others held it, without an error (the consumers of the
strategies' checks too). Seeing one device node is what any DRA driver gives (core Kubernetes shares the
claim); the health command shows the sharing works.
"""

from __future__ import annotations

from collections.abc import Mapping

from driver.conformance import pods as podlib
from driver.conformance.context import ProbeContext
from driver.conformance.model import CheckFailedError, CheckSkippedError, Probe
from driver.conformance.probes import sharing_strategies as strategies
from driver.conformance.probes.common import one_device_template, unique
from driver.conformance.probes.sharing_strategies import (
    Consumers,
    consumer,
    outputs_of,
    reserved_for_all,
    same_device,
    started,
)
from driver.kube.client import RESOURCE_CLAIMS


async def _containers(ctx: ProbeContext, consumers: Consumers) -> None:
    async with ctx.check("TwoContainersOneClaim") as check:
        template = await one_device_template(ctx, "shared")
        name = unique("shared-containers")
        body = podlib.pod(
            ctx.vendor,
            name,
            [consumer(ctx, "first", ("gpu",)), consumer(ctx, "second", ("gpu",))],
            templates={"gpu": template},
        )
        async with started(ctx, [body], unschedulable_fails=False) as (run,):
            pass
        outputs = {f"pod {name} container {c}": o for c, o in run.outputs.items()}
        device = same_device(outputs)
        consumers.update(outputs)
        check.message = f"both containers of pod {name} see {device}"


async def _pods(ctx: ProbeContext, consumers: Consumers) -> None:
    async with ctx.check("TwoPodsOneClaim") as check:
        claim_name = unique("shared")
        spec = podlib.claim_spec([podlib.request(ctx.vendor)])
        await ctx.create(RESOURCE_CLAIMS, podlib.resource_claim(claim_name, spec))
        bodies = [
            podlib.pod(ctx.vendor, name, [consumer(ctx, "probe", ("gpu",))], claims={"gpu": claim_name})
            for name in (unique("sharing-pod"), unique("sharing-pod"))
        ]
        async with started(ctx, bodies, unschedulable_fails=False) as runs:
            claim = await ctx.kube.get(RESOURCE_CLAIMS, claim_name, ctx.namespace)
        reserved_for_all(claim, runs)
        outputs = outputs_of(runs)
        device = same_device(outputs)
        consumers.update(outputs)
        names = [r.name for r in runs]
        check.message = f"pods {names[0]} and {names[1]} share claim {claim_name} and both see {device}"


def health_verdict(consumers: Mapping[str, podlib.Output], command: str) -> str:
    """What the check says when every consumer's health command succeeded; a failure naming those that did not."""
    broken = {who: o for who, o in consumers.items() if "HEALTH" not in o.results}
    if broken:
        shown = "; ".join(
            f"{who}: {o.results.get('HEALTH_ERROR', 'printed no health result')}" for who, o in broken.items()
        )
        raise CheckFailedError(
            f"the health command `{command}` failed in a consumer of a shared device: {shown}"
        )
    sample = next(iter(consumers.values())).results["HEALTH"]
    return (
        f"all {len(consumers)} consumers of shared devices ran `{command}` on them without an error "
        f"(e.g. {sample!r})"
    )


async def _workloads(ctx: ProbeContext, consumers: Consumers) -> None:
    async with ctx.check("ConsumersUseTheSharedDevice") as check:
        command = ctx.vendor.health.command
        if not command:
            raise CheckSkippedError(
                f"vendor {ctx.vendor.name} sets no health.command: the suite cannot show that the consumers "
                "of a shared device can use it (seeing its device node is not enough)"
            )
        if not consumers:
            raise CheckSkippedError("no consumer of a shared device ran (see the checks above)")
        for who, output in consumers.items():
            ctx.note(f"{who}: {output.results.get('HEALTH') or output.results.get('HEALTH_ERROR') or '?'}")
        check.message = health_verdict(consumers, command)


async def run(ctx: ProbeContext) -> None:
    consumers: Consumers = {}
    await _containers(ctx, consumers)
    await _pods(ctx, consumers)
    try:
        await strategies.time_slicing(ctx, consumers)
        await strategies.partitions(ctx, consumers)
        await strategies.consumable_capacity(ctx, consumers)
    finally:  # the report's table shows what ran, also when the probe timed out in the middle
        ctx.data["strategies"] = strategies.summary(ctx)
    await _workloads(ctx, consumers)


PROBE = Probe(
    name="gpu_sharing",
    test="TestGPUSharing",
    title="One claim shared by containers and by pods, and the sharing strategies the platform offers",
    requirements=("gpu_sharing",),
    run=run,
    required=("TwoContainersOneClaim", "TwoPodsOneClaim", "ConsumersUseTheSharedDevice"),
    required_any=strategies.STRATEGIES,
    #: Up to five checks wait for pods (the pod timeout each) before the required health check.
    timeout=900.0,
)
