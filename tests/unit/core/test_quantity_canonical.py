"""driver.quantity.canonical: the text the API server returns for a stored quantity (apimachinery's rules)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver.quantity import canonical, parse_quantity

# (sent, returned) pairs from apimachinery's quantity_test.go (TestQuantityParseEmit, the alternates of
# TestQuantityString, the rounding cases of TestQuantityParse) plus the forms the DRA driver meets.
UPSTREAM = [
    ("1Ki", "1Ki"),
    ("1Mi", "1Mi"),
    ("1Gi", "1Gi"),
    ("1024Mi", "1Gi"),
    ("1000M", "1G"),
    (".001Ki", "1024m"),
    (".000001Ki", "1024u"),
    (".000000001Ki", "1024n"),
    (".000000000001Ki", "2n"),
    ("307200Ki", "300Mi"),
    ("1025024Mi", "1001Gi"),
    ("1024Gi", "1Ti"),
    ("5000m", "5"),
    ("0.5", "500m"),
    ("0.001T", "1G"),
    ("1000u", "1m"),
    ("1.08", "1080m"),
    ("1080000000n", "1080m"),
    (".001e12", "1e9"),
    ("0.001e0", "1e-3"),
    ("1000e-12", "1e-9"),
    ("00", "0"),
    ("0Ki", "0"),
    # quantity_test.go expects "1e21" and "5e21" from String(); the JSON a kube-apiserver 1.37 returns has
    # the mantissa alone (tests/realk8s/test_api_fidelity.py sends it to one).
    ("1000E", "1"),
    ("5000E", "5"),
    ("3.001n", "4n"),
    ("0.00000012345", "124n"),
    ("9Ei", "9223372036854775807"),
    ("12E", "12E"),
    ("100.035Ki", "102435840m"),
    ("0.5Mi", "512Ki"),
    ("1e3", "1e3"),
    ("1.3E+6", "1300e3"),
]
DRIVER_FORMS = [
    ("81920Mi", "80Gi"),
    ("80Gi", "80Gi"),
    ("1000000", "1M"),
    ("1500000", "1500k"),
    ("12345678", "12345678"),
    ("1536", "1536"),
    ("2048", "2048"),  # decimal text stays decimal: the format comes from the suffix
    ("1000Mi", "1000Mi"),
    ("+1Gi", "+1Gi"),  # already canonical text is kept verbatim, sign and all
    ("1.", "1."),
]


@pytest.mark.parametrize(("sent", "returned"), UPSTREAM + DRIVER_FORMS)
def test_matches_apimachinery(sent: str, returned: str) -> None:
    assert canonical(sent) == returned


@pytest.mark.parametrize(("sent", "returned"), [(s, r) for s, r in UPSTREAM if r != "0"])
def test_negative_values_mirror_positive_ones(sent: str, returned: str) -> None:
    assert canonical("-" + sent) == "-" + returned


@pytest.mark.parametrize(("number", "returned"), [(1000, "1k"), (1500000, "1500k"), (0, "0"), (0.5, "500m")])
def test_json_numbers(number: int | float, returned: str) -> None:
    assert canonical(number) == returned


def test_surrounding_space_is_trimmed_as_the_json_decoder_does() -> None:
    assert canonical(" 81920Mi ") == "80Gi"


@pytest.mark.parametrize("bad", ["", "200K", "1,5G", "Gi", "abc", True])
def test_rejects_what_is_not_a_quantity(bad: object) -> None:
    with pytest.raises(ValueError):
        canonical(bad)  # type: ignore[arg-type]


SUFFIXES = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "n", "u", "m", "k", "M", "G", "T", "P"]


@given(st.integers(min_value=-(10**12), max_value=10**12), st.sampled_from(SUFFIXES))
def test_canonical_form_is_stable_and_keeps_the_value(number: int, suffix: str) -> None:
    text = f"{number}{suffix}"
    once = canonical(text)
    assert canonical(once) == once
    value = parse_quantity(text)
    if suffix.endswith("i") and abs(value) > 2**63 - 1:
        value = Decimal(2**63 - 1) * (1 if value > 0 else -1)  # binary quantities are capped at parse
    if abs(value) >= 10**21 and once.lstrip("-").isdigit():
        return  # a mantissa whose exponent has no suffix (past 999E) is written alone (see UPSTREAM)
    assert parse_quantity(once) == value


@given(st.integers(min_value=1, max_value=2**42))
def test_whole_mebibytes_use_the_largest_binary_suffix(mebibytes: int) -> None:
    text = canonical(f"{mebibytes}Mi")
    assert text[-2:] in ("Mi", "Gi", "Ti", "Pi", "Ei")
    number = int(text[:-2])
    assert number % 1024 != 0
    assert parse_quantity(text) == Decimal(mebibytes) * 2**20
