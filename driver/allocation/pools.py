"""Which devices a node can use: ResourceSlices grouped into pools the way kube-scheduler 1.37 does it.

:class:`SliceIndex` holds every slice once (DeviceTaintRules applied), indexed by node and by pool, so one
node's view costs only that node's slices plus the slices not bound to one node. :func:`gather_pools` then
follows k8s.io/dynamic-resource-allocation's ``GatherPools``:

- A slice is for the node when ``nodeName`` names it, ``allNodes`` is set, its ``nodeSelector`` matches
  the node, or (``perDeviceNodeSelection``) any of its devices selects the node. A slice with none of these
  is not understood and skipped; so is one using counter compatibility groups (an alpha feature off by
  default), which leaves its pool incomplete.
- Slices belong to a pool ``(driver, pool.name)``; only the newest ``pool.generation`` among the node's
  slices counts. The pool is complete when it has exactly ``resourceSliceCount`` slices of that generation;
  if the node does not see them all, every slice of the pool (any node) is counted, and a newer generation
  elsewhere means the driver is replacing the pool: it is ignored until the new one reaches this node.
- A pool is invalid when its device slices repeat a device name, two slices define one counter set, or a
  device consumes a counter set or counter that does not exist. Incomplete and invalid pools hand out no
  devices (and a request for ``All`` devices fails on them).
- Slices with ``sharedCounters`` define the pool's counter sets (partitionable devices); their devices, if
  any, are not offered.
- Order is deterministic: pools by (driver, name), pools with binding conditions last; slices by name;
  devices in slice order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from driver.allocation.model import JSON, Node, node_selector_matches, object_ref
from driver.quantity import parse_quantity

DeviceKey = tuple[str, str, str]
"""(driver, pool, device): how allocation results and in-use bookkeeping name a device."""

PoolKey = tuple[str, str]


def device_id(key: DeviceKey) -> str:
    return "/".join(key)


@dataclass(frozen=True)
class TaintRuleTaint:
    """A taint a DeviceTaintRule puts on a device."""

    rule: str
    taint: JSON


@dataclass(slots=True)
class Slice:
    """One ResourceSlice, read once."""

    name: str
    driver: str
    pool: str
    generation: int
    slice_count: int
    spec: Mapping[str, Any]
    node_name: str = field(init=False)
    devices: list[Mapping[str, Any]] = field(init=False)
    counter_sets: list[Mapping[str, Any]] = field(init=False)
    uses_compatibility_groups: bool = field(init=False)

    def __post_init__(self) -> None:
        spec = self.spec
        self.node_name = str(spec.get("nodeName") or "")
        self.devices = [d for d in spec.get("devices") or () if isinstance(d, dict | Mapping)]
        self.counter_sets = [c for c in spec.get("sharedCounters") or () if isinstance(c, dict | Mapping)]
        self.uses_compatibility_groups = any(
            c.get("compatibilityGroups")
            for d in self.devices
            if d.get("consumesCounters")
            for c in d["consumesCounters"]
            if isinstance(c, Mapping)
        )

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Slice:
        spec = obj.get("spec") or {}
        pool = spec.get("pool") or {}
        return cls(
            object_ref(obj),
            str(spec.get("driver", "")),
            str(pool.get("name", "")),
            int(pool.get("generation") or 0),
            int(pool.get("resourceSliceCount") or 0),
            spec,
        )

    @property
    def per_device_node_selection(self) -> bool:
        return self.spec.get("perDeviceNodeSelection") is True


@dataclass(frozen=True, slots=True)
class Candidate:
    """One device offered by a slice, with what the allocator needs from its slice."""

    driver: str
    pool: str
    slice: str
    spec: Mapping[str, Any]
    slice_spec: Mapping[str, Any]
    rule_taints: tuple[TaintRuleTaint, ...] = ()
    name: str = field(init=False)
    key: DeviceKey = field(init=False)  # (driver, pool, device)
    id: str = field(init=False)  # driver/pool/device

    def __post_init__(self) -> None:
        name = str(self.spec.get("name", ""))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "key", (self.driver, self.pool, name))
        object.__setattr__(self, "id", f"{self.driver}/{self.pool}/{name}")

    @property
    def taints(self) -> list[JSON]:
        """The device's own taints, then those of DeviceTaintRules (as the scheduler's slice tracker adds them)."""
        own = [dict(t) for t in self.spec.get("taints") or () if isinstance(t, Mapping)]
        return own + [dict(t.taint) for t in self.rule_taints]

    @property
    def allow_multiple(self) -> bool:
        return self.spec.get("allowMultipleAllocations") is True

    @property
    def binding_conditions(self) -> list[str]:
        return [str(c) for c in self.spec.get("bindingConditions") or ()]

    @property
    def binding_failure_conditions(self) -> list[str]:
        return [str(c) for c in self.spec.get("bindingFailureConditions") or ()]

    @property
    def consumes_counters(self) -> list[Mapping[str, Any]]:
        return [c for c in self.spec.get("consumesCounters") or () if isinstance(c, Mapping)]

    @property
    def per_device_node_selection(self) -> bool:
        return self.slice_spec.get("perDeviceNodeSelection") is True

    def node_restriction(self) -> tuple[str, bool, Mapping[str, Any] | None]:
        """(nodeName, allNodes, nodeSelector) that decide where an allocation of this device is usable:
        the device's own with per-device node selection, else its slice's."""
        source = self.spec if self.per_device_node_selection else self.slice_spec
        selector = source.get("nodeSelector")
        return (
            str(source.get("nodeName") or ""),
            source.get("allNodes") is True,
            selector if isinstance(selector, Mapping) else None,
        )


Counters = dict[str, dict[str, Decimal]]
"""Counter set name -> counter name -> amount."""


@dataclass
class Pool:
    driver: str
    name: str
    generation: int
    slice_count: int
    present: int  # slices of the pool at `generation` (all nodes, when counted)
    slices: list[Slice] = field(default_factory=list)  # device slices for the node, by name
    not_targeting: list[Slice] = field(default_factory=list)  # device slices of the pool for other nodes
    counter_sets: Counters = field(default_factory=dict)
    devices: list[Candidate] = field(default_factory=list)
    incomplete: bool = False
    invalid: str | None = None

    @property
    def id(self) -> str:
        return f"{self.driver}/{self.name}"

    @property
    def key(self) -> PoolKey:
        return (self.driver, self.name)

    @property
    def usable(self) -> bool:
        return not self.incomplete and self.invalid is None

    @property
    def has_binding_conditions(self) -> bool:
        """Such pools are tried last (an incomplete pool offers nothing, so it never counts)."""
        return not self.incomplete and any(d.spec.get("bindingConditions") is not None for d in self.devices)

    def problem(self) -> str | None:
        """Why the pool's devices are not offered, or None."""
        if self.invalid:
            return f"pool {self.id} is invalid: {self.invalid}"
        if self.incomplete:
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
    kind: str  # WRONG_NODE | OUTDATED | UNSUPPORTED


