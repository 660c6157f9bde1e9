"""The sandbox's in-memory Kubernetes API server: the REST subset the driver, exporter and tests use.

Serves core/v1 nodes, namespaces, pods (+status, +log, +binding), services (+status, +proxy), events and
resource.k8s.io/v1 resourceslices, deviceclasses, resourceclaims (+status), resourceclaimtemplates, devicetaintrules, with
create / get / list / update / patch (merge, strategic, JSON patch, apply) / delete / deletecollection /
watch, discovery and ``/version``. ``docs/sandbox-apiserver.md`` lists what it does and does not do.

Layers: ``store`` (objects, resourceVersion, history), ``registry`` (REST semantics), ``kinds`` (per-kind
rules), ``selectors``, ``patch``, ``discovery``, ``hooks`` (test hooks); this module is the HTTP layer,
the :class:`SimApiServer` facade, a background-thread runner and the ``accel-dra sim apiserver`` command.

Test hooks (not in a real API server): :meth:`SimApiServer.inject_fault`, :attr:`SimApiServer.request_log`,
:meth:`SimApiServer.wait_for`, :meth:`SimApiServer.compact`, pod logs and service proxy backends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import yaml
from aiohttp import web

from driver.kube.api.resourceclaim import ADMIN_ACCESS_LABEL
from driver.kube.client import NAMESPACES, PODS, SERVICES, ResourceType
from driver.log import get_logger
from driver.log import setup as log_setup
from driver.sim import discovery
from driver.sim import status as st
from driver.sim.hooks import Fault, FaultInjector, PodLogs, RequestLog, tail
from driver.sim.kinds import ALPHA_GATES, KindSpec
from driver.sim.rbac import ADMIN, Attributes, Authorizer, UserInfo, forbidden_message, verb_of
from driver.sim.registry import DeleteOptions, Registry, Watch, write_context
from driver.sim.store import ObjectStore

log = get_logger(__name__)

JSON = dict[str, Any]
T = TypeVar("T")

DEFAULT_KUBERNETES_VERSION = discovery.KUBERNETES_VERSION
MAX_BODY_BYTES = 3 * 1024 * 1024  # the kube-apiserver's request size limit
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version"})  # readable without a token
BACKEND_ANNOTATION = "sim.accel-dra.io/backend-url"  # on a Service: where its proxy subresource forwards to
_USER = web.RequestKey("user", UserInfo)  # the request's authenticated user
SEED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_BODY_TYPES = ("application/json", "application/yaml", "*/*")


class SimApiServer:
    """An in-memory kube-apiserver double served over HTTP on a local port.

    ``token``: when set, requests must carry ``Authorization: Bearer <token>`` (else 401).
    ``bookmark_interval``: seconds between BOOKMARK events on watches that allow them.
    ``history_limit``: events kept for watches that resume from a resourceVersion; older ones get 410.
    ``graceful_pod_deletion``: a bound pod that is deleted only gets a deletionTimestamp and disappears when
    deleted again with ``gracePeriodSeconds=0`` (what a kubelet does); off by default, pods go at once.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        kubernetes_version: str = DEFAULT_KUBERNETES_VERSION,
        history_limit: int = 10_000,
        bookmark_interval: float = 60.0,
        graceful_pod_deletion: bool = False,
        seed_namespaces: bool = True,
        feature_gates: Iterable[str] = (),
    ) -> None:
        self.token = token
        self.kubernetes_version = kubernetes_version
        self.bookmark_interval = bookmark_interval
        self.store = ObjectStore(history_limit)
        gates = frozenset(feature_gates)
        if gates - ALPHA_GATES:
            raise ValueError(
                f"unknown feature gates {sorted(gates - ALPHA_GATES)}; known: {sorted(ALPHA_GATES)}"
            )
        self.registry = Registry(self.store, graceful_pod_deletion=graceful_pod_deletion, feature_gates=gates)
        self.request_log = RequestLog()
        self.faults = FaultInjector()
        self.pod_logs = PodLogs()
        self._backends: dict[tuple[str, str, str], str] = {}
        self._users: dict[str, UserInfo] = {}
        self.authorizer = Authorizer(self.store.list)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._url = ""
        if seed_namespaces:
            for name in SEED_NAMESPACES:
                self.create(NAMESPACES, {"metadata": {"name": name}})

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a watch whose client went away ends at once instead of at its timeout.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0, handler_cancellation=True)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
        site = web.SockSite(self._runner, sock)
        await site.start()
        bound_host, bound_port = sock.getsockname()[:2]
        shown_host = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
        self._url = f"http://{shown_host}:{bound_port}"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        log.info("sim apiserver started", url=self._url, kubernetes_version=self.kubernetes_version)

    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError("the sim API server has not been started")
        return self._url

    async def stop(self) -> None:
        self.store.close_subscriptions()  # ends every watch stream, so shutdown does not wait on them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        log.info("sim apiserver stopped", url=self._url)

    async def __aenter__(self) -> SimApiServer:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def write_kubeconfig(
        self, path: str | Path, token: str | None = None, namespace: str = "default"
    ) -> Path:
        """Write a kubeconfig for this server (using ``token``, else the server's own token, if any)."""
        token = token if token is not None else self.token
        user: JSON = {"token": token} if token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "accel-dra-sim", "cluster": {"server": self.url}}],
            "users": [{"name": "accel-dra-sim", "user": user}],
            "contexts": [
                {
                    "name": "accel-dra-sim",
                    "context": {"cluster": "accel-dra-sim", "user": "accel-dra-sim", "namespace": namespace},
                }
            ],
            "current-context": "accel-dra-sim",
            "preferences": {},
        }
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        target.chmod(0o600)
        return target

    # -- direct access and test hooks ------------------------------------------------------------

    def _spec(self, rt: ResourceType) -> KindSpec:
        spec = self.registry.spec_for(rt.group, rt.version, rt.plural)
        if spec is None:
            raise KeyError(f"{rt.plural}.{rt.group} is not served by the sim API server")
        return spec

    def create(self, rt: ResourceType, body: JSON, namespace: str | None = None) -> JSON:
        """Create an object without HTTP (not in the request log); same rules as a POST."""
        return self.registry.create(self._spec(rt), namespace or "", body)

    def allow_admin_access(self, namespace: str) -> None:
        """Label ``namespace`` (created if missing) so that claims with admin access may live there: the
        API server refuses them, and their allocation results, elsewhere."""
        labels = {ADMIN_ACCESS_LABEL: "true"}
        current = self.get_object(NAMESPACES, namespace)
        if current is None:
            self.create(NAMESPACES, {"metadata": {"name": namespace, "labels": labels}})
            return
        current["metadata"]["labels"] = {**(current["metadata"].get("labels") or {}), **labels}
        self.registry.update(self._spec(NAMESPACES), "", namespace, current)

    def objects(self, rt: ResourceType, namespace: str | None = None) -> list[JSON]:
        """Copies of the stored objects of a kind."""
        return self.store.list(self._spec(rt).key, namespace)

    def get_object(self, rt: ResourceType, name: str, namespace: str | None = None) -> JSON | None:
        return self.store.get(self._spec(rt).key, namespace or "", name)

    async def wait_for(self, predicate: Callable[[ObjectStore], T], timeout: float = 10.0) -> T:
        """Wait, without polling, until ``predicate(store)`` is truthy; returns its value (TimeoutError if not)."""
        return await self.store.wait_for(predicate, timeout)

    def inject_fault(
        self,
        method: str,
        path_regex: str,
        status: int,
        count: int = 1,
        *,
        reason: str | None = None,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer the next ``count`` requests whose method (or "*") and path match with a ``status`` Status."""
        fault = Fault(method.upper(), path_regex, status, count, reason, message, dict(headers or {}))
        return self.faults.add(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def compact(self) -> None:
        """Drop the watch history: watches resuming from an older resourceVersion get 410 Gone."""
        self.store.compact()

    def register_service_backend(
        self, namespace: str, name: str, url: str, port: str | int | None = None
    ) -> None:
        """Forward ``services/<name>[:<port>]/proxy/...`` to ``url`` (any port when ``port`` is None)."""
        self._backends[(namespace, name, str(port) if port is not None else "")] = url

    # -- HTTP ------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        status = 500
        try:
            self._authenticate(request)
            if "dryRun" in request.query and request.method != "POST":
                raise st.bad_request("dryRun is supported by the sandbox API server for create only")
            fault = self.faults.take(request.method, request.path)
            if fault is not None:
                raise _fault_error(fault)
            with write_context(request.query.get("fieldValidation"), request.get(_USER, ADMIN)) as context:
                response = await self._route(request)
            status = response.status
            if context.warnings and not response.prepared:
                for warning in dict.fromkeys(context.warnings):
                    response.headers.add("Warning", _warning_header(warning))
            return response
        except st.ApiStatusError as exc:
            status = exc.code
            return web.json_response(exc.status, status=exc.code, headers=exc.headers)
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's convention; nothing is sent)
            raise
        except web.HTTPRequestEntityTooLarge:
            status = 413
            body = st.status_body(413, "Request entity too large: limit is 3145728")
            return web.json_response(body, status=413)
        except Exception as exc:
            log.exception("sim apiserver request failed", method=request.method, path=request.path)
            status = 500
            return web.json_response(st.status_body(500, f"internal error: {exc}"), status=500)
        finally:
            self.request_log.add(request.method, request.path, request.query_string, status)

    def add_user(self, token: str, user: UserInfo) -> None:
        """Accept ``token`` as ``user``: its requests are authorised with the RBAC objects the server holds."""
        self._users[token] = user

    def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
        if token is not None and token in self._users:
            request[_USER] = self._users[token]
            return
        if self.token is None or token == self.token:
            request[_USER] = ADMIN  # no token asked for, or the server's own: the admin
            return
        if not header and request.path in PUBLIC_PATHS:
            request[_USER] = ADMIN  # anonymous access to public information (system:public-info-viewer)
            return
        raise st.unauthorized()

    def _authorize(self, request: web.Request, attrs: Attributes) -> None:
        user = request.get(_USER, ADMIN)
        if not self.authorizer.allowed(user, attrs):
            raise st.forbidden(attrs.resource, attrs.group, attrs.name, forbidden_message(user, attrs))

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        segments = [s for s in path.split("/") if s]
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok", content_type="text/plain")
        if segments[:2] == ["api", "v1"] and len(segments) > 2:
            return await self._resource(request, "", "v1", segments[2:])
        if segments[:1] == ["apis"] and len(segments) > 3:
            return await self._resource(request, segments[1], segments[2], segments[3:])
        document = self._discovery(path, segments)
        if document is None:
            raise st.path_not_found()
        if request.method not in ("GET", "HEAD"):
            raise st.method_not_allowed()
        return web.json_response(document)

    def _discovery(self, path: str, segments: list[str]) -> JSON | None:
        specs = self.registry.specs
        groups = discovery.group_names(specs)
        if path == "/version":
            return discovery.version_info(self.kubernetes_version)
        if path == "/api":
            return discovery.api_versions(urlsplit(self._url).netloc)
        if path == "/api/v1":
            return discovery.api_resource_list("v1", specs)
        if path == "/apis":
            return discovery.api_group_list(specs)
        if len(segments) == 2 and segments[1] in groups:
            return discovery.api_group(segments[1], groups[segments[1]])
        if len(segments) == 3 and segments[2] in groups.get(segments[1], []):
            return discovery.api_resource_list(f"{segments[1]}/{segments[2]}", specs)
        return None

    async def _resource(
        self, request: web.Request, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        namespace = ""
        namespaced_path = False
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = self.registry.spec_for(group, version, rest[2])
            if candidate is not None and candidate.rt.namespaced:
                namespace, rest, namespaced_path = rest[1], rest[2:], True
        spec = self.registry.spec_for(group, version, rest[0])
        if spec is None or (namespaced_path and not spec.rt.namespaced):
            raise st.path_not_found()
        if spec.rt.namespaced and not namespaced_path and len(rest) > 1:
            raise st.path_not_found()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        watch = request.query.get("watch") in ("true", "1")
        verb = verb_of(request.method, name is not None, watch)
        self._authorize(request, Attributes(verb, group, spec.rt.plural, sub or "", name or "", namespace))
        if name is None:
            return await self._collection(request, spec, namespace, namespaced_path)
        if sub is None:
            return await self._item(request, spec, namespace, name)
        return await self._subresource(request, spec, namespace, name, sub=sub, tail_path=rest[3:])

    async def _collection(
        self, request: web.Request, spec: KindSpec, namespace: str, namespaced_path: bool
    ) -> web.StreamResponse:
        query = request.query
        method = request.method
        if method == "GET":
            if query.get("watch") in ("true", "1"):
                return await self._serve_watch(request, spec, namespace)
            limit = _int_param(query, "limit")
            result = self.registry.list(
                spec,
                namespace,
                query.get("labelSelector"),
                query.get("fieldSelector"),
                limit=limit,
                continue_token=query.get("continue"),
            )
            return web.json_response(result)
        if method == "POST" and (namespaced_path or not spec.rt.namespaced):
            body = await _read_body(request)
            dry_run = _dry_run(query.get("dryRun"))
            return web.json_response(self.registry.create(spec, namespace, body, dry_run=dry_run), status=201)
        if method == "DELETE" and (namespaced_path or not spec.rt.namespaced):
            result = self.registry.delete_collection(
                spec, namespace, query.get("labelSelector"), query.get("fieldSelector")
            )
            return web.json_response(result)
        raise st.method_not_allowed()

    async def _item(
        self, request: web.Request, spec: KindSpec, namespace: str, name: str
    ) -> web.StreamResponse:
        method = request.method
        if method == "GET":
            return web.json_response(self.registry.get(spec, namespace, name))
        if method == "PUT":
            body = await _read_body(request)
            return web.json_response(self.registry.update(spec, namespace, name, body))
        if method == "PATCH":
            return await self._patch(request, spec, namespace, name, None)
        if method == "DELETE":
            body = await _read_body(request, optional=True)
            options = DeleteOptions.parse(body, dict(request.query))
            return web.json_response(self.registry.delete(spec, namespace, name, options))
        raise st.method_not_allowed()

    async def _patch(
        self, request: web.Request, spec: KindSpec, namespace: str, name: str, sub: str | None
    ) -> web.StreamResponse:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        raw = await request.read()
        obj, created = self.registry.patch(
            spec,
            namespace,
            name,
            content_type,
            raw,
            subresource=sub,
            field_manager=request.query.get("fieldManager"),
        )
        return web.json_response(obj, status=201 if created else 200)

    async def _subresource(
        self,
        request: web.Request,
        spec: KindSpec,
        namespace: str,
        name: str,
        *,
        sub: str,
        tail_path: list[str],
    ) -> web.StreamResponse:
        method = request.method
        if sub == "status" and spec.status_subresource and not tail_path:
            if method == "GET":
                return web.json_response(self.registry.get(spec, namespace, name))
            if method == "PUT":
                body = await _read_body(request)
                return web.json_response(
                    self.registry.update(spec, namespace, name, body, subresource="status")
                )
            if method == "PATCH":
                return await self._patch(request, spec, namespace, name, "status")
            raise st.method_not_allowed()
        if spec.rt == PODS and sub == "log" and not tail_path:
            if method != "GET":
                raise st.method_not_allowed()
            return self._pod_log(request, spec, namespace, name)
        if spec.rt == PODS and sub == "binding" and not tail_path:
            if method != "POST":
                raise st.method_not_allowed()
            body = await _read_body(request)
            return web.json_response(self.registry.bind(spec, namespace, name, body), status=201)
        if spec.rt == SERVICES and sub == "proxy":
            return await self._proxy(request, spec, namespace, name, tail_path)
        raise st.path_not_found()

    # -- watch -----------------------------------------------------------------------------------

    async def _serve_watch(self, request: web.Request, spec: KindSpec, namespace: str) -> web.StreamResponse:
        query = request.query
        timeout = _int_param(query, "timeoutSeconds") or 1800
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        watch = self.registry.watch(
            spec,
            namespace,
            query.get("labelSelector"),
            query.get("fieldSelector"),
            query.get("resourceVersion"),
            send_initial_events=query.get("sendInitialEvents") in ("true", "1"),
        )
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        try:
            await response.prepare(request)
            for event in watch.initial:
                await _write_event(response, event)
            if watch.subscription is not None:
                await self._stream_events(response, watch, timeout, bookmarks)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the client went away
        finally:
            if watch.subscription is not None:
                self.store.unsubscribe(watch.subscription)
        return response

    async def _stream_events(
        self, response: web.StreamResponse, watch: Watch, timeout: int, bookmarks: bool
    ) -> None:
        assert watch.subscription is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        while (remaining := deadline - loop.time()) > 0:
            wait = min(remaining, max(0.0, next_bookmark - loop.time())) if bookmarks else remaining
            try:
                event = await asyncio.wait_for(watch.subscription.queue.get(), wait)
            except TimeoutError:
                if bookmarks and loop.time() >= next_bookmark:
                    await _write_event(response, watch.bookmark())
                    next_bookmark = loop.time() + self.bookmark_interval
                continue
            if event is None:
                return  # the server is stopping
            translated = watch.translate(event)
            if translated is not None:
                await _write_event(response, translated)

    # -- pods/log and services/proxy -------------------------------------------------------------

    def _pod_log(self, request: web.Request, spec: KindSpec, namespace: str, name: str) -> web.StreamResponse:
        pod = self.registry.get(spec, namespace, name)
        pod_spec = pod.get("spec") or {}
        containers = [
            c.get("name")
            for kind in ("initContainers", "containers")
            for c in pod_spec.get(kind) or []
            if isinstance(c, dict)
        ]
        container = request.query.get("container")
        if not container:
            main = [c.get("name") for c in pod_spec.get("containers") or [] if isinstance(c, dict)]
            if len(main) != 1:
                raise st.bad_request(
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(map(str, main))}]"
                )
            container = str(main[0])
        elif container not in containers:
            raise st.bad_request(f"container {container} is not valid for pod {name}")
        try:
            text = tail(self.pod_logs.get(namespace, name, container), dict(request.query))
        except ValueError as exc:
            raise st.bad_request(f"invalid log options: {exc}") from exc
        return web.Response(text=text, content_type="text/plain")

    def _backend(self, service: JSON, namespace: str, name: str, port: str) -> str | None:
        for key in ((namespace, name, port), (namespace, name, "")):
            if key in self._backends:
                return self._backends[key]
        annotations = (service.get("metadata") or {}).get("annotations") or {}
        backend = annotations.get(BACKEND_ANNOTATION)
        if not backend:
            return None
        if not _is_loopback_url(str(backend)):
            # Anyone who may create a Service could otherwise make the server call any address.
            raise st.error(503, f"{BACKEND_ANNOTATION} must point at a loopback address, got {backend!r}")
        return str(backend)

    async def _proxy(
        self, request: web.Request, spec: KindSpec, namespace: str, name: str, tail_path: list[str]
    ) -> web.StreamResponse:
        service_name, _, port = name.partition(":")
        service = self.registry.get(spec, namespace, service_name)
        backend = self._backend(service, namespace, service_name, port)
        if backend is None:
            raise st.error(503, f'no endpoints available for service "{name}"', "ServiceUnavailable")
        url = backend.rstrip("/") + "/" + "/".join(tail_path)
        if request.path.endswith("/") and tail_path:
            url += "/"
        if request.query_string:
            url += "?" + request.query_string
        assert self._session is not None
        body = await request.read()
        try:
            async with self._session.request(request.method, url, data=body or None) as upstream:
                payload = await upstream.read()
                headers = {"Content-Type": upstream.headers.get("Content-Type", "application/octet-stream")}
                return web.Response(body=payload, status=upstream.status, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise st.error(503, f"error trying to reach service: {exc}", "ServiceUnavailable") from exc


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _write_event(response: web.StreamResponse, event: JSON) -> None:
    await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")


def _dry_run(value: str | None) -> bool:
    if value is None:
        return False
    if value != "All":
        raise st.bad_request(f"unsupported dry run value {value!r}: only All")
    return True


def _int_param(query: Mapping[str, str], name: str) -> int:
    raw = query.get(name)
    if raw in (None, ""):
        return 0
    try:
        return int(str(raw))
    except ValueError as exc:
        raise st.bad_request(f"invalid value for {name}: {raw!r}") from exc


async def _read_body(request: web.Request, *, optional: bool = False) -> Any:
    """Decode a JSON (or YAML) request body; 415 for other media types, 400 for malformed ones."""
    raw = await request.read()
    if not raw.strip():
        if optional:
            return None
        raise st.bad_request("the request body is empty")
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type and content_type not in _BODY_TYPES:
        raise st.unsupported_media_type(content_type, ["application/json", "application/yaml"])
    try:
        if content_type == "application/yaml":
            return yaml.safe_load(raw.decode("utf-8"))
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise st.bad_request(f"error decoding the request body: {exc}") from exc


def _warning_header(text: str) -> str:
    """An RFC 7234 warning as the kube-apiserver sends it: code 299, agent "-", quoted text."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 - "{escaped}"'


def _fault_error(fault: Fault) -> st.ApiStatusError:
    message = fault.message or f"injected fault ({fault.status}) for {fault.method} {fault.path_regex}"
    headers = dict(fault.headers)
    if fault.status == 429:
        headers.setdefault("Retry-After", "1")
    return st.ApiStatusError(st.status_body(fault.status, message, fault.reason), headers)


# -- running it ------------------------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        return host, int(port)
    except ValueError as exc:
        raise ValueError(f"--listen must be HOST:PORT, got {listen!r}") from exc


async def run_forever(
    listen: str,
    kubeconfig_out: str | Path,
    *,
    token: str | None = None,
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set), after writing a kubeconfig for clients."""
    host, port = parse_listen(listen)
    server = SimApiServer(token=token, kubernetes_version=kubernetes_version)
    await server.start(host, port)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        path = server.write_kubeconfig(kubeconfig_out)
        print(f"sim apiserver listening on {server.url}", flush=True)
        print(f"kubeconfig written to {path}", flush=True)
        await stop.wait()
    finally:
        await server.stop()


class BackgroundApiServer:
    """A :class:`SimApiServer` on its own event loop in a daemon thread, for synchronous callers.

    ``call`` runs a function on the server's loop (the server's state is not thread-safe).
    """

    def __init__(self, **server_options: Any) -> None:
        self._options = server_options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.server: SimApiServer | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> SimApiServer:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="sim-apiserver", daemon=True)
        self._thread.start()

        async def start_server() -> SimApiServer:
            server = SimApiServer(**self._options)
            await server.start(host, port)
            return server

        self.server = self._run(start_server(), timeout)
        return self.server

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._loop is None:
            raise RuntimeError("the background API server has not been started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def url(self) -> str:
        if self.server is None:
            raise RuntimeError("the background API server has not been started")
        return self.server.url

    def call(self, func: Callable[[SimApiServer], T], timeout: float = 10.0) -> T:
        server = self.server
        if server is None:
            raise RuntimeError("the background API server has not been started")

        async def run() -> T:
            return func(server)

        return self._run(run(), timeout)

    def wait_for(self, predicate: Callable[[ObjectStore], T], timeout: float = 10.0) -> T:
        server = self.server
        if server is None:
            raise RuntimeError("the background API server has not been started")
        return self._run(server.wait_for(predicate, timeout), timeout + 5.0)

    def stop(self, timeout: float = 10.0) -> None:
        if self.server is not None and self._loop is not None:
            self._run(self.server.stop(), timeout)
            self.server = None
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout)
            self._loop.close()
            self._loop = None

    def __enter__(self) -> SimApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- command line ----------------------------------------------------------------------------------


def add_sim_apiserver_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", default="127.0.0.1:0", help="HOST:PORT to serve on (port 0: any free port)"
    )
    parser.add_argument("--kubeconfig-out", required=True, help="write a kubeconfig for this server here")
    parser.add_argument("--token", default=None, help="require this bearer token on every request")
    parser.add_argument(
        "--kubernetes-version", default=DEFAULT_KUBERNETES_VERSION, help="the version /version reports"
    )


def add_sim_apiserver_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``apiserver`` to a ``sim`` sub-command group (the CLI resolves ``_target`` lazily)."""
    help_text = "run the in-memory sandbox Kubernetes API server"
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "apiserver", help=help_text, description=help_text
    )
    add_sim_apiserver_arguments(parser)
    parser.set_defaults(_target="driver.sim.apiserver:run_sim_apiserver")
    return parser


def run_sim_apiserver(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; exit 0."""
    log_setup("info")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run_forever(
                args.listen, args.kubeconfig_out, token=args.token, kubernetes_version=args.kubernetes_version
            )
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m driver.sim.apiserver", description=__doc__.splitlines()[0]
    )
    add_sim_apiserver_arguments(parser)
    return run_sim_apiserver(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
