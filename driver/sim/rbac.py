"""Who is asking and what they may do: bearer tokens and RBAC, as kube-apiserver's RBAC authorizer decides.

A request authenticated with a token the server knows gets that token's :class:`UserInfo`; the admin (the
server's own token, or no token at all on a server without one) is in ``system:masters`` and may do
anything. Every other user is authorised with the ``rbac.authorization.k8s.io/v1`` objects applied to the
server (ClusterRoles, ClusterRoleBindings, Roles, RoleBindings), so a permission a chart forgets fails in
the sandbox as it would on a cluster. Discovery, ``/version`` and the health endpoints are open to every
authenticated user, as the default ``system:discovery`` and ``system:public-info-viewer`` roles allow.

Not modelled: aggregated ClusterRoles, impersonation, the Node authorizer, webhooks, and the extra check of
``resourceclaims/driver`` that 1.36+ makes when ``status.devices`` changes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from driver.kube.client import ResourceType
from driver.sim.status import resource_name

JSON = dict[str, Any]
RBAC_GROUP = "rbac.authorization.k8s.io"
CLUSTER_ROLES = ResourceType(RBAC_GROUP, "v1", "clusterroles", "ClusterRole", namespaced=False)
CLUSTER_ROLE_BINDINGS = ResourceType(RBAC_GROUP, "v1", "clusterrolebindings", "ClusterRoleBinding", False)
ROLES = ResourceType(RBAC_GROUP, "v1", "roles", "Role", namespaced=True)
ROLE_BINDINGS = ResourceType(RBAC_GROUP, "v1", "rolebindings", "RoleBinding", namespaced=True)
MASTERS = "system:masters"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


@dataclass(frozen=True)
class UserInfo:
    username: str
    groups: tuple[str, ...] = ("system:authenticated",)
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        return MASTERS in self.groups

    def as_request_user_info(self) -> JSON:
        """The ``request.userInfo`` an admission policy sees."""
        info: JSON = {"username": self.username, "groups": list(self.groups)}
        if self.extra:
            info["extra"] = {k: list(v) for k, v in self.extra.items()}
        return info


ADMIN = UserInfo("kubernetes-admin", (MASTERS, "system:authenticated"))


def service_account(namespace: str, name: str, node: str | None = None) -> UserInfo:
    """A service account's identity; ``node``: the node its pod runs on, as a bound token names it."""
    extra = {NODE_NAME_EXTRA: (node,)} if node else {}
    groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated")
    return UserInfo(f"system:serviceaccount:{namespace}:{name}", groups, extra)


@dataclass(frozen=True)
class Attributes:
    """What a resource request does, in RBAC's terms."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    name: str = ""
    namespace: str = ""

    @property
    def resource_path(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def verb_of(method: str, has_name: bool, watch: bool) -> str:
    if method in ("GET", "HEAD"):
        return "watch" if watch else ("get" if has_name else "list")
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if has_name else "deletecollection"
    return method.lower()


def _matches(values: Iterable[str], wanted: str) -> bool:
    return any(value in ("*", wanted) for value in values)


def rule_allows(rule: Mapping[str, Any], attrs: Attributes) -> bool:
    if not _matches(rule.get("verbs") or (), attrs.verb):
        return False
    if not _matches(rule.get("apiGroups") or (), attrs.group):
        return False
    resources = rule.get("resources") or ()
    wanted = attrs.resource_path
    if not any(
        r in ("*", wanted) or (r == f"*/{attrs.subresource}" and attrs.subresource) for r in resources
    ):
        return False
    names = rule.get("resourceNames") or ()
    return not names or attrs.name in names


def _subject_matches(subject: Mapping[str, Any], user: UserInfo, binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return bool(name == user.username)
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user.username == f"system:serviceaccount:{namespace}:{name}"
    return False


class Authorizer:
    """RBAC over the objects a store holds: ``lookup(kind_key, namespace)`` lists them."""

    def __init__(self, objects: Any) -> None:
        self._objects = objects

    def _list(self, rt: ResourceType, namespace: str | None = None) -> list[JSON]:
        result: list[JSON] = self._objects(f"{rt.plural}.{rt.group}", namespace)
        return result

    def _role_rules(self, ref: Mapping[str, Any], namespace: str) -> list[JSON]:
        kind, name = ref.get("kind"), ref.get("name")
        if kind == "ClusterRole":
            roles = self._list(CLUSTER_ROLES)
        elif kind == "Role":
            roles = self._list(ROLES, namespace)
        else:
            return []
        for role in roles:
            if (role.get("metadata") or {}).get("name") == name:
                return list(role.get("rules") or [])
        return []

    def allowed(self, user: UserInfo, attrs: Attributes) -> bool:
        if user.is_admin:
            return True
        bindings = [(b, "") for b in self._list(CLUSTER_ROLE_BINDINGS)]
        if attrs.namespace:
            bindings += [(b, attrs.namespace) for b in self._list(ROLE_BINDINGS, attrs.namespace)]
        for binding, namespace in bindings:
            if not any(_subject_matches(s, user, namespace) for s in binding.get("subjects") or []):
                continue
            rules = self._role_rules(binding.get("roleRef") or {}, namespace)
            if any(rule_allows(rule, attrs) for rule in rules):
                return True
        return False


def forbidden_message(user: UserInfo, attrs: Attributes) -> str:
    """kube-apiserver's text for a request RBAC denies."""
    qualified = resource_name(attrs.resource, attrs.group)
    if attrs.name:
        qualified += f' "{attrs.name}"'
    what = f'resource "{attrs.resource_path}" in API group "{attrs.group}"'
    where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    return f'{qualified} is forbidden: User "{user.username}" cannot {attrs.verb} {what} {where}'


def new_token() -> str:
    return secrets.token_urlsafe(24)
