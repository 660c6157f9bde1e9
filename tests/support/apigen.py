"""Generated write scenarios for the differential test of the sandbox API server against kube-apiserver.

Each scenario has the form of tests/fixtures/upstream-cases/validation.json (``kind``, ``namespace``,
``steps``) without a verdict: the real server gives it. A valid object of each kind is mutated at one place
per scenario, at the boundaries the API sets (lengths, counts, name formats, quantities, selectors, CEL,
int64 range, times) and a few updates check what the server stores. :func:`scenarios` is deterministic for
a seed; the fixed boundary cases come first, seeded random combinations after them.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from typing import Any

JSON = dict[str, Any]
NAMESPACE = "fidelity"
ADMIN_NAMESPACE = "fidelity-admin"  # labelled resource.kubernetes.io/admin-access: "true"
INT64_MAX = 2**63 - 1


def base_slice(name: str = "s") -> JSON:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name},
        "spec": {
            "driver": "fidelity.example.com",
            "pool": {"name": "fidelity-node", "generation": 1, "resourceSliceCount": 1},
            "nodeName": "fidelity-node",  # no such node: nothing else in a shared cluster looks at these
            "devices": [
                {
                    "name": "gpu-0",
                    "attributes": {"model": {"string": "H100"}, "gpu.example.com/index": {"int": 0}},
                    "capacity": {"memory": {"value": "80Gi"}},
                }
            ],
        },
    }


def base_claim(name: str = "c") -> JSON:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "fidelity.example.com"}}]}
        },
    }


def base_template(name: str = "t") -> JSON:
    claim = base_claim(name)
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": claim["metadata"],
        "spec": {"spec": claim["spec"]},
    }


def base_class(name: str = "fidelity.example.com") -> JSON:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": name},
        "spec": {"selectors": [{"cel": {"expression": 'device.driver == "fidelity.example.com"'}}]},
    }


BASES: dict[str, Callable[[], JSON]] = {
    "ResourceSlice": base_slice,
    "ResourceClaim": base_claim,
    "ResourceClaimTemplate": base_template,
    "DeviceClass": base_class,
}


def _set(obj: JSON, path: str, value: Any) -> JSON:
    """``obj`` with ``value`` at the dotted ``path`` (list indexes as numbers); ``...`` deletes the key."""
    out = copy.deepcopy(obj)
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    parent: Any = out
    for part in parts[:-1]:
        parent = parent[part]
    if value is ...:
        del parent[parts[-1]]
    else:
        parent[parts[-1]] = value
    return out


def _case(case_id: str, obj: JSON, *updates: tuple[str, JSON]) -> JSON:
    namespace = (
        (obj.get("metadata") or {}).get("namespace", "")
        if obj["kind"] in ("ResourceClaim", "ResourceClaimTemplate")
        else ""
    )
    steps = [{"op": "create", "object": obj}] + [{"op": op, "object": body} for op, body in updates]
    return {"id": case_id, "kind": obj["kind"], "namespace": namespace or "", "steps": steps}


def _device(**fields: Any) -> JSON:
    return {"name": "gpu-0", **fields}


def _slice_with(path: str, value: Any) -> JSON:
    return _set(base_slice(), path, value)


def _devices(count: int, **fields: Any) -> list[JSON]:
    return [{"name": f"gpu-{i}", **fields} for i in range(count)]


QUANTITIES: tuple[Any, ...] = (
    "1Gi", " 1Gi", "1Gi ", "1Gi\n", "1.5", "-1", "1e3", 1000, 0.5, "0", "1E", "9223372036854775807",
    "9223372036854775808", "1000E", "abc", "", "1.5Gi", "0.0001", "+1Gi", "1ki", None,
)  # fmt: skip
NAMES: tuple[str, ...] = (
    "gpu-0", "gpu-0\n", "GPU-0", "gpu_0", "-gpu", "gpu-", "a" * 63, "a" * 64, "a.b", "0", "",
)  # fmt: skip
SUBDOMAINS: tuple[str, ...] = (
    "example.com", "example.com\n", "Example.com", "a" * 63 + ".com", "a" * 64 + ".com", "x." * 125 + "abc",
    "x." * 126 + "abc", "-a.com", "a..com",
)  # fmt: skip
KEYS: tuple[str, ...] = (
    "model", "a" * 32, "a" * 33, "example.com/model", "example.com/a/b", "/model", "example.com/", "1abc",
    "mo-del", "model\n", ("a" * 63) + ".com/x", "Example.COM/x", "a" * 64 + "/x",
)  # fmt: skip
LABEL_VALUES: tuple[str, ...] = ("ok", "", "a" * 63, "a" * 64, "-a", "a b", "a\n", "A.b_c")
CEL: tuple[str, ...] = (
    'device.driver == "fidelity.example.com"',
    "device.driver == 1",
    'device.attributes["fidelity.example.com"].model == "H100"',
    'device.capacity["fidelity.example.com"].memory.compareTo(quantity("1Gi")) >= 0',
    "device.driver ==",
    "",
    "  ",
    'device.attributes["fidelity.example.com"].all(k, k.size() > 0)',
    "true",
    "1",
    'device.attributes["fidelity.example.com"].model.matches("^H")',
    "device.nosuchfield",
    '"x".repeat(3) == "xxx"',
)


def fixed() -> Iterator[JSON]:
    for i, name in enumerate(NAMES):
        yield _case(f"slice/device-name/{i}", _slice_with("spec.devices.0.name", name))
        yield _case(f"claim/request-name/{i}", _set(base_claim(), "spec.devices.requests.0.name", name))
    for i, name in enumerate(SUBDOMAINS):
        yield _case(f"slice/driver/{i}", _slice_with("spec.driver", name))
        yield _case(f"slice/pool/{i}", _slice_with("spec.pool.name", name))
        yield _case(f"slice/pool-two-parts/{i}", _slice_with("spec.pool.name", f"fidelity-node/{name}"))
        yield _case(f"slice/metadata-name/{i}", _slice_with("metadata.name", name))
        yield _case(f"class/name/{i}", _set(base_class(), "metadata.name", name))
        yield _case(
            f"claim/class-name/{i}",
            _set(base_claim(), "spec.devices.requests.0.exactly.deviceClassName", name),
        )
    for size in (200, 243, 250, 253, 254, 300):
        yield _case(
            f"slice/generate-name/{size}", _slice_with("metadata", {"generateName": "a" * (size - 1) + "-"})
        )
        yield _case(
            f"claim/generate-name/{size}",
            _set(base_claim(), "metadata", {"generateName": "a" * (size - 1) + "-", "namespace": NAMESPACE}),
        )
    for i, key in enumerate(KEYS):
        yield _case(f"slice/attribute-key/{i}", _slice_with("spec.devices.0.attributes", {key: {"int": 1}}))
        yield _case(f"slice/capacity-key/{i}", _slice_with("spec.devices.0.capacity", {key: {"value": "1"}}))
        yield _case(
            f"claim/match-attribute/{i}",
            _set(base_claim(), "spec.devices.constraints", [{"matchAttribute": key}]),
        )
    attributes: list[Any] = [
        {"int": INT64_MAX}, {"int": INT64_MAX + 1}, {"int": -(2**63)}, {"int": -(2**63) - 1}, {"int": 1.5},
        {"string": "x" * 64}, {"string": "x" * 65}, {"string": "™" * 21}, {"string": "™" * 22},
        {"version": "1.2.3"}, {"version": "v1.2.3"}, {"version": "1.2.3\n"}, {"version": "01.2.3"},
        {"version": "1.2.3-rc.1+build.5"}, {"bool": True}, {"bool": "true"}, {}, None, {"int": 1, "bool": True},
        {"string": None}, "x",
    ]  # fmt: skip
    for i, attribute in enumerate(attributes):
        yield _case(
            f"slice/attribute-value/{i}", _slice_with("spec.devices.0.attributes", {"model": attribute})
        )
    for i, quantity in enumerate(QUANTITIES):
        yield _case(
            f"slice/capacity-value/{i}",
            _slice_with("spec.devices.0.capacity", {"memory": {"value": quantity}}),
        )
        yield _case(
            f"claim/capacity-request/{i}",
            _set(
                base_claim(), "spec.devices.requests.0.exactly.capacity", {"requests": {"memory": quantity}}
            ),
        )
        yield _case(
            f"slice/counter/{i}",
            _slice_with(
                "spec",
                {
                    **base_slice()["spec"],
                    "devices": None,
                    "sharedCounters": [{"name": "gpu-0", "counters": {"memory": {"value": quantity}}}],
                },
            ),
        )
    yield _case("slice/capacity-no-value", _slice_with("spec.devices.0.capacity", {"memory": {}}))
    for count in (32, 33):
        attrs = {f"a{i}": {"int": i} for i in range(count)}
        yield _case(f"slice/attributes/{count}", _slice_with("spec.devices.0.attributes", attrs))
    for count in (128, 129):
        yield _case(f"slice/devices/{count}", _slice_with("spec.devices", _devices(count)))
    for count in (64, 65):
        taint = [{"key": "k", "effect": "NoSchedule", "timeAdded": "2026-01-01T00:00:00Z"}]
        yield _case(
            f"slice/devices-with-taints/{count}", _slice_with("spec.devices", _devices(count, taints=taint))
        )
    for count in (16, 17):
        taints = [
            {"key": f"k{i}", "effect": "NoSchedule", "timeAdded": "2026-01-01T00:00:00Z"}
            for i in range(count)
        ]
        yield _case(f"slice/taints/{count}", _slice_with("spec.devices.0.taints", taints))
    taints: list[Any] = [
        {"key": "k", "effect": "NoSchedule"}, {"key": "k", "effect": "Bad"}, {"key": "k"}, {"key": "", "effect": "None"},
        {"key": "k", "value": "a" * 64, "effect": "NoExecute"}, {"key": "k", "effect": "NoSchedule", "timeAdded": "yesterday"},
        {"key": "k", "effect": "NoSchedule", "timeAdded": "2026-01-01T10:00:00.5+02:00"}, {"key": "k\n", "effect": "NoSchedule"},
    ]  # fmt: skip
    for i, taint in enumerate(taints):
        yield _case(f"slice/taint/{i}", _slice_with("spec.devices.0.taints", [taint]))
    selectors: list[Any] = [
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]},
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": []}]}]},
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Exists", "values": ["a"]}]}]},
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Gt", "values": ["1", "2"]}]}]},
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Bad"}]}]},
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "bad key", "operator": "Exists"}]}]},
        {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-1"]}]}]},
        {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["x"]}]}]},
        {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a", "b"]}]}]},
        {"nodeSelectorTerms": [{}, {}]},
        {"nodeSelectorTerms": []},
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a\n"]}]}]},
    ]  # fmt: skip
    for i, selector in enumerate(selectors):
        spec = {**base_slice()["spec"], "nodeSelector": selector}
        del spec["nodeName"]
        yield _case(f"slice/node-selector/{i}", _slice_with("spec", spec))
    for i, flags in enumerate(
        ({"allNodes": True}, {"allNodes": False}, {"perDeviceNodeSelection": True}, {}, {"nodeName": ""})
    ):
        spec = {**base_slice()["spec"], **flags}
        del spec["nodeName"]
        spec.update(flags)
        yield _case(f"slice/node-selection/{i}", _slice_with("spec", spec))
    for i, device_flags in enumerate(
        (
            {"nodeName": "node-1"},
            {"allNodes": True},
            {},
            {"nodeName": "", "allNodes": False},
            {"nodeName": "node-1", "allNodes": True},
        )
    ):
        spec = {**base_slice()["spec"], "perDeviceNodeSelection": True}
        del spec["nodeName"]
        spec["devices"] = [{**spec["devices"][0], **device_flags}]
        yield _case(f"slice/per-device-node-selection/{i}", _slice_with("spec", spec))
    for i, pool in enumerate(
        (
            {"name": "p", "resourceSliceCount": 1},
            {"name": "p", "generation": -1, "resourceSliceCount": 1},
            {"name": "p", "generation": INT64_MAX + 1, "resourceSliceCount": 1},
            {"name": "p", "resourceSliceCount": 0},
        )
    ):
        yield _case(f"slice/pool-fields/{i}", _slice_with("spec.pool", pool))
    yield _case("slice/namespace-set", _slice_with("metadata.namespace", "default"))
    yield _case("slice/unknown-field", _slice_with("spec.devices.0.basic", {}))
    for count in (0, 1, 32, 33):
        requests = [{"name": f"r{i}", "exactly": {"deviceClassName": "c"}} for i in range(count)]
        yield _case(f"claim/requests/{count}", _set(base_claim(), "spec.devices.requests", requests))
    for i, exactly in enumerate(
        (
            {"deviceClassName": "c", "count": 0}, {"deviceClassName": "c", "count": -1}, {"deviceClassName": "c", "count": INT64_MAX},
            {"deviceClassName": "c", "count": INT64_MAX + 1}, {"deviceClassName": "c", "allocationMode": "All"},
            {"deviceClassName": "c", "allocationMode": "All", "count": 2}, {"deviceClassName": "c", "allocationMode": "Some"},
            {"deviceClassName": "c", "count": "1"}, {}, {"deviceClassName": "c", "adminAccess": True},
            {"deviceClassName": "c", "adminAccess": False},
        )
    ):  # fmt: skip
        yield _case(f"claim/exactly/{i}", _set(base_claim(), "spec.devices.requests.0.exactly", exactly))
    admin = _set(base_claim(), "metadata.namespace", ADMIN_NAMESPACE)
    yield _case(
        "claim/admin-access-labelled", _set(admin, "spec.devices.requests.0.exactly.adminAccess", True)
    )
    for count in (16, 17, 40):
        tolerations = [{"key": f"k{i}", "operator": "Exists"} for i in range(count)]
        yield _case(
            f"claim/tolerations/{count}",
            _set(base_claim(), "spec.devices.requests.0.exactly.tolerations", tolerations),
        )
    for i, toleration in enumerate(
        (
            {"key": "k"},
            {"key": "k", "operator": "Exists", "value": "v"},
            {"operator": "Bad"},
            {"key": "k", "effect": "Bad"},
            {"key": "k", "tolerationSeconds": INT64_MAX + 1},
            {"value": "a" * 64},
        )
    ):
        yield _case(
            f"claim/toleration/{i}",
            _set(base_claim(), "spec.devices.requests.0.exactly.tolerations", [toleration]),
        )
    for i, expression in enumerate(CEL):
        selector = [{"cel": {"expression": expression}}]
        yield _case(
            f"claim/cel/{i}", _set(base_claim(), "spec.devices.requests.0.exactly.selectors", selector)
        )
        yield _case(f"class/cel/{i}", _set(base_class(), "spec.selectors", selector))
    for count in (8, 9):
        subs = [{"name": f"s{i}", "deviceClassName": "c"} for i in range(count)]
        yield _case(
            f"claim/first-available/{count}",
            _set(base_claim(), "spec.devices.requests.0", {"name": "gpu", "firstAvailable": subs}),
        )
    for size in (10 * 1024 - 10, 10 * 1024 - 9, 10 * 1024):
        params = {"s": "x" * size}
        config = [{"opaque": {"driver": "fidelity.example.com", "parameters": params}}]
        yield _case(f"class/opaque-size/{size}", _set(base_class(), "spec.config", config))
        yield _case(f"claim/opaque-size/{size}", _set(base_claim(), "spec.devices.config", config))
    for i, params in enumerate(({"s": "é" * 5110}, {"s": "é" * 5111}, [], "x", {})):
        config = [{"opaque": {"driver": "fidelity.example.com", "parameters": params}}]
        yield _case(f"class/opaque-params/{i}", _set(base_class(), "spec.config", config))
    for i, name in enumerate(
        (
            "example.com/gpu",
            "gpu",
            "kubernetes.io/gpu",
            "requests.example.com/gpu",
            "example.com/GPU_x",
            "example.com/a/b",
            "example.com/" + "a" * 64,
        )
    ):
        yield _case(
            f"class/extended-resource-name/{i}", _set(base_class(), "spec.extendedResourceName", name)
        )
    for i, meta in enumerate(
        (
            {"labels": {"a": "b"}},
            {"labels": {"a": "b\n"}},
            {"annotations": {"a": "b"}},
            {"name": "x"},
            {"namespace": "x"},
            {"generateName": "x-"},
            {"finalizers": ["a/b"]},
            {},
        )
    ):
        yield _case(f"template/metadata/{i}", _set(base_template(), "spec.metadata", meta))
    for i, finalizers in enumerate(
        (["example.com/f"], ["bad finalizer"], ["f"], ["example.com/f", "example.com/f"], ["a/b/c"])
    ):
        yield _case(f"claim/finalizers/{i}", _set(base_claim(), "metadata.finalizers", finalizers))
    yield from _updates()


def _updates() -> Iterator[JSON]:
    stored = base_slice()
    respelled = _set(stored, "spec.devices.0.capacity.memory.value", "81920Mi")
    yield _case("update/slice-quantity-spelling", stored, ("update", respelled))
    bumped = _set(stored, "spec.pool.generation", 2)
    yield _case("update/slice-spec-change", stored, ("update", bumped))
    tainted = _set(
        stored,
        "spec.devices.0.taints",
        [{"key": "k", "effect": "NoSchedule", "timeAdded": "2026-01-01T00:00:00Z"}],
    )
    untimed = _set(tainted, "spec.devices.0.taints.0.timeAdded", ...)
    yield _case("update/slice-taint-time-kept", tainted, ("update", untimed))
    yield _case(
        "update/slice-driver-immutable", stored, ("update", _set(stored, "spec.driver", "other.example.com"))
    )
    claim = base_claim()
    yield _case(
        "update/claim-spec-immutable", claim, ("update", _set(claim, "spec.devices.requests.0.name", "other"))
    )
    yield _case("update/claim-labels", claim, ("update", _set(claim, "metadata.labels", {"a": "b"})))
    result = {"request": "gpu", "driver": "fidelity.example.com", "pool": "node-1", "device": "gpu-0"}
    allocated = _set(claim, "status", {"allocation": {"devices": {"results": [result]}}})
    yield _case("update/claim-allocate", claim, ("status", allocated))
    for i, extra in enumerate(
        (
            {"shareID": "AAAAAAAA-aaaa-aaaa-aaaa-aaaaaaaaaaaa"},
            {"bindingConditions": ["a"]},
            {"consumedCapacity": {"memory": "1Gi"}},
            {"consumedCapacity": {"memory": "x"}},
            {"request": "nosuch"},
            {"adminAccess": True},
            {"adminAccess": False},
        )
    ):
        yield _case(
            f"update/claim-result/{i}",
            claim,
            ("status", _set(allocated, "status.allocation.devices.results.0", {**result, **extra})),
        )
    admin_claim = _set(claim, "metadata.namespace", ADMIN_NAMESPACE)
    admin_result = {**result, "adminAccess": True}
    yield _case(
        "update/claim-result-admin-access-labelled",
        admin_claim,
        ("status", _set(admin_claim, "status", {"allocation": {"devices": {"results": [admin_result]}}})),
    )
    status = {"driver": "fidelity.example.com", "pool": "node-1", "device": "gpu-0"}
    with_status = _set(allocated, "status.devices", [status])
    yield _case("update/claim-device-status", claim, ("status", with_status))
    dropped = _set(with_status, "status", {"devices": [status]})
    yield _case("update/claim-deallocate-with-status", claim, ("status", with_status), ("status", dropped))
    klass = base_class()
    yield _case(
        "update/class-selectors",
        klass,
        ("update", _set(klass, "spec.selectors", [{"cel": {"expression": "true"}}])),
    )


def _mutations(rng: random.Random) -> Iterator[JSON]:
    """Seeded combinations of two boundary values on one object."""
    slice_paths: list[tuple[str, tuple[Any, ...]]] = [
        ("spec.devices.0.name", NAMES),
        ("spec.driver", SUBDOMAINS),
        ("spec.pool.name", SUBDOMAINS),
        ("spec.devices.0.capacity", tuple({"memory": {"value": q}} for q in QUANTITIES)),
        (
            "spec.devices.0.attributes",
            tuple({key: {"string": value}} for key in KEYS[:4] for value in LABEL_VALUES),
        ),
    ]
    for n in range(40):
        obj = base_slice()
        for path, values in rng.sample(slice_paths, 2):
            obj = _set(obj, path, rng.choice(values))
        yield _case(f"mutated/slice/{n}", obj)
    claim_paths: list[tuple[str, tuple[Any, ...]]] = [
        ("spec.devices.requests.0.name", NAMES),
        ("spec.devices.requests.0.exactly.deviceClassName", SUBDOMAINS),
        ("spec.devices.requests.0.exactly.selectors", tuple([{"cel": {"expression": e}}] for e in CEL)),
        ("spec.devices.requests.0.exactly.count", (0, 1, -1, 5, INT64_MAX)),
        ("metadata.labels", tuple({"k": v} for v in LABEL_VALUES)),
    ]
    for n in range(30):
        obj = base_claim()
        for path, values in rng.sample(claim_paths, 2):
            obj = _set(obj, path, rng.choice(values))
        yield _case(f"mutated/claim/{n}", obj)


def scenarios(seed: int = 37) -> list[JSON]:
    return [*fixed(), *_mutations(random.Random(seed))]
