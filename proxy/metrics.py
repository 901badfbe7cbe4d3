"""The proxy's /metrics, in the Prometheus text format, read at scrape time: what /proxy/status
counts, per replica its health and traffic, and client connections (open, refused, timed out)."""
# test-case-name: tests.integration.test_proxy, tests.unit.test_proxy_limits

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.web import server
from twisted.web.resource import Resource

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# The counters of bytes, not requests, say what they count.
_HELP = {
    "relayed_bytes": "Response body bytes sent to clients through Python (request.write)",
    "spliced_bytes": "Response body bytes moved to clients with splice(2), around Python",
    "login_failures": "Logins through the proxy that a replica refused (wrong name or password)",
    "login_refused": "Logins refused by the proxy with 429: too many failures from the address"
                     " or for the username lately",
}


class _ReportCollector:
    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        self._report = report

    def collect(self) -> Iterator[Metric]:
        report = self._report()
        for name, value in report["counters"].items():
            counter = CounterMetricFamily(
                f"distpotify_proxy_{name}", _HELP.get(name, f"Proxy requests counted as {name}"))
            counter.add_metric([], value)
            yield counter
        leader = report["leader"]
        epoch = GaugeMetricFamily("distpotify_proxy_leader_epoch",
                                  "Epoch of the leader the proxy writes to (0: none)")
        epoch.add_metric([], leader["epoch"] if leader else 0)
        yield epoch
        remembered = GaugeMetricFamily(
            "distpotify_proxy_remembered_clients",
            "Clients whose last write the proxy remembers for their reads (read your writes)")
        remembered.add_metric([], report.get("remembered_clients", 0))
        yield remembered
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
        yield from _connection_metrics(report["connections"])


def _connection_metrics(connections: dict[str, Any]) -> Iterator[Metric]:
    """Client connections: how many are open, the cap, and the ones refused or timed out."""
    open_now = GaugeMetricFamily("distpotify_proxy_connections_open",
                                 "Client connections open now")
    open_now.add_metric([], connections["open"])
    yield open_now
    if connections["max_total"] is not None:
        cap = GaugeMetricFamily("distpotify_proxy_connections_max",
                                "Most client connections held at once (from the open-files"
                                " limit)")
        cap.add_metric([], connections["max_total"])
        yield cap
    refused = CounterMetricFamily("distpotify_proxy_connections_refused",
                                  "Client connections closed at once, over a cap",
                                  labels=["cap"])
    refused.add_metric(["per_client"], connections["refused_per_client"])
    refused.add_metric(["total"], connections["refused_total"])
    yield refused
    timeouts = CounterMetricFamily("distpotify_proxy_connection_timeouts",
                                   "Client connections closed by a timeout, by phase",
                                   labels=["phase"])
    for phase, count in connections["timed_out"].items():
        timeouts.add_metric([phase], count)
    yield timeouts


class ProxyMetrics(Resource):
    isLeaf = True

    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._registry = CollectorRegistry()
        self._registry.register(_ReportCollector(report))

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        return generate_latest(self._registry)
