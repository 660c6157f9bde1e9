"""The hardware model: what GPUs a node has, as immutable values.

Backends (NVML, fake profiles) produce an :class:`Inventory`; everything downstream (attributes, slices,
CDI, the exporter) reads it and never talks to the hardware itself. Unknown facts are ``None``.

The NVLink topology is derived once, when the inventory is built (:class:`Topology`): which GPUs can reach
each other over NVLink (directly or through NVSwitch), how many links are active, and a stable id per
connected set ("interconnect domain").

Stable ids: device names come from the PCI address, interconnect-domain ids from member UUIDs or the fabric
clique. Neither depends on the NVML enumeration index, which can change between boots. MIG devices are named
after their profile and placement, so a static instance and a dynamic slot at the same place share a name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from driver.kube.api.names import is_dns_label

LinkState = Literal["active", "inactive"]
RemoteType = Literal["gpu", "switch", "unknown"]
DeviceKind = Literal["gpu", "mig"]

#: The canonical PCI address form the Kubernetes standard attributes use: lowercase, 4-digit domain.
PCI_BUS_ID_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
#: ``resource.kubernetes.io/pcieRoot``: ``pci<domain>:<bus>`` as found under ``/sys/devices``.
PCIE_ROOT_RE = re.compile(r"^pci[0-9a-f]{4}:[0-9a-f]{2}$")
_LOOSE_BDF_RE = re.compile(r"^([0-9a-fA-F]{1,8}):([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$")


def normalize_pci_bus_id(raw: str | bytes | None) -> str | None:
    """``00000000:3B:00.0`` -> ``0000:3b:00.0``; ``None`` when the address cannot be written that way.

    NVML pads the domain to 8 hex digits; the Kubernetes standard wants 4. Domains above 0xffff (Intel VMD
    puts devices in domain 0x10000+) have no 4-digit form, so they are reported as unknown.
    """
    if raw is None:
        return None
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    match = _LOOSE_BDF_RE.match(text.strip())
    if not match:
        return None
    domain, bus, dev, func = (int(part, 16) for part in match.groups())
    if domain > 0xFFFF or dev > 0x1F:
        return None
    return f"{domain:04x}:{bus:02x}:{dev:02x}.{func}"


def nvml_pci_bus_id(bus_id: str) -> str:
    """``0000:1b:00.0`` -> ``00000000:1B:00.0``, the form NVML (and tools built on it) write."""
    domain, bus, rest = bus_id.split(":", 2)
    return f"{int(domain, 16):08X}:{bus.upper()}:{rest.upper()}"


@dataclass(frozen=True, slots=True)
class NvLink:
    """One NVLink of a GPU, as NVML reports it."""

    index: int
    state: LinkState
    #: PCI address of the far end (normalised), when NVML reports it.
    remote_pci_bus_id: str | None = None
    remote_type: RemoteType = "unknown"

    @property
    def active(self) -> bool:
        return self.state == "active"


@dataclass(frozen=True, slots=True)
class FabricInfo:
    """Multi-node NVLink fabric membership (GB200 NVL72 and similar), only once registration completed."""

    cluster_uuid: str
    clique_id: int

    @property
    def clique(self) -> str:
        """``<clusterUuid>.<cliqueId>``: globally unique, the same on every node of the NVLink partition."""
        return f"{self.cluster_uuid}.{self.clique_id}"


@dataclass(frozen=True, slots=True)
class MigPlacement:
    """Where a GPU instance sits in the GPU's memory slices (NVML ``placement.start/size``)."""

    start: int
    size: int


