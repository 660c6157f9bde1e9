"""What a ResourceClaim asks for, parsed once from ``resource.k8s.io/v1`` JSON into plain values.

A claim has requests; a request is either ``exactly`` one kind of device set or ``firstAvailable``: a list
of alternatives (subrequests) tried in order. Both are represented as a :class:`Request` with one or more
:class:`RequestSpec` alternatives, so the allocator treats them alike. Constraints apply to the devices
of the listed requests (a subrequest is named ``request/subrequest``; naming the parent covers all of its
alternatives).

Claims are taken as the API server stores them (defaults applied). Only what kube-scheduler itself refuses
is an :class:`InputError` here (no class name, an unknown allocation mode or constraint, a selector without
CEL); what only API validation forbids (duplicate request names, say) is accepted, as the scheduler does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from driver.allocation.capacity import Quantity
from driver.kube.api.names import is_label_key, is_label_value

JSON = dict[str, Any]
AllocationMode = Literal["ExactCount", "All"]
ConstraintKind = Literal["matchAttribute", "distinctAttribute"]


class InputError(ValueError):
    """A claim, class, slice or file the allocator cannot use; the message names the object and field."""


def object_ref(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` of a namespaced object (``name`` alone when it has no namespace)."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or meta.get("generateName") or "<unnamed>")
    namespace = meta.get("namespace")
    return f"{namespace}/{name}" if namespace else name


@dataclass(frozen=True)
class Node:
    """The node being tried: its name, and labels for slices that select nodes by label."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_object(cls, node: Mapping[str, Any]) -> Node:
        meta = node.get("metadata") or {}
        return cls(str(meta.get("name", "")), dict(meta.get("labels") or {}))


@dataclass(frozen=True)
class RequestSpec:
    """One way to satisfy a request: an ``exactly`` request, or one ``firstAvailable`` subrequest."""

    name: str
    parent: str | None
    class_name: str
    selectors: tuple[str, ...]
    mode: AllocationMode
    count: int
    admin_access: bool
    tolerations: tuple[JSON, ...]
    capacity: Mapping[str, Quantity] = field(default_factory=dict)  # capacity.requests

    @property
    def full_name(self) -> str:
        """The name results and configs use: ``request`` or ``request/subrequest``."""
        return f"{self.parent}/{self.name}" if self.parent else self.name

    @property
    def base_name(self) -> str:
        return self.parent or self.name

    def describe(self) -> str:
        amount = "all matching devices" if self.mode == "All" else f"{self.count} device(s)"
        admin = ", admin access" if self.admin_access else ""
        wants = ", ".join(f"{name} {q.text}" for name, q in self.capacity.items())
        return f"{amount} of class {self.class_name}{admin}" + (f", capacity {wants}" if wants else "")


@dataclass(frozen=True)
class Request:
    name: str
    alternatives: tuple[RequestSpec, ...]
    first_available: bool


@dataclass(frozen=True)
class Constraint:
    kind: ConstraintKind
    attribute: str
    requests: tuple[str, ...]

    def applies(self, spec: RequestSpec) -> bool:
        """Empty ``requests`` means every request of the claim."""
        return not self.requests or spec.base_name in self.requests or spec.full_name in self.requests

    def describe(self) -> str:
        scope = ", ".join(self.requests) if self.requests else "all requests"
        return f"{self.kind} {self.attribute} ({scope})"


@dataclass(frozen=True)
class ClaimSpec:
    """A claim to allocate: identity, requests in order, constraints, claim-level configs."""

    ref: str
    uid: str
    requests: tuple[Request, ...]
    constraints: tuple[Constraint, ...]
    configs: tuple[JSON, ...]

    @property
    def specs(self) -> list[RequestSpec]:
        return [spec for request in self.requests for spec in request.alternatives]


def claim_from_template(template: Mapping[str, Any]) -> JSON:
    """The ResourceClaim a ResourceClaimTemplate would produce (its ``spec.spec``), named after the template."""
    meta = template.get("metadata") or {}
    spec = (template.get("spec") or {}).get("spec")
    if not isinstance(spec, Mapping):
        raise InputError(f"ResourceClaimTemplate {object_ref(template)}: spec.spec is missing")
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": meta.get("name", "template"), "namespace": meta.get("namespace", "default")},
        "spec": dict(spec),
    }


