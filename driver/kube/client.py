"""A small async Kubernetes REST client that works on plain dicts.

Objects stay the JSON the API server sent: typed models would silently drop fields this client version
does not know (newer API servers) and cost a full model round trip per object, while the driver needs a
handful of fields. Requests go over one aiohttp session; where the server is and how to authenticate come
from :mod:`driver.kube.connection` (in-cluster service account or kubeconfig, with the official client's
loader for exec plugins and auth providers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from driver.kube.connection import Connection
from driver.kube.connection import load as load_connection

JSON = dict[str, Any]
PatchType = Literal["merge", "strategic", "json", "apply"]

_PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}


@dataclass(frozen=True)
class ResourceType:
    """Where a kind lives in the REST tree."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
            if subresource:
                base += f"/{subresource}"
        return base


NODES = ResourceType("", "v1", "nodes", "Node", namespaced=False)
NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", namespaced=False)
PODS = ResourceType("", "v1", "pods", "Pod", namespaced=True)
SERVICES = ResourceType("", "v1", "services", "Service", namespaced=True)
EVENTS = ResourceType("", "v1", "events", "Event", namespaced=True)
RESOURCE_SLICES = ResourceType("resource.k8s.io", "v1", "resourceslices", "ResourceSlice", namespaced=False)
DEVICE_CLASSES = ResourceType("resource.k8s.io", "v1", "deviceclasses", "DeviceClass", namespaced=False)
RESOURCE_CLAIMS = ResourceType("resource.k8s.io", "v1", "resourceclaims", "ResourceClaim", namespaced=True)
RESOURCE_CLAIM_TEMPLATES = ResourceType(
    "resource.k8s.io", "v1", "resourceclaimtemplates", "ResourceClaimTemplate", namespaced=True
)
# Served at resource.k8s.io/v1 since 1.37 but at v1beta2 only in 1.36 (behind DRADeviceTaintRules): ask the
# server with driver.kube.discovery.served_type rather than use this version as is.
DEVICE_TAINT_RULES = ResourceType("resource.k8s.io", "v1", "devicetaintrules", "DeviceTaintRule", False)

KNOWN_TYPES: tuple[ResourceType, ...] = (
    NODES,
    NAMESPACES,
    PODS,
    SERVICES,
    EVENTS,
    RESOURCE_SLICES,
    DEVICE_CLASSES,
    RESOURCE_CLAIMS,
    RESOURCE_CLAIM_TEMPLATES,
)


