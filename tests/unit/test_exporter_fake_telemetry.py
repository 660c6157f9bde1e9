"""Fake GPU telemetry: values derived from the procs files of simulated workloads, on a test clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.devices.backend import ContainerEditsSource, open_backend
from driver.devices.fake import FakeBackend, board_model, load_named_profile
from driver.devices.telemetry import ProcessSample, TelemetryError, TelemetrySource

GiB = 1 << 30


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_proc(state: Path, uuid: str, pid: int, utilization: float, memory: int, **extra: float) -> Path:
    path = state / "gpus" / uuid / "procs" / f"{pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "utilization": utilization, "memory_bytes": memory, **extra}))
    return path


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_idle_without_a_state_dir() -> None:
    backend = open_backend("fake:pcie-l4x4")
    assert isinstance(backend, TelemetrySource) and isinstance(backend, ContainerEditsSource)
    gpu = backend.discover().gpus[0]
    t = backend.sample(gpu.uuid)
    board = board_model(gpu)
    assert (t.utilization, t.power_watts, t.processes) == (0.0, board.idle_watts, ())
    assert t.memory_used_bytes == (gpu.memory_bytes or 0) // 200
    assert t.memory_temperature_celsius is None  # GDDR board: no memory sensor
    assert t.nvlink_rx_bytes is None  # no NVLink on this machine
    assert backend.container_edits() == {}
    backend.close()
    with pytest.raises(TelemetryError, match="closed"):
        backend.sample(gpu.uuid)


def test_load_follows_the_procs_files(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    clock = Clock()
    profile = load_named_profile("dgx-h100")
    backend = FakeBackend(profile, state_dir=tmp_path, clock=clock)
    gpu, other = profile.inventory.gpus[0], profile.inventory.gpus[1]
    board = board_model(gpu)
    idle = backend.sample(gpu.uuid)
    write_proc(tmp_path, gpu.uuid, os.getpid(), 0.5, 2 * GiB, encoder=0.25)
    write_proc(tmp_path, gpu.uuid, sleeper.pid, 0.25, 1 * GiB)
    clock.now += 10
    busy = backend.sample(gpu.uuid)

    assert busy.utilization == 0.75
    assert busy.encoder_utilization == 0.25 and busy.decoder_utilization == 0.0
    assert busy.memory_used_bytes == idle.memory_used_bytes + 3 * GiB  # type: ignore[operator]
    expected_power = board.idle_watts + 0.75 * (board.board_power_watts - board.idle_watts)
    assert busy.power_watts == pytest.approx(expected_power)
    # Energy integrates the power over the 10 s since the previous sample.
    assert busy.energy_joules == pytest.approx((idle.energy_joules or 0) + expected_power * 10)
    assert busy.temperature_celsius > idle.temperature_celsius  # type: ignore[operator]
    assert busy.sm_clock_hertz > idle.sm_clock_hertz  # type: ignore[operator]
    for name in ("pcie_rx_bytes", "pcie_tx_bytes", "nvlink_rx_bytes", "nvlink_tx_bytes"):
        assert getattr(busy, name) > getattr(idle, name), name
    assert set(busy.processes or ()) == {
        ProcessSample(os.getpid(), 2 * GiB, 0.5),
        ProcessSample(sleeper.pid, 1 * GiB, 0.25),
    }
    # The GPU next to it idles.
    assert backend.sample(other.uuid).utilization == 0.0


def test_utilization_is_capped_and_dead_processes_drop_out(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    clock = Clock()
    profile = load_named_profile("pcie-l4x4")
    backend = FakeBackend(profile, state_dir=tmp_path, clock=clock)
    uuid = profile.inventory.gpus[0].uuid
    write_proc(tmp_path, uuid, os.getpid(), 0.8, GiB)
    dead_file = write_proc(tmp_path, uuid, sleeper.pid, 0.7, GiB)
    board = board_model(profile.inventory.gpus[0])
    assert backend.sample(uuid).utilization == 1.0
    assert backend.sample(uuid).power_watts == board.board_power_watts
    sleeper.kill()
    sleeper.wait()
    after = backend.sample(uuid)
    assert after.utilization == 0.8
    assert [p.pid for p in after.processes or ()] == [os.getpid()]
    assert not dead_file.exists()


def test_half_written_files_are_ignored(tmp_path: Path) -> None:
    profile = load_named_profile("pcie-l4x4")
    backend = FakeBackend(profile, state_dir=tmp_path)
    uuid = profile.inventory.gpus[0].uuid
    (tmp_path / "gpus" / uuid / "procs" / "1.json").write_text('{"pid": 1, "utiliz')
    assert backend.sample(uuid).processes == ()


def test_counters_only_go_up(tmp_path: Path) -> None:
    clock = Clock()
    profile = load_named_profile("nvlink-pairs")
    backend = FakeBackend(profile, state_dir=tmp_path, clock=clock)
    uuid = profile.inventory.gpus[0].uuid
    previous = backend.sample(uuid)
    for step in (0.5, 0.0, 3.0, 1.0):
        clock.now += step
        current = backend.sample(uuid)
        for name in ("energy_joules", "pcie_rx_bytes", "pcie_tx_bytes", "nvlink_rx_bytes", "nvlink_tx_bytes"):
            assert getattr(current, name) >= getattr(previous, name), name
        previous = current


def test_mig_processes_count_towards_the_parent(tmp_path: Path) -> None:
    profile = load_named_profile("mig-a100")
    backend = FakeBackend(profile, state_dir=tmp_path)
    gpu = profile.inventory.gpus[0]
    write_proc(tmp_path, gpu.mig_devices[0].uuid, os.getpid(), 0.3, GiB)
    t = backend.sample(gpu.uuid)
    assert t.utilization == 0.3
    assert [p.pid for p in t.processes or ()] == [os.getpid()]
    with pytest.raises(TelemetryError, match="no fake GPU"):
        backend.sample(gpu.mig_devices[0].uuid)


def test_state_dir_layout_and_container_edits(tmp_path: Path) -> None:
    backend = open_backend("fake:mig-a100", state_dir=str(tmp_path), node_name="node-a")
    assert isinstance(backend, FakeBackend)
    gpu = backend.discover().gpus[0]
    for uuid in (gpu.uuid, *(m.uuid for m in gpu.mig_devices)):
        assert (tmp_path / "gpus" / uuid / "procs").is_dir()
    assert backend.container_edits() == {
        "env": [f"ACCEL_DRA_FAKE_STATE={tmp_path}"],
        "mounts": [
            {
                "hostPath": str(tmp_path),
                "containerPath": str(tmp_path),
                "options": ["rw", "nosuid", "nodev", "bind"],
            }
        ],
    }
