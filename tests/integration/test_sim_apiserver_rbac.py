"""The sandbox API server authorises a service account with the RBAC objects applied to it, as a cluster does:
the chart's roles give the plugin and the exporter what they need, and nothing a role leaves out; the chart's
ValidatingAdmissionPolicy keeps the plugin to its own node's ResourceSlices."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from driver.kube.client import (
    NAMESPACES,
    NODES,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
    SERVICES,
    ApiError,
    KubeClient,
)
from driver.sim.admission import POLICIES, POLICY_BINDINGS
from driver.sim.apiserver import SimApiServer
from driver.sim.rbac import CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, ROLE_BINDINGS, ROLES, service_account

CHART_BASE = Path(__file__).resolve().parents[2] / "deploy" / "base" / "accel-dra.yaml"
RBAC_KINDS = {
    "ClusterRole": CLUSTER_ROLES,
    "ClusterRoleBinding": CLUSTER_ROLE_BINDINGS,
    "ValidatingAdmissionPolicy": POLICIES,
    "ValidatingAdmissionPolicyBinding": POLICY_BINDINGS,
}
JSON = dict[str, Any]


def chart_rbac() -> list[JSON]:
    return [d for d in yaml.safe_load_all(CHART_BASE.read_text()) if d and d["kind"] in RBAC_KINDS]


def slice_body(node: str) -> JSON:
    return {
        "metadata": {"name": f"{node}-gpu"},
        "spec": {
            "driver": "gpu.accel-dra.dev",
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [{"name": "gpu-0"}],
        },
    }


@pytest.fixture
async def server() -> AsyncIterator[SimApiServer]:
    async with SimApiServer(token="admin") as sim:
        for obj in chart_rbac():
            sim.create(RBAC_KINDS[obj["kind"]], obj)
        sim.add_user("plugin", service_account("accel-dra", "accel-dra", node="node-1"))
        sim.add_user("stranger", service_account("default", "stranger"))
        yield sim


async def connect(sim: SimApiServer, token: str, tmp_path: Path) -> KubeClient:
    return await KubeClient.connect(str(sim.write_kubeconfig(tmp_path / f"{token}.kubeconfig", token=token)))


async def test_the_chart_roles_let_the_plugin_publish_and_read_claims(
    server: SimApiServer, tmp_path: Path
) -> None:
    async with await connect(server, "plugin", tmp_path) as plugin:
        created = await plugin.create(RESOURCE_SLICES, slice_body("node-1"))
        await plugin.update(RESOURCE_SLICES, created)
        assert [s["metadata"]["name"] for s in (await plugin.list(RESOURCE_SLICES))["items"]] == [
            "node-1-gpu"
        ]
        await plugin.delete(RESOURCE_SLICES, "node-1-gpu")
        server.create(NODES, {"metadata": {"name": "node-1"}})
        assert (await plugin.get(NODES, "node-1"))["metadata"]["name"] == "node-1"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda kube: kube.list(SERVICES, "default"),
            'services is forbidden: User "system:serviceaccount:accel-dra:accel-dra" cannot list resource '
            '"services" in API group "" in the namespace "default"',
        ),
        (
            lambda kube: kube.patch(RESOURCE_SLICES, "x", {"metadata": {"labels": {"a": "b"}}}),
            'resourceslices.resource.k8s.io "x" is forbidden: User "system:serviceaccount:accel-dra:accel-dra" '
            'cannot patch resource "resourceslices" in API group "resource.k8s.io" at the cluster scope',
        ),
        (
            lambda kube: kube.update(RESOURCE_CLAIMS, {"metadata": {"name": "c"}}, "default"),
            'resourceclaims.resource.k8s.io "c" is forbidden: User "system:serviceaccount:accel-dra:accel-dra" '
            'cannot update resource "resourceclaims" in API group "resource.k8s.io" in the namespace "default"',
        ),
    ],
)
async def test_what_the_chart_does_not_grant_is_forbidden(
    server: SimApiServer, tmp_path: Path, call: Any, message: str
) -> None:
    async with await connect(server, "plugin", tmp_path) as plugin:
        with pytest.raises(ApiError) as err:
            await call(plugin)
    assert err.value.status == 403
    assert err.value.body["reason"] == "Forbidden"
    assert err.value.body["message"] == message


async def test_a_rule_removed_from_the_chart_role_fails_the_call_it_allowed(
    server: SimApiServer, tmp_path: Path
) -> None:
    role = copy.deepcopy(next(r for r in chart_rbac() if r["metadata"]["name"] == "accel-dra-plugin"))
    role["rules"] = [r for r in role["rules"] if r["resources"] != ["resourceslices"]]
    async with await connect(server, "admin", tmp_path) as admin:
        await admin.update(CLUSTER_ROLES, role)
    async with await connect(server, "plugin", tmp_path) as plugin:
        with pytest.raises(ApiError) as err:
            await plugin.create(RESOURCE_SLICES, slice_body("node-1"))
    assert err.value.status == 403


async def test_roles_bind_in_their_namespace_only_and_resource_names_narrow_a_rule(
    server: SimApiServer, tmp_path: Path
) -> None:
    role = {
        "metadata": {"name": "claims", "namespace": "team"},
        "rules": [
            {
                "apiGroups": ["resource.k8s.io"],
                "resources": ["resourceclaims"],
                "verbs": ["get"],
                "resourceNames": ["mine"],
            }
        ],
    }
    binding = {
        "metadata": {"name": "claims", "namespace": "team"},
        "subjects": [{"kind": "ServiceAccount", "name": "stranger", "namespace": "default"}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "claims"},
    }
    async with await connect(server, "admin", tmp_path) as admin:
        await admin.create(NAMESPACES, {"metadata": {"name": "team"}})
        await admin.create(ROLES, role, "team")
        await admin.create(ROLE_BINDINGS, binding, "team")
        for namespace in ("team", "default"):
            claim = {"metadata": {"name": "mine"}, "spec": {"devices": {"requests": []}}}
            await admin.create(RESOURCE_CLAIMS, claim, namespace)
    async with await connect(server, "stranger", tmp_path) as stranger:
        assert (await stranger.get(RESOURCE_CLAIMS, "mine", "team"))["metadata"]["name"] == "mine"
        for call in (
            stranger.get(RESOURCE_CLAIMS, "mine", "default"),  # another namespace
            stranger.get(RESOURCE_CLAIMS, "other", "team"),  # another name
            stranger.list(RESOURCE_CLAIMS, "team"),  # a list names nothing
        ):
            with pytest.raises(ApiError) as err:
                await call
            assert err.value.status == 403


async def test_an_unknown_token_is_unauthorized_and_discovery_is_open(
    server: SimApiServer, tmp_path: Path
) -> None:
    async with await connect(server, "nobody", tmp_path) as nobody:
        with pytest.raises(ApiError) as err:
            await nobody.list(RESOURCE_SLICES)
        assert err.value.status == 401
    async with await connect(server, "stranger", tmp_path) as stranger:
        assert (await stranger.request("GET", "/apis"))["kind"] == "APIGroupList"


async def test_the_chart_admission_policy_keeps_the_plugin_to_its_own_nodes_slices(
    server: SimApiServer, tmp_path: Path
) -> None:
    server.add_user("unbound", service_account("accel-dra", "accel-dra"))  # a token bound to no node
    async with await connect(server, "plugin", tmp_path) as plugin:
        with pytest.raises(ApiError) as err:
            await plugin.create(RESOURCE_SLICES, slice_body("node-2"))
        assert err.value.status == 403
        assert err.value.body["message"] == (
            'resourceslices.resource.k8s.io "node-2-gpu" is forbidden: ValidatingAdmissionPolicy '
            "'accel-dra-resourceslices' with binding 'accel-dra-resourceslices' denied request: this service "
            "account may write ResourceSlices only of node node-1, not of node node-2"
        )
        own = await plugin.create(RESOURCE_SLICES, slice_body("node-1"))
        own["metadata"]["labels"] = {"updated": "yes"}
        assert (await plugin.update(RESOURCE_SLICES, own))["metadata"]["labels"] == {"updated": "yes"}
    async with await connect(server, "unbound", tmp_path) as unbound:
        with pytest.raises(ApiError) as err:
            await unbound.delete(RESOURCE_SLICES, "node-1-gpu")
        assert "only with a token bound to a node" in err.value.body["message"]
    async with await connect(server, "admin", tmp_path) as admin:  # others are not the policy's business
        await admin.create(RESOURCE_SLICES, slice_body("node-2"))
        await admin.delete(RESOURCE_SLICES, "node-1-gpu")
