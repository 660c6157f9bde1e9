"""``accel-dra explain``: why a claim can (or cannot) be allocated on a node, device by device, and across a
cluster.

For every request and subrequest, every device of the node's pools is listed with a verdict:

- ``selected``: the allocator chose it;
- ``fits``: it passes every check on its own (and why it was not chosen: not needed, or a constraint
  conflicts with the devices chosen for the claim);
- ``no``: the reasons: in use by another claim, a DeviceClass or request selector that was false (with the
  values the selector read), a CEL error, per-device node selection, capacity, shared counters, an
  untolerated taint (of the device or a DeviceTaintRule), an incomplete/invalid pool, a slice of an outdated
  generation or for other nodes.

The verdict comes from the real allocator (:mod:`driver.allocation.allocator`), so an explanation never
disagrees with what allocation does. Across many nodes, :func:`render_summary` tells which nodes can take
the claims and, for the others, the most common reasons with how many nodes each stops.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from driver.allocation.allocated import AllocatedState
from driver.allocation.allocator import (
    AllocationFailure,
    AllocationResult,
    Allocator,
    Pick,
    constraint_conflict,
    lookup_attribute,
    shown_attribute,
    static_reasons,
)
from driver.allocation.capacity import add
from driver.allocation.checks import (
    CAPACITY,
    CONSTRAINT,
    IN_USE,
    NOT_CHOSEN,
    POOL,
    ClassNotFoundError,
    Reason,
    consumption,
)
from driver.allocation.model import JSON, ClaimSpec, Node, RequestSpec, parse_claim
from driver.allocation.pools import Candidate, Counters, DeviceKey, IgnoredSlice, Pool

SELECTED, FITS, NO = "selected", "fits", "no"


@dataclass
class DeviceVerdict:
    id: str
    name: str
    status: str  # selected | fits | no
    reasons: list[Reason] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> JSON:
        out: JSON = {"device": self.id, "status": self.status, "match": self.status != NO}
        if self.note:
            out["note"] = self.note
        out["reasons"] = [r.to_json() for r in self.reasons]
        return out


@dataclass
class SpecReport:
    spec: RequestSpec
    role: str  # "" for an `exactly` request; chosen | tried | not tried for subrequests
    devices: list[DeviceVerdict]
    elsewhere: list[DeviceVerdict]  # devices of slices this node cannot use
    error: str = ""

    def to_json(self) -> JSON:
        spec = self.spec
        out: JSON = {
            "request": spec.full_name,
            "deviceClassName": spec.class_name,
            "allocationMode": spec.mode,
            "count": spec.count if spec.mode == "ExactCount" else None,
            "adminAccess": spec.admin_access,
            "selectors": list(spec.selectors),
        }
        if spec.capacity:
            out["capacity"] = {name: q.text for name, q in spec.capacity.items()}
        if self.role:
            out["subrequest"] = self.role
        if self.error:
            out["error"] = self.error
        out["devices"] = [d.to_json() for d in [*self.devices, *self.elsewhere]]
        return out


@dataclass
class ClaimReport:
    claim: ClaimSpec
    allocation: JSON | None
    requests: list[SpecReport]

    def to_json(self) -> JSON:
        return {
            "claim": self.claim.ref,
            "allocatable": self.allocation is not None,
            "allocation": self.allocation,
            "constraints": [c.describe() for c in self.claim.constraints],
            "requests": [r.to_json() for r in self.requests],
        }


@dataclass
class NodeReport:
    node: str
    allocatable: bool
    verdict: str
    failure: AllocationFailure | None
    pools: list[Pool]
    ignored: list[IgnoredSlice]
    claims: list[ClaimReport]
    other_nodes: int = 0  # slices published for other nodes

    @property
    def headline(self) -> str:
        """Why not, without numbers that differ from node to node (for cluster summaries)."""
        if self.failure is None:
            return ""
        return self.failure.headline or self.failure.message

    def to_json(self) -> JSON:
        return {
            "node": self.node,
            "allocatable": self.allocatable,
            "verdict": self.verdict,
            "failure": self.failure.to_json() if self.failure else None,
            "pools": [_pool_json(p) for p in self.pools],
            "ignoredSlices": [_ignored_json(s) for s in self.ignored],
            "slicesForOtherNodes": self.other_nodes,
            "claims": [c.to_json() for c in self.claims],
        }


def _pool_json(pool: Pool) -> JSON:
    return {
        "driver": pool.driver,
        "pool": pool.name,
        "generation": pool.generation,
        "resourceSliceCount": pool.slice_count,
        "slicesPresent": pool.present,
        "devices": len(pool.devices),
        "counterSets": sorted(pool.counter_sets),
        "usable": pool.usable,
        "problem": pool.problem(),
    }


def _ignored_json(ignored: IgnoredSlice) -> JSON:
    return {
        "slice": ignored.name,
        "driver": ignored.driver,
        "pool": ignored.pool,
        "reason": ignored.reason,
        "devices": list(ignored.devices),
    }


# -- building the report -------------------------------------------------------------------------------------


def explain(
    claims: Sequence[Mapping[str, Any] | ClaimSpec],
    slices: Iterable[Mapping[str, Any]],
    classes: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
    node: Node | str,
    in_use: AllocatedState | Mapping[DeviceKey, str | None] | AbstractSet[DeviceKey] = frozenset(),
    *,
    taint_rules: Iterable[Mapping[str, Any]] = (),
) -> NodeReport:
    """Allocate ``claims`` on ``node`` and explain the outcome for every request and device."""
    allocator = Allocator(slices, classes, in_use, taint_rules=taint_rules)
    specs = [c if isinstance(c, ClaimSpec) else parse_claim(c) for c in claims]
    return explain_node(allocator, specs, node)


def explain_node(
    allocator: Allocator, claims: list[ClaimSpec], node: Node | str, detail: bool = True
) -> NodeReport:
    """One node's report; without ``detail`` only the verdict (per-device verdicts cost time at scale)."""
    result = allocator.allocate(claims, node)
    reports = (
        [_claim_report(allocator, result, i, claim) for i, claim in enumerate(result.claims)]
        if detail
        else []
    )
    devices = result.devices
    return NodeReport(
        result.node,
        result.ok,
        _verdict(result),
        result.failure,
        devices.pools,
        devices.ignored,
        reports,
        devices.other_nodes,
    )


