"""What preparing a claim means, computed without side effects.

From a ResourceClaim (as the API server returned it), the node's inventory and this driver's name, a
:class:`ClaimPlan` says which local devices the claim gets, with which configuration, under which CDI names,
what the CDI spec contains and what the kubelet is answered. The allocation of a claim never changes for a
given UID, so planning twice gives the same plan: a repeated Prepare recomputes it instead of trusting
stored copies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from driver.devices.model import Device, Inventory
from driver.state import cdi
from driver.state.api import (
    AllocationResult,
    Claim,
    ClaimRef,
    MalformedClaimError,
    PreparedDevice,
    allocation_results,
    claim_ref,
    echo,
)
from driver.state.checkpoint import ClaimRecord, ClaimState, DeviceRecord, canonical_json
from driver.state.devnodes import DeviceNodes
from driver.state.metadata import POD_CLAIM_NAME_ANNOTATION
from driver.state.opaque import GpuConfig, config_for, resolve_configs


class PlanError(ValueError):
    """The claim cannot be prepared on this node; the message names the claim and the problem."""


@dataclass(frozen=True)
class PlannedDevice:
    result: AllocationResult
    device: Device
    cdi_name: str
    cdi_id: str
    config: GpuConfig | None

    @property
    def sharing(self) -> str | None:
        return None if self.config is None else self.config.sharing

    @property
    def consumed_memory(self) -> str | None:
        """The memory this result holds of a GPU shared by memory (``consumedCapacity.memory``)."""
        consumed = self.result.extra.get("consumedCapacity")
        memory = consumed.get("memory") if isinstance(consumed, dict) else None
        return memory if isinstance(memory, str) else None


@dataclass(frozen=True)
class ClaimPlan:
    ref: ClaimRef
    driver: str
    devices: tuple[PlannedDevice, ...]
    config_digest: str
    #: The pod's name for a claim made from a template (``resource.kubernetes.io/pod-claim-name``).
    pod_claim_name: str | None = None

    def prepared_devices(self) -> tuple[PreparedDevice, ...]:
        """The kubelet's answer: one entry per allocation result."""
        return tuple(
            PreparedDevice(
                request_names=(d.result.base_request,),
                pool_name=d.result.pool,
                device_name=d.result.device,
                cdi_device_ids=(d.cdi_id,),
                share_id=d.result.share_id,
            )
            for d in self.devices
        )

    def record(self, state: ClaimState, applied: Mapping[str, bool] | None = None) -> ClaimRecord:
        applied = applied or {}
        return ClaimRecord(
            uid=self.ref.uid,
            namespace=self.ref.namespace,
            name=self.ref.name,
            state=state,
            devices=tuple(
                DeviceRecord(
                    request=d.result.request,
                    pool=d.result.pool,
                    device=d.result.device,
                    uuid=d.device.uuid,
                    admin_access=d.result.admin_access,
                    share_id=d.result.share_id,
                    cdi_ids=(d.cdi_id,),
                    sharing=d.sharing,
                    sharing_applied=applied.get(d.device.name, False),
                )
                for d in self.devices
            ),
            config_digest=self.config_digest,
        )

    def unique_devices(self) -> list[PlannedDevice]:
        """One entry per local device (two results may share a device, e.g. with share ids)."""
        seen: dict[str, PlannedDevice] = {}
        for d in self.devices:
            seen.setdefault(d.device.name, d)
        return list(seen.values())

    def spec(
        self,
        nodes: DeviceNodes,
        common_edits: Mapping[str, Any],
        device_edits: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any] | None:
        """The claim's CDI spec; ``None`` when no device of this driver is allocated (nothing to inject).
        ``device_edits``: more containerEdits per device name (the metadata files' mounts)."""
        devices = self.unique_devices()
        if not devices:
            return None
        extra = device_edits or {}
        cdi_devices = [
            cdi.CdiDevice(
                name=d.cdi_name,
                edits=cdi.merge_edits(
                    {"deviceNodes": nodes.device_nodes(d.device)},
                    {"env": cdi.device_env(self.identity(d))},
                    extra.get(d.device.name, {}),
                ),
            )
            for d in devices
        ]
        return cdi.claim_spec(self.driver, cdi_devices, common_edits)

    def identity(self, d: PlannedDevice) -> cdi.DeviceIdentity:
        admin = any(p.result.admin_access for p in self.devices if p.device.name == d.device.name)
        return cdi.DeviceIdentity(
            device=d.device.name,
            uuid=d.device.uuid,
            claim_namespace=self.ref.namespace,
            claim_name=self.ref.name,
            claim_uid=self.ref.uid,
            admin_access=admin,
            sharing=d.sharing,
            share_id=d.result.share_id,
            memory=d.consumed_memory,
        )

    def device_statuses(self) -> list[dict[str, Any]]:
        """``status.devices`` entries so monitoring can map the claim's pods to GPUs."""
        out = []
        for d in self.devices:
            data = {
                "uuid": d.device.uuid,
                "pciBusID": d.device.gpu.pci_bus_id,
                "productName": d.device.gpu.product_name,
            }
            if d.device.mig is not None:
                data["parentUUID"] = d.device.gpu.uuid
                data["migProfile"] = d.device.mig.profile
            entry: dict[str, Any] = {
                "driver": d.result.driver,
                "pool": d.result.pool,
                "device": d.result.device,
                "data": {k: v for k, v in data.items() if v is not None},
            }
            if d.result.share_id is not None:
                entry["shareID"] = d.result.share_id
            out.append(entry)
        return out


