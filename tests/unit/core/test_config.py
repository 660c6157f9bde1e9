"""Plugin settings: flags, environment fallbacks and kubelet default paths."""

from __future__ import annotations

import argparse

import pytest

from driver.cli import build_parser
from driver.config import PluginConfig, add_plugin_arguments
from driver.flags import LEGACY_ENV, ConfigError, env_name


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


# -- every long-running flag has its environment variable, named by one scheme ------------------------


def _long_running_parsers() -> dict[str, argparse.ArgumentParser]:
    from driver.exporter.options import add_exporter_arguments

    parsers = {}
    for name, add in (("plugin", add_plugin_arguments), ("exporter", add_exporter_arguments)):
        parser = argparse.ArgumentParser(prog=name)
        add(parser)
        parsers[name] = parser
    return parsers


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.option_strings and a.help not in (None, argparse.SUPPRESS) and a.dest != "help"
    ]


@pytest.mark.parametrize("process", ["plugin", "exporter"])
def test_every_flag_names_its_environment_variable_by_the_scheme(process: str) -> None:
    for action in _flags(_long_running_parsers()[process]):
        name = action.option_strings[0].removeprefix("--")
        assert action.help is not None and action.help.endswith(f"(env {env_name(name)})"), name


@pytest.mark.parametrize("process", ["plugin", "exporter"])
def test_every_flag_is_read_from_its_environment_variable(
    process: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value that is valid for each flag, set through the environment, is what the parser returns."""
    for action in _flags(_long_running_parsers()[process]):
        name = action.option_strings[0].removeprefix("--")
        value = action.choices[-1] if action.choices else "7" if action.type else f"/from-env/{name}"
        monkeypatch.setenv(env_name(name), str(value))
        parsed = vars(_long_running_parsers()[process].parse_args([]))[action.dest]
        expected = action.type(str(value)) if callable(action.type) else value
        assert parsed == expected, name
        monkeypatch.delenv(env_name(name))


def test_an_environment_value_is_checked_like_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTH_PROBE_INTERVAL", "0")
    with pytest.raises(SystemExit):
        _long_running_parsers()["plugin"].parse_args(["--node-name", "n"])


def test_legacy_variables_still_work_and_the_scheme_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(LEGACY_ENV) <= {
        a.option_strings[0][2:] for p in _long_running_parsers().values() for a in _flags(p)
    }
    monkeypatch.setenv("DEVICE_BACKEND", "fake:dgx-h100")
    assert _long_running_parsers()["plugin"].parse_args([]).backend == "fake:dgx-h100"
    monkeypatch.setenv("BACKEND", "fake:pcie-l4x4")
    assert _long_running_parsers()["plugin"].parse_args([]).backend == "fake:pcie-l4x4"
