"""What ``nvidia-smi`` says about this machine's GPUs, as plain values the gpu tests compare against.

nvidia-smi is the independent witness: it reads the driver through its own code, so a value the driver
publishes must agree with it once both are written the same way. The parsers are pure (tested on sample
output in ``test_smi_parsers.py``); :func:`run_smi` is the only part that runs anything.

Conversions to the forms the driver publishes are written here from the printed formats, deliberately
without the driver's own helpers, so a bug there cannot hide on both sides of a comparison.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: ``--query-gpu`` fields, in the order :func:`parse_query_csv` reads them.
QUERY_FIELDS = (
    "index",
    "uuid",
    "name",
    "memory.total",
    "pci.bus_id",
    "driver_version",
    "compute_cap",
    "mig.mode.current",
)
_NOT_AVAILABLE = re.compile(r"^\[?(N/A|Not Supported|Unknown Error|Insufficient Permissions)\]?$", re.I)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class SmiError(AssertionError):
    """nvidia-smi failed or printed something these parsers do not understand (names the command)."""


@dataclass(frozen=True)
class SmiGpu:
    """One row of ``nvidia-smi --query-gpu=<QUERY_FIELDS> --format=csv,noheader,nounits``."""

    index: int
    uuid: str
    name: str
    memory_mib: int
    #: As printed: ``00000000:18:00.0``.
    pci_bus_id: str
    driver_version: str
    #: ``9.0``.
    compute_cap: str | None
    #: ``Enabled`` / ``Disabled``; ``None`` on GPUs without MIG.
    mig_mode: str | None


@dataclass(frozen=True)
class SmiGpuDetails:
    """Per-GPU facts only ``nvidia-smi -q -x`` prints."""

    uuid: str
    brand: str | None
    architecture: str | None
    minor_number: int | None


@dataclass(frozen=True)
class SmiReport:
    """``nvidia-smi -q -x``: driver-wide versions and per-GPU details by UUID."""

    driver_version: str | None
    cuda_version: str | None
    gpus: Mapping[str, SmiGpuDetails]


@dataclass(frozen=True)
class LinkStatus:
    """One ``Link N: ...`` line of ``nvidia-smi nvlink -s``."""

    index: int
    active: bool
    text: str


@dataclass(frozen=True)
class TopoMatrix:
    """The GPU part of ``nvidia-smi topo -m``."""

    #: Row labels in order: ``GPU0``, ``GPU1``, ...
    gpus: tuple[str, ...]
    #: ``{GPU0, GPU1}`` -> number of bonded NVLinks (``NV12`` -> 12), for every NVLink-connected pair.
    nvlinks: Mapping[frozenset[str], int]
    #: GPU label -> the ``NUMA Affinity`` cell, where the row could be aligned with the header.
    numa_affinity: Mapping[str, str] = field(default_factory=dict)


# -- printed forms -> published forms ---------------------------------------------------------------


def available(value: str) -> str | None:
    """``None`` for nvidia-smi's placeholders (``[N/A]``, ``[Not Supported]``), else the stripped text."""
    text = value.strip()
    return None if not text or _NOT_AVAILABLE.match(text) else text


def k8s_pci_bus_id(printed: str) -> str | None:
    """``00000000:18:00.0`` -> ``0000:18:00.0`` (lowercase, 4-digit domain: resource.kubernetes.io/pciBusID).

    ``None`` for a domain above ``ffff`` (Intel VMD): it has no 4-digit form, and the driver then publishes
    no PCI address rather than a malformed one.
    """
    match = re.fullmatch(r"([0-9A-Fa-f]+):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-7])", printed.strip())
    if not match:
        raise SmiError(f"nvidia-smi printed PCI bus id {printed!r}; expected DOMAIN:BB:DD.F")
    domain, bus, dev, func = match.groups()
    if int(domain, 16) > 0xFFFF:
        return None
    return f"{int(domain, 16):04x}:{bus.lower()}:{dev.lower()}.{func}"


