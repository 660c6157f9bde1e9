"""Flags of ``accel-dra exporter`` (import-light: no gRPC, aiohttp or Kubernetes client here)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Literal

from driver import config, flags

KubeApiMode = Literal["auto", "on", "off"]


def add_exporter_arguments(parser: argparse.ArgumentParser) -> None:
    flags.flag(parser, "listen", default=":9400", help="HOST:PORT for /metrics and /healthz (default :9400)")
    flags.flag(
        parser,
        "pod-resources-socket",
        default=config.POD_RESOURCES_SOCKET,
        help="kubelet PodResources socket, for pod/container/claim labels; empty: no attribution "
        f"(default {config.POD_RESOURCES_SOCKET})",
    )
    flags.flag(parser, "node-name", help="this node's name")
    flags.add_backend_arguments(parser)
    flags.add_driver_arguments(parser)
    flags.add_kube_arguments(parser)
    flags.flag(
        parser,
        "kube-api",
        choices=["auto", "on", "off"],
        default="auto",
        help="read this node's pods and ResourceSlices from the API server (splitting shared GPUs, other "
        "drivers' devices): auto = when --kubeconfig is given or running in a cluster",
    )
    flags.flag(
        parser,
        "interval",
        type=flags.positive_seconds,
        default=1.0,
        help="seconds between samples (default 1)",
    )
    flags.flag(
        parser,
        "sample-timeout",
        type=flags.positive_seconds,
        default=5.0,
        help="seconds a GPU may take to answer before it is shown as failed (default 5)",
    )
    flags.flag(parser, "proc-root", default="/proc", help="where /proc/<pid>/cgroup files are read")
    flags.flag(
        parser,
        "health-state-file",
        default="",
        help="the plugin's health state file (<plugin-dir>/health.json), so hw_status and hw_errors_total "
        "show the plugin's XID and lost-GPU findings; empty: off",
    )
    flags.flag(
        parser,
        "chargeback-retention",
        type=flags.non_negative_seconds,
        default=900.0,
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
        """Values were checked by their flags' types (:mod:`driver.flags`), from the command line or the
        environment alike."""
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
