"""Socket file names, as the kubelet's plugin watcher and the Go helper expect them.

Without a pod UID: ``<registry-dir>/<driver>-reg.sock`` and ``<plugin-dir>/dra.sock``. With a pod UID
(rolling update, two instances side by side): ``<driver>-<uid>-reg.sock`` and ``dra-<uid>.sock``. A unix
socket path is limited to 107 bytes plus NUL, and a long driver name plus a UUID easily overflows it, so
too-long names fall back to short hashed ones that stay unique per (driver, uid).
"""

from __future__ import annotations

import base64
import hashlib
import os

UNIX_PATH_MAX = 107  # bytes usable in sockaddr_un.sun_path, excluding the terminating NUL


class SocketPathError(ValueError):
    pass


def _hash(*parts: str, length: int) -> str:
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=").replace("_", "x").replace("-", "y")[:length]


def _fits(path: str) -> bool:
    return len(os.fsencode(path)) <= UNIX_PATH_MAX


def _first_fitting(directory: str, candidates: list[str], what: str) -> str:
    for name in candidates:
        path = os.path.join(directory, name)
        if _fits(path):
            return path
    raise SocketPathError(
        f"{what} socket path {os.path.join(directory, candidates[-1])!r} exceeds {UNIX_PATH_MAX} bytes;"
        " use a shorter directory"
    )


def registration_socket_path(registry_dir: str, driver_name: str, pod_uid: str | None = None) -> str:
    if not pod_uid:
        return _first_fitting(registry_dir, [f"{driver_name}-reg.sock"], "registration")
    return _first_fitting(
        registry_dir,
        [
            f"{driver_name}-{pod_uid}-reg.sock",
            f"{driver_name}-{_hash(pod_uid, length=8)}-reg.sock",
            f"dra-{_hash(driver_name, pod_uid, length=16)}-reg.sock",
        ],
        "registration",
    )


def dra_socket_path(plugin_dir: str, driver_name: str, pod_uid: str | None = None) -> str:
    if not pod_uid:
        return _first_fitting(plugin_dir, ["dra.sock"], "DRA")
    return _first_fitting(
        plugin_dir,
        [f"dra-{pod_uid}.sock", f"dra-{_hash(driver_name, pod_uid, length=16)}.sock"],
        "DRA",
    )
