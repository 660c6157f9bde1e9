"""The Kubernetes CEL libraries, as cel-expr-python function declarations with Python implementations.

What the API server and kube-scheduler add to CEL (``k8s.io/apiserver/pkg/cel/library``): quantity, semver,
regex (``find``, ``findAll``), lists (``isSorted``, ``sum``, ``min``, ``max``, ``indexOf``, ``lastIndexOf``,
``includes``), URLs, IP addresses and CIDRs. The CEL extensions Kubernetes enables (strings, sets, lists,
optionals, bindings, two-variable comprehensions) come with cel-expr-python and are switched on in
:mod:`driver.cel.selectors`.

Library values that CEL has no type for (``kubernetes.Quantity``, ``kubernetes.Semver``, ...) are small
protobuf messages (``proto/cel/v1/types.proto``): cel-expr-python carries messages through expressions and
dispatches member functions on them. Each message holds one canonical form, so CEL's ``==`` on messages
means "equal value", as upstream. A function raises :class:`LibraryError` (or ``ValueError``) to make the
expression fail with that message.

The runtime registers one implementation per argument *kind* (all messages are one kind), so functions
declared for several library types (``compareTo`` on quantities and semvers) have one implementation that
looks at the message it got.
"""

from __future__ import annotations

import decimal
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cel_expr_python import cel

from driver._proto.cel.v1 import types_pb2
from driver.quantity import parse_quantity
from driver.semver import is_semver

T = cel.Type
QUANTITY = T("kubernetes.Quantity")
SEMVER = T("kubernetes.Semver")
URL = T("kubernetes.URL")
IP = T("kubernetes.IP")
CIDR = T("kubernetes.CIDR")

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class LibraryError(ValueError):
    """A library function refused its input; the message becomes the CEL error."""


# -- quantity ------------------------------------------------------------------------------------------------


def quantity_value(text: str) -> types_pb2.Quantity:
    """A ``kubernetes.Quantity`` from its text, parsed as apimachinery's ``ParseQuantity`` does (``200K`` is
    an error; ``Mi``, ``.`` and ``+`` are zero; values below one nano round up to it)."""
    value = parse_lenient_quantity(text)
    if value is None:
        raise LibraryError(f"quantities must match the regular expression '{_QUANTITY_PATTERN}'")
    return _quantity(value)


_QUANTITY_PATTERN = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
_LENIENT_RE = re.compile(r"^([+-]?)0*([0-9]*)(?:\.([0-9]*))?([eEinumkKMGTP]*[-+]?[0-9]*)$")
_SUFFIX_EXPONENT_RE = re.compile(r"^[eE]([-+]?[0-9]+)$")
_NANO = Decimal("1e-9")
_WIDE = decimal.Context(prec=200)  # quantities are arbitrary precision


def parse_lenient_quantity(text: str) -> Decimal | None:
    """apimachinery's quantity grammar (number, optional fraction, suffix); None when it refuses the text."""
    match = _LENIENT_RE.match(text)
    if not text or not match:
        return None
    sign, whole, fraction, suffix = match.groups()
    number = Decimal(f"{whole or '0'}.{fraction or '0'}")
    exponent = _SUFFIX_EXPONENT_RE.match(suffix)
    try:
        value = parse_quantity(f"{number}{suffix}") if not exponent else number.scaleb(int(exponent.group(1)))
    except ValueError:
        return None
    if sign == "-":
        value = -value
    # Precision stops at nanos, rounding away from zero.
    if value.as_tuple().exponent < -9:  # type: ignore[operator]
        value = value.quantize(_NANO, rounding=decimal.ROUND_UP, context=_WIDE)
    return value


def _quantity(value: Decimal) -> types_pb2.Quantity:
    return types_pb2.Quantity(value=_canonical_decimal(value))


def _canonical_decimal(value: Decimal) -> str:
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def quantity_decimal(q: types_pb2.Quantity) -> Decimal:
    return Decimal(q.value)


def _q(value: Any, function: str) -> Decimal:
    if not isinstance(value, types_pb2.Quantity):
        raise LibraryError(f"no such overload: {function}({_type_name(value)})")
    return Decimal(value.value)


def _exact_int(value: Decimal) -> int | None:
    if value != value.to_integral_value():
        return None
    number = int(value)
    return number if _INT64_MIN <= number <= _INT64_MAX else None


