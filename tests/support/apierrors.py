"""API errors exactly as a kube-apiserver sends them, for fakes that stand in for the API server."""

from __future__ import annotations

from driver.kube.client import ApiError, ResourceType


def not_found(rt: ResourceType, name: str) -> ApiError:
    """The 404 of an object that does not exist: a ``Status`` whose ``details`` name it."""
    resource = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
    message = f'{resource} "{name}" not found'
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "NotFound",
        "details": {"name": name, "group": rt.group, "kind": rt.plural},
        "code": 404,
    }
    return ApiError(404, "NotFound", message, body)


def page_not_found() -> ApiError:
    """What a server answers for a path it does not serve (an API group it lacks): no Status at all."""
    return ApiError(404, "Not Found", "404 page not found\n")
