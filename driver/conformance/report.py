"""The run's output files: ``results/junit.xml``, ``results/results.json``, ``PRODUCT.yaml`` (the filled
checklist) and ``report.html`` (``results/e2e.log`` is written while the run goes).

Layout of ``--out DIR`` (what a CNCF submission directory holds; evidence paths are relative to it)::

    PRODUCT.yaml          the upstream checklist with status/evidence/notes filled for the covered requirements
    report.html           a readable report: summary, evidence per probe, attribute table per device
    results/junit.xml     one testcase per probe and per check (TestSecureAcceleratorAccess/PositiveAccessTest)
    results/results.json  everything above as data
    results/e2e.log       the run's log, go-test style; evidence cites line ranges of it
"""

from __future__ import annotations

import dataclasses
import html
import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from driver import __version__
from driver.conformance.checklist import Fill, check_filled, fill_checklist, parse_checklist
from driver.conformance.model import ProbeResult
from driver.conformance.runner import (
    E2E_LOG,
    JUNIT,
    PRODUCT,
    REPORT,
    RESULTS_JSON,
    SuiteResult,
    evidence,
    must_failures,
    requirement_fills,
)

JSON = dict[str, Any]


@dataclasses.dataclass
class Outputs:
    """What was written, and what the caller should tell the user."""

    files: list[Path]
    fills: dict[str, Fill]
    must_failures: list[str]
    problems: list[str]
    warnings: list[str]


# -- junit ---------------------------------------------------------------------------------------------


def _case(parent: ET.Element, name: str, seconds: float, outcome: str, *, message: str, text: str) -> None:
    case = ET.SubElement(
        parent, "testcase", classname="accel-dra/conformance", name=name, time=f"{seconds:.3f}"
    )
    if outcome == "failed":
        ET.SubElement(case, "failure", message=message[:1000], type="failure").text = message
    elif outcome == "skipped":
        ET.SubElement(case, "skipped", message=message[:1000])
    if text:
        ET.SubElement(case, "system-out").text = text


def junit_xml(suite: SuiteResult, log_text: Sequence[str]) -> str:
    cases = [(r, None) for r in suite.probes] + [(r, c) for r in suite.probes for c in r.checks]
    total = len(cases)
    failures = sum((c.outcome if c else r.outcome) == "failed" for r, c in cases)
    skipped = sum((c.outcome if c else r.outcome) == "skipped" for r, c in cases)
    seconds = f"{sum(r.duration for r in suite.probes):.3f}"
    root = ET.Element("testsuites", name="accel-dra conformance", tests=str(total), failures=str(failures),
                      skipped=str(skipped), errors="0", time=seconds)  # fmt: skip
    testsuite = ET.SubElement(root, "testsuite", name="accel-dra/conformance", tests=str(total),
                              failures=str(failures), skipped=str(skipped), errors="0", time=seconds,
                              timestamp=suite.started)  # fmt: skip
    for result in suite.probes:
        first, last = result.log_lines
        excerpt = "\n".join(log_text[first - 1 : last])
        _case(testsuite, result.test, result.duration, result.outcome, message=result.message, text=excerpt)
        for check in result.checks:
            details = "\n".join(check.details)
            _case(
                testsuite,
                f"{result.test}/{check.name}",
                check.duration,
                check.outcome,
                message=check.message,
                text=details,
            )
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# -- results.json --------------------------------------------------------------------------------------


def _probe_json(result: ProbeResult) -> JSON:
    first, last = result.log_lines
    return {
        "name": result.probe,
        "test": result.test,
        "title": result.title,
        "requirements": list(result.requirements),
        "outcome": result.outcome,
        "message": result.message,
        "durationSeconds": round(result.duration, 3),
        "timeoutSeconds": result.timeout,
        "log": {"file": E2E_LOG, "firstLine": first, "lastLine": last},
        "evidence": list(evidence(result)),
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
        "data": result.data,
    }


