"""A DRA call the kubelet gives up on (its deadline, or the server stopping) while it waits -- on the claim GET,
or on the node lock another call holds -- logs one info line and counts in the metrics, like an answered
call. grpc.aio cancels the handler coroutine; the tests cancel it the same way."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from driver._proto.dra.v1 import api_pb2
from driver.plugin.metrics import PluginMetrics
from driver.plugin.service import DraServicer
from driver.state.api import ClaimRef


class Waiting:
    """A node service whose calls wait for ever (a claim GET that hangs, a node lock held elsewhere)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def _wait(self, refs: list[ClaimRef]) -> Any:
        self.entered.set()
        await asyncio.Event().wait()

    prepare = unprepare = _wait


class Context:
    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        pass

    async def abort(self, code: Any, message: str) -> None:
        raise AssertionError(f"aborted: {message}")


def sample(metrics: PluginMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


@pytest.mark.parametrize(
    ("operation", "rpc", "request_type"),
    [
        ("prepare", "NodePrepareResources", api_pb2.NodePrepareResourcesRequest),
        ("unprepare", "NodeUnprepareResources", api_pb2.NodeUnprepareResourcesRequest),
    ],
)
async def test_an_abandoned_call_logs_one_info_line_and_counts(
    caplog: pytest.LogCaptureFixture, operation: str, rpc: str, request_type: Any
) -> None:
    node, metrics = Waiting(), PluginMetrics()
    servicer = DraServicer(node, api_pb2, "v1", metrics)  # type: ignore[arg-type]
    request = request_type(claims=[api_pb2.Claim(namespace="default", name="c1", uid="u-1")])
    with caplog.at_level(logging.INFO, "driver.plugin.service"):
        call = asyncio.create_task(getattr(servicer, rpc)(request, Context()))
        await node.entered.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    (record,) = [r for r in caplog.records if r.levelno >= logging.INFO]
    fields = record.fields  # type: ignore[attr-defined]
    assert record.getMessage() == f"{operation} abandoned"
    assert fields["claim_refs"] == "default/c1:u-1"
    assert fields["rpc"] == rpc and fields["request_id"]
    assert fields["ms"] >= 0
    assert sample(metrics, "accel_dra_plugin_requests_total", operation=operation, result="error") == 1
    assert sample(metrics, "accel_dra_plugin_request_duration_seconds_count", operation=operation) == 1
    assert sample(metrics, "accel_dra_plugin_requests_in_flight", operation=operation) == 0
