"""Garbage collection of dependents whose owners are not live, seen over real HTTP and watches.

Upstream's collector looks every owner reference up by apiVersion, kind, name (and the dependent's
namespace for a namespaced owner) and compares the uid: a dependent with no live owner is deleted, dangling
references next to a live owner are removed, and references it cannot resolve stop it from acting.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from driver.kube.client import (
    NAMESPACES,
    NODES,
    PODS,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
    ApiError,
    KubeClient,
    ResourceType,
    WatchEvent,
)
from driver.sim.apiserver import SimApiServer

JSON = dict[str, Any]
MARKER = "zz-marker"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[KubeClient]:
    async with SimApiServer() as server:
        kube = await KubeClient.connect(str(server.write_kubeconfig(tmp_path / "kubeconfig")))
        yield kube
        await kube.close()


def owner_ref(kind: str, name: str, uid: str, api_version: str = "v1", controller: bool = True) -> JSON:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": controller}


def slice_body(name: str, *owners: JSON) -> JSON:
    return {
        "metadata": {"name": name, "ownerReferences": list(owners)},
        "spec": {
            "driver": "gpu.example.com",
            "nodeName": "node-a",
            "pool": {"name": "node-a", "generation": 0, "resourceSliceCount": 1},
            "devices": [{"name": "gpu-0"}],
        },
    }


def claim_body(name: str, *owners: JSON) -> JSON:
    request = {"name": "gpu", "exactly": {"deviceClassName": "gpu.example.com"}}
    return {
        "metadata": {"name": name, "ownerReferences": list(owners)},
        "spec": {"devices": {"requests": [request]}},
    }


async def resource_version(client: KubeClient, rt: ResourceType) -> str:
    return str((await client.list(rt))["metadata"]["resourceVersion"])


async def events_until_marker(
    client: KubeClient, rt: ResourceType, since: str, namespace: str | None = None
) -> list[tuple[str, str]]:
    """(type, name) of the watch events after ``since``, up to the ADDED of the marker object."""
    seen: list[tuple[str, str]] = []
    # KubeClient.watch is an async generator function, typed by what it yields.
    watch = cast(
        AsyncGenerator[WatchEvent], client.watch(rt, namespace, resource_version=since, timeout_seconds=10)
    )
    async with contextlib.aclosing(watch) as events:
        async for event in events:
            name = event.object["metadata"].get("name", "")
            if event.type == "BOOKMARK":
                continue
            if name == MARKER:
                return seen
            seen.append((event.type, name))
    raise AssertionError(f"the watch ended before the marker; saw {seen}")


async def missing(client: KubeClient, rt: ResourceType, name: str, namespace: str | None = None) -> bool:
    try:
        await client.get(rt, name, namespace)
    except ApiError as err:
        return err.status == 404
    return False


async def test_slice_owned_by_a_node_with_another_uid_is_deleted(client: KubeClient) -> None:
    await client.create(NODES, {"metadata": {"name": "node-a"}})  # its uid is a fresh random one
    since = await resource_version(client, RESOURCE_SLICES)

    created = await client.create(
        RESOURCE_SLICES,
        slice_body("stale", owner_ref("Node", "node-a", "0f3c2b1e-0000-4000-8000-000000000001")),
    )
    await client.create(RESOURCE_SLICES, slice_body(MARKER))

    assert created["metadata"]["name"] == "stale"  # the create itself succeeds, as upstream
    assert await events_until_marker(client, RESOURCE_SLICES, since) == [
        ("ADDED", "stale"),
        ("DELETED", "stale"),
    ]
    assert await missing(client, RESOURCE_SLICES, "stale")


async def test_slice_owned_by_the_live_node_stays(client: KubeClient) -> None:
    node = await client.create(NODES, {"metadata": {"name": "node-a"}})
    since = await resource_version(client, RESOURCE_SLICES)

    await client.create(
        RESOURCE_SLICES, slice_body("owned", owner_ref("Node", "node-a", node["metadata"]["uid"]))
    )
    await client.create(RESOURCE_SLICES, slice_body(MARKER))

    assert await events_until_marker(client, RESOURCE_SLICES, since) == [("ADDED", "owned")]
    assert (await client.get(RESOURCE_SLICES, "owned"))["metadata"]["ownerReferences"][0]["name"] == "node-a"


async def test_claim_owned_by_a_pod_that_never_existed_is_deleted(client: KubeClient) -> None:
    since = await resource_version(client, RESOURCE_CLAIMS)
    await client.create(
        RESOURCE_CLAIMS, claim_body("orphan", owner_ref("Pod", "ghost", "u-ghost")), "default"
    )
    await client.create(RESOURCE_CLAIMS, claim_body(MARKER), "default")

    events = await events_until_marker(client, RESOURCE_CLAIMS, since, "default")
    assert events == [("ADDED", "orphan"), ("DELETED", "orphan")]


async def test_a_namespaced_owner_counts_only_in_the_dependents_namespace(client: KubeClient) -> None:
    await client.create(NAMESPACES, {"metadata": {"name": "team"}})
    pod = await client.create(
        PODS, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}, "team"
    )
    ref = owner_ref("Pod", "p", pod["metadata"]["uid"])

    await client.create(RESOURCE_CLAIMS, claim_body("same-namespace", ref), "team")
    await client.create(RESOURCE_CLAIMS, claim_body("other-namespace", ref), "default")

    assert (await client.get(RESOURCE_CLAIMS, "same-namespace", "team"))["metadata"][
        "name"
    ] == "same-namespace"
    assert await missing(client, RESOURCE_CLAIMS, "other-namespace", "default")


async def test_references_the_collector_cannot_resolve_keep_the_dependent(client: KubeClient) -> None:
    # A cluster-scoped dependent cannot have a namespaced owner, and ReplicaSets are not served here:
    # upstream's collector cannot resolve either reference, so it never deletes.
    await client.create(RESOURCE_SLICES, slice_body("pod-owned", owner_ref("Pod", "p", "u-pod")))
    await client.create(
        RESOURCE_SLICES,
        slice_body("rs-owned", owner_ref("ReplicaSet", "rs", "u-rs", api_version="apps/v1")),
    )
    assert (await client.get(RESOURCE_SLICES, "pod-owned"))["metadata"]["name"] == "pod-owned"
    assert (await client.get(RESOURCE_SLICES, "rs-owned"))["metadata"]["name"] == "rs-owned"


async def test_a_dangling_reference_next_to_a_live_owner_is_removed(client: KubeClient) -> None:
    node = await client.create(NODES, {"metadata": {"name": "node-a"}})
    live = owner_ref("Node", "node-a", node["metadata"]["uid"])
    gone = owner_ref("Node", "node-gone", "u-gone", controller=False)
    since = await resource_version(client, RESOURCE_SLICES)

    await client.create(RESOURCE_SLICES, slice_body("shared", live, gone))
    await client.create(RESOURCE_SLICES, slice_body(MARKER))

    assert await events_until_marker(client, RESOURCE_SLICES, since) == [
        ("ADDED", "shared"),
        ("MODIFIED", "shared"),
    ]
    assert (await client.get(RESOURCE_SLICES, "shared"))["metadata"]["ownerReferences"] == [live]


async def test_an_update_that_points_at_a_missing_owner_deletes_the_object(client: KubeClient) -> None:
    current = await client.create(RESOURCE_SLICES, slice_body("plain"))
    current["metadata"]["ownerReferences"] = [owner_ref("Node", "node-x", "u-x")]
    since = current["metadata"]["resourceVersion"]

    await client.update(RESOURCE_SLICES, current)
    await client.create(RESOURCE_SLICES, slice_body(MARKER))

    events = await events_until_marker(client, RESOURCE_SLICES, since)
    assert events == [("MODIFIED", "plain"), ("DELETED", "plain")]


async def test_deleting_one_of_two_owners_keeps_the_dependent_with_the_other(client: KubeClient) -> None:
    first = await client.create(NODES, {"metadata": {"name": "node-a"}})
    second = await client.create(NODES, {"metadata": {"name": "node-b"}})
    refs = [
        owner_ref("Node", "node-a", first["metadata"]["uid"]),
        owner_ref("Node", "node-b", second["metadata"]["uid"], controller=False),
    ]
    await client.create(RESOURCE_SLICES, slice_body("two-owners", *refs))

    await client.delete(NODES, "node-a")
    assert (await client.get(RESOURCE_SLICES, "two-owners"))["metadata"]["ownerReferences"] == refs[1:]
    await client.delete(NODES, "node-b")
    assert await missing(client, RESOURCE_SLICES, "two-owners")
