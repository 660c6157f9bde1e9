"""The character devices a container needs for a GPU, as CDI ``deviceNodes`` entries.

* Per GPU: ``/dev/nvidia<minor>`` (type ``c``, major 195, minor = the GPU's minor number).
* Per MIG device additionally: the GPU-instance and compute-instance access capabilities,
  ``/dev/nvidia-caps/nvidia-cap<N>``. ``N`` comes from ``/proc/driver/nvidia-caps/mig-minors`` (lines like
  ``gpu0/gi3/access 30``), the major from the ``nvidia-caps`` line of ``/proc/devices``. Where these files
  are missing (hosts without MIG) the capability nodes are left out. Simulated GPUs get the numbers the
  NVIDIA driver's table has (:func:`mig_minor`) under a simulated major.
* Shared control nodes: ``/dev/nvidiactl`` (195/255), ``/dev/nvidia-uvm``, ``/dev/nvidia-uvm-tools`` and
  ``/dev/nvidia-modeset``. The UVM majors are assigned dynamically at module load, so their numbers are read
  from the host node with ``stat``; a node whose numbers cannot be read is listed by path only and the
  container runtime stats it.

On a real host a node is *present* when it exists in the host's ``/dev`` or under the driver root's ``/dev``
(a containerized driver); in the second case ``hostPath`` points there. Simulated GPUs have no host nodes:
all four control nodes count as present, the GPU nodes carry their profile's minor numbers, and the UVM
nodes get fixed simulated numbers (there is no host node a runtime could stat).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from driver.devices.model import Device

NVIDIA_MAJOR = 195
NVIDIACTL = "/dev/nvidiactl"
NVIDIA_UVM = "/dev/nvidia-uvm"
NVIDIA_UVM_TOOLS = "/dev/nvidia-uvm-tools"
NVIDIA_MODESET = "/dev/nvidia-modeset"
CONTROL_NODES = (NVIDIACTL, NVIDIA_UVM, NVIDIA_UVM_TOOLS, NVIDIA_MODESET)
#: Simulated nodes only: majors from the kernel's dynamic range, as the UVM and caps modules would get one.
SIMULATED_UVM_MAJOR = 511
SIMULATED_CAPS_MAJOR = 510
CAPS_DIR = "/dev/nvidia-caps"
SIMULATED_NUMBERS: Mapping[str, tuple[int, int]] = {
    NVIDIACTL: (NVIDIA_MAJOR, 255),
    NVIDIA_UVM: (SIMULATED_UVM_MAJOR, 0),
    NVIDIA_UVM_TOOLS: (SIMULATED_UVM_MAJOR, 1),
    NVIDIA_MODESET: (NVIDIA_MAJOR, 254),
}

JSON = dict[str, Any]


class DeviceNodes(Protocol):
    def control_nodes(self) -> list[JSON]:
        """Spec-level nodes every container with any of our GPUs needs."""
        ...

    def device_nodes(self, device: Device) -> list[JSON]:
        """Nodes of one allocatable device (GPU or MIG device)."""
        ...


def char_node(
    path: str, major: int | None = None, minor: int | None = None, host_path: str | None = None
) -> JSON:
    node: JSON = {"path": path, "type": "c"}
    if host_path is not None and host_path != path:
        node["hostPath"] = host_path
    if major is not None and minor is not None:
        node["major"], node["minor"] = major, minor
    return node


def _gpu_node(device: Device) -> list[JSON]:
    path = device.gpu.device_node
    return (
        [] if path is None or device.gpu.minor is None else [char_node(path, NVIDIA_MAJOR, device.gpu.minor)]
    )


def mig_minor(gpu_minor: int, gpu_instance: int, compute_instance: int | None = None) -> int:
    """The ``nvidia-caps`` minor of a GPU instance's (or compute instance's) access capability, as the NVIDIA
    driver numbers them in ``/proc/driver/nvidia-caps/mig-minors``: 1 and 2 are ``config`` and ``monitor``,
    then per GPU 15 GPU instances of 9 entries each (the GPU instance, then its compute instances 0-7)."""
    base = 3 + gpu_minor * 15 * 9 + gpu_instance * 9
    return base if compute_instance is None else base + 1 + compute_instance


def _mig_access(device: Device) -> list[tuple[str, int | None]]:
    """The ``mig-minors`` keys of a MIG device's GPU- and compute-instance access, with the CI id."""
    mig = device.mig
    if mig is None or mig.gpu_instance_id is None:
        return []
    prefix = f"gpu{device.gpu.minor}/gi{mig.gpu_instance_id}"
    keys: list[tuple[str, int | None]] = [(f"{prefix}/access", None)]
    if mig.compute_instance_id is not None:
        keys.append((f"{prefix}/ci{mig.compute_instance_id}/access", mig.compute_instance_id))
    return keys


