"""Kubernetes ``resource.Quantity`` values as exact decimals, without importing the ``kubernetes`` package.

``kubernetes.utils.parse_quantity`` needs ``import kubernetes``, which loads the whole client (about half a
second and 35 MB in every process that touches a quantity); the plugin and the exporter parse a handful of
device memory sizes. The grammar is the API server's: a signed decimal number with a binary (Ki..Ei) or
decimal (n..E) suffix, or an exponent. Unlike ``kubernetes.utils``, "200K" and surrounding spaces are
rejected (the API server rejects them too), and big values are not rounded to 28 digits.

:func:`canonical` is the text the API server sends back for a quantity it stored (apimachinery's
``Quantity.MarshalJSON``): ``81920Mi`` -> ``80Gi``, ``1000`` -> ``1k``, ``0.5`` -> ``500m``. A driver that
compares what it wants with what the server holds must compare canonical forms, or every resync writes.
"""

from __future__ import annotations

import decimal
import re
from decimal import Decimal

# Quantities are arbitrary precision in Kubernetes; 28 digits (Python's default) would round big ones.
_CONTEXT = decimal.Context(prec=120)
QUANTITY_RE = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:[eE]([+-]?[0-9]+)|([KMGTPE]i|[numkMGTPE]))?$"
)
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_EXPONENT = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse_quantity(value: str | int | float | Decimal) -> Decimal:
    """The exact value of a quantity (a JSON number is taken as it is); ``ValueError`` when it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"invalid quantity {value!r}")
    if isinstance(value, int | Decimal):
        return Decimal(value)
    if isinstance(value, float):
        value = repr(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid quantity {value!r}")
    match = QUANTITY_RE.fullmatch(trim(value))
    if not match:
        raise ValueError(f"invalid quantity {value!r} (examples of valid ones: 80Gi, 1.5G, 500m, 1e3)")
    number, exponent, suffix = Decimal(match.group(1)), match.group(2), match.group(3) or ""
    if suffix in _BINARY:
        return _CONTEXT.multiply(number, Decimal(2 ** _BINARY[suffix]))
    power = int(exponent) if exponent is not None else _DECIMAL_EXPONENT[suffix]
    return _CONTEXT.scaleb(number, power)


def is_quantity(text: str) -> bool:
    return bool(QUANTITY_RE.fullmatch(trim(text)))


# Control characters cannot stand raw in a JSON string: a decoded "\n" was the escape "\\n", which the
# server does not trim.
_ESCAPED_ONLY = "\t\n\v\f\r"


def trim(text: str) -> str:
    """What the server's quantity decoder trims from a JSON string: white space around it, as written raw
    (``" 1Gi"`` is ``1Gi``; ``"1Gi\\n"`` stays invalid)."""
    start, end = 0, len(text)
    while start < end and text[start].isspace() and text[start] not in _ESCAPED_ONLY:
        start += 1
    while end > start and text[end - 1].isspace() and text[end - 1] not in _ESCAPED_ONLY:
        end -= 1
    return text[start:end]


# -- canonical form (apimachinery quantity.go: ParseQuantity, then CanonicalizeBytes) ----------------------

_NANO = -9
_MAX_ALLOWED = Decimal(2**63 - 1)  # binary quantities are capped here when parsed
_DECIMAL_SUFFIX = {exp: suffix for suffix, exp in _DECIMAL_EXPONENT.items()}
_BINARY_SUFFIX = {0: "", **{shift // 10: suffix for suffix, shift in _BINARY.items()}}


def canonical(value: str | int | float | Decimal) -> str:
    """The form the API server stores and returns a quantity in; ``ValueError`` when it is not one.

    Follows apimachinery exactly: text already in canonical form is kept as sent (``+1Gi`` stays), other
    text is rewritten -- trailing zeros fold into the largest suffix of the same family (decimal or binary),
    values are rounded up to 1n, binary values are capped at 2^63-1, and a binary value below 1024 or with a
    fraction is shown in decimal. A JSON number is its decimal text (``1000`` -> ``1k``).
    """
    text = _text(value)
    kept, amount, fmt = _parse_for_canonical(text)
    return text if kept else _format(amount, fmt)


def stored(value: str | int | float | Decimal) -> tuple[Decimal, str]:
    """(the exact value the API server stores, its format: ``BinarySI``, ``DecimalSI`` or ``DecimalExponent``);
    ``ValueError`` when it is not a quantity."""
    _, amount, fmt = _parse_for_canonical(_text(value))
    return amount, fmt


def format_quantity(amount: Decimal, fmt: str) -> str:
    """The canonical text of a value computed in ``fmt`` (apimachinery's ``NewQuantity(v, fmt).String()``)."""
    return _format(amount, fmt)


def _text(value: str | int | float | Decimal) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise ValueError(f"invalid quantity {value!r}")
    if isinstance(value, str):
        return trim(value)
    return repr(value) if isinstance(value, float) else str(value)


def _parse_for_canonical(text: str) -> tuple[bool, Decimal, str]:
    """(whether the server keeps ``text`` verbatim, the exact stored value, the format)."""
    match = QUANTITY_RE.fullmatch(text)
    if not match:
        raise ValueError(f"invalid quantity {text!r}")
    if text == "0":
        return True, Decimal(0), "DecimalSI"
    number, exp_text, suffix = match.group(1), match.group(2), match.group(3) or ""
    negative = number.startswith("-")
    whole, _, denom = number.lstrip("+-").partition(".")
    num = whole.lstrip("0") or "0"
    if suffix in _BINARY:
        fmt, base, exponent = "BinarySI", 2, _BINARY[suffix]
    elif exp_text is not None:
        fmt, base, exponent = "DecimalExponent", 10, int(exp_text)
    else:
        fmt, base, exponent = "DecimalSI", 10, _DECIMAL_EXPONENT[suffix]
    fast = _fast_path(num, denom, negative, fmt, exponent)
    if fast is not None:
        return fast
    if base == 2:
        amount = _CONTEXT.multiply(Decimal(number), Decimal(2**exponent))
    else:
        amount = _CONTEXT.scaleb(Decimal(number), exponent)
    magnitude = abs(amount)
    if magnitude:
        magnitude = magnitude.quantize(Decimal(1).scaleb(_NANO), rounding=decimal.ROUND_UP, context=_CONTEXT)
    if fmt == "BinarySI" and magnitude > _MAX_ALLOWED:
        magnitude = _MAX_ALLOWED
    if fmt == "BinarySI" and 0 < magnitude < 1:
        fmt = "DecimalSI"
    return False, -magnitude if negative else magnitude, fmt


def _fast_path(
    num: str, denom: str, negative: bool, fmt: str, exponent: int
) -> tuple[bool, Decimal, str] | None:
    """apimachinery's int64 parse: exact, and it decides whether the sent text is already canonical."""
    if fmt == "BinarySI":
        if denom:
            return None
        scale, mantissa = 0, 1 << exponent
        precision = 15 - len(num) - (exponent * 3 // 10) - 1
    else:
        scale, mantissa = exponent, 1
        precision = 18 - len(num) - len(denom)
    scale -= len(denom)
    if precision < 0 or scale < _NANO:
        return None
    shifted = num + denom
    unsigned = int(shifted)
    result = unsigned * mantissa
    if result > 2**63 - 1:
        return None  # int64 overflow: the exact (slow) path takes over
    amount = _CONTEXT.scaleb(Decimal(-result if negative else result), scale)
    if fmt == "BinarySI":
        kept = unsigned & 7 != 0
    else:
        kept = scale % 3 == 0 and not shifted.endswith("000") and shifted[0] != "0"
    return kept, amount, fmt


def _format(amount: Decimal, fmt: str) -> str:
    if amount == 0:
        return "0"
    if fmt == "BinarySI" and (-1024 < amount < 1024 or amount != amount.to_integral_value()):
        fmt = "DecimalSI"  # small or fractional binary values are shown in decimal, without rounding
    if fmt == "BinarySI":
        mantissa, power = _strip_factor(int(amount), 1024)
        if power in _BINARY_SUFFIX:
            return f"{mantissa}{_BINARY_SUFFIX[power]}"
        fmt = "DecimalExponent"  # past Ei (not reachable from a parsed value: it is capped)
    sign, digits, exp = amount.normalize(_CONTEXT).as_tuple()
    assert isinstance(exp, int)
    mantissa = int("".join(map(str, digits))) * (-1 if sign else 1)
    shift = exp % 3  # lower the exponent to a multiple of three
    mantissa, exp = mantissa * 10**shift, exp - shift
    if fmt == "DecimalSI":
        # Past E (10^18) apimachinery finds no suffix and writes the mantissa alone: "1000E" is stored as
        # "1" (kube-apiserver 1.37 does so; a value that large loses its magnitude on a real cluster too).
        return f"{mantissa}{_DECIMAL_SUFFIX.get(exp, '')}"
    return f"{mantissa}e{exp}" if exp else str(mantissa)


def _strip_factor(value: int, base: int) -> tuple[int, int]:
    magnitude, times = abs(value), 0
    while magnitude >= base and magnitude % base == 0:
        magnitude //= base
        times += 1
    return (-magnitude if value < 0 else magnitude), times