def parse_claim(claim: Mapping[str, Any]) -> ClaimSpec:
    """Parse a ResourceClaim; :class:`InputError` names the claim and field that is wrong."""
    ref = object_ref(claim)
    devices = _mapping((claim.get("spec") or {}).get("devices") or {}, f"claim {ref}: spec.devices")
    requests = [
        _parse_request(ref, i, raw)
        for i, raw in enumerate(_sequence(devices.get("requests"), f"claim {ref}: spec.devices.requests"))
    ]
    constraints = [
        _parse_constraint(ref, i, raw)
        for i, raw in enumerate(
            _sequence(devices.get("constraints"), f"claim {ref}: spec.devices.constraints")
        )
    ]
    configs = [
        dict(_mapping(raw, f"claim {ref}: spec.devices.config[{i}]"))
        for i, raw in enumerate(_sequence(devices.get("config"), f"claim {ref}: spec.devices.config"))
    ]
    uid = str((claim.get("metadata") or {}).get("uid") or "")
    return ClaimSpec(ref, uid, tuple(requests), tuple(constraints), tuple(configs))


def _parse_request(ref: str, index: int, raw: Any) -> Request:
    where = f"claim {ref}: spec.devices.requests[{index}]"
    request = _mapping(raw, where)
    name = request.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}.name is required")
    exactly, first = request.get("exactly"), request.get("firstAvailable")
    if (exactly is None) == (first is None):
        raise InputError(f"{where} ({name}): exactly one of `exactly` or `firstAvailable` must be set")
    if exactly is not None:
        spec = _parse_spec(f"{where}.exactly", name, None, _mapping(exactly, f"{where}.exactly"), True)
        return Request(name, (spec,), first_available=False)
    subrequests = _sequence(first, f"{where}.firstAvailable")
    if not subrequests:
        raise InputError(f"{where}.firstAvailable: must list at least one subrequest")
    specs = []
    for j, sub in enumerate(subrequests):
        sub_where = f"{where}.firstAvailable[{j}]"
        body = _mapping(sub, sub_where)
        sub_name = body.get("name")
        if not isinstance(sub_name, str) or not sub_name:
            raise InputError(f"{sub_where}.name is required")
        specs.append(_parse_spec(sub_where, sub_name, name, body, False))
    return Request(name, tuple(specs), first_available=True)


def _parse_spec(
    where: str, name: str, parent: str | None, body: Mapping[str, Any], exact: bool
) -> RequestSpec:
    class_name = body.get("deviceClassName")
    if not isinstance(class_name, str) or not class_name:
        raise InputError(f"{where}.deviceClassName is required")
    mode = body.get("allocationMode") or "ExactCount"
    if mode not in ("ExactCount", "All"):
        raise InputError(f"{where}.allocationMode: unsupported value {mode!r} (ExactCount or All)")
    count = body.get("count", 1) if mode == "ExactCount" else 0
    if not isinstance(count, int) or isinstance(count, bool) or (mode == "ExactCount" and count < 1):
        raise InputError(f"{where}.count: must be a positive integer, got {count!r}")
    admin = body.get("adminAccess")
    if admin is not None and (not exact or not isinstance(admin, bool)):
        raise InputError(f"{where}.adminAccess: only a boolean on an `exactly` request")
    selectors = []
    for i, selector in enumerate(_sequence(body.get("selectors"), f"{where}.selectors")):
        expression = (_mapping(selector, f"{where}.selectors[{i}]").get("cel") or {}).get("expression")
        if not isinstance(expression, str):
            raise InputError(f"{where}.selectors[{i}].cel.expression is required")
        selectors.append(expression)
    tolerations = tuple(
        dict(_mapping(t, f"{where}.tolerations[{i}]"))
        for i, t in enumerate(_sequence(body.get("tolerations"), f"{where}.tolerations"))
    )
    return RequestSpec(
        name,
        parent,
        class_name,
        tuple(selectors),
        cast(AllocationMode, mode),
        count,
        bool(admin),
        tolerations,
        _capacity_requests(where, body.get("capacity")),
    )


def _capacity_requests(where: str, raw: Any) -> dict[str, Quantity]:
    if raw is None:
        return {}
    requests = _mapping(raw, f"{where}.capacity").get("requests") or {}
    out: dict[str, Quantity] = {}
    for name, value in _mapping(requests, f"{where}.capacity.requests").items():
        try:
            out[str(name)] = Quantity.parse(value)
        except ValueError as exc:
            raise InputError(f"{where}.capacity.requests[{name}]: {exc}") from None
    return out


def _parse_constraint(ref: str, index: int, raw: Any) -> Constraint:
    where = f"claim {ref}: spec.devices.constraints[{index}]"
    body = _mapping(raw, where)
    kinds: list[ConstraintKind] = [k for k in ("matchAttribute", "distinctAttribute") if body.get(k)]
    if len(kinds) != 1:
        raise InputError(f"{where}: exactly one of matchAttribute or distinctAttribute must be set")
    attribute = body[kinds[0]]
    if not isinstance(attribute, str) or "/" not in attribute:
        raise InputError(f"{where}.{kinds[0]}: must be a fully qualified attribute name (domain/name)")
    requests = tuple(str(r) for r in _sequence(body.get("requests"), f"{where}.requests"))
    return Constraint(kinds[0], attribute, requests)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: must be an object")
    return value