def _verdict(result: AllocationResult) -> str:
    if result.failure:
        return f"NOT ALLOCATABLE: {result.failure.message}"
    claims = ", ".join(c.ref for c in result.claims)
    return f"ALLOCATABLE: {claims} can be allocated on node {result.node}"


@dataclass(frozen=True)
class _ClaimContext:
    """What every device verdict of one claim is judged against."""

    allocator: Allocator
    result: AllocationResult
    claim: ClaimSpec
    picks: list[Pick]  # every claim's choices in this allocation (they exclude each other)
    own: list[Pick]  # this claim's choices; empty when allocation failed


def _claim_report(
    allocator: Allocator, result: AllocationResult, index: int, claim: ClaimSpec
) -> ClaimReport:
    allocation = result.allocations[index] if result.ok else None
    picks = [p for a in result.allocations for p in a.picks]
    context = _ClaimContext(allocator, result, claim, picks, allocation.picks if allocation else [])
    chosen_names = {s.full_name for s in allocation.chosen} if allocation else set()
    reports: list[SpecReport] = []
    for request in claim.requests:
        alternatives = request.alternatives
        chosen = next((i for i, s in enumerate(alternatives) if s.full_name in chosen_names), None)
        for i, spec in enumerate(alternatives):
            role = _role(request.first_available, allocation is not None, chosen, i)
            reports.append(_spec_report(context, spec, role))
    return ClaimReport(claim, allocation.allocation if allocation else None, reports)


def _role(first_available: bool, allocated: bool, chosen: int | None, index: int) -> str:
    if not first_available:
        return ""
    if not allocated:
        return "tried"
    if chosen == index:
        return "chosen"
    return "tried" if chosen is not None and index < chosen else "not tried"


def _spec_report(context: _ClaimContext, spec: RequestSpec, role: str) -> SpecReport:
    devices = context.result.devices
    elsewhere = _elsewhere(devices.ignored)
    try:
        context.allocator.checker.device_class(spec)
    except ClassNotFoundError as exc:
        return SpecReport(spec, role, [], elsewhere, error=str(exc))
    verdicts = [
        _verdict_for(context, spec, device, pool) for pool in devices.pools for device in pool.devices
    ]
    return SpecReport(spec, role, verdicts, elsewhere)


