"""The sandbox API server, exercised through the project's KubeClient over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from driver.kube.client import (
    DEVICE_CLASSES,
    EVENTS,
    NAMESPACES,
    NODES,
    PODS,
    RESOURCE_CLAIM_TEMPLATES,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
    SERVICES,
    ApiError,
    KubeClient,
    ResourceType,
    WatchEvent,
)
from driver.kube.retry import RetryPolicy
from driver.sim.apiserver import BACKEND_ANNOTATION, BackgroundApiServer, SimApiServer
from driver.sim.store import ObjectStore
from tests.support.processes import Process

REPO = Path(__file__).resolve().parents[2]
DRIVER = "gpu.example.com"
JSON = dict[str, Any]


@pytest.fixture
async def server() -> AsyncIterator[SimApiServer]:
    srv = SimApiServer(bookmark_interval=0.2)
    await srv.start()
    yield srv
    await srv.stop()


async def connect(server: SimApiServer, path: Path, token: str | None = None) -> KubeClient:
    return await KubeClient.connect(str(server.write_kubeconfig(path, token=token)))


@pytest.fixture
async def client(server: SimApiServer, tmp_path: Path) -> AsyncIterator[KubeClient]:
    kube = await connect(server, tmp_path / "kubeconfig")
    yield kube
    await kube.close()


def slice_body(name: str | None = None, node: str = "node-1", driver: str = DRIVER, devices: int = 2) -> JSON:
    meta: JSON = {"name": name} if name else {"generateName": f"{node}-{driver}-"}
    return {
        "metadata": meta,
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 0, "resourceSliceCount": 1},
            "devices": [{"name": f"gpu-{i}", "attributes": {"index": {"int": i}}} for i in range(devices)],
        },
    }


def pod_body(name: str, node: str | None = None, containers: tuple[str, ...] = ("main",)) -> JSON:
    spec: JSON = {"containers": [{"name": c, "image": "busybox"} for c in containers]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name}, "spec": spec}


def claim_body(name: str = "claim-1") -> JSON:
    return {
        "metadata": {"name": name},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}]}},
    }


SAMPLES: list[tuple[ResourceType, str | None, JSON]] = [
    (NODES, None, {"metadata": {"name": "node-1"}}),
    (NAMESPACES, None, {"metadata": {"name": "team-a"}}),
    (PODS, "default", pod_body("pod-1")),
    (SERVICES, "default", {"metadata": {"name": "svc-1"}, "spec": {"ports": [{"port": 80}]}}),
    (EVENTS, "default", {"metadata": {"name": "ev-1"}, "reason": "Test", "involvedObject": {"kind": "Pod"}}),
    (RESOURCE_SLICES, None, slice_body("node-1-slice")),
    (
        DEVICE_CLASSES,
        None,
        {"metadata": {"name": DRIVER}, "spec": {"selectors": [{"cel": {"expression": "true"}}]}},
    ),
    (RESOURCE_CLAIMS, "default", claim_body()),
    (
        RESOURCE_CLAIM_TEMPLATES,
        "default",
        {"metadata": {"name": "tpl-1"}, "spec": {"spec": claim_body()["spec"]}},
    ),
]


@pytest.mark.parametrize(("rt", "namespace", "body"), SAMPLES, ids=[s[0].plural for s in SAMPLES])
async def test_crud_for_each_kind(
    client: KubeClient, rt: ResourceType, namespace: str | None, body: JSON
) -> None:
    created = await client.create(rt, body, namespace)
    meta = created["metadata"]
    assert created["kind"] == rt.kind and created["apiVersion"] == rt.api_version
    assert meta["uid"] and meta["creationTimestamp"] and int(meta["resourceVersion"]) > 0
    name = meta["name"]
    assert (await client.get(rt, name, namespace))["metadata"]["uid"] == meta["uid"]

    listed = await client.list(rt, namespace)
    assert listed["kind"] == f"{rt.kind}List" and listed["apiVersion"] == rt.api_version
    assert int(listed["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])
    assert name in [item["metadata"]["name"] for item in listed["items"]]

    created["metadata"]["labels"] = {"touched": "yes"}
    updated = await client.update(rt, created, namespace)
    assert updated["metadata"]["labels"]["touched"] == "yes"
    assert int(updated["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    deleted = await client.delete(rt, name, namespace)
    assert deleted["metadata"]["uid"] == meta["uid"]
    with pytest.raises(ApiError) as err:
        await client.get(rt, name, namespace)
    assert err.value.not_found and err.value.body["reason"] == "NotFound"


async def test_generate_name_and_already_exists(client: KubeClient) -> None:
    first = await client.create(RESOURCE_SLICES, slice_body())
    second = await client.create(RESOURCE_SLICES, slice_body())
    names = {first["metadata"]["name"], second["metadata"]["name"]}
    assert len(names) == 2
    for name in names:
        prefix, suffix = name[:-5], name[-5:]
        assert prefix == f"node-1-{DRIVER}-" and suffix.isalnum() and suffix.islower()
    with pytest.raises(ApiError) as err:
        await client.create(RESOURCE_SLICES, slice_body(first["metadata"]["name"]))
    assert err.value.status == 409 and err.value.reason == "AlreadyExists"


async def test_namespaced_objects_need_their_namespace(client: KubeClient) -> None:
    with pytest.raises(ApiError) as err:
        await client.create(PODS, pod_body("p"), "missing")
    assert err.value.status == 404 and 'namespaces "missing" not found' in err.value.message
    await client.create(NAMESPACES, {"metadata": {"name": "present"}})
    pod = await client.create(PODS, pod_body("p"), "present")
    assert pod["metadata"]["namespace"] == "present"
    assert pod["status"]["phase"] == "Pending"


async def test_discovery_and_version(client: KubeClient, server: SimApiServer) -> None:
    assert (await client.request("GET", "/api"))["versions"] == ["v1"]
    groups = await client.request("GET", "/apis")
    assert "resource.k8s.io" in [g["name"] for g in groups["groups"]]
    resources = await client.request("GET", "/apis/resource.k8s.io/v1")
    assert resources["kind"] == "APIResourceList"
    served = {r["name"]: r for r in resources["resources"]}
    assert {
        "resourceslices",
        "deviceclasses",
        "resourceclaims",
        "resourceclaims/status",
        "resourceclaimtemplates",
    } <= set(served)
    assert served["resourceslices"]["kind"] == "ResourceSlice" and not served["resourceslices"]["namespaced"]
    assert "watch" in served["resourceslices"]["verbs"]
    core = {r["name"] for r in (await client.request("GET", "/api/v1"))["resources"]}
    assert {
        "nodes",
        "namespaces",
        "pods",
        "pods/log",
        "pods/status",
        "services",
        "services/proxy",
        "events",
    } <= core
    version = await client.request("GET", "/version")
    assert (version["major"], version["minor"], version["gitVersion"]) == ("1", "37", "v1.37.2")


async def test_configured_kubernetes_version(tmp_path: Path) -> None:
    async with SimApiServer(kubernetes_version="v1.34.2") as srv:
        kube = await connect(srv, tmp_path / "kc")
        async with kube:
            version = await kube.request("GET", "/version")
    assert (version["minor"], version["gitVersion"]) == ("34", "v1.34.2")


# -- selectors -------------------------------------------------------------------------------------


async def test_label_selectors(client: KubeClient) -> None:
    labels = {"a": {"tier": "gpu", "zone": "1"}, "b": {"tier": "cpu", "zone": "2"}, "c": {"tier": "gpu"}}
    for name, lbls in labels.items():
        await client.create(NODES, {"metadata": {"name": name, "labels": lbls}})

    async def names(selector: str) -> set[str]:
        return {n["metadata"]["name"] for n in (await client.list(NODES, label_selector=selector))["items"]}

    assert await names("tier=gpu") == {"a", "c"}
    assert await names("tier==gpu,zone=1") == {"a"}
    assert await names("tier!=gpu") == {"b"}
    assert await names("zone in (1, 2)") == {"a", "b"}
    assert await names("zone notin (1)") == {"b", "c"}
    assert await names("zone") == {"a", "b"}
    assert await names("!zone") == {"c"}
    assert await names("zone>1") == {"b"}
    with pytest.raises(ApiError) as err:
        await client.list(NODES, label_selector="tier in gpu")
    assert err.value.status == 400


async def test_field_selectors(client: KubeClient) -> None:
    await client.create(PODS, pod_body("on-1", "node-1"), "default")
    await client.create(PODS, pod_body("on-2", "node-2"), "default")
    await client.create(PODS, pod_body("unscheduled"), "default")
    await client.create(RESOURCE_SLICES, slice_body(node="node-1"))
    await client.create(RESOURCE_SLICES, slice_body(node="node-2"))
    await client.create(RESOURCE_SLICES, slice_body(node="node-1", driver="nic.example.com"))

    async def names(rt: ResourceType, selector: str) -> list[str]:
        listed = await client.list(rt, "default" if rt.namespaced else None, field_selector=selector)
        return sorted(i["metadata"]["name"] for i in listed["items"])

    assert await names(PODS, "spec.nodeName=node-1") == ["on-1"]
    assert await names(PODS, "spec.nodeName=") == ["unscheduled"]
    assert await names(PODS, "metadata.name!=on-1,spec.nodeName!=") == ["on-2"]
    assert await names(PODS, "metadata.namespace=default,metadata.name=on-2") == ["on-2"]
    node1 = await names(RESOURCE_SLICES, "spec.nodeName=node-1")
    assert len(node1) == 2
    both = await names(RESOURCE_SLICES, f"spec.nodeName=node-1,spec.driver={DRIVER}")
    assert len(both) == 1 and both[0].startswith(f"node-1-{DRIVER}-")
    with pytest.raises(ApiError) as err:
        await client.list(RESOURCE_SLICES, field_selector="spec.pool.name=node-1")
    assert err.value.status == 400 and "field label not supported" in err.value.message


async def test_list_pagination(client: KubeClient) -> None:
    for i in range(5):
        await client.create(NODES, {"metadata": {"name": f"n{i}"}})
    page = await client.request("GET", NODES.path(), params=[("limit", "2")])
    seen = [n["metadata"]["name"] for n in page["items"]]
    while page["metadata"].get("continue"):
        page = await client.request(
            "GET", NODES.path(), params=[("limit", "2"), ("continue", page["metadata"]["continue"])]
        )
        seen += [n["metadata"]["name"] for n in page["items"]]
    assert seen == [f"n{i}" for i in range(5)]


# -- update, patch, delete -------------------------------------------------------------------------


async def test_stale_update_conflicts_and_missing_update_is_not_found(client: KubeClient) -> None:
    created = await client.create(RESOURCE_SLICES, slice_body("s1"))
    fresh = dict(created, spec={**created["spec"], "pool": {**created["spec"]["pool"], "generation": 1}})
    updated = await client.update(RESOURCE_SLICES, fresh)
    assert updated["metadata"]["generation"] == 2
    with pytest.raises(ApiError) as err:
        await client.update(RESOURCE_SLICES, created)  # still carries the first resourceVersion
    assert err.value.conflict and err.value.reason == "Conflict"
    assert "the object has been modified" in err.value.message
    with pytest.raises(ApiError) as err:
        await client.update(RESOURCE_SLICES, slice_body("never-created"))
    assert err.value.not_found


async def test_an_unchanged_update_writes_nothing(client: KubeClient, server: SimApiServer) -> None:
    created = await client.create(RESOURCE_SLICES, slice_body("s1"))
    again = await client.update(RESOURCE_SLICES, created)
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert server.store.resource_version == int(created["metadata"]["resourceVersion"])


async def test_merge_patch(client: KubeClient) -> None:
    await client.create(NODES, {"metadata": {"name": "n", "labels": {"a": "1", "b": "2"}}})
    patched = await client.patch(NODES, "n", {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert patched["metadata"]["labels"] == {"b": "2", "c": "3"}


async def test_strategic_merge_patch_merges_lists_by_key(client: KubeClient) -> None:
    await client.create(PODS, pod_body("p", containers=("main", "side")), "default")
    patch = {
        "spec": {"containers": [{"name": "side", "image": "alpine"}]},
        "metadata": {"finalizers": ["x.io/keep"]},
    }
    patched = await client.patch(PODS, "p", patch, "default", patch_type="strategic")
    images = {c["name"]: c["image"] for c in patched["spec"]["containers"]}
    assert images == {"main": "busybox", "side": "alpine"}
    patch = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    await client.patch(PODS, "p", patch, "default", patch_type="strategic", subresource="status")
    patch = {"status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}}
    status = await client.patch(PODS, "p", patch, "default", patch_type="strategic", subresource="status")
    assert {c["type"] for c in status["status"]["conditions"]} == {"Ready", "PodScheduled"}
    removal = {"status": {"conditions": [{"type": "Ready", "$patch": "delete"}]}}
    status = await client.patch(PODS, "p", removal, "default", patch_type="strategic", subresource="status")
    assert [c["type"] for c in status["status"]["conditions"]] == ["PodScheduled"]
    assert status["metadata"]["finalizers"] == ["x.io/keep"]


async def test_json_patch(client: KubeClient) -> None:
    await client.create(RESOURCE_SLICES, slice_body("s1"))
    ops = [
        {"op": "test", "path": "/spec/pool/generation", "value": 0},
        {"op": "replace", "path": "/spec/pool/generation", "value": 3},
        {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}},
    ]
    patched = await client.patch(RESOURCE_SLICES, "s1", ops, patch_type="json")
    assert patched["spec"]["pool"]["generation"] == 3 and patched["metadata"]["labels"] == {"k": "v"}
    with pytest.raises(ApiError) as err:
        await client.patch(
            RESOURCE_SLICES,
            "s1",
            [{"op": "test", "path": "/spec/pool/generation", "value": 0}],
            patch_type="json",
        )
    assert err.value.status == 422


async def test_server_side_apply_creates_then_merges(client: KubeClient) -> None:
    applied = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n", "labels": {"a": "1"}}}
    created = await client.patch(NODES, "n", applied, patch_type="apply", field_manager="test", force=True)
    assert created["metadata"]["labels"] == {"a": "1"}
    applied["metadata"]["labels"] = {"b": "2"}
    merged = await client.patch(NODES, "n", applied, patch_type="apply", field_manager="test")
    assert merged["metadata"]["labels"] == {"a": "1", "b": "2"}
    assert merged["metadata"]["uid"] == created["metadata"]["uid"]
    with pytest.raises(ApiError) as err:
        await client.patch(NODES, "n", applied, patch_type="apply")
    assert err.value.status == 422 and "fieldManager" in err.value.message


async def test_patch_of_a_missing_object_is_not_found(client: KubeClient) -> None:
    with pytest.raises(ApiError) as err:
        await client.patch(NODES, "ghost", {"metadata": {"labels": {"a": "b"}}})
    assert err.value.not_found


async def test_delete_preconditions(client: KubeClient) -> None:
    created = await client.create(RESOURCE_SLICES, slice_body("s1"))
    meta = created["metadata"]
    with pytest.raises(ApiError) as err:
        await client.delete(RESOURCE_SLICES, "s1", uid="00000000-0000-0000-0000-000000000000")
    assert err.value.conflict and "Precondition failed: UID in precondition" in err.value.message
    with pytest.raises(ApiError) as err:
        await client.delete(RESOURCE_SLICES, "s1", resource_version="1")
    assert err.value.conflict and "ResourceVersion in precondition: 1" in err.value.message
    deleted = await client.delete(
        RESOURCE_SLICES, "s1", uid=meta["uid"], resource_version=meta["resourceVersion"]
    )
    assert deleted["spec"] == created["spec"]
    with pytest.raises(ApiError) as err:
        await client.delete(RESOURCE_SLICES, "s1")
    assert err.value.not_found


async def test_finalizers_delay_deletion(client: KubeClient) -> None:
    body = claim_body()
    body["metadata"]["finalizers"] = ["resource.kubernetes.io/delete-protection"]
    await client.create(RESOURCE_CLAIMS, body, "default")
    deleting = await client.delete(RESOURCE_CLAIMS, "claim-1", "default")
    assert deleting["metadata"]["deletionTimestamp"]
    still_there = await client.get(RESOURCE_CLAIMS, "claim-1", "default")
    assert still_there["metadata"]["deletionTimestamp"] == deleting["metadata"]["deletionTimestamp"]
    await client.patch(RESOURCE_CLAIMS, "claim-1", {"metadata": {"finalizers": None}}, "default")
    with pytest.raises(ApiError) as err:
        await client.get(RESOURCE_CLAIMS, "claim-1", "default")
    assert err.value.not_found


async def test_delete_collection_by_node_and_driver(client: KubeClient) -> None:
    for node, driver in (("node-1", DRIVER), ("node-1", "nic.example.com"), ("node-2", DRIVER)):
        await client.create(RESOURCE_SLICES, slice_body(node=node, driver=driver))
    gone = await client.delete_collection(
        RESOURCE_SLICES, field_selector=f"spec.nodeName=node-1,spec.driver={DRIVER}"
    )
    assert gone["kind"] == "ResourceSliceList" and len(gone["items"]) == 1
    left = [
        (s["spec"]["nodeName"], s["spec"]["driver"]) for s in (await client.list(RESOURCE_SLICES))["items"]
    ]
    assert sorted(left) == [("node-1", "nic.example.com"), ("node-2", DRIVER)]
    gone = await client.delete_collection(RESOURCE_SLICES, field_selector="spec.nodeName=node-1")
    assert len(gone["items"]) == 1
    assert len((await client.list(RESOURCE_SLICES))["items"]) == 1


async def test_owner_references_and_namespaces_cascade(client: KubeClient) -> None:
    node = await client.create(NODES, {"metadata": {"name": "node-1"}})
    owned = slice_body()
    owned["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "name": "node-1",
            "uid": node["metadata"]["uid"],
            "controller": True,
        }
    ]
    await client.create(RESOURCE_SLICES, owned)
    await client.create(RESOURCE_SLICES, slice_body(node="node-2"))
    await client.delete(NODES, "node-1")
    assert [s["spec"]["nodeName"] for s in (await client.list(RESOURCE_SLICES))["items"]] == ["node-2"]

    await client.create(NAMESPACES, {"metadata": {"name": "team"}})
    await client.create(PODS, pod_body("p"), "team")
    await client.delete(NAMESPACES, "team")
    assert (await client.list(PODS, "team"))["items"] == []


# -- validation and subresources -------------------------------------------------------------------


async def test_invalid_slice_is_rejected_with_a_status(client: KubeClient, server: SimApiServer) -> None:
    body = slice_body("bad")
    body["spec"]["devices"][1]["name"] = "gpu-0"
    body["spec"]["devices"][0]["attributes"]["driverVersion"] = {"version": "v550.1"}
    with pytest.raises(ApiError) as err:
        await client.create(RESOURCE_SLICES, body)
    status = err.value.body
    assert err.value.status == 422 and status["code"] == 422
    assert status["kind"] == "Status" and status["status"] == "Failure" and status["reason"] == "Invalid"
    assert status["details"]["name"] == "bad" and status["details"]["kind"] == "ResourceSlice"
    assert status["details"]["group"] == "resource.k8s.io"
    causes = {(c["reason"], c["field"]) for c in status["details"]["causes"]}
    assert causes == {
        ("FieldValueDuplicate", "spec.devices[1]"),
        ("FieldValueInvalid", "spec.devices[0].attributes[driverVersion].version"),
    }
    assert status["message"].startswith('ResourceSlice.resource.k8s.io "bad" is invalid: [')
    assert server.objects(RESOURCE_SLICES) == []

    created = await client.create(RESOURCE_SLICES, slice_body("good"))
    created["spec"]["driver"] = "other.example.com"
    with pytest.raises(ApiError) as err:
        await client.update(RESOURCE_SLICES, created)
    assert err.value.invalid and "field is immutable" in err.value.message


async def test_undecodable_slice_is_a_bad_request(client: KubeClient) -> None:
    body = slice_body("bad")
    body["spec"]["devices"][0]["capacity"] = {"memory": {"value": "80GB"}}
    with pytest.raises(ApiError) as err:
        await client.create(RESOURCE_SLICES, body)
    assert err.value.status == 400 and "cannot be handled as a ResourceSlice" in err.value.message


async def test_claim_status_subresource_semantics(client: KubeClient) -> None:
    claim = await client.create(RESOURCE_CLAIMS, claim_body(), "default")
    result = {"request": "gpu", "driver": DRIVER, "pool": "node-1", "device": "gpu-0"}
    claim["status"] = {"allocation": {"devices": {"results": [result]}}}
    claim["metadata"]["labels"] = {"ignored": "by-status"}
    claim["spec"]["devices"]["requests"][0]["exactly"]["count"] = 5
    allocated = await client.update(RESOURCE_CLAIMS, claim, "default", subresource="status")
    assert allocated["status"]["allocation"]["devices"]["results"] == [result]
    assert allocated["spec"]["devices"]["requests"][0]["exactly"]["count"] == 1  # spec untouched by /status
    assert "labels" not in allocated["metadata"]
    assert "generation" not in allocated["metadata"]  # the claim strategy sets none

    allocated["status"] = {}
    allocated["metadata"]["labels"] = {"kept": "yes"}
    relabelled = await client.update(RESOURCE_CLAIMS, allocated, "default")
    assert relabelled["status"]["allocation"]["devices"]["results"] == [
        result
    ]  # status untouched by main PUT
    assert relabelled["metadata"]["labels"] == {"kept": "yes"}

    relabelled["spec"]["devices"]["requests"][0]["exactly"]["count"] = 2
    with pytest.raises(ApiError) as err:
        await client.update(RESOURCE_CLAIMS, relabelled, "default")
    assert err.value.invalid and err.value.body["details"]["causes"][0]["field"] == "spec"

    relabelled["spec"]["devices"]["requests"][0]["exactly"]["count"] = 1
    relabelled["status"]["reservedFor"] = [{"resource": "pods", "name": "p", "uid": "u1"}]
    reserved = await client.update(RESOURCE_CLAIMS, relabelled, "default", subresource="status")
    assert reserved["status"]["reservedFor"][0]["uid"] == "u1"


async def test_claim_defaults_are_applied(client: KubeClient) -> None:
    claim = await client.create(RESOURCE_CLAIMS, claim_body(), "default")
    exactly = claim["spec"]["devices"]["requests"][0]["exactly"]
    assert (exactly["allocationMode"], exactly["count"]) == ("ExactCount", 1)
    rebuilt = claim_body()  # as a client would build it: without the defaulted fields
    rebuilt["metadata"].update(resourceVersion=claim["metadata"]["resourceVersion"], labels={"a": "b"})
    updated = await client.update(RESOURCE_CLAIMS, rebuilt, "default")  # no 422: the spec did not change
    assert updated["metadata"]["labels"] == {"a": "b"}
    assert updated["spec"] == claim["spec"]


async def test_pod_binding_and_immutable_spec(client: KubeClient) -> None:
    await client.create(PODS, pod_body("p"), "default")
    with pytest.raises(ApiError) as err:
        await client.patch(PODS, "p", {"spec": {"nodeName": "node-1"}}, "default")
    assert err.value.invalid
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "p"},
        "target": {"kind": "Node", "name": "node-1"},
    }
    await client.request("POST", PODS.path("default", "p", "binding"), body=binding)
    assert (await client.get(PODS, "p", "default"))["spec"]["nodeName"] == "node-1"
    with pytest.raises(ApiError) as err:
        await client.request("POST", PODS.path("default", "p", "binding"), body=binding)
    assert err.value.conflict


async def test_media_types_and_methods(client: KubeClient) -> None:
    await client.create(NODES, {"metadata": {"name": "n"}})
    with pytest.raises(ApiError) as err:
        await client.request("PATCH", NODES.path(None, "n"), body='{"a": 1}', content_type="text/plain")
    assert err.value.status == 415 and err.value.reason == "UnsupportedMediaType"
    with pytest.raises(ApiError) as err:
        await client.request("POST", NODES.path(), body="not json", content_type="application/json")
    assert err.value.status == 400
    with pytest.raises(ApiError) as err:
        await client.request("PUT", NODES.path(), body={"metadata": {"name": "n"}})
    assert err.value.status == 405 and err.value.reason == "MethodNotAllowed"
    with pytest.raises(ApiError) as err:
        await client.request("GET", "/apis/resource.k8s.io/v1/widgets")
    assert err.value.not_found


# -- watch -----------------------------------------------------------------------------------------


async def collect(events: AsyncGenerator[WatchEvent], count: int) -> list[WatchEvent]:
    seen: list[WatchEvent] = []
    async with contextlib.aclosing(events):
        async for event in events:
            seen.append(event)
            if len(seen) == count:
                break
    return seen


async def test_watch_from_a_resource_version(client: KubeClient) -> None:
    start = (await client.list(RESOURCE_SLICES))["metadata"]["resourceVersion"]
    mine = await client.create(RESOURCE_SLICES, slice_body("mine"))
    await client.create(RESOURCE_SLICES, slice_body("theirs", node="node-2"))
    await client.patch(RESOURCE_SLICES, "mine", {"metadata": {"labels": {"x": "y"}}})
    await client.delete(RESOURCE_SLICES, "mine")
    events = await collect(
        client.watch(
            RESOURCE_SLICES, field_selector="spec.nodeName=node-1", resource_version=start, timeout_seconds=10
        ),
        3,
    )
    assert [e.type for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert {e.object["metadata"]["uid"] for e in events} == {mine["metadata"]["uid"]}
    rvs = [int(e.object["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(start)


async def test_watch_without_resource_version_starts_with_current_objects(client: KubeClient) -> None:
    await client.create(NODES, {"metadata": {"name": "n1"}})
    events = await collect(client.watch(NODES, timeout_seconds=10), 1)
    assert events[0].type == "ADDED" and events[0].object["metadata"]["name"] == "n1"


async def test_watch_reports_objects_leaving_and_entering_the_selector(client: KubeClient) -> None:
    start = (await client.list(NODES))["metadata"]["resourceVersion"]
    await client.create(NODES, {"metadata": {"name": "n", "labels": {"gpu": "true"}}})
    await client.patch(NODES, "n", {"metadata": {"labels": {"gpu": "false"}}})
    await client.patch(NODES, "n", {"metadata": {"labels": {"gpu": "true"}}})
    events = await collect(
        client.watch(NODES, label_selector="gpu=true", resource_version=start, timeout_seconds=10), 3
    )
    assert [e.type for e in events] == ["ADDED", "DELETED", "ADDED"]


async def test_watch_delivers_live_events(client: KubeClient) -> None:
    await client.create(NODES, {"metadata": {"name": "existing"}})
    seen: list[WatchEvent] = []
    async with contextlib.aclosing(client.watch(NODES, timeout_seconds=10)) as events:
        async for event in events:
            seen.append(event)
            if len(seen) == 1:  # the watch is open: what happens now must arrive live
                await client.create(NODES, {"metadata": {"name": "live"}})
            if len(seen) == 2:
                break
    assert [(e.type, e.object["metadata"]["name"]) for e in seen] == [
        ("ADDED", "existing"),
        ("ADDED", "live"),
    ]


async def test_watch_bookmarks(client: KubeClient) -> None:
    start = (await client.list(NODES))["metadata"]["resourceVersion"]
    await client.create(NODES, {"metadata": {"name": "n"}})
    events = await collect(client.watch(NODES, resource_version=start, timeout_seconds=10), 2)
    assert [e.type for e in events] == ["ADDED", "BOOKMARK"]
    bookmark = events[1].object
    assert bookmark["kind"] == "Node" and bookmark["apiVersion"] == "v1"
    assert bookmark["metadata"]["resourceVersion"] == events[0].object["metadata"]["resourceVersion"]


async def test_watch_ends_after_timeout_seconds(client: KubeClient) -> None:
    start = (await client.list(NODES))["metadata"]["resourceVersion"]
    events = [
        e
        async for e in client.watch(
            NODES, label_selector="never=seen", resource_version=start, timeout_seconds=1
        )
    ]
    assert all(e.type == "BOOKMARK" for e in events)


async def test_watch_from_a_compacted_resource_version_is_gone(
    client: KubeClient, server: SimApiServer
) -> None:
    start = (await client.list(NODES))["metadata"]["resourceVersion"]
    await client.create(NODES, {"metadata": {"name": "n"}})
    server.compact()
    with pytest.raises(ApiError) as err:
        await collect(client.watch(NODES, resource_version=start, timeout_seconds=5), 1)
    assert err.value.status == 410 and err.value.reason == "Expired"
    assert "too old resource version" in err.value.message


async def test_history_limit_expires_old_resource_versions(client: KubeClient, tmp_path: Path) -> None:
    async with SimApiServer(history_limit=3) as srv:
        kube = await connect(srv, tmp_path / "kc")
        async with kube:
            start = (await kube.list(NODES))["metadata"]["resourceVersion"]
            for i in range(4):
                await kube.create(NODES, {"metadata": {"name": f"n{i}"}})
            with pytest.raises(ApiError) as err:
                await collect(kube.watch(NODES, resource_version=start, timeout_seconds=5), 1)
            assert err.value.status == 410
            recent = str(int(start) + 1)
            events = await collect(kube.watch(NODES, resource_version=recent, timeout_seconds=5), 3)
            assert [e.object["metadata"]["name"] for e in events] == ["n1", "n2", "n3"]


# -- auth, faults, logs, proxy ---------------------------------------------------------------------


async def test_bearer_token_is_required_when_configured(tmp_path: Path) -> None:
    async with SimApiServer(token="s3cret") as srv:
        anonymous = await connect(srv, tmp_path / "anon", token="")
        wrong = await connect(srv, tmp_path / "wrong", token="guess")
        right = await connect(srv, tmp_path / "right")
        async with anonymous, wrong, right:
            for kube in (anonymous, wrong):
                with pytest.raises(ApiError) as err:
                    await kube.list(NODES)
                assert err.value.status == 401 and err.value.reason == "Unauthorized"
            assert (await anonymous.request("GET", "/version"))["gitVersion"] == "v1.37.2"
            assert (await right.list(NODES))["items"] == []


async def test_fault_injection(client: KubeClient, server: SimApiServer) -> None:
    created = await client.create(RESOURCE_SLICES, slice_body("s1"))
    fault = server.inject_fault("PUT", r"/resourceslices/s1$", 409, count=2, reason="Conflict")
    for _ in range(2):
        with pytest.raises(ApiError) as err:
            await client.update(RESOURCE_SLICES, created)
        assert (
            err.value.status == 409 and err.value.reason == "Conflict" and err.value.body["kind"] == "Status"
        )
    await client.update(RESOURCE_SLICES, created)
    assert fault.hits == 2 and fault.remaining == 0
    statuses = [r.status for r in server.request_log.records if r.path.endswith("/resourceslices/s1")]
    assert statuses == [409, 409, 200]
    # A read is retried by the client on a 5xx (driver.kube.retry): one more fault than it retries.
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    client.retry = RetryPolicy(retries=2, sleep=no_wait)
    server.inject_fault("GET", r"^/apis/resource\.k8s\.io/v1/resourceslices$", 500, count=3)
    with pytest.raises(ApiError) as err:
        await client.list(RESOURCE_SLICES)
    assert err.value.status == 500 and len(waits) == 2
    assert len((await client.list(RESOURCE_SLICES))["items"]) == 1


async def test_request_log_counts_writes(client: KubeClient, server: SimApiServer) -> None:
    mark = server.request_log.mark()
    await client.list(NODES)
    await client.get(NAMESPACES, "default")
    assert server.request_log.writes(mark) == []
    await client.create(NODES, {"metadata": {"name": "n"}})
    await client.delete(NODES, "n")
    writes = server.request_log.writes(mark)
    assert [(w.method, w.path, w.status) for w in writes] == [
        ("POST", "/api/v1/nodes", 201),
        ("DELETE", "/api/v1/nodes/n", 200),
    ]
    assert server.request_log.writes(mark, path_regex="resourceslices") == []


async def test_wait_for_wakes_on_changes(client: KubeClient, server: SimApiServer) -> None:
    def two_slices(store: ObjectStore) -> list[JSON] | None:
        slices = store.list(RESOURCE_SLICES)
        return slices if len(slices) == 2 else None

    waiter = asyncio.create_task(server.wait_for(two_slices, timeout=10))
    await client.create(RESOURCE_SLICES, slice_body())
    assert not waiter.done()
    await client.create(RESOURCE_SLICES, slice_body())
    slices = await waiter
    assert len(slices) == 2

    def three_slices(store: ObjectStore) -> bool:
        return store.count(RESOURCE_SLICES) == 3

    with pytest.raises(TimeoutError, match="three_slices"):
        await server.wait_for(three_slices, timeout=0.2)


async def test_pod_logs(client: KubeClient, server: SimApiServer, tmp_path: Path) -> None:
    await client.create(PODS, pod_body("p", containers=("main", "side")), "default")
    server.pod_logs.set("default", "p", "main", "one\ntwo\nthree\n")
    log_file = tmp_path / "side.log"
    log_file.write_text("from a file\n")
    server.pod_logs.set_file("default", "p", "side", log_file)
    base = PODS.path("default", "p", "log")
    assert await client.request_text("GET", base + "?container=main") == "one\ntwo\nthree\n"
    assert await client.request_text("GET", base + "?container=main&tailLines=2") == "two\nthree\n"
    assert await client.request_text("GET", base + "?container=side") == "from a file\n"
    with pytest.raises(ApiError) as err:
        await client.request_text("GET", base)
    assert err.value.status == 400 and "a container name must be specified" in err.value.message
    with pytest.raises(ApiError) as err:
        await client.request_text("GET", PODS.path("default", "nope", "log"))
    assert err.value.not_found


@pytest.fixture
async def backend() -> AsyncIterator[str]:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            text=f"hw_gpu_utilization_ratio 0.5\n# path={request.path} q={request.query_string}\n"
        )

    app = web.Application()
    app.router.add_get("/{tail:.*}", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_service_proxy(client: KubeClient, server: SimApiServer, backend: str) -> None:
    await client.create(
        SERVICES, {"metadata": {"name": "exporter"}, "spec": {"ports": [{"port": 9400}]}}, "default"
    )
    path = SERVICES.path("default", "exporter:9400", "proxy")
    with pytest.raises(ApiError) as err:
        await client.request_text("GET", path + "/metrics")
    assert err.value.status == 503
    server.register_service_backend("default", "exporter", backend, port=9400)
    text = await client.request_text("GET", path + "/metrics?x=1")
    assert text.startswith("hw_gpu_utilization_ratio 0.5") and "path=/metrics q=x=1" in text

    annotated = {
        "metadata": {"name": "other", "annotations": {BACKEND_ANNOTATION: backend}},
        "spec": {"ports": [{"port": 80}]},
    }
    await client.create(SERVICES, annotated, "default")
    assert "path=/stats" in await client.request_text(
        "GET", SERVICES.path("default", "other", "proxy") + "/stats"
    )


# -- running it ------------------------------------------------------------------------------------


async def test_standalone_command_serves_until_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    args = [
        sys.executable,
        "-m",
        "driver.sim.apiserver",
        "--listen",
        "127.0.0.1:0",
        "--kubeconfig-out",
        str(kubeconfig),
        "--kubernetes-version",
        "v1.35.1",
    ]
    proc = await Process.start(args, name="sim-apiserver", env={"PYTHONPATH": str(REPO)})
    try:
        await proc.wait_log(r"kubeconfig written to")
        url = proc.matching(r"listening on (http://\S+)")[0].split()[-1]
        kube = await KubeClient.connect(str(kubeconfig))
        async with kube:
            assert kube.host == url
            assert (await kube.request("GET", "/version"))["gitVersion"] == "v1.35.1"
            await kube.create(NODES, {"metadata": {"name": "n"}})
            assert [n["metadata"]["name"] for n in (await kube.list(NODES))["items"]] == ["n"]
        assert await proc.terminate(signal.SIGTERM) == 0
    finally:
        await proc.kill()


def test_background_server_for_synchronous_callers() -> None:
    runner = BackgroundApiServer(kubernetes_version="v1.35.0")
    srv = runner.start()
    try:
        with urllib.request.urlopen(srv.url + "/version", timeout=10) as response:
            assert json.load(response)["gitVersion"] == "v1.35.0"
        body = json.dumps({"metadata": {"name": "n"}}).encode()
        request = urllib.request.Request(srv.url + "/api/v1/nodes", data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
        assert runner.wait_for(lambda store: store.count(NODES) == 1)
        assert runner.call(lambda s: [n["metadata"]["name"] for n in s.objects(NODES)]) == ["n"]
    finally:
        runner.stop()


async def test_streaming_list_sends_initial_events_then_a_marked_bookmark(server: SimApiServer) -> None:
    server.create(NODES, {"metadata": {"name": "n1"}})
    server.create(NODES, {"metadata": {"name": "n2"}})
    query = "watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan"
    events: list[JSON] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/api/v1/nodes?{query}") as response,
    ):
        async for line in response.content:
            events.append(json.loads(line))
            if events[-1]["type"] == "BOOKMARK":
                break
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [
        ("ADDED", "n1"),
        ("ADDED", "n2"),
        ("BOOKMARK", None),
    ]
    assert events[-1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_a_dry_run_create_answers_without_storing(client: KubeClient, server: SimApiServer) -> None:
    answer = await client.request(
        "POST", NODES.path(), params=[("dryRun", "All")], body={"metadata": {"name": "n"}}
    )
    assert answer["metadata"]["name"] == "n" and answer["metadata"]["uid"]
    assert server.objects(NODES) == []
    await client.create(NODES, {"metadata": {"name": "n"}})
    with pytest.raises(ApiError) as err:  # dry runs of other verbs are refused rather than written
        await client.request("DELETE", NODES.path(None, "n"), params=[("dryRun", "All")])
    assert err.value.status == 400
    assert [n["metadata"]["name"] for n in server.objects(NODES)] == ["n"]


async def test_proxy_annotation_must_point_at_loopback(client: KubeClient) -> None:
    remote = {"metadata": {"name": "remote", "annotations": {BACKEND_ANNOTATION: "http://192.0.2.1:9400"}}}
    await client.create(SERVICES, remote, "default")
    with pytest.raises(ApiError) as err:
        await client.request_text("GET", SERVICES.path("default", "remote", "proxy") + "/metrics")
    assert err.value.status == 503 and "loopback" in err.value.message


async def test_graceful_pod_deletion_waits_for_the_kubelet(tmp_path: Path) -> None:
    async with SimApiServer(graceful_pod_deletion=True) as srv:
        kube = await connect(srv, tmp_path / "kc")
        async with kube:
            await kube.create(PODS, pod_body("bound", node="node-1"), "default")
            await kube.create(PODS, pod_body("pending"), "default")
            terminating = await kube.delete(PODS, "bound", "default")
            assert terminating["metadata"]["deletionGracePeriodSeconds"] == 30
            await kube.delete(PODS, "pending", "default")  # never scheduled: gone at once
            assert [p["metadata"]["name"] for p in (await kube.list(PODS, "default"))["items"]] == ["bound"]
            await kube.request("DELETE", PODS.path("default", "bound"), body={"gracePeriodSeconds": 0})
            assert (await kube.list(PODS, "default"))["items"] == []


async def test_the_official_kubernetes_client_works_against_it(server: SimApiServer, tmp_path: Path) -> None:
    from kubernetes.aio import client as k8s
    from kubernetes.aio import config as k8s_config
    from kubernetes.aio import watch as k8s_watch

    configuration = k8s.Configuration()
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    await k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with k8s.ApiClient(configuration) as api:
        resource = k8s.ResourceV1Api(api)
        body = slice_body()
        body.update(apiVersion="resource.k8s.io/v1", kind="ResourceSlice")
        created = await resource.create_resource_slice(body)
        listed = await resource.list_resource_slice(
            field_selector=f"spec.nodeName=node-1,spec.driver={DRIVER}", limit=10
        )
        assert [s.metadata.name for s in listed.items] == [created.metadata.name]
        assert listed.items[0].spec.devices[1].attributes["index"].int == 1
        patched = await resource.patch_resource_slice(
            created.metadata.name, {"metadata": {"labels": {"x": "y"}}}
        )
        assert patched.metadata.labels == {"x": "y"}
        events = [e async for e in k8s_watch.Watch().stream(resource.list_resource_slice, timeout_seconds=1)]
        assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", created.metadata.name)]
        deleted = await resource.delete_resource_slice(created.metadata.name)
        assert deleted.metadata.uid == created.metadata.uid
        assert (await k8s.VersionApi(api).get_code()).git_version == "v1.37.2"
