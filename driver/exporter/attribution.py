"""Who uses a GPU, and how much of it: pure functions over allocations and process samples.

Values are split per *device*: a whole GPU, or one MIG device of a MIG-enabled GPU (whose memory, processes
and, with GPM, utilization NVML reports per instance). Rules (docs/metrics.md, "Attribution"):

- A device held by one container (through one or more claims or a device plugin) is that container's:
  its per-container series carry the whole device's utilization and memory (``attribution="exclusive"``),
  unless NVML lists processes that are all traced and some belong to someone else (another container or
  the host): then the holder gets the sum over its own processes (``attribution="process"``).
- A device held by several containers (a shared claim, several MIG devices, time-slicing replicas) is split
  by NVML's per-process samples only when NVML lists at least one process and every listed process is
  traced (``/proc/<pid>/cgroup`` plus the node's pods from the API server) either to a container or to no
  container at all (a host process): each container gets the sum over its processes
  (``attribution="process"``); processes of other containers or outside Kubernetes count for no consumer.
- Otherwise every consumer is shown the whole device's values (``attribution="shared"``): correct per
  container as an upper bound, never to be summed (a single holder whose foreign processes are known but
  whose own share cannot be measured is shown the same way). One untraced process is enough: its usage could be any
  consumer's, so a split would show that consumer a false low value. An empty process list is no proof
  of idleness either (NVML may not show processes to the exporter), so it falls back too.

A container that holds the same device through several rows (claims) has its ``exclusive`` or ``process``
value divided evenly among those rows, so that summing rows never counts a container twice. ``shared`` rows keep the whole value on each row: they are upper bounds, read with ``max``.

Whole-GPU series (power, energy, temperature, ...) are never split: ``accel_dra_gpu_allocation_info``
joins them to consumers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from driver.devices.telemetry import GpuTelemetry, ProcessSample


@dataclass(frozen=True, slots=True, order=True)
class ContainerKey:
    namespace: str
    pod: str
    container: str


#: The owner of a process traced to no Kubernetes container (its cgroup is outside ``kubepods``).
OUTSIDE_PODS: Final = ContainerKey("", "", "")


@dataclass(frozen=True, slots=True, order=True)
class Consumer:
    """One container's hold on a GPU. Claim fields are empty for device-plugin allocations."""

    namespace: str
    pod: str
    container: str
    resource_claim_namespace: str = ""
    resource_claim: str = ""
    dra_driver: str = ""
    dra_pool: str = ""
    dra_device: str = ""
    #: The MIG device held ("" for a whole GPU).
    mig_uuid: str = ""
    #: The DeviceClass the claim requested the device through, or the device plugin's resource name.
    device_class: str = ""
    #: The memory the claim's share of a GPU shared by memory holds (consumable capacity); None: no share.
    share_memory_bytes: int | None = None

    @property
    def key(self) -> ContainerKey:
        return ContainerKey(self.namespace, self.pod, self.container)

    def label_values(self) -> tuple[str, ...]:
        """Values in the order of :data:`driver.exporter.names.ATTRIBUTION_LABELS`."""
        return (
            self.namespace,
            self.pod,
            self.container,
            self.resource_claim_namespace,
            self.resource_claim,
            self.dra_driver,
            self.dra_pool,
            self.dra_device,
        )


@dataclass(frozen=True, slots=True)
class ConsumerShare:
    """The per-container values of one consumer; ``None`` where they cannot be known."""

    consumer: Consumer
    utilization: float | None
    utilization_mode: str
    memory_bytes: int | None
    memory_mode: str


#: pid -> the container it runs in, :data:`OUTSIDE_PODS` for a host process, ``None`` when it cannot be
#: traced (no readable cgroup, or a container the pod index does not know yet). The lookup itself is
#: ``None`` when processes cannot be traced at all.
OwnerOf = Callable[[int], ContainerKey | None]


class Usage(Protocol):
    """What a split needs of one device's reading (:class:`GpuTelemetry` or a MIG device's)."""

    @property
    def utilization(self) -> float | None: ...

    @property
    def memory_used_bytes(self) -> int | None: ...

    @property
    def processes(self) -> tuple[ProcessSample, ...] | None: ...


