"""``accel-dra plugin-probe``: do this node's plugin sockets answer? (the DaemonSet's liveness/readiness probe)

It computes the socket paths exactly as the plugin does (:mod:`driver.plugin.paths`, with the same driver
name, directories and pod UID -- the probe runs in the plugin's container and inherits ``DRIVER_NAME`` and
``POD_UID``), then checks what the kubelet relies on:

* the registration socket answers ``GetInfo`` as a DRA plugin of this driver whose endpoint is the DRA socket;
* the DRA socket answers an empty ``NodePrepareResources`` (v1) with an empty result.

Exit 0 when both hold, 1 otherwise, with one line on stderr saying which check failed (the kubelet puts it
in the pod's events). Flags are declared import-light; gRPC is imported only when the probe runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from driver.config import KUBELET_PLUGINS_DIR, KUBELET_REGISTRY_DIR
from driver.flags import add_driver_arguments, check_driver_name

DEFAULT_TIMEOUT_S = 5.0
DRA_PLUGIN_TYPE = "DRAPlugin"


class ProbeError(Exception):
    """A socket did not answer, or answered something the kubelet would not accept."""


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    add_driver_arguments(parser)
    parser.add_argument(
        "--plugin-dir",
        default=None,
        help=f"the plugin's data dir (default {KUBELET_PLUGINS_DIR}/<driver>), as given to the plugin",
    )
    parser.add_argument("--registry-dir", default=KUBELET_REGISTRY_DIR, help="kubelet plugin registry dir")
    parser.add_argument(
        "--pod-uid",
        default=os.environ.get("POD_UID"),
        help="the plugin pod's UID (env POD_UID), for rolling-update socket names",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds each call may take (default {DEFAULT_TIMEOUT_S:g})",
    )


@dataclass(frozen=True)
class ProbeTarget:
    driver_name: str
    registration_socket: str
    dra_socket: str
    timeout: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ProbeTarget:
        from driver.plugin.paths import dra_socket_path, registration_socket_path

        driver = check_driver_name(args.driver_name)
        plugin_dir = os.path.abspath(args.plugin_dir or os.path.join(KUBELET_PLUGINS_DIR, driver))
        registry_dir = os.path.abspath(args.registry_dir)
        pod_uid = args.pod_uid or None
        return cls(
            driver_name=driver,
            registration_socket=registration_socket_path(registry_dir, driver, pod_uid),
            dra_socket=dra_socket_path(plugin_dir, driver, pod_uid),
            timeout=args.timeout,
        )


def check_registration(target: ProbeTarget) -> None:
    import grpc

    from driver._proto.pluginregistration.v1 import api_pb2 as reg
    from driver._proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc

    where = f"registration socket {target.registration_socket}"
    with grpc.insecure_channel(f"unix://{target.registration_socket}") as channel:
        try:
            info = reg_grpc.RegistrationStub(channel).GetInfo(reg.InfoRequest(), timeout=target.timeout)
        except grpc.RpcError as err:
            raise ProbeError(f"{where}: GetInfo failed: {_rpc_text(err)}") from err
    if info.type != DRA_PLUGIN_TYPE or info.name != target.driver_name:
        raise ProbeError(
            f"{where}: answers as {info.type} {info.name!r}, expected DRAPlugin {target.driver_name!r}"
        )
    if info.endpoint != target.dra_socket:
        raise ProbeError(f"{where}: advertises endpoint {info.endpoint}, expected {target.dra_socket}")


def check_dra(target: ProbeTarget) -> None:
    import grpc

    from driver._proto.dra.v1 import api_pb2 as dra
    from driver._proto.dra.v1 import api_pb2_grpc as dra_grpc

    where = f"DRA socket {target.dra_socket}"
    with grpc.insecure_channel(f"unix://{target.dra_socket}") as channel:
        try:
            answer = dra_grpc.DRAPluginStub(channel).NodePrepareResources(
                dra.NodePrepareResourcesRequest(), timeout=target.timeout
            )
        except grpc.RpcError as err:
            raise ProbeError(f"{where}: empty NodePrepareResources failed: {_rpc_text(err)}") from err
    if len(answer.claims):
        raise ProbeError(f"{where}: empty NodePrepareResources answered {len(answer.claims)} claim(s)")


def _rpc_text(err: object) -> str:
    code = getattr(err, "code", None)
    details = getattr(err, "details", None)
    name = code().name if callable(code) else "UNKNOWN"
    return f"{name}: {details() if callable(details) else err}"


def probe(target: ProbeTarget) -> None:
    """Raise :class:`ProbeError` naming the first socket that does not answer as it should."""
    check_registration(target)
    check_dra(target)


def run_probe(args: argparse.Namespace) -> int:
    """Entry point of ``accel-dra plugin-probe`` (flags from :func:`add_probe_arguments`)."""
    try:
        target = ProbeTarget.from_args(args)
        probe(target)
    except (ProbeError, ValueError) as err:
        print(f"plugin probe failed: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m driver.plugin.probe``: the same as ``accel-dra plugin-probe``."""
    parser = argparse.ArgumentParser(prog="accel-dra plugin-probe", description=__doc__.splitlines()[0])
    add_probe_arguments(parser)
    return run_probe(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
