"""DRA CEL device selectors, evaluated with cel-python plus the Kubernetes extensions DRA relies on.

kube-scheduler evaluates each ``DeviceClass`` / request selector against one device at a time, with a
single variable ``device``:

- ``device.driver`` (string), ``device.allowMultipleAllocations`` (bool);
- ``device.attributes[DOMAIN].NAME``: attributes grouped by domain. An unqualified attribute name belongs to
  the device's driver domain; ``resource.kubernetes.io/numaNode`` is ``device.attributes
  ["resource.kubernetes.io"].numaNode``. Version attributes are semver objects;
- ``device.capacity[DOMAIN].NAME``: capacities as Quantity objects;
- an unknown domain reads as an empty map, so ``has(...)`` and ``in`` are false rather than errors.

Extensions: the Kubernetes quantity and semver functions (:mod:`driver.allocation.cellib`) and the
``cel.bind(name, value, expr)`` macro.

cel-python has no type checker, so unknown functions, unknown variables and unknown ``device`` fields are
rejected by a walk over the parse tree at compile time (the scheduler's checker rejects them too); type
mismatches surface at evaluation. A runtime error is reported with the expression and the device.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import celpy
import lark
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, CELUnsupportedError, Evaluator, Result, base_functions

from driver.allocation.cellib import FUNCTIONS, Quantity, Semver, type_name

MAX_EXPRESSION_BYTES = 10 * 1024  # the API server's limit for one selector

DEVICE_FIELDS = ("driver", "attributes", "capacity", "allowMultipleAllocations")
_MACROS = frozenset({"map", "filter", "all", "exists", "exists_one"})
_Tree = lark.Tree[Any]
_TYPE_NAMES = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)


# -- errors ---------------------------------------------------------------------------------------------


class CelError(Exception):
    """A selector that cannot be used: it does not compile, or it failed on a device."""

    def __init__(self, expression: str, detail: str) -> None:
        super().__init__(detail)
        self.expression = expression
        self.detail = detail


class CelCompileError(CelError):
    """The expression is not valid DRA CEL; ``line``/``column`` (1-based) point at the problem."""

    def __init__(self, expression: str, detail: str, line: int | None = None, column: int | None = None):
        super().__init__(expression, detail)
        self.line = line
        self.column = column

    def __str__(self) -> str:
        where = f" at line {self.line}, column {self.column}" if self.line is not None else ""
        return f"CEL compile error in `{self.expression}`{where}: {self.detail}"


class CelRuntimeError(CelError):
    """Evaluating the expression for ``device`` failed (e.g. a missing attribute read without ``has``)."""

    def __init__(self, expression: str, device: str, detail: str) -> None:
        super().__init__(expression, detail)
        self.device = device

    def __str__(self) -> str:
        return f"CEL runtime error in `{self.expression}` on device {self.device}: {self.detail}"


# -- the `device` variable --------------------------------------------------------------------------------


_KNOWN_FUNCTIONS = frozenset(base_functions) | frozenset(FUNCTIONS) | {"has", "dyn"}


class _DomainMap(celtypes.MapType):
    """``device.attributes`` / ``device.capacity``: an unknown domain is an empty map, not an error."""

    def __getitem__(self, key: Any) -> Any:
        try:
            return super().__getitem__(key)
        except KeyError:
            return celtypes.MapType()


def split_qualified_name(name: str, driver: str) -> tuple[str, str]:
    """``domain/id`` -> (domain, id); an unqualified name belongs to the driver's domain."""
    domain, sep, ident = name.partition("/")
    return (domain, ident) if sep else (driver, name)


def attribute_value(attribute: Mapping[str, Any]) -> Any:
    """The CEL value of one DRA ``DeviceAttribute``; ``ValueError`` when it has none we understand."""
    if not isinstance(attribute, Mapping):
        raise ValueError("not a DeviceAttribute object")
    if isinstance(attribute.get("int"), int) and not isinstance(attribute.get("int"), bool):
        return celtypes.IntType(attribute["int"])
    if isinstance(attribute.get("bool"), bool):
        return celtypes.BoolType(attribute["bool"])
    if isinstance(attribute.get("string"), str):
        return celtypes.StringType(attribute["string"])
    if isinstance(attribute.get("version"), str):
        try:
            return Semver.parse(attribute["version"])
        except ValueError as exc:
            raise ValueError(f"parse semantic version: {exc}") from None
    raise ValueError("unsupported attribute value")


