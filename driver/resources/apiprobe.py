"""Which alpha ResourceSlice fields the API server keeps, asked before they are published.

A field behind a feature gate that is off is dropped by the API server: a list-type attribute is then left
without a value and the whole slice is refused (``exactly one value must be specified``), and
``nodeAllocatableResources`` silently disappears -- which a publisher comparing what it wants with what is
stored would rewrite forever. So at start the plugin creates, with ``dryRun=All`` (nothing is stored; the
ValidatingAdmissionPolicy and validation run as for a real write), a one-device slice of its own node for
each feature it was asked to publish, and publishes the feature only if the answer still carries it.

An answer that says nothing (the server cannot be reached, refuses dry runs, denies the request) leaves the
feature off too: publishing it blind could cost the node all its slices. List-type attributes also need a
1.37 server (``GET /version``): 1.36 keeps them with its gate on, but its scheduler's CEL fails every selector
on a device that has one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from driver.kube.client import RESOURCE_SLICES, ApiError, KubeClient
from driver.log import get_logger
from driver.resources.publishing import NUMA_NODE, PublishOptions, node_allocatable_resources

log = get_logger(__name__)

ATTEMPTS = 3
MIN_LIST_MINOR = 37
RETRY_SECONDS = 1.0
GATES = {"list": "DRAListTypeAttributes", "memory": "DRANodeAllocatableResources"}


def _probe_slice(driver: str, node: str, device: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"generateName": f"{node}-{driver}-probe-"},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 0, "resourceSliceCount": 1},
            "devices": [{"name": "probe", **device}],
        },
    }


def _kept(answer: Mapping[str, Any], key: str, inner: str | None = None) -> bool:
    devices = (answer.get("spec") or {}).get("devices") or [{}]
    value = devices[0].get(key)
    if inner is not None:
        value = (value or {}).get(inner) if isinstance(value, Mapping) else None
    return bool(value)


async def _keeps(kube: KubeClient, body: Mapping[str, Any], key: str, inner: str | None) -> bool | str:
    """True/False: the server kept/dropped the field; a string: why the answer says nothing."""
    why = ""
    for attempt in range(ATTEMPTS):
        try:
            answer = await kube.request("POST", RESOURCE_SLICES.path(), params=[("dryRun", "All")], body=body)
        except ApiError as err:
            if err.status == 422:  # dropped, then refused: the list attribute without a value
                return False
            why = str(err)
            if err.status < 500 and err.status != 429:
                return why
        except (OSError, TimeoutError) as err:
            why = f"{type(err).__name__}: {err}"
        else:
            return _kept(answer, key, inner)
        await asyncio.sleep(RETRY_SECONDS * (attempt + 1))
    return why


async def _minor(kube: KubeClient) -> int | None:
    try:
        info = await kube.server_version()
        return int(str(info.get("minor", "")).rstrip("+"))
    except (ApiError, OSError, TimeoutError, ValueError):
        return None


async def supported(kube: KubeClient, driver: str, node: str, wanted: PublishOptions) -> PublishOptions:
    """``wanted`` minus the fields the API server does not keep (or cannot be asked about); logs why."""
    kept = wanted
    if wanted.list_attributes and (minor := await _minor(kube)) is not None and minor < MIN_LIST_MINOR:
        # The server keeps them with the gate on, but the 1.36 scheduler's CEL cannot read a device that has
        # one: every selector on every GPU would fail, and no claim would get a GPU of this node.
        log.error(
            "list-type attributes need Kubernetes 1.37 (the 1.36 scheduler cannot evaluate selectors on such "
            "devices); publishing numaNode as a single node",
            feature=GATES["list"],
            server_minor=minor,
        )
        wanted = kept = wanted.without(list_attributes=True)
    checks: list[tuple[str, dict[str, Any], str, str | None]] = []
    if wanted.list_attributes:
        device = {"attributes": {NUMA_NODE: {"ints": [0]}}}
        checks.append(("list", _probe_slice(driver, node, device), "attributes", NUMA_NODE))
    if wanted.host_memory_per_pod is not None:
        device = {"nodeAllocatableResources": node_allocatable_resources(wanted.host_memory_per_pod)}
        checks.append(("memory", _probe_slice(driver, node, device), "nodeAllocatableResources", None))
    for feature, body, key, inner in checks:
        verdict = await _keeps(kube, body, key, inner)
        if verdict is True:
            log.info("API server keeps the alpha field", feature=GATES[feature])
            continue
        if verdict is False:
            log.error(
                f"the API server drops what --{'list-attributes' if feature == 'list' else 'host-memory-per-pod'} "
                f"publishes; is its {GATES[feature]} feature gate on (Kubernetes 1.37 for host memory)? "
                "Publishing without it",
                feature=GATES[feature],
            )
        else:
            log.error(
                "cannot tell whether the API server keeps an alpha field; publishing without it",
                feature=GATES[feature],
                error=verdict,
            )
        kept = kept.without(list_attributes=feature == "list", host_memory=feature == "memory")
    return kept