def _by_process(
    containers: Sequence[ContainerKey],
    processes: Sequence[ProcessSample],
    owners: Mapping[int, ContainerKey | None],
    value: Callable[[ProcessSample], float | None],
) -> dict[ContainerKey, float] | None:
    """Sum of ``value`` per container; ``None`` when some process lacks the value."""
    values = [value(p) for p in processes]
    if any(v is None for v in values):
        return None
    totals = dict.fromkeys(containers, 0.0)
    for proc, v in zip(processes, values, strict=True):
        owner = owners.get(proc.pid)
        if owner in totals and v is not None:
            totals[owner] += v
    return totals


def _traced_owners(usage: Usage | None, owner_of: OwnerOf | None) -> dict[int, ContainerKey | None] | None:
    """Every listed process's owner, or ``None`` unless a per-process split is safe (module docstring)."""
    if usage is None or not usage.processes or owner_of is None:
        return None
    owners = {p.pid: owner_of(p.pid) for p in usage.processes}
    return owners if all(owner is not None for owner in owners.values()) else None


def _memory_parts(total: int, parts: int, index: int) -> int:
    """The ``index``-th of ``parts`` near-equal integer parts of ``total`` (they add up to ``total``)."""
    quotient, remainder = divmod(total, parts)
    return quotient + (1 if index < remainder else 0)


def split(
    usage: Usage | None,
    consumers: Sequence[Consumer],
    owner_of: OwnerOf | None,
) -> tuple[ConsumerShare, ...]:
    """Per-consumer utilization and memory of one device (see the module docstring for the rules)."""
    if not consumers:
        return ()
    containers = sorted({c.key for c in consumers})
    whole_util = usage.utilization if usage else None
    whole_mem = usage.memory_used_bytes if usage else None
    util: dict[ContainerKey, float | None] = dict.fromkeys(containers, whole_util)
    mem: dict[ContainerKey, float | None] = dict.fromkeys(containers, whole_mem)
    util_mode = mem_mode = "exclusive" if len(containers) == 1 else "shared"
    owners = _traced_owners(usage, owner_of)
    if len(containers) == 1 and owners is not None and set(owners.values()) <= set(containers):
        owners = None  # every process is the holder's: the whole device is exactly its use
    if usage is not None and usage.processes and owners is not None:
        util_split = _by_process(containers, usage.processes, owners, lambda p: p.sm_utilization)
        mem_split = _by_process(
            containers,
            usage.processes,
            owners,
            lambda p: None if p.memory_bytes is None else float(p.memory_bytes),
        )
        if util_split is not None:
            util, util_mode = {k: min(1.0, v) for k, v in util_split.items()}, "process"
        elif len(containers) == 1:
            util_mode = "shared"  # others' processes run here too: the whole value is only an upper bound
        if mem_split is not None:
            mem, mem_mode = dict(mem_split), "process"
        elif len(containers) == 1:
            mem_mode = "shared"
    # A container's rows for this device (several claims) share its value, so a sum over rows counts it
    # once. Shared values are upper bounds and stay whole on every row.
    rows = Counter(c.key for c in consumers)
    seen: Counter[ContainerKey] = Counter()
    shares: list[ConsumerShare] = []
    for consumer in consumers:
        key, n = consumer.key, rows[consumer.key]
        index = seen[key]
        seen[key] += 1
        u, m = util[key], mem[key]
        if util_mode != "shared" and u is not None:
            u /= n
        memory = None if m is None else int(m)
        if mem_mode != "shared" and memory is not None:
            memory = _memory_parts(memory, n, index)
        shares.append(ConsumerShare(consumer, u, util_mode, memory, mem_mode))
    return tuple(shares)


def split_gpu(
    telemetry: GpuTelemetry | None, consumers: Sequence[Consumer], owner_of: OwnerOf | None
) -> tuple[ConsumerShare, ...]:
    """:func:`split` for each device of one GPU: the whole GPU, and each of its MIG devices with that
    device's own reading (memory, processes, utilization where NVML has it)."""
    devices: dict[str, list[Consumer]] = {}
    for consumer in consumers:
        devices.setdefault(consumer.mig_uuid, []).append(consumer)
    migs = {m.uuid: m for m in telemetry.mig} if telemetry is not None else {}
    shares: list[ConsumerShare] = []
    for mig_uuid, held in devices.items():
        usage: Usage | None = telemetry if not mig_uuid else migs.get(mig_uuid)
        shares += split(usage, held, owner_of)
    return tuple(shares)