@dataclass(frozen=True)
class DeviceActivation:
    """The ``device`` variable for one device, built once and reused for every selector."""

    id: str
    value: celtypes.MapType | None
    error: str | None = None


def device_activation(
    driver: str, device: Mapping[str, Any], device_id: str | None = None
) -> DeviceActivation:
    """Build ``device`` from a ``resource.k8s.io/v1`` ``Device`` entry of a slice published by ``driver``.

    A malformed attribute or capacity does not raise here: like the scheduler, it becomes an evaluation
    error of every selector run against the device.
    """
    ident = device_id or f"{driver}/{device.get('name', '?')}"
    attributes: dict[str, dict[str, Any]] = {}
    capacity: dict[str, dict[str, Any]] = {}
    try:
        for name, attribute in (device.get("attributes") or {}).items():
            domain, key = split_qualified_name(name, driver)
            try:
                attributes.setdefault(domain, {})[key] = attribute_value(attribute)
            except ValueError as exc:
                raise ValueError(f"attribute {name}: {exc}") from None
        for name, entry in (device.get("capacity") or {}).items():
            domain, key = split_qualified_name(name, driver)
            raw = entry.get("value") if isinstance(entry, Mapping) else None
            try:
                capacity.setdefault(domain, {})[key] = Quantity.parse(str(raw))
            except ValueError as exc:
                raise ValueError(f"capacity {name}: {exc}") from None
    except ValueError as exc:
        return DeviceActivation(ident, None, str(exc))
    value = celtypes.MapType(
        {
            celtypes.StringType("driver"): celtypes.StringType(driver),
            celtypes.StringType("attributes"): _DomainMap(_cel_maps(attributes)),
            celtypes.StringType("capacity"): _DomainMap(_cel_maps(capacity)),
            celtypes.StringType("allowMultipleAllocations"): celtypes.BoolType(
                bool(device.get("allowMultipleAllocations"))
            ),
        }
    )
    return DeviceActivation(ident, value)


def _cel_maps(grouped: Mapping[str, Mapping[str, Any]]) -> dict[celtypes.StringType, celtypes.MapType]:
    return {
        celtypes.StringType(domain): celtypes.MapType({celtypes.StringType(k): v for k, v in values.items()})
        for domain, values in grouped.items()
    }


# -- evaluation with cel.bind ------------------------------------------------------------------------------


class _Evaluator(Evaluator):
    """cel-python's interpreter plus the ``cel.bind(var, init, expr)`` macro Kubernetes enables."""

    def sub_evaluator(self, ast: _Tree) -> Evaluator:
        return _Evaluator(ast, activation=self.activation)

    def member_dot_arg(self, tree: _Tree) -> Result:
        if _is_bind(tree):
            var_tree, init_tree, body_tree = cast(_Tree, tree.children[2]).children
            value = self.visit(cast(_Tree, init_tree))
            if isinstance(value, CELEvalError):
                return value
            nested = self.sub_evaluator(cast(_Tree, body_tree))
            try:
                result: Result = nested.evaluate({_single_ident(cast(_Tree, var_tree)) or "": value})
            except CELEvalError as exc:
                return exc
            return result
        return cast(Result, super().member_dot_arg(tree))


class _Runner(celpy.InterpretedRunner):
    def evaluate(self, context: Any) -> celtypes.Value:
        return _Evaluator(ast=self.ast, activation=self.new_activation()).evaluate(context)


def _is_bind(tree: _Tree) -> bool:
    if tree.data != "member_dot_arg" or len(tree.children) != 3:
        return False
    receiver, name = tree.children[0], tree.children[1]
    args = cast(_Tree, tree.children[2]).children
    return (
        isinstance(name, lark.Token)
        and name.value == "bind"
        and _single_ident(cast(_Tree, receiver)) == "cel"
        and len(args) == 3
        and _single_ident(cast(_Tree, args[0])) is not None
    )


def _single_ident(tree: _Tree) -> str | None:
    """The name when ``tree`` is nothing but one identifier (``x`` wrapped in grammar levels)."""
    node: Any = tree
    while isinstance(node, lark.Tree):
        if node.data == "ident":
            return str(node.children[0])
        if len(node.children) != 1:
            return None
        node = node.children[0]
    return None


