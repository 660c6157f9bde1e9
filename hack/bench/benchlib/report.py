"""The targets of docs/performance.md (from the design's table), judged against one run's results."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]

# Churn "RSS flat": what 10 000 claims may add after the first tenth (allocator and cache settling).
RSS_FLAT_MB = 2.0


@dataclass(frozen=True)
class Target:
    id: str
    what: str
    unit: str
    op: str  # "<=", ">=", "==", or "report" (no limit)
    limit: float
    value: Callable[[JSON], float | None]


def _get(results: JSON, *path: str) -> Any:
    value: Any = results
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _max(*values: Any) -> float | None:
    found = [float(v) for v in values if v is not None]
    return max(found) if found else None


def _plugin_rss(r: JSON) -> float | None:
    return _max(
        _get(r, "steady_state", "rss_mb", "plugin"),
        _get(r, "prepare_1gpu", "plugin_rss_mb", "median"),
        _get(r, "prepare_8gpu", "plugin_rss_mb", "median"),
        _get(r, "churn", "rss_mb_last"),
    )


def _ratio(scenario: str, key: str) -> Callable[[JSON], float | None]:
    return lambda r: _get(r, scenario, "ratios", key, "median")


#: Targets without a limit of their own (``op`` "report"): shown and recorded, never judged.
TARGETS: tuple[Target, ...] = (
    Target(
        "prepare_1gpu_p50_over_floor",
        "NodePrepareResources 1 claim / 1 GPU, p50 over the floor (empty round trip p50 + claim GET p50), "
        "interleaved in the same run, median of runs",
        "x",
        "<=",
        1.3,
        _ratio("prepare_1gpu", "prepare_p50_over_floor"),
    ),
    Target(
        "prepare_1gpu_p99_over_floor",
        "the same, p99 over the floor's p99 (sample by sample: empty round trip + claim GET)",
        "x",
        "report",
        0.0,
        _ratio("prepare_1gpu", "prepare_p99_over_floor_p99"),
    ),
    Target(
        "unprepare_1gpu_p50_over_empty",
        "NodeUnprepareResources 1 claim, p50 over an empty NodeUnprepareResources round trip, same run",
        "x",
        "<=",
        1.3,
        _ratio("prepare_1gpu", "unprepare_p50_over_empty_unprepare"),
    ),
    Target(
        "plugin_cpu_ms_per_prepare_unprepare",
        "plugin CPU per prepare + unprepare of 1 claim / 1 GPU, its status PATCH included (NVIDIA's plugin "
        "is the limit where it can run beside it)",
        "ms",
        "report",
        0.0,
        lambda r: _get(r, "prepare_1gpu", "plugin_cpu_ms_per_pair", "median"),
    ),
    Target(
        "prepare_1gpu_p50_ms",
        "NodePrepareResources 1 claim / 1 GPU, p50, kubelet side (absolute: varies with the machine)",
        "ms",
        "report",
        0.0,
        lambda r: _get(r, "prepare_1gpu", "prepare_client_ms", "p50"),
    ),
    Target(
        "churn_claims_per_s",
        "prepare+unprepare churn, sequential",
        "claims/s",
        "report",
        0.0,
        lambda r: _get(r, "churn", "claims_per_s"),
    ),
    Target(
        "churn_rss_growth_mb",
        f"plugin RSS growth over the churn after its first tenth (flat: <= {RSS_FLAT_MB:g} MB)",
        "MB",
        "<=",
        RSS_FLAT_MB,
        lambda r: _get(r, "churn", "rss_growth_mb_after_first_tenth"),
    ),
    Target(
        "batch_1000_prepare_s",
        "1,000 claims in one NodePrepareResources (kubelet deadline 45 s; well inside: a third)",
        "s",
        "<=",
        15.0,
        lambda r: _get(r, "batch", "prepare_s") if _get(r, "batch", "claims") == 1000 else None,
    ),
    Target(
        "batch_1000_unprepare_s",
        "the same 1,000 claims in one NodeUnprepareResources",
        "s",
        "<=",
        15.0,
        lambda r: _get(r, "batch", "unprepare_s") if _get(r, "batch", "claims") == 1000 else None,
    ),
    Target(
        "start_to_first_slice_s",
        "process start -> first ResourceSlice published (8 GPUs), median",
        "s",
        "<=",
        0.5,
        lambda r: _get(r, "start_to_slice", "seconds", "median"),
    ),
    Target(
        "metrics_scrape_p50_ms",
        "/metrics, 8 GPUs (2 in MIG mode, 11 MIG devices), 23 attributed pods, freshly rendered, p50",
        "ms",
        "<=",
        5.0,
        lambda r: _get(r, "steady_state", "scrape_fresh_ms", "p50"),
    ),
    Target(
        "exporter_cpu_percent",
        "exporter CPU at 1 s sampling interval (sampler, watches; no scrapes), % of one core",
        "%",
        "<=",
        2.0,
        lambda r: _get(r, "steady_state", "exporter_cpu_percent_of_core_idle"),
    ),
    Target("plugin_rss_mb", "plugin RSS (largest seen)", "MB", "<=", 60.0, _plugin_rss),
    Target(
        "exporter_rss_mb",
        "exporter RSS (steady state)",
        "MB",
        "<=",
        60.0,
        lambda r: _get(r, "steady_state", "rss_mb", "exporter"),
    ),
    Target(
        "api_writes_idle",
        "API writes while idle (plugin + exporter)",
        "writes",
        "==",
        0.0,
        lambda r: _get(r, "steady_state", "api_writes_idle"),
    ),
    Target(
        "explain_all_nodes_s",
        "accel-dra explain, whole dump (5,000 nodes x 8 GPUs, kubectl -o json) explained for every node, summary",
        "s",
        "<=",
        3.0,
        lambda r: _get(r, "explain_scale", "seconds", "all_nodes_json"),
    ),
    Target(
        "explain_one_node_s",
        "accel-dra explain --node, the same dump",
        "s",
        "<=",
        1.0,
        lambda r: _get(r, "explain_scale", "seconds", "one_node_json"),
    ),
    Target(
        "health_change_slice_updates",
        "slice updates after one device health change",
        "updates",
        "==",
        1.0,
        lambda r: _get(r, "health_change", "slice_updates"),
    ),
)

_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}


def judge(results: JSON) -> list[JSON]:
    """Every target with its measured value and whether it holds (``None`` when not measured)."""
    out: list[JSON] = []
    for t in TARGETS:
        value = t.value(results)
        met = None if value is None or t.op == "report" else _OPS[t.op](float(value), t.limit)
        out.append(
            {
                "id": t.id,
                "what": t.what,
                "unit": t.unit,
                "target": "-" if t.op == "report" else f"{t.op} {t.limit:g}",
                "value": value,
                "met": met,
            }
        )
    return out


def table(judged: list[JSON]) -> str:
    """A plain-text table for the terminal."""
    rows = [("target", "value", "limit", "ok")]
    for j in judged:
        value = "n/a" if j["value"] is None else f"{j['value']:g} {j['unit']}"
        ok = "-" if j["met"] is None else ("yes" if j["met"] else "NO")
        rows.append((j["id"], value, j["target"], ok))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


# -- the generated part of docs/performance.md ------------------------------------------------------------

DOC_BEGIN = "<!-- bench:prepare-ratios begin -->"
DOC_END = "<!-- bench:prepare-ratios end -->"
_DOC_TARGETS = (
    "prepare_1gpu_p50_over_floor",
    "prepare_1gpu_p99_over_floor",
    "unprepare_1gpu_p50_over_empty",
    "plugin_cpu_ms_per_prepare_unprepare",
    "plugin_rss_mb",
    "churn_rss_growth_mb",
    "start_to_first_slice_s",
)
#: (label, key in a prepare summary, path inside it) of the per-tree comparison rows.
_TREE_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("prepare p50, ms", ("prepare_client_ms", "p50")),
    ("prepare p99, ms", ("prepare_client_ms", "p99")),
    ("unprepare p50, ms", ("unprepare_client_ms", "p50")),
    ("floor p50 (empty prepare + claim GET), ms", ("floor_ms", "p50")),
    ("empty unprepare p50, ms", ("empty_unprepare_client_ms", "p50")),
    ("prepare p50 / floor", ("ratios", "prepare_p50_over_floor", "median")),
    ("prepare p99 / floor p99", ("ratios", "prepare_p99_over_floor_p99", "median")),
    ("unprepare p50 / empty unprepare", ("ratios", "unprepare_p50_over_empty_unprepare", "median")),
    ("unprepare p50 / empty prepare", ("ratios", "unprepare_p50_over_empty_prepare", "median")),
    ("plugin CPU per prepare+unprepare, ms", ("plugin_cpu_ms_per_pair", "median")),
    ("plugin RSS, MB", ("plugin_rss_mb", "median")),
)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:g}"


def doc_section(document: JSON, result_file: str) -> str:
    """Markdown for the prepare ratios of one run (and the per-tree comparison of ``--baseline``)."""
    results = document["results"]
    git = document["git"]
    lines = [
        f"Run of {document['started']} (`{document['mode']}`, `{git['commit'][:7]}`"
        f"{', dirty' if git['dirty'] else ''}, `{result_file}`), load average at the end "
        f"{document['loadavg_at_end'][0]:.1f} on {document['machine']['cpus']} cores:",
        "",
        "| target | limit | value | met |",
        "|---|---|---|---|",
    ]
    judged = {t["id"]: t for t in document["targets"]}
    for key in _DOC_TARGETS:
        t = judged[key]
        met = "—" if t["met"] is None else ("yes" if t["met"] else "no")
        value = "n/a" if t["value"] is None else f"{t['value']:g} {t['unit']}"
        lines.append(f"| {t['what']} | {t['target'].replace('-', '—')} | {value} | {met} |")
    for scenario in ("prepare_1gpu", "prepare_8gpu"):
        trees = _get(results, scenario, "trees")
        if not trees:
            continue
        labels = list(trees)
        lines += [
            "",
            f"`{scenario}`, runs alternating between the trees in this run "
            + ", ".join(f"`{label}` = {trees[label]['tree']['commit'][:12]}" for label in labels)
            + " (medians over runs):",
            "",
            "| figure | "
            + " | ".join(f"`{label}`" for label in labels)
            + f" | `{labels[0]}` / `{labels[1]}` |",
            "|---|" + "---|" * (len(labels) + 1),
        ]
        for label, path in _TREE_ROWS:
            values = [_get(trees[tree], *path) for tree in labels]
            change = (
                f"{values[0] / values[1]:.2f}"
                if values[0] is not None and values[1] not in (None, 0)
                else "—"
            )
            lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in values) + f" | {change} |")
    return "\n".join(lines) + "\n"


def write_doc(path: Any, document: JSON, result_file: str) -> None:
    """Replace the lines between :data:`DOC_BEGIN` and :data:`DOC_END` in ``path`` with this run's section."""
    text = path.read_text()
    begin, end = text.index(DOC_BEGIN), text.index(DOC_END)
    head = text[: begin + len(DOC_BEGIN)]
    path.write_text(head + "\n" + doc_section(document, result_file) + text[end:])
