"""Desired ResourceSlices for one node, and the plan that brings the API server there.

Everything here is pure: given what the API server holds and what should be published, compute which
slices to delete, update and create, following the upstream Go helper's ResourceSlice controller so the
scheduler sees pools the way it expects:

* the pool is named after the node; its generation is the highest generation among existing slices,
  and slices at a lower generation are obsolete;
* shared counters (partitionable devices) go into slices of their own, as Kubernetes 1.35 and later
  require (a slice holds ``devices`` or ``sharedCounters``), at most 8 counter sets each;
* an existing slice matches a desired one when it is the only one on both sides, or when both hold the
  same set of device names (counter set names for counter slices); unmatched existing slices are deleted,
  unmatched desired ones created;
* the generation is kept when nothing is created and at most one slice changes, otherwise bumped, and
  every written slice carries the (possibly new) generation and ``resourceSliceCount``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from driver.quantity import canonical

JSON = dict[str, Any]

MAX_DEVICES_PER_SLICE = 128
MAX_DEVICES_PER_SLICE_WITH_TAINTS_OR_COUNTERS = 64
MAX_COUNTER_SETS_PER_SLICE = 8


@dataclass(frozen=True)
class SharedCounters:
    """What a counters-only slice holds: ``spec.sharedCounters`` (no devices)."""

    sets: tuple[JSON, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(str(s.get("name", "")) for s in self.sets)


#: What one slice of the pool holds: a device list, or counter sets.
SliceContent = list[JSON] | SharedCounters


def slice_capacity(devices: Sequence[Mapping[str, Any]]) -> int:
    """How many devices one slice may hold: the API server allows fewer once taints or counters appear.

    The limit applies pool-wide so that tainting one device re-splits the pool once, predictably.
    """
    if any(d.get("taints") or d.get("consumesCounters") for d in devices):
        return MAX_DEVICES_PER_SLICE_WITH_TAINTS_OR_COUNTERS
    return MAX_DEVICES_PER_SLICE


def split_devices(devices: Sequence[Mapping[str, Any]]) -> list[list[JSON]]:
    """Deterministic split into slices: devices ordered by name, chunks of the allowed size.

    A pool with no devices still gets one empty slice: "an empty pool" differs from "no pool".
    """
    ordered = sorted((dict(d) for d in devices), key=lambda d: d["name"])
    size = slice_capacity(ordered)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)] or [[]]


def split_pool(
    devices: Sequence[Mapping[str, Any]], counter_sets: Sequence[Mapping[str, Any]] = ()
) -> list[SliceContent]:
    """The pool's slices: counter sets (sorted by name, 8 per slice), then the devices (:func:`split_devices`;
    no empty device slice when counters give the pool a slice)."""
    sets = sorted((dict(c) for c in counter_sets), key=lambda c: str(c.get("name", "")))
    chunks: list[SliceContent] = [
        SharedCounters(tuple(sets[i : i + MAX_COUNTER_SETS_PER_SLICE]))
        for i in range(0, len(sets), MAX_COUNTER_SETS_PER_SLICE)
    ]
    if devices or not chunks:
        chunks.extend(split_devices(devices))
    return chunks


@dataclass(frozen=True)
class Owner:
    """The Node that owns the slices (garbage collection removes them with the node)."""

    name: str
    uid: str

    def reference(self) -> JSON:
        return {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid, "controller": True}


@dataclass
class SyncPlan:
    generation: int
    slice_count: int
    deletes: list[JSON] = field(default_factory=list)
    updates: list[JSON] = field(default_factory=list)
    creates: list[JSON] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return len(self.deletes) + len(self.updates) + len(self.creates)


def _content_key(slice_obj: Mapping[str, Any]) -> tuple[str, frozenset[str]]:
    """What a stored slice holds, for matching: its device names, or its counter set names."""
    spec = slice_obj.get("spec", {})
    if spec.get("sharedCounters"):
        return ("counters", frozenset(str(c.get("name", "")) for c in spec["sharedCounters"]))
    return ("devices", frozenset(d.get("name", "") for d in spec.get("devices") or []))


def _desired_key(content: SliceContent) -> tuple[str, frozenset[str]]:
    if isinstance(content, SharedCounters):
        return ("counters", content.names)
    return ("devices", frozenset(d["name"] for d in content))


# Device fields that are Go maps or slices with ``omitempty``: the API server drops them when empty.
_OMITTED_WHEN_EMPTY = (
    "attributes",
    "capacity",
    "consumesCounters",
    "taints",
    "bindingConditions",
    "bindingFailureConditions",
)


def _canonical(value: Any) -> Any:
    try:
        return canonical(value)
    except ValueError:
        return value  # not a quantity: the API server will say so


def stored_device(device: Mapping[str, Any]) -> JSON:
    """A device as the API server stores it, for comparing: quantities canonical ("81920Mi" is "80Gi"),
    null and empty ``omitempty`` fields gone, server-defaulted taint timestamps ignored."""
    d = {
        key: value
        for key, value in copy.deepcopy(dict(device)).items()
        if value is not None and not (key in _OMITTED_WHEN_EMPTY and value in ({}, []))
    }
    for capacity in (d.get("capacity") or {}).values():
        if isinstance(capacity, dict) and "value" in capacity:
            capacity["value"] = _canonical(capacity["value"])
    for consumption in d.get("consumesCounters") or []:
        for counter in (consumption.get("counters") or {}).values() if isinstance(consumption, dict) else []:
            if isinstance(counter, dict) and "value" in counter:
                counter["value"] = _canonical(counter["value"])
    for taint in d.get("taints") or []:
        if isinstance(taint, dict):
            taint.pop("timeAdded", None)
    return d


def _comparable_devices(devices: Sequence[Mapping[str, Any]]) -> list[JSON]:
    """Devices in their stored form, in name order: only a real difference makes an update."""
    return sorted((stored_device(d) for d in devices), key=lambda d: str(d.get("name", "")))


def _comparable_counters(sets: Sequence[Mapping[str, Any]]) -> list[JSON]:
    """Counter sets in their stored form (canonical quantities), in name order."""
    out = []
    for counter_set in sets:
        counters = counter_set.get("counters") or {}
        out.append(
            {
                "name": counter_set.get("name"),
                "counters": {
                    k: _canonical(v.get("value")) if isinstance(v, dict) else v for k, v in counters.items()
                },
            }
        )
    return sorted(out, key=lambda c: str(c["name"]))


def slice_spec(driver: str, node: str, generation: int, count: int, content: SliceContent) -> JSON:
    spec: JSON = {
        "driver": driver,
        "nodeName": node,
        "pool": {"name": node, "generation": generation, "resourceSliceCount": count},
    }
    if isinstance(content, SharedCounters):
        spec["sharedCounters"] = [dict(c) for c in content.sets]
    else:
        spec["devices"] = list(content)
    return spec


def _differs(existing: Mapping[str, Any], desired_spec: Mapping[str, Any]) -> bool:
    spec = existing.get("spec", {})
    return (
        spec.get("pool") != desired_spec["pool"]
        or spec.get("nodeName") != desired_spec["nodeName"]
        or bool(spec.get("nodeSelector"))
        or bool(spec.get("allNodes"))
        or bool(spec.get("perDeviceNodeSelection"))
        or _comparable_devices(spec.get("devices") or [])
        != _comparable_devices(desired_spec.get("devices") or [])
        or _comparable_counters(spec.get("sharedCounters") or [])
        != _comparable_counters(desired_spec.get("sharedCounters") or [])
    )


def _match(
    current: list[JSON], desired: list[SliceContent]
) -> tuple[list[tuple[JSON, SliceContent]], list[JSON]]:
    """Pair existing slices with desired contents; return (pairs, unmatched existing)."""
    if len(current) == 1 and len(desired) == 1:
        return [(current[0], desired[0])], []
    by_key: dict[tuple[str, frozenset[str]], JSON] = {}
    unmatched: list[JSON] = []
    for existing in current:
        key = _content_key(existing)
        if key in by_key:
            unmatched.append(existing)  # a duplicate; keep the first
        else:
            by_key[key] = existing
    pairs: list[tuple[JSON, SliceContent]] = []
    for content in desired:
        pairs.append((by_key.pop(_desired_key(content), {}), content))
    unmatched.extend(by_key.values())
    return pairs, unmatched


def plan_sync(
    existing: Sequence[Mapping[str, Any]],
    desired: Sequence[Sequence[Mapping[str, Any]] | SharedCounters],
    *,
    driver: str,
    owner: Owner,
) -> SyncPlan:
    """Compute the writes that make the node's pool equal ``desired`` (device lists and counter slices)."""
    slices = [copy.deepcopy(dict(s)) for s in existing]
    generation = max((s.get("spec", {}).get("pool", {}).get("generation", 0) for s in slices), default=0)
    current = [s for s in slices if s["spec"]["pool"].get("generation", 0) == generation]
    obsolete = [s for s in slices if s["spec"]["pool"].get("generation", 0) < generation]
    wanted: list[SliceContent] = [c if isinstance(c, SharedCounters) else list(map(dict, c)) for c in desired]
    pairs, unmatched = _match(current, wanted)
    count = len(wanted)

    def changed_with(gen: int) -> list[tuple[JSON, JSON]]:
        return [
            (obj, spec)
            for obj, content in pairs
            if obj and _differs(obj, spec := slice_spec(driver, owner.name, gen, count, content))
        ]

    creates_needed = [content for obj, content in pairs if not obj]
    changed = changed_with(generation)
    if creates_needed or len(changed) > 1:
        generation += 1
        changed = changed_with(generation)

    plan = SyncPlan(generation=generation, slice_count=count)
    plan.deletes = obsolete + unmatched
    for obj, spec in changed:
        updated = copy.deepcopy(obj)
        updated["spec"] = {
            k: v
            for k, v in obj.get("spec", {}).items()
            if k not in ("nodeSelector", "allNodes", "perDeviceNodeSelection", "sharedCounters", "devices")
        }
        updated["spec"].update(spec)
        plan.updates.append(updated)
    for content in creates_needed:
        plan.creates.append(
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceSlice",
                "metadata": {
                    "generateName": f"{owner.name}-{driver}-",
                    "ownerReferences": [owner.reference()],
                },
                "spec": slice_spec(driver, owner.name, generation, count, content),
            }
        )
    return plan
