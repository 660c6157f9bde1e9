"""A device plugin for the sandbox node: GPUs as an extended resource (``nvidia.com/gpu``, ``amd.com/gpu``).

What the kubelet's device manager does with a vendor's device plugin, folded into one object the sandbox
node consults: the node advertises one unit of the resource per GPU in ``status.capacity`` and
``status.allocatable``; a container whose ``limits`` ask for N units gets N free GPUs -- as CDI device ids,
the way a plugin answers ``Allocate`` with CDI devices -- and is listed in PodResources with
``resource_name`` and the GPUs' UUIDs as device ids (which the exporter attributes); the GPUs are free again
when the pod finishes or is deleted. The scheduler counts the units the node's pods already hold.

The device plugin and the DRA driver share the node's GPUs without knowing of each other, as they would on
a misconfigured real node: a probe run uses one allocation mode at a time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from driver.sim.shapeddriver import device_edits
from driver.sim.shapes import ShapedDevice

JSON = dict[str, Any]


class DevicePluginError(Exception):
    """The containers ask for more units than are free (the kubelet's admission error)."""


class SimDevicePlugin:
    def __init__(
        self,
        resource: str,
        devices: Sequence[ShapedDevice],
        cdi_dir: Path,
        *,
        cdi_kind: str,
        tool: Path | None = None,
        extra_edits: JSON | None = None,
    ) -> None:
        self.resource = resource
        self.cdi_kind = cdi_kind
        self.devices = {d.gpu.uuid: d for d in devices}
        self._held: dict[tuple[str, str], list[str]] = {}
        spec = {
            "cdiVersion": "0.5.0",
            "kind": cdi_kind,
            "devices": [
                {"name": d.gpu.uuid, "containerEdits": device_edits(d, tool, extra_edits or {})}
                for d in devices
            ],
        }
        cdi_dir.mkdir(parents=True, exist_ok=True)
        (cdi_dir / f"{cdi_kind.replace('/', '-')}_device-plugin.json").write_text(json.dumps(spec, indent=2))

    @property
    def capacity(self) -> int:
        return len(self.devices)

    def free(self) -> list[str]:
        held = {uuid for ids in self._held.values() for uuid in ids}
        return [u for u in self.devices if u not in held]

    def allocate(self, pod_uid: str, container: str, count: int) -> list[str]:
        """The GPU UUIDs a container holds (the same ones again after a restart)."""
        key = (pod_uid, container)
        if key in self._held:
            return self._held[key]
        free = self.free()
        if count > len(free):
            raise DevicePluginError(
                f"requested {count} {self.resource}, but only {len(free)} of {self.capacity} are free on the node"
            )
        self._held[key] = free[:count]
        return self._held[key]

    def cdi_ids(self, uuids: Sequence[str]) -> list[str]:
        return [f"{self.cdi_kind}={u}" for u in uuids]

    def release(self, pod_uid: str) -> None:
        for key in [k for k in self._held if k[0] == pod_uid]:
            del self._held[key]

    def node_status(self) -> JSON:
        count = str(self.capacity)
        return {"capacity": {self.resource: count}, "allocatable": {self.resource: count}}
