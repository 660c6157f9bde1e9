"""Who uses a GPU, and how much of it: pure functions over allocations and process samples.

Rules (docs/metrics.md, "Attribution"):

- A GPU held by one container (through one or more claims or a device plugin) is that container's:
  its per-container series carry the whole GPU's utilization and memory (``attribution="exclusive"``).
- A GPU held by several containers (a shared claim, several MIG devices, time-slicing replicas) is split
  by NVML's per-process samples when every process can be traced to its container (``/proc/<pid>/cgroup``
  plus the node's pods from the API server): each container gets the sum over its processes
  (``attribution="process"``); processes of other containers or outside Kubernetes count for no consumer.
- Otherwise every consumer is shown the whole GPU's values (``attribution="shared"``): correct per
  container as an upper bound, never to be summed.

Whole-GPU series (power, energy, temperature, ...) are never split: ``accel_dra_gpu_allocation_info``
joins them to consumers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from driver.devices.telemetry import GpuTelemetry, ProcessSample


@dataclass(frozen=True, slots=True, order=True)
class ContainerKey:
    namespace: str
    pod: str
    container: str


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


#: pid -> the container it runs in (``None`` when unknown); ``None`` when processes cannot be traced at all.
OwnerOf = Callable[[int], ContainerKey | None]


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


def split(
    telemetry: GpuTelemetry | None,
    consumers: Sequence[Consumer],
    owner_of: OwnerOf | None,
) -> tuple[ConsumerShare, ...]:
    """Per-consumer utilization and memory of one GPU (see the module docstring for the rules)."""
    if not consumers:
        return ()
    containers = sorted({c.key for c in consumers})
    whole_util = telemetry.utilization if telemetry else None
    whole_mem = telemetry.memory_used_bytes if telemetry else None
    if len(containers) == 1:
        return tuple(ConsumerShare(c, whole_util, "exclusive", whole_mem, "exclusive") for c in consumers)
    util_split: dict[ContainerKey, float] | None = None
    mem_split: dict[ContainerKey, float] | None = None
    if telemetry is not None and telemetry.processes is not None and owner_of is not None:
        owners = {p.pid: owner_of(p.pid) for p in telemetry.processes}
        util_split = _by_process(containers, telemetry.processes, owners, lambda p: p.sm_utilization)
        mem_split = _by_process(
            containers,
            telemetry.processes,
            owners,
            lambda p: None if p.memory_bytes is None else float(p.memory_bytes),
        )
    shares: list[ConsumerShare] = []
    for consumer in consumers:
        util = min(1.0, util_split[consumer.key]) if util_split is not None else whole_util
        mem = int(mem_split[consumer.key]) if mem_split is not None else whole_mem
        shares.append(
            ConsumerShare(
                consumer,
                util if telemetry else None,
                "process" if util_split is not None else "shared",
                mem if telemetry else None,
                "process" if mem_split is not None else "shared",
            )
        )
    return tuple(shares)
