"""Does a CDI spec the driver wrote for real GPUs point at things that exist on this host?

A container runtime applying the spec bind-mounts every ``mounts[].hostPath`` and creates every
``deviceNodes[]`` entry from the host node (``hostPath``, else ``path``). Anything missing fails the container
start; a node with the wrong numbers gives the container another GPU than the claim's.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any

from driver.state.cdi import env_name

#: Libraries without which no CUDA program starts in the container (sonames).
REQUIRED_LIBRARIES = ("libcuda.so.1", "libnvidia-ml.so.1")


def _edits(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield "containerEdits", spec.get("containerEdits") or {}
    for device in spec.get("devices") or ():
        yield f"devices[{device.get('name')}]", device.get("containerEdits") or {}


def node_problems(spec: Mapping[str, Any]) -> list[str]:
    """Device nodes that are missing on the host, not character devices, or carry other numbers."""
    problems = []
    for where, edits in _edits(spec):
        for node in edits.get("deviceNodes") or ():
            host = node.get("hostPath") or node["path"]
            try:
                st = os.stat(host)
            except OSError as err:
                problems.append(f"{where}: device node {host}: {err.strerror}")
                continue
            if not stat.S_ISCHR(st.st_mode):
                problems.append(f"{where}: device node {host} is not a character device")
                continue
            numbers = (node.get("major"), node.get("minor"))
            actual = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if None not in numbers and numbers != actual:
                problems.append(f"{where}: device node {host} is {actual} on the host, spec says {numbers}")
    return problems


def mount_problems(spec: Mapping[str, Any]) -> list[str]:
    """Mounts whose host path is missing or not a regular file (driver files are mounted file by file)."""
    problems = []
    for where, edits in _edits(spec):
        for mount in edits.get("mounts") or ():
            host = mount["hostPath"]
            if not os.path.exists(host):
                problems.append(f"{where}: mount source {host} does not exist")
            elif not os.path.isfile(host):
                problems.append(f"{where}: mount source {host} is not a regular file")
    return problems


def container_paths(spec: Mapping[str, Any]) -> set[str]:
    return {m["containerPath"] for _, edits in _edits(spec) for m in edits.get("mounts") or ()}


def missing_libraries(spec: Mapping[str, Any]) -> list[str]:
    """Required sonames that no mount of the spec provides."""
    names = {PurePosixPath(path).name for path in container_paths(spec)}
    return [lib for lib in REQUIRED_LIBRARIES if lib not in names]


def device_uuid(spec: Mapping[str, Any], cdi_name: str, device: str) -> str | None:
    """The GPU/MIG UUID the CDI device ``cdi_name`` hands to the container (its identifying env)."""
    for entry in spec.get("devices") or ():
        if entry.get("name") == cdi_name:
            prefix = env_name(device) + "="
            env = (entry.get("containerEdits") or {}).get("env") or ()
            return next((e[len(prefix) :] for e in env if e.startswith(prefix)), None)
    return None


def gpu_node_minors(spec: Mapping[str, Any], cdi_name: str) -> list[int]:
    """Minor numbers of the ``/dev/nvidia<N>`` nodes the CDI device ``cdi_name`` creates."""
    for entry in spec.get("devices") or ():
        if entry.get("name") == cdi_name:
            nodes = (entry.get("containerEdits") or {}).get("deviceNodes") or ()
            return [int(m.group(1)) for n in nodes if (m := re.fullmatch(r"/dev/nvidia(\d+)", n["path"]))]
    return []


def loaded_library(fragment: str = "libnvidia-ml") -> list[str]:
    """Files of this process's memory map whose name contains ``fragment``: where NVML really came from.

    Quoted in failure messages, so a driver-file layout the scan does not know is easy to spot.
    """
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if fragment in line and "/" in line}
    except OSError:
        return []
    return sorted(paths)
