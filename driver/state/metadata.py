"""Device metadata files (KEP-5304): what a container can read about the devices it was given.

For every request of a prepared claim the plugin writes a ``DeviceMetadata`` document -- the claim, the
request and, per device, its driver, pool, name and the attributes it is published with -- and its CDI spec
bind-mounts the file read-only into the containers that get the request's devices, where consumers such as
KubeVirt look for it (the layout of k8s.io/dynamic-resource-allocation's ``api/metadata``, the same in 1.36
and 1.37)::

    /var/run/kubernetes.io/dra-device-attributes/resourceclaims/<claim>/<request>/<driver>-metadata.json
    /var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/<pod claim>/<request>/<driver>-metadata.json

(the second for a claim made from a template: the pod's own name for it, from the claim's
``resource.kubernetes.io/pod-claim-name`` annotation). A file is a JSON stream with the same document once per
API version, newest first: ``metadata.resource.k8s.io/v1beta1`` (1.37) then ``v1alpha1`` (1.36, what
KubeVirt reads today); a consumer takes the first version it knows.

On the node the files live under ``<plugin-dir>/dra-device-metadata/<claim UID>/<request>/metadata.json``,
written before the claim's CDI spec and removed with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driver.devices.model import Device
from driver.fsutil import atomic_write

if TYPE_CHECKING:
    from driver.state.plan import ClaimPlan

JSON = dict[str, Any]

CONTAINER_DIR = "/var/run/kubernetes.io/dra-device-attributes"
API_VERSIONS = ("metadata.resource.k8s.io/v1beta1", "metadata.resource.k8s.io/v1alpha1")
KIND = "DeviceMetadata"
POD_CLAIM_NAME_ANNOTATION = "resource.kubernetes.io/pod-claim-name"
SUBDIR = "dra-device-metadata"
FILE_NAME = "metadata.json"


def container_path(driver: str, claim_name: str, pod_claim_name: str | None, request: str) -> str:
    """Where a container finds the metadata of one request of a claim."""
    if pod_claim_name:
        return f"{CONTAINER_DIR}/resourceclaimtemplates/{pod_claim_name}/{request}/{driver}-metadata.json"
    return f"{CONTAINER_DIR}/resourceclaims/{claim_name}/{request}/{driver}-metadata.json"


@dataclass(frozen=True)
class MetadataDevice:
    """One allocated device of a request: its allocation result and what it is published with."""

    request: str  # the result's request, ``gpu`` or ``gpu/sub``
    pool: str
    device: Device


@dataclass(frozen=True)
class RequestMetadata:
    """The file of one request: where it goes on the node and in containers, and its content."""

    request: str  # base request name: the directory
    container_path: str
    content: bytes


def document(
    api_version: str,
    claim: Mapping[str, str],
    pod_claim_name: str | None,
    request: str,
    devices: Sequence[JSON],
) -> JSON:
    doc: JSON = {
        "kind": KIND,
        "apiVersion": api_version,
        "metadata": {**claim, "generation": 1},
    }
    if pod_claim_name:
        doc["podClaimName"] = pod_claim_name
    doc["requests"] = [{"name": request, "devices": list(devices)}]
    return doc


def claim_metadata(
    *,
    driver: str,
    namespace: str,
    name: str,
    uid: str,
    pod_claim_name: str | None,
    devices: Sequence[MetadataDevice],
    attributes: Callable[[Device], Mapping[str, Any]],
) -> list[RequestMetadata]:
    """The metadata files of a claim's devices (pure), one per request, in request order."""
    by_request: dict[str, list[MetadataDevice]] = {}
    for d in devices:
        by_request.setdefault(d.request, []).append(d)
    claim = {"name": name, "namespace": namespace, "uid": uid}
    out = []
    for request, members in by_request.items():
        entries = [
            {
                "driver": driver,
                "pool": d.pool,
                "name": d.device.name,
                "attributes": dict(attributes(d.device)),
            }
            for d in members
        ]
        # Compact, one document a line: json's C encoder only serves that (``indent`` is ~10x slower).
        stream = b"".join(
            json.dumps(document(v, claim, pod_claim_name, request, entries), separators=(",", ":")).encode()
            + b"\n"
            for v in API_VERSIONS
        )
        base = request.split("/", 1)[0]
        out.append(RequestMetadata(base, container_path(driver, name, pod_claim_name, base), stream))
    return out


