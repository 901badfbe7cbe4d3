"""ProxyService: the proxy wired into one MultiService: connection pool, backend view, site.

Start-up: the view starts polling, then the port listens; shutdown stops polling and closes
the pooled upstream connections.
"""
# test-case-name: tests.integration.test_proxy

from __future__ import annotations

from typing import Any

import attrs
from twisted.application import internet, service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from proxy.backends import BackendView, status_fetcher
from proxy.config import ProxyConfig
from proxy.resource import Counters, ProxyResource
from proxy.site import ProxyRoot, ProxySite
from proxy.upstream import replica_agent

log = Logger()

LISTEN_BACKLOG = 1024

class ProxyService(service.MultiService):
    def __init__(self, config: ProxyConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.agent, self.pool = replica_agent(reactor, config.connect_timeout)
        self.view = BackendView(
            config.backends, status_fetcher(self.agent), reactor,
            poll_interval=config.poll_interval, health_max_age=config.health_max_age,
            check_timeout=config.check_timeout,
        )
        self.counters = Counters()
        forward = ProxyResource(self.view, self.agent, reactor, config, self.counters)
        self.site = ProxySite(ProxyRoot(forward, self.report, config.web_dir),
                              max_body=config.max_upload, clock=reactor)
        # Listeners arrive in bursts (a page of players, a benchmark): the default backlog of
        # 50 drops their SYNs, and each dropped one costs its client a second.
        self.http = internet.TCPServer(config.port, self.site, interface=config.host,
                                       backlog=LISTEN_BACKLOG)
        self.http.setServiceParent(self)

    def report(self) -> dict[str, Any]:
        """/proxy/status: the proxy's view of the cluster and what it has done."""
        return {
            **self.view.snapshot(),
            "counters": attrs.asdict(self.counters),
            "config": {
                "write_hold": self.config.write_hold,
                "health_max_age": self.config.health_max_age,
                "poll_interval": self.config.poll_interval,
                "stall_timeout": self.config.stall_timeout,
                "response_timeout": self.config.response_timeout,
                "max_upload": self.config.max_upload,
            },
        }

    def privilegedStartService(self) -> None:
        # twistd binds ports here, before startService: a busy port must say so in one line.
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise SystemExit(
                f"distpotify-proxy: cannot listen on {self.config.host}:{self.config.port}:"
                f" {e.socketError}"
            ) from None

    def startService(self) -> None:
        self.view.start()
        super().startService()
        log.info("proxy listening on http://{host}:{port}/ in front of {backends}",
                 host=self.config.host, port=self.config.port,
                 backends=", ".join(self.config.backends))

    def stopService(self) -> Deferred[None] | None:
        self.view.stop()
        d = super().stopService()
        closing = self.pool.closeCachedConnections()
        if d is None:
            return closing
        return d.addCallback(lambda _: closing)