def device_name(printed_pci_bus_id: str, uuid: str) -> str:
    """The DRA device name the driver derives for a GPU: ``gpu-0000-18-00-0`` from its PCI address, or
    ``gpu-<uuid>`` (lowercase, dashes) when the address has no standard form."""
    address = k8s_pci_bus_id(printed_pci_bus_id)
    if address is not None:
        return "gpu-" + re.sub(r"[:.]", "-", address)
    return re.sub(r"[^a-z0-9]+", "-", uuid.lower()).strip("-")


def semver(printed: str) -> str:
    """``580.65.06`` -> ``580.65.6``, ``9.0`` -> ``9.0.0``: the strict semver a DRA version attribute holds."""
    parts = printed.strip().split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise SmiError(f"nvidia-smi printed version {printed!r}; expected up to three numbers")
    return ".".join(str(int(p)) for p in [*parts, "0", "0"][:3])


def squash(text: str) -> str:
    """Brand names compared without case and spaces: nvidia-smi ``NVIDIA RTX`` vs the driver's ``NvidiaRTX``."""
    return re.sub(r"\s+", "", text).lower()


# -- parsers ----------------------------------------------------------------------------------------


def parse_query_csv(text: str) -> list[SmiGpu]:
    """Rows of ``--query-gpu=<QUERY_FIELDS> --format=csv,noheader,nounits``."""
    gpus = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if not row:
            continue
        if len(row) != len(QUERY_FIELDS):
            raise SmiError(
                f"nvidia-smi --query-gpu row has {len(row)} fields, expected {QUERY_FIELDS}: {row}"
            )
        cells = dict(zip(QUERY_FIELDS, (c.strip() for c in row), strict=True))
        memory = available(cells["memory.total"])
        if memory is None or not memory.isdigit():
            raise SmiError(f"nvidia-smi memory.total {cells['memory.total']!r} is not a number of MiB")
        gpus.append(
            SmiGpu(
                index=int(cells["index"]),
                uuid=cells["uuid"],
                name=cells["name"],
                memory_mib=int(memory),
                pci_bus_id=cells["pci.bus_id"],
                driver_version=cells["driver_version"],
                compute_cap=available(cells["compute_cap"]),
                mig_mode=available(cells["mig.mode.current"]),
            )
        )
    return gpus


def _xml_text(node: ET.Element | None, path: str) -> str | None:
    found = node.find(path) if node is not None else None
    return available(found.text or "") if found is not None else None


