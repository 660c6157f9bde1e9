"""The RBAC permissions each component needs, read from the code (not from a hand-kept list).

A static (AST) scan of the component's packages finds every :class:`driver.kube.client.KubeClient` call --
``get``, ``list``, ``watch``, ``create``, ``update``, ``patch``, ``delete``, ``delete_collection`` and the raw
``request`` / ``request_text`` with ``<TYPE>.path(...)`` -- and every list/watch helper it constructs
(:class:`driver.kube.listwatch.ListWatcher`: list and watch), and maps each to
``(apiGroup, resource[/sub], verb)``.
The arguments are bound to the client's real method signatures, so a positional ``subresource`` counts too.

A resource type passed through a variable is followed to where it comes from: a constructor parameter stored
on ``self`` (``ListWatch(kube, PODS, ...)``) or a function parameter, resolved at every call site. A kube call
whose resource type cannot be resolved is an error rather than a silent gap, so the chart's ClusterRoles can be
compared with the result exactly. ``python -m tests.support.rbac`` prints the rules.

One permission is checked by the API server although the code makes no call for it: since Kubernetes 1.36
(DRAResourceClaimGranularStatusAuthorization) a write of a claim's ``status.devices`` also needs
``resourceclaims/driver`` with ``associated-node:patch`` / ``associated-node:update`` on the driver's name
(:data:`GRANULAR_STATUS`), which is derived from the code's writes of ``resourceclaims/status``.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver import DEFAULT_DRIVER_NAME
from driver.kube import client as kube_client
from driver.kube import listwatch
from tests.support.paths import REPO

ROOT = REPO

#: Component -> the packages whose API calls run under its identity (driver/sim and driver/conformance are
#: not deployed; the user-run CLIs use the user's kubeconfig).
COMPONENTS: Mapping[str, tuple[str, ...]] = {
    "plugin": ("driver/plugin", "driver/state", "driver/resources"),
    "exporter": ("driver/exporter",),
}

VERBS: Mapping[str, str] = {
    "get": "get",
    "list": "list",
    "watch": "watch",
    "create": "create",
    "update": "update",
    "patch": "patch",
    "delete": "delete",
    "delete_collection": "deletecollection",
}
RAW_METHODS = ("request", "request_text")
#: The list/watch helper: constructing one with a resource type lists and watches that type.
LIST_WATCH_HELPERS: Mapping[str, Any] = {"ListWatcher": listwatch.ListWatcher}
_KUBE_RECEIVER = re.compile(r"(^|\.)_?kube(_client)?$")
_MAX_DEPTH = 4


class ScanError(Exception):
    """A KubeClient call whose resource type or subresource cannot be determined statically."""


@dataclass(frozen=True, order=True)
class Permission:
    group: str
    resource: str  # plural, or plural/subresource
    verb: str
    name: str = ""  # a resourceNames entry; "" for every object

    def __str__(self) -> str:
        named = f"[{self.name}]" if self.name else ""
        return f"{self.group or 'core'}/{self.resource}{named}:{self.verb}"


#: Writing a claim's ``status.devices`` (a patch or update of ``resourceclaims/status``) needs these on
#: ``resourceclaims/driver`` for the driver's own name -- both verbs, as upstream's example driver grants
#: them, for claims allocated on the node the writer's token is bound to (associated-node).
GRANULAR_STATUS = ("associated-node:patch", "associated-node:update")


def granular_status_permissions(permissions: Iterable[Permission], driver: str) -> set[Permission]:
    writes_status = any(
        p.group == "resource.k8s.io"
        and p.resource == "resourceclaims/status"
        and p.verb in ("patch", "update")
        for p in permissions
    )
    if not writes_status:
        return set()
    return {Permission("resource.k8s.io", "resourceclaims/driver", verb, driver) for verb in GRANULAR_STATUS}


def resource_types() -> dict[str, kube_client.ResourceType]:
    return {
        name: value
        for name, value in vars(kube_client).items()
        if isinstance(value, kube_client.ResourceType)
    }


@dataclass
class _Module:
    name: str  # the file, for messages
    tree: ast.Module
    #: local name -> ResourceType constant name, from ``from driver.kube.client import X [as Y]``
    constants: dict[str, str] = field(default_factory=dict)
    #: local module aliases of driver.kube.client (``import driver.kube.client as kc``)
    client_aliases: set[str] = field(default_factory=set)
    parents: dict[ast.AST, ast.AST] = field(default_factory=dict)


@dataclass(frozen=True)
class _Indirect:
    """The value of parameter ``param`` (``index`` positional, self excluded) of callable ``callee``."""

    callee: str
    param: str
    index: int


def _load(path: Path, root: Path, known: Mapping[str, Any]) -> _Module:
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _Module(str(path.relative_to(root)), tree)
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            module.parents[child] = node
        if isinstance(node, ast.ImportFrom) and node.module == "driver.kube.client":
            for alias in node.names:
                if alias.name in known:
                    module.constants[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module == "driver.kube":
            module.client_aliases.update(a.asname or a.name for a in node.names if a.name == "client")
        elif isinstance(node, ast.Import):
            module.client_aliases.update(
                a.asname for a in node.names if a.name == "driver.kube.client" and a.asname
            )
    return module


def _enclosing(module: _Module, node: ast.AST, kind: type | tuple[type, ...]) -> Any:
    current = module.parents.get(node)
    while current is not None and not isinstance(current, kind):
        current = module.parents.get(current)
    return current


def _constant(module: _Module, expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return module.constants.get(expr.id)
    if (
        isinstance(expr, ast.Attribute)
        and isinstance(expr.value, ast.Name)
        and expr.value.id in module.client_aliases
    ):
        return expr.attr
    return None


def _params(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names = [a.arg for a in (*func.args.posonlyargs, *func.args.args)]
    return names[1:] if names and names[0] in ("self", "cls") else names


def _init_param_for_attribute(cls: ast.ClassDef, attr: str) -> str | None:
    """``self.<attr> = <param>`` in ``__init__`` -> the parameter's name."""
    for item in cls.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            params = set(_params(item))
            for stmt in ast.walk(item):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else []
                if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                    targets = [stmt.target]
                value = getattr(stmt, "value", None)
                for target in targets:
                    if (
                        isinstance(target, ast.Attribute)
                        and isinstance(target.value, ast.Name)
                        and target.value.id == "self"
                        and target.attr == attr
                        and isinstance(value, ast.Name)
                        and value.id in params
                    ):
                        return value.id
    return None


