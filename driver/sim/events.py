"""Events the sandbox's components record, shaped as the real components' event recorders write them.

Two recorders exist upstream and a user sees the difference in ``kubectl get events -o yaml``:

* kube-scheduler records through ``events.k8s.io/v1``: the core/v1 view has ``eventTime``, ``action``,
  ``reportingComponent: default-scheduler``, ``reportingInstance`` and an empty ``source``;
* the kubelet and kube-controller-manager's controllers use the core/v1 recorder: ``source.component``
  (``kubelet`` with ``source.host``, ``resource_claim``), the same name as ``reportingComponent``,
  ``firstTimestamp``/``lastTimestamp`` and a ``count``.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from driver.kube.client import EVENTS, ApiError, KubeClient
from driver.sim.timestamps import now

JSON = dict[str, Any]
SCHEDULER = "default-scheduler"
CLAIM_CONTROLLER = "resource_claim"
KUBELET = "kubelet"


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _event_name(meta: Mapping[str, Any]) -> str:
    """``<object>.<unix nanoseconds in hex>``, as both recorders name events (a ``generateName`` ending in
    "." is no valid prefix: the API server refuses it)."""
    return f"{meta.get('name')}.{time.time_ns():x}"


def involved(obj: Mapping[str, Any], kind: str = "Pod", api_version: str = "v1") -> JSON:
    meta = obj.get("metadata") or {}
    ref = {
        "apiVersion": api_version,
        "kind": kind,
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
    }
    for key in ("uid", "resourceVersion"):
        if meta.get(key):
            ref[key] = meta[key]
    return ref


def scheduler_event(obj: Mapping[str, Any], kind: str, reason: str, action: str, message: str) -> JSON:
    """An event as kube-scheduler's events.k8s.io recorder leaves it (read back through core/v1)."""
    meta = obj.get("metadata") or {}
    return {
        "metadata": {"name": _event_name(meta), "namespace": meta.get("namespace")},
        "involvedObject": involved(obj),
        "type": kind,
        "reason": reason,
        "action": action,
        "message": message,
        "eventTime": _micro_now(),
        "reportingComponent": SCHEDULER,
        "reportingInstance": f"{SCHEDULER}-{socket.gethostname()}",
        "source": {},
        "firstTimestamp": None,
        "lastTimestamp": None,
    }


def component_event(
    obj: Mapping[str, Any], kind: str, reason: str, message: str, *, component: str, host: str = ""
) -> JSON:
    """An event as the core/v1 recorder of the kubelet or a controller leaves it."""
    meta = obj.get("metadata") or {}
    source = {"component": component, **({"host": host} if host else {})}
    return {
        "metadata": {"name": _event_name(meta), "namespace": meta.get("namespace")},
        "involvedObject": involved(obj),
        "type": kind,
        "reason": reason,
        "message": message,
        "source": source,
        "reportingComponent": component,
        "reportingInstance": host,
        "firstTimestamp": now(),
        "lastTimestamp": now(),
        "count": 1,
    }


async def record(kube: KubeClient, event: JSON) -> None:
    """Create the event; an event that cannot be written is dropped, as the recorders drop them."""
    with contextlib.suppress(ApiError):
        await kube.create(EVENTS, event, event["metadata"]["namespace"])
