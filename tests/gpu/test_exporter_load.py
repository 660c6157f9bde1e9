"""The real exporter on a real GPU sees a CUDA load: utilization, memory and power rise, energy increases.

``accel-dra exporter --backend nvml`` runs with a short sampling interval and no attribution sources. The test
reads the GPU's metrics while it idles, starts a CUDA load on that GPU alone (``tests/gpu/load.py``), and
scrapes until the load shows -- or fails after a generous deadline with the last readings.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gpu import smi
from tests.gpu.load import Load, start_load
from tests.support.processes import Process, accel_dra

pytestmark = pytest.mark.gpu

INTERVAL = 0.5
#: Memory the load holds; NVML's "used" must rise by at least this much.
LOAD_MIB = 2048
#: Power must rise by this much over the idle reading (an idle datacenter GPU draws tens of watts, a
#: matrix-product loop hundreds).
POWER_RISE_WATTS = 10.0


@dataclass(frozen=True)
class Reading:
    utilization: float | None
    memory_used: float | None
    power: float | None
    energy: float | None
    state_ok: bool


def reading(text: str, uuid: str) -> Reading:
    """This GPU's values in one scrape (``None`` where a metric is absent)."""
    values: dict[str, float] = {}
    ok = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("uuid") != uuid:
                continue
            if sample.name == "hw_gpu_utilization_ratio" and sample.labels.get("hw_gpu_task") == "general":
                values["utilization"] = sample.value
            elif sample.name in ("hw_gpu_memory_usage_bytes", "hw_power_watts", "hw_energy_joules_total"):
                values[sample.name] = sample.value
            elif sample.name == "hw_status" and sample.labels.get("hw_state") == "ok":
                ok = sample.value == 1
    return Reading(
        utilization=values.get("utilization"),
        memory_used=values.get("hw_gpu_memory_usage_bytes"),
        power=values.get("hw_power_watts"),
        energy=values.get("hw_energy_joules_total"),
        state_ok=ok,
    )


async def start_exporter() -> tuple[Process, str]:
    process = await Process.start(
        accel_dra(
            "exporter",
            "--backend",
            "nvml",
            "--listen",
            "127.0.0.1:0",
            "--pod-resources-socket",
            "",
            "--kube-api",
            "off",
            "--interval",
            str(INTERVAL),
            "--log-level",
            "debug",
        ),
        name="exporter",
    )
    (line,) = await process.wait_log(r"exporter running", timeout=60)
    port = re.search(r"\bport=(\d+)", line)
    assert port, line
    return process, f"http://127.0.0.1:{port.group(1)}/metrics"


async def wait_reading(url: str, uuid: str, done: Callable[[Reading], bool], timeout: float) -> Reading:
    """Scrape until ``done(reading)`` holds. Metrics change only between samples, so scraping once per
    sampling interval is the event to wait on; the deadline only bounds a GPU that never shows the load."""
    last = None
    async with aiohttp.ClientSession() as http:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    async with http.get(url) as response:
                        last = reading(await response.text(), uuid)
                    if done(last):
                        return last
                    await asyncio.sleep(INTERVAL)
        except TimeoutError:
            raise AssertionError(f"GPU {uuid}: readings never met the condition; last: {last}") from None


def complete(r: Reading) -> bool:
    return r.state_ok and None not in (r.utilization, r.memory_used, r.power, r.energy)


async def test_exporter_sees_a_cuda_load(whole_gpu: smi.SmiGpu, cuda_load: Load) -> None:
    uuid = whole_gpu.uuid
    exporter, url = await start_exporter()
    load: Process | None = None
    try:
        idle = await wait_reading(url, uuid, complete, timeout=30)
        assert idle.utilization is not None and idle.memory_used is not None
        assert idle.power is not None and idle.energy is not None
        load = await start_load(cuda_load, uuid, LOAD_MIB)

        def loaded(r: Reading) -> bool:
            return (
                complete(r)
                and r.utilization is not None
                and r.utilization >= 0.5
                and r.utilization > (idle.utilization or 0.0)
                and (r.memory_used or 0) >= (idle.memory_used or 0) + LOAD_MIB * 2**20
                and (r.power or 0) >= (idle.power or 0) + POWER_RISE_WATTS
                and (r.energy or 0) > (idle.energy or 0)
            )

        await wait_reading(url, uuid, loaded, timeout=90)
    finally:
        if load is not None:
            await load.kill()
        code = await exporter.terminate(signal.SIGTERM, timeout=30)
    assert code == 0, exporter.output()
    assert exporter.matching(r"level=(warning|error) logger=driver\.(devices|exporter)") == []
