"""DRA CEL device selectors on cel-expr-python (the CEL project's runtime over cel-cpp), in Kubernetes'
DRA environment.

kube-scheduler evaluates each ``DeviceClass`` / request selector against one device at a time, with one
variable ``device`` (``k8s.io/dynamic-resource-allocation/cel``):

- ``device.driver`` (string) and ``device.allowMultipleAllocations`` (bool);
- ``device.attributes[DOMAIN].NAME``: attributes grouped by domain, of type ``dyn``. An unqualified attribute
  name belongs to the device's driver domain. Version attributes are ``kubernetes.Semver`` values, list-type
  attributes (``ints``, ``strings``, ...) lists;
- ``device.capacity[DOMAIN].NAME``: ``kubernetes.Quantity`` values;
- a domain the device has nothing in reads as an empty map.

Two environments, as upstream: the scheduler's (:data:`STORED`, every library and field, list-type
attributes) and the API server's for new objects (:data:`NEW`, 1.37 defaults: attributes typed ``any``, no
``includes``), which only compiles. Expressions are type-checked when compiled; compiled programs are
cached per expression. Evaluation is refused when the expression's worst-case cost exceeds the
scheduler's limit (:data:`COST_LIMIT`), see :func:`driver.cel.syntax.estimated_cost`.

``device`` is declared as four qualified variables (``device.driver``, ...): cel-expr-python has no object
type with map-of-map fields. What that changes, and what else differs from upstream, is listed in
docs/cel.md.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cel_expr_python import cel

from driver.cel import library, syntax

MAX_EXPRESSION_BYTES = 10 * 1024  # the API server's limit for one selector
COST_LIMIT = 1_000_000  # resource.k8s.io/v1 CELSelectorExpressionMaxCost: the scheduler's runtime limit

STORED = "stored"  # kube-scheduler: expressions already in the API
NEW = "new"  # the API server validating a new claim or class

DEVICE_FIELDS = ("driver", "attributes", "capacity", "allowMultipleAllocations")

# Kubernetes' CEL extensions (k8s.io/apiserver/pkg/cel/environment): strings v2, sets, lists v3 (cel-cpp's
# version 2 has the same functions), optionals, cel.bind, two-variable comprehensions.
_EXTENSIONS_YAML = """\
extensions:
  - name: strings
    version: 2
  - name: sets
  - name: lists
    version: 2
  - name: optional
  - name: bindings
  - name: two-var-comprehensions
"""


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

    def upstream_text(self) -> str:
        """The API server's wording: ``compilation failed: ERROR: <input>:1:5: ...``."""
        if self.line is None:
            return self.detail
        return f"compilation failed: ERROR: <input>:{self.line}:{self.column}: {self.detail}"


class CelRuntimeError(CelError):
    """Evaluating the expression for ``device`` failed (e.g. a missing attribute read without ``has``)."""

    def __init__(self, expression: str, device: str, detail: str) -> None:
        super().__init__(expression, detail)
        self.device = device

    def __str__(self) -> str:
        return f"CEL runtime error in `{self.expression}` on device {self.device}: {self.detail}"


# -- environments ----------------------------------------------------------------------------------------


@dataclass
class _Environment:
    """A checking environment (with the declarations only the type checker needs) and, for the
    scheduler's, a runtime environment that evaluates what the checker produced."""

    kind: str
    checker: Any
    runtime: Any | None
    attribute_type: str  # what a bare attribute reads as; also allowed as the result type


def _variables(attribute: Any) -> dict[str, Any]:
    t = cel.Type
    return {
        "device.driver": t.STRING,
        "device.attributes": t.Map(t.STRING, t.Map(t.STRING, attribute)),
        "device.capacity": t.Map(t.STRING, t.Map(t.STRING, library.QUANTITY)),
        "device.allowMultipleAllocations": t.BOOL,
    }


def _new_environment(kind: str) -> _Environment:
    stored = kind == STORED
    attribute = cel.Type.DYN if stored else cel.Type("google.protobuf.Any")
    variables = _variables(attribute)

    def make(*extensions: Any) -> Any:
        config = cel.NewEnvConfigFromYaml(_EXTENSIONS_YAML)
        return cel.NewEnv(config=config, variables=variables, extensions=list(extensions))

    checker = make(library.library(includes=stored, runtime=False), library.cross_type_comparisons())
    runtime = make(library.library(includes=stored, runtime=True), _domain_lookup()) if stored else None
    return _Environment(kind, checker, runtime, "dyn" if stored else "any")


