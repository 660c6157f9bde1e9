"""Whether one device can serve one request, checked the way kube-scheduler checks it, with reasons.

Order (as upstream): in use -> DeviceClass selectors -> request selectors -> per-device node selection ->
capacity -> shared counters -> taints. Constraints, and what this allocation already took, depend on the
other devices chosen and live in the allocator; :mod:`driver.allocation.explain` reuses these checks to say
why a device was not taken.

Selectors are compiled when first evaluated, as upstream: a selector that does not compile fails the
claim only when some device reaches it. Results are cached per (class, request selectors, device); CEL
results are also cached across devices that look the same to the expression (see
:class:`driver.cel.selectors.SelectorCache`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from driver.allocation.allocated import AllocatedState
from driver.allocation.capacity import (
    CapacityError,
    CapacityVerdict,
    DeviceCapacity,
    check_request,
    device_capacities,
)
from driver.allocation.model import JSON, Node, RequestSpec
from driver.allocation.pools import (
    Candidate,
    Counters,
    DeviceKey,
    NodeDevices,
    counter_amount,
    device_selects_node,
)
from driver.cel.selectors import CelCompileError, CelRuntimeError, SelectorCache, referenced_values
from driver.quantity import format_quantity

# Reason kinds (stable strings: they appear in `accel-dra explain -o json`).
IN_USE = "in-use"
CLASS_SELECTOR = "class-selector"
REQUEST_SELECTOR = "request-selector"
CEL_ERROR = "cel-error"
NODE = "node"
CAPACITY = "capacity"
COUNTERS = "counters"
TAINT = "taint"
CONSTRAINT = "constraint"
POOL = "pool"
NOT_CHOSEN = "not-needed"

TAINT_EFFECTS_BLOCKING = ("NoSchedule", "NoExecute")
_UNKNOWN: Any = object()


@dataclass(frozen=True)
class Reason:
    """Why a device does not fit a request."""

    kind: str
    message: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {"kind": self.kind, "message": self.message, **dict(self.detail)}


class AllocationError(Exception):
    """The scheduler stops: the claims cannot be allocated anywhere until the input changes."""


class ClassNotFoundError(AllocationError):
    def __init__(self, spec: RequestSpec) -> None:
        super().__init__(f"request {spec.full_name}: DeviceClass {spec.class_name!r} not found")
        self.spec = spec


class InvalidSelectorError(AllocationError):
    """A class or request selector does not compile; the message names which one."""


class SelectorFailedError(AllocationError):
    """A selector failed at runtime on a device the search reached."""


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Kubernetes toleration matching: empty effect = any effect, empty key (with Exists) = any key."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    return operator == "Equal" and (toleration.get("value") or "") == (taint.get("value") or "")


def blocking_taints(device: Candidate, tolerations: tuple[JSON, ...]) -> list[JSON]:
    """Taints with a blocking effect that no toleration covers (``None`` and unknown effects never block)."""
    return [
        taint
        for taint in device.taints
        if taint.get("effect") in TAINT_EFFECTS_BLOCKING and not any(tolerates(t, taint) for t in tolerations)
    ]


def show_taint(taint: Mapping[str, Any]) -> str:
    value = taint.get("value")
    return f"{taint.get('key')}{'=' + str(value) if value else ''}:{taint.get('effect')}"


def consumption(device: Candidate) -> Counters:
    """What a device consumes from its pool's counter sets."""
    out: Counters = {}
    for entry in device.consumes_counters:
        counters = out.setdefault(str(entry.get("counterSet", "")), {})
        for name, value in (entry.get("counters") or {}).items():
            counters[str(name)] = counters.get(str(name), Decimal(0)) + counter_amount(value)
    return out


