"""Who a Subsonic call is: ``u`` + ``p`` (plain or ``enc:`` hex), ``u`` + ``t`` + ``s`` (t is
md5(password + s)) or the OpenSubsonic ``apiKey``, with the login's failure limit.

Apps send the password (or a token) with every request, and argon2id costs about 137 ms a
check: a password proven once is remembered (an HMAC of it under a key of this process, never
the password, in a bounded LRU) until the account's password hash or session generation
changes. Token auth and API keys need the credentials the accounts keep for them
(``Accounts.subsonic_password``, ``Accounts.user_by_api_key``); without those the mechanism
answers error 42, and ``--subsonic-token-auth off`` answers t + s with error 41.
"""
# test-case-name: tests.unit.test_subsonic_api

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from distpotify.auth.passwords import PasswordsBusy
from distpotify.auth.users import User, name_key
from distpotify.errors import BadRequest, TooManyRequests, Unauthorized
from distpotify.subsonic.call import (
    AUTH_MECHANISM_UNSUPPORTED,
    GENERIC,
    INVALID_API_KEY,
    MISSING_PARAMETER,
    MULTIPLE_AUTH,
    NOT_AUTHORIZED,
    TOKEN_AUTH_UNSUPPORTED,
    WRONG_CREDENTIALS,
    Params,
    SubsonicError,
    decoded_password,
)

log = Logger()

CACHE_SIZE = 1024  # proven (account, password) pairs remembered
MAX_FIELD = 1024  # characters of u, p, t, s or apiKey looked at: more is never valid
WRONG = "Wrong username or password"


