"""The sandbox API server rejects bad ownerReferences, annotations and claim device statuses with 422.

The messages and field paths are those of apimachinery's objectmeta.go, metav1 ValidateConditions and
resource.k8s.io's validateDeviceStatus.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from driver.sim.apiserver import SimApiServer

BASE = "/apis/resource.k8s.io/v1"
CLAIMS = f"{BASE}/namespaces/default/resourceclaims"
JSON = dict[str, Any]
UID = "7d3e1c62-4f0b-4c1a-9a59-1d2f3e4a5b6c"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with SimApiServer() as server, aiohttp.ClientSession(server.url) as http:
        yield http


async def send(
    session: aiohttp.ClientSession, method: str, path: str, body: JSON, content_type: str = "application/json"
) -> tuple[int, JSON]:
    headers = {"Content-Type": content_type}
    async with session.request(method, path, data=json.dumps(body), headers=headers) as response:
        return response.status, await response.json()


def causes(status: JSON) -> list[tuple[str, str, str]]:
    return [(c["reason"], c["field"], c["message"]) for c in status["details"]["causes"]]


def device_class(name: str, **meta: Any) -> JSON:
    return {"metadata": {"name": name, **meta}, "spec": {}}


async def test_owner_reference_without_uid_is_invalid(session: aiohttp.ClientSession) -> None:
    ref = {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": ""}
    status, body = await send(
        session, "POST", f"{BASE}/deviceclasses", device_class("dc", ownerReferences=[ref])
    )
    assert status == 422 and body["reason"] == "Invalid"
    assert causes(body) == [
        ("FieldValueInvalid", "metadata.ownerReferences.uid", 'Invalid value: "": must not be empty')
    ]


async def test_owner_reference_fields_must_all_be_set(session: aiohttp.ClientSession) -> None:
    ref = {"apiVersion": "apps/", "kind": "", "name": "", "uid": UID}
    status, body = await send(
        session, "POST", f"{BASE}/deviceclasses", device_class("dc", ownerReferences=[ref])
    )
    assert status == 422
    assert [(field, message) for _, field, message in causes(body)] == [
        ("metadata.ownerReferences.apiVersion", 'Invalid value: "apps/": version must not be empty'),
        ("metadata.ownerReferences.kind", 'Invalid value: "": must not be empty'),
        ("metadata.ownerReferences.name", 'Invalid value: "": must not be empty'),
    ]


async def test_two_controllers_are_invalid(session: aiohttp.ClientSession) -> None:
    refs = [
        {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": UID, "controller": True},
        {"apiVersion": "v1", "kind": "Node", "name": "node-b", "uid": UID[:-1] + "d", "controller": True},
    ]
    status, body = await send(
        session, "POST", f"{BASE}/deviceclasses", device_class("dc", ownerReferences=refs)
    )
    assert status == 422
    [(reason, field, message)] = causes(body)
    assert (reason, field) == ("FieldValueInvalid", "metadata.ownerReferences")
    assert message.endswith(
        'Only one reference can have Controller set to true. Found "true" in references for Node/node-a and Node/node-b'
    )


async def test_an_event_cannot_own_anything(session: aiohttp.ClientSession) -> None:
    ref = {"apiVersion": "v1", "kind": "Event", "name": "e", "uid": UID}
    status, body = await send(
        session, "POST", f"{BASE}/deviceclasses", device_class("dc", ownerReferences=[ref])
    )
    assert status == 422
    assert causes(body)[0][2].endswith("/v1, Kind=Event is disallowed from being an owner")


async def test_annotation_keys_must_be_qualified_names(session: aiohttp.ClientSession) -> None:
    annotations = {"bad key!": "v", "Example.COM/Mixed-Case": "upper case is fine in annotations"}
    status, body = await send(
        session, "POST", f"{BASE}/deviceclasses", device_class("dc", annotations=annotations)
    )
    assert status == 422
    assert [(reason, field) for reason, field, _ in causes(body)] == [
        ("FieldValueInvalid", "metadata.annotations")
    ]
    assert causes(body)[0][2].startswith('Invalid value: "bad key!": name part must consist of')


async def test_annotations_are_limited_to_256_kib_in_all(session: aiohttp.ClientSession) -> None:
    fits = {"a": "x" * (256 * 1024 - 1)}
    status, _ = await send(session, "POST", f"{BASE}/deviceclasses", device_class("fits", annotations=fits))
    assert status == 201
    over = {"a": "x" * (256 * 1024)}
    status, body = await send(
        session, "POST", f"{BASE}/deviceclasses", device_class("over", annotations=over)
    )
    assert status == 422
    assert causes(body) == [
        ("FieldValueTooLong", "metadata.annotations", "Too long: may not be more than 262144 bytes")
    ]


async def allocated_claim(session: aiohttp.ClientSession) -> JSON:
    request = {"name": "gpu", "exactly": {"deviceClassName": "gpu.example.com"}}
    status, claim = await send(
        session, "POST", CLAIMS, {"metadata": {"name": "c"}, "spec": {"devices": {"requests": [request]}}}
    )
    assert status == 201
    result = {"request": "gpu", "driver": "gpu.example.com", "pool": "node-a", "device": "gpu-0"}
    claim["status"] = {"allocation": {"devices": {"results": [result]}}}
    status, claim = await send(session, "PUT", f"{CLAIMS}/c/status", claim)
    assert status == 200
    return claim


async def put_device_status(session: aiohttp.ClientSession, claim: JSON, **fields: Any) -> tuple[int, JSON]:
    entry = {"driver": "gpu.example.com", "pool": "node-a", "device": "gpu-0", **fields}
    body = {**claim, "status": {**claim["status"], "devices": [entry]}}
    return await send(session, "PUT", f"{CLAIMS}/c/status", body)


GOOD_CONDITION = {
    "type": "Ready",
    "status": "True",
    "reason": "DeviceReady",
    "lastTransitionTime": "2025-03-01T10:00:00Z",
}


async def test_a_well_formed_device_status_is_stored(session: aiohttp.ClientSession) -> None:
    claim = await allocated_claim(session)
    network = {
        "interfaceName": "net1",
        "ips": ["10.9.8.7/24", "2001:db8::1/64"],
        "hardwareAddress": "ea:9f:ad:1b:2c:3d",
    }
    status, stored = await put_device_status(
        session, claim, conditions=[GOOD_CONDITION], data={"k": "v"}, networkData=network
    )
    assert status == 200, stored
    assert stored["status"]["devices"][0]["networkData"] == network


async def test_device_conditions_follow_metav1_rules(session: aiohttp.ClientSession) -> None:
    claim = await allocated_claim(session)
    bad = {"type": "not a type", "status": "Yes", "reason": "9lives", "message": "m" * (32 * 1024 + 1)}
    status, body = await put_device_status(session, claim, conditions=[GOOD_CONDITION, bad, GOOD_CONDITION])
    assert status == 422
    prefix = "status.devices[0].conditions"
    assert [(reason, field) for reason, field, _ in causes(body)] == [
        ("FieldValueInvalid", f"{prefix}[1].type"),
        ("FieldValueNotSupported", f"{prefix}[1].status"),
        ("FieldValueRequired", f"{prefix}[1].lastTransitionTime"),
        ("FieldValueInvalid", f"{prefix}[1].reason"),
        ("FieldValueTooLong", f"{prefix}[1].message"),
        ("FieldValueDuplicate", f"{prefix}[2].type"),
    ]
    messages = dict((field, message) for _, field, message in causes(body))
    assert (
        messages[f"{prefix}[1].status"]
        == 'Unsupported value: "Yes": supported values: "False", "True", "Unknown"'
    )
    assert messages[f"{prefix}[1].lastTransitionTime"] == "Required value: must be set"
    assert messages[f"{prefix}[1].reason"].startswith(
        'Invalid value: "9lives": a condition reason must start with'
    )
    assert messages[f"{prefix}[1].message"] == "Too long: may not be more than 32768 bytes"


async def test_device_data_must_be_a_json_object_of_at_most_10_kib(session: aiohttp.ClientSession) -> None:
    claim = await allocated_claim(session)
    status, body = await put_device_status(session, claim, data=[1, 2, 3])
    assert status == 422
    assert causes(body) == [
        (
            "FieldValueInvalid",
            "status.devices[0].data",
            'Invalid value: "<value omitted>": must be a valid JSON object',
        )
    ]
    status, body = await put_device_status(session, claim, data={"x": "y" * (10 * 1024)})
    assert status == 422
    assert causes(body) == [
        ("FieldValueTooLong", "status.devices[0].data", "Too long: may not be more than 10240 bytes")
    ]


async def test_network_data_limits_and_addresses(session: aiohttp.ClientSession) -> None:
    claim = await allocated_claim(session)
    network = {
        "interfaceName": "i" * 257,
        "hardwareAddress": "h" * 129,
        "ips": ["not-an-ip", "10.9.8.7", "2001:DB8::1/64", "10.9.8.7/24", "10.9.8.7/24"],
    }
    status, body = await put_device_status(session, claim, networkData=network)
    assert status == 422
    path = "status.devices[0].networkData"
    cidr = "must be a valid address in CIDR form, (e.g. 10.9.8.7/24 or 2001:db8::1/64)"
    assert causes(body) == [
        ("FieldValueTooLong", f"{path}.interfaceName", "Too long: may not be more than 256 bytes"),
        ("FieldValueTooLong", f"{path}.hardwareAddress", "Too long: may not be more than 128 bytes"),
        ("FieldValueInvalid", f"{path}.ips[0]", f'Invalid value: "not-an-ip": {cidr}'),
        ("FieldValueInvalid", f"{path}.ips[1]", f'Invalid value: "10.9.8.7": {cidr}'),
        (
            "FieldValueInvalid",
            f"{path}.ips[2]",
            'Invalid value: "2001:DB8::1/64": must be in canonical form ("2001:db8::1/64")',
        ),
        ("FieldValueDuplicate", f"{path}.ips[4]", 'Duplicate value: "10.9.8.7/24"'),
    ]


async def test_share_id_must_be_a_normalized_uuid(session: aiohttp.ClientSession) -> None:
    claim = await allocated_claim(session)
    status, body = await put_device_status(session, claim, shareID="not-a-uuid")
    assert status == 422
    assert ("FieldValueInvalid", "status.devices[0].shareID") in [(r, f) for r, f, _ in causes(body)]
    assert any(
        m == 'Invalid value: "not-a-uuid": error validating uid: invalid UUID length: 10'
        for _, _, m in causes(body)
    )
