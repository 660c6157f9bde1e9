"""MIG profile tables of real GPUs, for the fake backend: what NVML reports on an A100 and an H100.

Each table is the GPU-instance profiles NVML lists on that product (``nvmlDeviceGetGpuInstanceProfileInfo``
for every ``NVML_GPU_INSTANCE_PROFILE_*`` index it supports) with the placements
``nvmlDeviceGetGpuInstancePossiblePlacements`` returns. Sources: NVIDIA's MIG user guide ("Supported MIG
Profiles": fractions, engines, instance counts, placement diagrams) and ``nvidia-smi mig -lgip`` / ``-lgipp``
output of these products (memory in MiB as NVML reports it, SM counts). docs/mig.md shows them as tables;
tests/gpu/test_mig_dynamic.py compares them with a real GPU's NVML when one is present.

Placements are in memory slices (8 per GPU); a profile's compute slices are the ``Ng`` of its name. The
``+me`` profile ("media extensions") is the one-slice instance that gets the GPU's JPEG and OFA engines, so
only one fits; ``1g.10gb`` on A100-40GB (``1g.20gb`` on 80 GB boards) is the one-slice instance with two
memory slices.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from driver.devices.model import MigPlacement, MigProfile

MiB = 1 << 20

# NVML_GPU_INSTANCE_PROFILE_* constants (nvml.h) and the profile ids NVML assigns them on A100/H100.
_ONE, _TWO, _THREE, _FOUR, _SEVEN, _ONE_ME, _ONE_DOUBLE = 0x0, 0x1, 0x2, 0x3, 0x4, 0x7, 0x9
_IDS = {_ONE: 19, _ONE_ME: 20, _ONE_DOUBLE: 15, _TWO: 14, _THREE: 9, _FOUR: 5, _SEVEN: 0}
_INSTANCES = {_ONE: 7, _ONE_ME: 1, _ONE_DOUBLE: 4, _TWO: 3, _THREE: 2, _FOUR: 1, _SEVEN: 1}
_PLACEMENTS = {
    _ONE: tuple((s, 1) for s in range(7)),
    _ONE_ME: tuple((s, 1) for s in range(7)),
    _ONE_DOUBLE: ((0, 2), (2, 2), (4, 2), (6, 2)),
    _TWO: ((0, 2), (2, 2), (4, 2)),
    _THREE: ((0, 4), (4, 4)),
    _FOUR: ((0, 4),),
    _SEVEN: ((0, 8),),
}
_SLICES = {_ONE: 1, _ONE_ME: 1, _ONE_DOUBLE: 1, _TWO: 2, _THREE: 3, _FOUR: 4, _SEVEN: 7}

# index -> (name, memory MiB, SMs, copy engines, decoders, JPEG, OFA); no A100/H100 MIG profile has an encoder.
_Row = tuple[str, int, int, int, int, int, int]

_A100_40GB: dict[int, _Row] = {
    _ONE: ("1g.5gb", 4864, 14, 1, 0, 0, 0),
    _ONE_ME: ("1g.5gb+me", 4864, 14, 1, 1, 1, 1),
    _ONE_DOUBLE: ("1g.10gb", 9856, 14, 1, 1, 0, 0),
    _TWO: ("2g.10gb", 9856, 28, 2, 1, 0, 0),
    _THREE: ("3g.20gb", 19968, 42, 3, 2, 0, 0),
    _FOUR: ("4g.20gb", 19968, 56, 4, 2, 0, 0),
    _SEVEN: ("7g.40gb", 40192, 98, 7, 5, 1, 1),
}
_A100_80GB: dict[int, _Row] = {
    _ONE: ("1g.10gb", 9728, 14, 1, 0, 0, 0),
    _ONE_ME: ("1g.10gb+me", 9728, 14, 1, 1, 1, 1),
    _ONE_DOUBLE: ("1g.20gb", 19968, 14, 1, 1, 0, 0),
    _TWO: ("2g.20gb", 19968, 28, 2, 1, 0, 0),
    _THREE: ("3g.40gb", 40192, 42, 3, 2, 0, 0),
    _FOUR: ("4g.40gb", 40192, 56, 4, 2, 0, 0),
    _SEVEN: ("7g.80gb", 81152, 98, 7, 5, 1, 1),
}
_H100_80GB: dict[int, _Row] = {
    _ONE: ("1g.10gb", 9984, 16, 1, 1, 1, 0),
    _ONE_ME: ("1g.10gb+me", 9984, 16, 1, 1, 1, 1),
    _ONE_DOUBLE: ("1g.20gb", 20096, 26, 1, 1, 1, 0),
    _TWO: ("2g.20gb", 20096, 32, 2, 2, 2, 0),
    _THREE: ("3g.40gb", 40448, 60, 3, 3, 3, 0),
    _FOUR: ("4g.40gb", 40448, 64, 4, 4, 4, 0),
    _SEVEN: ("7g.80gb", 81152, 132, 8, 7, 7, 1),
}


def _table(rows: Mapping[int, _Row]) -> tuple[MigProfile, ...]:
    return tuple(
        MigProfile(
            name=name,
            index=index,
            id=_IDS[index],
            compute_slices=_SLICES[index],
            memory_bytes=memory * MiB,
            placements=tuple(MigPlacement(start, size) for start, size in _PLACEMENTS[index]),
            instance_count=_INSTANCES[index],
            multiprocessors=sms,
            copy_engines=copy,
            decoders=decoders,
            jpeg_engines=jpeg,
            ofa_engines=ofa,
        )
        for index, (name, memory, sms, copy, decoders, jpeg, ofa) in sorted(rows.items())
    )


#: Table name -> profiles. The names are what fake profiles' ``mig.profiles`` take.
TABLES: Mapping[str, tuple[MigProfile, ...]] = MappingProxyType(
    {"a100-40gb": _table(_A100_40GB), "a100-80gb": _table(_A100_80GB), "h100-80gb": _table(_H100_80GB)}
)

# Product name fragments -> table, for fake GPUs whose profile does not name one (first match wins).
_PRODUCTS = (
    ("A100-SXM4-80GB", "a100-80gb"),
    ("A100 80GB", "a100-80gb"),
    ("A100-PCIE-80GB", "a100-80gb"),
    ("A100", "a100-40gb"),
    ("H100 80GB HBM3", "h100-80gb"),
    ("H100-SXM5-80GB", "h100-80gb"),
)


def table_for_product(product: str | None) -> str | None:
    """The table of a product name, ``None`` when no table describes it."""
    return next((table for key, table in _PRODUCTS if product and key in product), None)


def markdown_table(table: str) -> str:
    """One table as docs/mig.md shows it (a test keeps the page and the data equal)."""
    rows = [
        "| Profile | ID | Memory (MiB) | Compute slices | SMs | Placements (start:size) | Copy engines | "
        "Decoders | JPEG | OFA |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in TABLES[table]:
        placements = ", ".join(f"{x.start}:{x.size}" for x in p.placements)
        rows.append(
            f"| `{p.name}` | {p.id} | {p.memory_bytes // MiB} | {p.compute_slices} | {p.multiprocessors} "
            f"| {placements} | {p.copy_engines} | {p.decoders} | {p.jpeg_engines} | {p.ofa_engines} |"
        )
    return "\n".join(rows) + "\n"