def _domain_lookup() -> Any:
    """The runtime's function behind ``device.attributes[D]``: an unknown domain is an empty map."""
    t = cel.Type

    def lookup(domains: Mapping[str, Any], domain: str) -> Any:
        return domains.get(domain, {})

    overload = cel.Overload(
        syntax.DOMAIN_OVERLOAD, t.Map(t.STRING, t.DYN), [t.Map(t.STRING, t.DYN), t.STRING], impl=lookup
    )
    return cel.CelExtension("dra.domains", [cel.FunctionDecl(syntax.DOMAIN_FUNCTION, [overload])])


_environments: dict[str, _Environment] = {}
_environment_lock = threading.Lock()


def _environment(kind: str) -> _Environment:
    with _environment_lock:
        if kind not in _environments:
            _environments[kind] = _new_environment(kind)
        return _environments[kind]


# -- the `device` variable --------------------------------------------------------------------------------


def split_qualified_name(name: str, driver: str) -> tuple[str, str]:
    """``domain/id`` -> (domain, id); an unqualified name belongs to the driver's domain."""
    domain, sep, ident = name.partition("/")
    return (domain, ident) if sep else (driver, name)


_LIST_KINDS = (("ints", int), ("bools", bool), ("strings", str), ("versions", str))


def attribute_value(attribute: Mapping[str, Any]) -> Any:
    """The CEL value of one DRA ``DeviceAttribute``; ``ValueError`` when it has none we understand.

    List-type attributes (``ints``, ``bools``, ``strings``, ``versions``) become lists, as
    k8s.io/dynamic-resource-allocation 1.37 makes them whatever the feature gate says (a 1.37 API server
    with the alpha gate off drops them on write).
    """
    if not isinstance(attribute, Mapping):
        raise ValueError("not a DeviceAttribute object")
    for key, kind in _LIST_KINDS:
        values = attribute.get(key)
        if isinstance(values, list) and all(_is_kind(v, kind) for v in values):
            return [_version(v) for v in values] if key == "versions" else list(values)
    for key, kind in (("int", int), ("bool", bool), ("string", str)):
        if _is_kind(attribute.get(key), kind):
            return attribute[key]
    if isinstance(attribute.get("version"), str):
        return _version(attribute["version"])
    raise ValueError("unsupported attribute value")


