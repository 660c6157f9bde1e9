"""ResourceSlice / DeviceClass / ResourceClaim validation, rule by rule (Kubernetes 1.35 apiserver rules).

Each rule has a rejected example and an accepted boundary example. Accepted objects are also checked
against the upstream structural schemas of kubernetes-validate (when installed), and so are the
decode-level rejections, so that our notion of "structurally fine" matches the published schemas.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver.kube.api.deviceclass import validate_device_class
from driver.kube.api.devicetaintrule import validate_device_taint_rule
from driver.kube.api.fields import ErrorType, FieldError
from driver.kube.api.quantities import is_quantity
from driver.kube.api.resourceclaim import (
    validate_resource_claim,
    validate_resource_claim_status,
    validate_resource_claim_template,
)
from driver.kube.api.resourceslice import validate_resource_slice
from driver.semver import is_semver
from driver.sim.status import decode_error_status, invalid_status

try:
    import kubernetes_validate
except ImportError:  # optional dev dependency
    kubernetes_validate = None

K8S_VERSION = "1.35.0"
JSON = dict[str, Any]


def structurally_valid(obj: JSON) -> bool | None:
    """True/False per the upstream JSON schema, None when kubernetes-validate is not installed."""
    if kubernetes_validate is None:
        return None
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError:
        return False
    return True


def device(name: str = "gpu-0", **fields: Any) -> JSON:
    return {"name": name, **fields}


def make_slice(devices: list[JSON] | None = None, **spec: Any) -> JSON:
    body: JSON = {
        "driver": "gpu.example.com",
        "nodeName": "node-1",
        "pool": {"name": "node-1", "generation": 0, "resourceSliceCount": 1},
    }
    if devices is not None:
        body["devices"] = devices
    body.update(spec)
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": "node-1-gpu-abcde"},
        "spec": {k: v for k, v in body.items() if v is not None},
    }


def gpus(count: int, **fields: Any) -> list[JSON]:
    return [device(f"gpu-{i}", **copy.deepcopy(fields)) for i in range(count)]


def accepted(obj: JSON, validate: Any = validate_resource_slice) -> None:
    errors = validate(obj)
    assert errors == [], [str(e) for e in errors]
    assert structurally_valid(obj) in (True, None)


def rejected(errors: list[FieldError], error_type: ErrorType, field: str) -> FieldError:
    matches = [e for e in errors if e.type is error_type and e.field == field]
    assert matches, f"expected {error_type.name} at {field}, got {[str(e) for e in errors]}"
    return matches[0]


# -- ResourceSlice: spec-level rules -------------------------------------------------------------


def test_a_typical_slice_is_accepted() -> None:
    attrs = {
        "productName": {"string": "NVIDIA H100 80GB HBM3"},
        "driverVersion": {"version": "550.54.15"},
        "resource.kubernetes.io/pciBusID": {"string": "0000:3b:00.0"},
        "resource.kubernetes.io/numaNode": {"int": 0},
        "mig": {"bool": False},
    }
    accepted(make_slice(gpus(8, attributes=attrs, capacity={"memory": {"value": "80Gi"}})))


@pytest.mark.parametrize(
    ("driver", "error_type"),
    [
        ("", ErrorType.REQUIRED),
        ("gpu_example.com", ErrorType.INVALID),
        ("-gpu.example.com", ErrorType.INVALID),
        ("a" * 30 + "." + "b" * 33, ErrorType.TOO_LONG),  # 64 bytes
    ],
)
def test_driver_name_rejected(driver: str, error_type: ErrorType) -> None:
    rejected(validate_resource_slice(make_slice(driver=driver)), error_type, "spec.driver")


@pytest.mark.parametrize("driver", ["a" * 30 + "." + "b" * 32, "gpu.example.com", "Gpu.Example.com"])
def test_driver_name_accepted(driver: str) -> None:
    # 63 bytes is the limit; the server checks the DNS-subdomain format case-insensitively.
    accepted(make_slice(driver=driver))


@pytest.mark.parametrize(
    ("pool", "error_type"),
    [
        ("", ErrorType.REQUIRED),
        ("a//b", ErrorType.INVALID),
        ("Node_1", ErrorType.INVALID),
        ("/".join(["a" * 63] * 4) + "/ab", ErrorType.TOO_LONG),  # 255 bytes
    ],
)
def test_pool_name_rejected(pool: str, error_type: ErrorType) -> None:
    spec_pool = {"name": pool, "generation": 0, "resourceSliceCount": 1}
    rejected(validate_resource_slice(make_slice(pool=spec_pool)), error_type, "spec.pool.name")


def test_pool_name_of_253_bytes_with_slashes_is_accepted() -> None:
    name = "/".join(["a" * 63] * 3) + "/" + "b" * 61
    assert len(name) == 253
    accepted(make_slice(pool={"name": name, "generation": 0, "resourceSliceCount": 1}))


def test_pool_generation_and_slice_count() -> None:
    errors = validate_resource_slice(
        make_slice(pool={"name": "p", "generation": -1, "resourceSliceCount": 0})
    )
    rejected(errors, ErrorType.INVALID, "spec.pool.generation")
    rejected(errors, ErrorType.INVALID, "spec.pool.resourceSliceCount")
    accepted(make_slice(pool={"name": "p", "generation": 0, "resourceSliceCount": 1}))


def test_exactly_one_node_selection_is_required() -> None:
    none = validate_resource_slice(make_slice(nodeName=None))
    assert "exactly one of" in rejected(none, ErrorType.REQUIRED, "spec").detail
    both = validate_resource_slice(make_slice(allNodes=True))
    assert "multiple fields are set" in rejected(both, ErrorType.INVALID, "spec").detail
    accepted(make_slice(nodeName=None, allNodes=True))


def test_node_name_must_not_be_empty_and_all_nodes_must_be_true() -> None:
    rejected(validate_resource_slice(make_slice(nodeName="")), ErrorType.INVALID, "spec.nodeName")
    errors = validate_resource_slice(make_slice(nodeName=None, allNodes=False))
    rejected(errors, ErrorType.INVALID, "spec.allNodes")


def _term(key: str = "kubernetes.io/hostname") -> JSON:
    return {"matchExpressions": [{"key": key, "operator": "In", "values": ["node-1"]}]}


def test_node_selector_needs_exactly_one_term() -> None:
    two = make_slice(nodeName=None, nodeSelector={"nodeSelectorTerms": [_term(), _term("zone")]})
    rejected(validate_resource_slice(two), ErrorType.INVALID, "spec.nodeSelector.nodeSelectorTerms")
    zero = make_slice(nodeName=None, nodeSelector={"nodeSelectorTerms": []})
    rejected(validate_resource_slice(zero), ErrorType.REQUIRED, "spec.nodeSelector.nodeSelectorTerms")
    accepted(make_slice(nodeName=None, nodeSelector={"nodeSelectorTerms": [_term()]}))


def test_node_selector_requirements_are_checked() -> None:
    bad = {"matchExpressions": [{"key": "zone", "operator": "In", "values": []}]}
    errors = validate_resource_slice(make_slice(nodeName=None, nodeSelector={"nodeSelectorTerms": [bad]}))
    rejected(errors, ErrorType.REQUIRED, "spec.nodeSelector.nodeSelectorTerms[0].matchExpressions[0].values")


def test_per_device_node_selection() -> None:
    per_device = make_slice([device(nodeName="node-1"), device("gpu-1", allNodes=True)], nodeName=None)
    per_device["spec"]["perDeviceNodeSelection"] = True
    accepted(per_device)
    missing = make_slice([device()], nodeName=None, perDeviceNodeSelection=True)
    rejected(validate_resource_slice(missing), ErrorType.REQUIRED, "spec.devices[0]")
    not_enabled = make_slice([device(nodeName="node-1")])
    rejected(validate_resource_slice(not_enabled), ErrorType.INVALID, "spec.devices[0]")


# -- ResourceSlice: devices ----------------------------------------------------------------------

TAINT = {"key": "gpu.example.com/unhealthy", "value": "xid-79", "effect": "NoSchedule"}


def test_128_devices_accepted_129_rejected() -> None:
    accepted(make_slice(gpus(128)))
    error = rejected(validate_resource_slice(make_slice(gpus(129))), ErrorType.TOO_MANY, "spec.devices")
    assert error.body() == "Too many: 129: must have at most 128 items"


def test_64_devices_with_taints_accepted_65_rejected() -> None:
    devices = gpus(64)
    devices[0]["taints"] = [TAINT]
    accepted(make_slice(devices))
    devices = gpus(65)
    devices[-1]["taints"] = [TAINT]
    rejected(validate_resource_slice(make_slice(devices)), ErrorType.TOO_MANY, "spec.devices")


def test_64_devices_with_counter_consumption_accepted_65_rejected() -> None:
    consumes = [{"counterSet": "gpu-0-counters", "counters": {"memory": {"value": "10Gi"}}}]
    accepted(make_slice(gpus(64, consumesCounters=consumes)))
    errors = validate_resource_slice(make_slice(gpus(65, consumesCounters=consumes)))
    rejected(errors, ErrorType.TOO_MANY, "spec.devices")


@pytest.mark.parametrize("name", ["GPU-0", "gpu_0", "-gpu", "g" * 64])
def test_device_names_must_be_dns_labels(name: str) -> None:
    rejected(validate_resource_slice(make_slice([device(name)])), ErrorType.INVALID, "spec.devices[0].name")


def test_device_name_of_63_characters_is_accepted_and_names_must_be_unique() -> None:
    accepted(make_slice([device("g" * 63)]))
    error = rejected(
        validate_resource_slice(make_slice([device(), device()])), ErrorType.DUPLICATE, "spec.devices[1]"
    )
    assert str(error) == 'spec.devices[1]: Duplicate value: "gpu-0"'


@pytest.mark.parametrize(
    ("key", "error_type"),
    [
        ("a" * 33, ErrorType.TOO_LONG),
        ("1abc", ErrorType.INVALID),
        ("has-dash", ErrorType.INVALID),
        ("bad_domain/name", ErrorType.INVALID),
        ("model\n", ErrorType.INVALID),  # full match: no trailing newline
        ("/name", ErrorType.INVALID),
        ("example.com/", ErrorType.INVALID),
        ("d" * 64 + "/name", ErrorType.TOO_LONG),
    ],
)
def test_attribute_keys_must_be_qualified_names(key: str, error_type: ErrorType) -> None:
    errors = validate_resource_slice(make_slice([device(attributes={key: {"int": 1}})]))
    rejected(errors, error_type, "spec.devices[0].attributes")
    errors = validate_resource_slice(make_slice([device(capacity={key: {"value": "1"}})]))
    rejected(errors, error_type, "spec.devices[0].capacity")


@pytest.mark.parametrize(
    # More than one slash: kube-apiserver accepts the key unchecked (upstream keeps that gap).
    "key",
    ["a" * 32, "_private", "resource.kubernetes.io/pcieRoot", "d" * 63 + "/" + "n" * 32, "a/b/c"],
)
def test_attribute_keys_at_the_limits_are_accepted(key: str) -> None:
    accepted(make_slice([device(attributes={key: {"int": 1}})]))


def test_32_attributes_and_capacities_accepted_33_rejected() -> None:
    attrs = {f"attr{i}": {"int": i} for i in range(20)}
    caps = {f"cap{i}": {"value": "1"} for i in range(12)}
    accepted(make_slice([device(attributes=attrs, capacity=caps)]))
    caps["cap12"] = {"value": "1"}
    error = rejected(
        validate_resource_slice(make_slice([device(attributes=attrs, capacity=caps)])),
        ErrorType.INVALID,
        "spec.devices[0]",
    )
    assert error.value == 33


@pytest.mark.parametrize("attribute", [{}, {"int": 1, "string": "x"}, {"bool": True, "version": "1.0.0"}])
def test_an_attribute_has_exactly_one_value(attribute: JSON) -> None:
    errors = validate_resource_slice(make_slice([device(attributes={"a": attribute})]))
    assert "exactly one value" in rejected(errors, ErrorType.INVALID, "spec.devices[0].attributes[a]").detail


@pytest.mark.parametrize("attribute", [{"int": -5}, {"bool": False}, {"string": ""}, {"version": "0.0.0"}])
def test_each_single_attribute_type_is_accepted(attribute: JSON) -> None:
    accepted(make_slice([device(attributes={"a": attribute})]))


def test_string_attribute_of_64_accepted_65_rejected() -> None:
    accepted(make_slice([device(attributes={"a": {"string": "x" * 64}})]))
    errors = validate_resource_slice(make_slice([device(attributes={"a": {"string": "x" * 65}})]))
    rejected(errors, ErrorType.TOO_LONG, "spec.devices[0].attributes[a].string")


@pytest.mark.parametrize(
    "version", ["1.2.3", "0.0.0", "10.20.30", "1.2.3-rc.1", "1.2.3-0a.1+build.5", "1.0.0+20130313144700"]
)
def test_semver_accepted(version: str) -> None:
    accepted(make_slice([device(attributes={"v": {"version": version}})]))


@pytest.mark.parametrize(
    "version", ["01.2.3", "1.02.3", "v1.2.3", "1.2", "1.2.3.4", "1.2.3-01", "1.2.3-", "1.2.3+", ""]
)
def test_semver_rejected(version: str) -> None:
    errors = validate_resource_slice(make_slice([device(attributes={"v": {"version": version}})]))
    error = rejected(errors, ErrorType.INVALID, "spec.devices[0].attributes[v].version")
    assert error.detail == "must be a string compatible with semver.org spec 2.0.0"


def test_version_longer_than_64_is_rejected() -> None:
    version = "1.2.3-" + "a" * 59
    assert len(version) == 65 and is_semver(version)
    errors = validate_resource_slice(make_slice([device(attributes={"v": {"version": version}})]))
    rejected(errors, ErrorType.TOO_LONG, "spec.devices[0].attributes[v].version")


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
def test_every_plain_semver_triple_is_accepted_and_a_leading_zero_is_not(
    major: int, minor: int, patch: int
) -> None:
    assert is_semver(f"{major}.{minor}.{patch}")
    assert not is_semver(f"0{major}.{minor}.{patch}")
    assert not is_semver(f"v{major}.{minor}.{patch}")


@pytest.mark.parametrize(
    "value", ["80Gi", "1500m", "1e3", "0", "+1", "-1", ".5", "5.", "1E", 80, 1.5, " 1Gi", "1Gi ", None]
)
def test_capacity_quantities_accepted(value: Any) -> None:
    """Spaces around a quantity are trimmed and a null one is zero, as the API server decodes them."""
    assert value is None or is_quantity(value)
    accepted_obj = make_slice([device(capacity={"memory": {"value": value}})])
    assert validate_resource_slice(accepted_obj) == []


@pytest.mark.parametrize("value", ["80GB", "abc", "", "1\n", "1e", "0x10", "Infinity", True])
def test_capacity_quantities_rejected_while_decoding(value: Any) -> None:
    errors = validate_resource_slice(make_slice([device(capacity={"memory": {"value": value}})]))
    error = rejected(errors, ErrorType.TYPE_INVALID, "spec.devices[0].capacity[memory].value")
    assert error.is_decode_error


def test_request_policy_needs_multiple_allocations() -> None:
    policy = {"default": "1Gi", "validValues": ["1Gi", "2Gi"]}
    cap = {"memory": {"value": "80Gi", "requestPolicy": policy}}
    errors = validate_resource_slice(make_slice([device(capacity=cap)]))
    error = rejected(errors, ErrorType.FORBIDDEN, "spec.devices[0].capacity[memory].requestPolicy")
    assert error.detail == "allowMultipleAllocations must be true"
    accepted(make_slice([device(capacity=cap, allowMultipleAllocations=True)]))


def test_request_policy_values_are_checked() -> None:
    unsorted = {
        "memory": {"value": "80Gi", "requestPolicy": {"default": "1Gi", "validValues": ["2Gi", "1Gi"]}}
    }
    errors = validate_resource_slice(make_slice([device(capacity=unsorted, allowMultipleAllocations=True)]))
    rejected(errors, ErrorType.INVALID, "spec.devices[0].capacity[memory].requestPolicy.validValues[1]")
    ranged = {
        "value": "80Gi",
        "requestPolicy": {"default": "1Gi", "validRange": {"min": "1Gi", "step": "1Gi"}},
    }
    accepted(make_slice([device(capacity={"memory": ranged}, allowMultipleAllocations=True)]))
    off_step = {
        "value": "80Gi",
        "requestPolicy": {"default": "1536Mi", "validRange": {"min": "1Gi", "step": "1Gi"}},
    }
    errors = validate_resource_slice(
        make_slice([device(capacity={"memory": off_step}, allowMultipleAllocations=True)])
    )
    rejected(errors, ErrorType.INVALID, "spec.devices[0].capacity[memory].requestPolicy.validRange.step")


# -- taints, counters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("taint", "error_type", "field"),
    [
        ({"key": "bad key", "effect": "NoSchedule"}, ErrorType.INVALID, "key"),
        ({"key": "", "effect": "NoSchedule"}, ErrorType.INVALID, "key"),
        ({"key": "k", "value": "v" * 64, "effect": "NoSchedule"}, ErrorType.INVALID, "value"),
        ({"key": "k", "value": "bad value", "effect": "NoSchedule"}, ErrorType.INVALID, "value"),
        ({"key": "k", "effect": "Evict"}, ErrorType.NOT_SUPPORTED, "effect"),
        ({"key": "k"}, ErrorType.REQUIRED, "effect"),
    ],
)
def test_taints_rejected(taint: JSON, error_type: ErrorType, field: str) -> None:
    errors = validate_resource_slice(make_slice([device(taints=[taint])]))
    rejected(errors, error_type, f"spec.devices[0].taints[0].{field}")


@pytest.mark.parametrize("effect", ["NoSchedule", "NoExecute", "None"])
def test_taint_effects_accepted(effect: str) -> None:
    accepted(make_slice([device(taints=[{"key": "example.com/k", "value": "v" * 63, "effect": effect}])]))


def test_16_taints_per_device_accepted_17_rejected() -> None:
    taints = [{"key": f"k{i}", "effect": "NoSchedule"} for i in range(16)]
    accepted(make_slice([device(taints=taints)]))
    taints.append({"key": "k16", "effect": "NoSchedule"})
    rejected(
        validate_resource_slice(make_slice([device(taints=taints)])),
        ErrorType.TOO_MANY,
        "spec.devices[0].taints",
    )


def counter_sets(count: int, counters: int = 1) -> list[JSON]:
    return [
        {"name": f"set-{i}", "counters": {f"c{j}": {"value": "1"} for j in range(counters)}}
        for i in range(count)
    ]


def test_8_counter_sets_accepted_9_rejected() -> None:
    accepted(make_slice(sharedCounters=counter_sets(8)))
    rejected(
        validate_resource_slice(make_slice(sharedCounters=counter_sets(9))),
        ErrorType.TOO_MANY,
        "spec.sharedCounters",
    )


def test_32_counters_per_set_accepted_33_rejected() -> None:
    accepted(make_slice(sharedCounters=counter_sets(1, 32)))
    errors = validate_resource_slice(make_slice(sharedCounters=counter_sets(1, 33)))
    rejected(errors, ErrorType.TOO_MANY, "spec.sharedCounters[0].counters")


def test_counter_set_names_are_dns_labels_and_unique() -> None:
    sets = counter_sets(2)
    sets[0]["name"] = "Set_0"
    rejected(
        validate_resource_slice(make_slice(sharedCounters=sets)),
        ErrorType.INVALID,
        "spec.sharedCounters[0].name",
    )
    sets = counter_sets(2)
    sets[1]["name"] = sets[0]["name"]
    rejected(
        validate_resource_slice(make_slice(sharedCounters=sets)),
        ErrorType.DUPLICATE,
        "spec.sharedCounters[1]",
    )
    sets = counter_sets(1)
    sets[0]["counters"] = {}
    rejected(
        validate_resource_slice(make_slice(sharedCounters=sets)),
        ErrorType.REQUIRED,
        "spec.sharedCounters[0].counters",
    )


def test_a_slice_may_not_have_both_devices_and_shared_counters() -> None:
    errors = validate_resource_slice(make_slice(gpus(1), sharedCounters=counter_sets(1)))
    assert "only one of `sharedCounters` or `devices`" in rejected(errors, ErrorType.INVALID, "spec").detail


def test_2_counter_consumptions_per_device_accepted_3_rejected() -> None:
    consumes = [{"counterSet": f"set-{i}", "counters": {"c0": {"value": "1"}}} for i in range(3)]
    accepted(make_slice([device(consumesCounters=consumes[:2])]))
    errors = validate_resource_slice(make_slice([device(consumesCounters=consumes)]))
    rejected(errors, ErrorType.TOO_MANY, "spec.devices[0].consumesCounters")
    errors = validate_resource_slice(make_slice([device(consumesCounters=[consumes[0], consumes[0]])]))
    rejected(errors, ErrorType.DUPLICATE, "spec.devices[0].consumesCounters[1]")


def test_binding_conditions_come_in_pairs() -> None:
    errors = validate_resource_slice(make_slice([device(bindingConditions=["ready"])]))
    rejected(errors, ErrorType.INVALID, "spec.devices[0].bindingFailureConditions")
    accepted(
        make_slice(
            [device(bindingConditions=["ready"], bindingFailureConditions=["failed"], bindsToNode=True)]
        )
    )


# -- updates, metadata, decoding -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("driver",), "other.example.com", "spec.driver"),
        (("pool", "name"), "other-pool", "spec.pool.name"),
        (("nodeName",), "node-2", "spec.nodeName"),
    ],
)
def test_driver_pool_name_and_node_name_are_immutable(path: tuple[str, ...], value: str, field: str) -> None:
    old = make_slice(gpus(1))
    new = copy.deepcopy(old)
    target = new["spec"]
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    error = rejected(validate_resource_slice(new, old), ErrorType.INVALID, field)
    assert error.detail == "field is immutable"


def test_devices_and_generation_may_change_on_update() -> None:
    old = make_slice(gpus(1))
    new = make_slice(gpus(2), pool={"name": "node-1", "generation": 1, "resourceSliceCount": 1})
    assert validate_resource_slice(new, old) == []


def test_metadata_name_must_be_a_dns_subdomain() -> None:
    obj = make_slice()
    obj["metadata"]["name"] = "Node_1"
    rejected(validate_resource_slice(obj), ErrorType.INVALID, "metadata.name")
    obj["metadata"] = {"generateName": "node-1-gpu.example.com-"}
    assert validate_resource_slice(obj) == []
    obj["metadata"] = {}
    rejected(validate_resource_slice(obj), ErrorType.REQUIRED, "metadata.name")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s["spec"].__setitem__("devices", {"gpu-0": {}}), "spec.devices"),
        (
            lambda s: s["spec"]["devices"][0]["attributes"].__setitem__("n", {"int": "5"}),
            "spec.devices[0].attributes[n].int",
        ),
        (lambda s: s["spec"]["pool"].__setitem__("generation", "1"), "spec.pool.generation"),
        (lambda s: s["spec"].__setitem__("allNodes", "true"), "spec.allNodes"),
    ],
)
def test_wrong_json_types_are_decode_errors(mutate: Any, field: str) -> None:
    obj = make_slice([device(attributes={"n": {"int": 5}})])
    mutate(obj)
    error = rejected(validate_resource_slice(obj), ErrorType.TYPE_INVALID, field)
    assert error.is_decode_error
    assert structurally_valid(obj) in (False, None)


# -- Status objects ------------------------------------------------------------------------------


def test_invalid_status_has_the_api_server_shape() -> None:
    errors = validate_resource_slice(make_slice([device("GPU")], driver=""))
    status = invalid_status("ResourceSlice", "resource.k8s.io", "node-1-gpu-abcde", errors)
    assert status["kind"] == "Status" and status["apiVersion"] == "v1"
    assert status["status"] == "Failure" and status["reason"] == "Invalid" and status["code"] == 422
    assert status["details"]["name"] == "node-1-gpu-abcde"
    assert status["details"]["group"] == "resource.k8s.io"
    assert status["details"]["kind"] == "ResourceSlice"
    causes = {(c["reason"], c["field"]) for c in status["details"]["causes"]}
    assert ("FieldValueRequired", "spec.driver") in causes
    assert ("FieldValueInvalid", "spec.devices[0].name") in causes
    assert status["message"].startswith(
        'ResourceSlice.resource.k8s.io "node-1-gpu-abcde" is invalid: [spec.driver: Required value, '
    )


def test_invalid_status_with_one_error_has_no_brackets() -> None:
    errors = validate_resource_slice(make_slice(pool={"name": "p", "generation": 0, "resourceSliceCount": 0}))
    status = invalid_status("ResourceSlice", "resource.k8s.io", "s", errors)
    assert status["message"] == (
        'ResourceSlice.resource.k8s.io "s" is invalid: spec.pool.resourceSliceCount: Invalid value: 0: '
        "must be greater than zero"
    )
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": "Invalid value: 0: must be greater than zero",
            "field": "spec.pool.resourceSliceCount",
        }
    ]


def test_decode_error_status_is_a_bad_request() -> None:
    errors = validate_resource_slice(make_slice([device(capacity={"memory": {"value": "80GB"}})]))
    status = decode_error_status("ResourceSlice", "resource.k8s.io/v1", errors)
    assert status["code"] == 400 and status["reason"] == "BadRequest"
    assert status["message"].startswith(
        'ResourceSlice in version "v1" cannot be handled as a ResourceSlice: '
    )


# -- DeviceClass ---------------------------------------------------------------------------------


def device_class(selectors: list[JSON] | None = None, **spec: Any) -> JSON:
    body: JSON = {"selectors": selectors} if selectors is not None else {}
    body.update(spec)
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": "gpu.example.com"},
        "spec": body,
    }


def cel(expression: str) -> JSON:
    return {"cel": {"expression": expression}}


def test_device_class_selectors_32_accepted_33_rejected() -> None:
    accepted(device_class([cel('device.driver == "gpu.example.com"')] * 32), validate_device_class)
    errors = validate_device_class(device_class([cel("true")] * 33))
    rejected(errors, ErrorType.TOO_MANY, "spec.selectors")


def test_device_class_selector_needs_valid_cel() -> None:
    rejected(validate_device_class(device_class([{}])), ErrorType.REQUIRED, "spec.selectors[0].cel")
    errors = validate_device_class(device_class([cel('device.attributes["a"].b >')]))
    assert (
        "compilation failed" in rejected(errors, ErrorType.INVALID, "spec.selectors[0].cel.expression").detail
    )
    errors = validate_device_class(device_class([cel("x" * (10 * 1024 + 1))]))
    rejected(errors, ErrorType.TOO_LONG, "spec.selectors[0].cel.expression")


@pytest.mark.parametrize(
    ("expression", "detail"),
    [
        # Type errors are compile errors, as the API server's type checker finds them.
        ('device.capacity["a.example.com"].memory > quantity("1Gi")', "found no matching overload for '_>_'"),
        ("1 < 2 < 3", "found no matching overload for '_<_' applied to '(bool, int)'"),
        ("1", "must evaluate to bool or the unknown type, not int"),
        ('quantity("1").sign() == 1', "undeclared reference to 'sign'"),
        ('device.atributes["a"].b', "undefined field 'atributes'"),
        # 1.37 defaults for new objects: attributes are `any`, and `includes` needs list-type attributes.
        ('device.attributes["a.example.com"].b.exists(x, x > 0)', "cannot be the range of a comprehension"),
        ('device.attributes["a.example.com"].b.includes(1)', "undeclared reference to 'includes'"),
    ],
)
def test_device_class_selector_is_type_checked(expression: str, detail: str) -> None:
    errors = validate_device_class(device_class([cel(expression)]))
    error = rejected(errors, ErrorType.INVALID, "spec.selectors[0].cel.expression")
    assert error.detail.startswith("compilation failed: ERROR: <input>:") or "must evaluate" in error.detail
    assert detail in error.detail


def test_device_class_selector_over_the_cost_limit_is_forbidden() -> None:
    ten = "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"
    expression = (
        f"{ten}.all(a, {ten}.all(b, {ten}.all(c, {ten}.all(d, {ten}.all(e, {ten}.all(f, a < 100))))))"
    )
    errors = validate_device_class(device_class([cel(expression)]))
    assert "too complex" in rejected(errors, ErrorType.FORBIDDEN, "spec.selectors[0].cel.expression").detail
    accepted(device_class([cel(f"{ten}.all(a, {ten}.all(b, a < b || a >= b))")]), validate_device_class)


def test_device_class_config_needs_driver_and_object_parameters() -> None:
    config = [{"opaque": {"driver": "gpu.example.com", "parameters": {"sharing": "timeslice"}}}]
    accepted(device_class(config=config), validate_device_class)
    errors = validate_device_class(device_class(config=[{"opaque": {"parameters": [1, 2]}}]))
    rejected(errors, ErrorType.REQUIRED, "spec.config[0].opaque.driver")
    rejected(errors, ErrorType.INVALID, "spec.config[0].opaque.parameters")


# -- ResourceClaim -------------------------------------------------------------------------------


def request(name: str = "gpu", **exactly: Any) -> JSON:
    return {"name": name, "exactly": {"deviceClassName": "gpu.example.com", **exactly}}


def claim(requests: list[JSON], **devices: Any) -> JSON:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "claim-1", "namespace": "default"},
        "spec": {"devices": {"requests": requests, **devices}},
    }


def test_claim_requests_32_accepted_33_rejected() -> None:
    accepted(claim([request(f"r{i}") for i in range(32)]), validate_resource_claim)
    errors = validate_resource_claim(claim([request(f"r{i}") for i in range(33)]))
    rejected(errors, ErrorType.TOO_MANY, "spec.devices.requests")


def test_claim_request_names_are_unique_dns_labels() -> None:
    rejected(
        validate_resource_claim(claim([request("GPU")])), ErrorType.INVALID, "spec.devices.requests[0].name"
    )
    errors = validate_resource_claim(claim([request("a"), request("a")]))
    rejected(errors, ErrorType.DUPLICATE, "spec.devices.requests[1]")


def test_claim_request_needs_exactly_one_of_exactly_or_first_available() -> None:
    rejected(
        validate_resource_claim(claim([{"name": "gpu"}])), ErrorType.REQUIRED, "spec.devices.requests[0]"
    )
    both = request()
    both["firstAvailable"] = [{"name": "a", "deviceClassName": "gpu.example.com"}]
    rejected(validate_resource_claim(claim([both])), ErrorType.INVALID, "spec.devices.requests[0]")


def test_count_only_with_exact_count() -> None:
    errors = validate_resource_claim(claim([request(allocationMode="All", count=2)]))
    error = rejected(errors, ErrorType.INVALID, "spec.devices.requests[0].exactly.count")
    assert error.detail == "must not be specified when allocationMode is 'All'"
    errors = validate_resource_claim(claim([request(count=-1)]))
    rejected(errors, ErrorType.INVALID, "spec.devices.requests[0].exactly.count")
    errors = validate_resource_claim(claim([request(allocationMode="Some")]))
    rejected(errors, ErrorType.NOT_SUPPORTED, "spec.devices.requests[0].exactly.allocationMode")
    accepted(
        claim([request(allocationMode="All"), request("b", count=4), request("c", count=0)]),
        validate_resource_claim,
    )


def test_first_available_8_accepted_9_rejected() -> None:
    subs = [{"name": f"s{i}", "deviceClassName": "gpu.example.com"} for i in range(9)]
    accepted(claim([{"name": "gpu", "firstAvailable": subs[:8]}]), validate_resource_claim)
    errors = validate_resource_claim(claim([{"name": "gpu", "firstAvailable": subs}]))
    rejected(errors, ErrorType.TOO_MANY, "spec.devices.requests[0].firstAvailable")


def test_claim_constraints_reference_known_requests_by_qualified_name() -> None:
    good = {"requests": ["gpu", "alt/s0"], "matchAttribute": "gpu.example.com/interconnectDomain"}
    subs = [{"name": "s0", "deviceClassName": "gpu.example.com"}]
    accepted(
        claim([request(), {"name": "alt", "firstAvailable": subs}], constraints=[good]),
        validate_resource_claim,
    )
    unknown = {"requests": ["nope"], "matchAttribute": "gpu.example.com/x"}
    errors = validate_resource_claim(claim([request()], constraints=[unknown]))
    rejected(errors, ErrorType.INVALID, "spec.devices.constraints[0].requests[0]")
    bare = {"matchAttribute": "interconnectDomain"}
    errors = validate_resource_claim(claim([request()], constraints=[bare]))
    rejected(errors, ErrorType.INVALID, "spec.devices.constraints[0].matchAttribute")


def test_claim_selectors_and_tolerations_are_checked() -> None:
    errors = validate_resource_claim(claim([request(selectors=[cel("device.attributes[")])]))
    rejected(errors, ErrorType.INVALID, "spec.devices.requests[0].exactly.selectors[0].cel.expression")
    tolerations = [{"key": "k", "operator": "Exists", "value": "v"}]
    errors = validate_resource_claim(claim([request(tolerations=tolerations)]))
    rejected(errors, ErrorType.INVALID, "spec.devices.requests[0].exactly.tolerations[0].value")
    accepted(
        claim([request(tolerations=[{"key": "k", "operator": "Exists", "effect": "NoSchedule"}])]),
        validate_resource_claim,
    )


def test_claim_spec_is_immutable() -> None:
    old = claim([request()])
    new = claim([request(count=2)])
    rejected(validate_resource_claim(new, old), ErrorType.INVALID, "spec")
    relabelled = copy.deepcopy(old)
    relabelled["metadata"]["labels"] = {"team": "ml"}
    assert validate_resource_claim(relabelled, old) == []


def test_claim_status_rules() -> None:
    old = claim([request()])
    reserved = copy.deepcopy(old)
    reserved["status"] = {"reservedFor": [{"resource": "pods", "name": "p", "uid": "u1"}]}
    rejected(validate_resource_claim_status(reserved, old), ErrorType.FORBIDDEN, "status.reservedFor")
    result = {"request": "gpu", "driver": "gpu.example.com", "pool": "node-1", "device": "gpu-0"}
    allocated = copy.deepcopy(old)
    allocated["status"] = {
        "allocation": {"devices": {"results": [result]}},
        "reservedFor": reserved["status"]["reservedFor"],
    }
    assert validate_resource_claim_status(allocated, old) == []
    changed = copy.deepcopy(allocated)
    changed["status"]["allocation"]["devices"]["results"][0]["device"] = "gpu-1"
    rejected(validate_resource_claim_status(changed, allocated), ErrorType.INVALID, "status.allocation")
    stranger = copy.deepcopy(allocated)
    stranger["status"]["devices"] = [{"driver": "gpu.example.com", "pool": "node-1", "device": "gpu-9"}]
    rejected(validate_resource_claim_status(stranger, allocated), ErrorType.INVALID, "status.devices[0]")
    unknown_request = copy.deepcopy(old)
    unknown_request["status"] = {"allocation": {"devices": {"results": [{**result, "request": "other"}]}}}
    rejected(
        validate_resource_claim_status(unknown_request, old),
        ErrorType.INVALID,
        "status.allocation.devices.results[0].request",
    )


def test_claim_template() -> None:
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "gpu-template", "namespace": "default"},
        "spec": {"metadata": {"labels": {"app": "x"}}, "spec": {"devices": {"requests": [request()]}}},
    }
    accepted(template, validate_resource_claim_template)
    template["spec"]["spec"]["devices"]["requests"] = [{"name": "gpu"}]
    rejected(validate_resource_claim_template(template), ErrorType.REQUIRED, "spec.spec.devices.requests[0]")


def test_request_name_of_the_wrong_type_is_reported_not_a_crash() -> None:
    """Regression: a non-string request name made the duplicate check raise TypeError (a 500)."""

    claim = {
        "metadata": {"name": "x", "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": {"a": 1}, "exactly": {"deviceClassName": "c"}}]}},
    }
    errors = validate_resource_claim(claim)
    assert any("spec.devices.requests[0].name" in str(e) for e in errors)


def test_nano_and_micro_quantity_suffixes_are_valid() -> None:
    """Regression: the quantity pattern rejected the decimal-SI suffixes n and u."""

    assert is_quantity("5n") and is_quantity("10u") and is_quantity("1500m")
    assert not is_quantity("5x") and not is_quantity("80GB")


# -- DeviceTaintRule ------------------------------------------------------------------------------


def taint_rule(**spec: Any) -> JSON:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceTaintRule",
        "metadata": {"name": "drain"},
        "spec": spec,
    }


def test_device_taint_rule() -> None:
    taint = {"key": "example.com/maintenance", "effect": "NoExecute"}
    selector = {"driver": "gpu.example.com", "pool": "node-1", "device": "gpu-0"}
    assert validate_device_taint_rule(taint_rule(deviceSelector=selector, taint=taint)) == []
    assert validate_device_taint_rule(taint_rule(taint=taint)) == []  # no selector: selects nothing
    rejected(
        validate_device_taint_rule(taint_rule(deviceSelector=selector)), ErrorType.REQUIRED, "spec.taint"
    )
    bad_effect = taint_rule(taint={**taint, "effect": "PreferNoSchedule"})
    rejected(validate_device_taint_rule(bad_effect), ErrorType.NOT_SUPPORTED, "spec.taint.effect")
    bad_device = taint_rule(deviceSelector={"device": "GPU_0"}, taint=taint)
    rejected(validate_device_taint_rule(bad_device), ErrorType.INVALID, "spec.deviceSelector.device")


def test_a_namespace_on_a_slice_is_no_error_because_the_api_server_clears_it() -> None:
    body = make_slice()
    body["metadata"]["namespace"] = "default"
    assert validate_resource_slice(body) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("driver", "gpu.example.com\n"),
        ("nodeName", "node-1\n"),
    ],
)
def test_names_are_matched_whole_a_trailing_newline_is_invalid(path: str, value: str) -> None:
    errors = validate_resource_slice(make_slice(**{path: value}))
    rejected(errors, ErrorType.INVALID, f"spec.{path}")


def test_an_int64_overflow_is_a_decode_error() -> None:
    errors = validate_resource_slice(make_slice([device(attributes={"n": {"int": 2**63}})]))
    assert rejected(errors, ErrorType.TYPE_INVALID, "spec.devices[0].attributes[n].int").is_decode_error