class ApiError(Exception):
    """A non-2xx answer from the API server, carrying its ``Status`` object when it sent one."""

    def __init__(self, status: int, reason: str, message: str, body: JSON | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def invalid(self) -> bool:
        return self.status == 422


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK | ERROR
    object: JSON


def _selector_params(label_selector: str | None, field_selector: str | None) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    if label_selector:
        params.append(("labelSelector", label_selector))
    if field_selector:
        params.append(("fieldSelector", field_selector))
    return params


class KubeClient:
    """Async dict-based access to the API server over one aiohttp session."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._base = URL(connection.server)
        self._proxy, self._proxy_headers = _proxy_for(connection)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeClient:
        """Use ``kubeconfig`` when given (or $KUBECONFIG), otherwise the in-cluster service account."""
        return cls(await load_connection(kubeconfig, context))

    @property
    def host(self) -> str:
        return self.connection.server

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # trust_env is off: the proxy is resolved once (see _proxy_for), not per request.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.connection.ssl), trust_env=False
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- transport -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: aiohttp.ClientTimeout | None = None,
        accept: str = "application/json",
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        headers = {"Accept": accept, **(await self.connection.auth())}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            # Compact, as Go clients send it: the API server keeps opaque claim parameters byte for byte
            # and compares them so when a claim's status is written; a claim created with spaces in them
            # gets every later status patch refused ("status.allocation: field cannot be modified").
            data = json.dumps(body, separators=(",", ":")).encode()
        async with self._client_session().request(
            method,
            self._base.with_path(path, encoded=True).with_query(list(params)),
            data=data,
            headers=headers,
            timeout=timeout or aiohttp.ClientTimeout(total=30),
            proxy=self._proxy,
            proxy_headers=self._proxy_headers,
            server_hostname=self.connection.tls_server_name,
        ) as response:
            yield response

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> JSON:
        """Send one request and return the decoded JSON body; raise :class:`ApiError` on non-2xx."""
        async with self._send(
            method,
            path,
            params=params,
            body=body,
            content_type=content_type,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            raw = await response.read()
        if response.status >= 300:
            raise _api_error(response.status, response.reason or "", raw)
        return json.loads(raw) if raw else {}

    async def request_text(self, method: str, path: str, *, timeout: float = 30.0) -> str:
        """Like :meth:`request` for endpoints that answer plain text (pod logs, service proxy)."""
        async with self._send(
            method, path, timeout=aiohttp.ClientTimeout(total=timeout), accept="*/*"
        ) as response:
            raw = await response.read()
        if response.status >= 300:
            raise _api_error(response.status, response.reason or "", raw)
        return raw.decode("utf-8", errors="replace")

    async def server_version(self) -> JSON:
        """``GET /version`` (readable by every client: no RBAC rule is needed)."""
        return await self.request("GET", "/version")

    # -- verbs -----------------------------------------------------------------------------------

    async def get(self, rt: ResourceType, name: str, namespace: str | None = None) -> JSON:
        return await self.request("GET", rt.path(namespace, name))

    async def list(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> JSON:
        return await self.request(
            "GET", rt.path(namespace), params=_selector_params(label_selector, field_selector)
        )

    async def create(self, rt: ResourceType, body: Mapping[str, Any], namespace: str | None = None) -> JSON:
        return await self.request("POST", rt.path(namespace), body=_with_type(rt, body))

    async def update(
        self,
        rt: ResourceType,
        body: Mapping[str, Any],
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> JSON:
        """PUT the object; the API server answers 409 when ``metadata.resourceVersion`` is stale."""
        name = body["metadata"]["name"]
        return await self.request("PUT", rt.path(namespace, name, subresource), body=_with_type(rt, body))

    async def patch(
        self,
        rt: ResourceType,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
        field_manager: str | None = None,
        force: bool = False,
    ) -> JSON:
        params: list[tuple[str, str]] = []
        if field_manager:
            params.append(("fieldManager", field_manager))
        if force:
            params.append(("force", "true"))
        return await self.request(
            "PATCH",
            rt.path(namespace, name, subresource),
            params=params,
            body=patch,
            content_type=_PATCH_CONTENT_TYPES[patch_type],
        )

    async def delete(
        self,
        rt: ResourceType,
        name: str,
        namespace: str | None = None,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> JSON:
        body: JSON = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        if preconditions:
            body["preconditions"] = preconditions
        return await self.request("DELETE", rt.path(namespace, name), body=body)

    async def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> JSON:
        return await self.request(
            "DELETE", rt.path(namespace), params=_selector_params(label_selector, field_selector)
        )

    async def watch(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        """Yield watch events until the server closes the stream (after ``timeout_seconds``).

        An ``ERROR`` event (for example 410 Gone for a too-old resourceVersion) is raised as
        :class:`ApiError` so callers re-list.
        """
        params = [("watch", "true"), ("timeoutSeconds", str(timeout_seconds))]
        params += _selector_params(label_selector, field_selector)
        if resource_version:
            params.append(("resourceVersion", resource_version))
            params.append(("allowWatchBookmarks", "true"))
        async with self._send(
            "GET",
            rt.path(namespace),
            params=params,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout_seconds + 30),
        ) as response:
            if response.status >= 300:
                raise _api_error(response.status, response.reason or "", await response.read())
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise ApiError(
                        int(status.get("code", 500)),
                        status.get("reason", ""),
                        status.get("message", ""),
                        status,
                    )
                yield WatchEvent(event["type"], event["object"])


def _proxy_for(connection: Connection) -> tuple[str | None, dict[str, str] | None]:
    """The proxy for the API server: the kubeconfig's ``proxy-url``, else ``HTTP(S)_PROXY``/``NO_PROXY``.

    Resolved once per client: aiohttp re-reads the proxy variables (and ``~/.netrc``, which API servers do
    not honour) in a worker thread on every request when asked to trust the environment.
    """
    if connection.proxy:
        return connection.proxy, None
    try:
        proxy, auth = get_env_proxy_for_url(URL(connection.server))
    except LookupError:
        return None, None
    return str(proxy), ({"Proxy-Authorization": auth.encode()} if auth is not None else None)


def _with_type(rt: ResourceType, body: Mapping[str, Any]) -> JSON:
    out = dict(body)
    out.setdefault("apiVersion", rt.api_version)
    out.setdefault("kind", rt.kind)
    return out


def _api_error(status: int, reason: str, raw: bytes) -> ApiError:
    try:
        body = json.loads(raw)
    except (ValueError, TypeError):
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return ApiError(status, body.get("reason", reason), body.get("message", ""), body)
    text = bytes(raw or b"").decode("utf-8", errors="replace")[:500]
    return ApiError(status, reason, text)


async def retry_backoff(attempt: int, base: float = 0.2, cap: float = 10.0) -> None:
    """Sleep for an exponential backoff step (used by reconcilers between failed API calls)."""
    await asyncio.sleep(min(cap, base * (2**attempt)))
