"""What other claims already hold, as kube-scheduler gathers it from their ``status.allocation``.

Each result of an allocated claim is one of:

- admin access: not counted (such a device stays available to everyone);
- shared (it has a ``shareID``, the device allows multiple allocations): one share of the device, and the
  ``consumedCapacity`` it holds adds to the device's consumed capacity;
- otherwise dedicated: nobody else may allocate the device.

A device is *allocated* (its shared counters are consumed) when it is held in any of these ways.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from driver.allocation.capacity import add
from driver.allocation.model import object_ref
from driver.allocation.pools import DeviceKey
from driver.quantity import parse_quantity


@dataclass
class AllocatedState:
    """Devices held by allocated claims (``structured.AllocatedState`` plus who holds what)."""

    dedicated: dict[DeviceKey, str | None] = field(default_factory=dict)  # device -> holding claim
    shared: dict[DeviceKey, dict[str, str | None]] = field(default_factory=dict)  # device -> shareID -> claim
    capacity: dict[DeviceKey, dict[str, Decimal]] = field(default_factory=dict)  # consumed by shares

    def is_allocated(self, key: DeviceKey) -> bool:
        return key in self.dedicated or key in self.shared or key in self.capacity

    def capacity_in_use(self, key: DeviceKey) -> bool:
        """Some share of the device is allocated (its counters are already consumed)."""
        return key in self.capacity or key in self.shared

    def holders(self, key: DeviceKey) -> list[str]:
        """The claims holding a device, for explanations (unknown holders are left out)."""
        named = [self.dedicated.get(key), *(self.shared.get(key) or {}).values()]
        return sorted({h for h in named if h})

    @classmethod
    def from_claims(cls, claims: Iterable[Mapping[str, Any]], exclude: Iterable[str] = ()) -> AllocatedState:
        """From allocated claims; ``exclude`` lists claim UIDs or ``namespace/name`` refs to leave out (the
        claims being allocated). Malformed entries are skipped: they are not ours to judge."""
        skip = set(exclude)
        state = cls()
        for claim in claims:
            ref, uid = object_ref(claim), (claim.get("metadata") or {}).get("uid")
            if ref in skip or (uid and uid in skip):
                continue
            allocation = (claim.get("status") or {}).get("allocation") or {}
            for result in (allocation.get("devices") or {}).get("results") or ():
                state.add_result(result, ref)
        return state

    def add_result(self, result: Mapping[str, Any], holder: str | None = None) -> None:
        if result.get("adminAccess") is True:
            return
        key = (str(result.get("driver")), str(result.get("pool")), str(result.get("device")))
        share = result.get("shareID")
        if share is None:
            self.dedicated.setdefault(key, holder)
            return
        self.shared.setdefault(key, {})[str(share)] = holder
        consumed = result.get("consumedCapacity")
        if isinstance(consumed, Mapping):
            add(self.capacity.setdefault(key, {}), {str(k): parse_quantity(v) for k, v in consumed.items()})

    @classmethod
    def coerce(
        cls, value: AllocatedState | Mapping[DeviceKey, str | None] | AbstractSet[DeviceKey]
    ) -> AllocatedState:
        """Accept a state, a set of dedicated devices, or a map of dedicated devices to their holders."""
        if isinstance(value, AllocatedState):
            return value
        if isinstance(value, Mapping):
            return cls(dedicated=dict(value))
        return cls(dedicated=dict.fromkeys(value))
