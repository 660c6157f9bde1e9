"""InMemoryPreparer: a preparer that keeps prepared claims in a dict and writes nothing.

It exists for protocol-level tests of the plugin (and as the plugin's ``--preparer memory`` test mode). It
reports CDI ids in the same shape the real node-state preparer does but never creates CDI files, so a
container runtime would not find them. It does not survive a restart.
"""

from __future__ import annotations

from collections.abc import Sequence

from driver.state.api import (
    Claim,
    ClaimRef,
    PreparedDevice,
    PrepareResult,
    allocation_results,
    claim_ref,
)


class InMemoryPreparer:
    def __init__(self, driver_name: str) -> None:
        self.driver_name = driver_name
        self.prepared: dict[str, tuple[PreparedDevice, ...]] = {}
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def _cdi_id(self, uid: str, device: str) -> str:
        return f"k8s.{self.driver_name}/gpu={uid}-{device}"

    async def prepare(self, claims: Sequence[Claim]) -> dict[str, PrepareResult]:
        out: dict[str, PrepareResult] = {}
        for claim in claims:
            ref = claim_ref(claim)
            self.calls.append(("prepare", (ref.uid,)))
            devices = tuple(
                PreparedDevice(
                    request_names=(r.base_request,),
                    pool_name=r.pool,
                    device_name=r.device,
                    cdi_device_ids=(self._cdi_id(ref.uid, r.device),),
                    share_id=r.share_id,
                )
                for r in allocation_results(claim, self.driver_name)
            )
            self.prepared[ref.uid] = devices
            out[ref.uid] = PrepareResult(devices=devices)
        return out

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, str]:
        self.calls.append(("unprepare", tuple(c.uid for c in claims)))
        for ref in claims:
            self.prepared.pop(ref.uid, None)
        return {ref.uid: "" for ref in claims}
