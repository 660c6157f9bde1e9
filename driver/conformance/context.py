"""What a probe works with: the cluster (one namespace per run, every object labelled), checks, logging.

Every object a probe creates goes into the run's namespace with the run's labels and is remembered, so the
probe's objects are deleted when it ends -- passed, failed, timed out or interrupted -- and the runner
deletes whatever is left (and the namespace) at the end of the run. The context also keeps what the report
shows of each probe: the manifests it sent and what its pods printed.

A pod that cannot be scheduled for a reason that does not resolve by itself (a DeviceClass that does not
exist, a selector the scheduler cannot evaluate) fails its wait at once with the scheduler's own words;
while a pod is pending, the pending reason goes to the progress display.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from driver.conformance import pods as podlib
from driver.conformance.e2elog import E2ELog
from driver.conformance.model import CheckFailedError, CheckResult, CheckSkippedError, Probe
from driver.conformance.vendor import Vendor
from driver.kube.client import (
    PODS,
    RESOURCE_CLAIMS,
    ApiError,
    KubeClient,
    ResourceType,
)

JSON = dict[str, Any]
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "accel-dra-conformance"
RUN_LABEL = "conformance.accel-dra.dev/run"
PROBE_LABEL = "conformance.accel-dra.dev/probe"
#: Polling a pod: quick at first (a local cluster answers in milliseconds), then backing off to 1 s.
POLL_FIRST, POLL_MAX = 0.05, 1.0
#: The ServiceAccount admission plugin's refusal while a new namespace has no ``default`` ServiceAccount yet.
NO_SERVICE_ACCOUNT = "error looking up service account"
SERVICE_ACCOUNT_WAIT = 60.0
#: Waiting reasons that will not resolve by themselves.
_STUCK_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError")
#: Scheduler verdicts no waiting can change: the scheduler's words for a class or selector it cannot use
#: (kube-scheduler: "request gpu: device class X does not exist", "CEL runtime error"; the sandbox's
#: allocator, like the structured allocator: "could not retrieve device class X: ... not found").
_UNRESOLVABLE = re.compile(
    r"device ?class \S+ does not exist|DeviceClass \S+ not found|could not retrieve device class|"
    r"CEL (runtime|compile) error|"
    r"failed to compile|cannot be evaluated",
    re.IGNORECASE,
)


class Clock:
    """Time for the waits: monotonic seconds and sleeping (tests pass a fake that moves on when slept)."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Poll:
    """Sleeps between polls of one condition, growing from POLL_FIRST to POLL_MAX."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.delay = POLL_FIRST

    async def wait(self) -> None:
        await self.clock.sleep(self.delay)
        self.delay = min(POLL_MAX, self.delay * 1.5)


@dataclass
class LogAnswer:
    """What the API server said when asked for a container's log: the text, or why there was none."""

    text: str = ""
    error: str = ""

    def shown(self) -> str:
        return f"(no log: the API server answered {self.error})" if self.error else self.text.strip()[-400:]


@dataclass
class PodRun:
    """A probe pod that printed its results."""

    name: str
    pod: JSON
    outputs: dict[str, podlib.Output]

    @property
    def node(self) -> str:
        return str(self.pod["spec"].get("nodeName") or "")


def run_labels(run_id: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY, RUN_LABEL: run_id}


def _pod_state(pod: Mapping[str, Any]) -> str:
    """Phase, scheduling condition and container waiting reasons, for timeout messages."""
    status = pod.get("status") or {}
    parts = [f"phase {status.get('phase') or 'Pending'}"]
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            parts.append(
                f"not scheduled: {condition.get('reason', '')} {condition.get('message', '')}".strip()
            )
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            parts.append(
                f"container {cs.get('name')} waiting: {waiting.get('reason', '')} {waiting.get('message', '')}".strip()
            )
    return "; ".join(parts)


