"""The account API of a replica: first setup, login and sessions (/auth/*), and the admin's
accounts (/users/*); a Klein app like public.py's, failures in the same JSON shape.

Who may call what is the gate's decision (api/gate.py) before a handler runs; handlers find
the caller's account with ``user_of``. Writes go through the leader (421 on a follower).
"""
# test-case-name: tests.unit.test_auth_api

from __future__ import annotations

from typing import Any

import attrs
from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from distpotify.accounts import Accounts, public
from distpotify.api.failures import answer_failure
from distpotify.api.gate import COOKIE, actor_of, session_user
from distpotify.api.outcomes import answer, request_key
from distpotify.api.parsing import json_body, typed_routes
from distpotify.auth.access import Actor
from distpotify.auth.passwords import PasswordsBusy
from distpotify.auth.tokens import DEFAULT_TTL
from distpotify.auth.users import User
from distpotify.errors import BadRequest, NotFound, Unauthorized, Unavailable
from distpotify.idempotency import IdempotencyKey
from distpotify.store.metadata import Runner
from distpotify.wire import json_response


def session_cookie(request: Request, token: str, max_age: int = DEFAULT_TTL) -> bytes:
    """The Set-Cookie value of a session (an empty one with ``max_age`` 0 ends it): HttpOnly,
    SameSite=Lax, for the whole site, Secure when the request came over TLS."""
    parts = [COOKIE + b"=" + token.encode("ascii"), b"Path=/", b"HttpOnly", b"SameSite=Lax",
             b"Max-Age=" + str(max_age).encode()]
    if request.isSecure():
        parts.append(b"Secure")
    return b"; ".join(parts)


class AuthAPI:
    app = typed_routes(Klein())

    def __init__(self, accounts: Accounts, blocking: Runner) -> None:
        self._accounts = accounts
        self._blocking = blocking

    @app.handle_errors(Exception)
    def _failed(self, request: IRequest, failure: Failure) -> bytes:
        if failure.check(PasswordsBusy):
            busy = Unavailable("too many password checks at once; try again shortly")
            busy.headers["Retry-After"] = "1"
            return answer_failure(request, Failure(busy))
        return answer_failure(request, failure)

    async def _json(self, request: Request) -> dict[str, Any]:
        return await json_body(request, self._blocking)

    async def _key(self, request: Request) -> IdempotencyKey | None:
        return await request_key(request, self._accounts.request_key)

    _answer = staticmethod(answer)

    @staticmethod
    def _user(request: Request) -> User:
        user = session_user(request)
        if user is None:  # the gate lets no anonymous request here; kept as a guard
            raise Unauthorized("log in first (POST /auth/login)")
        return user

    # sessions

    @app.route("/auth/setup", methods=["POST"])
    async def setup(self, request: Request) -> bytes:
        return self._answer(request, await self._accounts.setup(await self._json(request)))

    @app.route("/auth/login", methods=["POST"])
    async def login(self, request: Request) -> bytes:
        values = await self._json(request)
        if set(values) - {"username", "password"}:
            # Nothing else: padding could hide the name from the proxy's per-name limit.
            raise BadRequest("a login is {\"username\", \"password\"} and nothing else")
        token, user = await self._accounts.login(values.get("username"), values.get("password"))
        request.setHeader(b"Set-Cookie", session_cookie(request, token))
        request.setHeader(b"Cache-Control", b"no-store")
        return json_response(request, 200, {"token": token, "user": public(user)})

    @app.route("/auth/logout", methods=["POST"])
    def logout(self, request: Request) -> bytes:
        """Forget this session here: the cookie is cleared (a bearer simply drops its token;
        /auth/logout-all ends every session for good)."""
        request.setHeader(b"Set-Cookie", session_cookie(request, "", max_age=0))
        request.setResponseCode(204)
        return b""

    @app.route("/auth/logout-all", methods=["POST"])
    async def logout_all(self, request: Request) -> bytes:
        outcome = await self._accounts.logout_all(self._user(request), await self._key(request))
        request.setHeader(b"Set-Cookie", session_cookie(request, "", max_age=0))
        return self._answer(request, attrs.evolve(outcome, status=204, body=None))

    @app.route("/auth/me", methods=["GET"])
    def me(self, request: Request) -> bytes:
        return json_response(request, 200, {"user": public(self._user(request))})

    @app.route("/auth/password", methods=["PUT"])
    async def password(self, request: Request) -> bytes:
        key = await self._key(request)
        outcome = await self._accounts.change_password(self._user(request),
                                                       await self._json(request), key)
        request.setHeader(b"Set-Cookie", session_cookie(request, "", max_age=0))
        return self._answer(request, outcome)

    # OpenSubsonic API keys (issue 18): each user's own; an admin may revoke anyone's

    @app.route("/auth/apikeys", methods=["GET"])
    async def api_keys(self, request: Request) -> bytes:
        keys = await self._accounts.api_keys_of(self._user(request))
        return json_response(request, 200, {"keys": keys})

    @app.route("/auth/apikeys", methods=["POST"])
    async def create_api_key(self, request: Request) -> bytes:
        key = await self._key(request)
        outcome = await self._accounts.create_api_key(self._user(request),
                                                      await self._json(request), key)
        request.setHeader(b"Cache-Control", b"no-store")  # the secret: never kept by a cache
        return self._answer(request, outcome)

    @app.route("/auth/apikeys/<id:key_id>", methods=["DELETE"])
    async def delete_api_key(self, request: Request, key_id: str) -> bytes:
        return self._answer(request, await self._accounts.delete_api_key(
            key_id, Actor.of(self._user(request)), await self._key(request)))

    # accounts (admins only: the gate's rule)

    @app.route("/users", methods=["GET"])
    def users(self, request: Request) -> bytes:
        found = sorted(self._accounts.directory, key=lambda u: (u.created_at, u.id))
        return json_response(request, 200, {"users": [public(u) for u in found]})

    @app.route("/users", methods=["POST"])
    async def create_user(self, request: Request) -> bytes:
        key = await self._key(request)
        return self._answer(request, await self._accounts.create(await self._json(request),
                                                                 key))

    @app.route("/users/<id:user_id>", methods=["GET"])
    def user(self, request: Request, user_id: str) -> bytes:
        found = self._accounts.directory.by_id(user_id)
        if found is None:
            raise NotFound(f"no user {user_id}")
        return json_response(request, 200, {"user": public(found)})

    @app.route("/users/<id:user_id>", methods=["PATCH"])
    async def patch_user(self, request: Request, user_id: str) -> bytes:
        key = await self._key(request)
        return self._answer(request, await self._accounts.update(
            user_id, await self._json(request), key))

    @app.route("/users/<id:user_id>", methods=["DELETE"])
    async def delete_user(self, request: Request, user_id: str) -> bytes:
        return self._answer(request, await self._accounts.delete(
            user_id, actor_of(request), await self._key(request)))
