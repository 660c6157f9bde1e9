"""Where each requirement's status comes from: this run, an imported junit, the vendor file, the input
checklist, or nobody (left for the platform) -- and the command line that brings imports and metadata in."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from driver.conformance import cli
from driver.conformance.checklist import load_checklist, parse_checklist
from driver.conformance.evidence import Imported, decide, fills, must_failures
from driver.conformance.gotest import parse_junit
from driver.conformance.model import CheckResult, ProbeResult, summarize
from driver.conformance.vendor import load_vendor
from tests.support import paths

FIXTURES = paths.FIXTURES / "conformance"
CHECKLIST = load_checklist(str(FIXTURES / "checklist-1.37.yaml"))
UPSTREAM = """<testsuites><testsuite name="github.com/kubernetes-sigs/ai-conformance/test" tests="4">
  <testcase classname="t" name="TestGangScheduling"/><testcase classname="t" name="TestGangScheduling/Positive"/>
  <testcase classname="t" name="TestAcceleratorClusterAutoscaling"><skipped message="no pool label"/></testcase>
  <testcase classname="t" name="TestRobustCRDControllerOperation"><failure message="webhook"/></testcase>
</testsuite></testsuites>"""


def secure(outcome: str = "passed") -> ProbeResult:
    checks = [CheckResult("PositiveAccessTest", outcome, "")]  # type: ignore[arg-type]
    verdict, message = summarize(checks)
    return ProbeResult(
        "secure_accelerator_access",
        "TestSecureAcceleratorAccess",
        "t",
        ("secure_accelerator_access",),
        verdict,
        message,
        checks,
        1.0,
        60.0,
    )


def imported() -> Imported:
    report = parse_junit(UPSTREAM)
    mapping = {
        "TestGangScheduling": "gang_scheduling",
        "TestAcceleratorClusterAutoscaling": "cluster_autoscaling",
        "TestRobustCRDControllerOperation": "robust_controller",
    }
    return Imported("upstream/junit.xml", "results/imported/1/junit.xml", report, mapping)


def test_each_requirement_says_where_its_status_comes_from() -> None:
    prefilled = parse_checklist(
        CHECKLIST.text.replace(
            '    - id: ai_service_metrics\n      description: "Fixture wording: a monitoring system collects workload '
            'metrics in a standard format (e.g. Prometheus)."\n      level: MUST\n      status: ""',
            '    - id: ai_service_metrics\n      description: "Fixture wording: a monitoring system collects workload '
            'metrics in a standard format (e.g. Prometheus)."\n      level: MUST\n      status: "Implemented"',
        )
    )
    assert prefilled.requirement("ai_service_metrics").status == "Implemented"  # type: ignore[union-attr]
    decisions = {
        d.id: d for d in decide(prefilled, [secure()], load_vendor("accel-dra"), "r", imports=[imported()])
    }
    assert (decisions["secure_accelerator_access"].source, decisions["secure_accelerator_access"].status) == (
        "verified",
        "Implemented",
    )
    gang = decisions["gang_scheduling"]
    assert (gang.source, gang.status) == ("imported", "Implemented")
    assert gang.fill is not None and gang.fill.evidence == (
        "file://results/imported/1/junit.xml#TestGangScheduling",
    )
    robust = decisions["robust_controller"]
    assert (robust.source, robust.status) == ("imported", "Not Implemented")
    assert robust.fill is not None and robust.fill.evidence == () and "not cited" in robust.fill.notes
    autoscaling = decisions["cluster_autoscaling"]  # skipped upstream: proves nothing, left for the platform
    assert (autoscaling.source, autoscaling.status) == ("open", "")
    assert (decisions["ai_service_metrics"].source, decisions["ai_service_metrics"].fill) == (
        "self-declared",
        None,
    )
    assert (decisions["ai_inference"].source, decisions["ai_inference"].status) == ("open", "")
    assert decisions["workload_sandboxing"].source == "not covered"
    failures = must_failures(decisions.values())
    assert [f.split(" ")[0] for f in failures] == [
        "ai_inference",
        "cluster_autoscaling",
        "pod_autoscaling",
        "accelerator_metrics",
        "robust_controller",
    ]


def test_uncovered_musts_can_be_written_as_not_implemented() -> None:
    decisions = decide(CHECKLIST, [], load_vendor("accel-dra"), "r", uncovered="not-implemented")
    written = fills(decisions)
    assert {k for k, f in written.items() if f.status == "Not Implemented"} == {
        r.id for r in CHECKLIST.requirements if r.level == "MUST"
    }
    assert all(f.notes.startswith("Left for the platform") for f in written.values())


def args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_run_arguments(parser)
    return parser.parse_args(["--checklist", "x", "--out", str(tmp_path), *extra])


def test_import_junit_maps_upstream_tests_and_copies_the_file(tmp_path: Path) -> None:
    source = tmp_path / "upstream.xml"
    source.write_text(UPSTREAM)
    found = cli._imports(args(tmp_path, "--import-junit", str(source)), CHECKLIST, tmp_path)
    (one,) = found
    assert one.stored == "results/imported/1/junit.xml"
    assert (tmp_path / one.stored).read_text() == UPSTREAM  # byte for byte: another tool's evidence
    assert dict(one.mapping) == {
        "TestGangScheduling": "gang_scheduling",
        "TestAcceleratorClusterAutoscaling": "cluster_autoscaling",
        "TestRobustCRDControllerOperation": "robust_controller",
    }
    mapped = cli._imports(
        args(
            tmp_path,
            "--import-junit",
            str(source),
            "--import-map",
            "TestGangScheduling/Positive=gang_scheduling",
        ),
        CHECKLIST,
        tmp_path,
    )
    assert mapped[0].mapping["TestGangScheduling/Positive"] == "gang_scheduling"


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("<report/>", (), "not a JUnit report"),
        (
            '<testsuite><testcase name="TestUnknown"/></testsuite>',
            (),
            "none of its tests maps to a requirement",
        ),
        (
            UPSTREAM,
            ("--import-map", "TestX=no_such_requirement"),
            "not in the checklist: no_such_requirement",
        ),
        (UPSTREAM, ("--import-map", "TestX"), "expected TEST=REQUIREMENT"),
    ],
)
def test_bad_imports_are_refused(tmp_path: Path, content: str, extra: tuple[str, ...], message: str) -> None:
    source = tmp_path / "in.xml"
    source.write_text(content)
    with pytest.raises(cli.UsageError, match=message):
        cli._imports(args(tmp_path, "--import-junit", str(source), *extra), CHECKLIST, tmp_path)


def test_metadata_flags_fill_the_required_fields(tmp_path: Path) -> None:
    parsed = args(
        tmp_path,
        "--vendor-name",
        "Example Vendor",
        "--k8s-conformance-url",
        "https://github.com/cncf/k8s-conformance/tree/main/v1.37/example",
        "--product-logo-url",
        "https://example.com/logo.svg",
        "--metadata",
        "platformName=Example",
    )
    assert cli._metadata(parsed) == {
        "platformName": "Example",
        "vendorName": "Example Vendor",
        "productLogoUrl": "https://example.com/logo.svg",
        "k8sConformanceUrl": "https://github.com/cncf/k8s-conformance/tree/main/v1.37/example",
    }
