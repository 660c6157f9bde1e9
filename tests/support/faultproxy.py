"""A fault-injecting HTTP proxy in front of an API server (the sim one, or a real one over TLS): what a
broken or hostile API server, load balancer or network answers.

Processes under test get a kubeconfig pointing at the proxy (:meth:`FaultProxy.write_kubeconfig`) with the
bearer token they authenticate with, which the proxy passes on unchanged: it listens on loopback in plain
HTTP and speaks TLS to a real API server (verified with :attr:`FaultProxy.upstream_ssl`). Each request is
forwarded unchanged unless an armed :class:`Fault` matches it (method, path regex, watch or not);
then the fault decides the answer: a malformed body, a wrong content type, a bare 404, a 409/429/5xx
``Status``, a slow or cut answer, another object, a reset connection. :attr:`FaultProxy.outage` resets every
connection until cleared. Watch streams are forwarded line by line, so a fault can also break a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

JSON = dict[str, Any]

# The answers that do not need the real one.
CANNED: dict[str, tuple[int, str, bytes]] = {
    "html": (200, "text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "empty-object": (200, "application/json", b"{}"),
    "json-array": (200, "application/json", b"[]"),
    "json-string": (200, "application/json", b'"ok"'),
    "not-json": (200, "application/json", b'{"kind": "ResourceClaim", "metadata": {'),
    "empty-body": (200, "application/json", b""),
    "bare-404": (404, "text/plain", b"404 page not found\n"),
    "unavailable-text": (503, "text/plain", b"upstream connect error or disconnect/reset before headers\n"),
}
# ``Status`` answers: (code, reason, with details naming nothing in particular).
STATUS: dict[str, tuple[int, str]] = {
    "status-404-no-details": (404, "NotFound"),
    "conflict": (409, "Conflict"),
    "too-many-requests": (429, "TooManyRequests"),
    "internal-error": (500, "InternalError"),
    "unavailable": (503, "ServiceUnavailable"),
    "gateway-timeout": (504, "Timeout"),
}
# Answers made from the real one ("ignore-selector": the request goes on without its field selector, as
# to a server that ignores it, so other nodes' objects come back too).
MUTATED = ("other-object", "wrong-kind", "no-metadata", "truncated", "ignore-selector")
# Connection-level and timing faults.
TRANSPORT = ("reset", "slow")
# Faults of watch streams (the request itself is answered 200).
WATCH = ("watch-garbage", "watch-error-410", "watch-error-500", "watch-end", "watch-bad-event")

ALL_FAULTS: tuple[str, ...] = (*CANNED, *STATUS, *MUTATED, *TRANSPORT)


@dataclass
class Fault:
    """Answer matching requests with ``kind`` (one of :data:`ALL_FAULTS` or :data:`WATCH`).

    ``remaining``: how many more requests it takes (None: until cleared). ``watch``: True matches watch
    requests only, False everything else, None both. ``delay``: seconds before answering (``slow``).
    """

    kind: str
    path: str = ""
    method: str = "*"
    remaining: int | None = 1
    watch: bool | None = False
    delay: float = 0.0
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ALL_FAULTS and self.kind not in WATCH:
            raise ValueError(f"unknown fault {self.kind!r}")
        re.compile(self.path)

    def matches(self, method: str, path: str, watch: bool) -> bool:
        return (
            (self.remaining is None or self.remaining > 0)
            and self.method in ("*", method)
            and (self.watch is None or self.watch == watch)
            and bool(re.search(self.path, path))
        )


@dataclass
class FaultProxy:
    upstream: str
    #: How to verify an ``https://`` upstream (its CA); None: the system's defaults.
    upstream_ssl: ssl.SSLContext | None = None
    #: The bearer token the kubeconfig of :meth:`write_kubeconfig` carries (None: no credentials).
    token: str | None = None
    faults: list[Fault] = field(default_factory=list)
    #: Reset every connection (an API server that is down behind a load balancer).
    outage: bool = False
    #: Requests answered, by fault kind ("" for forwarded ones).
    answered: Counter[str] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _url: str = ""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self._url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        connector = aiohttp.TCPConnector(ssl=self.upstream_ssl if self.upstream_ssl is not None else True)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return self._url

    def write_kubeconfig(self, path: str | Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "proxied", "cluster": {"server": self.url}}],
            "users": [{"name": "proxied", "user": {"token": self.token} if self.token else {}}],
            "contexts": [{"name": "proxied", "context": {"cluster": "proxied", "user": "proxied"}}],
            "current-context": "proxied",
        }
        target = Path(path)
        target.write_text(yaml.safe_dump(config))
        target.chmod(0o600)
        return target

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def inject(self, kind: str, path: str = "", **kw: Any) -> Fault:
        return self.add(Fault(kind, path, **kw))

    def clear(self) -> None:
        self.faults.clear()
        self.outage = False

    async def wait_hit(self, fault: Fault, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``fault`` answered ``count`` requests."""
        async with asyncio.timeout(timeout):
            while fault.hits < count:
                self._changed.clear()
                await self._changed.wait()

    # -- answering -----------------------------------------------------------------------------------

    def _take(self, method: str, path: str, watch: bool) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path, watch):
                if fault.remaining is not None:
                    fault.remaining -= 1
                fault.hits += 1
                self._changed.set()
                return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        watch = request.query.get("watch") in ("true", "1")
        if self.outage:
            return self._reset(request, "outage")
        fault = self._take(request.method, request.path, watch)
        kind = fault.kind if fault else ""
        self.answered[kind] += 1
        if fault is None:
            return await self._forward(request, watch)
        if kind in CANNED:
            status, content_type, body = CANNED[kind]
            return web.Response(status=status, body=body, content_type=content_type)
        if kind in STATUS:
            code, reason = STATUS[kind]
            headers = {"Retry-After": "1"} if code == 429 else None
            return web.json_response(_status(code, reason), status=code, headers=headers)
        if kind == "reset":
            return self._reset(request, kind)
        if kind == "slow":
            await asyncio.sleep(fault.delay)
            return await self._forward(request, watch)
        if kind in WATCH:
            return await self._broken_watch(request, kind)
        return await self._forward(request, watch, mutate=kind)

    @staticmethod
    def _reset(request: web.Request, why: str) -> web.Response:
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=503, text=why)  # never delivered

    async def _upstream(self, request: web.Request, drop_selector: bool = False) -> aiohttp.ClientResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        body = await request.read() if request.can_read_body else None
        url = request.rel_url
        if drop_selector:
            url = url.with_query({k: v for k, v in url.query.items() if k != "fieldSelector"})
        return await self._session.request(
            request.method,
            self.upstream + str(url),
            headers=headers,
            data=body,
            allow_redirects=False,
        )

    async def _forward(self, request: web.Request, watch: bool, mutate: str = "") -> web.StreamResponse:
        async with await self._upstream(request, drop_selector=mutate == "ignore-selector") as answer:
            if watch and answer.status == 200:
                return await self._stream(request, answer)
            raw = await answer.read()
            content_type = answer.content_type
            if mutate == "truncated" and len(raw) > 1:
                return await self._truncated(request, answer.status, content_type, raw)
            if mutate and mutate != "ignore-selector" and answer.status < 300:
                raw = _mutated(raw, mutate)
            return web.Response(status=answer.status, body=raw, content_type=content_type)

    async def _stream(self, request: web.Request, answer: aiohttp.ClientResponse) -> web.StreamResponse:
        out = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await out.prepare(request)
        async for line in answer.content:
            if self.outage:
                return self._reset(request, "outage")
            await out.write(line)
        await out.write_eof()
        return out

    async def _broken_watch(self, request: web.Request, kind: str) -> web.StreamResponse:
        out = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await out.prepare(request)
        lines = {
            "watch-garbage": b"<html>proxy error</html>\n",
            "watch-error-410": json.dumps(
                {"type": "ERROR", "object": _status(410, "Expired", "too old resource version")}
            ).encode()
            + b"\n",
            "watch-error-500": json.dumps({"type": "ERROR", "object": _status(500, "InternalError")}).encode()
            + b"\n",
            "watch-bad-event": b'{"type": "MODIFIED", "object": "not an object"}\n',
            "watch-end": b"",
        }
        if lines[kind]:
            await out.write(lines[kind])
        await out.write_eof()
        return out

    async def _truncated(
        self, request: web.Request, status: int, content_type: str, raw: bytes
    ) -> web.StreamResponse:
        out = web.StreamResponse(status=status, headers={"Content-Type": content_type})
        out.content_length = len(raw)
        await out.prepare(request)
        await out.write(raw[: len(raw) // 2])
        return self._reset(request, "truncated")


def _status(code: int, reason: str, message: str = "") -> JSON:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message or f"injected {reason}",
        "reason": reason,
        "code": code,
    }


def _mutated(raw: bytes, how: str) -> bytes:
    try:
        obj = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(obj, dict):
        return raw
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    if how == "other-object":
        obj["metadata"] = {**meta, "name": "someone-else", "uid": "00000000-0000-0000-0000-000000000000"}
        if isinstance(obj.get("items"), list):
            obj["items"] = [{"metadata": {}}, *obj["items"]]
    elif how == "wrong-kind":
        obj["kind"] = "Pod"
    elif how == "no-metadata":
        obj.pop("metadata", None)
    return json.dumps(obj).encode()


@contextlib.asynccontextmanager
async def running(upstream: str) -> Any:
    """``async with running(url) as proxy:`` -- a started proxy, stopped at the end."""
    proxy = FaultProxy(upstream)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
