"""Flags every command shares and the rules all flags follow: one place for how a flag finds its
environment variable and how values are checked.

Every flag of the long-running processes (``plugin``, ``exporter``) is declared with :func:`flag`: its
environment variable is the flag's name in upper snake case (``--health-probe-interval`` ->
``HEALTH_PROBE_INTERVAL``), named in its help; an empty variable counts as unset. A few flags also read the
name they had before this scheme (:data:`LEGACY_ENV`), so existing deployments keep working. A value from
the environment goes through the flag's own ``type`` -- argparse parses a string default like a command
line value -- so it is checked exactly like the flag (one place: the type functions here).

This module imports nothing heavy -- of the driver's packages only the API layer's name rules, which need
nothing but the standard library -- so every command line, the long-running processes' and the tools', can
build on it.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from driver import DEFAULT_DRIVER_NAME
from driver.kube.api.names import is_driver_name

#: Environment variables some flags were read from before the one scheme; read when the scheme's is unset.
LEGACY_ENV: dict[str, str] = {
    "backend": "DEVICE_BACKEND",
    "fake-state-dir": "ACCEL_DRA_FAKE_STATE",
    "listen": "EXPORTER_LISTEN",
    "kube-api": "EXPORTER_KUBE_API",
    "interval": "EXPORTER_INTERVAL",
    "sample-timeout": "EXPORTER_SAMPLE_TIMEOUT",
    "chargeback-retention": "EXPORTER_CHARGEBACK_RETENTION",
}


def env_name(flag_name: str) -> str:
    """The environment variable of ``--flag-name``: ``FLAG_NAME``."""
    return flag_name.upper().replace("-", "_")


def flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    name: str,
    *,
    help: str,
    default: Any = None,
    **kwargs: Any,
) -> None:
    """``--name`` with its environment variable (:func:`env_name`, then :data:`LEGACY_ENV`) as default."""
    variable = env_name(name)
    found = env(variable) or (env(LEGACY_ENV[name]) if name in LEGACY_ENV else None)
    parser.add_argument(
        f"--{name}",
        default=found if found is not None else default,
        help=f"{help} (env {variable})",
        **kwargs,
    )


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the flag and its environment variable."""


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def check_driver_name(name: str) -> str:
    if not is_driver_name(name):
        raise ConfigError(f"driver name {name!r} must be a lowercase DNS subdomain of at most 63 characters")
    return name


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def non_negative_seconds(text: str) -> float:
    value = _seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    flag(group, "log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")
    flag(group, "log-format", default="text", choices=["text", "json"], help="log line format")


def add_kube_arguments(parser: argparse.ArgumentParser) -> None:
    flag(parser, "kubeconfig", help="kubeconfig file; in-cluster service account when unset")


def add_driver_arguments(parser: argparse.ArgumentParser) -> None:
    flag(
        parser,
        "driver-name",
        default=DEFAULT_DRIVER_NAME,
        help=f"DRA driver name (default {DEFAULT_DRIVER_NAME})",
    )


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Where device facts come from (plugin, exporter, discover): docs/fake-devices.md, docs/plugin.md."""
    flag(parser, "backend", default="nvml", help="device backend: nvml | fake:PROFILE | file:PATH")
    flag(
        parser,
        "driver-root",
        default="/",
        help="where the NVIDIA driver's user-space files are, as seen by this process; libnvidia-ml.so.1 "
        "is loaded from it",
    )
    flag(
        parser,
        "fake-state-dir",
        help="fake backends only: directory where simulated workloads report GPU load",
    )