def results_json(suite: SuiteResult, fills: Mapping[str, Fill], warnings: Sequence[str]) -> JSON:
    requirements = []
    for r in suite.checklist.requirements:
        fill = fills.get(r.id)
        requirements.append(
            {
                "id": r.id,
                "section": r.section,
                "level": r.level,
                "covered": fill is not None,
                "probes": [p.test for p in suite.probes if r.id in p.requirements],
                "status": fill.status if fill else r.status,
                "evidence": list(fill.evidence) if fill else list(r.evidence),
                "notes": fill.notes if fill else r.notes,
            }
        )
    counts = {k: sum(p.outcome == k for p in suite.probes) for k in ("passed", "failed", "skipped")}
    return {
        "tool": "accel-dra conformance",
        "version": __version__,
        "runId": suite.run_id,
        "namespace": suite.namespace,
        "started": suite.started,
        "durationSeconds": round(suite.duration, 3),
        "interrupted": suite.interrupted,
        "cluster": suite.cluster,
        "checklist": {
            "source": suite.checklist.source,
            "kubernetesVersion": suite.checklist.kubernetes_version,
            "filled": PRODUCT,
        },
        "vendor": suite.vendor.summary(),
        "summary": {**counts, "mustFailures": must_failures(suite.checklist, fills, suite.probes)},
        "requirements": requirements,
        "probes": [_probe_json(p) for p in suite.probes],
        "warnings": list(warnings),
    }


