"""A prepare or unprepare whose gRPC call is cancelled (kubelet deadline, server shutdown) keeps the node
lock until its worker thread has finished: no second claim, and no other plugin instance, can touch the
node state meanwhile. grpc.aio cancels the handler coroutine in both cases; the tests cancel it the same way.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driver.devices.model import Device
from driver.plugin.node_service import NodeService
from driver.state.api import Claim
from driver.state.sharing import Outcome
from tests.support.locks import lock_is_free
from tests.unit.state.test_prepare import GPU0, Node, claim, ref, sharing


class BlockingSlicer:
    """Setting a time slice takes as long as the test wants (nvidia-smi may take up to 30 s per GPU)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[tuple[str, str]] = []

    def apply(self, device: Device, interval: str) -> Outcome:
        self.calls.append((device.name, interval))
        self.entered.set()
        self.release.wait(timeout=60)  # a safety net for a failing test, never reached when it passes
        return Outcome(True)


class Claims:
    def __init__(self, *claims: dict[str, Any]) -> None:
        self.by_name = {c["metadata"]["name"]: c for c in claims}

    async def get_claim(self, namespace: str, name: str) -> Claim:
        return self.by_name[name]


@pytest.fixture
def slicer() -> Iterator[BlockingSlicer]:
    blocking = BlockingSlicer()
    yield blocking
    blocking.release.set()  # never leave a worker thread blocked behind a failed test


@pytest.fixture
def node(tmp_path: Path, slicer: BlockingSlicer) -> Node:
    return Node(tmp_path, slicer=slicer)  # type: ignore[arg-type]


async def cancel_while_in_thread(task: asyncio.Task[Any], slicer: BlockingSlicer) -> None:
    await asyncio.to_thread(slicer.entered.wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancelled_prepare_holds_the_lock_until_its_thread_is_done(
    node: Node, slicer: BlockingSlicer
) -> None:
    a = claim("aaaa", GPU0, config=sharing("Long"))
    b = claim("bbbb", GPU0)
    preparer = node.preparer()
    service = NodeService(Claims(a, b), preparer, preparer.lock, "gpu.accel-dra.dev")

    first = asyncio.create_task(service.prepare([ref(a)]))
    await cancel_while_in_thread(first, slicer)
    # The kubelet has given up on A, but A's thread is still preparing GPU0.
    assert not lock_is_free(preparer.lock.path), "node lock released while a prepare thread still runs"

    second = asyncio.create_task(service.prepare([ref(b)]))
    slicer.release.set()
    answer = await second
    await preparer.lock.wait_idle()

    # B waited for A, so the overlap guard saw A's completed entry: GPU0 went to one claim only.
    assert "is already prepared for claim default/claim-aaaa (aaaa)" in answer["bbbb"].error
    assert node.records() == {"aaaa": "PrepareCompleted"}
    assert list(node.specs()) == ["aaaa"]
    assert lock_is_free(preparer.lock.path)


async def test_a_cancelled_unprepare_holds_the_lock_until_its_thread_is_done(
    node: Node, slicer: BlockingSlicer
) -> None:
    a = claim("aaaa", GPU0, config=sharing("Long"))
    preparer = node.preparer()
    service = NodeService(Claims(a), preparer, preparer.lock, "gpu.accel-dra.dev")
    slicer.release.set()
    assert not (await service.prepare([ref(a)]))["aaaa"].error
    slicer.entered.clear()
    slicer.release.clear()

    task = asyncio.create_task(service.unprepare([ref(a)]))
    await cancel_while_in_thread(task, slicer)  # blocked resetting the time slice
    assert not lock_is_free(preparer.lock.path), "node lock released while an unprepare thread still runs"

    slicer.release.set()
    await preparer.lock.wait_idle()
    # The work the kubelet gave up on was finished, not torn: the retry will find nothing left to do.
    assert node.records() == {}
    assert node.specs() == {}
    assert slicer.calls == [(GPU0, "Long"), (GPU0, "Default")]
    assert lock_is_free(preparer.lock.path)
