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
from driver.kube.retry import RetryPolicy, retry_after
from driver.log import get_logger

log = get_logger(__name__)

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
    """A failed API call: a non-2xx answer (with its ``Status`` object when the server sent one), or an answer
    that is not what the request must get (:class:`MalformedAnswerError`).

    ``about`` names the request's object (``GET resourceclaims default/gpu-claim``) and leads the message.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        body: JSON | None = None,
        *,
        about: str = "",
        retry_after: float | None = None,
    ) -> None:
        text = f"{status} {reason}: {message}"
        super().__init__(f"{about}: {text}" if about else text)
        #: The error without the object's name, for callers that name it themselves.
        self.detail = text
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}
        self.about = about
        #: The seconds the server asked the client to wait (``Retry-After``), when it said.
        self.retry_after = retry_after

    @property
    def not_found(self) -> bool:
        """Any 404: the object, or the whole API (a server without the group), or a proxy's error page."""
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def invalid(self) -> bool:
        return self.status == 422

    @property
    def kind(self) -> str:
        """A low-cardinality label for metrics: the HTTP status, or ``malformed``."""
        return str(self.status)

    def proves_missing(self, rt: ResourceType, name: str) -> bool:
        """Whether the API server said that this very object does not exist.

        Only a 404 ``Status`` with reason ``NotFound`` whose ``details`` name the object (name, group and
        resource) says so. A bare 404 also comes from a server that does not serve the API group ("404 page
        not found"), from a proxy or load balancer in front of it, or from a wrong path: none of them proves
        anything about the object.
        """
        if self.status != 404 or self.body.get("kind") != "Status" or self.reason != "NotFound":
            return False
        details = self.body.get("details")
        return (
            isinstance(details, dict)
            and details.get("name") == name
            and details.get("kind") == rt.plural
            and (details.get("group") or "") == rt.group
        )


