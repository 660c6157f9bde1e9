"""The client turns every answer that is not what the request must get into an ApiError naming the object.

A tiny HTTP server on loopback answers each request with a canned response, as a broken API server, proxy or
load balancer would.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from driver.kube.client import (
    NODES,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
    ApiError,
    KubeClient,
    MalformedAnswerError,
)
from driver.kube.connection import Connection
from driver.kube.retry import NO_RETRY
from tests.support.apierrors import not_found
from tests.support.loopback import http_server

CLAIM = {
    "apiVersion": "resource.k8s.io/v1",
    "kind": "ResourceClaim",
    "metadata": {"name": "gpu", "namespace": "default", "uid": "u-1"},
}


@dataclass
class Canned:
    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    lines: list[bytes] = field(default_factory=list)  # for watches


@dataclass
class Server:
    answer: Canned = field(default_factory=Canned)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") == "true":
            out = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await out.prepare(request)
            for line in self.answer.lines:
                await out.write(line)
            await out.write_eof()
            return out
        return web.Response(
            status=self.answer.status, body=self.answer.body, content_type=self.answer.content_type
        )


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    async with http_server(state.handle) as state.url:
        yield state


@pytest.fixture
async def kube(server: Server) -> AsyncIterator[KubeClient]:
    client = KubeClient(Connection(server=server.url), retry=NO_RETRY)  # one answer per request
    yield client
    await client.close()


def answer(body: Any, status: int = 200, content_type: str = "application/json") -> Canned:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Canned(status, raw, content_type)


@pytest.mark.parametrize(
    ("canned", "problem"),
    [
        (answer(b"<html>502</html>", content_type="text/html"), "answer is text/html, not JSON"),
        (answer(b"{not json"), "answer is not JSON"),
        (answer(b""), "empty answer"),
        (answer([]), "answer is a JSON list, not an object"),
        (answer({}), "answer is None None, not resource.k8s.io/v1 ResourceClaim"),
        (answer({**CLAIM, "kind": "Pod"}), "answer is 'resource.k8s.io/v1' 'Pod'"),
        (answer({**CLAIM, "metadata": "x"}), "answer has no metadata"),
        (
            answer({**CLAIM, "metadata": {**CLAIM["metadata"], "name": "other"}}),
            "answer is the object 'other'",
        ),
        (
            answer({**CLAIM, "metadata": {**CLAIM["metadata"], "namespace": "kube-system"}}),
            "answer is an object in namespace 'kube-system'",
        ),
        (
            answer({**CLAIM, "metadata": {"name": "gpu", "namespace": "default"}}),
            "answer has no metadata.uid",
        ),
    ],
)
async def test_a_get_answer_that_is_not_the_object_is_malformed(
    server: Server, kube: KubeClient, canned: Canned, problem: str
) -> None:
    server.answer = canned
    with pytest.raises(MalformedAnswerError) as failed:
        await kube.get(RESOURCE_CLAIMS, "gpu", "default")
    assert str(failed.value).startswith("GET resourceclaims default/gpu: 200 MalformedAnswer: ")
    assert problem in str(failed.value)
    assert failed.value.kind == "malformed"


async def test_the_object_itself_is_returned(server: Server, kube: KubeClient) -> None:
    server.answer = answer(CLAIM)
    assert await kube.get(RESOURCE_CLAIMS, "gpu", "default") == CLAIM


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSliceList", "metadata": {}, "items": {}},
            "items",
        ),
        (
            {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSliceList", "metadata": {}, "items": [1]},
            "items[0]",
        ),
        ({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {}}, "ResourceSliceList"),
    ],
)
async def test_a_list_answer_that_is_not_a_list_is_malformed(
    server: Server, kube: KubeClient, body: Any, problem: str
) -> None:
    server.answer = answer(body)
    with pytest.raises(MalformedAnswerError, match=r"^LIST resourceslices: 200 MalformedAnswer") as failed:
        await kube.list(RESOURCE_SLICES)
    assert problem in str(failed.value)


async def test_an_error_answer_names_the_object(server: Server, kube: KubeClient) -> None:
    server.answer = answer(b"upstream connect error", status=503, content_type="text/plain")
    with pytest.raises(ApiError, match=r"^GET nodes node-1: 503 Service Unavailable: upstream connect error"):
        await kube.get(NODES, "node-1")


@pytest.mark.parametrize(
    ("canned", "gone"),
    [
        (answer(not_found(RESOURCE_CLAIMS, "gpu").body, status=404), True),
        (answer(not_found(RESOURCE_CLAIMS, "other").body, status=404), False),
        (answer(not_found(NODES, "gpu").body, status=404), False),
        (answer(b"404 page not found\n", status=404, content_type="text/plain"), False),
        (answer({"kind": "Status", "code": 404, "reason": "NotFound", "message": "x"}, status=404), False),
        (answer({**not_found(RESOURCE_CLAIMS, "gpu").body, "reason": "Gone"}, status=404), False),
    ],
    ids=["names-it", "names-another", "another-resource", "page-not-found", "no-details", "other-reason"],
)
async def test_only_a_status_naming_the_object_proves_it_is_gone(
    server: Server, kube: KubeClient, canned: Canned, gone: bool
) -> None:
    server.answer = canned
    with pytest.raises(ApiError) as failed:
        await kube.get(RESOURCE_CLAIMS, "gpu", "default")
    assert failed.value.not_found
    assert failed.value.proves_missing(RESOURCE_CLAIMS, "gpu") is gone


@pytest.mark.parametrize(
    ("line", "error", "problem"),
    [
        (b"<html>proxy error</html>\n", MalformedAnswerError, "watch event is not JSON"),
        (b'{"type": "MODIFIED", "object": "x"}\n', MalformedAnswerError, "not a watch event"),
        (b'{"type": "SURPRISE", "object": {}}\n', MalformedAnswerError, "not a watch event"),
        (b'{"type": "ADDED", "object": {}}\n', MalformedAnswerError, "without object metadata"),
        (
            b'{"type": "ERROR", "object": {"code": 410, "reason": "Expired", "message": "old"}}\n',
            ApiError,
            "410",
        ),
    ],
)
async def test_a_broken_watch_stream_raises_for_a_relist(
    server: Server, kube: KubeClient, line: bytes, error: type[Exception], problem: str
) -> None:
    good = {"type": "ADDED", "object": {"metadata": {"name": "s", "resourceVersion": "5"}}}
    server.answer = Canned(lines=[json.dumps(good).encode() + b"\n", line])
    seen = []
    with pytest.raises(error) as failed:
        async for event in kube.watch(RESOURCE_SLICES, resource_version="1"):
            seen.append(event.type)
    assert seen == ["ADDED"]
    assert str(failed.value).startswith("WATCH resourceslices: ")
    assert problem in str(failed.value)
