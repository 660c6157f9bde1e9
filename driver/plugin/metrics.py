"""The kubelet plugin's own metrics: DRA call totals and latency, in-flight calls, prepared devices, slice
writes and API errors (names and labels: ``driver.exporter.names.PLUGIN_METRICS``, docs/metrics.md).

:class:`PluginMetrics` owns a private registry, so several plugins in one process (tests) never share
series. Its methods match the callbacks the plugin already has: ``observe`` is a
:data:`driver.plugin.service.OperationObserver`; ``slice_write`` / ``api_error`` are the ``on_write`` /
``on_error`` callbacks of :class:`driver.resources.publisher.SlicePublisher`. Label values outside the known
sets are folded into ``other`` so a bug can never explode cardinality.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder

from driver import __version__
from driver.exporter import names as n
from driver.exporter.endpoint import MetricsServer

OPERATIONS = n.PLUGIN_OPERATIONS.values["operation"]
RESULTS = n.PLUGIN_OPERATIONS.values["result"]
VERBS = n.PLUGIN_SLICE_WRITES.values["verb"]
OTHER = "other"
MAX_ERROR_KINDS = 16
# Prepare is a few ms; the kubelet gives up after 45 s.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _known(value: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else OTHER


class PluginMetrics:
    """Operation metrics of one plugin instance, served on its own port by :meth:`start`."""

    def __init__(self, driver_name: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        spec = n.PLUGIN_OPERATIONS
        self._requests = Counter(spec.family, spec.help, list(spec.labels), registry=reg)
        spec = n.PLUGIN_DURATION
        self._duration = Histogram(
            spec.family_without_unit,
            spec.help,
            list(spec.labels),
            unit=spec.unit,
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        spec = n.PLUGIN_IN_FLIGHT
        self._in_flight = Gauge(spec.family, spec.help, list(spec.labels), registry=reg)
        spec = n.PLUGIN_PREPARED_DEVICES
        self._prepared = Gauge(spec.family, spec.help, registry=reg)
        spec = n.PLUGIN_SLICE_WRITES
        self._writes = Counter(spec.family, spec.help, list(spec.labels), registry=reg)
        spec = n.PLUGIN_API_ERRORS
        self._api_errors = Counter(spec.family, spec.help, list(spec.labels), registry=reg)
        spec = n.PLUGIN_INFO
        Info(spec.family, spec.help, registry=reg).info({"version": __version__, "dra_driver": driver_name})
        self._error_kinds: set[str] = set()
        # Known series exist from the start, so rate() and absent() work before the first call.
        for operation in OPERATIONS:
            self._duration.labels(operation)
            self._in_flight.labels(operation)
            for result in RESULTS:
                self._requests.labels(operation, result)
        for verb in VERBS:
            self._writes.labels(verb)
        self._server: MetricsServer | None = None

    # -- callbacks ------------------------------------------------------------------------------------

    def observe(self, operation: str, result: str, seconds: float) -> None:
        """Count one answered call and its duration (an ``OperationObserver``)."""
        operation = _known(operation, OPERATIONS)
        self._requests.labels(operation, _known(result, RESULTS)).inc()
        self._duration.labels(operation).observe(max(0.0, seconds))

    @contextlib.contextmanager
    def in_flight(self, operation: str) -> Iterator[None]:
        """Count a call as in flight for the duration of the block (works in async code too)."""
        gauge = self._in_flight.labels(_known(operation, OPERATIONS))
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def set_prepared_devices(self, count: int) -> None:
        self._prepared.set(count)

    def slice_write(self, verb: str) -> None:
        """A ResourceSlice create / update / delete (the publisher's ``on_write``)."""
        self._writes.labels(_known(verb, VERBS)).inc()

    def api_error(self, kind: str) -> None:
        """A failed API call, by HTTP status or error class (the publisher's ``on_error``)."""
        if kind not in self._error_kinds and len(self._error_kinds) >= MAX_ERROR_KINDS:
            kind = OTHER
        self._error_kinds.add(kind)
        self._api_errors.labels(kind).inc()

    # -- serving ----------------------------------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header: Prometheus text, or OpenMetrics when asked for."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def start(self, listen: str) -> None:
        """Serve ``/metrics`` and ``/healthz`` on ``listen`` (``HOST:PORT``, ``:PORT``; port 0 picks one)."""
        self._server = MetricsServer(self.render)
        await self._server.start(listen)

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._server.port if self._server is not None else 0

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
