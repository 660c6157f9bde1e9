"""REST semantics of the sandbox API server, on top of :class:`~driver.sim.store.ObjectStore`.

What a kube-apiserver's generic registry does for each verb: server-set metadata (uid,
creationTimestamp, resourceVersion, generation), generateName, optimistic concurrency, status
subresource rules, validation and defaulting per kind, finalizers and deletionTimestamp, delete
preconditions, owner-reference garbage collection, namespace deletion, patches and a simplified
server-side apply, list/watch with selectors. Errors are raised as
:class:`~driver.sim.status.ApiStatusError` with the Status the real server would send.

All methods are synchronous; see ``driver.sim.store`` for why that makes each call atomic.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import random
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from driver.kube.api.fields import FieldError, Path, forbidden, required
from driver.kube.client import RESOURCE_SLICES
from driver.sim import status as st
from driver.sim import timestamps
from driver.sim.admission import Admission, Write
from driver.sim.kinds import (
    KIND_SPECS,
    KindSpec,
    drop_disabled_slice_fields,
    kind_table,
    strip_for_list,
)
from driver.sim.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from driver.sim.rbac import ADMIN, UserInfo
from driver.sim.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from driver.sim.store import ObjectStore, StoreEvent, Subscription, TooOldResourceVersion

JSON = dict[str, Any]
FieldErrors = list[FieldError]  # inside Registry, "list" names the verb

PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
}
# Namespaces a namespaced object may be created in without a Namespace object existing.
IMPLICIT_NAMESPACES = ("default", "kube-system")
# Server-owned metadata: never taken from a client's body.
_SERVER_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's generateName alphabet (no vowels)


FIELD_VALIDATION = ("Ignore", "Warn", "Strict")


@dataclass
class WriteContext:
    """Per-request write options and what the request produced besides its object (warnings)."""

    field_validation: str = "Warn"
    warnings: list[str] = field(default_factory=list)
    user: UserInfo = ADMIN  # who writes: what admission policies see


# Each HTTP request is its own task, so a ContextVar keeps concurrent requests apart.
_WRITE_CONTEXT: ContextVar[WriteContext | None] = ContextVar("sim_write_context", default=None)


@contextmanager
def write_context(field_validation: str | None = None, user: UserInfo = ADMIN) -> Iterator[WriteContext]:
    """Options for the registry calls made inside (``fieldValidation``); collects their warnings."""
    mode = field_validation or "Warn"
    if mode not in FIELD_VALIDATION:
        raise st.bad_request(
            f'fieldValidation must be one of "Ignore", "Warn" or "Strict", got {field_validation!r}'
        )
    context = WriteContext(mode, user=user)
    token = _WRITE_CONTEXT.set(context)
    try:
        yield context
    finally:
        _WRITE_CONTEXT.reset(token)


@dataclass(frozen=True)
class DeleteOptions:
    uid: str | None = None
    resource_version: str | None = None
    grace_period_seconds: int | None = None
    propagation_policy: str | None = None

    @classmethod
    def parse(cls, body: Any, query: dict[str, str]) -> DeleteOptions:
        body = body if isinstance(body, dict) else {}
        pre = body.get("preconditions") if isinstance(body.get("preconditions"), dict) else {}
        grace = body.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
        try:
            grace_value = int(grace) if grace is not None else None
        except (TypeError, ValueError) as exc:
            raise st.bad_request(f"invalid gracePeriodSeconds: {grace!r}") from exc
        return cls(
            uid=(pre or {}).get("uid"),
            resource_version=(pre or {}).get("resourceVersion"),
            grace_period_seconds=grace_value,
            propagation_policy=body.get("propagationPolicy", query.get("propagationPolicy")),
        )


@dataclass
class Watch:
    """An open watch: events to send first, then live ones from ``subscription``, filtered."""

    spec: KindSpec
    namespace: str
    labels: LabelSelector
    fields: FieldSelector
    initial: list[JSON]
    subscription: Subscription | None
    progress_rv: int
    getters: dict[str, Any] = field(default_factory=dict)

    def matches(self, obj: JSON) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj, self.getters)

    def translate(self, event: StoreEvent) -> JSON | None:
        """The watch event a client sees for a store event, or None when the selectors hide it.

        An object that starts matching arrives as ADDED, one that stops matching leaves as DELETED.
        """
        self.progress_rv = event.rv
        now = self.matches(event.object)
        before = event.previous is not None and self.matches(event.previous)
        kind: str | None
        if event.type == "ADDED":
            kind = "ADDED" if now else None
        elif event.type == "DELETED":
            kind = "DELETED" if before else None
        else:
            kind = {(True, True): "MODIFIED", (True, False): "ADDED", (False, True): "DELETED"}.get(
                (now, before)
            )
        return {"type": kind, "object": event.object} if kind else None

    def bookmark(self) -> JSON:
        rt = self.spec.rt
        obj = {
            "kind": rt.kind,
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self.progress_rv)},
        }
        return {"type": "BOOKMARK", "object": obj}


def _meta(obj: JSON) -> JSON:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = obj["metadata"] = {}
    return meta


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    """The verbs, for every served kind."""

    def __init__(
        self,
        store: ObjectStore,
        specs: tuple[KindSpec, ...] = KIND_SPECS,
        *,
        graceful_pod_deletion: bool = False,
        feature_gates: frozenset[str] = frozenset(),
    ) -> None:
        self.store = store
        self.specs = specs
        #: Alpha feature gates turned on (:data:`driver.sim.kinds.ALPHA_GATES`).
        self.feature_gates = feature_gates
        self.kinds = kind_table(specs)
        self.graceful_pod_deletion = graceful_pod_deletion
        self._by_key = {spec.key: spec for spec in specs}
        self.admission = Admission(store.list)

    def _admit(
        self, spec: KindSpec, operation: str, obj: JSON | None, old: JSON | None, sub: str = ""
    ) -> None:
        """Validating admission policies, after validation, before the write is stored."""
        meta = _meta(obj if obj is not None else old or {})
        context = _WRITE_CONTEXT.get() or WriteContext()
        write = Write(
            operation,
            spec.rt.group,
            spec.rt.version,
            spec.rt.plural,
            sub,
            str(meta.get("namespace") or ""),
            str(meta.get("name") or ""),
            context.user,
            obj,
            old,
        )
        denial = self.admission.review(write)
        if denial is None:
            return
        qualified = f"{spec.rt.plural}.{spec.rt.group}" if spec.rt.group else spec.rt.plural
        verdict = "is forbidden" if denial.code == 403 else "is invalid"
        message = f'{qualified} "{write.name}" {verdict}: {denial.message}'
        raise st.error(
            denial.code,
            message,
            denial.reason,
            {"name": write.name, "group": spec.rt.group, "kind": spec.rt.plural},
        )

    def spec_for(self, group: str, version: str, plural: str) -> KindSpec | None:
        return self.kinds.get((group, version, plural))

    def spec_by_key(self, key: str) -> KindSpec:
        return self._by_key[key]

    # -- get / list ------------------------------------------------------------------------------

    def get(self, spec: KindSpec, namespace: str, name: str) -> JSON:
        obj = self.store.get(spec.key, namespace, name)
        if obj is None:
            raise st.not_found(spec.rt.plural, spec.rt.group, name)
        return obj

    def selectors(
        self, spec: KindSpec, label: str | None, fields: str | None
    ) -> tuple[LabelSelector, FieldSelector]:
        try:
            return parse_label_selector(label), parse_field_selector(fields, spec.fields)
        except SelectorError as exc:
            raise st.bad_request(str(exc)) from exc

    def list(
        self,
        spec: KindSpec,
        namespace: str,
        label: str | None = None,
        fields: str | None = None,
        *,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> JSON:
        labels, selector = self.selectors(spec, label, fields)
        getters = spec.fields
        items = [
            obj
            for obj in self.store.list(spec.key, namespace or None)
            if labels.matches(_meta(obj).get("labels")) and selector.matches(obj, getters)
        ]
        start = _decode_continue(continue_token)
        if start is not None:
            items = [obj for obj in items if _key(obj) > start]
        meta: JSON = {"resourceVersion": str(self.store.resource_version)}
        if limit > 0 and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            meta["continue"] = _encode_continue(_key(items[-1]))
            meta["remainingItemCount"] = remaining
        return {
            "kind": spec.list_kind,
            "apiVersion": spec.rt.api_version,
            "metadata": meta,
            "items": [strip_for_list(obj) for obj in items],
        }

    # -- create ----------------------------------------------------------------------------------

    def create(self, spec: KindSpec, namespace: str, body: Any, *, dry_run: bool = False) -> JSON:
        """Store a new object; ``dry_run``: everything but storing it (the answer is what would be stored)."""
        obj = self._check_body(spec, body)
        meta = _meta(obj)
        if meta.get("resourceVersion"):
            raise st.internal("resourceVersion should not be set on objects to be created")
        self._place_in_namespace(spec, obj, namespace)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = _generate_name(str(meta["generateName"]))
        for key in (*_SERVER_META, "managedFields", "selfLink"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = timestamps.now()
        if spec.tracks_generation:
            meta["generation"] = 1
        if spec.reset_status_on_create:
            obj["status"] = {}  # the zero status, which the server's encoding keeps
        spec.prepare_create(obj)
        self._normalize(spec, obj)
        self._drop_disabled(spec, obj, None)
        self._validate(
            spec, obj, self._namespace_rules(spec, obj, spec.namespace_rules) + spec.validate(obj, None)
        )
        self._admit(spec, "CREATE", obj, None)
        name = str(meta["name"])
        if self.store.get(spec.key, meta.get("namespace") or "", name) is not None:
            raise st.already_exists(spec.rt.plural, spec.rt.group, name)
        if dry_run:
            return obj
        stored = self.store.put(spec.key, obj)
        self._collect_garbage(spec, stored)
        return stored

    def _check_body(self, spec: KindSpec, body: Any) -> JSON:
        if not isinstance(body, dict):
            raise st.bad_request(f"the body of the request must be a {spec.rt.kind} object")
        obj = copy.deepcopy(body)
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != spec.rt.api_version:
            raise st.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({spec.rt.api_version})"
            )
        if kind and kind != spec.rt.kind:
            raise st.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({spec.rt.kind})"
            )
        obj["apiVersion"], obj["kind"] = spec.rt.api_version, spec.rt.kind
        _meta(obj)
        return obj

    def _place_in_namespace(self, spec: KindSpec, obj: JSON, namespace: str) -> None:
        meta = _meta(obj)
        if not spec.rt.namespaced:
            meta.pop("namespace", None)
            return
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise st.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        meta["namespace"] = namespace
        ns = self.store.get("namespaces", "", namespace)
        if ns is None and namespace not in IMPLICIT_NAMESPACES:
            raise st.not_found("namespaces", "", namespace)
        if ns is not None and _meta(ns).get("deletionTimestamp"):
            raise st.error(
                403,
                f"{spec.rt.plural} is forbidden: unable to create new content in namespace {namespace} "
                "because it is being terminated",
                "Forbidden",
            )

    def _namespace_rules(
        self, spec: KindSpec, obj: JSON, rules: Callable[[JSON, Mapping[str, Any] | None], FieldErrors] | None
    ) -> FieldErrors:
        if rules is None:
            return []
        ns = self.store.get("namespaces", "", str(_meta(obj).get("namespace") or ""))
        labels = _meta(ns).get("labels") if ns is not None else None
        return rules(obj, labels if isinstance(labels, dict) else None)

    def _normalize(self, spec: KindSpec, obj: JSON) -> None:
        """Bring ``obj`` into its stored form; unknown fields warn (or fail, with fieldValidation=Strict)."""
        unknown = spec.normalize(obj)
        context = _WRITE_CONTEXT.get() or WriteContext()
        if not unknown or context.field_validation == "Ignore":
            return
        fields = ", ".join(f'unknown field "{path}"' for path in unknown)
        if context.field_validation == "Strict":
            kind = spec.rt.kind
            raise st.bad_request(
                f'{kind} in version "{spec.rt.version}" cannot be handled as a {kind}: strict decoding error: '
                f"{fields}"
            )
        context.warnings.extend(f'unknown field "{path}"' for path in unknown)

    def _drop_disabled(self, spec: KindSpec, new: JSON, old: JSON | None) -> None:
        if spec.rt == RESOURCE_SLICES:
            drop_disabled_slice_fields(new, old, self.feature_gates)

    def _validate(self, spec: KindSpec, obj: JSON, errors: FieldErrors) -> None:
        if errors:
            raise st.invalid(spec.rt.kind, spec.rt.group, str(_meta(obj).get("name", "")), errors)

    # -- update ----------------------------------------------------------------------------------

    def update(
        self, spec: KindSpec, namespace: str, name: str, body: Any, subresource: str | None = None
    ) -> JSON:
        """PUT: the whole object, or only its status through the status subresource."""
        obj = self._check_body(spec, body)
        meta = _meta(obj)
        if meta.get("name") != name:
            raise st.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if spec.rt.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise st.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        old = self.get(spec, namespace, name)
        self._check_preconditions(spec, old, meta.get("uid"), meta.get("resourceVersion"), stale_message=True)
        new = self._merge_for_update(spec, old, obj, subresource)
        return self._commit_update(spec, old, new, subresource)

    def _check_preconditions(
        self, spec: KindSpec, old: JSON, uid: Any, resource_version: Any, *, stale_message: bool
    ) -> None:
        old_meta = _meta(old)
        name = str(old_meta.get("name"))
        if uid and uid != old_meta.get("uid"):
            detail = (
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: {old_meta.get('uid')}"
            )
            raise st.conflict(spec.rt.plural, spec.rt.group, name, detail)
        if resource_version and str(resource_version) != old_meta.get("resourceVersion"):
            detail = (
                st.STALE_OBJECT
                if stale_message
                else f"Precondition failed: ResourceVersion in precondition: {resource_version}, "
                f"ResourceVersion in object meta: {old_meta.get('resourceVersion')}"
            )
            raise st.conflict(spec.rt.plural, spec.rt.group, name, detail)

    def _merge_for_update(self, spec: KindSpec, old: JSON, obj: JSON, subresource: str | None) -> JSON:
        if subresource == "status":
            new = copy.deepcopy(old)
            new["status"] = obj.get("status") or {}
            return new
        new = obj
        meta, old_meta = _meta(new), _meta(old)
        for key in (*_SERVER_META, "namespace", "resourceVersion"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        meta.pop("managedFields", None)
        if spec.status_subresource:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        return new

    def _commit_update(self, spec: KindSpec, old: JSON, new: JSON, subresource: str | None) -> JSON:
        if subresource == "status":
            spec.prepare_status(new, old)
            self._normalize(spec, new)
            errors = self._namespace_rules(spec, new, spec.status_namespace_rules)
            errors += spec.validate_status(new, old) if spec.validate_status else []
        else:
            spec.prepare_update(new, old)  # defaulting first, so an omitted default is not a change
            self._normalize(spec, new)  # and the stored form, so "80Gi" for "81920Mi" is no change either
            self._drop_disabled(spec, new, old)
            if spec.tracks_generation and new.get("spec") != old.get("spec"):
                _meta(new)["generation"] = int(_meta(old).get("generation") or 0) + 1
            errors = spec.validate(new, old) + _finalizer_errors(new, old)
        self._validate(spec, new, errors)
        self._admit(spec, "UPDATE", new, old, subresource or "")
        if new == old:
            return old  # a no-op write: no new resourceVersion, no watch event (as with etcd)
        meta = _meta(new)
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and not self._graceful_pending(spec, new)
        ):
            self.store.remove(spec.key, meta.get("namespace") or "", str(meta["name"]))
            self._after_removal(spec, new, None)
            return new
        stored = self.store.put(spec.key, new)
        self._collect_garbage(spec, stored)
        return stored

    # -- patch -----------------------------------------------------------------------------------

    def patch(
        self,
        spec: KindSpec,
        namespace: str,
        name: str,
        content_type: str,
        raw: bytes,
        *,
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> tuple[JSON, bool]:
        """Apply a patch of the given media type; returns the object and whether it was created (apply)."""
        patch_type = PATCH_TYPES.get(content_type)
        if patch_type is None:
            raise st.unsupported_media_type(content_type, list(PATCH_TYPES))
        if patch_type == "apply":
            return self._apply(spec, namespace, name, raw, subresource=subresource, manager=field_manager)
        document = _parse_json(raw)
        current = self.get(spec, namespace, name)
        patched = self._apply_patch(spec, patch_type, current, document, name)
        self._check_preconditions(
            spec,
            current,
            _meta(patched).get("uid"),
            _meta(patched).get("resourceVersion"),
            stale_message=True,
        )
        _meta(patched)["resourceVersion"] = _meta(current).get("resourceVersion")
        return self._update_from_patch(spec, name, current, patched, subresource=subresource), False

    def _apply_patch(self, spec: KindSpec, patch_type: str, current: JSON, document: Any, name: str) -> JSON:
        try:
            if patch_type == "json":
                return json_patch(current, document)
            if not isinstance(document, dict):
                raise PatchError("the patch must be a JSON object")
            if patch_type == "merge":
                result = merge_patch(current, document)
                return result if isinstance(result, dict) else {}
            return strategic_merge_patch(current, document)
        except PatchError as exc:
            raise _patch_failed(spec, name, str(exc)) from exc

    def _update_from_patch(
        self, spec: KindSpec, name: str, current: JSON, patched: JSON, *, subresource: str | None
    ) -> JSON:
        meta = _meta(patched)
        if meta.get("name") != name:
            raise st.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        obj = self._check_body(spec, patched)
        new = self._merge_for_update(spec, current, obj, subresource)
        return self._commit_update(spec, current, new, subresource)

    def _apply(
        self,
        spec: KindSpec,
        namespace: str,
        name: str,
        raw: bytes,
        *,
        subresource: str | None,
        manager: str | None,
    ) -> tuple[JSON, bool]:
        """Server-side apply, simplified: create if missing, else strategic-merge the applied configuration."""
        if not manager:
            errors = [required(Path("fieldManager"), "is required for apply patch")]
            raise st.ApiStatusError(st.invalid_status("PatchOptions", "meta.k8s.io", "", errors))
        try:
            document = yaml.safe_load(raw.decode("utf-8")) if raw else None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise st.bad_request(f"error decoding YAML: {exc}") from exc
        if not isinstance(document, dict):
            raise st.bad_request("the applied configuration must be an object")
        if not document.get("apiVersion") or not document.get("kind"):
            raise st.bad_request("apiVersion and kind must be set in an applied configuration")
        applied = self._check_body(spec, document)
        if _meta(applied).get("name", name) != name:
            raise st.bad_request(
                f"the name of the object ({_meta(applied).get('name')}) does not match the name on the URL ({name})"
            )
        _meta(applied)["name"] = name
        current = self.store.get(spec.key, namespace, name)
        if current is None:
            if subresource:
                raise st.not_found(spec.rt.plural, spec.rt.group, name)
            return self.create(spec, namespace, applied), True
        patched = strategic_merge_patch(current, applied)
        self._check_preconditions(
            spec,
            current,
            _meta(applied).get("uid"),
            _meta(applied).get("resourceVersion"),
            stale_message=True,
        )
        _meta(patched)["resourceVersion"] = _meta(current).get("resourceVersion")
        return self._update_from_patch(spec, name, current, patched, subresource=subresource), False

    # -- delete ----------------------------------------------------------------------------------

    def delete(self, spec: KindSpec, namespace: str, name: str, options: DeleteOptions | None = None) -> JSON:
        options = options or DeleteOptions()
        current = self.get(spec, namespace, name)
        self._check_preconditions(spec, current, options.uid, options.resource_version, stale_message=False)
        self._admit(spec, "DELETE", None, current)
        return self._delete_object(spec, current, options)

    def _delete_object(self, spec: KindSpec, obj: JSON, options: DeleteOptions) -> JSON:
        meta = _meta(obj)
        namespace, name = meta.get("namespace") or "", str(meta.get("name"))
        if self._should_wait_gracefully(spec, obj, options):
            grace = options.grace_period_seconds
            if grace is None:
                grace = int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
            meta["deletionTimestamp"] = _rfc3339(datetime.now(UTC) + timedelta(seconds=grace))
            meta["deletionGracePeriodSeconds"] = grace
            return self.store.put(spec.key, obj)
        if self._graceful_pending(spec, obj) and options.grace_period_seconds != 0:
            return obj
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp") and options.grace_period_seconds != 0:
                return obj
            meta.setdefault("deletionTimestamp", timestamps.now())
            meta["deletionGracePeriodSeconds"] = 0
            return self.store.put(spec.key, obj)
        deleted = self.store.remove(spec.key, namespace, name)
        result = deleted if deleted is not None else obj
        self._after_removal(spec, result, options.propagation_policy)
        return result

    def _should_wait_gracefully(self, spec: KindSpec, obj: JSON, options: DeleteOptions) -> bool:
        """Pods bound to a node wait for their kubelet (a delete with grace 0) when graceful deletion is on."""
        if not (self.graceful_pod_deletion and spec.key == "pods"):
            return False
        if options.grace_period_seconds == 0:
            return False
        bound = bool((obj.get("spec") or {}).get("nodeName"))
        finished = (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        return bound and not finished and not _meta(obj).get("deletionTimestamp")

    def _graceful_pending(self, spec: KindSpec, obj: JSON) -> bool:
        """A pod in its grace period: it goes away when its kubelet deletes it with grace 0."""
        meta = _meta(obj)
        return (
            self.graceful_pod_deletion
            and spec.key == "pods"
            and bool(meta.get("deletionTimestamp"))
            and int(meta.get("deletionGracePeriodSeconds") or 0) > 0
        )

    def _after_removal(self, spec: KindSpec, obj: JSON, propagation: str | None) -> None:
        """Namespace contents go with their namespace; the removed object's dependents are re-examined."""
        meta = _meta(obj)
        if spec.key == "namespaces":
            for other in self.specs:
                if other.rt.namespaced:
                    for content in self.store.list(other.key, str(meta.get("name"))):
                        self._delete_object(other, content, DeleteOptions(grace_period_seconds=0))
        if propagation == "Orphan":
            return
        for resource, namespace, name in self.store.dependents(str(meta.get("uid"))):
            dependent = self.store.get(resource, namespace, name)
            if dependent is not None:
                self._collect_garbage(self.spec_by_key(resource), dependent)

    # -- garbage collection ----------------------------------------------------------------------

    def _collect_garbage(self, spec: KindSpec, obj: JSON) -> None:
        """What the garbage collector does with a dependent, done at once after the write that needs it.

        Every owner reference is looked up live (see :meth:`_owner_state`). With no live owner the
        dependent is deleted (background propagation); with some live ones the dangling references are
        removed from it; an owner of a kind the server cannot resolve stops the collector from acting.
        Objects already being deleted are left alone, as upstream's collector leaves them.
        """
        meta = _meta(obj)
        refs = [ref for ref in meta.get("ownerReferences") or [] if isinstance(ref, dict)]
        if not refs or meta.get("deletionTimestamp"):
            return
        states = [self._owner_state(spec, obj, ref) for ref in refs]
        verdict = gc_verdict(states)
        if verdict == GC_DELETE:
            self._delete_object(spec, obj, DeleteOptions(grace_period_seconds=0))
        elif verdict == GC_DROP_DANGLING:
            meta["ownerReferences"] = [ref for ref, state in zip(refs, states, strict=True) if state == SOLID]
            self.store.put(spec.key, obj)

    def _owner_state(self, spec: KindSpec, dependent: JSON, ref: JSON) -> str:
        """SOLID, DANGLING (absent, or present with another uid) or UNRESOLVABLE, as upstream classifies it.

        A namespaced owner is looked up in the dependent's namespace; a cluster-scoped dependent cannot
        have a namespaced owner (the reference is unresolvable, never collected); kinds this server does
        not serve are unresolvable too.
        """
        owner_spec = next(
            (
                s
                for s in self.specs
                if s.rt.api_version == ref.get("apiVersion") and s.rt.kind == ref.get("kind")
            ),
            None,
        )
        if owner_spec is None or (owner_spec.rt.namespaced and not spec.rt.namespaced):
            return UNRESOLVABLE
        namespace = (_meta(dependent).get("namespace") or "") if owner_spec.rt.namespaced else ""
        owner = self.store.get(owner_spec.key, namespace, str(ref.get("name")))
        if owner is None or _meta(owner).get("uid") != ref.get("uid"):
            return DANGLING
        return SOLID

    def delete_collection(
        self, spec: KindSpec, namespace: str, label: str | None, fields: str | None
    ) -> JSON:
        listed = self.list(spec, namespace, label, fields)
        deleted = []
        for item in listed["items"]:
            meta = _meta(item)
            current = self.store.get(spec.key, meta.get("namespace") or "", str(meta.get("name")))
            if current is not None:  # garbage collection may have taken it already
                deleted.append(strip_for_list(self._delete_object(spec, current, DeleteOptions())))
        listed["items"] = deleted
        listed["metadata"] = {"resourceVersion": str(self.store.resource_version)}
        return listed

    # -- pods/binding ----------------------------------------------------------------------------

    def bind(self, spec: KindSpec, namespace: str, name: str, body: Any) -> JSON:
        """POST pods/{name}/binding: set ``spec.nodeName`` once, as the scheduler does."""
        if not isinstance(body, dict) or not isinstance(body.get("target"), dict):
            raise st.bad_request("a Binding with a target is required")
        node = body["target"].get("name")
        if not node:
            errors = [required(Path("target.name"))]
            raise st.ApiStatusError(st.invalid_status("Binding", "", name, errors))
        pod = self.get(spec, namespace, name)
        current = (pod.get("spec") or {}).get("nodeName")
        if current:
            raise st.conflict("pods/binding", "", name, f'pod {name} is already assigned to node "{current}"')
        if _meta(pod).get("deletionTimestamp"):
            raise st.conflict(
                "pods/binding", "", name, f"pod {name} is being deleted, cannot be assigned to a host"
            )
        pod.setdefault("spec", {})["nodeName"] = node
        conditions = pod.setdefault("status", {}).setdefault("conditions", [])
        conditions[:] = [c for c in conditions if c.get("type") != "PodScheduled"]
        conditions.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": timestamps.now()})
        self.store.put(spec.key, pod)
        return st.success(201)

    # -- watch -----------------------------------------------------------------------------------

    def watch(
        self,
        spec: KindSpec,
        namespace: str,
        label: str | None,
        fields: str | None,
        resource_version: str | None,
        *,
        send_initial_events: bool = False,
    ) -> Watch:
        """Open a watch. With no resourceVersion (or "0") it starts with ADDED for every current object.

        A resourceVersion older than the retained history yields a single 410 ``ERROR`` event.
        ``send_initial_events`` (the streaming-list form) sends the current objects, then a BOOKMARK
        annotated ``k8s.io/initial-events-end``.
        """
        labels, selector = self.selectors(spec, label, fields)
        watch = Watch(spec, namespace, labels, selector, [], None, self.store.resource_version, spec.fields)
        if resource_version in (None, "", "0") or send_initial_events:
            for obj in self.store.list(spec.key, namespace or None):
                if watch.matches(obj):
                    watch.initial.append({"type": "ADDED", "object": obj})
            if send_initial_events:
                end = watch.bookmark()
                end["object"]["metadata"]["annotations"] = {"k8s.io/initial-events-end": "true"}
                watch.initial.append(end)
        else:
            try:
                since = int(resource_version)
            except ValueError as exc:
                raise st.bad_request(f"invalid resource version: {resource_version!r}") from exc
            try:
                events = self.store.events_since(spec.key, since)
            except TooOldResourceVersion as exc:
                watch.initial.append({"type": "ERROR", "object": st.expired(str(exc)).status})
                return watch
            watch.progress_rv = since
            for event in events:
                translated = watch.translate(event)
                if translated:
                    watch.initial.append(translated)
            watch.progress_rv = max(self.store.resource_version, since)
        watch.subscription = self.store.subscribe(spec.key)
        return watch


