"""The patch formats the sandbox API server accepts.

* JSON merge patch (RFC 7386): objects merge recursively, ``null`` deletes, lists replace.
* Strategic merge patch, the subset that matters for the kinds served here: like a merge patch, but
  lists of objects with a known patch merge key (``containers`` by ``name``, ``conditions`` by ``type``,
  ``ownerReferences`` by ``uid`` ...; see ``MERGE_KEYS``) merge entry by entry, ``metadata.finalizers``
  merges as a set, and the directives ``$patch: replace|delete``, ``$deleteFromPrimitiveList/<field>``
  are honoured (``$setElementOrder`` and ``$retainKeys`` are accepted and ignored). All other lists replace.
* JSON patch (RFC 6902), through the ``jsonpatch`` package.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

JSON = dict[str, Any]


class PatchError(ValueError):
    """A patch that cannot be applied (the server answers 422) or parsed (400)."""


# (parent field, list field) -> merge key; a parent of "" applies wherever the list appears.
MERGE_KEYS: dict[tuple[str, str], str] = {
    ("", "containers"): "name",
    ("", "initContainers"): "name",
    ("", "ephemeralContainers"): "name",
    ("", "volumes"): "name",
    ("", "volumeMounts"): "mountPath",
    ("", "volumeDevices"): "devicePath",
    ("", "env"): "name",
    ("", "imagePullSecrets"): "name",
    ("", "hostAliases"): "ip",
    ("", "conditions"): "type",
    ("", "ownerReferences"): "uid",
    ("", "resourceClaims"): "name",
    ("", "resourceClaimStatuses"): "name",
    ("", "reservedFor"): "uid",
    ("containers", "ports"): "containerPort",
    ("initContainers", "ports"): "containerPort",
    ("spec", "ports"): "port",
}
PRIMITIVE_SET_LISTS = {"finalizers"}

_DELETE = object()  # marks a map removed by "$patch: delete"


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch; returns a new document."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: JSON, patch: JSON) -> JSON:
    """Apply a strategic merge patch (the subset described in the module docstring)."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    result = _merge_map(target, patch, parent="")
    if result is _DELETE:
        return {}
    merged: JSON = result
    return merged


def _merge_map(target: Any, patch: JSON, parent: str) -> Any:
    directive = patch.get("$patch")
    body = {k: v for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return _strip_directives(body)
    if directive is not None:
        raise PatchError(f"unknown patch type {directive!r}")
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in body.items():
        if key.startswith("$setElementOrder/") or key == "$retainKeys":
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            remove = set(map(_hashable, value or []))
            if isinstance(result.get(field), list):
                result[field] = [item for item in result[field] if _hashable(item) not in remove]
            continue
        if value is None:
            result.pop(key, None)
            continue
        merged = _merge_value(result.get(key), value, parent, key)
        if merged is _DELETE:
            result.pop(key, None)
        else:
            result[key] = merged
    return result


def _merge_value(current: Any, value: Any, parent: str, key: str) -> Any:
    if isinstance(value, dict):
        return _merge_map(current, value, parent=key)
    if isinstance(value, list):
        return _merge_list(current if isinstance(current, list) else [], value, parent, key)
    return value


def _merge_key(parent: str, field: str) -> str | None:
    return MERGE_KEYS.get((parent, field)) or MERGE_KEYS.get(("", field))


def _merge_list(current: list[Any], patch: list[Any], parent: str, field: str) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [
            _strip_directives(item) for item in patch if not (isinstance(item, dict) and "$patch" in item)
        ]
    if field in PRIMITIVE_SET_LISTS:
        seen = list(current)
        for item in patch:
            if item not in seen:
                seen.append(item)
        return seen
    merge_key = _merge_key(parent, field)
    if merge_key is None or not all(isinstance(item, dict) for item in patch):
        return [_strip_directives(item) for item in patch]
    result = copy.deepcopy(current)
    for item in patch:
        if merge_key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {merge_key}")
        index = next(
            (
                i
                for i, old in enumerate(result)
                if isinstance(old, dict) and old.get(merge_key) == item[merge_key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(_strip_directives(item))
        else:
            result[index] = _merge_map(result[index], item, parent=field)
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(item) for item in value]
    return value


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, dict | list) else value


def json_patch(target: JSON, operations: Any) -> JSON:
    """Apply an RFC 6902 JSON patch (a list of operations)."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    try:
        result = jsonpatch.JsonPatch(operations).apply(copy.deepcopy(target))
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError) as exc:
        raise PatchError(str(exc) or type(exc).__name__) from exc
    if not isinstance(result, dict):
        raise PatchError("the patched document is not an object")
    return result
