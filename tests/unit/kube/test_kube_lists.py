"""Objects in a document: kubectl's lists and the API's typed lists, whose items carry no kind."""

from __future__ import annotations

from driver.kube.lists import objects


def test_items_of_a_typed_list_get_its_kind_and_version() -> None:
    doc = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSliceList",
        "items": [{"metadata": {"name": "a"}}],
    }
    assert list(objects(doc)) == [
        {"kind": "ResourceSlice", "apiVersion": "resource.k8s.io/v1", "metadata": {"name": "a"}}
    ]


def test_kubectl_lists_keep_the_items_own_kinds_and_nest() -> None:
    inner = {
        "kind": "DeviceClassList",
        "apiVersion": "resource.k8s.io/v1",
        "items": [{"metadata": {"name": "c"}}],
    }
    doc = {"apiVersion": "v1", "kind": "List", "items": [{"kind": "Node", "apiVersion": "v1"}, inner, "junk"]}
    assert [o["kind"] for o in objects(doc)] == ["Node", "DeviceClass"]


def test_a_plain_object_and_non_objects() -> None:
    assert list(objects({"kind": "Node"})) == [{"kind": "Node"}]
    assert list(objects(["not", "an", "object"])) == []
    assert list(objects({"kind": "List", "items": [{"metadata": {}}]})) == [{"metadata": {}}]