def caps_node(minor: int, major: int) -> JSON:
    return char_node(f"{CAPS_DIR}/nvidia-cap{minor}", major, minor)


class SimulatedDeviceNodes:
    """Fake profiles: nodes exist only in the profile, never on the host."""

    def control_nodes(self) -> list[JSON]:
        return [char_node(path, *SIMULATED_NUMBERS[path]) for path in CONTROL_NODES]

    def device_nodes(self, device: Device) -> list[JSON]:
        mig, gpu_minor = device.mig, device.gpu.minor
        if mig is None or mig.gpu_instance_id is None or gpu_minor is None:
            return _gpu_node(device)
        return _gpu_node(device) + [
            caps_node(mig_minor(gpu_minor, mig.gpu_instance_id, ci), SIMULATED_CAPS_MAJOR)
            for _, ci in _mig_access(device)
        ]


def parse_mig_minors(text: str) -> dict[str, int]:
    """``gpu0/gi3/access 30`` lines -> ``{"gpu0/gi3/access": 30}``."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_proc_devices_major(text: str, name: str) -> int | None:
    """The major number of character device ``name`` in ``/proc/devices``."""
    in_char = False
    for line in text.splitlines():
        if line.strip().startswith("Character devices"):
            in_char = True
        elif line.strip().startswith("Block devices"):
            in_char = False
        elif in_char:
            match = re.match(r"^\s*(\d+)\s+(\S+)\s*$", line)
            if match and match.group(2) == name:
                return int(match.group(1))
    return None


class HostDeviceNodes:
    """Real hosts: nodes that exist in ``dev_root/dev`` or ``driver_root/dev``, numbers from ``stat``.

    The runtime reads ``hostPath`` on the host, so a node found under the driver root as mounted here is
    written with the driver root's host path (``host_driver_root``, default: the same path).
    """

    def __init__(
        self,
        driver_root: str = "/",
        dev_root: str = "/",
        proc_root: str = "/proc",
        host_driver_root: str | None = None,
    ) -> None:
        self.driver_root = Path(driver_root)
        self.host_driver_root = Path(host_driver_root or driver_root)
        self.dev_root = Path(dev_root)
        self.proc_root = Path(proc_root)
        self._mig_minors, self._caps_major = self._read_caps()

    def _read_caps(self) -> tuple[dict[str, int], int | None]:
        try:
            minors = parse_mig_minors((self.proc_root / "driver/nvidia-caps/mig-minors").read_text())
            major = parse_proc_devices_major((self.proc_root / "devices").read_text(), "nvidia-caps")
        except OSError:
            return {}, None
        return minors, major

    def _locate(self, path: str) -> tuple[str, os.stat_result] | None:
        """Where a node exists: (its path on the host, its stat), host ``/dev`` first."""
        relative = path.lstrip("/")
        for root, on_host in ((self.dev_root, self.dev_root), (self.driver_root, self.host_driver_root)):
            try:
                st = os.stat(root / relative)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode):
                return str(on_host / relative), st
        return None

    def _node(self, path: str) -> JSON | None:
        found = self._locate(path)
        if found is None:
            return None
        host, st = found
        return char_node(path, os.major(st.st_rdev), os.minor(st.st_rdev), host)

    def control_nodes(self) -> list[JSON]:
        return [node for node in map(self._node, CONTROL_NODES) if node is not None]

    def device_nodes(self, device: Device) -> list[JSON]:
        out = []
        gpu_path = device.gpu.device_node
        if gpu_path is not None and device.gpu.minor is not None:
            found = self._locate(gpu_path)
            host = found[0] if found else gpu_path
            out.append(char_node(gpu_path, NVIDIA_MAJOR, device.gpu.minor, host))
        if self._caps_major is not None:
            for key, _ in _mig_access(device):
                minor = self._mig_minors.get(key)
                if minor is not None:
                    out.append(caps_node(minor, self._caps_major))
        return out
