"""The exporter shows the plugin's health findings: ``hw_status`` and ``hw_errors_total{error_type="xid"}`` follow
the health state file (``--health-state-file``), and a lost fake GPU fails even without it."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from driver.devices.fake import FakeBackend, load_named_profile
from driver.devices.fake_events import set_lost
from driver.exporter.collector import Collector, Settings
from driver.exporter.podresources import DeviceResolver
from driver.exporter.render import Renderer
from driver.health.state import FaultRecord, HealthState
from driver.health.store import write_state

DRIVER = "gpu.accel-dra.dev"


def series(collector: Collector, hw_id: str) -> dict[tuple[str, str], float]:
    body, _ = Renderer(lambda: collector.snapshot).render()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.labels.get("hw_id") == hw_id and s.name in ("hw_status", "hw_errors_total"):
                key = s.labels.get("hw_state") or s.labels["error_type"]
                out[(s.name, key)] = s.value
    return out


async def test_hw_status_and_xid_counter_follow_the_state_file(tmp_path: Path) -> None:
    profile = load_named_profile("mig-a100")
    backend = FakeBackend(profile, state_dir=tmp_path / "state")
    inventory = profile.inventory
    gpu = inventory.gpus[0]
    mig = gpu.mig_devices[0]
    state_file = tmp_path / "health.json"
    collector = Collector(
        inventory,
        backend,
        DeviceResolver(inventory, DRIVER),
        settings=Settings(interval=60, health_state_file=str(state_file)),
    )
    await collector.start()
    try:
        assert series(collector, gpu.name)[("hw_status", "ok")] == 1
        assert series(collector, gpu.name)[("hw_errors_total", "xid")] == 0

        write_state(
            state_file, HealthState(records={mig.uuid: FaultRecord(xid=94, xid_fatal=True, xid_events=1)})
        )
        await collector.tick()
        shown = series(collector, gpu.name)
        assert (shown[("hw_status", "degraded")], shown[("hw_errors_total", "xid")]) == (1, 1)

        write_state(
            state_file,
            HealthState(
                records={gpu.uuid: FaultRecord(lost="GPU is lost"), mig.uuid: FaultRecord(xid_events=1)}
            ),
        )
        await collector.tick()
        shown = series(collector, gpu.name)
        assert (shown[("hw_status", "failed")], shown[("hw_status", "ok")]) == (1, 0)
        assert shown[("hw_errors_total", "xid")] == 1, "the counter never goes down when a fault is cleared"

        state_file.write_text("{half")
        await collector.tick()
        assert series(collector, gpu.name)[("hw_status", "failed")] == 1, "the last good state is kept"
    finally:
        await collector.stop()


async def test_without_a_state_file_no_xid_series_and_a_lost_fake_gpu_still_fails(tmp_path: Path) -> None:
    profile = load_named_profile("pcie-l4x4")
    state = tmp_path / "state"
    backend = FakeBackend(profile, state_dir=state)
    inventory = profile.inventory
    gpu = inventory.gpus[0]
    collector = Collector(
        inventory, backend, DeviceResolver(inventory, DRIVER), settings=Settings(interval=60)
    )
    await collector.start()
    try:
        assert ("hw_errors_total", "xid") not in series(collector, gpu.name)
        set_lost(state, gpu.uuid)
        await collector.tick()
        assert series(collector, gpu.name)[("hw_status", "failed")] == 1
    finally:
        await collector.stop()