@dataclass(frozen=True, slots=True)
class MigProfile:
    """A GPU-instance profile of a MIG-capable GPU and where it can be placed.

    The facts NVML gives through ``nvmlDeviceGetGpuInstanceProfileInfo`` (sizes, engines) and
    ``nvmlDeviceGetGpuInstancePossiblePlacements`` (placements, in memory slices). A GPU is cut into memory
    slices (8 on A100/H100) and compute slices (7); engines (copy engines, decoders, ...) come with them.
    """

    #: ``1g.5gb``, ``1g.5gb+me``: NVML's profile name without its ``MIG`` prefix.
    name: str
    #: The ``NVML_GPU_INSTANCE_PROFILE_*`` constant the profile is looked up by.
    index: int
    #: The profile id creation calls take (``nvidia-smi mig -lgip``'s ID column).
    id: int
    compute_slices: int
    memory_bytes: int
    placements: tuple[MigPlacement, ...]
    #: How many instances of the profile fit on an empty GPU.
    instance_count: int
    multiprocessors: int = 0
    copy_engines: int = 0
    decoders: int = 0
    encoders: int = 0
    jpeg_engines: int = 0
    ofa_engines: int = 0

    def engines(self) -> dict[str, int]:
        """Engine counts by counter name (``driver.resources.counters``)."""
        return {
            "copy-engines": self.copy_engines,
            "decoders": self.decoders,
            "encoders": self.encoders,
            "jpeg-engines": self.jpeg_engines,
            "ofa-engines": self.ofa_engines,
        }


@dataclass(frozen=True, slots=True)
class MigSlot:
    """A MIG device that does not exist yet: a profile at one of its placements, created when a claim that
    was allocated it is prepared (dynamic MIG). ``whole_gpu``: the GPU's full-size instance, published as
    the whole GPU of a GPU in dynamic MIG mode."""

    profile: MigProfile
    placement: MigPlacement
    whole_gpu: bool = False

    @property
    def memory_slices(self) -> range:
        return range(self.placement.start, self.placement.start + self.placement.size)


@dataclass(frozen=True, slots=True)
class MigDevice:
    """A MIG device (GPU instance + compute instance) of a MIG-enabled GPU."""

    uuid: str
    #: Profile name like ``1g.5gb``, or ``1c.2g.10gb`` when the compute instance is smaller than its GPU instance.
    profile: str | None = None
    memory_bytes: int | None = None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    placement: MigPlacement | None = None
    #: NVML's MIG device index on its GPU (``nvmlDeviceGetMigDeviceHandleByIndex``; slots can be empty).
    #: Enumeration order, not identity: device plugins name MIG devices by it, so attribution needs it.
    slot: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Gpu:
    """A physical GPU."""

    uuid: str
    product_name: str | None = None
    brand: str | None = None
    architecture: str | None = None
    #: ``major.minor`` as NVML reports it, e.g. ``9.0``.
    compute_capability: str | None = None
    memory_bytes: int | None = None
    #: Normalised ``dddd:bb:dd.f``.
    pci_bus_id: str | None = None
    #: ``pci<domain>:<bus>``.
    pcie_root: str | None = None
    numa_node: int | None = None
    #: The NUMA nodes the GPU is equally close to: ``numa_node`` first, then the nodes of the same socket at
    #: the smallest distance from it (sub-NUMA clustering splits a socket into several); ``()`` when that is
    #: ``numa_node`` alone, or unknown.
    numa_nodes: tuple[int, ...] = ()
    #: Minor number of ``/dev/nvidia<minor>``. Node-local and unstable: never published as an attribute.
    minor: int | None = None
    #: ``None``: not MIG capable (or unknown); ``False``: capable, disabled; ``True``: enabled.
    mig_enabled: bool | None = None
    mig_devices: tuple[MigDevice, ...] = ()
    #: GPU-instance profiles the GPU supports (known while MIG is enabled); ``()`` when unknown.
    mig_profiles: tuple[MigProfile, ...] = ()
    #: Dynamic MIG mode (the driver's setting, ``driver.devices.migmode``): the GPU is offered as a whole
    #: and as every (profile, placement); instances are created at prepare.
    mig_dynamic: bool = False
    #: ``None``: NVLink state could not be queried; ``()``: the GPU has no NVLink.
    nvlinks: tuple[NvLink, ...] | None = ()
    fabric: FabricInfo | None = None

    @property
    def name(self) -> str:
        """DRA device name: ``gpu-0000-3b-00-0`` from the PCI address (stable across reboots and index order).

        Falls back to the lowercased UUID (``gpu-<uuid>``) when the PCI address is unknown.
        """
        if self.pci_bus_id and PCI_BUS_ID_RE.fullmatch(self.pci_bus_id):
            return "gpu-" + re.sub(r"[:.]", "-", self.pci_bus_id)
        return _slug(self.uuid if self.uuid.lower().startswith("gpu-") else f"gpu-{self.uuid}")

    @property
    def device_node(self) -> str | None:
        """``/dev/nvidia<minor>``, the character device a container needs."""
        return None if self.minor is None else f"/dev/nvidia{self.minor}"

    @property
    def near_numa_nodes(self) -> tuple[int, ...]:
        """``numa_nodes``, or just ``numa_node`` when the GPU's neighbours are not known."""
        if self.numa_nodes:
            return self.numa_nodes
        return () if self.numa_node is None else (self.numa_node,)

    @property
    def active_links(self) -> int | None:
        if self.nvlinks is None:
            return None
        return sum(1 for link in self.nvlinks if link.active)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def mig_memory_slices(gpu: Gpu) -> int:
    """How many memory slices the GPU's MIG placements span (8 on A100/H100); 0 when unknown."""
    return max((p.start + p.size for prof in gpu.mig_profiles for p in prof.placements), default=0)


