"""driver.quantity: the API server's quantity grammar, exact, without importing the kubernetes package."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.utils.quantity import parse_quantity as k8s_parse_quantity

from driver.quantity import is_quantity, parse_quantity

SUFFIXES = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E"]


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(SUFFIXES))
def test_agrees_with_the_kubernetes_client_on_canonical_quantities(number: int, suffix: str) -> None:
    text = f"{number}{suffix}"
    assert parse_quantity(text) == k8s_parse_quantity(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("81559Mi", 81559 * 2**20),
        ("1.5G", 1_500_000_000),
        ("500m", Decimal("0.5")),
        ("1e3", 1000),
        ("-2Ki", -2048),
    ],
)
def test_values(text: str, value: Decimal | int) -> None:
    assert parse_quantity(text) == value
    assert is_quantity(text)


@pytest.mark.parametrize("text", ["", "200K", "1Gi\n", "\t1Gi", "1,5G", "Gi", "1ki", "abc"])
def test_what_the_api_server_rejects_is_rejected(text: str) -> None:
    assert not is_quantity(text)
    with pytest.raises(ValueError, match="invalid quantity"):
        parse_quantity(text)


@pytest.mark.parametrize("text", [" 1Gi", "1Gi ", "\u00a01Gi"])
def test_spaces_around_a_quantity_are_trimmed_as_the_api_server_does(text: str) -> None:
    assert is_quantity(text) and parse_quantity(text) == 2**30


def test_json_numbers_are_quantities() -> None:
    assert parse_quantity(5) == 5
    assert parse_quantity(0.25) == Decimal("0.25")
    with pytest.raises(ValueError):
        parse_quantity(True)


def test_big_values_are_exact() -> None:
    assert parse_quantity("123456789012345678901234567890123Ei") == 123456789012345678901234567890123 * 2**60
