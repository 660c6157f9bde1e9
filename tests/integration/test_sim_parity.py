"""Sim parity: every scenario of tests/support/parity.py, run against the sandbox, shows a user what the real
Kubernetes 1.37 components show (tests/fixtures/parity/expected.json, which the real-cluster tier checks
against the real components: tests/realk8s/test_parity.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from driver.sim.sandbox import Sandbox, SandboxConfig
from tests.support import parity

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(profile="dgx-h100", exporter=False)) as box:
        yield box


@pytest.mark.parametrize("name", list(parity.SCENARIOS))
async def test_the_sandbox_answers_as_kubernetes_does(sandbox: Sandbox, name: str) -> None:
    assert sandbox.kube is not None
    target = parity.Target("sandbox", sandbox.kube, [sandbox.config.node_name], parity.create_all)
    namespace = f"parity-{name}"
    try:
        observed = parity.comparable(await parity.SCENARIOS[name](target, namespace))
    finally:
        await parity.cleanup(sandbox.kube, namespace)
    assert observed == parity.expected(name)
