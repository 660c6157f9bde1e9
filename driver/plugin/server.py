"""Socket lifecycle of the kubelet plugin: the DRA server first, then the registration server.

The kubelet dials the DRA endpoint as soon as it sees the registration socket, so the DRA socket must
already answer by then. On stop the registration socket goes first (the kubelet deregisters us) and both
socket files are removed; sockets of other plugins in the same directories are never touched.

A socket appears at its public path only with its final mode (0600): it is bound inside a private (0700)
directory next to it, restricted there, and renamed into place. Binding at the public path and changing
the mode afterwards would leave a window in which, under a permissive umask, any local user could connect
and unprepare claims. Something other than a socket at our path is renamed aside, not deleted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from driver._proto.dra.v1 import api_pb2 as dra_v1
from driver._proto.dra.v1 import api_pb2_grpc as dra_v1_grpc
from driver._proto.dra.v1beta1 import api_pb2 as dra_v1beta1
from driver._proto.dra.v1beta1 import api_pb2_grpc as dra_v1beta1_grpc
from driver._proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from driver.fsutil import set_aside
from driver.log import get_logger
from driver.plugin.node_service import NodeService
from driver.plugin.registration import DRA_V1, DRA_V1BETA1, RegistrationServicer
from driver.plugin.service import DraServicer, OperationMetrics

log = get_logger(__name__)

SOCKET_MODE = 0o600  # the kubelet runs as root; nobody else has business on these sockets


@dataclass(frozen=True)
class ExtraService:
    """Another service on the DRA socket (e.g. the health stream), advertised after the DRA versions."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    advertised_version: str


class SocketInUseError(RuntimeError):
    pass


def remove_stale_socket(path: str) -> None:
    """Remove a leftover socket at our own path; refuse to delete anything that is not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUseError(f"{path} exists and is not a socket; refusing to replace it")
    log.info("removing stale socket", path=path)
    os.unlink(path)


def _clear_socket_path(path: str) -> None:
    """Make room at our socket path: a stale socket is removed, anything else is moved aside."""
    try:
        remove_stale_socket(path)
    except SocketInUseError as err:
        aside = set_aside(path)
        log.warning(
            "moved aside what is not a socket at the socket path",
            path=path,
            moved_to=str(aside),
            error=str(err),
        )


def _remove_if_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError, SocketInUseError):
        remove_stale_socket(path)


async def _serve(path: str, add: Callable[[grpc.aio.Server], None]) -> grpc.aio.Server:
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o750, exist_ok=True)
    _clear_socket_path(path)
    # Short name: unix socket paths are limited to 107 bytes, and the private one must fit too.
    private = os.path.join(directory, f".s{secrets.token_hex(4)}")
    os.mkdir(private, 0o700)
    try:
        bound = os.path.join(private, "s")
        server = grpc.aio.server()
        add(server)
        if server.add_insecure_port(f"unix://{bound}") == 0:
            raise OSError(f"cannot listen on unix socket {path}")
        os.chmod(bound, SOCKET_MODE)
        os.rename(bound, path)
        await server.start()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(private, "s"))
        with contextlib.suppress(OSError):
            os.rmdir(private)
    return server


class PluginServer:
    def __init__(
        self,
        *,
        driver_name: str,
        dra_socket: str,
        registration_socket: str,
        node: NodeService,
        extra_services: Sequence[ExtraService] = (),
        metrics: OperationMetrics | None = None,
    ) -> None:
        self.driver_name = driver_name
        self.dra_socket = dra_socket
        self.registration_socket = registration_socket
        self._node = node
        self._extra = list(extra_services)
        self._metrics = metrics
        self._dra: grpc.aio.Server | None = None
        self._registration: grpc.aio.Server | None = None
        versions = [DRA_V1, DRA_V1BETA1] + [e.advertised_version for e in self._extra]
        self.registration = RegistrationServicer(driver_name, dra_socket, versions)

    def _add_dra_services(self, server: grpc.aio.Server) -> None:
        dra_v1_grpc.add_DRAPluginServicer_to_server(
            DraServicer(self._node, dra_v1, "v1", self._metrics), server
        )
        dra_v1beta1_grpc.add_DRAPluginServicer_to_server(
            DraServicer(self._node, dra_v1beta1, "v1beta1", self._metrics), server
        )
        for extra in self._extra:
            extra.add_to_server(extra.servicer, server)

    async def start(self) -> None:
        self._dra = await _serve(self.dra_socket, self._add_dra_services)
        log.info("DRA service listening", socket=self.dra_socket)
        self._registration = await _serve(
            self.registration_socket,
            lambda s: reg_grpc.add_RegistrationServicer_to_server(self.registration, s),
        )
        log.info("registration service listening", socket=self.registration_socket)

    async def stop(self, grace: float = 0.5) -> None:
        """Stop serving and remove our sockets (bounded by ``grace`` per server)."""
        for server, path in ((self._registration, self.registration_socket), (self._dra, self.dra_socket)):
            if server is not None:
                await server.stop(grace)
            _remove_if_socket(path)
        self._registration = self._dra = None
        log.info("plugin sockets closed", driver=self.driver_name)
