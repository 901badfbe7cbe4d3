"""ProxyService: the proxy wired into one MultiService: connection pool, backend view, site,
and a listener per endpoint description (listen.py).

Start-up: the view starts polling, then the listeners listen; shutdown stops polling and
closes the pooled upstream connections.
"""
# test-case-name: tests.integration.test_proxy

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import internet, service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from distpotify.auth.ratelimit import LoginLimiter
from proxy.auth import AdminCheck, LoginLimit
from proxy.backends import BackendView, status_fetcher
from proxy.config import ProxyConfig
from proxy.limits import ConnectionLimits, open_files_limit, total_cap
from proxy.listen import endpoints
from proxy.openapi import description_json
from proxy.resource import Counters, ProxyResource
from proxy.sessions import Sessions
from proxy.site import ProxyRoot, ProxySite
from proxy.upstream import read_agent, replica_agent

log = Logger()


class ProxyService(service.MultiService):
    """Raises ConfigError when a listener cannot be made from its description."""

    def __init__(self, config: ProxyConfig, reactor: Any,
                 freeze: Callable[[], int] | None = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        # Once started, what lives as long as the process leaves full GCs (gcfreeze.py).
        self._freeze = freeze
        self.agent, self.pool = replica_agent(reactor, config.connect_timeout)
        self.view = BackendView(
            config.backends, status_fetcher(self.agent, config.cluster_keys, reactor), reactor,
            poll_interval=config.poll_interval, health_max_age=config.health_max_age,
            check_timeout=config.check_timeout,
        )
        self.counters = Counters()
        self.open_files = open_files_limit()
        self.limits = ConnectionLimits(config.max_connections_per_client,
                                       total_cap(self.open_files), config.trusted_proxies)
        self.sessions = Sessions(reactor, config.session_memory)
        # With splicing, reads take the lean client (whose bodies can be spliced); off, every
        # request takes the Agent.
        self.reads = read_agent(reactor, config.connect_timeout, self.agent) if config.splice \
            else None
        forward = ProxyResource(self.view, self.reads or self.agent, reactor, config,
                                self.counters, sessions=self.sessions)
        admin_check = None
        if config.auth:
            assert config.cluster_keys is not None  # ProxyConfig's check
            admin_check = AdminCheck(self.view, self.agent, reactor, config.cluster_keys,
                                     config.metrics_token)
        self.logins = LoginLimiter(reactor)
        login = LoginLimit(forward, self.logins, self.counters.count)
        root = ProxyRoot(forward, self.report, config.web_dir, description_json(),
                         admin_check=admin_check, login=login)
        self.site = ProxySite(root,
                              max_body=config.max_upload, clock=reactor,
                              timeouts=config.timeouts, limits=self.limits,
                              trusted_proxies=config.trusted_proxies, reactor=reactor)
        for description, endpoint in endpoints(reactor, config.listeners):
            listener = internet.StreamServerEndpointService(endpoint, self.site)
            listener._raiseSynchronously = True  # a busy port stops twistd, with its reason
            listener.setName(description)
            listener.setServiceParent(self)

    def report(self) -> dict[str, Any]:
        """/proxy/status: the proxy's view of the cluster and what it has done."""
        return {
            **self.view.snapshot(),
            "counters": attrs.asdict(self.counters),
            "connections": {**self.limits.snapshot(),
                            "timed_out": dict(self.site.timeouts_expired)},
            "remembered_clients": len(self.sessions),
            "config": {
                "write_hold": self.config.write_hold,
                "health_max_age": self.config.health_max_age,
                "poll_interval": self.config.poll_interval,
                "stall_timeout": self.config.stall_timeout,
                "response_timeout": self.config.response_timeout,
                "session_memory": self.config.session_memory,
                "max_upload": self.config.max_upload,
                "header_timeout": self.config.header_timeout,
                "body_timeout": self.config.body_timeout,
                "idle_timeout": self.config.idle_timeout,
                "trusted_proxies": str(self.config.trusted_proxies),
                "splice": self.config.splice,
                "auth": self.config.auth,
                "signed_polls": self.config.cluster_keys is not None,
            },
        }

    def privilegedStartService(self) -> None:
        # twistd binds ports here, before startService: a busy port must say so in one line.
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise SystemExit(
                f"distpotify-proxy: cannot listen on {e.interface or '*'}:{e.port}:"
                f" {e.socketError}"
            ) from None

    def startService(self) -> None:
        self.view.start()
        super().startService()
        timeouts = self.config.timeouts
        log.info("proxy listening on {listeners} in front of {backends}", listeners=" and ".join(
            self.config.listeners), backends=", ".join(self.config.backends))
        log.info("connections: at most {total} in all (open-files limit {open_files}),"
                 " {per_client} per client (0: no cap); timeouts: headers {header:g} s,"
                 " body {body:g} s, idle {idle:g} s; trusted proxies: {trusted}",
                 total=self.limits.total or "no cap", open_files=self.open_files or "none",
                 per_client=self.limits.per_client, header=timeouts.header, body=timeouts.body,
                 idle=timeouts.idle, trusted=self.config.trusted_proxies)
        log.info("accounts: --auth {auth} (/proxy/status and /metrics {who}); /status polls"
                 " {signed}; failed logins limited per address and per username",
                 auth="on" if self.config.auth else "off",
                 who="for admins and --metrics-token" if self.config.auth else "open to all",
                 signed="signed with the cluster key" if self.config.cluster_keys is not None
                 else "unsigned (no --cluster-key-file)")
        if self._freeze is not None:
            log.info("froze {count} start-up objects out of full garbage collections",
                     count=self._freeze())

    def stopService(self) -> Deferred[None] | None:
        self.view.stop()
        d = super().stopService()
        if self.reads is not None:
            self.reads.pool.close()
        closing = self.pool.closeCachedConnections()
        if d is None:
            return closing
        return d.addCallback(lambda _: closing)
