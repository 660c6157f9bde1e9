"""Sim parity, the real side: every scenario of tests/support/parity.py against the real cluster shows what
tests/fixtures/parity/expected.json records -- the observations the sandbox is held to
(tests/integration/test_sim_parity.py). A change of the real components' answers fails here first.

Both nodes are in service (the counts in the scheduler's messages are normalised, not its reasons).
"""

from __future__ import annotations

import pytest

from driver.kube.client import KubeClient
from tests.support import parity
from tests.support.realk8s import Cluster
from tests.support.realk8s_driver import Driver, apply_manifest, delete_namespace

pytestmark = pytest.mark.realk8s


@pytest.mark.parametrize("name", list(parity.SCENARIOS))
async def test_kubernetes_answers_as_recorded(
    realk8s: Cluster, accel_dra: Driver, node2_in_service: str, name: str
) -> None:
    namespace = f"parity-{name}"
    async with await KubeClient.connect(str(realk8s.kubeconfig)) as kube:
        target = parity.Target("real", kube, list(realk8s.nodes), apply_manifest)
        try:
            observed = parity.comparable(await parity.SCENARIOS[name](target, namespace))
        finally:
            await delete_namespace(kube, namespace)
    assert observed == parity.expected(name)
