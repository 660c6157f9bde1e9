"""The objects in a document read from a file: the object itself, or the items of a list.

``kubectl get -o yaml`` writes a ``List`` whose items each carry ``kind`` and ``apiVersion``. A list read
straight from the API server (``GET /apis/resource.k8s.io/v1/resourceslices``) is typed --
``ResourceSliceList`` -- and its items carry neither: the list's kind and version say what they are.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

LIST_SUFFIX = "List"


def objects(doc: Any) -> Iterator[dict[str, Any]]:
    """Every object in ``doc``; items of a typed list get the list's item kind and apiVersion when they
    carry none. Anything that is not a mapping yields nothing."""
    if not isinstance(doc, Mapping):
        return
    items = doc.get("items")
    if not isinstance(items, list):
        yield dict(doc)
        return
    kind = str(doc.get("kind") or "")
    item_kind = kind[: -len(LIST_SUFFIX)] if kind.endswith(LIST_SUFFIX) and kind != LIST_SUFFIX else ""
    for item in items:
        if not isinstance(item, Mapping):
            continue
        typed = item_kind and not item.get("kind")
        yield from objects(
            {"kind": item_kind, "apiVersion": doc.get("apiVersion", ""), **item} if typed else item
        )
