"""Settings for the long-running processes: flags with environment fallbacks, in one typed object.

This module stays import-light (no gRPC, no Kubernetes client) so ``accel-dra --help`` and argument
errors are instant.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass

from driver import DEFAULT_DRIVER_NAME

KUBELET_PLUGINS_DIR = "/var/lib/kubelet/plugins"
KUBELET_REGISTRY_DIR = "/var/lib/kubelet/plugins_registry"
CDI_DYNAMIC_DIR = "/var/run/cdi"
POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the flag and its environment variable."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def check_driver_name(name: str) -> str:
    if len(name) > 63 or not _DNS_SUBDOMAIN.match(name):
        raise ConfigError(f"driver name {name!r} must be a lowercase DNS subdomain of at most 63 characters")
    return name


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument(
        "--log-level", default=_env("LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"]
    )
    group.add_argument("--log-format", default=_env("LOG_FORMAT", "text"), choices=["text", "json"])


def add_kube_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        default=_env("KUBECONFIG"),
        help="kubeconfig file (env KUBECONFIG); in-cluster service account when unset",
    )


def add_driver_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--driver-name",
        default=_env("DRIVER_NAME", DEFAULT_DRIVER_NAME),
        help=f"DRA driver name (env DRIVER_NAME, default {DEFAULT_DRIVER_NAME})",
    )


def add_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    add_driver_arguments(parser)
    parser.add_argument("--node-name", default=_env("NODE_NAME"), help="this node's name (env NODE_NAME)")
    add_kube_arguments(parser)
    parser.add_argument(
        "--plugin-dir",
        default=None,
        help=f"plugin data dir for the DRA socket and state (default {KUBELET_PLUGINS_DIR}/<driver>)",
    )
    parser.add_argument("--registry-dir", default=KUBELET_REGISTRY_DIR, help="kubelet plugin registry dir")
    parser.add_argument("--cdi-dir", default=CDI_DYNAMIC_DIR, help="where per-claim CDI specs are written")
    parser.add_argument(
        "--pod-uid",
        default=_env("POD_UID"),
        help="this pod's UID (env POD_UID); enables rolling-update socket names",
    )
    parser.add_argument(
        "--backend",
        default=_env("DEVICE_BACKEND", "nvml"),
        help="device backend: nvml | fake:PROFILE | file:PATH (env DEVICE_BACKEND)",
    )
    parser.add_argument(
        "--driver-root",
        default=_env("DRIVER_ROOT", "/"),
        help="where the NVIDIA driver's user-space files are, as seen by this process (env DRIVER_ROOT)",
    )
    parser.add_argument(
        "--host-driver-root",
        default=_env("HOST_DRIVER_ROOT"),
        help="the same tree's path on the host when it is mounted elsewhere here, e.g. / mounted at "
        "/driver-root (env HOST_DRIVER_ROOT; default: --driver-root)",
    )
    parser.add_argument(
        "--fake-state-dir",
        default=_env("ACCEL_DRA_FAKE_STATE"),
        help="fake backends only: directory where simulated workloads report GPU load (env ACCEL_DRA_FAKE_STATE)",
    )
    parser.add_argument(
        "--metrics-listen",
        default=_env("METRICS_LISTEN", ""),
        help="host:port for the plugin's operation metrics (empty: off)",
    )
    parser.add_argument(
        "--sweep-interval",
        type=_positive_seconds,
        default=600.0,
        help="seconds between checks that prepared claims still exist (stale ones are unprepared)",
    )
    parser.add_argument(
        "--boot-id-file",
        default="/proc/sys/kernel/random/boot_id",
        help=argparse.SUPPRESS,  # tests simulate reboots with it
    )
    add_common_arguments(parser)


@dataclass(frozen=True)
class PluginConfig:
    driver_name: str
    node_name: str
    kubeconfig: str | None
    plugin_dir: str
    registry_dir: str
    cdi_dir: str
    pod_uid: str | None
    backend: str
    driver_root: str
    host_driver_root: str
    fake_state_dir: str | None
    metrics_listen: str
    sweep_interval: float
    boot_id_file: str
    log_level: str
    log_format: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PluginConfig:
        driver_name = check_driver_name(args.driver_name)
        if not args.node_name:
            raise ConfigError("--node-name (or env NODE_NAME) is required")
        return cls(
            driver_name=driver_name,
            node_name=args.node_name,
            kubeconfig=args.kubeconfig,
            plugin_dir=os.path.abspath(args.plugin_dir or os.path.join(KUBELET_PLUGINS_DIR, driver_name)),
            registry_dir=os.path.abspath(args.registry_dir),
            cdi_dir=os.path.abspath(args.cdi_dir),
            pod_uid=args.pod_uid or None,
            backend=args.backend,
            driver_root=args.driver_root,
            host_driver_root=args.host_driver_root or args.driver_root,
            fake_state_dir=args.fake_state_dir or None,
            metrics_listen=args.metrics_listen,
            sweep_interval=args.sweep_interval,
            boot_id_file=args.boot_id_file,
            log_level=args.log_level,
            log_format=args.log_format,
        )
