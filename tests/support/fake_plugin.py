"""A registration service for hand-built plugins in tests of the kubelet emulator."""

from __future__ import annotations

from typing import Any

from driver._proto.pluginregistration.v1 import api_pb2 as reg


class FakeRegistration:
    """Answers GetInfo for a DRA plugin ``name`` at ``endpoint`` and accepts any registration status."""

    def __init__(self, name: str, endpoint: str, versions: list[str]) -> None:
        self.info = reg.PluginInfo(
            type="DRAPlugin", name=name, endpoint=endpoint, supported_versions=versions
        )

    async def GetInfo(self, request: Any, context: Any) -> Any:
        return self.info

    async def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:
        return reg.RegistrationStatusResponse()
