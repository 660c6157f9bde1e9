"""Discovery documents (``/api``, ``/apis``, ``/api/v1``, ``/apis/<group>/<version>``) and ``/version``."""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable
from typing import Any

from driver.sim.kinds import ALL_VERBS, KindSpec

#: The Kubernetes release the sandbox's API server and kubelet report: the one the real-cluster test tier
#: pins (hack/realk8s/go.mod), so what a user sees in ``kubectl version`` and ``kubectl get nodes`` -- and
#: version-dependent behaviour such as taint rules -- is that release's.
KUBERNETES_VERSION = "v1.37.2"

JSON = dict[str, Any]


def api_versions(server_address: str) -> JSON:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group_versions(specs: Iterable[KindSpec]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for spec in specs:
        if spec.rt.group and spec.rt.version not in groups.setdefault(spec.rt.group, []):
            groups[spec.rt.group].append(spec.rt.version)
    return groups


def api_group(name: str, versions: list[str]) -> JSON:
    entries = [{"groupVersion": f"{name}/{version}", "version": version} for version in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def api_group_list(specs: Iterable[KindSpec]) -> JSON:
    groups = [api_group(name, versions) for name, versions in sorted(_group_versions(specs).items())]
    for group in groups:
        group.pop("kind")
        group.pop("apiVersion")
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def group_names(specs: Iterable[KindSpec]) -> dict[str, list[str]]:
    return _group_versions(specs)


def api_resource_list(group_version: str, specs: Iterable[KindSpec]) -> JSON:
    """The APIResourceList of one group/version: each kind, then its subresources."""
    resources: list[JSON] = []
    for spec in specs:
        if spec.rt.api_version != group_version:
            continue
        entry: JSON = {
            "name": spec.rt.plural,
            "singularName": spec.singular,
            "namespaced": spec.rt.namespaced,
            "kind": spec.rt.kind,
            "verbs": list(ALL_VERBS),
        }
        if spec.short_names:
            entry["shortNames"] = list(spec.short_names)
        resources.append(entry)
        for sub in spec.subresources:
            resources.append(
                {
                    "name": f"{spec.rt.plural}/{sub.name}",
                    "singularName": "",
                    "namespaced": spec.rt.namespaced,
                    "kind": sub.kind,
                    "verbs": list(sub.verbs),
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def version_info(git_version: str) -> JSON:
    """``/version`` for a configured version such as ``v1.37.2``."""
    match = re.match(r"^v?(\d+)\.(\d+)", git_version)
    major, minor = (match.group(1), match.group(2)) if match else ("1", "0")
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {
        "major": major,
        "minor": minor,
        "gitVersion": git_version,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a (accel-dra sandbox API server)",
        "compiler": "python",
        "platform": f"linux/{machine}",
    }
