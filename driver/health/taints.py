"""ResourceSlice device taints for a device's health, within what the API server version accepts.

Keys (all in the driver's domain):

- ``<driver>/gpu-lost`` (no value), effect ``NoSchedule``: the GPU is gone or does not answer;
- ``<driver>/xid`` = the XID number, effect ``NoSchedule`` for a fatal XID, ``None`` for an ignorable one;
- ``<driver>/unmonitored`` (no value), effect ``None``: the GPU's events cannot be watched.

The ``None`` effect (informational, never blocks allocation) exists from Kubernetes 1.35; on 1.34 the
API server rejects it, so the informational taints are left out there. 1.34 allows 4 taints per device,
1.35 allows 16; this driver sets at most 3. Slices holding tainted devices carry at most 64 devices
(:func:`driver.resources.slices.slice_capacity`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from driver.health.state import DeviceHealth

JSON = dict[str, Any]

LOST = "gpu-lost"
XID = "xid"
UNMONITORED = "unmonitored"
#: Key suffixes of the taints this driver manages, most important first (kept when a limit applies).
KEYS = (LOST, XID, UNMONITORED)


@dataclass(frozen=True)
class TaintRules:
    """What the API server accepts in ``spec.devices[].taints``."""

    allow_none_effect: bool = False
    max_per_device: int = 4

    @classmethod
    def for_version(cls, major: int, minor: int) -> TaintRules:
        if (major, minor) >= (1, 35):
            return cls(allow_none_effect=True, max_per_device=16)
        return cls()

    @classmethod
    def from_version_info(cls, info: JSON) -> TaintRules:
        """From ``GET /version`` (``minor`` may carry a ``+`` suffix on managed clusters, e.g. ``35+``)."""
        try:
            major = int(re.sub(r"\D.*$", "", str(info.get("major", ""))))
            minor = int(re.sub(r"\D.*$", "", str(info.get("minor", ""))))
        except ValueError:
            match = re.match(r"^v?(\d+)\.(\d+)", str(info.get("gitVersion", "")))
            if not match:
                return cls()
            major, minor = int(match.group(1)), int(match.group(2))
        return cls.for_version(major, minor)


def taint_key(driver: str, suffix: str) -> str:
    return f"{driver}/{suffix}"


def device_taints(health: DeviceHealth, driver: str, rules: TaintRules) -> list[JSON]:
    """The taints that describe ``health`` (``[]`` for a healthy, monitored device)."""
    taints: list[JSON] = []
    if health.lost is not None:
        taints.append({"key": taint_key(driver, LOST), "effect": "NoSchedule"})
    if health.xid is not None and (health.xid_fatal or rules.allow_none_effect):
        taints.append(
            {
                "key": taint_key(driver, XID),
                "value": str(health.xid),
                "effect": "NoSchedule" if health.xid_fatal else "None",
            }
        )
    if health.unmonitored and rules.allow_none_effect:
        taints.append({"key": taint_key(driver, UNMONITORED), "effect": "None"})
    return taints[: rules.max_per_device]


def is_health_taint(taint: JSON, driver: str) -> bool:
    return taint.get("key") in {taint_key(driver, k) for k in KEYS}
