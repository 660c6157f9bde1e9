"""Quantities (``resource.Quantity``) as the API server decodes them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from driver import quantity
from driver.kube.api.fields import Errors, Path, type_invalid


def is_quantity(value: Any) -> bool:
    """Whether the server would parse ``value`` as a ``resource.Quantity`` (JSON string or number)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        value = repr(value)
    return isinstance(value, str) and quantity.is_quantity(value)


def quantity_or_zero(value: Any) -> Any:
    """A required quantity left out (or null) decodes as zero."""
    return "0" if value is None else value


def quantity_value(value: Any) -> Decimal:
    """The numeric value of a quantity already checked with :func:`is_quantity`."""
    return quantity.parse_quantity(value)


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
