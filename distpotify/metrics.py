"""What a replica exposes at /metrics, in the Prometheus text format.

Counters are fed where things happen (the HTTP access log); everything else is read from the
replica's parts when Prometheus scrapes, so no number is kept twice.
"""
# test-case-name: tests.unit.test_metrics, tests.integration.test_metrics

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from distpotify import subsonicmethods

_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NUMBERS = re.compile(r"/\d+(?=/|$)")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# Every call of the Subsonic API: its method names are whatever a client sends.
SUBSONIC_ROUTE = "/rest/{method}"


def route_of(path: str) -> str:
    """A path with ids and numbers replaced, so labels stay few: /songs/{id}/chunks/{n}."""
    path = path.split("?", 1)[0]
    if subsonicmethods.method_name(path) is not None:
        return SUBSONIC_ROUTE
    route = _NUMBERS.sub("/{n}", _IDS.sub("{id}", path))
    known = ("/status", "/metrics", "/songs", "/playlists", "/sync", "/auth", "/users")
    return route if route.startswith(known) else "other"


class ReplicaMetrics:
    def __init__(self, node_id: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "distpotify_http_requests", "HTTP requests answered, by route and status",
            ["route", "method", "status"], registry=self.registry)
        self.bytes_sent = Counter(
            "distpotify_http_sent_bytes", "Response body bytes sent", ["route"],
            registry=self.registry)
        self.timeouts = Counter(
            "distpotify_http_timeouts", "Connections closed by a timeout, by phase"
            " (header, body, idle)", ["phase"], registry=self.registry)
        self._gauges: dict[str, Gauge] = {}
        self.node_id = node_id

    def request_done(self, method: str, path: str, status: int, sent: int) -> None:
        route = route_of(path)
        self.requests.labels(route, method, str(status)).inc()
        self.bytes_sent.labels(route).inc(sent)

    def timed_out(self, phase: str) -> None:
        self.timeouts.labels(phase).inc()

    def _gauge(self, name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
        if name not in self._gauges:
            self._gauges[name] = Gauge(name, text, list(labels), registry=self.registry)
        return self._gauges[name]

    def set(self, name: str, text: str, value: float, **labels: str) -> None:
        gauge = self._gauge(name, text, tuple(labels))
        (gauge.labels(**labels) if labels else gauge).set(value)

    async def render(self, snapshot: Callable[[], Awaitable[dict[str, Any]]]) -> bytes:
        """The text exposition, after reading the replica's state (``/status``'s dict)."""
        status = await snapshot()
        replication = status["replication"]
        self.set("distpotify_epoch", "Current epoch known to this replica", status["epoch"])
        self.set("distpotify_is_leader", "1 while this replica leads",
                 float(status["role"] == "leader"))
        self.set("distpotify_active", "1 once this replica is ACTIVE",
                 float(status["state"] == "ACTIVE"))
        self.set("distpotify_elections_won", "Elections this replica won",
                 status["elections_won"])
        self.set("distpotify_head_seq", "Sequence number of the newest version held",
                 status["head"][2])
        for name, value in replication["repair"].items():
            self.set("distpotify_chunk_repair", "Chunk verification and read repair counts",
                     value, outcome=name)
        for name, value in replication["fetch"].items():
            self.set("distpotify_chunk_fetch", "Chunk downloads from other replicas",
                     value, counter=name)
        ae = replication["anti_entropy"]
        self.set("distpotify_anti_entropy_rounds", "Anti-entropy rounds run", ae["rounds"])
        self.set("distpotify_anti_entropy_rows_repaired", "Rows pulled by anti-entropy",
                 ae["rows_repaired"])
        self.set("distpotify_anti_entropy_chunks_repaired", "Chunks fetched by anti-entropy",
                 ae["chunks_repaired"])
        takeover = status["takeover"]
        self.set("distpotify_takeover_seconds", "How long the last leadership's catch-up took"
                 " before its first write", takeover["seconds"] or 0.0)
        self.set("distpotify_takeover_timeouts", "Catch-ups that ended at --catch-up-timeout",
                 takeover["timeouts"])
        for outcome in ("replicated", "timeout", "alone"):
            self.set("distpotify_write_acks", "Writes acknowledged: held by --sync-replicas"
                     " followers (replicated), or degraded: not confirmed within"
                     " --sync-timeout (timeout), too few followers up (alone)",
                     replication["semi_sync"][outcome], outcome=outcome)
        accounts = status["accounts"]
        self.set("distpotify_logins", "Logins that succeeded here", accounts["logins"])
        self.set("distpotify_login_failures", "Logins refused here for a wrong username or"
                 " password", accounts["login_failures"])
        self.set("distpotify_logins_limited", "Logins refused here without a check: too many"
                 " failures for the username lately (429)", accounts["logins_limited"])
        self.set("distpotify_users", "Accounts this replica knows", accounts["users"])
        for peer, kinds in status["trust"]["failures"].items():
            for kind, count in kinds.items():
                self.set("distpotify_auth_failures", "Messages that did not prove the cluster"
                         " key, by peer address and kind", count, peer=peer, kind=kind)
        for follower, link in ((replication.get("push") or {}).get("followers") or {}).items():
            self.set("distpotify_replication_lag_seconds", "How long the oldest unacknowledged"
                     " op has waited, per follower", link["lag_seconds"], follower=follower)
            self.set("distpotify_hints_pending", "Ops past a follower's acknowledged cursor",
                     link["hints_pending"] or 0, follower=follower)
        return generate_latest(self.registry)
