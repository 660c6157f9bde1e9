"""GPU time for chargeback: seconds allocated and seconds used, per namespace / pod / claim / DeviceClass / model.

At every sampling round the collector hands over the round's attributed rows and the time since the previous
round; each row adds, for that time:

- *allocated*: the device's share of a GPU (1 for a whole GPU, its memory share for a MIG device) divided by
  the number of rows holding the device, so a device is charged once however many containers share it. A
  share of a GPU shared by memory (consumable capacity) is charged its memory share of the GPU instead,
  divided by the rows of its claim: each claim pays for what it holds, whoever else shares the GPU;
- *used*: the same share times the row's utilization of the device; a shared device whose use cannot be
  split by process has its utilization divided evenly among its rows. Rows without a utilization reading
  (MIG devices of GPUs without GPM) add no used time: unknown is not zero.

Restarts: the counters live in the exporter and start at 0 with it (they are never persisted), so a
restart is a counter reset that PromQL's ``increase()`` accounts for, and nothing is counted twice: a
persisted value reloaded after a crash would be older than what was already scraped, which ``increase()``
would read as a reset and count again. What a restart loses is the time between the last scrape and the
stop, and the downtime. A key not seen for ``retention`` seconds is dropped, after Prometheus has scraped
its final value; if it comes back later it starts from 0 again, which ``increase()`` also handles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from driver.devices.model import Inventory
from driver.exporter.attribution import ConsumerShare

#: Label values in the order of :data:`driver.exporter.names.CHARGEBACK_LABELS`.
ChargeKey = tuple[str, str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class Charge:
    key: ChargeKey
    allocated_seconds: float
    used_seconds: float


def gpu_memory(inventory: Inventory) -> Callable[[str], int | None]:
    """GPU UUID -> its memory in bytes (None: unknown)."""
    memory = {gpu.uuid: gpu.memory_bytes for gpu in inventory.gpus}
    return memory.get


def device_shares(inventory: Inventory) -> Callable[[str, str], float]:
    """(GPU UUID, MIG UUID or "") -> the device's share of its GPU: 1, or the MIG device's memory share."""
    shares: dict[tuple[str, str], float] = {}
    for gpu in inventory.gpus:
        shares[(gpu.uuid, "")] = 1.0
        for mig in gpu.mig_devices:
            if mig.memory_bytes and gpu.memory_bytes:
                shares[(gpu.uuid, mig.uuid)] = min(1.0, mig.memory_bytes / gpu.memory_bytes)
    return lambda gpu, mig: shares.get((gpu, mig), 1.0 if not mig else 0.0)


class Chargeback:
    """Cumulative GPU-seconds per charge key, advanced once per sampling round."""

    def __init__(
        self,
        share_of: Callable[[str, str], float],
        retention: float = 900.0,
        memory_of: Callable[[str], int | None] | None = None,
    ) -> None:
        self._share_of = share_of
        self._memory_of = memory_of
        self._retention = retention
        self._allocated: dict[ChargeKey, float] = {}
        self._used: dict[ChargeKey, float] = {}
        self._seen: dict[ChargeKey, float] = {}

    def advance(
        self, now: float, elapsed: float, gpus: Iterable[tuple[str, str, tuple[ConsumerShare, ...]]]
    ) -> None:
        """Count ``elapsed`` seconds for the rows of each ``(GPU UUID, product name, shares)``."""
        for gpu, model, shares in gpus:
            rows: dict[str, int] = {}
            claim_rows: dict[tuple[str, str, str], int] = {}
            for share in shares:
                c = share.consumer
                rows[c.mig_uuid] = rows.get(c.mig_uuid, 0) + 1
                claim = (c.mig_uuid, c.resource_claim_namespace, c.resource_claim)
                claim_rows[claim] = claim_rows.get(claim, 0) + 1
            memory = self._memory_of(gpu) if self._memory_of is not None else None
            for share in shares:
                c = share.consumer
                n = rows[c.mig_uuid]
                held = self._share_of(gpu, c.mig_uuid)
                allocated = held / n
                if c.share_memory_bytes is not None and memory:
                    claim = (c.mig_uuid, c.resource_claim_namespace, c.resource_claim)
                    allocated = min(1.0, c.share_memory_bytes / memory) / claim_rows[claim]
                key = (
                    c.namespace,
                    c.pod,
                    c.resource_claim_namespace,
                    c.resource_claim,
                    c.device_class,
                    model,
                )
                self._seen[key] = now
                self._allocated[key] = self._allocated.get(key, 0.0) + allocated * elapsed
                self._used.setdefault(key, 0.0)
                if share.utilization is not None:
                    busy = share.utilization / n if share.utilization_mode == "shared" else share.utilization
                    self._used[key] += held * busy * elapsed
        for key, seen in list(self._seen.items()):
            if now - seen > self._retention:
                del self._seen[key], self._allocated[key], self._used[key]

    def charges(self) -> tuple[Charge, ...]:
        return tuple(Charge(k, self._allocated[k], self._used[k]) for k in sorted(self._allocated))
