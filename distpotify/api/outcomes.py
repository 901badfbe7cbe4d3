"""A write over HTTP: the Idempotency-Key a request carries in, the Outcome it answers out
(status, JSON body, the version it made, whether a stored outcome answered it again). Shared
by every API that writes (the library's and the accounts')."""
# test-case-name: tests.unit.test_idempotency

from __future__ import annotations

from collections.abc import Callable
from typing import IO

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from distpotify.api.gate import session_user
from distpotify.idempotency import IdempotencyKey, Outcome, parse_key
from distpotify.wire import IDEMPOTENCY_KEY, REPLAYED, VERSION, encoded_json_response

KeyOf = Callable[[str, bytes, bytes, "IO[bytes] | None"], Deferred[IdempotencyKey]]


async def request_key(request: Request, key_of: KeyOf,
                      body: IO[bytes] | None = None) -> IdempotencyKey | None:
    """The request's Idempotency-Key (400 if malformed), with its request's digest as
    ``key_of`` (Library.request_key) makes it; None if it sent none. ``body`` is the request's
    body when the handler took it from the request (an upload)."""
    header = request.getHeader(IDEMPOTENCY_KEY)
    if header is None:
        return None
    text = parse_key(header.encode("latin-1") if isinstance(header, str) else header)
    # Keys are the account's own (as Stripe scopes them): another account sending the same
    # key makes its own write, and never receives this account's stored answer.
    user = session_user(request)
    scoped = text if user is None else f"{user.id} {text}"
    return await key_of(scoped, request.method, request.uri,
                        request.content if body is None else body)


def answer(request: Request, outcome: Outcome) -> bytes:
    """A write's answer: its status and body, the version it made, and whether a key's
    stored outcome answered it again."""
    if outcome.version is not None:
        request.setHeader(VERSION, outcome.version.encode().encode())
    if outcome.replayed:
        request.setHeader(REPLAYED, b"true")
    text = outcome.body_text
    if text is None:
        request.setResponseCode(outcome.status)
        return b""
    return encoded_json_response(request, outcome.status, text.encode())
