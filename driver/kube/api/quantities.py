"""Quantities (``resource.Quantity``) as the API server decodes them."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from driver.kube.api.fields import Errors, Path, type_invalid
from driver.quantity import trim

# Go's resource.Quantity grammar: sign, decimal number, then a binary-SI, decimal-SI or exponent suffix.
_QUANTITY_RE = re.compile(
    r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)


# Semantic Versioning 2.0.0, exactly as the server's regular expression: no leading zeros, no "v".
def is_quantity(value: Any) -> bool:
    """Whether the server would parse ``value`` as a ``resource.Quantity`` (JSON string or number)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        value = repr(value)
    return isinstance(value, str) and bool(_QUANTITY_RE.fullmatch(trim(value)))


def quantity_or_zero(value: Any) -> Any:
    """A required quantity left out (or null) decodes as zero."""
    return "0" if value is None else value


def quantity_value(value: Any) -> Decimal:
    """The numeric value of a quantity already checked with :func:`is_quantity`."""
    from driver.quantity import parse_quantity

    return parse_quantity(value)


def validate_quantity(value: Any, path: Path, out: Errors) -> bool:
    if is_quantity(value):
        return True
    out.append(
        type_invalid(
            path,
            value,
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
        )
    )
    return False
