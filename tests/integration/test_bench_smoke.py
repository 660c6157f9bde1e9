"""The benchmark harness (hack/bench) still runs end to end and writes a complete result document.

Only the shape is checked: timings are judged by the bench itself, never by tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = {
    "prepare_1gpu",
    "prepare_8gpu",
    "claim_get",
    "churn",
    "batch",
    "start_to_slice",
    "steady_state",
    "health_change",
    "explain_scale",
}
TARGETS = {
    "prepare_1gpu_p50_over_floor",
    "prepare_1gpu_p99_over_floor",
    "unprepare_1gpu_p50_over_empty",
    "plugin_cpu_ms_per_prepare_unprepare",
    "prepare_1gpu_p50_ms",
    "churn_claims_per_s",
    "churn_rss_growth_mb",
    "batch_1000_prepare_s",
    "batch_1000_unprepare_s",
    "start_to_first_slice_s",
    "metrics_scrape_p50_ms",
    "exporter_cpu_percent",
    "plugin_rss_mb",
    "exporter_rss_mb",
    "api_writes_idle",
    "health_change_slice_updates",
    "explain_all_nodes_s",
    "explain_one_node_s",
}
LATENCY_KEYS = (
    "prepare_client_ms",
    "unprepare_client_ms",
    "prepare_plugin_ms",
    "unprepare_plugin_ms",
    "empty_call_client_ms",
    "empty_unprepare_client_ms",
    "claim_get_ms",
    "floor_ms",
)
RATIOS = {
    "prepare_p50_over_floor",
    "prepare_p99_over_floor_p99",
    "unprepare_p50_over_empty_unprepare",
    "unprepare_p50_over_empty_prepare",
}


def _distribution(d: dict[str, object]) -> None:
    for key in ("p50", "p90", "p99", "max"):
        assert isinstance(d[key], int | float), (key, d)
    assert d["p50"] <= d["p90"] <= d["p99"] <= d["max"]  # type: ignore[operator]


@pytest.mark.slow
def test_smoke_run_writes_every_metric(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(
        "# before\n<!-- bench:prepare-ratios begin -->\nold\n<!-- bench:prepare-ratios end -->\nafter\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "hack" / "bench" / "run.py"),
            "--smoke",
            "--out",
            str(tmp_path),
            "--baseline",
            "HEAD",
            "--doc",
            str(doc),
        ],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    (path,) = [p for p in tmp_path.glob("*-smoke.json") if p.name != "latest-smoke.json"]
    document = json.loads(path.read_text())
    assert json.loads((tmp_path / "latest-smoke.json").read_text()) == document
    assert document["mode"] == "smoke"
    assert {"cpus", "cpu_model", "python", "kernel"} <= set(document["machine"])
    results = document["results"]
    assert set(results) == SCENARIOS

    for name in ("prepare_1gpu", "prepare_8gpu"):
        r = results[name]
        for key in LATENCY_KEYS:
            assert r[key]["runs"] == 1
            assert r[key]["p50_spread"][0] <= r[key]["p50"] <= r[key]["p50_spread"][1]
            _distribution(r["per_run"][0][key])
            assert r["per_run"][0][key]["n"] == r["calls_per_run"], key
        assert set(r["ratios"]) == RATIOS and all(v["median"] > 0 for v in r["ratios"].values())
        assert r["plugin_cpu_ms_per_pair"]["median"] > 0
        # --baseline: the same measurement with HEAD's plugin, alternating run by run.
        (base,) = set(r["trees"]) - {"current"}
        assert r["trees"][base]["tree"]["commit"] == head
        assert "/trees/tree-" in r["trees"][base]["tree"]["package"], "the baseline plugin runs HEAD's code"
        assert r["trees"][base]["per_run"][0]["tree"] == base
        assert set(r["trees"][base]["ratios"]) == RATIOS
    _distribution(results["claim_get"])
    churn = results["churn"]
    assert churn["claims"] == 16 and churn["claims_per_s"] > 0 and churn["rss_series"]
    batch = results["batch"]
    assert batch["claims"] == 8 and batch["prepare_s"] > 0 and batch["unprepare_s"] > 0
    assert results["start_to_slice"]["gpus"] == 8 and results["start_to_slice"]["seconds"]["values"]
    steady = results["steady_state"]
    # Two pods per whole GPU, one per MIG device.
    assert steady["attributed_pods"] == 23 and steady["profile"] == "dgx-h100-mig"
    assert steady["rss_mb"]["plugin"] > 0 and steady["rss_mb"]["exporter"] > 0
    assert isinstance(steady["api_writes_idle"], int)
    _distribution(steady["scrape_fresh_ms"])
    health = results["health_change"]
    assert health["measurable"] is False or health["slice_updates"] >= 1
    explained = results["explain_scale"]
    assert explained["nodes"] == 20 and explained["gpus"] == 160
    assert set(explained["seconds"]) == {
        "all_nodes_json",
        "one_node_json",
        "all_nodes_verbose_json",
        "all_nodes_json_output",
        "all_nodes_yaml",
        "one_node_yaml",
    }
    assert explained["summary"][:2] == ["Claims: default/two-big-gpus", "Nodes tried: 20"]
    assert set(explained["cel_us_per_evaluation"]) == {
        "no_lookup",
        "one_lookup",
        "four_lookups",
        "four_reads_one_lookup",
    }

    judged = {t["id"]: t for t in document["targets"]}
    assert set(judged) == TARGETS
    for target in judged.values():
        assert target["value"] is None or isinstance(target["value"], int | float), target
        assert target["met"] in (True, False, None)
    assert "prepare_1gpu_p50_over_floor" in done.stdout  # the table is printed
    text = doc.read_text()
    assert text.startswith("# before\n<!-- bench:prepare-ratios begin -->\nRun of ")
    assert text.endswith("<!-- bench:prepare-ratios end -->\nafter\n") and "\nold\n" not in text
    assert "| prepare p50 / floor |" in text and "`base-" in text