def _resolve(module: _Module, expr: ast.expr, at: ast.AST) -> str | _Indirect:
    """A ResourceType constant name, or where the value comes from; raises ScanError when neither is known."""
    const = _constant(module, expr)
    if const is not None:
        return const
    where = f"{module.name}:{getattr(at, 'lineno', '?')}"
    func = _enclosing(module, at, (ast.FunctionDef, ast.AsyncFunctionDef))
    if (
        isinstance(expr, ast.Attribute)
        and isinstance(expr.value, ast.Name)
        and expr.value.id == "self"
        and (cls := _enclosing(module, at, ast.ClassDef)) is not None
    ):
        param = _init_param_for_attribute(cls, expr.attr)
        if param is not None:
            init = next(i for i in cls.body if isinstance(i, ast.FunctionDef) and i.name == "__init__")
            return _Indirect(cls.name, param, _params(init).index(param))
    if isinstance(expr, ast.Name) and func is not None and expr.id in _params(func):
        callee = func.name
        if callee == "__init__" and (cls := _enclosing(module, at, ast.ClassDef)) is not None:
            callee = cls.name  # a constructor parameter: resolved where the class is constructed
        return _Indirect(callee, expr.id, _params(func).index(expr.id))
    raise ScanError(f"{where}: cannot tell which resource type {ast.unparse(expr)!r} is")


def _calls_to(modules: Iterable[_Module], callee: str) -> Iterator[tuple[_Module, ast.Call]]:
    for module in modules:
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else None
            )
            if name == callee:
                yield module, node


def _argument(call: ast.Call, ref: _Indirect) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == ref.param:
            return kw.value
    return call.args[ref.index] if ref.index < len(call.args) else None


def _constants_for(
    modules: list[_Module], module: _Module, expr: ast.expr, at: ast.AST, depth: int = 0
) -> set[str]:
    resolved = _resolve(module, expr, at)
    if isinstance(resolved, str):
        return {resolved}
    if depth >= _MAX_DEPTH:
        raise ScanError(f"{module.name}: resource type passed through too many calls")
    found: set[str] = set()
    for caller_module, call in _calls_to(modules, resolved.callee):
        arg = _argument(call, resolved)
        if arg is not None:
            found |= _constants_for(modules, caller_module, arg, call, depth + 1)
    if not found:
        raise ScanError(
            f"{module.name}:{getattr(at, 'lineno', '?')}: no call of {resolved.callee} "
            f"passes a resource type as {resolved.param!r}"
        )
    return found


def _bind(method: str, call: ast.Call) -> inspect.BoundArguments:
    signature = inspect.signature(getattr(kube_client.KubeClient, method))
    return signature.bind(None, *call.args, **{kw.arg: kw.value for kw in call.keywords if kw.arg})


def _subresource(module: _Module, expr: ast.expr | None) -> str:
    if expr is None or (isinstance(expr, ast.Constant) and expr.value is None):
        return ""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value
    raise ScanError(f"{module.name}:{expr.lineno}: subresource {ast.unparse(expr)!r} is not a literal")


def _is_kube_receiver(expr: ast.expr) -> bool:
    return bool(_KUBE_RECEIVER.search(ast.unparse(expr)))


