"""``accel-dra conformance check``: the CNCF submission validator's rules, applied offline to a PRODUCT.yaml.

The rules follow cncf/k8s-ai-conformance's ``scripts/validate.go`` as of its hybrid-verification version
(v1.37+, September 2026), which reads every artifact a submission cites:

* metadata: every required field (``repoUrl`` is optional) in camelCase or snake_case, a string, not empty,
  not a ``[placeholder]``; ``k8sConformanceUrl`` points at a ``cncf/k8s-conformance`` submission directory;
  ``productLogoUrl`` links an SVG, EPS or AI file; ``vendorName`` is a CNCF member (checked against a copy of
  the CNCF landscape when one is given, else noted);
* spec: every category and requirement of the template, with id, description and level unchanged; a SHOULD
  may stay blank (no status, no evidence); otherwise the status is one of the four; a MUST is Implemented;
  N/A needs notes;
* evidence: URLs are noted (not fetched offline); anything else is a file relative to the PRODUCT.yaml
  directory, ``file://`` accepted, a leading ``vX.Y/<product>/`` of that directory stripped, no escape with
  ``..``; a file named ``junit.xml``, ``results.json`` (``go test -json``) or ``e2e.log`` (``go test -v``) is
  parsed: it must be in that format, contain no failing test anywhere, and contain the test its ``#fragment``
  names -- or, without a fragment, the upstream test of the requirement -- which must not be skipped unless
  the requirement is N/A.

``draft`` turns what only the platform can still add -- placeholder or missing metadata, a MUST left blank --
into to-dos instead of errors, so a run's own output can be checked before the platform fills in the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from driver.conformance.checklist import STATUSES, Checklist, ChecklistError, parse_checklist
from driver.conformance.evidence import UPSTREAM_TESTS
from driver.conformance.gotest import ArtifactError, TestReport, artifact_kind, parse_artifact

Level = Literal["error", "todo", "note"]
#: Metadata fields and whether the validator requires them.
METADATA_FIELDS: Mapping[str, bool] = {
    "kubernetesVersion": True,
    "platformName": True,
    "platformVersion": True,
    "vendorName": True,
    "websiteUrl": True,
    "repoUrl": False,
    "documentationUrl": True,
    "productLogoUrl": True,
    "description": True,
    "contactEmailAddress": True,
    "k8sConformanceUrl": True,
}
K8S_CONFORMANCE_URL_RE = re.compile(
    r"^https://github\.com/cncf/k8s-conformance/tree/(master|main)/v\d+\.\d+/[^/]+/?$"
)
LOGO_SUFFIXES = (".svg", ".eps", ".ai")
_URL_RE = re.compile(r"^https?://", re.IGNORECASE)
_VERSION_DIR_RE = re.compile(r"^v\d+\.\d+$")
_MEMBER_SUFFIXES = (" (member)", " (supporter)")


@dataclass(frozen=True)
class Finding:
    level: Level
    message: str


@dataclass
class Result:
    path: Path
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: Level, message: str) -> None:
        self.findings.append(Finding(level, message))

    @property
    def errors(self) -> list[str]:
        return [f.message for f in self.findings if f.level == "error"]

    @property
    def todos(self) -> list[str]:
        return [f.message for f in self.findings if f.level == "todo"]

    @property
    def notes(self) -> list[str]:
        return [f.message for f in self.findings if f.level == "note"]


def snake_case(name: str) -> str:
    """``k8sConformanceUrl`` -> ``k8s_conformance_url`` (the validator's conversion)."""
    text = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text).lower()


def landscape_members(text: str) -> set[str]:
    """CNCF member names from the landscape YAML (category "CNCF Members"), without their suffix."""
    data = yaml.safe_load(text) or {}
    for category in data.get("landscape") or []:
        if category.get("name") == "CNCF Members":
            names = set()
            for sub in category.get("subcategories") or []:
                for item in sub.get("items") or []:
                    name = str(item.get("name") or "")
                    for suffix in _MEMBER_SUFFIXES:
                        name = name.removesuffix(suffix)
                    if name.strip():
                        names.add(name.strip())
            return names
    raise ValueError("the landscape has no 'CNCF Members' category")


