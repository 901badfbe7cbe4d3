"""Accounts at the proxy (issue 17): who may read the proxy's own views, and the failed-login
limit in front of the replicas' ``POST /auth/login``.

With ``--auth on`` /proxy/status and /metrics answer a ``--metrics-token`` bearer or an admin's
session; the proxy checks the token's signature itself, then asks a replica ``GET /auth/me``
with it (the replica knows the account's role, generation and disabled flag) and keeps the
answer a few seconds under the token's SHA-256, never the token. Every other request is
forwarded and the replicas decide.

Logins are limited per client address (as forwarded.py vouches for it) and per folded
username, with auth/ratelimit.LoginLimiter, whether --auth is on or off: a 401 from the
replica is a failure, a 2xx a success (which clears the name, not the address).
"""
# test-case-name: tests.unit.test_proxy_auth

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from distpotify.auth.ratelimit import LoginLimiter
from distpotify.auth.tokens import InvalidToken, TokenSigner, bearer_token
from distpotify.auth.users import ADMIN, name_key
from distpotify.keys import ClusterKeys
from distpotify.wire import json_error, loggable_uri
from proxy.backends import BackendView
from proxy.forwarded import client_origin
from proxy.upstream import read_body

log = Logger()

COOKIE = b"distpotify_session"
# How long a replica's word on a session holds here: a disabled admin or a bumped generation
# reaches the proxy's own views this much later than the replicas.
ROLE_TTL = 5.0
MAX_CACHED = 1000
# A login body is a name and a password: larger ones are not parsed for the name.
MAX_LOGIN_BODY = 8 * 1024
NO_STORE = (b"Cache-Control", b"no-store")


