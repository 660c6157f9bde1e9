"""``accel-dra conformance check``: the CNCF submission validator's rules, one case per rule.

The rule cases come from cncf/k8s-ai-conformance's ``scripts/validate.go`` and its hybrid-verification change
(automated test artifacts, v1.37+): metadata fields and their formats, the spec against the template, the
statuses a level allows, evidence files relative to the submission directory, and the three canonical
artifacts (``junit.xml``, ``results.json`` as ``go test -json``, ``e2e.log`` as ``go test -v``) read for
failing, missing and skipped tests. Each case starts from a submission that passes and changes one thing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from driver.conformance.checklist import Fill, fill_checklist, load_checklist
from driver.conformance.submission import check_submission, landscape_members, snake_case
from tests.support import paths

FIXTURES = paths.FIXTURES / "conformance"
TEMPLATE = load_checklist(str(FIXTURES / "checklist-1.37.yaml"))
METADATA = {
    "platformName": "Example Platform",
    "platformVersion": "1.37.0",
    "vendorName": "Example Vendor",
    "websiteUrl": "https://example.com/",
    "repoUrl": "https://example.com/repo",
    "documentationUrl": "https://example.com/docs",
    "productLogoUrl": "https://example.com/logo.svg",
    "description": "An example platform.",
    "contactEmailAddress": "team@example.com",
    "k8sConformanceUrl": "https://github.com/cncf/k8s-conformance/tree/main/v1.37/example",
}
LANDSCAPE = """
landscape:
  - name: CNCF Members
    subcategories:
      - name: Platinum
        items:
          - name: Example Vendor (member)
          - name: Another Org (supporter)
  - name: Provisioning
    subcategories: [{name: x, items: [{name: Not A Member}]}]
"""
PASSING_JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="4" failures="0" errors="0">
  <testsuite name="example/test" tests="4" failures="0" errors="0" skipped="1">
    <testcase classname="example/test" name="TestSecureAcceleratorAccess" time="1.0"/>
    <testcase classname="example/test" name="TestSecureAcceleratorAccess/PositiveAccessTest" time="0.5"/>
    <testcase classname="example/test" name="TestGangScheduling" time="2.0"/>
    <testcase classname="example/test" name="TestAcceleratorClusterAutoscaling" time="0.0"><skipped message="no pool"/></testcase>
  </testsuite>
</testsuites>
"""
Change = Callable[[Path, dict[str, Fill], dict[str, str]], None]


def write_submission(root: Path, change: Change | None = None, product: str = "v1.37/example") -> Path:
    """A submission that passes: every MUST Implemented, citing a passing junit.xml; SHOULDs blank."""
    directory = root / product
    (directory / "results").mkdir(parents=True)
    (directory / "results" / "junit.xml").write_text(PASSING_JUNIT)
    fills = {
        r.id: Fill("Implemented", ("file://results/junit.xml#TestGangScheduling",))
        for r in TEMPLATE.requirements
        if r.level == "MUST"
    }
    fills["secure_accelerator_access"] = Fill("Implemented", ("file://results/junit.xml",))  # the mapped test
    metadata = dict(METADATA)
    if change is not None:
        change(directory, fills, metadata)
    # What the suite itself never writes (placeholders, empty values, N/A without notes) goes in as text.
    written = {k: (v if v and not v.startswith("[") else "x") for k, v in metadata.items() if v is not None}
    text = fill_checklist(TEMPLATE, fills, written)
    for key, value in metadata.items():
        if value is None:  # a removed key: drop the line the template has
            text = re.sub(rf"^  {key}:.*\n", "", text, flags=re.MULTILINE)
        elif value != written[key]:
            text = re.sub(rf'^  {key}: "x"$', f"  {key}: {json.dumps(value)}", text, flags=re.MULTILINE)
    text = text.replace('notes: "NO NOTES"', 'notes: ""')
    path = directory / "PRODUCT.yaml"
    path.write_text(text)
    return path


def errors(tmp_path: Path, change: Change | None = None, **options: object) -> list[str]:
    members = landscape_members(LANDSCAPE)
    return check_submission(write_submission(tmp_path, change), TEMPLATE, members=members, **options).errors  # type: ignore[arg-type]


