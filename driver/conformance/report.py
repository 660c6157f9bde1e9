"""The run's output files. Layout of ``--out DIR`` (a CNCF submission directory: evidence paths are relative
to it)::

    PRODUCT.yaml                the upstream checklist, filled in (status, evidence, notes) and metadata
    report.html                 the readable report (print-friendly)
    results/run.log             the whole run as it happened, advisory probes too
    results/junit.xml           the requirement probes, as gotestsum writes junit
    results/results.json        the same as a ``go test -json`` event stream
    results/e2e.log             the same as ``go test -v`` prints it
    results/<requirement>/      junit.xml, results.json and e2e.log of that requirement's probes only: what
                                PRODUCT.yaml cites (another probe's failure never lands in these files)
    results/advisory/           the same three files for the checks outside the checklist (never cited)
    results/imported/<n>/       copies of junit files given with --import-junit
    results/probes/<probe>/     each probe's manifests (manifests.yaml) and what its pods printed (*.log)
    results/summary.json        everything above as data

After writing, the filled checklist is checked with the CNCF validator's rules (:mod:`submission`, as a
draft: what only the platform can add is listed as to-do, not as a problem).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from driver import __version__
from driver.conformance import evidence as ev
from driver.conformance import gotest
from driver.conformance.checklist import fill_checklist, parse_checklist
from driver.conformance.model import ProbeResult
from driver.conformance.reporthtml import report_html
from driver.conformance.runner import PRODUCT, REPORT, RESULTS_DIR, SUMMARY, SuiteResult
from driver.conformance.submission import check_submission

JSON = dict[str, Any]
ADVISORY = f"{RESULTS_DIR}/advisory"
PROBES_DIR = f"{RESULTS_DIR}/probes"
_SAFE_RE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclasses.dataclass
class Outputs:
    """What was written, and what the caller should tell the user."""

    files: list[Path]
    decisions: list[ev.Decision]
    #: MUST requirements the filled checklist does not call Implemented (the validator rejects each).
    must_failures: list[str]
    #: What the validator's rules reject in the output itself.
    problems: list[str]
    #: What only the platform can still add (placeholder metadata, MUSTs left for the platform).
    todos: list[str]
    warnings: list[str]


# -- artifact sets -----------------------------------------------------------------------------------------


def artifact_set(suite: SuiteResult, results: Sequence[ProbeResult]) -> dict[str, str]:
    """junit.xml, results.json and e2e.log of ``results`` (file name -> text)."""
    records = gotest.select(suite.records, results)
    outcome = gotest.overall(results)
    elapsed = sum(r.duration for r in results)
    started = min((r.started for r in results), default=suite.started_at) or suite.started_at
    return {
        gotest.JUNIT: gotest.junit_xml(records, results, started),
        gotest.TEST_JSON: gotest.test_json(records, outcome, started, elapsed),
        gotest.TEST_LOG: gotest.test_log(records, outcome, elapsed),
    }


def evidence_sets(suite: SuiteResult) -> dict[str, dict[str, str]]:
    """Directory (relative to the output) -> its artifact files."""
    checked = [r for r in suite.probes if not r.advisory]
    advisory = [r for r in suite.probes if r.advisory]
    listed = {r.id for r in suite.checklist.requirements}
    sets = {RESULTS_DIR: artifact_set(suite, checked)}
    for requirement in dict.fromkeys(q for r in checked for q in r.requirements):
        if requirement in listed:
            mine = [r for r in checked if requirement in r.requirements]
            sets[ev.artifact_dir(requirement)] = artifact_set(suite, mine)
    if advisory:
        sets[ADVISORY] = artifact_set(suite, advisory)
    return sets


def _safe(name: str) -> str:
    return _SAFE_RE.sub("-", name).strip("-") or "x"


def probe_files(result: ProbeResult) -> dict[str, str]:
    """``results/probes/<probe>/``: the manifests the probe sent, and each pod container's output."""
    base = f"{PROBES_DIR}/{result.probe}"
    files: dict[str, str] = {}
    manifests = result.data.get("manifests") or []
    if manifests:
        files[f"{base}/manifests.yaml"] = yaml.safe_dump_all(manifests, sort_keys=False)
    for output in result.data.get("outputs") or []:
        files[f"{base}/{_safe(output['pod'])}.{_safe(output['container'])}.log"] = output["text"]
    return files


# -- summary.json --------------------------------------------------------------------------------------------


def _probe_json(result: ProbeResult, files: Sequence[str]) -> JSON:
    return {
        "name": result.probe,
        "test": result.test,
        "title": result.title,
        "requirements": list(result.requirements),
        "advisory": result.advisory,
        "outcome": result.outcome,
        "message": result.message,
        "durationSeconds": round(result.duration, 3),
        "timeoutSeconds": result.timeout,
        "checks": [
            {
                "name": c.name,
                "outcome": c.outcome,
                "message": c.message,
                "durationSeconds": round(c.duration, 3),
                "details": c.details,
            }
            for c in result.checks
        ],
        "files": list(files),
        "data": {k: v for k, v in result.data.items() if k not in ("manifests", "outputs")},
        "manifests": result.data.get("manifests") or [],
        "outputs": result.data.get("outputs") or [],
    }


