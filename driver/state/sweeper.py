"""Unprepares claims the kubelet will never unprepare: their ResourceClaim is gone.

The kubelet unprepares a claim when its last pod ends, but a plugin crash, a force-deleted pod or a kubelet
restart at the wrong moment can leave an entry behind (and with it a CDI spec, and a device the overlap guard
keeps refusing). At start and then every ``interval`` seconds the sweeper reads the checkpoint and asks the
API server for each claim: a claim that no longer exists, or exists under another UID (deleted and
re-created), is unprepared. A claim cannot be deleted while pods use it, so this never takes a GPU away from
a running pod.

Each pass first removes, under the node lock, the CDI specs and metadata files of claims without checkpoint
entry: a claim with nothing but those files is recorded only once they are written, so an instance killed
in between (the old pod of a rolling update) leaves them behind, and the instance still running may never
restart to remove them at its start.

When in doubt, keep: "no longer exists" needs a 404 ``Status`` that names this claim
(:meth:`~driver.kube.client.ApiError.proves_missing`). A bare 404 ("404 page not found" from a server that
does not serve resource.k8s.io/v1, or from a proxy), any other error and any answer that is not this
ResourceClaim (the client rejects those) leave the entry alone until the next pass.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Protocol

from driver.kube.client import RESOURCE_CLAIMS, ApiError
from driver.log import get_logger
from driver.state.api import ClaimRef
from driver.state.prepare import NodePreparer

log = get_logger(__name__)

DEFAULT_INTERVAL_S = 600.0


class ClaimGetter(Protocol):
    async def get_claim(self, namespace: str, name: str) -> Any: ...


class ClaimSweeper:
    def __init__(
        self, preparer: NodePreparer, claims: ClaimGetter, interval: float = DEFAULT_INTERVAL_S
    ) -> None:
        self.preparer = preparer
        self.claims = claims
        self.interval = interval

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("claim sweep failed")
            await asyncio.sleep(self.interval)

    async def sweep(self) -> list[ClaimRef]:
        """One pass; returns the claims it unprepared."""
        records = await self.preparer.lock.run(lambda: asyncio.to_thread(self.preparer.sweep_orphans))
        stale = [
            ref
            for ref in await asyncio.gather(*(self._stale(r.namespace, r.name, r.uid) for r in records))
            if ref
        ]
        swept: list[ClaimRef] = []
        for ref in stale:
            unprepare = functools.partial(asyncio.to_thread, self.preparer.unprepare_one, ref)
            if await self.preparer.lock.run(unprepare):
                log.info("unprepared claim that no longer exists", claim=str(ref))
                swept.append(ref)
        if stale or records:
            log.info("claim sweep done", checked=len(records), unprepared=len(swept))
        return swept

    async def _stale(self, namespace: str, name: str, uid: str) -> ClaimRef | None:
        ref = ClaimRef(namespace, uid, name)
        if not name:  # rebuilt from a spec without claim name: cannot be checked
            return None
        try:
            claim = await self.claims.get_claim(namespace, name)
        except ApiError as err:
            if err.proves_missing(RESOURCE_CLAIMS, name):
                return ref
            log.warning("claim sweep: cannot check claim; kept", claim=str(ref), error=str(err))
            return None
        except Exception as err:
            log.warning("claim sweep: cannot check claim; kept", claim=str(ref), error=repr(err))
            return None
        current = (claim.get("metadata") or {}).get("uid")
        if not isinstance(current, str) or not current:  # not a claim at all: proves nothing
            log.warning("claim sweep: answer has no UID; kept", claim=str(ref))
            return None
        return ref if current != uid else None