def _quantity_as_integer(q: Any) -> int:
    number = _exact_int(_q(q, "asInteger"))
    if number is None:
        raise LibraryError("cannot convert value to integer")
    return number


def _quantity_add(q: Any, other: Any) -> types_pb2.Quantity:
    return _quantity(_q(q, "add") + _operand(other, "add"))


def _quantity_sub(q: Any, other: Any) -> types_pb2.Quantity:
    return _quantity(_q(q, "sub") - _operand(other, "sub"))


def _operand(value: Any, function: str) -> Decimal:
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    return _q(value, function)


def _sign(q: Any) -> int:
    value = _q(q, "sign")
    return (value > 0) - (value < 0)


# -- semver --------------------------------------------------------------------------------------------------


def semver_value(text: str, normalize: bool = False) -> types_pb2.Semver:
    """A ``kubernetes.Semver`` from SemVer 2.0.0 text; ``normalize`` accepts ``v1.2`` and leading zeros."""
    candidate = _normalize_version(text) if normalize else text
    if not is_semver(candidate):
        raise LibraryError(f"could not parse {text!r} as semver")
    core = candidate.partition("+")[0]
    numbers, _, pre = core.partition("-")
    major, minor, patch = (int(part) for part in numbers.split("."))
    if max(major, minor, patch) >= 2**64:
        raise LibraryError(f"could not parse {text!r} as semver")
    return types_pb2.Semver(major=major, minor=minor, patch=patch, pre=pre)


def _normalize_version(text: str) -> str:
    """``semver(s, true)``: drop a leading ``v``, strip leading zeros, pad to major.minor.patch."""
    parts = text.removeprefix("v").split(".", 2)
    for i, part in enumerate(parts):
        if len(part) > 1:
            stripped = part.lstrip("0")
            parts[i] = stripped if stripped[:1].isdigit() else "0" + stripped
    if len(parts) < 3:
        if any(c in parts[-1] for c in "+-"):
            return text  # pre-release or build metadata on a short version: invalid
        parts += ["0"] * (3 - len(parts))
    return ".".join(parts)


def _semver_compare(a: types_pb2.Semver, b: types_pb2.Semver) -> int:
    mine, theirs = (a.major, a.minor, a.patch), (b.major, b.minor, b.patch)
    if mine != theirs:
        return 1 if mine > theirs else -1
    return _compare_prerelease(
        tuple(a.pre.split(".")) if a.pre else (), tuple(b.pre.split(".")) if b.pre else ()
    )


def _compare_prerelease(left: tuple[str, ...], right: tuple[str, ...]) -> int:
    # A release outranks its pre-releases; numeric identifiers compare as numbers and rank below
    # alphanumeric ones; with equal prefixes the longer list wins.
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


def _semver_part(name: str) -> Callable[[Any], int]:
    def part(v: Any) -> int:
        if not isinstance(v, types_pb2.Semver):
            raise LibraryError(f"no such overload: {name}({_type_name(v)})")
        return int(getattr(v, name))

    return part


# -- comparisons shared by quantity and semver -------------------------------------------------------------------


def _compare(name: str, a: Any, b: Any) -> int:
    if isinstance(a, types_pb2.Quantity) and isinstance(b, types_pb2.Quantity):
        left, right = Decimal(a.value), Decimal(b.value)
        return (left > right) - (left < right)
    if isinstance(a, types_pb2.Semver) and isinstance(b, types_pb2.Semver):
        return _semver_compare(a, b)
    raise LibraryError(f"no such overload: {name}({_type_name(a)}, {_type_name(b)})")


def _type_name(value: Any) -> str:
    if hasattr(value, "DESCRIPTOR"):
        return str(value.DESCRIPTOR.full_name)
    return {bool: "bool", int: "int", float: "double", str: "string", bytes: "bytes", list: "list"}.get(
        type(value), "map" if isinstance(value, dict) else type(value).__name__
    )


# -- regex ---------------------------------------------------------------------------------------------------