# -- compile-time checks -----------------------------------------------------------------------------------


def _walk(tree: _Tree) -> Iterator[_Tree]:
    yield tree
    for child in tree.children:
        if isinstance(child, lark.Tree):
            yield from _walk(child)


def _bound_names(ast: _Tree) -> set[str]:
    names: set[str] = set()
    for node in _walk(ast):
        if node.data != "member_dot_arg" or len(node.children) != 3:
            continue
        method = node.children[1]
        if isinstance(method, lark.Token) and (method.value in _MACROS or _is_bind(node)):
            args = cast(_Tree, node.children[2]).children
            if args and (name := _single_ident(cast(_Tree, args[0]))):
                names.add(name)
    return names


def _check_tree(expression: str, ast: _Tree) -> None:
    """Reject what the scheduler's type checker rejects and cel-python would only notice at run time."""
    allowed = {"device"} | _TYPE_NAMES | _bound_names(ast)
    # The `cel` of `cel.bind(...)` is the only place the identifier `cel` may appear.
    bind_receivers = {
        id(ident)
        for node in _walk(ast)
        if _is_bind(node)
        for ident in _walk(cast(_Tree, node.children[0]))
        if ident.data == "ident"
    }
    for node in _walk(ast):
        if id(node) not in bind_receivers:
            _check_node(expression, node, allowed)


def _check_node(expression: str, node: _Tree, allowed: set[str]) -> None:
    problem: str | None = None
    token: lark.Token | None = None
    if node.data == "ident":
        token = cast(lark.Token, node.children[0])
        if token.value not in allowed:
            problem = f"undeclared reference to '{token.value}'"
    elif node.data == "ident_arg":
        token = cast(lark.Token, node.children[0])
        if token.value not in _KNOWN_FUNCTIONS:
            problem = f"undeclared reference to function '{token.value}'"
    elif node.data == "member_dot_arg":
        token = cast(lark.Token, node.children[1])
        if token.value not in _KNOWN_FUNCTIONS and token.value not in _MACROS and not _is_bind(node):
            problem = f"undeclared reference to method '{token.value}'"
    elif node.data == "member_dot" and _single_ident(cast(_Tree, node.children[0])) == "device":
        token = cast(lark.Token, node.children[1])
        if token.value not in DEVICE_FIELDS:
            problem = f"undefined field '{token.value}' (device has {', '.join(DEVICE_FIELDS)})"
    if problem and token is not None:
        raise CelCompileError(expression, problem, token.line, token.column)


# -- compiled selectors -------------------------------------------------------------------------------------


class CompiledExpression:
    """One selector, parsed and checked once; evaluate it against any number of devices."""

    def __init__(self, expression: str, program: celpy.Runner) -> None:
        self.expression = expression
        self._program = program

    def evaluate(self, device: DeviceActivation) -> bool:
        """True when the device matches; :class:`CelRuntimeError` when evaluation fails."""
        if device.value is None:
            raise CelRuntimeError(self.expression, device.id, device.error or "invalid device")
        try:
            result = self._program.evaluate({"device": device.value})
        except CELEvalError as exc:
            raise CelRuntimeError(self.expression, device.id, _eval_message(exc)) from None
        except CELUnsupportedError as exc:
            raise CelRuntimeError(self.expression, device.id, f"unsupported: {exc}") from None
        except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError, RecursionError) as exc:
            raise CelRuntimeError(self.expression, device.id, f"evaluation failed: {exc}") from None
        if not isinstance(result, celtypes.BoolType):
            raise CelRuntimeError(
                self.expression, device.id, f"must evaluate to bool, not {type_name(result)} ({result!s})"
            )
        return bool(result)


_OVERLOAD_RE = re.compile(r"found no matching overload for Token\('RULE', '(\w+)'\) applied to '\((.*)\)'")
_CLASS_RE = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")
_OPERATORS = {
    "relation_lt": "<", "relation_le": "<=", "relation_gt": ">", "relation_ge": ">=", "relation_eq": "==",
    "relation_ne": "!=", "relation_in": "in", "addition_add": "+", "addition_sub": "-",
    "multiplication_mul": "*", "multiplication_div": "/", "multiplication_mod": "%",
}  # fmt: skip


