"""Operator clear requests: annotations on the Node object, one per device.

``accel-dra health clear DEVICE --node NODE`` sets ``clear.health.<driver>/<device>: <request id>`` on the
node; the plugin on that node watches its own Node object and clears the device's XID and lost marks once
per request id (it remembers the last id per device in its state file, so an annotation left in place is
not acted on again, not even after a restart). The plugin never writes the Node object: it only needs to
read it, and an operator can remove old annotations whenever they like.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping

PREFIX = "clear.health."


def annotation_prefix(driver: str) -> str:
    return f"{PREFIX}{driver}/"


def clear_annotation(driver: str, device: str) -> str:
    return annotation_prefix(driver) + device


def new_request_id(now: float | None = None) -> str:
    """Unique per request: the UTC time (readable in ``kubectl describe node``) plus a random suffix."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(4)}"


def clear_requests(annotations: Mapping[str, str] | None, driver: str) -> dict[str, str]:
    """device name -> request id, from a Node's annotations."""
    prefix = annotation_prefix(driver)
    return {
        key[len(prefix) :]: str(value)
        for key, value in (annotations or {}).items()
        if key.startswith(prefix) and len(key) > len(prefix) and value
    }
