"""Published capacities are already in the API server's canonical form, so they read back unchanged."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from driver.quantity import canonical, parse_quantity
from driver.resources.attributes import format_quantity


@given(st.integers(min_value=0, max_value=2**62))
def test_format_quantity_is_canonical_and_exact(value: int) -> None:
    text = format_quantity(value)
    assert canonical(text) == text
    assert parse_quantity(text) == value
