"""The kustomize manifests (deploy/), built by the kustomize built into kubectl.

The overlays must produce the chart's objects (default: the default render, fake: the render with
charts/accel-dra/ci/fake-values.yaml), object for object, apart from Helm's own labels and the Namespace the
overlay adds. deploy/base is generated from the chart by hack/render-kustomize.sh. Skipped with the reason when
kubectl is missing; the comparison with the chart also needs helm-python-sdk (the ``chart`` extra).
"""

from __future__ import annotations

import difflib
from typing import Any

import pytest
import yaml

from tests.support.chart import (
    CHART,
    DEPLOY,
    by_key,
    find,
    helm_missing,
    kustomize,
    kustomize_missing,
    load_values,
    render,
    without_helm_labels,
)
from tests.support.deploy_checks import check_admission_policy, check_daemonset, check_rbac, schema_errors

pytestmark = pytest.mark.skipif(bool(kustomize_missing()), reason=kustomize_missing() or "")
needs_helm = pytest.mark.skipif(bool(helm_missing()), reason=helm_missing() or "")

OVERLAYS = {"default": {}, "fake": load_values(CHART / "ci" / "fake-values.yaml")}


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(DEPLOY / "overlays" / name) for name in OVERLAYS}


def without_namespace_object(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] != "Namespace"]


def diff(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    lines = difflib.unified_diff(
        yaml.safe_dump(expected, sort_keys=True).splitlines(),
        yaml.safe_dump(actual, sort_keys=True).splitlines(),
        "chart",
        "kustomize",
        lineterm="",
    )
    return "\n".join(lines)


@needs_helm
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_produces_the_charts_objects(built: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    chart = by_key(without_helm_labels(o) for o in render(OVERLAYS[overlay]))
    kust = by_key(without_namespace_object(built[overlay]))
    assert sorted(kust) == sorted(chart), "run hack/render-kustomize.sh after changing the chart"
    for key, expected in chart.items():
        assert kust[key] == expected, (
            f"{key} differs (run hack/render-kustomize.sh?):\n{diff(expected, kust[key])}"
        )


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_objects_validate_against_the_kubernetes_schemas(
    built: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    assert schema_errors(built[overlay]) == []


def test_namespace_allows_privileged_pods(built: dict[str, list[dict[str, Any]]]) -> None:
    for objects in built.values():
        namespace = find(objects, "Namespace", "accel-dra")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
        namespaced = [o for o in objects if "namespace" in o["metadata"]]
        assert namespaced and {o["metadata"]["namespace"] for o in namespaced} == {"accel-dra"}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_invariants(built: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = built[overlay]
    check_rbac(
        objects, prefix="accel-dra", namespace="accel-dra", service_account="accel-dra", exporter_api=True
    )
    check_admission_policy(objects, namespace="accel-dra", service_account="accel-dra")
    check_daemonset(objects, driver="gpu.accel-dra.dev", image="accel-dra:0.1.0", fake=overlay == "fake")


def test_fake_overlay_changes_only_the_daemonset(built: dict[str, list[dict[str, Any]]]) -> None:
    default, fake = by_key(built["default"]), by_key(built["fake"])
    assert sorted(default) == sorted(fake)
    changed = [key for key in default if default[key] != fake[key]]
    assert changed == [("apps/v1", "DaemonSet", "accel-dra", "accel-dra")]