def _is_kind(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _version(text: str) -> Any:
    try:
        return library.semver_value(text)
    except library.LibraryError as exc:
        raise ValueError(f"parse semantic version: {exc}") from None


@dataclass
class DeviceActivation:
    """The ``device`` variable for one device, built once and reused for every selector."""

    id: str
    data: dict[str, Any] | None
    error: str | None = None
    _activation: Any = field(default=None, repr=False)

    def activation(self, runtime: Any) -> Any:
        if self._activation is None:
            self._activation = runtime.Activation(self.data)
        return self._activation


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
                capacity.setdefault(domain, {})[key] = library.quantity_value(str(raw))
            except ValueError as exc:
                raise ValueError(f"capacity {name}: {exc}") from None
    except ValueError as exc:
        return DeviceActivation(ident, None, str(exc))
    data = {
        "device.driver": driver,
        "device.attributes": attributes,
        "device.capacity": capacity,
        "device.allowMultipleAllocations": device.get("allowMultipleAllocations") is True,
    }
    return DeviceActivation(ident, data)


# -- compiled selectors -------------------------------------------------------------------------------------


class CompiledExpression:
    """One selector, compiled and checked once; evaluate it against any number of devices."""

    def __init__(
        self,
        expression: str,
        program: Any,
        max_cost: float,
        reads: frozenset[syntax.DeviceRead] | None = None,
    ) -> None:
        self.expression = expression
        self._program = program
        self.max_cost = max_cost
        self.reads = reads  # the parts of `device` it reads, when known (see syntax.device_reads)
        self.ordered_reads = tuple(sorted(reads)) if reads is not None else ()

    def evaluate(self, device: DeviceActivation) -> bool:
        """True when the device matches; :class:`CelRuntimeError` when evaluation fails."""
        if device.data is None:
            raise CelRuntimeError(self.expression, device.id, device.error or "invalid device")
        if self.max_cost > COST_LIMIT:
            raise CelRuntimeError(
                self.expression,
                device.id,
                f"operation cancelled: actual cost limit exceeded (worst case {_cost_text(self.max_cost)}, "
                f"limit {COST_LIMIT})",
            )
        result = self._program.eval(device.activation(_environment(STORED).runtime))
        kind = result.type().name()
        if kind == "BOOL":
            return bool(result.value())
        if kind == "ERROR":
            raise CelRuntimeError(self.expression, device.id, _runtime_message(str(result.value())))
        raise CelRuntimeError(
            self.expression, device.id, f"CEL result of type {kind.lower()} could not be converted to bool"
        )


def _cost_text(cost: float) -> str:
    return "unbounded" if cost >= 2**64 else str(int(cost))


_RUNTIME_MESSAGES = (
    (re.compile(r'^(?:\w+: )?Key not found in map : "?(.*?)"?$', re.S), r"no such key: \1"),
    (re.compile(r"^(?:\w+: )?No matching overloads found : (.*)$", re.S), r"no such overload: \1"),
    (re.compile(r"^[A-Z_]+: (.*)$", re.S), r"\1"),
)


def _runtime_message(text: str) -> str:
    text = text.removesuffix(" [OUT_OF_RANGE]").strip()
    for pattern, replacement in _RUNTIME_MESSAGES:
        if pattern.match(text):
            return pattern.sub(replacement, text)
    return text


_lock = threading.Lock()
_cache: dict[tuple[str, str], CompiledExpression | CelCompileError] = {}


def compile_expression(expression: str, environment: str = STORED) -> CompiledExpression:
    """Parse and type-check ``expression`` (cached by its text); :class:`CelCompileError` when invalid.

    ``environment`` is :data:`STORED` (the scheduler's, the default) or :data:`NEW` (the API server's for
    new objects; such programs only report compile errors and cost, they are not evaluated).
    """
    key = (environment, expression)
    with _lock:
        cached = _cache.get(key)
    if cached is None:
        cached = _compile(expression, environment)
        with _lock:
            _cache[key] = cached
    if isinstance(cached, CelCompileError):
        raise cached
    return cached


def _compile(expression: str, kind: str) -> CompiledExpression | CelCompileError:
    if len(expression.encode()) > MAX_EXPRESSION_BYTES:
        return CelCompileError(expression, f"longer than {MAX_EXPRESSION_BYTES} bytes")
    if not expression.strip():
        return CelCompileError(expression, "expression must not be empty")
    env = _environment(kind)
    try:
        checked_program = env.checker.compile(expression)
    except RuntimeError as exc:
        return _compile_error(expression, str(exc))
    serialized = checked_program.serialize()
    checked = syntax.decode(serialized)
    problem = syntax.library_misuse(checked)
    if problem is not None:
        line, column = _line_column(expression, problem.offset)
        return CelCompileError(expression, problem.message, line, column)
    result_type = syntax.type_text(checked.type_map[checked.expr.id])
    if result_type not in ("bool", env.attribute_type):
        return CelCompileError(expression, f"must evaluate to bool or the unknown type, not {result_type}")
    problem_text = _constant_conversion_error(env, checked)
    if problem_text:
        return CelCompileError(expression, f"program instantiation failed: {problem_text}")
    max_cost = syntax.estimated_cost(checked)
    reads = syntax.device_reads(checked)
    program = None
    if env.runtime is not None:
        program = env.runtime.deserialize(syntax.redirect_domain_lookups(checked))
    return CompiledExpression(expression, program, max_cost, reads)


_CONVERSIONS = frozenset({"int", "uint", "double", "string", "bytes", "bool", "timestamp", "duration"})


def _constant_conversion_error(env: _Environment, checked: Any) -> str | None:
    """Kubernetes' runtime folds type conversions of constants (``int("x")``) when it builds the program,
    so their failure is a compile error there."""
    for node in syntax.walk(checked.expr):
        call = node.call_expr if node.WhichOneof("expr_kind") == "call_expr" else None
        if (
            call is None
            or call.function not in _CONVERSIONS
            or call.HasField("target")
            or len(call.args) != 1
        ):
            continue
        literal = syntax.constant_text(call.args[0])
        if literal is None:
            continue
        runtime = _environment(STORED).runtime
        assert runtime is not None
        result = runtime.compile(f"{call.function}({literal})").eval()
        if result.type().name() == "ERROR":
            return _runtime_message(str(result.value()))
    return None


_ERROR_RE = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*?)(?:\n \|.*)?$", re.S)


