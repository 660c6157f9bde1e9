"""Which devices a node can use: ResourceSlices grouped into pools, filtered the way the scheduler does.

- A slice is for the node when ``spec.nodeName`` names it, ``spec.allNodes`` is true, or ``spec.nodeSelector``
  matches the node's labels/name. Other slices are ignored (with a reason, for explanations).
- Slices belong to a pool ``(driver, pool.name)``; only the pool's highest ``pool.generation`` counts.
- A pool is complete when all ``pool.resourceSliceCount`` slices of that generation are present; devices
  of an incomplete pool are not allocated (the driver is in the middle of an update). A pool whose slices
  repeat a device name is invalid and skipped too.
- Order is deterministic: pools by (driver, name), slices by name, devices in slice order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from driver.allocation.model import JSON, Node, node_selector_matches, object_ref

DeviceKey = tuple[str, str, str]
"""(driver, pool, device): how allocation results and in-use bookkeeping name a device."""


def device_id(key: DeviceKey) -> str:
    return "/".join(key)


@dataclass(frozen=True)
class Candidate:
    """One device offered by a slice, with what the allocator needs from its slice."""

    driver: str
    pool: str
    slice: str
    spec: Mapping[str, Any]
    node_name: str | None
    node_selector: Mapping[str, Any] | None

    @property
    def name(self) -> str:
        return str(self.spec.get("name", ""))

    @property
    def key(self) -> DeviceKey:
        return (self.driver, self.pool, self.name)

    @property
    def id(self) -> str:
        return device_id(self.key)

    @property
    def taints(self) -> list[JSON]:
        return [dict(t) for t in self.spec.get("taints") or () if isinstance(t, Mapping)]

    @property
    def allow_multiple(self) -> bool:
        return bool(self.spec.get("allowMultipleAllocations"))

    @property
    def unsupported(self) -> str | None:
        """Why this allocator must not hand the device out (features it does not model), or None."""
        if self.spec.get("consumesCounters"):
            return "consumes shared counters (partitionable devices are not supported by this allocator)"
        if self.spec.get("bindingConditions"):
            return "has binding conditions (not supported by this allocator)"
        return None


@dataclass
class Pool:
    driver: str
    name: str
    generation: int
    slice_count: int
    present: int  # slices of the pool at `generation`, for any node
    devices: list[Candidate] = field(default_factory=list)
    invalid: str | None = None

    @property
    def id(self) -> str:
        return f"{self.driver}/{self.name}"

    @property
    def complete(self) -> bool:
        return self.present >= self.slice_count

    @property
    def usable(self) -> bool:
        return self.complete and self.invalid is None

    def problem(self) -> str | None:
        """Why the pool's devices are not offered, or None."""
        if self.invalid:
            return f"pool {self.id} is invalid: {self.invalid}"
        if not self.complete:
            return (
                f"pool {self.id} is incomplete: {self.present} of {self.slice_count} slices "
                f"of generation {self.generation} published"
            )
        return None


@dataclass(frozen=True)
class IgnoredSlice:
    """A slice whose devices this node cannot use, and why."""

    name: str
    driver: str
    pool: str
    reason: str
    devices: tuple[str, ...]
    wrong_node: bool


@dataclass
class NodeDevices:
    node: Node
    pools: list[Pool]
    ignored: list[IgnoredSlice]

    def usable(self) -> list[Candidate]:
        """Allocatable devices in search order (complete, valid pools only)."""
        return [d for pool in self.pools if pool.usable for d in pool.devices]

    def all_devices(self) -> list[Candidate]:
        """Every device on this node's pools, including those of incomplete or invalid pools."""
        return [d for pool in self.pools for d in pool.devices]

    def pool(self, candidate: Candidate) -> Pool:
        return next(p for p in self.pools if (p.driver, p.name) == (candidate.driver, candidate.pool))


def _slice_node_match(spec: Mapping[str, Any], node: Node) -> tuple[bool, str]:
    """(matches, reason when not): nodeName, allNodes, nodeSelector; anything else is not understood."""
    node_name = spec.get("nodeName")
    if node_name:
        return node_name == node.name, f"published for node {node_name}"
    if spec.get("allNodes"):
        return True, ""
    selector = spec.get("nodeSelector")
    if isinstance(selector, Mapping):
        return node_selector_matches(selector, node), f"its nodeSelector does not match node {node.name}"
    if spec.get("perDeviceNodeSelection"):
        return False, "per-device node selection is not supported by this allocator"
    return False, "it selects no node (none of nodeName, allNodes, nodeSelector)"