def bearer(request: Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``, else of the session cookie."""
    if request.getHeader(b"Authorization") is not None:
        return bearer_token(request)
    cookie = request.getCookie(COOKIE)
    return cookie.decode("latin-1") if cookie else None


class Refusal(Exception):
    """An answer of the proxy's own instead of the request's: status, error code, message
    and headers (the replicas' shapes, without importing their errors module)."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


# The replicas' answers of the same names (distpotify/errors.py), made here.
def unauthorized(message: str) -> Refusal:
    return Refusal(401, "unauthorized", message,
                   {"WWW-Authenticate": 'Bearer realm="distpotify"'})


def forbidden(message: str) -> Refusal:
    return Refusal(403, "forbidden", message)


def unavailable(message: str) -> Refusal:
    return Refusal(503, "unavailable", message, {"Retry-After": "1"})


def too_many_logins(message: str, retry_after: float) -> Refusal:
    return Refusal(429, "too_many_requests", message,
                   {"Retry-After": str(max(1, math.ceil(retry_after)))})


def answer_error(request: Request, error: Refusal) -> bytes:
    """``error`` as the JSON error shape, with its headers (WWW-Authenticate, Retry-After)."""
    for name, value in error.headers.items():
        request.setHeader(name, value)
    request.setHeader(*NO_STORE)
    return json_error(request, error.status, error.code, str(error))


class AdminCheck:
    """Decides whether a request may read the proxy's own views: a ``metrics_token`` bearer,
    or a session (checked under ``keys``) whose account a replica says is an admin."""

    def __init__(self, view: BackendView, agent: IAgent, clock: IReactorTime,
                 keys: ClusterKeys, metrics_token: str | None = None, *,
                 ttl: float = ROLE_TTL, max_cached: int = MAX_CACHED) -> None:
        self._view = view
        self._agent = agent
        self._clock = clock
        self._signer = TokenSigner(keys, clock)
        self._metrics_token = metrics_token
        self._ttl = ttl
        self._max_cached = max_cached
        # sha256(token) -> (role, or None for a session the replica refused; until when)
        self._roles: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    async def check(self, request: Request) -> None:
        """Return if ``request`` may go on; raise a Refusal (401, 403 or 503) otherwise."""
        token = bearer(request)
        if token is None:
            raise unauthorized("log in as an admin first (POST /auth/login)")
        if self._metrics_token is not None and hmac.compare_digest(
                token.encode(), self._metrics_token.encode()):
            return
        try:
            self._signer.check(token)
        except InvalidToken as e:
            raise unauthorized(f"the session is not valid: {e}") from None
        role = await self._role(token)
        if role is None:
            raise unauthorized("the session is not valid")
        if role != ADMIN:
            raise forbidden("only an admin may do this")

    async def _role(self, token: str) -> str | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock.seconds()
        cached = self._roles.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        role = await self._ask(token)
        self._roles.pop(key, None)
        self._roles[key] = (role, self._clock.seconds() + self._ttl)
        while len(self._roles) > self._max_cached:
            self._roles.popitem(last=False)
        return role

    async def _ask(self, token: str) -> str | None:
        """The role a replica's /auth/me gives the session, None if it refuses it."""
        backend = self._view.fresh_reader() or await self._view.choose_reader()
        if backend is None:
            raise unavailable("no replica is reachable to check the session")
        # The timeout covers the body too: a replica may send its headers and stall.
        d = Deferred.fromCoroutine(self._me(backend.url, token))
        d.addTimeout(self._view.check_timeout * 4, self._clock)
        try:
            code, body = await d
        except Exception as e:
            raise unavailable(f"could not check the session with {backend.describe()}:"
                              f" {type(e).__name__}") from None
        if code in (401, 403):
            return None
        if code != 200:
            raise unavailable(f"{backend.describe()} answered /auth/me {code}")
        try:
            user = json.loads(body)["user"]
            return None if user.get("disabled") else str(user["role"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise unavailable(f"{backend.describe()} sent an unusable /auth/me") from None

    async def _me(self, url: str, token: str) -> tuple[int, bytes]:
        """A replica's answer to ``GET /auth/me`` with ``token``: its status and body.
        Cancelled, it closes the connection (read_body, not readBody: upstream.py)."""
        response = await self._agent.request(b"GET", url.encode() + b"/auth/me", Headers({
            b"Authorization": [b"Bearer " + token.encode("latin-1")],
            b"Accept": [b"application/json"]}))
        return response.code, await read_body(response)


class AdminOnly(Resource):
    """``inner`` (a leaf rendering synchronously) once ``check`` lets the request in."""

    isLeaf = True

    def __init__(self, inner: IResource, check: AdminCheck) -> None:
        super().__init__()
        self._inner = inner
        self._check = check

    def render(self, request: Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            return self._inner.render(request)  # its 405, before any session is checked
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def allowed(_: object) -> None:
            if gone:
                return
            try:
                body = self._inner.render(request)
            except Exception:
                log.failure("rendering {uri} failed", uri=loggable_uri(request.uri))
                body = json_error(request, 500, "internal", "the proxy failed to answer")
            request.write(body)
            request.finish()

        def refused(failure: Failure) -> None:
            if gone:
                return
            error = failure.value if isinstance(failure.value, Refusal) else None
            if error is None:
                log.failure("checking a session failed", failure)
                error = unavailable("the session could not be checked")
            request.write(answer_error(request, error))
            request.finish()

        Deferred.fromCoroutine(self._check.check(request)).addCallbacks(allowed, refused)
        return NOT_DONE_YET


class LoginLimit(Resource):
    """``POST /auth/login`` through ``forward``, unless the client's address or the name it
    tries must wait: then 429 with Retry-After, and the replica is not asked."""

    isLeaf = True

    def __init__(self, forward: IResource, limiter: LoginLimiter,
                 counted: Callable[[str], None]) -> None:
        super().__init__()
        self._forward = forward
        self._limiter = limiter
        self._counted = counted

    def render(self, request: Request) -> Any:
        if request.method != b"POST":
            return self._forward.render(request)
        address = client_origin(request).address or "unknown"
        name = _username(request)
        if name is None:  # the per-name limit needs the name: no login without one
            return answer_error(request, Refusal(
                400, "bad_request", f"a login is a JSON object of at most {MAX_LOGIN_BODY}"
                " bytes with a \"username\" string"))
        keys = [f"address:{address}", f"name:{name_key(name)}"]
        wait = max(self._limiter.wait(key) for key in keys)
        begun = [key for key in keys if wait == 0 and self._limiter.begin(key)]
        if wait > 0 or len(begun) < len(keys):
            for key in begun:
                self._limiter.end(key)
            self._counted("login_refused")
            log.info("login from {address} refused for {wait:.0f} s: too many failures",
                     address=address, wait=max(wait, 1.0))
            return answer_error(request, too_many_logins(
                "too many failed logins lately from this address or for this username; wait",
                retry_after=max(wait, 1.0)))
        request.notifyFinish().addCallbacks(
            lambda _: self._outcome(request, keys, address, answered=True),
            lambda _: self._outcome(request, keys, address, answered=False))
        return self._forward.render(request)

    def _outcome(self, request: Request, keys: list[str], address: str, *,
                 answered: bool) -> None:
        """``answered``: the client took the whole answer; else it went away, maybe before
        any answer, when ``request.code`` is still twisted.web's default 200: no success."""
        for key in keys:
            self._limiter.end(key)
        if request.code == 401:
            self._counted("login_failures")
            for key in keys:
                self._limiter.failed(key)
            log.info("failed login from {address}", address=address)
        elif answered and 200 <= request.code < 300:
            for key in keys[1:]:  # the name's count: the address's stays (see ratelimit.py)
                self._limiter.succeeded(key)


def _username(request: Request) -> str | None:
    """The ``username`` of a JSON login body, when it is small and one can be read."""
    content = request.content
    if content is None:
        return None
    content.seek(0)
    data = content.read(MAX_LOGIN_BODY + 1)
    content.seek(0)
    if len(data) > MAX_LOGIN_BODY:
        return None
    try:
        name = json.loads(data).get("username")
    except (ValueError, AttributeError, RecursionError):
        return None
    return name if isinstance(name, str) and name else None