def _compile_error(expression: str, text: str) -> CelCompileError:
    body = text.removeprefix("INVALID_ARGUMENT: ").strip()
    body = re.sub(r"\s*\[INVALID_ARGUMENT\]$", "", body)
    first = body.split("\nERROR: ", 1)[0]
    match = _ERROR_RE.match(first)
    if not match:
        return CelCompileError(expression, body)
    detail = _upstream_wording(match.group(3).split("\n |", 1)[0].strip())
    return CelCompileError(expression, detail, int(match.group(1)), int(match.group(2)))


_UNDECLARED_RE = re.compile(r"^undeclared reference to '([^'.]+)\.([^']+)'( \(in container ''\))?$")


def _upstream_wording(detail: str) -> str:
    # `device` is four qualified variables here; upstream it is one object with four fields.
    match = _UNDECLARED_RE.match(detail)
    if match and match.group(1) == "device":
        return f"undefined field '{match.group(2).split('.')[0]}'"
    if match:
        return f"undeclared reference to '{match.group(1)}'{match.group(3) or ''}"
    return detail


def _line_column(expression: str, offset: int) -> tuple[int, int]:
    before = expression[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


class SelectorCache:
    """Evaluates selectors against devices, with two caches that make a cluster of similar devices cheap.

    - A selector whose reads are known (:func:`driver.cel.syntax.device_reads`: constant domains and
      names) gives the same answer for every well-formed device with the same values there; its results
      are kept per (expression, those values), so 40,000 GPUs of a handful of models cost a handful of
      evaluations. A device with any malformed attribute or capacity fails every selector, so those are
      evaluated one by one.
    - Otherwise each device's ``device`` variable is built once and the selector evaluated on it.
    """

    def __init__(self) -> None:
        self._activations: dict[str, DeviceActivation] = {}
        self._well_formed: dict[str, bool] = {}
        self._results: dict[tuple[Any, ...], bool | CelRuntimeError] = {}
        self._group_reads: dict[tuple[str, ...], tuple[syntax.DeviceRead, ...] | None] = {}

    def matches(self, expression: str, driver: str, device: Mapping[str, Any], device_id: str) -> bool:
        """Compile (cached) and evaluate; :class:`CelCompileError` or :class:`CelRuntimeError` when it fails."""
        compiled = compile_expression(expression)
        if compiled.reads is not None and self._is_well_formed(driver, device, device_id):
            key = (expression, *[_projection(read, driver, device) for read in compiled.ordered_reads])
            found = self._results.get(key)
            if found is None:
                try:
                    found = self._evaluate(compiled, driver, device, device_id)
                except CelRuntimeError as exc:
                    found = exc
                self._results[key] = found
            if isinstance(found, CelRuntimeError):  # the same failure, told for this device
                raise CelRuntimeError(expression, device_id, found.detail)
            return found
        return self._evaluate(compiled, driver, device, device_id)

    def signature(
        self, expressions: tuple[str, ...], driver: str, device: Mapping[str, Any], device_id: str
    ) -> tuple[Any, ...] | None:
        """What every one of ``expressions`` reads of a well-formed device; devices with the same signature
        get the same results from all of them. None when that cannot be known (an expression that does not
        compile or reads the device in ways the tree does not tell, a malformed device)."""
        if expressions not in self._group_reads:
            self._group_reads[expressions] = _union_of_reads(expressions)
        reads = self._group_reads[expressions]
        if reads is None or not self._is_well_formed(driver, device, device_id):
            return None
        return tuple([_projection(read, driver, device) for read in reads])

    def _evaluate(
        self, compiled: CompiledExpression, driver: str, device: Mapping[str, Any], device_id: str
    ) -> bool:
        activation = self._activations.get(device_id)
        if activation is None:
            activation = self._activations[device_id] = device_activation(driver, device, device_id)
        return compiled.evaluate(activation)

    def _is_well_formed(self, driver: str, device: Mapping[str, Any], device_id: str) -> bool:
        known = self._well_formed.get(device_id)
        if known is None:
            known = self._well_formed[device_id] = well_formed(device)
        return known


def _union_of_reads(expressions: tuple[str, ...]) -> tuple[syntax.DeviceRead, ...] | None:
    reads: set[syntax.DeviceRead] = set()
    for expression in expressions:
        try:
            compiled = compile_expression(expression)
        except CelCompileError:
            return None
        if compiled.reads is None:
            return None
        reads |= compiled.reads
    return tuple(sorted(reads))


def _projection(read: syntax.DeviceRead, driver: str, device: Mapping[str, Any]) -> Any:
    """The part of a device one read of a selector depends on, as a hashable value."""
    if read == ("driver",):
        return driver
    if read == ("allowMultipleAllocations",):
        return device.get("allowMultipleAllocations") is True
    if read[0] == "has":
        names = device.get(read[1]) or {}
        return any(split_qualified_name(name, driver)[0] == read[2] for name in names)
    kind, domain, name = read
    values = device.get(kind) or {}
    return (_frozen(values.get(f"{domain}/{name}")), _frozen(values.get(name)) if domain == driver else None)


def _frozen(value: Any) -> Any:
    if isinstance(value, dict | Mapping):
        if len(value) == 1:  # the usual attribute: {"string": "H100"}
            ((key, inner),) = value.items()
            return key, _frozen(inner)
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return type(value), value


_version_ok: dict[str, bool] = {}
_quantity_ok: dict[str, bool] = {}


def well_formed(device: Mapping[str, Any]) -> bool:
    """Whether :func:`device_activation` builds the device without error (every attribute and capacity
    readable), checked without building it; version and quantity texts are remembered."""
    for attribute in (device.get("attributes") or {}).values():
        if type(attribute) is dict and len(attribute) == 1:  # the usual case, checked inline (it is hot)
            ((key, value),) = attribute.items()
            kind = _EXACT_KINDS.get(key)
            if kind is not None and type(value) is kind:
                continue
            if key == "version" and type(value) is str and _version_text_ok(value):
                continue
        if not _attribute_ok(attribute):
            return False
    for entry in (device.get("capacity") or {}).values():
        raw = str(entry.get("value")) if isinstance(entry, dict | Mapping) else "None"
        if raw not in _quantity_ok:
            _quantity_ok[raw] = _parses(library.quantity_value, raw)
        if not _quantity_ok[raw]:
            return False
    return True


_SINGLE_KINDS: dict[str, type] = {"int": int, "bool": bool, "string": str}
_EXACT_KINDS = dict(_SINGLE_KINDS)  # JSON and YAML give exactly these types


def _attribute_ok(attribute: Any) -> bool:
    if not isinstance(attribute, dict | Mapping):
        return False
    if len(attribute) == 1:  # the usual case: one value, checked by its key alone
        ((key, value),) = attribute.items()
        kind = _SINGLE_KINDS.get(key)
        if kind is not None:
            return _is_kind(value, kind)
        if key == "version":
            return isinstance(value, str) and _version_text_ok(value)
    for key, kind in _LIST_KINDS:
        values = attribute.get(key)
        if isinstance(values, list) and all(_is_kind(v, kind) for v in values):
            return key != "versions" or all(_version_text_ok(v) for v in values)
    for key, kind in _SINGLE_KINDS.items():
        if _is_kind(attribute.get(key), kind):
            return True
    version = attribute.get("version")
    return isinstance(version, str) and _version_text_ok(version)


def _version_text_ok(text: str) -> bool:
    if text not in _version_ok:
        _version_ok[text] = _parses(library.semver_value, text)
    return _version_ok[text]


def _parses(parse: Any, text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


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
    for key in ("string", "int", "bool", "version", "strings", "ints", "bools", "versions"):
        if key in raw:
            return json.dumps(raw[key]) if key != "version" else str(raw[key])
    return "<unset>"
