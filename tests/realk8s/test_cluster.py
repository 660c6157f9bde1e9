"""The test cluster itself: the release it claims to be, TLS to kubelets, and nothing outside loopback."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.realk8s import ROOT, Cluster, foreign_sockets

pytestmark = pytest.mark.realk8s


def pinned_release() -> str:
    text = (ROOT / "hack" / "realk8s" / "go.mod").read_text()
    match = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes (v\S+)$", text, re.MULTILINE)
    assert match, "hack/realk8s/go.mod requires no k8s.io/kubernetes"
    return match.group(1)


def test_every_component_reports_the_release_it_was_built_from(realk8s: Cluster) -> None:
    version = realk8s.get("/version") or {}
    assert version["gitVersion"] == realk8s.version
    assert (version["major"], version["minor"]) == ("1", str(realk8s.minor))
    for name in realk8s.nodes:
        node = realk8s.get(f"/api/v1/nodes/{name}") or {}
        assert node["status"]["nodeInfo"]["kubeletVersion"] == realk8s.version


def test_the_default_build_is_the_pinned_release(realk8s: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBE_VERSION", raising=False)
    located = subprocess.run(
        [str(ROOT / "hack" / "realk8s" / "build.sh"), "--locate"], capture_output=True, text=True, check=False
    )
    if located.returncode != 0:
        pytest.skip("the pinned release is not built (KUBE_VERSION chose another one)")
    assert Path(located.stdout.strip()).parent.name.startswith(pinned_release() + "-")


@pytest.mark.parametrize("node", ["node-1", "node-2"])
def test_the_api_server_reaches_each_kubelet_over_verified_tls(realk8s: Cluster, node: str) -> None:
    """The node proxy goes API server -> egress proxy -> the kubelet's HTTPS port, with the kubelet's
    certificate verified and the API server authenticated and authorized by the kubelet."""
    with realk8s.admin_open(f"/api/v1/nodes/{node}/proxy/healthz") as response:
        assert response.read() == b"ok"


def test_no_component_has_a_socket_outside_loopback(realk8s: Cluster) -> None:
    pids = [c.pid for c in realk8s.components.values() if c.pid is not None]
    assert len(pids) == len(realk8s.components), "a component is not running"
    assert foreign_sockets(pids) == []


SWAGGER_FIELDS = {
    "swagger", "info", "host", "basePath", "schemes", "consumes", "produces", "paths", "definitions",
    "parameters", "responses", "securityDefinitions", "security", "tags", "externalDocs",
}  # fmt: skip
OPENAPI3_FIELDS = {
    "openapi", "info", "jsonSchemaDialect", "servers", "paths", "webhooks", "components", "security", "tags",
    "externalDocs",
}  # fmt: skip


def fields(document: dict[str, object]) -> set[str]:
    return {k for k in document if not k.startswith("x-")}


def test_openapi_documents_are_well_formed(realk8s: Cluster) -> None:
    """A toolchain newer than the release's serialised struct internals into the OpenAPI documents (a
    top-level ``Extensions``), which breaks ``kubectl apply``'s client-side validation."""
    v2 = realk8s.get("/openapi/v2") or {}
    assert fields(v2) <= SWAGGER_FIELDS
    assert "io.k8s.api.resource.v1.ResourceSlice" in v2["definitions"]
    v3 = realk8s.get("/openapi/v3/apis/resource.k8s.io/v1") or {}
    assert fields(v3) <= OPENAPI3_FIELDS
    schema = v3["components"]["schemas"]["io.k8s.api.resource.v1.ResourceSliceSpec"]
    assert {"driver", "pool", "devices"} <= set(schema["properties"])
