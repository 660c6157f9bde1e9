"""Format rules behind ownerReference, device status and garbage-collection decisions (upstream semantics)."""

from __future__ import annotations

import pytest

from driver.kube.api.names import uid_errors
from driver.kube.api.resourceclaim import interface_address_errors
from driver.kube.api.resourceslice import validate_resource_slice
from driver.sim.registry import (
    DANGLING,
    GC_DELETE,
    GC_DROP_DANGLING,
    GC_KEEP,
    SOLID,
    UNRESOLVABLE,
    gc_verdict,
)

CIDR = "must be a valid address in CIDR form, (e.g. 10.9.8.7/24 or 2001:db8::1/64)"
NORMALIZED = (
    "uid must be in RFC 4122 normalized form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` with lowercase hexadecimal "
    "characters"
)


@pytest.mark.parametrize(
    ("value", "errors"),
    [
        ("10.9.8.7/24", []),
        ("2001:db8::1/64", []),
        ("10.9.8.7/32", []),
        # netutils' sloppy parser reads leading zeros as decimal, so these parse but are not canonical.
        ("010.9.8.7/24", ['must be in canonical form ("10.9.8.7/24")']),
        ("10.9.8.7/024", ['must be in canonical form ("10.9.8.7/24")']),
        # An IPv4-mapped IPv6 address prints as IPv4 with its prefix taken relative to 32 bits.
        ("::ffff:10.9.8.7/120", ['must be in canonical form ("10.9.8.7/24")']),
        ("2001:0db8::1/64", ['must be in canonical form ("2001:db8::1/64")']),
        ("10.9.8.7/33", [CIDR]),
        ("10.9.8.256/24", [CIDR]),
        ("fe80::1%eth0/64", [CIDR]),
        ("10.9.8.7/", [CIDR]),
        ("10.9.8.7/+8", [CIDR]),
        ("", [CIDR]),
    ],
)
def test_interface_addresses(value: str, errors: list[str]) -> None:
    assert interface_address_errors(value) == errors


@pytest.mark.parametrize(
    ("value", "errors"),
    [
        ("7d3e1c62-4f0b-4c1a-9a59-1d2f3e4a5b6c", []),
        ("7D3E1C62-4F0B-4C1A-9A59-1D2F3E4A5B6C", [NORMALIZED]),
        ("{7d3e1c62-4f0b-4c1a-9a59-1d2f3e4a5b6c}", [NORMALIZED]),
        ("urn:uuid:7d3e1c62-4f0b-4c1a-9a59-1d2f3e4a5b6c", [NORMALIZED]),
        ("7d3e1c624f0b4c1a9a591d2f3e4a5b6c", [NORMALIZED]),
        (
            "urn:uid:x7d3e1c62-4f0b-4c1a-9a59-1d2f3e4a5b6c",
            ['error validating uid: invalid urn prefix: "urn:uid:x"'],
        ),
        ("(7d3e1c62-4f0b-4c1a-9a59-1d2f3e4a5b6c)", ["error validating uid: invalid bracketed UUID format"]),
        ("7d3e1c62_4f0b-4c1a-9a59-1d2f3e4a5b6c", ["error validating uid: invalid UUID format"]),
        ("7d3e1c62-4f0b-4c1a-9a59-1d2f3e4a5b6g", ["error validating uid: invalid UUID format"]),
        ("abc", ["error validating uid: invalid UUID length: 3"]),
    ],
)
def test_uids(value: str, errors: list[str]) -> None:
    assert uid_errors(value) == errors


def slice_meta(**meta: object) -> dict[str, object]:
    spec = {
        "driver": "gpu.example.com",
        "nodeName": "n",
        "pool": {"name": "n", "generation": 0, "resourceSliceCount": 1},
    }
    return {"metadata": {"name": "s", **meta}, "spec": spec}


def test_owner_reference_field_types_are_decode_errors() -> None:
    ref = {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "u", "controller": "yes"}
    errors = validate_resource_slice(slice_meta(ownerReferences=[ref, "not-an-object"]))
    assert sorted((e.field, e.is_decode_error) for e in errors) == [
        ("metadata.ownerReferences[0].controller", True),
        ("metadata.ownerReferences[1]", True),
    ]


def test_api_version_with_two_slashes_has_no_version() -> None:
    ref = {"apiVersion": "a/b/c", "kind": "Node", "name": "n", "uid": "u"}
    errors = validate_resource_slice(slice_meta(ownerReferences=[ref]))
    assert [str(e) for e in errors] == [
        'metadata.ownerReferences.apiVersion: Invalid value: "a/b/c": version must not be empty'
    ]


def test_annotation_keys_are_checked_in_lower_case() -> None:
    assert validate_resource_slice(slice_meta(annotations={"Example.COM/Key": "v"})) == []
    errors = validate_resource_slice(slice_meta(annotations={"/key": "v"}))
    assert [str(e) for e in errors] == [
        'metadata.annotations: Invalid value: "/key": prefix part must be non-empty'
    ]


@pytest.mark.parametrize(
    ("states", "verdict"),
    [
        ([DANGLING], GC_DELETE),
        ([DANGLING, DANGLING], GC_DELETE),
        ([SOLID], GC_KEEP),
        ([SOLID, DANGLING], GC_DROP_DANGLING),
        ([DANGLING, UNRESOLVABLE], GC_KEEP),
        ([SOLID, DANGLING, UNRESOLVABLE], GC_KEEP),
        ([], GC_KEEP),
    ],
)
def test_gc_verdicts(states: list[str], verdict: str) -> None:
    assert gc_verdict(states) == verdict