def _verdict_for(context: _ClaimContext, spec: RequestSpec, device: Candidate, pool: Pool) -> DeviceVerdict:
    own = context.own
    chosen = next((p for p in own if p.device.key == device.key and p.spec.full_name == spec.full_name), None)
    if chosen is not None:
        return DeviceVerdict(device.id, device.name, SELECTED, note=_selected_note(chosen))
    checker, devices = context.allocator.checker, context.result.devices
    reasons = []
    problem = pool.problem()
    if problem:
        reasons.append(Reason(POOL, problem))
    reasons += static_reasons(checker, devices, context.claim, spec, device, first_only=False)
    if not reasons:
        reasons += _taken_in_this_allocation(context, spec, device)
    if not reasons:  # a constraint the device cannot meet, or (when allocated) conflicts with the choice
        for constraint in context.claim.constraints:
            conflict = (
                constraint_conflict(constraint, device, own, checker.list_type_attributes)
                if constraint.applies(spec)
                else None
            )
            if conflict:
                reasons.append(Reason(CONSTRAINT, conflict, {"constraint": constraint.describe()}))
    if reasons:
        return DeviceVerdict(device.id, device.name, NO, reasons)
    return DeviceVerdict(device.id, device.name, FITS, note=_fit_note(context.claim, spec, device, own))


def _taken_in_this_allocation(context: _ClaimContext, spec: RequestSpec, device: Candidate) -> list[Reason]:
    """What the devices chosen for this allocation leave of ``device``: itself, its capacity, its counters."""
    taken = [p for p in context.picks if p.device.key == device.key]
    if taken and not device.allow_multiple and not spec.admin_access:
        return [Reason(IN_USE, f"chosen for request {taken[0].spec.full_name} in this allocation")]
    if taken and device.allow_multiple:
        allocating: dict[str, Decimal] = {}
        for pick in taken:
            add(allocating, {name: q.value for name, q in pick.consumed.items()})
        verdict = context.allocator.checker.capacity_verdict(spec, device, allocating)
        if not verdict.fits:
            by = ", ".join(sorted({p.spec.full_name for p in taken}))
            return [Reason(CAPACITY, f"{verdict.reason} after request {by} in this allocation")]
    if device.consumes_counters:
        counters: Counters = {}
        for pick in context.picks:
            if (pick.device.driver, pick.device.pool) == (
                device.driver,
                device.pool,
            ) and pick.device.key != device.key:
                for name, amounts in consumption(pick.device).items():
                    add(counters.setdefault(name, {}), amounts)
        reason = context.allocator.checker.counter_reason(context.result.devices, device, counters)
        if reason is not None:
            return [
                Reason(
                    reason.kind,
                    f"{reason.message} after the devices chosen in this allocation",
                    reason.detail,
                )
            ]
    return []


def _selected_note(pick: Pick) -> str:
    notes = []
    if pick.consumed:
        notes.append("consumes " + ", ".join(f"{name} {q.text}" for name, q in pick.consumed.items()))
    if pick.device.binding_conditions:
        notes.append(
            f"the pod is bound once {', '.join(pick.device.binding_conditions)} hold"
            + (
                f" (fails on {', '.join(pick.device.binding_failure_conditions)})"
                if pick.device.binding_failure_conditions
                else ""
            )
        )
    return "; ".join(notes)


def _fit_note(claim: ClaimSpec, spec: RequestSpec, device: Candidate, own: list[Pick]) -> str:
    if own:
        return f"{NOT_CHOSEN}: the request already got its device(s) earlier in the search order"
    values = [
        f"{c.attribute}={shown_attribute(lookup_attribute(device, c.attribute))}"
        for c in claim.constraints
        if c.applies(spec)
    ]
    return "fits on its own" + (f" ({', '.join(values)})" if values else "")


def _elsewhere(ignored: list[IgnoredSlice]) -> list[DeviceVerdict]:
    out = []
    for entry in ignored:
        reason = Reason(entry.kind, f"slice {entry.name}: {entry.reason}")
        for name in entry.devices:
            out.append(DeviceVerdict(f"{entry.driver}/{entry.pool}/{name}", name, NO, [reason]))
    return out


# -- text ------------------------------------------------------------------------------------------------------


def render_text(reports: Sequence[NodeReport]) -> str:
    """Per-device detail for every node in ``reports``."""
    lines: list[str] = []
    for report in reports:
        lines += _render_node(report)
        lines.append("")
    allocatable = [r.node for r in reports if r.allocatable]
    if len(reports) > 1:
        lines.append(
            f"Allocatable on: {', '.join(allocatable)}"
            if allocatable
            else f"Not allocatable on any of {len(reports)} nodes"
        )
    return "\n".join(lines).rstrip() + "\n"


