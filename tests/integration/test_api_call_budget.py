"""API traffic the plugin's hot paths cause (regressions of docs/performance.md fixes): the claim status
write reuses the claim prepare just read, and the proxy from the environment is resolved once per client
but still honoured."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from driver.kube.client import NAMESPACES, RESOURCE_CLAIMS, KubeClient
from driver.sim.apiserver import SimApiServer
from driver.sim.kubelet import SimKubelet
from driver.state.api import ClaimRef
from tests.integration.conftest import StartPlugin, create_allocated_claim

DRIVER = "gpu.accel-dra.dev"
GPU0 = "gpu-0000-01-00-0"  # fake:pcie-l4x4


async def test_prepare_reads_the_claim_once_and_patches_its_status_once(
    apiserver: SimApiServer, kube: KubeClient, kubelet: SimKubelet, start_plugin: StartPlugin
) -> None:
    await start_plugin()
    await kubelet.wait_registered(DRIVER, timeout=60)
    claim = await create_allocated_claim(
        kube, "budget", [{"request": "gpu", "driver": DRIVER, "pool": "node-1", "device": GPU0}]
    )
    mark = apiserver.request_log.mark()
    meta = claim["metadata"]
    await kubelet.prepare(DRIVER, [ClaimRef(meta["namespace"], meta["uid"], meta["name"])])

    def written(_store: Any) -> bool:
        stored = apiserver.get_object(RESOURCE_CLAIMS, "budget", "default") or {}
        return bool((stored.get("status") or {}).get("devices"))

    await apiserver.wait_for(written, timeout=30)
    calls = [
        f"{r.method} {r.status}"
        for r in apiserver.request_log.since(mark)
        if r.path.startswith("/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/budget")
    ]
    assert calls == ["GET 200", "PATCH 200"]
    stored = apiserver.get_object(RESOURCE_CLAIMS, "budget", "default")
    assert stored is not None
    assert [d["device"] for d in stored["status"]["devices"]] == [GPU0]


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP proxy that answers every request itself and records the URL it was asked for."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        # A well-formed answer (the client rejects anything else), marked so the test sees who answered.
        meta = {"name": "default", "uid": "proxy-uid", "labels": {"answered-by": "proxy"}}
        return web.json_response({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


@pytest.mark.parametrize("bypass", [False, True])
async def test_the_proxy_from_the_environment_is_honoured(
    apiserver: SimApiServer,
    kubeconfig: Path,
    proxy: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    bypass: bool,
) -> None:
    url, seen = proxy
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", url)
    if bypass:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with await KubeClient.connect(str(kubeconfig)) as kube:
        namespace = await kube.get(NAMESPACES, "default")
        second = await kube.get(NAMESPACES, "default")
    by_proxy = [(n["metadata"].get("labels") or {}).get("answered-by") for n in (namespace, second)]
    if bypass:
        assert by_proxy == [None, None] and not seen
    else:
        assert by_proxy == ["proxy", "proxy"]
        assert seen == [f"{apiserver.url}/api/v1/namespaces/default"] * 2
