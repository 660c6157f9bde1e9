"""ValidatingAdmissionPolicies, evaluated as kube-apiserver evaluates them, after a write passed validation.

A policy applies to a write when a ValidatingAdmissionPolicyBinding names it, a ``resourceRules`` entry of its
``matchConstraints`` matches the group, resource and operation, and all its ``matchConditions`` hold. Its
``variables`` are then computed in order and each ``validation`` that does not hold denies the write with
its ``messageExpression`` (or ``message``) and ``reason`` (403 for Forbidden, 422 Invalid by default),
when the binding's ``validationActions`` include ``Deny``. The expressions are CEL, evaluated with
cel-expr-python over the request as JSON (``request``, ``object``, ``oldObject``, ``variables``), with the
extension libraries kube-apiserver offers policies (strings, sets, optional).

Not modelled: ``paramKind``/``paramRef``, ``namespaceSelector`` and ``objectSelector`` (a policy that sets
them matches nothing here), ``auditAnnotations``, the ``Warn`` and ``Audit`` actions, type checking
against the kinds' schemas, and the cost budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cel_expr_python import cel

from driver.kube.client import ResourceType
from driver.sim.rbac import UserInfo

JSON = dict[str, Any]
ADMISSION_GROUP = "admissionregistration.k8s.io"
POLICIES = ResourceType(
    ADMISSION_GROUP, "v1", "validatingadmissionpolicies", "ValidatingAdmissionPolicy", False
)
POLICY_BINDINGS = ResourceType(
    ADMISSION_GROUP, "v1", "validatingadmissionpolicybindings", "ValidatingAdmissionPolicyBinding", False
)
_EXTENSIONS = cel.NewEnvConfigFromYaml(
    "extensions:\n  - name: strings\n    version: 2\n  - name: sets\n  - name: optional\n"
)
_ACTIVATION = ("request", "object", "oldObject", "variables", "params", "namespaceObject", "authorizer")
_CODES = {"Unauthorized": 401, "Forbidden": 403, "Invalid": 422, "RequestEntityTooLarge": 413}


class PolicyError(Exception):
    """A policy expression that does not compile or evaluate (the policy's failurePolicy decides)."""


@dataclass(frozen=True)
class Denial:
    code: int
    reason: str
    message: str


@dataclass(frozen=True)
class Write:
    """One write, as admission sees it."""

    operation: str  # CREATE, UPDATE, DELETE
    group: str
    version: str
    resource: str
    subresource: str
    namespace: str
    name: str
    user: UserInfo
    obj: JSON | None
    old: JSON | None

    def request(self) -> JSON:
        return {
            "operation": self.operation,
            "kind": {"group": self.group, "version": self.version, "kind": ""},
            "resource": {"group": self.group, "version": self.version, "resource": self.resource},
            "subResource": self.subresource,
            "namespace": self.namespace,
            "name": self.name,
            "userInfo": self.user.as_request_user_info(),
        }


_COMPILED: dict[str, Any] = {}


def evaluate(expression: str, activation: Mapping[str, Any]) -> Any:
    """One expression over JSON values (typed ``dyn``); PolicyError when it fails."""
    program = _COMPILED.get(expression)
    if program is None:
        env = cel.NewEnv(config=_EXTENSIONS, variables=dict.fromkeys(_ACTIVATION, cel.Type.DYN))
        try:
            program = env.compile(expression)
        except Exception as exc:  # the library's compile errors carry no common type
            raise PolicyError(f"compilation failed: {exc}") from exc
        _COMPILED[expression] = program
    result = program.eval(data={k: activation.get(k) for k in _ACTIVATION})
    if result.type().name() == "ERROR":
        raise PolicyError(str(result.value()))
    return result.plain_value()


def _matches(values: Any, wanted: str) -> bool:
    return any(v in ("*", wanted) for v in values or ())


def _rule_matches(rule: Mapping[str, Any], write: Write) -> bool:
    resource = f"{write.resource}/{write.subresource}" if write.subresource else write.resource
    return (
        _matches(rule.get("apiGroups"), write.group)
        and _matches(rule.get("apiVersions"), write.version)
        and _matches(rule.get("operations"), write.operation)
        and _matches(rule.get("resources"), resource)
    )


class Admission:
    """The policies and bindings a store holds, applied to writes; ``objects(key)`` lists them."""

    def __init__(self, objects: Callable[..., list[JSON]]) -> None:
        self._objects = objects

    def _list(self, rt: ResourceType) -> list[JSON]:
        return self._objects(f"{rt.plural}.{rt.group}")

    def review(self, write: Write) -> Denial | None:
        if write.group == ADMISSION_GROUP:
            return None  # policies do not police themselves
        policies = {(p.get("metadata") or {}).get("name"): p for p in self._list(POLICIES)}
        for binding in self._list(POLICY_BINDINGS):
            spec = binding.get("spec") or {}
            policy = policies.get(spec.get("policyName"))
            if policy is None or "Deny" not in (spec.get("validationActions") or []):
                continue
            denial = self._review_policy(policy, str((binding.get("metadata") or {}).get("name")), write)
            if denial is not None:
                return denial
        return None

    def _review_policy(self, policy: JSON, binding: str, write: Write) -> Denial | None:
        spec = policy.get("spec") or {}
        constraints = spec.get("matchConstraints") or {}
        if constraints.get("namespaceSelector") or constraints.get("objectSelector") or spec.get("paramKind"):
            return None
        if not any(_rule_matches(rule, write) for rule in constraints.get("resourceRules") or []):
            return None
        name = str((policy.get("metadata") or {}).get("name"))
        try:
            return self._validate(spec, name, binding, write)
        except PolicyError as exc:
            if spec.get("failurePolicy", "Fail") == "Ignore":
                return None
            return Denial(403, "Forbidden", f"policy '{name}' with binding '{binding}' denied request: {exc}")

    def _validate(self, spec: JSON, name: str, binding: str, write: Write) -> Denial | None:
        activation: dict[str, Any] = {"request": write.request(), "object": write.obj, "oldObject": write.old}
        if not all(evaluate(c["expression"], activation) is True for c in spec.get("matchConditions") or []):
            return None
        variables: dict[str, Any] = {}
        activation["variables"] = variables
        for variable in spec.get("variables") or []:
            variables[variable["name"]] = evaluate(variable["expression"], activation)
        for validation in spec.get("validations") or []:
            if evaluate(validation["expression"], activation) is True:
                continue
            message = validation.get("message") or f"failed expression: {validation['expression']}"
            if validation.get("messageExpression"):
                message = str(evaluate(validation["messageExpression"], activation))
            reason = validation.get("reason") or "Invalid"
            text = f"ValidatingAdmissionPolicy '{name}' with binding '{binding}' denied request: {message}"
            return Denial(_CODES.get(reason, 422), reason, text)
        return None
