"""A ServiceMonitor endpoint as the Prometheus Operator turns it into a scrape config, for a real Prometheus.

No Operator runs here, so this reproduces the part of its generated config that decides a series' labels
(``pkg/prometheus/promcfg.go``, ServiceMonitor with the ``endpoints`` role): keep the Service's selected
labels and the endpoint's port, then label the target with ``namespace``, ``service``, ``pod``,
``container``, ``job`` and ``endpoint`` from Kubernetes service discovery, then the endpoint's own
``relabelings``; ``honorLabels`` becomes ``honor_labels``. The discovered target is a static target carrying
the ``__meta_kubernetes_*`` labels Kubernetes discovery would give it, so relabeling sees what it would see
in a cluster. (The real Operator is exercised by the real-cluster tier.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

JSON = dict[str, Any]


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _relabel(rule: Mapping[str, Any]) -> JSON:
    """The Operator's camelCase RelabelConfig in Prometheus' snake_case."""
    keys = {
        "sourceLabels": "source_labels",
        "targetLabel": "target_label",
        "separator": "separator",
        "regex": "regex",
        "replacement": "replacement",
        "action": "action",
        "modulus": "modulus",
    }
    return {keys[k]: v for k, v in rule.items()}


def discovered(
    *, namespace: str, service: str, pod: str, container: str, node: str, port: str, labels: Mapping[str, str]
) -> dict[str, str]:
    """The ``__meta_kubernetes_*`` labels endpoints discovery gives a pod's port behind a Service."""
    meta = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_service_name": service,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_container_name": container,
        "__meta_kubernetes_pod_node_name": node,
        "__meta_kubernetes_endpoint_port_name": port,
        "__meta_kubernetes_endpoint_address_target_kind": "Pod",
        "__meta_kubernetes_endpoint_address_target_name": pod,
    }
    for key, value in labels.items():
        meta[f"__meta_kubernetes_service_label_{_sanitize(key)}"] = value
        meta[f"__meta_kubernetes_service_labelpresent_{_sanitize(key)}"] = "true"
    return meta


def scrape_config(
    monitor: Mapping[str, Any], endpoint: Mapping[str, Any], targets: list[tuple[str, Mapping[str, str]]]
) -> JSON:
    """A scrape config for ``endpoint`` of ``monitor`` over ``(address, discovered labels)`` targets."""
    relabelings: list[JSON] = [
        {
            "action": "keep",
            "source_labels": [
                f"__meta_kubernetes_service_label_{_sanitize(k)}",
                f"__meta_kubernetes_service_labelpresent_{_sanitize(k)}",
            ],
            "regex": f"({v});true",
        }
        for k, v in monitor["spec"]["selector"]["matchLabels"].items()
    ]
    relabelings += [
        {
            "action": "keep",
            "source_labels": ["__meta_kubernetes_endpoint_port_name"],
            "regex": endpoint["port"],
        },
        {
            "source_labels": [
                "__meta_kubernetes_endpoint_address_target_kind",
                "__meta_kubernetes_endpoint_address_target_name",
            ],
            "separator": ";",
            "regex": "Node;(.*)",
            "replacement": "${1}",
            "target_label": "node",
        },
        {
            "source_labels": [
                "__meta_kubernetes_endpoint_address_target_kind",
                "__meta_kubernetes_endpoint_address_target_name",
            ],
            "separator": ";",
            "regex": "Pod;(.*)",
            "replacement": "${1}",
            "target_label": "pod",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"},
        {"target_label": "endpoint", "replacement": endpoint["port"]},
    ]
    relabelings += [_relabel(r) for r in endpoint.get("relabelings", [])]
    config: JSON = {
        "job_name": f"serviceMonitor/{monitor['metadata']['namespace']}/{monitor['metadata']['name']}/{endpoint['port']}",
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "metrics_path": endpoint.get("path", "/metrics"),
        "static_configs": [{"targets": [address], "labels": dict(meta)} for address, meta in targets],
        "relabel_configs": relabelings,
    }
    if endpoint.get("metricRelabelings"):
        config["metric_relabel_configs"] = [_relabel(r) for r in endpoint["metricRelabelings"]]
    return config
