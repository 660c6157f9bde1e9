"""The kinds the sandbox API server serves, and what differs between them.

Each :class:`KindSpec` says where a kind lives (its ``ResourceType`` from ``driver.kube.client``),
whether it has a status subresource and a generation, which fields a field selector may name, how its
names and bodies are validated and which defaults the server fills in. The REST logic itself is
generic (``driver.sim.registry``).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from driver.kube.api.deviceclass import validate_device_class
from driver.kube.api.devicetaintrule import validate_device_taint_rule
from driver.kube.api.fields import FieldError, Path, duplicate, forbidden, invalid, required, type_invalid
from driver.kube.api.metadata import validate_object_meta
from driver.kube.api.names import dns1035_label_errors, dns1123_label_errors, dns1123_subdomain_errors
from driver.kube.api.resourceclaim import (
    claim_admin_access_errors,
    status_admin_access_errors,
    template_admin_access_errors,
    validate_resource_claim,
    validate_resource_claim_status,
    validate_resource_claim_template,
)
from driver.kube.api.resourceslice import validate_resource_slice
from driver.kube.client import (
    DEVICE_CLASSES,
    DEVICE_TAINT_RULES,
    EVENTS,
    NAMESPACES,
    NODES,
    PODS,
    RESOURCE_CLAIM_TEMPLATES,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
    SERVICES,
    ResourceType,
)
from driver.quantity import canonical
from driver.sim.admission import POLICIES, POLICY_BINDINGS
from driver.sim.rbac import CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, ROLE_BINDINGS, ROLES
from driver.sim.selectors import FieldGetter
from driver.sim.timestamps import now

JSON = dict[str, Any]
Validator = Callable[[JSON, JSON | None], list[FieldError]]
# Rewrites a decoded object in place into the form the server stores; returns the unknown fields' paths.
Normalizer = Callable[[JSON], list[str]]


def _path_getter(*path: str) -> FieldGetter:
    """A field-selector getter: the value at ``path`` as the server renders it ("" when unset)."""

    def get(obj: Mapping[str, object]) -> str:
        value: Any = obj
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, bool):
            return "true" if value else "false"
        return "" if value is None else str(value)

    return get


@dataclass(frozen=True)
class Subresource:
    name: str
    kind: str
    verbs: tuple[str, ...]


@dataclass(frozen=True)
class KindSpec:
    rt: ResourceType
    singular: str
    validate: Validator
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    # The server replaces a client-sent status on create with an empty one.
    reset_status_on_create: bool = False
    # Whether the server sets metadata.generation (1 on create, +1 on a spec change): not for claims and
    # their templates, whose registry strategies leave it unset.
    tracks_generation: bool = False
    extra_fields: Mapping[str, FieldGetter] = field(default_factory=dict)
    validate_status: Callable[[JSON, JSON], list[FieldError]] | None = None
    prepare_create: Callable[[JSON], None] = lambda obj: None
    prepare_update: Callable[[JSON, JSON], None] = lambda new, old: None
    prepare_status: Callable[[JSON, JSON], None] = lambda new, old: None
    subresources: tuple[Subresource, ...] = ()
    normalize: Normalizer = lambda obj: []
    # Rules that depend on the object's namespace (its labels), checked on create ...
    namespace_rules: Callable[[JSON, Mapping[str, Any] | None], list[FieldError]] | None = None
    # ... and on writes of its status.
    status_namespace_rules: Callable[[JSON, Mapping[str, Any] | None], list[FieldError]] | None = None

    @property
    def key(self) -> str:
        """The store key: ``pods`` or ``resourceslices.resource.k8s.io``."""
        return f"{self.rt.plural}.{self.rt.group}" if self.rt.group else self.rt.plural

    @property
    def list_kind(self) -> str:
        return f"{self.rt.kind}List"

    @property
    def fields(self) -> dict[str, FieldGetter]:
        getters = {"metadata.name": _path_getter("metadata", "name")}
        if self.rt.namespaced:
            getters["metadata.namespace"] = _path_getter("metadata", "namespace")
        getters.update(self.extra_fields)
        return getters

    def subresource(self, name: str) -> Subresource | None:
        return next((s for s in self.subresources if s.name == name), None)


# -- validators of the core kinds (deliberately small: what the sandbox's own code could get wrong) ----


def _meta_only(namespaced: bool, name_errors: Callable[[str], list[str]]) -> Validator:
    def validate(obj: JSON, old: JSON | None) -> list[FieldError]:
        out: list[FieldError] = []
        validate_object_meta(obj.get("metadata"), out, namespaced=namespaced, name_errors=name_errors)
        return out

    return validate


# Pod spec fields a running pod may change (the real server allows a few more in special cases).
_POD_MUTABLE = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "schedulingGates")


def _pod_spec_for_compare(spec: Any) -> Any:
    if not isinstance(spec, dict):
        return spec
    masked = {k: val for k, val in spec.items() if k not in _POD_MUTABLE}
    for kind in ("containers", "initContainers"):
        masked[kind] = [
            {k: val for k, val in c.items() if k != "image"} if isinstance(c, dict) else c
            for c in masked.get(kind) or []
        ]
    return masked


def validate_pod(pod: JSON, old: JSON | None) -> list[FieldError]:
    out: list[FieldError] = []
    validate_object_meta(pod.get("metadata"), out, namespaced=True)
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    path = Path("spec")
    containers = (spec or {}).get("containers")
    if not containers or not isinstance(containers, list):
        out.append(required(path.child("containers")))
        containers = []
    names = []
    for i, container in enumerate(containers):
        cpath = path.child("containers").index(i)
        if not isinstance(container, dict):
            out.append(type_invalid(cpath, container, "must be an object"))
            continue
        name = container.get("name")
        names.append(name)
        if not name:
            out.append(required(cpath.child("name")))
        elif isinstance(name, str):
            out.extend(invalid(cpath.child("name"), name, m) for m in dns1123_label_errors(name))
        if not container.get("image"):
            out.append(required(cpath.child("image")))
    for i, name in enumerate(names):
        if name and name in names[:i]:
            out.append(duplicate(path.child("containers").index(i).child("name"), name))
    if old is not None and _pod_spec_for_compare(pod.get("spec")) != _pod_spec_for_compare(old.get("spec")):
        detail = (
            "pod updates may not change fields other than `spec.containers[*].image`, "
            "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations`, "
            "`spec.terminationGracePeriodSeconds`, `spec.schedulingGates` (use the binding subresource to set "
            "`spec.nodeName`)"
        )
        out.append(forbidden(path, detail))
    return out


def _validate_service(svc: JSON, old: JSON | None) -> list[FieldError]:
    out: list[FieldError] = []
    validate_object_meta(svc.get("metadata"), out, namespaced=True, name_errors=dns1035_label_errors)
    ports = (svc.get("spec") or {}).get("ports") or []
    for i, port in enumerate(ports if isinstance(ports, list) else []):
        number = port.get("port") if isinstance(port, dict) else None
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
            detail = "must be between 1 and 65535, inclusive"
            out.append(invalid(Path("spec.ports").index(i).child("port"), number, detail))
    return out


# -- defaulting ----------------------------------------------------------------------------------------


def _default_pod_spec(pod: JSON, old: JSON | None = None) -> None:
    spec = pod.setdefault("spec", {})
    if isinstance(spec, dict):
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("schedulerName", "default-scheduler")


def _default_pod(pod: JSON) -> None:
    _default_pod_spec(pod)
    status = pod.setdefault("status", {})
    status.setdefault("phase", "Pending")


def _label_namespace(ns: JSON, old: JSON | None = None) -> None:
    meta = ns.setdefault("metadata", {})
    labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else None
    meta["labels"] = {**(labels or {}), "kubernetes.io/metadata.name": meta.get("name", "")}


def _default_namespace(ns: JSON) -> None:
    _label_namespace(ns)
    ns.setdefault("status", {}).setdefault("phase", "Active")


_cluster_ips = itertools.count(1)


def _default_service(svc: JSON) -> None:
    spec = svc.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    if not spec.get("clusterIP") and spec["type"] != "ExternalName":
        n = next(_cluster_ips)
        spec["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))


def _keep_cluster_ip(svc: JSON, old: JSON) -> None:
    """An update that omits the allocated clusterIP keeps it, as the real server does."""
    spec, old_spec = svc.get("spec"), old.get("spec") or {}
    if isinstance(spec, dict):
        spec.setdefault("type", old_spec.get("type", "ClusterIP"))
        if not spec.get("clusterIP") and old_spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]


def _default_slice(slice_: JSON, old: JSON | None = None) -> None:
    """Taints get ``timeAdded`` when they arrive without one: the current time, on create and on update alike
    (an update that leaves it out changes the taint, as on a real server)."""
    for device in (slice_.get("spec") or {}).get("devices") or []:
        if not isinstance(device, dict):
            continue
        for taint in device.get("taints") or []:
            if isinstance(taint, dict) and not taint.get("timeAdded"):
                taint["timeAdded"] = now()


def _default_device_request(request: JSON) -> None:
    if request.get("count") == 0:
        del request["count"]  # omitempty: a zero count is no count
    request.setdefault("allocationMode", "ExactCount")
    if request["allocationMode"] == "ExactCount" and not request.get("count"):
        request["count"] = 1
    for toleration in request.get("tolerations") or []:
        if isinstance(toleration, dict):
            toleration.setdefault("operator", "Equal")


def default_claim_spec(spec: Any) -> None:
    """The v1 defaults: allocationMode ExactCount, count 1, toleration operator Equal."""
    if not isinstance(spec, dict):
        return
    for request in (spec.get("devices") or {}).get("requests") or []:
        if not isinstance(request, dict):
            continue
        if isinstance(request.get("exactly"), dict):
            _default_device_request(request["exactly"])
        for sub in request.get("firstAvailable") or []:
            if isinstance(sub, dict):
                _default_device_request(sub)


def _default_claim(claim: JSON, old: JSON | None = None) -> None:
    default_claim_spec(claim.get("spec"))


def _default_template(template: JSON, old: JSON | None = None) -> None:
    spec = template.get("spec")
    if isinstance(spec, dict):
        default_claim_spec(spec.get("spec"))


def _drop_unallocated_device_status(claim: JSON, old: JSON) -> None:
    """Without an allocation there are no allocated devices to report on: a status update that deallocates
    drops ``status.devices`` instead of failing on them (the claim strategy does the same)."""
    status = claim.get("status")
    if isinstance(status, dict) and not status.get("allocation"):
        status.pop("devices", None)


# -- normalisation: what a real server's decode/encode round trip does to a body ----------------------------
#
# The kube-apiserver decodes a body into Go types and encodes what it stored: unknown fields vanish,
# quantities come back canonical ("81920Mi" -> "80Gi"), empty maps and lists of ``omitempty`` fields vanish
# (``attributes: {}``), null fields vanish and times are whole seconds in UTC. A driver that compares what
# it sent with what it reads back must survive this, so the sandbox does it too (resource.k8s.io kinds).

QUANTITY, TIME, VALUE = "quantity", "time", "value"  # VALUE: a scalar, or raw JSON kept as sent


@dataclass(frozen=True)
class Struct:
    fields: Mapping[str, Node]
    keep_empty: frozenset[str] = frozenset()  # list fields without omitempty
    # Fields without omitempty: the server encodes them even when unset, as their zero value (0, "0" for a
    # quantity, "" or null for a pointer, list or map).
    zero: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MapOf:
    value: Node


@dataclass(frozen=True)
class ListOf:
    item: Node


Node = str | Struct | MapOf | ListOf


def _struct(**fields: Node) -> Struct:
    return Struct(fields)


def normalize_value(node: Node, value: Any, path: str, unknown: list[str]) -> Any:
    """``value`` as the server would store it under schema ``node``; unknown field paths go to ``unknown``.

    Values of the wrong JSON type are left alone: validation reports them.
    """
    if isinstance(node, Struct):
        return _normalize_struct(node, value, path, unknown) if isinstance(value, dict) else value
    if isinstance(node, MapOf):
        if not isinstance(value, dict):
            return value
        return {
            k: normalize_value(
                node.value, _zero(node.value) if item is None else item, f"{path}.{k}", unknown
            )
            for k, item in value.items()
        }
    if isinstance(node, ListOf):
        if not isinstance(value, list):
            return value
        return [normalize_value(node.item, item, f"{path}[{i}]", unknown) for i, item in enumerate(value)]
    if node == QUANTITY:
        try:
            return canonical(value)
        except ValueError:
            return value  # validation answers 400 for it
    if node == TIME:
        return _normalize_time(value)
    return value


def _normalize_struct(node: Struct, value: JSON, path: str, unknown: list[str]) -> JSON:
    out: JSON = {}
    for key, item in value.items():
        child = node.fields.get(key)
        where = f"{path}.{key}" if path else key
        if child is None:
            unknown.append(where)
            continue
        new = normalize_value(child, item, where, unknown)
        if new is None:
            continue
        if isinstance(child, MapOf | ListOf) and new in ({}, []) and key not in node.keep_empty:
            continue  # omitempty
        out[key] = new
    for key, zero in node.zero.items():
        if key not in out:
            out[key] = copy.deepcopy(zero)
    return out


def _zero(node: Node) -> Any:
    """What a null map value decodes to: the zero value of its type."""
    if isinstance(node, Struct):
        return copy.deepcopy(dict(node.zero))
    return "0" if node == QUANTITY else None


def _normalize_time(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        return value
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_OWNER_REF = _struct(
    apiVersion=VALUE, kind=VALUE, name=VALUE, uid=VALUE, controller=VALUE, blockOwnerDeletion=VALUE
)
OBJECT_META = _struct(
    name=VALUE,
    generateName=VALUE,
    namespace=VALUE,
    selfLink=VALUE,
    uid=VALUE,
    resourceVersion=VALUE,
    generation=VALUE,
    creationTimestamp=TIME,
    deletionTimestamp=TIME,
    deletionGracePeriodSeconds=VALUE,
    labels=MapOf(VALUE),
    annotations=MapOf(VALUE),
    ownerReferences=ListOf(_OWNER_REF),
    finalizers=ListOf(VALUE),
    managedFields=ListOf(VALUE),
)
_REQUIREMENT = _struct(key=VALUE, operator=VALUE, values=ListOf(VALUE))
_NODE_SELECTOR = Struct(
    {
        "nodeSelectorTerms": ListOf(
            _struct(matchExpressions=ListOf(_REQUIREMENT), matchFields=ListOf(_REQUIREMENT))
        )
    },
    keep_empty=frozenset({"nodeSelectorTerms"}),
)
_COUNTERS = MapOf(Struct({"value": QUANTITY}, zero={"value": "0"}))
_DEVICE = _struct(
    name=VALUE,
    attributes=MapOf(
        _struct(
            int=VALUE,
            bool=VALUE,
            string=VALUE,
            version=VALUE,
            ints=ListOf(VALUE),
            bools=ListOf(VALUE),
            strings=ListOf(VALUE),
            versions=ListOf(VALUE),
        )
    ),
    nodeAllocatableResources=MapOf(
        _struct(
            mapping=_struct(capacityKey=VALUE, capacityMultiplier=QUANTITY, deviceMultiplier=QUANTITY),
            overhead=_struct(perPod=QUANTITY, perContainer=QUANTITY),
        )
    ),
    capacity=MapOf(
        Struct(
            {
                "value": QUANTITY,
                "requestPolicy": Struct(
                    {
                        "default": QUANTITY,
                        "validValues": ListOf(QUANTITY),
                        "validRange": _struct(min=QUANTITY, max=QUANTITY, step=QUANTITY),
                    },
                    zero={"default": None},
                ),
            },
            zero={"value": "0"},
        )
    ),
    consumesCounters=ListOf(_struct(counterSet=VALUE, counters=_COUNTERS)),
    nodeName=VALUE,
    nodeSelector=_NODE_SELECTOR,
    allNodes=VALUE,
    taints=ListOf(_struct(key=VALUE, value=VALUE, effect=VALUE, timeAdded=TIME)),
    bindsToNode=VALUE,
    bindingConditions=ListOf(VALUE),
    bindingFailureConditions=ListOf(VALUE),
    allowMultipleAllocations=VALUE,
)
_SLICE_SPEC = _struct(
    driver=VALUE,
    pool=Struct({"name": VALUE, "generation": VALUE, "resourceSliceCount": VALUE}, zero={"generation": 0}),
    nodeName=VALUE,
    nodeSelector=_NODE_SELECTOR,
    allNodes=VALUE,
    perDeviceNodeSelection=VALUE,
    devices=ListOf(_DEVICE),
    sharedCounters=ListOf(_struct(name=VALUE, counters=_COUNTERS)),
)
_SELECTORS = ListOf(_struct(cel=_struct(expression=VALUE)))
_OPAQUE = _struct(driver=VALUE, parameters=VALUE)
_CLASS_SPEC = _struct(
    selectors=_SELECTORS, config=ListOf(_struct(opaque=_OPAQUE)), extendedResourceName=VALUE
)
_TOLERATIONS = ListOf(_struct(key=VALUE, operator=VALUE, value=VALUE, effect=VALUE, tolerationSeconds=VALUE))
_REQUEST_FIELDS: dict[str, Node] = {
    "deviceClassName": VALUE,
    "selectors": _SELECTORS,
    "allocationMode": VALUE,
    "count": VALUE,
    "tolerations": _TOLERATIONS,
    "capacity": _struct(requests=MapOf(QUANTITY)),
}
# DeviceClaim.requests has no omitempty: unset or empty, it is stored as null.
_EMPTY_CLAIM_SPEC: JSON = {"devices": {"requests": None}}
_CLAIM_SPEC = Struct(
    {
        "devices": Struct(
            {
                "requests": ListOf(
                    _struct(
                        name=VALUE,
                        exactly=_struct(adminAccess=VALUE, **_REQUEST_FIELDS),
                        firstAvailable=ListOf(_struct(name=VALUE, **_REQUEST_FIELDS)),
                    )
                ),
                "constraints": ListOf(
                    _struct(requests=ListOf(VALUE), matchAttribute=VALUE, distinctAttribute=VALUE)
                ),
                "config": ListOf(_struct(requests=ListOf(VALUE), opaque=_OPAQUE)),
            },
            zero={"requests": None},
        )
    },
    zero=_EMPTY_CLAIM_SPEC,
)
_CONDITION = Struct(
    {
        "type": VALUE,
        "status": VALUE,
        "observedGeneration": VALUE,
        "lastTransitionTime": TIME,
        "reason": VALUE,
        "message": VALUE,
    },
    zero={"message": ""},
)
_CLAIM_STATUS = _struct(
    allocation=_struct(
        devices=_struct(
            results=ListOf(
                _struct(
                    request=VALUE,
                    driver=VALUE,
                    pool=VALUE,
                    device=VALUE,
                    adminAccess=VALUE,
                    tolerations=_TOLERATIONS,
                    bindingConditions=ListOf(VALUE),
                    bindingFailureConditions=ListOf(VALUE),
                    shareID=VALUE,
                    consumedCapacity=MapOf(QUANTITY),
                )
            ),
            config=ListOf(_struct(source=VALUE, requests=ListOf(VALUE), opaque=_OPAQUE)),
        ),
        nodeSelector=_NODE_SELECTOR,
        allocationTimestamp=TIME,
    ),
    reservedFor=ListOf(_struct(apiGroup=VALUE, resource=VALUE, name=VALUE, uid=VALUE)),
    devices=ListOf(
        Struct(
            {
                "driver": VALUE,
                "pool": VALUE,
                "device": VALUE,
                "shareID": VALUE,
                "conditions": ListOf(_CONDITION),
                "data": VALUE,
                "networkData": _struct(interfaceName=VALUE, ips=ListOf(VALUE), hardwareAddress=VALUE),
            },
            keep_empty=frozenset({"conditions"}),
            zero={"conditions": None},
        )
    ),
)


def _normalizer(zero: Mapping[str, Any] | None = None, **top: Node) -> Normalizer:
    schema = Struct({"apiVersion": VALUE, "kind": VALUE, "metadata": OBJECT_META, **top}, zero=zero or {})

    def normalize(obj: JSON) -> list[str]:
        unknown: list[str] = []
        stored = _normalize_struct(schema, obj, "", unknown)
        obj.clear()
        obj.update(stored)
        return unknown

    return normalize


normalize_slice = _normalizer(spec=_SLICE_SPEC)
normalize_device_class = _normalizer(spec=_CLASS_SPEC)
normalize_claim = _normalizer(spec=_CLAIM_SPEC, status=_CLAIM_STATUS, zero={"spec": _EMPTY_CLAIM_SPEC})
_TEMPLATE_SPEC = Struct(
    {"metadata": OBJECT_META, "spec": _CLAIM_SPEC}, zero={"metadata": {}, "spec": _EMPTY_CLAIM_SPEC}
)
normalize_claim_template = _normalizer(spec=_TEMPLATE_SPEC, zero={"spec": _TEMPLATE_SPEC.zero})
normalize_taint_rule = _normalizer(
    spec=_struct(
        deviceSelector=_struct(driver=VALUE, pool=VALUE, device=VALUE),
        taint=_struct(key=VALUE, value=VALUE, effect=VALUE, timeAdded=TIME),
    ),
    status=_struct(conditions=ListOf(_CONDITION)),
)


# -- alpha fields the server drops unless their feature gate is on ----------------------------------------------

LIST_TYPE_ATTRIBUTES = "DRAListTypeAttributes"
NODE_ALLOCATABLE_RESOURCES = "DRANodeAllocatableResources"
#: The alpha gates the sandbox API server models (off by default, as in Kubernetes 1.36 and 1.37).
ALPHA_GATES = frozenset({LIST_TYPE_ATTRIBUTES, NODE_ALLOCATABLE_RESOURCES})
_LIST_KEYS = ("ints", "bools", "strings", "versions")


def _devices(obj: JSON | None) -> list[JSON]:
    devices = ((obj or {}).get("spec") or {}).get("devices") or []
    return [d for d in devices if isinstance(d, dict)]


def _uses_lists(obj: JSON | None) -> bool:
    return any(
        isinstance(a, dict) and any(k in a for k in _LIST_KEYS)
        for d in _devices(obj)
        for a in (d.get("attributes") or {}).values()
    )


def drop_disabled_slice_fields(new: JSON, old: JSON | None, gates: frozenset[str]) -> None:
    """The registry strategy's dropDisabled*Fields: a gated field is dropped from a write unless its gate is
    on or the stored object already uses it. A list attribute left without a value fails validation."""
    if LIST_TYPE_ATTRIBUTES not in gates and not _uses_lists(old):
        for device in _devices(new):
            for attribute in (device.get("attributes") or {}).values():
                for key in _LIST_KEYS if isinstance(attribute, dict) else ():
                    attribute.pop(key, None)
    if NODE_ALLOCATABLE_RESOURCES not in gates and not any(
        d.get("nodeAllocatableResources") for d in _devices(old)
    ):
        for device in _devices(new):
            device.pop("nodeAllocatableResources", None)


_ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_STATUS_VERBS = ("get", "patch", "update")


def _status(kind: str) -> Subresource:
    return Subresource("status", kind, _STATUS_VERBS)


KIND_SPECS: tuple[KindSpec, ...] = (
    KindSpec(
        NODES,
        "node",
        _meta_only(False, dns1123_subdomain_errors),
        short_names=("no",),
        status_subresource=True,
        extra_fields={"spec.unschedulable": _path_getter("spec", "unschedulable")},
        subresources=(_status("Node"),),
    ),
    KindSpec(
        NAMESPACES,
        "namespace",
        _meta_only(False, dns1123_label_errors),
        short_names=("ns",),
        status_subresource=True,
        reset_status_on_create=True,
        extra_fields={"status.phase": _path_getter("status", "phase")},
        prepare_create=_default_namespace,
        prepare_update=_label_namespace,
        subresources=(_status("Namespace"),),
    ),
    KindSpec(
        PODS,
        "pod",
        validate_pod,
        short_names=("po",),
        status_subresource=True,
        reset_status_on_create=True,
        tracks_generation=True,
        extra_fields={
            "spec.nodeName": _path_getter("spec", "nodeName"),
            "spec.restartPolicy": _path_getter("spec", "restartPolicy"),
            "spec.schedulerName": _path_getter("spec", "schedulerName"),
            "spec.serviceAccountName": _path_getter("spec", "serviceAccountName"),
            "status.phase": _path_getter("status", "phase"),
            "status.podIP": _path_getter("status", "podIP"),
        },
        prepare_create=_default_pod,
        prepare_update=_default_pod_spec,
        subresources=(
            _status("Pod"),
            Subresource("log", "Pod", ("get",)),
            Subresource("binding", "Binding", ("create",)),
        ),
    ),
    KindSpec(
        SERVICES,
        "service",
        _validate_service,
        short_names=("svc",),
        status_subresource=True,
        reset_status_on_create=True,
        extra_fields={
            "spec.clusterIP": _path_getter("spec", "clusterIP"),
            "spec.type": _path_getter("spec", "type"),
        },
        prepare_create=_default_service,
        prepare_update=_keep_cluster_ip,
        subresources=(
            _status("Service"),
            Subresource("proxy", "ServiceProxyOptions", ("create", "delete", "get", "patch", "update")),
        ),
    ),
    KindSpec(
        EVENTS,
        "event",
        _meta_only(True, dns1123_subdomain_errors),
        short_names=("ev",),
        extra_fields={
            "involvedObject.kind": _path_getter("involvedObject", "kind"),
            "involvedObject.namespace": _path_getter("involvedObject", "namespace"),
            "involvedObject.name": _path_getter("involvedObject", "name"),
            "involvedObject.uid": _path_getter("involvedObject", "uid"),
            "reason": _path_getter("reason"),
            "type": _path_getter("type"),
        },
    ),
    KindSpec(
        RESOURCE_SLICES,
        "resourceslice",
        validate_resource_slice,
        tracks_generation=True,
        extra_fields={
            "spec.nodeName": _path_getter("spec", "nodeName"),
            "spec.driver": _path_getter("spec", "driver"),
        },
        prepare_create=_default_slice,
        prepare_update=_default_slice,
        normalize=normalize_slice,
    ),
    KindSpec(
        DEVICE_CLASSES,
        "deviceclass",
        validate_device_class,
        tracks_generation=True,
        normalize=normalize_device_class,
    ),
    KindSpec(
        RESOURCE_CLAIMS,
        "resourceclaim",
        validate_resource_claim,
        status_subresource=True,
        reset_status_on_create=True,
        validate_status=validate_resource_claim_status,
        prepare_status=_drop_unallocated_device_status,
        namespace_rules=claim_admin_access_errors,
        status_namespace_rules=status_admin_access_errors,
        prepare_create=_default_claim,
        prepare_update=_default_claim,
        normalize=normalize_claim,
        subresources=(_status("ResourceClaim"),),
    ),
    KindSpec(
        DEVICE_TAINT_RULES,
        "devicetaintrule",
        validate_device_taint_rule,
        status_subresource=True,
        tracks_generation=True,
        normalize=normalize_taint_rule,
        subresources=(_status("DeviceTaintRule"),),
    ),
    KindSpec(
        RESOURCE_CLAIM_TEMPLATES,
        "resourceclaimtemplate",
        validate_resource_claim_template,
        namespace_rules=template_admin_access_errors,
        prepare_create=_default_template,
        prepare_update=_default_template,
        normalize=normalize_claim_template,
    ),
    # RBAC objects, so that a chart's roles and bindings can be applied and then decide what its service
    # accounts may do (driver/sim/rbac.py).
    KindSpec(CLUSTER_ROLES, "clusterrole", _meta_only(False, dns1123_subdomain_errors)),
    KindSpec(CLUSTER_ROLE_BINDINGS, "clusterrolebinding", _meta_only(False, dns1123_subdomain_errors)),
    KindSpec(ROLES, "role", _meta_only(True, dns1123_subdomain_errors)),
    KindSpec(ROLE_BINDINGS, "rolebinding", _meta_only(True, dns1123_subdomain_errors)),
    # Admission policies, evaluated on the writes they match (driver/sim/admission.py).
    KindSpec(POLICIES, "validatingadmissionpolicy", _meta_only(False, dns1123_subdomain_errors)),
    KindSpec(
        POLICY_BINDINGS, "validatingadmissionpolicybinding", _meta_only(False, dns1123_subdomain_errors)
    ),
)

ALL_VERBS = _ALL_VERBS


def kind_table(specs: tuple[KindSpec, ...] = KIND_SPECS) -> dict[tuple[str, str, str], KindSpec]:
    """(group, version, plural) -> spec."""
    return {(s.rt.group, s.rt.version, s.rt.plural): s for s in specs}


def strip_for_list(obj: JSON) -> JSON:
    """List items carry no apiVersion/kind, as in the real server's typed lists."""
    item = copy.copy(obj)
    item.pop("apiVersion", None)
    item.pop("kind", None)
    return item