SHOWN_NODES = 20
SHOWN_REASONS = 5


def render_summary(reports: Sequence[NodeReport], claims: Sequence[str]) -> str:
    """What a person reads first for many nodes: which nodes can take the claims, and why the others
    cannot (the most common reasons, each with how many nodes it stops)."""
    allocatable = [r.node for r in reports if r.allocatable]
    others = [r for r in reports if not r.allocatable]
    lines = [f"Claims: {', '.join(claims)}", f"Nodes tried: {len(reports)}"]
    if allocatable:
        shown = ", ".join(allocatable[:SHOWN_NODES])
        more = f" and {len(allocatable) - SHOWN_NODES} more" if len(allocatable) > SHOWN_NODES else ""
        lines.append(f"Allocatable on {len(allocatable)} node(s): {shown}{more}")
    else:
        lines.append("Allocatable on no node")
    if others:
        reasons = Counter(r.headline for r in others)
        lines += ["", f"Not allocatable on {len(others)} node(s); top reasons:"]
        width = len(str(reasons.most_common(1)[0][1]))
        for headline, count in reasons.most_common(SHOWN_REASONS):
            example = next(r.node for r in others if r.headline == headline)
            lines.append(f"  {count:>{width}} node(s)  {headline}  (e.g. {example})")
        if len(reasons) > SHOWN_REASONS:
            rest = sum(count for _, count in reasons.most_common()[SHOWN_REASONS:])
            lines.append(f"  {rest:>{width}} node(s)  {len(reasons) - SHOWN_REASONS} other reason(s)")
    lines += ["", "Per-device detail: --node NODE, or -v for every node; -o json for everything."]
    return "\n".join(lines) + "\n"


def _render_node(report: NodeReport) -> list[str]:
    lines = [f"Node {report.node}: {report.verdict}", "", "Pools:"]
    if not report.pools:
        lines.append("  (none: no ResourceSlice offers devices to this node)")
    for pool in report.pools:
        state = pool.problem() or "complete"
        counters = f", counter sets {', '.join(sorted(pool.counter_sets))}" if pool.counter_sets else ""
        lines.append(
            f"  {pool.id}: generation {pool.generation}, {pool.present}/{pool.slice_count} slice(s), "
            f"{len(pool.devices)} device(s){counters}: {state}"
        )
    if report.ignored:
        lines.append("Ignored slices:")
        lines += [
            f"  {s.name} ({s.driver}/{s.pool}, {len(s.devices)} device(s)): {s.reason}"
            for s in report.ignored
        ]
    for claim in report.claims:
        lines += ["", f"Claim {claim.claim.ref}"]
        lines += [f"  constraint: {c.describe()}" for c in claim.claim.constraints]
        for request in claim.requests:
            lines += _render_spec(request)
        if claim.allocation:
            lines.append("  allocation:")
            for result in claim.allocation["devices"]["results"]:
                extra = " (admin access)" if result.get("adminAccess") else ""
                if result.get("shareID"):
                    extra += f" (share {result['shareID']})"
                lines.append(
                    f"    {result['request']} -> {result['driver']}/{result['pool']}/{result['device']}{extra}"
                )
    return lines


def _render_spec(report: SpecReport) -> list[str]:
    role = f" [{report.role}]" if report.role else ""
    lines = [f"  request {report.spec.full_name}{role}: {report.spec.describe()}"]
    if report.error:
        return [*lines, f"    error: {report.error}"]
    if not report.devices:
        lines.append("    (no devices on this node)")
    width = max((len(d.name) for d in report.devices), default=0)
    for verdict in report.devices:
        details = [r.message for r in verdict.reasons] or ([verdict.note] if verdict.note else [])
        lines.append(
            f"    {verdict.status:<8} {verdict.name:<{width}}  {details[0] if details else ''}".rstrip()
        )
        lines += [f"    {'':<8} {'':<{width}}  {more}" for more in details[1:]]
    if report.elsewhere:
        lines.append(
            f"    (+{len(report.elsewhere)} device(s) in slices this node cannot use, see Ignored slices)"
        )
    return lines


def render_json(reports: Sequence[NodeReport], claims: Sequence[str]) -> str:
    body = {
        "claims": list(claims),
        "allocatable": any(r.allocatable for r in reports),
        "allocatableOn": [r.node for r in reports if r.allocatable],
        "nodes": [r.to_json() for r in reports],
    }
    return json.dumps(body, indent=2) + "\n"