def _eval_message(exc: CELEvalError) -> str:
    text = str(exc.args[0]) if exc.args else str(exc)
    text = text.split(" (in activation", 1)[0]  # cel-python appends a dump of every variable
    overload = _OVERLOAD_RE.search(text)
    if overload:
        kinds = ", ".join(_friendly_type(name) for name in _CLASS_RE.findall(overload.group(2)))
        return f"no matching overload for '{_OPERATORS.get(overload.group(1), overload.group(1))}' applied to ({kinds})"
    cause = exc.args[2] if len(exc.args) > 2 else None
    if text == "no such overload" and isinstance(cause, tuple) and cause:
        return str(cause[0])
    return text


def _friendly_type(class_name: str) -> str:
    return class_name.removesuffix("Type").lower()


_lock = threading.Lock()
_cache: dict[str, CompiledExpression | CelCompileError] = {}
_environment: list[celpy.Environment] = []  # created on first use: building the parser takes a while


def compile_expression(expression: str) -> CompiledExpression:
    """Parse and check ``expression`` (cached by its text); :class:`CelCompileError` when invalid."""
    with _lock:
        cached = _cache.get(expression)
    if cached is None:
        cached = _compile(expression)
        with _lock:
            _cache[expression] = cached
    if isinstance(cached, CelCompileError):
        raise cached
    return cached


def _compile(expression: str) -> CompiledExpression | CelCompileError:
    if len(expression.encode()) > MAX_EXPRESSION_BYTES:
        return CelCompileError(expression, f"longer than {MAX_EXPRESSION_BYTES} bytes")
    if not expression.strip():
        return CelCompileError(expression, "expression must not be empty")
    if not _environment:
        _environment.append(celpy.Environment(runner_class=_Runner))
    environment = _environment[0]
    try:
        ast = environment.compile(expression)
        _check_tree(expression, ast)
    except CELParseError as exc:
        return CelCompileError(
            expression, _syntax_detail(expression, exc.line, exc.column), exc.line, exc.column
        )
    except CelCompileError as exc:
        return exc
    return CompiledExpression(expression, environment.program(ast, functions=dict(FUNCTIONS)))


def _syntax_detail(expression: str, line: int | None, column: int | None) -> str:
    lines = expression.splitlines() or [""]
    if line is None or column is None or line > len(lines):
        return "syntax error"
    rest = lines[line - 1][column - 1 :].strip()
    return f"syntax error: unexpected `{rest[:20]}`" if rest else "syntax error: unexpected end of expression"


# -- what a selector saw (for explanations) --------------------------------------------------------------------

_REFERENCE_RE = re.compile(
    r"""device\s*\.\s*(attributes|capacity)\s*\[\s*(?:"([^"]*)"|'([^']*)')\s*\]\s*\.\s*([A-Za-z_]\w*)"""
)


def referenced_values(expression: str, driver: str, device: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The device values an expression reads, as (name, shown value): ``[("memory", "23034Mi")]``.

    Names in the driver's own domain are shown bare, others qualified; an absent value shows as
    ``<unset>``. Found by pattern, so values read through ``cel.bind`` aliases are not listed.
    """
    seen: list[tuple[str, str]] = []
    if re.search(r"device\s*\.\s*driver\b", expression):
        seen.append(("driver", json.dumps(driver)))
    for match in _REFERENCE_RE.finditer(expression):
        kind, domain, ident = match.group(1), match.group(2) or match.group(3) or "", match.group(4)
        label = ident if domain == driver else f"{domain}/{ident}"
        values: Mapping[str, Any] = device.get(kind) or {}
        raw = values.get(f"{domain}/{ident}", values.get(ident) if domain == driver else None)
        shown = _show(kind, raw)
        if (label, shown) not in seen:
            seen.append((label, shown))
    return seen


def _show(kind: str, raw: Any) -> str:
    if not isinstance(raw, Mapping):
        return "<unset>"
    if kind == "capacity":
        return str(raw.get("value"))
    for key in ("string", "int", "bool", "version"):
        if key in raw:
            return json.dumps(raw[key]) if key in ("string", "bool") else str(raw[key])
    return "<unset>"
