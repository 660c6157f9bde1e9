"""Allocate ResourceClaims on one node the way kube-scheduler's DRA plugin does (structured parameters).

Pure and deterministic: claims, ResourceSlices, DeviceClasses, the node and the devices other claims hold
go in; ``status.allocation`` objects (exactly as the scheduler writes them) or a failure that says per
request why no device fit come out.

The search is the scheduler's: claims in order, their requests in order, and for each request the devices
in a fixed order (pools by driver/name, slices by name, devices in slice order), backtracking when a later
choice is impossible and stopping at the first full solution. ``firstAvailable`` alternatives are tried in
order; ``All`` takes every matching device and fails if one of them is unavailable. Devices of one request
are picked in ascending order, which finds the same first solution as trying every permutation.

Like the scheduler, a CEL evaluation error on a device the search reaches aborts the allocation (the
selector is broken for that device, so no result can be trusted), and so does a missing DeviceClass.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from driver.allocation.checks import CEL_ERROR, Checker, ClassNotFoundError, InvalidSelectorError, Reason
from driver.allocation.model import JSON, ClaimSpec, Constraint, Node, RequestSpec, parse_claim
from driver.allocation.pools import Candidate, DeviceKey, InUse, NodeDevices, gather_pools

MAX_RESULTS_PER_CLAIM = 32  # resourceapi.AllocationResultsMaxSize
DEFAULT_STEP_LIMIT = 200_000

# AllocationFailure.cause values.
NO_FIT = "no-fit"
ERROR = "error"
INVALID_SELECTOR = "invalid-selector"


@dataclass(frozen=True)
class Pick:
    spec: RequestSpec
    device: Candidate


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
    cause: str  # NO_FIT | ERROR | INVALID_SELECTOR
    diagnoses: list[RequestDiagnosis] = field(default_factory=list)

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


class _AbortError(Exception):
    """Allocation cannot continue (the scheduler returns an error rather than "does not fit")."""


class _InvalidClaimSelectorError(_AbortError):
    """A selector does not compile (the API server would normally have rejected it)."""


def allocate(
    claims: Sequence[Mapping[str, Any] | ClaimSpec],
    slices: Iterable[Mapping[str, Any]],
    classes: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
    node: Node | str,
    in_use: InUse | AbstractSet[DeviceKey] = frozenset(),
    *,
    step_limit: int = DEFAULT_STEP_LIMIT,
) -> AllocationResult:
    """Allocate all ``claims`` together on ``node``; :class:`~driver.allocation.model.InputError` for
    malformed claims. ``in_use`` lists devices held by other claims (a set, or a map to the holder)."""
    target = node if isinstance(node, Node) else Node(node)
    specs = [c if isinstance(c, ClaimSpec) else parse_claim(c) for c in claims]
    devices = gather_pools(slices, target)
    checker = Checker(classes_by_name(classes), in_use_map(in_use))
    search = _Search(specs, devices, checker, step_limit)
    try:
        search.validate()
        found = search.run()
    except _InvalidClaimSelectorError as exc:
        return _failed(target, devices, specs, AllocationFailure(str(exc), INVALID_SELECTOR))
    except _AbortError as exc:
        return _failed(target, devices, specs, AllocationFailure(f"{exc}", ERROR))
    if not found:
        return _failed(target, devices, specs, diagnose(specs, devices, checker))
    allocations = [
        ClaimAllocation(claim, picks, chosen, build_allocation(claim, picks, chosen, checker))
        for claim, picks, chosen in zip(specs, search.picks, search.chosen_specs(), strict=True)
    ]
    return AllocationResult(target.name, devices, specs, allocations, None)


def _failed(
    node: Node, devices: NodeDevices, specs: list[ClaimSpec], failure: AllocationFailure
) -> AllocationResult:
    return AllocationResult(node.name, devices, specs, [], failure)


def classes_by_name(classes: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    if isinstance(classes, Mapping):
        return dict(classes)
    return {str((c.get("metadata") or {}).get("name")): c for c in classes}


def in_use_map(in_use: InUse | AbstractSet[DeviceKey]) -> InUse:
    """Accept devices in use as a set of keys or as a map to the claims holding them."""
    if isinstance(in_use, Mapping):
        return in_use
    return dict.fromkeys(in_use)


def lookup_attribute(device: Candidate, name: str) -> tuple[str, Any] | None:
    """A fully qualified attribute of a device as (type, value); the driver's own domain may be unqualified."""
    attributes = device.spec.get("attributes") or {}
    raw = attributes.get(name)
    domain, _, ident = name.partition("/")
    if raw is None and domain == device.driver:
        raw = attributes.get(ident)
    if isinstance(raw, Mapping):
        for kind in ("string", "int", "bool", "version"):
            if kind in raw:
                return kind, raw[kind]
    return None