WRONG_NODE = "wrong-node"
OUTDATED = "outdated-slice"
UNSUPPORTED = "unsupported-slice"


@dataclass
class NodeDevices:
    node: Node
    pools: list[Pool]
    ignored: list[IgnoredSlice]
    other_nodes: int = 0  # slices published for other nodes (not looked at)

    def usable(self) -> list[Candidate]:
        """Allocatable devices in search order (complete, valid pools only)."""
        return [d for pool in self.pools if pool.usable for d in pool.devices]

    def all_devices(self) -> list[Candidate]:
        """Every device on this node's pools, including those of incomplete or invalid pools."""
        return [d for pool in self.pools for d in pool.devices]

    def pool(self, candidate: Candidate) -> Pool:
        return next(p for p in self.pools if (p.driver, p.name) == (candidate.driver, candidate.pool))


# -- DeviceTaintRules ------------------------------------------------------------------------------------------


def device_rule_taints(
    rules: Iterable[Mapping[str, Any]], driver: str, pool: str, device: str
) -> list[TaintRuleTaint]:
    """Taints that DeviceTaintRules put on one device (``resource.k8s.io/v1``, and ``v1beta2`` of 1.36 in
    the same shape: a selector of driver, pool and device name, each optional; no selector selects
    nothing)."""
    out = []
    for rule in rules:
        spec = rule.get("spec") or {}
        selector = spec.get("deviceSelector")
        if not isinstance(selector, Mapping):
            continue
        wanted = (selector.get("driver"), selector.get("pool"), selector.get("device"))
        if any(w is not None and w != have for w, have in zip(wanted, (driver, pool, device), strict=True)):
            continue
        out.append(TaintRuleTaint(object_ref(rule), dict(spec.get("taint") or {})))
    return out


def rule_taints(
    rules: Iterable[Mapping[str, Any]], slice_: Slice, device: Mapping[str, Any]
) -> list[TaintRuleTaint]:
    """:func:`device_rule_taints` of one device of a slice."""
    return device_rule_taints(rules, slice_.driver, slice_.pool, str(device.get("name", "")))


# -- the index --------------------------------------------------------------------------------------------------


