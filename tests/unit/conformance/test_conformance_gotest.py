"""The go-test artifact formats: the suite's own renderings agree with each other, and others' files parse."""

from __future__ import annotations

import json

import pytest

from driver.conformance import gotest
from driver.conformance.e2elog import E2ELog
from driver.conformance.model import CheckResult, ProbeResult


def run() -> tuple[E2ELog, list[ProbeResult]]:
    """Two probes as the runner logs them: one passing with a skipped check, one failing."""
    log = E2ELog(None)
    log.write("accel-dra conformance: run abc started")
    results = []
    for test, outcomes in (("TestA", ("passed", "skipped")), ("TestB", ("failed",))):
        first = log.lines
        log.run(test)
        checks = []
        for index, outcome in enumerate(outcomes):
            name = f"{test}/C{index}"
            log.run(name)
            log.note(f"PASS: check {index}" if outcome == "passed" else f"VIOLATION: {outcome}", 8, name)
            log.result(name, outcome, 0.5)  # type: ignore[arg-type]
            checks.append(CheckResult(f"C{index}", outcome, "" if outcome == "passed" else "why"))  # type: ignore[arg-type]
        outcome = "failed" if "failed" in outcomes else "passed"
        log.result(test, outcome, 1.0)
        results.append(
            ProbeResult(test, test, test, ("r",), outcome, "m", checks, 1.0, 60.0, (first, log.lines))
        )
    log.write("run abc finished")
    return log, results


def test_the_three_renderings_name_the_same_tests_with_the_same_outcomes() -> None:
    log, results = run()
    records = gotest.select(log.records, results)
    text = gotest.test_log(records, gotest.overall(results), 2.0)
    events = gotest.test_json(records, gotest.overall(results), 1000.0, 2.0)
    junit = gotest.junit_xml(records, results, 1000.0)
    expected = {
        "TestA": "passed",
        "TestA/C0": "passed",
        "TestA/C1": "skipped",
        "TestB": "failed",
        "TestB/C0": "failed",
    }
    for parsed in (gotest.parse_test_log(text), gotest.parse_test_json(events), gotest.parse_junit(junit)):
        assert parsed.outcomes == expected
        assert parsed.failures == ["TestB", "TestB/C0"]
    assert "    --- SKIP: TestA/C1 (0.50s)" in text.splitlines()  # subtests indented as go prints them
    assert text.splitlines()[-2:] == ["FAIL", "FAIL\taccel-dra/conformance\t2.000s"]
    first, *_, last = (json.loads(line) for line in events.splitlines())
    assert first["Action"] == "start" and last == {**last, "Action": "fail", "Elapsed": 2.0}
    assert first["Time"].endswith("Z")


def test_a_subset_keeps_the_run_lines_and_only_its_probes() -> None:
    log, results = run()
    only_a = gotest.select(log.records, results[:1])
    texts = [r.text for r in only_a]
    assert texts[0] == "accel-dra conformance: run abc started" and texts[-1] == "run abc finished"
    assert not any("TestB" in t for t in texts)
    assert gotest.overall(results[:1]) == "passed"


def test_others_junit_shapes_and_errors_parse() -> None:
    go_junit_report = """<testsuites><testsuite name="pkg" tests="3">
      <testcase classname="pkg" name="TestX"/><testcase classname="pkg" name="TestY"><error message="panic"/></testcase>
      <testcase classname="pkg" name="TestZ"><skipped/></testcase></testsuite></testsuites>"""
    parsed = gotest.parse_junit(go_junit_report)
    assert parsed.outcomes == {"TestX": "passed", "TestY": "failed", "TestZ": "skipped"}
    with pytest.raises(gotest.ArtifactError, match="names no test case"):
        gotest.parse_junit("<testsuites/>")


def test_a_test_that_never_ended_or_a_failed_package_is_a_failure() -> None:
    events = [
        {"Action": "run", "Package": "p", "Test": "TestHang"},
        {"Action": "output", "Package": "p", "Output": "panic: test timed out after 10m0s\n"},
        {"Action": "fail", "Package": "p", "Elapsed": 600},
    ]
    assert gotest.parse_test_json("\n".join(json.dumps(e) for e in events)).failures == ["TestHang"]
    build = [{"Action": "start", "Package": "p"}, {"Action": "fail", "Package": "p"}]
    assert gotest.parse_test_json("\n".join(json.dumps(e) for e in build)).failures == ["package p"]
    log = "=== RUN   TestA\n--- PASS: TestA (1.00s)\nFAIL\nFAIL\tp\t1.0s\n"
    assert gotest.parse_test_log(log).failures == ["the package (a FAIL line without a failing test)"]
    assert (
        gotest.artifact_kind("results/E2E.LOG") == "e2e.log" and gotest.artifact_kind("install.log") is None
    )
