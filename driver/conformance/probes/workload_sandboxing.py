"""``workload_sandboxing`` (1.37): workloads can run in a sandbox strongly isolated from the node's kernel.

Checks: the platform offers a RuntimeClass whose handler is a sandbox -- the vendor's
``workloadSandboxing.runtimeClasses``, or any RuntimeClass whose handler is gVisor's ``runsc`` or a Kata
Containers ``kata*`` handler; a pod with that RuntimeClass runs and reports a different kernel (``uname -r``
and ``/proc/version``) than a pod without it on the same node -- the sandbox does not share the node's kernel,
which is what isolates its processes, memory, filesystem and network from the host. Where the platform offers
no such RuntimeClass (the sandbox does not), both checks are skipped with that reason: the SHOULD is left for
the platform, with the reason in its notes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from driver.conformance import pods as podlib
from driver.conformance.apis import RUNTIME_CLASSES, served
from driver.conformance.context import ProbeContext
from driver.conformance.model import CheckFailedError, CheckSkippedError, Probe
from driver.conformance.probes.common import unique

JSON = dict[str, Any]
#: Handlers of the runtimes that give a workload its own kernel (gVisor's user-space kernel, Kata's VM).
SANDBOX_HANDLERS = re.compile(r"^(runsc|gvisor|kata([-_].*)?)$")
KERNEL_SCRIPT = "\n".join(
    [
        'echo "RESULT: KERNEL=$(uname -r)"',
        'echo "RESULT: KERNEL_BUILD=$(head -n 1 /proc/version 2>/dev/null)"',
    ]
)


def sandbox_classes(classes: list[JSON], wanted: tuple[str, ...]) -> list[JSON]:
    """The RuntimeClasses to test: the vendor's, else those whose handler is a known sandbox."""
    if wanted:
        return [c for c in classes if c["metadata"]["name"] in wanted]
    return [c for c in classes if SANDBOX_HANDLERS.match(str(c.get("handler", "")))]


def kernel_verdict(
    sandboxed: Mapping[str, str], control: Mapping[str, str], runtime_class: str, node: str
) -> str:
    """What the kernel check says, or a failure when the sandboxed pod shares the node's kernel."""
    inside, outside = sandboxed.get("KERNEL", ""), control.get("KERNEL", "")
    if not inside or not outside:
        raise CheckFailedError(
            f"a pod could not report its kernel (sandboxed: {inside!r}, control: {outside!r})"
        )
    same = inside == outside and sandboxed.get("KERNEL_BUILD", "") == control.get("KERNEL_BUILD", "")
    if same:
        raise CheckFailedError(
            f"a pod with RuntimeClass {runtime_class} runs on node {node}'s own kernel ({inside}): it is not "
            "isolated from the host kernel"
        )
    return f"a pod with RuntimeClass {runtime_class} runs kernel {inside}, the node {node} runs {outside}"


async def _offered(ctx: ProbeContext) -> list[JSON]:
    async with ctx.check("SandboxRuntimeClassOffered") as check:
        ctx.step("listing RuntimeClasses")
        if await served(ctx.kube, RUNTIME_CLASSES.group, RUNTIME_CLASSES.version) is None:
            raise CheckSkippedError("the API server serves no node.k8s.io/v1 RuntimeClass")
        classes = (await ctx.kube.list(RUNTIME_CLASSES)).get("items") or []
        wanted = ctx.vendor.sandboxing.runtime_classes
        found = sandbox_classes(classes, wanted)
        shown = ", ".join(f"{c['metadata']['name']} ({c.get('handler')})" for c in classes) or "none"
        if not found:
            if wanted:
                raise CheckFailedError(
                    f"RuntimeClass {', '.join(wanted)} does not exist (the cluster has: {shown})"
                )
            raise CheckSkippedError(
                "the platform offers no sandboxed RuntimeClass (no handler runsc or kata*; RuntimeClasses: "
                f"{shown}); name one in workloadSandboxing.runtimeClasses if its handler is another sandbox"
            )
        check.message = "sandboxed RuntimeClass(es): " + ", ".join(
            f"{c['metadata']['name']} (handler {c.get('handler')})" for c in found
        )
        return found
    return []


async def _kernel(ctx: ProbeContext, runtime_class: str) -> None:
    async with ctx.check("SandboxedPodRunsOnItsOwnKernel") as check:
        name = unique("sandboxed")
        body = podlib.pod(ctx.vendor, name, [podlib.Container("probe", podlib.script(KERNEL_SCRIPT))])
        body["spec"]["runtimeClassName"] = runtime_class
        sandboxed = await ctx.run_pod(body)
        control_name = unique("not-sandboxed")
        control_body = podlib.pod(
            ctx.vendor,
            control_name,
            [podlib.Container("probe", podlib.script(KERNEL_SCRIPT))],
            node_name=sandboxed.node,
        )
        control = await ctx.run_pod(control_body)
        await ctx.delete_pods([name, control_name])
        check.message = kernel_verdict(
            sandboxed.outputs["probe"].results,
            control.outputs["probe"].results,
            runtime_class,
            sandboxed.node,
        )


async def run(ctx: ProbeContext) -> None:
    found = await _offered(ctx)
    if found:
        await _kernel(ctx, found[0]["metadata"]["name"])
    else:
        async with ctx.check("SandboxedPodRunsOnItsOwnKernel"):
            raise CheckSkippedError(
                "no sandboxed RuntimeClass to run a pod with (see SandboxRuntimeClassOffered)"
            )


PROBE = Probe(
    name="workload_sandboxing",
    test="TestWorkloadSandboxing",
    title="Workloads run in a sandbox with a kernel of their own",
    requirements=("workload_sandboxing",),
    run=run,
    required=("SandboxRuntimeClassOffered", "SandboxedPodRunsOnItsOwnKernel"),
    modes=("dra", "device-plugin"),
)
