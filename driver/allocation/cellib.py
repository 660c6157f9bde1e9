"""The Kubernetes CEL library DRA selectors use: Quantity and semver values and their functions.

``quantity("40Gi")`` / ``isQuantity`` with ``compareTo``, ``isGreaterThan``, ``isLessThan``, ``asInteger``,
``isInteger``, ``asApproximateFloat``, ``add``, ``sub``, ``sign``; ``semver("1.2.3")`` / ``isSemver`` (an
optional second argument ``true`` normalises ``v1.2`` to ``1.2.0``) with ``major``, ``minor``, ``patch``,
``compareTo``, ``isGreaterThan``, ``isLessThan``. Quantities are exact decimals (``quantity("0.2G")`` equals
``quantity("200M")``); semvers compare by SemVer 2.0.0 precedence. As in Kubernetes, neither supports
``<``/``>``: use ``compareTo`` and friends.

cel-python calls ``x.f(y)`` and ``f(x, y)`` alike with ``(x, y)``; a wrong argument type raises
``TypeError``, which cel-python turns into a "no such overload" evaluation error.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from celpy import celtypes
from celpy.evaluation import CELEvalError

from driver.quantity import is_quantity, parse_quantity
from driver.resources.validation import is_semver

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Quantities are arbitrary precision in Kubernetes; 28 digits (Python's default) would round big ones.
_DECIMAL = decimal.Context(prec=120)

__all__ = ["FUNCTIONS", "Quantity", "Semver", "is_quantity", "parse_quantity", "type_name"]


class Quantity:
    """A Kubernetes ``resource.Quantity``: exact decimal value plus the text it was written as."""

    __slots__ = ("text", "value")

    def __init__(self, value: Decimal, text: str | None = None) -> None:
        self.value = value
        self.text = text if text is not None else _format_decimal(value)

    @classmethod
    def parse(cls, text: str) -> Quantity:
        """Strict parse (``200K`` or ``1,3G`` are errors, as in Kubernetes)."""
        return cls(parse_quantity(text), text)

    def compare(self, other: Quantity) -> int:
        return (self.value > other.value) - (self.value < other.value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Quantity):
            raise TypeError(f"no such overload: quantity == {type(other).__name__}")
        return self.value == other.value

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.value)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"quantity({self.text!r})"


def _format_decimal(value: Decimal) -> str:
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(_DECIMAL), "f")


class Semver:
    """A semantic version (2.0.0) compared by precedence: build metadata is ignored."""

    __slots__ = ("build", "major", "minor", "patch", "pre")

    def __init__(
        self, major: int, minor: int, patch: int, pre: tuple[str, ...] = (), build: str = ""
    ) -> None:
        self.major, self.minor, self.patch, self.pre, self.build = major, minor, patch, pre, build

    @classmethod
    def parse(cls, text: str, normalize: bool = False) -> Semver:
        candidate = _normalize_version(text) if normalize else text
        if not is_semver(candidate):
            raise ValueError(f"invalid semantic version {text!r}")
        core, _, build = candidate.partition("+")
        core, _, pre = core.partition("-")
        major, minor, patch = (int(part) for part in core.split("."))
        return cls(major, minor, patch, tuple(pre.split(".")) if pre else (), build)

    def compare(self, other: Semver) -> int:
        mine, theirs = (self.major, self.minor, self.patch), (other.major, other.minor, other.patch)
        if mine != theirs:
            return 1 if mine > theirs else -1
        return _compare_prerelease(self.pre, other.pre)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Semver):
            raise TypeError(f"no such overload: semver == {type(other).__name__}")
        return self.compare(other) == 0

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((self.major, self.minor, self.patch, self.pre))

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            text += "-" + ".".join(self.pre)
        return text + (f"+{self.build}" if self.build else "")

    def __repr__(self) -> str:
        return f"semver({str(self)!r})"


def _compare_prerelease(left: tuple[str, ...], right: tuple[str, ...]) -> int:
    # A release outranks its pre-releases; identifiers compare numerically when both are numbers, and
    # numbers rank below alphanumerics; a longer list wins a tie.
    if not left or not right:
        return (not left) - (not right)
    for a, b in zip(left, right, strict=False):
        if a == b:
            continue
        if a.isdigit() and b.isdigit():
            return 1 if int(a) > int(b) else -1
        if a.isdigit() != b.isdigit():
            return -1 if a.isdigit() else 1
        return 1 if a > b else -1
    return (len(left) > len(right)) - (len(left) < len(right))


def _normalize_version(text: str) -> str:
    """The Kubernetes ``semver(s, true)`` normalisation: drop ``v``, strip leading zeros, pad to x.y.z."""
    parts = text.removeprefix("v").split(".", 2)
    for i, part in enumerate(parts):
        if len(part) > 1:
            stripped = part.lstrip("0")
            parts[i] = stripped if stripped[:1].isdigit() else "0" + stripped
    if len(parts) < 3:
        if any(c in parts[-1] for c in "+-"):
            raise ValueError(f"short version cannot contain pre-release or build metadata: {text!r}")
        parts += ["0"] * (3 - len(parts))
    return ".".join(parts)


# -- extension functions ----------------------------------------------------------------------------------


def _error(message: str) -> CELEvalError:
    return CELEvalError(message, ValueError, None)


def _overload(name: str, *args: Any) -> TypeError:
    kinds = ", ".join(type_name(a) for a in args)
    return TypeError(f"no such overload: {name}({kinds})")


def type_name(value: Any) -> str:
    """The CEL-ish name of a value's type, for error messages."""
    if isinstance(value, Quantity):
        return "quantity"
    if isinstance(value, Semver):
        return "semver"
    return type(value).__name__.removesuffix("Type").lower()


