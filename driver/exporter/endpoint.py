"""A small aiohttp server for ``/metrics`` and ``/healthz`` (used by the exporter and the kubelet plugin)."""

from __future__ import annotations

import re
from collections.abc import Callable

from aiohttp import web

from driver.log import get_logger

log = get_logger(__name__)

Render = Callable[[str], tuple[bytes, str]]
"""``render(accept_header) -> (body, content_type)``."""

_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:]*)):(?P<port>\d{1,5})$")


def parse_listen(listen: str) -> tuple[str | None, int]:
    """``:9400`` -> (all interfaces, 9400); ``127.0.0.1:0``; ``[::1]:9400``. Raises ``ValueError``."""
    match = _LISTEN_RE.match(listen.strip())
    if not match or int(match["port"]) > 65535:
        raise ValueError(f"listen address {listen!r} must be HOST:PORT, :PORT or [IPv6]:PORT")
    host = match["v6"] or match["host"] or None
    return host, int(match["port"])


class MetricsServer:
    """Serves ``GET /metrics`` (content negotiation done by ``render``) and ``GET /healthz``."""

    def __init__(self, render: Render, healthy: Callable[[], bool] = lambda: True) -> None:
        self._render = render
        self._healthy = healthy
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, listen: str) -> None:
        host, port = parse_listen(listen)
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host=host, port=port, reuse_address=True)
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        log.info("metrics server listening", listen=listen, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self._render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, _request: web.Request) -> web.Response:
        if self._healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="sampling stalled\n")