# -- metadata --------------------------------------------------------------------------------------------


def check_metadata(
    metadata: Mapping[str, Any], result: Result, *, members: set[str] | None, draft: bool
) -> None:
    missing: Level = "todo" if draft else "error"
    urls: list[str] = []
    for name, required in METADATA_FIELDS.items():
        snake = snake_case(name)
        value = metadata.get(name, metadata.get(snake))
        if value is None:
            if required:
                result.add(missing, f"missing metadata field: {name} (or {snake})")
            continue
        if not isinstance(value, str):
            result.add("error", f"metadata field {name} is not a string")
            continue
        if not value:
            if required:
                result.add(missing, f"metadata field {name} is empty")
        elif value.startswith("[") and value.endswith("]"):
            result.add(missing, f"metadata field {name} has a placeholder value: {value}")
        elif name == "k8sConformanceUrl":
            if not K8S_CONFORMANCE_URL_RE.match(value):
                result.add(
                    "error",
                    f"k8sConformanceUrl {value} is not a cncf/k8s-conformance submission directory "
                    "(https://github.com/cncf/k8s-conformance/tree/main/v<version>/<product>)",
                )
            urls.append(value)
        elif value.lower().startswith("http"):
            if name == "productLogoUrl" and not value.lower().endswith(LOGO_SUFFIXES):
                result.add("error", f"productLogoUrl must link to an SVG, EPS or AI file: {value}")
            urls.append(value)
    vendor = str(metadata.get("vendorName", metadata.get("vendor_name")) or "").strip()
    if vendor and not (vendor.startswith("[") and vendor.endswith("]")):
        if members is None:
            result.add(
                "note",
                f"vendorName {vendor!r} must match a CNCF member exactly (not checked: no --landscape)",
            )
        elif vendor not in members:
            result.add("error", f"vendorName {vendor!r} does not match any CNCF member in the CNCF landscape")
    if urls:
        result.add(
            "note", f"{len(urls)} metadata URL(s) must answer (not fetched offline): {', '.join(urls)}"
        )


# -- evidence --------------------------------------------------------------------------------------------


def evidence_path(entry: str, product_dir: Path) -> tuple[Path, str]:
    """The file an evidence entry names, and its ``#fragment``; raises ValueError for a path that leaves
    the submission directory."""
    text = entry.removeprefix("file://")
    path_text, _, fragment = text.partition("#")
    parts = PurePosixPath(path_text).parts
    own = product_dir.resolve().parts[-2:]
    if len(parts) > 2 and _VERSION_DIR_RE.match(parts[0]) and tuple(parts[:2]) == tuple(own):
        parts = parts[2:]  # file://v1.37/<product>/results/junit.xml, written from the repository root
    if path_text.startswith("/") or ".." in parts:
        raise ValueError(f"{entry} leaves the submission directory")
    return product_dir.joinpath(*parts), fragment


