"""Summaries of timing samples: percentiles within a run, medians and spread across runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

PERCENTILES = ("p50", "p90", "p99", "max")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def distribution(samples_ms: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of one run, in milliseconds, plus the sample count."""
    values = sorted(samples_ms)
    out = {name: round(percentile(values, q), 3) for name, q in (("p50", 50), ("p90", 90), ("p99", 99))}
    out["max"] = round(values[-1], 3)
    out["mean"] = round(statistics.fmean(values), 3)
    out["n"] = len(values)
    return out


def across_runs(runs: Sequence[Mapping[str, float]], keys: Sequence[str] = PERCENTILES) -> dict[str, object]:
    """For each key: the median over runs and the spread (min, max) -- the headline and its stability."""
    out: dict[str, object] = {"runs": len(runs)}
    for key in keys:
        values = [float(r[key]) for r in runs]
        out[key] = round(statistics.median(values), 3)
        out[f"{key}_spread"] = [round(min(values), 3), round(max(values), 3)]
    return out


def scalar_runs(values: Sequence[float], digits: int = 3) -> dict[str, object]:
    """One figure measured once per run: median, spread and every value."""
    return {
        "median": round(statistics.median(values), digits),
        "spread": [round(min(values), digits), round(max(values), digits)],
        "values": [round(v, digits) for v in values],
    }


def slope_per_1000(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs``, per 1000 units of x (e.g. MB per 1000 claims)."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
