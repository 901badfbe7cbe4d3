"""What the handlers read from a request, typed and checked before a handler runs: path
segments (werkzeug converters), query integers and JSON bodies (read and parsed off the
reactor thread when they were spooled to disk).

A path segment that is not a canonical id, chunk index or digest bucket matches no route, so
it is a 404 like any unknown path; ReplicaRoot's chunk fast path applies the same rules
(``chunk_address``).
"""
# test-case-name: tests.unit.test_api,tests.unit.test_sync_api

from __future__ import annotations

import json
import re
from io import BytesIO
from typing import Any

from klein import Klein
from twisted.web.server import Request
from werkzeug.routing import BaseConverter, ValidationError

from distpotify.errors import BadRequest, PayloadTooLarge
from distpotify.model import MAX_INDEX
from distpotify.store.metadata import BUCKETS, Runner

MAX_JSON = 1024 * 1024

# Each converter's regex is its rule (the model's, tests.unit.test_api checks they agree);
# to_python adds only an upper bound. The regex carries the rule because werkzeug answers 405,
# not 404, when to_python refuses a segment of a path that a rule for another method matched.


class IdConverter(BaseConverter):
    """``<id:name>``: a canonical lowercase UUID (the ids this service hands out), as text."""

    regex = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


class IndexConverter(BaseConverter):
    """``<index:name>``: a chunk index in canonical decimal, below MAX_INDEX, as an int."""

    regex = "0|[1-9][0-9]{0,9}"

    def to_python(self, value: str) -> int:
        index = int(value)
        if index >= MAX_INDEX:
            raise ValidationError()
        return index


class BucketConverter(BaseConverter):
    """``<bucket:name>``: an anti-entropy digest bucket, 0 to BUCKETS - 1 in canonical decimal."""

    regex = "0|[1-9][0-9]{0,2}"

    def to_python(self, value: str) -> int:
        bucket = int(value)
        if bucket >= BUCKETS:
            raise ValidationError()
        return bucket


# /songs/<id:song_id>/chunks/<index:index> as ReplicaRoot's fast path sees it: the raw path.
_CHUNK_PATH = re.compile(f"/songs/({IdConverter.regex})/chunks/({IndexConverter.regex})".encode())


def chunk_address(path: bytes) -> tuple[str, int] | None:
    """The song id and index of a chunk path written canonically, by the converters' rules;
    None for any other path (percent-encoded ones included: Klein decodes and routes those)."""
    match = _CHUNK_PATH.fullmatch(path)
    if match is None or int(match[2]) >= MAX_INDEX:
        return None
    return match[1].decode(), int(match[2])


def typed_routes(app: Klein) -> Klein:
    """Give ``app`` the converters above; call it before the app's first route.

    Slashes are not merged: werkzeug would answer ``/songs//stream`` with a redirect that
    goes nowhere useful, where an empty segment is simply no resource (404).
    """
    app.url_map.converters.update(id=IdConverter, index=IndexConverter, bucket=BucketConverter)
    app.url_map.merge_slashes = False
    return app


def utf8_path(request: Request) -> bool:
    """Whether the path's segments, percent-decoded, are UTF-8 text (Klein routes only those)."""
    try:
        for segment in request.postpath or []:
            segment.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def query(request: Request) -> dict[str, str]:
    """The first value of each query argument, as text; 400 if one holds a NUL character.

    No tag or filter has a use for NUL, and SQLite's full-text query parser ends a string at
    one: ``/songs?q=a%00b`` made the search fail ("unterminated string"), a 500 (found by
    schemathesis, tests/integration/test_openapi.py).
    """
    args = request.args or {}
    found = {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
             for k, v in args.items()}
    for name, value in found.items():
        if "\0" in name or "\0" in value:
            raise BadRequest(f"query argument {name[:64]!r} holds a NUL character")
    return found


# GET /songs?sha256=: checksums asked at once (65 characters each in the request line).
MAX_SHA256 = 100
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256_arg(text: str) -> list[str]:
    """``sha256=<hex>[,<hex>...]``: 1 to MAX_SHA256 SHA-256 checksums (any case), lower-case
    and without repeats; BadRequest otherwise."""
    hashes = list(dict.fromkeys(part.strip().lower() for part in text.split(",")))
    if not 1 <= len(hashes) <= MAX_SHA256 or not all(_SHA256.match(h) for h in hashes):
        raise BadRequest(f"sha256 must be 1 to {MAX_SHA256} SHA-256 checksums (64 hex"
                         " digits each), separated by commas")
    return hashes


def int_arg(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    """Query argument ``name`` as a decimal integer in [low, high], or ``default`` if absent."""
    text = query.get(name)
    if text is None or text == "":
        return default
    if not _decimal(text) or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be an integer between {low} and {high}")
    return int(text)


def _decimal(text: str) -> bool:
    """ASCII digits only (str.isdigit takes "²"), and few enough for int()."""
    return text.isascii() and text.isdigit() and len(text) <= 19


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_json(request: Request, limit: int = MAX_JSON) -> dict[str, Any]:
    """The request body as a JSON object, at most ``limit`` bytes; anything else is a 4xx."""
    content = request.content
    data = content.read(limit + 1) if content is not None else b""
    if len(data) > limit:
        raise PayloadTooLarge(f"JSON bodies are limited to {limit} bytes")
    try:
        body = json.loads(data or b"{}", parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # RecursionError: nesting thousands deep
        raise BadRequest(f"body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


async def json_body(request: Request, blocking: Runner, limit: int = MAX_JSON) -> dict[str, Any]:
    """read_json, by ``blocking`` (a worker thread) when the body was spooled to a file: a
    large body is neither read nor parsed on the reactor thread. One in memory is parsed here."""
    if request.content is None or isinstance(request.content, BytesIO):
        return read_json(request, limit)
    body: dict[str, Any] = await blocking(read_json, request, limit)
    return body