class _Artifacts:
    """Parsed artifacts, each file read once; failures reported once per file."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.reports: dict[Path, TestReport | None] = {}
        self.broken: set[Path] = set()

    def get(self, path: Path, requirement_id: str, entry: str) -> TestReport | None:
        if path in self.reports or path in self.broken:
            return self.reports.get(path)
        try:
            report = parse_artifact(path)
        except ArtifactError as err:
            self.broken.add(path)
            self.result.add("error", f"invalid test artifact for '{requirement_id}': {entry} ({err})")
            return None
        self.reports[path] = report
        if report is not None and report.failures:
            self.result.add(
                "error", f"test artifact {entry} contains failing tests: {', '.join(report.failures)}"
            )
        return report


def check_evidence(
    requirement_id: str, status: str, entries: Iterable[str], product_dir: Path, artifacts: _Artifacts
) -> None:
    result = artifacts.result
    for entry in entries:
        if not entry:
            continue
        if _URL_RE.match(entry):
            result.add(
                "note", f"evidence URL for '{requirement_id}' must answer (not fetched offline): {entry}"
            )
            continue
        try:
            path, fragment = evidence_path(entry, product_dir)
        except ValueError as err:
            result.add("error", f"invalid evidence file for '{requirement_id}': {err}")
            continue
        if not path.is_file():
            result.add(
                "error", f"invalid evidence file for '{requirement_id}': {entry} (not found at {path})"
            )
            continue
        if artifact_kind(path) is None:
            continue
        report = artifacts.get(path, requirement_id, entry)
        if report is None:
            continue
        test = fragment or UPSTREAM_TESTS.get(requirement_id, "")
        if not test:
            continue
        outcome = report.outcome(test)
        if outcome is None:
            how = "named by its fragment" if fragment else f"the upstream test of {requirement_id}"
            result.add("error", f"evidence {entry} for '{requirement_id}': test not found ({test}, {how})")
        elif outcome == "skipped" and status != "N/A":
            result.add(
                "error",
                f"evidence {entry} for '{requirement_id}' cites {test}, which was skipped; a skipped test is "
                "evidence only for an N/A requirement",
            )


# -- the whole file --------------------------------------------------------------------------------------


def _spec(text: str, source: str) -> tuple[Mapping[str, Any], Checklist | None, str | None]:
    """Metadata and the parsed checklist (None with the reason when it does not parse as one)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return {}, None, f"not valid YAML: {err}"
    metadata = (data or {}).get("metadata") if isinstance(data, dict) else None
    try:
        return metadata if isinstance(metadata, dict) else {}, parse_checklist(text, source), None
    except ChecklistError as err:
        return metadata if isinstance(metadata, dict) else {}, None, str(err)


def check_submission(
    path: Path,
    template: Checklist | None = None,
    *,
    members: set[str] | None = None,
    draft: bool = False,
) -> Result:
    """Every finding the validator's rules give for the PRODUCT.yaml at ``path``."""
    result = Result(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        result.add("error", f"cannot read {path}: {err}")
        return result
    metadata, filled, problem = _spec(text, str(path))
    if not metadata:
        result.add("error", "missing 'metadata' section")
    else:
        check_metadata(metadata, result, members=members, draft=draft)
    if filled is None:
        result.add("error", f"the spec cannot be read: {problem}")
        return result
    _check_requirements(filled, template, result, draft=draft)
    artifacts = _Artifacts(result)
    levels = {r.id: r.level for r in (template or filled).requirements}
    for req in filled.requirements:
        if levels.get(req.id) == "SHOULD" and not req.status and not req.evidence:
            continue
        check_evidence(req.id, req.status, req.evidence, path.parent, artifacts)
    return result


def _check_requirements(
    filled: Checklist, template: Checklist | None, result: Result, *, draft: bool
) -> None:
    if template is None:
        result.add("note", "ids, descriptions and levels not compared with the template (pass --template)")
        reference: Sequence[Any] = filled.requirements
    else:
        reference = template.requirements
        present = {(r.section, r.id) for r in filled.requirements}
        sections = {r.section for r in filled.requirements}
        for section in dict.fromkeys(r.section for r in template.requirements):
            if section not in sections:
                result.add("error", f"missing spec category: {section}")
        for r in template.requirements:
            if r.section in sections and (r.section, r.id) not in present:
                result.add("error", f"missing requirement '{r.id}' in category '{r.section}'")
    by_id = {r.id: r for r in filled.requirements}
    for source in reference:
        req = by_id.get(source.id)
        if req is None:
            continue
        if template is not None and (req.description, req.level) != (source.description, source.level):
            result.add("error", f"'{req.id}': description or level differs from the template")
        if source.level == "SHOULD" and not req.status and not req.evidence:
            continue
        if source.level == "MUST" and not req.status:
            level: Level = "todo" if draft else "error"
            result.add(
                level,
                f"'{req.id}' is a MUST left blank: it must be Implemented (for the platform to fill in)",
            )
            continue
        if req.status not in STATUSES:
            result.add(
                "error", f"invalid status '{req.status}' for '{req.id}' (one of {', '.join(STATUSES)})"
            )
        if source.level == "MUST" and req.status and req.status != "Implemented":
            result.add(
                "error", f"'{req.id}' is a MUST, but its status is '{req.status}': it must be Implemented"
            )
        if req.status == "N/A" and not req.notes.strip():
            result.add("error", f"notes are required for '{req.id}' when its status is N/A")