def _string_arg(name: str, value: Any) -> str:
    if not isinstance(value, celtypes.StringType):
        raise _overload(name, value)
    return str(value)


def _quantity_arg(name: str, value: Any) -> Quantity:
    if not isinstance(value, Quantity):
        raise _overload(name, value)
    return value


def _int_value(value: Any) -> Decimal | None:
    if isinstance(value, celtypes.IntType) and not isinstance(value, celtypes.BoolType):
        return Decimal(int(value))
    return None


def cel_quantity(text: Any) -> Quantity | CELEvalError:
    try:
        return Quantity.parse(_string_arg("quantity", text))
    except ValueError as exc:
        return _error(str(exc))


def cel_is_quantity(text: Any) -> celtypes.BoolType:
    return celtypes.BoolType(is_quantity(_string_arg("isQuantity", text)))


def cel_semver(text: Any, normalize: Any = None) -> Semver | CELEvalError:
    try:
        return Semver.parse(_string_arg("semver", text), normalize=_bool_arg("semver", normalize))
    except ValueError as exc:
        return _error(str(exc))


def cel_is_semver(text: Any, normalize: Any = None) -> celtypes.BoolType:
    try:
        Semver.parse(_string_arg("isSemver", text), normalize=_bool_arg("isSemver", normalize))
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _bool_arg(name: str, value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, celtypes.BoolType):
        raise _overload(name, value)
    return bool(value)


def _compare(name: str, left: Any, right: Any) -> int:
    if isinstance(left, Quantity) and isinstance(right, Quantity):
        return left.compare(right)
    if isinstance(left, Semver) and isinstance(right, Semver):
        return left.compare(right)
    raise _overload(name, left, right)


def cel_compare_to(left: Any, right: Any) -> celtypes.IntType:
    return celtypes.IntType(_compare("compareTo", left, right))


def cel_is_greater_than(left: Any, right: Any) -> celtypes.BoolType:
    return celtypes.BoolType(_compare("isGreaterThan", left, right) > 0)


def cel_is_less_than(left: Any, right: Any) -> celtypes.BoolType:
    return celtypes.BoolType(_compare("isLessThan", left, right) < 0)


def _exact_int(q: Quantity) -> int | None:
    if q.value != q.value.to_integral_value():
        return None
    value = int(q.value)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def cel_as_integer(q: Any) -> celtypes.IntType | CELEvalError:
    value = _exact_int(_quantity_arg("asInteger", q))
    return _error("cannot convert value to integer") if value is None else celtypes.IntType(value)


def cel_is_integer(q: Any) -> celtypes.BoolType:
    return celtypes.BoolType(_exact_int(_quantity_arg("isInteger", q)) is not None)


def cel_as_approximate_float(q: Any) -> celtypes.DoubleType:
    return celtypes.DoubleType(float(_quantity_arg("asApproximateFloat", q).value))


def _arith(name: str, q: Any, other: Any, sign: int) -> Quantity:
    base = _quantity_arg(name, q)
    operand = other.value if isinstance(other, Quantity) else _int_value(other)
    if operand is None:
        raise _overload(name, q, other)
    return Quantity(_DECIMAL.add(base.value, sign * operand))


def cel_add(q: Any, other: Any) -> Quantity:
    return _arith("add", q, other, 1)


def cel_sub(q: Any, other: Any) -> Quantity:
    return _arith("sub", q, other, -1)


def cel_sign(q: Any) -> celtypes.IntType:
    value = _quantity_arg("sign", q).value
    return celtypes.IntType((value > 0) - (value < 0))


def _semver_arg(name: str, value: Any) -> Semver:
    if not isinstance(value, Semver):
        raise _overload(name, value)
    return value


def cel_major(v: Any) -> celtypes.IntType:
    return celtypes.IntType(_semver_arg("major", v).major)


def cel_minor(v: Any) -> celtypes.IntType:
    return celtypes.IntType(_semver_arg("minor", v).minor)


def cel_patch(v: Any) -> celtypes.IntType:
    return celtypes.IntType(_semver_arg("patch", v).patch)


#: The Kubernetes extension functions, by CEL name (method and global call forms dispatch alike).
FUNCTIONS: Mapping[str, Callable[..., Any]] = {
    "quantity": cel_quantity,
    "isQuantity": cel_is_quantity,
    "semver": cel_semver,
    "isSemver": cel_is_semver,
    "compareTo": cel_compare_to,
    "isGreaterThan": cel_is_greater_than,
    "isLessThan": cel_is_less_than,
    "asInteger": cel_as_integer,
    "isInteger": cel_is_integer,
    "asApproximateFloat": cel_as_approximate_float,
    "add": cel_add,
    "sub": cel_sub,
    "sign": cel_sign,
    "major": cel_major,
    "minor": cel_minor,
    "patch": cel_patch,
}
