"""The DRA gRPC servicers (v1 and v1beta1): translate protobuf <-> :mod:`driver.state.api` and log.

Both API versions carry identical messages (v1 adds ``Device.share_id``), so one class serves both,
parameterised by the generated module. All decisions live in :class:`~driver.plugin.node_service.NodeService`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any, Protocol

import grpc

from driver.log import bind, get_logger, new_request_id
from driver.plugin.node_service import ClaimCheckError, NodeService
from driver.state.api import ClaimRef, PrepareResult
from driver.state.claimstatus import held_until_answered

log = get_logger(__name__)


class OperationMetrics(Protocol):
    """Driver operation metrics: calls in flight, and each answered call's result and duration."""

    def in_flight(self, operation: str) -> AbstractContextManager[None]: ...

    def observe(self, operation: str, result: str, seconds: float) -> None: ...


class DraServicer:
    def __init__(
        self,
        node: NodeService,
        pb: ModuleType,
        api_version: str,
        metrics: OperationMetrics | None = None,
    ) -> None:
        self._node = node
        self._pb = pb
        self._api_version = api_version
        self._metrics = metrics
        self._has_share_id = "share_id" in pb.Device.DESCRIPTOR.fields_by_name

    async def NodePrepareResources(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        refs = [ClaimRef(c.namespace, c.uid, c.name) for c in request.claims]
        with (
            bind(request_id=new_request_id(), rpc="NodePrepareResources", api=self._api_version),
            self._in_flight("prepare"),
            held_until_answered() as release_status_writes,
        ):
            # The claims' status PATCHes wait until the kubelet has its answer (also after an abort).
            context.add_done_callback(lambda _: release_status_writes())
            started = time.monotonic()
            _requested("prepare", refs)
            try:
                results = await self._node.prepare(refs)
            except asyncio.CancelledError:
                self._abandoned("prepare", refs, started)
                raise
            except ClaimCheckError as err:
                self._observe("prepare", "error", started)
                log.warning("prepare rejected", error=str(err))
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
            except Exception as err:
                self._observe("prepare", "error", started)
                log.exception("prepare failed")
                await context.abort(grpc.StatusCode.INTERNAL, f"prepare failed: {err}")
            self._answered("prepare", refs, [r.error for r in results.values()], started)
            return self._prepare_response(results)

    async def NodeUnprepareResources(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        refs = [ClaimRef(c.namespace, c.uid, c.name) for c in request.claims]
        with (
            bind(request_id=new_request_id(), rpc="NodeUnprepareResources", api=self._api_version),
            self._in_flight("unprepare"),
        ):
            started = time.monotonic()
            _requested("unprepare", refs)
            try:
                errors = await self._node.unprepare(refs)
            except asyncio.CancelledError:
                self._abandoned("unprepare", refs, started)
                raise
            except Exception as err:
                self._observe("unprepare", "error", started)
                log.exception("unprepare failed")
                await context.abort(grpc.StatusCode.INTERNAL, f"unprepare failed: {err}")
            self._answered("unprepare", refs, list(errors.values()), started)
            response = self._pb.NodeUnprepareResourcesResponse()
            for uid, error in errors.items():
                response.claims[uid].error = error
            return response

    def _prepare_response(self, results: dict[str, PrepareResult]) -> Any:
        response = self._pb.NodePrepareResourcesResponse()
        for uid, result in results.items():
            entry = response.claims[uid]
            if result.error:
                entry.error = result.error
                log.warning("claim not prepared", claim_uid=uid, error=result.error)
                continue
            for device in result.devices:
                out = entry.devices.add(
                    request_names=list(device.request_names),
                    pool_name=device.pool_name,
                    device_name=device.device_name,
                    cdi_device_ids=list(device.cdi_device_ids),
                )
                if device.share_id is not None and self._has_share_id:
                    out.share_id = device.share_id
        return response

    def _answered(self, operation: str, refs: list[ClaimRef], errors: list[str], started: float) -> None:
        """Count the answered call and log its one line at info: claims, failures, duration."""
        failed = sum(1 for e in errors if e)
        self._observe(operation, "error" if failed else "success", started)
        log.info(
            f"{operation} answered",
            claims=len(errors),
            failed=failed,
            ms=_ms(started),
            claim_refs=_describe(refs),
        )

    def _abandoned(self, operation: str, refs: list[ClaimRef], started: float) -> None:
        """The caller cancelled the call (the kubelet's deadline, the server stopping) before its answer: its
        one info line, counted as an error. Node-state work already under way finishes (driver.state.lock)."""
        self._observe(operation, "error", started)
        log.info(f"{operation} abandoned", claims=len(refs), ms=_ms(started), claim_refs=_describe(refs))

    def _in_flight(self, operation: str) -> AbstractContextManager[None]:
        return self._metrics.in_flight(operation) if self._metrics else contextlib.nullcontext()

    def _observe(self, operation: str, result: str, started: float) -> None:
        if self._metrics is not None:
            self._metrics.observe(operation, result, time.monotonic() - started)


def _requested(operation: str, refs: list[ClaimRef]) -> None:
    """The arrival of a call, at debug level only (its answered line names the claims)."""
    if log.is_debug():
        log.debug(f"{operation} requested", claim_refs=_describe(refs))


def _describe(refs: list[ClaimRef]) -> str:
    return ",".join(f"{r.namespace}/{r.name}:{r.uid}" for r in refs) or "-"


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