def mig_compute_slices(gpu: Gpu) -> int:
    """How many compute slices the GPU has (7 on A100/H100): those of its largest profile."""
    return max((prof.compute_slices for prof in gpu.mig_profiles), default=0)


def full_mig_slot(gpu: Gpu) -> MigSlot | None:
    """The instance that takes the whole GPU (``7g.40gb`` on A100-40GB), ``None`` when no profile does."""
    memory, compute = mig_memory_slices(gpu), mig_compute_slices(gpu)
    for profile in sorted(gpu.mig_profiles, key=lambda p: p.index):
        if profile.compute_slices != compute:
            continue
        for placement in profile.placements:
            if placement.start == 0 and placement.size == memory:
                return MigSlot(profile, placement, whole_gpu=True)
    return None


def mig_slots(gpu: Gpu) -> list[MigSlot]:
    """Every (profile, placement) of the GPU, ordered by profile index and placement."""
    return [
        MigSlot(profile, placement)
        for profile in sorted(gpu.mig_profiles, key=lambda p: p.index)
        for placement in sorted(profile.placements, key=lambda p: p.start)
    ]


def mig_slot_name(parent: Gpu, profile: str, start: int) -> str:
    """``<parent>-mig-<profile>-<placementStart>``: a MIG slot's name, the same whether the instance was
    created by hand (static) or is created at prepare (dynamic)."""
    return f"{parent.name}-mig-{_slug(profile)}-{start}"


def mig_device_name(parent: Gpu, mig: MigDevice) -> str:
    """DRA name of a MIG device: ``<parent>-mig-<profile>-<placementStart>``.

    The placement start plus profile identifies a MIG slot on its GPU independently of the GI/CI ids NVML
    hands out at creation. A compute instance smaller than its GPU instance (profile ``1c.2g.10gb``) adds
    ``-c<ciId>`` since several of them share one placement. Without placement: ``-gi<gi>-ci<ci>``.
    """
    base = f"{parent.name}-mig"
    if mig.profile and mig.placement is not None:
        name = mig_slot_name(parent, mig.profile, mig.placement.start)
        if re.match(r"^\d+c\.", mig.profile) and mig.compute_instance_id is not None:
            name += f"-c{mig.compute_instance_id}"
    elif mig.gpu_instance_id is not None and mig.compute_instance_id is not None:
        name = f"{base}-gi{mig.gpu_instance_id}-ci{mig.compute_instance_id}"
    else:
        name = _slug(mig.uuid)
    return name if is_dns_label(name) else _slug(mig.uuid)[:63].strip("-")


