"""A vendor-shaped DRA kubelet plugin for the sandbox: AMD's or Intel's driver as a conformance suite sees it.

It does what those drivers do at the boundaries a cluster observes, and nothing more: it registers with the
kubelet over the plugin-registration socket, publishes the node's ResourceSlice in the vendor's shape
(:mod:`driver.sim.shapes`), and answers ``NodePrepareResources`` by writing one CDI spec per claim that
gives the container the vendor's device nodes for each allocated GPU (plus the vendor tool stand-in and the
sandbox contract's ``ACCEL_DRA_DEVICE_*`` variables, through which simulated workloads load their GPU);
``NodeUnprepareResources`` removes the spec. It keeps no checkpoint: it lives and dies with the sandbox.
It is the sandbox's stand-in for another vendor's driver, not a second implementation of this project's
plugin (which the accel-dra shape runs for real).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc

from driver._proto.dra.v1 import api_pb2 as dra
from driver._proto.dra.v1 import api_pb2_grpc as dra_grpc
from driver._proto.pluginregistration.v1 import api_pb2 as reg
from driver._proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from driver.kube.client import RESOURCE_CLAIMS, RESOURCE_SLICES, ApiError, KubeClient
from driver.log import get_logger
from driver.sim.shapes import Shape, ShapedDevice, resource_slice
from driver.state.cdi import env_name

log = get_logger(__name__)
JSON = dict[str, Any]


def device_edits(device: ShapedDevice, tool: Path | None, extra: JSON) -> JSON:
    """containerEdits for one GPU: its device nodes, the tool, the sandbox's device variable."""
    edits: JSON = {
        "deviceNodes": list(device.device_nodes),
        "env": [f"{env_name(device.name)}={device.gpu.uuid}", *extra.get("env", [])],
    }
    mounts = list(extra.get("mounts", []))
    if tool is not None:
        mounts.append(
            {
                "hostPath": str(tool),
                "containerPath": f"/usr/bin/{tool.name}",
                "options": ["ro", "nosuid", "nodev", "bind"],
            }
        )
    if mounts:
        edits["mounts"] = mounts
    return edits


class _Registration:
    def __init__(self, driver: str, endpoint: str) -> None:
        self.info = reg.PluginInfo(
            type="DRAPlugin", name=driver, endpoint=endpoint, supported_versions=["v1.DRAPlugin"]
        )

    async def GetInfo(self, request: Any, context: Any) -> Any:
        return self.info

    async def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:
        if not request.plugin_registered:
            log.warning("shaped driver not registered", error=request.error)
        return reg.RegistrationStatusResponse()


class ShapedDriver:
    def __init__(
        self,
        *,
        shape: Shape,
        devices: list[ShapedDevice],
        kube: KubeClient,
        node: str,
        plugin_dir: Path,
        registry_dir: Path,
        cdi_dir: Path,
        tool: Path | None,
        extra_edits: JSON,
    ) -> None:
        self.shape = shape
        self.devices = {d.name: d for d in devices}
        self.kube = kube
        self.node = node
        self.plugin_dir = plugin_dir
        self.registry_socket = registry_dir / f"{shape.driver}-reg.sock"
        self.dra_socket = plugin_dir / "dra.sock"
        self.cdi_dir = cdi_dir
        self.tool = tool
        self.extra_edits = extra_edits
        self._servers: list[grpc.aio.Server] = []

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        dra_server = grpc.aio.server()
        dra_grpc.add_DRAPluginServicer_to_server(self, dra_server)
        dra_server.add_insecure_port(f"unix://{self.dra_socket}")
        await dra_server.start()
        self._servers.append(dra_server)
        await self.publish()
        registration = grpc.aio.server()
        reg_grpc.add_RegistrationServicer_to_server(
            _Registration(self.shape.driver, str(self.dra_socket)), registration
        )
        registration.add_insecure_port(f"unix://{self.registry_socket}")
        await registration.start()
        self._servers.append(registration)

    async def stop(self) -> None:
        for server in reversed(self._servers):
            await server.stop(1.0)
        self._servers.clear()
        for path in (self.registry_socket, self.dra_socket):
            path.unlink(missing_ok=True)

    async def publish(self) -> None:
        body = resource_slice(self.shape, self.node, list(self.devices.values()))
        await self.kube.create(RESOURCE_SLICES, body)

    # -- DRA ---------------------------------------------------------------------------------------

    def _spec_path(self, claim_uid: str) -> Path:
        return self.cdi_dir / f"{self.shape.cdi_kind.replace('/', '-')}_{claim_uid}.json"

    async def _prepare(self, claim: Any) -> Any:
        try:
            obj = await self.kube.get(RESOURCE_CLAIMS, claim.name, claim.namespace)
        except ApiError as err:
            return dra.NodePrepareResourceResponse(
                error=f"ResourceClaim {claim.namespace}/{claim.name}: {err}"
            )
        if obj["metadata"].get("uid") != claim.uid:
            return dra.NodePrepareResourceResponse(
                error=f"ResourceClaim {claim.namespace}/{claim.name}: UID changed"
            )
        results = ((obj.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results") or []
        mine = [r for r in results if r.get("driver") == self.shape.driver]
        unknown = [r["device"] for r in mine if r.get("device") not in self.devices]
        if unknown:
            return dra.NodePrepareResourceResponse(error=f"devices {unknown} are not on node {self.node}")
        spec = {
            "cdiVersion": "0.5.0",
            "kind": self.shape.cdi_kind,
            "devices": [
                {
                    "name": f"{claim.uid}-{r['device']}",
                    "containerEdits": device_edits(self.devices[r["device"]], self.tool, self.extra_edits),
                }
                for r in mine
            ],
        }
        self.cdi_dir.mkdir(parents=True, exist_ok=True)
        path = self._spec_path(claim.uid)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(spec, indent=2))
        tmp.replace(path)
        return dra.NodePrepareResourceResponse(
            devices=[
                dra.Device(
                    request_names=[r["request"]],
                    pool_name=r["pool"],
                    device_name=r["device"],
                    cdi_device_ids=[f"{self.shape.cdi_kind}={claim.uid}-{r['device']}"],
                )
                for r in mine
            ]
        )

    async def NodePrepareResources(self, request: Any, context: Any) -> Any:
        return dra.NodePrepareResourcesResponse(
            claims={c.uid: await self._prepare(c) for c in request.claims}
        )

    async def NodeUnprepareResources(self, request: Any, context: Any) -> Any:
        for claim in request.claims:
            self._spec_path(claim.uid).unlink(missing_ok=True)
        return dra.NodeUnprepareResourcesResponse(
            claims={c.uid: dra.NodeUnprepareResourceResponse() for c in request.claims}
        )
