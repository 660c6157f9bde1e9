"""Kubernetes ``Status`` error objects, as the sandbox API server returns them.

Every failure inside the server is an :class:`ApiStatusError` carrying the exact ``Status`` body and HTTP
code a real kube-apiserver would send, so the HTTP layer only has to serialise it.
"""

from __future__ import annotations

from typing import Any

from driver.kube.api.fields import Errors, FieldError

JSON = dict[str, Any]

REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Gone",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiStatusError(Exception):
    """A request failure with the ``Status`` body to answer it with."""

    def __init__(self, status: JSON, headers: dict[str, str] | None = None) -> None:
        super().__init__(status.get("message", ""))
        self.status = status
        self.headers = headers or {}

    @property
    def code(self) -> int:
        return int(self.status["code"])


def status_body(code: int, message: str, reason: str | None = None, details: JSON | None = None) -> JSON:
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, ""),
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def error(code: int, message: str, reason: str | None = None, details: JSON | None = None) -> ApiStatusError:
    return ApiStatusError(status_body(code, message, reason, details))


def success(code: int = 200, details: JSON | None = None) -> JSON:
    body: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code}
    if details is not None:
        body["details"] = details
    return body


def resource_name(plural: str, group: str) -> str:
    """``pods`` or ``resourceslices.resource.k8s.io``: how the server names a resource (or, given a kind, a
    kind: ``ResourceSlice.resource.k8s.io``) in messages."""
    return f"{plural}.{group}" if group else plural


def _details(plural: str, group: str, name: str) -> JSON:
    return {"name": name, "group": group, "kind": plural}


def not_found(plural: str, group: str, name: str) -> ApiStatusError:
    return error(
        404, f'{resource_name(plural, group)} "{name}" not found', "NotFound", _details(plural, group, name)
    )


def already_exists(plural: str, group: str, name: str) -> ApiStatusError:
    message = f'{resource_name(plural, group)} "{name}" already exists'
    return error(409, message, "AlreadyExists", _details(plural, group, name))


def conflict(plural: str, group: str, name: str, detail: str) -> ApiStatusError:
    message = f'Operation cannot be fulfilled on {resource_name(plural, group)} "{name}": {detail}'
    return error(409, message, "Conflict", _details(plural, group, name))


def forbidden(plural: str, group: str, name: str, message: str) -> ApiStatusError:
    return error(403, message, "Forbidden", _details(plural, group, name))


STALE_OBJECT = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiStatusError:
    """422 for validation errors, 400 when the body would not even decode into the kind's types."""
    decode_errors = [e for e in errors if e.is_decode_error]
    if decode_errors:
        api_version = f"{group}/v1" if group else "v1"
        return ApiStatusError(decode_error_status(kind, api_version, decode_errors))
    return ApiStatusError(invalid_status(kind, group, name, errors))


def bad_request(message: str) -> ApiStatusError:
    return error(400, message, "BadRequest")


def method_not_allowed() -> ApiStatusError:
    return error(405, "the server does not allow this method on the requested resource", "MethodNotAllowed")


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiStatusError:
    message = (
        f"the body of the request was in an unknown format ({content_type!r}) - accepted media types include: "
        + ", ".join(accepted)
    )
    return error(415, message, "UnsupportedMediaType")


def expired(message: str) -> ApiStatusError:
    return error(410, message, "Expired")


def unauthorized() -> ApiStatusError:
    return error(401, "Unauthorized", "Unauthorized")


def internal(message: str) -> ApiStatusError:
    return error(500, message, "InternalError")


def path_not_found() -> ApiStatusError:
    return error(404, "the server could not find the requested resource", "NotFound")


# -- validation failures --------------------------------------------------------------------------------


def _aggregate(errors: Errors) -> str:
    """apimachinery's aggregate error text: one message alone, several in brackets, duplicates dropped."""
    messages = list(dict.fromkeys(str(error) for error in errors))
    return messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"


def invalid_status(kind: str, group: str, name: str, errors: Errors) -> JSON:
    """The 422 ``Status`` body the API server returns for ``errors`` on object ``name``."""
    message = f'{resource_name(kind, group)} "{name}" is invalid'
    if errors:
        message += f": {_aggregate(errors)}"
    details = {
        "name": name,
        "group": group,
        "kind": kind,
        "causes": [{"reason": str(e.type), "message": e.body(), "field": e.field} for e in errors],
    }
    return status_body(422, message, "Invalid", details)


def decode_error_status(kind: str, api_version: str, errors: Errors) -> JSON:
    """The 400 ``Status`` the API server returns when a body does not decode into the kind's types."""
    detail = "; ".join(f"{e.field}: {e.detail}" for e in errors)
    version = api_version.rpartition("/")[2]
    return status_body(
        400, f'{kind} in version "{version}" cannot be handled as a {kind}: {detail}', "BadRequest"
    )
