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
    op: str  # "<=", ">=", "=="
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


TARGETS: tuple[Target, ...] = (
    Target(
        "prepare_1gpu_p50_ms",
        "NodePrepareResources 1 claim / 1 GPU, p50 (kubelet side, incl. claim GET, fsync, CDI write)",
        "ms",
        "<=",
        3.0,
        lambda r: _get(r, "prepare_1gpu", "prepare_client_ms", "p50"),
    ),
    Target(
        "prepare_1gpu_p99_ms",
        "NodePrepareResources 1 claim / 1 GPU, p99",
        "ms",
        "<=",
        10.0,
        lambda r: _get(r, "prepare_1gpu", "prepare_client_ms", "p99"),
    ),
    Target(
        "churn_claims_per_s",
        "prepare+unprepare churn, sequential",
        "claims/s",
        ">=",
        300.0,
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
        1.5,
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
    Target("plugin_rss_mb", "plugin RSS (largest seen)", "MB", "<=", 80.0, _plugin_rss),
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
        met = None if value is None else _OPS[t.op](float(value), t.limit)
        out.append(
            {
                "id": t.id,
                "what": t.what,
                "unit": t.unit,
                "target": f"{t.op} {t.limit:g}",
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