def _ignored(slice_obj: Mapping[str, Any], reason: str, wrong_node: bool) -> IgnoredSlice:
    spec = slice_obj.get("spec") or {}
    devices = tuple(str(d.get("name", "")) for d in spec.get("devices") or () if isinstance(d, Mapping))
    return IgnoredSlice(
        object_ref(slice_obj),
        str(spec.get("driver", "")),
        str((spec.get("pool") or {}).get("name", "")),
        reason,
        devices,
        wrong_node,
    )


def _pool_key(slice_obj: Mapping[str, Any]) -> tuple[str, str]:
    spec = slice_obj.get("spec") or {}
    return str(spec.get("driver", "")), str((spec.get("pool") or {}).get("name", ""))


def _generation(slice_obj: Mapping[str, Any]) -> int:
    return int(((slice_obj.get("spec") or {}).get("pool") or {}).get("generation") or 0)


def gather_pools(slices: Iterable[Mapping[str, Any]], node: Node) -> NodeDevices:
    """Group ``slices`` into the pools ``node`` can allocate from (see the module docstring)."""
    ordered = sorted(slices, key=lambda s: (*_pool_key(s), object_ref(s)))
    by_pool: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for slice_obj in ordered:
        by_pool.setdefault(_pool_key(slice_obj), []).append(slice_obj)
    pools: list[Pool] = []
    ignored: list[IgnoredSlice] = []
    for (driver, pool_name), members in by_pool.items():
        for_node = []
        for slice_obj in members:
            matches, reason = _slice_node_match(slice_obj.get("spec") or {}, node)
            if matches:
                for_node.append(slice_obj)
            else:
                ignored.append(_ignored(slice_obj, reason, wrong_node=True))
        if for_node:
            pools.append(_build_pool(driver, pool_name, members, for_node, ignored))
    return NodeDevices(node, pools, ignored)


def _build_pool(
    driver: str,
    name: str,
    members: Sequence[Mapping[str, Any]],
    for_node: Sequence[Mapping[str, Any]],
    ignored: list[IgnoredSlice],
) -> Pool:
    generation = max(_generation(s) for s in members)
    current = [s for s in members if _generation(s) == generation]
    expected = max(
        int(((s.get("spec") or {}).get("pool") or {}).get("resourceSliceCount") or 1) for s in current
    )
    pool = Pool(driver, name, generation, expected, present=len(current))
    seen: set[str] = set()
    for slice_obj in for_node:
        if _generation(slice_obj) != generation:
            reason = f"its pool generation {_generation(slice_obj)} is older than the pool's {generation}"
            ignored.append(_ignored(slice_obj, reason, wrong_node=False))
            continue
        spec = slice_obj.get("spec") or {}
        for device in spec.get("devices") or ():
            if not isinstance(device, Mapping):
                continue
            candidate = Candidate(
                driver, name, object_ref(slice_obj), device, spec.get("nodeName"), spec.get("nodeSelector")
            )
            if candidate.name in seen:
                pool.invalid = f"duplicate device name {candidate.name}"
            seen.add(candidate.name)
            pool.devices.append(candidate)
    return pool


InUse = Mapping[DeviceKey, str | None]
"""Devices allocated to other claims, mapped to the claim (``namespace/name``) holding them when known."""


def in_use_from_claims(
    claims: Iterable[Mapping[str, Any]], exclude: Iterable[str] = ()
) -> dict[DeviceKey, str]:
    """Devices the allocations of ``claims`` hold; ``exclude`` lists claim UIDs or ``namespace/name`` refs.

    Results with admin access do not make a device busy (the scheduler does not count them either).
    """
    skip = set(exclude)
    held: dict[DeviceKey, str] = {}
    for claim in claims:
        ref, uid = object_ref(claim), (claim.get("metadata") or {}).get("uid")
        if ref in skip or (uid and uid in skip):
            continue
        allocation = (claim.get("status") or {}).get("allocation") or {}
        for result in (allocation.get("devices") or {}).get("results") or ():
            if result.get("adminAccess"):
                continue
            key = (str(result.get("driver")), str(result.get("pool")), str(result.get("device")))
            held.setdefault(key, ref)
    return held
