"""The sandbox API server against a real kube-apiserver: the same writes, the same answers.

- Upstream's validation scenarios (tests/fixtures/upstream-cases/validation.json, verdicts of 1.36.2's code)
  sent to the real server: it agrees with every recorded verdict except the scenarios docs/sandbox-apiserver.md
  lists as changed since, and on those it answers as the sandbox does.
- A differential test: generated and mutated objects (tests/support/apigen.py: boundary lengths, counts,
  names, quantities, selectors, CEL, int64 range, times, updates) sent to both servers, compared on the HTTP
  code, the Status reason, the causes (type and field path) and the stored form.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from driver.kube.client import NAMESPACES
from driver.sim.apiserver import SimApiServer
from tests.support import apicases, apigen
from tests.support.realk8s import Cluster

pytestmark = pytest.mark.realk8s

DATA = apicases.load()
LISTED = apicases.listed_differences()
NAMESPACES_USED = {
    **DATA["meta"]["namespaces"],
    apigen.NAMESPACE: {},
    apigen.ADMIN_NAMESPACE: {"resource.kubernetes.io/admin-access": "true"},
}


class Servers:
    def __init__(self, real: apicases.Send, sandbox: apicases.Send) -> None:
        self.real = real
        self.sandbox = sandbox


@pytest.fixture
async def servers(realk8s: Cluster) -> AsyncIterator[Servers]:
    async with (
        SimApiServer() as sim,
        apicases.http_sender(sim.url) as sandbox,
        apicases.http_sender(realk8s.server, realk8s.admin_context()) as real,
    ):
        for name, labels in NAMESPACES_USED.items():
            if name == "default":
                continue
            sim.create(NAMESPACES, {"metadata": {"name": name, "labels": labels}})
            code, _ = await real("GET", f"/api/v1/namespaces/{name}", {})
            if code == 404:
                await real("POST", "/api/v1/namespaces", {"metadata": {"name": name, "labels": labels}})
        yield Servers(real, sandbox)


async def answer(case: apicases.JSON, send: apicases.Send) -> apicases.Answer:
    got = await apicases.run_case(case, send)
    await apicases.remove_objects(case, send, got.created)
    return got


async def test_the_real_server_gives_the_recorded_verdicts_except_where_1_37_changed_them(
    servers: Servers,
) -> None:
    disagreements = {}
    for case in DATA["cases"]:
        real = await answer(case, servers.real)
        if case["id"] in LISTED:
            sandbox = await answer(case, servers.sandbox)
            assert apicases.compare(case, real), f"{case['id']}: the real server gives the recorded verdict"
            assert apicases.compare_answers(sandbox, real) == [], (
                f"{case['id']}: listed, yet not as the real server"
            )
        elif differences := apicases.compare(case, real):
            disagreements[case["id"]] = differences
    assert disagreements == {}


async def test_generated_objects_get_the_same_answers_from_both_servers(servers: Servers) -> None:
    cases = apigen.scenarios()
    differences = {}
    for case in cases:
        real = await answer(case, servers.real)
        sandbox = await answer(case, servers.sandbox)
        if found := apicases.compare_answers(sandbox, real):
            differences[case["id"]] = found
    assert len(cases) > 400
    assert differences == {}
