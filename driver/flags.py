"""Flags every command shares and the rules all flags follow: one place for how a flag finds its
environment variable and how values are checked.

A flag's environment variable is named in its help (``(env NAME)``); an empty variable counts as unset.
This module imports nothing heavy and nothing of the driver's packages, so every command line -- the
long-running processes' and the tools' -- can build on it.
"""

from __future__ import annotations

import argparse
import os
import re

from driver import DEFAULT_DRIVER_NAME

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the flag and its environment variable."""


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def check_driver_name(name: str) -> str:
    if len(name) > 63 or not _DNS_SUBDOMAIN.match(name):
        raise ConfigError(f"driver name {name!r} must be a lowercase DNS subdomain of at most 63 characters")
    return name


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
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
    group.add_argument(
        "--log-level", default=env("LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"]
    )
    group.add_argument("--log-format", default=env("LOG_FORMAT", "text"), choices=["text", "json"])


def add_kube_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        default=env("KUBECONFIG"),
        help="kubeconfig file (env KUBECONFIG); in-cluster service account when unset",
    )


def add_driver_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--driver-name",
        default=env("DRIVER_NAME", DEFAULT_DRIVER_NAME),
        help=f"DRA driver name (env DRIVER_NAME, default {DEFAULT_DRIVER_NAME})",
    )


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Where device facts come from (plugin, exporter, discover): docs/fake-devices.md, docs/plugin.md."""
    parser.add_argument(
        "--backend",
        default=env("DEVICE_BACKEND", "nvml"),
        help="device backend: nvml | fake:PROFILE | file:PATH (env DEVICE_BACKEND)",
    )
    parser.add_argument(
        "--driver-root",
        default=env("DRIVER_ROOT", "/"),
        help="where the NVIDIA driver's user-space files are, as seen by this process; libnvidia-ml.so.1 "
        "is loaded from it (env DRIVER_ROOT)",
    )
    parser.add_argument(
        "--fake-state-dir",
        default=env("ACCEL_DRA_FAKE_STATE"),
        help="fake backends only: directory where simulated workloads report GPU load (env ACCEL_DRA_FAKE_STATE)",
    )
