"""Consumable capacity (KEP-5075, beta and on since Kubernetes 1.36) the way kube-scheduler 1.37 computes it.

A request may ask for an amount of a device's capacities (``capacity.requests``). For each capacity of the
device, the amount consumed is:

- nothing asked: the capacity's ``requestPolicy.default``, else the whole capacity;
- no ``requestPolicy``: what was asked;
- ``validRange``: at least ``min``, rounded up to the next ``step`` above ``min``;
- ``validValues``: the smallest valid value at or above what was asked (else what was asked, which then
  violates the policy).

A device fits when it has every capacity asked for, no consumed amount violates the policy (above ``max``,
off the step grid, not a valid value) and what other claims hold plus what this allocation already took
plus the new amount stays within the capacity. Values that cannot be represented (past 2^63-1, or past the
milli range with fractional steps) and negative amounts are errors that abort the allocation, as upstream.

With ``DRAFractionalCapacityRange`` (beta, on in 1.37) step arithmetic is done in thousandths when min,
max and step all fit; otherwise in whole units rounded up, as ``Quantity.Value()`` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from driver.quantity import canonical, format_quantity, stored

MAX_INT64 = 2**63 - 1


class CapacityError(ValueError):
    """A capacity request that cannot be computed; the allocation stops with this error."""


@dataclass(frozen=True)
class Quantity:
    """A quantity as apimachinery holds it: exact value, format (for values computed from it), and text."""

    value: Decimal
    fmt: str
    text: str

    @classmethod
    def parse(cls, raw: Any) -> Quantity:
        """``ValueError`` when ``raw`` is not a quantity; texts already seen are remembered."""
        if isinstance(raw, str):
            found = _parsed.get(raw)
            if found is None:
                found = _parsed[raw] = cls(*stored(raw), canonical(raw))
            return found
        value, fmt = stored(raw)
        return cls(value, fmt, canonical(raw))

    @classmethod
    def computed(cls, value: Decimal, fmt: str) -> Quantity:
        return cls(value, fmt, format_quantity(value, fmt))

    def whole(self) -> int:
        """``Value()``: rounded up, away from zero."""
        return _away_from_zero(self.value)

    def milli(self) -> int:
        """``MilliValue()``: thousandths, rounded up, away from zero."""
        return _away_from_zero(self.value * 1000)

    def exact_milli(self) -> int | None:
        """Thousandths when that loses nothing and fits an int64, else None (``safeMilliValue``)."""
        milli = self.value * 1000
        if milli != milli.to_integral_value() or abs(milli) > MAX_INT64:
            return None
        return int(milli)


_parsed: dict[str, Quantity] = {}


def _away_from_zero(value: Decimal) -> int:
    return math.ceil(value) if value >= 0 else math.floor(value)


@dataclass(frozen=True)
class RequestPolicy:
    default: Quantity | None
    valid_values: tuple[Quantity, ...] | None
    range_min: Quantity | None
    range_max: Quantity | None
    range_step: Quantity | None
    has_range: bool


@dataclass(frozen=True)
class DeviceCapacity:
    value: Quantity
    policy: RequestPolicy | None


Consumed = dict[str, Decimal]
"""Capacity name -> amount, for one device."""


def device_capacities(device: Mapping[str, Any]) -> dict[str, DeviceCapacity]:
    """A device's ``capacity`` map parsed; ``ValueError`` names the capacity that is malformed."""
    out: dict[str, DeviceCapacity] = {}
    for name, entry in (device.get("capacity") or {}).items():
        try:
            out[name] = DeviceCapacity(
                Quantity.parse(entry.get("value")), _policy(entry.get("requestPolicy"))
            )
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"capacity {name}: {exc}") from None
    return out


def _policy(raw: Any) -> RequestPolicy | None:
    if not isinstance(raw, Mapping):
        return None

    def quantity(value: Any) -> Quantity | None:
        return None if value is None else Quantity.parse(value)

    valid_range = raw.get("validRange")
    valid_values = raw.get("validValues")
    return RequestPolicy(
        default=quantity(raw.get("default")),
        valid_values=None if valid_values is None else tuple(Quantity.parse(v) for v in valid_values),
        range_min=quantity((valid_range or {}).get("min")),
        range_max=quantity((valid_range or {}).get("max")),
        range_step=quantity((valid_range or {}).get("step")),
        has_range=isinstance(valid_range, Mapping),
    )


def consumed_amount(
    requested: Quantity | None, capacity: DeviceCapacity, fractional: bool = True
) -> Quantity:
    """What one allocation consumes of one capacity (``calculateConsumedCapacity``)."""
    policy = capacity.policy
    if requested is None:
        return policy.default if policy is not None and policy.default is not None else capacity.value
    if policy is None:
        return requested
    if policy.has_range and policy.range_min is not None:
        return _round_up_range(requested, policy, fractional)
    if policy.valid_values is not None:
        return next((v for v in policy.valid_values if requested.value <= v.value), requested)
    return requested


