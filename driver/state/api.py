"""The contract between the kubelet-facing plugin and the node-state layer.

The plugin fetches and checks ResourceClaims, then hands them to a :class:`Preparer`; the preparer owns
everything node-local (checkpoint, CDI specs, device bookkeeping). Keeping this contract free of gRPC
types lets the node state be tested without sockets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from driver.state.cdi import valid_device_name

Claim = Mapping[str, Any]
"""A ResourceClaim object as the API server returned it (resource.k8s.io/v1 JSON)."""


class ClaimRef(NamedTuple):
    """What the kubelet sends for one claim: enough to find it, nothing about its devices."""

    namespace: str
    uid: str
    name: str

    def __str__(self) -> str:
        # Names and UIDs come from the caller unchecked: capped, so an error message stays small.
        return f"{echo(self.namespace)}/{echo(self.name)} ({echo(self.uid)})"


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


#: Longest claim UID accepted: Kubernetes UIDs are 36-character UUIDs, and the UID ends up in file names
#: (``k8s.<driver>-gpu_<uid>.json``, at most 255 bytes) and CDI device names.
MAX_UID_LENGTH = 128
#: How much of a name or UID an error message repeats (gRPC clients cap status messages near 8 KiB).
MAX_ECHO = 80


def echo(value: str, limit: int = MAX_ECHO) -> str:
    """``value`` for an error message: cut to ``limit`` characters, saying how long it was."""
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"


def uid_problem(uid: str) -> str | None:
    """Why ``uid`` cannot be a claim UID on this node (file and CDI names are made of it), or None."""
    if not uid:
        return "the UID is empty"
    if len(uid) > MAX_UID_LENGTH:
        return f"the UID has {len(uid)} characters, more than {MAX_UID_LENGTH}"
    if not valid_device_name(uid):  # the UID becomes part of the claim's CDI device names
        return (
            "the UID may only hold letters, digits and '-', '_', '.', ':' (starting and ending alphanumeric)"
        )
    return None


class MalformedClaimError(ValueError):
    """The claim's allocation is not what the API server's validation allows; names the claim and field."""


def _field(entry: Mapping[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
    value = entry.get(key, default)
    if value is not default and (
        not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))
    ):
        raise MalformedClaimError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def allocation_results(claim: Claim, driver_name: str) -> list[AllocationResult]:
    """This driver's allocation results of ``claim``; results of other drivers are ignored.

    Decoded strictly (:class:`MalformedClaimError`): an ``adminAccess`` of ``"false"`` must not turn into
    admin access, which would let the overlap guard hand the device to a second claim.
    """
    ref = claim_ref(claim)
    status = claim.get("status") or {}
    allocation = (status.get("allocation") if isinstance(status, Mapping) else None) or {}
    devices = (allocation.get("devices") if isinstance(allocation, Mapping) else None) or {}
    results = (devices.get("results") if isinstance(devices, Mapping) else None) or []
    where = f"claim {ref}: status.allocation.devices.results"
    if not isinstance(results, list) or not all(isinstance(r, Mapping) for r in results):
        raise MalformedClaimError(f"{where}: expected a list of objects")
    known = {"request", "driver", "pool", "device", "adminAccess", "shareID"}
    out: list[AllocationResult] = []
    for i, r in enumerate(results):
        if r.get("driver") != driver_name:
            continue
        at = f"{where}[{i}]"
        out.append(
            AllocationResult(
                request=_field(r, "request", str, at, ""),
                driver=driver_name,
                pool=_field(r, "pool", str, at, ""),
                device=_field(r, "device", str, at, ""),
                admin_access=_field(r, "adminAccess", bool, at, False),
                share_id=_field(r, "shareID", str, at, None),
                extra={k: v for k, v in r.items() if k not in known},
            )
        )
    return out


def is_allocated(claim: Claim) -> bool:
    return bool((claim.get("status") or {}).get("allocation"))
