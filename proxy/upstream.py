"""The proxy's HTTP client to the replicas: one Agent over a persistent connection pool, and
in front of it for reads the lean client (leanclient.py) under the same pool rules.

Endpoints are made once per replica: the stock Agent builds (and IDNA-checks) one per request.
"""
# test-case-name: tests.integration.test_proxy

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import URI, Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from proxy.leanclient import LeanPool, ReadAgent

# Idle connections kept per replica: as many as clients may read from one replica at once
# (when the others are down), so a busy proxy does not open and close connections per request.
POOL_PER_HOST = 256
# Shorter than a replica's idle timeout, so a pooled connection is not reused as it closes.
POOL_IDLE = 30


class _QuietClientFactory(_HTTP11ClientFactory):
    """Without this every upstream connection logs "Starting factory" (synapse does the same)."""

    noisy = False


@implementer(IAgentEndpointFactory)
class ReplicaEndpoints:
    """Plain TCP to each replica (``http://`` only), one endpoint per host and port."""

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._endpoints: dict[tuple[bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = HostnameEndpoint(
                self._reactor, uri.host.decode("ascii"), uri.port,
                timeout=self._connect_timeout)
        return endpoint


def replica_agent(reactor: Any, connect_timeout: float) -> tuple[Agent, HTTPConnectionPool]:
    """The Agent every request and /status poll goes through, and its pool (to close)."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = POOL_PER_HOST
    pool.cachedConnectionTimeout = POOL_IDLE
    pool._factory = _QuietClientFactory
    agent = Agent.usingEndpointFactory(reactor, ReplicaEndpoints(reactor, connect_timeout),
                                       pool=pool)
    return agent, pool


def read_agent(reactor: Any, connect_timeout: float, fallback: Agent) -> ReadAgent:
    """GETs and HEADs through the lean client's own pool, the rest through ``fallback``."""
    pool = LeanPool(reactor, ReplicaEndpoints(reactor, connect_timeout), POOL_PER_HOST,
                    POOL_IDLE)
    return ReadAgent(pool, fallback)
