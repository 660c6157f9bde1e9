"""The plugin's settings: flags with environment fallbacks, in one typed object (the exporter's are in
:mod:`driver.exporter.options`; the flags every command shares, and how a flag gets its environment
variable, in :mod:`driver.flags`).

This module stays import-light (no gRPC, no Kubernetes client) so ``accel-dra --help`` and argument
errors are instant.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import cast

from driver.devices.migmode import MigModes, parse_mig_modes
from driver.flags import (
    ConfigError,
    add_backend_arguments,
    add_common_arguments,
    add_driver_arguments,
    add_kube_arguments,
    check_driver_name,
    flag,
    positive_int,
    positive_seconds,
)
from driver.health.state import RECOVERY_MODES, RecoveryMode
from driver.health.xid import XidListError, parse_xid_list

KUBELET_PLUGINS_DIR = "/var/lib/kubelet/plugins"
KUBELET_REGISTRY_DIR = "/var/lib/kubelet/plugins_registry"
CDI_DYNAMIC_DIR = "/var/run/cdi"
POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


def add_health_arguments(parser: argparse.ArgumentParser) -> None:
    """Device health monitoring (docs/health.md)."""
    group = parser.add_argument_group("device health (docs/health.md)")
    flag(group, "health", choices=["on", "off"], default="on", help="watch XID/ECC events and probe GPUs")
    flag(
        group,
        "health-ignore-xids",
        default="",
        help="more XIDs to treat as ignorable (application faults), comma separated",
    )
    flag(
        group,
        "health-fatal-xids",
        default="",
        help="XIDs to treat as fatal even though they are ignorable by default",
    )
    flag(
        group,
        "health-recovery",
        choices=list(RECOVERY_MODES),
        default="probe",
        help="what ends a fault besides `accel-dra health clear`: probe = passing probes end gpu-lost; "
        "probe-all = they also end XID faults; manual = nothing",
    )
    flag(
        group,
        "health-recovery-probes",
        type=positive_int,
        default=3,
        help="passing probes in a row that count as recovered (default 3)",
    )
    flag(
        group, "health-probe-interval", type=positive_seconds, default=5.0, help="seconds between GPU probes"
    )
    flag(
        group,
        "health-probe-timeout",
        type=positive_seconds,
        default=5.0,
        help="seconds a GPU may take to answer a probe before it counts as lost",
    )
    flag(
        group,
        "health-stream-interval",
        type=positive_seconds,
        default=10.0,
        help="seconds between full device lists on the kubelet health stream (besides every change)",
    )
    flag(
        group,
        "health-stream-timeout",
        type=positive_int,
        default=30,
        help="health_check_timeout_seconds sent to the kubelet: how long it trusts a report",
    )
    flag(
        group,
        "health-taints",
        choices=["on", "off"],
        default="on",
        help="publish health as ResourceSlice device taints (needs the DRADeviceTaints feature gate)",
    )


def add_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    add_driver_arguments(parser)
    flag(parser, "node-name", help="this node's name")
    add_kube_arguments(parser)
    flag(
        parser,
        "plugin-dir",
        help=f"plugin data dir for the DRA socket and state (default {KUBELET_PLUGINS_DIR}/<driver>)",
    )
    flag(parser, "registry-dir", default=KUBELET_REGISTRY_DIR, help="kubelet plugin registry dir")
    flag(parser, "cdi-dir", default=CDI_DYNAMIC_DIR, help="where per-claim CDI specs are written")
    flag(parser, "pod-uid", help="this pod's UID; enables rolling-update socket names")
    add_backend_arguments(parser)
    flag(
        parser,
        "host-driver-root",
        help="the same tree's path on the host when it is mounted elsewhere here, e.g. / mounted at "
        "/driver-root (default: --driver-root)",
    )
    flag(
        parser, "metrics-listen", default="", help="host:port for the plugin's operation metrics (empty: off)"
    )
    flag(
        parser,
        "device-metadata",
        choices=["on", "off"],
        default="on",
        help="mount each request's device metadata file (KEP-5304) into its containers under "
        "/var/run/kubernetes.io/dra-device-attributes",
    )
    flag(
        parser,
        "sweep-interval",
        type=positive_seconds,
        default=600.0,
        help="seconds between checks that prepared claims still exist (stale ones are unprepared)",
    )
    flag(
        parser,
        "state-fsync",
        choices=["on", "off"],
        default="off",
        help="fsync the checkpoint and CDI specs at every write (default off: writes are atomic, and only a "
        "reboot loses unsynced data, which voids prepared claims anyway; docs/node-state.md)",
    )
    parser.add_argument(
        "--boot-id-file",
        default="/proc/sys/kernel/random/boot_id",
        help=argparse.SUPPRESS,  # tests simulate reboots with it
    )
    add_publish_arguments(parser)
    flag(
        parser,
        "mig-mode",
        default="static",
        help="MIG mode per GPU (docs/mig.md): static | dynamic | off, then overrides by PCI address or "
        "UUID, e.g. 'static,0000:3b:00.0=dynamic'",
    )
    add_health_arguments(parser)
    add_common_arguments(parser)


def _quantity_bytes(text: str) -> int:
    from driver.quantity import parse_quantity

    try:
        value = parse_quantity(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a quantity (e.g. 2Gi)") from None
    if value < 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole, non-negative number of bytes")
    return int(value)


def add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    """Alpha ResourceSlice features (docs/attributes.md); each needs its feature gate on in the cluster."""
    group = parser.add_argument_group("alpha ResourceSlice fields (docs/attributes.md)")
    flag(
        group,
        "list-attributes",
        choices=["on", "off"],
        default="off",
        help="publish numaNode as the list of NUMA nodes each GPU is near (DRAListTypeAttributes)",
    )
    flag(
        group,
        "host-memory-per-pod",
        type=_quantity_bytes,
        metavar="QUANTITY",
        help="declare the host memory each pod using a device needs, e.g. 2Gi, as nodeAllocatableResources "
        "(DRANodeAllocatableResources, Kubernetes 1.37)",
    )
    sharing = parser.add_argument_group("GPU sharing by memory (docs/sharing.md)")
    flag(
        sharing,
        "shared-gpus",
        type=_selector_list,
        default="",
        metavar="LIST",
        help="GPUs several claims may share, each with part of the memory (consumable capacity): 'all', or "
        "comma-separated device names, UUIDs or PCI bus ids; empty: none",
    )
    flag(
        sharing,
        "share-memory-step",
        type=_positive_bytes,
        default="1Gi",
        metavar="QUANTITY",
        help="a share's memory is a multiple of this",
    )


def _selector_list(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def _positive_bytes(text: str) -> int:
    value = _quantity_bytes(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than zero bytes")
    return value


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
    health: bool = True
    health_ignore_xids: frozenset[int] = frozenset()
    health_fatal_xids: frozenset[int] = frozenset()
    health_recovery: RecoveryMode = "probe"
    health_recovery_probes: int = 3
    health_probe_interval: float = 5.0
    health_probe_timeout: float = 5.0
    health_stream_interval: float = 10.0
    health_stream_timeout: int = 30
    health_taints: bool = True
    list_attributes: bool = False
    host_memory_per_pod: int | None = None
    device_metadata: bool = True
    shared_gpus: frozenset[str] = frozenset()
    share_memory_step: int = 1 << 30
    state_fsync: bool = False
    mig_modes: MigModes = field(default_factory=MigModes)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PluginConfig:
        driver_name = check_driver_name(args.driver_name)
        if not args.node_name:
            raise ConfigError("--node-name (or env NODE_NAME) is required")
        try:
            ignore = parse_xid_list(args.health_ignore_xids, "--health-ignore-xids")
            fatal = parse_xid_list(args.health_fatal_xids, "--health-fatal-xids")
        except XidListError as err:
            raise ConfigError(str(err)) from None
        if args.health_recovery not in RECOVERY_MODES:
            raise ConfigError(f"--health-recovery must be one of {', '.join(RECOVERY_MODES)}")
        if args.health_stream_interval >= args.health_stream_timeout:
            # The kubelet would show every device Unknown between two reports.
            raise ConfigError("--health-stream-interval must be shorter than --health-stream-timeout")
        try:
            mig_modes = parse_mig_modes(args.mig_mode)
        except ValueError as err:
            raise ConfigError(f"--mig-mode (env MIG_MODE): {err}") from None
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
            health=args.health == "on",
            health_ignore_xids=ignore,
            health_fatal_xids=fatal,
            health_recovery=cast(RecoveryMode, args.health_recovery),
            health_recovery_probes=args.health_recovery_probes,
            health_probe_interval=args.health_probe_interval,
            health_probe_timeout=args.health_probe_timeout,
            health_stream_interval=args.health_stream_interval,
            health_stream_timeout=args.health_stream_timeout,
            health_taints=args.health_taints == "on",
            list_attributes=args.list_attributes == "on",
            host_memory_per_pod=args.host_memory_per_pod,
            device_metadata=args.device_metadata == "on",
            shared_gpus=args.shared_gpus,
            share_memory_step=args.share_memory_step,
            state_fsync=args.state_fsync == "on",
            mig_modes=mig_modes,
        )
