"""What :mod:`driver.cel.selectors` reads from a type-checked expression's syntax tree.

cel-expr-python hands out the checked tree (``Expression.serialize()``, a ``cel.expr.CheckedExpr``), decoded
with the messages of ``proto/cel/v1/ast.proto``. From it:

- :func:`library_misuse`: what the Kubernetes type checker rejects and cel-expr-python accepts, because the
  library values here are protobuf messages: field selection on them (``quantity("1").value``), building
  them as messages (``kubernetes.Quantity{...}``), and list or map literals mixing element types;
- :func:`domain_lookups`: the ``device.attributes`` / ``device.capacity`` domains an expression looks up by
  a constant name (an unknown domain reads as an empty map upstream);
- :func:`estimated_cost`: a worst-case cost in CEL's cost units, for the scheduler's runtime limit and the
  API server's "too complex" check;
- :func:`device_reads`: which parts of ``device`` an expression reads, when the tree tells, so results can be
  shared between devices with the same values there.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf import any_pb2

from driver._proto.cel.v1 import ast_pb2

Expr = ast_pb2.Expr
Type = ast_pb2.Type

LIBRARY_TYPES = (
    "kubernetes.Quantity",
    "kubernetes.Semver",
    "kubernetes.URL",
    "kubernetes.IP",
    "kubernetes.CIDR",
)
DOMAIN_MAPS = ("device.attributes", "device.capacity")


def decode(serialized: bytes) -> ast_pb2.CheckedExpr:
    wrapper = any_pb2.Any()
    wrapper.ParseFromString(serialized)
    checked = ast_pb2.CheckedExpr()
    checked.ParseFromString(wrapper.value)
    return checked


def children(expr: Expr) -> Iterator[Expr]:
    kind = expr.WhichOneof("expr_kind")
    if kind == "select_expr":
        yield expr.select_expr.operand
    elif kind == "call_expr":
        if expr.call_expr.HasField("target"):
            yield expr.call_expr.target
        yield from expr.call_expr.args
    elif kind == "list_expr":
        yield from expr.list_expr.elements
    elif kind == "struct_expr":
        for entry in expr.struct_expr.entries:
            if entry.HasField("map_key"):
                yield entry.map_key
            yield entry.value
    elif kind == "comprehension_expr":
        c = expr.comprehension_expr
        yield from (c.iter_range, c.accu_init, c.loop_condition, c.loop_step, c.result)


def walk(expr: Expr) -> Iterator[Expr]:
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(list(children(node))))


def type_text(t: Type) -> str:
    """A type as CEL's error messages write it."""
    kind = t.WhichOneof("type_kind")
    if kind == "primitive":
        return {1: "bool", 2: "int", 3: "uint", 4: "double", 5: "string", 6: "bytes"}.get(t.primitive, "?")
    if kind == "list_type":
        return f"list({type_text(t.list_type.elem_type)})"
    if kind == "map_type":
        return f"map({type_text(t.map_type.key_type)}, {type_text(t.map_type.value_type)})"
    if kind == "message_type":
        return t.message_type
    if kind == "well_known":
        return {1: "any", 2: "google.protobuf.Timestamp", 3: "google.protobuf.Duration"}.get(
            t.well_known, "?"
        )
    if kind == "abstract_type":
        return t.abstract_type.name
    if kind == "null":
        return "null_type"
    return {"dyn": "dyn", "type": "type", "type_param": t.type_param, "error": "*error*"}.get(
        kind or "", "dyn"
    )


@dataclass(frozen=True)
class Problem:
    """A compile error found in the tree: the message and the source offset it points at."""

    message: str
    offset: int


def library_misuse(checked: ast_pb2.CheckedExpr) -> Problem | None:
    positions = checked.source_info.positions
    # Kubernetes' literal validators skip what is passed to format(): "%s-%d".format(["a", 1]) is fine.
    formatted = {
        inner.id
        for node in walk(checked.expr)
        if node.WhichOneof("expr_kind") == "call_expr" and node.call_expr.function == "format"
        for arg in node.call_expr.args
        for inner in walk(arg)
    }
    for node in walk(checked.expr):
        if node.id in formatted:
            continue
        kind = node.WhichOneof("expr_kind")
        if kind == "select_expr" and not node.select_expr.test_only:
            operand_type = checked.type_map[node.select_expr.operand.id]
            if (
                operand_type.WhichOneof("type_kind") == "message_type"
                and operand_type.message_type in LIBRARY_TYPES
            ):
                return Problem(
                    f"type '{operand_type.message_type}' does not support field selection", positions[node.id]
                )
        elif kind == "struct_expr" and node.struct_expr.message_name:
            return Problem(f"undeclared reference to '{node.struct_expr.message_name}'", positions[node.id])
        elif kind in ("list_expr", "struct_expr"):
            problem = _mixed_literal(checked, node)
            if problem:
                return problem
        elif kind == "call_expr" and node.call_expr.function in REGEX_FUNCTIONS:
            regex_problem = _regex_literal(node)
            if regex_problem:
                return Problem(regex_problem, positions[node.id])
    return None


