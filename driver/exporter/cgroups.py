"""Which Kubernetes pod and container a process belongs to, from its ``/proc/<pid>/cgroup``.

The kubelet puts every container in a cgroup under ``kubepods``; the path carries the pod UID and the
container ID. Layouts handled (cgroup v1 and v2, any line of the file):

- systemd driver: ``/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_with_underscores>.slice/``
  then ``cri-containerd-<id>.scope`` (containerd), ``crio-<id>.scope`` (CRI-O) or ``docker-<id>.scope``;
  Guaranteed pods skip the QoS level (``kubepods-pod<uid>.slice``);
- cgroupfs driver: ``/kubepods/besteffort/pod<uid>/<id>`` (or ``/kubepods/pod<uid>/<id>``);
- any prefix before ``kubepods`` (kind, nested runtimes, ``kubelet.slice``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_POD_RE = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_CONTAINER_RE = re.compile(r"^(?:cri-containerd-|crio-|docker-|containerd-)?([0-9a-f]{64})(?:\.scope)?$")


@dataclass(frozen=True, slots=True)
class CgroupRef:
    """The pod (UID with dashes) and container (runtime id, 64 hex) a process runs in."""

    pod_uid: str
    container_id: str | None


def parse_cgroup(text: str) -> CgroupRef | None:
    """The kubepods pod/container of a ``/proc/<pid>/cgroup`` file; ``None`` for a process outside pods."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        if "kubepods" not in path:
            continue
        segments = [s for s in path[path.index("kubepods") :].split("/") if s]
        pod_uid = None
        for segment in segments:
            match = _POD_RE.search(segment)
            if match:
                pod_uid = match.group(1).replace("_", "-")
        if pod_uid is None:
            continue
        container = _CONTAINER_RE.match(segments[-1])
        return CgroupRef(pod_uid, container.group(1) if container else None)
    return None


def read_cgroup(proc_root: str | Path, pid: int) -> CgroupRef | None:
    """Read and parse ``<proc_root>/<pid>/cgroup``; raises ``OSError`` when it cannot be read."""
    text = (Path(proc_root) / str(pid) / "cgroup").read_text(encoding="utf-8", errors="replace")
    return parse_cgroup(text)
