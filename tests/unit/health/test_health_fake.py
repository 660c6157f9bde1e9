"""Fault injection for fake GPUs: the faults files, the source that reads them, and the backend's view."""

from __future__ import annotations

from pathlib import Path

import pytest

from driver.devices.backend import HealthCapable, open_backend
from driver.devices.events import LostEvent, ProbeError, QuietSource, XidEvent
from driver.devices.fake import FakeBackend
from driver.devices.fake_events import (
    LOST_REASON,
    FakeHealthSource,
    FaultError,
    faults_path,
    inject_xid,
    read_faults,
    resolve,
    set_lost,
)
from driver.devices.telemetry import TelemetryError

NODE = "node-1"


def backend(state: Path | None, profile: str = "pcie-l4x4") -> FakeBackend:
    opened = open_backend(f"fake:{profile}", node_name=NODE, state_dir=state)
    assert isinstance(opened, FakeBackend) and isinstance(opened, HealthCapable)
    return opened


def test_xids_are_reported_once_and_never_those_from_before_the_start(tmp_path: Path) -> None:
    fake = backend(tmp_path)
    inventory = fake.discover()
    gpu = inventory.gpus[0].uuid
    inject_xid(tmp_path, gpu, 13)  # happened while nothing was watching
    source = fake.health_source(inventory)
    assert source.start() == {}
    assert source.wait(0.05) == []
    inject_xid(tmp_path, gpu, 79)
    inject_xid(tmp_path, gpu, 48)
    assert source.wait(2) == [XidEvent(gpu, 79), XidEvent(gpu, 48)]
    assert source.wait(0.05) == []
    assert [x for _, x in read_faults(faults_path(tmp_path, gpu)).xids] == [13, 79, 48]


def test_a_lost_gpu_is_reported_fails_probes_and_telemetry_until_it_is_back(tmp_path: Path) -> None:
    fake = backend(tmp_path)
    inventory = fake.discover()
    gpu = inventory.gpus[1].uuid
    source = fake.health_source(inventory)
    source.start()
    source.probe(gpu)
    set_lost(tmp_path, gpu)
    assert source.wait(2) == [LostEvent(gpu, LOST_REASON)]
    with pytest.raises(ProbeError, match="fallen off the bus"):
        source.probe(gpu)
    with pytest.raises(TelemetryError, match="fallen off the bus"):
        fake.sample(gpu)
    fake.sample(inventory.gpus[0].uuid)
    set_lost(tmp_path, gpu, False)
    source.probe(gpu)
    assert fake.sample(gpu).uuid == gpu
    assert not faults_path(tmp_path, gpu).exists(), "a healthy GPU has no faults file"


def test_mig_devices_have_their_own_xids_and_lose_their_gpu(tmp_path: Path) -> None:
    fake = backend(tmp_path, "mig-a100")
    inventory = fake.discover()
    source = fake.health_source(inventory)
    source.start()
    device = next(d for d in inventory.devices if d.mig is not None)
    uuid, gpu = resolve(tmp_path, device.name)
    assert (uuid, gpu) == (device.uuid, device.gpu.uuid)
    inject_xid(tmp_path, uuid, 94)
    assert source.wait(2) == [XidEvent(device.uuid, 94)]
    source.probe(device.uuid)


def test_device_names_and_uuids_resolve_unknown_ones_are_named(tmp_path: Path) -> None:
    fake = backend(tmp_path)
    inventory = fake.discover()
    fake.health_source(inventory).start()
    device = inventory.devices[2]
    assert resolve(tmp_path, device.name) == (device.uuid, device.gpu.uuid)
    assert resolve(tmp_path, device.uuid) == (device.uuid, device.gpu.uuid)
    with pytest.raises(FaultError, match=rf"no simulated GPU or device 'gpu-x'.*{device.name}"):
        resolve(tmp_path, "gpu-x")


def test_without_a_state_dir_nothing_is_injected(tmp_path: Path) -> None:
    fake = backend(None)
    source = fake.health_source(fake.discover())
    assert isinstance(source, QuietSource)
    assert source.start() == {} and source.wait(0.01) == []


def test_a_half_written_faults_file_is_ignored(tmp_path: Path) -> None:
    fake = backend(tmp_path)
    inventory = fake.discover()
    source = FakeHealthSource(tmp_path, inventory)
    source.start()
    path = faults_path(tmp_path, inventory.gpus[0].uuid)
    path.write_text('{"xids": [{"seq": 1')
    assert source.wait(0.2) == []
    assert read_faults(path).xids == ()