class SliceIndex:
    """Every ResourceSlice of the cluster, read once and indexed for per-node views."""

    def __init__(
        self, slices: Iterable[Mapping[str, Any]], taint_rules: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        self.slices = [Slice.from_object(s) for s in slices]
        self.on_node: dict[str, list[Slice]] = {}
        self.not_on_a_node: list[Slice] = []
        self.by_pool: dict[PoolKey, list[Slice]] = {}
        for slice_ in self.slices:
            if slice_.node_name:
                self.on_node.setdefault(slice_.node_name, []).append(slice_)
            else:
                self.not_on_a_node.append(slice_)
            self.by_pool.setdefault((slice_.driver, slice_.pool), []).append(slice_)
        rules = [r for r in taint_rules if isinstance(r, Mapping)]
        self.rule_taints: dict[DeviceKey, tuple[TaintRuleTaint, ...]] = {}
        if rules:
            for slice_ in self.slices:
                for device in slice_.devices:
                    found = rule_taints(rules, slice_, device)
                    if found:
                        self.rule_taints[(slice_.driver, slice_.pool, str(device.get("name", "")))] = tuple(
                            found
                        )

    def node_names(self) -> list[str]:
        return sorted(self.on_node)

    def for_node(self, node: Node) -> NodeDevices:
        return gather_pools(self, node)


def _device_names(slice_: Slice) -> tuple[str, ...]:
    return tuple(str(d.get("name", "")) for d in slice_.devices)


def _ignored(slice_: Slice, reason: str, kind: str) -> IgnoredSlice:
    return IgnoredSlice(slice_.name, slice_.driver, slice_.pool, reason, _device_names(slice_), kind)


def _for_node(slice_: Slice, node: Node) -> tuple[bool | None, str]:
    """(True, "") when the slice is for the node, (False, why) when not, (None, why) when not understood.
    :class:`~driver.allocation.model.NodeSelectorError` for a selector that does not parse."""
    spec = slice_.spec
    if slice_.node_name or spec.get("allNodes") is True or spec.get("nodeSelector") is not None:
        if slice_.node_name:
            return slice_.node_name == node.name, f"published for node {slice_.node_name}"
        if spec.get("allNodes") is True:
            return True, ""
        selector = spec.get("nodeSelector")
        try:
            matches = isinstance(selector, Mapping) and node_selector_matches(selector, node)
        except ValueError as exc:
            raise type(exc)(f"failed to perform node selection for slice {slice_.name}: {exc}") from None
        return matches, f"its nodeSelector does not match node {node.name}"
    if slice_.per_device_node_selection:
        for device in slice_.devices:
            try:
                if device_selects_node(device, node):
                    return True, ""
            except ValueError as exc:
                raise type(exc)(
                    f"failed to perform node selection for device {device.get('name')} in slice {slice_.name}: {exc}"
                ) from None
        return False, f"none of its devices selects node {node.name}"
    return None, "it selects no node (none of nodeName, allNodes, nodeSelector, perDeviceNodeSelection)"


def device_selects_node(device: Mapping[str, Any], node: Node) -> bool:
    """Per-device node selection (``NodeMatches`` on the device's nodeName / allNodes / nodeSelector)."""
    if device.get("nodeName"):
        return bool(device["nodeName"] == node.name)
    if device.get("allNodes") is True:
        return True
    selector = device.get("nodeSelector")
    if isinstance(selector, Mapping):
        return node_selector_matches(selector, node)
    return False


def gather_pools(index: SliceIndex, node: Node) -> NodeDevices:
    """The pools ``node`` can allocate from (see the module docstring)."""
    ignored: list[IgnoredSlice] = []
    chosen: dict[PoolKey, list[Slice]] = {}
    for slice_ in [*index.on_node.get(node.name, ()), *index.not_on_a_node]:
        if slice_.uses_compatibility_groups:
            ignored.append(
                _ignored(
                    slice_, "its devices use counter compatibility groups (an alpha feature)", UNSUPPORTED
                )
            )
            continue
        relevant, reason = _for_node(slice_, node)
        if relevant is None:
            ignored.append(_ignored(slice_, reason, UNSUPPORTED))
            continue
        if not relevant:
            ignored.append(_ignored(slice_, reason, WRONG_NODE))
            continue
        current = chosen.get((slice_.driver, slice_.pool))
        if current is None or slice_.generation > current[0].generation:
            for old in current or ():
                ignored.append(_outdated(old, slice_.generation))
            chosen[(slice_.driver, slice_.pool)] = [slice_]
        elif slice_.generation < current[0].generation:
            ignored.append(_outdated(slice_, current[0].generation))
        else:
            current.append(slice_)
    pools: list[Pool] = []
    for key, members in chosen.items():
        pool = _pool(index, key, members, ignored)
        if pool is not None:
            pools.append(pool)
    pools.sort(key=lambda p: (p.has_binding_conditions, p.driver, p.name))
    other_nodes = len(index.slices) - len(index.not_on_a_node) - len(index.on_node.get(node.name, ()))
    return NodeDevices(node, pools, ignored, other_nodes)


def _outdated(slice_: Slice, newest: int) -> IgnoredSlice:
    return _ignored(
        slice_, f"its pool generation {slice_.generation} is older than the pool's {newest}", OUTDATED
    )


def _pool(index: SliceIndex, key: PoolKey, members: list[Slice], ignored: list[IgnoredSlice]) -> Pool | None:
    first = members[0]
    generation, expected = first.generation, first.slice_count
    if len(members) == expected:
        return _build_pool(
            index, key, members, [], generation=generation, expected=expected, present=len(members)
        )
    everyone = index.by_pool.get(key, [])
    if any(s.generation > generation for s in everyone):
        for slice_ in members:
            ignored.append(
                _ignored(
                    slice_, "a newer generation of its pool is being published for other nodes", OUTDATED
                )
            )
        return None
    current = [s for s in everyone if s.generation == generation and not s.uses_compatibility_groups]
    if len(current) != expected:
        pool = Pool(key[0], key[1], generation, expected, len(current), incomplete=True)
        pool.slices = sorted(members, key=lambda s: s.name)
        pool.devices = _candidates(index, pool.slices)
        return pool
    return _build_pool(
        index, key, members, current, generation=generation, expected=expected, present=len(current)
    )


def _build_pool(
    index: SliceIndex,
    key: PoolKey,
    members: Sequence[Slice],
    everyone: Sequence[Slice],
    *,
    generation: int,
    expected: int,
    present: int,
) -> Pool:
    pool = Pool(key[0], key[1], generation, expected, present)
    targeting = sorted(members, key=lambda s: s.name)
    names = {s.name for s in targeting}
    counter_slices = [s for s in targeting if s.counter_sets]
    pool.slices = [s for s in targeting if not s.counter_sets]
    pool.devices = _candidates(index, pool.slices)
    for slice_ in everyone:
        if slice_.name in names:
            continue
        (counter_slices if slice_.counter_sets else pool.not_targeting).append(slice_)
    pool.invalid = _duplicate_device(pool.slices)
    if pool.invalid is None:
        pool.counter_sets, pool.invalid = _counter_sets(counter_slices)
    if pool.invalid is None:
        pool.invalid = _unknown_counters(pool.counter_sets, [*pool.slices, *pool.not_targeting])
    return pool


def _candidates(index: SliceIndex, slices: Sequence[Slice]) -> list[Candidate]:
    out = []
    for slice_ in slices:
        for device in slice_.devices:
            key = (slice_.driver, slice_.pool, str(device.get("name", "")))
            out.append(
                Candidate(
                    slice_.driver,
                    slice_.pool,
                    slice_.name,
                    device,
                    slice_.spec,
                    index.rule_taints.get(key, ()),
                )
            )
    return out


def _duplicate_device(slices: Sequence[Slice]) -> str | None:
    seen: set[str] = set()
    for slice_ in slices:
        for name in _device_names(slice_):
            if name in seen:
                return f"duplicate device name {name}"
            seen.add(name)
    return None


def _counter_sets(slices: Sequence[Slice]) -> tuple[Counters, str | None]:
    sets: Counters = {}
    for slice_ in slices:
        for counter_set in slice_.counter_sets:
            name = str(counter_set.get("name", ""))
            if name in sets:
                return {}, f"duplicate counter set name {name}"
            sets[name] = {
                str(counter): counter_amount(value)
                for counter, value in (counter_set.get("counters") or {}).items()
            }
    return sets, None


def counter_amount(counter: Any) -> Decimal:
    """The value of one ``Counter`` (``{"value": "8Gi"}``)."""
    value = counter.get("value") if isinstance(counter, Mapping) else counter
    return parse_quantity(value if isinstance(value, str | int) else str(value))


def _unknown_counters(sets: Counters, slices: Sequence[Slice]) -> str | None:
    for slice_ in slices:
        for device in slice_.devices:
            for consumption in device.get("consumesCounters") or ():
                name = str(consumption.get("counterSet", ""))
                if name not in sets:
                    return f"counter set {name} not found"
                for counter in consumption.get("counters") or {}:
                    if counter not in sets[name]:
                        return f"counter {counter} not found in counter set {name}"
    return None


def gather_node_pools(
    slices: Iterable[Mapping[str, Any]], node: Node, taint_rules: Iterable[Mapping[str, Any]] = ()
) -> NodeDevices:
    """One node's pools from a list of slice objects (indexes them first; see :class:`SliceIndex`)."""
    return gather_pools(SliceIndex(slices, taint_rules), node)
