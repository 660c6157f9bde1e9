"""NodePrepareResources / NodeUnprepareResources semantics, free of gRPC.

This mirrors what a plugin built on the upstream Go helper does around the driver's own logic:

* before taking the node lock, GET every ResourceClaim; a claim that cannot be fetched, is not allocated,
  or whose UID differs from the request fails the *whole* call (the kubelet retries the pod);
* prepare and unprepare run under the node lock (shared with other instances on the node); a call the
  kubelet gives up on (deadline) or the server cancels (shutdown) still runs to its end before the lock is
  released, so a device is never prepared for a second claim while the first one's work is in flight;
* the answer holds exactly one entry per requested claim UID; a preparer that forgets one gets an error
  entry rather than a silently short map (the kubelet would report "skipped N ResourceClaims");
* request names are reported as base names (``gpu/sub`` -> ``gpu``), or the kubelet injects nothing;
* what the kubelet sends is checked before use: a claim whose UID, namespace or name could not be a
  Kubernetes one (they end up in file names and API paths) gets an error of its own at prepare, and is
  unknown -- so unprepared successfully -- at unprepare. Errors repeat at most a few dozen characters of
  a name, so an answer stays well under the gRPC clients' 8 KiB limit on status messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

import aiohttp

from driver.kube.api.names import dns1123_label_errors, dns1123_subdomain_errors
from driver.kube.client import RESOURCE_CLAIMS, ApiError, KubeClient
from driver.log import get_logger
from driver.state.api import (
    Claim,
    ClaimRef,
    PreparedDevice,
    Preparer,
    PrepareResult,
    echo,
    is_allocated,
    uid_problem,
)
from driver.state.lock import NodeLock

log = get_logger(__name__)


class ClaimSource(Protocol):
    async def get_claim(self, namespace: str, name: str) -> Claim: ...


class KubeClaimSource:
    """Reads ResourceClaims from the API server (resource.k8s.io/v1); ``on_error`` counts failed reads by
    HTTP status, ``malformed`` or error class (the plugin's ``api_errors_total``)."""

    def __init__(self, kube: KubeClient, on_error: Callable[[str], None] | None = None) -> None:
        self._kube = kube
        self._on_error = on_error

    async def get_claim(self, namespace: str, name: str) -> Claim:
        try:
            return await self._kube.get(RESOURCE_CLAIMS, name, namespace)
        except Exception as err:
            gone = isinstance(err, ApiError) and err.proves_missing(RESOURCE_CLAIMS, name)
            if self._on_error is not None and not gone:
                self._on_error(err.kind if isinstance(err, ApiError) else type(err).__name__)
            raise


class ClaimCheckError(Exception):
    """A claim failed the pre-checks; the whole gRPC call fails with this message."""


class NodeService:
    def __init__(self, claims: ClaimSource, preparer: Preparer, lock: NodeLock, driver_name: str) -> None:
        self._claims = claims
        self._preparer = preparer
        self._lock = lock
        self.driver_name = driver_name

    async def prepare(self, refs: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        if not refs:
            return {}
        refused = {ref.uid: PrepareResult(error=problem) for ref in refs if (problem := ref_problem(ref))}
        valid = [ref for ref in refs if ref.uid not in refused]
        results: dict[str, PrepareResult] = {}
        if valid:
            claims = await asyncio.gather(*(self._fetch_checked(ref) for ref in valid))
            results = await self._lock.run(lambda: self._preparer.prepare(claims))
        return {ref.uid: refused.get(ref.uid) or _base_names(_result_for(ref, results)) for ref in refs}

    async def unprepare(self, refs: Sequence[ClaimRef]) -> dict[str, str]:
        # A claim that could not be prepared here is unknown: nothing to undo.
        valid = [ref for ref in refs if not ref_problem(ref)]
        errors: dict[str, str] = {ref.uid: "" for ref in refs}
        if valid:
            done = await self._lock.run(lambda: self._preparer.unprepare(valid))
            for ref in valid:
                errors[ref.uid] = done.get(ref.uid, f"internal error: no unprepare result for claim {ref}")
        return errors

    async def _fetch_checked(self, ref: ClaimRef) -> Claim:
        shown = f"{echo(ref.namespace)}/{echo(ref.name)}"
        try:
            claim = await self._claims.get_claim(ref.namespace, ref.name)
        except ApiError as err:
            raise ClaimCheckError(f"get ResourceClaim {shown}: {err.detail}") from err
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise ClaimCheckError(f"get ResourceClaim {shown}: API server unreachable: {err!r}") from err
        uid = claim.get("metadata", {}).get("uid")
        if uid != ref.uid:
            raise ClaimCheckError(
                f"ResourceClaim {shown} got replaced: UID is {echo(str(uid))}, kubelet asked for {ref.uid}"
            )
        if not is_allocated(claim):
            raise ClaimCheckError(f"ResourceClaim {shown} ({ref.uid}) is not allocated")
        return claim


def ref_problem(ref: ClaimRef) -> str | None:
    """Why the kubelet's claim reference cannot name a ResourceClaim, as an error naming it; or None."""
    problem = uid_problem(ref.uid)
    if problem is None and dns1123_label_errors(ref.namespace):
        problem = "the namespace is not a valid namespace name"
    if problem is None and dns1123_subdomain_errors(ref.name):
        problem = "the name is not a valid ResourceClaim name"
    return f"claim {ref}: {problem}" if problem else None


def _result_for(ref: ClaimRef, results: dict[str, PrepareResult]) -> PrepareResult:
    result = results.get(ref.uid)
    if result is None:
        log.error("preparer returned no result", claim=str(ref))
        return PrepareResult(error=f"internal error: no prepare result for claim {ref}")
    return result


def _base_names(result: PrepareResult) -> PrepareResult:
    def fix(device: PreparedDevice) -> PreparedDevice:
        names = tuple(dict.fromkeys(n.split("/", 1)[0] for n in device.request_names))
        return replace(device, request_names=names)

    return replace(result, devices=tuple(fix(d) for d in result.devices))
