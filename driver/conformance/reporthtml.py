"""``report.html``: the run for a reviewer, on screen and on paper.

Sections: the verdict (MUSTs Implemented, what the validator's rules reject, what is left for the platform),
the platform (Kubernetes, node and component versions -- never the API server's address), the requirements
with where each status comes from (verified by this run, imported, declared or self-declared, left open),
the steps to reproduce the run, each probe's checks, log, manifests and raw output, and the advisory
attribute table. No content is collapsed: logs scroll on screen and print in full; wide tables wrap.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

JSON = dict[str, Any]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;color:#222;max-width:1200px;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;width:100%;table-layout:auto}
td,th{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f3f3f3}code,pre{font-size:88%}
pre{background:#f7f7f7;padding:.6em;overflow:auto;max-height:28em;white-space:pre-wrap;overflow-wrap:anywhere}
.passed,.Implemented{background:#e3f6e3}.failed,.Not-Implemented{background:#fbe3e3}
.skipped,.Partially-Implemented,.N-A{background:#fdf5dc}.small{font-size:85%;color:#555}
.banner{border:3px solid #b00;background:#fff0f0;padding:.8em 1em;font-weight:bold;font-size:110%}
.source{font-size:85%;padding:0 .3em;border-radius:3px;white-space:nowrap}
.src-verified{background:#2e7d32;color:#fff}.src-imported{background:#1565c0;color:#fff}
.src-declared,.src-self-declared{background:#6a1b9a;color:#fff}.src-open{background:#b00;color:#fff}
.src-not-covered{background:#999;color:#fff}
.wide td{font-size:85%}
@media print{body{margin:0;max-width:none}pre{max-height:none;overflow:visible}
h2,h3{break-after:avoid}table,pre{break-inside:auto}tr{break-inside:avoid}a{color:inherit}}
"""
_SOURCES = {
    "verified": "verified by this run",
    "imported": "imported (another suite's junit)",
    "declared": "declared by the vendor file",
    "self-declared": "self-declared (in the input checklist)",
    "open": "left for the platform",
    "not covered": "not covered",
}


def _e(value: Any) -> str:
    return html.escape(str(value))


def _cls(value: str) -> str:
    return value.replace(" ", "-").replace("/", "-")


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = (), css: str = ""
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        cls = f' class="{_e(classes[index])}"' if index < len(classes) and classes[index] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    attr = f' class="{css}"' if css else ""
    return f"<table{attr}><tr>{head}</tr>{''.join(body)}</table>"


