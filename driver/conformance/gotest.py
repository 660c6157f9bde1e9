"""The three artifact formats of a ``go test`` run: write them from the run log, read anyone's.

The CNCF validator parses the evidence a submission cites by file name: ``junit.xml`` (the shapes gotestsum
and go-junit-report write), ``results.json`` (``go test -json`` output: one JSON event per line) and
``e2e.log`` (``go test -v`` output). This module renders the suite's own run in those formats, for any
subset of its probes, and parses such files -- the suite's, upstream's or another tool's -- into the
outcome of every test they name (``accel-dra conformance check`` and ``--import-junit`` use the parser).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driver.conformance.e2elog import Record
from driver.conformance.model import Outcome, ProbeResult

#: The ``Package`` of the suite's events and the class name of its test cases.
PACKAGE = "accel-dra/conformance"
JUNIT, TEST_JSON, TEST_LOG = "junit.xml", "results.json", "e2e.log"
#: File names the validator parses (case-insensitively); any other evidence file is only checked to exist.
ARTIFACT_NAMES = (JUNIT, TEST_JSON, TEST_LOG)
_ACTIONS: dict[str, Outcome] = {"pass": "passed", "fail": "failed", "skip": "skipped"}
_WORDS: dict[str, Outcome] = {"PASS": "passed", "FAIL": "failed", "SKIP": "skipped"}
_RUN_RE = re.compile(r"^=== RUN\s+(\S+)")
_RESULT_RE = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\S+)(?: \(([0-9.]+)s\))?")
_PACKAGE_FAIL_RE = re.compile(r"^FAIL(?:\s|$)")


class ArtifactError(Exception):
    """A file with a test-artifact name that is not in that format."""


# -- writing ---------------------------------------------------------------------------------------------


def timestamp(seconds: float) -> str:
    """RFC 3339 in UTC with microseconds, as go's ``time.Time`` marshals (to the microsecond)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def select(records: Sequence[Record], results: Iterable[ProbeResult]) -> list[Record]:
    """The run's own lines before and after its probes, and the records of ``results``, in run order."""
    chosen = sorted(results, key=lambda r: r.records[0])
    first = next((i for i, r in enumerate(records) if r.kind == "run"), len(records))
    last = max((i for i, r in enumerate(records) if r.test is not None), default=len(records) - 1)
    out = [r for r in records[:first] if r.test is None]
    for result in chosen:
        start, end = result.records
        out += records[start:end]
    out += [r for r in records[last + 1 :] if r.test is None]
    return out


def overall(results: Iterable[ProbeResult]) -> Outcome:
    """A set of tests fails when one of them failed (skips do not fail a package)."""
    return "failed" if any(r.outcome == "failed" for r in results) else "passed"


def test_log(records: Sequence[Record], outcome: Outcome, elapsed: float) -> str:
    """``e2e.log``: the lines as ``go test -v`` prints them, ending with the package's verdict."""
    lines = [r.text for r in records]
    if outcome == "failed":
        lines += ["FAIL", f"FAIL\t{PACKAGE}\t{elapsed:.3f}s"]
    else:
        lines += ["PASS", f"ok  \t{PACKAGE}\t{elapsed:.3f}s"]
    return "\n".join(lines) + "\n"


def _event(when: float, action: str, test: str | None = None, **fields: Any) -> str:
    event: dict[str, Any] = {"Time": timestamp(when), "Action": action, "Package": PACKAGE}
    if test is not None:
        event["Test"] = test
    event.update(fields)
    return json.dumps(event, ensure_ascii=False)


def test_json(records: Sequence[Record], outcome: Outcome, started: float, elapsed: float) -> str:
    """``results.json``: the ``go test -json`` event stream of the same lines."""
    events = [_event(started, "start")]
    for record in records:
        if record.kind == "run" and record.test:
            events.append(_event(record.time, "run", record.test))
        events.append(_event(record.time, "output", record.test, Output=record.text + "\n"))
        if record.kind == "result" and record.test and record.outcome:
            action = {"passed": "pass", "failed": "fail", "skipped": "skip"}[record.outcome]
            events.append(_event(record.time, action, record.test, Elapsed=round(record.elapsed, 3)))
    end = started + elapsed
    verdict = "FAIL" if outcome == "failed" else "PASS"
    summary = (
        f"FAIL\t{PACKAGE}\t{elapsed:.3f}s" if outcome == "failed" else f"ok  \t{PACKAGE}\t{elapsed:.3f}s"
    )
    events.append(_event(end, "output", Output=verdict + "\n"))
    events.append(_event(end, "output", Output=summary + "\n"))
    events.append(_event(end, "fail" if outcome == "failed" else "pass", Elapsed=round(elapsed, 3)))
    return "\n".join(events) + "\n"


def _case_text(records: Sequence[Record], test: str) -> str:
    """A test's own lines and those of its subtests."""
    return "\n".join(r.text for r in records if r.test and (r.test == test or r.test.startswith(test + "/")))


