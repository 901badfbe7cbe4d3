"""The proxy's URL space: the web player at ``/``, ``/proxy/status``, ``/metrics``, ``/health``,
the API's description at ``/openapi.json`` (openapi.py), ``/sync/*`` refused, and everything else
forwarded by ProxyResource; and its HTTP server, which refuses a request body over
``--max-upload`` before reading it (bodylimit.py), times out stalled clients, caps
connections (limits.py) and adds the browser security headers (security.py). Its own answers
are JSON written by wire.py, as the replicas write theirs.
"""
# test-case-name: tests.unit.test_proxy_site,tests.unit.test_proxy_resource

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import IResource, Resource
from twisted.web.static import File
from zope.interface import implementer

from distpotify.bodylimit import LimitedRequest
from distpotify.httpchannel import Phase, Timeouts
from distpotify.wire import json_error, json_response, loggable_uri
from proxy.auth import AdminCheck, AdminOnly
from proxy.forwarded import TrustedProxies
from proxy.limits import ConnectionLimits, LimitedChannel
from proxy.metrics import ProxyMetrics
from proxy.security import SecureRequest

log = Logger()

# The replicas' API roots: forwarded even if the player ever ships a file of the same name.
API_ROOTS = frozenset({b"status", b"songs", b"playlists"})


# The proxy's own answers describe it now: a cache must not keep them.
NO_STORE = (b"Cache-Control", b"no-store")


class JsonNotFound(Resource):
    """``/sync/*`` belongs to the replicas among themselves: never reachable through here."""

    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        request.setHeader(*NO_STORE)
        return json_error(request, 404, "not_found",
                          "/sync/ is internal to the cluster and not served by the proxy")


class NotAPath(Resource):
    """A request target that is not a path (``GET @host/``; an absolute URL is taken as its
    path first, origin_form): the proxy forwards paths only. Put after a replica's URL, such
    a target would name another host or port, and the failure to reach it would count
    against the replica."""

    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        request.setHeader(*NO_STORE)
        return json_error(request, 400, "bad_request",
                          "the request target must be a path beginning with /")


class ProxyStatus(Resource):
    isLeaf = True

    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._report = report

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(*NO_STORE)
        return json_response(request, 200, self._report(), pretty=True)


class ProxyHealth(Resource):
    """Liveness, open to anyone (container health checks hold no secret): the proxy answers
    ``{"status": "up"}`` itself, and says nothing of the replicas."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(*NO_STORE)
        return json_response(request, 200, {"status": "up"})


class OpenApiDocument(Resource):
    """The API's description as JSON, converted from its YAML once, when the proxy started."""

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self._body = body

    def render_GET(self, request: server.Request) -> bytes:
        # It changes only with the proxy's version: a client may keep it, if it asks again.
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", str(len(self._body)).encode())
        return self._body


class ProxyRoot(Resource):
    """``admin_check`` (--auth on) guards /proxy/status and /metrics (``/health`` is open to
    anyone); ``login`` (auth.py's LoginLimit) takes ``/auth/login`` in front of ``forward``."""

    def __init__(self, forward: IResource, report: Callable[[], dict[str, Any]],
                 web_dir: Path, openapi: bytes | None = None, *,
                 admin_check: AdminCheck | None = None, login: IResource | None = None) -> None:
        super().__init__()
        self._forward = forward
        self._login = login
        self._web_dir = web_dir
        self._web = File(str(web_dir)) if web_dir.is_dir() else None

        def guarded(view: IResource) -> IResource:
            return view if admin_check is None else AdminOnly(view, admin_check)

        proxy = Resource()
        proxy.putChild(b"status", guarded(ProxyStatus(report)))
        self.putChild(b"proxy", proxy)
        self.putChild(b"metrics", guarded(ProxyMetrics(report)))
        self.putChild(b"health", ProxyHealth())
        self.putChild(b"sync", JsonNotFound())
        if openapi is not None:
            self.putChild(b"openapi.json", OpenApiDocument(openapi))

    def getChild(self, path: bytes, request: server.Request) -> IResource:
        if (path == b"auth" and self._login is not None
                and [s for s in request.postpath or [] if s] == [b"login"]):
            return self._login
        if path not in API_ROOTS and self._web is not None and self._is_web_file(path):
            return self._web.getChild(path, request)
        return self._forward

    def _is_web_file(self, path: bytes) -> bool:
        if path == b"":
            return True
        name = path.decode("utf-8", "replace")
        # One name in the web dir: a segment holding a separator (%2F) or a NUL would reach
        # elsewhere, and telling its 404 from a replica's would say what exists on this host.
        if name.startswith(".") or any(c in name for c in "/\\\0"):
            return False
        return (self._web_dir / name).exists()

    def render(self, request: server.Request) -> Any:
        return self._forward.render(request)


