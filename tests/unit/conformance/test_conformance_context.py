"""The probe context's waits, against scripted API answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from driver.conformance import context as ctxlib
from driver.conformance.e2elog import E2ELog
from driver.conformance.model import CheckFailedError
from driver.conformance.probes import PROBES
from driver.conformance.vendor import load_vendor
from driver.kube.client import ApiError

WAITING = "waiting for the ResourceClaim ns/pod-gpus (template gpus) to be created"
IMPOSSIBLE = "0/1 nodes are available: 1 cannot allocate all claims"


def pod(message: str, generated: bool) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        ]
    }
    if generated:
        status["resourceClaimStatuses"] = [{"name": "gpus", "resourceClaimName": "pod-gpus-x1"}]
    return {
        "metadata": {"name": "pod", "namespace": "ns"},
        "spec": {"resourceClaims": [{"name": "gpus", "resourceClaimTemplateName": "gpus"}]},
        "status": status,
    }


class ScriptedPods:
    """Answers GETs with the next pod of a script, then keeps answering the last one."""

    def __init__(self, *answers: dict[str, Any]) -> None:
        self.answers = list(answers)
        self.gets = 0

    async def get(self, _resource: Any, _name: str, _namespace: str | None = None) -> dict[str, Any]:
        self.gets += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def context(
    kube: object, *, clock: ctxlib.Clock | None = None, on_wait: Callable[[str], None] | None = None
) -> ctxlib.ProbeContext:
    """A probe's context over ``kube``, a scripted stand-in for the API client."""
    return ctxlib.ProbeContext(
        kube=kube,  # type: ignore[arg-type]
        vendor=load_vendor("accel-dra"),
        namespace="ns",
        run_id="t",
        probe=PROBES[0],
        log=E2ELog(None),
        on_wait=on_wait,
        clock=clock,
    )


async def test_only_a_verdict_after_the_claims_exist_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctxlib, "POLL_FIRST", 0.001)
    monkeypatch.setattr(ctxlib, "POLL_MAX", 0.001)
    kube = ScriptedPods(
        pod(WAITING, generated=False),  # the template's claim is not there yet
        pod(WAITING, generated=True),  # it is, but the scheduler has not looked again
        pod(IMPOSSIBLE, generated=True),
    )
    assert await context(kube).wait_unschedulable("pod", timeout=30) == IMPOSSIBLE
    assert kube.gets == 3


async def test_a_verdict_on_a_pod_with_existing_claims_counts_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ctxlib, "POLL_FIRST", 0.001)
    kube = ScriptedPods(pod(IMPOSSIBLE, generated=True))
    assert await context(kube).wait_unschedulable("pod", timeout=30) == IMPOSSIBLE
    assert kube.gets == 1


class FakeClock(ctxlib.Clock):
    """Time that passes only when a wait sleeps."""

    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.time += seconds


