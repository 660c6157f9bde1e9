"""The client's central retries (driver.kube.retry), against a real HTTP server on loopback and a fake clock.

What is retried is what cannot have taken effect (429, a Retry-After, a connection never opened) or what is
harmless to repeat (a read); the server's Retry-After is never cut short, and one longer than the policy's
longest wait is handed to the caller instead of being slept through.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from driver.kube.client import NODES, RESOURCE_SLICES, ApiError, KubeClient
from driver.kube.connection import Connection
from driver.kube.retry import Backoff, RetryPolicy
from tests.support.loopback import http_server

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "uid": "u-1"}}
SLICE = {
    "apiVersion": "resource.k8s.io/v1",
    "kind": "ResourceSlice",
    "metadata": {"name": "s1", "uid": "u-2"},
}


@dataclass
class FakeClock:
    waits: list[float] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


@dataclass
class Answer:
    status: int
    body: dict[str, object] | None = None
    retry_after: str | None = None
    cut: bool = False  # close the connection instead of answering


@dataclass
class Server:
    script: list[Answer] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.method)
        answer = self.script.pop(0)
        if answer.cut:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never delivered
        headers = {"Retry-After": answer.retry_after} if answer.retry_after is not None else {}
        body = answer.body or {"kind": "Status", "apiVersion": "v1", "code": answer.status, "message": "x"}
        return web.Response(
            status=answer.status, text=json.dumps(body), content_type="application/json", headers=headers
        )


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    async with http_server(state.handle) as state.url:
        yield state


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def policy(clock: FakeClock, **kw: float) -> RetryPolicy:
    return RetryPolicy(backoff=Backoff(base=0.2, cap=5.0), sleep=clock.sleep, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def kube(server: Server, clock: FakeClock) -> AsyncIterator[KubeClient]:
    client = KubeClient(Connection(server=server.url), retry=policy(clock))
    yield client
    await client.close()


async def test_too_many_requests_waits_what_the_server_asked_then_succeeds(
    server: Server, kube: KubeClient, clock: FakeClock
) -> None:
    server.script = [Answer(429, retry_after="3"), Answer(429, retry_after="1"), Answer(200, NODE)]
    assert (await kube.get(NODES, "n1"))["metadata"]["uid"] == "u-1"
    assert clock.waits == [3.0, 1.0]
    assert server.seen == ["GET"] * 3


async def test_a_write_refused_with_429_is_retried_too(
    server: Server, kube: KubeClient, clock: FakeClock
) -> None:
    server.script = [Answer(429), Answer(201, SLICE)]
    await kube.create(RESOURCE_SLICES, {"metadata": {"name": "s1"}})
    assert clock.waits == [0.2]  # no Retry-After: the backoff
    assert server.seen == ["POST", "POST"]


async def test_a_read_is_retried_on_server_errors_with_growing_waits_then_fails(
    server: Server, kube: KubeClient, clock: FakeClock
) -> None:
    server.script = [Answer(500), Answer(503), Answer(502), Answer(500)]
    with pytest.raises(ApiError) as raised:
        await kube.get(NODES, "n1")
    assert raised.value.status == 500
    assert clock.waits == [0.2, 0.4, 0.8]
    assert len(server.seen) == 4


async def test_a_write_is_not_repeated_after_an_ambiguous_server_error(
    server: Server, kube: KubeClient, clock: FakeClock
) -> None:
    """A POST that got a 503 may have created its object (generateName): the caller re-reads first."""
    server.script = [Answer(503)]
    with pytest.raises(ApiError, match="503"):
        await kube.create(RESOURCE_SLICES, {"metadata": {"generateName": "n1-"}})
    assert server.seen == ["POST"] and clock.waits == []


async def test_a_write_is_retried_when_the_server_error_says_retry_after(
    server: Server, kube: KubeClient, clock: FakeClock
) -> None:
    server.script = [Answer(503, retry_after="2"), Answer(201, SLICE)]
    await kube.create(RESOURCE_SLICES, {"metadata": {"name": "s1"}})
    assert clock.waits == [2.0]


async def test_a_retry_after_beyond_the_longest_wait_goes_to_the_caller(
    server: Server, kube: KubeClient, clock: FakeClock
) -> None:
    server.script = [Answer(429, retry_after="60")]
    with pytest.raises(ApiError) as raised:
        await kube.get(NODES, "n1")
    assert raised.value.retry_after == 60.0
    assert clock.waits == [] and len(server.seen) == 1


async def test_client_errors_are_never_retried(server: Server, kube: KubeClient, clock: FakeClock) -> None:
    server.script = [Answer(409)]
    with pytest.raises(ApiError) as raised:
        await kube.update(RESOURCE_SLICES, SLICE)
    assert raised.value.conflict and clock.waits == []


async def test_a_cut_answer_is_retried_for_reads_only(
    server: Server, kube: KubeClient, clock: FakeClock
) -> None:
    # aiohttp itself sends an idempotent request once more on a cut connection (RFC 9112 9.3.1); the
    # policy's retry comes after that.
    server.script = [Answer(0, cut=True), Answer(0, cut=True), Answer(200, NODE)]
    await kube.get(NODES, "n1")
    assert clock.waits == [0.2] and server.seen == ["GET"] * 3
    server.script = [Answer(0, cut=True)]
    with pytest.raises(aiohttp.ClientError):
        await kube.create(RESOURCE_SLICES, {"metadata": {"name": "s1"}})
    assert clock.waits == [0.2] and server.seen[3:] == ["POST"]


async def test_a_connection_that_cannot_be_opened_is_retried_for_every_verb(clock: FakeClock) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with KubeClient(Connection(server=f"http://127.0.0.1:{port}"), retry=policy(clock)) as kube:
        with pytest.raises(aiohttp.ClientConnectorError):
            await kube.create(RESOURCE_SLICES, {"metadata": {"name": "s1"}})
    assert clock.waits == [0.2, 0.4, 0.8]


def test_backoff_is_capped_and_jitter_only_stretches_it() -> None:
    plain = Backoff(base=0.2, cap=5.0)
    assert [plain.delay(n) for n in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    jittered = Backoff(base=1.0, cap=30.0, jitter=0.5)
    delays = [jittered.delay(2) for _ in range(50)]
    assert all(4.0 <= d <= 6.0 for d in delays) and len(set(delays)) > 1
    assert Backoff(base=1.0, cap=30.0, jitter=0.5).delay(10) == 30.0
