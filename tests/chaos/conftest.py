"""The chaos suite's seed, size and tally.

- ``CHAOS_SEED``: replay a run (every test derives its own random generator from the seed and its own name,
  so one test replays alone too). Without it a seed is drawn and printed.
- ``CHAOS_SCALE``: multiplies every test's number of cases (default 1: the few-minute run of ``make test``;
  ``make chaos CHAOS_SCALE=40`` is a long run, over 20,000 cases).
- ``CHAOS_REPORT``: a JSON file to write the tally to (cases per test, seconds, seed).

A failing case says which seed and test replay it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from driver.kube.client import KubeClient
from driver.sim.apiserver import SimApiServer
from tests.chaos.harness import DYNAMIC_MIG, ChaosNode
from tests.integration.conftest import apiserver

__all__ = ["apiserver"]  # the fixture, shared with the integration tests
from tests.support.faultproxy import FaultProxy

SEED = int(os.environ.get("CHAOS_SEED") or secrets.randbelow(2**32))
SCALE = float(os.environ.get("CHAOS_SCALE") or 1.0)


@dataclass
class Tally:
    cases: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    findings: dict[str, str] = field(default_factory=dict)


TALLY = Tally()


@dataclass
class Chaos:
    """One test's random generator and case counter."""

    test: str
    rng: random.Random
    cases: int = 0

    def count(self, base: int) -> int:
        """How many cases to run: ``base`` at scale 1."""
        return max(1, round(base * SCALE))

    def case(self) -> None:
        self.cases += 1


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"chaos: seed {SEED} (replay with CHAOS_SEED={SEED}), scale {SCALE:g}"]


@pytest.fixture
def chaos(request: pytest.FixtureRequest) -> Iterator[Chaos]:
    name = request.node.nodeid
    digest = hashlib.sha256(f"{SEED}:{name}".encode()).digest()
    state = Chaos(name, random.Random(int.from_bytes(digest[:8], "big")))
    started = time.monotonic()
    yield state
    TALLY.cases[name] = TALLY.cases.get(name, 0) + state.cases
    TALLY.seconds[name] = TALLY.seconds.get(name, 0.0) + time.monotonic() - started
    write_report()  # after every test, so a long run that is cut short still has its figures


def write_report() -> None:
    report = os.environ.get("CHAOS_REPORT")
    if not report:
        return
    document = {
        "seed": SEED,
        "scale": SCALE,
        "cases": TALLY.cases,
        "seconds": {k: round(v, 1) for k, v in TALLY.seconds.items()},
        "total_cases": sum(TALLY.cases.values()),
        "findings": TALLY.findings,
    }
    Path(report).write_text(json.dumps(document, indent=1) + "\n")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if report.when == "call" and report.failed and "chaos" in getattr(item, "fixturenames", ()):
        replay = f"CHAOS_SEED={SEED} make chaos PYTEST_ARGS='-k \"{item.name}\"'"
        report.sections.append(("chaos replay", replay))
        TALLY.findings[item.nodeid] = replay
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY.cases:
        return
    total = sum(TALLY.cases.values())
    seconds = sum(TALLY.seconds.values())
    terminalreporter.write_sep("-", f"chaos: {total} cases in {seconds:.0f} s, seed {SEED}, scale {SCALE:g}")
    for name, cases in sorted(TALLY.cases.items()):
        terminalreporter.write_line(f"{cases:7d}  {TALLY.seconds[name]:7.1f} s  {name}")
    write_report()


@pytest.fixture
def node_root() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes: stay clear of pytest's long tmp paths. Traversable by
    # other users, so only the plugin's own modes protect its files (the permission cases check them).
    with tempfile.TemporaryDirectory(prefix="adra-chaos-", dir="/tmp") as root:
        os.chmod(root, 0o755)
        yield Path(root)


@pytest.fixture
async def kube(apiserver: SimApiServer, node_root: Path) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(str(apiserver.write_kubeconfig(node_root / "direct-kubeconfig")))
    yield client
    await client.close()


@pytest.fixture
async def node(apiserver: SimApiServer, kube: KubeClient, node_root: Path) -> AsyncIterator[ChaosNode]:
    """A node whose plugin talks to the API server directly."""
    state = ChaosNode(node_root / "node", apiserver, kube, None)
    await state.register_node()
    yield state
    await state.kill()


@pytest.fixture
async def proxied_node(
    apiserver: SimApiServer, kube: KubeClient, node_root: Path
) -> AsyncIterator[ChaosNode]:
    """A node whose plugin reaches the API server through the fault proxy."""
    async with FaultProxy(apiserver.url) as proxy:
        state = ChaosNode(node_root / "node", apiserver, kube, proxy)
        await state.register_node()
        yield state
        await state.kill()


@pytest.fixture
async def mig_node(apiserver: SimApiServer, kube: KubeClient, node_root: Path) -> AsyncIterator[ChaosNode]:
    """A node whose plugin serves an A100 in dynamic MIG mode (instances under the fake state directory)."""
    state = ChaosNode(node_root / "node", apiserver, kube, None, DYNAMIC_MIG)
    await state.register_node()
    yield state
    await state.kill()