def _sequence(value: Any, where: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise InputError(f"{where}: must be a list")
    return value


# -- node selection --------------------------------------------------------------------------------------------


class NodeSelectorError(InputError):
    """A core/v1 NodeSelector that cannot be parsed (a bad operator, key or value)."""


_INT64_RE = re.compile(r"^[+-]?[0-9]+$")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")


def node_selector_matches(selector: Mapping[str, Any], node: Node) -> bool:
    """A core/v1 NodeSelector as kube-scheduler evaluates one (component-helpers' ``nodeaffinity``).

    Terms are ORed; a term without requirements is skipped (it matches nothing); inside a term every
    requirement must hold. ``matchExpressions`` test labels (``In``/``NotIn`` need values, ``Exists``/
    ``DoesNotExist`` none, ``Gt``/``Lt`` one integer; keys and values must be valid label keys and values);
    ``matchFields`` test ``metadata.name`` (``In``/``NotIn`` with one value). Any requirement that does not
    parse makes the whole selector an error (:class:`NodeSelectorError`), as upstream.
    """
    terms = [t for t in selector.get("nodeSelectorTerms") or () if isinstance(t, Mapping)]
    parsed = []
    problems: list[str] = []
    for index, term in enumerate(terms):
        expressions, fields = term.get("matchExpressions") or (), term.get("matchFields") or ()
        if not expressions and not fields:
            continue
        where = f"nodeSelectorTerms[{index}]"
        problems += _label_problems(expressions, f"{where}.matchExpressions")
        problems += _field_problems(fields, f"{where}.matchFields")
        parsed.append((expressions, fields))
    if problems:
        raise NodeSelectorError("; ".join(problems))
    labels, fields_set = node.labels, {"metadata.name": node.name} if node.name else {}
    for expressions, fields in parsed:
        if expressions and not all(_label_requirement_holds(r, labels) for r in expressions):
            continue
        if fields and fields_set and not all(_field_requirement_holds(r, fields_set) for r in fields):
            continue
        return True
    return False


def _label_problems(requirements: Sequence[Mapping[str, Any]], where: str) -> list[str]:
    problems = []
    for i, requirement in enumerate(requirements):
        path = f"{where}[{i}]"
        operator, key = requirement.get("operator"), str(requirement.get("key") or "")
        values = [str(v) for v in requirement.get("values") or ()]
        if operator not in _OPERATORS:
            problems.append(f"{path}.operator: Unsupported value: {operator!r}")
            continue
        if not is_label_key(key):
            problems.append(f"{path}.key: Invalid value: {key!r}: not a valid label key")
        if operator in ("In", "NotIn") and not values:
            problems.append(f"{path}.values: for 'in', 'notin' operators, values set can't be empty")
        if operator in ("Exists", "DoesNotExist") and values:
            problems.append(f"{path}.values: values set must be empty for exists and does not exist")
        if operator in ("Gt", "Lt"):
            if len(values) != 1:
                problems.append(f"{path}.values: for 'Gt', 'Lt' operators, exactly one value is required")
            problems += [
                f"{path}.values[{j}]: for 'Gt', 'Lt' operators, the value must be an integer"
                for j, v in enumerate(values)
                if _int64(v) is None
            ]
        problems += [
            f"{path}.values[{j}]: Invalid value: {v!r}: not a valid label value"
            for j, v in enumerate(values)
            if not is_label_value(v)
        ]
    return problems


def _field_problems(requirements: Sequence[Mapping[str, Any]], where: str) -> list[str]:
    problems = []
    for i, requirement in enumerate(requirements):
        operator = requirement.get("operator")
        if operator not in ("In", "NotIn"):
            problems.append(f"{where}[{i}].operator: Unsupported value: {operator!r}")
        elif len(requirement.get("values") or ()) != 1:
            problems.append(f"{where}[{i}].values: must have one element")
    return problems


def _int64(text: str) -> int | None:
    if not _INT64_RE.fullmatch(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def _label_requirement_holds(requirement: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = str(requirement.get("key")), requirement.get("operator")
    wanted = [str(v) for v in requirement.get("values") or ()]
    present, value = key in labels, labels.get(key)
    if operator == "In":
        return present and value in wanted
    if operator == "NotIn":
        return not present or value not in wanted
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    have, bound = _int64(str(value)) if present else None, _int64(wanted[0])
    if have is None or bound is None:
        return False
    return have > bound if operator == "Gt" else have < bound


def _field_requirement_holds(requirement: Mapping[str, Any], fields: Mapping[str, str]) -> bool:
    value = fields.get(str(requirement.get("key")), "")
    wanted = str((requirement.get("values") or [""])[0])
    return value == wanted if requirement.get("operator") == "In" else value != wanted
