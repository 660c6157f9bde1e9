"""What KubeClient puts on the wire."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from driver.kube.client import RESOURCE_CLAIMS, KubeClient
from driver.kube.connection import Connection


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[bytes]]]:
    bodies: list[bytes] = []

    async def record(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        # A well-formed answer: the client refuses anything that is not the object it asked for.
        meta = {"name": "c", "namespace": "ns", "uid": "u-1"}
        return web.json_response(
            {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": meta}
        )

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", bodies
    await runner.cleanup()


async def test_bodies_are_compact_json(recorder: tuple[str, list[bytes]]) -> None:
    """The API server stores a claim's opaque parameters byte for byte and compares those bytes when the
    claim's status is written: parameters created with JSON spacing made every later status patch of the
    allocated claim fail with 422 "status.allocation: field cannot be modified once set" (Kubernetes
    1.37), since the server re-encodes them compactly. Go clients send compact JSON; so does this one."""
    server, bodies = recorder
    claim = {
        "metadata": {"name": "c", "namespace": "ns"},
        "spec": {"devices": {"config": [{"opaque": {"driver": "d", "parameters": {"a": 1, "b": [1, 2]}}}]}},
    }
    async with KubeClient(Connection(server, ssl=False)) as kube:
        await kube.create(RESOURCE_CLAIMS, claim, "ns")
        await kube.patch(RESOURCE_CLAIMS, "c", {"status": {"devices": []}}, "ns", subresource="status")
    sent = [json.loads(b) for b in bodies]
    assert bodies == [json.dumps(body, separators=(",", ":")).encode() for body in sent]
    assert sent[0]["spec"] == claim["spec"]
