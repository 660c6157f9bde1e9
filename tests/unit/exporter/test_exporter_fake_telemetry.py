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


def test_a_mig_enabled_gpu_reads_like_nvml_reads_it(tmp_path: Path) -> None:
    """No GPU-wide utilization and no per-process SM share in MIG mode; memory per MIG device; no GPM on
    an A100 (Ampere)."""
    profile = load_named_profile("mig-a100")
    backend = FakeBackend(profile, state_dir=tmp_path)
    gpu = profile.inventory.gpus[0]
    mig = gpu.mig_devices[0]
    write_proc(tmp_path, mig.uuid, os.getpid(), 0.3, GiB)
    t = backend.sample(gpu.uuid)
    assert (t.utilization, t.encoder_utilization, t.decoder_utilization, t.memory_copy_utilization) == (
        None,
        None,
        None,
        None,
    )
    assert t.processes == (ProcessSample(os.getpid(), GiB, None),)
    assert t.activity == {} and t.io_throughput == {}
    readings = {m.uuid: m for m in t.mig}
    assert list(readings) == [m.uuid for m in gpu.mig_devices]
    first = readings[mig.uuid]
    assert (first.memory_total_bytes, first.memory_used_bytes) == (
        mig.memory_bytes,
        (mig.memory_bytes or 0) // 200 + GiB,
    )
    assert first.processes == (ProcessSample(os.getpid(), GiB, None),)
    assert first.utilization is None and first.activity == {}  # Ampere: no GPM
    # The parent's memory is what its instances use; its power follows their load.
    assert t.memory_used_bytes == (gpu.memory_bytes or 0) // 200 + sum(
        m.memory_used_bytes or 0 for m in t.mig
    )
    assert t.power_watts is not None and t.power_watts > board_model(gpu).idle_watts
    with pytest.raises(TelemetryError, match="no fake GPU"):
        backend.sample(mig.uuid)


def test_hopper_mig_devices_report_their_own_activity(tmp_path: Path) -> None:
    profile = load_named_profile("dgx-h100-mig")
    backend = FakeBackend(profile, state_dir=tmp_path)
    whole, mig_gpu = profile.inventory.gpus[0], profile.inventory.gpus[7]
    busy = next(m for m in mig_gpu.mig_devices if m.profile == "3g.40gb")
    write_proc(tmp_path, busy.uuid, os.getpid(), 0.5, GiB, tensor=0.25)
    write_proc(tmp_path, whole.uuid, os.getpid(), 0.8, GiB)
    t = backend.sample(mig_gpu.uuid)
    assert t.utilization is None and t.activity == {} and t.io_throughput == {}
    activity = {m.uuid: dict(m.activity) for m in t.mig}
    assert activity[busy.uuid]["graphics"] == 0.5 and activity[busy.uuid]["tensor"] == 0.25
    assert {m.uuid: m.utilization for m in t.mig}[busy.uuid] == 0.5
    idle = next(m for m in mig_gpu.mig_devices if m.uuid != busy.uuid)
    assert set(activity[idle.uuid].values()) == {0.0}
    w = backend.sample(whole.uuid)
    assert w.utilization == 0.8 and w.activity["graphics"] == 0.8 and w.activity["sm_occupancy"] == 0.4
    assert set(w.io_throughput) == {
        ("pcie", "receive"),
        ("pcie", "transmit"),
        ("nvlink", "receive"),
        ("nvlink", "transmit"),
    }
    assert w.mig == () and w.clock_event_reasons == 0
    assert (w.remapped_rows_correctable, w.row_remap_failure, w.pcie_replays) == (0, False, 0)


def test_health_registers_follow_the_board(tmp_path: Path) -> None:
    l4 = open_backend("fake:pcie-l4x4")
    t = l4.sample(l4.discover().gpus[0].uuid)
    # GDDR: no row remapper; Ada: no GPM; idle: the GPU-idle clocks event reason.
    assert (t.remapped_rows_correctable, t.row_remap_pending, t.activity) == (None, None, {})
    assert (t.clock_event_reasons, t.pcie_replays, t.memory_copy_utilization) == (0x1, 0, 0.0)


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
