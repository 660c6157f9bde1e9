"""What the filled checklist says for each requirement, and where each statement comes from.

Pure decisions over the probes' results (no I/O). Every requirement gets one :class:`Decision`, whose
``source`` the report shows next to the status:

* ``verified`` -- a probe of this run checked it (status from its checks, evidence: the run's artifacts);
* ``imported`` -- a test of another suite's junit (``--import-junit``) that passed or failed;
* ``declared`` -- the vendor file declares it ``notApplicable`` (N/A with the vendor's reason);
* ``self-declared`` -- the input checklist already had a status for it, and the run did not check it;
* ``open`` -- a MUST nothing above decided: left blank for the platform with a note saying so (or
  ``Not Implemented`` with ``uncovered="not-implemented"``);
* ``not covered`` -- a SHOULD nothing above decided (left as it was; a note where a probe was skipped).

The CNCF validator rejects a submission that cites an artifact with a failing test anywhere in it, so a
requirement whose probe failed cites only its section of the report; its artifacts are still written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from driver import __version__
from driver.conformance.checklist import Checklist, Fill, Requirement
from driver.conformance.gotest import JUNIT, TEST_JSON, TEST_LOG, TestReport
from driver.conformance.model import CheckResult, ProbeResult
from driver.conformance.vendor import Vendor

Source = Literal["verified", "imported", "declared", "self-declared", "open", "not covered"]
Uncovered = Literal["open", "not-implemented"]
RESULTS_DIR = "results"
REPORT = "report.html"
#: The upstream suite's test for each requirement (what the validator looks for in an artifact cited without
#: a ``#Test`` fragment, and what ``--import-junit`` maps by default).
UPSTREAM_TESTS: Mapping[str, str] = {
    "secure_accelerator_access": "TestSecureAcceleratorAccess",
    "gang_scheduling": "TestGangScheduling",
    "cluster_autoscaling": "TestAcceleratorClusterAutoscaling",
    "driver_runtime_management": "TestAcceleratorDriverRuntimeManagement",
    "accelerator_metrics": "TestAcceleratorPerformanceMetrics",
    "robust_controller": "TestRobustCRDControllerOperation",
    "ai_service_metrics": "TestAIServiceMetrics",
    "workload_sandboxing": "TestWorkloadSandboxing",
}


@dataclass(frozen=True)
class Imported:
    """Another suite's junit, copied into the run's results (``--import-junit``)."""

    #: The file the user named.
    origin: str
    #: Where the run keeps its copy, relative to the output directory (``results/imported/1/junit.xml``).
    stored: str
    report: TestReport
    #: Test name -> requirement id (the upstream names by default, plus ``--import-map``).
    mapping: Mapping[str, str]

    def tests_for(self, requirement_id: str) -> list[str]:
        return [
            t for t, r in self.mapping.items() if r == requirement_id and self.report.outcome(t) is not None
        ]


@dataclass(frozen=True)
class Decision:
    requirement: Requirement
    source: Source
    #: The requirement's status in the filled checklist.
    status: str
    #: What the run writes (None: the requirement is left byte for byte as it was).
    fill: Fill | None
    #: The tests behind it (this run's or imported ones).
    tests: tuple[str, ...] = ()
    #: One line for the report: why this status.
    why: str = ""

    @property
    def id(self) -> str:
        return self.requirement.id


def artifact_dir(requirement_id: str) -> str:
    """Where a requirement's own artifacts go: only its probes, so another probe's failure never lands in
    the files it cites."""
    return f"{RESULTS_DIR}/{requirement_id}"


def evidence(requirement_id: str, results: Sequence[ProbeResult]) -> tuple[str, ...]:
    """The entries a verified requirement cites: each probe's test in its junit and go-test-json stream,
    its whole ``e2e.log``, and the probes' report sections; only the report when a probe failed."""
    report = tuple(f"file://{REPORT}#{r.probe}" for r in results)
    if any(r.outcome == "failed" for r in results):
        return report
    base = artifact_dir(requirement_id)
    tests = [r.test for r in results if r.outcome != "skipped"]
    return (
        *(f"file://{base}/{JUNIT}#{t}" for t in tests),
        *(f"file://{base}/{TEST_JSON}#{t}" for t in tests),
        f"file://{base}/{TEST_LOG}",
        *report,
    )


def _check_notes(results: Sequence[ProbeResult]) -> list[str]:
    parts = []
    for r in results:
        passed = sum(c.outcome == "passed" for c in r.checks)
        others = "".join(f"; {c.name} {c.outcome}: {c.message}" for c in r.checks if c.outcome != "passed")
        names = {c.name for c in r.checks}
        missing = [n for n in r.required if n not in names]
        if missing:
            others += f"; not run: {', '.join(missing)}"
        parts.append(f"{r.test} {r.outcome} ({passed}/{len(r.checks)} checks passed{others}){_any_note(r)}")
    return parts


def _any_note(result: ProbeResult) -> str:
    """Which of the probe's alternative ways (``required_any``) were shown, for the checklist's notes."""
    if not result.required_any:
        return ""
    shown = result.shown_any()
    if shown:
        return f"; shown: {', '.join(shown)}"
    return f"; none of {', '.join(result.required_any)} was shown"


def _run_notes(results: Sequence[ProbeResult], vendor: Vendor, run_id: str, sandbox: bool) -> str:
    sandbox_note = " (SANDBOX: a simulated cluster, not evidence for a platform)" if sandbox else ""
    failed = any(r.outcome == "failed" for r in results)
    kept = (
        f". The failing run's artifacts are in {artifact_dir(results[0].requirements[0])}/ and not cited: the "
        "CNCF validator rejects a submission that cites a failing test"
        if failed and results[0].requirements
        else ""
    )
    return (
        f"Checked by accel-dra conformance {__version__}, run {run_id}{sandbox_note}, DRA driver "
        f"{vendor.driver_name}: " + "; ".join(_check_notes(results)) + kept
    )