class Authenticator:
    """Checks the credentials of Subsonic calls against ``accounts`` (accounts.py's Accounts);
    ``token_auth`` is ``--subsonic-token-auth``."""

    def __init__(self, accounts: Any, token_auth: bool = True, cache_size: int = CACHE_SIZE
                 ) -> None:
        self._accounts = accounts
        self.token_auth = token_auth
        self._cache_size = cache_size
        self._key = secrets.token_bytes(32)  # this process's: the cache is worthless outside
        # HMAC(user id, password) -> (password hash, generation) it was proven against.
        self._proven: OrderedDict[bytes, tuple[str, int]] = OrderedDict()
        # HMAC(name, password) -> the calls waiting on its check under way.
        self._checking: dict[bytes, list[Deferred[User]]] = {}
        self.cache_hits = 0

    async def user(self, params: Params) -> User:
        """The account the call's credentials prove, else SubsonicError with the spec's code."""
        username, password = params.get("u"), params.get("p")
        token, salt, api_key = params.get("t"), params.get("s"), params.get("apiKey")
        if api_key is not None:
            if any(value is not None for value in (username, password, token, salt)):
                raise SubsonicError(MULTIPLE_AUTH, "Give either apiKey, or u with p or t and s,"
                                    " not both")
            return self._by_api_key(api_key)
        if username is None or username == "":
            raise SubsonicError(MISSING_PARAMETER, "Required parameter is missing: u")
        if password is not None and (token is not None or salt is not None):
            raise SubsonicError(MULTIPLE_AUTH, "Give either p, or t and s, not both")
        if password is not None:
            return await self._by_password(
                username, decoded_password(password, WRONG_CREDENTIALS))
        if token is not None or salt is not None:
            if not token or not salt:
                raise SubsonicError(MISSING_PARAMETER,
                                    f"Required parameter is missing: {'s' if token else 't'}")
            return self._by_token(username, token, salt)
        raise SubsonicError(MISSING_PARAMETER, "Required parameter is missing: p, or t and s,"
                            " or apiKey")

    # u + p

    async def _by_password(self, username: str, password: str) -> User:
        if len(username) > MAX_FIELD or len(password) > MAX_FIELD:
            raise SubsonicError(WRONG_CREDENTIALS, WRONG)
        key = name_key(username)[:256]
        limiter = self._accounts.limiter
        wait = limiter.wait(key)
        if wait > 0:
            # Before the cache too: a remembered password must not answer while guesses wait.
            self._accounts.logins_limited += 1
            raise _too_many(wait)
        user = self._accounts.directory.by_name(username)
        if user is not None and not user.disabled and self._remembered(user, password):
            self.cache_hits += 1
            return user
        # An app sends many requests at once (a page of covers): one check of this name and
        # password answers them all, rather than one each, past the limit's free attempts.
        attempt = hmac.new(self._key, f"{key}\0{password}".encode("utf-8", "surrogatepass"),
                           hashlib.sha256).digest()
        mine: Deferred[User] = Deferred()
        waiting = self._checking.get(attempt)
        if waiting is not None:
            waiting.append(mine)
        else:
            self._checking[attempt] = [mine]
            # Not the first caller's own: its client going away does not cancel the others'.
            Deferred.fromCoroutine(self._login(username, password)).addBoth(
                self._checked, attempt)
        return await mine

    def _checked(self, outcome: User | Failure, attempt: bytes) -> None:
        for waiter in self._checking.pop(attempt, []):
            if waiter.called:  # cancelled: its client went away
                continue
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    async def _login(self, username: str, password: str) -> User:
        try:
            _, user = await self._accounts.login(username, password)
        except Unauthorized:
            raise SubsonicError(WRONG_CREDENTIALS, WRONG) from None
        except TooManyRequests as refused:
            raise _too_many(float(refused.headers.get("Retry-After", "1"))) from None
        except BadRequest:
            raise SubsonicError(WRONG_CREDENTIALS, WRONG) from None
        except PasswordsBusy:
            raise SubsonicError(GENERIC, "Too many password checks at once; retry shortly"
                                ) from None
        self._remember(user, password)
        return user

    def _digest(self, user: User, password: str) -> bytes:
        return hmac.new(self._key, f"{user.id}\0{password}".encode("utf-8", "surrogatepass"),
                        hashlib.sha256).digest()

    def _remembered(self, user: User, password: str) -> bool:
        digest = self._digest(user, password)
        proven = self._proven.get(digest)
        if proven is None:
            return False
        if proven != (user.password_hash, user.generation):
            del self._proven[digest]  # a new password, or every session ended since
            return False
        self._proven.move_to_end(digest)
        return True

    def _remember(self, user: User, password: str) -> None:
        self._proven[self._digest(user, password)] = (user.password_hash, user.generation)
        while len(self._proven) > self._cache_size:
            self._proven.popitem(last=False)

    # u + t + s

    def _by_token(self, username: str, token: str, salt: str) -> User:
        if not self.token_auth:
            raise SubsonicError(TOKEN_AUTH_UNSUPPORTED, "Token authentication is turned off on"
                                " this server (--subsonic-token-auth off): use p, or apiKey")
        recover = getattr(self._accounts, "subsonic_password", None)
        if recover is None:
            raise SubsonicError(AUTH_MECHANISM_UNSUPPORTED, "Token authentication (t and s) is"
                                " not supported on this server yet: use p")
        if len(username) > MAX_FIELD or len(token) > MAX_FIELD or len(salt) > MAX_FIELD:
            raise SubsonicError(WRONG_CREDENTIALS, WRONG)
        key = name_key(username)[:256]
        limiter = self._accounts.limiter
        wait = limiter.wait(key)
        if wait > 0 or not limiter.begin(key):
            self._accounts.logins_limited += 1
            raise _too_many(max(wait, 1.0))
        try:
            user = self._accounts.directory.by_name(username)
            stored = None
            if user is not None and not user.disabled:
                stored = recover(user)
            expected = hashlib.md5((stored or secrets.token_hex(16) + "\0").encode("utf-8")
                                   + salt.encode("utf-8", "surrogatepass"),
                                   usedforsecurity=False).hexdigest()
            matched = hmac.compare_digest(expected.encode(),
                                          token.lower().encode("utf-8", "surrogatepass"))
        finally:
            limiter.end(key)
        if not matched or stored is None or user is None:
            self._accounts.login_failures += 1
            limiter.failed(key)
            log.info("subsonic token refused for {name}", name=repr(username[:64]))
            if user is not None and not user.disabled and stored is None:
                raise SubsonicError(TOKEN_AUTH_UNSUPPORTED, "No password is kept for token"
                                    " authentication of this account (log in to the web"
                                    " player once, or use p)")
            raise SubsonicError(WRONG_CREDENTIALS, WRONG)
        limiter.succeeded(key)
        return user

    # apiKey

    def _by_api_key(self, api_key: str) -> User:
        lookup = getattr(self._accounts, "user_by_api_key", None)
        if lookup is None:
            raise SubsonicError(AUTH_MECHANISM_UNSUPPORTED, "API keys (apiKey) are not"
                                " supported on this server yet: use u and p")
        user = lookup(api_key) if 0 < len(api_key) <= MAX_FIELD else None
        if user is None:
            raise SubsonicError(INVALID_API_KEY, "Invalid API key")
        if user.disabled:
            raise SubsonicError(NOT_AUTHORIZED, "The account is disabled")
        return user



def _too_many(wait: float) -> SubsonicError:
    return SubsonicError(WRONG_CREDENTIALS, "Too many failed attempts for this username lately;"
                         f" wait {max(1, round(wait))} s")