class ProbeContext:
    def __init__(
        self,
        *,
        kube: KubeClient,
        vendor: Vendor,
        namespace: str,
        run_id: str,
        probe: Probe,
        log: E2ELog,
        on_step: Callable[[str], None] | None = None,
        on_wait: Callable[[str], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.kube = kube
        self.clock = clock or Clock()
        self.vendor = vendor
        self.namespace = namespace
        self.run_id = run_id
        self.probe = probe
        self.log = log
        self.checks: list[CheckResult] = []
        self.data: dict[str, Any] = {}
        self.current: CheckResult | None = None
        self.step_text = ""
        self._on_step = on_step
        self._on_wait = on_wait
        self._objects: list[tuple[ResourceType, str, str]] = []
        #: Every object as the probe sent it (for the report and ``results/probes/<probe>/``).
        self.manifests: list[JSON] = []
        #: (pod, container, what it printed) of every probe pod that printed its results.
        self.outputs: list[tuple[str, str, str]] = []

    # -- reporting -------------------------------------------------------------------------------

    @property
    def test(self) -> str:
        """The test the next line belongs to: the running check, else the probe."""
        return f"{self.probe.test}/{self.current.name}" if self.current else self.probe.test

    def note(self, text: str) -> None:
        self.log.note(text, indent=8 if self.current else 4, test=self.test)
        if self.current is not None:
            self.current.details.append(text)

    def step(self, text: str) -> None:
        self.step_text = text
        self.log.note(f"step: {text}", indent=8 if self.current else 4, test=self.test)
        if self._on_step is not None:
            self._on_step(f"{self.current.name}: {text}" if self.current else text)

    def waiting(self, why: str) -> None:
        """What a wait is waiting on right now (a pod's pending reason), for the progress display."""
        if self._on_wait is not None:
            self._on_wait(why)

    @contextlib.asynccontextmanager
    async def check(self, name: str) -> AsyncIterator[CheckResult]:
        """One subtest: CheckFailedError / CheckSkippedError / API errors end it with that outcome; others run on."""
        result = CheckResult(name, "passed", "")
        self.checks.append(result)
        self.current = result
        test = f"{self.probe.test}/{name}"
        self.log.run(test)
        started = time.monotonic()
        try:
            yield result
        except CheckFailedError as err:
            result.outcome, result.message = "failed", str(err)
        except CheckSkippedError as err:
            result.outcome, result.message = "skipped", str(err)
        except ApiError as err:
            result.outcome, result.message = "failed", f"API error while {self.step_text}: {err}"
        except asyncio.CancelledError:
            result.outcome, result.message = "failed", f"interrupted while {self.step_text}"
            raise
        except Exception as err:
            result.outcome = "failed"
            result.message = f"error while {self.step_text}: {type(err).__name__}: {err}"
        finally:
            result.duration = time.monotonic() - started
            self._end_check(test, result)
            self.current = None

    def _end_check(self, test: str, result: CheckResult) -> None:
        if result.message:
            prefix = {"passed": "PASS", "failed": "VIOLATION", "skipped": "SKIP"}[result.outcome]
            self.log.note(f"{prefix}: {result.message}", indent=8, test=test)
        self.log.result(test, result.outcome, result.duration)

    # -- objects ---------------------------------------------------------------------------------

    def labels(self) -> dict[str, str]:
        return {**run_labels(self.run_id), PROBE_LABEL: self.probe.name.replace("_", "-")}

    async def create(self, rt: ResourceType, body: Mapping[str, Any], namespace: str | None = None) -> JSON:
        """Create an object in the run's namespace (or ``namespace``), labelled, remembered for cleanup."""
        namespace = namespace or self.namespace
        obj = copy.deepcopy(dict(body))
        obj.setdefault("apiVersion", rt.api_version)
        obj.setdefault("kind", rt.kind)
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta["labels"] = {**(meta.get("labels") or {}), **self.labels()}
        self.manifests.append(copy.deepcopy(obj))
        created = await self._create(rt, obj, namespace)
        self._objects.append((rt, created["metadata"]["name"], namespace))
        self.note(f"created {obj['kind']} {namespace}/{created['metadata']['name']}")
        return created

    async def _create(self, rt: ResourceType, obj: JSON, namespace: str) -> JSON:
        """Create; a pod refused because the new namespace's ``default`` ServiceAccount is not there yet
        (the ServiceAccount admission plugin; its controller creates it a moment after the namespace) is
        created again once it can be."""
        deadline = self.clock.now() + SERVICE_ACCOUNT_WAIT
        poll = _Poll(self.clock)
        while True:
            try:
                return await self.kube.create(rt, obj, namespace)
            except ApiError as err:
                if (
                    not (err.status == 403 and NO_SERVICE_ACCOUNT in err.message)
                    or self.clock.now() >= deadline
                ):
                    raise
            await poll.wait()

    async def get_pod(self, name: str) -> JSON:
        return await self.kube.get(PODS, name, self.namespace)

    async def pod_log(self, name: str, container: str) -> LogAnswer:
        """The container's log, or the API server's answer when it has none to give.

        400 and 404 are what a container that has not started yet gets; a node that runs no containers at
        all answers the same way (or with a 5xx) for as long as one waits, so the answer is kept for the
        message that ends the wait.
        """
        path = PODS.path(self.namespace, name, "log") + f"?container={container}"
        try:
            return LogAnswer(await self.kube.request_text("GET", path))
        except ApiError as err:
            if err.status in (400, 404) or err.status >= 500:
                return LogAnswer(error=f"HTTP {err.status} {err.reason}: {err.message}".strip())
            raise

    async def wait_output(
        self, name: str, timeout: float | None = None, *, unschedulable_fails: bool = False
    ) -> PodRun:
        """Wait until every container of the pod printed ``RESULT: DONE``; fail with the pod's state if not.

        ``unschedulable_fails``: the pod's claims were chosen to fit what is free, so the scheduler's first
        Unschedulable verdict on them as they exist ends the wait (waiting would not make them fit).
        """
        timeout = timeout or self.vendor.pod_timeout
        self.step(f"waiting for pod {name} to print its results (up to {timeout:g}s)")
        deadline = self.clock.now() + timeout
        poll = _Poll(self.clock)
        verdicts = _AllocationVerdicts()
        pod: JSON = {}
        answers: dict[str, LogAnswer] = {}
        while True:
            pod = await self.get_pod(name)
            phase = (pod.get("status") or {}).get("phase")
            containers = [c["name"] for c in pod["spec"]["containers"]]
            if phase in ("Running", "Succeeded", "Failed"):
                answers = {c: await self.pod_log(name, c) for c in containers}
                outputs = {c: podlib.parse_output(a.text) for c, a in answers.items()}
                if all(o.done for o in outputs.values()):
                    run = PodRun(name, pod, outputs)
                    for container, output in outputs.items():
                        self.outputs.append((name, container, output.text))
                        self.note(f"pod {name} (node {run.node}) container {container}: {output.describe()}")
                    return run
                if phase != "Running":
                    logs = "\n".join(f"[{c}] {a.shown()}" for c, a in answers.items())
                    raise CheckFailedError(f"pod {name} ended ({phase}) before printing its results:\n{logs}")
                hollow = _hollow_runtime(pod)
                if hollow:
                    said = "; ".join(
                        f"container {c}: {a.error or repr(a.text.strip()[-300:])}" for c, a in answers.items()
                    )
                    raise CheckFailedError(
                        f"pod {name} can print no results: {hollow}; the API server answered the log "
                        f"request with {said}"
                    )
            state = _pod_state(pod)
            if any(reason in state for reason in _STUCK_REASONS):
                raise CheckFailedError(f"pod {name} cannot start: {state}")
            verdict = _unschedulable_message(pod)
            if verdict is not None and _UNRESOLVABLE.search(verdict):
                raise CheckFailedError(f"pod {name} cannot be scheduled; the scheduler says: {verdict}")
            if verdicts.on_claims(pod) is not None and unschedulable_fails:
                raise CheckFailedError(
                    f"pod {name} cannot be scheduled although its claims were chosen to fit what was free "
                    f"(another workload may have taken it meanwhile); the scheduler says: {verdict}"
                )
            self.waiting(f"pod {name}: {state}")
            if self.clock.now() >= deadline:
                raise CheckFailedError(
                    f"pod {name} did not print its results within {timeout:g}s: {state}{_log_state(answers)}"
                )
            await poll.wait()

    async def run_pod(self, body: Mapping[str, Any], timeout: float | None = None) -> PodRun:
        await self.create(PODS, body)
        return await self.wait_output(body["metadata"]["name"], timeout)

    async def wait_unschedulable(self, name: str, timeout: float = 60.0) -> str:
        """The scheduler's message once it reports the pod unschedulable with all its ResourceClaims in
        existence; fails if the pod starts instead.

        A verdict given while a claim is still to be generated from its template ("waiting for the
        ResourceClaim ... to be created") says nothing about allocation, and neither does that same message
        still standing after the claim appeared: only a later verdict counts.
        """
        self.step(f"waiting for the scheduler's verdict on pod {name} (up to {timeout:g}s)")
        deadline = self.clock.now() + timeout
        poll = _Poll(self.clock)
        verdicts = _AllocationVerdicts()
        while True:
            pod = await self.get_pod(name)
            message = verdicts.on_claims(pod)
            if message is not None:
                return message
            if pod["spec"].get("nodeName"):
                raise CheckFailedError(f"pod {name} was scheduled to node {pod['spec']['nodeName']}")
            if self.clock.now() >= deadline:
                raise CheckFailedError(
                    f"pod {name} was neither scheduled nor reported unschedulable in {timeout:g}s"
                )
            await poll.wait()

    async def claim_for(self, pod: Mapping[str, Any], entry: str) -> JSON:
        """The ResourceClaim behind a pod's claim entry (named, or generated from a template)."""
        for e in pod["spec"].get("resourceClaims") or []:
            if e["name"] == entry and e.get("resourceClaimName"):
                return await self.kube.get(RESOURCE_CLAIMS, e["resourceClaimName"], self.namespace)
        for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []:
            if s.get("name") == entry and s.get("resourceClaimName"):
                return await self.kube.get(RESOURCE_CLAIMS, s["resourceClaimName"], self.namespace)
        raise CheckFailedError(f"pod {pod['metadata']['name']} has no ResourceClaim for its entry {entry!r}")

    async def delete_pods(self, names: Sequence[str], timeout: float = 120.0) -> None:
        """Delete pods and wait until they are gone (their devices are free again)."""
        self.step(f"deleting pod(s) {', '.join(names)}")
        for name in names:
            with contextlib.suppress(ApiError):
                await self.kube.delete(PODS, name, self.namespace)
        deadline = self.clock.now() + timeout
        for name in names:
            poll = _Poll(self.clock)
            while self.clock.now() < deadline and await _unless_gone(self.get_pod(name)) is not None:
                await poll.wait()
        self._objects = [
            (rt, n, ns)
            for rt, n, ns in self._objects
            if not (rt == PODS and n in names and ns == self.namespace)
        ]

    async def release_claims(self, names: Sequence[str], timeout: float = 120.0) -> None:
        """Delete ResourceClaims and wait until each is gone or deallocated, so that the next check finds their
        devices free (the claim controller deallocates a claim some time after its last pod went)."""
        if not names:
            return
        self.step(f"releasing claim(s) {', '.join(names)}")
        for name in names:
            with contextlib.suppress(ApiError):
                await self.kube.delete(RESOURCE_CLAIMS, name, self.namespace)
        self._objects = [o for o in self._objects if not (o[0] == RESOURCE_CLAIMS and o[1] in names)]
        deadline = self.clock.now() + timeout
        for name in names:
            poll = _Poll(self.clock)
            while True:
                claim = await _unless_gone(self.kube.get(RESOURCE_CLAIMS, name, self.namespace))
                if claim is None or not (claim.get("status") or {}).get("allocation"):
                    break
                if self.clock.now() >= deadline:
                    raise CheckFailedError(
                        f"claim {name} was still allocated {timeout:g}s after it was deleted"
                    )
                await poll.wait()

    async def wait_pods_gone(
        self, label_selector: str, namespace: str | None = None, timeout: float = 120.0
    ) -> None:
        """Wait until no pod matches ``label_selector`` (the pods of a deleted Job or Deployment)."""
        namespace = namespace or self.namespace
        self.step(f"waiting for the pods of {label_selector} to go")
        deadline = self.clock.now() + timeout
        poll = _Poll(self.clock)
        while self.clock.now() < deadline:
            left = (await self.kube.list(PODS, namespace, label_selector=label_selector)).get("items") or []
            if not left:
                return
            await poll.wait()

    async def delete(self, rt: ResourceType, name: str, namespace: str | None = None) -> None:
        """Delete one object the probe created; its dependents (a Job's or Deployment's pods) go with it."""
        namespace = namespace or self.namespace
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        with contextlib.suppress(ApiError):
            await self.kube.request("DELETE", rt.path(namespace if rt.namespaced else None, name), body=body)
        self._objects = [o for o in self._objects if o != (rt, name, namespace)]

    async def cleanup(self) -> None:
        """Delete what this probe created: its pods first (they hold claims and devices) and wait until they
        are gone, then everything else, newest first (a claim before its template)."""
        pods = [n for rt, n, ns in self._objects if rt == PODS and ns == self.namespace]
        if pods:
            await self.delete_pods(pods)
        for rt, name, namespace in reversed(list(self._objects)):
            await self.delete(rt, name, namespace)
        self._objects = []


async def _unless_gone(read: Awaitable[JSON]) -> JSON | None:
    """The object read, or None once it is deleted."""
    try:
        return await read
    except ApiError as err:
        if err.not_found:
            return None
        raise


#: The container-ID scheme of kubemark's fake runtime: a hollow node reports containers it never runs.
FAKE_RUNTIME = "fakeRuntime://"


def _hollow_runtime(pod: Mapping[str, Any]) -> str:
    """Why no container of a Running pod will ever print anything, when its node's runtime is kubemark's
    fake one (a hollow node); "" otherwise. Waiting out the pod timeout there would only hide why."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    fake = [cs for cs in statuses if str(cs.get("containerID") or "").startswith(FAKE_RUNTIME)]
    if not fake:
        return ""
    node = pod["spec"].get("nodeName") or "?"
    return (
        f"node {node} runs kubemark's fake container runtime ({FAKE_RUNTIME}, a hollow node): it reports "
        "containers Running but runs none, so nothing inside a container can print"
    )


def _log_state(answers: Mapping[str, LogAnswer]) -> str:
    """What the API server last said about each container's log, for a wait that ended without results."""
    parts = []
    for container, answer in answers.items():
        if answer.error:
            parts.append(
                f"the log of container {container} was never readable: the API server answered {answer.error}"
            )
        elif not answer.text.strip():
            parts.append(f"container {container} printed nothing")
        else:
            lines = answer.text.strip().splitlines()
            parts.append(
                f"container {container} printed {len(lines)} line(s) without {podlib.DONE!r}, "
                f"the last: {lines[-1][-300:]!r}"
            )
    if not parts:
        return "; the pod never reached a phase with container logs"
    return "; " + "; ".join(parts)


def _unschedulable_message(pod: Mapping[str, Any]) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (condition.get("type"), condition.get("status"), condition.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ) and condition.get("message"):
            return str(condition["message"])
    return None


class _AllocationVerdicts:
    """The scheduler's Unschedulable verdicts on a pod's claims as they exist.

    A verdict given while a claim is still to be generated from its template says nothing about allocation,
    and neither does that same message still standing after the claim appeared: only a later one counts.
    """

    def __init__(self) -> None:
        self._before_claims: set[str] = set()

    def on_claims(self, pod: Mapping[str, Any]) -> str | None:
        message = _unschedulable_message(pod)
        if message is None:
            return None
        if not _claims_generated(pod):
            self._before_claims.add(message)
            return None
        return None if message in self._before_claims else message


def pod_claims(pod: Mapping[str, Any]) -> list[str]:
    """The ResourceClaims a pod uses: named in its spec, or generated from its templates (once they are)."""
    named = [
        str(e["resourceClaimName"])
        for e in pod["spec"].get("resourceClaims") or []
        if e.get("resourceClaimName")
    ]
    generated = [
        str(s["resourceClaimName"])
        for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []
        if s.get("resourceClaimName")
    ]
    return named + generated


def _claims_generated(pod: Mapping[str, Any]) -> bool:
    """Whether every claim entry of the pod names its ResourceClaim (templates: once generated)."""
    generated = {
        s.get("name")
        for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []
        if s.get("resourceClaimName")
    }
    return all(
        e.get("resourceClaimName") or e.get("name") in generated
        for e in pod["spec"].get("resourceClaims") or []
    )