class NodeWithoutContainers:
    """A pod that runs on a node that runs no containers (a hollow kubelet): Running, but no log, ever."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.error = ApiError(status, reason, message)
        self.log_requests = 0

    async def get(self, _resource: Any, name: str, _namespace: str | None = None) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"nodeName": "hollow-1", "containers": [{"name": "probe"}]},
            "status": {"phase": "Running"},
        }

    async def request_text(self, _method: str, path: str) -> str:
        assert path.endswith("/log?container=probe")
        self.log_requests += 1
        raise self.error


@pytest.mark.parametrize(
    ("status", "reason", "message"),
    [
        (400, "BadRequest", 'failed to read log file ".": no such file or directory'),
        (500, "InternalError", "failed to try resolving symlinks in path"),
    ],
)
async def test_a_pod_output_timeout_says_what_the_api_answered_for_the_log(
    status: int, reason: str, message: str
) -> None:
    kube = NodeWithoutContainers(status, reason, message)
    probe = context(kube, clock=FakeClock())
    with pytest.raises(CheckFailedError) as failed:
        await probe.wait_output("pod", timeout=30)
    assert kube.log_requests > 1  # it kept asking until the deadline
    assert str(failed.value) == (
        "pod pod did not print its results within 30s: phase Running; the log of container probe was never "
        f"readable: the API server answered HTTP {status} {reason}: {message}"
    )


async def test_progress_shows_position_run_time_and_each_new_pending_reason() -> None:
    import io

    from driver.conformance.progress import Progress, clock

    out = io.StringIO()
    progress = Progress(out, total=3)
    progress.start(2, "TestSecureAcceleratorAccess", 600)
    progress.step("PositiveAccessTest: waiting for pod claimed-1")
    for _ in range(3):
        progress.waiting("pod claimed-1: phase Pending; not scheduled: Unschedulable 0/1 nodes are available")
    progress.waiting("pod claimed-1: phase Running")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[2/3] TestSecureAcceleratorAccess (timeout 600s; run so far ")
    pending = [line for line in lines if "pending:" in line]
    assert len(pending) == 2 and pending[0].endswith("not scheduled: Unschedulable 0/1 nodes are available")
    assert (clock(42), clock(185), clock(3725)) == ("42s", "3m05s", "1h02m")


async def test_a_pending_pod_is_reported_while_the_wait_goes_on() -> None:
    seen: list[str] = []
    kube = ScriptedPods(pod(IMPOSSIBLE, generated=True))

    class Pending:
        async def get(self, *_: Any) -> dict[str, Any]:
            answer = await kube.get(None, "pod")
            answer["spec"]["containers"] = [{"name": "probe"}]
            answer["status"]["phase"] = "Pending"
            return answer

    probe = context(Pending(), clock=FakeClock(), on_wait=seen.append)
    with pytest.raises(
        CheckFailedError, match="did not print its results within 5s: phase Pending; not scheduled"
    ):
        await probe.wait_output("pod", timeout=5)
    assert seen and seen[0] == f"pod pod: phase Pending; not scheduled: Unschedulable {IMPOSSIBLE}"


class HollowNode:
    """kubemark's hollow kubelet: its fake runtime reports the container Running, and the kubelet answers
    every log request with 200 and the text of the error it met reading a log file that does not exist."""

    ANSWER = 'failed to read log file ".": read .: is a directory'

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        self.log_requests = 0

    async def get(self, _resource: Any, name: str, _namespace: str | None = None) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "probe"}]},
            "status": {
                "phase": "Running",
                "containerStatuses": [{"name": "probe", "containerID": self.container_id}],
            },
        }

    async def request_text(self, _method: str, _path: str) -> str:
        self.log_requests += 1
        return self.ANSWER


async def test_a_pod_on_a_hollow_node_fails_at_once_saying_so_with_the_log_answer() -> None:
    kube = HollowNode("fakeRuntime://pod_ns_uid_0_probe_0")
    with pytest.raises(CheckFailedError) as failed:
        await context(kube, clock=FakeClock()).wait_output("pod", timeout=30)
    assert kube.log_requests == 1  # no waiting for the pod timeout
    assert str(failed.value) == (
        "pod pod can print no results: node node-1 runs kubemark's fake container runtime (fakeRuntime://, "
        "a hollow node): it reports containers Running but runs none, so nothing inside a container can print; "
        f"the API server answered the log request with container probe: {HollowNode.ANSWER!r}"
    )


async def test_a_timeout_shows_the_last_line_a_container_printed() -> None:
    kube = HollowNode("containerd://abc")  # a real runtime: the text may be the container's own
    with pytest.raises(CheckFailedError) as failed:
        await context(kube, clock=FakeClock()).wait_output("pod", timeout=30)
    assert kube.log_requests > 1
    assert str(failed.value).endswith(
        f"container probe printed 1 line(s) without 'RESULT: DONE', the last: {HollowNode.ANSWER!r}"
    )


class NewNamespace:
    """A namespace just created: the ServiceAccount admission plugin refuses pods until the controller has
    made its ``default`` ServiceAccount."""

    REFUSAL = 'pods "p" is forbidden: error looking up service account ns/default: serviceaccount "default" not found'

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.creates = 0

    async def create(self, _rt: Any, body: dict[str, Any], _namespace: str | None = None) -> dict[str, Any]:
        self.creates += 1
        if self.creates <= self.refusals:
            raise ApiError(403, "Forbidden", self.REFUSAL)
        return body


async def test_a_pod_refused_for_want_of_the_default_service_account_is_created_once_it_can_be() -> None:
    kube = NewNamespace(refusals=3)
    probe = context(kube, clock=FakeClock())
    created = await probe.create(ctxlib.PODS, {"metadata": {"name": "p"}, "spec": {}})
    assert created["metadata"]["name"] == "p" and kube.creates == 4


async def test_a_service_account_that_never_comes_fails_with_the_refusal() -> None:
    kube = NewNamespace(refusals=10**6)
    with pytest.raises(ApiError, match="error looking up service account"):
        await context(kube, clock=FakeClock()).create(ctxlib.PODS, {"metadata": {"name": "p"}, "spec": {}})


def scheduling(message: str, generated: bool) -> dict[str, Any]:
    body = pod(message, generated)
    body["spec"]["containers"] = [{"name": "probe"}]
    return body


async def test_a_pod_whose_claims_were_chosen_to_fit_fails_on_the_first_verdict_on_them() -> None:
    kube = ScriptedPods(
        scheduling(WAITING, generated=False),
        scheduling(WAITING, generated=True),
        scheduling(IMPOSSIBLE, True),
    )
    clock = FakeClock()
    with pytest.raises(CheckFailedError) as failed:
        await context(kube, clock=clock).wait_output("pod", timeout=300, unschedulable_fails=True)
    assert str(failed.value).endswith(f"the scheduler says: {IMPOSSIBLE}")
    assert kube.gets == 3 and clock.time < 1


async def test_other_pods_wait_out_an_allocation_verdict() -> None:
    kube = ScriptedPods(scheduling(IMPOSSIBLE, generated=True))
    with pytest.raises(CheckFailedError) as failed:
        await context(kube, clock=FakeClock()).wait_output("pod", timeout=300)
    assert "did not print its results within 300s" in str(failed.value)


class ReleasedClaim:
    """A deleted claim that stays allocated for ``reads`` more reads, then goes."""

    def __init__(self, reads: float) -> None:
        self.reads = reads
        self.deleted: list[str] = []

    async def delete(self, _rt: Any, name: str, _namespace: str | None = None) -> None:
        self.deleted.append(name)

    async def get(self, _rt: Any, name: str, _namespace: str | None = None) -> dict[str, Any]:
        self.reads -= 1
        if self.reads < 0:
            raise ApiError(404, "NotFound", f"{name} not found")
        return {"metadata": {"name": name}, "status": {"allocation": {"devices": {}}}}


async def test_released_claims_are_waited_for_until_deallocated() -> None:
    kube = ReleasedClaim(reads=2)
    await context(kube, clock=FakeClock()).release_claims(["claim"])
    assert kube.deleted == ["claim"] and kube.reads == -1


async def test_a_claim_that_stays_allocated_fails_the_check_naming_it() -> None:
    with pytest.raises(CheckFailedError, match="claim claim was still allocated 120s after it was deleted"):
        await context(ReleasedClaim(reads=float("inf")), clock=FakeClock()).release_claims(["claim"])