def constraint_conflict(constraint: Constraint, device: Candidate, chosen: Iterable[Pick]) -> str | None:
    """Why adding ``device`` would break ``constraint`` given the devices ``chosen`` so far, or None."""
    value = lookup_attribute(device, constraint.attribute)
    if value is None:
        return f"{constraint.kind} {constraint.attribute}: the device does not have this attribute"
    others = [
        (p, lookup_attribute(p.device, constraint.attribute)) for p in chosen if constraint.applies(p.spec)
    ]
    for pick, other in others:
        same = other == value
        if constraint.kind == "matchAttribute" and not same:
            return (
                f"matchAttribute {constraint.attribute}: value {value[1]} differs from {other[1] if other else '<unset>'}"
                f" of {pick.device.name} chosen for request {pick.spec.full_name}"
            )
        if constraint.kind == "distinctAttribute" and same:
            return (
                f"distinctAttribute {constraint.attribute}: value {value[1]} is already taken by {pick.device.name}"
                f" chosen for request {pick.spec.full_name}"
            )
    return None


class _Search:
    def __init__(
        self, claims: list[ClaimSpec], devices: NodeDevices, checker: Checker, step_limit: int
    ) -> None:
        self.claims = claims
        self.node_devices = devices
        self.devices = devices.usable()
        self.checker = checker
        self.step_limit = step_limit
        self.steps = 0
        self.allocating: dict[DeviceKey, set[int]] = {}
        self.picks: list[list[Pick]] = [[] for _ in claims]
        self.selected: dict[tuple[int, int], int] = {}
        self.all_devices: dict[tuple[int, int, int], list[Candidate]] = {}

    def chosen_specs(self) -> list[list[RequestSpec]]:
        return [
            [request.alternatives[self.selected[(ci, ri)]] for ri, request in enumerate(claim.requests)]
            for ci, claim in enumerate(self.claims)
        ]

    # -- before searching: what the scheduler checks up front ------------------------------------------

    def validate(self) -> None:
        for ci, claim in enumerate(self.claims):
            minimum = 0
            for ri, request in enumerate(claim.requests):
                counts = []
                for ai, spec in enumerate(request.alternatives):
                    try:
                        self.checker.compile_all(spec)
                    except InvalidSelectorError as exc:
                        raise _InvalidClaimSelectorError(f"claim {claim.ref}: {exc}") from None
                    except ClassNotFoundError as exc:
                        raise _AbortError(f"claim {claim.ref}, {exc}") from None
                    if spec.mode == "All":
                        self.all_devices[(ci, ri, ai)] = self._all_matching(claim, spec)
                        counts.append(len(self.all_devices[(ci, ri, ai)]))
                    else:
                        counts.append(spec.count)
                minimum += min(counts)
            if minimum > MAX_RESULTS_PER_CLAIM:
                raise _AbortError(
                    f"claim {claim.ref}: {minimum} requested devices exceed the limit of {MAX_RESULTS_PER_CLAIM}"
                )

    def _all_matching(self, claim: ClaimSpec, spec: RequestSpec) -> list[Candidate]:
        for pool in self.node_devices.pools:
            problem = pool.problem()
            if problem:
                raise _AbortError(
                    f"claim {claim.ref}, request {spec.full_name}: asks for all devices, but {problem}"
                )
        return [d for d in self.devices if not d.unsupported and self._selectable(claim, spec, d)]

    # -- the backtracking search ---------------------------------------------------------------------------

    def run(self) -> bool:
        return self._claim(0)

    def _claim(self, ci: int) -> bool:
        return ci == len(self.claims) or self._request(ci, 0)

    def _request(self, ci: int, ri: int) -> bool:
        claim = self.claims[ci]
        if ri == len(claim.requests):
            return self._claim(ci + 1)
        for ai, spec in enumerate(claim.requests[ri].alternatives):
            self.selected[(ci, ri)] = ai
            done = (
                self._all(ci, ri, ai, spec)
                if spec.mode == "All"
                else self._exact(ci, ri, spec, spec.count, 0)
            )
            if done:
                return True
        return False

    def _exact(self, ci: int, ri: int, spec: RequestSpec, remaining: int, start: int) -> bool:
        self._step()
        if remaining == 0:
            return self._request(ci, ri + 1)
        if len(self.picks[ci]) + remaining > MAX_RESULTS_PER_CLAIM:
            return False
        claim = self.claims[ci]
        for position in range(start, len(self.devices)):
            device = self.devices[position]
            if not self._usable(ci, spec, device) or not self._selectable(claim, spec, device):
                continue
            if self.checker.taint_reason(spec, device) or not self._constraints_allow(ci, spec, device):
                continue
            self._add(ci, spec, device)
            if self._exact(ci, ri, spec, remaining - 1, position + 1):
                return True
            self._remove_last(ci)
        return False

    def _all(self, ci: int, ri: int, ai: int, spec: RequestSpec) -> bool:
        devices = self.all_devices[(ci, ri, ai)]
        added = 0
        usable = bool(devices)
        for device in devices:
            if not self._usable(ci, spec, device) or self.checker.taint_reason(spec, device):
                usable = False
                break
            if not self._constraints_allow(ci, spec, device):
                raise _AbortError(
                    f"claim {self.claims[ci].ref}, request {spec.full_name}: cannot add device {device.id} "
                    "because a claim constraint would not be satisfied"
                )
            self._add(ci, spec, device)
            added += 1
        if usable and self._request(ci, ri + 1):
            return True
        for _ in range(added):
            self._remove_last(ci)
        return False

    def _step(self) -> None:
        self.steps += 1
        if self.steps > self.step_limit:
            raise _AbortError(f"gave up after {self.step_limit} search steps")

    def _usable(self, ci: int, spec: RequestSpec, device: Candidate) -> bool:
        if device.unsupported:
            return False
        if device.allow_multiple:
            return True
        holders = self.allocating.get(device.key, set())
        if spec.admin_access:
            return ci not in holders  # admin access may share a device, but not twice within one claim
        return device.key not in self.checker.in_use and not holders

    def _selectable(self, claim: ClaimSpec, spec: RequestSpec, device: Candidate) -> bool:
        reasons = self.checker.selector_reasons(spec, device, first_only=True)
        if reasons and reasons[0].kind == CEL_ERROR:
            raise _AbortError(f"claim {claim.ref}: {reasons[0].message}")
        return not reasons

    def _constraints_allow(self, ci: int, spec: RequestSpec, device: Candidate) -> bool:
        claim = self.claims[ci]
        return all(
            constraint_conflict(c, device, self.picks[ci]) is None
            for c in claim.constraints
            if c.applies(spec)
        )

    def _add(self, ci: int, spec: RequestSpec, device: Candidate) -> None:
        self.allocating.setdefault(device.key, set()).add(ci)
        self.picks[ci].append(Pick(spec, device))

    def _remove_last(self, ci: int) -> None:
        pick = self.picks[ci].pop()
        self.allocating[pick.device.key].discard(ci)