REGEX_FUNCTIONS = ("matches", "find", "findAll")


def _regex_literal(node: Expr) -> str | None:
    # A constant pattern that does not compile is a compile error upstream (literal validation for
    # matches(), program creation for the Kubernetes regex functions).
    pattern = node.call_expr.args[0] if node.call_expr.args else None
    if pattern is None or pattern.WhichOneof("expr_kind") != "const_expr":
        return None
    if pattern.const_expr.WhichOneof("constant_kind") != "string_value":
        return None
    try:
        re.compile(pattern.const_expr.string_value)
    except re.error as exc:
        if node.call_expr.function == "matches":
            return f"invalid matches argument: {exc}"
        return f"program instantiation failed: error parsing regexp: {exc}"
    return None


def _mixed_literal(checked: ast_pb2.CheckedExpr, node: Expr) -> Problem | None:
    # Kubernetes type-checks with homogeneous aggregate literals: [1, "a"] is an error, [1, dyn("a")] is not.
    if node.WhichOneof("expr_kind") == "list_expr":
        groups = [
            [e for i, e in enumerate(node.list_expr.elements) if i not in node.list_expr.optional_indices]
        ]
    else:
        groups = [[e.map_key for e in node.struct_expr.entries], [e.value for e in node.struct_expr.entries]]
    for group in groups:
        first: str | None = None
        for element in group:
            t = checked.type_map[element.id]
            if t.WhichOneof("type_kind") in ("dyn", "error", "type_param", None):
                continue
            text = type_text(t)
            if first is None:
                first = text
            elif text != first:
                return Problem(
                    f"expected type '{first}' but found '{text}'", checked.source_info.positions[element.id]
                )
    return None


DOMAIN_FUNCTION = "@dra_domain"
DOMAIN_OVERLOAD = "dra_domain"


def redirect_domain_lookups(checked: ast_pb2.CheckedExpr) -> bytes:
    """The tree, serialized, with every ``device.attributes[D]`` / ``device.capacity[D]`` (and ``.D``) turned
    into a call of :data:`DOMAIN_FUNCTION`, which answers an empty map for a domain the device lacks, as
    upstream's map does. ``in``, ``size()`` and iteration still see the real map."""
    next_id = max((node.id for node in walk(checked.expr)), default=0) + 1
    for node in walk(checked.expr):
        kind = node.WhichOneof("expr_kind")
        if (
            kind == "call_expr"
            and node.call_expr.function == "_[_]"
            and _is_domain_map(node.call_expr.args[0])
        ):
            node.call_expr.function = DOMAIN_FUNCTION
        elif (
            kind == "select_expr"
            and not node.select_expr.test_only
            and _is_domain_map(node.select_expr.operand)
        ):
            operand, field = Expr(), node.select_expr.field
            operand.CopyFrom(node.select_expr.operand)
            node.ClearField("select_expr")
            node.call_expr.function = DOMAIN_FUNCTION
            node.call_expr.args.add().CopyFrom(operand)
            key = node.call_expr.args.add(id=next_id)
            key.const_expr.string_value = field
            next_id += 1
        else:
            continue
        reference = checked.reference_map[node.id]
        reference.name = DOMAIN_FUNCTION
        del reference.overload_id[:]
        reference.overload_id.append(DOMAIN_OVERLOAD)
    wrapper = any_pb2.Any(
        type_url="type.googleapis.com/cel.expr.CheckedExpr", value=checked.SerializeToString()
    )
    serialized: bytes = wrapper.SerializeToString()
    return serialized


DeviceRead = tuple[str, ...]
"""What part of ``device`` an expression reads: ``("driver",)``, ``("allowMultipleAllocations",)``,
``("attributes", DOMAIN, NAME)``, ``("capacity", DOMAIN, NAME)`` or ``("has", "attributes", DOMAIN)``."""