def _round_up_range(requested: Quantity, policy: RequestPolicy, fractional: bool) -> Quantity:
    low, step = policy.range_min, policy.range_step
    assert low is not None
    if requested.value < low.value:
        return low
    if step is None:
        return requested
    if _use_milli(policy, fractional):
        asked = requested.exact_milli()
        if asked is None:
            raise CapacityError(f"request {requested.text} is not a representable milli value")
        step_m, low_m = step.milli(), low.milli()
        steps = _ceil_div(asked - low_m, step_m)
        if steps > (MAX_INT64 - low_m) // step_m:
            raise CapacityError(
                f"rounding request {requested.text} up to the next step passes the milli range"
            )
        return Quantity.computed(Decimal(low_m + step_m * steps) / 1000, step.fmt)
    if requested.value > MAX_INT64:
        raise CapacityError(f"request {requested.text} exceeds MaxInt64")
    step_i, low_i = step.whole(), low.whole()
    steps = _ceil_div(requested.whole() - low_i, step_i)
    if low_i >= 0 and steps > (MAX_INT64 - low_i) // step_i:
        raise CapacityError(f"rounding request {requested.text} up to the next step passes MaxInt64")
    return Quantity.computed(Decimal(low_i + step_i * steps), step.fmt)


def _ceil_div(numerator: int, denominator: int) -> int:
    """Go's truncating division, plus one when there is a remainder (as upstream rounds steps)."""
    quotient = abs(numerator) // abs(denominator) * (1 if (numerator >= 0) == (denominator >= 0) else -1)
    return quotient + 1 if numerator - quotient * denominator != 0 else quotient


def _use_milli(policy: RequestPolicy, fractional: bool) -> bool:
    if not fractional:
        return False
    for quantity in (policy.range_min, policy.range_max, policy.range_step):
        if quantity is not None and quantity.exact_milli() is None:
            return False
    return policy.range_step is None or policy.range_step.milli() >= 1


def violates_policy(amount: Quantity, policy: RequestPolicy | None, fractional: bool = True) -> str | None:
    """Why ``amount`` breaks the capacity's request policy, or None."""
    if policy is None:
        return None
    if policy.default is not None and amount.value == policy.default.value:
        return None
    if policy.has_range:
        if policy.range_max is not None and amount.value > policy.range_max.value:
            return f"{amount.text} is above the maximum {policy.range_max.text}"
        step, low = policy.range_step, policy.range_min
        if step is not None and low is not None:
            if _use_milli(policy, fractional):
                asked = amount.exact_milli()
                if asked is None:
                    return f"{amount.text} is not a whole number of thousandths"
                off = _remainder(asked - low.milli(), step.milli())
            else:
                off = _remainder(amount.whole() - low.whole(), step.whole())
            if off:
                return f"{amount.text} is not {low.text} plus a multiple of {step.text}"
        return None
    if policy.valid_values and all(amount.value != v.value for v in policy.valid_values):
        return f"{amount.text} is not one of {', '.join(v.text for v in policy.valid_values)}"
    return None


def _remainder(numerator: int, denominator: int) -> int:
    """Go's ``%``: the sign follows the numerator."""
    remainder = abs(numerator) % abs(denominator)
    return -remainder if numerator < 0 else remainder


@dataclass(frozen=True)
class CapacityVerdict:
    """Whether a device can give a request what it asks, and what that consumes; ``reason`` when not."""

    fits: bool
    consumed: dict[str, Quantity]
    reason: str = ""


def check_request(
    requests: Mapping[str, Quantity],
    capacities: Mapping[str, DeviceCapacity],
    held: Mapping[str, Decimal] | None = None,
    allocating: Mapping[str, Decimal] | None = None,
    fractional: bool = True,
) -> CapacityVerdict:
    """``CmpRequestOverCapacity``: ``held`` is what allocated claims consume of the device, ``allocating``
    what this allocation already took. :class:`CapacityError` for amounts that cannot be computed."""
    missing = [name for name in requests if name not in capacities]
    if missing:
        return CapacityVerdict(False, {}, f"it has no capacity {', '.join(sorted(missing))}")
    consumed: dict[str, Quantity] = {}
    for name, capacity in capacities.items():
        try:
            amount = consumed_amount(requests.get(name), capacity, fractional)
        except CapacityError as exc:
            raise CapacityError(f"capacity {name!r}: {exc}") from None
        if amount.value < 0:
            raise CapacityError(f"capacity {name!r}: capacity value is negative")
        consumed[name] = amount
    for name, capacity in sorted(capacities.items()):
        amount = consumed[name]
        problem = violates_policy(amount, capacity.policy, fractional)
        if problem:
            return CapacityVerdict(False, consumed, f"capacity {name}: {problem}")
        total = amount.value + (held or {}).get(name, Decimal(0)) + (allocating or {}).get(name, Decimal(0))
        if total > capacity.value.value:
            left = (
                capacity.value.value
                - (held or {}).get(name, Decimal(0))
                - (allocating or {}).get(name, Decimal(0))
            )
            return CapacityVerdict(
                False,
                consumed,
                f"capacity {name}: needs {amount.text}, {format_quantity(max(left, Decimal(0)), capacity.value.fmt)} "
                f"of {capacity.value.text} left",
            )
    return CapacityVerdict(True, consumed)


def add(into: dict[str, Decimal], amounts: Mapping[str, Decimal]) -> None:
    for name, amount in amounts.items():
        into[name] = into.get(name, Decimal(0)) + amount


def subtract(into: dict[str, Decimal], amounts: Mapping[str, Decimal]) -> None:
    for name, amount in amounts.items():
        if name in into:
            into[name] -= amount
