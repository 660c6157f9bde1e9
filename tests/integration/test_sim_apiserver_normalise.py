"""The sandbox API server returns objects in the form a real one stores them, over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from driver.kube.client import RESOURCE_CLAIMS, RESOURCE_SLICES
from driver.sim.apiserver import SimApiServer

BASE = "/apis/resource.k8s.io/v1"
JSON = dict[str, Any]


@pytest.fixture
async def http() -> AsyncIterator[tuple[SimApiServer, aiohttp.ClientSession]]:
    async with SimApiServer() as server, aiohttp.ClientSession(server.url) as session:
        yield server, session


def slice_body(name: str, devices: list[JSON]) -> JSON:
    spec = {
        "driver": "gpu.example.com",
        "nodeName": "node-a",
        "pool": {"name": "node-a", "generation": 0, "resourceSliceCount": 1},
        "devices": devices,
    }
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name},
        "spec": spec,
    }


async def send(
    session: aiohttp.ClientSession, method: str, path: str, body: JSON, **params: str
) -> tuple[int, JSON, list[str]]:
    headers = {"Content-Type": "application/json"}
    async with session.request(
        method, path, data=json.dumps(body), params=params, headers=headers
    ) as response:
        return response.status, await response.json(), response.headers.getall("Warning", [])


async def test_quantities_come_back_canonical_and_empty_maps_go(
    http: tuple[SimApiServer, aiohttp.ClientSession],
) -> None:
    server, session = http
    device = {
        "name": "gpu-0",
        "attributes": {},
        "capacity": {
            "memory": {"value": "81920Mi"},
            "cores": {"value": 1000},
            "half": {"value": "0.5"},
            "big": {"value": 1500000},
            "kept": {"value": "+1Gi"},
        },
        "taints": [],
        "consumesCounters": [],
    }
    status, created, warnings = await send(
        session, "POST", f"{BASE}/resourceslices", slice_body("s", [device])
    )
    assert status == 201
    assert warnings == []
    expected = {
        "name": "gpu-0",
        "capacity": {
            "memory": {"value": "80Gi"},
            "cores": {"value": "1k"},
            "half": {"value": "500m"},
            "big": {"value": "1500k"},
            "kept": {"value": "+1Gi"},
        },
    }
    assert created["spec"]["devices"] == [expected]
    async with session.get(f"{BASE}/resourceslices/s") as response:
        assert (await response.json())["spec"]["devices"] == [expected]
    assert server.get_object(RESOURCE_SLICES, "s") == created


async def test_a_put_that_only_differs_in_form_is_no_change(
    http: tuple[SimApiServer, aiohttp.ClientSession],
) -> None:
    _, session = http
    sent = slice_body("s", [{"name": "gpu-0", "capacity": {"memory": {"value": "80Gi"}}}])
    _, created, _ = await send(session, "POST", f"{BASE}/resourceslices", sent)
    again = slice_body(
        "s", [{"name": "gpu-0", "attributes": {}, "capacity": {"memory": {"value": "81920Mi"}}}]
    )
    again["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    status, updated, _ = await send(session, "PUT", f"{BASE}/resourceslices/s", again)
    assert status == 200
    assert updated["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert updated["metadata"]["generation"] == created["metadata"]["generation"] == 1


async def test_unknown_fields_are_dropped_with_a_warning(
    http: tuple[SimApiServer, aiohttp.ClientSession],
) -> None:
    _, session = http
    body = slice_body("s", [{"name": "gpu-0", "basic": {"attributes": {"x": {"int": 1}}}}])
    body["spec"]["colour"] = "blue"
    status, created, warnings = await send(session, "POST", f"{BASE}/resourceslices", body)
    assert status == 201
    assert created["spec"]["devices"] == [{"name": "gpu-0"}]
    assert "colour" not in created["spec"]
    assert sorted(warnings) == [
        '299 - "unknown field \\"spec.colour\\""',
        '299 - "unknown field \\"spec.devices[0].basic\\""',
    ]


async def test_field_validation_strict_rejects_and_ignore_is_silent(
    http: tuple[SimApiServer, aiohttp.ClientSession],
) -> None:
    server, session = http
    body = slice_body("s", [{"name": "gpu-0", "basic": {}}])
    status, answer, _ = await send(session, "POST", f"{BASE}/resourceslices", body, fieldValidation="Strict")
    assert status == 400
    assert answer["reason"] == "BadRequest"
    assert 'strict decoding error: unknown field "spec.devices[0].basic"' in answer["message"]
    assert server.get_object(RESOURCE_SLICES, "s") is None
    status, created, warnings = await send(
        session, "POST", f"{BASE}/resourceslices", body, fieldValidation="Ignore"
    )
    assert (status, warnings) == (201, [])
    assert created["spec"]["devices"] == [{"name": "gpu-0"}]
    status, answer, _ = await send(session, "POST", f"{BASE}/resourceslices", body, fieldValidation="Loud")
    assert status == 400


async def test_times_become_whole_seconds_in_utc(http: tuple[SimApiServer, aiohttp.ClientSession]) -> None:
    server, session = http
    taint = {
        "key": "gpu.example.com/hot",
        "effect": "NoSchedule",
        "timeAdded": "2025-03-01T10:00:00.75+02:00",
    }
    status, created, _ = await send(
        session, "POST", f"{BASE}/resourceslices", slice_body("s", [{"name": "gpu-0", "taints": [taint]}])
    )
    assert status == 201
    assert created["spec"]["devices"][0]["taints"][0]["timeAdded"] == "2025-03-01T08:00:00Z"

    claim = {
        "metadata": {"name": "c"},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu"}}]}},
    }
    _, created, _ = await send(session, "POST", f"{BASE}/namespaces/default/resourceclaims", claim)
    result = {"request": "gpu", "driver": "gpu.example.com", "pool": "node-a", "device": "gpu-0"}
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "Prepared",
        "message": "",
        "lastTransitionTime": "2025-03-01T10:00:00.5Z",
    }
    created["status"] = {
        "allocation": {"devices": {"results": [result], "config": []}},
        "devices": [{**result, "conditions": [condition], "data": {"k": []}}],
        "reservedFor": [],
    }
    status, stored, _ = await send(
        session, "PUT", f"{BASE}/namespaces/default/resourceclaims/c/status", created
    )
    assert status == 200, stored
    assert stored["status"]["allocation"] == {"devices": {"results": [result]}}
    assert "reservedFor" not in stored["status"]
    (device,) = stored["status"]["devices"]
    assert device["conditions"][0]["lastTransitionTime"] == "2025-03-01T10:00:00Z"
    assert device["data"] == {"k": []}  # raw JSON is kept as sent
    assert server.get_object(RESOURCE_CLAIMS, "c", "default") == stored