class MalformedAnswerError(ApiError):
    """A 2xx answer that is not what the request must get: not JSON, not an object, another kind or object.

    Callers treat it like a server error: retry later, never act on the content.
    """

    def __init__(self, status: int, problem: str, *, about: str) -> None:
        super().__init__(status, "MalformedAnswer", problem, about=about)

    @property
    def kind(self) -> str:
        return "malformed"


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
    """Async dict-based access to the API server over one aiohttp session.

    Plain requests are retried by ``retry`` (:mod:`driver.kube.retry`: 429, 5xx and connection errors, as
    far as retrying is safe); watch streams are not -- :mod:`driver.kube.listwatch` resumes them.
    """

    def __init__(self, connection: Connection, *, retry: RetryPolicy | None = None) -> None:
        self.connection = connection
        self.retry = retry if retry is not None else RetryPolicy()
        self._base = URL(connection.server)
        self._proxy, self._proxy_headers = _proxy_for(connection)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def connect(
        cls, kubeconfig: str | None = None, context: str | None = None, *, retry: RetryPolicy | None = None
    ) -> KubeClient:
        """Use ``kubeconfig`` when given (or $KUBECONFIG), otherwise the in-cluster service account."""
        return cls(await load_connection(kubeconfig, context), retry=retry)

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

    async def _exchange(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
        accept: str = "application/json",
        about: str,
    ) -> tuple[int, str, bytes]:
        """One request under the retry policy: the 2xx answer's status, content type and body.

        A non-2xx answer that is not retried raises :class:`ApiError`; a transport error that is not
        retried is raised as it is.
        """
        attempt = 0
        while True:
            try:
                async with self._send(
                    method,
                    path,
                    params=params,
                    body=body,
                    content_type=content_type,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    accept=accept,
                ) as response:
                    raw = await response.read()
            except Exception as err:  # transport errors; the policy re-raises anything else
                wait = self.retry.wait_for_error(method, err, attempt)
                if wait is None:
                    raise
                problem = f"{type(err).__name__}: {err}"
            else:
                if response.status < 300:
                    return response.status, response.content_type, raw
                asked = retry_after(response.headers.get("Retry-After"))
                wait = self.retry.wait_for_status(method, response.status, asked, attempt)
                if wait is None:
                    raise _api_error(response.status, response.reason or "", raw, about, asked)
                problem = f"{response.status} {response.reason or ''}".strip()
            attempt += 1
            log.info(
                "API request failed; retrying", request=about, error=problem, attempt=attempt, wait_s=wait
            )
            await self.retry.sleep(wait)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
        about: str = "",
    ) -> JSON:
        """Send one request (retried by the policy) and return the decoded JSON object.

        Raises :class:`ApiError` on a non-2xx answer and :class:`MalformedAnswerError` when a 2xx answer is
        not a JSON object; ``about`` names the object in both (default: method and path).
        """
        about = about or f"{method} {path}"
        status, answer_type, raw = await self._exchange(
            method, path, params=params, body=body, content_type=content_type, timeout=timeout, about=about
        )
        return _json_object(status, answer_type, raw, about)

    async def request_text(self, method: str, path: str, *, timeout: float = 30.0) -> str:
        """Like :meth:`request` for endpoints that answer plain text (pod logs, service proxy)."""
        _, _, raw = await self._exchange(
            method, path, timeout=timeout, accept="*/*", about=f"{method} {path}"
        )
        return raw.decode("utf-8", errors="replace")

    async def server_version(self) -> JSON:
        """``GET /version`` (readable by every client: no RBAC rule is needed)."""
        return await self.request("GET", "/version")

    # -- verbs -----------------------------------------------------------------------------------
    # Each verb checks that the answer is what it asked for (the kind, the object), so no caller ever
    # acts on a proxy's error page, an empty object or another object.

    async def get(self, rt: ResourceType, name: str, namespace: str | None = None) -> JSON:
        about = describe("GET", rt, name, namespace)
        answer = await self.request("GET", rt.path(namespace, name), about=about)
        return _checked_object(answer, rt, about, name, namespace)

    async def list(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> JSON:
        about = describe("LIST", rt, None, namespace)
        answer = await self.request(
            "GET", rt.path(namespace), params=_selector_params(label_selector, field_selector), about=about
        )
        return _checked_list(answer, rt, about)

    async def create(self, rt: ResourceType, body: Mapping[str, Any], namespace: str | None = None) -> JSON:
        meta = body.get("metadata") or {}
        about = describe("POST", rt, meta.get("name") or meta.get("generateName"), namespace)
        answer = await self.request("POST", rt.path(namespace), body=_with_type(rt, body), about=about)
        return _checked_object(answer, rt, about, meta.get("name"), namespace)

    async def update(
        self,
        rt: ResourceType,
        body: Mapping[str, Any],
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> JSON:
        """PUT the object; the API server answers 409 when ``metadata.resourceVersion`` is stale."""
        name = body["metadata"]["name"]
        about = describe("PUT", rt, name, namespace, subresource)
        answer = await self.request(
            "PUT", rt.path(namespace, name, subresource), body=_with_type(rt, body), about=about
        )
        return _checked_object(answer, rt, about, name, namespace)

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
        about = describe("PATCH", rt, name, namespace, subresource)
        answer = await self.request(
            "PATCH",
            rt.path(namespace, name, subresource),
            params=params,
            body=patch,
            content_type=_PATCH_CONTENT_TYPES[patch_type],
            about=about,
        )
        return _checked_object(answer, rt, about, name, namespace)

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
        """DELETE the object; the answer is the object (being deleted) or a success ``Status``."""
        body: JSON = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        if preconditions:
            body["preconditions"] = preconditions
        about = describe("DELETE", rt, name, namespace)
        return await self.request("DELETE", rt.path(namespace, name), body=body, about=about)

    async def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> JSON:
        return await self.request(
            "DELETE",
            rt.path(namespace),
            params=_selector_params(label_selector, field_selector),
            about=describe("DELETE", rt, None, namespace),
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
        :class:`ApiError`, a line that is not a watch event as :class:`MalformedAnswerError`, so callers
        re-list. A server that does not answer the request within :data:`WATCH_ANSWER_SECONDS` is given up
        on (:class:`TimeoutError`); a stream that stays silent longer than its timeout too.
        """
        params = [("watch", "true"), ("timeoutSeconds", str(timeout_seconds))]
        params += _selector_params(label_selector, field_selector)
        if resource_version:
            params.append(("resourceVersion", resource_version))
            params.append(("allowWatchBookmarks", "true"))
        about = describe("WATCH", rt, None, namespace)
        async with contextlib.AsyncExitStack() as stack:
            async with asyncio.timeout(WATCH_ANSWER_SECONDS):
                response = await stack.enter_async_context(
                    self._send(
                        "GET",
                        rt.path(namespace),
                        params=params,
                        timeout=aiohttp.ClientTimeout(
                            total=None, sock_connect=30, sock_read=timeout_seconds + 30
                        ),
                    )
                )
            if response.status >= 300:
                raise _api_error(
                    response.status,
                    response.reason or "",
                    await response.read(),
                    about,
                    retry_after(response.headers.get("Retry-After")),
                )
            async for line in response.content:
                if line.strip():
                    yield _watch_event(line, response.status, rt, about)


#: How long a watch request may wait for the server's answer (the stream itself may then run for minutes).
WATCH_ANSWER_SECONDS = 30.0
#: How much of a malformed answer an error message quotes.
QUOTE_BYTES = 200


def describe(
    verb: str,
    rt: ResourceType,
    name: str | None,
    namespace: str | None,
    subresource: str | None = None,
) -> str:
    """How errors name a request's object: ``GET resourceclaims default/gpu-claim`` (names capped)."""
    resource = rt.plural + (f"/{subresource}" if subresource else "")
    name, namespace = _capped(name), _capped(namespace)
    if name is None:
        return f"{verb} {resource}" + (f" in {namespace}" if rt.namespaced and namespace else "")
    shown = f"{namespace}/{name}" if rt.namespaced and namespace else name
    return f"{verb} {resource} {shown}"


def _capped(value: str | None, limit: int = 253) -> str | None:
    """Names longer than any valid name are cut, so an error message stays small."""
    return value if value is None or len(value) <= limit else f"{value[:limit]}..."


def _quote(raw: bytes) -> str:
    text = raw[:QUOTE_BYTES].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(raw) > QUOTE_BYTES else "")


def _json_object(status: int, content_type: str, raw: bytes, about: str) -> JSON:
    """The answer's JSON object, or :class:`MalformedAnswerError` saying what it was instead."""
    if not raw:
        raise MalformedAnswerError(status, "empty answer", about=about)
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise MalformedAnswerError(
            status, f"answer is {content_type or 'untyped'}, not JSON: {_quote(raw)}", about=about
        )
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedAnswerError(
            status, f"answer is not JSON ({exc}): {_quote(raw)}", about=about
        ) from None
    if not isinstance(value, dict):
        raise MalformedAnswerError(
            status, f"answer is a JSON {type(value).__name__}, not an object: {_quote(raw)}", about=about
        )
    return value


def _problem_with_object(
    obj: JSON, rt: ResourceType, name: str | None, namespace: str | None, kind: str
) -> str | None:
    if obj.get("kind") != kind or obj.get("apiVersion") != rt.api_version:
        return f"answer is {obj.get('apiVersion')!r} {obj.get('kind')!r}, not {rt.api_version} {kind}"
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return "answer has no metadata"
    if kind.endswith("List"):
        return None
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        return "answer has no metadata.name"
    if name is not None and meta["name"] != name:
        return f"answer is the object {meta['name']!r}"
    if rt.namespaced and namespace is not None and meta.get("namespace") != namespace:
        return f"answer is an object in namespace {meta.get('namespace')!r}"
    if not isinstance(meta.get("uid"), str) or not meta["uid"]:
        return "answer has no metadata.uid"
    return None


def _checked_object(obj: JSON, rt: ResourceType, about: str, name: str | None, namespace: str | None) -> JSON:
    problem = _problem_with_object(obj, rt, name, namespace, rt.kind)
    if problem:
        raise MalformedAnswerError(200, problem, about=about)
    return obj


def _problem_with_items(items: Any) -> str | None:
    if items is None:
        return None  # an empty list is sent as null by some servers
    if not isinstance(items, list):
        return "answer's items are not a list"
    for i, item in enumerate(items):
        meta = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            return f"answer's items[{i}] is not an object with metadata.name"
    return None


def _checked_list(obj: JSON, rt: ResourceType, about: str) -> JSON:
    problem = _problem_with_object(obj, rt, None, None, f"{rt.kind}List") or _problem_with_items(
        obj.get("items")
    )
    if problem:
        raise MalformedAnswerError(200, problem, about=about)
    return obj


_WATCH_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})