def summary_json(
    suite: SuiteResult,
    decisions: Sequence[ev.Decision],
    outputs: Mapping[str, Sequence[str]],
    imports: Sequence[ev.Imported],
) -> JSON:
    counts = {
        k: sum(p.outcome == k for p in suite.probes if not p.advisory)
        for k in ("passed", "failed", "skipped")
    }
    musts = [d for d in decisions if d.requirement.level == "MUST"]
    return {
        "tool": "accel-dra conformance",
        "version": __version__,
        "runId": suite.run_id,
        "namespace": suite.namespace,
        "started": suite.started,
        "durationSeconds": round(suite.duration, 3),
        "interrupted": suite.interrupted,
        "sandbox": suite.sandbox,
        "command": list(suite.command),
        "cluster": suite.cluster,
        "checklist": {
            "source": suite.checklist.source,
            "kubernetesVersion": suite.checklist.kubernetes_version,
            "filled": PRODUCT,
        },
        "vendor": suite.vendor.summary(),
        "summary": {
            **counts,
            "mustImplemented": sum(d.status == "Implemented" for d in musts),
            "musts": len(musts),
            "mustFailures": ev.must_failures(decisions),
        },
        "requirements": [
            {
                "id": d.id,
                "section": d.requirement.section,
                "level": d.requirement.level,
                "source": d.source,
                "covered": d.source in ("verified", "declared"),
                "status": d.status,
                "tests": list(d.tests),
                "why": d.why,
                "evidence": list(d.fill.evidence) if d.fill else list(d.requirement.evidence),
                "notes": d.fill.notes if d.fill else d.requirement.notes,
            }
            for d in decisions
        ],
        "probes": [_probe_json(p, outputs.get(p.probe, ())) for p in suite.probes],
        "imported": [
            {
                "origin": i.origin,
                "stored": i.stored,
                "mapping": dict(i.mapping),
                "failures": i.report.failures,
            }
            for i in imports
        ],
    }


# -- writing everything --------------------------------------------------------------------------------


def _warnings(
    suite: SuiteResult, decisions: Sequence[ev.Decision], imports: Sequence[ev.Imported]
) -> list[str]:
    warnings = []
    if suite.sandbox:
        warnings.append(
            "this run used the accel-dra sandbox: its results describe the simulator, not a platform"
        )
    ignored = sorted(set(suite.vendor.not_applicable) - {d.id for d in decisions})
    if ignored:
        warnings.append(
            f"notApplicable entries for requirements the checklist does not list: {', '.join(ignored)}"
        )
    for source in imports:
        if source.report.failures:
            warnings.append(
                f"{source.origin} has failing tests ({', '.join(source.report.failures)}): the CNCF validator rejects "
                "a submission that cites it"
            )
    return warnings


def write_outputs(
    suite: SuiteResult,
    out_dir: Path,
    metadata: Mapping[str, str],
    *,
    imports: Sequence[ev.Imported] = (),
    uncovered: ev.Uncovered = "open",
) -> Outputs:
    """Write PRODUCT.yaml, the artifacts, summary.json and report.html next to the run's run.log."""
    decisions = ev.decide(
        suite.checklist,
        suite.probes,
        suite.vendor,
        suite.run_id,
        sandbox=suite.sandbox,
        imports=imports,
        uncovered=uncovered,
    )
    filled_text = fill_checklist(suite.checklist, ev.fills(decisions), metadata)
    parse_checklist(filled_text, PRODUCT)  # fill_checklist verified it; this only guards the bytes written
    files: dict[str, str] = {PRODUCT: filled_text}
    for directory, artifacts in evidence_sets(suite).items():
        files.update({f"{directory}/{name}": text for name, text in artifacts.items()})
    per_probe: dict[str, list[str]] = {}
    for result in suite.probes:
        mine = probe_files(result)
        per_probe[result.probe] = list(mine)
        files.update(mine)
    warnings = _warnings(suite, decisions, imports)
    data = summary_json(suite, decisions, per_probe, imports)
    files[SUMMARY] = json.dumps(data, indent=2) + "\n"
    written = []
    for relative, text in files.items():
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))  # byte-exact: keep the checklist's line breaks
        written.append(path)
    report = out_dir / REPORT
    excerpts = {
        r.probe: [rec.text for rec in suite.records[r.records[0] : r.records[1]]] for r in suite.probes
    }
    report.write_text(report_html(data, warnings, excerpts), encoding="utf-8")  # cited, so checked: first
    check = check_submission(out_dir / PRODUCT, suite.checklist, draft=True)
    data["check"] = {"problems": check.errors, "todos": check.todos, "notes": check.notes}
    report.write_text(report_html(data, warnings, excerpts), encoding="utf-8")
    (out_dir / SUMMARY).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    written.append(report)
    return Outputs(written, decisions, ev.must_failures(decisions), check.errors, check.todos, warnings)
