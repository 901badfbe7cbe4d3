"""What the proxy reads of a Subsonic request (``/rest``): its parameters, from the query and a
form POST body; and how it answers one itself: in the replicas' ``subsonic-response``
envelope (distpotify/subsonicresponse.py), error 0 in an HTTP 200, as Subsonic clients expect.
"""
# test-case-name: tests.unit.test_proxy_rest, tests.integration.test_proxy_rest

from __future__ import annotations

from urllib.parse import unquote_plus

from twisted.web.server import Request

from distpotify import subsonicmethods
from distpotify.subsonicresponse import XML, error, format_of

# The spec's "generic error": the one code for a failure that is not the client's.
GENERIC_ERROR = 0
# A Subsonic form POST (the formPost extension) carries its parameters in the body: one
# larger than this is not read for them (the replica's own limit: it refuses a larger one).
# A play queue of 10,000 songs is a 400 KB form.
MAX_FORM = 1024 * 1024
# The parameters the proxy reads: who the client is (read-your-writes) and the format its
# own errors take. Only these are decoded: a 400 KB form is split, not parsed whole.
NAMES = frozenset({"u", "p", "apiKey", "f", "callback"})


def is_subsonic(request: Request) -> bool:
    """Whether ``request`` is a call of the Subsonic API (``/rest/<method>``)."""
    return subsonicmethods.method_of_uri(request.uri) is not None


def params(request: Request) -> dict[str, str]:
    """The first non-empty value of each parameter of NAMES, from the query and from a form
    body (a spooled ``application/x-www-form-urlencoded`` POST of at most MAX_FORM bytes);
    the query's win, as on the replica. Any bytes at all: %-escapes are read as UTF-8, what
    is not UTF-8 replaced (the replica refuses it)."""
    found: dict[str, str] = {}
    content_type = request.getHeader(b"content-type") or b""
    content = request.content
    if (request.method == b"POST" and content is not None
            and content_type.split(b";")[0].strip().lower()
            == b"application/x-www-form-urlencoded"):
        content.seek(0)
        body = content.read(MAX_FORM + 1)
        content.seek(0)
        if len(body) <= MAX_FORM:
            found.update(_first_values(body))
    found.update(_first_values(request.uri.partition(b"?")[2]))
    return found


def failed(request: Request, message: str) -> bytes:
    """Set a 200 and the envelope's headers on ``request``; return the body of error 0 with
    ``message``, in the format the client asked for (``f``, ``callback``), else XML."""
    values = params(request)
    fmt = format_of(values.get("f"), values.get("callback")) or XML
    body, content_type = error(fmt, GENERIC_ERROR, message)
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.setHeader(b"Cache-Control", b"no-store")
    return body


def _first_values(encoded: bytes) -> dict[str, str]:
    """The first non-empty value of each parameter of NAMES in ``encoded``, decoded as
    ``parse_qs`` does ("+" a space, %-escapes UTF-8), but only for those: splitting a form of
    10,000 song ids took a quarter of parsing it all."""
    found: dict[str, str] = {}
    for pair in encoded.split(b"&"):
        raw_name, _, raw_value = pair.partition(b"=")
        name = _decoded(raw_name)
        if name in NAMES and name not in found and raw_value:
            found[name] = _decoded(raw_value)
    return found


def _decoded(raw: bytes) -> str:
    # As text: unquote of bytes would leave "%C3%84" as two characters.
    text = raw.decode("latin-1")
    return unquote_plus(text, errors="replace") if "%" in text or "+" in text else text