def test_a_complete_submission_passes(tmp_path: Path) -> None:
    assert errors(tmp_path) == []
    result = check_submission(write_submission(tmp_path / "b"), TEMPLATE)
    assert result.errors == []
    assert any("not checked: no --landscape" in n for n in result.notes)
    assert any("metadata URL(s) must answer (not fetched offline)" in n for n in result.notes)


def meta(key: str, value: str | None) -> Change:
    def change(_: Path, __: dict[str, Fill], metadata: dict[str, str]) -> None:
        metadata[key] = value  # type: ignore[assignment]

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            meta("k8sConformanceUrl", None),
            "missing metadata field: k8sConformanceUrl (or k8s_conformance_url)",
        ),
        (meta("productLogoUrl", None), "missing metadata field: productLogoUrl (or product_logo_url)"),
        (
            meta("vendorName", "[Vendor Name]"),
            "metadata field vendorName has a placeholder value: [Vendor Name]",
        ),
        (meta("description", ""), "metadata field description is empty"),
        (
            meta("k8sConformanceUrl", "https://github.com/cncf/k8s-conformance/blob/main/v1.37/example"),
            "is not a cncf/k8s-conformance submission directory",
        ),
        (
            meta("productLogoUrl", "https://example.com/logo.png"),
            "productLogoUrl must link to an SVG, EPS or AI file",
        ),
        (meta("vendorName", "Not A Member"), "vendorName 'Not A Member' does not match any CNCF member"),
    ],
)
def test_metadata_rules(tmp_path: Path, change: Change, expected: str) -> None:
    assert any(expected in e for e in errors(tmp_path, change)), errors(tmp_path / "again", change)


def test_metadata_that_passes(tmp_path: Path) -> None:
    def change(_: Path, __: dict[str, Fill], metadata: dict[str, str]) -> None:
        metadata["repoUrl"] = None  # type: ignore[assignment]  # optional
        metadata["productLogoUrl"] = "https://example.com/LOGO.SVG"
        metadata["k8sConformanceUrl"] = "https://github.com/cncf/k8s-conformance/tree/master/v1.37/example/"
        metadata["vendorName"] = "Another Org"  # a supporter counts

    assert errors(tmp_path, change) == []
    assert snake_case("k8sConformanceUrl") == "k8s_conformance_url"
    assert snake_case("contactEmailAddress") == "contact_email_address"


def test_snake_case_metadata_keys_are_accepted(tmp_path: Path) -> None:
    path = write_submission(tmp_path)
    text = path.read_text().replace("  k8sConformanceUrl:", "  k8s_conformance_url:")
    path.write_text(text)
    assert check_submission(path, TEMPLATE, members=landscape_members(LANDSCAPE)).errors == []


def status(requirement: str, value: str, notes: str = "", evidence: tuple[str, ...] = ()) -> Change:
    def change(_: Path, fills: dict[str, Fill], __: dict[str, str]) -> None:
        fills[requirement] = Fill(value, evidence, notes or ("NO NOTES" if value == "N/A" else ""))

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            status("gang_scheduling", "Partially Implemented"),
            "'gang_scheduling' is a MUST, but its status is 'Partially Implemented'",
        ),
        (
            status("gang_scheduling", "Not Implemented"),
            "'gang_scheduling' is a MUST, but its status is 'Not Implemented'",
        ),
        # The merged validator accepts only Implemented for a MUST, N/A included (a pull request to accept N/A
        # with notes is open): the check follows the merged rules.
        (
            status("cluster_autoscaling", "N/A", "no autoscaler on bare metal"),
            "'cluster_autoscaling' is a MUST, but its status is 'N/A'",
        ),
        (status("gang_scheduling", ""), "'gang_scheduling' is a MUST left blank"),
        (status("gpu_sharing", "N/A"), "notes are required for 'gpu_sharing' when its status is N/A"),
        (
            status("gpu_sharing", "", evidence=("https://example.com/sharing",)),
            "invalid status '' for 'gpu_sharing'",
        ),
    ],
)
def test_status_rules(tmp_path: Path, change: Change, expected: str) -> None:
    assert any(expected in e for e in errors(tmp_path, change)), errors(tmp_path / "again", change)


def test_a_should_may_stay_blank_or_be_na_with_notes(tmp_path: Path) -> None:
    assert errors(tmp_path, status("gpu_sharing", "N/A", "one GPU per VM")) == []


