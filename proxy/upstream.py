"""The proxy's HTTP client to the replicas: one Agent over a persistent connection pool, in
front of it for reads the lean client (leanclient.py) under the same pool rules, and the
reading of the short bodies the proxy itself uses (a /status, a 421's).

Endpoints are made once per replica: the stock Agent builds (and IDNA-checks) one per request.
"""
# test-case-name: tests.unit.test_proxy_upstream, tests.integration.test_proxy

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from distpotify.leanclient import LeanPool, ReadAgent

# Idle connections kept per replica: as many as clients may read from one replica at once
# (when the others are down), so a busy proxy does not open and close connections per request.
POOL_PER_HOST = 256
# Shorter than a replica's idle timeout, so a pooled connection is not reused as it closes.
POOL_IDLE = 30
# The longest body read_body takes: a /status of a large cluster is a few KiB.
MAX_SHORT_BODY = 1 << 20


class BodyTooLarge(Exception):
    """An answer's body is longer than its reader takes."""


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


def read_body(response: IResponse, limit: int = MAX_SHORT_BODY) -> Deferred[bytes]:
    """The whole body of ``response``, at most ``limit`` bytes (else BodyTooLarge); fails
    with the reason it did not end (a lost connection). Cancelling it closes the connection.

    Not twisted's readBody: the Agent gives a body's protocol a transport without
    abortConnection, so readBody's cancel cannot close the connection, and once the body
    ends its protocol fires the cancelled Deferred again: AlreadyCalledError, logged as
    critical (twisted#12499). A poll that timed out mid-body did that.
    """
    reader = _ShortBody(limit)
    response.deliverBody(reader)
    return reader.done


class _ShortBody(Protocol):
    """Collects one body for read_body. ``_closed``: the reader gave up on it (cancelled, or
    too long) and stopped the connection; what arrives after that is dropped."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._closed = False
        self.done: Deferred[bytes] = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._close()
            self.done.errback(BodyTooLarge(f"the body is longer than {self._limit} bytes"))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._closed:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)

    def _cancel(self, d: Deferred[bytes]) -> None:
        self._close()  # then Deferred.cancel fails ``done`` with CancelledError

    def _close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
