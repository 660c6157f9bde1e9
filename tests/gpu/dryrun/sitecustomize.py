"""Dry run of the gpu test set: ``pynvml`` replaced by the unit tests' NVML stand-in (see run.sh).

Loaded by every Python process started with this directory on ``PYTHONPATH`` while ``ADRA_DRY_PROFILE``
names a fake profile: the tests, ``accel-dra discover``, the plugin and the exporter then all see the
profile's GPUs through the real NVML backend code. Telemetry follows a fake load: while the file
``ADRA_DRY_BUSY`` exists, utilization, memory (first GPU) and power are high. MIG instances created through
it live under ``ADRA_DRY_STATE``, so the test and the plugin it starts see the same ones.
"""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace
from typing import Any


def _install(profile: str, busy: str) -> None:
    import pynvml

    from driver.devices.fake import load_named_profile
    from tests.unit.devices.test_devices_nvml import FakeNvml

    class TelemetryNvml(FakeNvml):
        nvmlLib: Any = True  # noqa: N815  (pynvml's name) nothing to preload from a driver root

        def _busy(self) -> bool:
            return os.path.exists(busy)

        def nvmlDeviceGetUtilizationRates(self, handle: tuple[Any, ...]) -> Any:
            return SimpleNamespace(gpu=97 if self._busy() else 0, memory=0)

        def nvmlDeviceGetMemoryInfo(self, handle: tuple[Any, ...]) -> Any:
            info = super().nvmlDeviceGetMemoryInfo(handle)
            loaded = self._busy() and handle[0] == "gpu" and handle[1] == 0
            used = (3 << 30) if loaded else (500 << 20)
            return pynvml.c_nvmlMemory_t(total=info.total, free=info.total - used, used=used)

        def nvmlDeviceGetPowerUsage(self, handle: tuple[Any, ...]) -> int:
            return 400_000 if self._busy() else 70_000

        def nvmlDeviceGetTotalEnergyConsumption(self, handle: tuple[Any, ...]) -> int:
            return int(time.time() * 1000)

    fake = TelemetryNvml(load_named_profile(profile, node_name="dry").inventory)
    state = os.environ.get("ADRA_DRY_STATE")
    if state:  # MIG instances shared by every process of the run, as a GPU's are
        from pathlib import Path

        from driver.devices.fakemig import FakeMig

        fake.mig = FakeMig(fake.gpus, Path(state))
    sys.modules["pynvml"] = fake  # type: ignore[assignment]


if os.environ.get("ADRA_DRY_PROFILE"):
    _install(os.environ["ADRA_DRY_PROFILE"], os.environ.get("ADRA_DRY_BUSY", "/tmp/adra-dry-busy"))
