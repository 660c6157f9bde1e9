"""The contract between the kubelet-facing plugin and the node-state layer.

The plugin fetches and checks ResourceClaims, then hands them to a :class:`Preparer`; the preparer owns
everything node-local (checkpoint, CDI specs, device bookkeeping). Keeping this contract free of gRPC
types lets the node state be tested without sockets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

Claim = Mapping[str, Any]
"""A ResourceClaim object as the API server returned it (resource.k8s.io/v1 JSON)."""


class ClaimRef(NamedTuple):
    """What the kubelet sends for one claim: enough to find it, nothing about its devices."""

    namespace: str
    uid: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} ({self.uid})"


@dataclass(frozen=True)
class PreparedDevice:
    """One device made available to containers, as reported back to the kubelet."""

    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]
    share_id: str | None = None


@dataclass(frozen=True)
class PrepareResult:
    """The outcome for one claim: its devices, or an error message for the kubelet."""

    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class AllocationResult:
    """One entry of ``status.allocation.devices.results`` that belongs to this driver."""

    request: str
    driver: str
    pool: str
    device: str
    admin_access: bool = False
    share_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def base_request(self) -> str:
        """The kubelet matches containers by base request name: ``gpu/sub`` -> ``gpu``."""
        return self.request.split("/", 1)[0]


class Preparer(Protocol):
    """Node-local preparation of claims; implementations must be idempotent and crash safe."""

    async def prepare(self, claims: Sequence[Claim]) -> dict[str, PrepareResult]:
        """Prepare every claim; return one result per claim UID (per-claim errors inside)."""
        ...

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, str]:
        """Undo preparation; return one error string per claim UID ("" on success)."""
        ...


def claim_ref(claim: Claim) -> ClaimRef:
    meta = claim.get("metadata", {})
    return ClaimRef(meta.get("namespace", ""), meta.get("uid", ""), meta.get("name", ""))


def allocation_results(claim: Claim, driver_name: str) -> list[AllocationResult]:
    """This driver's allocation results of ``claim``; results of other drivers are ignored."""
    allocation = (claim.get("status") or {}).get("allocation") or {}
    results = (allocation.get("devices") or {}).get("results") or []
    known = {"request", "driver", "pool", "device", "adminAccess", "shareID"}
    return [
        AllocationResult(
            request=r.get("request", ""),
            driver=r.get("driver", ""),
            pool=r.get("pool", ""),
            device=r.get("device", ""),
            admin_access=bool(r.get("adminAccess", False)),
            share_id=r.get("shareID"),
            extra={k: v for k, v in r.items() if k not in known},
        )
        for r in results
        if r.get("driver") == driver_name
    ]


def is_allocated(claim: Claim) -> bool:
    return bool((claim.get("status") or {}).get("allocation"))