class MetadataStore:
    """The metadata files of this node's prepared claims, under the plugin directory."""

    def __init__(self, plugin_dir: str | os.PathLike[str], *, sync: bool = False) -> None:
        """``sync``: fsync each file (off by default, like the checkpoint and the CDI specs: a reboot voids
        prepared claims, and the start removes the files of claims the checkpoint does not hold)."""
        self.directory = Path(plugin_dir) / SUBDIR
        self.sync = sync

    def host_path(self, claim_uid: str, request: str) -> Path:
        return self.directory / claim_uid / request / FILE_NAME

    def mount(self, claim_uid: str, item: RequestMetadata) -> JSON:
        """The CDI mount that shows ``item`` in a container, read-only."""
        return {
            "hostPath": str(self.host_path(claim_uid, item.request)),
            "containerPath": item.container_path,
            "options": ["ro", "nosuid", "nodev", "bind"],
        }

    def write(self, claim_uid: str, items: Sequence[RequestMetadata]) -> None:
        for item in items:
            path = self.host_path(claim_uid, item.request)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Read by whatever user the container runs as: world-readable, like the CDI specs.
            atomic_write(path, item.content, mode=0o644, what="metadata", sync=self.sync)

    def exists(self, claim_uid: str, items: Sequence[RequestMetadata]) -> bool:
        return all(self.host_path(claim_uid, i.request).is_file() for i in items)

    def remove(self, claim_uid: str) -> bool:
        """Remove a claim's files (a missing claim is fine); return whether there were any."""
        target = self.directory / claim_uid
        if not target.is_dir() or target.is_symlink():
            return False
        shutil.rmtree(target, ignore_errors=True)
        return True

    def claim_uids(self) -> list[str]:
        with contextlib.suppress(FileNotFoundError):
            return sorted(e.name for e in os.scandir(self.directory) if e.is_dir(follow_symlinks=False))
        return []


class ClaimMetadataWriter:
    """The metadata files of planned claims and the CDI mounts that show them: the file of each request is
    mounted by the first device of that request, so a container gets it once with the request's devices.

    Switched off (``enabled=False``) it writes nothing and adds no mount, but its store still removes the
    files of claims prepared while it was on."""

    def __init__(
        self,
        store: MetadataStore,
        attributes: Callable[[Device], Mapping[str, Any]],
        *,
        enabled: bool = True,
    ) -> None:
        self.store = store
        self.attributes = attributes
        self.enabled = enabled

    def files(self, plan: ClaimPlan) -> list[RequestMetadata]:
        return claim_metadata(
            driver=plan.driver,
            namespace=plan.ref.namespace,
            name=plan.ref.name,
            uid=plan.ref.uid,
            pod_claim_name=plan.pod_claim_name,
            devices=[MetadataDevice(d.result.request, d.result.pool, d.device) for d in plan.devices],
            attributes=self.attributes,
        )

    def device_edits(self, plan: ClaimPlan, items: Sequence[RequestMetadata]) -> dict[str, JSON]:
        mounts: dict[str, list[JSON]] = {}
        for item in items:
            first = next(d for d in plan.devices if d.result.base_request == item.request)
            mounts.setdefault(first.device.name, []).append(self.store.mount(plan.ref.uid, item))
        return {device: {"mounts": found} for device, found in mounts.items()}

    def write(self, plan: ClaimPlan) -> dict[str, JSON]:
        """Write the plan's files; return the containerEdits per device that mount them."""
        if not self.enabled or not plan.devices:
            return {}
        items = self.files(plan)
        self.store.write(plan.ref.uid, items)
        return self.device_edits(plan, items)

    def ensure(self, plan: ClaimPlan) -> dict[str, JSON]:
        """The mounts of an already prepared claim, writing its files again if they are gone."""
        if not self.enabled or not plan.devices:
            return {}
        items = self.files(plan)
        if not self.store.exists(plan.ref.uid, items):
            self.store.write(plan.ref.uid, items)
        return self.device_edits(plan, items)
