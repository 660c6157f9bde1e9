"""The kubelet plugin's own metrics: DRA call totals and latency, in-flight calls, prepared devices, slice
writes and API errors (names and labels: ``driver.exporter.names.PLUGIN_METRICS``, docs/metrics.md).

:class:`PluginMetrics` owns a private registry, so several plugins in one process (tests) never share
series. Its methods match the callbacks the plugin already has: ``observe`` is a
:data:`driver.plugin.service.OperationObserver`; ``slice_write`` / ``api_error`` are the ``on_write`` /
``on_error`` callbacks of :class:`driver.resources.publisher.SlicePublisher`. Label values outside the known
sets are folded into ``other`` so a bug can never explode cardinality.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

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


class _InFlight:
    """Holds one in-flight gauge series up while a block runs (re-entrant: it counts, holds no state)."""

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge

    def __enter__(self) -> None:
        self._gauge.inc()

    def __exit__(self, *_: object) -> None:
        self._gauge.dec()


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
        # Known series exist from the start, so rate() and absent() work before the first call; they are
        # looked up here once, not per call (``labels`` checks and hashes its arguments every time).
        self._duration_of = {op: self._duration.labels(op) for op in OPERATIONS}
        self._in_flight_of = {op: _InFlight(self._in_flight.labels(op)) for op in OPERATIONS}
        self._requests_of = {
            (op, result): self._requests.labels(op, result) for op in OPERATIONS for result in RESULTS
        }
        for verb in VERBS:
            self._writes.labels(verb)
        self._server: MetricsServer | None = None

    # -- callbacks ------------------------------------------------------------------------------------

    def observe(self, operation: str, result: str, seconds: float) -> None:
        """Count one answered call and its duration (an ``OperationObserver``)."""
        key = (_known(operation, OPERATIONS), _known(result, RESULTS))
        (self._requests_of.get(key) or self._requests.labels(*key)).inc()
        (self._duration_of.get(key[0]) or self._duration.labels(key[0])).observe(max(0.0, seconds))

    def in_flight(self, operation: str) -> AbstractContextManager[None]:
        """Count a call as in flight for the duration of the block (works in async code too)."""
        known = self._in_flight_of.get(operation)
        return known if known is not None else _InFlight(self._in_flight.labels(OTHER))

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
