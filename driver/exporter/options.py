"""Flags of ``accel-dra exporter`` (import-light: no gRPC, aiohttp or Kubernetes client here)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Literal

from driver import config, flags

KubeApiMode = Literal["auto", "on", "off"]


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def add_exporter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default=_env("EXPORTER_LISTEN", ":9400"),
        help="HOST:PORT for /metrics and /healthz (env EXPORTER_LISTEN, default :9400)",
    )
    parser.add_argument(
        "--pod-resources-socket",
        default=_env("POD_RESOURCES_SOCKET", config.POD_RESOURCES_SOCKET),
        help="kubelet PodResources socket, for pod/container/claim labels; empty: no attribution "
        f"(default {config.POD_RESOURCES_SOCKET})",
    )
    parser.add_argument(
        "--node-name", default=os.environ.get("NODE_NAME"), help="this node's name (env NODE_NAME)"
    )
    flags.add_backend_arguments(parser)
    flags.add_driver_arguments(parser)
    flags.add_kube_arguments(parser)
    parser.add_argument(
        "--kube-api",
        choices=["auto", "on", "off"],
        default=_env("EXPORTER_KUBE_API", "auto"),
        help="read this node's pods and ResourceSlices from the API server (splitting shared GPUs, other "
        "drivers' devices): auto = when --kubeconfig is given or running in a cluster",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=float(_env("EXPORTER_INTERVAL", "1")),
        help="seconds between samples (env EXPORTER_INTERVAL, default 1)",
    )
    parser.add_argument(
        "--sample-timeout",
        type=float,
        default=float(_env("EXPORTER_SAMPLE_TIMEOUT", "5")),
        help="seconds a GPU may take to answer before it is shown as failed (default 5)",
    )
    parser.add_argument(
        "--proc-root", default=_env("PROC_ROOT", "/proc"), help="where /proc/<pid>/cgroup files are read"
    )
    parser.add_argument(
        "--health-state-file",
        default=_env("HEALTH_STATE_FILE", ""),
        help="the plugin's health state file (<plugin-dir>/health.json), so hw_status and hw_errors_total "
        "show the plugin's XID and lost-GPU findings; empty: off (env HEALTH_STATE_FILE)",
    )
    parser.add_argument(
        "--chargeback-retention",
        type=float,
        default=float(_env("EXPORTER_CHARGEBACK_RETENTION", "900")),
        help="seconds the GPU-time counters of a pod are still served after it released its devices, so "
        "Prometheus scrapes their final value (default 900)",
    )
    flags.add_common_arguments(parser)


@dataclass(frozen=True)
class ExporterConfig:
    listen: str
    backend: str
    pod_resources_socket: str
    node_name: str
    driver_name: str
    kubeconfig: str | None
    kube_api: KubeApiMode
    interval: float
    sample_timeout: float
    proc_root: str
    fake_state_dir: str | None
    driver_root: str
    log_level: str
    log_format: str
    health_state_file: str = ""
    chargeback_retention: float = 900.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ExporterConfig:
        if args.interval <= 0:
            raise flags.ConfigError(f"--interval must be positive, got {args.interval}")
        if args.sample_timeout <= 0:
            raise flags.ConfigError(f"--sample-timeout must be positive, got {args.sample_timeout}")
        if args.chargeback_retention < 0:
            raise flags.ConfigError(
                f"--chargeback-retention must not be negative, got {args.chargeback_retention}"
            )
        return cls(
            listen=args.listen,
            backend=args.backend,
            pod_resources_socket=args.pod_resources_socket,
            node_name=args.node_name or "",
            driver_name=flags.check_driver_name(args.driver_name),
            kubeconfig=args.kubeconfig,
            kube_api=args.kube_api,
            interval=args.interval,
            sample_timeout=args.sample_timeout,
            proc_root=args.proc_root,
            fake_state_dir=args.fake_state_dir or None,
            driver_root=args.driver_root,
            log_level=args.log_level,
            log_format=args.log_format,
            health_state_file=args.health_state_file,
            chargeback_retention=args.chargeback_retention,
        )

    @property
    def use_kube_api(self) -> bool:
        if self.kube_api == "auto":
            return bool(self.kubeconfig or os.environ.get("KUBERNETES_SERVICE_HOST"))
        return self.kube_api == "on"
