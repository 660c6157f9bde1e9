"""``accel-dra conformance run`` against the real cluster, as a user runs it, with the driver installed from
the chart.

Every probe must pass, or fail or skip saying exactly why. On this tier the answers are known: the API,
DeviceClass, pool, version-attribute, unsatisfiable-claim and attribute-profile checks are real and pass;
every check that needs output from inside a container fails at once saying that the node is hollow (kubemark's
fake runtime runs no container) and what the API server answered for the container's log; the metrics check
fails naming the Service without endpoints (the chart's DaemonSet pods never land on a hollow node); the
probes whose APIs the cluster does not serve (RuntimeClass sandboxes, custom metrics, Kueue) skip saying so.
The artifacts then pass ``accel-dra conformance check --draft``, except for the MUSTs those failures leave
Not Implemented -- which the validator must reject.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driver.conformance.checklist import load_checklist
from driver.conformance.submission import check_submission
from tests.support import processes
from tests.support.realk8s import Cluster
from tests.support.realk8s_driver import Driver

pytestmark = pytest.mark.realk8s

CHECKLIST = Path(__file__).parents[1] / "fixtures" / "conformance" / "checklist-1.37.yaml"

#: Checks that need nothing from inside a container: they pass on hollow nodes.
PASS = {
    ("dra_support", "ResourceAPIServed"),
    ("dra_support", "DeviceClassExists"),
    ("dra_support", "PoolsCompleteAndReachable"),
    ("attribute_selection", "UnsatisfiableClaimStaysPending"),
    ("driver_runtime_management", "VerifiableMechanismExposed"),
    ("attribute_profile", "gpu.accel-dra.dev"),
}
#: Checks that read what a probe container printed.
NEED_A_CONTAINER = {
    ("dra_support", "PodWithClaimTemplate"),
    ("attribute_selection", "SelectByMemoryCapacity"),
    ("attribute_selection", "SelectByProductName"),
    ("attribute_selection", "MatchAttributeInterconnectPair"),
    ("secure_accelerator_access", "PositiveAccessTest"),
    ("secure_accelerator_access", "NegativeIsolationTest"),
    ("secure_accelerator_access", "EnvVarBypassTest"),
    ("secure_accelerator_access", "MultiContainerIsolationTest"),
    ("driver_runtime_management", "DriverAndRuntimeCompatibility"),
    ("gpu_sharing", "TwoContainersOneClaim"),
    ("gpu_sharing", "TwoPodsOneClaim"),
    ("gpu_sharing", "TimeSlicing"),
    ("gpu_sharing", "Partitions"),  # node-2's MIG devices (mig-dynamic)
}
#: Sharing strategies the tier's plugins do not offer (no --shared-gpus), with the words of the reason.
NOT_OFFERED = {
    ("gpu_sharing", "ConsumableCapacity"): "publishes no device that allows multiple allocations",
}
#: Why each probe that skips here skips (its first check; the later ones point back to it).
SKIP_REASONS = {
    "workload_sandboxing": "the platform offers no sandboxed RuntimeClass",
    "pod_autoscaling": "the cluster serves no custom-metrics API (custom.metrics.k8s.io)",
    "gang_scheduling": "the cluster serves no Kueue API (kueue.x-k8s.io)",
}
HOLLOW = "runs kubemark's fake container runtime (fakeRuntime://, a hollow node)"
LOG_ANSWER = "the API server answered the log request with container"
#: What the hollow kubelet answers for any container's log (it has no log files).
HOLLOW_LOG = "failed to read log file"


@pytest.fixture(scope="module")
def run(
    realk8s: Cluster, accel_dra: Driver, node2_in_service: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The run, once node-2 (its MIG devices: the partitions) takes pods again."""
    out = tmp_path_factory.mktemp("conformance-realk8s")
    result = subprocess.run(
        processes.accel_dra(
            "conformance", "run", "--kubeconfig", str(realk8s.kubeconfig), "--checklist", str(CHECKLIST),
            "--out", str(out), "--platform-name", "accel-dra real-cluster tier", "--vendor-name",
            "Example Vendor", "--pod-timeout", "60",
        ),
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    yield result, out


def outcomes(out: Path) -> dict[tuple[str, str], tuple[str, str]]:
    data = json.loads((out / "results" / "summary.json").read_text())
    return {(p["name"], c["name"]): (c["outcome"], c["message"]) for p in data["probes"] for c in p["checks"]}


def test_every_probe_passes_or_says_exactly_why_not(run: Any) -> None:
    result, out = run
    checks = outcomes(out)
    assert result.returncode == 1, result.stdout + result.stderr  # MUSTs fail: nothing runs in a container
    for key in PASS:
        assert checks[key][0] == "passed", (key, checks[key])
    for key in NEED_A_CONTAINER:
        outcome, message = checks[key]
        assert outcome == "failed", (key, checks[key])
        assert HOLLOW in message and LOG_ANSWER in message and HOLLOW_LOG in message, (key, message)
        assert "within" not in message  # said at once, not after a pod timeout
    outcome, message = checks[("accelerator_metrics", "MetricsEndpointReachable")]
    assert outcome == "failed" and 'no endpoints available for service "accel-dra-metrics"' in message
    for probe, reason in SKIP_REASONS.items():
        skipped = [(k, v) for k, v in checks.items() if k[0] == probe]
        assert skipped and all(outcome == "skipped" for _, (outcome, _) in skipped), skipped
        assert reason in skipped[0][1][1]
    outcome, message = checks[("gpu_sharing", "ConsumersUseTheSharedDevice")]
    assert outcome == "skipped" and "no consumer of a shared device ran" in message
    for key, words in NOT_OFFERED.items():
        assert checks[key][0] == "skipped" and words in checks[key][1], (key, checks[key])
    explained = (
        PASS | NEED_A_CONTAINER | set(NOT_OFFERED) | {("accelerator_metrics", "MetricsEndpointReachable")}
    )
    explained |= {
        k for k in checks if k[0] in SKIP_REASONS or k == ("gpu_sharing", "ConsumersUseTheSharedDevice")
    }
    assert set(checks) == explained  # no check this test does not know the answer of


def test_the_artifacts_pass_the_validator_rules_but_for_the_failed_musts(run: Any) -> None:
    _, out = run
    draft = check_submission(out / "PRODUCT.yaml", load_checklist(str(CHECKLIST)), draft=True)
    assert sorted(draft.errors) == [
        "'accelerator_metrics' is a MUST, but its status is 'Not Implemented': it must be Implemented",
        "'secure_accelerator_access' is a MUST, but its status is 'Not Implemented': it must be Implemented",
    ]


def test_no_output_names_the_api_server(realk8s: Cluster, run: Any) -> None:
    result, out = run
    texts = [result.stdout, result.stderr]
    texts += [p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()]
    assert not [t for t in texts if realk8s.ip in t]