@implementer(IResource)
class _JsonMethods:
    """Renders ``resource``, answering a method it does not take (a PUT of /proxy/status, a
    DELETE of a player's file) 405 in the JSON error shape with its Allow: twisted.web would
    answer in HTML, 501 for any method but GET, HEAD and POST. A HEAD of a resource that
    takes GET is still twisted.web's (the GET's headers, no body)."""

    isLeaf = True

    def __init__(self, resource: IResource) -> None:
        self._resource = resource

    def render(self, request: server.Request) -> Any:
        try:
            return self._resource.render(request)
        except UnsupportedMethod as e:
            allowed: list[bytes] = list(e.allowedMethods)
            if request.method == b"HEAD" and b"GET" in allowed:
                raise
            request.setHeader(b"Allow", b", ".join(allowed))
            request.setHeader(*NO_STORE)
            method = request.method.decode("latin-1")
            return json_error(request, 405, "method_not_allowed",
                              f"{method} is not allowed here")

    def getChildWithDefault(self, name: bytes, request: server.Request) -> IResource:
        return self._resource.getChildWithDefault(name, request)

    def putChild(self, path: bytes, child: IResource) -> None:
        self._resource.putChild(path, child)


class ProxyRequest(SecureRequest):
    """The proxy site's request (security.py's, with its body limit and browser headers),
    whose own answers are all JSON, a refused method's included."""

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        super().requestReceived(command, origin_form(path), version)

    def render(self, resrc: IResource) -> None:
        if not self.uri.startswith(b"/"):
            resrc = NotAPath()
        super().render(_JsonMethods(resrc))


def origin_form(target: bytes) -> bytes:
    """An absolute-form request target (``http://host/path?query``, which RFC 9112 3.2.2
    says a server must accept) as the path and query it names on this proxy; any other
    target as it is."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return target
    at = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    tail = rest[at:]
    return tail if tail.startswith(b"/") else b"/" + tail


class ProxySite(server.Site):
    protocol = LimitedChannel  # type: ignore[assignment]
    # Bodies are spooled whole (an upload is replayed on a new leader after a failover), so
    # one over --max-upload is refused before it is read or stored.
    requestFactory = ProxyRequest

    def __init__(self, resource: IResource, *, max_body: int, clock: Any,
                 timeouts: Timeouts | None = None, limits: ConnectionLimits | None = None,
                 trusted_proxies: TrustedProxies | None = None, **kwargs: Any) -> None:
        # Bodies are forwarded as they came: twisted.web must not parse a multipart upload
        # into memory (about 14 times its size at the peak) on the way. No twisted.web idle
        # timeout: the channel keeps its own, one per phase.
        super().__init__(resource, parsePOSTFormSubmission=False, timeout=None, **kwargs)
        self.timeouts = timeouts or Timeouts()
        self.limits = limits or ConnectionLimits(per_client=0, total=None)
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self.timeouts_expired = {phase.value: 0 for phase in Phase if phase is not Phase.BUSY}
        self.max_body = max_body
        self.spool_dir: Path | None = None
        self.clock = clock
        self.served_by: str | None = None  # the proxy's own answer, from no replica
        self.displayTracebacks = False
        self.noisy = False

    def spool_file(self, request: LimitedRequest) -> IO[bytes] | None:
        return None  # every body the proxy holds goes to a temp file, relayed as it is

    def timed_out(self, phase: Phase) -> None:
        self.timeouts_expired[phase.value] += 1

    def log(self, request: http.Request) -> None:
        """Access lines only for the proxy's own failures; retries and resumes log themselves."""
        if request.code >= 500:
            log.info("{method} {uri} -> {code}", method=request.method.decode(),
                     uri=loggable_uri(request.uri), code=request.code)
