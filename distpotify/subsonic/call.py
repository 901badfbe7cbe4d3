"""What every Subsonic method handler receives and may raise: the call (its parameters, the
authenticated user, the replica's services) and the spec's error codes.

A handler is ``async def handler(call: Call) -> dict``: the payload inside
``subsonic-response`` (``{"album": {...}}``), as a neutral tree that subsonicresponse.py
renders as XML or JSON: a scalar value is an XML attribute (a JSON member), a dict is one
child element, a list of dicts is repeated child elements (a JSON array, even of one), a list
of scalars is repeated child elements holding each as text (a JSON array of the scalars: the
OpenSubsonic extensions' ``versions``), and the key "value" is an element's text content.
None is left out. Handlers register with ``@method("getAlbum")`` (``writes=True`` for those in
subsonicmethods.WRITES). An error is ``raise SubsonicError(code, message)``.

A handler that answers with bytes of its own (stream, download, getCoverArt) writes them on
``call.request`` (headers and body) and returns SENT instead of a tree.
"""

from __future__ import annotations

import binascii
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

# The spec's error codes (http://www.subsonic.org/pages/api.jsp, "Error handling").
GENERIC = 0
MISSING_PARAMETER = 10
CLIENT_TOO_OLD = 20
SERVER_TOO_OLD = 30
WRONG_CREDENTIALS = 40
TOKEN_AUTH_UNSUPPORTED = 41  # for LDAP users in the spec; here: --subsonic-token-auth off
AUTH_MECHANISM_UNSUPPORTED = 42  # OpenSubsonic
MULTIPLE_AUTH = 43  # OpenSubsonic: conflicting authentication mechanisms
INVALID_API_KEY = 44  # OpenSubsonic
NOT_AUTHORIZED = 50
TRIAL_OVER = 60
NOT_FOUND = 70


class SubsonicError(Exception):
    """A failure answered as the spec's error element (HTTP 200, status="failed")."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decoded_password(text: str, code: int) -> str:
    """A password as a client sends it (``p``, changePassword's ``password``): plain, or
    "enc:" and its UTF-8 bytes in hex; a bad "enc:" is error ``code``."""
    if not text.startswith("enc:"):
        return text
    try:
        return binascii.unhexlify(text[4:]).decode("utf-8")
    except (binascii.Error, ValueError):
        raise SubsonicError(code, "The enc: password is not hex-encoded UTF-8") from None


class Params:
    """A request's parameters, from the query string and a form POST body together, each
    name possibly repeated (``id=1&id=2``)."""

    def __init__(self, values: dict[str, list[str]]) -> None:
        self._values = values

    def get(self, name: str, default: str | None = None) -> str | None:
        found = self._values.get(name)
        return found[0] if found else default

    def all(self, name: str) -> list[str]:
        return list(self._values.get(name, ()))

    def required(self, name: str) -> str:
        value = self.get(name)
        if value is None or value == "":
            raise SubsonicError(MISSING_PARAMETER, f"Required parameter is missing: {name}")
        return value

    def integer(self, name: str, default: int | None, low: int, high: int) -> int | None:
        """``name`` as an integer in [low, high]; ``default`` when absent; error 0 otherwise
        (the spec has no code for a malformed value)."""
        text = self.get(name)
        if text is None or text == "":
            return default
        # Digits, with a leading "-" at most: int() would also take "+5", " 5" and "5_000".
        digits = text[1:] if text.startswith("-") else text
        if not (digits.isascii() and digits.isdigit()) or len(text) > 20:
            raise SubsonicError(GENERIC, f"Parameter {name} must be an integer")
        number = int(text, 10)
        if not low <= number <= high:
            raise SubsonicError(GENERIC, f"Parameter {name} must be between {low} and {high}")
        return number

    def page_size(self, name: str, default: int, most: int) -> int:
        """How many items a list or search asks for: at most ``most``. A larger number is
        answered ``most`` items, as Subsonic's own server and Navidrome do (the client pages
        on by offset), not refused; a negative or malformed one is error 0."""
        found = self.integer(name, default, 0, 2**31 - 1)
        assert found is not None
        return min(found, most)

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def names(self) -> list[str]:
        return list(self._values)

    def boolean(self, name: str, default: bool) -> bool:
        """``name`` as true/false (the spec's booleans); ``default`` when absent."""
        text = self.get(name)
        if text is None or text == "":
            return default
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise SubsonicError(GENERIC, f"Parameter {name} must be true or false")


@attrs.frozen
class Call:
    """One authenticated Subsonic call. ``server`` holds the replica's services (the library,
    the accounts, the store, the covers, the per-user state): see api.py's Server."""

    request: Any  # twisted.web Request
    params: Params
    user: Any  # auth.users.User (None for a public method)
    server: Any


class Sent:
    """What a handler returns once it has written its answer itself (audio, pictures)."""

    def __repr__(self) -> str:
        return "SENT"


SENT = Sent()

Handler = Callable[[Call], Awaitable["dict[str, Any] | Sent"]]


@attrs.frozen
class Method:
    name: str
    handler: Handler
    writes: bool
    public: bool = False  # answered without credentials (getOpenSubsonicExtensions); user None


# Every method, by lower-case name (clients vary in case: "getalbum" is "getAlbum").
METHODS: dict[str, Method] = {}


def method(name: str, *, writes: bool = False, public: bool = False
           ) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        METHODS[name.lower()] = Method(name, handler, writes, public)
        return handler
    return register
