"""Prometheus metrics of one hub process, on a registry of its own (not the global one)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from twisted.web.server import Request

from cocalc_hub import __version__
from cocalc_hub.web.resource import HubResource

# Methods outside this set are counted as "other" so hostile input cannot blow up label cardinality.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HubMetrics:
    """The metrics every part of the hub reports into."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        Info("cocalc_hub", "Build information", registry=self.registry).info({"version": __version__})
        self.requests = Counter(
            "cocalc_hub_http_requests",
            "HTTP requests answered, by route class, method and status code",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cocalc_hub_http_request_duration_seconds",
            "Time from request received to response finished, by route class",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        # labels() is a dictionary walk with locks; the children are cached here.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[str, Any] = {}
        self.open_connections = Gauge(
            "cocalc_hub_http_open_connections",
            "HTTP connections currently open (upgraded WebSockets are counted by their owner)",
            registry=self.registry,
        )
        self.tls_handshake_failures = Counter(
            "cocalc_hub_tls_handshake_failures",
            "TLS handshakes on the hub's listener that failed with a TLS error",
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        if method not in _METHODS:
            method = "other"
        key = (route, method, code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(route, method, str(code))
        counter.inc()
        histogram = self._histograms.get(route)
        if histogram is None:
            histogram = self._histograms[route] = self.latency.labels(route)
        histogram.observe(seconds)

    def gauge(self, name: str, doc: str, fn: Callable[[], float]) -> Gauge:
        """A gauge whose value is read from ``fn`` at scrape time."""
        g = Gauge(name, doc, registry=self.registry)
        g.set_function(fn)
        return g

    def counter(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        """A counter whose total is read from ``fn`` at scrape time (the owner keeps the count)."""
        self.registry.register(_FunctionCounter(name, doc, fn))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _FunctionCounter(Collector):
    def __init__(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        self.name = name
        self.doc = doc
        self.fn = fn

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self.name, self.doc, value=self.fn())

    def describe(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self.name, self.doc)


class MetricsResource(HubResource):
    """``GET /metrics`` in the Prometheus text format (rendered on the reactor thread)."""

    def __init__(self, metrics: HubMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_PLAIN_0_0_4.encode("ascii"))
        request.setHeader(b"cache-control", b"no-cache, no-store")
        return self.metrics.render()
