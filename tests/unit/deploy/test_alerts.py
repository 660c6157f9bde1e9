"""The chart's GPU alerts (PrometheusRule group accel-dra-gpus), by ``promtool test rules``.

The rule file is the chart's own render; the input series carry the labels the exporter writes (identity,
``accel_dra_gpu_info`` with the node) and the target labels a ServiceMonitor scrape adds. Each alert is shown
to fire on its fault, with the node and GPU in its labels, and not on a healthy node.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chart import find, helm_missing, render

pytestmark = [
    pytest.mark.skipif(bool(helm_missing()), reason=helm_missing() or ""),
    pytest.mark.skipif(
        shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
    ),
]

NODE = "node-a"
TARGET = {
    "job": "accel-dra-metrics",
    "endpoint": "metrics",
    "instance": "10.0.0.5:9400",
    "service": "accel-dra-metrics",
}
GPU = {
    "hw_id": "gpu-0000-18-00-0",
    "uuid": "GPU-aaaa",
    "pci_bus_id": "0000:18:00.0",
    "hw_model": "H100",
    "hw_vendor": "NVIDIA",
}
OTHER = {
    "hw_id": "gpu-0000-2a-00-0",
    "uuid": "GPU-bbbb",
    "pci_bus_id": "0000:2a:00.0",
    "hw_model": "H100",
    "hw_vendor": "NVIDIA",
}
ALERT_LABELS = {"k8s_node_name": NODE, "hw_id": GPU["hw_id"], "uuid": GPU["uuid"]}


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    body = ", ".join(f'{k}="{v}"' for k, v in sorted({**TARGET, **labels}.items()))
    return {"series": f"{name}{{{body}}}", "values": values}


def healthy(minutes: int = 70) -> list[dict[str, str]]:
    """Two GPUs on one node, all well, for ``minutes`` minutes (one sample a minute)."""
    out = []
    for gpu in (GPU, OTHER):
        info = {**gpu, "hw_type": "gpu", "k8s_node_name": NODE, "mig_mode": "disabled"}
        out.append(series("accel_dra_gpu_info", info, f"1x{minutes}"))
        for state in ("ok", "failed"):
            out.append(
                series(
                    "hw_status",
                    {**gpu, "hw_type": "gpu", "hw_state": state},
                    f"{int(state == 'ok')}x{minutes}",
                )
            )
        out.append(
            series(
                "hw_temperature_celsius",
                {**gpu, "hw_type": "gpu", "hw_sensor_location": "gpu"},
                f"60x{minutes}",
            )
        )
        out.append(series("accel_dra_gpu_memory_row_remap_failed", gpu, f"0x{minutes}"))
        out.append(series("accel_dra_gpu_xid_errors_total", {**gpu, "xid": "13"}, f"0x{minutes}"))
    out.append(
        series(
            "accel_dra_exporter_info",
            {"k8s_node_name": NODE, "version": "0.1.0", "backend": "nvml"},
            f"1x{minutes}",
        )
    )
    out.append(series("accel_dra_exporter_last_sample_timestamp_seconds", {}, f"0+60x{minutes}"))
    out.append(series("accel_dra_exporter_samples_total", {}, f"0+60x{minutes}"))
    out.append(series("accel_dra_exporter_pod_resources_up", {}, f"1x{minutes}"))
    out.append(series("up", {}, f"1x{minutes}"))
    return out


def replace(
    inputs: list[dict[str, str]], name: str, labels: dict[str, str], values: str
) -> list[dict[str, str]]:
    wanted = series(name, labels, values)
    return [s for s in inputs if s["series"] != wanted["series"]] + [wanted]


def rendered_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    objects = render({"metrics": {"prometheusRule": {"enabled": True, "alerts": values or {}}}})
    groups: list[dict[str, Any]] = find(objects, "PrometheusRule")["spec"]["groups"]
    return groups


def alert(name: str, severity: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"exp_labels": {"alertname": name, "severity": severity, **labels}}


def run(
    tmp_path: Path,
    inputs: list[dict[str, str]],
    tests: list[dict[str, Any]],
    values: dict[str, Any] | None = None,
    *,
    annotations: bool = False,
) -> None:
    """promtool over the rendered group; annotations are left out unless the test checks them."""
    groups = rendered_groups(values)
    if not annotations:
        for group in groups:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    rules = tmp_path / "alerts.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    check = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    spec = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": inputs, "alert_rule_test": tests}],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr


NAMES = [
    "AccelDraGPUFailed",
    "AccelDraGPUsMissing",
    "AccelDraGPUXidErrors",
    "AccelDraGPUUncorrectedECCErrors",
    "AccelDraGPURowRemapFailed",
    "AccelDraGPURowRemapPending",
    "AccelDraGPUTemperatureHigh",
    "AccelDraGPUMemoryTemperatureHigh",
    "AccelDraExporterSamplerStalled",
    "AccelDraExporterDown",
    "AccelDraPodResourcesUnavailable",
]


def test_a_healthy_node_raises_nothing(tmp_path: Path) -> None:
    run(
        tmp_path,
        healthy(),
        [{"eval_time": f"{m}m", "alertname": n, "exp_alerts": []} for n in NAMES for m in (10, 69)],
    )


def test_a_failed_gpu(tmp_path: Path) -> None:
    (rule,) = [r for r in rendered_groups()[0]["rules"] if r["alert"] == "AccelDraGPUFailed"]
    description = rule["annotations"]["description"]
    inputs = replace(healthy(), "hw_status", {**GPU, "hw_type": "gpu", "hw_state": "failed"}, "0x9 1x20")
    inputs = replace(inputs, "hw_status", {**GPU, "hw_type": "gpu", "hw_state": "ok"}, "1x9 0x20")
    run(
        tmp_path,
        inputs,
        [
            {"eval_time": "10m", "alertname": "AccelDraGPUFailed", "exp_alerts": []},  # pending for 2m
            {
                "eval_time": "13m",
                "alertname": "AccelDraGPUFailed",
                "exp_alerts": [
                    alert("AccelDraGPUFailed", "critical", ALERT_LABELS)
                    | {
                        "exp_annotations": {
                            "summary": f"GPU {GPU['hw_id']} on {NODE} has failed",
                            "description": description,
                        }
                    }
                ],
            },
        ],
        annotations=True,
    )


def test_a_gpu_missing_after_a_restart(tmp_path: Path) -> None:
    info = {**OTHER, "hw_type": "gpu", "k8s_node_name": NODE, "mig_mode": "disabled"}
    inputs = replace(healthy(), "accel_dra_gpu_info", info, "1x40 _x30")
    run(
        tmp_path,
        inputs,
        [
            # Gone from the scrape at 41m, stale after Prometheus' 5 minute lookback, then 5 minutes pending.
            {"eval_time": "50m", "alertname": "AccelDraGPUsMissing", "exp_alerts": []},
            {
                "eval_time": "56m",
                "alertname": "AccelDraGPUsMissing",
                "exp_alerts": [alert("AccelDraGPUsMissing", "critical", {"k8s_node_name": NODE})],
            },
        ],
    )


def test_xids_uncorrected_errors_and_row_remapping(tmp_path: Path) -> None:
    inputs = replace(healthy(), "accel_dra_gpu_xid_errors_total", {**GPU, "xid": "13"}, "0x10 2x60")
    inputs.append(series("accel_dra_gpu_xid_errors_total", {**GPU, "xid": "79"}, "_x20 1x50"))
    inputs.append(
        series("hw_errors_total", {**GPU, "hw_type": "gpu", "error_type": "uncorrected"}, "0x30 3x40")
    )
    inputs = replace(inputs, "accel_dra_gpu_memory_row_remap_failed", GPU, "0x50 1x20")
    inputs.append(series("accel_dra_gpu_memory_row_remap_pending", GPU, "0x5 1x65"))
    run(
        tmp_path,
        inputs,
        [
            {
                "eval_time": "12m",
                "alertname": "AccelDraGPUXidErrors",
                "exp_alerts": [alert("AccelDraGPUXidErrors", "warning", {**ALERT_LABELS, "xid": "13"})],
            },
            {
                # The first event of a new code: its series appears at 1, which increase() cannot see.
                "eval_time": "25m",
                "alertname": "AccelDraGPUXidErrors",
                "exp_alerts": [alert("AccelDraGPUXidErrors", "warning", {**ALERT_LABELS, "xid": "79"})],
            },
            {"eval_time": "35m", "alertname": "AccelDraGPUXidErrors", "exp_alerts": []},
            {
                "eval_time": "32m",
                "alertname": "AccelDraGPUUncorrectedECCErrors",
                "exp_alerts": [alert("AccelDraGPUUncorrectedECCErrors", "critical", ALERT_LABELS)],
            },
            {
                "eval_time": "51m",
                "alertname": "AccelDraGPURowRemapFailed",
                "exp_alerts": [alert("AccelDraGPURowRemapFailed", "critical", ALERT_LABELS)],
            },
            {"eval_time": "15m", "alertname": "AccelDraGPURowRemapPending", "exp_alerts": []},
            {
                "eval_time": "25m",
                "alertname": "AccelDraGPURowRemapPending",
                "exp_alerts": [alert("AccelDraGPURowRemapPending", "warning", ALERT_LABELS)],
            },
        ],
    )


def test_xids_counted_before_prometheus_started_raise_nothing(tmp_path: Path) -> None:
    """Series that exist from Prometheus' first scrape on are not new events (the exporter was not scraped
    ten minutes earlier)."""
    inputs = replace(healthy(), "accel_dra_gpu_xid_errors_total", {**GPU, "xid": "13"}, "4x70")
    run(
        tmp_path,
        inputs,
        [{"eval_time": f"{m}m", "alertname": "AccelDraGPUXidErrors", "exp_alerts": []} for m in (1, 5, 12)],
    )


def test_temperature_thresholds_come_from_the_values(tmp_path: Path) -> None:
    inputs = replace(
        healthy(),
        "hw_temperature_celsius",
        {**GPU, "hw_type": "gpu", "hw_sensor_location": "gpu"},
        "60x10 80x60",
    )
    inputs.append(
        series(
            "hw_temperature_celsius", {**GPU, "hw_type": "gpu", "hw_sensor_location": "memory"}, "70x10 99x60"
        )
    )
    high = alert("AccelDraGPUTemperatureHigh", "warning", ALERT_LABELS)
    run(
        tmp_path,
        inputs,
        [
            {"eval_time": "20m", "alertname": "AccelDraGPUTemperatureHigh", "exp_alerts": []},  # 80 < 85
            {
                "eval_time": "20m",
                "alertname": "AccelDraGPUMemoryTemperatureHigh",
                "exp_alerts": [alert("AccelDraGPUMemoryTemperatureHigh", "warning", ALERT_LABELS)],
            },
        ],
    )
    run(
        tmp_path,
        inputs,
        [{"eval_time": "20m", "alertname": "AccelDraGPUTemperatureHigh", "exp_alerts": [high]}],
        {"temperatureCelsius": 75},
    )


def test_the_exporter_stalled_down_or_without_the_kubelet(tmp_path: Path) -> None:
    inputs = replace(healthy(), "accel_dra_exporter_last_sample_timestamp_seconds", {}, "0+60x10 600x60")
    inputs = replace(inputs, "up", {}, "1x30 0x40")
    inputs = replace(inputs, "accel_dra_exporter_pod_resources_up", {}, "1x50 0x20")
    run(
        tmp_path,
        inputs,
        [
            {"eval_time": "12m", "alertname": "AccelDraExporterSamplerStalled", "exp_alerts": []},
            {
                "eval_time": "14m",
                "alertname": "AccelDraExporterSamplerStalled",
                "exp_alerts": [
                    alert(
                        "AccelDraExporterSamplerStalled",
                        "warning",
                        {"instance": TARGET["instance"], "k8s_node_name": NODE},
                    )
                ],
            },
            {
                "eval_time": "36m",
                "alertname": "AccelDraExporterDown",
                "exp_alerts": [alert("AccelDraExporterDown", "warning", TARGET)],
            },
            {
                "eval_time": "56m",
                "alertname": "AccelDraPodResourcesUnavailable",
                "exp_alerts": [alert("AccelDraPodResourcesUnavailable", "warning", TARGET)],
            },
        ],
    )