def _lookup(result: AllocationResult, ref: ClaimRef, pool: str, inventory: Inventory) -> Device:
    where = f"claim {ref}: request {echo(result.request)!r} was allocated device {echo(result.device)!r}"
    if result.pool != pool:
        raise PlanError(f"{where} in pool {echo(result.pool)!r}, but this node's pool is {pool!r}")
    device = inventory.device(result.device)
    if device is None:
        known = ", ".join(d.name for d in inventory.devices) or "none"
        raise PlanError(f"{where}, which this node does not have (devices: {known})")
    return device


def digest(configs: Sequence[tuple[str, GpuConfig | None]]) -> str:
    body = [[name, None if c is None else c.to_json()] for name, c in sorted(configs, key=lambda t: t[0])]
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


def plan_claim(claim: Claim, *, driver: str, pool: str, inventory: Inventory) -> ClaimPlan:
    """Raises :class:`PlanError` or :class:`~driver.state.opaque.ConfigError` with the claim named."""
    ref = claim_ref(claim)
    try:
        results = allocation_results(claim, driver)
    except MalformedClaimError as err:
        raise PlanError(str(err)) from None
    entries = resolve_configs(claim, driver)
    planned = []
    for result in results:
        device = _lookup(result, ref, pool, inventory)
        name = cdi.device_name(ref.uid, device.name)
        planned.append(
            PlannedDevice(
                result=result,
                device=device,
                cdi_name=name,
                cdi_id=cdi.qualified_id(driver, name),
                config=config_for(result, entries),
            )
        )
    if planned and not cdi.valid_device_name(planned[0].cdi_name):
        raise PlanError(f"claim {ref}: UID {ref.uid!r} cannot be part of a CDI device name")
    config_digest = digest([(d.cdi_name, d.config) for d in planned])
    annotations = (claim.get("metadata") or {}).get("annotations") or {}
    pod_claim_name = annotations.get(POD_CLAIM_NAME_ANNOTATION)
    return ClaimPlan(
        ref=ref,
        driver=driver,
        devices=tuple(planned),
        config_digest=config_digest,
        pod_claim_name=pod_claim_name if isinstance(pod_claim_name, str) and pod_claim_name else None,
    )