def junit_xml(records: Sequence[Record], results: Sequence[ProbeResult], started: float) -> str:
    """``junit.xml`` as gotestsum writes it: one suite (the package), a case per test and per subtest."""
    cases: list[tuple[str, float, Outcome, str]] = []
    for result in results:
        cases.append((result.test, result.duration, result.outcome, result.message))
        cases += [(f"{result.test}/{c.name}", c.duration, c.outcome, c.message) for c in result.checks]
    failures = sum(o == "failed" for _, _, o, _ in cases)
    skipped = sum(o == "skipped" for _, _, o, _ in cases)
    seconds = f"{sum(r.duration for r in results):.3f}"
    root = ET.Element("testsuites", tests=str(len(cases)), failures=str(failures), errors="0", time=seconds)
    suite = ET.SubElement(root, "testsuite", tests=str(len(cases)), failures=str(failures), errors="0",
                          skipped=str(skipped), time=seconds, name=PACKAGE, timestamp=timestamp(started))  # fmt: skip
    for name, duration, outcome, message in cases:
        case = ET.SubElement(suite, "testcase", classname=PACKAGE, name=name, time=f"{duration:.3f}")
        text = _case_text(records, name)
        if outcome == "failed":
            ET.SubElement(case, "failure", message=message[:1000] or "Failed", type="").text = text
        elif outcome == "skipped":
            ET.SubElement(case, "skipped", message=message[:1000]).text = text
        elif text:
            ET.SubElement(case, "system-out").text = text
    ET.indent(root, space="\t")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# -- reading ---------------------------------------------------------------------------------------------


@dataclass
class TestReport:
    """The outcome of every test a go-test artifact names."""

    format: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    #: Failures that belong to no test (a package that failed to build, panicked or timed out).
    package_failures: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return sorted([t for t, o in self.outcomes.items() if o == "failed"] + self.package_failures)

    def outcome(self, test: str) -> Outcome | None:
        return self.outcomes.get(test)


def parse_junit(text: str) -> TestReport:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise ArtifactError(f"not XML: {err}") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise ArtifactError(f"not a JUnit report: the root element is <{root.tag}>")
    report = TestReport("junit")
    for case in root.iter("testcase"):
        name = case.get("name") or ""
        if not name:
            raise ArtifactError("a <testcase> without a name")
        if case.find("failure") is not None or case.find("error") is not None:
            report.outcomes[name] = "failed"
        elif case.find("skipped") is not None:
            report.outcomes.setdefault(name, "skipped")
        else:
            report.outcomes.setdefault(name, "passed")
    if not report.outcomes:
        raise ArtifactError("the JUnit report names no test case")
    return report


def parse_test_json(text: str) -> TestReport:
    report = TestReport("go test -json")
    seen_event = False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            raise ArtifactError(f"line {number} is not a go test -json event: {line[:80]!r}") from None
        if not isinstance(event, dict) or "Action" not in event:
            raise ArtifactError(f"line {number} is not a go test -json event (no Action): {line[:80]!r}")
        seen_event = True
        action, test = event.get("Action"), event.get("Test")
        if action == "run" and test:
            report.outcomes.setdefault(test, "failed")  # until it reports a result: a test that never ended
        elif action in _ACTIONS and test:
            report.outcomes[test] = _ACTIONS[action]
        elif action == "fail" and not test:
            report.package_failures.append(f"package {event.get('Package', '?')}")
    if not seen_event:
        raise ArtifactError("no go test -json events")
    if not report.outcomes and not report.package_failures:
        raise ArtifactError("the go test -json stream names no test")
    failed_tests = any(o == "failed" for o in report.outcomes.values())
    if failed_tests:  # the package's own fail event only repeats its tests' failures
        report.package_failures.clear()
    return report


def parse_test_log(text: str) -> TestReport:
    report = TestReport("go test -v")
    package_failed = False
    for line in text.splitlines():
        if match := _RUN_RE.match(line):
            report.outcomes.setdefault(match[1], "failed")  # until its result line
        elif match := _RESULT_RE.match(line):
            report.outcomes[match[2]] = _WORDS[match[1]]
        elif _PACKAGE_FAIL_RE.match(line):
            package_failed = True
    if not report.outcomes:
        raise ArtifactError("no go test -v output: no '=== RUN' or '--- PASS/FAIL/SKIP' line")
    if package_failed and not any(o == "failed" for o in report.outcomes.values()):
        report.package_failures.append("the package (a FAIL line without a failing test)")
    return report


def artifact_kind(path: str | Path) -> str | None:
    """Which format a file with a canonical artifact name has (None: not a test artifact)."""
    name = Path(path).name.lower()
    return name if name in ARTIFACT_NAMES else None


def parse_artifact(path: Path) -> TestReport | None:
    """The tests of a canonical artifact; None for any other file. Raises :class:`ArtifactError`."""
    kind = artifact_kind(path)
    if kind is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ArtifactError(f"cannot read {path.name}: {err}") from None
    parser = {JUNIT: parse_junit, TEST_JSON: parse_test_json, TEST_LOG: parse_test_log}[kind]
    return parser(text)