def _watch_event(line: bytes, status: int, rt: ResourceType, about: str) -> WatchEvent:
    try:
        event = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise MalformedAnswerError(status, f"watch event is not JSON: {_quote(line)}", about=about) from None
    kind = event.get("type") if isinstance(event, dict) else None
    obj = event.get("object") if isinstance(event, dict) else None
    if kind not in _WATCH_TYPES or not isinstance(obj, dict):
        raise MalformedAnswerError(status, f"not a watch event: {_quote(line)}", about=about)
    if kind == "ERROR":
        code = obj.get("code")
        raise ApiError(
            code if isinstance(code, int) else 500,
            str(obj.get("reason", "")),
            str(obj.get("message", "")),
            obj,
            about=about,
        )
    if not isinstance(obj.get("metadata"), dict):
        raise MalformedAnswerError(
            status, f"watch event without object metadata: {_quote(line)}", about=about
        )
    return WatchEvent(kind, obj)


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


def _api_error(
    status: int, reason: str, raw: bytes, about: str, retry_after: float | None = None
) -> ApiError:
    try:
        body = json.loads(raw)
    except (ValueError, TypeError):
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return ApiError(
            status,
            str(body.get("reason") or reason),
            str(body.get("message", "")),
            body,
            about=about,
            retry_after=retry_after,
        )
    text = bytes(raw or b"").decode("utf-8", errors="replace")[:500]
    return ApiError(status, reason, text, about=about, retry_after=retry_after)