def _list(items: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>" if items else ""


def _verdict(data: JSON) -> str:
    summary, check = data["summary"], data.get("check") or {}
    parts = [
        f"<p><b>{summary['mustImplemented']} of {summary['musts']} MUST requirements are Implemented</b> "
        f"in the filled checklist; {summary['passed']} probe(s) passed, {summary['failed']} failed, "
        f"{summary['skipped']} skipped.</p>"
    ]
    if data["interrupted"]:
        parts.append("<p><b>The run was interrupted</b>: the probes after the interruption did not run.</p>")
    if summary["mustFailures"]:
        parts.append(
            "<p>MUST requirements the CNCF validator rejects as they stand:</p>"
            + _list(summary["mustFailures"])
        )
    if check.get("problems"):
        parts.append("<p>What the validator's rules reject in this output:</p>" + _list(check["problems"]))
    if check.get("todos"):
        parts.append("<p>Left for the platform to fill in before submitting:</p>" + _list(check["todos"]))
    return "".join(parts)


def _platform(data: JSON) -> str:
    cluster, vendor = data["cluster"], data["vendor"]
    nodes = _table(
        [
            "Node",
            "kubelet",
            "container runtime",
            "OS image",
            "kernel",
            "arch",
            "version labels",
            "allocatable",
        ],
        [
            [
                _e(n["name"]),
                _e(n.get("kubeletVersion", "")),
                _e(n.get("containerRuntimeVersion", "")),
                _e(n.get("osImage", "")),
                _e(n.get("kernelVersion", "")),
                _e(n.get("architecture", "")),
                "<br>".join(f"{_e(k)}={_e(v)}" for k, v in (n.get("versionLabels") or {}).items()),
                "<br>".join(f"{_e(k)}: {_e(v)}" for k, v in (n.get("allocatable") or {}).items()),
            ]
            for n in cluster.get("nodes") or []
        ],
    )
    drivers = ", ".join(
        f"<code>{_e(d)}</code> ({n} devices)" for d, n in (cluster.get("draDrivers") or {}).items()
    )
    allocation = vendor["allocation"] + (
        f" (<code>{_e(vendor['extended_resource'])}</code>)"
        if vendor["allocation"] == "device-plugin"
        else ""
    )
    return (
        f"<p>Kubernetes <b>{_e(cluster.get('version') or 'version unknown')}</b> "
        f"{_e(cluster.get('platform', ''))}; {cluster.get('nodeCount', 0)} node(s); DRA drivers publishing "
        f"devices: {drivers or 'none'}.</p>"
        f"<p>Vendor settings <b>{_e(vendor['name'])}</b>: DRA driver <code>{_e(vendor['driver_name'])}</code>, "
        f"DeviceClass <code>{_e(vendor['device_class'])}</code>, allocation {allocation}, device nodes "
        f"{', '.join(f'<code>{_e(g)}</code>' for g in vendor['device_globs'])}. accel-dra conformance "
        f"{_e(data['version'])}, run <code>{_e(data['runId'])}</code> started {_e(data['started'])} "
        f"({data['durationSeconds']:.1f}s).</p>{nodes}"
    )


def _requirements(data: JSON) -> str:
    anchors = {p["test"]: p["name"] for p in data["probes"]}
    rows, classes = [], []
    for r in data["requirements"]:
        tests = ", ".join(
            f'<a href="#{_e(anchors[t])}">{_e(t)}</a>' if t in anchors else f"<code>{_e(t)}</code>"
            for t in r["tests"]
        )
        source = f'<span class="source src-{_cls(r["source"])}">{_e(_SOURCES[r["source"]])}</span>'
        rows.append(
            [
                _e(r["section"]),
                f"<code>{_e(r['id'])}</code>",
                _e(r["level"]),
                _e(r["status"] or "(blank)"),
                source,
                tests or "—",
                _e(r["why"]),
            ]
        )
        classes.append(_cls(r["status"]) if r["status"] else "")
    return _table(["Section", "Requirement", "Level", "Status", "Source", "Tests", "Why"], rows, classes)


def _reproduce(data: JSON) -> str:
    command = shlex.join(data["command"]) if data["command"] else "accel-dra conformance run ..."
    return (
        "<ol><li>Install accel-dra (the same version: "
        f"<code>{_e(data['version'])}</code>) on a machine with a cluster-admin kubeconfig.</li>"
        f"<li>Run: <pre>{_e(command)}</pre></li>"
        f"<li>The run works in a namespace of its own (<code>{_e(data['namespace'])}</code> here) and deletes it "
        "at the end. Each probe's manifests are under <code>results/probes/&lt;probe&gt;/manifests.yaml</code>; "
        "apply them to repeat one step by hand.</li>"
        f"<li>Vendor settings used (as <code>--vendor</code> saw them):<pre>{_e(_vendor_yaml(data['vendor']))}</pre></li></ol>"
    )


def _vendor_yaml(vendor: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(vendor), sort_keys=False)


def _probe(probe: JSON, excerpt: Sequence[str]) -> str:
    checks = _table(
        ["Check", "Outcome", "Message", "Details"],
        [
            [_e(c["name"]), _e(c["outcome"]), _e(c["message"]), "<br>".join(_e(d) for d in c["details"][:30])]
            for c in probe["checks"]
        ],
        [c["outcome"] for c in probe["checks"]],
    )
    where = (
        "results/advisory"
        if probe["advisory"]
        else (f"results/{probe['requirements'][0]}" if probe["requirements"] else "results")
    )
    files = "".join(f'<li><a href="{_e(f)}">{_e(f)}</a></li>' for f in probe["files"])
    outputs = "".join(
        f"<h4>Pod {_e(o['pod'])}, container {_e(o['container'])}</h4><pre>{_e(o['text'])}</pre>"
        for o in probe["outputs"]
    )
    label = "ADVISORY " if probe["advisory"] else ""
    strategies = _strategies(probe["data"].get("strategies") or [])
    return (
        f'<h3 id="{_e(probe["name"])}">{_e(probe["test"])} — {_e(probe["title"])} '
        f'<span class="{_e(probe["outcome"])}">{label}{_e(probe["outcome"].upper())}</span></h3>'
        f"<p>Requirements: {_e(', '.join(probe['requirements']) or ('none: advisory' if probe['advisory'] else 'none'))}. "
        f"{_e(probe['message'])} ({probe['durationSeconds']:.1f}s of {probe['timeoutSeconds']:g}s)</p>"
        f"{strategies}{checks}"
        f'<p class="small">Artifacts: <a href="{where}/junit.xml">{where}/junit.xml</a>, '
        f'<a href="{where}/results.json">{where}/results.json</a>, <a href="{where}/e2e.log">{where}/e2e.log</a>'
        f"</p>{f'<p class=small>Manifests and raw output:</p><ul class=small>{files}</ul>' if files else ''}"
        f"<h4>Log</h4><pre>{_e(chr(10).join(excerpt))}</pre>{outputs}"
    )


_STRATEGY_NAMES = {
    "TimeSlicing": "Time slicing",
    "Partitions": "Hardware partitions (MIG, partitionable devices)",
    "ConsumableCapacity": "Consumable capacity",
}


def _strategies(rows: Sequence[JSON]) -> str:
    """The sharing strategies a probe tried: which were shown and what showed them, or why not."""
    if not rows:
        return ""
    # Rows say "not offered" or "not shown (skipped)" themselves; older results only have the outcome.
    verdict = {"passed": "shown", "skipped": "not shown (skipped)", "failed": "FAILED"}
    body = [
        [
            _e(_STRATEGY_NAMES.get(r["strategy"], r["strategy"])),
            _e(r.get("verdict") or verdict[r["outcome"]]),
            _e(r["shown"]),
        ]
        for r in rows
    ]
    shown = [r["strategy"] for r in rows if r["outcome"] == "passed"]
    head = f"Sharing strategies shown: {', '.join(shown)}." if shown else "No sharing strategy was shown."
    table = _table(["Strategy", "Verdict", "What the run showed"], body, [r["outcome"] for r in rows])
    return f"<p><b>{_e(head)}</b></p>{table}"


def _devices(rows: Sequence[JSON]) -> str:
    if not rows:
        return "<p>No device table (the attribute-profile probe did not run).</p>"
    out = []
    for driver in sorted({r["driver"] for r in rows}):
        mine = [r for r in rows if r["driver"] == driver]
        body = [
            [
                f"<code>{_e(r['device'])}</code><br>{_e(r['node'] or '—')} / {_e(r['pool'])}",
                "<br>".join(f"{_e(k)}={_e(v)}" for k, v in r["attributes"].items()),
                "<br>".join(f"{_e(k)}={_e(v)}" for k, v in r["capacity"].items()),
                "<br>".join(_e(f) for f in r["findings"]) or "none",
            ]
            for r in mine
        ]
        classes = ["skipped" if r["findings"] else "" for r in mine]
        table = _table(
            ["Device (node / pool)", "Attributes", "Capacity", "Profile findings"], body, classes, "wide"
        )
        out.append(f"<h3>Driver <code>{_e(driver)}</code> ({len(mine)} devices)</h3>{table}")
    return "".join(out)


def report_html(data: JSON, warnings: Sequence[str], excerpts: Mapping[str, Sequence[str]]) -> str:
    vendor = data["vendor"]
    banner = (
        '<p class="banner">SANDBOX RUN: these results come from accel-dra\'s simulated cluster and GPUs. '
        "They show that the suite and the driver work together; they are not evidence about any platform.</p>"
        if data["sandbox"]
        else ""
    )
    devices: list[JSON] = next(
        (p["data"].get("devices", []) for p in data["probes"] if p["name"] == "attribute_profile"), []
    )
    checked = [p for p in data["probes"] if not p["advisory"]]
    advisory = [p for p in data["probes"] if p["advisory"]]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>AI conformance report — {_e(vendor["name"])}</title>
<style>{_CSS}</style></head><body>
{banner}
<h1>Kubernetes AI conformance {_e(data["checklist"]["kubernetesVersion"])}: {_e(vendor["name"])}</h1>
{_verdict(data)}
{f'<ul class="small">{"".join(f"<li>{_e(w)}</li>" for w in warnings)}</ul>' if warnings else ""}
<p class="small">Filled checklist: <a href="PRODUCT.yaml">PRODUCT.yaml</a> (from {_e(data["checklist"]["source"])});
data: <a href="results/summary.json">results/summary.json</a>; the whole run: <a href="results/run.log">results/run.log</a>.</p>
<h2>Platform</h2>{_platform(data)}
<h2>Requirements</h2>{_requirements(data)}
<h2>Steps to reproduce</h2>{_reproduce(data)}
<h2>Evidence per probe</h2>{"".join(_probe(p, excerpts.get(p["name"], ())) for p in checked)}
<h2>Advisory checks (not evidence for the checklist)</h2>
{"".join(_probe(p, excerpts.get(p["name"], ())) for p in advisory) or "<p>None ran.</p>"}
<h3>Devices and their attributes</h3>{_devices(devices)}
</body></html>
"""