# -- the result, as the scheduler writes it ------------------------------------------------------------------


def build_allocation(
    claim: ClaimSpec, picks: Sequence[Pick], chosen: Sequence[RequestSpec], checker: Checker
) -> JSON:
    """``status.allocation`` for one claim: results, configs (class ones first), node selector."""
    results = [_result_entry(claim, pick) for pick in picks]
    devices: JSON = {"results": results}
    configs = _configs(claim, chosen, checker)
    if configs:
        devices["config"] = configs
    allocation: JSON = {"devices": devices}
    selector = _node_selector(picks)
    if selector:
        allocation["nodeSelector"] = selector
    return allocation


def _result_entry(claim: ClaimSpec, pick: Pick) -> JSON:
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
    if pick.device.allow_multiple:
        # Each allocation of a shareable device needs its own id; derive it so results stay reproducible.
        owner = claim.uid or claim.ref
        entry["shareID"] = str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"{owner}/{pick.spec.full_name}/{pick.device.id}")
        )
    return entry


def _configs(claim: ClaimSpec, chosen: Sequence[RequestSpec], checker: Checker) -> list[JSON]:
    out: list[JSON] = []
    by_class: dict[str, list[JSON]] = {}
    for spec in chosen:
        if spec.class_name in by_class:  # each class's configs appear once, listing every request using it
            for entry in by_class[spec.class_name]:
                entry["requests"].append(spec.full_name)
            continue
        entries = [
            {"source": "FromClass", "requests": [spec.full_name], **config}
            for config in checker.class_configs(spec)
        ]
        by_class[spec.class_name] = entries
        out += entries
    names = {s.base_name for s in chosen} | {s.full_name for s in chosen}
    for config in claim.configs:
        requests = [str(r) for r in config.get("requests") or ()]
        if requests and not any(r in names for r in requests):
            continue  # it names only subrequests that were not chosen
        body = {k: v for k, v in config.items() if k != "requests"}
        out.append({"source": "FromClaim", "requests": requests, **body})
    for entry in out:
        # The scheduler drops the list when it covers every request ("empty means all").
        if not entry["requests"] or len(entry["requests"]) == len(claim.requests):
            del entry["requests"]
    return out


