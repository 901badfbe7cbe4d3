"""The proxy's /metrics, in the Prometheus text format: what /proxy/status counts, read at
scrape time (requests, retries, resumes, ...), and per replica its health and traffic."""
# test-case-name: tests.integration.test_proxy

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.web import server
from twisted.web.resource import Resource

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class _ReportCollector:
    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        self._report = report

    def collect(self) -> Iterator[Metric]:
        report = self._report()
        for name, value in report["counters"].items():
            counter = CounterMetricFamily(f"distpotify_proxy_{name}",
                                          f"Proxy requests counted as {name}")
            counter.add_metric([], value)
            yield counter
        leader = report["leader"]
        epoch = GaugeMetricFamily("distpotify_proxy_leader_epoch",
                                  "Epoch of the leader the proxy writes to (0: none)")
        epoch.add_metric([], leader["epoch"] if leader else 0)
        yield epoch
        healthy = GaugeMetricFamily("distpotify_proxy_backend_healthy",
                                    "1 while a replica answers its health checks", labels=["http"])
        forwarded = CounterMetricFamily("distpotify_proxy_backend_forwarded",
                                        "Requests forwarded to a replica", labels=["http"])
        failures = CounterMetricFamily("distpotify_proxy_backend_failures",
                                       "Requests a replica failed", labels=["http"])
        for backend in report["backends"]:
            healthy.add_metric([backend["http"]], float(bool(backend["healthy"])))
            forwarded.add_metric([backend["http"]], backend["forwarded"])
            failures.add_metric([backend["http"]], backend["failures"])
        yield from (healthy, forwarded, failures)


class ProxyMetrics(Resource):
    isLeaf = True

    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._registry = CollectorRegistry()
        self._registry.register(_ReportCollector(report))

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        return generate_latest(self._registry)
