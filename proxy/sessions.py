"""Read your writes through the proxy: each client's last write version, kept a few seconds,
so that client's reads can ask a follower to wait for it (X-Distpotify-Min-Version).

A client is the Authorization header it sends (by the header's SHA-256: the token itself is
never kept); else, for the Subsonic API (/rest), the credentials every one of its requests
carries (by their SHA-256 too); else the proxy's own session cookie, which the answer to its
first write sets. Bounded: past MAX_CLIENTS the client that wrote least recently is forgotten
first.
"""
# test-case-name: tests.unit.test_proxy_sessions

from __future__ import annotations

import hashlib
import re
import secrets
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from proxy import subsonic
from proxy.forwarded import client_origin

COOKIE = b"distpotify_client"
MAX_CLIENTS = 50_000
# What this proxy hands out (token_urlsafe(18): 24 characters); anything else is not ours.
_OURS = re.compile(rb"^[A-Za-z0-9_-]{24}$")


class Sessions:
    """Which version each client wrote last, for ``memory`` seconds (0: none is kept)."""

    def __init__(self, clock: IReactorTime, memory: float, limit: int = MAX_CLIENTS) -> None:
        self._clock = clock
        self._memory = memory
        self._limit = limit
        self._last: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def remember(self, request: Request, version: bytes) -> None:
        """``request`` was a write answered with ``version``: that client's reads wait for it.
        A client without a token or our cookie gets the cookie with this answer."""
        if self._memory <= 0:
            return
        client = _client(request)
        if client is None:
            value = secrets.token_urlsafe(18).encode()
            request.addCookie(COOKIE, value, path=b"/", httpOnly=True, sameSite=b"lax",
                              secure=client_origin(request).https)
            client = _cookie_client(value)
        now = self._clock.seconds()
        kept = self._last.pop(client, None)
        if kept is not None and kept[1] >= now and kept[0] > version:
            # An earlier write's answer, replayed under its key or overtaken by a later
            # write's: the reads still wait for the later one. (Versions are fixed-width
            # text whose order is theirs: epoch, then writer, then sequence.)
            version = kept[0]
        self._last[client] = (version, now + self._memory)
        # Every entry lives as long, so the oldest are first: those past their time go now
        # (a client that never sends our cookie back makes a new one with each write).
        while self._last and (len(self._last) > self._limit
                              or next(iter(self._last.values()))[1] < now):
            self._last.popitem(last=False)

    def recall(self, request: Request) -> bytes | None:
        """The version this client wrote last, while it is remembered; else None."""
        client = _client(request)
        found = self._last.get(client) if client is not None else None
        if found is None:
            return None
        version, until = found
        if self._clock.seconds() > until:
            del self._last[client]  # type: ignore[arg-type]
            return None
        return version


def _client(request: Request) -> str | None:
    """Who sent ``request``, for this memory: its token's hash, else our cookie; or None."""
    authorization = request.getHeader(b"authorization")
    if authorization:
        token = authorization.encode("latin-1") if isinstance(authorization, str) else authorization
        return "token:" + hashlib.sha256(token).hexdigest()
    subsonic = _subsonic_client(request)
    if subsonic is not None:
        return subsonic
    cookie = request.getCookie(COOKIE)
    if cookie is not None and _OURS.match(cookie):
        return _cookie_client(cookie)
    return None


def _subsonic_client(request: Request) -> str | None:
    """A Subsonic client, by a hash of the credentials it sends with every call: its
    ``apiKey``; else its user ``u`` with its password ``p``; else (token auth, ``t`` and
    ``s``) its user alone, since clients such as DSub and py-sonic make a new salt, so a new
    token, for every call. Only a write the replica accepted is remembered, so a stranger
    naming that user gains nothing but a wait for that user's version. None outside /rest
    or without credentials."""
    if not subsonic.is_subsonic(request):
        return None
    params = subsonic.params(request)
    api_key = params.get("apiKey")
    if api_key:
        return "subsonic-key:" + _digest(api_key)
    user = params.get("u")
    if not user:
        return None
    password = params.get("p")
    secret = "p\0" + password if password else "t"
    return "subsonic:" + _digest("u\0" + user + "\0" + secret)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _cookie_client(value: bytes) -> str:
    return "cookie:" + value.decode("ascii")
