"""XID events counted by the exporter itself: per GPU and code, MIG devices count for their GPU."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from driver.devices.events import HealthEvent, HealthSourceError, LostEvent, XidEvent
from driver.devices.fake import FakeBackend, load_named_profile
from driver.devices.fake_events import INDEX_FILE, inject_xid
from driver.exporter.xids import XidCounter

INVENTORY = load_named_profile("dgx-h100-mig").inventory


class Source:
    def __init__(self, unmonitored: Mapping[str, str] | None = None) -> None:
        self.unmonitored = dict(unmonitored or {})
        self.queue: list[list[HealthEvent] | Exception] = []
        self.closed = False

    def start(self) -> Mapping[str, str]:
        return self.unmonitored

    def wait(self, timeout: float) -> list[HealthEvent]:
        assert timeout == 0.0  # polls never wait
        if not self.queue:
            return []
        item = self.queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def probe(self, uuid: str) -> None:
        return None

    def close(self) -> None:
        self.closed = True


def test_counts_per_gpu_and_code_and_the_last_code() -> None:
    gpu, mig_gpu = INVENTORY.gpus[0], INVENTORY.gpus[7]
    source = Source({INVENTORY.gpus[1].uuid: "the GPU does not report XID events"})
    counter = XidCounter(source, INVENTORY)
    counter.poll()
    assert counter.counts(gpu.uuid) == {} and counter.last(gpu.uuid) == 0
    assert counter.counts(INVENTORY.gpus[1].uuid) is None and counter.last(INVENTORY.gpus[1].uuid) is None
    source.queue = [
        [XidEvent(gpu.uuid, 13), XidEvent(gpu.uuid, 13)],
        [XidEvent(mig_gpu.mig_devices[2].uuid, 94), LostEvent(gpu.uuid, "off the bus")],
        [XidEvent(gpu.uuid, 79)],
        [XidEvent("GPU-of-another-node", 1)],
    ]
    counter.poll()
    assert counter.counts(gpu.uuid) == {13: 2, 79: 1} and counter.last(gpu.uuid) == 79
    assert counter.counts(mig_gpu.uuid) == {94: 1} and counter.last(mig_gpu.uuid) == 94
    counter.close()
    assert source.closed


def test_a_broken_stream_hides_the_series_until_it_works_again() -> None:
    gpu = INVENTORY.gpus[0]
    source = Source()
    counter = XidCounter(source, INVENTORY)
    source.queue = [[XidEvent(gpu.uuid, 31)]]
    counter.poll()
    source.queue = [HealthSourceError("event set gone")]
    counter.poll()
    assert counter.counts(gpu.uuid) is None and counter.last(gpu.uuid) is None
    counter.poll()
    assert counter.counts(gpu.uuid) == {31: 1}  # counted before the break, kept


def test_a_source_that_cannot_start_gives_no_series() -> None:
    class Broken(Source):
        def start(self) -> Mapping[str, str]:
            raise OSError("no NVML")

    counter = XidCounter(Broken(), INVENTORY)
    counter.poll()
    counter.poll()
    assert counter.counts(INVENTORY.gpus[0].uuid) is None


def test_fake_gpus_report_injected_xids_to_a_read_only_watcher(tmp_path: Path) -> None:
    profile = load_named_profile("dgx-h100-mig")
    backend = FakeBackend(profile, state_dir=tmp_path)
    gpu = profile.inventory.gpus[7]
    inject_xid(tmp_path, gpu.uuid, 48)  # before the start: not reported, as with NVML
    counter = XidCounter(backend.health_source(profile.inventory, read_only=True), profile.inventory)
    counter.poll()
    inject_xid(tmp_path, gpu.mig_devices[0].uuid, 43)
    counter.poll()
    assert counter.counts(gpu.uuid) == {43: 1}
    assert not (tmp_path / INDEX_FILE).exists()  # the exporter writes nothing