def _node_selector(picks: Sequence[Pick]) -> JSON | None:
    expressions: list[JSON] = []
    fields: list[JSON] = []
    for pick in picks:
        if pick.device.node_name:
            requirement = {"key": "metadata.name", "operator": "In", "values": [pick.device.node_name]}
            return {"nodeSelectorTerms": [{"matchFields": [requirement]}]}
        terms: list[Mapping[str, Any]] = list(
            (pick.device.node_selector or {}).get("nodeSelectorTerms") or ()
        )
        if len(terms) == 1:
            for target, kind in ((expressions, "matchExpressions"), (fields, "matchFields")):
                target += [dict(r) for r in terms[0].get(kind) or () if dict(r) not in target]
    term = {k: v for k, v in (("matchExpressions", expressions), ("matchFields", fields)) if v}
    return {"nodeSelectorTerms": [term]} if term else None


# -- why it failed ----------------------------------------------------------------------------------------------


def _short(reason: Reason) -> str:
    if reason.kind == CEL_ERROR:
        return "hit a CEL error"
    if reason.kind in ("class-selector", "request-selector"):
        detail = reason.detail
        return f"fail {detail.get('owner')} selector #{detail.get('selector')} `{detail.get('expression')}`"
    if reason.kind == "in-use":
        return "are in use"
    if reason.kind == "taint":
        return "have untolerated taints"
    if reason.kind == "unsupported":
        return "use features this allocator does not support"
    return reason.kind


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
            reasons = checker.static_reasons(spec, device, first_only=True)
            if not checker.selector_reasons(spec, device, first_only=True):
                matching += 1
            lacking = next(
                (
                    c
                    for c in claim.constraints
                    if c.applies(spec) and lookup_attribute(device, c.attribute) is None
                ),
                None,
            )
            if reasons:
                rejected.setdefault(_short(reasons[0]), []).append(device.id)
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
    for claim in claims:
        for request in claim.requests:
            found = [diagnose_spec(claim, spec, devices, checker) for spec in request.alternatives]
            diagnoses += found
            if not any(d.satisfiable for d in found):
                problems.append(f"claim {claim.ref}: " + " / ".join(d.summary() for d in found))
    if not problems:
        constrained = [
            f"claim {c.ref}: " + ", ".join(x.describe() for x in c.constraints)
            for c in claims
            if c.constraints
        ]
        if constrained:
            problems.append(
                "every request has enough fitting devices on its own, but no combination satisfies the "
                "constraints: " + "; ".join(constrained)
            )
        else:
            problems.append(
                "every request has enough fitting devices on its own, but together they need more"
            )
    message = f"cannot allocate on node {devices.node.name}: " + "; ".join(problems)
    return AllocationFailure(message, NO_FIT, diagnoses)