def parse_query_xml(text: str) -> SmiReport:
    """``nvidia-smi -q -x``: driver and CUDA versions, and each GPU's brand, architecture and minor number."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise SmiError(f"nvidia-smi -q -x printed no valid XML: {err}") from None
    gpus: dict[str, SmiGpuDetails] = {}
    for gpu in root.findall("gpu"):
        uuid = _xml_text(gpu, "uuid")
        if uuid is None:
            raise SmiError(f"nvidia-smi -q -x: GPU {gpu.get('id')} has no <uuid>")
        minor = _xml_text(gpu, "minor_number")
        gpus[uuid] = SmiGpuDetails(
            uuid=uuid,
            brand=_xml_text(gpu, "product_brand"),
            architecture=_xml_text(gpu, "product_architecture"),
            minor_number=int(minor) if minor is not None and minor.isdigit() else None,
        )
    return SmiReport(
        driver_version=_xml_text(root, "driver_version"),
        cuda_version=_xml_text(root, "cuda_version"),
        gpus=gpus,
    )


_NVLINK_GPU = re.compile(r"^GPU (\d+): .*\(UUID: (\S+?)\)\s*$")
_NVLINK_LINK = re.compile(r"^\s+Link (\d+): (.*?)\s*$")


def parse_nvlink_status(text: str) -> dict[str, list[LinkStatus]]:
    """``nvidia-smi nvlink -s``: the links listed under each GPU (by UUID); a GPU without lines has none.

    A link is active when its line shows a speed (``Link 0: 26.562 GB/s``), inactive when it says so
    (``Link 3: <inactive>``). Lines that are neither (messages about unsupported GPUs) are ignored.
    """
    links: dict[str, list[LinkStatus]] = {}
    current: list[LinkStatus] | None = None
    for raw in text.splitlines():
        line = _ANSI.sub("", raw)
        gpu = _NVLINK_GPU.match(line)
        if gpu:
            current = links.setdefault(gpu.group(2), [])
            continue
        link = _NVLINK_LINK.match(line)
        if link and current is not None:
            state = link.group(2)
            current.append(LinkStatus(int(link.group(1)), "inactive" not in state.lower(), state))
    return links


def _cells(line: str) -> list[str]:
    # Columns are tab separated; runs of tabs only pad, so empty cells carry no information.
    return [cell.strip() for cell in _ANSI.sub("", line).split("\t") if cell.strip()]


def parse_topo_matrix(text: str) -> TopoMatrix:
    """``nvidia-smi topo -m``: NVLink-connected GPU pairs (``NV#`` cells) and each GPU's NUMA affinity."""
    lines = [line for line in text.splitlines() if line.strip()]
    header_at = next((i for i, line in enumerate(lines) if _cells(line)[:1] == ["GPU0"]), None)
    if header_at is None:
        raise SmiError(f"nvidia-smi topo -m printed no matrix header with GPU0:\n{text}")
    header = _cells(lines[header_at])
    columns = [c for c in header if re.fullmatch(r"GPU\d+", c)]
    rows: dict[str, list[str]] = {}
    for line in lines[header_at + 1 :]:
        cells = _cells(line)
        if cells and re.fullmatch(r"GPU\d+", cells[0]):  # NIC rows and the legend are skipped
            rows[cells[0]] = cells[1:]
    nvlinks: dict[frozenset[str], int] = {}
    numa: dict[str, str] = {}
    for label, cells in rows.items():
        for column, cell in zip(columns, cells, strict=False):
            match = re.fullmatch(r"NV(\d+)", cell)
            if match and column != label:
                nvlinks[frozenset((label, column))] = int(match.group(1))
        if len(cells) == len(header) and "NUMA Affinity" in header:
            numa[label] = cells[header.index("NUMA Affinity")]
    return TopoMatrix(gpus=tuple(rows), nvlinks=nvlinks, numa_affinity=numa)


def nvlink_groups(topo: TopoMatrix) -> list[frozenset[str]]:
    """GPUs that reach each other over NVLink (connected components of the ``NV#`` pairs), two or more each."""
    neighbours: dict[str, set[str]] = {gpu: set() for gpu in topo.gpus}
    for pair in topo.nvlinks:
        a, b = sorted(pair)
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    seen: set[str] = set()
    groups = []
    for start, linked in neighbours.items():
        if start in seen or not linked:
            continue
        group: set[str] = set()
        todo = [start]
        while todo:
            gpu = todo.pop()
            if gpu not in group:
                group.add(gpu)
                todo.extend(neighbours[gpu] - group)
        seen |= group
        groups.append(frozenset(group))
    return groups


# -- running it ---------------------------------------------------------------------------------------


def run_smi(smi: str, *args: str, check: bool = True, timeout: float = 60.0) -> str:
    """nvidia-smi's stdout; raises :class:`SmiError` with its output when it fails (unless ``check`` is off)."""
    command = [smi, *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SmiError(f"{' '.join(command)}: {err}") from None
    if done.returncode == 0:
        return done.stdout
    if check:
        raise SmiError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def query_gpus(smi: str) -> list[SmiGpu]:
    fields = ",".join(QUERY_FIELDS)
    return parse_query_csv(run_smi(smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"))


def query_report(smi: str) -> SmiReport:
    return parse_query_xml(run_smi(smi, "-q", "-x"))


def by_uuid(gpus: Iterable[SmiGpu]) -> dict[str, SmiGpu]:
    return {gpu.uuid: gpu for gpu in gpus}
