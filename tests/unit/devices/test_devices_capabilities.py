"""Backend capabilities are typed Protocols read once when the backend is opened, and the plugin builds its
node state from them -- not from the backend's spec string or by probing for methods."""

from __future__ import annotations

import argparse
from pathlib import Path

from driver.config import PluginConfig, add_plugin_arguments
from driver.devices.backend import Capabilities, capabilities, open_backend
from driver.devices.fake import FakeBackend
from driver.devices.fake_events import FakeHealthSource
from driver.plugin.preparer import make_preparer
from driver.state.devnodes import HostDeviceNodes, SimulatedDeviceNodes
from driver.state.lock import NodeLock
from driver.state.sharing import NvidiaSmiTimeSlicer, RecordingTimeSlicer
from tests.unit.exporter.test_exporter_nvml import open_nvml


def test_a_fake_backend_is_simulated_and_can_do_everything(tmp_path: Path) -> None:
    backend = open_backend("fake:pcie-l4x4", node_name="n1", state_dir=str(tmp_path))
    caps = capabilities(backend)
    assert isinstance(backend, FakeBackend)
    assert caps.simulated and caps.telemetry is backend and caps.health is backend and caps.mig is backend
    assert caps.container_edits == backend.container_edits() != {}
    assert isinstance(caps.health.health_source(backend.discover()), FakeHealthSource)


def test_the_nvml_backend_is_real_hardware() -> None:
    backend, _, _ = open_nvml()
    caps = capabilities(backend)
    assert not caps.simulated
    assert caps.telemetry is backend and caps.health is backend and caps.container_edits == {}
    assert caps.mig is backend  # it creates MIG instances through NVML
    backend.close()


class DiscoveryOnly:
    """A backend that can only discover (a third party's, say)."""

    def discover(self) -> object:
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_a_backend_without_optional_protocols_has_no_capabilities() -> None:
    assert capabilities(DiscoveryOnly()) == Capabilities()  # type: ignore[arg-type]


def plugin_config(tmp_path: Path, backend: str) -> PluginConfig:
    parser = argparse.ArgumentParser()
    add_plugin_arguments(parser)
    args = parser.parse_args(
        ["--node-name", "n1", "--backend", backend, "--plugin-dir", str(tmp_path / "p"),
         "--cdi-dir", str(tmp_path / "cdi"), "--driver-root", str(tmp_path / "root")]
    )  # fmt: skip
    return PluginConfig.from_args(args)


def test_the_preparer_follows_the_capabilities_not_the_backend_spec(tmp_path: Path) -> None:
    """Each config names the opposite kind of backend ('nvml' for simulated GPUs, 'file:' for real ones):
    the spec string is not consulted."""
    (tmp_path / "p").mkdir()
    inventory = open_backend("fake:pcie-l4x4", node_name="n1").discover()
    lock = NodeLock(str(tmp_path / "p" / "lock"))
    simulated = make_preparer(
        plugin_config(tmp_path, "nvml"), Capabilities(simulated=True), inventory, None, lock
    )
    assert isinstance(simulated.nodes, SimulatedDeviceNodes)
    assert isinstance(simulated.slicer, RecordingTimeSlicer)
    real = make_preparer(
        plugin_config(tmp_path, "file:/x.yaml"), Capabilities(simulated=False), inventory, None, lock
    )
    assert isinstance(real.nodes, HostDeviceNodes)
    assert isinstance(real.slicer, NvidiaSmiTimeSlicer)