class Checker:
    """Per-device checks for a set of DeviceClasses and what other claims hold; shared by every node."""

    def __init__(self, classes: Mapping[str, Mapping[str, Any]], allocated: AllocatedState) -> None:
        self.classes = classes
        self.allocated = allocated
        self.list_type_attributes = False  # set by the Allocator (a feature gate)
        self.selectors = SelectorCache()
        # Keyed by what decides the outcome: the request, its class and selectors, and the device (or what
        # the selectors read of it).
        self._first_failure: dict[tuple[Any, ...], Reason | None] = {}
        self._capacities: dict[DeviceKey, dict[str, DeviceCapacity] | str] = {}
        self._available: dict[tuple[str, str], Counters] = {}
        self._class_selectors: dict[str, list[str]] = {}

    # -- classes ---------------------------------------------------------------------------------------------

    def device_class(self, spec: RequestSpec) -> Mapping[str, Any]:
        device_class = self.classes.get(spec.class_name)
        if device_class is None:
            raise ClassNotFoundError(spec)
        return device_class

    def class_selectors(self, spec: RequestSpec) -> list[str]:
        found = self._class_selectors.get(spec.class_name)
        if found is None:
            selectors = (self.device_class(spec).get("spec") or {}).get("selectors") or ()
            found = [
                str((s.get("cel") or {}).get("expression", "")) for s in selectors if isinstance(s, Mapping)
            ]
            self._class_selectors[spec.class_name] = found
        return found

    def class_configs(self, spec: RequestSpec) -> list[JSON]:
        device_class = self.classes.get(spec.class_name) or {}
        return [
            dict(c) for c in (device_class.get("spec") or {}).get("config") or () if isinstance(c, Mapping)
        ]

    def _selector_groups(self, spec: RequestSpec, claim: str) -> tuple[tuple[str, str, str, list[str]], ...]:
        return (
            (
                CLASS_SELECTOR,
                f"DeviceClass {spec.class_name}",
                f"DeviceClass {spec.class_name}",
                self.class_selectors(spec),
            ),
            (
                REQUEST_SELECTOR,
                f"request {spec.full_name}",
                f"claim {claim}, request {spec.full_name}",
                list(spec.selectors),
            ),
        )

    # -- selectors -------------------------------------------------------------------------------------------

    def selector_failure(self, claim: str, spec: RequestSpec, device: Candidate) -> Reason | None:
        """The first selector that rejects the device (class selectors first), None when all accept it.
        A CEL error ends the allocation: :class:`InvalidSelectorError` (compile) or
        :class:`SelectorFailedError` (runtime), as the scheduler does."""
        expressions = (*self.class_selectors(spec), *spec.selectors)
        signature = self.selectors.signature(expressions, device.driver, device.spec, device.id)
        # Devices that look the same to every selector share the outcome (unless it is an error, which
        # names the device); otherwise each device is judged on its own.
        shared = signature is not None
        key = (claim, spec.full_name, spec.class_name, spec.selectors, signature if shared else device.key)
        reason: Reason | None = self._first_failure.get(key, _UNKNOWN)
        if reason is _UNKNOWN or (shared and reason is not None and reason.kind == CEL_ERROR):
            found = self._selector_reasons(claim, spec, device, first_only=True)
            reason = self._first_failure[key] = found[0] if found else None
        if reason is not None and reason.kind == CEL_ERROR:
            error = SelectorFailedError if reason.detail.get("runtime") else InvalidSelectorError
            raise error(reason.detail["scheduler"])
        return reason

    def selector_reasons(self, claim: str, spec: RequestSpec, device: Candidate) -> list[Reason]:
        """Every failing selector, CEL errors included as reasons (for explanations)."""
        return self._selector_reasons(claim, spec, device, first_only=False)

    def _selector_reasons(
        self, claim: str, spec: RequestSpec, device: Candidate, first_only: bool
    ) -> list[Reason]:
        reasons: list[Reason] = []
        for kind, owner, qualified, expressions in self._selector_groups(spec, claim):
            for index, expression in enumerate(expressions):
                reason = self._evaluate(kind, (owner, qualified), index, expression, device)
                if reason is not None:
                    reasons.append(reason)
                    if first_only:
                        return reasons
        return reasons

    def _evaluate(
        self, kind: str, owners: tuple[str, str], index: int, expression: str, device: Candidate
    ) -> Reason | None:
        owner, qualified = owners  # "request R" (for explanations), "claim C, request R" (for errors)
        detail: JSON = {"owner": owner, "selector": index, "expression": expression}
        try:
            if self.selectors.matches(expression, device.driver, device.spec, device.id):
                return None
        except CelCompileError as exc:
            text = f"{qualified} selector #{index} `{expression}`: CEL compile error: {exc.upstream_text()}"
            return Reason(
                CEL_ERROR,
                f"{owner}: selector #{index}: {exc}",
                {**detail, "error": exc.detail, "scheduler": text},
            )
        except CelRuntimeError as exc:
            text = f"{qualified} selector #{index} `{expression}` on device {device.id}: CEL runtime error: {exc.detail}"
            return Reason(
                CEL_ERROR,
                f"{owner}: selector #{index}: {exc}",
                {**detail, "error": exc.detail, "scheduler": text, "runtime": True},
            )
        seen = referenced_values(expression, device.driver, device.spec)
        detail["seen"] = {name: value for name, value in seen}
        shown = ", ".join(f"{name}={value}" for name, value in seen)
        message = f"{owner} selector #{index} `{expression}` was false" + (f": {shown}" if shown else "")
        return Reason(kind, message, detail)

    # -- node, capacity, counters, taints, in use ------------------------------------------------------------

    def node_reason(self, device: Candidate, node: Node) -> Reason | None:
        """Per-device node selection: the device's own nodeName / allNodes / nodeSelector must take the node."""
        if not device.per_device_node_selection or device_selects_node(device.spec, node):
            return None
        return Reason(NODE, f"the device is not available on node {node.name} (per-device node selection)")

    def capacities(self, device: Candidate) -> dict[str, DeviceCapacity]:
        """The device's capacities; :class:`CapacityError` when one does not parse."""
        if device.key not in self._capacities:
            try:
                self._capacities[device.key] = device_capacities(device.spec)
            except ValueError as exc:
                self._capacities[device.key] = str(exc)
        found = self._capacities[device.key]
        if isinstance(found, str):
            raise CapacityError(f"device {device.id}: {found}")
        return found

    def capacity_verdict(
        self,
        spec: RequestSpec,
        device: Candidate,
        allocating: Mapping[str, Decimal] | None = None,
        static: bool = False,
    ) -> CapacityVerdict:
        """Whether the device has room for the request: what allocated claims hold (unless ``static``) plus
        ``allocating`` plus the new amount. :class:`CapacityError` aborts the allocation."""
        held = None if static else self.allocated.capacity.get(device.key)
        return check_request(spec.capacity, self.capacities(device), held, allocating)

    def capacity_reason(self, spec: RequestSpec, device: Candidate) -> Reason | None:
        try:
            verdict = self.capacity_verdict(spec, device)
        except CapacityError as exc:
            return Reason(CAPACITY, str(exc))
        return None if verdict.fits else Reason(CAPACITY, verdict.reason)

    def available_counters(self, devices: NodeDevices, pool_key: tuple[str, str]) -> Counters:
        """A pool's counter sets minus what allocated devices of the pool consume (upstream counts the
        devices this node sees, and those of other nodes when it had to look at the whole pool)."""
        if pool_key in self._available:
            return self._available[pool_key]
        pool = next(p for p in devices.pools if p.key == pool_key)
        available = {name: dict(counters) for name, counters in pool.counter_sets.items()}
        for slice_ in [*pool.slices, *pool.not_targeting]:
            for raw in slice_.devices:
                if not self.allocated.is_allocated((slice_.driver, slice_.pool, str(raw.get("name", "")))):
                    continue
                for set_name, counters in consumption(
                    Candidate(slice_.driver, slice_.pool, slice_.name, raw, slice_.spec)
                ).items():
                    target = available.get(set_name)
                    if target is None:
                        continue
                    for name, amount in counters.items():
                        if name in target:
                            target[name] -= amount
        self._available[pool_key] = available
        return available

    def counter_reason(
        self, devices: NodeDevices, device: Candidate, taken: Counters | None = None
    ) -> Reason | None:
        """Whether the pool's counters cover the device on top of ``taken`` (what this allocation took)."""
        wants = consumption(device)
        if not wants:
            return None
        available = self.available_counters(devices, (device.driver, device.pool))
        for set_name, counters in available.items():
            for name, left in counters.items():
                needed = wants.get(set_name, {}).get(name, Decimal(0)) + (taken or {}).get(set_name, {}).get(
                    name, Decimal(0)
                )
                if left < needed:
                    return Reason(
                        COUNTERS,
                        f"counter set {set_name}: counter {name} has {_amount(left)} left, "
                        f"{_amount(needed)} needed",
                        {"counterSet": set_name, "counter": name},
                    )
        return None

    def taint_reason(self, spec: RequestSpec, device: Candidate) -> Reason | None:
        taints = blocking_taints(device, spec.tolerations)
        if not taints:
            return None
        shown = ", ".join(show_taint(t) for t in taints)
        origin = sorted({r.rule for r in device.rule_taints if r.taint in taints})
        via = f" (DeviceTaintRule {', '.join(origin)})" if origin else ""
        return Reason(
            TAINT, f"tainted {shown}{via}, not tolerated by request {spec.full_name}", {"taints": taints}
        )

    def in_use_reason(self, spec: RequestSpec, device: Candidate) -> Reason | None:
        if spec.admin_access or device.key not in self.allocated.dedicated:
            return None
        holder = self.allocated.dedicated[device.key]
        owner = f"claim {holder}" if holder else "another claim"
        return Reason(IN_USE, f"already allocated to {owner}", {"claim": holder} if holder else {})


def _amount(value: Decimal) -> str:
    return format_quantity(value, "DecimalSI")
