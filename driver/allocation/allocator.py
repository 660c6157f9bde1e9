"""Allocate ResourceClaims on one node the way kube-scheduler 1.37's DRA plugin does (structured parameters,
the default features: prioritized lists, admin access, partitionable devices, consumable capacity, device
taints and DeviceTaintRules, binding conditions).

Pure and deterministic apart from share ids: claims, ResourceSlices, DeviceClasses, DeviceTaintRules, the
node and what other claims hold go in; ``status.allocation`` objects (as the scheduler writes them) or a
failure that says per request why no device fit come out.

The search is upstream's (k8s.io/dynamic-resource-allocation/structured, the "incubating" allocator):

- Before searching, every request is checked: its DeviceClass must exist, a request for ``All`` devices
  lists its devices now (and fails on an incomplete or invalid pool), and the smallest number of devices a
  claim can get must stay within 32. Constraints must be of a known kind.
- Claims in order, their requests in order, ``firstAvailable`` subrequests in order, and for each device
  the devices of usable pools in order (pools by driver/name with binding-condition pools last, slices by
  name, devices in slice order); devices of one request are taken in ascending order, so combinations, not
  permutations, are tried. The first full solution wins.
- A device is checked as upstream: in use, selectors (compiled on first use: a subrequest never reached
  never fails the claim), per-device node selection, capacity, shared counters, taints, constraints.
- A CEL error on a device the search reaches, a capacity that cannot be computed, or a request for ``All``
  devices that a constraint breaks stops the allocation with an error; so does the filter timeout (10 s by
  default, kube-scheduler's ``filterTimeout``) instead of a step limit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from driver.allocation.allocated import AllocatedState
from driver.allocation.capacity import CapacityError, Quantity, add, subtract
from driver.allocation.checks import (
    CEL_ERROR,
    AllocationError,
    Checker,
    ClassNotFoundError,
    InvalidSelectorError,
    Reason,
    consumption,
)
from driver.allocation.model import (
    JSON,
    ClaimSpec,
    Constraint,
    Node,
    NodeSelectorError,
    Request,
    RequestSpec,
    parse_claim,
)
from driver.allocation.pools import Candidate, Counters, DeviceKey, NodeDevices, SliceIndex

MAX_RESULTS_PER_CLAIM = 32  # resourceapi.AllocationResultsMaxSize
FILTER_TIMEOUT = 10.0  # kube-scheduler's DynamicResources filterTimeout default (seconds)

# AllocationFailure.cause values.
NO_FIT = "no-fit"
ERROR = "error"
INVALID_SELECTOR = "invalid-selector"
TIMEOUT = "timeout"

Clock = Callable[[], float]


@dataclass(frozen=True)
class Pick:
    spec: RequestSpec
    device: Candidate
    share_id: str | None = None
    consumed: Mapping[str, Quantity] = field(default_factory=dict)


@dataclass
class ClaimAllocation:
    claim: ClaimSpec
    picks: list[Pick]
    chosen: list[RequestSpec]  # the alternative used for each request, in request order
    allocation: JSON  # status.allocation


@dataclass
class RequestDiagnosis:
    """How one request (or subrequest) fared on its own: which devices fit and why the others did not."""

    claim: str
    request: str
    needed: int | None  # None: "all matching devices"
    fitting: list[str]
    rejected: dict[str, list[str]]  # short reason -> device ids
    matching: int = 0  # devices the selectors accept (whether or not they are free)

    @property
    def satisfiable(self) -> bool:
        if self.needed is None:
            return bool(self.fitting) and len(self.fitting) == self.matching
        return len(self.fitting) >= self.needed

    def summary(self) -> str:
        total = len(self.fitting) + sum(len(ids) for ids in self.rejected.values())
        wanted = (
            f"all {self.matching} matching device(s)" if self.needed is None else f"{self.needed} device(s)"
        )
        text = f"request {self.request} needs {wanted}; {len(self.fitting)} of {total} device(s) fit"
        if self.rejected:
            text += " (" + ", ".join(f"{len(ids)} {why}" for why, ids in self.rejected.items()) + ")"
        return text

    def top_reason(self) -> str:
        """The most common reason devices were turned down, without counts (for cluster summaries)."""
        if not self.rejected:
            return f"request {self.request}: no device on the node"
        why = max(self.rejected.items(), key=lambda item: len(item[1]))[0]
        return f"request {self.request}: devices {why}"

    def to_json(self) -> JSON:
        return {
            "claim": self.claim,
            "request": self.request,
            "needed": self.needed if self.needed is not None else "All",
            "matching": self.matching,
            "fitting": self.fitting,
            "rejected": self.rejected,
            "summary": self.summary(),
        }


@dataclass
class AllocationFailure:
    message: str
    cause: str  # NO_FIT | ERROR | INVALID_SELECTOR | TIMEOUT
    diagnoses: list[RequestDiagnosis] = field(default_factory=list)
    headline: str = ""  # the main reason without node-specific numbers (for cluster summaries)

    def to_json(self) -> JSON:
        return {
            "message": self.message,
            "cause": self.cause,
            "requests": [d.to_json() for d in self.diagnoses],
        }


@dataclass
class AllocationResult:
    node: str
    devices: NodeDevices
    claims: list[ClaimSpec]
    allocations: list[ClaimAllocation]
    failure: AllocationFailure | None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def allocation_for(self, ref: str) -> JSON | None:
        return next((a.allocation for a in self.allocations if a.claim.ref == ref), None)


class AllocationTimeoutError(AllocationError):
    """The filter timeout ran out."""


class _MaxSizeExceededError(Exception):
    """Every way forward needs more than 32 results for a claim (upstream's errAllocationResultMaxSizeExceeded)."""


def classes_by_name(classes: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    if isinstance(classes, Mapping):
        return dict(classes)
    return {str((c.get("metadata") or {}).get("name")): c for c in classes}


class Allocator:
    """Allocates claims node by node against one cluster state, reusing what does not depend on the node
    (the slice index, compiled selectors and their results, the allocated state)."""

    def __init__(
        self,
        slices: SliceIndex | Iterable[Mapping[str, Any]],
        classes: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
        allocated: AllocatedState | Mapping[DeviceKey, str | None] | AbstractSet[DeviceKey] = frozenset(),
        *,
        taint_rules: Iterable[Mapping[str, Any]] = (),
        timeout: float | None = FILTER_TIMEOUT,
        clock: Clock = time.monotonic,
        list_type_attributes: bool = False,
    ) -> None:
        self.index = slices if isinstance(slices, SliceIndex) else SliceIndex(slices, taint_rules)
        self.allocated = AllocatedState.coerce(allocated)
        self.checker = Checker(classes_by_name(classes), self.allocated)
        #: The DRAListTypeAttributes feature (alpha, off by default): constraints compare value sets.
        self.checker.list_type_attributes = list_type_attributes
        self.timeout = timeout
        self.clock = clock

    def allocate(self, claims: Sequence[Mapping[str, Any] | ClaimSpec], node: Node | str) -> AllocationResult:
        """Allocate all ``claims`` together on ``node``; :class:`~driver.allocation.model.InputError` for
        malformed claims and node selectors."""
        target = node if isinstance(node, Node) else Node(node)
        specs = [c if isinstance(c, ClaimSpec) else parse_claim(c) for c in claims]
        try:
            devices = self.index.for_node(target)
        except NodeSelectorError as exc:  # upstream: gathering pools fails, so does scheduling the pod
            failure = AllocationFailure(f"gather pool information: {exc}", ERROR, headline=str(exc))
            return _failed(target, NodeDevices(target, [], []), specs, failure)
        deadline = None if self.timeout is None else self.clock() + self.timeout
        search = _Search(specs, devices, self.checker, self.clock, deadline)
        try:
            search.validate()
            found = search.run()
            if found:
                allocations = [
                    ClaimAllocation(
                        claim, picks, chosen, build_allocation(claim, picks, chosen, self.checker, target)
                    )
                    for claim, picks, chosen in zip(specs, search.results, search.chosen_specs(), strict=True)
                ]
                return AllocationResult(target.name, devices, specs, allocations, None)
        except AllocationTimeoutError as exc:
            return _failed(target, devices, specs, AllocationFailure(str(exc), TIMEOUT, headline=str(exc)))
        except InvalidSelectorError as exc:
            return _failed(
                target, devices, specs, AllocationFailure(str(exc), INVALID_SELECTOR, headline=str(exc))
            )
        except AllocationError as exc:
            return _failed(target, devices, specs, AllocationFailure(str(exc), ERROR, headline=str(exc)))
        return _failed(target, devices, specs, diagnose(specs, devices, self.checker))


def allocate(
    claims: Sequence[Mapping[str, Any] | ClaimSpec],
    slices: Iterable[Mapping[str, Any]],
    classes: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
    node: Node | str,
    allocated: AllocatedState | Mapping[DeviceKey, str | None] | AbstractSet[DeviceKey] = frozenset(),
    *,
    taint_rules: Iterable[Mapping[str, Any]] = (),
    timeout: float | None = FILTER_TIMEOUT,
    clock: Clock = time.monotonic,
    list_type_attributes: bool = False,
) -> AllocationResult:
    """Allocate all ``claims`` together on ``node``. ``allocated`` is what other claims hold (an
    :class:`AllocatedState`, or a set / map of dedicated devices); ``taint_rules`` are DeviceTaintRules;
    ``list_type_attributes`` is the ``DRAListTypeAttributes`` feature gate."""
    allocator = Allocator(
        slices,
        classes,
        allocated,
        taint_rules=taint_rules,
        timeout=timeout,
        clock=clock,
        list_type_attributes=list_type_attributes,
    )
    return allocator.allocate(claims, node)


def _failed(
    node: Node, devices: NodeDevices, specs: list[ClaimSpec], failure: AllocationFailure
) -> AllocationResult:
    return AllocationResult(node.name, devices, specs, [], failure)


# -- constraints -------------------------------------------------------------------------------------------------


def lookup_attribute(device: Candidate, name: str) -> Mapping[str, Any] | None:
    """A fully qualified attribute of a device (the driver's own domain may be unqualified), as published."""
    attributes = device.spec.get("attributes") or {}
    raw = attributes.get(name)
    if raw is None:
        domain, sep, ident = name.partition("/")
        if sep and domain == device.driver:
            raw = attributes.get(ident)
    return raw if isinstance(raw, Mapping) else None


_SCALARS = ("string", "int", "bool", "version")


def scalar(attribute: Mapping[str, Any]) -> tuple[str, Any] | None:
    """(type, value) of a single-valued attribute; None for list-type or empty ones."""
    for kind in _SCALARS:
        if attribute.get(kind) is not None:
            return kind, attribute[kind]
    return None


def value_set(attribute: Mapping[str, Any]) -> frozenset[tuple[str, Any]] | None:
    """The values of an attribute as a set of (type, value): a scalar is a one-item set, a list-type value
    (``ints``...) its items; None when it has no value."""
    single = scalar(attribute)
    if single is not None:
        return frozenset((single,))
    for kind in _SCALARS:
        values = attribute.get(f"{kind}s")
        if isinstance(values, list) and values:
            return frozenset((kind, v) for v in values)
    return None


def shown_attribute(attribute: Mapping[str, Any] | None) -> str:
    if attribute is None:
        return "<unset>"
    value = scalar(attribute)
    if value is not None:
        return str(value[1])
    values = value_set(attribute)
    return str(sorted(v for _, v in values)) if values else str(dict(attribute))


class _ConstraintState:
    """One claim constraint during the search: the devices added so far (upstream's add/remove)."""

    def __init__(self, constraint: Constraint, list_type_attributes: bool = False) -> None:
        self.constraint = constraint
        self.list_type_attributes = list_type_attributes
        self.values: list[Mapping[str, Any] | None] = []  # None: a device the constraint does not cover

    def add(self, spec: RequestSpec, device: Candidate) -> bool:
        if not self.constraint.applies(spec):
            self.values.append(None)
            return True
        attribute = lookup_attribute(device, self.constraint.attribute)
        if attribute is None or not self._fits(attribute):
            return False
        self.values.append(attribute)
        return True

    def _fits(self, attribute: Mapping[str, Any]) -> bool:
        """By default (the scheduler's, ``DRAListTypeAttributes`` off) single values compare and a list-type
        value never fits. With list-type attributes on, values are sets (a scalar a one-item set): match =
        the values of all devices share an item, distinct = no two devices share one."""
        chosen = [v for v in self.values if v is not None]
        if not self.list_type_attributes:
            single = scalar(attribute)
            if self.constraint.kind == "matchAttribute":
                return not chosen or (single is not None and scalar(chosen[0]) == single)
            return all(single is not None and scalar(other) != single for other in chosen)
        new = value_set(attribute)
        if new is None:
            return False
        if self.constraint.kind == "matchAttribute":
            common = new
            for other in chosen:
                common = common & (value_set(other) or frozenset())
            return bool(common)
        return all(not (new & (value_set(other) or frozenset())) for other in chosen)

    def remove(self) -> None:
        self.values.pop()


def constraint_conflict(
    constraint: Constraint, device: Candidate, chosen: Iterable[Pick], list_type_attributes: bool = False
) -> str | None:
    """Why adding ``device`` would break ``constraint`` given the devices ``chosen`` so far, or None."""
    attribute = lookup_attribute(device, constraint.attribute)
    if attribute is None:
        return f"{constraint.kind} {constraint.attribute}: the device does not have this attribute"
    state = _ConstraintState(constraint, list_type_attributes)
    for pick in chosen:
        if constraint.applies(pick.spec):
            other = lookup_attribute(pick.device, constraint.attribute)
            state.values.append(other)
            if not state._fits(attribute):
                verb = "differs from" if constraint.kind == "matchAttribute" else "is already taken by"
                return (
                    f"{constraint.kind} {constraint.attribute}: value {shown_attribute(attribute)} {verb} "
                    f"{shown_attribute(other)} of {pick.device.name} chosen for request {pick.spec.full_name}"
                )
    return None


# -- the search ----------------------------------------------------------------------------------------------------


@dataclass
class _RequestData:
    spec: RequestSpec
    request: Request
    num_devices: int = 0
    all_devices: list[Candidate] = field(default_factory=list)
    selected: int = 0  # on a firstAvailable request's entry 0: the subrequest chosen


Slot = tuple[int, int, int]
"""(claim, request, subrequest) indexes; the subrequest is 0 for an `exactly` request."""


class _Search:
    def __init__(
        self,
        claims: list[ClaimSpec],
        devices: NodeDevices,
        checker: Checker,
        clock: Clock,
        deadline: float | None,
    ) -> None:
        self.claims = claims
        self.node_devices = devices
        self.node = devices.node
        self.devices = devices.usable()
        self.checker = checker
        self.clock = clock
        self.deadline = deadline
        self.data: dict[Slot, _RequestData] = {}
        self.constraints: list[list[_ConstraintState]] = [[] for _ in claims]
        self.results: list[list[Pick]] = [[] for _ in claims]
        self.allocating: dict[DeviceKey, set[int]] = {}  # dedicated devices taken -> claim indexes
        self.allocating_capacity: dict[DeviceKey, dict[str, Decimal]] = {}
        self.consumed_counters: dict[tuple[str, str], Counters] = {}
        self.selectable: dict[tuple[DeviceKey, int, int, int], bool] = {}

    def chosen_specs(self) -> list[list[RequestSpec]]:
        return [
            [
                request.alternatives[self.data[(ci, ri, 0)].selected]
                for ri, request in enumerate(claim.requests)
            ]
            for ci, claim in enumerate(self.claims)
        ]

    # -- before searching -----------------------------------------------------------------------------------

    def validate(self) -> None:
        for ci, claim in enumerate(self.claims):
            minimum = 0
            for ri, request in enumerate(claim.requests):
                counts = []
                for si, spec in enumerate(request.alternatives):
                    data = self._request_data((ci, ri, si), claim, spec, request)
                    self.data[(ci, ri, si)] = data
                    counts.append(data.num_devices)
                least = min(counts)
                if least > MAX_RESULTS_PER_CLAIM - minimum:
                    raise AllocationError(
                        f"claim {claim.ref}, request {request.name}: adding {least} devices exceeds the claim "
                        f"limit of {MAX_RESULTS_PER_CLAIM}, with {minimum} already accounted for"
                    )
                minimum += least
            self.constraints[ci] = [
                _ConstraintState(c, self.checker.list_type_attributes) for c in claim.constraints
            ]

    def _request_data(
        self, slot: Slot, claim: ClaimSpec, spec: RequestSpec, request: Request
    ) -> _RequestData:
        try:
            self.checker.device_class(spec)
        except ClassNotFoundError:
            raise AllocationError(
                f"claim {claim.ref}, request {spec.full_name}: could not retrieve device class {spec.class_name}: "
                f'deviceclasses.resource.k8s.io "{spec.class_name}" not found'
            ) from None
        data = _RequestData(spec, request)
        if spec.mode == "ExactCount":
            data.num_devices = spec.count
            return data
        for pool in self.node_devices.pools:
            if pool.incomplete:
                raise AllocationError(
                    f"claim {claim.ref}, request {spec.full_name}: asks for all devices, but resource pool "
                    f"{pool.id} is currently being updated"
                )
            if pool.invalid:
                raise AllocationError(
                    f"claim {claim.ref}, request {spec.full_name}: asks for all devices, but resource pool "
                    f"{pool.id} is currently invalid"
                )
            for device in pool.devices:
                if not self._is_selectable(slot, spec, device):
                    continue
                if self._capacity(claim, spec, device, static=True) is None:
                    continue
                data.all_devices.append(device)
        data.num_devices = len(data.all_devices)
        return data

    # -- the backtracking search ----------------------------------------------------------------------------

    def run(self) -> bool:
        try:
            return self._one((0, 0, 0), 0)
        except _MaxSizeExceededError:
            return False

    def _one(self, slot: Slot, di: int, *, in_sub: bool = False, start: int = 0) -> bool:
        """Find a device for position ``di`` of the request at ``slot`` and everything after it
        (upstream's ``allocateOne``); ``start``: the first candidate, so a request takes devices in order."""
        ci, ri, _ = slot
        if self.deadline is not None and self.clock() > self.deadline:
            raise AllocationTimeoutError(f"node {self.node.name}: timed out trying to allocate devices")
        if ci >= len(self.claims):
            return True
        claim = self.claims[ci]
        if ri >= len(claim.requests):
            try:
                return self._one((ci + 1, 0, 0), 0)
            except _MaxSizeExceededError:
                return False  # another choice in an earlier claim may let a smaller subrequest fit
        data = self.data[slot]
        if not in_sub and data.request.first_available:
            return self._subrequests(ci, ri, di)
        spec = data.spec
        if spec.mode == "All" and not data.all_devices:
            return False
        if di >= data.num_devices:
            return self._one((ci, ri + 1, 0), 0)
        if data.num_devices - di > MAX_RESULTS_PER_CLAIM - len(self.results[ci]):
            raise _MaxSizeExceededError
        if spec.mode == "All":
            return self._try(slot, di, data.all_devices[di], in_sub=in_sub, start=0, must=True)
        for position in range(start, len(self.devices)):
            device = self.devices[position]
            if spec.admin_access:
                if ci in self.allocating.get(device.key, ()):
                    continue
            elif self._in_use(device.key):
                continue
            if not self._is_selectable(slot, spec, device):
                continue
            if self._capacity(claim, spec, device) is None:
                continue
            if self._try(slot, di, device, in_sub=in_sub, start=position + 1, must=False):
                return True
        return False

    def _subrequests(self, ci: int, ri: int, di: int) -> bool:
        every_one_too_big = True
        for si in range(len(self.claims[ci].requests[ri].alternatives)):
            try:
                found = self._one((ci, ri, si), di, in_sub=True)
            except _MaxSizeExceededError:
                continue
            every_one_too_big = False
            if found:
                self.data[(ci, ri, 0)].selected = si
                return True
        if every_one_too_big:
            raise _MaxSizeExceededError
        return False

    def _try(self, slot: Slot, di: int, device: Candidate, *, in_sub: bool, start: int, must: bool) -> bool:
        undo = self._allocate_device(slot, device, must=must)
        if undo is None:
            return False
        try:
            done = self._one(slot, di + 1, in_sub=in_sub, start=start)
        except BaseException:
            undo()
            raise
        if not done:
            undo()
        return done

    def _in_use(self, key: DeviceKey) -> bool:
        return key in self.checker.allocated.dedicated or bool(self.allocating.get(key))

    def _capacity_in_use(self, key: DeviceKey) -> bool:
        return self.checker.allocated.capacity_in_use(key) or key in self.allocating_capacity

    def _is_selectable(self, slot: Slot, spec: RequestSpec, device: Candidate) -> bool:
        key = (device.key, *slot)
        known = self.selectable.get(key)
        if known is None:
            claim = self.claims[slot[0]].ref
            known = self.checker.selector_failure(claim, spec, device) is None
            if known and device.per_device_node_selection:
                known = self.checker.node_reason(device, self.node) is None
            self.selectable[key] = known
        return known

    def _capacity(
        self, claim: ClaimSpec, spec: RequestSpec, device: Candidate, static: bool = False
    ) -> dict[str, Quantity] | None:
        """What the request would consume of the device, None when it does not fit."""
        try:
            allocating = None if static else self.allocating_capacity.get(device.key)
            verdict = self.checker.capacity_verdict(spec, device, allocating, static=static)
        except CapacityError as exc:
            raise AllocationError(
                f"claim {claim.ref}, request {spec.full_name}: checking capacity for device {device.id}: {exc}"
            ) from None
        return verdict.consumed if verdict.fits else None

    def _allocate_device(self, slot: Slot, device: Candidate, *, must: bool) -> Callable[[], None] | None:
        """Take ``device`` for the request if it is free, its counters and capacity allow, no taint blocks
        it and the claim's constraints hold; returns how to give it back, or None."""
        ci = slot[0]
        claim, spec = self.claims[ci], self.data[slot].spec
        key, shareable = device.key, device.allow_multiple
        if not shareable and spec.admin_access and ci in self.allocating.get(key, ()):
            return None
        if not spec.admin_access and self._in_use(key):
            return None
        undo: list[Callable[[], None]] = []

        def rollback() -> None:
            for step in reversed(undo):
                step()

        if device.consumes_counters and not (shareable and self._capacity_in_use(key)):
            if not self._reserve_counters(device):
                return None
            undo.append(lambda: self._release_counters(device))
        if self.checker.taint_reason(spec, device) is not None:
            rollback()
            return None
        for state in self.constraints[ci]:
            if not state.add(spec, device):
                rollback()
                if must:
                    raise AllocationError(
                        f"claim {claim.ref}, request {spec.name}: cannot add device {device.id} because a "
                        "claim constraint would not be satisfied"
                    )
                return None
            undo.append(state.remove)
        if not shareable:
            self.allocating.setdefault(key, set()).add(ci)
            undo.append(lambda: self.allocating[key].discard(ci))
        consumed = self._capacity(claim, spec, device)
        if consumed is None:
            rollback()
            return None
        share_id = None
        if shareable:
            share_id = str(uuid.uuid4())
            amounts = {name: q.value for name, q in consumed.items()}
            existed = key in self.allocating_capacity
            add(self.allocating_capacity.setdefault(key, {}), amounts)
            undo.append(lambda: self._release_capacity(key, amounts, existed))
        else:
            consumed = {}
        self.results[ci].append(Pick(spec, device, share_id, consumed))
        results = self.results[ci]
        undo.append(lambda: _drop_last(results))
        return rollback

    def _release_capacity(self, key: DeviceKey, amounts: Mapping[str, Decimal], existed: bool) -> None:
        held = self.allocating_capacity.get(key)
        if held is not None:
            subtract(held, amounts)
            if all(v == 0 for v in held.values()):
                del self.allocating_capacity[key]
        if existed and key not in self.allocating_capacity:
            self.allocating_capacity[key] = {}  # an earlier share of this allocation still holds the device

    def _reserve_counters(self, device: Candidate) -> bool:
        pool_key = (device.driver, device.pool)
        available = self.checker.available_counters(self.node_devices, pool_key)
        taken = self.consumed_counters.setdefault(pool_key, {})
        for set_name, counters in consumption(device).items():
            add(taken.setdefault(set_name, {}), counters)
        for set_name, counters in available.items():
            for name, left in counters.items():
                if left < taken.get(set_name, {}).get(name, Decimal(0)):
                    self._release_counters(device)
                    return False
        return True

    def _release_counters(self, device: Candidate) -> None:
        taken = self.consumed_counters[(device.driver, device.pool)]
        for set_name, counters in consumption(device).items():
            subtract(taken.setdefault(set_name, {}), counters)


def _drop_last(picks: list[Pick]) -> None:
    picks.pop()


# -- the result, as the scheduler writes it ------------------------------------------------------------------


def build_allocation(
    claim: ClaimSpec, picks: Sequence[Pick], chosen: Sequence[RequestSpec], checker: Checker, node: Node
) -> JSON:
    """``status.allocation`` for one claim: results, configs (class ones first), node selector."""
    devices: JSON = {"results": [_result_entry(pick) for pick in picks]}
    configs = _configs(claim, chosen, checker)
    if configs:
        devices["config"] = configs
    allocation: JSON = {"devices": devices}
    selector = node_selector_for(picks, node, claim.ref)
    if selector:
        allocation["nodeSelector"] = selector
    return allocation


def _result_entry(pick: Pick) -> JSON:
    entry: JSON = {
        "request": pick.spec.full_name,
        "driver": pick.device.driver,
        "pool": pick.device.pool,
        "device": pick.device.name,
    }
    if pick.spec.admin_access:
        entry["adminAccess"] = True
    if pick.spec.tolerations:
        entry["tolerations"] = [dict(t) for t in pick.spec.tolerations]
    if pick.device.binding_conditions:
        entry["bindingConditions"] = pick.device.binding_conditions
    if pick.device.binding_failure_conditions:
        entry["bindingFailureConditions"] = pick.device.binding_failure_conditions
    if pick.share_id is not None:
        entry["shareID"] = pick.share_id
    if pick.consumed:
        entry["consumedCapacity"] = {name: q.text for name, q in pick.consumed.items()}
    return entry


def _configs(claim: ClaimSpec, chosen: Sequence[RequestSpec], checker: Checker) -> list[JSON]:
    """Class configs (once per class, listing every request using it), then the claim's configs that name
    no request or a chosen one; a list covering every request is dropped ("empty means all", 1.37)."""
    out: list[JSON] = []
    by_class: dict[str, list[JSON]] = {}
    for spec in chosen:
        if spec.class_name in by_class:
            for entry in by_class[spec.class_name]:
                entry["requests"].append(spec.full_name)
            continue
        entries = [
            {"source": "FromClass", "requests": [spec.full_name], **_config_body(config)}
            for config in checker.class_configs(spec)
        ]
        by_class[spec.class_name] = entries
        out += entries
    names = {s.base_name for s in chosen} | {s.full_name for s in chosen}
    for config in claim.configs:
        requests = [str(r) for r in config.get("requests") or ()]
        if requests and not any(r in names for r in requests):
            continue  # it names only subrequests that were not chosen
        out.append({"source": "FromClaim", "requests": requests, **_config_body(config)})
    for entry in out:
        requests = entry["requests"]
        if not requests or all(s.base_name in requests or s.full_name in requests for s in chosen):
            del entry["requests"]
    return out


def _config_body(config: Mapping[str, Any]) -> JSON:
    return {k: v for k, v in config.items() if k not in ("requests", "source")}


def node_selector_for(picks: Sequence[Pick], node: Node, claim: str = "") -> JSON | None:
    """The allocation's node selector: the node itself when a device is local to it (or binds to it),
    else the requirements of every device's node selector merged into one term (equal requirements,
    values compared as sets, once); None when the devices are usable everywhere."""
    expressions: list[JSON] = []
    fields: list[JSON] = []
    for pick in picks:
        node_name, _, selector = pick.device.node_restriction()
        if node_name or pick.device.spec.get("bindsToNode") is True:
            requirement = {"key": "metadata.name", "operator": "In", "values": [node.name]}
            return {"nodeSelectorTerms": [{"matchFields": [requirement]}]}
        terms = [t for t in (selector or {}).get("nodeSelectorTerms") or ()]
        if len(terms) > 1:
            raise AllocationError(
                f"create NodeSelector for claim {claim}: unsupported ResourceSlice.NodeSelector with "
                f"{len(terms)} terms"
            )
        if terms:
            for target, kind in ((fields, "matchFields"), (expressions, "matchExpressions")):
                for requirement in terms[0].get(kind) or ():
                    if not any(_same_requirement(requirement, known) for known in target):
                        target.append(dict(requirement))
    term = {k: v for k, v in (("matchExpressions", expressions), ("matchFields", fields)) if v}
    return {"nodeSelectorTerms": [term]} if term else None


def _same_requirement(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return (
        a.get("key") == b.get("key")
        and a.get("operator") == b.get("operator")
        and set(a.get("values") or ()) == set(b.get("values") or ())
    )


# -- why it failed ----------------------------------------------------------------------------------------------


def short_reason(reason: Reason) -> str:
    if reason.kind == CEL_ERROR:
        return "hit a CEL error"
    if reason.kind in ("class-selector", "request-selector"):
        detail = reason.detail
        return f"fail {detail.get('owner')} selector #{detail.get('selector')} `{detail.get('expression')}`"
    return {
        "in-use": "are in use",
        "taint": "have untolerated taints",
        "node": "are not available on this node",
        "capacity": "lack the capacity asked for",
        "counters": "lack shared counters",
    }.get(reason.kind, reason.kind)


def static_reasons(
    checker: Checker,
    devices: NodeDevices,
    claim: ClaimSpec,
    spec: RequestSpec,
    device: Candidate,
    *,
    first_only: bool,
    selectors: list[Reason] | None = None,
) -> list[Reason]:
    """Everything that keeps ``device`` from ``spec`` whatever else is chosen, in the scheduler's order
    (``selectors``: the failing selectors, when already known)."""
    reasons: list[Reason] = []
    checks: list[Callable[[], list[Reason]]] = [
        lambda: [r] if (r := checker.in_use_reason(spec, device)) else [],
        lambda: selectors if selectors is not None else checker.selector_reasons(claim.ref, spec, device),
        lambda: [r] if (r := checker.node_reason(device, devices.node)) else [],
        lambda: [r] if (r := checker.capacity_reason(spec, device)) else [],
        lambda: [r] if (r := checker.counter_reason(devices, device)) else [],
        lambda: [r] if (r := checker.taint_reason(spec, device)) else [],
    ]
    for check in checks:
        found = check()
        if found and first_only:
            return found[:1]
        reasons += found
    return reasons


def diagnose_spec(
    claim: ClaimSpec, spec: RequestSpec, devices: NodeDevices, checker: Checker
) -> RequestDiagnosis:
    """The devices that fit ``spec`` on their own (ignoring other requests and constraints)."""
    fitting: list[str] = []
    rejected: dict[str, list[str]] = {}
    matching = 0
    for pool in devices.pools:
        problem = pool.problem()
        if problem:
            rejected.setdefault(f"are in pool {pool.id}, which is not usable", []).extend(
                d.id for d in pool.devices
            )
            continue
        for device in pool.devices:
            selectors = checker.selector_reasons(claim.ref, spec, device)
            matching += not selectors
            reasons = static_reasons(
                checker, devices, claim, spec, device, first_only=True, selectors=selectors
            )
            lacking = next(
                (
                    c
                    for c in claim.constraints
                    if c.applies(spec) and lookup_attribute(device, c.attribute) is None
                ),
                None,
            )
            if reasons:
                rejected.setdefault(short_reason(reasons[0]), []).append(device.id)
            elif lacking is not None:
                rejected.setdefault(f"lack {lacking.attribute} ({lacking.kind})", []).append(device.id)
            else:
                fitting.append(device.id)
    needed = None if spec.mode == "All" else spec.count
    return RequestDiagnosis(claim.ref, spec.full_name, needed, fitting, rejected, matching)


def diagnose(claims: Sequence[ClaimSpec], devices: NodeDevices, checker: Checker) -> AllocationFailure:
    """Explain a search that found no solution: first requests that cannot be met even alone, then
    constraints, then competition between requests for the same devices."""
    diagnoses: list[RequestDiagnosis] = []
    problems: list[str] = []
    headline = ""
    for claim in claims:
        for request in claim.requests:
            found = [diagnose_spec(claim, spec, devices, checker) for spec in request.alternatives]
            diagnoses += found
            if not any(d.satisfiable for d in found):
                problems.append(f"claim {claim.ref}: " + " / ".join(d.summary() for d in found))
                headline = headline or f"claim {claim.ref}, {found[-1].top_reason()}"
    if not problems:
        constrained = [
            f"claim {c.ref}: " + ", ".join(x.describe() for x in c.constraints)
            for c in claims
            if c.constraints
        ]
        if constrained:
            headline = "no combination of fitting devices satisfies the constraints"
            problems.append(
                "every request has enough fitting devices on its own, but no combination satisfies the "
                "constraints: " + "; ".join(constrained)
            )
        else:
            headline = "every request has enough fitting devices on its own, but together they need more"
            problems.append(headline)
    invalid = [p.problem() for p in devices.pools if p.invalid]
    if invalid:
        problems.append("invalid resource pools were encountered: " + "; ".join(str(p) for p in invalid))
    message = f"cannot allocate on node {devices.node.name}: " + "; ".join(problems)
    return AllocationFailure(message, NO_FIT, diagnoses, headline)