def status_of(results: Sequence[ProbeResult], ran: Sequence[CheckResult]) -> str:
    """Implemented only when every check that ran passed, every required check ran and, where a probe has
    alternatives (``required_any``), at least one of them passed."""
    passed = sum(c.outcome == "passed" for c in ran)
    if not passed:
        return "Not Implemented"
    if passed == len(ran) and not any(r.unverified() for r in results):
        return "Implemented"
    return "Partially Implemented"


def _covered(requirement_id: str, results: Sequence[ProbeResult]) -> list[ProbeResult]:
    """The results that speak for a requirement (none when a probe for it was interrupted)."""
    mine = [r for r in results if requirement_id in r.requirements]
    return [] if any(r.interrupted for r in mine) else mine


def _skip_reasons(results: Sequence[ProbeResult]) -> str:
    """Why each probe could not verify anything: its first check's reason (the later ones follow from it)."""
    return "; ".join(
        f"{r.test} skipped: {r.checks[0].name}: {r.checks[0].message}" if r.checks else f"{r.test} skipped"
        for r in results
    )


def _imported(requirement: Requirement, imports: Sequence[Imported]) -> Decision | None:
    """A decision from the first imported test for the requirement that passed or failed."""
    for source in imports:
        for test in source.tests_for(requirement.id):
            outcome = source.report.outcome(test)
            if outcome == "passed":
                fill = Fill(
                    "Implemented",
                    (f"file://{source.stored}#{test}",),
                    f"Imported: {test} passed in {source.origin} (copied to {source.stored}).",
                )
                return Decision(
                    requirement, "imported", "Implemented", fill, (test,), f"{test} passed ({source.origin})"
                )
            if outcome == "failed":
                fill = Fill(
                    "Not Implemented",
                    (),
                    f"Imported: {test} failed in {source.origin} (copied to {source.stored}; not cited: the CNCF "
                    "validator rejects a submission that cites a failing test).",
                )
                return Decision(
                    requirement,
                    "imported",
                    "Not Implemented",
                    fill,
                    (test,),
                    f"{test} failed ({source.origin})",
                )
    return None


def _open(requirement: Requirement, uncovered: Uncovered, reason: str) -> Decision:
    status = "Not Implemented" if uncovered == "not-implemented" else ""
    notes = (
        f"Left for the platform: accel-dra conformance {__version__} {reason}. The platform fills in status and "
        "evidence itself (documentation, or another suite's results); the CNCF validator accepts a MUST only as "
        "Implemented."
    )
    return Decision(
        requirement, "open", status, Fill(status, (), notes), (), f"left for the platform: {reason}"
    )


def decide(
    checklist: Checklist,
    results: Sequence[ProbeResult],
    vendor: Vendor,
    run_id: str,
    *,
    sandbox: bool = False,
    imports: Sequence[Imported] = (),
    uncovered: Uncovered = "open",
) -> list[Decision]:
    """One decision per requirement of the checklist, in its order."""
    return [
        _decide(
            requirement,
            _covered(requirement.id, results),
            vendor,
            run_id,
            sandbox=sandbox,
            imports=imports,
            uncovered=uncovered,
        )
        for requirement in checklist.requirements
    ]


def _decide(
    requirement: Requirement,
    mine: list[ProbeResult],
    vendor: Vendor,
    run_id: str,
    *,
    sandbox: bool,
    imports: Sequence[Imported],
    uncovered: Uncovered,
) -> Decision:
    tests = tuple(r.test for r in mine)
    if requirement.id in vendor.not_applicable:
        notes = vendor.not_applicable[requirement.id]
        return Decision(requirement, "declared", "N/A", Fill("N/A", (), notes), tests, f"vendor: {notes}")
    ran = [c for r in mine for c in r.checks if c.outcome != "skipped"]
    if ran:
        status = status_of(mine, ran)
        fill = Fill(status, evidence(requirement.id, mine), _run_notes(mine, vendor, run_id, sandbox))
        return Decision(requirement, "verified", status, fill, tests, "; ".join(_check_notes(mine)))
    imported = _imported(requirement, imports)
    if imported is not None:
        return imported
    if requirement.status:
        return Decision(
            requirement, "self-declared", requirement.status, None, tests, "as the input checklist says"
        )
    reason = (
        f"ran {', '.join(tests)}, which could not verify it ({_skip_reasons(mine)})"
        if mine
        else "has no probe for it"
    )
    if requirement.level == "MUST":
        return dataclasses.replace(_open(requirement, uncovered, reason), tests=tests)
    if mine:
        notes = f"Not verified by accel-dra conformance {__version__}: {_skip_reasons(mine)}."
        return Decision(requirement, "not covered", "", Fill("", (), notes), tests, _skip_reasons(mine))
    return Decision(requirement, "not covered", requirement.status, None, (), "no probe for it")


def fills(decisions: Iterable[Decision]) -> dict[str, Fill]:
    return {d.id: d.fill for d in decisions if d.fill is not None}


def must_failures(decisions: Iterable[Decision]) -> list[str]:
    """Every MUST whose status in the filled checklist is not Implemented (what the validator rejects)."""
    out = []
    for d in decisions:
        if d.requirement.level != "MUST" or d.status == "Implemented":
            continue
        shown = d.status or "left blank"
        if d.status == "N/A":
            shown = "N/A, which the CNCF validator does not accept for a MUST"
        out.append(f"{d.id} ({shown}: {d.why})" if d.why else f"{d.id} ({shown})")
    return out
