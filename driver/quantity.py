"""Kubernetes ``resource.Quantity`` values as exact decimals, without importing the ``kubernetes`` package.

``kubernetes.utils.parse_quantity`` needs ``import kubernetes``, which loads the whole client (about half a
second and 35 MB in every process that touches a quantity); the plugin and the exporter parse a handful of
device memory sizes. The grammar is the API server's: a signed decimal number with a binary (Ki..Ei) or
decimal (n..E) suffix, or an exponent. Unlike ``kubernetes.utils``, "200K" and surrounding spaces are
rejected (the API server rejects them too), and big values are not rounded to 28 digits.
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
    match = QUANTITY_RE.match(value)
    if not match:
        raise ValueError(f"invalid quantity {value!r} (examples of valid ones: 80Gi, 1.5G, 500m, 1e3)")
    number, exponent, suffix = Decimal(match.group(1)), match.group(2), match.group(3) or ""
    if suffix in _BINARY:
        return _CONTEXT.multiply(number, Decimal(2 ** _BINARY[suffix]))
    power = int(exponent) if exponent is not None else _DECIMAL_EXPONENT[suffix]
    return _CONTEXT.scaleb(number, power)


def is_quantity(text: str) -> bool:
    return bool(QUANTITY_RE.match(text))
