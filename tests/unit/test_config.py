"""Plugin settings: flags, environment fallbacks and kubelet default paths."""

from __future__ import annotations

import argparse

import pytest

from driver.cli import build_parser
from driver.config import PluginConfig
from driver.flags import ConfigError


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["plugin", *argv])


def test_defaults_match_kubelet_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DRIVER_NAME", "POD_UID", "KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NODE_NAME", "node-a")
    config = PluginConfig.from_args(parse([]))
    assert config.driver_name == "gpu.accel-dra.dev"
    assert config.node_name == "node-a"
    assert config.plugin_dir == "/var/lib/kubelet/plugins/gpu.accel-dra.dev"
    assert config.registry_dir == "/var/lib/kubelet/plugins_registry"
    assert config.cdi_dir == "/var/run/cdi"
    assert config.pod_uid is None
    assert config.kubeconfig is None


def test_environment_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "node-b")
    monkeypatch.setenv("DRIVER_NAME", "gpu.example.com")
    monkeypatch.setenv("POD_UID", "uid-1")
    monkeypatch.setenv("KUBECONFIG", "/tmp/kc")
    config = PluginConfig.from_args(parse([]))
    assert (config.node_name, config.driver_name, config.pod_uid, config.kubeconfig) == (
        "node-b",
        "gpu.example.com",
        "uid-1",
        "/tmp/kc",
    )
    assert config.plugin_dir == "/var/lib/kubelet/plugins/gpu.example.com"


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "from-env")
    config = PluginConfig.from_args(parse(["--node-name", "from-flag", "--plugin-dir", "/x/y"]))
    assert config.node_name == "from-flag"
    assert config.plugin_dir == "/x/y"


def test_missing_node_name_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    with pytest.raises(ConfigError, match="NODE_NAME"):
        PluginConfig.from_args(parse([]))


@pytest.mark.parametrize("name", ["GPU.example.com", "-gpu.example.com", "gpu_example.com", "a" * 64])
def test_bad_driver_names_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("NODE_NAME", "n")
    with pytest.raises(ConfigError, match="driver name"):
        PluginConfig.from_args(parse([f"--driver-name={name}"]))
