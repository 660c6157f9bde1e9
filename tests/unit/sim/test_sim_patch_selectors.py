"""The sandbox API server's pure pieces: selector parsing/matching and the patch formats."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver.sim.kinds import KIND_SPECS
from driver.sim.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from driver.sim.selectors import SelectorError, parse_field_selector, parse_label_selector

PODS = next(s for s in KIND_SPECS if s.key == "pods")


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("", {}, True),
        ("a=1", {"a": "1"}, True),
        ("a=1", {}, False),
        ("a!=1", {}, True),
        ("a in (1,2), b", {"a": "2", "b": ""}, True),
        ("a notin (1,2)", {"a": "3"}, True),
        ("!a", {"a": "x"}, False),
        ("example.com/gpu=true", {"example.com/gpu": "true"}, True),
        ("a=", {"a": ""}, True),
        ("n<3", {"n": "2"}, True),
        ("n<3", {"n": "x"}, False),
    ],
)
def test_label_selector_matching(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector).matches(labels) is expected


@pytest.mark.parametrize("selector", ["a in 1", "a=1,", "a b", "a=(", "bad key!=1", "n>x", "a=b c"])
def test_label_selector_errors(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


def test_field_selector_with_escapes_and_unknown_fields() -> None:
    pod = {"metadata": {"name": "a,b", "namespace": "ns"}, "spec": {"nodeName": "n=1"}}
    selector = parse_field_selector(r"metadata.name=a\,b,spec.nodeName==n\=1", PODS.fields)
    assert selector.matches(pod, PODS.fields)
    assert not parse_field_selector("spec.nodeName!=n=1", PODS.fields).matches(pod, PODS.fields)
    with pytest.raises(SelectorError, match=r"field label not supported: spec\.other"):
        parse_field_selector("spec.other=x", PODS.fields)
    with pytest.raises(SelectorError):
        parse_field_selector("spec.nodeName", PODS.fields)


def test_merge_patch_follows_rfc7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "l": [3], "n": {"x": None}}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "l": [3], "n": {}}
    assert target["c"] == {"d": "e", "f": "g"}  # the input is not modified


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=3), json_values, max_size=4))
def test_a_merge_patch_that_sets_values_yields_them(patch: dict[str, Any]) -> None:
    result = merge_patch({}, patch)
    for key, value in patch.items():
        if value is None:
            assert key not in result
        elif not isinstance(value, dict):
            assert result[key] == value


def test_strategic_merge_by_key_and_directives() -> None:
    pod = {
        "metadata": {"finalizers": ["a"]},
        "spec": {"containers": [{"name": "main", "image": "x"}, {"name": "side", "image": "y"}]},
        "status": {"conditions": [{"type": "Ready", "status": "False"}]},
    }
    patch = {
        "metadata": {"finalizers": ["b", "a"]},
        "spec": {
            "containers": [{"name": "side", "image": "z"}, {"name": "main", "$patch": "delete"}],
            "$setElementOrder/containers": [{"name": "side"}],
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "Scheduled", "status": "True"}]
        },
    }
    result = strategic_merge_patch(pod, patch)
    assert result["metadata"]["finalizers"] == ["a", "b"]
    assert result["spec"]["containers"] == [{"name": "side", "image": "z"}]
    assert result["status"]["conditions"] == [
        {"type": "Ready", "status": "True"},
        {"type": "Scheduled", "status": "True"},
    ]
    replaced = strategic_merge_patch(pod, {"status": {"$patch": "replace", "phase": "Running"}})
    assert replaced["status"] == {"phase": "Running"}
    removed = strategic_merge_patch(pod, {"$deleteFromPrimitiveList/finalizers": ["a"], "metadata": {}})
    assert removed == pod  # the directive applies to the map it sits in, which has no such list
    removed = strategic_merge_patch(pod, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
    assert removed["metadata"]["finalizers"] == []
    with pytest.raises(PatchError, match="merge key"):
        strategic_merge_patch(pod, {"spec": {"containers": [{"image": "no-name"}]}})


def test_service_ports_merge_by_port_and_container_ports_by_container_port() -> None:
    svc = {"spec": {"ports": [{"port": 80, "name": "http"}]}}
    assert strategic_merge_patch(svc, {"spec": {"ports": [{"port": 443}]}})["spec"]["ports"] == [
        {"port": 80, "name": "http"},
        {"port": 443},
    ]
    pod = {"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]}}
    patched = strategic_merge_patch(
        pod, {"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 81}]}]}}
    )
    assert patched["spec"]["containers"][0]["ports"] == [{"containerPort": 80}, {"containerPort": 81}]


def test_json_patch() -> None:
    doc = {"a": {"b": [1, 2]}}
    assert json_patch(doc, [{"op": "add", "path": "/a/b/-", "value": 3}]) == {"a": {"b": [1, 2, 3]}}
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "test", "path": "/a/b/0", "value": 9}])
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "remove", "path": "/missing"}])
    with pytest.raises(PatchError):
        json_patch(doc, {"op": "add"})
