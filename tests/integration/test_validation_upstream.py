"""The sandbox API server against kube-apiserver's own verdicts on upstream's validation scenarios.

tests/fixtures/upstream-cases/validation.json holds 274 scenarios from Kubernetes' own validation tests,
each with what kube-apiserver 1.36.2's decode, defaulting, strategy and validation code answered: the HTTP
code, the error causes (type and field) and the stored form. Every scenario must agree, except those listed
in docs/sandbox-apiserver.md (with the reason, e.g. a rule Kubernetes 1.37 changed); a listed scenario that
starts to agree fails too, so that the list stays true.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from driver.kube.client import NAMESPACES
from driver.sim.apiserver import SimApiServer
from tests.support import apicases

DATA = apicases.load()
CASES = {case["id"]: case for case in DATA["cases"]}
LISTED = apicases.listed_differences()


@pytest.fixture(scope="module")
async def sim() -> AsyncIterator[SimApiServer]:
    async with SimApiServer() as server:
        yield server


async def fresh_namespace(server: SimApiServer) -> None:
    for name, labels in DATA["meta"]["namespaces"].items():
        if name not in ("default",):
            server.create(NAMESPACES, {"metadata": {"name": name, "labels": labels}})


def sender(session: aiohttp.ClientSession) -> apicases.Send:
    async def send(method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        async with session.request(
            method, path, data=json.dumps(body, separators=(",", ":"), ensure_ascii=False), headers=headers
        ) as response:
            return response.status, await response.json()

    return send


@pytest.mark.parametrize("case_id", sorted(CASES))
async def test_upstream_scenario(case_id: str) -> None:
    case = CASES[case_id]
    async with SimApiServer() as server, aiohttp.ClientSession(server.url) as session:
        await fresh_namespace(server)
        got = await apicases.run_case(case, sender(session))
    differences = apicases.compare(case, got)
    if case_id in LISTED:
        assert differences, f"{case_id} now agrees: remove it from docs/sandbox-apiserver.md"
        return
    assert not differences, "\n".join(differences)


def test_listed_scenarios_exist() -> None:
    assert set(LISTED) <= set(CASES)
