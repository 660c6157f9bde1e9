"""The kubelet plugin-registration service (``pluginregistration.Registration``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc

from driver._proto.pluginregistration.v1 import api_pb2 as reg_pb
from driver.log import get_logger

log = get_logger(__name__)

PLUGIN_TYPE = "DRAPlugin"
DRA_V1 = "v1.DRAPlugin"
DRA_V1BETA1 = "v1beta1.DRAPlugin"
HEALTH_V1 = "v1.DRAResourceHealth"
HEALTH_V1ALPHA1 = "v1alpha1.DRAResourceHealth"


class RegistrationServicer:
    """Answers GetInfo and records what the kubelet thinks of us.

    ``supported_versions`` is ordered: the kubelet picks the first entry it knows, so v1 comes first.
    """

    def __init__(self, driver_name: str, endpoint: str, supported_versions: Sequence[str]) -> None:
        self.driver_name = driver_name
        self.endpoint = endpoint
        self.supported_versions = list(supported_versions)
        self.registered = asyncio.Event()
        self.last_error = ""

    async def GetInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return reg_pb.PluginInfo(
            type=PLUGIN_TYPE,
            name=self.driver_name,
            endpoint=self.endpoint,
            supported_versions=self.supported_versions,
        )

    async def NotifyRegistrationStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.plugin_registered:
            self.last_error = ""
            self.registered.set()
            log.info("registered with kubelet", driver=self.driver_name, endpoint=self.endpoint)
            return reg_pb.RegistrationStatusResponse()
        self.registered.clear()
        self.last_error = request.error
        log.error("kubelet rejected registration", driver=self.driver_name, error=request.error)
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION, f"plugin registration failed: {request.error}"
        )
