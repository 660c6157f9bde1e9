"""Which of the kubelet's allocations count as holders of a GPU, and through which DeviceClass.

The kubelet's PodResources answer is not the whole truth:

- it keeps listing a pod until its resources are cleaned up, also after the pod finished. A pod the API
  server reports as ``Succeeded`` or ``Failed`` (or no longer has, once its pod index is synced) holds
  nothing: its rows are dropped. A ``Pending`` pod is kept: its devices are prepared and its init
  containers may use them.
- a device allocated with ``adminAccess`` (monitoring, debugging) is not held: the claim only looks at a
  device someone else may be using. Its rows are dropped, so it is neither charged nor shown the device's
  usage. PodResources does not say which devices those are; the ResourceClaim does.

:class:`ClaimIndex` fetches each ResourceClaim the node's containers hold once (a GET in the background; the
sampling round never waits for it) and keeps what matters (admin-access devices, the DeviceClass of each
allocated device) while the claim is held. Without API access nothing is dropped or known.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from driver.exporter.podresources import ClaimDevice, ContainerResources
from driver.kube.client import RESOURCE_CLAIMS, ApiError, KubeClient
from driver.log import get_logger
from driver.quantity import parse_quantity
from driver.tasks import cancel_and_wait

log = get_logger(__name__)

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
#: Concurrent claim GETs at most (a node starting many pods at once).
MAX_FETCHES = 8

ClaimKey = tuple[str, str]  # (namespace, name)
DeviceKey = tuple[str, str, str]  # (driver, pool, device)


@dataclass(frozen=True)
class ClaimFacts:
    """What a claim says about its allocated devices."""

    admin: frozenset[DeviceKey] = frozenset()
    device_class: Mapping[DeviceKey, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    #: Bytes of memory the claim's shares of a GPU shared by memory hold (``consumedCapacity.memory``).
    consumed_memory: Mapping[DeviceKey, int] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    #: The claim is being fetched for the first time: its devices wait a round rather than being counted
    #: as held (an admin-access claim would be, for that round) or charged without their DeviceClass.
    pending: bool = False


PENDING = ClaimFacts(pending=True)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _request_classes(spec: Mapping[str, Any]) -> tuple[dict[str, str], set[str]]:
    """Request name (``req`` or ``req/sub``) -> DeviceClass, and the requests that ask for admin access."""
    classes: dict[str, str] = {}
    admin: set[str] = set()
    for raw in _list(_dict(spec.get("devices")).get("requests")):
        request = _dict(raw)
        name = str(request.get("name", ""))
        exactly = _dict(request.get("exactly")) or request  # resource.k8s.io/v1, or the v1beta1 shape
        if isinstance(exactly.get("deviceClassName"), str):
            classes[name] = exactly["deviceClassName"]
        if exactly.get("adminAccess") is True:
            admin.add(name)
        for sub in (_dict(s) for s in _list(request.get("firstAvailable"))):
            if isinstance(sub.get("deviceClassName"), str):
                classes[f"{name}/{sub.get('name', '')}"] = sub["deviceClassName"]
    return classes, admin


def claim_facts(claim: Mapping[str, Any]) -> ClaimFacts:
    """The admin-access devices and the DeviceClass of each allocated device of a ResourceClaim (JSON)."""
    classes, admin_requests = _request_classes(_dict(claim.get("spec")))
    admin: set[DeviceKey] = set()
    device_class: dict[DeviceKey, str] = {}
    consumed: dict[DeviceKey, int] = {}
    allocation = _dict(_dict(claim.get("status")).get("allocation"))
    for raw in _list(_dict(allocation.get("devices")).get("results")):
        result = _dict(raw)
        key = (str(result.get("driver", "")), str(result.get("pool", "")), str(result.get("device", "")))
        request = str(result.get("request", ""))
        if result.get("adminAccess", request in admin_requests) is True:
            admin.add(key)
        found = classes.get(request) or classes.get(request.split("/", 1)[0])
        if found:
            device_class[key] = found
        memory = _bytes(_dict(result.get("consumedCapacity")).get("memory"))
        if result.get("shareID") and memory is not None:  # two shares of one device: the claim holds both
            consumed[key] = consumed.get(key, 0) + memory
    return ClaimFacts(frozenset(admin), MappingProxyType(device_class), MappingProxyType(consumed))


def _bytes(quantity: Any) -> int | None:
    try:
        return int(parse_quantity(quantity)) if isinstance(quantity, str) else None
    except ValueError:
        return None


def holders(
    allocations: Iterable[ContainerResources],
    pod_phase: Callable[[str, str], str | None] | None,
    claim: Callable[[str, str], ClaimFacts | None],
) -> list[ContainerResources]:
    """The allocations of pods that still hold devices, without admin-access devices (and devices of claims
    being fetched for the first time), with DeviceClasses.

    ``pod_phase(namespace, name)``: the pod's phase, ``"Gone"`` when a synced index does not have it, ``None``
    when it cannot be told (no API access, index not synced yet); ``None`` as a whole: no pod index."""
    out: list[ContainerResources] = []
    for c in allocations:
        phase = pod_phase(c.namespace, c.pod) if pod_phase is not None else None
        if phase in TERMINAL_PHASES or phase == "Gone":
            continue
        devices: list[ClaimDevice] = []
        for d in c.claim_devices:
            facts = claim(d.claim_namespace, d.claim_name)
            key = (d.driver, d.pool, d.device)
            if facts is not None and (facts.pending or key in facts.admin):
                continue
            found = facts.device_class.get(key, "") if facts is not None else ""
            memory = facts.consumed_memory.get(key) if facts is not None else None
            if found or memory is not None:
                devices.append(
                    dataclasses.replace(d, device_class=found or d.device_class, consumed_memory_bytes=memory)
                )
            else:
                devices.append(d)
        if devices or c.device_ids:
            out.append(dataclasses.replace(c, claim_devices=tuple(devices)))
    return out


class ClaimIndex:
    """ResourceClaims held on this node, fetched once each in the background and forgotten once released."""

    def __init__(self, kube: KubeClient, on_error: Callable[[str], None] | None = None) -> None:
        self._kube = kube
        self._on_error = on_error
        self._facts: dict[ClaimKey, ClaimFacts] = {}
        self._fetching: dict[ClaimKey, asyncio.Task[None]] = {}
        #: Claims whose fetch failed: counted as held, without facts, until a retry succeeds.
        self._failed_once: set[ClaimKey] = set()
        self._slots = asyncio.Semaphore(MAX_FETCHES)

    def facts(self, namespace: str, name: str) -> ClaimFacts | None:
        """What the claim says; :data:`PENDING` during its first fetch; ``None`` when it could not be read."""
        key = (namespace, name)
        found = self._facts.get(key)
        if found is None and key in self._fetching and key not in self._failed_once:
            return PENDING
        return found

    def want(self, keys: Iterable[ClaimKey]) -> None:
        """Fetch the claims not known yet; forget the ones no longer held (a new claim of the same name is
        fetched anew)."""
        wanted = set(keys)
        for key in list(self._facts):
            if key not in wanted:
                del self._facts[key]
        self._failed_once &= wanted
        for key in wanted - set(self._facts) - set(self._fetching):
            self._fetching[key] = asyncio.create_task(self._fetch(key), name=f"claim-{key[0]}-{key[1]}")

    async def _fetch(self, key: ClaimKey) -> None:
        try:
            async with self._slots:
                claim = await self._kube.get(RESOURCE_CLAIMS, key[1], key[0])
            self._facts[key] = claim_facts(claim)
            self._failed_once.discard(key)
        except ApiError as err:
            if err.status == 404:  # deleted meanwhile: nothing to learn, and the kubelet will drop it too
                self._facts[key] = ClaimFacts()
            else:
                self._failed(key, err)
        except Exception as err:  # transport errors, malformed answers: retried next round
            self._failed(key, err)
        finally:
            self._fetching.pop(key, None)

    def _failed(self, key: ClaimKey, err: BaseException) -> None:
        self._failed_once.add(key)
        if self._on_error is not None:
            self._on_error(str(err))
        log.debug(
            "resource claim not readable; retried next round", claim=f"{key[0]}/{key[1]}", error=str(err)
        )

    async def close(self) -> None:
        await cancel_and_wait(*self._fetching.values())
