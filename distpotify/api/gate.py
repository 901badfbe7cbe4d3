"""The one authorization hook in front of every public route (ReplicaRoot calls ``authorize``
before routing): who the request is, from a session token (``Authorization: Bearer`` or the
``distpotify_session`` cookie), and whether the route table of auth/access.py lets them in.

A genuine session this replica cannot check yet (its account, or its newest generation, not
applied here) is not refused as invalid: a follower answers 409 ``behind`` (the proxy asks
the leader), a joining replica 503 ``joining``; only the leader says 401.

Unsafe methods authenticated by the cookie alone need an Origin naming this host (CSRF). With
``--auth off`` (for a trusted network; on is the default) the library, /status and /metrics
are open to anyone (a valid session still names who acts, so records get their owner);
/auth/* and /users/* check sessions either way.
"""
# test-case-name: tests.unit.test_auth_api

from __future__ import annotations

import hmac
from collections.abc import Callable
from urllib.parse import urlsplit

from twisted.web.server import Request

from distpotify.accounts import Accounts
from distpotify.auth.access import UNRESTRICTED, Actor, Need, need_of
from distpotify.auth.tokens import InvalidToken, NotKnownYet, bearer_token
from distpotify.auth.users import ADMIN, User
from distpotify.errors import ApiError, Behind, Forbidden, Joining, Unauthorized
from distpotify.signing import HEADERS, Refused, RequestVerifier, file_sha256

COOKIE = b"distpotify_session"
_SAFE = (b"GET", b"HEAD", b"OPTIONS")
# What the gate leaves on a request for the handlers: who acts, and the account if any.
_ACTOR = "_distpotify_actor"
_USER = "_distpotify_user"


def actor_of(request: Request) -> Actor:
    """Who ``request`` acts as (set by the gate; UNRESTRICTED where nothing is enforced)."""
    actor: Actor = getattr(request, _ACTOR, UNRESTRICTED)
    return actor


def session_user(request: Request) -> User | None:
    """The account whose session ``request`` carried, if the gate checked one."""
    user: User | None = getattr(request, _USER, None)
    return user


def open_gate(request: Request) -> None:
    """The hook when nothing is enforced and there are no accounts (tests of other parts)."""