# -- report.html ---------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f3f3f3}code,pre{font-size:90%}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;max-height:30em}
.passed,.Implemented{background:#e3f6e3}.failed,.Not-Implemented{background:#fbe3e3}
.skipped,.Partially-Implemented,.N-A{background:#fdf5dc}.small{font-size:85%;color:#555}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _cls(value: str) -> str:
    return value.replace(" ", "-").replace("/", "-")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        cls = f' class="{_e(classes[index])}"' if index < len(classes) and classes[index] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _requirements_html(data: JSON) -> str:
    rows, classes = [], []
    anchors = {p["test"]: p["name"] for p in data["probes"]}
    for r in data["requirements"]:
        status = r["status"] or ("not covered by this suite" if not r["covered"] else "")
        probes = ", ".join(f'<a href="#{_e(anchors[t])}">{_e(t)}</a>' for t in r["probes"]) or "—"
        rows.append([_e(r["section"]), f"<code>{_e(r['id'])}</code>", _e(r["level"]), _e(status), probes])
        classes.append(_cls(r["status"]) if r["covered"] else "")
    return _table(["Section", "Requirement", "Level", "Status", "Evidence from"], rows, classes)


def _probe_html(probe: JSON, log_text: Sequence[str]) -> str:
    first, last = probe["log"]["firstLine"], probe["log"]["lastLine"]
    checks = _table(
        ["Check", "Outcome", "Message", "Details"],
        [
            [_e(c["name"]), _e(c["outcome"]), _e(c["message"]), "<br>".join(_e(d) for d in c["details"][:20])]
            for c in probe["checks"]
        ],
        [c["outcome"] for c in probe["checks"]],
    )
    links = (
        f'<p class="small">Evidence: <a href="{_e(JUNIT)}">{_e(JUNIT)}</a> testcase <code>{_e(probe["test"])}</code>, '
        f'<a href="{_e(E2E_LOG)}">{_e(E2E_LOG)}</a> lines {first}-{last}</p>'
    )
    excerpt = "\n".join(log_text[first - 1 : last])
    return (
        f'<h3 id="{_e(probe["name"])}">{_e(probe["test"])} — {_e(probe["title"])} '
        f'<span class="{_e(probe["outcome"])}">{_e(probe["outcome"].upper())}</span></h3>'
        f"<p>Requirements: {_e(', '.join(probe['requirements']) or 'none (project standard)')}. "
        f"{_e(probe['message'])} ({probe['durationSeconds']:.1f}s of {probe['timeoutSeconds']:g}s)</p>"
        f"{checks}{links}<details><summary>e2e.log excerpt</summary><pre>{_e(excerpt)}</pre></details>"
    )


def _devices_html(rows: Sequence[JSON]) -> str:
    if not rows:
        return "<p>No device table (the attribute-profile probe did not run).</p>"
    out = []
    for driver in sorted({r["driver"] for r in rows}):
        mine = [r for r in rows if r["driver"] == driver]
        keys = sorted({k for r in mine for k in r["attributes"]})
        caps = sorted({k for r in mine for k in r["capacity"]})
        headers = ["Device", "Node", "Pool", *keys, *(f"capacity {c}" for c in caps), "Profile findings"]
        body = [
            [
                f"<code>{_e(r['device'])}</code>",
                _e(r["node"] or "—"),
                _e(r["pool"]),
                *(_e(r["attributes"].get(k, "")) for k in keys),
                *(_e(r["capacity"].get(c, "")) for c in caps),
                "<br>".join(_e(f) for f in r["findings"]) or "none",
            ]
            for r in mine
        ]
        classes = ["failed" if r["findings"] else "" for r in mine]
        out.append(
            f"<h3>Driver <code>{_e(driver)}</code> ({len(mine)} devices)</h3>{_table(headers, body, classes)}"
        )
    return "".join(out)


def report_html(data: JSON, log_text: Sequence[str]) -> str:
    summary = data["summary"]
    verdict = (
        "interrupted"
        if data["interrupted"]
        else "MUST requirements failing: " + ", ".join(summary["mustFailures"])
        if summary["mustFailures"]
        else "no covered MUST requirement failed"
    )
    listed = {r["id"] for r in data["requirements"]}
    version = data["checklist"]["kubernetesVersion"]
    probes_table = _table(
        ["Probe", "Requirements", "Outcome", "Time", "Summary"],
        [
            [
                f'<a href="#{_e(p["name"])}">{_e(p["test"])}</a>',
                _e(
                    ", ".join(r if r in listed else f"{r} (not in {version})" for r in p["requirements"])
                    or "—"
                ),
                _e(p["outcome"]),
                f"{p['durationSeconds']:.1f}s",
                _e(p["message"]),
            ]
            for p in data["probes"]
        ],
        [p["outcome"] for p in data["probes"]],
    )
    devices: list[JSON] = next(
        (p["data"].get("devices", []) for p in data["probes"] if p["name"] == "attribute_profile"), []
    )
    warnings = "".join(f"<li>{_e(w)}</li>" for w in data["warnings"])
    vendor = data["vendor"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>AI conformance report — {_e(vendor["name"])}</title>
<style>{_CSS}</style></head><body>
<h1>Kubernetes AI conformance: {_e(data["checklist"]["kubernetesVersion"])}</h1>
<p><b>{_e(verdict)}</b>. {summary["passed"]} probe(s) passed, {summary["failed"]} failed, {summary["skipped"]} skipped.</p>
<p class="small">accel-dra conformance {_e(data["version"])}, run <code>{_e(data["runId"])}</code> started
{_e(data["started"])} ({data["durationSeconds"]:.1f}s) against {_e(data["cluster"].get("server", "?"))}
({_e(data["cluster"].get("version", "version unknown"))}); checklist {_e(data["checklist"]["source"])}, filled as
<a href="{_e(PRODUCT)}">{_e(PRODUCT)}</a>; vendor {_e(vendor["name"])}: driver <code>{_e(vendor["driver_name"])}</code>,
DeviceClass <code>{_e(vendor["device_class"])}</code>. Raw results: <a href="{_e(RESULTS_JSON)}">{_e(RESULTS_JSON)}</a>.</p>
{f'<ul class="small">{warnings}</ul>' if warnings else ""}
<h2>Requirements</h2>{_requirements_html(data)}
<h2>Probes</h2>{probes_table}
<h2>Evidence per probe</h2>{"".join(_probe_html(p, log_text) for p in data["probes"])}
<h2>Devices and their attributes</h2>{_devices_html(devices)}
</body></html>
"""


# -- writing everything --------------------------------------------------------------------------------


def write_outputs(
    suite: SuiteResult, out_dir: Path, metadata: Mapping[str, str], log_text: Sequence[str]
) -> Outputs:
    """Write junit.xml, results.json, PRODUCT.yaml and report.html next to the run's e2e.log."""
    fills = requirement_fills(
        suite.checklist, suite.probes, suite.vendor, suite.run_id, sandbox=suite.sandbox
    )
    filled_text = fill_checklist(suite.checklist, fills, metadata)
    filled = parse_checklist(filled_text, PRODUCT)
    warnings = []
    if suite.sandbox:
        warnings.append(
            "this run used the accel-dra sandbox: its results describe the simulator, not a platform"
        )
    if filled.placeholders():
        warnings.append(
            f"metadata still holds placeholders: {', '.join(filled.placeholders())} "
            "(pass --metadata KEY=VALUE or --metadata-file)"
        )
    ignored = sorted(set(suite.vendor.not_applicable) - set(fills))
    if ignored:
        warnings.append(
            f"notApplicable entries for requirements the suite did not cover were not written: {', '.join(ignored)}"
        )
    data = results_json(suite, fills, warnings)
    files = {
        JUNIT: junit_xml(suite, log_text),
        RESULTS_JSON: json.dumps(data, indent=2) + "\n",
        PRODUCT: filled_text,
        REPORT: report_html(data, log_text),
    }
    written = []
    for relative, text in files.items():
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))  # byte-exact: keep the checklist's line breaks
        written.append(path)
    problems = [
        p
        for p in check_filled(suite.checklist, filled, out_dir)
        if "still a placeholder" not in p and "a MUST is" not in p
    ]
    return Outputs(written, fills, must_failures(suite.checklist, fills, suite.probes), problems, warnings)