def _raw_permissions(modules: list[_Module], module: _Module, call: ast.Call) -> set[tuple[str, str, str]]:
    """``kube.request("GET", RESOURCE_CLAIMS.path(ns, name, "status"))`` and the like."""
    method_name = call.func.attr  # type: ignore[attr-defined]
    bound = _bind(method_name, call)
    method, path = bound.arguments.get("method"), bound.arguments.get("path")
    where = f"{module.name}:{call.lineno}"
    if not (
        isinstance(method, ast.Constant)
        and isinstance(path, ast.Call)
        and isinstance(path.func, ast.Attribute)
    ):
        raise ScanError(f"{where}: raw {method_name} needs a literal method and a <TYPE>.path(...) path")
    if path.func.attr != "path":
        raise ScanError(f"{where}: raw {method_name} path is not <TYPE>.path(...)")
    path_args = inspect.signature(kube_client.ResourceType.path).bind(
        None, *path.args, **{kw.arg: kw.value for kw in path.keywords if kw.arg}
    )
    name = path_args.arguments.get("name")
    named = name is not None and not (isinstance(name, ast.Constant) and name.value is None)
    verb = {
        "GET": "get" if named else "list",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if named else "deletecollection",
    }.get(str(method.value).upper())
    if verb is None:
        raise ScanError(f"{where}: unknown HTTP method {method.value!r}")
    sub = _subresource(module, path_args.arguments.get("subresource"))
    return {(c, sub, verb) for c in _constants_for(modules, module, path.func.value, call)}


def _helper_permissions(modules: list[_Module], module: _Module, call: ast.Call) -> set[tuple[str, str, str]]:
    """``ListWatcher(kube, NODES, ...)``: list and watch of the type, resolved like a direct call's."""
    name = call.func.id if isinstance(call.func, ast.Name) else call.func.attr  # type: ignore[attr-defined]
    bound = inspect.signature(LIST_WATCH_HELPERS[name]).bind(
        *call.args, **{kw.arg: kw.value for kw in call.keywords if kw.arg}
    )
    rt = bound.arguments.get("rt")
    if rt is None:
        raise ScanError(f"{module.name}:{call.lineno}: {name}(...) has no resource type")
    return {(c, "", verb) for c in _constants_for(modules, module, rt, call) for verb in ("list", "watch")}


def _call_permissions(modules: list[_Module], module: _Module, call: ast.Call) -> set[tuple[str, str, str]]:
    func = call.func
    helper = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    if helper in LIST_WATCH_HELPERS:
        return _helper_permissions(modules, module, call)
    if not isinstance(func, ast.Attribute):
        return set()
    if func.attr in RAW_METHODS and _is_kube_receiver(func.value):
        return _raw_permissions(modules, module, call)
    if func.attr not in VERBS:
        return set()
    first = call.args[0] if call.args else next((kw.value for kw in call.keywords if kw.arg == "rt"), None)
    direct = first is not None and _constant(module, first) is not None
    if not direct and not _is_kube_receiver(func.value):
        return set()  # dict.get(...), not an API call
    if first is None:
        raise ScanError(f"{module.name}:{call.lineno}: {ast.unparse(call)} has no resource type")
    bound = _bind(func.attr, call)
    sub = _subresource(module, bound.arguments.get("subresource"))
    return {(c, sub, VERBS[func.attr]) for c in _constants_for(modules, module, first, call)}


def _modules(packages: Iterable[str], root: Path) -> list[_Module]:
    known = resource_types()
    return [
        _load(path, root, known) for package in packages for path in sorted((root / package).rglob("*.py"))
    ]


def scan(packages: Iterable[str], root: Path = ROOT) -> set[Permission]:
    """Every permission the code in ``packages`` (paths relative to ``root``) uses."""
    modules = _modules(packages, root)
    known = resource_types()
    found: set[Permission] = set()
    for module in modules:
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Call):
                for const, sub, verb in _call_permissions(modules, module, node):
                    rt = known[const]
                    found.add(Permission(rt.group, f"{rt.plural}/{sub}" if sub else rt.plural, verb))
    return found


def component_permissions(driver: str = DEFAULT_DRIVER_NAME) -> dict[str, set[Permission]]:
    """What each component's identity needs: its code's calls, plus the granular status permission for
    the driver named ``driver`` where the code writes claim status."""
    out = {}
    for name, packages in COMPONENTS.items():
        found = scan(packages)
        out[name] = found | granular_status_permissions(found, driver)
    return out


def permissions_of_rules(rules: Iterable[Mapping[str, Any]]) -> set[Permission]:
    """Expand RBAC ``rules`` (apiGroups x resources x verbs [x resourceNames]) into permissions."""
    out: set[Permission] = set()
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for name in rule.get("resourceNames") or [""]:
                    out |= {Permission(group, resource, verb, name) for verb in rule.get("verbs", [])}
    return out


def rules_of(permissions: Iterable[Permission]) -> list[dict[str, Any]]:
    """Compact RBAC rules: one per (group, resource, name), verbs sorted."""
    by_resource: dict[tuple[str, str, str], set[str]] = {}
    for p in permissions:
        by_resource.setdefault((p.group, p.resource, p.name), set()).add(p.verb)
    rules: list[dict[str, Any]] = []
    for (group, resource, name), verbs in sorted(by_resource.items()):
        rule: dict[str, Any] = {"apiGroups": [group], "resources": [resource]}
        if name:
            rule["resourceNames"] = [name]
        rules.append({**rule, "verbs": sorted(verbs)})
    return rules


def main() -> int:
    import yaml

    doc = {name: rules_of(perms) for name, perms in component_permissions().items()}
    yaml.safe_dump(doc, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