class Gate:
    """Authorizes requests against ``accounts`` (sessions), ``verifier`` (a cluster-signed
    /status or /metrics), ``metrics_token`` (a Prometheus bearer for /metrics and /status);
    ``enforce`` is ``--auth``; ``serving`` says whether this replica is ACTIVE and
    ``leading`` whether it leads (who may say that a genuine session is over)."""

    def __init__(self, accounts: Accounts, verifier: RequestVerifier, *, enforce: bool,
                 metrics_token: str | None = None,
                 serving: Callable[[], bool] = lambda: True,
                 leading: Callable[[], bool] = lambda: True) -> None:
        self._accounts = accounts
        self._verifier = verifier
        self.enforce = enforce
        self._metrics_token = metrics_token
        self._serving = serving
        self._leading = leading

    def authorize(self, request: Request) -> None:
        """Return if ``request`` may reach its handler (who it is left on it); raise
        Unauthorized (401) or Forbidden (403) otherwise."""
        segments = [s for s in (request.postpath or []) if s] or [b""]
        if not self.enforce and segments[0] not in (b"auth", b"users"):
            self._unenforced(request)
            return
        need = need_of(request.method, segments)
        if need is Need.NOTHING:
            if (request.method not in _SAFE and request.getHeader(b"Origin") is not None
                    and not _same_origin(request)):
                # Login CSRF: a page of another site must not log a browser into an account
                # of its choosing (a text/plain form needs no preflight). A browser always
                # sends Origin on such a POST; curl and apps send none.
                raise Forbidden("a login from another site's page is refused (its Origin"
                                " does not match the host)")
            setattr(request, _ACTOR, Actor(None, admin=False))
            return
        if self._signed(request):
            return  # the cluster itself (a follower fetching chunks, the proxy's polls)
        if need is Need.MONITOR and self._metrics_bearer(request):
            return
        user = self._session(request)
        actor = Actor.of(user)
        setattr(request, _USER, user)
        setattr(request, _ACTOR, actor)
        if need in (Need.ADMIN, Need.MONITOR) and user.role != ADMIN:
            raise Forbidden("only an admin may do this")

    def _unenforced(self, request: Request) -> None:
        """Everything is allowed; a request that carries a valid session still acts as its
        account (an admin's powers for all), so what it creates records its owner."""
        token = bearer_token(request)
        if token is None:
            cookie = request.getCookie(COOKIE)
            if not cookie:
                return  # no token: the chunk path costs what it did before accounts
            token = cookie.decode("latin-1")
        try:
            user = self._accounts.session(token)
        except InvalidToken:
            return
        setattr(request, _USER, user)
        setattr(request, _ACTOR, Actor(user.id, admin=True))

    def _signed(self, request: Request) -> bool:
        """Whether ``request`` is cluster-signed: it then acts as the cluster, on any route
        (followers fetch chunks with /songs/<id>/chunks/<n>). Unauthorized if it carries
        signature headers that do not verify."""
        if not any(request.requestHeaders.hasHeader(name) for name in HEADERS):
            return False
        try:
            claimed = self._verifier.check(request.method, request.uri, request.requestHeaders)
            assert request.content is not None
            request.content.seek(0)
            actual = file_sha256(request.content)
            request.content.seek(0)
            self._verifier.check_body(claimed, actual)
        except Refused as refused:
            raise Unauthorized(str(refused)) from None
        return True

    def _metrics_bearer(self, request: Request) -> bool:
        """Whether a /status or /metrics request carries the --metrics-token (Prometheus)."""
        token = bearer_token(request)
        return (token is not None and self._metrics_token is not None
                and hmac.compare_digest(token.encode("latin-1"), self._metrics_token.encode()))

    def _session(self, request: Request) -> User:
        token = bearer_token(request)
        by_cookie = False
        if token is None:
            cookie = request.getCookie(COOKIE)
            if cookie:
                token, by_cookie = cookie.decode("latin-1"), True
        if token is None:
            raise Unauthorized("log in first (POST /auth/login)")
        try:
            user = self._accounts.session(token)
        except NotKnownYet as e:
            raise self._not_known_yet(e) from None
        except InvalidToken as e:
            raise Unauthorized(f"the session is not valid: {e}") from None
        if by_cookie and request.method not in _SAFE and not _same_origin(request):
            raise Forbidden("a request authenticated by cookie must come from this site"
                            " (its Origin does not match the host)")
        return user

    def _not_known_yet(self, reason: NotKnownYet) -> ApiError:
        """A genuine token whose account (or newest generation) is not applied here. The
        leader holds every account write, so to it the account is gone or the session over:
        401. A follower is behind the write that made it, and a joining replica has not
        received its accounts yet: a 401 would send the client to log in again, where it
        need only ask another replica."""
        if self._leading():
            return Unauthorized(f"the session is not valid: {reason}")
        if not self._serving():
            return Joining("this replica is still joining the cluster and does not know this"
                           " session's account yet; ask another replica")
        return Behind("this replica has not applied this session's account yet; ask the"
                      " leader")


def _same_origin(request: Request) -> bool:
    """Whether the Origin header names the host the request was sent to (its Host, or the
    X-Forwarded-Host the proxy sets: a page of another site cannot send that header without
    a CORS preflight, which no replica answers)."""
    raw = request.getHeader(b"Origin")
    origin = None if raw is None else raw.decode("latin-1")
    if not origin or origin == "null":
        return False
    netloc = urlsplit(origin).netloc.lower()
    hosts = {h.decode("latin-1").strip().lower()
             for name in (b"Host", b"X-Forwarded-Host")
             for h in request.requestHeaders.getRawHeaders(name, [])}
    return bool(netloc) and netloc in hosts