@dataclass(frozen=True, slots=True)
class Device:
    """One allocatable unit: a whole GPU (MIG disabled), one MIG device of a MIG-enabled GPU, or -- on a GPU
    in dynamic MIG mode -- a MIG slot whose instance is created at prepare (``slot``; once created, the
    preparer's copy of the device carries it as ``mig`` too)."""

    name: str
    gpu: Gpu
    mig: MigDevice | None = None
    slot: MigSlot | None = None

    @property
    def kind(self) -> DeviceKind:
        if self.slot is not None:
            return "gpu" if self.slot.whole_gpu else "mig"
        return "gpu" if self.mig is None else "mig"

    @property
    def uuid(self) -> str:
        """The device's UUID; a MIG slot not created yet answers for its GPU (health, events)."""
        return self.gpu.uuid if self.mig is None else self.mig.uuid

    @property
    def memory_bytes(self) -> int | None:
        if self.mig is not None:
            return self.mig.memory_bytes
        return self.slot.profile.memory_bytes if self.slot is not None else self.gpu.memory_bytes


@dataclass(frozen=True, slots=True)
class InterconnectDomain:
    """A set of GPUs that reach each other over NVLink (directly, via NVSwitch, or via a fabric clique)."""

    #: Stable id: ``<clusterUuid>.<cliqueId>`` for fabric cliques, else ``nvlink-<hash of member UUIDs>``.
    id: str
    members: tuple[str, ...]  # GPU UUIDs, ordered by device name


@dataclass(frozen=True, slots=True)
class Topology:
    """NVLink topology of one node, derived from the per-GPU link lists."""

    domains: tuple[InterconnectDomain, ...] = ()
    _by_uuid: Mapping[str, InterconnectDomain] = field(default_factory=lambda: MappingProxyType({}))

    def domain_of(self, gpu_uuid: str) -> InterconnectDomain | None:
        """The domain a GPU belongs to, ``None`` for a GPU without active NVLink."""
        return self._by_uuid.get(gpu_uuid)


def local_domain_id(member_uuids: Iterable[str]) -> str:
    """``nvlink-<16 hex>``: a hash of the sorted member UUIDs.

    UUIDs are burnt into the GPUs, so the id survives reboots, driver reloads and index reordering, and it is
    unique across nodes (two identical machines do not share an id, unlike a hash of PCI addresses).
    """
    digest = hashlib.sha256(",".join(sorted(member_uuids)).encode()).hexdigest()
    return f"nvlink-{digest[:16]}"


class _UnionFind:
    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self._parent.setdefault(key, key)
        root = key
        while self._parent[root] != root:
            root = self._parent[root]
        self._parent[key] = root
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)