def device_reads(checked: ast_pb2.CheckedExpr) -> frozenset[DeviceRead] | None:
    """Every part of ``device`` the expression can read, when that is known from the tree: each use of
    ``device.attributes`` / ``device.capacity`` names a constant domain and then a constant name (or asks
    whether the domain exists). None when the expression looks at them any other way (iterates a domain,
    ``in``, ``size()``, a computed key), so its result may depend on the whole device."""
    parents: dict[int, Expr] = {}
    for node in walk(checked.expr):
        for child in children(node):
            parents[child.id] = node
    reads: set[DeviceRead] = set()
    for node in walk(checked.expr):
        if node.WhichOneof("expr_kind") != "ident_expr" or not node.ident_expr.name.startswith("device."):
            continue
        field = node.ident_expr.name.removeprefix("device.")
        if field not in ("attributes", "capacity"):
            reads.add((field,))
            continue
        domain_node = parents.get(node.id)
        domain = _constant_key(domain_node, node) if domain_node is not None else None
        if domain_node is None or domain is None:
            return None
        if domain_node.WhichOneof("expr_kind") == "select_expr" and domain_node.select_expr.test_only:
            reads.add(("has", field, domain))
            continue
        name_node = parents.get(domain_node.id)
        name = _constant_key(name_node, domain_node) if name_node is not None else None
        if name is None:
            return None
        reads.add((field, domain, name))
    return frozenset(reads)


def _constant_key(parent: Expr, operand: Expr) -> str | None:
    """The constant key ``parent`` reads from ``operand`` (``operand.key``, ``has(operand.key)`` or
    ``operand["key"]``), None for any other use of ``operand``."""
    kind = parent.WhichOneof("expr_kind")
    if kind == "select_expr" and parent.select_expr.operand.id == operand.id:
        return str(parent.select_expr.field)
    if (
        kind == "call_expr"
        and parent.call_expr.function == "_[_]"
        and parent.call_expr.args[0].id == operand.id
    ):
        key = parent.call_expr.args[1]
        if (
            key.WhichOneof("expr_kind") == "const_expr"
            and key.const_expr.WhichOneof("constant_kind") == "string_value"
        ):
            return str(key.const_expr.string_value)
    return None


def constant_text(node: Expr) -> str | None:
    """CEL source for a string, int, uint, double or bool constant; None for anything else."""
    if node.WhichOneof("expr_kind") != "const_expr":
        return None
    const = node.const_expr
    kind = const.WhichOneof("constant_kind")
    if kind == "string_value":
        return json.dumps(const.string_value)
    if kind == "int64_value":
        return str(const.int64_value)
    if kind == "uint64_value":
        return f"{const.uint64_value}u"
    if kind == "double_value" and math.isfinite(const.double_value):
        return repr(const.double_value)
    if kind == "bool_value":
        return "true" if const.bool_value else "false"
    return None


def _is_domain_map(node: Expr) -> bool:
    return node.WhichOneof("expr_kind") == "ident_expr" and node.ident_expr.name in DOMAIN_MAPS


# -- cost ----------------------------------------------------------------------------------------------------------

# CEL's cost model (cel-go checker/cost.go), which Kubernetes limits: identifiers and field reads cost 1,
# constants 0, list/map literals a base cost, string traversals a tenth of a unit per character.
_STRING_FACTOR = 0.1
_REGEX_FACTOR = 0.25
_LIST_CREATE = 10
_MAP_CREATE = 30
_UNBOUNDED = float(2**64)

# Worst-case sizes of what `device` holds (resource.k8s.io/v1 limits): 32 attributes and capacities per
# device, attribute strings of 64 characters (and list attributes of as many values), 63-character domains.
_DEVICE_SIZES = {
    "device.driver": 63,
    "device.attributes": 32,
    "device.capacity": 32,
    "device.allowMultipleAllocations": 1,
}
_DOMAIN_SIZE = 32
_ATTRIBUTE_SIZE = 64

_TRAVERSING = frozenset(
    {"contains", "startsWith", "endsWith", "_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_", "lowerAscii", "upperAscii",
     "trim", "replace", "split", "join", "indexOf", "lastIndexOf", "substring", "charAt", "size", "quote", "format",
     "isSorted", "sum", "min", "max", "includes", "sets.contains", "sets.equivalent", "sets.intersects", "flatten",
     "distinct", "reverse", "sort", "slice", "_+_", "string", "bytes"}
)  # fmt: skip
_REGEX = frozenset({"matches", "find", "findAll"})


@dataclass
class _Estimate:
    cost: float
    size: float  # worst-case length of the value (string characters, list or map entries)


def estimated_cost(checked: ast_pb2.CheckedExpr) -> float:
    """The worst-case cost of evaluating the expression on any valid device (``2**64`` when unbounded)."""
    return min(_estimate(checked, checked.expr, {}).cost, _UNBOUNDED)


