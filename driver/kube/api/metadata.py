"""Object metadata (apimachinery objectmeta.go) and metav1 Conditions."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from driver.kube.api.fields import (
    JSON,
    Errors,
    Path,
    add_messages,
    duplicate,
    forbidden,
    get_bool,
    get_int,
    get_list,
    get_obj,
    get_str,
    invalid,
    items_of,
    not_supported,
    required,
    too_long,
    type_invalid,
)
from driver.kube.api.limits import (
    BANNED_OWNERS,
    CONDITION_STATUSES,
    MAX_ANNOTATIONS_SIZE,
    MAX_CONDITION_MESSAGE_LENGTH,
    MAX_CONDITION_REASON_LENGTH,
)
from driver.kube.api.names import (
    dns1123_subdomain_errors,
    qualified_name_errors,
    regex_error,
    validate_label_name,
    validate_label_value,
)

METADATA = Path("metadata")


def validate_object_meta(
    meta: JSON | None,
    out: Errors,
    *,
    namespaced: bool,
    name_errors: Callable[[str], list[str]] = dns1123_subdomain_errors,
    path: Path = METADATA,
) -> None:
    """Name (or generateName), namespace presence, labels, annotations, ownerReferences, finalizer names."""
    meta = meta or {}
    name = get_str(meta, "name", path, out)
    generate_name = get_str(meta, "generateName", path, out)
    if not name and not generate_name:
        out.append(required(path.child("name"), "name or generateName is required"))
    if name:
        add_messages(path.child("name"), name, name_errors(name), out)
    if generate_name:
        # Checked even when a name was given or generated from it. A prefix may end in '-': the server
        # masks it, replacing the last two characters with one "a".
        masked = (
            generate_name[:-2] + "a"
            if len(generate_name) > 1 and generate_name.endswith("-")
            else generate_name
        )
        add_messages(path.child("generateName"), generate_name, name_errors(masked), out)
    namespace = get_str(meta, "namespace", path, out)
    if namespaced and not namespace:
        out.append(required(path.child("namespace")))
    # A namespace on a cluster-scoped object is no error: the server clears it before validating.
    _validate_labels(get_obj(meta, "labels", path, out) or {}, path.child("labels"), out)
    _validate_annotations(get_obj(meta, "annotations", path, out) or {}, path.child("annotations"), out)
    refs_path = path.child("ownerReferences")
    _validate_owner_references(
        items_of(get_list(meta, "ownerReferences", path, out), refs_path, out), refs_path, out
    )
    _validate_finalizers(get_list(meta, "finalizers", path, out) or [], path.child("finalizers"), out)


# ObjectMeta fields a template's metadata may set (ValidateTemplateObjectMeta); any other is forbidden.
_TEMPLATE_META_FIELDS = ("labels", "annotations")


def validate_template_meta(meta: JSON, path: Path, out: Errors) -> None:
    """The metadata of a template (a ResourceClaimTemplate's ``spec.metadata``): labels and annotations only."""
    _validate_annotations(get_obj(meta, "annotations", path, out) or {}, path.child("annotations"), out)
    _validate_labels(get_obj(meta, "labels", path, out) or {}, path.child("labels"), out)
    for key, value in meta.items():
        if key not in _TEMPLATE_META_FIELDS and value not in (None, "", 0, [], {}):
            out.append(forbidden(path.child(key), "cannot be set for a template"))


def _validate_labels(labels: JSON, path: Path, out: Errors) -> None:
    for key, value in labels.items():
        validate_label_name(key, path, out)
        if isinstance(value, str):
            validate_label_value(value, path, out)
        else:
            out.append(type_invalid(path.key(key), value, "must be a string"))


STANDARD_FINALIZERS = ("kubernetes", "orphan", "foregroundDeletion")


def _validate_finalizers(finalizers: list[Any], path: Path, out: Errors) -> None:
    """Qualified names (errors at ``finalizers``, without an index, as upstream), with a domain unless one
    of the standard names (errors at ``finalizers[i]``); ``orphan`` and ``foregroundDeletion`` exclude each
    other."""
    for i, finalizer in enumerate(finalizers):
        if not isinstance(finalizer, str):
            out.append(type_invalid(path.index(i), finalizer, "must be a string"))
            continue
        add_messages(path, finalizer, qualified_name_errors(finalizer), out)
        if "/" not in finalizer and finalizer not in STANDARD_FINALIZERS:
            detail = "name is neither a standard finalizer name nor is it fully qualified"
            out.append(invalid(path.index(i), finalizer, detail))
    if "orphan" in finalizers and "foregroundDeletion" in finalizers:
        detail = "finalizer orphan and foregroundDeletion cannot be both set"
        out.append(invalid(path, finalizers, detail))


def _validate_annotations(annotations: JSON, path: Path, out: Errors) -> None:
    """Keys are label keys compared case-insensitively; keys and values together stay within 256 KiB."""
    total = 0
    for key, value in annotations.items():
        # The server reports the key as written but checks its lower-case form.
        add_messages(path, key, qualified_name_errors(key.lower()), out)
        if isinstance(value, str):
            total += len(key.encode()) + len(value.encode())
        else:
            out.append(type_invalid(path.key(key), value, "must be a string"))
    if total > MAX_ANNOTATIONS_SIZE:
        out.append(too_long(path, MAX_ANNOTATIONS_SIZE))


def _group_version(api_version: str) -> tuple[str, str] | None:
    """(group, version) as apimachinery's ParseGroupVersion splits it; None when it does not parse."""
    if api_version in ("", "/"):
        return ("", "")
    parts = api_version.split("/")
    if len(parts) == 1:
        return ("", parts[0])
    if len(parts) == 2:
        return (parts[0], parts[1])
    return None


def _validate_owner_references(refs: list[tuple[Path, JSON]], path: Path, out: Errors) -> None:
    """Each reference names apiVersion, kind, name and uid; at most one is the controller.

    As upstream, the per-reference errors name ``metadata.ownerReferences.<field>`` without an index.
    """
    first_controller = ""
    for ref_path, ref in refs:
        api_version = get_str(ref, "apiVersion", ref_path, out) or ""
        kind = get_str(ref, "kind", ref_path, out) or ""
        name = get_str(ref, "name", ref_path, out) or ""
        uid = get_str(ref, "uid", ref_path, out) or ""
        controller = get_bool(ref, "controller", ref_path, out)
        get_bool(ref, "blockOwnerDeletion", ref_path, out)
        group, version = _group_version(api_version) or ("", "")
        if not version:
            out.append(invalid(path.child("apiVersion"), api_version, "version must not be empty"))
        for key, value in (("kind", kind), ("name", name), ("uid", uid)):
            if not value:
                out.append(invalid(path.child(key), value, "must not be empty"))
        gvk = f"{group}/{version}, Kind={kind}"
        if gvk in BANNED_OWNERS:
            out.append(invalid(path, ref, f"{gvk} is disallowed from being an owner"))
        if controller:
            current = f"{kind}/{name}"
            if first_controller:
                detail = (
                    "Only one reference can have Controller set to true. "
                    f'Found "true" in references for {first_controller} and {current}'
                )
                out.append(invalid(path, [entry for _, entry in refs], detail))
            else:
                first_controller = current


def validate_immutable(new: Any, old: Any, path: Path, out: Errors) -> None:
    if new != old:
        out.append(invalid(path, new, "field is immutable"))


_CONDITION_REASON_FMT = "[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?"
_CONDITION_REASON_RE = re.compile(f"^{_CONDITION_REASON_FMT}$")


def validate_conditions(conditions: list[tuple[Path, JSON]], out: Errors) -> None:
    """metav1 Conditions (apimachinery's ValidateConditions): unique types, then each condition."""
    seen: set[Any] = set()
    for path, condition in conditions:
        ctype = get_str(condition, "type", path, out) or ""
        if ctype in seen:
            out.append(duplicate(path.child("type"), ctype))
        seen.add(ctype)
        validate_label_name(ctype, path.child("type"), out)
        status = get_str(condition, "status", path, out) or ""
        if status not in CONDITION_STATUSES:
            out.append(not_supported(path.child("status"), status, CONDITION_STATUSES))
        generation = get_int(condition, "observedGeneration", path, out)
        if generation is not None and generation < 0:
            out.append(
                invalid(path.child("observedGeneration"), generation, "must be greater than or equal to zero")
            )
        if not get_time(condition, "lastTransitionTime", path, out):
            out.append(required(path.child("lastTransitionTime"), "must be set"))
        _validate_condition_reason(get_str(condition, "reason", path, out) or "", path.child("reason"), out)
        message = get_str(condition, "message", path, out) or ""
        if len(message.encode()) > MAX_CONDITION_MESSAGE_LENGTH:
            out.append(too_long(path.child("message"), MAX_CONDITION_MESSAGE_LENGTH))


def _validate_condition_reason(reason: str, path: Path, out: Errors) -> None:
    if not reason:
        out.append(required(path, "must be set"))
        return
    if not _CONDITION_REASON_RE.fullmatch(reason):
        message = (
            "a condition reason must start with alphabetic character, optionally followed by a string of "
            "alphanumeric characters or '_,:', and must end with an alphanumeric character or '_'"
        )
        examples = ("my_name", "MY_NAME", "MyName", "ReasonA,ReasonB", "ReasonA:ReasonB")
        out.append(invalid(path, reason, regex_error(message, _CONDITION_REASON_FMT, *examples)))
    if len(reason.encode()) > MAX_CONDITION_REASON_LENGTH:
        out.append(too_long(path, MAX_CONDITION_REASON_LENGTH))


def get_time(parent: Mapping[str, Any], key: str, path: Path, out: Errors) -> str | None:
    """An RFC 3339 time (metav1.Time); anything else fails decoding. None or "" when unset."""
    value = get_str(parent, key, path, out)
    if not value:
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        out.append(type_invalid(path.child(key), value, "must be a time in RFC 3339 form"))
        return None
    return value