def build_topology(gpus: Iterable[Gpu]) -> Topology:
    """Group GPUs into interconnect domains.

    - A GPU is NVLink-connected when it has an active link (or, links unknown, a completed fabric registration).
    - Fabric-registered GPUs (NVL72 and similar) form one domain per clique, spanning nodes.
    - Otherwise GPUs joined by a GPU-to-GPU link share a domain (NVLink bridges); every GPU linked to an
      NVSwitch joins the node's switch domain (HGX/DGX); links of unknown type join the GPUs that share the
      same remote PCI endpoint.
    """
    gpus = sorted(gpus, key=lambda g: g.name)
    by_bus = {g.pci_bus_id: g for g in gpus if g.pci_bus_id}
    connected = [g for g in gpus if (g.active_links or 0) > 0 or (g.nvlinks is None and g.fabric)]
    connected_ids = {g.uuid for g in connected}
    uf = _UnionFind()
    fabric_of: dict[str, str] = {}
    for gpu in connected:
        node = f"gpu:{gpu.uuid}"
        uf.find(node)
        if gpu.fabric is not None:
            fabric_of[gpu.uuid] = gpu.fabric.clique
            continue
        for link in gpu.nvlinks or ():
            if not link.active:
                continue
            remote = by_bus.get(link.remote_pci_bus_id) if link.remote_pci_bus_id else None
            if remote is not None and link.remote_type in ("gpu", "unknown"):
                if remote.uuid in connected_ids and remote.fabric is None:
                    uf.union(node, f"gpu:{remote.uuid}")
            elif link.remote_type == "switch":
                uf.union(node, "switch")
            elif link.remote_pci_bus_id:
                uf.union(node, f"endpoint:{link.remote_pci_bus_id}")

    groups: dict[str, list[Gpu]] = {}
    for gpu in connected:
        key = f"fabric:{fabric_of[gpu.uuid]}" if gpu.uuid in fabric_of else uf.find(f"gpu:{gpu.uuid}")
        groups.setdefault(key, []).append(gpu)

    domains: list[InterconnectDomain] = []
    for key, members in groups.items():
        uuids = tuple(g.uuid for g in members)
        domain_id = key.removeprefix("fabric:") if key.startswith("fabric:") else local_domain_id(uuids)
        domains.append(InterconnectDomain(id=domain_id, members=uuids))
    domains.sort(key=lambda d: d.id)
    by_uuid = {uuid: d for d in domains for uuid in d.members}
    return Topology(domains=tuple(domains), _by_uuid=MappingProxyType(by_uuid))


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything discovered on one node. Built by a backend; immutable afterwards.

    ``gpus`` keeps the backend's enumeration order; nothing derived from it depends on that order.
    Construction fails with ``ValueError`` on duplicate UUIDs or device names.
    """

    gpus: tuple[Gpu, ...]
    driver_version: str | None = None
    #: ``major.minor``, e.g. ``12.9``.
    cuda_driver_version: str | None = None
    topology: Topology = field(init=False, repr=False, compare=False)
    devices: tuple[Device, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpus", tuple(self.gpus))
        devices = tuple(sorted(_allocatable(self.gpus), key=lambda d: d.name))
        _check_unique("UUID", [g.uuid for g in self.gpus] + [d.uuid for d in devices if d.mig])
        _check_unique("GPU name", [g.name for g in self.gpus])
        _check_unique("device name", [d.name for d in devices])
        object.__setattr__(self, "topology", build_topology(self.gpus))
        object.__setattr__(self, "devices", devices)

    def gpu(self, uuid: str) -> Gpu | None:
        return next((g for g in self.gpus if g.uuid == uuid), None)

    def device(self, name: str) -> Device | None:
        return next((d for d in self.devices if d.name == name), None)


def dynamic_devices(gpu: Gpu) -> list[Device]:
    """A GPU in dynamic MIG mode: the whole GPU (its full-size instance) and every (profile, placement)."""
    full = full_mig_slot(gpu)
    whole = [Device(name=gpu.name, gpu=gpu, slot=full)] if full is not None else []
    return whole + [
        Device(name=mig_slot_name(gpu, s.profile.name, s.placement.start), gpu=gpu, slot=s)
        for s in mig_slots(gpu)
    ]


def _allocatable(gpus: Iterable[Gpu]) -> Iterable[Device]:
    # A MIG-enabled GPU cannot run work as a whole: only its MIG devices are allocatable.
    for gpu in gpus:
        if gpu.mig_dynamic:
            yield from dynamic_devices(gpu)
        elif gpu.mig_enabled:
            for mig in gpu.mig_devices:
                yield Device(name=mig_device_name(gpu, mig), gpu=gpu, mig=mig)
        else:
            yield Device(name=gpu.name, gpu=gpu)


def _check_unique(what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r} in inventory")
        seen.add(value)