SOLID, DANGLING, UNRESOLVABLE = "solid", "dangling", "unresolvable"
GC_KEEP, GC_DELETE, GC_DROP_DANGLING = "keep", "delete", "drop-dangling"


def gc_verdict(states: list[str]) -> str:
    """What the garbage collector does with a dependent whose owner references classify as ``states``."""
    if not states or UNRESOLVABLE in states:
        return GC_KEEP  # upstream retries forever and never acts
    if SOLID not in states:
        return GC_DELETE
    return GC_DROP_DANGLING if DANGLING in states else GC_KEEP


def _patch_failed(spec: KindSpec, name: str, message: str) -> st.ApiStatusError:
    """A patch that could not be applied: 422, as the real server answers."""
    message = f"the server rejected our request due to an error in our request: {message}"
    return st.error(422, message, "Invalid", {"name": name, "group": spec.rt.group, "kind": spec.rt.plural})


def _finalizer_errors(new: JSON, old: JSON) -> list[FieldError]:
    if not _meta(old).get("deletionTimestamp"):
        return []
    added = [f for f in _meta(new).get("finalizers") or [] if f not in (_meta(old).get("finalizers") or [])]
    if not added:
        return []
    detail = f"no new finalizers can be added if the object is being deleted, found new finalizers {json.dumps(added)}"
    return [forbidden(Path("metadata.finalizers"), detail)]


def _generate_name(base: str) -> str:
    base = base[:58]  # the generated name must stay within 63 characters
    return base + "".join(random.choice(_NAME_ALPHABET) for _ in range(5))


def _key(obj: JSON) -> tuple[str, str]:
    meta = _meta(obj)
    return (meta.get("namespace") or "", meta.get("name") or "")


def _encode_continue(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def _decode_continue(token: str | None) -> tuple[str, str] | None:
    if not token:
        return None
    try:
        namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise st.bad_request("continue key is not valid: incorrect encoded start resourceVersion") from exc
    return (str(namespace), str(name))


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise st.bad_request(f"error decoding patch: {exc}") from exc
