"""The exporter's label formatting cache never serves a label set for another one (docs/performance.md)."""

from __future__ import annotations

from driver.exporter import names as n
from driver.exporter.render import Families, encode

IDENTITY = {
    "hw_id": "gpu-0",
    "uuid": "GPU-1",
    "pci_bus_id": "0000:01:00.0",
    "hw_model": "L4",
    "hw_vendor": "NVIDIA",
}


def render(labels: dict[str, str | None]) -> str:
    f = Families([n.GPU_MEMORY_USAGE])
    f.add(n.GPU_MEMORY_USAGE, 1, labels)
    return encode(f, openmetrics=False).decode()


def test_changed_and_escaped_label_values_show_up() -> None:
    first = render(IDENTITY)
    assert 'hw_id="gpu-0"' in first
    assert render(IDENTITY) == first
    other = render({**IDENTITY, "hw_model": 'a "quoted"\\name\nline'})
    assert 'hw_model="a \\"quoted\\"\\\\name\\nline"' in other
    assert 'hw_model="L4"' in render(IDENTITY)
    assert 'hw_model=""' in render({**IDENTITY, "hw_model": None})