def _estimate(checked: ast_pb2.CheckedExpr, node: Expr, scope: dict[str, float]) -> _Estimate:
    kind = node.WhichOneof("expr_kind")
    if kind == "const_expr":
        const = node.const_expr
        which = const.WhichOneof("constant_kind")
        size = len(const.string_value) if which == "string_value" else len(const.bytes_value)
        return _Estimate(0, size)
    if kind == "ident_expr":
        name = node.ident_expr.name
        # Names that are neither variables nor bound (type names such as `string`) have no size.
        return _Estimate(1, scope.get(name, _DEVICE_SIZES.get(name, 0)))
    if kind == "select_expr":
        operand = _estimate(checked, node.select_expr.operand, scope)
        return _Estimate(operand.cost + (0 if node.select_expr.test_only else 1), _member_size(checked, node))
    if kind == "list_expr":
        parts = [_estimate(checked, e, scope) for e in node.list_expr.elements]
        return _Estimate(_LIST_CREATE + sum(p.cost for p in parts), len(parts))
    if kind == "struct_expr":
        total = float(_MAP_CREATE)
        for entry in node.struct_expr.entries:
            if entry.HasField("map_key"):
                total += _estimate(checked, entry.map_key, scope).cost
            total += _estimate(checked, entry.value, scope).cost
        return _Estimate(total, len(node.struct_expr.entries))
    if kind == "comprehension_expr":
        return _comprehension(checked, node.comprehension_expr, scope)
    if kind == "call_expr":
        return _call(checked, node, scope)
    return _Estimate(0, 0)


def _member_size(checked: ast_pb2.CheckedExpr, node: Expr) -> float:
    # device.attributes["d"] is a map of at most 32 entries; an attribute value at most 64 long.
    operand_type = checked.type_map[node.select_expr.operand.id]
    value_type = operand_type.map_type.value_type if operand_type.HasField("map_type") else None
    if value_type is not None and value_type.HasField("map_type"):
        return _DOMAIN_SIZE
    return _ATTRIBUTE_SIZE


def _comprehension(checked: ast_pb2.CheckedExpr, c: Expr.Comprehension, scope: dict[str, float]) -> _Estimate:
    iter_range = _estimate(checked, c.iter_range, scope)
    inner = {**scope, c.iter_var: _ATTRIBUTE_SIZE, c.accu_var: _UNBOUNDED}
    if c.iter_var2:
        inner[c.iter_var2] = _ATTRIBUTE_SIZE
    init = _estimate(checked, c.accu_init, scope)
    inner[c.accu_var] = max(init.size, iter_range.size)
    per_step = _estimate(checked, c.loop_condition, inner).cost + _estimate(checked, c.loop_step, inner).cost
    result = _estimate(checked, c.result, inner)
    cost = iter_range.cost + init.cost + iter_range.size * per_step + result.cost
    return _Estimate(cost, max(result.size, iter_range.size))


def _call(checked: ast_pb2.CheckedExpr, node: Expr, scope: dict[str, float]) -> _Estimate:
    call = node.call_expr
    operands = ([call.target] if call.HasField("target") else []) + list(call.args)
    parts = [_estimate(checked, e, scope) for e in operands]
    cost = sum(p.cost for p in parts)
    sizes = [p.size for p in parts]
    function = call.function
    if function in ("_&&_", "_||_", "_?_:_", "@not_strictly_false", "!_", "_[_]", "_[?_]"):
        own = 0.0 if function in ("_&&_", "_||_", "_?_:_", "@not_strictly_false") else 1.0
        size = max(sizes[1:], default=0) if function == "_?_:_" else _element_size(function, sizes)
        return _Estimate(cost + own, size)
    if function in _REGEX:
        subject = sizes[0] if sizes else 0
        pattern = sizes[1] if len(sizes) > 1 else 0
        return _Estimate(cost + 1 + math.ceil(subject * _REGEX_FACTOR * max(pattern, 1)), subject)
    if function in _TRAVERSING:
        traversed = sum(sizes)
        size = (
            traversed
            if function in ("_+_", "replace", "join", "split", "flatten", "string", "quote")
            else max(sizes, default=0)
        )
        return _Estimate(cost + 1 + math.ceil(traversed * _STRING_FACTOR), size)
    if function == "lists.range":
        bound = _constant_int(operands[0]) if operands else None
        size = float(bound) if bound is not None else _UNBOUNDED
        return _Estimate(cost + 1 + size, size)
    return _Estimate(cost + 1, max(sizes, default=_ATTRIBUTE_SIZE))


def _element_size(function: str, sizes: list[float]) -> float:
    return _ATTRIBUTE_SIZE if function.startswith("_[") else 1


def _constant_int(node: Expr) -> int | None:
    if (
        node.WhichOneof("expr_kind") == "const_expr"
        and node.const_expr.WhichOneof("constant_kind") == "int64_value"
    ):
        return max(int(node.const_expr.int64_value), 0)
    return None
