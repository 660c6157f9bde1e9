"""API discovery: which version serves a kind (DeviceTaintRule moved from v1beta2 in 1.36 to v1 in 1.37)."""

from __future__ import annotations

from typing import Any

import pytest

from driver.kube.client import DEVICE_TAINT_RULES, RESOURCE_SLICES, ApiError, KubeClient
from driver.kube.discovery import NotServedError, list_served, resource_type, served_type

JSON = dict[str, Any]


def resource_list(version: str, *kinds: tuple[str, str]) -> JSON:
    resources = [{"name": plural, "kind": kind, "namespaced": False} for plural, kind in kinds]
    resources += [{"name": f"{plural}/status", "kind": kind, "namespaced": False} for plural, kind in kinds]
    return {"kind": "APIResourceList", "groupVersion": f"resource.k8s.io/{version}", "resources": resources}


SLICES, RULES = ("resourceslices", "ResourceSlice"), ("devicetaintrules", "DeviceTaintRule")


def group(*versions: str) -> JSON:
    listed = [{"groupVersion": f"resource.k8s.io/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "name": "resource.k8s.io", "versions": listed, "preferredVersion": listed[0]}


#: What the API servers answer, as far as these tests ask (1.36 with DRADeviceTaintRules on).
SERVERS: dict[str, dict[str, JSON]] = {
    "1.36": {
        "/apis/resource.k8s.io": group("v1", "v1beta2", "v1beta1"),
        "/apis/resource.k8s.io/v1": resource_list("v1", SLICES),
        "/apis/resource.k8s.io/v1beta2": resource_list("v1beta2", SLICES, RULES),
        "/apis/resource.k8s.io/v1beta1": resource_list("v1beta1", SLICES),
    },
    "1.37": {
        "/apis/resource.k8s.io": group("v1", "v1beta2", "v1beta1"),
        "/apis/resource.k8s.io/v1": resource_list("v1", SLICES, RULES),
        "/apis/resource.k8s.io/v1beta2": resource_list("v1beta2", SLICES, RULES),
        "/apis/resource.k8s.io/v1beta1": resource_list("v1beta1", SLICES),
    },
    "1.36 without the gate": {
        "/apis/resource.k8s.io": group("v1", "v1beta2"),
        "/apis/resource.k8s.io/v1": resource_list("v1", SLICES),
        "/apis/resource.k8s.io/v1beta2": resource_list("v1beta2", SLICES),
    },
}


class FakeKube:
    def __init__(self, answers: dict[str, JSON]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def request(self, method: str, path: str, **_: Any) -> JSON:
        assert method == "GET"
        self.asked.append(path)
        if path not in self.answers:
            raise ApiError(404, "NotFound", f"{path} not found")
        return self.answers[path]


def kube(server: str) -> KubeClient:
    return FakeKube(SERVERS[server])  # type: ignore[return-value]


@pytest.mark.parametrize(("server", "version"), [("1.36", "v1beta2"), ("1.37", "v1")])
async def test_device_taint_rules_are_found_where_the_server_serves_them(server: str, version: str) -> None:
    found = await served_type(kube(server), DEVICE_TAINT_RULES)
    assert (found.version, found.path()) == (version, f"/apis/resource.k8s.io/{version}/devicetaintrules")


async def test_the_preferred_version_wins_and_is_asked_first() -> None:
    client = kube("1.37")
    assert (await served_type(client, RESOURCE_SLICES)).version == "v1"
    assert client.asked == ["/apis/resource.k8s.io", "/apis/resource.k8s.io/v1"]  # type: ignore[attr-defined]


async def test_a_kind_served_nowhere_is_an_error_naming_the_versions() -> None:
    with pytest.raises(NotServedError, match=r"devicetaintrules\.resource\.k8s\.io.*v1, v1beta2"):
        await served_type(kube("1.36 without the gate"), DEVICE_TAINT_RULES)


async def test_a_group_the_server_does_not_have() -> None:
    with pytest.raises(NotServedError, match=r"API group resource\.k8s\.io"):
        await served_type(FakeKube({}), DEVICE_TAINT_RULES)  # type: ignore[arg-type]


async def test_resource_type_by_kind_skips_subresources() -> None:
    found = await resource_type(kube("1.36"), "resource.k8s.io/v1beta2", "DeviceTaintRule")
    assert (found.plural, found.namespaced) == ("devicetaintrules", False)
    with pytest.raises(NotServedError):
        await resource_type(kube("1.36"), "resource.k8s.io/v1", "DeviceTaintRule")


class ListingKube(FakeKube):
    """Answers lists too: ``items`` per collection path."""

    def __init__(self, answers: dict[str, JSON], collections: dict[str, list[JSON]]) -> None:
        super().__init__(answers)
        self.collections = collections

    async def list(self, rt: Any, namespace: str | None = None, **_: Any) -> JSON:
        self.asked.append(rt.path(namespace))
        return {"items": self.collections[rt.path(namespace)]}


@pytest.mark.parametrize(("server", "version"), [("1.36", "v1beta2"), ("1.37", "v1")])
async def test_list_served_reads_the_served_version(server: str, version: str) -> None:
    rule = {"metadata": {"name": "drain"}, "spec": {}}
    client = ListingKube(SERVERS[server], {f"/apis/resource.k8s.io/{version}/devicetaintrules": [rule]})
    assert await list_served(client, DEVICE_TAINT_RULES) == [rule]  # type: ignore[arg-type]


async def test_list_served_is_empty_where_the_kind_is_not_served() -> None:
    client = ListingKube(SERVERS["1.36 without the gate"], {})
    assert await list_served(client, DEVICE_TAINT_RULES) == []  # type: ignore[arg-type]