def test_the_spec_must_match_the_template(tmp_path: Path) -> None:
    path = write_submission(tmp_path)
    text = path.read_text()
    changed = text.replace(
        "Fixture wording: at least one all-or-nothing scheduler", "Fixture wording: a scheduler"
    )
    path.write_text(changed)
    assert check_submission(path, TEMPLATE).errors == [
        "'gang_scheduling': description or level differs from the template"
    ]
    data = yaml.safe_load(text)
    data["spec"]["security"] = [r for r in data["spec"]["security"] if r["id"] != "workload_sandboxing"]
    del data["spec"]["operator"]
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=1000))
    found = check_submission(path, TEMPLATE).errors
    assert "missing spec category: operator" in found
    assert "missing requirement 'workload_sandboxing' in category 'security'" in found


def evidence(requirement: str, *entries: str, value: str = "Implemented", notes: str = "") -> Change:
    return status(requirement, value, notes, entries)


def artifact(name: str, text: str) -> Change:
    def change(directory: Path, fills: dict[str, Fill], _: dict[str, str]) -> None:
        target = directory / "results" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    return change


def both(*changes: Change) -> Change:
    def change(directory: Path, fills: dict[str, Fill], metadata: dict[str, str]) -> None:
        for each in changes:
            each(directory, fills, metadata)

    return change


FAILING_JUNIT = PASSING_JUNIT.replace(
    '<testcase classname="example/test" name="TestGangScheduling" time="2.0"/>',
    '<testcase classname="example/test" name="TestGangScheduling" time="2.0"><failure message="x">boom</failure></testcase>'
    '<testcase classname="example/test" name="TestOther" time="0"><error message="e"/></testcase>',
)
GO_TEST_JSON = "\n".join(
    json.dumps(e)
    for e in [
        {"Action": "start", "Package": "p"},
        {"Action": "run", "Package": "p", "Test": "TestSecureAcceleratorAccess"},
        {
            "Action": "output",
            "Package": "p",
            "Test": "TestSecureAcceleratorAccess",
            "Output": "=== RUN   x\n",
        },
        {"Action": "pass", "Package": "p", "Test": "TestSecureAcceleratorAccess", "Elapsed": 1.0},
        {"Action": "run", "Package": "p", "Test": "TestGangScheduling"},
        {"Action": "skip", "Package": "p", "Test": "TestGangScheduling", "Elapsed": 0},
        {"Action": "pass", "Package": "p", "Elapsed": 1.0},
    ]
)
GO_TEST_LOG = """=== RUN   TestSecureAcceleratorAccess
=== RUN   TestSecureAcceleratorAccess/PositiveAccessTest
    ai_conformance_test.go:58: PASS: prober sees exactly 1 accelerator device(s).
--- PASS: TestSecureAcceleratorAccess (120.26s)
    --- PASS: TestSecureAcceleratorAccess/PositiveAccessTest (35.81s)
PASS
ok  \texample/test\t492.186s
"""
GINKGO_LOG = """Running Suite: Kubernetes e2e suite
Ran 11 of 7000 Specs in 300 seconds
SUCCESS! -- 11 Passed | 0 Failed | 0 Pending | 6989 Skipped
"""


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            evidence("gang_scheduling", "file://results/missing.xml"),
            "invalid evidence file for 'gang_scheduling': file://results/missing.xml (not found",
        ),
        (
            evidence("gang_scheduling", "file://../escape/junit.xml"),
            "file://../escape/junit.xml leaves the submission directory",
        ),
        (evidence("gang_scheduling", "/etc/hostname"), "/etc/hostname leaves the submission directory"),
        # any failing test anywhere in a cited artifact rejects the submission
        (
            both(artifact("junit.xml", FAILING_JUNIT)),
            "test artifact file://results/junit.xml#TestGangScheduling contains failing tests: TestGangScheduling, TestOther",
        ),
        # a fragment names a test; a line range is not one
        (
            evidence("gang_scheduling", "file://results/junit.xml#L69-L101"),
            "test not found (L69-L101, named by its fragment)",
        ),
        # without a fragment the requirement's upstream test must be in the artifact
        (
            evidence("gang_scheduling", "file://results/e2e.log"),
            "test not found (TestGangScheduling, the upstream test of gang_scheduling)",
        ),
        # a skipped test is evidence only for N/A
        (
            evidence("cluster_autoscaling", "file://results/junit.xml#TestAcceleratorClusterAutoscaling"),
            "cites TestAcceleratorClusterAutoscaling, which was skipped",
        ),
        (
            evidence("gang_scheduling", "file://results/results.json#TestGangScheduling"),
            "cites TestGangScheduling, which was skipped",
        ),
        # the canonical names are parsed, and must be in their format
        (
            both(
                artifact("results.json", "not json\n"),
                evidence("gang_scheduling", "file://results/results.json"),
            ),
            "invalid test artifact for 'gang_scheduling': file://results/results.json (line 1 is not a go test -json event",
        ),
        (
            both(artifact("E2E.log", GINKGO_LOG), evidence("gang_scheduling", "file://results/E2E.log")),
            "no go test -v output",
        ),
        (
            both(
                artifact("junit.xml", "<report/>"),
                evidence("gang_scheduling", "file://results/junit.xml#TestGangScheduling"),
            ),
            "not a JUnit report: the root element is <report>",
        ),
    ],
)
def test_evidence_and_artifact_rules(tmp_path: Path, change: Change, expected: str) -> None:
    def with_artifacts(directory: Path, fills: dict[str, Fill], metadata: dict[str, str]) -> None:
        artifact("results.json", GO_TEST_JSON)(directory, fills, metadata)
        artifact("e2e.log", GO_TEST_LOG)(directory, fills, metadata)
        change(directory, fills, metadata)

    found = errors(tmp_path, with_artifacts)
    assert any(expected in e for e in found), found


