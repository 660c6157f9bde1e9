"""Whether one device can serve one request, checked the way the scheduler checks it, with reasons.

Order (as upstream): in use -> DeviceClass selectors -> request selectors -> taints. Constraints depend on
the other devices chosen and live in the allocator. Selector results are cached per (request, device);
each device's CEL input is built once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from driver.allocation.cel import (
    CelCompileError,
    CelRuntimeError,
    DeviceActivation,
    compile_expression,
    device_activation,
    referenced_values,
)
from driver.allocation.model import JSON, RequestSpec
from driver.allocation.pools import Candidate, DeviceKey, InUse

# Reason kinds (stable strings: they appear in `accel-dra explain -o json`).
IN_USE = "in-use"
CLASS_SELECTOR = "class-selector"
REQUEST_SELECTOR = "request-selector"
CEL_ERROR = "cel-error"
TAINT = "taint"
CONSTRAINT = "constraint"
POOL = "pool"
UNSUPPORTED = "unsupported"
NOT_CHOSEN = "not-needed"

TAINT_EFFECTS_BLOCKING = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class Reason:
    """Why a device does not fit a request."""

    kind: str
    message: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {"kind": self.kind, "message": self.message, **dict(self.detail)}


class ClassNotFoundError(Exception):
    def __init__(self, spec: RequestSpec) -> None:
        super().__init__(f"request {spec.full_name}: DeviceClass {spec.class_name!r} not found")
        self.spec = spec


class InvalidSelectorError(Exception):
    """A class or request selector does not compile; the message names which one."""


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
    """Taints with a blocking effect that no toleration covers (effect ``None`` never blocks)."""
    return [
        taint
        for taint in device.taints
        if taint.get("effect") in TAINT_EFFECTS_BLOCKING and not any(tolerates(t, taint) for t in tolerations)
    ]


def show_taint(taint: Mapping[str, Any]) -> str:
    value = taint.get("value")
    return f"{taint.get('key')}{'=' + str(value) if value else ''}:{taint.get('effect')}"


class Checker:
    """Per-device checks for a set of DeviceClasses and an in-use map."""

    def __init__(self, classes: Mapping[str, Mapping[str, Any]], in_use: InUse) -> None:
        self.classes = classes
        self.in_use = in_use
        self._activations: dict[DeviceKey, DeviceActivation] = {}
        # Keyed by what decides the outcome: the class, the request's selectors and the device.
        self._first_failure: dict[tuple[str, tuple[str, ...], DeviceKey], Reason | None] = {}

    def class_selectors(self, spec: RequestSpec) -> list[str]:
        device_class = self.classes.get(spec.class_name)
        if device_class is None:
            raise ClassNotFoundError(spec)
        selectors = (device_class.get("spec") or {}).get("selectors") or ()
        return [str((s.get("cel") or {}).get("expression", "")) for s in selectors if isinstance(s, Mapping)]

    def class_configs(self, spec: RequestSpec) -> list[JSON]:
        device_class = self.classes.get(spec.class_name) or {}
        return [
            dict(c) for c in (device_class.get("spec") or {}).get("config") or () if isinstance(c, Mapping)
        ]

    def compile_all(self, spec: RequestSpec) -> None:
        """Compile every selector of ``spec`` and its class; :class:`InvalidSelectorError` for the first
        that does not compile, :class:`ClassNotFoundError` when the class is missing."""
        for owner, expressions in self._selector_groups(spec):
            for index, expression in enumerate(expressions):
                try:
                    compile_expression(expression)
                except CelCompileError as exc:
                    raise InvalidSelectorError(f"{owner} selector #{index}: {exc}") from None

    def _selector_groups(self, spec: RequestSpec) -> tuple[tuple[str, list[str]], ...]:
        return (
            (f"DeviceClass {spec.class_name}", self.class_selectors(spec)),
            (f"request {spec.full_name}", list(spec.selectors)),
        )

    def in_use_reason(self, device: Candidate) -> Reason | None:
        if device.allow_multiple or device.key not in self.in_use:
            return None
        holder = self.in_use[device.key]
        owner = f"claim {holder}" if holder else "another claim"
        return Reason(IN_USE, f"already allocated to {owner}", {"claim": holder} if holder else {})

    def selector_reasons(self, spec: RequestSpec, device: Candidate, first_only: bool) -> list[Reason]:
        """Failing selectors (class ones first). ``first_only`` stops at the first failure, as the scheduler
        does; otherwise every selector is evaluated (for explanations). CEL errors are reasons of kind
        ``cel-error``; compile errors raise :class:`CelCompileError`.
        """
        if first_only:
            key = (spec.class_name, spec.selectors, device.key)
            if key not in self._first_failure:
                found = self._selector_reasons(spec, device, first_only=True)
                self._first_failure[key] = found[0] if found else None
            cached = self._first_failure[key]
            return [cached] if cached else []
        return self._selector_reasons(spec, device, first_only=False)

    def _selector_reasons(self, spec: RequestSpec, device: Candidate, first_only: bool) -> list[Reason]:
        reasons: list[Reason] = []
        kinds = (CLASS_SELECTOR, REQUEST_SELECTOR)
        for kind, (owner, expressions) in zip(kinds, self._selector_groups(spec), strict=True):
            for index, expression in enumerate(expressions):
                reason = self._evaluate(kind, owner, index, expression, device)
                if reason is not None:
                    reasons.append(reason)
                    if first_only:
                        return reasons
        return reasons

    def _evaluate(
        self, kind: str, owner: str, index: int, expression: str, device: Candidate
    ) -> Reason | None:
        compiled = compile_expression(expression)
        detail: JSON = {"owner": owner, "selector": index, "expression": expression}
        try:
            if compiled.evaluate(self.activation(device)):
                return None
        except CelRuntimeError as exc:
            return Reason(CEL_ERROR, f"{owner}: selector #{index}: {exc}", {**detail, "error": exc.detail})
        seen = referenced_values(expression, device.driver, device.spec)
        detail["seen"] = {name: value for name, value in seen}
        shown = ", ".join(f"{name}={value}" for name, value in seen)
        message = f"{owner} selector #{index} `{expression}` was false" + (f": {shown}" if shown else "")
        return Reason(kind, message, detail)

    def activation(self, device: Candidate) -> DeviceActivation:
        if device.key not in self._activations:
            self._activations[device.key] = device_activation(device.driver, device.spec, device.id)
        return self._activations[device.key]

    def taint_reason(self, spec: RequestSpec, device: Candidate) -> Reason | None:
        taints = blocking_taints(device, spec.tolerations)
        if not taints:
            return None
        shown = ", ".join(show_taint(t) for t in taints)
        return Reason(
            TAINT, f"tainted {shown}, not tolerated by request {spec.full_name}", {"taints": taints}
        )

    def static_reasons(self, spec: RequestSpec, device: Candidate, first_only: bool) -> list[Reason]:
        """Everything that keeps ``device`` from ``spec`` regardless of other choices."""
        reasons: list[Reason] = []
        if device.unsupported:
            reasons.append(Reason(UNSUPPORTED, device.unsupported))
            if first_only:
                return reasons
        in_use = None if spec.admin_access else self.in_use_reason(device)
        if in_use is not None:
            reasons.append(in_use)
            if first_only:
                return reasons
        reasons += self.selector_reasons(spec, device, first_only)
        if reasons and first_only:
            return reasons
        taint = self.taint_reason(spec, device)
        return [*reasons, taint] if taint else reasons
