"""The floor under the proxy: the least a twisted.web reverse proxy does with an Agent.

``bench/proxy.py`` runs it next to nginx and the Distpotify proxy, on the same followers,
to show how much of the proxy's CPU per request is its own (routing, health, resume) and
how much is twisted.web and the Agent themselves. It has what docs/architecture.md
section 5.3 requires of any Twisted proxy and nothing else: a Site, an Agent over a
persistent HTTPConnectionPool, round-robin over the upstreams, the body streamed with the
upstream transport registered as the request's producer. No health checks, no retries, no
resume, no header filtering.

Usage: ``python bench/twisted_relay.py PORT http://HOST:PORT[,http://HOST:PORT...]``
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


class _Body(Protocol):
    def __init__(self, request: Request) -> None:
        self.request = request

    def connectionMade(self) -> None:
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.request._disconnected:
            return
        self.request.unregisterProducer()
        if reason.check(ResponseDone):
            self.request.finish()
        else:
            self.request.channel.transport.abortConnection()  # type: ignore[union-attr]


class Relay(Resource):
    isLeaf = True

    def __init__(self, upstreams: list[bytes]) -> None:
        super().__init__()
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 256
        self.agent = Agent(reactor, pool=pool)
        self.upstreams = itertools.cycle(upstreams)

    def render(self, request: Request) -> Any:
        d = self.agent.request(request.method, next(self.upstreams) + request.uri,
                               Headers({b"Accept": [b"*/*"]}))

        def respond(response: Any) -> None:
            request.setResponseCode(response.code, response.phrase)
            request.responseHeaders = response.headers
            if response.length is not None:
                request.setHeader(b"Content-Length", str(response.length).encode())
            response.deliverBody(_Body(request))

        def failed(failure: Failure) -> None:
            if not request._disconnected:
                request.setResponseCode(502)
                request.finish()

        d.addCallbacks(respond, failed)
        return NOT_DONE_YET


class _QuietSite(Site):
    def log(self, request: Any) -> None:
        """No access log: nginx runs with access_log off too."""


def main(argv: list[str]) -> None:
    port, upstreams = int(argv[1]), [url.encode() for url in argv[2].split(",")]
    site = _QuietSite(Relay(upstreams))
    reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[arg-type]
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