@pytest.mark.parametrize(
    "change",
    [
        # the upstream test of secure_accelerator_access is found without a fragment, in each format
        evidence(
            "secure_accelerator_access",
            "file://results/e2e.log",
            "file://results/results.json",
            "file://results/junit.xml",
        ),
        # a path written from the repository root (v1.37/<product>/...) and a bare relative path
        evidence(
            "gang_scheduling",
            "file://v1.37/example/results/junit.xml#TestGangScheduling",
            "results/junit.xml#TestGangScheduling",
        ),
        # a skipped test is fine for N/A; other files are only checked to exist
        both(
            evidence(
                "driver_runtime_management",
                "file://results/junit.xml#TestAcceleratorClusterAutoscaling",
                value="N/A",
                notes="no DRA version attributes",
            ),
            artifact("install.log", "FAIL everything\n"),
            evidence(
                "gang_scheduling", "file://results/junit.xml#TestGangScheduling", "file://results/install.log"
            ),
        ),
        # a requirement with no upstream test: an artifact without a fragment is read for failures only
        evidence("ai_inference", "file://results/junit.xml", "https://example.com/gateway"),
    ],
)
def test_evidence_that_passes(tmp_path: Path, change: Change) -> None:
    def with_artifacts(directory: Path, fills: dict[str, Fill], metadata: dict[str, str]) -> None:
        artifact("results.json", GO_TEST_JSON)(directory, fills, metadata)
        artifact("e2e.log", GO_TEST_LOG)(directory, fills, metadata)
        change(directory, fills, metadata)

    assert errors(tmp_path, with_artifacts) == []


def test_a_draft_lists_what_only_the_platform_can_add_as_to_dos(tmp_path: Path) -> None:
    change = both(
        meta("vendorName", "[Vendor Name]"), meta("k8sConformanceUrl", None), status("gang_scheduling", "")
    )
    path = write_submission(tmp_path, change)
    draft = check_submission(path, TEMPLATE, draft=True)
    assert draft.errors == []
    assert sorted(draft.todos) == sorted(check_submission(path, TEMPLATE).errors)
    assert len(draft.todos) == 3


def test_the_command_exits_by_the_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from driver.cli import main

    good = write_submission(tmp_path / "good")
    assert main(["conformance", "check", str(good), "--template", str(FIXTURES / "checklist-1.37.yaml")]) == 0
    assert "passes the CNCF validator's rules (0 error(s))" in capsys.readouterr().out
    bad = write_submission(tmp_path / "bad", status("gang_scheduling", "Not Implemented"))
    assert main(["conformance", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert (
        "error: 'gang_scheduling' is a MUST" in out and "fails the CNCF validator's rules (1 error(s))" in out
    )
    assert main(["conformance", "check", str(tmp_path / "none.yaml")]) == 2
    landscape = tmp_path / "landscape.yml"
    landscape.write_text(LANDSCAPE)
    assert main(["conformance", "check", str(good), "--landscape", str(landscape)]) == 0