def _pattern(regex: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as exc:
        raise LibraryError(f"invalid regular expression {regex!r}: {exc}") from None


def _find(text: str, regex: str) -> str:
    match = _pattern(regex).search(text)
    return match.group(0) if match else ""


def _find_all(text: str, regex: str, limit: int = -1) -> list[str]:
    if limit == 0:
        return []
    found = [m.group(0) for m in _pattern(regex).finditer(text)]
    return found if limit < 0 else found[:limit]


# -- lists -----------------------------------------------------------------------------------------------------


def cel_equal(a: Any, b: Any) -> bool:
    """CEL equality on plain values: bools are not numbers, numbers compare across int/uint/double."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(cel_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(cel_equal(a[k], b[k]) for k in a)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


def _is_sorted(items: list[Any]) -> bool:
    return all(not items[i] > items[i + 1] for i in range(len(items) - 1))


def _sum(items: list[Any]) -> Any:
    total: Any = 0.0 if items and isinstance(items[0], float) else 0
    for item in items:
        total = total + item
    return total


def _min(items: list[Any]) -> Any:
    if not items:
        raise LibraryError("min called on empty list")
    return min(items)


def _max(items: list[Any]) -> Any:
    if not items:
        raise LibraryError("max called on empty list")
    return max(items)


def _index_of(items: list[Any], item: Any) -> int:
    return next((i for i, x in enumerate(items) if cel_equal(x, item)), -1)


def _last_index_of(items: list[Any], item: Any) -> int:
    return next((i for i in range(len(items) - 1, -1, -1) if cel_equal(items[i], item)), -1)


def _includes(target: Any, item: Any) -> bool:
    if isinstance(target, list):
        return any(cel_equal(x, item) for x in target)
    return cel_equal(target, item)


# -- URLs ------------------------------------------------------------------------------------------------------


def _url(text: str) -> types_pb2.URL:
    if not _is_url(text):
        raise LibraryError(f"URL parse error during conversion from string: {text!r}")
    return types_pb2.URL(text=text)


def _is_url(text: str) -> bool:
    # Kubernetes accepts absolute URIs and absolute paths (url.ParseRequestURI).
    if not text or any(c in text for c in " \t\n"):
        return False
    parts = urllib.parse.urlsplit(text)
    return bool(parts.scheme) or text.startswith("/")


def _url_parts(u: Any) -> urllib.parse.SplitResult:
    if not isinstance(u, types_pb2.URL):
        raise LibraryError(f"no such overload: URL function on {_type_name(u)}")
    return urllib.parse.urlsplit(u.text)


def _get_hostname(u: Any) -> str:
    netloc = _url_parts(u).netloc.rpartition("@")[2]
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")] if "]" in netloc else ""
    return netloc.partition(":")[0]


def _get_port(u: Any) -> str:
    netloc = _url_parts(u).netloc.rpartition("@")[2]
    if netloc.startswith("["):
        rest = netloc[netloc.find("]") + 1 :] if "]" in netloc else ""
        return rest[1:] if rest.startswith(":") else ""
    return netloc.partition(":")[2]


def _get_query(u: Any) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(_url_parts(u).query, keep_blank_values=True)


# -- IP addresses and CIDRs --------------------------------------------------------------------------------------


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if "%" in text:
        raise LibraryError(f"IP address with zone value is not allowed: {text!r}")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise LibraryError(f"IP Address {text!r} parse error during conversion from string") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise LibraryError(f"IPv4-mapped IPv6 address {text!r} is not allowed")
    return address


def _ip(text: str) -> types_pb2.IP:
    return types_pb2.IP(address=str(_parse_ip(text)))


def _is_ip(text: str) -> bool:
    try:
        _parse_ip(text)
    except LibraryError:
        return False
    return True


def _ip_is_canonical(text: str) -> bool:
    return str(_parse_ip(text)) == text


def _address(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(value, types_pb2.IP):
        raise LibraryError(f"no such overload: IP function on {_type_name(value)}")
    return ipaddress.ip_address(value.address)


def _parse_cidr(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    address, sep, _ = text.partition("/")
    if not sep or "%" in text:
        raise LibraryError(f"network address parse error during conversion from string: {text!r}")
    _parse_ip(address)
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise LibraryError(f"network address parse error during conversion from string: {text!r}") from None


def _cidr(text: str) -> types_pb2.CIDR:
    _parse_cidr(text)
    return types_pb2.CIDR(prefix=text)


def _is_cidr(text: str) -> bool:
    try:
        _parse_cidr(text)
    except LibraryError:
        return False
    return True


def _interface(value: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if not isinstance(value, types_pb2.CIDR):
        raise LibraryError(f"no such overload: CIDR function on {_type_name(value)}")
    return _parse_cidr(value.prefix)


def _contains_ip(cidr: Any, other: Any) -> bool:
    address = _address(other) if isinstance(other, types_pb2.IP) else _parse_ip(str(other))
    return address in _interface(cidr).network


def _contains_cidr(cidr: Any, other: Any) -> bool:
    inner = _interface(other) if isinstance(other, types_pb2.CIDR) else _parse_cidr(str(other))
    outer = _interface(cidr).network
    return inner.version == outer.version and inner.network.subnet_of(outer)  # type: ignore[arg-type]


def _masked(cidr: Any) -> types_pb2.CIDR:
    network = _interface(cidr).network
    return types_pb2.CIDR(prefix=f"{network.network_address}/{network.prefixlen}")


def _to_string(value: Any) -> str:
    if isinstance(value, types_pb2.IP):
        return value.address
    if isinstance(value, types_pb2.CIDR):
        interface = _interface(value)
        return f"{interface.ip}/{interface.network.prefixlen}"
    raise LibraryError(f"no such overload: string({_type_name(value)})")


# -- declarations ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fn:
    """One overload: CEL name, overload id, parameter types (receiver first for members), result type."""

    name: str
    id: str
    params: Sequence[Any]
    result: Any
    impl: Callable[..., Any] | None = None
    member: bool = False


def _member(
    name: str, id: str, params: Sequence[Any], result: Any, impl: Callable[..., Any] | None = None
) -> _Fn:
    return _Fn(name, id, params, result, impl, member=True)


_COMPARABLE = (("int", T.INT), ("uint", T.UINT), ("double", T.DOUBLE), ("bool", T.BOOL), ("duration", T.DURATION),
               ("timestamp", T.TIMESTAMP), ("string", T.STRING), ("bytes", T.BYTES))  # fmt: skip
_SUMMABLE = (("int", T.INT), ("uint", T.UINT), ("double", T.DOUBLE), ("duration", T.DURATION))


def _templated(name: str, kinds: Sequence[tuple[str, Any]], id_of: Callable[[str], str], result_of: Callable[[Any], Any],
               impl: Callable[..., Any]) -> list[_Fn]:  # fmt: skip
    # One runtime implementation for all element types: a list is one kind to the runtime.
    return [
        _member(name, id_of(kind), [T.List(cel_type)], result_of(cel_type), impl if i == 0 else None)
        for i, (kind, cel_type) in enumerate(kinds)
    ]


def _overloads(includes: bool) -> list[_Fn]:
    string_to_semver: Callable[..., Any] = semver_value
    fns = [
        # quantity
        _Fn("quantity", "string_to_quantity", [T.STRING], QUANTITY, quantity_value),
        _Fn("isQuantity", "is_quantity_string", [T.STRING], T.BOOL, lambda s: parse_lenient_quantity(s) is not None),
        _Fn("sign", "quantity_sign", [QUANTITY], T.INT, _sign),
        _member("isGreaterThan", "quantity_is_greater_than", [QUANTITY, QUANTITY], T.BOOL,
                lambda a, b: _compare("isGreaterThan", a, b) > 0),
        _member("isLessThan", "quantity_is_less_than", [QUANTITY, QUANTITY], T.BOOL,
                lambda a, b: _compare("isLessThan", a, b) < 0),
        _member("compareTo", "quantity_compare_to", [QUANTITY, QUANTITY], T.INT,
                lambda a, b: _compare("compareTo", a, b)),
        _member("asApproximateFloat", "quantity_get_float", [QUANTITY], T.DOUBLE,
                lambda q: float(_q(q, "asApproximateFloat"))),
        _member("asInteger", "quantity_get_int", [QUANTITY], T.INT, _quantity_as_integer),
        _member("isInteger", "quantity_is_integer", [QUANTITY], T.BOOL,
                lambda q: _exact_int(_q(q, "isInteger")) is not None),
        _member("add", "quantity_add", [QUANTITY, QUANTITY], QUANTITY, _quantity_add),
        _member("add", "quantity_add_int", [QUANTITY, T.INT], QUANTITY, _quantity_add),
        _member("sub", "quantity_sub", [QUANTITY, QUANTITY], QUANTITY, _quantity_sub),
        _member("sub", "quantity_sub_int", [QUANTITY, T.INT], QUANTITY, _quantity_sub),
        # semver (the comparisons share the quantity implementations: one per kind)
        _Fn("semver", "string_to_semver", [T.STRING], SEMVER, string_to_semver),
        _Fn("semver", "string_bool_to_semver", [T.STRING, T.BOOL], SEMVER, string_to_semver),
        _Fn("isSemver", "is_semver_string", [T.STRING], T.BOOL, lambda s: _is_semver(s, False)),
        _Fn("isSemver", "is_semver_string_bool", [T.STRING, T.BOOL], T.BOOL, _is_semver),
        _member("isGreaterThan", "semver_is_greater_than", [SEMVER, SEMVER], T.BOOL),
        _member("isLessThan", "semver_is_less_than", [SEMVER, SEMVER], T.BOOL),
        _member("compareTo", "semver_compare_to", [SEMVER, SEMVER], T.INT),
        _member("major", "semver_major", [SEMVER], T.INT, _semver_part("major")),
        _member("minor", "semver_minor", [SEMVER], T.INT, _semver_part("minor")),
        _member("patch", "semver_patch", [SEMVER], T.INT, _semver_part("patch")),
        # regex
        _member("find", "string_find_string", [T.STRING, T.STRING], T.STRING, _find),
        _member("findAll", "string_find_all_string", [T.STRING, T.STRING], T.List(T.STRING), _find_all),
        _member("findAll", "string_find_all_string_int", [T.STRING, T.STRING, T.INT], T.List(T.STRING), _find_all),
        # lists
        *_templated("isSorted", _COMPARABLE, lambda k: f"list_{k}_is_sorted_bool", lambda _: T.BOOL, _is_sorted),
        *_templated("sum", _SUMMABLE, lambda k: f"list_{k}_sum_{k}", lambda t: t, _sum),
        *_templated("max", _COMPARABLE, lambda k: f"list_{k}_max_{k}", lambda t: t, _max),
        *_templated("min", _COMPARABLE, lambda k: f"list_{k}_min_{k}", lambda t: t, _min),
        _member("indexOf", "list_a_index_of_int", [T.List(T.DYN), T.DYN], T.INT, _index_of),
        _member("lastIndexOf", "list_a_last_index_of_int", [T.List(T.DYN), T.DYN], T.INT, _last_index_of),
        # URLs
        _Fn("url", "string_to_url", [T.STRING], URL, _url),
        _Fn("isURL", "is_url_string", [T.STRING], T.BOOL, _is_url),
        _member("getScheme", "url_get_scheme", [URL], T.STRING, lambda u: _url_parts(u).scheme),
        _member("getHost", "url_get_host", [URL], T.STRING, lambda u: _url_parts(u).netloc.rpartition("@")[2]),
        _member("getHostname", "url_get_hostname", [URL], T.STRING, _get_hostname),
        _member("getPort", "url_get_port", [URL], T.STRING, _get_port),
        _member("getEscapedPath", "url_get_escaped_path", [URL], T.STRING, lambda u: _url_parts(u).path),
        _member("getQuery", "url_get_query", [URL], T.Map(T.STRING, T.List(T.STRING)), _get_query),
        # IP addresses
        _Fn("ip", "string_to_ip", [T.STRING], IP, _ip),
        _Fn("isIP", "is_ip", [T.STRING], T.BOOL, _is_ip),
        _Fn("ip.isCanonical", "ip_is_canonical", [T.STRING], T.BOOL, _ip_is_canonical),
        _member("family", "ip_family", [IP], T.INT, lambda a: _address(a).version),
        _member("isUnspecified", "ip_is_unspecified", [IP], T.BOOL, lambda a: _address(a).is_unspecified),
        _member("isLoopback", "ip_is_loopback", [IP], T.BOOL, lambda a: _address(a).is_loopback),
        _member("isLinkLocalMulticast", "ip_is_link_local_multicast", [IP], T.BOOL, _link_local_multicast),
        _member("isLinkLocalUnicast", "ip_is_link_local_unicast", [IP], T.BOOL, lambda a: _address(a).is_link_local),
        _member("isGlobalUnicast", "ip_is_global_unicast", [IP], T.BOOL, _global_unicast),
        # CIDRs
        _Fn("cidr", "string_to_cidr", [T.STRING], CIDR, _cidr),
        _Fn("isCIDR", "is_cidr", [T.STRING], T.BOOL, _is_cidr),
        _member("containsIP", "cidr_contains_ip_string", [CIDR, T.STRING], T.BOOL, _contains_ip),
        _member("containsIP", "cidr_contains_ip_ip", [CIDR, IP], T.BOOL, _contains_ip),
        _member("containsCIDR", "cidr_contains_cidr_string", [CIDR, T.STRING], T.BOOL, _contains_cidr),
        _member("containsCIDR", "cidr_contains_cidr", [CIDR, CIDR], T.BOOL, _contains_cidr),
        _member("ip", "cidr_ip", [CIDR], IP, lambda c: types_pb2.IP(address=str(_interface(c).ip))),
        _member("prefixLength", "cidr_prefix_length", [CIDR], T.INT, lambda c: _interface(c).network.prefixlen),
        _member("masked", "cidr_masked", [CIDR], CIDR, _masked),
    ]  # fmt: skip
    if includes:
        fns.append(_member("includes", "list_includes_dyn_dyn", [T.DYN, T.DYN], T.BOOL, _includes))
    return fns


def _is_semver(text: str, normalize: bool) -> bool:
    try:
        semver_value(text, normalize)
    except LibraryError:
        return False
    return True


def _link_local_multicast(value: Any) -> bool:
    address = _address(value)
    if address.version == 4:
        return address in ipaddress.ip_network("224.0.0.0/24")
    return address in ipaddress.ip_network("ff02::/16")


def _global_unicast(value: Any) -> bool:
    # Go's netip.Addr.IsGlobalUnicast: not unspecified, loopback, multicast, link-local or broadcast.
    address = _address(value)
    if address.version == 4 and address == ipaddress.IPv4Address("255.255.255.255"):
        return False
    return not (
        address.is_unspecified or address.is_loopback or address.is_multicast or address.is_link_local
    )


def _declarations(fns: Sequence[_Fn]) -> list[Any]:
    by_name: dict[str, list[Any]] = {}
    for fn in fns:
        overload = cel.Overload(fn.id, fn.result, list(fn.params), is_member=fn.member, impl=_wrap(fn.impl))
        by_name.setdefault(fn.name, []).append(overload)
    return [cel.FunctionDecl(name, overloads) for name, overloads in by_name.items()]


def _wrap(impl: Callable[..., Any] | None) -> Callable[..., Any] | None:
    if impl is None:
        return None

    def call(*args: Any) -> Any:
        try:
            return impl(*args)
        except LibraryError:
            raise
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise LibraryError(str(exc)) from None

    return call


def library(includes: bool, runtime: bool) -> Any:
    """The Kubernetes library functions (``includes`` only where list-type attributes are allowed), as one
    extension: some names (``indexOf``, ``string``) add overloads to functions CEL already has, which only
    an extension may do.

    The type checker gets every overload; the runtime only those with an implementation (it binds an
    overload without one to its function's other implementation and then finds it registered twice).
    """
    fns = [
        *_overloads(includes),
        _Fn("string", "ip_to_string", [IP], T.STRING, _to_string),
        _Fn("string", "cidr_to_string", [CIDR], T.STRING),  # the same implementation: one kind
    ]
    return cel.CelExtension("kubernetes", _declarations([fn for fn in fns if fn.impl or not runtime]))


def cross_type_comparisons() -> Any:
    """Type-checker declarations for ``1 < 1.5``, ``2u > 1`` (Kubernetes enables cross-type numeric
    comparisons). Only the checker needs them: the runtime implements them already and refuses to have
    them registered twice, so they belong to the checking environment alone."""
    numbers = (("int64", T.INT), ("uint64", T.UINT), ("double", T.DOUBLE))
    decls = []
    for function, name in (
        ("_<_", "less"),
        ("_<=_", "less_equals"),
        ("_>_", "greater"),
        ("_>=_", "greater_equals"),
    ):
        overloads = [
            cel.Overload(f"{name}_{left}_{right}", T.BOOL, [lt, rt])
            for left, lt in numbers
            for right, rt in numbers
            if left != right
        ]
        decls.append(cel.FunctionDecl(function, overloads))
    return cel.CelExtension("kubernetes.crossnumeric", decls)
